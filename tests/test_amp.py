"""Mixed precision (train.<role>.amp): the distillation losses compute in float32 under autocast
(bcd.losses.precision), and bf16 training runs end to end on the CPU."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bcd.losses import BoundaryDistillLoss, ContextDistillLoss
from bcd.losses.baselines import (BPKDLoss, CrossImageRelationLoss, IFVDLoss, PairwiseSimilarityLoss,
                                  PixelKDLoss, SSTKDLoss, TATLoss)

N, C, K, H, W = 2, 8, 4, 12, 12


def _labels():
    g = torch.Generator().manual_seed(3)
    lab = torch.randint(0, K, (N, H, W), generator=g)
    lab[:, :, : W // 2] = 1                       # a region and a boundary
    return lab


CASES = {  # name: (build, inputs (student, teacher) kind, needs labels)
    "BD": (lambda: BoundaryDistillLoss(in_channels=C, loss_weight=1.0), "features", True),
    "CD": (lambda: ContextDistillLoss(in_channels=C, loss_weight=1.0), "features", False),
    "KD": (lambda: PixelKDLoss(tau=1.0), "logits", False),
    "SKD": (lambda: PairwiseSimilarityLoss(), "features", False),
    "IFVD": (lambda: IFVDLoss(), "features", True),
    "CIRKD": (lambda: CrossImageRelationLoss(C, C, K, pixel_memory_size=16, region_memory_size=8,
                                             pixel_contrast_size=16), "features", True),
    "BPKD": (lambda: BPKDLoss(), "logits", True),
    "TAT": (lambda: TATLoss(C, C), "features", False),
    "SSTKD": (lambda: SSTKDLoss(C, C), "features", False),
}


def _inputs(kind):
    g = torch.Generator().manual_seed(0)
    ch = K if kind == "logits" else C
    s = torch.randn(N, ch, H, W, generator=g) * 2
    t = torch.randn(N, ch, H, W, generator=g) * 2 + 0.5 * s
    return s, t


def _run(name, dtype):
    build, kind, labels = CASES[name]
    torch.manual_seed(1)
    loss = build()
    s, t = _inputs(kind)
    s = s.to(dtype).requires_grad_(True)
    t = t.to(dtype)
    args = (s, t) + ((_labels(),) if labels else ())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = loss(*args)
    out.backward()
    return out, s.grad.float()


@pytest.mark.parametrize("name", list(CASES))
def test_losses_compute_in_float32_under_bf16_autocast(name):
    """Value and gradient on bf16 inputs under autocast match float32 math on the same
    (rounded) inputs: within 1 % (value) and a gradient cosine above 0.99; the value is float32."""
    ref, ref_grad = _run(name, torch.float32)
    out, grad = _run(name, torch.bfloat16)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert out.item() == pytest.approx(ref.item(), rel=1e-2, abs=1e-4)
    if ref_grad.norm() > 0:
        assert F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99


def test_each_mode_picks_its_wrapper_and_fp16_without_a_gpu_is_refused(monkeypatch):
    pytest.importorskip("mmengine")
    from bcd.mm.amp import check_device, optim_wrapper

    train = dict(lr=0.01, momentum=0.9, weight_decay=0.0)
    assert optim_wrapper(train)["type"] == "OptimWrapper"
    assert optim_wrapper(dict(train, amp="bf16"))["type"] == "AutocastOptimWrapper"
    fp16 = optim_wrapper(dict(train, amp="fp16"))
    assert fp16["type"] == "AmpOptimWrapper" and fp16["loss_scale"] == "dynamic"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device(dict(train, amp="bf16"), "student")
    with pytest.raises(ValueError, match="train.student.amp is fp16, which needs a GPU"):
        check_device(dict(train, amp="fp16"), "student")
