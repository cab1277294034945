"""EfficientNet-B1 as a dilated segmentation backbone (Tan & Le, ICML 2019, arXiv:1905.11946).

Written from the paper's Table 1 (the B0 stages) and its compound scaling: B1 has width 1.0 and
depth 1.1, i.e. ``ceil(1.1 x repeats)`` blocks per stage (23 MBConv blocks). Each block is an
MBConv (MobileNetV2's inverted residual) with squeeze-excitation (ratio 0.25 of the block's input
channels), Swish activations and stochastic depth (drop-path rate 0.2, linear in the block index).
The classifier end (1x1 conv to 1280, pooling, FC) is left out: the segmentation heads read the
stage outputs. As in mmseg's dilated MobileNetV2, the strides of stages 4 and 6 become dilations
(2 and 4) for output stride 8. mmcv's ``ConvModule`` and ``DropPath`` are the building blocks;
mmseg's ``InvertedResidualV3`` has SE but no dilation, so the block is written here.
"""
from __future__ import annotations

import math

import torch
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) of B0 (paper Table 1, stages 2-8)
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
#: stage indices (0-based) whose outputs are the levels: strides 4, 8, 16, 32 before dilation
OUT_STAGES = (1, 2, 4, 6)


def round_channels(channels: float, multiple: int = 8) -> int:
    """EfficientNet's ``round_filters``: nearest multiple of 8, never 10% below ``channels``."""
    out = max(multiple, int(channels + multiple / 2) // multiple * multiple)
    return out + multiple if out < 0.9 * channels else out


def stage_channels(width: float = 1.0) -> list[int]:
    """Output channels of the 7 stages at width multiplier ``width``."""
    return [round_channels(c * width) for _, _, _, c, _ in B0_STAGES]


class SqueezeExcite(nn.Module):
    """SE: global average pool, 1x1 conv to ``squeeze`` channels, Swish, 1x1 conv, sigmoid gate."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with SE (EfficientNet's block).

    1x1 expand (skipped at ratio 1), k x k depthwise (stride or dilation), SE, 1x1 project (no
    activation); identity shortcut with drop-path when stride 1 and channels unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int,
                 stride: int = 1, dilation: int = 1, se_ratio: float = 0.25,
                 drop_path: float = 0.0, norm_cfg: dict | None = None):
        super().__init__()
        norm_cfg = norm_cfg or dict(type="BN")
        act = dict(type="Swish")
        mid = in_channels * expand_ratio
        self.expand = (ConvModule(in_channels, mid, 1, norm_cfg=norm_cfg, act_cfg=act)
                       if expand_ratio != 1 else nn.Identity())
        self.depthwise = ConvModule(mid, mid, kernel_size, stride=stride,
                                    padding=dilation * (kernel_size // 2), dilation=dilation,
                                    groups=mid, norm_cfg=norm_cfg, act_cfg=act)
        self.se = SqueezeExcite(mid, max(1, int(in_channels * se_ratio)))
        self.project = ConvModule(mid, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop_path(out) if self.residual else out


@MODELS.register_module(force=True)
class EfficientNetB1(BaseModule):
    """EfficientNet-B1 features at output stride 8 (levels at strides 4, 8, 8, 8).

    Args:
        width: width multiplier (B1: 1.0); channels are rounded to multiples of 8.
        depth: depth multiplier (B1: 1.1); blocks per stage = ``ceil(depth x repeats)``.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0). Default 0.2.
        dilated: output stride 8 (stages 4-5 dilation 2, 6-7 dilation 4) instead of 32.
        out_stages: stages whose outputs are returned (0-based). Default ``(1, 2, 4, 6)``.
        norm_cfg: norm layer config. Default BN.
        init_cfg: mmengine init config (ImageNet weights: ``type='Pretrained'``).

    Shapes: input ``(N, 3, H, W)``; output a tuple of ``(N, C_l, H_l, W_l)``, one per out stage,
    ``C_l`` = :func:`stage_channels` of those stages (24, 40, 112, 320 at width 1.0).
    """

    def __init__(self, width: float = 1.0, depth: float = 1.1, drop_path_rate: float = 0.2,
                 dilated: bool = True, out_stages=OUT_STAGES, norm_cfg: dict | None = None,
                 init_cfg=None):
        super().__init__(init_cfg)
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        self.out_stages = tuple(out_stages)
        channels = stage_channels(width)
        repeats = [int(math.ceil(depth * r)) for *_, r in B0_STAGES]
        # output stride 8: stage 4 (stride 16) and stage 6 (stride 32) keep stride 1, dilate
        dilations = (1, 1, 1, 2, 2, 4, 4) if dilated else (1,) * 7
        strides = [s if d == 1 else 1 for (_, _, s, _, _), d in zip(B0_STAGES, dilations)]
        stem = round_channels(STEM_CHANNELS * width)
        self.stem = ConvModule(3, stem, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                               act_cfg=dict(type="Swish"))
        total, index, in_ch = sum(repeats), 0, stem
        self.stages = nn.ModuleList()
        for (expand, kernel, _, _, _), out_ch, n, stride, dil in zip(B0_STAGES, channels,
                                                                     repeats, strides, dilations):
            blocks = []
            for i in range(n):
                blocks.append(MBConv(in_ch, out_ch, expand, kernel, stride=stride if i == 0 else 1,
                                     dilation=dil, drop_path=drop_path_rate * index / total,
                                     norm_cfg=norm_cfg))
                in_ch, index = out_ch, index + 1
            self.stages.append(nn.Sequential(*blocks))
        self.channels = [channels[i] for i in self.out_stages]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, outs = self.stem(x), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_stages:
                outs.append(x)
        return tuple(outs)
