"""Boundary distillation (Sec. IV-B, Eq. 2-3).

Readings of Eq. 2-3 (docs/method.md, "Eq. 2-3 Boundary distillation"), chosen by two arguments
of :class:`BoundaryDistillLoss`:

* ``form``: what ``rho`` normalises. ``'affinity'``: softmax over the partners ``j`` of pixel
  ``i`` of the bounded affinities ``a_ij = 1 - max_{p in Pi_ij} B_p``; ``'line'``: the same
  softmax of the unbounded line-max logits ``-max_{p in Pi_ij} z_p``; ``'spatial'``: the
  "spatial-wise softmax" over all ``H W`` positions of the boundary logits ``z`` (one
  distribution per image, as CWD normalises each channel).
* ``teacher``: where the teacher's boundary logits come from. ``'probe'``: a 1x1 conv on the
  teacher's fused features, trained by a label-affinity probe on the ground truth;
  ``'probe_pred'``: the same probe on the teacher's own argmax prediction; ``'prediction'``:
  no parameters, from the teacher's class probabilities (:func:`prediction_boundary_logits`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedule import AdaptiveTemperature, build_temperature
from ._kl import tempered_kl
from ._checks import check_maps
from .pairs import line_max, pair_lines, partner_mask, shifted
from .precision import float32_math
from ..methods import INTEGER, Method, WEIGHT, at_least, choice, temperature

FORMS = ("affinity", "line", "spatial")
TEACHERS = ("probe", "probe_pred", "prediction")
DEFAULT_FORM, DEFAULT_TEACHER = "affinity", "probe"

#: bcd.methods: params `type: BoundaryDistillLoss`, on the fused features (Sec. IV-A) and, by
#: its `teacher` reading, the labels (probe) or the teacher's logits (probe_pred, prediction)
METHOD = Method(
    type="BoundaryDistillLoss",
    inputs=dict(preds_S="student.fused", preds_T="teacher.fused", gt_seg="labels"),
    settings=dict(
        radius=at_least(1), teacher_probe_weight=WEIGHT, ignore_index=INTEGER,
        temperature=temperature(
            "prob_range", "logit_range", "relative_range",
            description="BD's temperature: the arguments of `temperature`, and the statistic "
                        "relative_range (probabilities times the number of entries of their "
                        "distribution; docs/method.md, \"Adaptive temperature\"), which only "
                        "BoundaryDistillLoss computes"),
        form=choice(*FORMS, description=(
            "what Eq. 3's softmax normalises (docs/method.md, Eq. 2-3): affinity (per pixel, "
            "over its partners, of the bounded affinities; default), line (the same, of the "
            "unbounded line-max logits) or spatial (per image, over all positions, of the "
            "boundary logits)")),
        teacher=choice(*TEACHERS, default=DEFAULT_TEACHER, description=(
            "the teacher's boundary (docs/method.md, Eq. 2-3): probe (1x1 conv trained by a "
            "probe on the ground-truth labels; default), probe_pred (the same probe on the "
            "teacher's own prediction) or prediction (from the teacher's class probabilities, "
            "no parameters); probe_pred and prediction use no ground truth"))),
    inputs_by=dict(teacher=dict(
        probe_pred=dict(teacher_logits="teacher.logits", gt_seg=None),
        prediction=dict(teacher_logits="teacher.logits", gt_seg=None))),
    channels=dict(in_channels="preds_S"),
    scheduled=True,
)


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


def class_probabilities_at(teacher_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``softmax`` over the classes of ``teacher_logits``, resized bilinearly to ``size``.

    Bilinear interpolation (``align_corners=False``) of probabilities gives probabilities (a
    convex combination per pixel); at equal size it is the identity.

    Args:
        teacher_logits: ``(N, K, h, w)`` class logits.
        size: the target ``(H, W)``.

    Returns:
        ``(N, K, H, W)`` probabilities, detached.
    """
    probs = torch.softmax(teacher_logits.detach(), dim=1)
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs


#: the 8-neighbourhood of :func:`prediction_boundary`
NEIGHBOURS_8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def prediction_boundary(probs: Tensor) -> Tensor:
    """Boundary probability ``b_i = 1 - min_{j in N(i)} <p_i, p_j>`` from class probabilities.

    ``<p_i, p_j>`` is the probability that pixels ``i`` and ``j`` get the same class when each
    draws its class from its own distribution, so ``b_i`` is the largest probability, over
    ``i``'s neighbours, that a neighbour is of another class. ``N(i)`` is the 8-neighbourhood
    inside the map (no padding: a border pixel has fewer neighbours; a 1x1 map has none and
    ``b = 0``). With one-hot ``p``, ``b_i = 1`` exactly at the pixels with a neighbour of
    another class (both sides of a class border) and 0 elsewhere.

    Args:
        probs: ``(N, K, H, W)`` class probabilities (e.g. :func:`class_probabilities_at`).

    Returns:
        ``(N, H, W)`` boundary probabilities in ``[0, 1]``.
    """
    h, w = probs.shape[-2:]
    padded = F.pad(probs, (1, 1, 1, 1))
    inf = torch.tensor(float("inf"), dtype=probs.dtype, device=probs.device)
    rows = torch.arange(h, device=probs.device).view(h, 1)
    cols = torch.arange(w, device=probs.device).view(1, w)
    same = []
    for dy, dx in NEIGHBOURS_8:
        neighbour = padded[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        inside = (rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
        same.append(torch.where(inside, (probs * neighbour).sum(dim=1), inf))
    least = torch.stack(same).amin(dim=0)  # (N, H, W); inf where no neighbour
    return (1.0 - least).clamp(min=0.0, max=1.0)


def prediction_boundary_logits(teacher_logits: Tensor, size: tuple[int, int],
                               eps: float = 1e-4) -> Tensor:
    """Teacher boundary logits from its prediction: ``z = logit(clamp(b, eps, 1 - eps))``.

    ``b`` is :func:`prediction_boundary` of the teacher's class probabilities at ``size``
    (:func:`class_probabilities_at`). No parameters and no ground truth; detached.

    Args:
        teacher_logits: ``(N, K, h, w)`` class logits of the teacher.
        size: the fused map's ``(H, W)``.
        eps: clamp of ``b`` before the logit, in ``(0, 0.5)``; ``1e-4`` bounds ``|z|`` by
            ``9.21``. Default ``1e-4``.

    Returns:
        ``(N, H, W)`` logits in the logits' dtype.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"prediction_boundary_logits: eps must lie in (0, 0.5), got {eps}")
    b = prediction_boundary(class_probabilities_at(teacher_logits, size))
    return torch.logit(b.clamp(eps, 1.0 - eps))


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
    """Boundary distillation loss ``L_BD`` (Eq. 3) on boundary maps (Eq. 2).

    For fused features ``S^c`` and ``T^c`` (``preds_S``, ``preds_T``) the student's boundary
    logits are ``z^S = Conv_1x1(S^c)`` (``student_conv``; the boundary map is
    ``B = sigmoid(z)``, relaxing the paper's 0/1 output, which has no gradient). The teacher's
    ``z^T`` depends on ``teacher``:

    * ``'probe'`` (default): ``z^T = Conv_1x1(T^c)`` (``teacher_conv``), trained, when
      ``gt_seg`` is given, by :func:`label_affinity_probe` on the ground-truth labels, with
      weight ``teacher_probe_weight`` (not ``loss_weight``; the KD term alone is minimised by
      constant maps). Its gradient reaches ``teacher_conv`` (and ``preds_T`` if it requires
      grad), never the student.
    * ``'probe_pred'``: the same, but the probe's classes are the teacher's own prediction
      (argmax of ``teacher_logits``, resized nearest to the fused size): no ground truth.
    * ``'prediction'``: ``z^T`` = :func:`prediction_boundary_logits` of ``teacher_logits``; no
      parameters, no ground truth, meaningful at iteration 1. ``teacher_conv`` is kept (so state
      dicts keep their keys) but frozen and unused.

    ``form`` says what is distilled (``tau`` the temperature, ``P`` partners within ``radius``
    along the lines ``Pi_ij`` of Eq. 2)::

        'affinity' (default): L = w mean_{n,i} tau^2 KL(rho_j(a^T_ij / tau) || rho_j(a^S_ij / tau)),
                              a_ij = 1 - max_{p in Pi_ij} sigmoid(z_p)      (bounded, (0, 1))
        'line':               as 'affinity' with a_ij replaced by -max_{p in Pi_ij} z_p
        'spatial':            L = w mean_n tau^2 KL(rho_HW(z^T_n / tau) || rho_HW(z^S_n / tau))

    (``w = loss_weight``; per-pixel forms: mean over the ``N H W`` pixels instead of the paper's
    sum; ``'spatial'``: one KL between two distributions over the ``H W`` positions per image,
    mean over the batch). The teacher side of the KD term is detached. ``loss_weight`` may be
    changed between calls (e.g. multiplied by r(t), Eq. 8).

    Args:
        in_channels: channels ``C`` of the fused features. Default ``256``.
        radius: pair radius in feature pixels (4 at 1/8 resolution = 32 input pixels); used by
            the ``'affinity'`` and ``'line'`` forms and by the probes. Default ``4``.
        loss_weight: alpha of Eq. 6, multiplies the KD term. Default ``10.0``.
        temperature: ``None`` (fixed tau = 1), a dict of :class:`AdaptiveTemperature` arguments,
            or an instance (used as is). Its statistic is taken on the teacher side of the
            softmax of ``form``. Default ``None``.
        teacher_probe_weight: weight of the teacher-side probe (``'probe'``, ``'probe_pred'``);
            0 disables it. Default ``1.0``.
        ignore_index: label value ignored by the ``'probe'`` probe. Default ``255``.
        form: ``'affinity'``, ``'line'`` or ``'spatial'`` (see above). Default ``'affinity'``.
        teacher: ``'probe'``, ``'probe_pred'`` or ``'prediction'`` (see above). Default
            ``'probe'``.

    Shapes:
        preds_S, preds_T: ``(N, C, H, W)``; gt_seg: ``(N, H0, W0)`` or ``(N, 1, H0, W0)`` integer
        labels (resized to ``(H, W)`` by nearest-neighbour); teacher_logits: ``(N, K, h, w)``
        class logits of the teacher (needed by ``'probe_pred'`` and ``'prediction'``, ignored
        otherwise). Output: scalar.

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
        form: str = DEFAULT_FORM,
        teacher: str = DEFAULT_TEACHER,
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
        if form not in FORMS:
            raise ValueError(f"BoundaryDistillLoss: form must be one of {FORMS}, got {form!r}")
        if teacher not in TEACHERS:
            raise ValueError(
                f"BoundaryDistillLoss: teacher must be one of {TEACHERS}, got {teacher!r}"
            )
        self.in_channels = in_channels
        self.radius = radius
        self.loss_weight = float(loss_weight)
        self.teacher_probe_weight = float(teacher_probe_weight)
        self.ignore_index = int(ignore_index)
        self.form = form
        self.teacher = teacher
        self.student_conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.teacher_conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        if teacher == "prediction":  # kept for the state dict's keys; never used or trained
            self.teacher_conv.requires_grad_(False)
        self.temperature = build_temperature(temperature)
        self.last_kd: Tensor | None = None
        self.last_probe: Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, teacher={self.teacher!r}, radius={self.radius}, "
            f"loss_weight={self.loss_weight}, teacher_probe_weight={self.teacher_probe_weight}, "
            f"ignore_index={self.ignore_index}"
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

    def _check_teacher_logits(self, teacher_logits: Tensor | None, n: int) -> Tensor:
        if teacher_logits is None:
            raise ValueError(
                f"BoundaryDistillLoss: teacher={self.teacher!r} reads the teacher's class logits; "
                "pass teacher_logits (N, K, h, w)"
            )
        if (teacher_logits.dim() != 4 or teacher_logits.shape[0] != n
                or not teacher_logits.is_floating_point()):
            raise ValueError(
                f"BoundaryDistillLoss: teacher_logits must be float (N, K, h, w) with N = {n}, "
                f"got {teacher_logits.dtype} {tuple(teacher_logits.shape)}"
            )
        return teacher_logits.detach()

    def teacher_boundary_logits(self, preds_T: Tensor,
                                teacher_logits: Tensor | None = None) -> Tensor:
        """The teacher's boundary logits ``z^T`` ``(N, H, W)`` under ``teacher`` (class doc).

        Attached to ``teacher_conv`` for the probe readings (the probe trains it), detached for
        ``'prediction'``.
        """
        if self.teacher == "prediction":
            logits = self._check_teacher_logits(teacher_logits, preds_T.shape[0])
            z = prediction_boundary_logits(logits.to(preds_T.dtype), tuple(preds_T.shape[-2:]))
            return z.to(preds_T.dtype)
        return boundary_logits(preds_T, self.teacher_conv)

    def _probe_labels(self, gt_seg: Tensor | None, teacher_logits: Tensor | None, n: int,
                      size: tuple[int, int], device) -> Tensor | None:
        """Classes for the probe: the ground truth (``'probe'``) or the teacher's argmax."""
        if self.teacher == "probe_pred":
            logits = self._check_teacher_logits(teacher_logits, n)
            return self._labels_at(logits.argmax(dim=1).to(device), n, size)
        if gt_seg is None:
            return None
        return self._labels_at(gt_seg.to(device), n, size)

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_seg: Tensor | None = None,
                teacher_logits: Tensor | None = None) -> Tensor:
        """Weighted KD term plus (probe readings) the weighted teacher probe; see the class doc."""
        check_feature_pair("BoundaryDistillLoss", preds_S, preds_T, self.in_channels)
        n, _, h, w = preds_S.shape
        dtype = torch.promote_types(preds_S.dtype, preds_T.dtype)
        preds_S, preds_T = preds_S.to(dtype), preds_T.to(dtype)

        z_S = boundary_logits(preds_S, self.student_conv)  # (N, H, W)
        z_T = self.teacher_boundary_logits(preds_T, teacher_logits)
        valid = partner_mask(pair_lines(self.radius).offsets, h, w, device=preds_S.device)
        z_max_T = None
        if self.form == "spatial":
            # Eq. 3 with rho over the H W positions: one distribution per image.
            t_in, s_in, dim, mask = z_T.flatten(1), z_S.flatten(1), 1, None  # (N, HW)
        else:
            z_max_S = line_max(z_S, self.radius)  # (N, P, H, W)
            z_max_T = line_max(z_T, self.radius)
            if self.form == "affinity":  # Eq. 2: a_ij = 1 - max_p B_p = sigmoid(-max_p z_p)
                t_in, s_in = torch.sigmoid(-z_max_T), torch.sigmoid(-z_max_S)
            else:  # 'line': the affinities' unbounded logits
                t_in, s_in = -z_max_T, -z_max_S
            dim, mask = 1, valid.unsqueeze(0)
        if self.training:
            self.temperature.update(t_in.detach(), dim=dim, mask=mask)
        kl = tempered_kl(t_in, s_in, self.temperature.tau, dim=dim, mask=mask)  # (N,) / (N, H, W)
        # Per-pixel forms: every pixel of a map with >= 2 pixels has an in-map partner; a 1x1
        # map has none and KL 0. Spatial: a 1x1 map is one position, KL 0.
        loss = self.loss_weight * kl.mean()
        self.last_kd = loss.detach()

        probe = loss.new_zeros(())
        if self.teacher in ("probe", "probe_pred") and self.teacher_probe_weight > 0.0:
            labels = self._probe_labels(gt_seg, teacher_logits, n, (h, w), preds_S.device)
            if labels is not None:
                if z_max_T is None:
                    z_max_T = line_max(z_T, self.radius)
                probe = self.teacher_probe_weight * label_affinity_probe(
                    z_max_T, labels, self.radius, valid, self.ignore_index
                )
                loss = loss + probe
        self.last_probe = probe.detach()
        return loss
