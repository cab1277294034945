"""The detectors of Table V (MMDetection 3.x): GFL, RetinaNet and Cascade Mask R-CNN on ResNets.

Each model is mmdet's own 1x COCO config (``mmdet::gfl/gfl_r50_fpn_1x_coco.py`` ...), loaded from
the installed package and changed only where a params model spec says so: the ResNet's depth
and width (``base_channels``: 64 = the paper's width), the FPN/head width (``neck_channels``,
default 256 x width), the number of classes, and, for small images, Cascade's proposal and RoI
counts (``proposals``). Everything else follows the baseline configs, as the paper says.

What BCD and the comparison methods read from a detector (:class:`DetTaps`): the ResNet's four
levels (strides 4 to 32; BCD fuses them to 1/8, Sec. IV-A), the FPN's outputs (PKD, FGD), and
the ground truth of the batch (BD's probe labels, FGD's boxes) from the detector's ``loss``.

mmdet is imported only inside functions: segmentation runs never need it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from bcd.archs import DETECTOR_ARCHS, MASK_ARCHS  # noqa: F401  (the arch names live there)

#: arch -> mmdet's config of the baseline model (the R50 1x COCO schedule)
CONFIGS = {
    "gfl": "gfl/gfl_r50_fpn_1x_coco.py",
    "retinanet": "retinanet/retinanet_r50_fpn_1x_coco.py",
    "cascade_mask_rcnn": "cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py",
}
if tuple(CONFIGS) != DETECTOR_ARCHS:
    raise RuntimeError("bcd.archs.DETECTOR_ARCHS and bcd.mm.detection.CONFIGS name other archs")
#: the method of the detector whose inputs carry the batch's data samples (ground truth)
LOSS_METHODS = {
    "gfl": "mmdet.models.detectors.single_stage.SingleStageDetector.loss",
    "retinanet": "mmdet.models.detectors.single_stage.SingleStageDetector.loss",
    "cascade_mask_rcnn": "mmdet.models.detectors.two_stage.TwoStageDetector.loss",
}
#: each detector's dense head (the head CrossKD and LD read; Cascade Mask R-CNN: its RPN head):
#: attribute, mmdet class, anchors per location and box-distribution bins - 1 (None: box
#: deltas), as in mmdet 3.3.0's configs of CONFIGS (tests/test_mm_detection.py checks them
#: against the built models)
DENSE_HEADS = {
    "gfl": ("bbox_head", "mmdet.models.dense_heads.gfl_head.GFLHead", 1, 16),
    "retinanet": ("bbox_head", "mmdet.models.dense_heads.retina_head.RetinaHead", 9, None),
    "cascade_mask_rcnn": ("rpn_head", "mmdet.models.dense_heads.rpn_head.RPNHead", 3, None),
}
#: index of the per-level labels in the outputs of each head class's ``get_targets``
#: (GFLHead's start with the anchors, AnchorHead's with the labels)
_LABELS_IDX = {"gfl": 1, "retinanet": 0, "cascade_mask_rcnn": 0}
_RESNET_EXPANSION = {18: 1, 34: 1, 50: 4, 101: 4, 152: 4}
# mmdet's detection pipelines normalise with the ImageNet statistics (BGR files -> RGB)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


class MMDetMissingError(ModuleNotFoundError):
    """mmdet is not installed (``tools/setup_env.sh`` installs it)."""


def require_mmdet():
    """Import mmdet (and register its modules without changing the default scope), or raise a
    clear error saying how to install it."""
    try:
        import mmdet  # noqa: F401
        from mmdet.utils import register_all_modules
    except ModuleNotFoundError as err:
        raise MMDetMissingError(
            "the detectors of Table V need MMDetection: `pip install mmdet==3.3.0 pycocotools "
            "shapely terminaltables` (tools/setup_env.sh installs them)") from err
    register_all_modules(init_default_scope=False)
    import mmdet

    return mmdet


def is_detector(spec: Mapping[str, Any]) -> bool:
    return spec.get("arch") in CONFIGS


def has_masks(spec: Mapping[str, Any]) -> bool:
    return spec.get("arch") in MASK_ARCHS


def resnet_levels(spec: Mapping[str, Any]) -> list[int]:
    """Channels of the ResNet's four stages at this width."""
    depth, base = spec["depth"], spec.get("base_channels", 64)
    if depth not in _RESNET_EXPANSION:
        raise ValueError(f"unknown ResNet depth {depth} (known: {sorted(_RESNET_EXPANSION)})")
    return [base * _RESNET_EXPANSION[depth] * 2 ** i for i in range(4)]


def neck_channels(spec: Mapping[str, Any]) -> int:
    """FPN (and head) width: ``neck_channels``, default 256 x ``base_channels`` / 64."""
    return int(spec.get("neck_channels") or 256 * spec.get("base_channels", 64) // 64)


@dataclass(frozen=True)
class DetTaps:
    """What the distillers read from a detector (the detection counterpart of
    :class:`bcd.mm.configs.Taps`)."""

    levels: list[int]      # channels of the backbone's outputs (recorder on `backbone`)
    neck_channels: int     # channels of every FPN output (recorder on `neck`)
    loss_method: str       # MethodInputs source that carries the data samples
    dense_head: str        # attribute of the dense head (bbox_head; Cascade: rpn_head)
    head_class: str        # its mmdet class (MethodOutputs on <class>.forward / .get_targets)
    num_anchors: int       # anchors per location of the dense head
    reg_max: int | None    # box-distribution bins - 1 (GFL), None: box deltas
    labels_idx: int        # index of the labels in <class>.get_targets' outputs
    neck_levels: int = 5   # FPN outputs (mmdet's configs: num_outs=5 for the three detectors)
    first_stride: int = 4
    head_channels: None = None   # no decode head: methods on logits/head features do not apply
    logits_stride: None = None
    backbone: str = "backbone"
    neck: str = "neck"


def taps(spec: Mapping[str, Any]) -> DetTaps:
    check_spec(spec)
    arch = spec["arch"]
    head, cls, anchors, reg_max = DENSE_HEADS[arch]
    return DetTaps(levels=resnet_levels(spec), neck_channels=neck_channels(spec),
                   loss_method=LOSS_METHODS[arch], dense_head=head, head_class=cls,
                   num_anchors=anchors, reg_max=reg_max, labels_idx=_LABELS_IDX[arch])


def check_spec(spec: Mapping[str, Any]) -> None:
    if spec.get("arch") not in CONFIGS:
        raise ValueError(f"unknown detector {spec.get('arch')!r} (known: {', '.join(CONFIGS)})")
    if spec.get("backbone", "resnet") != "resnet":
        raise ValueError(f"{spec['arch']}: the detectors of Table V use ResNet backbones")
    resnet_levels(spec)
    if neck_channels(spec) % 32:
        raise ValueError(f"{spec['arch']}: neck_channels {neck_channels(spec)} must be a "
                         "multiple of 32 (the heads' GroupNorm has 32 groups)")


def base_config(arch: str) -> dict:
    """mmdet's config of the baseline model (a plain dict of its ``model``)."""
    import os

    from mmengine.config import Config

    mmdet = require_mmdet()
    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", CONFIGS[arch])
    return Config.fromfile(path).model.to_dict()


def _proposals(m: dict, spec: Mapping[str, Any]) -> None:
    """Cascade's proposal and RoI counts (``proposals: {rpn: N, rois: M}``): N proposals per
    image at test time and 2N in training, M RoIs sampled per image for each stage's loss, as
    mmdet's 1000 / 2000 / 512 (``{rpn: 1000, rois: 512}`` is its config), which are sized for
    800 x 1333 images."""
    prop = spec.get("proposals")
    if not prop:
        return
    rpn, rois = int(prop.get("rpn", 1000)), int(prop.get("rois", 512))
    m["train_cfg"]["rpn_proposal"].update(nms_pre=rpn * 2, max_per_img=rpn * 2)
    m["test_cfg"]["rpn"].update(nms_pre=rpn, max_per_img=rpn)
    for stage in m["train_cfg"]["rcnn"]:
        stage["sampler"]["num"] = rois


def detector(spec: Mapping[str, Any], num_classes: int) -> dict:
    """An mmdet detector config for a params model spec (``arch``: gfl, retinanet or
    cascade_mask_rcnn; ``depth``; ``base_channels``; optional ``neck_channels``,
    ``proposals``, ``anchor_scale``, ``pretrained``).

    Without ImageNet weights (``pretrained`` unset: training from scratch, as everywhere in the
    embedded profile) no stage is frozen and BatchNorm trains (``frozen_stages=-1``,
    ``norm_eval=False``): mmdet's defaults freeze the stem and the BN statistics of a
    pretrained backbone, which would freeze random weights here.
    """
    check_spec(spec)
    arch, width = spec["arch"], neck_channels(spec)
    m = base_config(arch)
    bb = m["backbone"]
    bb.update(depth=int(spec["depth"]), base_channels=int(spec.get("base_channels", 64)))
    if spec.get("pretrained"):
        bb["init_cfg"] = dict(type="Pretrained", checkpoint=str(spec["pretrained"]),
                              model=f"{arch} / resnet-{spec['depth']} backbone")
    else:
        bb.update(init_cfg=None, frozen_stages=-1, norm_eval=False)
    m["neck"].update(in_channels=resnet_levels(spec), out_channels=width)
    if arch in ("gfl", "retinanet"):
        m["bbox_head"].update(num_classes=num_classes, in_channels=width, feat_channels=width)
    else:
        m["rpn_head"].update(in_channels=width, feat_channels=width)
        roi = m["roi_head"]
        roi["bbox_roi_extractor"]["out_channels"] = width
        roi["mask_roi_extractor"]["out_channels"] = width
        fc = int(spec.get("fc_channels") or 1024 * spec.get("base_channels", 64) // 64)
        for head in roi["bbox_head"]:
            head.update(num_classes=num_classes, in_channels=width, fc_out_channels=fc)
        roi["mask_head"].update(num_classes=num_classes, in_channels=width,
                                conv_out_channels=width)
        _proposals(m, spec)
    if spec.get("anchor_scale"):  # the anchors' base size in strides (small images, objects)
        scale = int(spec["anchor_scale"])
        if arch in ("gfl", "retinanet"):
            m["bbox_head"]["anchor_generator"]["octave_base_scale"] = scale
        else:
            m["rpn_head"]["anchor_generator"]["scales"] = [scale]
    m["data_preprocessor"] = data_preprocessor(with_masks=has_masks(spec))
    m["_scope_"] = "mmdet"
    return m


def data_preprocessor(with_masks: bool = False) -> dict:
    return dict(type="mmdet.DetDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True,
                pad_size_divisor=32, pad_mask=with_masks)


def describe(spec: Mapping[str, Any]) -> str:
    return f"{spec['arch']} / resnet-{spec['depth']}"


# ----------------------------------------------------------------------------------------------
# Ground truth for the distillers: the batch's instances as a label map (BD's probe)
# ----------------------------------------------------------------------------------------------
def instance_label_map(data_samples: Sequence, mode: str = "instance"):
    """``(N, H, W)`` long map of each image's ground-truth instances at the padded batch size.

    ``mode='instance'`` (default): 0 = background, 1..K = the image's instances (object-level
    boundaries: two touching objects of one class keep the boundary between them);
    ``'class'``: 0 = background, 1 + the class id. Each instance covers its mask, or its box when
    the data has no masks; larger instances are drawn first, so a smaller one in front of a
    larger one stays visible (docs/method.md, "BCD on detectors").
    """
    import numpy as np
    import torch

    if mode not in ("instance", "class"):
        raise ValueError(f"instance_label_map: mode must be 'instance' or 'class', got {mode!r}")
    if not data_samples or not hasattr(data_samples[0], "gt_instances"):
        raise ValueError("instance_label_map needs mmdet DetDataSample objects with gt_instances")
    h, w = data_samples[0].metainfo.get("batch_input_shape") or data_samples[0].metainfo["pad_shape"][:2]
    out = torch.zeros(len(data_samples), h, w, dtype=torch.long)
    for i, sample in enumerate(data_samples):
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, "tensor") else gt.bboxes
        boxes = boxes.detach().cpu()
        labels = gt.labels.detach().cpu()
        masks = getattr(gt, "masks", None)
        if masks is not None and len(masks):
            dense = masks.to_ndarray() if hasattr(masks, "to_ndarray") else np.asarray(masks)
            dense = torch.as_tensor(dense[:, :h, :w].astype(bool))
            areas = dense.flatten(1).sum(1).float()
        else:
            dense = None
            areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
        for k in torch.argsort(areas, descending=True).tolist():
            value = k + 1 if mode == "instance" else int(labels[k]) + 1
            if dense is not None:
                region = torch.zeros(h, w, dtype=torch.bool)
                mh, mw = dense.shape[1:]
                region[:mh, :mw] = dense[k]
                out[i][region] = value
            else:
                x0, y0, x1, y1 = boxes[k].tolist()
                x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
                x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
                out[i, y0:y1, x0:x1] = value
    return out


def gt_boxes(data_samples: Sequence) -> list:
    """Each image's ground-truth boxes ``(K, 4)`` (x0, y0, x1, y1 in input pixels)."""
    out = []
    for sample in data_samples:
        boxes = sample.gt_instances.bboxes
        out.append(copy.copy(boxes.tensor if hasattr(boxes, "tensor") else boxes))
    return out


# ----------------------------------------------------------------------------------------------
# Dense heads for CrossKD and LD: positives, held features, the teacher's tail, box decoding
# ----------------------------------------------------------------------------------------------
# The three dense heads, seen as ``convs`` (per branch) then predictors: GFLHead and RetinaHead
# have two branches (cls_convs, reg_convs: 4 ConvModules each) and the predictors
# gfl_cls/gfl_reg (+ per-level Scale) or retina_cls/retina_reg; RPNHead has one shared conv
# (rpn_conv, an nn.Conv2d, ReLU after it) and rpn_cls/rpn_reg. "Held" features are those
# before the last conv (CrossKD's layer i = n - 1; released: 3 of 4), pre-activation.


def _branches(head) -> tuple[list, list] | None:
    """``(cls_convs, reg_convs)`` of GFL/RetinaNet heads; None for RPNHead (one shared conv)."""
    if hasattr(head, "cls_convs") and hasattr(head, "reg_convs"):
        return list(head.cls_convs), list(head.reg_convs)
    if hasattr(head, "rpn_conv") and hasattr(head, "rpn_cls"):
        import torch.nn as nn

        if not isinstance(head.rpn_conv, nn.Conv2d):
            raise ValueError("CrossKD on RPNHead supports its default single rpn_conv only")
        return None
    raise ValueError(f"CrossKD: unsupported dense head {type(head).__name__}")


def held_features(head, feats: Sequence) -> list:
    """Per FPN level, the head's features before its last conv, pre-activation: GFL/RetinaNet
    ``(cls, reg)`` after convs ``0 .. n-2`` (the last of them not activated); RPN: the level
    itself (its only conv is the last)."""
    branches = _branches(head)
    if branches is None:
        return list(feats)
    out = []
    for x in feats:
        pair = []
        for convs in branches:
            y = x
            for i, conv in enumerate(convs[:-1]):
                y = conv(y, activate=i + 2 < len(convs))
            pair.append(y)
        out.append(tuple(pair))
    return out


def head_tail(head):
    """The head's last conv and predictors as a module ``tail(held, level) -> (cls, reg)``
    (the head is its submodule, so CrossKD can call it with detached parameters)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DenseHeadTail(nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x, level: int):
            h = self.head
            if _branches(h) is None:  # RPN: conv, ReLU, predictors
                y = F.relu(h.rpn_conv(x))
                return h.rpn_cls(y), h.rpn_reg(y)
            cls_convs, reg_convs = _branches(h)
            c, r = (torch.relu(t) if len(cls_convs) > 1 else t for t in x)
            c, r = cls_convs[-1](c), reg_convs[-1](r)
            if hasattr(h, "gfl_cls"):
                return h.gfl_cls(c), h.scales[level](h.gfl_reg(r)).float()
            return h.retina_cls(c), h.retina_reg(r)

    return DenseHeadTail(head)


def box_decoder(head, cls_maps: Sequence):
    """``decode(reg, level) -> (N H W A, 4)`` boxes of the head's box outputs at the levels of
    ``cls_maps`` (anchor order n, h, w, a): GFL integrates the distributions and decodes the
    distances from the anchor centres in stride units (as GFLHead's loss); anchor heads decode
    their deltas (the head's bbox_coder) from the anchors. Differentiable in ``reg``."""
    sizes = [c.shape[-2:] for c in cls_maps]
    anchors = head.prior_generator.grid_priors(sizes, device=cls_maps[0].device)
    anchors = [a.to(cls_maps[0].dtype) for a in anchors]
    strides = head.prior_generator.strides
    is_gfl = hasattr(head, "integral")

    def decode(reg, level: int):
        n = reg.shape[0]
        if is_gfl:
            dist = head.integral(reg.permute(0, 2, 3, 1).reshape(-1, 4 * (head.reg_max + 1)))
            centers = head.anchor_center(anchors[level]) / strides[level][0]
            return head.bbox_coder.decode(centers.repeat(n, 1), dist)
        deltas = reg.permute(0, 2, 3, 1).reshape(-1, 4)
        boxes = head.bbox_coder.decode(anchors[level].repeat(n, 1), deltas)
        return boxes.tensor if hasattr(boxes, "tensor") else boxes

    return decode


def positive_anchors(labels: Sequence, num_classes: int):
    """Per level, the bool mask of the assigner's positive anchors (``0 <= label < num_classes``;
    mmdet labels negatives ``num_classes``), and their number (>= 1) as a float Tensor."""
    import torch

    masks = [(lab >= 0) & (lab < num_classes) for lab in labels]
    count = sum(m.sum() for m in masks).float().clamp(min=1.0)
    return [m.detach() for m in masks], count.detach()
