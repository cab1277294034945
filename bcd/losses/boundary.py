"""Boundary distillation (Sec. IV-B, Eq. 2-3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedule import AdaptiveTemperature, build_temperature
from ._kl import tempered_kl
from ._checks import check_maps
from .pairs import line_max, pair_lines, partner_mask, shifted


def check_feature_pair(name: str, preds_S: Tensor, preds_T: Tensor, in_channels: int) -> None:
    """Raise ``ValueError`` unless both are float ``(N, C, H, W)``, equal shapes, ``C == in_channels``.

    Args:
        name: the caller's name, used in the messages.
        preds_S: student features ``(N, C, H, W)``.
        preds_T: teacher features ``(N, C, H, W)``.
        in_channels: the expected ``C``.
    """
    check_maps(name, preds_S, preds_T)
    if preds_S.shape != preds_T.shape:
        raise ValueError(
            f"{name}: preds_S {tuple(preds_S.shape)} and preds_T {tuple(preds_T.shape)} must have "
            "the same (N, C, H, W) shape"
        )
    if preds_S.shape[1] != in_channels:
        raise ValueError(
            f"{name}: expected C = in_channels = {in_channels} channels, got preds_S "
            f"{tuple(preds_S.shape)} and preds_T {tuple(preds_T.shape)}"
        )


def boundary_logits(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """Boundary logits ``z = Conv_1x1(x)`` (Eq. 2); the boundary map is ``B = sigmoid(z)``.

    The conv's weights are cast to ``x``'s dtype, so the result follows the input's dtype.

    Args:
        x: fused features ``(N, C, H, W)``.
        conv: a ``C -> 1`` 1x1 convolution.

    Returns:
        ``(N, H, W)`` logits.
    """
    weight = conv.weight.to(x.dtype)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    return F.conv2d(x, weight, bias)[:, 0]


def affinity_from_boundary(z: Tensor, radius: int) -> Tensor:
    """Pair affinities ``a_ij = 1 - max_{p in Pi_ij} sigmoid(z_p)`` (Eq. 2, IRNet's conversion).

    Computed as ``sigmoid(-max_{p in Pi_ij} z_p)``, which is the same number because the sigmoid
    is increasing and ``1 - sigmoid(u) = sigmoid(-u)``.

    Args:
        z: boundary logits ``(N, H, W)``.
        radius: pair radius (see :mod:`bcd.losses.pairs`), integer ``>= 1``.

    Returns:
        ``(N, P, H, W)`` affinities in ``(0, 1)``; entries whose partner lies outside the map are
        meaningless (mask with :func:`bcd.losses.pairs.partner_mask`).
    """
    return torch.sigmoid(-line_max(z, radius))


def label_affinity_probe(
    z_max: Tensor, labels: Tensor, radius: int, valid: Tensor, ignore_index: int = 255
) -> Tensor:
    """Class-balanced BCE of the pair affinities against same-class targets (IRNet-style probe).

    Target ``y_ij = 1`` if pixels ``i`` and ``j`` carry the same label, else 0; pairs with an
    ignored pixel or an out-of-map partner are excluded. The loss is the average of
    ``mean_{y=1} -log a_ij`` and ``mean_{y=0} -log(1 - a_ij)`` (over the non-empty groups), with
    ``a_ij = sigmoid(-z_max)`` evaluated through ``logsigmoid`` for stability.

    Args:
        z_max: ``(N, P, H, W)`` line maxima of the boundary logits (:func:`line_max`).
        labels: ``(N, H, W)`` integer labels at the feature resolution.
        radius: pair radius used for ``z_max``.
        valid: ``(P, H, W)`` bool, partner inside the map (:func:`partner_mask`).
        ignore_index: label value excluded from all pairs. Default ``255``.

    Returns:
        Scalar tensor (0, still attached to ``z_max``, if no pair is usable).
    """
    offsets = pair_lines(radius).offsets
    partner = shifted(labels, offsets, pad_value=ignore_index)  # (N, P, H, W)
    own = labels.unsqueeze(1)
    usable = valid.unsqueeze(0) & (own != ignore_index) & (partner != ignore_index)
    positive = usable & (own == partner)
    negative = usable & (own != partner)
    terms = []
    if positive.any():
        terms.append(-F.logsigmoid(-z_max[positive]).mean())  # -log a
    if negative.any():
        terms.append(-F.logsigmoid(z_max[negative]).mean())  # -log (1 - a)
    if not terms:
        return z_max.sum() * 0.0
    return torch.stack(terms).mean()


class BoundaryDistillLoss(nn.Module):
    """Boundary distillation loss ``L_BD`` (Eq. 3) on affinities from boundary maps (Eq. 2).

    For fused features ``S^c`` and ``T^c`` (``preds_S``, ``preds_T``), a 1x1 conv per side gives a
    boundary map ``B = sigmoid(Conv_1x1(x))`` (the sigmoid relaxes the paper's 0/1 output, which
    has no gradient). For each pixel ``i`` and partner ``j`` within ``radius`` the affinity is
    ``a_ij = 1 - max_{p in Pi_ij} B_p`` (Eq. 2). Eq. 3 distils, for every pixel, the softmax over
    its partners of ``a_ij / tau``::

        L_KD = loss_weight * mean_{n, i} tau^2 KL(rho(a^T_i / tau) || rho(a^S_i / tau))

    (mean over the ``N H W`` pixels instead of the paper's sum). The teacher
    side of this term is detached. The KD term alone is minimised by constant boundary maps, so
    when ``gt_seg`` is given the teacher's ``teacher_conv`` (and ``preds_T`` if it requires
    grad) is also trained by :func:`label_affinity_probe`, added with weight
    ``teacher_probe_weight`` (not ``loss_weight``). The student learns its boundaries from the
    teacher only. ``loss_weight`` may be changed between calls (e.g. multiplied by r(t), Eq. 8).

    Args:
        in_channels: channels ``C`` of the fused features. Default ``256``.
        radius: pair radius in feature pixels (4 at 1/8 resolution = 32 input pixels). Default ``4``.
        loss_weight: alpha of Eq. 6, multiplies the KD term. Default ``10.0``.
        temperature: ``None`` (fixed tau = 1), a dict of :class:`AdaptiveTemperature` arguments,
            or an instance (used as is). Default ``None``.
        teacher_probe_weight: weight of the teacher-side label-affinity probe; 0 disables it.
            Default ``1.0``.
        ignore_index: label value ignored by the probe. Default ``255``.

    Shapes:
        preds_S, preds_T: ``(N, C, H, W)``; gt_seg: ``(N, H0, W0)`` or ``(N, 1, H0, W0)`` integer
        labels (resized to ``(H, W)`` by nearest-neighbour). Output: scalar.

    Attributes after ``forward``: ``last_kd`` (weighted KD term) and ``last_probe`` (weighted
    probe term), detached; their sum is the returned loss.
    """

    def __init__(
        self,
        in_channels: int = 256,
        radius: int = 4,
        loss_weight: float = 10.0,
        temperature: dict | AdaptiveTemperature | None = None,
        teacher_probe_weight: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"BoundaryDistillLoss: in_channels must be an int >= 1, got {in_channels!r}")
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
            raise ValueError(f"BoundaryDistillLoss: radius must be an int >= 1, got {radius!r}")
        if not float(teacher_probe_weight) >= 0.0:
            raise ValueError(
                f"BoundaryDistillLoss: teacher_probe_weight must be >= 0, got {teacher_probe_weight}"
            )
        self.in_channels = in_channels
        self.radius = radius
        self.loss_weight = float(loss_weight)
        self.teacher_probe_weight = float(teacher_probe_weight)
        self.ignore_index = int(ignore_index)
        self.student_conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.teacher_conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.temperature = build_temperature(temperature)
        self.last_kd: Tensor | None = None
        self.last_probe: Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"radius={self.radius}, loss_weight={self.loss_weight}, "
            f"teacher_probe_weight={self.teacher_probe_weight}, ignore_index={self.ignore_index}"
        )

    def _labels_at(self, gt_seg: Tensor, n: int, size: tuple[int, int]) -> Tensor:
        if gt_seg.dim() == 4 and gt_seg.shape[1] == 1:
            gt_seg = gt_seg[:, 0]
        if gt_seg.dim() != 3 or gt_seg.shape[0] != n:
            raise ValueError(
                f"BoundaryDistillLoss: gt_seg must be (N, H0, W0) or (N, 1, H0, W0) with N = {n}, "
                f"got {tuple(gt_seg.shape)}"
            )
        if gt_seg.is_floating_point() or gt_seg.is_complex():
            raise ValueError(f"BoundaryDistillLoss: gt_seg must hold integer labels, got {gt_seg.dtype}")
        if tuple(gt_seg.shape[-2:]) == size:
            return gt_seg.long()
        resized = F.interpolate(gt_seg[:, None].double(), size=size, mode="nearest-exact")
        return resized[:, 0].long()

    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_seg: Tensor | None = None) -> Tensor:
        """Weighted KD term plus (with ``gt_seg``) the weighted teacher probe; see the class doc."""
        check_feature_pair("BoundaryDistillLoss", preds_S, preds_T, self.in_channels)
        n, _, h, w = preds_S.shape
        dtype = torch.promote_types(preds_S.dtype, preds_T.dtype)
        preds_S, preds_T = preds_S.to(dtype), preds_T.to(dtype)

        z_max_S = line_max(boundary_logits(preds_S, self.student_conv), self.radius)
        z_max_T = line_max(boundary_logits(preds_T, self.teacher_conv), self.radius)
        a_S = torch.sigmoid(-z_max_S)  # (N, P, H, W)
        a_T = torch.sigmoid(-z_max_T)
        valid = partner_mask(pair_lines(self.radius).offsets, h, w, device=preds_S.device)

        if self.training:
            self.temperature.update(a_T.detach(), dim=1, mask=valid.unsqueeze(0))
        kl = tempered_kl(a_T, a_S, self.temperature.tau, dim=1, mask=valid.unsqueeze(0))  # (N, H, W)
        # Every pixel of a map with >= 2 pixels has an in-map partner; a 1x1 map has none and KL 0.
        loss = self.loss_weight * kl.mean()
        self.last_kd = loss.detach()

        probe = loss.new_zeros(())
        if gt_seg is not None and self.teacher_probe_weight > 0.0:
            labels = self._labels_at(gt_seg.to(preds_S.device), n, (h, w))
            probe = self.teacher_probe_weight * label_affinity_probe(
                z_max_T, labels, self.radius, valid, self.ignore_index
            )
            loss = loss + probe
        self.last_probe = probe.detach()
        return loss
