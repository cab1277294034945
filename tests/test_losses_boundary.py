"""Boundary distillation (Eq. 2-3), the pair/line machinery and the shared tempered KL."""
import math

import pytest
import torch
import torch.nn.functional as F

from bcd.losses import BoundaryDistillLoss, tempered_kl
from bcd.losses.boundary import affinity_from_boundary
from bcd.losses.pairs import line_max, line_points, pair_lines, pair_offsets, partner_mask
from bcd.schedule import AdaptiveTemperature


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(values, tau=1.0):
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def _unit_loss(radius=1, **kwargs):
    """in_channels=1 loss whose boundary logits equal the input (conv weight 1, bias 0)."""
    loss = BoundaryDistillLoss(in_channels=1, radius=radius, **kwargs).double()
    with torch.no_grad():
        for conv in (loss.student_conv, loss.teacher_conv):
            conv.weight.fill_(1.0)
            conv.bias.zero_()
    return loss


def _twin_loss(channels=6, radius=2, **kwargs):
    """Loss whose student conv is a copy of the teacher conv."""
    torch.manual_seed(0)
    loss = BoundaryDistillLoss(in_channels=channels, radius=radius, **kwargs)
    loss.student_conv.load_state_dict(loss.teacher_conv.state_dict())
    return loss


# ---------------------------------------------------------------- tempered KL (shared helper)
def test_tempered_kl_matches_direct_formula():
    torch.manual_seed(0)
    t, s = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    tau = 2.0
    p, q = torch.softmax(t / tau, -1), torch.softmax(s / tau, -1)
    expected = (p * (p.log() - q.log())).sum(-1) * tau**2
    torch.testing.assert_close(tempered_kl(t, s, tau, dim=-1), expected)
    # along another dim, other dims kept
    assert tempered_kl(t, s, tau, dim=0).shape == (5,)


def test_tempered_kl_mask_equals_dropping_entries_and_empty_rows_are_zero():
    torch.manual_seed(1)
    t, s = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [False, False, False, False]])
    got = tempered_kl(t, s, 1.5, dim=1, mask=mask)
    keep = [0, 2, 3]
    torch.testing.assert_close(got[0], tempered_kl(t[0, keep], s[0, keep], 1.5, dim=0))
    assert got[1].item() == 0.0
    s.requires_grad_(True)
    tempered_kl(t, s, 1.5, dim=1, mask=mask).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[~mask] == 0).all()


def test_tempered_kl_detaches_teacher_and_validates():
    t = torch.randn(4, 3, requires_grad=True)
    s = torch.randn(4, 3, requires_grad=True)
    tempered_kl(t, s, 1.0, dim=1).sum().backward()
    assert t.grad is None and s.grad is not None
    with pytest.raises(ValueError, match="same shape"):
        tempered_kl(torch.randn(4, 3), torch.randn(4, 2), 1.0, dim=1)
    with pytest.raises(ValueError, match="tau"):
        tempered_kl(torch.randn(4, 3), torch.randn(4, 3), 0.0, dim=1)
    with pytest.raises(ValueError, match="bool"):
        tempered_kl(torch.randn(4, 3), torch.randn(4, 3), 1.0, dim=1, mask=torch.ones(4, 3))


# ---------------------------------------------------------------- pairs and lines
def test_pair_offsets_and_lines_by_hand():
    assert set(pair_offsets(1)) == {(-1, 0), (0, -1), (0, 1), (1, 0)}
    assert len(pair_offsets(2)) == 12  # 4 axis + 4 diagonal + 4 at distance 2
    assert (1, 1) in pair_offsets(2) and (1, 2) not in pair_offsets(2)
    assert all(0 < dy * dy + dx * dx <= 16 for dy, dx in pair_offsets(4))
    assert len(set(pair_offsets(4))) == len(pair_offsets(4)) == 48
    assert line_points(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    assert line_points(1, 2) == ((0, 0), (1, 1), (1, 2))  # 0.5 rounds away from zero
    assert line_points(-1, -2) == ((0, 0), (-1, -1), (-1, -2))
    assert line_points(2, 2) == ((0, 0), (1, 1), (2, 2))
    geometry = pair_lines(3)
    assert geometry.line_index.shape == (len(pair_offsets(3)), 4)
    assert pair_lines(3) is geometry  # cached per radius


def test_partner_mask_by_hand():
    offsets = torch.tensor([(0, 1), (1, 0)])
    mask = partner_mask(offsets, 2, 3)
    assert mask[0].tolist() == [[True, True, False], [True, True, False]]
    assert mask[1].tolist() == [[True, True, True], [False, False, False]]


def _reference_affinity(b, radius):
    """Loop reference for Eq. 2: a_ij = 1 - max over the line Pi_ij of b (None if j is outside)."""
    n_batch, h, w = b.shape
    out = {}
    for n in range(n_batch):
        for y in range(h):
            for x in range(w):
                for p, (dy, dx) in enumerate(pair_offsets(radius)):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        line = [b[n, y + py, x + px].item() for py, px in line_points(dy, dx)]
                        out[(n, p, y, x)] = 1.0 - max(line)
    return out


@pytest.mark.parametrize("radius,h,w", [(1, 3, 4), (3, 5, 6), (4, 3, 2)])
def test_vectorised_affinity_matches_loop_reference(radius, h, w):
    torch.manual_seed(radius)
    z = torch.randn(2, h, w, dtype=torch.float64)
    got = affinity_from_boundary(z, radius)
    assert got.shape == (2, len(pair_offsets(radius)), h, w)
    reference = _reference_affinity(torch.sigmoid(z), radius)
    valid = partner_mask(pair_lines(radius).offsets, h, w)
    assert int(valid.sum()) * 2 == len(reference)
    for (n, p, y, x), value in reference.items():
        assert abs(got[n, p, y, x].item() - value) < 1e-6
    # line_max on a probability map gives the same maxima
    b = torch.sigmoid(z)
    torch.testing.assert_close((1 - line_max(b, radius))[:, valid], got[:, valid])


# ---------------------------------------------------------------- the loss value
def test_loss_value_on_hand_checked_1x3_map():
    # radius 1 on a 1x3 map: pixel 0 and 2 have one partner (softmax over one pair -> KL 0);
    # pixel 1 has partners 0 (left) and 2 (right).
    loss = _unit_loss(radius=1)
    z_t = torch.tensor([2.0, -3.0, 0.0], dtype=torch.float64).view(1, 1, 1, 3)
    z_s = torch.zeros(1, 1, 1, 3, dtype=torch.float64)
    value = loss(z_s, z_t).item()
    b_t = [_sigmoid(2.0), _sigmoid(-3.0), 0.5]
    a_t = [1 - max(b_t[1], b_t[0]), 1 - max(b_t[1], b_t[2])]  # pairs (1,0) and (1,2)
    a_s = [0.5, 0.5]
    kl_pixel1 = _kl(_softmax(a_t), _softmax(a_s))
    expected = 10.0 * (0.0 + kl_pixel1 + 0.0) / 3
    assert abs(value - expected) < 1e-10
    assert abs(loss.last_kd.item() - expected) < 1e-10 and loss.last_probe.item() == 0.0
    # temperature tau = 2: softmax of a/2 and a factor tau^2
    hot = _unit_loss(radius=1, temperature={"init": 2.0, "factor": 1.0})
    expected_hot = 10.0 * 4.0 * _kl(_softmax(a_t, 2.0), _softmax(a_s, 2.0)) / 3
    assert abs(hot(z_s, z_t).item() - expected_hot) < 1e-10
    # loss_weight is read at every call (a hook may rescale it by r(t))
    loss.loss_weight = 5.0
    assert abs(loss(z_s, z_t).item() - expected / 2) < 1e-10


def test_loss_is_zero_when_student_equals_teacher():
    loss = _twin_loss()
    x = torch.randn(2, 6, 5, 7)
    assert loss(x, x.clone()).abs().item() < 1e-6
    assert loss(x, x + 0.5).item() > 1e-6  # and not zero otherwise


# ---------------------------------------------------------------- gradients
def test_kd_gradient_reaches_student_never_teacher():
    loss = BoundaryDistillLoss(in_channels=4, radius=2, teacher_probe_weight=0.0)
    s = torch.randn(2, 4, 6, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, 6, requires_grad=True)
    loss(s, t, torch.randint(0, 3, (2, 6, 6))).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.student_conv.weight.grad.abs().sum() > 0
    assert t.grad is None or (t.grad == 0).all()
    tg = loss.teacher_conv.weight.grad
    assert tg is None or (tg == 0).all()


def test_probe_trains_teacher_side_only():
    torch.manual_seed(0)
    loss = BoundaryDistillLoss(in_channels=4, radius=2, loss_weight=0.0)  # probe alone
    s = torch.randn(2, 4, 6, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, 6, requires_grad=True)
    gt = torch.randint(0, 3, (2, 48, 48))
    out = loss(s, t, gt)
    assert out.item() > 0 and loss.last_kd.item() == 0.0
    out.backward()
    assert t.grad.abs().sum() > 0 and loss.teacher_conv.weight.grad.abs().sum() > 0
    assert s.grad is None or (s.grad == 0).all()
    sg = loss.student_conv.weight.grad
    assert sg is None or (sg == 0).all()
    # both terms together: the returned loss is their sum
    loss.loss_weight = 10.0
    total = loss(s, t, gt)
    assert abs(total.item() - (loss.last_kd + loss.last_probe).item()) < 1e-6
    assert loss.last_kd.item() > 0


def test_probe_value_by_hand_and_label_formats():
    loss = _unit_loss(radius=1, loss_weight=0.0, teacher_probe_weight=2.0)
    z_t = torch.tensor([1.0, -2.0], dtype=torch.float64).view(1, 1, 1, 2)
    z_s = torch.zeros_like(z_t)
    b = [_sigmoid(1.0), _sigmoid(-2.0)]
    # different classes: both pairs (0->1, 1->0) are negatives, a = 1 - max(b) -> -log(max b)
    different = torch.tensor([[[0, 1]]])
    assert abs(loss(z_s, z_t, different).item() - 2.0 * -math.log(max(b))) < 1e-10
    # same class: positives, -log(a) = -log(1 - max b)
    same = torch.tensor([[[4, 4]]])
    assert abs(loss(z_s, z_t, same).item() - 2.0 * -math.log(1 - max(b))) < 1e-10
    # (N, 1, H0, W0) labels and larger label maps (nearest downsampling) give the same
    big = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]]).view(1, 1, 2, 4)
    assert abs(loss(z_s, z_t, big).item() - 2.0 * -math.log(max(b))) < 1e-10
    # an ignored pixel removes every pair: probe 0
    ignored = torch.tensor([[[0, 255]]])
    assert loss(z_s, z_t, ignored).item() == 0.0


def test_probe_is_class_balanced():
    # 1x3 map, labels [0, 0, 1]: positives (0,1),(1,0); negatives (1,2),(2,1)
    loss = _unit_loss(radius=1, loss_weight=0.0)
    z_vals = [0.5, -1.0, 2.0]
    z_t = torch.tensor(z_vals, dtype=torch.float64).view(1, 1, 1, 3)
    b = [_sigmoid(v) for v in z_vals]
    pos = -math.log(1 - max(b[0], b[1]))
    neg = -math.log(max(b[1], b[2]))
    value = loss(torch.zeros_like(z_t), z_t, torch.tensor([[[0, 0, 1]]])).item()
    assert abs(value - (pos + neg) / 2) < 1e-10


# ---------------------------------------------------------------- shapes, dtype, device, temperature
@pytest.mark.parametrize("h,w,radius", [(7, 11, 4), (5, 5, 8), (1, 1, 2), (1, 6, 3)])
def test_odd_sizes_give_finite_scalars(h, w, radius):
    loss = BoundaryDistillLoss(in_channels=3, radius=radius)
    s = torch.randn(2, 3, h, w, requires_grad=True)
    out = loss(s, torch.randn(2, 3, h, w), torch.randint(0, 2, (2, 1, 4 * h + 1, 4 * w + 3)))
    assert out.shape == () and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(s.grad).all()
    if h * w == 1:  # no pair at all
        assert out.item() == 0.0


def test_dtype_follows_inputs():
    loss = BoundaryDistillLoss(in_channels=3, radius=2)  # float32 parameters
    s, t = torch.randn(1, 3, 4, 5, dtype=torch.float64), torch.randn(1, 3, 4, 5, dtype=torch.float64)
    assert loss(s, t, torch.zeros(1, 4, 5, dtype=torch.long)).dtype == torch.float64
    assert loss(s.float(), t.float()).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_follows_inputs():
    loss = BoundaryDistillLoss(in_channels=3, radius=2).cuda()
    s, t = torch.randn(1, 3, 4, 5, device="cuda"), torch.randn(1, 3, 4, 5, device="cuda")
    out = loss(s, t, torch.zeros(1, 1, 8, 10, dtype=torch.long))
    assert out.device.type == "cuda"


def test_input_validation():
    loss = BoundaryDistillLoss(in_channels=3)
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 5\).*\(1, 3, 4, 6\)"):
        loss(torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 6))
    with pytest.raises(ValueError, match="in_channels"):
        loss(torch.randn(1, 4, 4, 5), torch.randn(1, 4, 4, 5))
    with pytest.raises(ValueError, match="N, C, H, W"):
        loss(torch.randn(3, 4, 5), torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="gt_seg"):
        loss(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.zeros(1, 8, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        loss(torch.randn(1, 3, 4, 5), torch.randn(1, 3, 4, 5), torch.zeros(1, 8, 10))
    with pytest.raises(ValueError, match="radius"):
        BoundaryDistillLoss(radius=0)
    with pytest.raises(ValueError, match="temperature"):
        BoundaryDistillLoss(temperature=2.0)


def test_temperature_built_updated_in_training_only():
    assert BoundaryDistillLoss().temperature.factor == 1.0  # None -> fixed tau = 1
    shared = AdaptiveTemperature()
    assert BoundaryDistillLoss(temperature=shared).temperature is shared
    # affinities lie in (0, 1); with a logit-range threshold of 0.01 tau rises once per step
    loss = BoundaryDistillLoss(
        in_channels=3, radius=2, temperature={"statistic": "logit_range", "threshold": 0.01}
    )
    s, t = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    loss(s, t)
    assert loss.temperature.tau == 1.05
    loss.eval()
    loss(s, t)
    assert loss.temperature.tau == 1.05
    assert "temperature.tau_value" in loss.state_dict()
