"""FGD: focal and global knowledge distillation for detectors (Yang et al., CVPR 2022).

On one FPN level (a distiller applies one module per level), the student feature ``S`` (after an
optional 1x1 ``align`` conv to the teacher's width) mimics the teacher feature ``T``:

- **focal** part: ground-truth boxes split foreground from background, each pixel scaled by the
  size of its region; the teacher's spatial and channel attention weight the squared error
  (feature loss, alpha for foreground, beta for background), and the student's attention maps
  mimic the teacher's (attention loss, gamma, L1);
- **global** part (lambda): a GcBlock-style context module per side (learnable, in this loss)
  adds each map's global context to it, and the two results are compared (squared error).

Plain PyTorch, no OpenMMLab import. Equations and choices: ``docs/baselines.md``, "FGD".
Equation numbers below follow our reading of the paper (arXiv 2111.11837); we could not check
them against the paper's text from here (only the released code's operators were read), so
treat them as unverified.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import check_int, check_positive
from ..precision import float32_math
from ...methods import Method, POSITIVE, WEIGHT

_NAME = "FGDLoss"

#: bcd.methods: params `type: FGDLoss`, on every FPN output of a detector (one set of context
#: blocks per level, as released), with each image's ground-truth boxes (docs/baselines.md)
METHOD = Method(
    type="FGDLoss",
    inputs=dict(preds_S="student.neck", preds_T="teacher.neck", gt_bboxes="gt_boxes",
                img_shapes="img_metas"),
    settings=dict(temperature=POSITIVE, alpha_fgd=WEIGHT, beta_fgd=WEIGHT, gamma_fgd=WEIGHT,
                  lambda_fgd=WEIGHT, shared_context={"type": "boolean"}),
    channels=dict(student_channels="preds_S", teacher_channels="preds_T"),
    models=dict(num_levels="student.neck_levels"),
)


def _boxes_of(item, i: int) -> Tensor:
    """Image ``i``'s boxes: a ``(M, 4)`` Tensor, or anything with a ``bboxes`` Tensor (e.g.
    mmdet's ``InstanceData``; read by duck typing, no import)."""
    boxes = getattr(item, "bboxes", item)
    boxes = getattr(boxes, "tensor", boxes)        # mmdet's box-type wrappers hold .tensor
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{_NAME}: gt_bboxes[{i}] must be a (M, 4) Tensor of (x1, y1, x2, y2) "
                         f"boxes (or have such a .bboxes), got {got}")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{_NAME}: gt_bboxes[{i}] has non-finite coordinates")
    if boxes.numel() and bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        raise ValueError(f"{_NAME}: gt_bboxes[{i}] has a box with x2 < x1 or y2 < y1 "
                         "(expected (x1, y1, x2, y2) corners)")
    return boxes


def _shape_of(item, i: int) -> tuple[float, float]:
    """Image ``i``'s ``(height, width)``: a pair, or a mapping (mmdet's image metas) with
    ``batch_input_shape`` (the padded input the feature maps cover; preferred) or ``img_shape``."""
    shape = item
    if isinstance(item, Mapping):
        key = next((k for k in ("batch_input_shape", "img_shape") if k in item), None)
        shape = item[key] if key is not None else item
    if isinstance(shape, Tensor):
        shape = shape.tolist()
    ok = isinstance(shape, Sequence) and len(shape) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in shape[:2])
    if not ok or not (shape[0] > 0 and shape[1] > 0):
        raise ValueError(f"{_NAME}: img_shapes[{i}] must be (height, width) > 0 or a dict with "
                         f"'batch_input_shape' or 'img_shape', got {item!r}")
    return float(shape[0]), float(shape[1])


def fgd_masks(boxes: Tensor, img_shape: tuple[float, float], size: tuple[int, int]
              ) -> tuple[Tensor, Tensor]:
    """Foreground and background scale masks of one image on an ``H x W`` level (Eqs. 2-3).

    Boxes ``(x1, y1, x2, y2)`` in input-image pixels are scaled to the level (``x W / width``,
    ``y H / height``); a box covers the cells it overlaps, rows ``floor(y1) .. ceil(y2) - 1``
    and columns ``floor(x1) .. ceil(x2) - 1`` (at least one of each, clipped to the map).
    ``fg = 1 / (H_r W_r)`` inside box ``r`` (``H_r W_r`` its covered cells; where boxes overlap,
    the largest value, i.e. the smallest box), ``0`` outside; ``bg = 1 / N_bg`` on the ``N_bg``
    cells no box covers, ``0`` elsewhere (all zero if boxes cover everything).

    Returns:
        ``fg, bg``: ``(H, W)`` Tensors of ``boxes``' dtype (float) and device.
    """
    H, W = size
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    b = boxes.to(dtype)
    fg = torch.zeros(H, W, dtype=dtype, device=boxes.device)
    if b.shape[0]:
        sx, sy = W / img_shape[1], H / img_shape[0]
        x0 = torch.floor(b[:, 0] * sx)
        y0 = torch.floor(b[:, 1] * sy)
        x1 = torch.maximum(torch.ceil(b[:, 2] * sx), x0 + 1)
        y1 = torch.maximum(torch.ceil(b[:, 3] * sy), y0 + 1)
        x0, x1 = x0.clamp(0, W), x1.clamp(0, W)
        y0, y1 = y0.clamp(0, H), y1.clamp(0, H)
        cells = (x1 - x0) * (y1 - y0)                                     # H_r W_r (0: off-map)
        value = torch.where(cells > 0, 1.0 / cells.clamp_min(1), torch.zeros_like(cells))
        rows = torch.arange(H, dtype=dtype, device=boxes.device)[None, :, None]
        cols = torch.arange(W, dtype=dtype, device=boxes.device)[None, None, :]
        inside = ((rows >= y0[:, None, None]) & (rows < y1[:, None, None])
                  & (cols >= x0[:, None, None]) & (cols < x1[:, None, None]))
        fg = torch.where(inside, value[:, None, None], 0.0).amax(0)
    bg = (fg == 0).to(dtype)
    n_bg = bg.sum()
    if n_bg > 0:
        bg = bg / n_bg
    return fg, bg


def fgd_attention(feat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Spatial and channel attention of ``(N, C, H, W)`` maps (Eqs. 4-5)::

        G^S = 1/C sum_c |F_c|,        A^S = H W softmax_{HW}(G^S / T)     -> (N, H, W)
        G^C = 1/(HW) sum_{ij} |F_ij|, A^C = C softmax_C(G^C / T)          -> (N, C)
    """
    n, c, h, w = feat.shape
    a = feat.abs()
    spatial = (h * w) * F.softmax(a.mean(1).reshape(n, -1) / temperature, dim=1)
    channel = c * F.softmax(a.mean((2, 3)) / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


class ContextBlock(nn.Module):
    """GcBlock-style global context (FGD's ``R``, Eq. 9)::

        R(F) = F + W_v2 ReLU(LN(W_v1 sum_j softmax_j(W_k F)_j F_j))

    ``W_k``: 1x1 conv ``C -> 1`` (Kaiming-normal, fan-in, zero bias); ``W_v1``: ``C -> C/2``
    (at least 1), LayerNorm over ``(C/2, 1, 1)``, ReLU, ``W_v2``: ``C/2 -> C``, initialised to
    zero (so ``R`` starts as the identity, as in GCNet and FGD's released code). Weights are cast
    to the input's dtype.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.key = nn.Conv2d(channels, 1, 1)
        self.value_in = nn.Conv2d(channels, hidden, 1)
        self.norm = nn.LayerNorm([hidden, 1, 1])
        self.value_out = nn.Conv2d(hidden, channels, 1)
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.key.bias)
        nn.init.zeros_(self.value_out.weight)
        nn.init.zeros_(self.value_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        d = x.dtype
        logits = F.conv2d(x, self.key.weight.to(d), self.key.bias.to(d)).reshape(n, 1, h * w)
        context = torch.bmm(x.reshape(n, c, h * w), F.softmax(logits, 2).transpose(1, 2))  # (N, C, 1)
        y = F.conv2d(context[..., None], self.value_in.weight.to(d), self.value_in.bias.to(d))
        y = F.layer_norm(y, self.norm.normalized_shape, self.norm.weight.to(d),
                         self.norm.bias.to(d), self.norm.eps)
        y = F.conv2d(F.relu(y), self.value_out.weight.to(d), self.value_out.bias.to(d))
        return x + y


class FGDLoss(nn.Module):
    """FGD on one feature level: focal (Eqs. 6-8) plus global (Eq. 9) distillation.

    With ``S`` the (aligned) student map, ``T`` the teacher's (detached), ``fg``/``bg`` the
    scale masks of :func:`fgd_masks` and ``A^S``, ``A^C`` the attention of :func:`fgd_attention`
    (``_t`` teacher, ``_s`` student), sums over the batch ``n``, channels ``k`` and cells ``ij``::

        L_fea    = 1/N sum (alpha_fgd fg_ij + beta_fgd bg_ij) A^S_t,ij A^C_t,k (T_kij - S_kij)^2   (Eq. 6)
        L_at     = gamma_fgd / N (sum_ij |A^S_t - A^S_s| + sum_k |A^C_t - A^C_s|)                 (Eq. 7)
        L_global = lambda_fgd / N sum (R_T(T) - R_S(S))^2                                         (Eq. 9)
        L = loss_weight * (L_fea + L_at + L_global)

    ``N`` is the batch size (the released code's normalisation: sums, not means). ``R_S`` and
    ``R_T`` are two :class:`ContextBlock` s (learnable, owned by this loss; ``shared_context``
    uses one for both). The teacher map never gets a gradient; the teacher-side context block
    does (it is trained by ``L_global``, as released). ``last_fg``, ``last_bg``, ``last_at``,
    ``last_global``: the weighted terms (times ``loss_weight``, detached) of the last call.

    Args:
        student_channels, teacher_channels: ``C_S``, ``C_T``; a 1x1 ``align`` conv maps the
            student to ``C_T`` when they differ (none when equal).
        temperature: ``T`` of the attention. Default ``0.5``.
        alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd: Defaults ``1e-3``, ``5e-4``, ``5e-4``,
            ``5e-6``: the authors' released RetinaNet (RX101 -> R50) and GFL (R101 -> R50)
            configs, which agree.
        shared_context: one context block for both sides. Default ``False`` (as released).
        num_levels: ``None`` (default): one level, ``preds_S`` / ``preds_T`` are maps. An int
            ``L``: ``preds_S`` / ``preds_T`` are sequences of ``L`` maps (e.g. the FPN outputs);
            each level has its own align conv and context blocks (``levels[l]``, an
            ``FGDLoss`` of one level, as the released code's one loss per level) and the result
            is the sum over the levels; ``last_*`` are sums too.
        loss_weight: Default ``1.0``.

    Shapes:
        preds_S: ``(N, C_S, H, W)``; preds_T: ``(N, C_T, H, W)`` (same ``H, W``: one FPN level).
        gt_bboxes: ``N`` entries, each a ``(M_i, 4)`` Tensor of ``(x1, y1, x2, y2)`` boxes in
            input-image pixels (``M_i = 0`` allowed), or an object with such a ``.bboxes``.
        img_shapes: ``N`` entries, each the ``(height, width)`` in input pixels that the feature
            map covers: the padded network input (mmdet's ``batch_input_shape``); or an image
            meta dict, read at ``'batch_input_shape'``, else ``'img_shape'``. (The released code
            scales by each image's unpadded ``img_shape``, which stretches the boxes when the
            batch is padded.)
        Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, temperature: float = 0.5,
                 alpha_fgd: float = 1e-3, beta_fgd: float = 5e-4, gamma_fgd: float = 5e-4,
                 lambda_fgd: float = 5e-6, shared_context: bool = False,
                 num_levels: int | None = None, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.num_levels = None if num_levels is None else check_int(_NAME, "num_levels",
                                                                    num_levels, 1)
        self.student_channels = check_int(_NAME, "student_channels", student_channels, 1)
        self.teacher_channels = check_int(_NAME, "teacher_channels", teacher_channels, 1)
        self.temperature = check_positive(_NAME, "temperature", temperature)
        for arg, value in (("alpha_fgd", alpha_fgd), ("beta_fgd", beta_fgd),
                           ("gamma_fgd", gamma_fgd), ("lambda_fgd", lambda_fgd)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{_NAME}: {arg} must be a number >= 0, got {value!r}")
        self.alpha_fgd, self.beta_fgd = float(alpha_fgd), float(beta_fgd)
        self.gamma_fgd, self.lambda_fgd = float(gamma_fgd), float(lambda_fgd)
        self.shared_context = bool(shared_context)
        self.levels: nn.ModuleList | None = None
        if self.num_levels is None:
            self.align = (None if student_channels == teacher_channels
                          else nn.Conv2d(student_channels, teacher_channels, 1))
            self.context_S = ContextBlock(teacher_channels)
            self.context_T = None if shared_context else ContextBlock(teacher_channels)
        else:
            self.align = self.context_S = self.context_T = None
            self.levels = nn.ModuleList(
                FGDLoss(student_channels, teacher_channels, temperature, alpha_fgd, beta_fgd,
                        gamma_fgd, lambda_fgd, shared_context) for _ in range(self.num_levels))
        self.loss_weight = float(loss_weight)
        self.last_fg: Tensor | None = None
        self.last_bg: Tensor | None = None
        self.last_at: Tensor | None = None
        self.last_global: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
                f"T={self.temperature}, alpha_fgd={self.alpha_fgd}, beta_fgd={self.beta_fgd}, "
                f"gamma_fgd={self.gamma_fgd}, lambda_fgd={self.lambda_fgd}, "
                f"shared_context={self.shared_context}, num_levels={self.num_levels}, "
                f"loss_weight={self.loss_weight}")

    def masks(self, gt_bboxes, img_shapes, size: tuple[int, int], n: int, device, dtype
              ) -> tuple[Tensor, Tensor]:
        """``(N, H, W)`` foreground and background scale masks of the batch (:func:`fgd_masks`)."""
        for arg, x in (("gt_bboxes", gt_bboxes), ("img_shapes", img_shapes)):
            if isinstance(x, (Tensor, str)) or not isinstance(x, Sequence) or len(x) != n:
                got = len(x) if isinstance(x, Sequence) and not isinstance(x, str) else type(x).__name__
                raise ValueError(f"{_NAME}: {arg} must be a list with one entry per image "
                                 f"(N = {n}), got {got}")
        fgs, bgs = [], []
        for i in range(n):
            boxes = _boxes_of(gt_bboxes[i], i).to(device=device, dtype=dtype)
            fg, bg = fgd_masks(boxes, _shape_of(img_shapes[i], i), size)
            fgs.append(fg)
            bgs.append(bg)
        return torch.stack(fgs), torch.stack(bgs)

    def forward(self, preds_S, preds_T, gt_bboxes, img_shapes) -> Tensor:
        """Focal and global distillation terms; see the class doc."""
        if self.levels is None:
            return self._level(preds_S, preds_T, gt_bboxes, img_shapes)
        for what, x in (("preds_S", preds_S), ("preds_T", preds_T)):
            if isinstance(x, Tensor) or not isinstance(x, Sequence) or len(x) != self.num_levels:
                got = (tuple(x.shape) if isinstance(x, Tensor) else
                       f"{len(x)} maps" if isinstance(x, Sequence) else type(x).__name__)
                raise ValueError(f"{_NAME}: {what} must be a sequence of num_levels = "
                                 f"{self.num_levels} maps (one per FPN level), got {got}")
        total, terms = 0.0, [0.0] * 4
        for level, s, t in zip(self.levels, preds_S, preds_T):
            total = total + level(s, t, gt_bboxes, img_shapes)
            for i, v in enumerate((level.last_fg, level.last_bg, level.last_at, level.last_global)):
                terms[i] = terms[i] + v
        lw = self.loss_weight
        self.last_fg, self.last_bg, self.last_at, self.last_global = (lw * v for v in terms)
        return lw * total

    @float32_math
    def _level(self, preds_S: Tensor, preds_T: Tensor, gt_bboxes, img_shapes) -> Tensor:
        for what, x, c in (("preds_S", preds_S, self.student_channels),
                           ("preds_T", preds_T, self.teacher_channels)):
            if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{_NAME}: {what} must be a float (N, C, H, W) Tensor, got {got}")
            if x.shape[1] != c:
                raise ValueError(f"{_NAME}: {what} has {x.shape[1]} channels, expected {c} "
                                 f"({'student' if what == 'preds_S' else 'teacher'}_channels)")
        if preds_S.shape[0] != preds_T.shape[0] or preds_S.shape[2:] != preds_T.shape[2:]:
            raise ValueError(f"{_NAME}: preds_S {tuple(preds_S.shape)} and preds_T "
                             f"{tuple(preds_T.shape)} must share N, H, W (one FPN level)")
        dtype = torch.promote_types(preds_S.dtype, preds_T.dtype)
        s, t = preds_S.to(dtype), preds_T.detach().to(dtype)
        if self.align is not None:
            s = F.conv2d(s, self.align.weight.to(dtype), self.align.bias.to(dtype))
        n, _, h, w = t.shape
        fg, bg = self.masks(gt_bboxes, img_shapes, (h, w), n, t.device, dtype)     # Eqs. 2-3
        att_s_t, att_c_t = fgd_attention(t, self.temperature)                     # Eqs. 4-5
        att_s_s, att_c_s = fgd_attention(s, self.temperature)
        err = (t - s).pow(2) * att_c_t[:, :, None, None] * att_s_t[:, None]       # Eq. 6
        fg_term = self.alpha_fgd * (err * fg[:, None]).sum() / n
        bg_term = self.beta_fgd * (err * bg[:, None]).sum() / n
        at_term = self.gamma_fgd * ((att_s_t - att_s_s).abs().sum()                # Eq. 7
                                    + (att_c_t - att_c_s).abs().sum()) / n
        context_T = self.context_S if self.context_T is None else self.context_T
        global_term = self.lambda_fgd * (context_T(t) - self.context_S(s)).pow(2).sum() / n  # Eq. 9
        lw = self.loss_weight
        self.last_fg, self.last_bg = lw * fg_term.detach(), lw * bg_term.detach()
        self.last_at, self.last_global = lw * at_term.detach(), lw * global_term.detach()
        return lw * (fg_term + bg_term + at_term + global_term)
