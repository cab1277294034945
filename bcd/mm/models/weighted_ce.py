"""``WeightedCrossEntropyLoss``: mmseg's cross-entropy with per-class weights that works with the
ignore label.

mmseg 1.2.2's ``CrossEntropyLoss(class_weight=...)`` indexes the weights with the label map to
build its average factor, so a void pixel (255) raises ``IndexError``. This loss computes
PyTorch's weighted mean instead, ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` over the non-ignored
pixels (the same normalisation mmseg intends), so the loss keeps the scale of the unweighted CE
and the distillation terms' weights keep their meaning.
"""
from __future__ import annotations

import torch.nn.functional as F
from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS


@MODELS.register_module()
class WeightedCrossEntropyLoss(CrossEntropyLoss):
    """Softmax cross-entropy with ``class_weight`` (one per class) and an ignore label."""

    def __init__(self, class_weight, loss_weight: float = 1.0, loss_name: str = "loss_ce"):
        super().__init__(use_sigmoid=False, class_weight=list(map(float, class_weight)),
                         loss_weight=loss_weight, loss_name=loss_name)

    def forward(self, cls_score, label, weight=None, avg_factor=None, reduction_override=None,
                ignore_index=255, **kwargs):
        if weight is not None or avg_factor is not None or reduction_override not in (None,
                                                                                      "mean"):
            raise ValueError("WeightedCrossEntropyLoss: only the per-class weights and a mean "
                             "over the non-ignored pixels are supported")
        w = cls_score.new_tensor(self.class_weight)
        if (label != ignore_index).sum() == 0:  # an all-void crop: no signal, no NaN
            return cls_score.sum() * 0.0
        return self.loss_weight * F.cross_entropy(cls_score, label, weight=w,
                                                  ignore_index=ignore_index)
