"""Context distillation (Sec. IV-C, Eq. 4-5).

The relation-KL math (materialised and memory-bounded, blockwise) is in
:mod:`bcd.losses.relation`; this module holds the loss module and re-exports the functions.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..schedule import AdaptiveTemperature, build_temperature
from ._checks import check_maps
from .boundary import check_feature_pair
from .relation import (
    DEFAULT_BLOCK_SIZE,
    relation_kl_blockwise,
    relation_kl_naive,
    relation_kl_sum,
    relation_logits,
    teacher_relation_extremes,
)
from .precision import float32_math
from ..methods import Method, at_least, choice, temperature

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "ContextDistillLoss",
    "relation_kl",
    "relation_kl_blockwise",
    "relation_kl_naive",
    "relation_kl_sum",
    "relation_logits",
    "standardize_channels",
    "teacher_relation_extremes",
]

_ALIGN = ("conv1x1", "none")
_NORMALIZE = ("channel", "none")
_REDUCTION = ("row", "entry")
_TEACHER_FEATURES = ("fused", "head", "logits")

#: bcd.methods: params `type: ContextDistillLoss`, on the fused features (Sec. IV-A); the teacher
#: side by `teacher_features` (docs/method.md, Eq. 4-5)
METHOD = Method(
    type="ContextDistillLoss",
    inputs=dict(preds_S="student.fused", preds_T="teacher.fused"),
    settings=dict(
        align=choice(*_ALIGN), normalize=choice(*_NORMALIZE), reduction=choice(*_REDUCTION),
        teacher_features=choice(*_TEACHER_FEATURES, default="fused", description=(
            "CD's teacher side (docs/method.md, Eq. 4-5): the teacher-side fusion, the "
            "decoder's last features, or the logits")),
        block_size=dict(at_least(0), description="rows per block of the exact memory-bounded "
                        "computation; 0 = materialise hw x hw"),
        temperature=temperature("prob_range", "logit_range")),
    inputs_by=dict(teacher_features=dict(head=dict(preds_T="teacher.head"),
                                         logits=dict(preds_T="teacher.logits"))),
    channels=dict(in_channels="preds_S", teacher_channels="preds_T"),
    scheduled=True,
)


def standardize_channels(feat: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance over the channels of every pixel (LayerNorm without affine).

    Part of ``O(.)`` (Eq. 4): it aligns the two feature distributions and gives the entries the
    unit variance that the ``1/sqrt(d)`` scaling of Eq. 4 assumes, so the relation logits are
    O(1)..O(sqrt(d)) for any backbone width (raw fused features gave logits in the thousands).

    Args:
        feat: ``(N, C, H, W)``.
        eps: added to the variance. Default ``1e-5``.
    """
    return nn.functional.layer_norm(feat.movedim(1, -1), feat.shape[1:2], eps=eps).movedim(-1, 1)


def _check_block_size(name: str, block_size) -> int:
    """``None``/0 -> 0 (materialised); an int ``>= 1`` -> rows per block."""
    if block_size is None:
        return 0
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 0:
        raise ValueError(f"{name}: block_size must be None, 0 or an int >= 1, got {block_size!r}")
    return block_size


def relation_kl(t_feat: Tensor, s_feat: Tensor, tau: float,
                block_size: int | None = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Per-row ``tau^2 KL(softmax(T^R_i / tau) || softmax(S^R_i / tau))`` (Eq. 4-5), exact.

    The teacher side is detached.

    Args:
        t_feat: teacher features ``O(T^c)``, ``(N, C, H, W)``.
        s_feat: student features ``O(S^c)``, ``(N, C, H, W)``.
        tau: temperature, ``> 0``.
        block_size: rows per block of :func:`relation_kl_blockwise` (memory ``O(N B HW)``);
            ``None`` or ``0`` materialises the full ``HW x HW`` matrices
            (:func:`relation_kl_naive`). Default :data:`DEFAULT_BLOCK_SIZE`.

    Returns:
        ``(N, HW)`` KL value of every row ``i`` of the relation matrices.
    """
    block_size = _check_block_size("relation_kl", block_size)
    if block_size == 0:
        return relation_kl_naive(t_feat, s_feat, tau)
    return relation_kl_blockwise(t_feat, s_feat, tau, block_size)


class ContextDistillLoss(nn.Module):
    """Context distillation loss ``L_CD`` on pixel self-relations (Eq. 4-5).

    ``R = softmax(O(X)^T O(X) / sqrt(d) / tau)`` over the last dim, with ``X`` the fused features
    flattened to ``(N, C, HW)`` and ``d = C`` (Eq. 4, reading the paper's ``sigma(.)/tau`` as the
    tempered softmax ``sigma(z / tau)``). Eq. 5 as a KL divergence per row, its sum over the
    ``hw x hw`` items averaged over them (``reduction='entry'``)::

        L_CD = loss_weight * mean_{n, i} tau^2 KL(R^T_i || R^S_i) / hw

    (``reduction='row'`` drops the ``/ hw``). ``O(.)`` (Eq. 4's
    feature alignment) is a learnable 1x1 conv ``C -> C`` on the student side, initialised to
    the identity, and the identity on the teacher side (``align='conv1x1'``), or the identity on
    both sides (``align='none'``); then, with ``normalize='channel'`` (default), each pixel's
    feature vector is standardised over the channels on both sides
    (:func:`standardize_channels`). The teacher side is detached. ``loss_weight`` may be changed
    between calls (e.g. multiplied by r(t), Eq. 8).

    Computation: with ``block_size >= 1`` (default) the loss is evaluated exactly but one block
    of ``block_size`` rows of the relation matrices at a time (:func:`relation_kl_sum`, memory
    ``O(N block_size HW)`` instead of ``O(N HW^2)``, gradient accumulated in the same pass; the
    adaptive temperature's statistic comes from that pass too). If that statistic raises tau,
    the pass is repeated at the new tau, so the result is exactly that of the materialised
    computation (``block_size=None`` or ``0``), which updates tau before computing the loss.

    Teacher features (``teacher_features``): ``'fused'`` (default) is ``T^c``, the teacher-side
    hierarchical fusion, of the student's shape; ``'head'`` (the teacher decoder's last feature
    map, the classifier's input) and ``'logits'`` (the teacher's class logits) have their own
    channels ``teacher_channels`` and are resized bilinearly (``align_corners=False``) to the
    student's ``H x W`` when their size differs. The relation matrices are ``hw x hw`` on both
    sides, and ``d`` of Eq. 4 is each side's own channel count.

    Args:
        in_channels: channels ``C`` of the fused features. Default ``256``.
        loss_weight: beta of Eq. 6. Default ``50.0``.
        temperature: ``None`` (fixed tau = 1), a dict of :class:`AdaptiveTemperature` arguments,
            or an instance (used as is). Default ``None``.
        align: ``'conv1x1'`` or ``'none'``. Default ``'conv1x1'``.
        normalize: ``'channel'`` or ``'none'`` (raw features, the literal Eq. 4).
            Default ``'channel'``.
        reduction: how Eq. 5's sum over the ``hw x hw`` items is normalised: ``'row'`` = mean
            over the ``N hw`` row distributions of their KL (like mmrazor's CWD, which divides
            by the number of distributions); ``'entry'`` = mean over all ``N hw hw`` entries
            (``F.kl_div(..., reduction='mean')``), i.e. ``'row'`` divided by ``hw``.
            Under ``'row'`` the per-pixel gradient relative to a pixel-mean loss (the CE) does
            not depend on the map size, so beta means the same at 8x8 and 64x64; under
            ``'entry'`` it falls as ``1 / hw``. Default ``'entry'`` (docs/method.md).
        block_size: rows of the relation matrices per block; ``None`` or ``0`` materialises the
            ``HW x HW`` matrices (the reference). Default :data:`DEFAULT_BLOCK_SIZE` (256).
        teacher_features: what ``preds_T`` is: ``'fused'``, ``'head'`` or ``'logits'`` (see
            above; the distiller config maps the matching tap). Default ``'fused'``.
        teacher_channels: channels of ``preds_T``; ``None`` means ``in_channels`` (required to
            be ``in_channels`` for ``'fused'``). Default ``None``.

    Shapes:
        preds_S: ``(N, C, H, W)``; preds_T: ``(N, C, H, W)`` for ``'fused'``, else
        ``(N, teacher_channels, H_T, W_T)``. Output: scalar.
    """

    def __init__(
        self,
        in_channels: int = 256,
        loss_weight: float = 50.0,
        temperature: dict | AdaptiveTemperature | None = None,
        align: str = "conv1x1",
        normalize: str = "channel",
        reduction: str = "entry",
        block_size: int | None = DEFAULT_BLOCK_SIZE,
        teacher_features: str = "fused",
        teacher_channels: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"ContextDistillLoss: in_channels must be an int >= 1, got {in_channels!r}")
        if teacher_features not in _TEACHER_FEATURES:
            raise ValueError(f"ContextDistillLoss: teacher_features must be one of "
                             f"{_TEACHER_FEATURES}, got {teacher_features!r}")
        if teacher_channels is None:
            teacher_channels = in_channels
        if (isinstance(teacher_channels, bool) or not isinstance(teacher_channels, int)
                or teacher_channels < 1):
            raise ValueError("ContextDistillLoss: teacher_channels must be None or an int >= 1, "
                             f"got {teacher_channels!r}")
        if teacher_features == "fused" and teacher_channels != in_channels:
            raise ValueError("ContextDistillLoss: teacher_features='fused' reads the shared "
                             f"connector, so teacher_channels ({teacher_channels}) must equal "
                             f"in_channels ({in_channels})")
        self.teacher_features = teacher_features
        self.teacher_channels = teacher_channels
        if align not in _ALIGN:
            raise ValueError(f"ContextDistillLoss: align must be one of {_ALIGN}, got {align!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(
                f"ContextDistillLoss: normalize must be one of {_NORMALIZE}, got {normalize!r}")
        self.normalize = normalize
        if reduction not in _REDUCTION:
            raise ValueError(
                f"ContextDistillLoss: reduction must be one of {_REDUCTION}, got {reduction!r}")
        self.reduction = reduction
        self.block_size = _check_block_size("ContextDistillLoss", block_size)
        self.in_channels = in_channels
        self.loss_weight = float(loss_weight)
        self.align = align
        self.temperature = build_temperature(temperature)
        if align == "conv1x1":
            self.student_align = nn.Conv2d(in_channels, in_channels, kernel_size=1)
            with torch.no_grad():
                self.student_align.weight.copy_(torch.eye(in_channels).view(in_channels, in_channels, 1, 1))
                self.student_align.bias.zero_()
        else:
            self.student_align = None

    def extra_repr(self) -> str:
        return (f"loss_weight={self.loss_weight}, align={self.align!r}, "
                f"normalize={self.normalize!r}, reduction={self.reduction!r}, "
                f"block_size={self.block_size}, teacher_features={self.teacher_features!r}")

    def _teacher_map(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Check the pair; the teacher map at the student's ``H x W`` (detached)."""
        name = "ContextDistillLoss"
        if self.teacher_features == "fused":
            check_feature_pair(name, preds_S, preds_T, self.in_channels)
            return preds_T.detach()
        check_maps(name, preds_S, preds_T)
        if preds_S.shape[1] != self.in_channels or preds_T.shape[1] != self.teacher_channels:
            raise ValueError(
                f"{name}: expected preds_S with in_channels = {self.in_channels} and preds_T "
                f"({self.teacher_features!r}) with teacher_channels = {self.teacher_channels} "
                f"channels, got {tuple(preds_S.shape)} and {tuple(preds_T.shape)}")
        t = preds_T.detach()
        if t.shape[-2:] != preds_S.shape[-2:]:
            t = nn.functional.interpolate(t, size=preds_S.shape[-2:], mode="bilinear",
                                          align_corners=False)
        return t

    def aligned_student(self, preds_S: Tensor) -> Tensor:
        """``O(S^c)``: the student alignment (weights cast to the input's dtype)."""
        if self.student_align is None:
            return preds_S
        conv = self.student_align
        return nn.functional.conv2d(preds_S, conv.weight.to(preds_S.dtype), conv.bias.to(preds_S.dtype))

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted mean row KL of the self-relations; see the class doc."""
        t_feat = self._teacher_map(preds_S, preds_T)
        dtype = torch.promote_types(preds_S.dtype, preds_T.dtype)
        s_feat = self.aligned_student(preds_S.to(dtype))
        t_feat = t_feat.to(dtype)
        if self.normalize == "channel":
            s_feat, t_feat = standardize_channels(s_feat), standardize_channels(t_feat)
        adaptive = self.training and self.temperature.factor != 1.0
        if self.block_size == 0:  # materialised reference
            if adaptive:
                self.temperature.update(relation_logits(t_feat), dim=-1)
            per_row = relation_kl_naive(t_feat, s_feat, self.temperature.tau)  # (N, HW)
            if self.reduction == "entry":
                per_row = per_row / per_row.shape[-1]
            return self.loss_weight * per_row.mean()
        tau = self.temperature.tau
        if adaptive:
            row_sums, extremes = relation_kl_sum(t_feat, s_feat, tau, self.block_size,
                                                 return_extremes=True)
            if self.temperature.statistic == "prob_range":
                lo, hi = extremes[3], extremes[2]
            else:  # 'logit_range'
                lo, hi = extremes[1], extremes[0]
            if self.temperature.update_from_extremes(lo, hi) != tau:
                # tau was raised: the statistic is taken before the loss (as in the materialised
                # path), so redo the pass at the new temperature.
                row_sums = relation_kl_sum(t_feat, s_feat, self.temperature.tau, self.block_size)
        else:
            row_sums = relation_kl_sum(t_feat, s_feat, tau, self.block_size)  # (N,)
        hw = s_feat.shape[-2] * s_feat.shape[-1]
        per_row = row_sums / hw  # mean over the rows of each sample
        if self.reduction == "entry":
            per_row = per_row / hw
        return self.loss_weight * per_row.mean()
