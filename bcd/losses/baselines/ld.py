"""LD: localization distillation for dense object detection (Zheng et al., CVPR 2022).

The student's box-edge *distributions* mimic the teacher's: a GFL-style head predicts, per
location (and anchor), ``reg_max + 1`` logits for each of the 4 edges (left, top, right,
bottom); LD is the temperature-``T`` KL divergence between the teacher's and the student's
softmaxed edge distributions, on selected locations (the main distillation region: positive
locations of the student's assigner; optionally the valuable localization region, VLR).

LD needs box distributions. Heads that regress 4 box deltas per anchor (RetinaNet, the R-CNN
box heads of Cascade Mask R-CNN) have none: the loss refuses such inputs rather than invent a
distribution (``docs/baselines.md``, "LD", says what LD on those detectors would take).

Plain PyTorch, no OpenMMLab import. We could not check the paper's equation numbers from here
(the formula below is the paper's LD term as described in its method section and as computed
by the released code and mmdet's ``LDHead``); no equation number is cited for that reason.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_int, check_positive, per_level
from ..precision import as_float32
from ...methods import Method, POSITIVE, WEIGHT

_NAME = "LDLoss"

#: bcd.methods: params `type: LDLoss`, on the dense head's box-edge distributions (GFL only: the
#: `box_dists` taps exist only on distribution heads, other detectors are refused) at the
#: student assigner's positive anchors, weighted by the student's top class score
METHOD = Method(
    type="LDLoss",
    inputs=dict(bbox_S="student.box_dists", bbox_T="teacher.box_dists",
                mask="student.positives", cls_S="student.head_cls"),
    settings=dict(temperature=POSITIVE, bin_mean={"type": "boolean"}),
    models=dict(reg_max="teacher.reg_max", num_anchors="teacher.num_anchors"),
)


def edge_kl(logits_S: Tensor, logits_T: Tensor, temperature: float, bin_mean: bool = False
            ) -> Tensor:
    """``T^2 KL(softmax(t / T) || softmax(s / T))`` over the last dim (the bins), teacher
    detached; ``bin_mean`` divides by the number of bins (mmdet's ``KnowledgeDistillationKLDivLoss``
    averages over them). Shapes ``(..., n + 1)`` -> ``(...)``."""
    T = temperature
    log_t = F.log_softmax(logits_T.detach() / T, -1)
    log_s = F.log_softmax(logits_S / T, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1) * (T * T)
    return kl / logits_S.shape[-1] if bin_mean else kl


def _levels(arg: str, x, n_levels: int | None = None) -> list:
    return per_level(_NAME, arg, x, n_levels, "bbox_S")


class LDLoss(nn.Module):
    """Localization distillation: KL between teacher and student box-edge distributions.

    For location (anchor) ``r`` and edge ``e`` in ``{l, t, r, b}``, with ``z`` the ``reg_max + 1``
    edge logits (student ``s``, teacher ``t``, detached)::

        KL_re = T^2 KL( softmax(z^t_re / T) || softmax(z^s_re / T) )
        w_r   = m_r * sigmoid(max_k c^s_rk)      (the second factor only if cls_S is given)
        L_main = 1/Z sum_r w_r 1/4 sum_e KL_re,        Z = avg_factor, else #{r : m_r > 0}
        L_vlr  = 1/Z_v sum_r v_r 1/4 sum_e KL_re,      Z_v = #{r : v_r > 0}
        L = loss_weight * (L_main + vlr_weight L_vlr)

    ``m`` is the main-region mask (bool, or float weights with ``0`` = not selected), all levels
    pooled; ``c^s`` the student's class logits (its max class score weights each location, as in
    the released ``LDHead``; detached). ``v`` the optional VLR mask (weights as given). No
    selected location gives ``0`` (not NaN), still connected to the graph. ``last_main``,
    ``last_vlr``: the weighted terms (times ``loss_weight``, detached) of the last call.

    Args:
        reg_max: bins - 1 per edge (GFL: 16). Must be ``>= 1``: LD needs distributions.
            Default ``16``.
        num_anchors: anchors per location ``A`` (GFL 1). Default ``1``.
        temperature: ``T``. Default ``10.0`` (the paper's and the released configs').
        bin_mean: divide each KL by ``reg_max + 1`` (mmdet's KL loss averages over the bins).
            Default ``False`` (the KL itself).
        vlr_weight: factor of ``L_vlr``. Default ``1.0``.
        loss_weight: Default ``1.0`` (the released GFL config uses ``0.25`` with
            ``bin_mean=True`` and a sum over locations, i.e. ``avg_factor=1``).

    Shapes (per level ``l``; a single Tensor is one level):
        bbox_S, bbox_T: ``(N, 4 A (reg_max + 1), H, W)`` edge logits (GFL's ``bbox_pred``;
            channel order anchor, edge, bin).
        mask: bool or float with ``N H W A`` elements (order ``n, h, w, a``, e.g. the student
            assigner's per-level labels ``< num_classes``).
        cls_S: optional ``(N, A K, H, W)`` student class logits.
        vlr_mask: optional, like ``mask``.
        avg_factor: optional positive number, ``Z``.
        Output: scalar.
    """

    def __init__(self, reg_max: int = 16, num_anchors: int = 1, temperature: float = 10.0,
                 bin_mean: bool = False, vlr_weight: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        if isinstance(reg_max, int) and not isinstance(reg_max, bool) and reg_max == 0:
            raise ValueError(f"{_NAME}: reg_max must be an int >= 1, got 0: one bin per edge is a "
                             "box delta, not a distribution; LD needs distribution heads (GFL), "
                             "see docs/baselines.md 'LD'")
        self.reg_max = check_int(_NAME, "reg_max", reg_max, 1)
        self.num_anchors = check_int(_NAME, "num_anchors", num_anchors, 1)
        self.temperature = check_positive(_NAME, "temperature", temperature)
        self.bin_mean = bool(bin_mean)
        if isinstance(vlr_weight, bool) or not isinstance(vlr_weight, (int, float)) or not vlr_weight >= 0:
            raise ValueError(f"{_NAME}: vlr_weight must be a number >= 0, got {vlr_weight!r}")
        self.vlr_weight = float(vlr_weight)
        self.loss_weight = float(loss_weight)
        self.last_main: Tensor | None = None
        self.last_vlr: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"reg_max={self.reg_max}, num_anchors={self.num_anchors}, T={self.temperature}, "
                f"bin_mean={self.bin_mean}, vlr_weight={self.vlr_weight}, "
                f"loss_weight={self.loss_weight}")

    def _check_reg(self, what: str, x, lvl: int, like: Tensor | None = None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{_NAME}: {what}[{lvl}] must be a float (N, C, H, W) Tensor, got {got}")
        A, bins = self.num_anchors, self.reg_max + 1
        if x.shape[1] != 4 * A * bins:
            hint = (" (4 channels per anchor are box deltas, not distributions: LD needs a "
                    "distribution head such as GFL's, see docs/baselines.md 'LD')"
                    if x.shape[1] == 4 * A else "")
            raise ValueError(f"{_NAME}: {what}[{lvl}] has {x.shape[1]} channels, expected "
                             f"4 x {A} anchors x {bins} bins = {4 * A * bins}{hint}")
        if like is not None and x.shape != like.shape:
            raise ValueError(f"{_NAME}: level {lvl}: bbox_S {tuple(like.shape)} and bbox_T "
                             f"{tuple(x.shape)} differ")

    @staticmethod
    def _weights(what: str, m, lvl: int, count: int, device, dtype) -> Tensor:
        if not isinstance(m, Tensor) or m.numel() != count:
            got = m.numel() if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"{_NAME}: {what}[{lvl}] must have N H W A = {count} elements, got {got}")
        m = m.detach().reshape(-1).to(device)
        if m.dtype == torch.bool or not m.is_floating_point():
            m = m != 0
        elif not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
            raise ValueError(f"{_NAME}: {what}[{lvl}] weights must be finite and >= 0")
        return m.to(dtype)

    def forward(self, bbox_S, bbox_T, mask, cls_S=None, vlr_mask=None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        """Weighted edge-distribution KL; see the class doc."""
        reg_S = _levels("bbox_S", bbox_S)
        n_levels = len(reg_S)
        reg_T = _levels("bbox_T", bbox_T, n_levels)
        masks = _levels("mask", mask, n_levels)
        none = [None] * n_levels
        scores = none if cls_S is None else _levels("cls_S", cls_S, n_levels)
        vlrs = none if vlr_mask is None else _levels("vlr_mask", vlr_mask, n_levels)
        A, bins = self.num_anchors, self.reg_max + 1
        device = reg_S[0].device.type if isinstance(reg_S[0], Tensor) else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            main_sum = vlr_sum = 0.0
            count = vlr_count = 0.0
            anchor = None
            for lvl in range(n_levels):
                self._check_reg("bbox_S", reg_S[lvl], lvl)
                self._check_reg("bbox_T", reg_T[lvl], lvl, like=reg_S[lvl])
                s = as_float32(reg_S[lvl])
                t = as_float32(reg_T[lvl].detach()).to(s.dtype)
                n, _, h, w = s.shape
                M = n * h * w * A
                kl = edge_kl(s.permute(0, 2, 3, 1).reshape(M, 4, bins),
                             t.permute(0, 2, 3, 1).reshape(M, 4, bins),
                             self.temperature, self.bin_mean).mean(1)              # (M,)
                anchor = kl.sum() * 0.0 if anchor is None else anchor
                m = self._weights("mask", masks[lvl], lvl, M, s.device, s.dtype)
                count = count + (m > 0).sum().to(s.dtype)
                if scores[lvl] is not None:
                    c = scores[lvl]
                    if (not isinstance(c, Tensor) or c.dim() != 4 or c.shape[0] != n
                            or c.shape[2:] != s.shape[2:] or c.shape[1] % A):
                        got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
                        raise ValueError(f"{_NAME}: cls_S[{lvl}] must be (N, A K, H, W) = "
                                         f"({n}, {A} x K, {h}, {w}), got {got}")
                    c = as_float32(c.detach()).to(s.dtype)
                    m = m * c.permute(0, 2, 3, 1).reshape(M, -1).max(1).values.sigmoid()
                main_sum = main_sum + (m * kl).sum()
                if vlrs[lvl] is not None:
                    v = self._weights("vlr_mask", vlrs[lvl], lvl, M, s.device, s.dtype)
                    vlr_count = vlr_count + (v > 0).sum().to(s.dtype)
                    vlr_sum = vlr_sum + (v * kl).sum()
            if avg_factor is not None:
                z = avg_factor if isinstance(avg_factor, Tensor) else torch.tensor(float(avg_factor))
                if z.numel() != 1 or not float(z) > 0:
                    raise ValueError(f"{_NAME}: avg_factor must be a number > 0, got {avg_factor!r}")
                z = z.to(device=anchor.device, dtype=anchor.dtype)
            else:
                z = torch.as_tensor(count, dtype=anchor.dtype, device=anchor.device).clamp_min(1.0)
            main = anchor + main_sum / z
            vlr = anchor + vlr_sum / torch.as_tensor(vlr_count, dtype=anchor.dtype,
                                                     device=anchor.device).clamp_min(1.0)
            lw = self.loss_weight
            self.last_main, self.last_vlr = lw * main.detach(), lw * self.vlr_weight * vlr.detach()
            return lw * (main + self.vlr_weight * vlr)
