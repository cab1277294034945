"""Boundary distillation (Eq. 2-3), the pair/line machinery and the shared tempered KL."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bcd.losses import BoundaryDistillLoss, tempered_kl
from bcd.losses.boundary import (
    FORMS,
    TEACHERS,
    affinity_from_boundary,
    class_probabilities_at,
    label_affinity_probe,
    prediction_boundary,
    prediction_boundary_logits,
)
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


# ---------------------------------------------------------------- readings: form and teacher
def test_spatial_form_value_by_hand():
    # one KL per image between softmaxes over the H W positions; mean over the batch
    loss = _unit_loss(form="spatial")
    z_t = torch.tensor([[2.0, -3.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    z_t = z_t.view(2, 1, 2, 2)  # image 0: [2, -3, 0, 1]; image 1: constant
    z_s = torch.zeros_like(z_t)
    uniform = [0.25] * 4
    kl0 = _kl(_softmax([2.0, -3.0, 0.0, 1.0]), uniform)
    assert abs(loss(z_s, z_t).item() - 10.0 * (kl0 + 0.0) / 2) < 1e-10
    hot = _unit_loss(form="spatial", temperature={"init": 2.0, "factor": 1.0})
    kl0_hot = 4.0 * _kl(_softmax([2.0, -3.0, 0.0, 1.0], 2.0), uniform)
    assert abs(hot(z_s, z_t).item() - 10.0 * kl0_hot / 2) < 1e-10
    # no pairs involved: a 1x1 map is one position, KL 0
    assert loss(torch.zeros(1, 1, 1, 1).double(), torch.ones(1, 1, 1, 1).double()).item() == 0.0


def test_line_form_value_by_hand():
    # radius 1 on a 1x3 map: pixel 1's partners 0 and 2, lines {1, 0} and {1, 2};
    # the softmax is over the unbounded -max z along each line (pixels 0 and 2: one partner)
    loss = _unit_loss(radius=1, form="line")
    z_t = torch.tensor([2.0, -3.0, 0.0], dtype=torch.float64).view(1, 1, 1, 3)
    z_s = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64).view(1, 1, 1, 3)
    t = [-max(-3.0, 2.0), -max(-3.0, 0.0)]
    s = [-max(1.0, 0.0), -max(1.0, -1.0)]
    expected = 10.0 * _kl(_softmax(t), _softmax(s)) / 3
    assert abs(loss(z_s, z_t).item() - expected) < 1e-10
    # the bounded affinity form gives a much smaller value on the same maps
    affinity = _unit_loss(radius=1)(z_s, z_t).item()
    a_t = [_sigmoid(v) for v in t]
    a_s = [_sigmoid(v) for v in s]
    assert abs(affinity - 10.0 * _kl(_softmax(a_t), _softmax(a_s)) / 3) < 1e-10
    assert affinity < expected / 10


def _two_regions(p_major=1.0, h=4, w=5, split=2):
    """(1, 2, h, w) probabilities: class 0 in columns < split, class 1 from split on."""
    probs = torch.empty(1, 2, h, w, dtype=torch.float64)
    left = torch.arange(w) < split
    major = torch.tensor(p_major, dtype=torch.float64)
    probs[0, 0] = torch.where(left, major, 1.0 - major).expand(h, w)
    probs[0, 1] = 1.0 - probs[0, 0]
    return probs


def test_prediction_boundary_on_two_regions():
    # one-hot: b = 1 on both columns that touch the class border, 0 elsewhere
    b = prediction_boundary(_two_regions(1.0))
    expected = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64).expand(4, 5)
    torch.testing.assert_close(b[0], expected)
    # soft (0.9, 0.1): inside <p, p> = 0.82 -> b = 0.18; across <p_i, p_j> = 0.18 -> b = 0.82
    b = prediction_boundary(_two_regions(0.9))
    expected = torch.tensor([0.18, 0.82, 0.82, 0.18, 0.18], dtype=torch.float64).expand(4, 5)
    torch.testing.assert_close(b[0], expected)
    # diagonal neighbours count: a single class-1 pixel marks its whole 3x3 block
    probs = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    probs[0, 0] = 1.0
    probs[0, :, 2, 2] = torch.tensor([0.0, 1.0])
    block = torch.zeros(5, 5, dtype=torch.float64)
    block[1:4, 1:4] = 1.0
    torch.testing.assert_close(prediction_boundary(probs)[0], block)
    # a 1x1 map has no neighbour: no boundary
    assert prediction_boundary(torch.ones(1, 3, 1, 1) / 3).item() == 0.0


def test_prediction_boundary_logits_from_teacher_logits():
    probs = _two_regions(0.9)
    logits = probs.log() + 1.7  # softmax gives probs back
    z = prediction_boundary_logits(logits, (4, 5))
    b = torch.tensor([0.18, 0.82, 0.82, 0.18, 0.18], dtype=torch.float64)
    torch.testing.assert_close(z[0], torch.logit(b).expand(4, 5))
    # clamped at eps: one-hot probabilities give +-logit(1 - eps)
    z_hard = prediction_boundary_logits(torch.log(_two_regions(1.0).clamp_min(1e-30)), (4, 5))
    bound = math.log((1 - 1e-4) / 1e-4)
    assert torch.allclose(z_hard.abs(), torch.full_like(z_hard, bound))
    # logits at twice the size, resized bilinearly (2x2 averages): the same probabilities
    big = _two_regions(0.9, h=8, w=10, split=4).log()
    torch.testing.assert_close(class_probabilities_at(big, (4, 5)), probs)
    torch.testing.assert_close(prediction_boundary_logits(big, (4, 5)), z)


def test_prediction_teacher_value_equals_kd_on_its_boundary():
    probs = _two_regions(0.9)
    logits = probs.log()
    z_s = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    preds_t = torch.randn(1, 1, 4, 5, dtype=torch.float64)  # not read by this teacher
    z_t = prediction_boundary_logits(logits, (4, 5)).unsqueeze(1)
    for form in FORMS:
        loss = _unit_loss(radius=2, form=form, teacher="prediction")
        reference = _unit_loss(radius=2, form=form)  # teacher_conv = identity on z_t
        got = loss(z_s, preds_t, torch.zeros(1, 4, 5, dtype=torch.long), teacher_logits=logits)
        assert abs(got.item() - reference(z_s, z_t).item()) < 1e-10
        assert loss.last_probe.item() == 0.0  # no probe, ground truth ignored
        assert not loss.teacher_conv.weight.requires_grad  # kept in the state dict, frozen
        assert "teacher_conv.weight" in loss.state_dict()


def test_probe_pred_uses_the_teacher_prediction_not_the_labels():
    loss = _unit_loss(radius=1, loss_weight=0.0, teacher="probe_pred")
    z_t = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(1, 1, 1, 3)
    logits = torch.tensor([[3.0, 2.0, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    logits = logits.view(1, 2, 1, 3)  # argmax: classes [0, 0, 1]
    gt = torch.tensor([[[1, 0, 1]]])
    got = loss(torch.zeros_like(z_t), z_t, gt, teacher_logits=logits).item()
    valid = partner_mask(pair_lines(1).offsets, 1, 3)
    expected = label_affinity_probe(line_max(z_t[:, 0], 1), torch.tensor([[[0, 0, 1]]]), 1, valid)
    assert abs(got - expected.item()) < 1e-10
    assert abs(got - loss(torch.zeros_like(z_t), z_t, None, teacher_logits=logits).item()) < 1e-12
    # the ground-truth probe gives another value on these labels
    gt_probe = _unit_loss(radius=1, loss_weight=0.0)(torch.zeros_like(z_t), z_t, gt).item()
    assert abs(gt_probe - got) > 1e-3


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_reading_trains_the_student_never_the_teacher(form, teacher):
    torch.manual_seed(0)
    loss = BoundaryDistillLoss(in_channels=4, radius=2, form=form, teacher=teacher,
                               teacher_probe_weight=0.0)
    s = torch.randn(2, 4, 6, 7, requires_grad=True)
    t = torch.randn(2, 4, 6, 7, requires_grad=True)
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    out = loss(s, t, torch.randint(0, 3, (2, 12, 14)), teacher_logits=logits)
    assert out.item() > 0
    out.backward()
    assert s.grad.abs().sum() > 0 and loss.student_conv.weight.grad.abs().sum() > 0
    assert t.grad is None and logits.grad is None
    assert loss.teacher_conv.weight.grad is None
    # with the probe on, it trains teacher_conv (probe readings) but never reads the logits' grad
    loss.teacher_probe_weight = 1.0
    s.grad = None
    loss(s, t, torch.randint(0, 3, (2, 12, 14)), teacher_logits=logits).backward()
    assert logits.grad is None
    probed = loss.teacher_conv.weight.grad
    assert (probed is not None and probed.abs().sum() > 0) == (teacher != "prediction")


def test_teacher_logits_and_new_keys_are_checked():
    with pytest.raises(ValueError, match="form must be one of"):
        BoundaryDistillLoss(form="spatial-wise")
    with pytest.raises(ValueError, match="teacher must be one of"):
        BoundaryDistillLoss(teacher="gt")
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    for teacher in ("probe_pred", "prediction"):
        loss = BoundaryDistillLoss(in_channels=3, radius=2, teacher=teacher)
        with pytest.raises(ValueError, match=f"teacher='{teacher}'.*teacher_logits"):
            loss(s, t, torch.zeros(2, 4, 5, dtype=torch.long))
        with pytest.raises(ValueError, match=r"teacher_logits must be float \(N, K, h, w\)"):
            loss(s, t, teacher_logits=torch.randn(1, 7, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        prediction_boundary_logits(torch.randn(1, 3, 4, 5), (4, 5), eps=0.5)
    # the probe reading ignores teacher_logits
    loss = BoundaryDistillLoss(in_channels=3, radius=2)
    torch.testing.assert_close(loss(s, t, teacher_logits=torch.randn(2, 7, 4, 5)), loss(s, t))


def test_temperature_statistic_per_form():
    """Which adaptive-temperature statistic can fire (threshold 0.5) under each form."""
    probs = _two_regions(0.99, h=8, w=8, split=3)
    logits = probs.log()
    s, t = torch.randn(1, 1, 8, 8).double(), torch.randn(1, 1, 8, 8).double()

    def tau_after_one_step(form, statistic):
        loss = _unit_loss(radius=4, form=form, teacher="prediction",
                          temperature={"statistic": statistic})
        loss(s, t, teacher_logits=logits)
        return loss.temperature.tau

    # affinities in (0, 1) over >= 16 partners: prob_range stays small, tau never moves
    assert tau_after_one_step("affinity", "prob_range") == 1.0
    # a spatial softmax over 64 positions with a 2-column boundary: no probability near 0.5 ...
    assert tau_after_one_step("spatial", "prob_range") == 1.0
    # ... but relative to uniform (x 64) the teacher is far from flat
    assert tau_after_one_step("spatial", "relative_range") == 1.05
    assert tau_after_one_step("line", "relative_range") == 1.05


def _pixel_scale(loss, s, t, **kwargs):
    """``H W x mean_pixels ||dL/dS^c_pixel||``: gradient scale relative to a pixel-mean loss."""
    s = s.detach().requires_grad_(True)
    out = loss(s, t, **kwargs)
    (grad,) = torch.autograd.grad(out, s)  # the probe (if any) does not reach s
    return s.shape[-2] * s.shape[-1] * grad.norm(dim=1).mean().item(), out.item()


def test_spatial_form_is_scale_invariant_under_nearest_upsampling():
    torch.manual_seed(0)
    loss = _unit_loss(form="spatial")
    z_s, z_t = torch.randn(2, 1, 5, 6).double(), 3.0 * torch.randn(2, 1, 5, 6).double()
    base_scale, base_loss = _pixel_scale(loss, z_s, z_t)
    up = lambda x: F.interpolate(x, scale_factor=4, mode="nearest")  # noqa: E731
    scale, value = _pixel_scale(loss, up(z_s), up(z_t))
    assert abs(value - base_loss) < 1e-9 * base_loss
    assert abs(scale - base_scale) < 1e-9 * base_scale


def _layout(size):
    """A fixed label layout (a disc and a sloped lower region on background) at size x size."""
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = c.view(-1, 1).expand(size, size), c.view(1, -1).expand(size, size)
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[(y - 0.4) ** 2 + (x - 0.55) ** 2 < 0.25**2] = 1
    labels[y > 0.75 - 0.1 * x] = 2
    return labels[None]


def _layout_scales(form, teacher, channels=4):
    """Per-pixel gradient scale at 16x16 and 64x64 on the layout: one-hot features + noise."""
    out = []
    for size in (16, 64):
        gen = torch.Generator().manual_seed(0)
        labels = _layout(size)
        onehot = F.one_hot(labels, channels).permute(0, 3, 1, 2).double()
        s = onehot + 0.1 * torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
        t = onehot + 0.1 * torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
        torch.manual_seed(0)
        loss = BoundaryDistillLoss(in_channels=channels, radius=4, form=form, teacher=teacher)
        out.append(_pixel_scale(loss.double(), s, t, teacher_logits=4.0 * onehot)[0])
    return out


@pytest.mark.parametrize("teacher", ["probe", "prediction"])
def test_spatial_form_gradient_scale_between_16x16_and_64x64(teacher):
    small, large = _layout_scales("spatial", teacher)
    # measured: probe 0.99, prediction 0.71 (the boundary band's share of the map shrinks, so
    # the teacher's distribution concentrates; the scale is 2 alpha tau ||w|| TV(p, q) <= 2
    # alpha tau ||w||, docs/method.md)
    assert 0.5 <= small / large <= 2.0, (small, large)



@pytest.mark.parametrize("key,value,words", [
    ("form", "spatial-wise", "is not one of"),
    ("teacher", "gt", "is not one of"),
    ("temperature", {"statistic": "relative"}, "is not one of"),
])
def test_params_validate_the_bd_reading_keys(tmp_path, key, value, words):
    import yaml

    from bcd import params as P

    default = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
    good = tmp_path / "good.yaml"
    readings = {"form": "spatial", "teacher": "prediction",
                "temperature": {"statistic": "relative_range"}}
    good.write_text(yaml.safe_dump({"methods": {"bd": readings}}))
    assert P.load_params([default, good])["methods"]["bd"]["teacher"] == "prediction"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"methods": {"bd": {key: value}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([default, bad])
    keypath = f"methods.bd.{key}" + (".statistic" if key == "temperature" else "")
    assert any(line.startswith(f"{bad}: {keypath}: ") and words in line
               for line in str(info.value).splitlines()), str(info.value)


def test_params_keep_relative_range_to_bd(tmp_path):
    """CD computes its statistic from precomputed extremes and has no relative_range."""
    import yaml

    from bcd import params as P

    default = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
    bad = tmp_path / "bad.yaml"
    relative = {"temperature": {"statistic": "relative_range"}}
    bad.write_text(yaml.safe_dump({"methods": {"cd": relative}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([default, bad])
    message = f"{bad}: methods.cd.temperature.statistic: 'relative_range' is not one of"
    assert message in str(info.value)
