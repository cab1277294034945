"""TaT: knowledge distillation via the target-aware transformer (Lin et al., CVPR 2022)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import align_pair, check_channels, check_int, check_maps, conv, conv1x1, low_memory
from ..precision import float32_math
from ...methods import Method, WEIGHT, at_least

#: bcd.methods: params `type: TATLoss`, on the decoder's last features (widths from the models)
METHOD = Method(
    type="TATLoss",
    inputs=dict(preds_S="student.head", preds_T="teacher.head"),
    settings=dict(patch_size=at_least(1), anchor_size=at_least(1), anchor_weight=WEIGHT),
    channels=dict(student_channels="preds_S", teacher_channels="preds_T"),
)


def target_aware_error(query: Tensor, value: Tensor, target: Tensor,
                       valid: Tensor | None = None) -> Tensor:
    """Sum of squared errors of the target-aware reconfiguration of the student.

    ``w_ij = softmax_j(<t_i, q_j> / sqrt(C))`` (teacher pixel ``i`` attends over student pixels
    ``j``), ``s'_i = sum_j w_ij v_j``, result ``sum_i |s'_i - t_i|^2``.

    Args:
        query, value: student projections ``gamma(S)``, ``phi(S)``, ``(B, C, M)``.
        target: teacher features ``(B, C, M)``.
        valid: optional ``(B, M)`` bool; invalid pixels are neither keys nor counted as targets.

    Returns:
        Scalar sum over the batch, channels and (valid) target pixels.
    """
    logits = target.transpose(1, 2) @ query / math.sqrt(target.shape[1])  # (B, M_t, M_s)
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
    recon = value @ torch.softmax(logits, dim=-1).transpose(1, 2)  # (B, C, M_t)
    err = (recon - target).square()
    return (err * valid.unsqueeze(1) if valid is not None else err).sum()


def _global_error(query: Tensor, value: Tensor, target: Tensor) -> Tensor:
    return target_aware_error(query.flatten(1)[None], value.flatten(1)[None], target.flatten(1)[None])


def _windows(x: Tensor, p: int) -> Tensor:
    """``(N, C, H, W)`` (H, W multiples of p) -> ``(N * H/p * W/p, C, p * p)`` non-overlapping windows."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, c, p * p)


class TATLoss(nn.Module):
    """TaT loss on features: every teacher pixel reconfigures the student map, then MSE.

    ``q = gamma(S)``, ``v = phi(S)`` are learnable 1x1 convs ``C_S -> C_T`` (identity-initialised
    when ``C_S == C_T``); the teacher is used as is (``theta`` = identity) and detached::

        w_ij = softmax_j(T_i^T q_j / sqrt(C_T)),   S'_i = sum_j w_ij v_j
        L_TaT = 1 / (N C_T H W) sum_{n, i} |S'_i - T_i|^2

    ``patch_size=None`` attends over the whole map (one ``HW x HW`` matrix per image, built one
    image at a time under activation checkpointing). ``patch_size = p`` is the hierarchical
    (patch-group, one patch per group) variant: attention only inside non-overlapping
    ``p x p`` patches (maps padded to multiples of ``p``, padded pixels masked). ``anchor_size =
    a`` adds the anchor-point term: the same loss on ``a x a`` average-pooled maps (global
    attention), weighted by ``anchor_weight``::

        L = loss_weight * (L_TaT(full map or patches) + anchor_weight * L_TaT(anchors))

    Student features of another size are resized (bilinear) to the teacher's first.

    Args:
        student_channels, teacher_channels: ``C_S``, ``C_T``.
        patch_size: ``None`` or an int ``>= 1``. Default ``None``.
        anchor_size: ``None`` or an int ``>= 1`` (pooling kernel = stride). Default ``None``.
        anchor_weight: Default ``1.0``. loss_weight: Default ``1.0``.

    Shapes:
        preds_S ``(N, C_S, H_S, W_S)``, preds_T ``(N, C_T, H, W)``. Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, patch_size: int | None = None,
                 anchor_size: int | None = None, anchor_weight: float = 1.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.student_channels = check_int("TATLoss", "student_channels", student_channels, 1)
        self.teacher_channels = check_int("TATLoss", "teacher_channels", teacher_channels, 1)
        self.patch_size = None if patch_size is None else check_int("TATLoss", "patch_size", patch_size, 1)
        self.anchor_size = (None if anchor_size is None
                            else check_int("TATLoss", "anchor_size", anchor_size, 1))
        self.anchor_weight, self.loss_weight = float(anchor_weight), float(loss_weight)
        self.query = conv1x1(student_channels, teacher_channels)  # gamma
        self.value = conv1x1(student_channels, teacher_channels)  # phi

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, anchor_size={self.anchor_size}, "
                f"anchor_weight={self.anchor_weight}, loss_weight={self.loss_weight}")

    @staticmethod
    def _global(q: Tensor, v: Tensor, t: Tensor) -> Tensor:
        total = sum(low_memory(_global_error, q[i], v[i], t[i]) for i in range(t.shape[0]))
        return total / t.numel()

    def _patched(self, q: Tensor, v: Tensor, t: Tensor) -> Tensor:
        p, (h, w) = self.patch_size, t.shape[-2:]
        pad = (0, -w % p, 0, -h % p)
        valid = F.pad(t.new_ones(t.shape[0], 1, h, w), pad).bool()
        q, v, t_pad = (F.pad(x, pad) for x in (q, v, t))
        windows = [_windows(x, p) for x in (q, v, t_pad, valid)]
        return target_aware_error(*windows[:3], windows[3][:, 0]) / t.numel()

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted TaT loss (plus the anchor term); see the class doc."""
        check_maps("TATLoss", preds_S, preds_T)
        check_channels("TATLoss", preds_S, preds_T, self.student_channels, self.teacher_channels)
        s, t = align_pair(preds_S, preds_T)
        q, v = conv(s, self.query), conv(s, self.value)
        loss = self._global(q, v, t) if self.patch_size is None else self._patched(q, v, t)
        if self.anchor_size is not None:
            a = self.anchor_size
            pooled = [F.avg_pool2d(x, a, a, ceil_mode=True) for x in (q, v, t)]
            loss = loss + self.anchor_weight * self._global(*pooled)
        return self.loss_weight * loss
