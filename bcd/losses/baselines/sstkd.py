"""SSTKD: structural and statistical texture knowledge distillation (Ji et al., CVPR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import align_pair, check_channels, check_int, check_maps, conv
from ..precision import float32_math
from ...methods import Method, WEIGHT, at_least

#: bcd.methods: params `type: SSTKDLoss`, on the first backbone level (widths from the models)
METHOD = Method(
    type="SSTKDLoss",
    inputs=dict(preds_S="student.low", preds_T="teacher.low"),
    settings=dict(levels=at_least(1), bins=at_least(2), structural_weight=WEIGHT,
                  statistical_weight=WEIGHT),
    channels=dict(student_channels="preds_S", teacher_channels="preds_T"),
)


def laplacian_pyramid(feat: Tensor, levels: int) -> Tensor:
    """Laplacian pyramid of a feature map, every band resized back to the input size.

    ``G_0 = x``, ``G_{l+1} = avgpool_2x2(G_l)`` (``ceil_mode``), band ``L_l = G_l - up(G_{l+1})``
    for ``l < levels`` and the low-pass residual ``G_levels``; ``up`` is bilinear
    (``align_corners=False``). The bands sum back to ``x`` before the final resizing.

    Args:
        feat: ``(N, C, H, W)``.
        levels: number of band-pass levels ``>= 1``.

    Returns:
        ``(N, (levels + 1) C, H, W)``: the bands ``L_0 .. L_{levels-1}, G_levels`` concatenated.
    """
    size, bands, g = feat.shape[-2:], [], feat
    for _ in range(levels):
        down = F.avg_pool2d(g, 2, 2, ceil_mode=True)
        bands.append(g - F.interpolate(down, size=g.shape[-2:], mode="bilinear", align_corners=False))
        g = down
    bands.append(g)
    return torch.cat([b if b.shape[-2:] == size
                      else F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                      for b in bands], dim=1)


def intensity_histogram(feat: Tensor, bins: int) -> Tensor:
    """Soft histogram of the per-pixel intensities ``s_i = cos(f_i, mean_j f_j)`` of each image.

    The quantisation-and-counting statistic of STLNet / SSTKD with fixed levels
    ``c_l = -1 + 2 l / (bins - 1)`` on the cosine's range ``[-1, 1]`` and triangular (linear)
    assignment ``E_il = max(0, 1 - |s_i - c_l| (bins - 1) / 2)``, which sums to 1 over ``l``;
    ``h_l = mean_i E_il``.

    Args:
        feat: ``(N, C, H, W)``.
        bins: number of levels ``>= 2``.

    Returns:
        ``(N, bins)`` histograms, each summing to 1.
    """
    mean = feat.mean(dim=(2, 3), keepdim=True).expand_as(feat)
    intensity = F.cosine_similarity(feat, mean, dim=1, eps=1e-8).flatten(1)  # (N, HW)
    centres = torch.linspace(-1.0, 1.0, bins, dtype=feat.dtype, device=feat.device)
    assign = (1.0 - (intensity.unsqueeze(-1) - centres).abs() * ((bins - 1) / 2.0)).clamp_min(0.0)
    return assign.mean(dim=1)


class SSTKDLoss(nn.Module):
    """SSTKD on (low-level) features: structural texture (Laplacian pyramid) + statistical texture.

    Structural: the pyramid bands of the student (:func:`laplacian_pyramid`, ``(L+1) C_S``
    channels) go through a learnable 1x1 fusion conv to ``(L+1) C_T`` channels (block-diagonal
    identity at init when ``C_S == C_T``) and are compared with the teacher's bands. Statistical:
    the soft intensity histograms of :func:`intensity_histogram` (channel-count independent, so
    no projection)::

        L_str  = MSE(Fuse(LP(S)), LP(T))                (mean over N (L+1) C_T H W)
        L_stat = MSE(hist(S), hist(T))                  (mean over N bins)
        L = loss_weight * (structural_weight L_str + statistical_weight L_stat)

    The teacher is detached; student maps of another size are resized (bilinear) to the
    teacher's first. ``last_structural``, ``last_statistical``: weighted terms (detached).

    Args:
        student_channels, teacher_channels: ``C_S``, ``C_T``.
        levels: pyramid band-pass levels ``L``. Default ``3``.
        bins: histogram levels. Default ``16``.
        structural_weight, statistical_weight, loss_weight: Defaults ``1.0``.

    Shapes:
        preds_S ``(N, C_S, H_S, W_S)``, preds_T ``(N, C_T, H, W)``. Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, levels: int = 3, bins: int = 16,
                 structural_weight: float = 1.0, statistical_weight: float = 1.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        cs = self.student_channels = check_int("SSTKDLoss", "student_channels", student_channels, 1)
        ct = self.teacher_channels = check_int("SSTKDLoss", "teacher_channels", teacher_channels, 1)
        self.levels = check_int("SSTKDLoss", "levels", levels, 1)
        self.bins = check_int("SSTKDLoss", "bins", bins, 2)
        self.structural_weight, self.statistical_weight = float(structural_weight), float(statistical_weight)
        self.loss_weight = float(loss_weight)
        self.fuse = nn.Conv2d((levels + 1) * cs, (levels + 1) * ct, kernel_size=1)
        if cs == ct:
            with torch.no_grad():
                self.fuse.weight.copy_(torch.eye((levels + 1) * cs).view((levels + 1) * cs, -1, 1, 1))
                self.fuse.bias.zero_()
        self.last_structural: Tensor | None = None
        self.last_statistical: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, bins={self.bins}, structural_weight={self.structural_weight}, "
                f"statistical_weight={self.statistical_weight}, loss_weight={self.loss_weight}")

    @float32_math
    def forward(self, preds_S: Tensor, preds_T: Tensor) -> Tensor:
        """Weighted structural plus statistical texture terms; see the class doc."""
        check_maps("SSTKDLoss", preds_S, preds_T)
        check_channels("SSTKDLoss", preds_S, preds_T, self.student_channels, self.teacher_channels)
        s, t = align_pair(preds_S, preds_T)
        structural = F.mse_loss(conv(laplacian_pyramid(s, self.levels), self.fuse),
                                laplacian_pyramid(t, self.levels))
        statistical = F.mse_loss(intensity_histogram(s, self.bins), intensity_histogram(t, self.bins))
        structural, statistical = self.structural_weight * structural, self.statistical_weight * statistical
        self.last_structural = self.loss_weight * structural.detach()
        self.last_statistical = self.loss_weight * statistical.detach()
        return self.loss_weight * (structural + statistical)
