"""Mask2Former (Table II's second ADE20K teacher) from mmseg's own config.

The model is mmseg's ``mask2former_r50_8xb2-160k_ade20k-512x512.py`` (an ``EncoderDecoder`` with
a ResNet-50 and mmseg's ``Mask2FormerHead``, which is MMDetection's head), loaded from the
installed package and changed only where a params model spec says so (docs/models.md):

- ``depth`` / ``base_channels``: the ResNet's depth and width (64 = the paper's; the stem too);
- the head's width follows the backbone's: ``feat_channels = out_channels = 4 x base_channels``
  (mmseg's 256 at 64), its feed-forward widths and positional encodings with it;
- ``num_queries`` (default mmseg's 100), ``decoder_layers`` (transformer decoder layers,
  default mmseg's 9), the number of classes (and the class loss's weights: 1 per class, 0.1
  for "no object", as mmseg's);
- SyncBN -> ``norm`` (BN on one process; the runner converts it back under torchrun on GPUs);
  with ImageNet weights the BN affine parameters stay frozen as in mmseg's config
  (``requires_grad=False``); without (from scratch: the embedded sizes, the tests) they train.

What the distillers read (:func:`bcd.mm.configs.taps`): the ResNet's four levels (strides 4 to
32; BCD fuses them to 1/8, Sec. IV-A), the ground truth of the batch, and, as a teacher, its
logits. A Mask2Former has no per-pixel classifier (``decode_head.conv_seg``): its prediction is
a set of masks, each with a class distribution. The teacher's logits are the log of its
semantic inference at 1/4 (``Mask2FormerSegLogits``, :func:`bcd.mm.models.mask2former_head.
mask_class_logits`: a connector on the recorded head output); the methods that read decode-head
features (the classifier's input: SKD, IFVD, CIRKD, TAT, CD's ``teacher_features: head``), or a
Mask2Former student's logits, are refused by name (:func:`bcd.mm.configs.distiller`).

mmdet is imported only inside functions: the other segmentors never need it.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

#: mmseg's config of the paper's teacher (ResNet-50, ADE20K, 512x512, 160k iterations)
CONFIG = "mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py"
#: depths of mmseg's ``ResNet`` (Bottleneck from 50)
DEPTHS = (18, 34, 50, 101, 152)
#: mmseg's head width at the paper's ResNet width (64)
HEAD_PER_BASE = 4
#: the pixel decoder's GroupNorm groups (mmseg's config): the head width must divide into them
GN_GROUPS = 32
DEFAULT_QUERIES, DEFAULT_DECODER_LAYERS = 100, 9
#: stride of the mask logits (the pixel decoder's 1/4 map), so of the logits tapped from them
LOGITS_STRIDE = 4
#: where the distiller records the head's output (a MethodOutputs recorder; the teacher's
#: logits are computed from it by the Mask2FormerSegLogits connector)
HEAD_FORWARD = "bcd.mm.models.mask2former_head.TensorMask2FormerHead.forward"
#: mmseg's ``Mask2FormerHead`` with a forward that runs without data samples (bcd.mm.models)
HEAD_TYPE = "TensorMask2FormerHead"


def head_width(spec: Mapping[str, Any]) -> int:
    return HEAD_PER_BASE * int(spec["base_channels"])


def check_spec(spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a spec this module cannot build (bcd.params says it earlier,
    with the file and key)."""
    if spec.get("depth") not in DEPTHS:
        raise ValueError(f"mask2former: unknown ResNet depth {spec.get('depth')} (known: "
                         f"{', '.join(map(str, DEPTHS))}; mmseg's ResNet)")
    if "base_channels" not in spec or head_width(spec) % GN_GROUPS:
        raise ValueError(f"mask2former: base_channels must be a multiple of "
                         f"{GN_GROUPS // HEAD_PER_BASE} (the head is 4 x base_channels wide and "
                         f"its GroupNorm has {GN_GROUPS} groups), got {spec.get('base_channels')}")


def levels(spec: Mapping[str, Any]) -> list[int]:
    """Channels of the ResNet's four stages (strides 4, 8, 16, 32)."""
    exp = 1 if spec["depth"] < 50 else 4
    return [int(spec["base_channels"]) * exp * 2 ** i for i in range(4)]


def base_config() -> dict:
    """mmseg's config of the paper's teacher (a plain dict of its ``model``)."""
    import os

    import mmseg
    from mmengine.config import Config

    from bcd.mm.detection import require_mmdet

    require_mmdet()
    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", CONFIG)
    return Config.fromfile(path).model.to_dict()


def segmentor(spec: Mapping[str, Any], num_classes: int, data_preprocessor: dict,
              norm: str = "BN") -> dict:
    """An mmseg ``EncoderDecoder`` config of a Mask2Former spec (see the module docstring)."""
    from mmengine.config import ConfigDict

    check_spec(spec)
    m = base_config()
    pretrained = spec.get("pretrained")
    bb = m["backbone"]
    base = int(spec["base_channels"])
    bb.update(depth=int(spec["depth"]), base_channels=base, stem_channels=base,
              norm_cfg=dict(type=norm, requires_grad=not pretrained))
    bb["init_cfg"] = (dict(type="Pretrained", checkpoint=str(pretrained),
                           model=f"mask2former / resnet-{spec['depth']} backbone")
                      if pretrained else None)
    c = head_width(spec)
    h = m["decode_head"]
    h.update(type=HEAD_TYPE, in_channels=levels(spec), feat_channels=c, out_channels=c,
             num_classes=num_classes,
             num_queries=int(spec.get("num_queries", DEFAULT_QUERIES)))
    h["loss_cls"]["class_weight"] = [1.0] * num_classes + [0.1]
    pix = h["pixel_decoder"]
    pix["encoder"]["layer_cfg"]["self_attn_cfg"]["embed_dims"] = c
    pix["encoder"]["layer_cfg"]["ffn_cfg"].update(embed_dims=c, feedforward_channels=4 * c)
    pix["positional_encoding"]["num_feats"] = c // 2
    h["positional_encoding"]["num_feats"] = c // 2
    dec = h["transformer_decoder"]
    dec["num_layers"] = int(spec.get("decoder_layers", DEFAULT_DECODER_LAYERS))
    for attn in ("self_attn_cfg", "cross_attn_cfg"):
        dec["layer_cfg"][attn]["embed_dims"] = c
    dec["layer_cfg"]["ffn_cfg"].update(embed_dims=c, feedforward_channels=8 * c)
    # whole-image inference pads to a multiple of 32 (the backbone's output stride), as mmseg's
    preprocessor = copy.deepcopy(data_preprocessor)
    preprocessor["test_cfg"] = dict(size_divisor=32)
    # a ConfigDict, as from a config file: mmdet's head reads its settings as attributes
    return ConfigDict(_scope_="mmseg", type="EncoderDecoder", data_preprocessor=preprocessor,
                      backbone=bb, decode_head=h, train_cfg=dict(), test_cfg=dict(mode="whole"))
