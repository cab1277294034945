"""The worked example of README "Adding a distillation method", end to end: FeatureL2Loss
(bcd/losses/feature_l2.py) on hand-checked values, its gradients, bad input; its params overlay
(params/examples/feature-l2.yaml) validated by bcd.params; built into an mmrazor distiller from
its declaration alone and stepped once."""
from pathlib import Path

import pytest
import torch
import yaml

from bcd import params as P
from bcd.losses.feature_l2 import FeatureL2Loss

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "params/default.yaml", ROOT / "params/examples/feature-l2.yaml"]


def _identity(c: int) -> FeatureL2Loss:
    loss = FeatureL2Loss(c, c)
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        loss.regressor.bias.zero_()
    return loss


def test_value_is_the_weighted_mean_squared_distance():
    s, t = torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 2.0)
    t[0, 1] = -1.0  # squares: 4 on channel 0, 1 on channel 1 -> mean 2.5
    assert _identity(2)(s, t).item() == pytest.approx(2.5)
    loss = _identity(2)
    loss.loss_weight = 0.1
    assert loss(s, t).item() == pytest.approx(0.25)


def test_normalize_compares_directions_only():
    loss = _identity(2)
    loss.normalize = True
    s = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert loss(s, 5 * s).item() == pytest.approx(0.0, abs=1e-7)  # same direction
    assert loss(s, torch.tensor([0.0, 3.0]).view(1, 2, 1, 1)).item() == pytest.approx(1.0)


def test_student_is_resized_to_the_teacher_and_only_the_student_side_gets_gradients():
    loss = FeatureL2Loss(3, 5)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 5, 8, 8, requires_grad=True)
    loss(s, t).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0 and loss.regressor.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("args,preds,words", [
    ((0, 4), None, "student_channels must be an int >= 1"),
    ((3, True), None, "teacher_channels must be an int >= 1"),
    ((3, 4), ((2, 2, 4, 4), (2, 4, 4, 4)), "preds_S has 2 channels"),
    ((3, 4), ((2, 3, 4, 4), (2, 5, 4, 4)), "preds_T has 5 channels"),
    ((3, 4), ((2, 3, 4), (2, 4, 4, 4)), "must be (N, C, H, W)"),
])
def test_bad_input_is_refused_with_a_message(args, preds, words):
    with pytest.raises(ValueError) as info:
        loss = FeatureL2Loss(*args)
        loss(torch.randn(*preds[0]), torch.randn(*preds[1]))
    assert str(info.value).startswith("FeatureL2Loss: ") and words in str(info.value)


# ----------------------------------------------------------------------------------------------
# Params: the overlay validates; its mistakes are one-line `FILE: key: message` errors
# ----------------------------------------------------------------------------------------------
def test_the_overlay_loads_and_validates():
    cfg = P.load_params(FILES)
    assert cfg["methods"]["hint"] == {"type": "FeatureL2Loss", "loss_weight": 1.0,
                                      "normalize": False}
    assert cfg["runs"]["r18-hint"]["distill"] == ["hint"]


@pytest.mark.parametrize("setting,value,words", [
    ("normalize", 3, "3 is not of type 'boolean'"),
    ("loss_weight", -1, "-1 is less than the minimum of 0"),
    ("radius", 4, "unknown key 'radius' (allowed here: loss_weight, normalize, type)"),
])
def test_bad_settings_name_the_file_and_key(tmp_path, setting, value, words):
    overlay = yaml.safe_load(FILES[1].read_text())
    overlay["methods"]["hint"][setting] = value
    bad = tmp_path / "feature-l2.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([FILES[0], bad])
    assert f"{bad}: methods.hint.{setting}: {words}" in str(info.value).splitlines()


# ----------------------------------------------------------------------------------------------
# mmrazor: the declaration alone wires it (recorders, channels from the models), one step
# ----------------------------------------------------------------------------------------------
def test_one_distillation_step_through_mmrazor(tmp_path):
    pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")
    import bcd.mm  # noqa: F401  (patches + registration)
    from mmrazor.registry import MODELS

    from bcd.mm import configs
    from seg_batch import saved_teacher, seg_batch  # tests/seg_batch.py

    cfg = P.load_params(FILES)
    methods = {m: cfg["methods"][m] for m in cfg["runs"]["r18-hint"]["distill"]}
    teacher = dict(arch="pspnet", depth=50, base_channels=8)
    student = dict(arch="pspnet", depth=18, base_channels=8)
    model = configs.distill_config(
        student_spec=student, teacher_spec=teacher,
        teacher_ckpt=saved_teacher(tmp_path, teacher, 7), methods=methods, decay_schedule=True,
        data=dict(dataset="shapes", height=32, width=32), data_root="unused",
        train=dict(iters=10, batch_size=2, lr=0.01, momentum=0.9, weight_decay=0.0),
        work_dir="unused", seed=0, log_file="unused.json")
    assert not any(h["type"] == "DistillLossDecayHook" for h in model.custom_hooks)  # not r(t)'s
    algo = MODELS.build(model.model.to_dict())
    algo.train()
    loss = algo.distiller.distill_losses["loss_hint"]
    assert isinstance(loss, FeatureL2Loss)
    # the regressor's widths: the decode heads' channels (the classifier's inputs)
    assert (loss.regressor.in_channels, loss.regressor.out_channels) == (
        configs.head_channels(student), configs.head_channels(teacher))
    losses = algo(*seg_batch(2, 32, 7), mode="loss")
    assert torch.isfinite(losses["distill.loss_hint"]) and losses["distill.loss_hint"] > 0
    losses["distill.loss_hint"].backward()
    assert all(p.grad is None for p in algo.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.student.parameters())
