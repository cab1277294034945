"""Region connectivity: does the prediction keep a ground-truth region in one piece?

Per image and class ``c``, with connected components (``scipy.ndimage.label``, 8-connectivity by
default, ``connectivity=4`` available):

- the *ground-truth regions* of ``c`` are the components of ``gt == c``;
- the *predicted pieces* of ``c`` are the components of ``(pred == c) & valid`` (what is
  predicted at ignored pixels plays no part, as for mIoU);
- components smaller than ``min_area`` pixels are dropped on both sides (default 0 = keep all);
- for each region ``R``, ``k(R)`` = number of distinct predicted pieces of ``c`` that overlap
  ``R`` in at least one pixel.

A region is *missed* if ``k(R) = 0`` and *fragmented* if ``k(R) > 1`` (a missed region is not
fragmented). Summable counts per class: ``gt_regions`` (number of regions), ``missed``,
``fragmented``, ``pieces`` (sum of ``k(R)`` over regions) and ``pred_components`` (number of
predicted pieces). The metrics (summed counts over a dataset, then divided):

    fragmentation     = fragmented / gt_regions                  (ideal 0)
    missed            = missed / gt_regions                      (ideal 0)
    pieces_per_region = pieces / (gt_regions - missed)           (ideal 1; >= 1; over detected
                                                                  regions, so misses cannot
                                                                  offset fragments)
    component_ratio   = pred_components / gt_regions             (ideal 1; > 1 over-segmented or
                                                                  spurious blobs, < 1 merged or
                                                                  missed regions)

NaN where the denominator is 0 (in particular for every metric of a class without ground-truth
regions, even when it is predicted: its false positives are visible in ``pred_components`` and
in IoU, not here).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._common import connectivity_structure, prepare, ratio

COUNT_KEYS = ("gt_regions", "missed", "fragmented", "pieces", "pred_components")
METRIC_KEYS = ("fragmentation", "missed", "pieces_per_region", "component_ratio")


def _components(mask: np.ndarray, structure: np.ndarray, min_area: int):
    """Component labels of ``mask`` (0 = none) with components below ``min_area`` set to 0;
    returns ``(labels, n_labels_before_filtering, kept)`` where ``kept[i]`` says whether label
    ``i`` survived (``kept[0]`` is False)."""
    lab, n = ndimage.label(mask, structure=structure)
    kept = np.ones(n + 1, dtype=bool)
    kept[0] = False
    if min_area > 1 and n:
        kept &= np.bincount(lab.ravel(), minlength=n + 1) >= min_area
        lab = np.where(kept[lab], lab, 0)
    return lab, n, kept


def _union_box(a, b):
    """Smallest 2-D slice tuple containing the boxes ``a`` and ``b`` (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def connectivity_counts(pred, gt, num_classes: int, connectivity: int = 8, min_area: int = 0,
                        ignore_index: int = 255) -> dict:
    """Summable per-class connectivity counts of one image.

    Args:
        pred, gt: ``(H, W)`` integer label maps (numpy arrays or torch tensors).
        num_classes: number of classes ``K``.
        connectivity: 8 (default) or 4, for both ground-truth regions and predicted pieces.
        min_area: components with fewer pixels are dropped (ground truth and prediction alike).
        ignore_index: ground-truth label of ignored pixels.

    Returns:
        dict with ``int64`` arrays of shape ``(K,)`` under :data:`COUNT_KEYS`.
    """
    pred, gt, valid = prepare(pred, gt, num_classes, ignore_index)
    structure = connectivity_structure(connectivity)
    min_area = int(min_area)
    out = {key: np.zeros(num_classes, dtype=np.int64) for key in COUNT_KEYS}
    pred = np.where(valid, pred, num_classes)
    # per-class bounding boxes (one pass each), so components are labelled on crops only
    boxes_g = ndimage.find_objects(np.where(valid, gt + 1, 0), max_label=num_classes)
    boxes_p = ndimage.find_objects(pred + 1, max_label=num_classes)
    for c in range(num_classes):
        box = _union_box(boxes_g[c], boxes_p[c])
        if box is None:  # class absent from both maps
            continue
        g_lab, n_g, g_kept = _components(valid[box] & (gt[box] == c), structure, min_area)
        p_lab, n_p, p_kept = _components(pred[box] == c, structure, min_area)
        both = (g_lab > 0) & (p_lab > 0)
        # distinct (region, piece) pairs that touch, then the number of pieces per region
        pairs = np.unique(g_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both])
        k = np.bincount(pairs // (n_p + 1), minlength=n_g + 1)[g_kept]
        out["gt_regions"][c] = k.size
        out["missed"][c] = np.count_nonzero(k == 0)
        out["fragmented"][c] = np.count_nonzero(k > 1)
        out["pieces"][c] = k.sum()
        out["pred_components"][c] = np.count_nonzero(p_kept)
    return out


def connectivity_from_counts(counts: dict) -> dict:
    """Per-class metrics (``float64`` arrays, NaN where undefined) from (summed) counts."""
    regions = np.asarray(counts["gt_regions"])
    missed = np.asarray(counts["missed"])
    return {
        "fragmentation": ratio(counts["fragmented"], regions),
        "missed": ratio(missed, regions),
        "pieces_per_region": ratio(counts["pieces"], regions - missed),
        "component_ratio": ratio(counts["pred_components"], regions),
    }


def region_connectivity(pred, gt, num_classes: int, connectivity: int = 8, min_area: int = 0,
                        ignore_index: int = 255) -> dict:
    """Per-class connectivity metrics of one image: dict of ``float64`` arrays ``(K,)`` under
    :data:`METRIC_KEYS` (see the module docstring). Arguments as for
    :func:`connectivity_counts`."""
    return connectivity_from_counts(
        connectivity_counts(pred, gt, num_classes, connectivity, min_area, ignore_index))
