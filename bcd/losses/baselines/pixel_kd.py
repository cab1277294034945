"""Pixel-wise knowledge distillation on segmentation logits (Hinton et al., 2015; Table III "KD")."""
from __future__ import annotations

from torch import Tensor, nn

from .._kl import tempered_kl
from ._common import align_pair, check_maps, check_positive
from ..precision import float32_math
from ...methods import Method, POSITIVE

#: bcd.methods: params `type: PixelKDLoss`, on the two models' segmentation logits
METHOD = Method(
    type="PixelKDLoss",
    inputs=dict(preds_S="student.logits", preds_T="teacher.logits"),
    settings=dict(tau=POSITIVE),
)


class PixelKDLoss(nn.Module):
    """Hinton KD applied independently at every pixel of the segmentation logits.

    With ``z`` the logits and ``p(z) = softmax(z / tau)`` over the ``K`` classes::

        L_KD = loss_weight * mean_{n, h, w} tau^2 KL(p(z^T_{n,:,h,w}) || p(z^S_{n,:,h,w}))

    The teacher side is detached. If the student's logits have another spatial size they are
    resized (bilinear, ``align_corners=False``) to the teacher's. ``loss_weight`` may be changed
    between calls. Also the pixel-wise term of SKD (Liu et al. 2019), which writes it as the
    cross-entropy (KL plus the teacher entropy, a constant for the student).

    Args:
        tau: temperature, ``> 0``. Default ``1.0``.
        loss_weight: factor of the returned loss. Default ``1.0``.

    Shapes:
        preds_S: student logits ``(N, K, H_S, W_S)``; preds_T: teacher logits ``(N, K, H, W)``.
        Output: scalar in the promoted dtype of the inputs.
    """

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.tau = check_positive("PixelKDLoss", "tau", tau)
        self.loss_weight = float(loss_weight)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}"

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted mean per-pixel KL; see the class doc."""
        check_maps("PixelKDLoss", preds_S, preds_T, same_channels=True)
        s, t = align_pair(preds_S, preds_T)
        return self.loss_weight * tempered_kl(t, s, self.tau, dim=1).mean()
