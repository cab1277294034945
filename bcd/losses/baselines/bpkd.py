"""BPKD: boundary-privileged knowledge distillation (Liu et al., WACV 2024): edge and body terms."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._kl import tempered_kl
from ._common import align_pair, check_int, check_maps, check_positive, labels_at
from ..precision import float32_math
from ...methods import Method, INTEGER, POSITIVE, WEIGHT, at_least

#: bcd.methods: params `type: BPKDLoss`, on the segmentation logits and the labels
METHOD = Method(
    type="BPKDLoss",
    inputs=dict(preds_S="student.logits", preds_T="teacher.logits", gt_labels="labels"),
    settings=dict(kernel_size=at_least(1), compute_iters=at_least(1), tau=POSITIVE,
                  edge_weight=WEIGHT, body_weight=WEIGHT,
                  class_weight={"type": "array", "items": WEIGHT}, ignore_index=INTEGER),
)


def edge_body_masks(labels: Tensor, kernel_size: int, compute_iters: int,
                    ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Split the labelled pixels into an edge band and the body, from per-class GT masks.

    For every class ``k`` present, its binary mask ``m_k`` is dilated and eroded ``compute_iters``
    times with a ``kernel_size x kernel_size`` square (``max_pool2d`` of ``m_k`` and of ``-m_k``,
    stride 1; the map border neither dilates nor erodes). A pixel is an edge pixel when it lies in
    ``dilate(m_k) - erode(m_k)`` for some ``k``; the edge band is therefore about
    ``compute_iters * (kernel_size - 1)`` pixels wide, straddling every class border (also
    borders with ignored pixels). Body = labelled and not edge.

    Args:
        labels: ``(N, H, W)`` long labels.
        kernel_size: odd structuring-element size ``>= 1`` (1 gives no edges).
        compute_iters: number of dilation / erosion steps ``>= 1``.
        ignore_index: label value that belongs to no class. Default ``255``.

    Returns:
        ``(edge, body)``: two ``(N, H, W)`` bool masks over the labelled pixels.
    """
    valid = (labels != ignore_index) & (labels >= 0)
    if not bool(valid.any()):
        return valid, valid
    k = int(labels[valid].max()) + 1
    masks = F.one_hot(torch.where(valid, labels, 0), k).permute(0, 3, 1, 2).float()
    masks = masks * valid.unsqueeze(1)
    dilated, eroded, pad = masks, masks, kernel_size // 2
    for _ in range(compute_iters):
        dilated = F.max_pool2d(dilated, kernel_size, 1, pad)
        eroded = -F.max_pool2d(-eroded, kernel_size, 1, pad)
    edge = (dilated > eroded).any(dim=1) & valid
    return edge, valid & ~edge


class BPKDLoss(nn.Module):
    """BPKD on segmentation logits: a pixel-level edge term and a CWD-style body term.

    With ``E`` / ``B`` the edge / body masks of :func:`edge_body_masks` (labels resized,
    nearest, to the teacher logits' size), ``p(.) = softmax(. / tau)`` and ``w_y`` the optional
    class weight of the pixel's label::

        L_edge = 1 / |E| sum_{i in E} w_{y_i} tau^2 KL(p(z^T_{:,i}) || p(z^S_{:,i}))   (over classes)
        L_body = 1 / (N K) sum_{n, k} tau^2 KL(p(z^T_{n,k,B}) || p(z^S_{n,k,B}))        (over body pixels)
        L = loss_weight * (edge_weight L_edge + body_weight L_body)

    The body softmax runs over each class channel's body pixels only (CWD restricted to the
    body: non-body pixels are excluded, not zero-filled); the edge term is pixel-wise KD over the
    classes. A term with no pixels is 0. The teacher side is detached; student logits of another
    size are resized (bilinear) to the teacher's. Weighted terms of the last call:
    ``last_edge``, ``last_body`` (detached).

    Args:
        kernel_size: dilation / erosion kernel, odd. Default ``3``.
        compute_iters: dilation / erosion steps. Default ``1``.
        tau: temperature of both terms. Default ``1.0``.
        edge_weight, body_weight: Defaults ``1.0``, ``1.0``.
        class_weight: optional per-class weights ``w`` of the edge term. Default ``None``.
        ignore_index: Default ``255``. loss_weight: Default ``1.0``.

    Shapes:
        preds_S ``(N, K, H_S, W_S)``, preds_T ``(N, K, H, W)`` logits; gt_labels
        ``(N, H0, W0)`` or ``(N, 1, H0, W0)``. Output: scalar.
    """

    def __init__(self, kernel_size: int = 3, compute_iters: int = 1, tau: float = 1.0,
                 edge_weight: float = 1.0, body_weight: float = 1.0,
                 class_weight: Sequence[float] | None = None, ignore_index: int = 255,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.kernel_size = check_int("BPKDLoss", "kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"BPKDLoss: kernel_size must be odd, got {kernel_size}")
        self.compute_iters = check_int("BPKDLoss", "compute_iters", compute_iters, 1)
        self.tau = check_positive("BPKDLoss", "tau", tau)
        self.edge_weight, self.body_weight = float(edge_weight), float(body_weight)
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]
        self.ignore_index, self.loss_weight = int(ignore_index), float(loss_weight)
        self.last_edge: Tensor | None = None
        self.last_body: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, compute_iters={self.compute_iters}, tau={self.tau}, "
                f"edge_weight={self.edge_weight}, body_weight={self.body_weight}, "
                f"loss_weight={self.loss_weight}")

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor, gt_labels: Tensor) -> Tensor:
        """Weighted edge plus body terms; see the class doc."""
        check_maps("BPKDLoss", preds_S, preds_T, same_channels=True)
        s, t = align_pair(preds_S, preds_T)
        n, k = t.shape[:2]
        labels = labels_at("BPKDLoss", gt_labels, n, t.shape[-2:], t.device)
        edge, body = edge_body_masks(labels, self.kernel_size, self.compute_iters, self.ignore_index)

        per_pixel = tempered_kl(t, s, self.tau, dim=1)  # (N, H, W)
        if self.class_weight is not None and bool(edge.any()):
            top = int(labels[edge].max())
            if top >= len(self.class_weight):
                raise ValueError(f"BPKDLoss: class_weight has {len(self.class_weight)} entries, "
                                 f"but the labels go up to {top}")
            weights = torch.tensor(self.class_weight, dtype=s.dtype, device=s.device)
            per_pixel = per_pixel * weights[torch.where(edge, labels, 0)]
        edge_term = per_pixel[edge].mean() if bool(edge.any()) else s.sum() * 0.0

        per_channel = tempered_kl(t.flatten(2), s.flatten(2), self.tau, dim=-1,
                                  mask=body.flatten(1).unsqueeze(1))  # (N, K)
        body_term = per_channel.sum() / (n * k)

        edge_term, body_term = self.edge_weight * edge_term, self.body_weight * body_term
        self.last_edge = self.loss_weight * edge_term.detach()
        self.last_body = self.loss_weight * body_term.detach()
        return self.loss_weight * (edge_term + body_term)
