"""CrossKD: cross-head knowledge distillation for object detection (Wang et al., CVPR 2024).

The student's intermediate detection-head features (taken after head layer ``i``) go through the
*teacher's* remaining head layers ``i+1 .. n``; the resulting cross-head predictions ``p^hat`` are
distilled to the teacher's own predictions ``p^t`` (the CrossKD objective, paper Eq. 3)::

    L_CrossKD = 1 / |S| sum_{r in R} S(r) D_pred(p^hat(r), p^t(r)),     |S| = sum_r S(r)

with ``D_pred`` and ``S`` chosen per branch (the released GFL / RetinaNet settings). Plain PyTorch,
no OpenMMLab import: the caller hands over the teacher head's remaining layers as a module and,
for the box term, a decoder (``docs/baselines.md``, "CrossKD").
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ._common import check_int, check_positive, per_level
from ..precision import as_float32
from ...methods import Method, POSITIVE, WEIGHT

_NAME = "CrossKDLoss"

#: bcd.methods: params `type: CrossKDLoss`, on the dense head (GFL, RetinaNet; Cascade Mask
#: R-CNN: its RPN head): the student's head features before the last conv go through the
#: teacher head's last conv and predictors (docs/baselines.md, "CrossKD")
METHOD = Method(
    type="CrossKDLoss",
    inputs=dict(student_feats="student.head_held", teacher_head="teacher.head_tail",
                teacher_cls="teacher.head_cls", teacher_reg="teacher.head_reg",
                teacher_feats="teacher.head_held", decode="teacher.box_decoder",
                avg_factor="student.num_positives"),
    settings=dict(temperature=POSITIVE, beta=POSITIVE, cls_weight=WEIGHT, kl_weight=WEIGHT,
                  box_weight=WEIGHT, align={"type": "boolean"}),
    models=dict(num_anchors="teacher.num_anchors", reg_max="teacher.reg_max"),
)


def align_to_teacher(feat_S: Tensor, feat_T: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-channel standardisation of the student map, rescaled to the teacher's statistics.

    ``(S - mean_S) / (std_S + eps) * std_T + mean_T`` with mean and (unbiased) std of every
    channel over ``(N, H, W)``; the teacher's statistics are constants (detached).

    Args:
        feat_S, feat_T: ``(N, C, H, W)`` maps of one shape.
    """
    dims = (0, 2, 3)
    t = feat_T.detach()
    s = (feat_S - feat_S.mean(dims, keepdim=True)) / (feat_S.std(dims, keepdim=True) + eps)
    return s * t.std(dims, keepdim=True) + t.mean(dims, keepdim=True)


def kd_quality_focal(logits_S: Tensor, logits_T: Tensor, beta: float) -> Tensor:
    """Element-wise KD quality focal loss: ``BCE(s, sigmoid(t)) |sigmoid(s) - sigmoid(t)|^beta``."""
    target = logits_T.detach().sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits_S, target, reduction="none")
    return bce * (logits_S.sigmoid() - target).abs().pow(beta)


def giou(boxes_a: Tensor, boxes_b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of paired ``(M, 4)`` boxes ``(x1, y1, x2, y2)``; returns ``(M,)``."""
    lt, rb = torch.max(boxes_a[:, :2], boxes_b[:, :2]), torch.min(boxes_a[:, 2:], boxes_b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(1)
    area_a = (boxes_a[:, 2:] - boxes_a[:, :2]).clamp_min(0).prod(1)
    area_b = (boxes_b[:, 2:] - boxes_b[:, :2]).clamp_min(0).prod(1)
    union = area_a + area_b - inter
    enclose = (torch.max(boxes_a[:, 2:], boxes_b[:, 2:])
               - torch.min(boxes_a[:, :2], boxes_b[:, :2])).clamp_min(0).prod(1)
    return inter / (union + eps) - (enclose - union) / (enclose + eps)


def _levels(arg: str, x, n_levels: int | None = None) -> list:
    return per_level(_NAME, arg, x, n_levels, "student_feats")


def _check_map(what: str, x, n: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{_NAME}: {what} must be a float (N, C, H, W) Tensor, got {shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{_NAME}: {what} has batch size {x.shape[0]}, expected {n}")


class CrossKDLoss(nn.Module):
    """CrossKD prediction mimicking of cross-head predictions (Eq. 3 of the paper).

    For every level ``l``: ``p^hat = teacher_head(align(f^S_l), l)``, run with the teacher head's
    parameters *detached* (``torch.func.functional_call``), so the gradient reaches the student
    features through the teacher's layers but never the teacher's parameters. Anchors ``r`` are
    the ``(n, h, w, a)`` positions (``A`` anchors per location, mmdet's order). With ``q = p^t``
    class logits, ``s`` the sigmoid and ``S(r) = s(max_k q_rk)`` (zero on invalid anchors)::

        L_cls = 1 / Z sum_{r valid} sum_k BCE(p^hat_rk, s(q_rk)) |s(p^hat_rk) - s(q_rk)|^beta
        L_kl  = 1 / |S| sum_r S(r) 1/4 sum_{side} T^2 KL(softmax(d^t_r,side / T) || softmax(d^hat_r,side / T))
        L_box = 1 / |S| sum_r S(r) (1 - GIoU(decode(d^hat)_r, decode(d^t)_r))
        L = loss_weight * (cls_weight L_cls + kl_weight L_kl + box_weight L_box)

    ``Z = avg_factor`` when given (the released code passes the number of positive anchors of the
    student's assigner), else the number of valid anchors (Eq. 3 with ``S = 1``). ``L_kl`` needs
    box *distributions* (``reg_max`` bins + 1 per side, GFL); ``L_box`` is computed when a
    ``decode`` callable is given. ``last_cls``, ``last_kl``, ``last_box``: the weighted terms
    (times ``loss_weight``, detached) of the last call.

    Args:
        num_anchors: anchors per location ``A`` (GFL 1, RetinaNet 9). Default ``1``.
        reg_max: distribution bins - 1 per side (GFL 16); ``None``: box deltas, no ``L_kl``.
            Default ``16``.
        temperature: ``T`` of ``L_kl``. Default ``1.0``.
        beta: focal exponent of ``L_cls``. Default ``1.0``.
        cls_weight, kl_weight, box_weight: Defaults ``1.0``, ``3.0``, ``2.0`` (the released GFL
            setting; RetinaNet: ``1.0``, -, ``1.0``).
        align: standardise each student map to the teacher's channel statistics first
            (:func:`align_to_teacher`; needs ``teacher_feats``). Default ``True``.
        loss_weight: Default ``1.0``.

    Shapes (per level ``l``; a single Tensor is one level):
        student_feats: ``(N, C, H, W)`` or a tuple of them (e.g. the classification and the
            regression branch), passed to ``teacher_head`` as given (after alignment).
        teacher_feats: the teacher's maps at the same layer, same structure (for ``align``).
        teacher_head: ``nn.Module``; ``teacher_head(feats, l)`` returns ``(cls, reg)`` of the
            teacher's prediction shapes.
        teacher_cls: ``(N, A K, H, W)`` logits; teacher_reg: ``(N, 4 A (reg_max + 1), H, W)``
            (or ``(N, 4 A, H, W)`` with ``reg_max=None``).
        valid: optional bool mask with ``N H W A`` elements per level.
        decode: optional ``decode(reg, l) -> boxes`` with ``N H W A x 4`` elements in anchor order
            (``x1, y1, x2, y2``), differentiable in ``reg``.
        avg_factor: optional positive number, ``Z`` of ``L_cls``.
        Output: scalar.
    """

    def __init__(self, num_anchors: int = 1, reg_max: int | None = 16, temperature: float = 1.0,
                 beta: float = 1.0, cls_weight: float = 1.0, kl_weight: float = 3.0,
                 box_weight: float = 2.0, align: bool = True, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.num_anchors = check_int(_NAME, "num_anchors", num_anchors, 1)
        self.reg_max = None if reg_max is None else check_int(_NAME, "reg_max", reg_max, 1)
        self.temperature = check_positive(_NAME, "temperature", temperature)
        self.beta = check_positive(_NAME, "beta", beta)
        self.cls_weight, self.kl_weight = float(cls_weight), float(kl_weight)
        self.box_weight, self.align = float(box_weight), bool(align)
        self.loss_weight = float(loss_weight)
        self.last_cls: Tensor | None = None
        self.last_kl: Tensor | None = None
        self.last_box: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"num_anchors={self.num_anchors}, reg_max={self.reg_max}, T={self.temperature}, "
                f"beta={self.beta}, cls_weight={self.cls_weight}, kl_weight={self.kl_weight}, "
                f"box_weight={self.box_weight}, align={self.align}, loss_weight={self.loss_weight}")

    def _cross_predict(self, head: nn.Module, feats_S, feats_T, level: int):
        parts_S = list(feats_S) if isinstance(feats_S, (list, tuple)) else [feats_S]
        for j, x in enumerate(parts_S):
            _check_map(f"student_feats[{level}][{j}]", x, parts_S[0].shape[0])
        if self.align:
            if feats_T is None:
                raise ValueError(f"{_NAME}: align=True needs teacher_feats")
            parts_T = list(feats_T) if isinstance(feats_T, (list, tuple)) else [feats_T]
            if len(parts_T) != len(parts_S):
                raise ValueError(f"{_NAME}: level {level}: {len(parts_S)} student maps but "
                                 f"{len(parts_T)} teacher maps")
            for j, (s, t) in enumerate(zip(parts_S, parts_T)):
                _check_map(f"teacher_feats[{level}][{j}]", t)
                if s.shape != t.shape:
                    raise ValueError(f"{_NAME}: level {level}: student map {tuple(s.shape)} and "
                                     f"teacher map {tuple(t.shape)} differ (align needs one shape)")
            parts_S = [align_to_teacher(as_float32(s), as_float32(t)) for s, t in zip(parts_S, parts_T)]
        else:
            parts_S = [as_float32(s) for s in parts_S]
        x = tuple(parts_S) if isinstance(feats_S, (list, tuple)) else parts_S[0]
        frozen = {name: p.detach() for name, p in head.named_parameters()}
        out = functional_call(head, frozen, (x, level))
        if not isinstance(out, (list, tuple)) or len(out) != 2:
            raise ValueError(f"{_NAME}: teacher_head must return (cls, reg), got {type(out).__name__}")
        return out

    def forward(self, student_feats, teacher_head: nn.Module, teacher_cls, teacher_reg,
                teacher_feats=None, valid=None, decode: Callable | None = None,
                avg_factor: float | Tensor | None = None) -> Tensor:
        """Weighted cross-head mimicking terms; see the class doc."""
        if not isinstance(teacher_head, nn.Module):
            raise ValueError(f"{_NAME}: teacher_head must be an nn.Module (its parameters are "
                             f"used detached), got {type(teacher_head).__name__}")
        feats_S = _levels("student_feats", student_feats)
        n_levels = len(feats_S)
        cls_T = _levels("teacher_cls", teacher_cls, n_levels)
        reg_T = _levels("teacher_reg", teacher_reg, n_levels)
        none = [None] * n_levels
        feats_T = none if teacher_feats is None else _levels("teacher_feats", teacher_feats, n_levels)
        masks = none if valid is None else _levels("valid", valid, n_levels)
        A = self.num_anchors
        device = cls_T[0].device.type if isinstance(cls_T[0], Tensor) else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            cls_sum = kl_sum = box_sum = weight_sum = count = 0.0
            for lvl in range(n_levels):
                ct, rt = cls_T[lvl], reg_T[lvl]
                _check_map(f"teacher_cls[{lvl}]", ct)
                _check_map(f"teacher_reg[{lvl}]", rt, ct.shape[0])
                ct, rt = as_float32(ct.detach()), as_float32(rt.detach())
                n, c, h, w = ct.shape
                if c % A:
                    raise ValueError(f"{_NAME}: teacher_cls[{lvl}] has {c} channels, not a multiple "
                                     f"of num_anchors={A}")
                per_side = 1 if self.reg_max is None else self.reg_max + 1
                if rt.shape[1] != 4 * A * per_side or rt.shape[2:] != ct.shape[2:]:
                    raise ValueError(f"{_NAME}: teacher_reg[{lvl}] {tuple(rt.shape)} must be "
                                     f"(N, {4 * A * per_side}, {h}, {w}) (4 sides x {A} anchors x "
                                     f"{per_side} {'bins' if self.reg_max is not None else 'value'})")
                cls_X, reg_X = self._cross_predict(teacher_head, feats_S[lvl], feats_T[lvl], lvl)
                for what, x, t in (("cls", cls_X, ct), ("reg", reg_X, rt)):
                    if not isinstance(x, Tensor) or x.shape != t.shape:
                        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                        raise ValueError(f"{_NAME}: level {lvl}: cross-head {what} {shape} does not "
                                         f"match the teacher's {tuple(t.shape)}")
                cls_X, reg_X = as_float32(cls_X), as_float32(reg_X)
                k = c // A
                q = ct.permute(0, 2, 3, 1).reshape(-1, k)           # (M, K), M = N H W A
                p = cls_X.permute(0, 2, 3, 1).reshape(-1, k)
                m = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
                if masks[lvl] is not None:
                    mv = masks[lvl]
                    if not isinstance(mv, Tensor) or mv.numel() != m.numel():
                        got = mv.numel() if isinstance(mv, Tensor) else type(mv).__name__
                        raise ValueError(f"{_NAME}: valid[{lvl}] must have N H W A = {m.numel()} "
                                         f"elements, got {got}")
                    m = mv.reshape(-1).to(device=q.device, dtype=torch.bool)
                weight = q.max(dim=1).values.sigmoid() * m           # S(r)
                cls_sum = cls_sum + (kd_quality_focal(p, q, self.beta).sum(1) * m).sum()
                count = count + m.sum().to(q.dtype)
                weight_sum = weight_sum + weight.sum()
                if self.reg_max is not None and self.kl_weight != 0.0:
                    T = self.temperature
                    d_t = rt.permute(0, 2, 3, 1).reshape(-1, 4, per_side)
                    d_x = reg_X.permute(0, 2, 3, 1).reshape(-1, 4, per_side)
                    log_t, log_x = F.log_softmax(d_t / T, -1), F.log_softmax(d_x / T, -1)
                    kl = (log_t.exp() * (log_t - log_x)).sum(-1).mean(-1) * T * T   # (M,)
                    kl_sum = kl_sum + (weight * kl).sum()
                if decode is not None and self.box_weight != 0.0:
                    boxes_x = decode(reg_X, lvl)
                    with torch.no_grad():
                        boxes_t = decode(rt, lvl)
                    for what, b in (("cross-head", boxes_x), ("teacher", boxes_t)):
                        if not isinstance(b, Tensor) or b.numel() != 4 * q.shape[0]:
                            got = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                            raise ValueError(f"{_NAME}: level {lvl}: decode gave {what} boxes {got}, "
                                             f"expected N H W A x 4 = {4 * q.shape[0]} values")
                    g = giou(as_float32(boxes_x).reshape(-1, 4), as_float32(boxes_t).reshape(-1, 4))
                    box_sum = box_sum + (weight * (1.0 - g)).sum()
            z = count if avg_factor is None else avg_factor
            if not isinstance(z, Tensor):
                z = torch.tensor(float(z), device=q.device)
            if avg_factor is not None and not float(z) > 0:
                raise ValueError(f"{_NAME}: avg_factor must be > 0, got {float(z)}")
            tiny = torch.finfo(q.dtype).tiny
            cls_term = self.cls_weight * cls_sum / z.clamp_min(1.0 if avg_factor is None else tiny)
            den = weight_sum.clamp_min(tiny)
            kl_term = self.kl_weight * kl_sum / den
            box_term = self.box_weight * box_sum / den
            self.last_cls = self.loss_weight * cls_term.detach()
            self.last_kl = self.loss_weight * torch.as_tensor(kl_term).detach()
            self.last_box = self.loss_weight * torch.as_tensor(box_term).detach()
            return self.loss_weight * (cls_term + kl_term + box_term)
