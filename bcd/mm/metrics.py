"""mmseg's IoU metric, also returning per-class IoU (``IoU.<class>``) for the metrics files."""
from __future__ import annotations

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


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
