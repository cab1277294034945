"""IFVD: intra-class feature variation distillation (Wang et al., ECCV 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import align_pair, check_maps, labels_at
from ..precision import float32_math
from ...methods import Method, INTEGER

#: bcd.methods: params `type: IFVDLoss`, on the decoder's last features and the labels
METHOD = Method(
    type="IFVDLoss",
    inputs=dict(preds_S="student.head", preds_T="teacher.head", gt_labels="labels"),
    settings=dict(ignore_index=INTEGER),
)


def intra_class_similarity(feat: Tensor, labels: Tensor, valid: Tensor, eps: float = 1e-6) -> Tensor:
    """IFV values ``M_i = cos(f_i, c_{y_i})`` of the labelled pixels.

    ``c_k`` (the prototype of class ``k`` in image ``n``) is the mean feature of the pixels of
    image ``n`` labelled ``k``; it is computed with one ``index_add`` (no loop over classes).

    Args:
        feat: ``(N, C, H, W)`` features.
        labels: ``(N, H, W)`` long labels at the feature resolution.
        valid: ``(N, H, W)`` bool, the labelled pixels (at least one).
        eps: lower bound of the norms in the cosine. Default ``1e-6``.

    Returns:
        ``(P,)`` IFV values of the ``P = valid.sum()`` labelled pixels, in ``valid``'s order.
    """
    n, c = feat.shape[:2]
    k = int(labels[valid].max()) + 1
    slot = (labels + k * torch.arange(n, device=labels.device).view(n, 1, 1))[valid]  # (P,)
    x = feat.permute(0, 2, 3, 1)[valid]  # (P, C)
    sums = x.new_zeros(n * k, c).index_add(0, slot, x)
    counts = x.new_zeros(n * k).index_add(0, slot, x.new_ones(slot.shape[0]))
    prototypes = sums / counts.clamp_min(1.0).unsqueeze(1)
    return F.cosine_similarity(x, prototypes[slot], dim=1, eps=eps)


class IFVDLoss(nn.Module):
    """IFVD loss on features, with the ground-truth labels defining the classes.

    Labels are resized (nearest) to the teacher features' size; for each side the IFV map
    ``M_i = cos(f_i, c_{y_i})`` (:func:`intra_class_similarity`, class prototypes per image)
    is compared over the ``P`` labelled pixels::

        L_IFV = loss_weight * 1 / P sum_{i labelled} (M^S_i - M^T_i)^2

    The teacher side is detached; student features of another size are resized (bilinear) to
    the teacher's; channel counts may differ. Pixels labelled ``ignore_index`` (or negative) are
    left out of the prototypes and of the mean (the reference code keeps them in the mean with a
    zero difference). No labelled pixel: 0, still attached to ``preds_S``.

    Args:
        loss_weight: factor of the returned loss (IFVD used 200). Default ``1.0``.
        ignore_index: label value to ignore. Default ``255``.

    Shapes:
        preds_S: student features ``(N, C_S, H_S, W_S)``; preds_T: teacher features
        ``(N, C_T, H, W)``; gt_labels: ``(N, H0, W0)`` or ``(N, 1, H0, W0)`` integer labels.
        Output: scalar.
    """

    def __init__(self, loss_weight: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, ignore_index={self.ignore_index}"

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_labels: Tensor) -> Tensor:
        """Weighted MSE of the IFV maps over the labelled pixels; see the class doc."""
        check_maps("IFVDLoss", preds_S, preds_T)
        s, t = align_pair(preds_S, preds_T)
        labels = labels_at("IFVDLoss", gt_labels, t.shape[0], t.shape[-2:], t.device)
        valid = (labels != self.ignore_index) & (labels >= 0)
        if not bool(valid.any()):
            return s.sum() * 0.0
        diff = intra_class_similarity(s, labels, valid) - intra_class_similarity(t, labels, valid)
        return self.loss_weight * diff.square().mean()
