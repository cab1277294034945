"""Boundary IoU (Cheng et al., CVPR 2021, "Boundary IoU: Improving Object-Centric Image
Segmentation Evaluation"), per class for semantic label maps.

For class ``c`` let ``G = (gt == c)`` and ``P = (pred == c)``. The inner boundary band of a mask
``M`` with width ``d`` is ``M_d = M minus erode(M, (2d+1) x (2d+1) square)``: the mask pixels
whose chessboard distance to a pixel outside the mask is at most ``d`` (``d`` erosions with a
3x3 square, as in the reference implementation). Then

    BIoU_c = |G_d  intersect  P_d| / |G_d  union  P_d|,     d = max(1, round(ratio * diagonal)),

where ``diagonal = sqrt(H^2 + W^2)`` of the label map and ``ratio = dilation_ratio = 0.02``.

Choices (see docs/method.md, "Evaluation metrics"):

- **Image border.** ``border_as_contour=False`` (default): the image border is *not* a contour;
  a region cut by the frame is not "bounded" there (for semantic segmentation a road or sky
  region touching the frame would otherwise add a band of trivially correct pixels along the
  border). ``border_as_contour=True`` reproduces the reference implementation, which pads the
  mask with a 1-pixel zero border before eroding.
- **Ignored pixels** (``gt == ignore_index``) are *unknown*: they are excluded from both counts,
  and they neither create a contour (a class bordering a void region has no boundary there) nor
  break one, for the ground truth and the prediction alike. Consequently the metric does not
  depend on what is predicted at ignored pixels, as for mIoU.
- **Dataset level.** :func:`boundary_iou_counts` returns per-class intersection and union pixel
  counts; a dataset value is ``sum(intersections) / sum(unions)`` over images (like mIoU), not the
  mean of per-image values. ``d`` is computed from each image's own diagonal.
- **NaN** where the union of the two bands is empty: the class is absent from both maps, or (only
  possible with ``border_as_contour=False``) it has no contour in either map, e.g. it fills the
  whole valid area of the ground truth and is absent from, or also fills, the prediction.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._common import as_label_map, class_counts, prepare, ratio


def boundary_width(shape, dilation_ratio: float = 0.02) -> int:
    """Band width ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` in pixels.

    Python's ``round`` (half to even) is used, as in the reference implementation.
    """
    h, w = int(shape[0]), int(shape[1])
    if dilation_ratio <= 0:
        raise ValueError(f"dilation_ratio must be > 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def label_boundary_band(labels, width: int, valid=None, border_as_contour: bool = False) -> np.ndarray:
    """Pixels within chessboard distance ``width`` of a pixel with a different label.

    ``labels`` is a 2-D integer map; ``valid`` (bool map, default all ``True``) marks the pixels
    that have a known label: invalid pixels are never in the band and do not count as "a different
    label" for their neighbours. With ``border_as_contour=True`` the outside of the image counts
    as a different label (pixels within ``width`` of the border are in the band).

    For a class ``c`` the band restricted to ``labels == c`` is exactly the inner boundary band of
    the mask ``labels == c`` (the mask minus its erosion by a ``(2 width + 1)`` square, invalid
    pixels treated as inside the mask), so one grey-level dilation and one erosion
    (``scipy.ndimage.maximum_filter``/``minimum_filter``) give the bands of all classes at once.
    """
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    lab = as_label_map(labels, "labels")
    valid = np.ones(lab.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid.shape != lab.shape:
        raise ValueError(f"valid shape {valid.shape} != labels shape {lab.shape}")
    if lab.size == 0:
        return np.zeros(lab.shape, dtype=bool)
    low, high = int(lab.min()) - 1, int(lab.max()) + 1  # values no label takes
    size = 2 * width + 1
    # Invalid pixels get a value that can never win the max (resp. min): they are "like me".
    hi = ndimage.maximum_filter(np.where(valid, lab, low), size=size, mode="constant", cval=low)
    lo = ndimage.minimum_filter(np.where(valid, lab, high), size=size, mode="constant",
                                cval=low if border_as_contour else high)
    return valid & ((hi != lab) | (lo != lab))


def boundary_iou_counts(pred, gt, num_classes: int, dilation_ratio: float = 0.02,
                        ignore_index: int = 255, border_as_contour: bool = False):
    """Per-class Boundary IoU pixel counts of one image.

    Args:
        pred, gt: ``(H, W)`` integer label maps (numpy arrays or torch tensors). ``gt`` values are
            in ``[0, num_classes)`` or ``ignore_index``; ``pred`` values outside
            ``[0, num_classes)`` belong to no class.
        num_classes: number of classes ``K``.
        dilation_ratio: band width as a fraction of the image diagonal (``d`` is at least 1).
        ignore_index: ground-truth label of ignored pixels (excluded, treated as unknown).
        border_as_contour: count the image border as a contour (reference implementation).

    Returns:
        ``(intersection, union)``: two ``int64`` arrays of shape ``(K,)``, ``|G_d & P_d|`` and
        ``|G_d | P_d|`` per class. Sum them over images, then divide.
    """
    pred, gt, valid = prepare(pred, gt, num_classes, ignore_index)
    d = boundary_width(gt.shape, dilation_ratio)
    band_g = label_boundary_band(gt, d, valid, border_as_contour)
    band_p = label_boundary_band(pred, d, valid, border_as_contour)
    inter = class_counts(gt, band_g & band_p & (gt == pred), num_classes)
    union = class_counts(gt, band_g, num_classes) + class_counts(pred, band_p, num_classes) - inter
    return inter, union


def boundary_iou(pred, gt, num_classes: int, dilation_ratio: float = 0.02,
                 ignore_index: int = 255, border_as_contour: bool = False) -> np.ndarray:
    """Per-class Boundary IoU of one image: ``float64`` array ``(K,)`` in ``[0, 1]``, NaN where
    both boundary bands are empty (class absent from both maps). Arguments as for
    :func:`boundary_iou_counts`."""
    inter, union = boundary_iou_counts(pred, gt, num_classes, dilation_ratio, ignore_index,
                                       border_as_contour)
    return ratio(inter, union)
