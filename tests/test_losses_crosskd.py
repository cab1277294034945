"""CrossKD (bcd.losses.baselines.crosskd): hand-checked values, gradients, shape errors."""
import math

import pytest
import torch
from torch import nn

from bcd.losses.baselines import CrossKDLoss, align_to_teacher, giou

F64 = torch.float64
LN3 = math.log(3.0)


class HandHead(nn.Module):
    """Teacher head tail for hand checks: cls = w x_0, reg = [w x_0, 0] on each of 4 sides."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones((), dtype=F64))  # requires grad: must get none anyway

    def forward(self, x, level):
        c = self.w * x[:, :1]
        side = torch.cat([c, torch.zeros_like(c)], 1)
        return c, torch.cat([side] * 4, 1)


class ToyHead(nn.Module):
    """A trainable-looking tail: two 1x1 convs (cls, reg branch) and a per-level scale."""

    def __init__(self, channels=3, classes=2, anchors=1, bins=3, levels=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.cls = nn.Conv2d(channels, anchors * classes, 1).to(F64)
        self.reg = nn.Conv2d(channels, 4 * anchors * bins, 1).to(F64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        self.scales = nn.Parameter(torch.ones(levels, dtype=F64))

    def forward(self, x, level):
        xc, xr = x if isinstance(x, tuple) else (x, x)
        return self.cls(torch.relu(xc)), self.reg(torch.relu(xr)) * self.scales[level]


class OneOutput(nn.Module):
    def forward(self, x, level):
        return x


def expectation_decode(reg, level):
    """(N, 4 (R+1), H, W) -> boxes (-d_l, -d_t, d_r, d_b) around 0, d = E[bin]."""
    n, c, h, w = reg.shape
    prob = reg.permute(0, 2, 3, 1).reshape(-1, 4, c // 4).softmax(-1)
    d = (prob * torch.arange(c // 4, dtype=reg.dtype)).sum(-1)
    return torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)


def _one(value):
    return torch.full((1, 1, 1, 1), value, dtype=F64)


def _teacher(cls_logit, reg_logit):
    side = torch.cat([_one(reg_logit), _one(0.0)], 1)
    return _one(cls_logit), torch.cat([side] * 4, 1)


def _bce(logit, target):
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


# ------------------------------------------------------------------ hand-checked values
def test_hand_checked_one_location():
    # student feature 0 -> cross cls logit 0 (p = 0.5), bins [0, 0] (uniform, E[d] = 0.5);
    # teacher cls logit ln 3 (sigmoid 0.75), bins [ln 3, 0] (softmax [0.75, 0.25], E[d] = 0.25).
    loss = CrossKDLoss(reg_max=1, align=False)
    tc, tr = _teacher(LN3, LN3)
    value = loss([_one(0.0)], HandHead(), [tc], [tr], decode=expectation_decode)
    cls = _bce(0.0, 0.75) * abs(0.5 - 0.75)                       # KD-QFL, beta = 1, Z = 1 anchor
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # same on all 4 sides
    box = 1 - 0.25 / 1.0   # boxes [-.5,-.5,.5,.5] vs [-.25,-.25,.25,.25]: IoU 1/4, no enclosure gap
    # (GIoU's eps = 1e-7 in its denominators moves the box term by ~1e-7)
    assert value.item() == pytest.approx(1.0 * cls + 3.0 * kl + 2.0 * box, rel=1e-6)
    assert loss.last_cls.item() == pytest.approx(cls, rel=1e-9)
    assert loss.last_kl.item() == pytest.approx(3.0 * kl, rel=1e-9)
    assert loss.last_box.item() == pytest.approx(2.0 * box, rel=1e-6)


def test_weighting_by_teacher_score_pooled_over_levels_and_normalisers():
    # level 0: S = sigmoid(ln 3) = 0.75, KL as above; level 1: S = 0.5, KL 0, KD-QFL 0.
    tc0, tr0 = _teacher(LN3, LN3)
    tc1, tr1 = _teacher(0.0, 0.0)
    feats, head = [_one(0.0), _one(0.0)], HandHead()
    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    cls0 = _bce(0.0, 0.75) * 0.25
    only_kl = CrossKDLoss(reg_max=1, align=False, cls_weight=0.0, kl_weight=1.0)
    assert only_kl(feats, head, [tc0, tc1], [tr0, tr1]).item() == pytest.approx(0.75 * kl0 / 1.25, rel=1e-9)
    only_cls = CrossKDLoss(reg_max=1, align=False, kl_weight=0.0)
    assert only_cls(feats, head, [tc0, tc1], [tr0, tr1]).item() == pytest.approx(cls0 / 2, rel=1e-9)
    assert only_cls(feats, head, [tc0, tc1], [tr0, tr1], avg_factor=0.5).item() == pytest.approx(cls0 / 0.5)
    # an invalid anchor counts nowhere: level 0 masked -> only level 1 (zero terms) remains
    masked = CrossKDLoss(reg_max=1, align=False)
    valid = [torch.zeros(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)]
    assert masked(feats, head, [tc0, tc1], [tr0, tr1], valid=valid).item() == pytest.approx(0.0, abs=1e-12)


def test_no_valid_anchor_gives_zero_not_nan():
    tc, tr = _teacher(LN3, LN3)
    loss = CrossKDLoss(reg_max=1, align=False)
    value = loss([_one(0.0)], HandHead(), [tc], [tr], valid=[torch.zeros(1, dtype=torch.bool)],
                 decode=expectation_decode)
    assert value.item() == 0.0


def test_giou_and_alignment_helpers():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], dtype=F64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]], dtype=F64)
    # IoU 1/7, enclosure 9: 1/7 - 2/9; disjoint: 0 - (3 - 2)/3
    assert torch.allclose(giou(a, b), torch.tensor([1 / 7 - 2 / 9, -1 / 3], dtype=F64))
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 5, generator=g, dtype=F64)
    t = 3 + 2 * torch.randn(2, 3, 4, 5, generator=g, dtype=F64)
    out = align_to_teacher(s, t)
    dims = (0, 2, 3)
    assert torch.allclose(out.mean(dims), t.mean(dims))
    assert torch.allclose(out.std(dims), t.std(dims), rtol=1e-5)


def test_zero_when_student_features_equal_the_teachers():
    g = torch.Generator().manual_seed(2)
    head = ToyHead(anchors=2, bins=1)
    feats_T = [torch.randn(2, 3, h, h, generator=g, dtype=F64) for h in (4, 2)]
    with torch.no_grad():
        preds = [head(f, i) for i, f in enumerate(feats_T)]

    def boxes(reg, level):  # deltas -> boxes (x1, y1, x1 + 1 + e^dw, y1 + 1 + e^dh)
        d = reg.permute(0, 2, 3, 1).reshape(-1, 4)
        return torch.cat([d[:, :2], d[:, :2] + 1 + d[:, 2:].exp()], 1)

    loss = CrossKDLoss(num_anchors=2, reg_max=None, box_weight=1.0)   # RetinaNet-style
    value = loss(feats_T, head, [p[0] for p in preds], [p[1] for p in preds], teacher_feats=feats_T,
                 decode=boxes)
    # alignment maps S onto T up to eps = 1e-6 of the std; KD-QFL and 1 - GIoU vanish
    assert value.item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------ gradients
def _random_case(seed=3, levels=((4, 4), (2, 2))):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(2, 3, h, w, generator=g, dtype=F64, requires_grad=True) for h, w in levels]
    teacher = [torch.randn(2, 3, h, w, generator=g, dtype=F64, requires_grad=True) for h, w in levels]
    head = ToyHead()
    with torch.no_grad():
        preds = [head(f, i) for i, f in enumerate(teacher)]
    cls_T = [p[0].clone().requires_grad_(True) for p in preds]
    reg_T = [p[1].clone().requires_grad_(True) for p in preds]
    return student, teacher, head, cls_T, reg_T


def test_gradient_reaches_student_features_never_the_teacher():
    student, teacher, head, cls_T, reg_T = _random_case()
    assert all(p.requires_grad for p in head.parameters())   # not frozen by the caller
    loss = CrossKDLoss(reg_max=2)
    loss(student, head, cls_T, reg_T, teacher_feats=teacher, decode=expectation_decode).backward()
    for s in student:
        assert s.grad is not None and s.grad.abs().sum() > 0
    for p in head.parameters():
        assert p.grad is None
    for x in (*teacher, *cls_T, *reg_T):
        assert x.grad is None


def test_gradcheck_wrt_student_features():
    student, teacher, head, cls_T, reg_T = _random_case(levels=((2, 2),))
    loss = CrossKDLoss(reg_max=2)
    fn = lambda s: loss([s], head, cls_T, reg_T, teacher_feats=[t.detach() for t in teacher],  # noqa: E731
                        decode=expectation_decode)
    assert torch.autograd.gradcheck(fn, (student[0],))


def test_branch_tuples_and_low_precision_inputs():
    student, teacher, head, cls_T, reg_T = _random_case()
    pairs_S = [(s.detach().bfloat16(), (s.detach() * 2).bfloat16()) for s in student]
    pairs_T = [(t.detach().float(), t.detach().float() * 2) for t in teacher]
    head = head.float()
    value = CrossKDLoss(reg_max=2)(pairs_S, head, [c.detach().float() for c in cls_T],
                                   [r.detach().float() for r in reg_T], teacher_feats=pairs_T)
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_loss_weight_is_read_at_each_call():
    student, teacher, head, cls_T, reg_T = _random_case()
    loss = CrossKDLoss(reg_max=2)
    base = loss(student, head, cls_T, reg_T, teacher_feats=teacher).item()
    loss.loss_weight = 0.5
    assert loss(student, head, cls_T, reg_T, teacher_feats=teacher).item() == pytest.approx(base / 2)


# ------------------------------------------------------------------ errors
def test_shape_errors_are_named():
    student, teacher, head, cls_T, reg_T = _random_case()
    loss = CrossKDLoss(reg_max=2)
    with pytest.raises(ValueError, match="teacher_cls has 1 levels, student_feats has 2"):
        loss(student, head, cls_T[:1], reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match=r"teacher_reg\[0\] \(2, 12, 4, 4\) must be \(N, 68, 4, 4\)"):
        CrossKDLoss(reg_max=16)(student, head, cls_T, reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match="not a multiple of num_anchors=3"):
        CrossKDLoss(num_anchors=3, reg_max=2)(student, head, cls_T, reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError,
                       match=r"level 0: cross-head cls \(2, 2, 4, 4\) does not match the teacher's \(2, 1, 4, 4\)"):
        loss(student, head, [c[:, :1] for c in cls_T], reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match="align=True needs teacher_feats"):
        loss(student, head, cls_T, reg_T)
    with pytest.raises(ValueError, match=r"level 1: student map \(2, 3, 2, 2\) and teacher map \(2, 3, 4, 4\)"):
        loss(student, head, cls_T, reg_T, teacher_feats=[teacher[0], teacher[0]])
    with pytest.raises(ValueError, match=r"valid\[0\] must have N H W A = 32 elements, got 5"):
        loss(student, head, cls_T, reg_T, teacher_feats=teacher, valid=[torch.ones(5), torch.ones(8)])
    with pytest.raises(ValueError, match="decode gave cross-head boxes"):
        loss(student, head, cls_T, reg_T, teacher_feats=teacher, decode=lambda r, l: r[:, :3])
    with pytest.raises(ValueError, match=r"student_feats\[0\]\[0\] must be a float \(N, C, H, W\)"):
        loss([s[0] for s in student], head, cls_T, reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match="teacher_head must be an nn.Module"):
        loss(student, lambda x, l: head(x, l), cls_T, reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match="teacher_head must return"):
        loss(student, OneOutput(), cls_T, reg_T, teacher_feats=teacher)
    with pytest.raises(ValueError, match="avg_factor must be > 0"):
        loss(student, head, cls_T, reg_T, teacher_feats=teacher, avg_factor=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_anchors=0), "num_anchors must be an int >= 1"),
    (dict(reg_max=0), "reg_max must be an int >= 1"),
    (dict(temperature=-1.0), "temperature must be a number > 0"),
    (dict(beta=0), "beta must be a number > 0"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrossKDLoss(**kwargs)
