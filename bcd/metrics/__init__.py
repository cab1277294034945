"""Pure evaluation metrics on label maps (numpy/scipy; torch tensors accepted, no mm* imports).

Boundary IoU (Cheng et al., 2021), trimap IoU (IoU in a band around ground-truth boundaries) and
region connectivity (fragmentation of ground-truth regions). Every metric has a ``*_counts``
function returning per-class counts that are summed over a dataset before dividing, and a
per-image function returning per-class ``float64`` arrays (NaN for undefined classes).
:class:`SegmentationQualityAccumulator` does the summing. Definitions and choices:
docs/method.md, "Evaluation metrics: boundary, trimap, connectivity".

Not to be confused with :mod:`bcd.mm.metrics` (the mmseg/mmengine IoU metric glue).
"""
from .accumulator import SegmentationQualityAccumulator
from .boundary import boundary_iou, boundary_iou_counts, boundary_width, label_boundary_band
from .connectivity import connectivity_counts, connectivity_from_counts, region_connectivity
from .trimap import trimap_band, trimap_iou, trimap_iou_counts

__all__ = [
    "SegmentationQualityAccumulator",
    "boundary_iou",
    "boundary_iou_counts",
    "boundary_width",
    "connectivity_counts",
    "connectivity_from_counts",
    "label_boundary_band",
    "region_connectivity",
    "trimap_band",
    "trimap_iou",
    "trimap_iou_counts",
]
