"""Integration: every comparison method of params/default.yaml through mmrazor's distiller, on
the PSPNet and DeepLabV3+ pairs: one step, finite loss, gradients to the student only; and a
joint run (method + BCD) where r(t) scales only BCD's own terms."""
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.methods import method  # noqa: E402
from bcd.mm import configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CFG = P.load_params([ROOT / "params/default.yaml"])
METHODS = {k: v for k, v in CFG["methods"].items() if not method(v["type"]).scheduled
           and method(v["type"]).applies_to("segmentation", v)}  # not Table V's detector ones
NUM_CLASSES = 7
PAIRS = {
    "pspnet": (dict(arch="pspnet", depth=50, base_channels=8),
               dict(arch="pspnet", depth=18, base_channels=8)),
    "deeplabv3plus": (dict(arch="deeplabv3plus", depth=50, base_channels=8,
                           aspp_dilations=[1, 2, 3, 4]),
                      dict(arch="deeplabv3plus", depth=18, base_channels=8,
                           aspp_dilations=[1, 2, 3, 4])),
}


def _batch(n=2, size=32):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, size, size), generator=g))
        s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        samples.append(s)
    return torch.randn(n, 3, size, size, generator=g), samples


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request, tmp_path_factory):
    from mmseg.registry import MODELS

    from bcd.weights import save_weights

    teacher_spec, student_spec = PAIRS[request.param]
    teacher = MODELS.build(configs.segmentor(teacher_spec, NUM_CLASSES, (32, 32)))
    path = tmp_path_factory.mktemp(request.param) / "model.pth"
    save_weights(teacher, path, {"kind": "teacher"})
    return teacher_spec, student_spec, path


def _algorithm(pair, methods, decay=False):
    from mmrazor.registry import MODELS

    teacher_spec, student_spec, ckpt = pair
    cfg = configs.distill_config(student_spec=student_spec, teacher_spec=teacher_spec,
                                 teacher_ckpt=ckpt, methods=methods, decay_schedule=decay,
                                 data=dict(dataset="shapes", height=32, width=32),
                                 data_root="unused",
                                 train=dict(iters=10, batch_size=2, lr=0.01, momentum=0.9,
                                            weight_decay=0.0),
                                 work_dir="unused", seed=0, log_file="unused.json")
    algo = MODELS.build(cfg.model.to_dict())
    algo.train()
    return algo, cfg


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_step_through_mmrazor(pair, method):
    algo, _ = _algorithm(pair, {method: METHODS[method]})
    inputs, samples = _batch()
    losses = algo(inputs, samples, mode="loss")
    key = f"distill.loss_{method}"
    assert key in losses and torch.isfinite(losses[key]) and losses[key] > 0, losses
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert all(p.grad is None for p in algo.teacher.parameters()), "teacher received gradients"
    assert sum(p.grad.abs().sum() for p in algo.student.parameters() if p.grad is not None) > 0
    # the distillation term alone reaches the student (not only the task loss)
    algo.zero_grad()
    losses = algo(inputs, samples, mode="loss")
    losses[key].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.student.parameters())


def test_joint_run_decays_only_bcd_terms(pair):
    methods = {"tat": METHODS["tat"], "bd": CFG["methods"]["bd"], "cd": CFG["methods"]["cd"]}
    _, cfg = _algorithm(pair, methods, decay=True)
    hooks = [h for h in cfg.custom_hooks if h["type"] == "DistillLossDecayHook"]
    assert hooks and hooks[0]["loss_names"] == ["loss_bd", "loss_cd"]


def test_registry_and_taps_follow_the_declarations():
    from mmrazor.registry import MODELS

    from bcd import methods as catalog

    assert set(configs.TAPS) == set(catalog.TAP_NAMES)
    for loss_type in catalog.declared():
        assert MODELS.get(loss_type) is not None, loss_type  # bcd's own, or mmrazor's (CWD)
