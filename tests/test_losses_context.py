"""Context distillation (Eq. 4-5)."""
import math

import pytest
import torch

from bcd.losses import ContextDistillLoss, relation_kl, relation_logits


def _softmax(values, tau=1.0):
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _reference_row_kl(t_feat, s_feat, tau):
    """Loop reference for Eq. 4-5: rows of X^T X / sqrt(d), tempered softmax, tau^2 KL per row."""
    n_batch, c, h, w = t_feat.shape
    t = t_feat.reshape(n_batch, c, h * w).tolist()
    s = s_feat.reshape(n_batch, c, h * w).tolist()
    out = []
    for n in range(n_batch):
        rows = []
        for i in range(h * w):
            t_row = [sum(t[n][k][i] * t[n][k][j] for k in range(c)) / math.sqrt(c) for j in range(h * w)]
            s_row = [sum(s[n][k][i] * s[n][k][j] for k in range(c)) / math.sqrt(c) for j in range(h * w)]
            rows.append(tau * tau * _kl(_softmax(t_row, tau), _softmax(s_row, tau)))
        out.append(rows)
    return torch.tensor(out, dtype=torch.float64)


def test_relation_logits_shape_and_values():
    x = torch.arange(6, dtype=torch.float64).view(1, 2, 1, 3)  # pixels (0,3), (1,4), (2,5)
    r = relation_logits(x)
    assert r.shape == (1, 3, 3)
    assert abs(r[0, 0, 1].item() - (0 * 1 + 3 * 4) / math.sqrt(2)) < 1e-12
    torch.testing.assert_close(r, r.transpose(1, 2))


def test_loss_value_on_hand_checked_1x2_map():
    # C = 1, two pixels: teacher features [1, 2], student [0, 1], d = 1.
    loss = ContextDistillLoss(in_channels=1, align="none", normalize="none", reduction="row")
    t = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 1, 2)
    s = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    row0 = _kl(_softmax([1.0, 2.0]), _softmax([0.0, 0.0]))
    row1 = _kl(_softmax([2.0, 4.0]), _softmax([0.0, 1.0]))
    expected = 50.0 * (row0 + row1) / 2
    assert abs(loss(s, t).item() - expected) < 1e-10
    # tau = 2
    hot = ContextDistillLoss(in_channels=1, align="none", normalize="none", reduction="row",
                             temperature={"init": 2.0, "factor": 1.0})
    row0 = _kl(_softmax([1.0, 2.0], 2.0), _softmax([0.0, 0.0], 2.0))
    row1 = _kl(_softmax([2.0, 4.0], 2.0), _softmax([0.0, 1.0], 2.0))
    assert abs(hot(s, t).item() - 50.0 * 4.0 * (row0 + row1) / 2) < 1e-10
    loss.loss_weight = 25.0  # read at every call
    assert abs(loss(s, t).item() - expected / 2) < 1e-10


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_relation_kl_matches_loop_reference(tau):
    torch.manual_seed(0)
    t = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    s = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    got = relation_kl(t, s, tau)
    assert got.shape == (2, 6)
    torch.testing.assert_close(got, _reference_row_kl(t, s, tau), atol=1e-6, rtol=0)


@pytest.mark.parametrize("align", ["none", "conv1x1"])
def test_loss_is_zero_when_student_equals_teacher(align):
    loss = ContextDistillLoss(in_channels=5, align=align)  # conv1x1 starts as the identity
    x = torch.randn(2, 5, 4, 6)
    assert loss(x, x.clone()).abs().item() < 1e-6
    assert loss(x, torch.randn(2, 5, 4, 6)).item() > 1e-3


def test_gradient_reaches_student_never_teacher():
    loss = ContextDistillLoss(in_channels=4)
    s = torch.randn(2, 4, 3, 5, requires_grad=True)
    t = torch.randn(2, 4, 3, 5, requires_grad=True)
    loss(s, t).backward()
    assert s.grad.abs().sum() > 0
    assert loss.student_align.weight.grad.abs().sum() > 0
    assert t.grad is None or (t.grad == 0).all()


def test_odd_sizes_dtype():
    loss = ContextDistillLoss(in_channels=3)
    out = loss(torch.randn(2, 3, 7, 11), torch.randn(2, 3, 7, 11))
    assert out.shape == () and torch.isfinite(out) and out.dtype == torch.float32
    out64 = loss(torch.randn(1, 3, 5, 5, dtype=torch.float64), torch.randn(1, 3, 5, 5, dtype=torch.float64))
    assert out64.dtype == torch.float64
    assert loss(torch.randn(1, 3, 1, 1), torch.randn(1, 3, 1, 1)).item() == 0.0  # one row of one entry


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_inputs():
    loss = ContextDistillLoss(in_channels=3).cuda()
    out = loss(torch.randn(1, 3, 4, 5, device="cuda"), torch.randn(1, 3, 4, 5, device="cuda"))
    assert out.device.type == "cuda"


def test_input_validation():
    loss = ContextDistillLoss(in_channels=3)
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 5\).*\(1, 3, 5, 5\)"):
        loss(torch.randn(1, 3, 4, 5), torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="in_channels"):
        loss(torch.randn(1, 2, 4, 5), torch.randn(1, 2, 4, 5))
    with pytest.raises(ValueError, match="align"):
        ContextDistillLoss(align="mlp")


def test_temperature_updated_in_training_only():
    loss = ContextDistillLoss(in_channels=3, temperature={"statistic": "logit_range"})
    s, t = torch.randn(1, 3, 4, 4), 3 * torch.randn(1, 3, 4, 4)  # logit range >> 0.5
    loss(s, t)
    assert loss.temperature.tau == 1.05
    loss.eval()
    loss(s, t)
    assert loss.temperature.tau == 1.05
    assert ContextDistillLoss().temperature.factor == 1.0  # None -> fixed tau = 1


def test_channel_standardisation_makes_loss_scale_invariant():
    torch.manual_seed(0)
    s, t = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)
    loss = ContextDistillLoss(in_channels=8, align="none")
    raw = ContextDistillLoss(in_channels=8, align="none", normalize="none")
    assert torch.allclose(loss(s, t), loss(s * 30.0, t * 7.0), rtol=1e-4)
    assert not torch.allclose(raw(s, t), raw(s * 30.0, t * 7.0), rtol=1e-2)
    with pytest.raises(ValueError, match="normalize"):
        ContextDistillLoss(normalize="batch")


def test_entry_reduction_is_row_mean_divided_by_hw():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    row = ContextDistillLoss(in_channels=4, align="none", reduction="row")(s, t)
    entry = ContextDistillLoss(in_channels=4, align="none")(s, t)  # the default
    assert torch.allclose(entry, row / 15)
    with pytest.raises(ValueError, match="reduction"):
        ContextDistillLoss(reduction="sum")
