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
