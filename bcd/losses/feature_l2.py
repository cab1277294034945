"""Feature L2 ("hint") distillation: FitNets (Romero et al., ICLR 2015, Eq. 3).

The worked example of README "Adding a distillation method": one class and its ``METHOD``
declaration; bcd.methods, the params schema, mmrazor's registry and the distiller's wiring
all follow from the declaration.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_maps
from ..methods import Method
from .precision import float32_math

#: bcd.methods: params `type: FeatureL2Loss`, on the decoder's last features (the classifier's
#: input); the regressor's widths come from the models
METHOD = Method(
    type="FeatureL2Loss",
    inputs=dict(preds_S="student.head", preds_T="teacher.head"),
    settings=dict(normalize={"type": "boolean"}),
    channels=dict(student_channels="preds_S", teacher_channels="preds_T"),
)


class FeatureL2Loss(nn.Module):
    """Squared distance between the teacher's features and the regressed student's.

    FitNets' hint loss (Eq. 3 there: ``1/2 ||u_h - r(v_g)||^2``), with ``r`` a learnable 1x1
    conv ``C_S -> C_T`` and the mean over elements instead of the halved sum::

        L = loss_weight * mean_{n,c,h,w} (T - r(S))^2        (T detached)

    ``S`` is resized (bilinear, ``align_corners=False``) to ``T``'s size first. With
    ``normalize`` both maps are L2-normalised over channels before the distance.

    Args:
        student_channels: ``C_S``, filled from the student by the distiller config.
        teacher_channels: ``C_T``, filled from the teacher.
        normalize: L2-normalise each pixel's feature vector first. Default ``False``.
        loss_weight: factor of the returned loss. Default ``1.0``.

    Shapes:
        preds_S: ``(N, C_S, H_S, W_S)``; preds_T: ``(N, C_T, H, W)``. Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, normalize: bool = False,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        for name, value in (("student_channels", student_channels),
                            ("teacher_channels", teacher_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FeatureL2Loss: {name} must be an int >= 1, got {value!r}")
        self.regressor = nn.Conv2d(student_channels, teacher_channels, 1)
        self.normalize = bool(normalize)
        self.loss_weight = float(loss_weight)

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted mean squared distance; see the class doc."""
        check_maps("FeatureL2Loss", preds_S, preds_T)
        if preds_S.shape[1] != self.regressor.in_channels:
            raise ValueError(f"FeatureL2Loss: preds_S has {preds_S.shape[1]} channels, the "
                             f"regressor expects {self.regressor.in_channels}")
        if preds_T.shape[1] != self.regressor.out_channels:
            raise ValueError(f"FeatureL2Loss: preds_T has {preds_T.shape[1]} channels, the "
                             f"regressor gives {self.regressor.out_channels}")
        s = self.regressor(preds_S)
        if s.shape[-2:] != preds_T.shape[-2:]:
            s = F.interpolate(s, size=preds_T.shape[-2:], mode="bilinear", align_corners=False)
        t = preds_T.detach()
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return self.loss_weight * (t - s).pow(2).mean()
