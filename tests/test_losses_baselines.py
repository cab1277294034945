"""Comparison losses of Tables III-IV (bcd.losses.baselines): values, zero points, gradients."""
import math

import pytest
import torch

from bcd.losses.baselines import (
    BPKDLoss,
    CrossImageRelationLoss,
    IFVDLoss,
    PairwiseSimilarityLoss,
    PixelKDLoss,
    SSTKDLoss,
    TATLoss,
    edge_body_masks,
    intensity_histogram,
    laplacian_pyramid,
    target_aware_error,
)

F64 = torch.float64


def _softmax(values, tau=1.0):
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _t(rows, dtype=F64):
    """Nested lists (C, H, W) of one image -> (1, C, H, W) tensor."""
    return torch.tensor(rows, dtype=dtype).unsqueeze(0)


# ------------------------------------------------------------------ shared behaviour of all losses
def _labels(n, h, w, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, h, w), generator=g)
    labels[:, 0, 0] = 255
    return labels


CASES = {
    # name: (factory, student channels, teacher channels, needs labels, exactly zero at S == T)
    "pixel_kd": (lambda: PixelKDLoss(tau=2.0), 4, 4, False, True),
    "skd_pairwise": (lambda: PairwiseSimilarityLoss(), 4, 6, False, True),
    "skd_pairwise_full": (lambda: PairwiseSimilarityLoss(pool_size=1), 4, 6, False, True),
    "ifvd": (lambda: IFVDLoss(), 4, 6, True, True),
    "cirkd": (lambda: CrossImageRelationLoss(4, 4, 3, projector="identity", pixel_memory_size=8,
                                             region_memory_size=4, pixel_update_freq=2), 4, 4, True, True),
    "cirkd_mlp": (lambda: CrossImageRelationLoss(4, 6, 3, pixel_memory_size=8, region_memory_size=4,
                                                 pixel_update_freq=2), 4, 6, True, False),
    "bpkd": (lambda: BPKDLoss(kernel_size=3, compute_iters=1), 4, 4, True, True),
    "tat_patch1": (lambda: TATLoss(4, 4, patch_size=1), 4, 4, False, True),
    "tat": (lambda: TATLoss(4, 6, anchor_size=2), 4, 6, False, False),
    "tat_patch": (lambda: TATLoss(4, 6, patch_size=4, anchor_size=3), 4, 6, False, False),
    "sstkd": (lambda: SSTKDLoss(4, 4, levels=2, bins=8), 4, 4, False, True),
    "sstkd_proj": (lambda: SSTKDLoss(4, 6, levels=2, bins=8), 4, 6, False, False),
}


def _call(name, loss, s, t):
    needs_labels = CASES[name][3]
    return loss(s, t, _labels(t.shape[0], *t.shape[-2:])) if needs_labels else loss(s, t)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_reaches_student_only(name):
    factory, cs, ct, _, _ = CASES[name]
    torch.manual_seed(0)
    loss = factory()
    s = torch.randn(2, cs, 7, 9, requires_grad=True)
    t = torch.randn(2, ct, 7, 9, requires_grad=True)
    out = _call(name, loss, s, t)
    assert out.shape == () and torch.isfinite(out) and out.item() > 0
    out.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    for p in loss.parameters():
        assert p.grad is not None


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odd_sizes_dtype_and_student_resize(name, dtype):
    factory, cs, ct, _, _ = CASES[name]
    torch.manual_seed(1)
    loss = factory()
    out = _call(name, loss, torch.randn(2, cs, 7, 9, dtype=dtype), torch.randn(2, ct, 7, 9, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out)
    small = _call(name, loss, torch.randn(2, cs, 4, 5, dtype=dtype), torch.randn(2, ct, 7, 9, dtype=dtype))
    assert small.dtype == dtype and torch.isfinite(small)


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_when_student_equals_teacher_and_loss_weight_is_read_each_call(name):
    factory, cs, ct, _, exact_zero = CASES[name]
    torch.manual_seed(2)
    loss = factory()
    if isinstance(loss, CrossImageRelationLoss):
        loss.eval()  # keep the memory fixed between the calls below
    t = torch.randn(2, ct, 7, 9, dtype=F64)
    if exact_zero:
        assert abs(_call(name, loss, t.clone(), t).item()) < 1e-10
    s = torch.randn(2, cs, 7, 9, dtype=F64)
    full = _call(name, loss, s, t)
    loss.loss_weight = 0.25
    assert torch.allclose(_call(name, loss, s, t), 0.25 * full)


# ------------------------------------------------------------------ PixelKDLoss
def test_pixel_kd_hand_checked():
    t = _t([[[0.0, 2.0]], [[1.0, 0.0]]])  # K = 2 classes, 1 x 2 pixels: (0, 1) and (2, 0)
    s = _t([[[0.0, 1.0]], [[0.0, 0.0]]])
    for tau in (1.0, 2.0):
        expected = tau ** 2 * (_kl(_softmax([0, 1], tau), _softmax([0, 0], tau))
                               + _kl(_softmax([2, 0], tau), _softmax([1, 0], tau))) / 2
        assert abs(PixelKDLoss(tau=tau, loss_weight=3.0)(s, t).item() - 3.0 * expected) < 1e-12


def test_pixel_kd_validation():
    with pytest.raises(ValueError, match="same number of channels"):
        PixelKDLoss()(torch.randn(1, 3, 2, 2), torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="tau"):
        PixelKDLoss(tau=0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        PixelKDLoss()(torch.randn(3, 2, 2), torch.randn(3, 2, 2))
    with pytest.raises(ValueError, match="floating point"):
        PixelKDLoss()(torch.ones(1, 2, 2, 2, dtype=torch.long), torch.randn(1, 2, 2, 2))


# ------------------------------------------------------------------ PairwiseSimilarityLoss (SKD)
def test_skd_pairwise_hand_checked():
    # Nodes after 1 x 2 max pooling: student (1, 0), (1, 1); teacher (1, 0), (0, 1).
    # Cosine matrices [[1, 1/sqrt2], [1/sqrt2, 1]] and I: squared error sum 2 * 1/2, / (N M^2) = 1/4.
    s = _t([[[1.0, 0.0, 1.0, 0.0]], [[0.0, -1.0, -2.0, 1.0]]])
    t = _t([[[1.0, -3.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, -1.0]]])
    assert abs(PairwiseSimilarityLoss(pool_size=(1, 2))(s, t).item() - 0.25) < 1e-12
    # Same nodes without pooling; the teacher has 3 channels (only the similarities are compared).
    s1 = _t([[[1.0, 1.0]], [[0.0, 1.0]]])
    t1 = _t([[[2.0, 0.0]], [[0.0, 5.0]], [[0.0, 0.0]]])
    assert abs(PairwiseSimilarityLoss(pool_size=1)(s1, t1).item() - 0.25) < 1e-12


def test_skd_node_grid_from_scale():
    loss = PairwiseSimilarityLoss(scale=0.5)
    assert loss.node_kernel(7, 9) == (3, 4) and loss.node_kernel(1, 1) == (1, 1)
    s, t = torch.randn(2, 3, 7, 9, dtype=F64), torch.randn(2, 3, 7, 9, dtype=F64)
    assert torch.allclose(loss(s, t), PairwiseSimilarityLoss(pool_size=(3, 4))(s, t))
    with pytest.raises(ValueError, match="scale"):
        PairwiseSimilarityLoss(scale=1.5)
    with pytest.raises(ValueError, match="pool_size"):
        PairwiseSimilarityLoss(pool_size=0)


# ------------------------------------------------------------------ IFVDLoss
def test_ifvd_hand_checked_with_ignored_pixel_and_label_resize():
    # Class 0 = pixels 0, 1; class 1 = pixel 2; pixel 3 is ignored (must change nothing).
    s = _t([[[1.0, 0.0, 1.0, -5.0]], [[0.0, 1.0, 1.0, 2.0]]])
    t = _t([[[1.0, 1.0, 0.0, 7.0]], [[0.0, 0.0, 3.0, 1.0]]])
    labels = torch.tensor([[[0, 0, 1, 255]]])
    # Student prototype of class 0 is (0.5, 0.5): cos 1/sqrt2 for both pixels; the rest are 1.
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert abs(IFVDLoss()(s, t, labels).item() - expected) < 1e-12
    # Labels at twice the resolution are resized by nearest neighbour (rows 0, cols 0, 2, 4, 6).
    big = torch.tensor([[[0, 9, 0, 9, 1, 9, 255, 9], [9] * 8]])
    assert abs(IFVDLoss(loss_weight=2.0)(s, t, big).item() - 2 * expected) < 1e-12
    assert IFVDLoss()(s, t, torch.full((1, 1, 4), 255)).item() == 0.0
    with pytest.raises(ValueError, match="integer"):
        IFVDLoss()(s, t, labels.double())


# ------------------------------------------------------------------ CrossImageRelationLoss (CIRKD)
def _unit(rows):
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _pixels(x):
    """(N, D, H, W) tensor -> per image, list of unit pixel vectors."""
    return [_unit(img.flatten(1).T.tolist()) for img in x]


def test_cirkd_batch_term_matches_loop_reference():
    torch.manual_seed(3)
    s, t = torch.randn(2, 3, 1, 2, dtype=F64), torch.randn(2, 3, 1, 2, dtype=F64)
    labels = torch.zeros(2, 1, 2, dtype=torch.long)
    loss = CrossImageRelationLoss(3, 3, 1, projector="identity", contrast_temperature=0.5,
                                  kd_temperature=2.0, memory_pixel_weight=0.0, memory_region_weight=0.0)
    sp, tp = _pixels(s), _pixels(t)
    total = 0.0
    for i in range(2):
        for j in range(2):
            for a in range(2):
                r_s = [_dot(sp[i][a], sp[j][b]) / 0.5 for b in range(2)]
                r_t = [_dot(tp[i][a], tp[j][b]) / 0.5 for b in range(2)]
                total += 4.0 * _kl(_softmax(r_t, 2.0), _softmax(r_s, 2.0))
    assert abs(loss(s, t, labels).item() - total / (2 * 2 * 2)) < 1e-12


def test_cirkd_memory_terms_match_reference():
    torch.manual_seed(4)
    s, t = torch.randn(1, 2, 1, 3, dtype=F64), torch.randn(1, 2, 1, 3, dtype=F64)
    labels = torch.tensor([[[0, 255, 1]]])  # the middle pixel is not an anchor
    loss = CrossImageRelationLoss(2, 2, 2, projector="identity", batch_pixel_weight=0.0,
                                  memory_pixel_weight=1.0, memory_region_weight=0.0,
                                  pixel_memory_size=2, region_memory_size=1, pixel_update_freq=1)
    loss = loss.double().eval()  # eval: no enqueue
    keys = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.8, 0.6]]
    loss.pixel_queue.copy_(torch.tensor(keys, dtype=F64).view(2, 2, 2))
    sp, tp = _pixels(s)[0], _pixels(t)[0]
    expected = sum(_kl(_softmax([_dot(tp[a], k) / 0.1 for k in keys]),
                       _softmax([_dot(sp[a], k) / 0.1 for k in keys])) for a in (0, 2)) / 2
    assert abs(loss(s, t, labels).item() - expected) < 1e-9
    assert set(loss.last_terms) == {"batch_pixel", "memory_pixel", "memory_region"}
    # Region term alone, same keys as the region bank (contrast size covers the whole bank).
    loss.weights = (0.0, 0.0, 1.0)
    loss.region_queue.copy_(torch.tensor(keys[:2], dtype=F64).view(2, 1, 2))
    expected = sum(_kl(_softmax([_dot(tp[a], k) / 0.1 for k in keys[:2]]),
                       _softmax([_dot(sp[a], k) / 0.1 for k in keys[:2]])) for a in (0, 2)) / 2
    assert abs(loss(s, t, labels).item() - expected) < 1e-9


def test_cirkd_enqueue_and_determinism():
    torch.manual_seed(5)
    s, t = torch.randn(2, 2, 2, 3), torch.randn(2, 2, 2, 3)
    labels = torch.tensor([[[0, 0, 1], [1, 1, 255]], [[1, 1, 1], [1, 1, 1]]])
    kwargs = dict(projector="identity", pixel_memory_size=4, region_memory_size=3, pixel_update_freq=2)
    loss = CrossImageRelationLoss(2, 2, 3, seed=7, **kwargs)
    out = loss(s, t, labels)
    tn = torch.nn.functional.normalize(t, dim=1)
    region0 = torch.nn.functional.normalize(tn[0, :, 0, :2].mean(1), dim=0)
    region1_img1 = torch.nn.functional.normalize(tn[1].flatten(1).mean(1), dim=0)
    assert torch.allclose(loss.region_queue[0, 0], region0, atol=1e-6)
    assert torch.allclose(loss.region_queue[1, 1], region1_img1, atol=1e-6)
    assert loss.region_ptr.tolist() == [1, 2, 0] and loss.pixel_ptr.tolist() == [2, 0, 0]
    pixels_class0 = {tuple(v) for v in tn[0, :, 0, :2].T.tolist()}
    assert {tuple(v) for v in loss.pixel_queue[0, :2].tolist()} == pixels_class0
    twin = CrossImageRelationLoss(2, 2, 3, seed=7, **kwargs)
    assert torch.equal(twin(s, t, labels), out) and torch.equal(twin.pixel_queue, loss.pixel_queue)
    other = CrossImageRelationLoss(2, 2, 3, seed=8, **kwargs)
    other(s, t, labels)
    assert not torch.equal(other.pixel_queue, loss.pixel_queue)
    with pytest.raises(ValueError, match="num_classes"):
        loss(s, t, labels.clamp(max=5) * 0 + 4)
    with pytest.raises(ValueError, match="projector"):
        CrossImageRelationLoss(2, 3, 3, projector="identity")


# ------------------------------------------------------------------ BPKDLoss
def test_bpkd_edge_body_masks():
    labels = torch.tensor([[0, 0, 1, 1, 1]] * 5).unsqueeze(0)
    edge, body = edge_body_masks(labels, kernel_size=3, compute_iters=1)
    assert edge[0, 2].tolist() == [False, True, True, False, False]
    assert body[0, 2].tolist() == [True, False, False, True, True]
    edge, body = edge_body_masks(labels, kernel_size=3, compute_iters=2)
    assert edge[0, 0].tolist() == [True, True, True, True, False]
    assert body[0, 0].tolist() == [False, False, False, False, True]
    edge5, _ = edge_body_masks(labels, kernel_size=5, compute_iters=1)
    assert torch.equal(edge5, edge)  # two 3x3 steps = one 5x5 step
    holed = labels.clone()
    holed[0, 2, 4] = 255  # an ignored pixel: its class-1 neighbours become edge, it is neither
    edge, body = edge_body_masks(holed, kernel_size=3, compute_iters=1)
    assert edge[0, 1, 3] and edge[0, 3, 4] and not edge[0, 2, 4] and not body[0, 2, 4]


def test_bpkd_hand_checked():
    # One row, labels [0, 0, 1, 1, 1]: edge = pixels 1, 2; body = pixels 0, 3, 4.
    labels = torch.tensor([[[0, 0, 1, 1, 1]]])
    t_rows = [[0.0, 1.0, 2.0, -1.0, 0.5], [1.0, 0.0, -1.0, 2.0, 0.0]]
    s_rows = [[0.5, 0.0, 0.0, 1.0, -1.0], [0.0, 2.0, 1.0, 0.0, 1.0]]
    t, s = _t([[r] for r in t_rows]), _t([[r] for r in s_rows])
    pix = [_kl(_softmax([t_rows[0][i], t_rows[1][i]]), _softmax([s_rows[0][i], s_rows[1][i]]))
           for i in range(5)]
    body = [0, 3, 4]
    cwd = sum(_kl(_softmax([t_rows[k][i] for i in body]), _softmax([s_rows[k][i] for i in body]))
              for k in range(2)) / 2
    loss = BPKDLoss(edge_weight=2.0, body_weight=3.0)
    assert abs(loss(s, t, labels).item() - (2.0 * (pix[1] + pix[2]) / 2 + 3.0 * cwd)) < 1e-12
    assert abs(loss.last_edge.item() - (pix[1] + pix[2])) < 1e-12
    weighted = BPKDLoss(body_weight=0.0, class_weight=[2.0, 0.5])(s, t, labels)
    assert abs(weighted.item() - (2.0 * pix[1] + 0.5 * pix[2]) / 2) < 1e-12
    with pytest.raises(ValueError, match="class_weight"):
        BPKDLoss(class_weight=[1.0])(s, t, labels)
    with pytest.raises(ValueError, match="odd"):
        BPKDLoss(kernel_size=4)
    assert BPKDLoss()(s, t, torch.full((1, 1, 5), 255)).item() == 0.0


# ------------------------------------------------------------------ TATLoss
def test_tat_hand_checked_one_channel():
    s, t = _t([[[0.5, -1.0]]]), _t([[[2.0, 1.0]]])  # C = 1: identity gamma, phi
    expected = 0.0
    for ti in (2.0, 1.0):
        w = _softmax([ti * 0.5, ti * -1.0])
        expected += (w[0] * 0.5 + w[1] * -1.0 - ti) ** 2
    assert abs(TATLoss(1, 1)(s, t).item() - expected / 2) < 1e-12


def test_tat_patch_and_anchor_special_cases():
    torch.manual_seed(6)
    s, t = torch.randn(2, 3, 7, 9, dtype=F64), torch.randn(2, 3, 7, 9, dtype=F64)
    mse = (s - t).square().mean()
    # 1x1 patches: each pixel only attends to itself, S' = S.
    assert torch.allclose(TATLoss(3, 3, patch_size=1)(s, t), mse)
    # One anchor covering the whole 7x9 map: S'_anchor = mean of S.
    anchor = (s.mean(dim=(2, 3)) - t.mean(dim=(2, 3))).square().mean()
    combined = TATLoss(3, 3, patch_size=1, anchor_size=9, anchor_weight=0.5)(s, t)
    assert torch.allclose(combined, mse + 0.5 * anchor)


def test_tat_patches_match_per_window_reference():
    torch.manual_seed(7)
    s, t = torch.randn(1, 2, 7, 9, dtype=F64), torch.randn(1, 2, 7, 9, dtype=F64)
    total = 0.0
    for y in range(0, 7, 4):
        for x in range(0, 9, 4):
            sw, tw = s[:, :, y:y + 4, x:x + 4].flatten(2), t[:, :, y:y + 4, x:x + 4].flatten(2)
            total += target_aware_error(sw, sw, tw).item()
    assert abs(TATLoss(2, 2, patch_size=4)(s, t).item() - total / t.numel()) < 1e-12


# ------------------------------------------------------------------ SSTKDLoss
def test_sstkd_pyramid_and_histogram_hand_checked():
    x = _t([[[1.0, 2.0], [3.0, 4.0]]])
    bands = laplacian_pyramid(x, levels=1)
    assert torch.allclose(bands[0, 0], torch.tensor([[-1.5, -0.5], [0.5, 1.5]], dtype=F64))
    assert torch.allclose(bands[0, 1], torch.full((2, 2), 2.5, dtype=F64))
    y = torch.randn(2, 3, 7, 9, dtype=F64)
    parts = laplacian_pyramid(y, levels=1).view(2, 2, 3, 7, 9)
    assert torch.allclose(parts.sum(1), y)  # one level: band + upsampled low-pass = input
    assert laplacian_pyramid(y, levels=4).shape == (2, 15, 7, 9)
    hist = intensity_histogram(_t([[[1.0, 0.0]], [[0.0, 1.0]]]), bins=3)  # both cos = 1/sqrt2
    c = 1 / math.sqrt(2)
    assert torch.allclose(hist, torch.tensor([[0.0, 1 - c, c]], dtype=F64))
    assert torch.allclose(intensity_histogram(y, bins=5).sum(1), torch.ones(2, dtype=F64))


def test_sstkd_structural_term_hand_checked():
    s, t = _t([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 1, 2, 2, dtype=F64)
    loss = SSTKDLoss(1, 1, levels=1, statistical_weight=0.0)
    # bands (-1.5, -0.5, 0.5, 1.5) and (2.5 x 4) against 0: (5 + 25) / 8
    assert abs(loss(s, t).item() - 3.75) < 1e-12
    assert abs(loss.last_structural.item() - 3.75) < 1e-12 and loss.last_statistical.item() == 0.0
    with pytest.raises(ValueError, match="channels"):
        loss(torch.randn(1, 2, 2, 2), torch.randn(1, 1, 2, 2))
    with pytest.raises(ValueError, match="bins"):
        SSTKDLoss(1, 1, bins=1)


def test_exports_and_no_openmmlab_imports():
    import pathlib

    import bcd.losses.baselines as baselines

    for path in pathlib.Path(baselines.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "import mm" not in text and "from mm" not in text, path.name
    constructor_args = {"PixelKDLoss": (), "PairwiseSimilarityLoss": (), "IFVDLoss": (), "BPKDLoss": (),
                        "CrossImageRelationLoss": (2, 2, 2), "TATLoss": (2, 2), "SSTKDLoss": (2, 2)}
    for name, args in constructor_args.items():
        assert name in baselines.__all__
        assert getattr(baselines, name)(*args).loss_weight == 1.0
