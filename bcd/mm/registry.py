"""Register bcd's pure-PyTorch modules in mmrazor's registry (core modules import no mm* code)."""
from __future__ import annotations

import importlib
from typing import Sequence

import torch
from mmrazor.registry import MODELS
from torch import nn

from bcd import methods as catalog
from bcd.connectors import HierarchicalFusion as _HierarchicalFusion


def loss_class(method: catalog.Method) -> type:
    """The class a declaration names (imports its module; bcd.codedeps counts these imports)."""
    cls = getattr(importlib.import_module(method.module), method.type, None)
    if cls is None:
        raise ValueError(f"{method.module} declares METHOD type {method.type!r} but defines no "
                         "class of that name")
    return cls


# every declared loss of bcd/losses (BCD's terms and the comparison methods of Tables III-IV);
# CWD is mmrazor's own ChannelWiseDivergence (external)
for _method in catalog.declared().values():
    if _method.external is None:
        MODELS.register_module(module=loss_class(_method), force=True)


@MODELS.register_module(name="HierarchicalFusion", force=True)
class HierarchicalFusion(_HierarchicalFusion):
    """:class:`bcd.connectors.HierarchicalFusion` as an mmrazor connector.

    mmrazor's ``ConfigurableDistiller`` calls a connector once per loss input that names it; with
    BD and CD both reading the fused features, the same recorded backbone outputs would be fused
    twice. This subclass returns the previous result when it is called again on the very same
    recorded object within one step (identity, not equality, so no stale reuse across steps).
    """

    def forward(self, feats, input_size=None):  # noqa: D401
        if input_size is None and getattr(self, "_memo_key", None) is feats:
            return self._memo_out
        out = super().forward(feats, input_size)
        if input_size is None:
            self._memo_key, self._memo_out = feats, out
        return out

    def clear_memo(self) -> None:
        """Drop the memo (called after every training step by ``DistillScalarsHook``)."""
        self._memo_key = self._memo_out = None


@MODELS.register_module(force=True)
class SegDataSampleLabels(nn.Module):
    """Connector: mmseg ``SegDataSample`` list -> ground-truth label tensor (N, H, W), long.

    Lets a loss that needs labels (BD's teacher-side probe, IFVD, BPKD) read them from a
    ``MethodInputs`` recorder on ``EncoderDecoder.loss`` (``data_idx=1``) in plain config.
    """

    def forward(self, data_samples: Sequence) -> torch.Tensor:
        if not data_samples or not hasattr(data_samples[0], "gt_sem_seg"):
            raise ValueError("SegDataSampleLabels needs SegDataSample objects with gt_sem_seg")
        return torch.stack([s.gt_sem_seg.data.squeeze(0) for s in data_samples]).long()


@MODELS.register_module(force=True)
class DetDataSampleLabels(nn.Module):
    """Connector: mmdet ``DetDataSample`` list -> ``(N, H, W)`` long label map of the ground-truth
    instances at the padded batch size (:func:`bcd.mm.detection.instance_label_map`; ``mode``
    ``'instance'`` or ``'class'``), for BD's probe on detectors (docs/method.md)."""

    def __init__(self, mode: str = "instance"):
        super().__init__()
        self.mode = mode

    def forward(self, data_samples: Sequence) -> torch.Tensor:
        from bcd.mm.detection import instance_label_map

        return instance_label_map(data_samples, self.mode)


# ----------------------------------------------------------------------------------------------
# Detectors (Table V): ground truth and dense-head connectors of FGD, LD and CrossKD
# ----------------------------------------------------------------------------------------------
@MODELS.register_module(force=True)
class DetGroundTruth(nn.Module):
    """Connector: mmdet ``DetDataSample`` list -> ``(boxes, metas)``: each image's ground-truth
    boxes ``(K, 4)`` (x0, y0, x1, y1, input pixels) and its meta dict (``batch_input_shape``...);
    the taps ``gt_boxes`` / ``img_metas`` pick one (``connector_idx``)."""

    def forward(self, data_samples: Sequence):
        from bcd.mm.detection import gt_boxes

        if not data_samples or not hasattr(data_samples[0], "gt_instances"):
            raise ValueError("DetGroundTruth needs mmdet DetDataSample objects with gt_instances")
        return gt_boxes(data_samples), [dict(s.metainfo) for s in data_samples]


class _BoundHead(nn.Module):
    """A connector that reads one model's dense head, handed over by the algorithm after build
    (:meth:`bind_models`, called by :class:`bcd.mm.distill.PairedTeacherDistill`). The head is
    held in a tuple, so it is neither a submodule nor in the distiller's state dict or
    optimiser."""

    def __init__(self, head: str, from_student: bool) -> None:
        super().__init__()
        self.head_name, self.from_student = head, bool(from_student)
        self._head: tuple = ()

    def bind_models(self, student: nn.Module, teacher: nn.Module) -> None:
        model = student if self.from_student else teacher
        if not hasattr(model, self.head_name):
            raise ValueError(f"{type(self).__name__}: the {'student' if self.from_student else 'teacher'} "
                             f"{type(model).__name__} has no {self.head_name}")
        self._head = (getattr(model, self.head_name),)

    @property
    def head(self) -> nn.Module:
        if not self._head:
            raise RuntimeError(f"{type(self).__name__} reads a model's {self.head_name}, but no "
                               "model was bound: build it inside PairedTeacherDistill")
        return self._head[0]


@MODELS.register_module(force=True)
class DetAssignerTargets(_BoundHead):
    """Connector: the recorded outputs of the student head's ``get_targets`` -> per level the
    bool mask of positive anchors and their number (>= 1; LD's region, CrossKD's ``Z``)."""

    def __init__(self, head: str, labels_idx: int) -> None:
        super().__init__(head, from_student=True)
        self.labels_idx = int(labels_idx)

    def forward(self, targets):
        from bcd.mm.detection import positive_anchors

        return positive_anchors(targets[self.labels_idx], self.head.num_classes)


@MODELS.register_module(force=True)
class DetHeldFeatures(_BoundHead):
    """Connector: recorded FPN outputs -> the head's per-level features before its last conv
    (:func:`bcd.mm.detection.held_features`); the teacher side without gradients."""

    def forward(self, feats):
        from bcd.mm.detection import held_features

        if self.from_student:
            return held_features(self.head, feats)
        with torch.no_grad():
            return held_features(self.head, feats)


@MODELS.register_module(force=True)
class DetHeadTail(_BoundHead):
    """Connector: (any record) -> the teacher head's last conv and predictors as a module
    (:func:`bcd.mm.detection.head_tail`). mmrazor reads every loss input from a recorder, so
    this one takes the teacher's FPN record and ignores it."""

    def __init__(self, head: str) -> None:
        super().__init__(head, from_student=False)
        self._tail: tuple = ()

    def forward(self, _record):
        from bcd.mm.detection import head_tail

        if not self._tail or self._tail[0].head is not self.head:
            self._tail = (head_tail(self.head),)
        return self._tail[0]


@MODELS.register_module(force=True)
class DetBoxDecoder(_BoundHead):
    """Connector: the teacher head's recorded ``(cls_scores, bbox_preds)`` -> a box decoder at
    their levels (:func:`bcd.mm.detection.box_decoder`)."""

    def __init__(self, head: str) -> None:
        super().__init__(head, from_student=False)

    def forward(self, head_out):
        from bcd.mm.detection import box_decoder

        return box_decoder(self.head, head_out[0])
