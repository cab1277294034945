"""Helpers shared by the baseline losses: input checks, size/dtype alignment, label resizing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._checks import check_maps  # noqa: F401  (re-exported for the baselines)


def check_channels(name: str, preds_S: Tensor, preds_T: Tensor, student_channels: int,
                   teacher_channels: int) -> None:
    """Raise ``ValueError`` unless ``preds_S`` / ``preds_T`` have the configured channel counts."""
    if (preds_S.shape[1], preds_T.shape[1]) != (student_channels, teacher_channels):
        raise ValueError(f"{name}: expected {student_channels} student and {teacher_channels} teacher "
                         f"channels, got {tuple(preds_S.shape)} and {tuple(preds_T.shape)}")


def align_pair(preds_S: Tensor, preds_T: Tensor) -> tuple[Tensor, Tensor]:
    """Common dtype, teacher detached, student resized (bilinear) to the teacher's ``(H, W)``."""
    dtype = torch.promote_types(preds_S.dtype, preds_T.dtype)
    s, t = preds_S.to(dtype), preds_T.detach().to(dtype)
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return s, t


def labels_at(name: str, gt_labels: Tensor, n: int, size: tuple[int, int], device) -> Tensor:
    """``(N, H0, W0)`` or ``(N, 1, H0, W0)`` integer labels, nearest-resized to ``size``, as long."""
    if not isinstance(gt_labels, Tensor):
        raise ValueError(f"{name}: gt_labels must be a Tensor, got {type(gt_labels).__name__}")
    if gt_labels.dim() == 4 and gt_labels.shape[1] == 1:
        gt_labels = gt_labels[:, 0]
    if gt_labels.dim() != 3 or gt_labels.shape[0] != n:
        raise ValueError(f"{name}: gt_labels must be (N, H, W) or (N, 1, H, W) with N = {n}, "
                         f"got {tuple(gt_labels.shape)}")
    if gt_labels.is_floating_point() or gt_labels.is_complex() or gt_labels.dtype == torch.bool:
        raise ValueError(f"{name}: gt_labels must hold integer labels, got {gt_labels.dtype}")
    gt_labels = gt_labels.to(device)
    if tuple(gt_labels.shape[-2:]) == tuple(size):
        return gt_labels.long()
    # 'nearest' (not 'nearest-exact') as in the IFVD / CIRKD reference code.
    return F.interpolate(gt_labels[:, None].double(), size=size, mode="nearest")[:, 0].long()


def conv(x: Tensor, module: nn.Conv2d) -> Tensor:
    """Apply a conv with its parameters cast to ``x``'s dtype (so the output follows the input)."""
    bias = None if module.bias is None else module.bias.to(x.dtype)
    return F.conv2d(x, module.weight.to(x.dtype), bias, module.stride, module.padding)


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """A 1x1 conv, initialised to the identity (zero bias) when ``in_channels == out_channels``."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
    if in_channels == out_channels:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
            if bias:
                layer.bias.zero_()
    return layer


def check_int(name: str, arg: str, value, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` or a ``ValueError`` naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {arg} must be an int >= {minimum}, got {value!r}")
    return value


def check_positive(name: str, arg: str, value) -> float:
    """``value`` as a float ``> 0`` or a ``ValueError`` naming ``arg``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0.0:
        raise ValueError(f"{name}: {arg} must be a number > 0, got {value!r}")
    return float(value)


def low_memory(fn, *args: Tensor) -> Tensor:
    """``fn(*args)``, under activation checkpointing when a gradient will be needed.

    The relation losses call this once per image (or image pair) so that only one ``HW x HW``
    matrix and its temporaries exist at a time, in the forward and in the backward pass.
    """
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def per_level(name: str, arg: str, x, n_levels: int | None = None, ref: str = "") -> list:
    """A per-level input of a detection loss as a list (one tensor = one level); ``ValueError``
    naming ``arg`` if it is empty or not a list, or has not ``n_levels`` levels (those of
    ``ref``)."""
    if isinstance(x, Tensor):
        x = [x]
    if not isinstance(x, (list, tuple)) or len(x) == 0:
        raise ValueError(f"{name}: {arg} must be a Tensor or a non-empty list of per-level "
                         f"entries, got {type(x).__name__}")
    if n_levels is not None and len(x) != n_levels:
        raise ValueError(f"{name}: {arg} has {len(x)} levels, {ref} has {n_levels}")
    return list(x)
