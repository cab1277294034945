"""SKD pair-wise similarity distillation (Liu et al., CVPR 2019, "Structured knowledge distillation
for semantic segmentation"). The pixel-wise term of SKD is :class:`PixelKDLoss`; the holistic
(adversarial, discriminator-based) term is not implemented."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import align_pair, check_int, check_maps, check_positive, low_memory
from ..precision import float32_math
from ...methods import Method, at_least

#: bcd.methods: params `type: PairwiseSimilarityLoss`, on the decoder's last features
METHOD = Method(
    type="PairwiseSimilarityLoss",
    inputs=dict(preds_S="student.head", preds_T="teacher.head"),
    settings=dict(scale={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                  pool_size=at_least(1)),
)


def node_similarity(feat: Tensor) -> Tensor:
    """Cosine-similarity matrix ``a_ij = f_i^T f_j / (|f_i| |f_j|)`` of one map's nodes.

    Args:
        feat: ``(C, H, W)`` node features of one image.

    Returns:
        ``(HW, HW)`` matrix.
    """
    x = F.normalize(feat.flatten(1), dim=0, eps=1e-8)  # (C, HW), unit columns
    return x.transpose(0, 1) @ x


def _squared_error_sum(s: Tensor, t: Tensor) -> Tensor:
    return (node_similarity(s) - node_similarity(t)).square().sum()


class PairwiseSimilarityLoss(nn.Module):
    """SKD's pair-wise distillation ``L_pa`` on features.

    Both maps are max-pooled into a grid of nodes (kernel = stride = ``(int(H scale),
    int(W scale))``, or ``pool_size``; ``ceil_mode=True`` so odd sizes keep their border), then
    for every image the node cosine similarities ``a_ij`` are compared::

        L_pa = loss_weight * 1 / (N M^2) sum_n sum_{i, j} (a^S_nij - a^T_nij)^2,   M = #nodes

    The teacher side is detached. A student map of another size is resized (bilinear) to the
    teacher's first; channel counts may differ (the similarities are ``M x M`` on both sides).
    The per-image matrices are built one image at a time under activation checkpointing, so the
    peak memory holds one ``M x M`` matrix set, not ``N`` of them.

    Args:
        scale: node size as a fraction of the map (SKD's ``pool_scale``); ``0.5`` gives a
            2 x 2 node grid. ``0 < scale <= 1``. Default ``0.5`` (SKD's released script).
        pool_size: explicit node size ``k`` or ``(kh, kw)`` in pixels; overrides ``scale``.
            ``1`` keeps every pixel a node. Default ``None``.
        loss_weight: factor of the returned loss (SKD used 0.5). Default ``1.0``.

    Shapes:
        preds_S: student features ``(N, C_S, H_S, W_S)``; preds_T: teacher features
        ``(N, C_T, H, W)``. Output: scalar.
    """

    def __init__(self, scale: float = 0.5, pool_size: int | tuple[int, int] | None = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        name = "PairwiseSimilarityLoss"
        self.scale = check_positive(name, "scale", scale)
        if self.scale > 1.0:
            raise ValueError(f"{name}: scale must be in (0, 1], got {scale!r}")
        if pool_size is not None:
            sizes = (pool_size, pool_size) if not isinstance(pool_size, (tuple, list)) else pool_size
            if len(sizes) != 2:
                raise ValueError(f"{name}: pool_size must be an int or a pair, got {pool_size!r}")
            pool_size = tuple(check_int(name, "pool_size", k, 1) for k in sizes)
        self.pool_size = pool_size
        self.loss_weight = float(loss_weight)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, pool_size={self.pool_size}, loss_weight={self.loss_weight}"

    def node_kernel(self, h: int, w: int) -> tuple[int, int]:
        """Pooling kernel (= stride) for an ``h x w`` map."""
        if self.pool_size is not None:
            return self.pool_size
        return max(1, int(h * self.scale)), max(1, int(w * self.scale))

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted mean squared difference of the node similarity matrices; see the class doc."""
        check_maps("PairwiseSimilarityLoss", preds_S, preds_T)
        s, t = align_pair(preds_S, preds_T)
        kernel = self.node_kernel(*t.shape[-2:])
        s = F.max_pool2d(s, kernel, kernel, ceil_mode=True)
        t = F.max_pool2d(t, kernel, kernel, ceil_mode=True)
        n, m = s.shape[0], s.shape[-2] * s.shape[-1]
        total = torch.stack([low_memory(_squared_error_sum, s[i], t[i]) for i in range(n)]).sum()
        return self.loss_weight * total / (n * m * m)
