"""Mask2Former (Table II's second ADE20K teacher, bcd.mm.mask2former): the build from mmseg's
config, its taps, its logits connector, BCD distillation from a narrow one through mmrazor, and
the refusals (methods on its decode-head features, model keys, mmdet missing)."""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
pytest.importorskip("mmdet", reason="Mask2Former's head is mmdet's (tools/requirements.txt)")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.mm import configs  # noqa: E402
from bcd.mm.models.mask2former_head import mask_class_logits  # noqa: E402
from seg_batch import seg_batch  # noqa: E402  (tests/seg_batch.py)

ROOT = Path(__file__).resolve().parents[1]
DATA = dict(dataset="shapes", height=64, width=64)
NUM_CLASSES, SIZE = configs.num_classes(DATA), 64
#: narrow: ResNet-50 at base width 16 (head 64 channels), 6 queries, 2 decoder layers
TEACHER = dict(arch="mask2former", depth=50, base_channels=16, num_queries=6, decoder_layers=2)
#: the students the paper distils from its Mask2Former (Table II, ADE20K), narrow
STUDENTS = {
    "espnet": dict(arch="espnet", base_channels=4),
    "pspnet-mobilenetv2": dict(arch="pspnet", backbone="mobilenetv2", base_channels=8),
    "segformer-b0": dict(arch="segformer", base_channels=8),
}
DEFAULT = P.load_params([ROOT / "params/default.yaml"])


def _build(spec):
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(configs.segmentor(spec, NUM_CLASSES, (SIZE, SIZE)))
    model.init_weights()
    return model


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    from bcd.weights import save_weights

    path = tmp_path_factory.mktemp("m2f-teacher") / "model.pth"
    save_weights(_build(TEACHER), path, {"kind": "teacher"})
    return path


def _algorithm(student, teacher_ckpt, methods):
    from mmrazor.registry import MODELS

    cfg = configs.distill_config(student_spec=student, teacher_spec=TEACHER,
                                 teacher_ckpt=teacher_ckpt, methods=methods, decay_schedule=True,
                                 data=DATA, data_root="unused",
                                 train=dict(iters=2, batch_size=2, lr=0.01, momentum=0.9,
                                            weight_decay=0.0),
                                 work_dir="unused", seed=0, log_file="unused.json")
    assert cfg.model.teacher.decode_head.type == "TensorMask2FormerHead"
    algo = MODELS.build(cfg.model.to_dict())
    algo.init_weights()
    algo.train()
    return algo


# ----------------------------------------------------------------------------------------------
# Build, taps, logits
# ----------------------------------------------------------------------------------------------
def test_paper_width_has_table_ii_size():
    """mmseg's Mask2Former-R50 at 150 classes: the paper's 44.0M (Table II, ADE20K)."""
    from mmseg.registry import MODELS

    spec = dict(arch="mask2former", depth=50, base_channels=64)
    cfg = configs.segmentor(spec, 150, (512, 512))
    head = cfg.decode_head
    assert (head.num_queries, head.transformer_decoder.num_layers, head.feat_channels) == (
        100, 9, 256)
    assert cfg.backbone.norm_cfg == dict(type="BN", requires_grad=True)  # SyncBN -> BN
    net = MODELS.build(cfg)
    assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(44.0, abs=0.1)
    pretrained = configs.segmentor(dict(spec, pretrained="x.pth"), 150, (512, 512))
    assert pretrained.backbone.norm_cfg.requires_grad is False  # mmseg's, with ImageNet weights
    assert pretrained.backbone.init_cfg.checkpoint == "x.pth"


def test_narrow_teacher_taps_trains_and_predicts():
    t = configs.taps(TEACHER, NUM_CLASSES)
    model = _build(TEACHER)
    inputs, samples = seg_batch(2, SIZE, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        levels = model.get_submodule(t.backbone)(inputs)
        outputs = model(inputs, None, mode="tensor")  # TensorMask2FormerHead: no samples
        pred = model(inputs, samples, mode="predict")
    assert [f.shape[1] for f in levels] == t.levels == [64, 128, 256, 512]
    assert SIZE // levels[0].shape[-1] == t.first_stride == 4
    cls, masks = outputs
    assert len(cls) == TEACHER["decoder_layers"] + 1
    assert cls[-1].shape == (2, 6, NUM_CLASSES + 1)
    assert SIZE // masks[-1].shape[-1] == t.logits_stride == 4
    assert pred[0].pred_sem_seg.data.shape == (1, SIZE, SIZE)
    model.train()
    losses = model(inputs, samples, mode="loss")
    assert all(torch.isfinite(v) for k, v in losses.items() if "loss" in k)


def test_mask_class_logits_is_the_normalised_semantic_score():
    # one query certain of class 1 covering the left pixel, one of class 0 the right one
    big = 20.0
    cls = torch.tensor([[[-big, big, -big], [big, -big, -big]]])  # (1, Q=2, K+1=3)
    masks = torch.tensor([[[[big, -big]], [[-big, big]]]])  # (1, 2, 1, 2)
    probs = mask_class_logits(cls, masks).softmax(dim=1)
    assert probs[0, :, 0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-4)
    assert probs[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.0], abs=1e-4)
    # in general softmax(log S) = S / sum S, with S = sum_q p_q(k) sigmoid(m_q)
    g = torch.Generator().manual_seed(0)
    cls, masks = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    s = torch.einsum("nqk,nqhw->nkhw", cls.softmax(-1)[..., :-1], masks.sigmoid())
    assert torch.allclose(mask_class_logits(cls, masks).softmax(1), s / s.sum(1, keepdim=True),
                          atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Distillation: two iterations through mmrazor
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_bcd_two_iterations_from_a_mask2former_teacher(name, teacher_ckpt):
    """params/default.yaml's BD (teacher: prediction, i.e. the teacher's logits) and CD."""
    methods = {k: DEFAULT["methods"][k] for k in ("bd", "cd")}
    algo = _algorithm(STUDENTS[name], teacher_ckpt, methods)
    assert "t_m2f_logits" in algo.distiller.connectors
    before = {k: v.clone() for k, v in algo.teacher.state_dict().items()}
    optim = torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=0.01)
    inputs, samples = seg_batch(2, SIZE, NUM_CLASSES)
    for _ in range(2):
        optim.zero_grad()
        losses = algo(inputs, samples, mode="loss")
        for key in ("distill.loss_bd", "distill.loss_cd"):
            assert torch.isfinite(losses[key]) and losses[key] > 0, (key, losses)
        total = sum(v for k, v in losses.items() if "loss" in k)
        assert torch.isfinite(total)
        total.backward()
        assert all(p.grad is None for p in algo.teacher.parameters()), "teacher got gradients"
        assert not any(p.requires_grad for p in algo.teacher.parameters())
        optim.step()
    assert all(torch.equal(v, algo.teacher.state_dict()[k]) for k, v in before.items())
    assert sum(p.grad.abs().sum() for p in algo.student.backbone.parameters()
               if p.grad is not None) > 0


def test_backbone_only_methods_skip_the_teacher_decoders(teacher_ckpt):
    """BD on the labels (teacher: probe) + CD read only the teacher's backbone levels: the
    frozen teacher runs extract_feat, not its pixel and transformer decoders."""
    methods = {"bd": dict(DEFAULT["methods"]["bd"], teacher="probe"), "cd": DEFAULT["methods"]["cd"]}
    algo = _algorithm(STUDENTS["segformer-b0"], teacher_ckpt, methods)
    calls = []
    algo.teacher.decode_head.pixel_decoder.register_forward_hook(lambda *a: calls.append(1))
    losses = algo(*seg_batch(2, SIZE, NUM_CLASSES), mode="loss")
    assert torch.isfinite(losses["distill.loss_bd"]) and calls == []
    # with the teacher's logits (default BD) the head runs
    algo = _algorithm(STUDENTS["segformer-b0"], teacher_ckpt, {"bd": DEFAULT["methods"]["bd"]})
    algo.teacher.decode_head.pixel_decoder.register_forward_hook(lambda *a: calls.append(1))
    algo(*seg_batch(2, SIZE, NUM_CLASSES), mode="loss")
    assert calls == [1]


def test_logit_methods_read_the_mask_classifier_logits(teacher_ckpt):
    """KD and BPKD from a Mask2Former: its logits via Mask2FormerSegLogits, at 1/4."""
    methods = {k: DEFAULT["methods"][k] for k in ("kd", "bpkd")}
    algo = _algorithm(STUDENTS["segformer-b0"], teacher_ckpt, methods)
    losses = algo(*seg_batch(2, SIZE, NUM_CLASSES), mode="loss")
    for key in ("distill.loss_kd", "distill.loss_bpkd"):
        assert torch.isfinite(losses[key]) and losses[key] > 0, (key, losses)
    logits = algo.distiller.get_record("logits", from_student=False,
                                       connector="t_m2f_logits")
    assert logits.shape == (2, NUM_CLASSES, SIZE // 4, SIZE // 4)


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ifvd", "skd-pair", "cirkd", "tat"])
def test_methods_on_decode_head_features_are_refused_by_name(method):
    with pytest.raises(ValueError, match=rf"'{method}'.*teacher's segmentation head.*"
                                         r"mask2former / resnet-50.*Mask2Former"):
        configs.distiller({method: DEFAULT["methods"][method]}, STUDENTS["segformer-b0"],
                          TEACHER, num_classes=NUM_CLASSES)
    cd_head = {"cd": dict(DEFAULT["methods"]["cd"], teacher_features="head")}
    with pytest.raises(ValueError, match=r"'cd'.*Mask2Former"):
        configs.distiller(cd_head, STUDENTS["segformer-b0"], TEACHER, num_classes=NUM_CLASSES)


def test_params_refuse_a_head_feature_method_from_a_mask2former_teacher(tmp_path):
    overlay = tmp_path / "m2f.yaml"
    overlay.write_text(yaml.safe_dump({
        "models": {"m2f": TEACHER},
        "teachers": {"m2f-t": {"model": "m2f", "seed": 0}},
        "runs": {"r18-m2f": {"student": "pspnet-r18", "teacher": "m2f-t",
                             "distill": ["bd", "cd", "ifvd"]},
                 "r18-m2f-ok": {"student": "pspnet-r18", "teacher": "m2f-t",
                                "distill": ["bd", "cd", "kd", "sstkd"]}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", overlay])
    assert [(f, k) for f, k, _ in info.value.errors] == [(str(overlay), "runs.r18-m2f.distill[2]")]
    assert "'ifvd'" in str(info.value) and "Mask2Former" in str(info.value)


@pytest.mark.parametrize("spec,key,words", [
    (dict(TEACHER, backbone="resnet"), "backbone", "has its own backbone"),
    (dict(TEACHER, depth=38), "depth", "mmseg's"),
    (dict(TEACHER, base_channels=12), "base_channels", "multiple of 8"),
    (dict(TEACHER, class_weight=[1.0] * 7), "class_weight", "classifies masks"),
    (dict(arch="mask2former", base_channels=16), "depth", "missing (required)"),
    (dict(arch="pspnet", depth=18, base_channels=8, num_queries=4), "num_queries",
     "applies to mask2former"),
    (dict(arch="segformer", decoder_layers=2), "decoder_layers", "applies to mask2former"),
], ids=["backbone", "depth-38", "base-12", "class-weight", "needs-depth", "queries-pspnet",
        "layers-segformer"])
def test_params_reject_bad_mask2former_keys(tmp_path, spec, key, words):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"bad": spec}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", overlay])
    hits = [m for f, k, m in info.value.errors if (f, k) == (str(overlay), f"models.bad.{key}")]
    assert hits and any(words in m for m in hits), str(info.value)


def test_without_mmdet_mask2former_is_refused_naming_the_install(monkeypatch, tmp_path):
    import bcd.archs as archs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mmdet" else real(name, *a))
    try:
        reloaded = importlib.reload(archs)
        assert "pip install mmdet==3.3.0" in reloaded.UNAVAILABLE_ARCHS["mask2former"]
    finally:
        monkeypatch.undo()
        importlib.reload(archs)
    assert "mask2former" not in archs.UNAVAILABLE_ARCHS
    # the params check and segmentor() read the same table
    from bcd.params import validate

    monkeypatch.setitem(validate.UNAVAILABLE_ARCHS, "mask2former", "needs mmdet: pip install")
    with pytest.raises(ValueError, match="needs mmdet"):
        configs.segmentor(TEACHER, NUM_CLASSES, (SIZE, SIZE))
    overlay = tmp_path / "m2f.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"m2f": TEACHER}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", overlay])
    assert [(f, k) for f, k, _ in info.value.errors] == [(str(overlay), "models.m2f.arch")]
