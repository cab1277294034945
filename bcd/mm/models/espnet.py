"""ESPNet (Mehta et al., ECCV 2018, arXiv:1803.06815): ESP modules, encoder and decoder.

Written from the paper's Sec. 3 and Fig. 4(d):

- ESP module: a 1x1 conv reduces to ``N/K`` channels (``K = 5``), ``K`` parallel 3x3 convs with
  dilations 1, 2, 4, 8, 16 follow, their outputs are summed hierarchically (HFF: d2, d2+d4, ...)
  and concatenated, then added to the input (residual) and passed through BN + PReLU. The strided
  variant replaces the 1x1 conv by a 3x3 stride-2 conv and has no residual.
- Encoder (ESPNet-C, :class:`ESPNetC`): a 3x3 stride-2 conv (16 ch) concatenated with the image
  at 1/2; a strided ESP module to 64 ch and ``alpha2 = 2`` ESP modules, concatenated with the
  image at 1/4; a strided ESP module to 128 ch and ``alpha3 = 8`` ESP modules. The three levels
  (1/2, 1/4, 1/8; 19, 131 and 256 channels) are returned.
- Decoder (:class:`ESPNetHead`): level 3 -> 1x1 conv to C, BN, 2x deconv; level 2 -> 1x1 conv
  to C; concatenated, BN + PReLU, an ESP module (2C -> C, no residual), 2x deconv, BN + PReLU;
  concatenated with level 1 and a 3x3 conv + BN + PReLU to C. ESPNet's last layer, a 2x deconv to
  the classes at full resolution, is here the head's 1x1 ``conv_seg`` at 1/2 followed by mmseg's
  bilinear resize, so every head has the same classifier that the logit-based methods tap.

The decoder width C is the number of classes in the original; it is ``channels`` here (mmseg's
decode-head argument), and :func:`bcd.mm.configs.segmentor` sets it to the number of classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import nn

DILATIONS = (1, 2, 4, 8, 16)


def _bn_prelu(channels: int, norm_cfg: dict) -> nn.Sequential:
    return nn.Sequential(build_norm_layer(norm_cfg, channels)[1],
                         build_activation_layer(dict(type="PReLU", num_parameters=channels)))


class ESPModule(nn.Module):
    """Efficient spatial pyramid of dilated convolutions (reduce, split, transform, merge).

    Args:
        in_channels, out_channels: channels in and out.
        stride: 2 for the strided (down-sampling) variant: 3x3 stride-2 reduction, no residual.
        residual: add the input to the merged output (only when stride 1 and channels equal).
        norm_cfg: norm of the final BN + PReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 residual: bool = True, norm_cfg: dict | None = None):
        super().__init__()
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        k = len(DILATIONS)
        n = out_channels // k
        n1 = out_channels - (k - 1) * n  # the first branch takes the remainder
        if n < 1:
            raise ValueError(f"ESPModule: out_channels must be >= {k}, got {out_channels}")
        kernel = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, n, kernel, stride=stride, padding=kernel // 2,
                                bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n1 if i == 0 else n, 3, padding=d, dilation=d, bias=False)
            for i, d in enumerate(DILATIONS))
        self.residual = residual and stride == 1 and in_channels == out_channels
        self.out = _bn_prelu(out_channels, norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        d = [branch(r) for branch in self.branches]
        hff = [d[1]]
        for di in d[2:]:  # hierarchical feature fusion removes gridding artefacts
            hff.append(hff[-1] + di)
        out = torch.cat([d[0], *hff], 1)
        return self.out(x + out if self.residual else out)


def _image_at(x: torch.Tensor, times: int) -> torch.Tensor:
    """The image average-pooled (3x3, stride 2) ``times`` times, as ESPNet's input projection."""
    for _ in range(times):
        x = F.avg_pool2d(x, 3, stride=2, padding=1)
    return x


@MODELS.register_module(force=True)
class ESPNetC(BaseModule):
    """ESPNet's encoder; returns the levels at 1/2, 1/4 and 1/8.

    Args:
        base_channels: channels of the first conv (16 in the paper); levels 2 and 3 have 4x and
            8x as many before the concatenations.
        alpha2, alpha3: ESP modules at levels 2 and 3 (paper: 2 and 8).
        in_channels: image channels (3).
        norm_cfg: norm config. init_cfg: mmengine init config.

    Shapes: input ``(N, 3, H, W)``; outputs ``(N, b + 3, H/2, W/2)``,
    ``(N, 8b + 3, H/4, W/4)``, ``(N, 16b, H/8, W/8)`` for ``b = base_channels``.
    """

    def __init__(self, base_channels: int = 16, alpha2: int = 2, alpha3: int = 8,
                 in_channels: int = 3, norm_cfg: dict | None = None, init_cfg=None):
        super().__init__(init_cfg)
        norm_cfg = norm_cfg or dict(type="BN", requires_grad=True)
        b, c = base_channels, in_channels
        self.level1 = ConvModule(c, b, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                                 act_cfg=dict(type="PReLU", num_parameters=b))
        self.br1 = _bn_prelu(b + c, norm_cfg)
        self.down2 = ESPModule(b + c, 4 * b, stride=2, norm_cfg=norm_cfg)
        self.level2 = nn.Sequential(*[ESPModule(4 * b, 4 * b, norm_cfg=norm_cfg)
                                      for _ in range(alpha2)])
        self.br2 = _bn_prelu(8 * b + c, norm_cfg)
        self.down3 = ESPModule(8 * b + c, 8 * b, stride=2, norm_cfg=norm_cfg)
        self.level3 = nn.Sequential(*[ESPModule(8 * b, 8 * b, norm_cfg=norm_cfg)
                                      for _ in range(alpha3)])
        self.br3 = _bn_prelu(16 * b, norm_cfg)
        self.channels = [b + c, 8 * b + c, 16 * b]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        l1 = self.br1(torch.cat([self.level1(x), _image_at(x, 1)], 1))
        d2 = self.down2(l1)
        l2 = self.br2(torch.cat([self.level2(d2), d2, _image_at(x, 2)], 1))
        d3 = self.down3(l2)
        l3 = self.br3(torch.cat([d3, self.level3(d3)], 1))
        return l1, l2, l3


@MODELS.register_module(force=True)
class ESPNetHead(BaseDecodeHead):
    """ESPNet's decoder as an mmseg decode head (see the module docstring).

    ``in_channels`` are the three encoder levels' channels, ``in_index=(0, 1, 2)``; ``channels``
    is the decoder width C. The logits (``conv_seg``) are at 1/2 of the input.
    """

    def __init__(self, **kwargs):
        super().__init__(input_transform="multiple_select", **kwargs)
        c1, c2, c3 = self.in_channels
        c, norm = self.channels, self.norm_cfg or dict(type="BN", requires_grad=True)
        self.l3_proj = ConvModule(c3, c, 1, norm_cfg=norm, act_cfg=None)  # 1x1 conv + BN
        self.up3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.l2_proj = nn.Conv2d(c2, c, 1, bias=False)
        self.merge23 = nn.Sequential(_bn_prelu(2 * c, norm),
                                     ESPModule(2 * c, c, residual=False, norm_cfg=norm))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False),
                                 _bn_prelu(c, norm))
        self.merge1 = ConvModule(c1 + c, c, 3, padding=1, norm_cfg=norm,
                                 act_cfg=dict(type="PReLU", num_parameters=c))

    def forward(self, inputs):
        l1, l2, l3 = self._transform_inputs(inputs)
        up3 = self.up3(self.l3_proj(l3))
        up3 = up3 if up3.shape[-2:] == l2.shape[-2:] else F.interpolate(
            up3, size=l2.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        x = self.up2(self.merge23(torch.cat([self.l2_proj(l2), up3], 1)))
        x = x if x.shape[-2:] == l1.shape[-2:] else F.interpolate(
            x, size=l1.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.cls_seg(self.merge1(torch.cat([x, l1], 1)))
