"""Dataset-level accumulation of Boundary IoU, trimap IoU and region connectivity.

Counts are summed over images and divided at the end (like mIoU), so a dataset value is not the
mean of per-image values. Dependency-light on purpose (numpy/scipy; torch tensors are accepted
but torch is not imported) so that an mmengine metric can wrap it.
"""
from __future__ import annotations

import numpy as np

from ._common import nanmean, ratio
from .boundary import boundary_iou_counts
from .connectivity import COUNT_KEYS, connectivity_counts, connectivity_from_counts
from .trimap import trimap_iou_counts

_CONNECTIVITY_NAMES = {  # per-class key -> mean key
    "fragmentation": "mFragmentation",
    "missed": "mMissed",
    "pieces_per_region": "mPiecesPerRegion",
    "component_ratio": "mComponentRatio",
}


def _as_batch(x):
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    raise ValueError(f"expected an (H, W) label map or an (N, H, W) batch, got shape {x.shape}")


class SegmentationQualityAccumulator:
    """Accumulates per-class counts of boundary, trimap and connectivity metrics over a dataset.

    Args:
        num_classes: number of classes ``K``.
        dilation_ratio: Boundary IoU band width as a fraction of each image's diagonal.
        trimap_widths: trimap band half-widths in pixels (one set of counts per width).
        ignore_index: ground-truth label of ignored pixels.
        connectivity: 4 or 8, for region connectivity.
        min_area: connectivity ignores components with fewer pixels.
        border_as_contour: Boundary IoU counts the image border as a contour (reference
            implementation); default ``False``.

    ``update(pred, gt)`` takes one ``(H, W)`` map pair or an ``(N, H, W)`` batch (numpy arrays
    or torch tensors); ``compute()`` returns a plain dict (see :meth:`compute`).
    """

    def __init__(self, num_classes: int, dilation_ratio: float = 0.02,
                 trimap_widths=(1, 3, 5), ignore_index: int = 255, connectivity: int = 8,
                 min_area: int = 0, border_as_contour: bool = False):
        self.num_classes = int(num_classes)
        self.dilation_ratio = float(dilation_ratio)
        self.trimap_widths = tuple(int(w) for w in trimap_widths)
        if any(w < 1 for w in self.trimap_widths):
            raise ValueError(f"trimap widths must be >= 1, got {self.trimap_widths}")
        self.ignore_index = int(ignore_index)
        self.connectivity = int(connectivity)
        self.min_area = int(min_area)
        self.border_as_contour = bool(border_as_contour)
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        zeros = lambda: np.zeros(self.num_classes, dtype=np.int64)  # noqa: E731
        self.num_images = 0
        self.boundary = [zeros(), zeros()]  # intersection, union
        self.trimap = {w: [zeros(), zeros()] for w in self.trimap_widths}
        self.connectivity_counts = {key: zeros() for key in COUNT_KEYS}

    def update(self, pred, gt) -> None:
        """Add one image pair, or a batch of them."""
        preds, gts = _as_batch(pred), _as_batch(gt)
        if preds.shape != gts.shape:
            raise ValueError(f"pred shape {preds.shape} != gt shape {gts.shape}")
        for p, g in zip(preds, gts):
            inter, union = boundary_iou_counts(p, g, self.num_classes, self.dilation_ratio,
                                               self.ignore_index, self.border_as_contour)
            self.boundary[0] += inter
            self.boundary[1] += union
            for w in self.trimap_widths:
                inter, union = trimap_iou_counts(p, g, self.num_classes, w, self.ignore_index)
                self.trimap[w][0] += inter
                self.trimap[w][1] += union
            counts = connectivity_counts(p, g, self.num_classes, self.connectivity,
                                         self.min_area, self.ignore_index)
            for key in COUNT_KEYS:
                self.connectivity_counts[key] += counts[key]
            self.num_images += 1

    def merge(self, other: "SegmentationQualityAccumulator") -> None:
        """Add the counts of another accumulator with the same settings (e.g. another worker)."""
        if (other.num_classes, other.trimap_widths) != (self.num_classes, self.trimap_widths):
            raise ValueError("cannot merge accumulators with different num_classes/trimap_widths")
        self.num_images += other.num_images
        for i in range(2):
            self.boundary[i] += other.boundary[i]
            for w in self.trimap_widths:
                self.trimap[w][i] += other.trimap[w][i]
        for key in COUNT_KEYS:
            self.connectivity_counts[key] += other.connectivity_counts[key]

    def compute(self) -> dict:
        """Dataset metrics from the summed counts, as a plain (JSON-friendly) dict.

        Per-class values are lists of ``K`` floats in ``[0, 1]`` (ratios for
        ``pieces_per_region``/``component_ratio``), NaN where undefined; each ``m...`` key is the
        mean over classes ignoring NaN (NaN if all are). Keys: ``num_images``,
        ``boundary_iou``/``mBoundaryIoU``, ``trimap_iou@w``/``mTrimapIoU@w`` for each width,
        ``fragmentation``/``mFragmentation``, ``missed``/``mMissed``,
        ``pieces_per_region``/``mPiecesPerRegion``, ``component_ratio``/``mComponentRatio``.
        """
        out: dict = {"num_images": self.num_images}

        def put(key, mean_key, values):
            values = np.asarray(values, dtype=np.float64)
            out[key] = [float(v) for v in values]
            out[mean_key] = nanmean(values)

        put("boundary_iou", "mBoundaryIoU", ratio(*self.boundary))
        for w in self.trimap_widths:
            put(f"trimap_iou@{w}", f"mTrimapIoU@{w}", ratio(*self.trimap[w]))
        for key, values in connectivity_from_counts(self.connectivity_counts).items():
            put(key, _CONNECTIVITY_NAMES[key], values)
        return out
