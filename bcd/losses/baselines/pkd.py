"""PKD: distillation of the Pearson correlation of FPN features (Cao et al., "PKD: General
Distillation Framework for Object Detectors via Pearson Correlation Coefficient", NeurIPS 2022;
Table V "PKD").

The loss is mmrazor's own ``PKDLoss`` (registered by mmrazor, not by bcd): each FPN level of
student and teacher is normalised to zero mean and unit variance per channel, and the loss is
their mean squared error (``loss_weight / 2`` times it, summed over the levels). This module only
declares how bcd wires it (docs/baselines.md).
"""
from __future__ import annotations

from ...methods import Method, WEIGHT

#: bcd.methods: params `type: PKDLoss`, on a detector's FPN outputs (all levels, equal widths)
METHOD = Method(
    type="PKDLoss",
    inputs=dict(preds_S="student.neck", preds_T="teacher.neck"),
    settings=dict(resize_stu={"type": "boolean"}),
    external="mmrazor",
)
