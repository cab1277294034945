"""Integration: BCD through mmrazor's SingleTeacherDistill + ConfigurableDistiller on mmseg models."""
import pytest
import torch

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd.mm import configs  # noqa: E402
from seg_batch import saved_teacher, seg_batch  # noqa: E402  (tests/seg_batch.py)

NUM_CLASSES = configs.num_classes(dict(dataset="shapes"))

TEACHER = dict(arch="pspnet", depth=50, base_channels=8)
STUDENT = dict(arch="pspnet", depth=18, base_channels=8)
BCD = {
    "bd": dict(type="BoundaryDistillLoss", loss_weight=10.0, radius=2, teacher_probe_weight=1.0),
    "cd": dict(type="ContextDistillLoss", loss_weight=50.0),
}


def _batch(n=2, size=32, num_classes=None):
    return seg_batch(n, size, num_classes or NUM_CLASSES)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return saved_teacher(tmp_path_factory.mktemp("teacher"), TEACHER, NUM_CLASSES)


def _algorithm(teacher_ckpt, methods):
    from mmrazor.registry import MODELS

    data = dict(dataset="shapes", height=32, width=32)
    cfg = configs.distill_config(student_spec=STUDENT, teacher_spec=TEACHER,
                                 teacher_ckpt=teacher_ckpt, methods=methods,
                                 decay_schedule=True, data=data, data_root="unused",
                                 train=dict(iters=10, batch_size=2, lr=0.01, momentum=0.9,
                                            weight_decay=0.0),
                                 work_dir="unused", seed=0, log_file="unused.json")
    model_cfg = cfg.model.to_dict()
    algo = MODELS.build(model_cfg)
    algo.train()  # SingleTeacherDistill.train returns None
    return algo


def test_one_distillation_step_reaches_student_only(teacher_ckpt):
    algo = _algorithm(teacher_ckpt, BCD)
    inputs, samples = _batch()
    losses = algo(inputs, samples, mode="loss")
    assert {"distill.loss_bd", "distill.loss_cd", "student.decode.loss_ce"} <= set(losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is None for p in algo.teacher.parameters()), "teacher received gradients"
    assert all(not p.requires_grad for p in algo.distiller.connectors["t_fuse"].parameters())
    s_grad = sum(p.grad.abs().sum() for p in algo.student.backbone.parameters()
                 if p.grad is not None)
    assert s_grad > 0
    fuse = algo.distiller.connectors["s_fuse"]
    assert all(p.grad is not None for p in fuse.parameters())
    bd = algo.distiller.distill_losses["loss_bd"]
    assert bd.teacher_conv.weight.grad is not None  # trained by the label-affinity probe
    assert bd.student_conv.weight.grad is not None


@pytest.mark.parametrize("choice", ["head", "logits"])
def test_cd_on_the_teacher_head_or_logits_reaches_student_only(teacher_ckpt, choice):
    """CD's teacher_features: the teacher's decoder features or logits, no teacher fusion."""
    algo = _algorithm(teacher_ckpt, {"cd": dict(BCD["cd"], teacher_features=choice)})
    assert set(algo.distiller.connectors) == {"s_fuse"}
    inputs, samples = _batch()
    losses = algo(inputs, samples, mode="loss")
    losses["distill.loss_cd"].backward()
    assert losses["distill.loss_cd"].item() > 0
    assert all(p.grad is None for p in algo.teacher.parameters()), "teacher received gradients"
    assert sum(p.grad.abs().sum() for p in algo.student.backbone.parameters()
               if p.grad is not None) > 0


def test_teacher_weights_loaded_and_frozen(teacher_ckpt):
    from bcd.weights import load_weights

    algo = _algorithm(teacher_ckpt, {"cd": BCD["cd"]})
    state = load_weights(teacher_ckpt)
    for k, v in algo.teacher.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert set(algo.distiller.distill_losses) == {"loss_cd"}
    assert "gt" not in algo.distiller.student_recorders.recorders


@pytest.mark.parametrize("teacher", ["prediction", "probe_pred"])
def test_bd_teacher_readings_read_the_teacher_logits_not_the_labels(teacher_ckpt, teacher):
    bd = dict(BCD["bd"], form="spatial", teacher=teacher)
    mapping = configs.distiller({"bd": bd}, STUDENT, TEACHER, num_classes=NUM_CLASSES)
    inputs = mapping["loss_forward_mappings"]["loss_bd"]
    assert inputs["teacher_logits"] == configs.TAPS["teacher.logits"] and "gt_seg" not in inputs
    assert "gt" not in mapping["student_recorders"]  # no ground truth recorded at all
    algo = _algorithm(teacher_ckpt, {"bd": bd})
    losses = algo(*_batch(), mode="loss")
    losses["distill.loss_bd"].backward()
    loss = algo.distiller.distill_losses["loss_bd"]
    assert loss.form == "spatial" and loss.teacher == teacher and loss.last_kd > 0
    assert all(p.grad is None for p in algo.teacher.parameters())
    assert sum(p.grad.abs().sum() for p in algo.student.backbone.parameters()
               if p.grad is not None) > 0
    assert (loss.teacher_conv.weight.grad is not None) == (teacher == "probe_pred")
    # the default reading keeps the labels and reads no logits
    default = configs.distiller({"bd": BCD["bd"]}, STUDENT, TEACHER, num_classes=NUM_CLASSES)
    assert set(default["loss_forward_mappings"]["loss_bd"]) == {"preds_S", "preds_T", "gt_seg"}


def test_registry_names_for_user_configs():
    from mmengine.registry import HOOKS
    from mmrazor.registry import MODELS

    for name in ("BoundaryDistillLoss", "ContextDistillLoss", "HierarchicalFusion",
                 "SegDataSampleLabels"):
        assert MODELS.get(name) is not None, name
    for name in ("DistillLossDecayHook", "NonFiniteLossHook"):
        assert HOOKS.get(name) is not None, name


def test_distiller_builds_whatever_the_default_scope_left_by_an_earlier_runner():
    """An mmseg Runner (a teacher training, an evaluation) leaves "mmseg" as mmengine's default
    scope in the process; the distiller config names its own scope, so it still builds."""
    from mmengine.registry import DefaultScope
    from mmrazor.registry import MODELS

    cfg = configs.distiller(BCD, STUDENT, TEACHER, seed=0, num_classes=NUM_CLASSES)
    for scope in ("mmseg", "mmengine", "mmrazor"):
        with DefaultScope.overwrite_default_scope(scope):
            distiller = MODELS.build(cfg)
        assert {"loss_bd", "loss_cd"} <= set(distiller.distill_losses)


def test_a_frozen_teacher_runs_forward_only_with_the_losses_of_its_full_forward(teacher_ckpt):
    """The frozen teacher runs mode="tensor" (no auxiliary head, no teacher losses): every
    distillation term is what mmrazor's mode="loss" teacher forward gives, to the bit."""
    methods = {**BCD, "kd": dict(type="PixelKDLoss", loss_weight=1.0, tau=1.0),
               "cwd": dict(type="ChannelWiseDivergence", loss_weight=1.0, tau=1.0)}
    inputs, samples = _batch()
    torch.manual_seed(0)
    algo = _algorithm(teacher_ckpt, methods)
    assert "_teacher_forward" in str(algo.teacher.loss)
    calls, aux = [], algo.teacher.auxiliary_head
    forward = aux.forward  # mmseg's heads call self.forward directly (hooks would not see it)
    aux.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    state = torch.get_rng_state()
    fast = algo(inputs, samples, mode="loss")
    assert not calls, "the frozen teacher ran its auxiliary head"
    del algo.teacher.loss  # back to mmseg's EncoderDecoder.loss (the full forward)
    torch.set_rng_state(state)
    full = algo(inputs, samples, mode="loss")
    assert calls, "the full forward runs the auxiliary head"
    assert fast.keys() == full.keys() and any(k.startswith("distill.") for k in fast)
    for key in fast:
        assert torch.equal(fast[key], full[key]), key
