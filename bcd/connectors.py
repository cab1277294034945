"""Hierarchical feature fusion ``X^c = Conv_3x3(concat(X_1; ...; X_L))`` (Sec. IV-A)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _init_conv_(conv: nn.Conv2d, generator: torch.Generator) -> None:
    """PyTorch's default Conv2d initialisation, drawn from ``generator``."""
    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
    if conv.bias is not None:
        fan_in = conv.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(conv.bias, -bound, bound, generator=generator)


class HierarchicalFusion(nn.Module):
    """Fuse backbone levels into one map at 1/``stride`` of the input (Sec. IV-A, ``T^c``/``S^c``).

    ``X^c = Conv_3x3(concat(resize(Conv_1x1(X_1)); ...; resize(Conv_1x1(X_L))))``: each level gets
    its own 1x1 conv to ``level_channels``, is resized to the target size (bilinear,
    ``align_corners=False``, for both up- and down-sampling), the levels are concatenated along
    channels and a 3x3 conv (padding 1) maps them to ``out_channels`` (256 in the paper).

    Target size: ``(ceil(H / stride), ceil(W / stride))`` if the image size ``input_size=(H, W)``
    is passed to ``forward``; otherwise it is derived from level 0, assumed to be at stride
    ``target_stride_of_first`` (4 for a ResNet's stem + layer1):
    ``ceil(H_0 * target_stride_of_first / stride)`` (``ceil(H_0 / 2)`` by default), and likewise
    for the width. A dilated ResNet (levels at 1/4, 1/8, 1/8, 1/8) and a plain one (1/4 ... 1/32)
    both give 1/8.

    Args:
        in_channels: channels of each level, one entry per level (``>= 1`` levels).
        out_channels: channels of the fused map. Default ``256``.
        level_channels: output channels of each level's 1x1 conv. The paper says only that the
            concatenated features have 256 channels; default ``None`` reads that literally:
            ``out_channels // L`` per level, so the concatenation has ``out_channels`` channels
            (4x cheaper 3x3 conv than ``out_channels`` per level, which is the alternative).
        stride: output stride of the fused map relative to the input. Default ``8``.
        frozen: if True, no parameter requires grad and the module stays in eval mode even
            after ``.train()``. Default ``False``.
        init_seed: if given, the weights are initialised (PyTorch's default scheme) from a
            ``torch.Generator`` with this seed, so a frozen random projection is reproducible.
            Default ``None`` (global RNG).
        target_stride_of_first: assumed stride of level 0 when ``input_size`` is not given.
            Default ``4``.

    Shapes:
        feats: sequence of ``L`` tensors ``(N, C_l, H_l, W_l)`` (or one tensor ``(N, C_0, H_0, W_0)``
        when ``L = 1``). Output: ``(N, out_channels, H_out, W_out)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        stride: int = 8,
        frozen: bool = False,
        init_seed: int | None = None,
        target_stride_of_first: int = 4,
        level_channels: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, int):
            in_channels = [in_channels]
        in_channels = list(in_channels)
        if not in_channels or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in in_channels
        ):
            raise ValueError(
                f"HierarchicalFusion: in_channels must be a non-empty list of ints >= 1, got {in_channels!r}"
            )
        for name, value in (
            ("out_channels", out_channels),
            ("stride", stride),
            ("target_stride_of_first", target_stride_of_first),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"HierarchicalFusion: {name} must be an int >= 1, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.frozen = bool(frozen)
        self.init_seed = init_seed
        self.target_stride_of_first = target_stride_of_first
        if level_channels is None:
            level_channels = max(1, out_channels // len(in_channels))
        if isinstance(level_channels, bool) or not isinstance(level_channels, int) or level_channels < 1:
            raise ValueError(f"HierarchicalFusion: level_channels must be an int >= 1, got {level_channels!r}")
        self.level_channels = level_channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, level_channels, kernel_size=1) for c in in_channels)
        self.fuse_conv = nn.Conv2d(len(in_channels) * level_channels, out_channels, kernel_size=3, padding=1)
        if init_seed is not None:
            generator = torch.Generator().manual_seed(int(init_seed))
            with torch.no_grad():
                for conv in [*self.lateral_convs, self.fuse_conv]:
                    _init_conv_(conv, generator)
        if self.frozen:
            for param in self.parameters():
                param.requires_grad_(False)
            super().train(False)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, level_channels={self.level_channels}, "
            f"out_channels={self.out_channels}, stride={self.stride}, "
            f"frozen={self.frozen}, init_seed={self.init_seed}"
        )

    def train(self, mode: bool = True) -> "HierarchicalFusion":
        """Set train/eval mode; a frozen fusion always stays in eval mode."""
        return super().train(False if self.frozen else mode)

    def target_size(self, feats: Sequence[Tensor], input_size: Sequence[int] | None = None) -> tuple[int, int]:
        """Spatial size ``(H_out, W_out)`` of the fused map (see the class doc)."""
        if input_size is not None:
            if len(input_size) != 2 or any(int(s) < 1 for s in input_size):
                raise ValueError(
                    f"HierarchicalFusion: input_size must be (H, W) with positive ints, got {input_size!r}"
                )
            return tuple(math.ceil(int(s) / self.stride) for s in input_size)  # type: ignore[return-value]
        h0, w0 = feats[0].shape[-2:]
        ratio = self.target_stride_of_first / self.stride
        return (max(1, math.ceil(h0 * ratio)), max(1, math.ceil(w0 * ratio)))

    def forward(self, feats: Sequence[Tensor] | Tensor, input_size: Sequence[int] | None = None) -> Tensor:
        """Fuse the levels; ``input_size=(H, W)`` of the image fixes the output size if given."""
        if isinstance(feats, Tensor):
            feats = [feats]
        feats = list(feats)
        if len(feats) != len(self.in_channels):
            raise ValueError(
                f"HierarchicalFusion: expected {len(self.in_channels)} levels, got {len(feats)}"
            )
        for level, (x, channels) in enumerate(zip(feats, self.in_channels)):
            if not isinstance(x, Tensor) or x.dim() != 4:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"HierarchicalFusion: level {level} must be (N, C, H, W), got {shape}")
            if x.shape[1] != channels:
                raise ValueError(
                    f"HierarchicalFusion: level {level} has {x.shape[1]} channels, expected {channels}"
                )
            if x.shape[0] != feats[0].shape[0]:
                raise ValueError(
                    f"HierarchicalFusion: level {level} has batch size {x.shape[0]}, level 0 has "
                    f"{feats[0].shape[0]}"
                )
        size = self.target_size(feats, input_size)
        resized = []
        for x, conv in zip(feats, self.lateral_convs):
            y = conv(x)
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            resized.append(y)
        return self.fuse_conv(torch.cat(resized, dim=1))
