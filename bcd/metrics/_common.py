"""Input checks and small numeric helpers shared by the metric modules (numpy/scipy only)."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage


def as_label_map(x, name: str) -> np.ndarray:
    """Return ``x`` (numpy array or torch tensor) as a 2-D ``int64`` numpy array.

    Raises ``ValueError`` for anything that is not 2-D and ``TypeError`` for non-integer data
    (a float map is almost always logits or probabilities passed by mistake).
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) label map, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def prepare(pred, gt, num_classes: int, ignore_index: int):
    """Check a prediction/ground-truth pair and normalise it.

    Returns ``(pred, gt, valid)``: ``pred`` with every value outside ``[0, num_classes)``
    replaced by ``num_classes`` (a "no class" label, different from every class), ``gt`` with
    ignored pixels set to 0 (they are masked out by ``valid`` everywhere), and the boolean map
    ``valid = (gt != ignore_index)``.
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = as_label_map(pred, "pred")
    gt = as_label_map(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    valid = gt != ignore_index
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(
            f"gt holds labels outside [0, {num_classes}) that are not ignore_index={ignore_index}: "
            f"{np.unique(gt[bad])[:10].tolist()}")
    gt = np.where(valid, gt, 0)
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    return pred, gt, valid


def class_counts(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of pixels of each class ``0..num_classes-1`` among ``labels[mask]`` (int64)."""
    counts = np.bincount(labels[mask].ravel(), minlength=num_classes + 1)
    return counts[:num_classes].astype(np.int64)


def ratio(num, den) -> np.ndarray:
    """``num / den`` as float64, NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def nanmean(values) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN."""
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size else float("nan")


def connectivity_structure(connectivity: int) -> np.ndarray:
    """The 3x3 structuring element for ``scipy.ndimage.label``: 4- or 8-connectivity."""
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
