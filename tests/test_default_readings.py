"""The default params' BD and CD (params/default.yaml, chosen by the val protocol of
docs/method.md) keep their strength at every feature-map size: the per-pixel gradient relative to
a pixel-mean loss changes by at most 2x between 16x16 and 64x64 maps (issue 13's acceptance)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from bcd.losses import BoundaryDistillLoss, ContextDistillLoss
from test_losses_boundary import _layout as bd_layout
from test_losses_context import _pixel_gradient_scale, _structured_pair

DEFAULT = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
CONNECTOR_KEYS = ("type", "fused_channels", "teacher_fusion_seed")  # the connector's, not the loss's


def _default_settings(name: str) -> dict:
    settings = yaml.safe_load(DEFAULT.read_text())["methods"][name]
    return {k: v for k, v in settings.items() if k not in CONNECTOR_KEYS}


def test_defaults_are_the_protocols_choice():
    bd, cd = _default_settings("bd"), _default_settings("cd")
    assert (bd["form"], bd["teacher"]) == ("spatial", "prediction")
    assert (cd["reduction"], cd["teacher_features"]) == ("row", "fused")


@pytest.mark.parametrize("case", ["nearest", "rendered"])
def test_default_cd_gradient_scale_16_to_64(case):
    scales = []
    for size in (16, 64):
        t, s = _structured_pair(size, case)
        loss = ContextDistillLoss(in_channels=s.shape[1], **_default_settings("cd"))
        scales.append(_pixel_gradient_scale(loss, s, t))
    assert 0.5 <= scales[0] / scales[1] <= 2.0, scales


def test_default_bd_gradient_scale_16_to_64():
    scales = []
    for size in (16, 64):
        gen = torch.Generator().manual_seed(0)
        onehot = F.one_hot(bd_layout(size), 4).permute(0, 3, 1, 2).double()
        s = onehot + 0.1 * torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
        t = onehot + 0.1 * torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
        torch.manual_seed(0)
        loss = BoundaryDistillLoss(in_channels=4, **_default_settings("bd")).double().train()
        s.requires_grad_(True)
        loss(s, t, teacher_logits=4.0 * onehot).backward()
        scales.append(float(size * size * s.grad.norm(dim=1).mean()))
    assert all(v > 0 for v in scales)
    assert 0.5 <= scales[0] / scales[1] <= 2.0, scales


def test_zero_weight_controls_follow_the_defaults():
    """params/camvid-pretrained.yaml's bd-zero / cd-zero are `bd` / `cd` with weight 0."""
    from bcd import params as P

    root = DEFAULT.parent
    cfg = P.load_params([DEFAULT, root / "camvid.yaml", root / "camvid-pretrained.yaml"])
    for name in ("bd", "cd"):
        control = dict(cfg["methods"][f"{name}-zero"])
        assert control.pop("loss_weight") == 0.0
        default = dict(cfg["methods"][name])
        default.pop("loss_weight")
        assert control == default, name


def test_second_stage_candidates_are_the_first_stages_readings():
    """params/protocol-camvid.yaml (the protocol's second stage on pretrained CamVid) runs B3 and
    C2 of params/protocol.yaml, and C1 (the default `cd`), at the weights its share rule set;
    it loads over its three base files and shares the profile's runs folder."""
    from bcd import params as P

    root = DEFAULT.parent
    cfg = P.load_params([DEFAULT, root / "camvid.yaml", root / "camvid-pretrained.yaml",
                         root / "protocol-camvid.yaml"])
    first = P.load_params([DEFAULT, root / "protocol.yaml"])["methods"]
    weights = {"bd-b3": 0.1, "cd-c2": 0.5, "cd-c1w": 0.5}
    for name, source in (("bd-b3", first["bd-b3"]), ("cd-c2", first["cd-c2"]),
                         ("cd-c1w", cfg["methods"]["cd"])):
        mine = dict(cfg["methods"][name])
        assert mine.pop("loss_weight") == weights[name], name
        theirs = {k: v for k, v in source.items() if k != "loss_weight"}
        assert {k: mine.get(k) for k in theirs if k != "teacher_fusion_seed"} == {
            k: v for k, v in theirs.items() if k != "teacher_fusion_seed"}, name
    assert P.run_paths(cfg, "lite0-b3", 0)["model"].parts[:2] == ("runs", "camvid-pretrained")
