"""Evaluation metrics for mmengine: mmseg's IoU with per-class values, and boundary/trimap/
connectivity quality (:mod:`bcd.metrics`)."""
from __future__ import annotations

import numpy as np
from mmengine.evaluator import BaseMetric
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

from bcd.metrics import SegmentationQualityAccumulator

_MEAN_KEYS = {"boundary_iou": "mBoundaryIoU", "fragmentation": "mFragmentation",
              "missed": "mMissed", "pieces_per_region": "mPiecesPerRegion",
              "component_ratio": "mComponentRatio"}  # trimap_iou@w -> mTrimapIoU@w


@METRICS.register_module(force=True)
class PerClassIoUMetric(IoUMetric):
    """:class:`mmseg.evaluation.IoUMetric` plus per-class IoU in percent (NaN for absent classes)."""

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        inter = sum(r[0] for r in results).numpy().astype(np.float64)
        union = sum(r[1] for r in results).numpy().astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union * 100.0, np.nan)
        for name, value in zip(self.dataset_meta["classes"], iou):
            metrics[f"IoU.{name}"] = float(np.round(value, 2))
        return metrics


@METRICS.register_module(force=True)
class SegQualityMetric(BaseMetric):
    """Boundary IoU, trimap IoU and region connectivity of the predictions (:mod:`bcd.metrics`).

    The mmengine face of :class:`bcd.metrics.SegmentationQualityAccumulator`: counts are summed
    over the dataset (and over ranks) before dividing. IoU-type values are reported in percent
    like mmseg's mIoU; ``mFragmentation`` and ``mMissed`` in percent of ground-truth regions;
    ``mPiecesPerRegion`` and ``mComponentRatio`` as ratios (ideal 1). Per-class values go under
    ``<key>.<class>``.

    Args:
        dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
        trimap_widths: trimap band half-widths in pixels.
        ignore_index: ignored ground-truth label.
    """

    default_prefix = "quality"

    def __init__(self, dilation_ratio: float = 0.02, trimap_widths=(1, 3, 5),
                 ignore_index: int = 255, collect_device: str = "cpu",
                 prefix: str | None = None, **kwargs) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.settings = dict(dilation_ratio=dilation_ratio, trimap_widths=tuple(trimap_widths),
                             ignore_index=ignore_index, **kwargs)

    def process(self, data_batch, data_samples) -> None:
        acc = SegmentationQualityAccumulator(len(self.dataset_meta["classes"]), **self.settings)
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze(0).cpu().numpy()
            gt = sample["gt_sem_seg"]["data"].squeeze(0).cpu().numpy()
            acc.update(pred, gt)
        self.results.append(acc)

    def compute_metrics(self, results: list) -> dict:
        total = SegmentationQualityAccumulator(len(self.dataset_meta["classes"]), **self.settings)
        for acc in results:
            total.merge(acc)
        raw = total.compute()
        percent = {"boundary_iou", "fragmentation", "missed"} | {
            f"trimap_iou@{w}" for w in total.trimap_widths}
        out = {}
        for key, value in raw.items():
            if not isinstance(value, list):
                continue
            scale = 100.0 if key in percent else 1.0
            mean_key = _MEAN_KEYS.get(key) or key.replace("trimap_iou", "mTrimapIoU")
            out[mean_key] = float(np.round(raw[mean_key] * scale, 4))
            for name, v in zip(self.dataset_meta["classes"], value):
                out[f"{key}.{name}"] = float(np.round(v * scale, 4))
        return out
