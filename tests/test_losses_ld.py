"""LD (bcd.losses.baselines.ld): hand-checked values, a numpy reference, gradients, errors."""
import math

import numpy as np
import pytest
import torch

from bcd.losses.baselines import LDLoss, edge_kl

F64 = torch.float64
LN3 = math.log(3.0)
KL_HAND = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)   # [.75, .25] vs [.5, .5]


def _loc(edges):
    """One location, reg_max = 1: ``edges`` = 4 pairs of bin logits -> (1, 8, 1, 1)."""
    return torch.tensor([v for pair in edges for v in pair], dtype=F64).reshape(1, 8, 1, 1)


TEACHER = _loc([(LN3, 0.0)] * 4)
STUDENT = _loc([(0.0, 0.0)] * 4)
ONE = torch.ones(1, dtype=torch.bool)


# ------------------------------------------------------------------ values
def test_hand_checked_one_location():
    loss = LDLoss(reg_max=1, temperature=1.0)
    assert loss(STUDENT, TEACHER, ONE).item() == pytest.approx(KL_HAND, rel=1e-12)
    # T = 2: teacher softmax([ln3 / 2, 0]) = [s3 / (1 + s3), 1 / (1 + s3)], times T^2 = 4
    s3 = math.sqrt(3.0)
    p = np.array([s3 / (1 + s3), 1 / (1 + s3)])
    kl2 = 4 * float((p * np.log(p / 0.5)).sum())
    assert LDLoss(reg_max=1, temperature=2.0)(STUDENT, TEACHER, ONE).item() == pytest.approx(kl2)
    # mmdet's KL loss averages over the bins: / 2
    loss = LDLoss(reg_max=1, temperature=1.0, bin_mean=True)
    assert loss(STUDENT, TEACHER, ONE).item() == pytest.approx(KL_HAND / 2)


def test_mean_over_the_four_edges():
    # only the left edge differs: the location's loss is KL / 4
    teacher = _loc([(LN3, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)])
    assert LDLoss(reg_max=1, temperature=1.0)(STUDENT, teacher, ONE).item() == pytest.approx(KL_HAND / 4)


def test_selection_student_score_weights_levels_pooled_and_avg_factor():
    # level 0: 2 locations (N = 2), both differ by KL_HAND; level 1: 1 location, identical.
    s0, t0 = torch.cat([STUDENT, STUDENT]), torch.cat([TEACHER, TEACHER])
    s1, t1 = STUDENT, STUDENT.clone()
    loss = LDLoss(reg_max=1, temperature=1.0)
    masks = [torch.tensor([True, False]), torch.tensor([True])]
    # selected: 1 location at KL_HAND, 1 at 0 -> mean KL_HAND / 2
    assert loss([s0, s1], [t0, t1], masks).item() == pytest.approx(KL_HAND / 2)
    # student scores: logits (ln 3, -1) -> sigmoid max = 0.75 at the selected level-0 location
    cls = [torch.tensor([[LN3, -1.0], [5.0, 0.0]], dtype=F64).reshape(2, 2, 1, 1),
           torch.zeros(1, 2, 1, 1, dtype=F64)]
    assert loss([s0, s1], [t0, t1], masks, cls_S=cls).item() == pytest.approx(0.75 * KL_HAND / 2)
    assert loss([s0, s1], [t0, t1], masks, avg_factor=0.5).item() == pytest.approx(KL_HAND / 0.5)
    # float masks are weights; Z counts the locations with weight > 0
    w = [torch.tensor([0.5, 0.0], dtype=F64), torch.tensor([2.0], dtype=F64)]
    assert loss([s0, s1], [t0, t1], w).item() == pytest.approx(0.5 * KL_HAND / 2)
    # integer masks (e.g. 0/1 flags) select like bool
    assert loss([s0, s1], [t0, t1], [m.long() for m in masks]).item() == pytest.approx(KL_HAND / 2)


def test_valuable_localization_region_term():
    s0, t0 = torch.cat([STUDENT, STUDENT]), torch.cat([TEACHER, TEACHER])
    loss = LDLoss(reg_max=1, temperature=1.0, vlr_weight=3.0)
    main = torch.tensor([False, False])
    vlr = torch.tensor([0.0, 0.5], dtype=F64)                 # one VLR location, weight 0.5
    assert loss(s0, t0, main, vlr_mask=vlr).item() == pytest.approx(3.0 * 0.5 * KL_HAND)
    assert loss.last_main.item() == 0.0 and loss.last_vlr.item() == pytest.approx(1.5 * KL_HAND)
    loss.loss_weight = 2.0                                    # read at each call
    assert loss(s0, t0, main, vlr_mask=vlr).item() == pytest.approx(6.0 * 0.5 * KL_HAND)


def _np_ld(S, T, mask, A, bins, temp, cls=None):
    """numpy reference: location order (n, h, w, a), channel order (a, edge, bin)."""
    n, c, h, w = S.shape
    num, den = 0.0, 0
    m = mask.reshape(n, h, w, A)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for a in range(A):
                    if not m[i, y, x, a]:
                        continue
                    kl = 0.0
                    for e in range(4):
                        ch = slice((a * 4 + e) * bins, (a * 4 + e + 1) * bins)
                        zt, zs = T[i, ch, y, x] / temp, S[i, ch, y, x] / temp
                        pt = np.exp(zt - zt.max()) / np.exp(zt - zt.max()).sum()
                        ps = np.exp(zs - zs.max()) / np.exp(zs - zs.max()).sum()
                        kl += temp ** 2 * (pt * np.log(pt / ps)).sum() / 4
                    wgt = 1.0
                    if cls is not None:
                        k = cls.shape[1] // A
                        wgt = 1 / (1 + np.exp(-cls[i, a * k:(a + 1) * k, y, x].max()))
                    num += wgt * kl
                    den += 1
    return num / max(den, 1)


def _case(seed=0, n=2, A=2, reg_max=3, levels=((3, 4), (2, 2)), k=3):
    g = torch.Generator().manual_seed(seed)
    c = 4 * A * (reg_max + 1)
    S = [torch.randn(n, c, h, w, generator=g, dtype=F64, requires_grad=True) for h, w in levels]
    T = [torch.randn(n, c, h, w, generator=g, dtype=F64, requires_grad=True) for h, w in levels]
    M = [torch.rand(n * h * w * A, generator=g) > 0.5 for h, w in levels]
    C = [torch.randn(n, A * k, h, w, generator=g, dtype=F64, requires_grad=True) for h, w in levels]
    return S, T, M, C


def test_matches_numpy_reference_with_anchors_and_scores():
    S, T, M, C = _case()
    loss = LDLoss(reg_max=3, num_anchors=2, temperature=4.0)
    value = loss(S, T, M, cls_S=C)
    num = den = 0.0
    for s, t, m, c in zip(S, T, M, C):                        # pool the levels
        cnt = int(m.sum())
        num += _np_ld(s.detach().numpy(), t.detach().numpy(), m.numpy(), 2, 4, 4.0,
                      c.detach().numpy()) * max(cnt, 1)
        den += cnt
    assert value.item() == pytest.approx(num / den, rel=1e-10)


def test_empty_selection_gives_zero_and_a_usable_graph():
    S, T, M, _ = _case()
    loss = LDLoss(reg_max=3, num_anchors=2)
    value = loss(S, T, [torch.zeros_like(m) for m in M], vlr_mask=[torch.zeros_like(m) for m in M])
    assert value.item() == 0.0
    value.backward()
    assert all(torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0 for s in S)


def test_edge_kl_helper_and_zero_when_equal():
    z = torch.randn(5, 4, 7, dtype=F64)
    assert torch.allclose(edge_kl(z, z, 10.0), torch.zeros(5, 4, dtype=F64), atol=1e-12)
    S, _, M, _ = _case()
    assert LDLoss(reg_max=3, num_anchors=2)(S, [s.detach() for s in S], M).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ gradients
def test_gradient_reaches_the_student_never_the_teacher_or_the_scores():
    S, T, M, C = _case()
    LDLoss(reg_max=3, num_anchors=2)(S, T, M, cls_S=C, vlr_mask=M).backward()
    for s in S:
        assert s.grad is not None and s.grad.abs().sum() > 0
    for x in (*T, *C):
        assert x.grad is None


def test_gradcheck_wrt_student():
    S, T, M, C = _case(levels=((2, 2),), A=1, reg_max=2)
    loss = LDLoss(reg_max=2, temperature=3.0)
    assert torch.autograd.gradcheck(lambda x: loss([x], [T[0].detach()], M, cls_S=C), (S[0],))


def test_low_precision_inputs_compute_in_float32():
    S, T, M, _ = _case()
    value = LDLoss(reg_max=3, num_anchors=2)([s.detach().bfloat16() for s in S],
                                             [t.detach().half() for t in T], M)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ------------------------------------------------------------------ errors
def test_errors_are_named():
    S, T, M, C = _case()
    loss = LDLoss(reg_max=3, num_anchors=2)
    with pytest.raises(ValueError, match="bbox_T has 1 levels, bbox_S has 2"):
        loss(S, T[:1], M)
    with pytest.raises(ValueError, match="mask has 1 levels"):
        loss(S, T, M[:1])
    deltas = [torch.randn(2, 8, 3, 4), torch.randn(2, 8, 2, 2)]          # RetinaNet-style, A = 2
    with pytest.raises(ValueError, match=r"bbox_S\[0\] has 8 channels, expected 4 x 2 anchors x 4 "
                                         r"bins = 32 \(4 channels per anchor are box deltas"):
        loss(deltas, deltas, M)
    with pytest.raises(ValueError, match=r"level 1: bbox_S \(2, 32, 2, 2\) and bbox_T \(2, 32, 2, 3\) differ"):
        loss(S, [T[0], torch.randn(2, 32, 2, 3)], M)
    with pytest.raises(ValueError, match=r"mask\[0\] must have N H W A = 48 elements, got 5"):
        loss(S, T, [torch.ones(5), M[1]])
    with pytest.raises(ValueError, match=r"mask\[1\] weights must be finite and >= 0"):
        loss(S, T, [M[0], -torch.ones(16)])
    with pytest.raises(ValueError, match=r"cls_S\[0\] must be \(N, A K, H, W\)"):
        loss(S, T, M, cls_S=[C[0][:, :5], C[1]])
    with pytest.raises(ValueError, match="avg_factor must be a number > 0"):
        loss(S, T, M, avg_factor=0)
    with pytest.raises(ValueError, match=r"bbox_S\[0\] must be a float \(N, C, H, W\)"):
        loss([S[0][0], S[1]], T, M)


@pytest.mark.parametrize("kwargs, match", [
    (dict(reg_max=0), "one bin per edge is a box delta, not a distribution"),
    (dict(reg_max=-2), "reg_max must be an int >= 1"),
    (dict(num_anchors=0), "num_anchors must be an int >= 1"),
    (dict(temperature=0.0), "temperature must be a number > 0"),
    (dict(vlr_weight=-1.0), "vlr_weight must be a number >= 0"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LDLoss(**kwargs)


def test_defaults():
    loss = LDLoss()
    assert (loss.reg_max, loss.num_anchors, loss.temperature, loss.bin_mean, loss.loss_weight) == \
        (16, 1, 10.0, False, 1.0)
