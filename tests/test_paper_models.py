"""The paper's architectures (Tables I-IV) from model specs: build, taps, distillation, errors.

Every student builds at 64x64 with reduced widths, runs forward + backward, and predicts
num_classes channels at the input size; the per-arch tap table matches the built modules; one
mmrazor step with BD + CD (and one with every comparison method that applies) from a small
PSPNet-R101 teacher reaches the student only; offline pretrained weights and misplaced spec
keys fail with messages that name the cause (Mask2Former: tests/test_mask2former.py).
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.methods import method  # noqa: E402
from bcd.mm import compat, configs  # noqa: E402
from bcd.weights import UntrustedCheckpointError  # noqa: E402
from seg_batch import seg_batch  # noqa: E402  (tests/seg_batch.py)

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES, SIZE = 5, 64
TEACHER = dict(arch="pspnet", depth=101, base_channels=8)
# the new students, shrunk in width (base_channels) where the spec allows
STUDENTS = {
    "pspnet-r38": dict(arch="pspnet", depth=38, base_channels=8),
    "pspnet-mobilenetv2": dict(arch="pspnet", backbone="mobilenetv2", base_channels=8),
    "deeplabv3plus-mobilenetv2": dict(arch="deeplabv3plus", backbone="mobilenetv2",
                                      base_channels=8, aspp_dilations=[1, 2, 3, 4]),
    "pspnet-efficientnet-b1": dict(arch="pspnet", backbone="efficientnet-b1", base_channels=8),
    "segformer-b0": dict(arch="segformer", base_channels=8),
    "espnet": dict(arch="espnet", base_channels=4),
}
DEFAULT = P.load_params([ROOT / "params/default.yaml"])
BASELINES = {k: v for k, v in DEFAULT["methods"].items() if not method(v["type"]).scheduled
             and method(v["type"]).applies_to("segmentation", v)}  # not Table V's detector ones


def _batch(n=2, size=SIZE):
    return seg_batch(n, size, NUM_CLASSES)


def _build(spec):
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(configs.segmentor(spec, NUM_CLASSES, (SIZE, SIZE)))
    model.init_weights()
    return model


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_builds_predicts_and_trains(name):
    model = _build(STUDENTS[name])
    model.train()
    inputs, samples = _batch()
    logits = model.encode_decode(inputs, [s.metainfo for s in samples])
    assert logits.shape == (2, NUM_CLASSES, SIZE, SIZE)
    losses = model(inputs, samples, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    for part in (model.backbone, model.decode_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), f"{name}: a {part} param got no grad"
        assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", sorted(STUDENTS) + ["teacher"])
def test_tap_table_matches_the_built_model(name):
    """configs.taps() (channels, strides, module paths) is what the modules really produce."""
    spec = STUDENTS.get(name, TEACHER)
    t = configs.taps(spec, NUM_CLASSES)
    model = _build(spec).eval()
    seen = {}
    classifier = model.get_submodule(t.classifier)
    classifier.register_forward_hook(lambda m, i, o: seen.update(head=i[0], logits=o))
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        levels = model.get_submodule(t.backbone)(x)
        model.decode_head(levels)
    assert [f.shape[1] for f in levels] == t.levels
    assert SIZE // levels[0].shape[-1] == t.first_stride
    assert seen["head"].shape[1] == t.head_channels
    assert seen["logits"].shape[1] == NUM_CLASSES
    assert SIZE // seen["logits"].shape[-1] == t.logits_stride


def test_paper_sizes_match_table_ii():
    """At the paper's widths the builds have Table II's parameter counts (19 classes)."""
    def millions(spec):
        from mmseg.registry import MODELS

        m = MODELS.build(configs.segmentor(spec, 19, (512, 512)))
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert millions(dict(arch="pspnet", backbone="efficientnet-b1")) == pytest.approx(6.7, abs=0.1)
    assert millions(dict(arch="segformer")) == pytest.approx(3.8, abs=0.15)
    assert millions(dict(arch="espnet")) == pytest.approx(0.36, abs=0.05)
    r38 = millions(dict(arch="pspnet", depth=38, base_channels=64))
    assert millions(dict(arch="pspnet", depth=18, base_channels=64)) < r38 < millions(
        dict(arch="pspnet", depth=50, base_channels=64))


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    from bcd.weights import save_weights

    path = tmp_path_factory.mktemp("teacher") / "model.pth"
    save_weights(_build(TEACHER), path, {"kind": "teacher"})
    return path


def _algorithm(student, teacher_ckpt, methods):
    from mmrazor.registry import MODELS

    cfg = configs.distill_config(student_spec=student, teacher_spec=TEACHER,
                                 teacher_ckpt=teacher_ckpt, methods=methods, decay_schedule=True,
                                 data=dict(dataset="shapes", height=SIZE, width=SIZE),
                                 data_root="unused",
                                 train=dict(iters=10, batch_size=2, lr=0.01, momentum=0.9,
                                            weight_decay=0.0),
                                 work_dir="unused", seed=0, log_file="unused.json")
    cfg.model.architecture.decode_head.num_classes = NUM_CLASSES
    cfg.model.teacher.decode_head.num_classes = NUM_CLASSES
    for head in ("auxiliary_head",):
        for side in (cfg.model.architecture, cfg.model.teacher):
            if head in side:
                side[head].num_classes = NUM_CLASSES
    losses = cfg.model.distiller.distill_losses
    for loss in losses.values():
        if "num_classes" in loss:
            loss.num_classes = NUM_CLASSES
    algo = MODELS.build(cfg.model.to_dict())
    algo.train()
    return algo


def _step_reaches_student_only(algo, keys):
    inputs, samples = _batch()
    losses = algo(inputs, samples, mode="loss")
    for key in keys:
        assert key in losses and torch.isfinite(losses[key]) and losses[key] > 0, (key, losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert all(p.grad is None for p in algo.teacher.parameters()), "teacher received gradients"
    assert sum(p.grad.abs().sum() for p in algo.student.backbone.parameters()
               if p.grad is not None) > 0
    # the distillation terms alone reach the student's backbone
    algo.zero_grad()
    losses = algo(inputs, samples, mode="loss")
    sum(losses[k] for k in keys).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in algo.student.backbone.parameters())


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_bcd_step_into_each_student(name, teacher_ckpt):
    bcd = {k: DEFAULT["methods"][k] for k in ("bd", "cd")}
    algo = _algorithm(STUDENTS[name], teacher_ckpt, bcd)
    _step_reaches_student_only(algo, ["distill.loss_bd", "distill.loss_cd"])
    assert all(not p.requires_grad for p in algo.distiller.connectors["t_fuse"].parameters())
    assert all(p.grad is not None for p in algo.distiller.connectors["s_fuse"].parameters())


def _applicable(student):
    t_s, t_t = configs.taps(student, NUM_CLASSES), configs.taps(TEACHER, NUM_CLASSES)
    return {k: v for k, v in BASELINES.items()
            if not method(v["type"]).same_logits_stride or t_s.logits_stride == t_t.logits_stride}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_every_comparison_method_into_each_student(name, teacher_ckpt):
    """All methods of params/default.yaml at once (one step): each term finite, > 0."""
    methods = _applicable(STUDENTS[name])
    assert set(BASELINES) - set(methods) <= {"cwd"}
    algo = _algorithm(STUDENTS[name], teacher_ckpt, methods)
    _step_reaches_student_only(algo, [f"distill.loss_{m}" for m in methods])


def test_method_that_cannot_apply_is_refused_at_config_time(teacher_ckpt):
    with pytest.raises(ValueError, match=r"'cwd'.*segformer.*1/4.*pspnet.*1/8"):
        _algorithm(STUDENTS["segformer-b0"], teacher_ckpt, {"cwd": BASELINES["cwd"]})


# ------------------------------------------------------------------------------------------------
# Pretrained backbones
# ------------------------------------------------------------------------------------------------
def test_pretrained_url_offline_names_url_and_model(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download

    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    spec = dict(STUDENTS["pspnet-mobilenetv2"], pretrained="open-mmlab://resnet101_v1c")
    cfg = configs.segmentor(spec, NUM_CLASSES, (SIZE, SIZE))
    assert cfg["backbone"]["init_cfg"]["checkpoint"] == "open-mmlab://resnet101_v1c"
    from mmseg.registry import MODELS

    model = MODELS.build(cfg)
    with pytest.raises(compat.PretrainedWeightsError) as info:
        model.init_weights()
    msg = str(info.value)
    assert "open-mmlab://resnet101_v1c" in msg and "pspnet / mobilenetv2" in msg
    assert "network access" in msg and "local" in msg


def test_pretrained_local_file_loads_weights_only(tmp_path):
    spec = STUDENTS["segformer-b0"]
    source = _build(spec).backbone.state_dict()
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": source}, path)
    model = _build(dict(spec, pretrained=str(path)))  # init_weights loads it
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, source[k]), k
    # a file that needs full unpickling is refused (project rule, bcd.mm.compat)
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": source, "meta": compat.PretrainedWeightsError("x")}, bad)
    with pytest.raises(UntrustedCheckpointError):
        _build(dict(spec, pretrained=str(bad)))
    with pytest.raises(compat.PretrainedWeightsError, match="segformer.*not found"):
        _build(dict(spec, pretrained=str(tmp_path / "missing.pth")))


# ------------------------------------------------------------------------------------------------
# The params checks
# ------------------------------------------------------------------------------------------------
def test_params_accept_every_paper_arch(tmp_path):
    models = {f"s-{i}": spec for i, spec in enumerate(STUDENTS.values())}
    models["pspnet-r38-paper"] = dict(arch="pspnet", depth=38, base_channels=64,
                                      pretrained="open-mmlab://resnet50_v1c")
    overlay = tmp_path / "paper-models.yaml"
    overlay.write_text(yaml.safe_dump({"models": models}))
    cfg = P.load_params([ROOT / "params/default.yaml", overlay])
    assert set(models) <= set(cfg["models"])


@pytest.mark.parametrize("spec,key,words", [
    (dict(arch="pspnet", backbone="vgg16"), "backbone", "is not one of"),
    (dict(arch="segformer", backbone="resnet"), "backbone", "has its own backbone"),
    (dict(arch="segformer", depth=18), "depth", "ResNet setting"),
    (dict(arch="pspnet", backbone="mobilenetv2", depth=18), "depth", "ResNet setting"),
    (dict(arch="pspnet", base_channels=8), "depth", "missing (required)"),
    (dict(arch="pspnet", depth=26, base_channels=8), "depth", "is not one of"),
    (dict(arch="espnet", aspp_dilations=[1, 2]), "aspp_dilations", "applies to deeplabv3plus"),
    (dict(arch="espnet", base_channels=1), "base_channels", ">= 2"),
    (dict(arch="segformer", width=0.5), "width", "unknown key"),
], ids=["unknown-backbone", "own-backbone", "depth-segformer", "depth-mobilenet",
        "resnet-needs-depth", "unknown-depth", "aspp-on-espnet", "espnet-too-narrow",
        "unknown-field"])
def test_params_reject_bad_model_specs_naming_file_and_key(tmp_path, spec, key, words):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"bad": spec}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", overlay])
    hits = [m for f, k, m in info.value.errors if (f, k) == (str(overlay), f"models.bad.{key}")]
    assert hits and any(words in m for m in hits), str(info.value)
