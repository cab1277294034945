"""FGD (bcd.losses.baselines.fgd): hand-checked values, a numpy reference, gradients, errors."""
import math

import numpy as np
import pytest
import torch

from bcd.losses.baselines import ContextBlock, FGDLoss, fgd_attention, fgd_masks

F64 = torch.float64


def _weights(loss, **kw):
    for k, v in kw.items():
        setattr(loss, k, v)
    return loss


# ------------------------------------------------------------------ masks (Eqs. 2-3)
def test_masks_by_hand():
    # image 8 x 8 -> level 4 x 4 (stride 2). Box A (0, 0, 4, 4) -> cells rows 0-1, cols 0-1:
    # 4 cells, 1/4. Box B (2, 2, 3, 3) -> level (1, 1, 1.5, 1.5): cell (1, 1) only, 1/1 (the
    # smaller box wins where they overlap). Box C (6.2, 0, 8, 1) -> level cols 3.1..4 -> col 3,
    # rows 0..0.5 -> row 0: 1 cell, 1/1.
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 3, 3], [6.2, 0, 8, 1]], dtype=F64)
    fg, bg = fgd_masks(boxes, (8, 8), (4, 4))
    expect = np.zeros((4, 4))
    expect[0:2, 0:2] = 0.25
    expect[1, 1] = 1.0
    expect[0, 3] = 1.0
    assert np.allclose(fg.numpy(), expect)
    n_bg = 16 - 5
    assert np.allclose(bg.numpy(), (expect == 0) / n_bg)


def test_masks_rows_are_y_and_boxes_scale_per_axis():
    # a wide, flat box on a non-square image: x spans cols 0-2, y only row 0
    fg, _ = fgd_masks(torch.tensor([[0.0, 0.0, 30.0, 5.0]]), (20, 40), (2, 4))   # stride 10
    expect = np.zeros((2, 4))
    expect[0, 0:3] = 1 / 3
    assert np.allclose(fg.numpy(), expect)


def test_masks_without_boxes_or_off_map_or_everything_covered():
    fg, bg = fgd_masks(torch.zeros(0, 4), (8, 8), (2, 2))
    assert fg.sum() == 0 and np.allclose(bg.numpy(), 0.25)
    fg, bg = fgd_masks(torch.tensor([[20.0, 20.0, 30.0, 30.0]]), (8, 8), (2, 2))   # off the map
    assert fg.sum() == 0 and np.allclose(bg.numpy(), 0.25)
    fg, bg = fgd_masks(torch.tensor([[0.0, 0.0, 8.0, 8.0]]), (8, 8), (2, 2))       # covers all
    assert np.allclose(fg.numpy(), 0.25) and bg.sum() == 0


def test_attention_by_hand():
    # one image, 2 channels, 1 x 2 map: |F| = [[1, 3], [1, 1]] (channel rows)
    f = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]], dtype=F64)
    spatial, channel = fgd_attention(f, 0.5)
    g_s = np.array([1.0, 2.0])                          # channel means per pixel
    g_c = np.array([2.0, 1.0])                          # pixel means per channel
    e_s, e_c = np.exp(g_s / 0.5), np.exp(g_c / 0.5)
    assert np.allclose(spatial.numpy().ravel(), 2 * e_s / e_s.sum())
    assert np.allclose(channel.numpy().ravel(), 2 * e_c / e_c.sum())


# ------------------------------------------------------------------ values
def test_hand_checked_uniform_maps():
    # C = 1, 2 x 2 maps, T = 2, S = 1 everywhere: every attention is 1, L_at = 0.
    # Box (0, 0, 2, 2) on a 4 x 4 image covers cell (0, 0): fg 1 there, bg 1/3 on 3 cells.
    # L_fea = alpha 1 (2-1)^2 + beta 3 (1/3) (2-1)^2 ; context blocks start as identities, so
    # L_global = lambda sum (2-1)^2 = 4 lambda.
    loss = FGDLoss(1, 1, alpha_fgd=1.0, beta_fgd=2.0, gamma_fgd=3.0, lambda_fgd=0.5).double()
    s = torch.ones(1, 1, 2, 2, dtype=F64)
    t = 2 * s
    value = loss(s, t, [torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=F64)], [(4, 4)])
    assert value.item() == pytest.approx(1.0 + 2.0 + 0.0 + 2.0)
    assert loss.last_fg.item() == pytest.approx(1.0) and loss.last_bg.item() == pytest.approx(2.0)
    assert loss.last_at.item() == 0.0 and loss.last_global.item() == pytest.approx(2.0)
    loss.loss_weight = 0.5                                      # read at each call
    assert loss(s, t, [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], [(4, 4)]).item() == pytest.approx(2.5)


def _np_context(x, block):
    """numpy GcBlock: x (N, C, H, W) + W2 relu(LN(W1 sum_j softmax(Wk x)_j x_j))."""
    p = {k: v.detach().double().numpy() for k, v in block.state_dict().items()}
    n, c, h, w = x.shape
    xf = x.reshape(n, c, h * w)
    logit = np.einsum("c,ncj->nj", p["key.weight"].reshape(c), xf) + p["key.bias"][0]
    att = np.exp(logit - logit.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    ctx = np.einsum("ncj,nj->nc", xf, att)
    y = ctx @ p["value_in.weight"][:, :, 0, 0].T + p["value_in.bias"]
    mu, var = y.mean(1, keepdims=True), y.var(1, keepdims=True)
    y = (y - mu) / np.sqrt(var + 1e-5) * p["norm.weight"].reshape(-1) + p["norm.bias"].reshape(-1)
    y = np.maximum(y, 0) @ p["value_out.weight"][:, :, 0, 0].T + p["value_out.bias"]
    return x + y[:, :, None, None]


def _np_attention(f, temp):
    n, c, h, w = f.shape
    a = np.abs(f)
    gs = a.mean(1).reshape(n, -1) / temp
    gc = a.mean((2, 3)) / temp
    es = np.exp(gs - gs.max(1, keepdims=True))
    ec = np.exp(gc - gc.max(1, keepdims=True))
    return (h * w * es / es.sum(1, keepdims=True)).reshape(n, h, w), c * ec / ec.sum(1, keepdims=True)


def _np_masks(boxes, img_hw, hw):
    H, W = hw
    fg = np.zeros((H, W))
    for x1, y1, x2, y2 in boxes:
        c0, r0 = math.floor(x1 * W / img_hw[1]), math.floor(y1 * H / img_hw[0])
        c1 = max(math.ceil(x2 * W / img_hw[1]), c0 + 1)
        r1 = max(math.ceil(y2 * H / img_hw[0]), r0 + 1)
        c0, c1, r0, r1 = min(max(c0, 0), W), min(max(c1, 0), W), min(max(r0, 0), H), min(max(r1, 0), H)
        if (c1 - c0) * (r1 - r0) == 0:
            continue
        v = 1.0 / ((c1 - c0) * (r1 - r0))
        for r in range(r0, r1):
            for c in range(c0, c1):
                fg[r, c] = max(fg[r, c], v)
    bg = (fg == 0).astype(float)
    return fg, bg / bg.sum() if bg.sum() else bg


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _case(seed=0, cs=3, ct=4, n=2, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, cs, h, w, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(n, ct, h, w, generator=g, dtype=F64, requires_grad=True)
    boxes = [torch.tensor([[1.0, 2.0, 13.0, 9.0], [4.0, 4.0, 7.5, 6.0]], dtype=F64),
             torch.zeros(0, 4, dtype=F64)][:n]
    shapes = [(20, 24), {"img_shape": (20, 24)}][:n]    # stride 4 on a 5 x 6 level
    return s, t, boxes, shapes


@pytest.mark.parametrize("shared", [False, True])
def test_matches_numpy_reference(shared):
    s, t, boxes, shapes = _case()
    loss = FGDLoss(3, 4, temperature=0.7, alpha_fgd=0.3, beta_fgd=0.2, gamma_fgd=0.1,
                   lambda_fgd=0.05, shared_context=shared).double()
    _randomise(loss, 1)                                  # non-identity context blocks, align conv
    value = loss(s, t, boxes, shapes)
    S, T = s.detach().numpy(), t.detach().numpy()
    wa, ba = loss.align.weight.detach().numpy()[:, :, 0, 0], loss.align.bias.detach().numpy()
    S = np.einsum("oc,nchw->nohw", wa, S) + ba[None, :, None, None]
    n = S.shape[0]
    ast, act = _np_attention(T, 0.7)
    ass, acs = _np_attention(S, 0.7)
    fea = 0.0
    for i in range(n):
        fg, bg = _np_masks(boxes[i].numpy(), (20, 24), (5, 6))
        err = (T[i] - S[i]) ** 2 * act[i][:, None, None] * ast[i][None]
        fea += 0.3 * (err * fg).sum() + 0.2 * (err * bg).sum()
    at = 0.1 * (np.abs(ast - ass).sum() + np.abs(act - acs).sum())
    ctx_t = loss.context_S if shared else loss.context_T
    glob = 0.05 * ((_np_context(T, ctx_t) - _np_context(S, loss.context_S)) ** 2).sum()
    expect = (fea + at + glob) / n
    assert value.item() == pytest.approx(expect, rel=1e-10)


def test_zero_when_student_equals_teacher_at_init():
    s, t, boxes, shapes = _case(cs=4)
    loss = FGDLoss(4, 4).double()
    assert loss(t.detach(), t, boxes, shapes).item() == 0.0


def test_batch_input_shape_is_preferred_over_img_shape():
    s, t, boxes, _ = _case(n=1)
    loss = FGDLoss(3, 4).double()
    a = loss(s, t, boxes, [{"img_shape": (10, 12), "batch_input_shape": (20, 24)}])
    b = loss(s, t, boxes, [(20, 24)])
    c = loss(s, t, boxes, [(10, 12)])
    assert a.item() == b.item() != c.item()


class _Inst:
    def __init__(self, bboxes):
        self.bboxes = bboxes


def test_instance_like_boxes_and_no_boxes_anywhere():
    s, t, boxes, shapes = _case()
    loss = FGDLoss(3, 4).double()
    assert loss(s, t, [_Inst(b) for b in boxes], shapes).item() == loss(s, t, boxes, shapes).item()
    empty = loss(s, t, [torch.zeros(0, 4), torch.zeros(0, 4)], shapes)
    assert torch.isfinite(empty) and loss.last_fg.item() == 0.0 and loss.last_bg.item() > 0


# ------------------------------------------------------------------ gradients
def test_gradients_reach_student_and_loss_modules_never_the_teacher():
    s, t, boxes, shapes = _case()
    loss = FGDLoss(3, 4).double()
    _randomise(loss, 2)
    loss(s, t, boxes, shapes).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    for name, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_context_output_conv_is_zero_initialised_and_trainable_from_the_start():
    block = ContextBlock(4)
    assert block.value_out.weight.abs().sum() == 0 and block.value_out.bias.abs().sum() == 0
    s, t, boxes, shapes = _case(cs=4)
    loss = FGDLoss(4, 4).double()
    loss(s, t, boxes, shapes).backward()
    assert loss.context_S.value_out.weight.grad.abs().sum() > 0
    assert loss.context_T.value_out.weight.grad.abs().sum() > 0


def test_gradcheck_wrt_student():
    s, t, boxes, shapes = _case(n=1, h=3, w=4)
    loss = FGDLoss(3, 4, alpha_fgd=1.0, beta_fgd=1.0, gamma_fgd=1.0, lambda_fgd=1.0).double()
    _randomise(loss, 3)
    shapes = [(12, 16)]
    assert torch.autograd.gradcheck(lambda x: loss(x, t.detach(), boxes, shapes), (s,))


def test_low_precision_inputs_compute_in_float32():
    s, t, boxes, shapes = _case()
    value = FGDLoss(3, 4)(s.detach().bfloat16(), t.detach().half(), boxes, shapes)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ------------------------------------------------------------------ errors
def test_errors_are_named():
    s, t, boxes, shapes = _case()
    loss = FGDLoss(3, 4).double()
    with pytest.raises(ValueError, match=r"preds_S has 4 channels, expected 3 \(student_channels\)"):
        loss(t, t, boxes, shapes)
    with pytest.raises(ValueError, match=r"preds_T has 3 channels, expected 4"):
        loss(s, s, boxes, shapes)
    with pytest.raises(ValueError, match=r"must share N, H, W \(one FPN level\)"):
        loss(s[:, :, :4], t, boxes, shapes)
    with pytest.raises(ValueError, match=r"preds_S must be a float \(N, C, H, W\) Tensor"):
        loss(s[0], t, boxes, shapes)
    with pytest.raises(ValueError, match=r"gt_bboxes must be a list with one entry per image \(N = 2\), got 1"):
        loss(s, t, boxes[:1], shapes)
    with pytest.raises(ValueError, match=r"img_shapes must be a list with one entry per image \(N = 2\), got 3"):
        loss(s, t, boxes, [(20, 24)] * 3)
    with pytest.raises(ValueError, match=r"img_shapes\[0\] must be \(height, width\) > 0 .* got 20"):
        loss(s, t, boxes, (20, 24))
    with pytest.raises(ValueError, match=r"gt_bboxes\[1\] must be a \(M, 4\) Tensor"):
        loss(s, t, [boxes[0], torch.zeros(2, 5)], shapes)
    with pytest.raises(ValueError, match=r"gt_bboxes\[0\] has a box with x2 < x1"):
        loss(s, t, [torch.tensor([[5.0, 0.0, 1.0, 3.0]]), boxes[1]], shapes)
    with pytest.raises(ValueError, match=r"gt_bboxes\[0\] has non-finite"):
        loss(s, t, [torch.tensor([[0.0, 0.0, float("nan"), 3.0]]), boxes[1]], shapes)
    with pytest.raises(ValueError, match=r"img_shapes\[1\] must be \(height, width\) > 0"):
        loss(s, t, boxes, [(20, 24), (0, 24)])
    with pytest.raises(ValueError, match=r"img_shapes\[0\] must be"):
        loss(s, t, boxes, [{"ori_shape": (20, 24)}, (20, 24)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(student_channels=0, teacher_channels=2), "student_channels must be an int >= 1"),
    (dict(student_channels=2, teacher_channels=2, temperature=0), "temperature must be a number > 0"),
    (dict(student_channels=2, teacher_channels=2, beta_fgd=-1), "beta_fgd must be a number >= 0"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FGDLoss(**kwargs)


def test_defaults_are_the_released_retinanet_gfl_settings():
    loss = FGDLoss(4, 4)
    assert (loss.temperature, loss.alpha_fgd, loss.beta_fgd, loss.gamma_fgd, loss.lambda_fgd) == \
        (0.5, 1e-3, 5e-4, 5e-4, 5e-6)
    assert loss.align is None and FGDLoss(2, 4).align is not None
    assert loss.loss_weight == 1.0


def test_num_levels_sums_one_fgd_per_level_each_with_its_own_blocks():
    """``num_levels=L`` (the FPN wiring): the sum over levels of one-level FGDs, each with its
    own align conv and context blocks (the released code's one loss per level)."""
    torch.manual_seed(0)
    s0, t0, boxes, shapes = _case()
    s1, t1 = torch.randn(2, 3, 3, 4, dtype=F64), torch.randn(2, 4, 3, 4, dtype=F64)
    loss = FGDLoss(3, 4, lambda_fgd=0.1, num_levels=2, loss_weight=0.5).double()
    assert loss.align is None and loss.context_S is None and len(loss.levels) == 2
    assert loss.levels[0].context_S is not loss.levels[1].context_S
    for lv in loss.levels:  # make the levels' blocks differ
        torch.nn.init.normal_(lv.context_S.value_out.weight)
    want = sum(lv(s, t, boxes, shapes) for lv, s, t in zip(loss.levels, (s0, s1), (t0, t1)))
    got = loss([s0, s1], (t0, t1), boxes, shapes)
    assert torch.allclose(got, 0.5 * want)
    parts = loss.last_fg + loss.last_bg + loss.last_at + loss.last_global
    assert torch.allclose(parts, got.detach())
    got.backward()
    assert all(lv.context_S.value_out.weight.grad.abs().sum() > 0 for lv in loss.levels)
    assert all(lv.align.weight.grad is not None for lv in loss.levels)
    with pytest.raises(ValueError, match=r"preds_S must be a sequence of num_levels = 2 maps"):
        loss(s0, t0, boxes, shapes)
    with pytest.raises(ValueError, match=r"preds_T must be a sequence of num_levels = 2 maps.*1 maps"):
        loss([s0, s1], [t0], boxes, shapes)
    with pytest.raises(ValueError, match="num_levels must be an int >= 1"):
        FGDLoss(3, 4, num_levels=0)
