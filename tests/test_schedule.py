"""Adaptive temperature (Sec. V-B) and the loss-weight decay r(t) (Eq. 7)."""
import math

import pytest
import torch
import torch.distributed as dist

from bcd.schedule import AdaptiveTemperature, build_temperature, decay


def test_prob_range_raises_tau_by_exactly_the_factor_above_threshold():
    temp = AdaptiveTemperature()
    assert temp.tau == 1.0
    assert temp.update(torch.tensor([[10.0, 0.0]]), dim=-1) == 1.05  # probs ~ (1, 0): range ~ 1
    assert temp.tau == 1.05
    temp.update(torch.tensor([[10.0, 0.0]]), dim=-1)
    assert temp.tau == 1.05 * 1.05  # at most once per call, compounding across calls


def test_no_raise_below_threshold_or_in_eval_or_when_fixed():
    temp = AdaptiveTemperature()
    temp.update(torch.tensor([[0.0, 0.1], [0.2, 0.0]]), dim=-1)  # probs within 0.45..0.55
    assert temp.tau == 1.0
    temp.eval()
    temp.update(torch.tensor([[10.0, 0.0]]), dim=-1)
    assert temp.tau == 1.0
    fixed = AdaptiveTemperature(init=2.0, factor=1.0)
    fixed.update(torch.tensor([[10.0, 0.0]]), dim=-1)
    assert fixed.tau == 2.0


def test_prob_range_is_over_the_whole_minibatch_and_uses_current_tau():
    # row 0: probs (0.6, 0.2, 0.2), range 0.4; row 1: (0.05, 0.475, 0.475), range 0.425;
    # the minibatch range is 0.6 - 0.05 = 0.55 > 0.5
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, math.log(9.5), math.log(9.5)]])
    temp = AdaptiveTemperature()
    for row in logits:
        assert temp.range_statistic(row[None], dim=-1) < 0.5
    assert abs(temp.range_statistic(logits, dim=-1) - 0.55) < 1e-6
    temp.update(logits, dim=-1)
    assert temp.tau == 1.05
    # the statistic is taken at the current tau (self-limiting): at tau = 2 the range is < 0.5
    hot = AdaptiveTemperature(init=2.0)
    assert hot.range_statistic(logits, dim=-1) < 0.5
    hot.update(logits, dim=-1)
    assert hot.tau == 2.0


def test_logit_range_and_threshold_is_strict():
    temp = AdaptiveTemperature(statistic="logit_range")
    temp.update(torch.tensor([0.0, 0.4]), dim=0)
    assert temp.tau == 1.0
    temp.update(torch.tensor([0.0, 0.5]), dim=0)  # equal to the threshold: no raise
    assert temp.tau == 1.0
    temp.update(torch.tensor([0.0, 0.6]), dim=0)
    assert temp.tau == 1.05


def test_mask_excludes_entries():
    temp = AdaptiveTemperature(statistic="logit_range")
    logits = torch.tensor([[0.0, 0.1, 9.0]])
    mask = torch.tensor([[True, True, False]])
    assert abs(temp.range_statistic(logits, dim=-1, mask=mask) - 0.1) < 1e-6
    temp.update(logits, dim=-1, mask=mask)
    assert temp.tau == 1.0
    empty = torch.zeros(1, 3, dtype=torch.bool)
    temp.update(logits, dim=-1, mask=empty)  # no valid entry: no change, no error
    assert temp.tau == 1.0


def test_relative_range_scales_each_distribution_by_its_valid_entries():
    # row (ln 3, 0, 0, 0): probs (0.5, 1/6, 1/6, 1/6), x 4 -> (2, 2/3, ...): range 4/3;
    # masked to 3 entries: probs (0.6, 0.2, 0.2), x 3 -> (1.8, 0.6, 0.6): range 1.2
    temp = AdaptiveTemperature(statistic="relative_range")
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert abs(temp.range_statistic(logits, dim=-1) - 4 / 3) < 1e-12
    mask = torch.tensor([[True, True, True, False]])
    assert abs(temp.range_statistic(logits, dim=-1, mask=mask) - 1.2) < 1e-12
    # uniform over any number of entries: 0 (prob_range would shrink with the count instead)
    assert temp.range_statistic(torch.zeros(2, 4096), dim=-1) == 0.0
    # one peak among 4096 positions: prob_range ~ 0.0007, relative_range ~ 2.7 (e ** 1 - 1)
    peak = torch.zeros(1, 4096, dtype=torch.float64)
    peak[0, 0] = 1.0
    assert AdaptiveTemperature().range_statistic(peak, dim=-1) < 1e-3
    assert abs(temp.range_statistic(peak, dim=-1) - (math.e - 1) * 4096 / (4095 + math.e)) < 1e-9
    assert temp.update(peak, dim=-1) == 1.05


def test_max_tau_clips():
    temp = AdaptiveTemperature(max_tau=1.06)
    for _ in range(3):
        temp.update(torch.tensor([[10.0, 0.0]]), dim=-1)
    assert temp.tau == 1.06


def test_tau_is_a_buffer_saved_and_restored():
    temp = AdaptiveTemperature()
    temp.update(torch.tensor([[10.0, 0.0]]), dim=-1)
    state = temp.state_dict()
    assert "tau_value" in state and float(state["tau_value"]) == 1.05
    assert not list(temp.parameters())
    resumed = AdaptiveTemperature()
    resumed.load_state_dict(state)
    assert resumed.tau == 1.05


def test_validation_and_builder():
    with pytest.raises(ValueError, match="init"):
        AdaptiveTemperature(init=0.0)
    with pytest.raises(ValueError, match="factor"):
        AdaptiveTemperature(factor=0.9)
    with pytest.raises(ValueError, match="statistic"):
        AdaptiveTemperature(statistic="entropy")
    with pytest.raises(ValueError, match="max_tau"):
        AdaptiveTemperature(init=2.0, max_tau=1.0)
    assert build_temperature(None).factor == 1.0 and build_temperature(None).tau == 1.0
    assert build_temperature({"init": 3.0}).tau == 3.0
    with pytest.raises(ValueError):
        build_temperature("adaptive")


def test_update_under_a_process_group(tmp_path):
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        temp = AdaptiveTemperature()
        temp.update(torch.tensor([[10.0, 0.0]]), dim=-1)
        assert temp.tau == 1.05
    finally:
        dist.destroy_process_group()


def test_decay():
    assert decay(1, 40000) == 1.0
    assert decay(40000, 40000) == 1 / 40000
    assert decay(2, 4) == 0.75
    assert decay(1, 1) == 1.0
    for t, t_max in [(0, 10), (11, 10), (1, 0), (-1, 5)]:
        with pytest.raises(ValueError):
            decay(t, t_max)
    with pytest.raises(ValueError, match="integer"):
        decay(1.5, 10)
