"""Trimap IoU: per-class IoU counted only in a band around the ground-truth boundaries.

The trimap evaluation (Kohli et al., 2009; used by DeepLab and, per class, in Table 3 / Fig. 1
of the BPKD supplementary) measures IoU in a narrow band around object boundaries. The BPKD
supplementary gives no formula and no width for its Table 3; it only says that edges are obtained
by dilation and erosion with a ``kernel_size`` controlling the edge width. We follow that:

    T_w = { valid pixels p : some valid pixel q with gt(q) != gt(p) has max(|dy|, |dx|) <= w }
    TrimapIoU_c(w) = |T_w & G_c & P_c| / |T_w & (G_c | P_c)|

i.e. ``T_w`` is where the grey dilation and the grey erosion of the ground-truth label map by a
``(2w+1) x (2w+1)`` square disagree with the label. A boundary between two regions therefore
gives a band ``2w`` pixels wide, ``w`` on each side. Ignored pixels are not labels (a class next
to a void region has no boundary there) and are never counted; the image border is not a
boundary. ``T_w`` equals the union over classes of the ground-truth inner bands of Boundary IoU
with ``d = w`` (``border_as_contour=False``).
"""
from __future__ import annotations

import numpy as np

from ._common import as_label_map, class_counts, prepare, ratio
from .boundary import label_boundary_band


def trimap_band(gt, width: int, ignore_index: int = 255) -> np.ndarray:
    """The trimap ``T_w`` of a ground-truth map: boolean ``(H, W)`` map (see module docstring)."""
    gt = as_label_map(gt, "gt")
    return label_boundary_band(gt, width, gt != ignore_index, border_as_contour=False)


def trimap_iou_counts(pred, gt, num_classes: int, width: int, ignore_index: int = 255):
    """Per-class intersection and union pixel counts inside the trimap band of width ``width``.

    Args:
        pred, gt: ``(H, W)`` integer label maps (numpy arrays or torch tensors).
        num_classes: number of classes ``K``.
        width: band half-width ``w >= 1`` in pixels (chessboard distance to the boundary).
        ignore_index: ground-truth label of ignored pixels.

    Returns:
        ``(intersection, union)``, two ``int64`` arrays of shape ``(K,)``. Sum over images, then
        divide.
    """
    pred, gt, valid = prepare(pred, gt, num_classes, ignore_index)
    band = label_boundary_band(gt, width, valid, border_as_contour=False)
    inter = class_counts(gt, band & (gt == pred), num_classes)
    union = class_counts(gt, band, num_classes) + class_counts(pred, band, num_classes) - inter
    return inter, union


def trimap_iou(pred, gt, num_classes: int, width: int, ignore_index: int = 255) -> np.ndarray:
    """Per-class trimap IoU of one image, ``float64`` ``(K,)``; NaN where the class is in neither
    map inside the band. Arguments as for :func:`trimap_iou_counts`."""
    return ratio(*trimap_iou_counts(pred, gt, num_classes, width, ignore_index))
