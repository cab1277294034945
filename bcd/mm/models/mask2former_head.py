"""Mask2Former glue (:mod:`bcd.mm.mask2former`):

- ``TensorMask2FormerHead`` (mmseg ``MODELS``): mmseg's ``Mask2FormerHead`` whose ``forward``
  also runs without data samples. mmseg's ``EncoderDecoder`` in ``mode='tensor'`` calls
  ``decode_head.forward(features)`` alone, but MMDetection's ``Mask2FormerHead.forward(x,
  batch_data_samples)`` requires the samples (its body does not read them). The frozen
  teacher's forward (:mod:`bcd.mm.distill`) and the Params/FLOPs count (:mod:`bcd.evaluate`)
  use that mode; nothing else differs from mmseg's head.
- ``Mask2FormerSegLogits`` (mmrazor ``MODELS``, a connector): the head's last-layer output ->
  per-pixel class logits, for the methods that read a teacher's logits (docs/models.md).
"""
from __future__ import annotations

import torch
from mmengine.config import ConfigDict
from mmrazor.registry import MODELS as RAZOR_MODELS
from mmseg.models.decode_heads.mask2former_head import Mask2FormerHead
from mmseg.registry import MODELS
from torch import Tensor, nn


@MODELS.register_module(force=True)
class TensorMask2FormerHead(Mask2FormerHead):
    """mmseg's ``Mask2FormerHead`` (which needs mmdet installed to build); ``forward``'s
    ``batch_data_samples`` defaults to None, and plain-dict settings are accepted. Returns the per-layer class scores
    ``[(N, Q, K + 1)]`` and mask logits ``[(N, Q, H/4, W/4)]`` as mmdet's head."""

    def __init__(self, **kwargs) -> None:
        # mmdet's head reads its settings as attributes (ConfigDicts, as a config file gives);
        # a config passed through to_dict() or written as plain dicts works too
        super().__init__(**{k: ConfigDict(v) if isinstance(v, dict) else v
                            for k, v in kwargs.items()})

    def forward(self, x, batch_data_samples=None):
        return super().forward(x, batch_data_samples)


def mask_class_logits(cls_scores: Tensor, mask_preds: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-pixel class logits ``(N, K, h, w)`` of a mask classifier: ``log`` of Mask2Former's
    semantic inference ``S_k = sum_q p_q(k) sigmoid(m_q)`` (mmseg's ``Mask2FormerHead.predict``,
    ``p_q`` the softmax over the K classes + "no object", the latter dropped).

    ``softmax_k(log S)`` is ``S_k / sum_k S_k``: each pixel's class distribution is its
    normalised semantic score, and a temperature ``tau`` gives ``S^(1/tau)`` normalised.

    Args:
        cls_scores: ``(N, Q, K + 1)`` class logits of the queries (last: no object).
        mask_preds: ``(N, Q, h, w)`` mask logits of the queries.
        eps: floor of ``S`` before the log (a pixel no query covers).
    """
    probs = cls_scores.float().softmax(dim=-1)[..., :-1]
    scores = torch.einsum("nqk,nqhw->nkhw", probs, mask_preds.float().sigmoid())
    return scores.clamp_min(eps).log()


@RAZOR_MODELS.register_module(force=True)
class Mask2FormerSegLogits(nn.Module):
    """Connector: a recorded ``Mask2FormerHead`` output ``(cls_list, mask_list)`` (one entry per
    decoder layer) -> :func:`mask_class_logits` of the last layer, ``(N, K, H/4, W/4)``."""

    def forward(self, outputs) -> Tensor:
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise ValueError("Mask2FormerSegLogits needs a Mask2FormerHead output "
                             "(class scores per layer, mask logits per layer)")
        cls_list, mask_list = outputs
        return mask_class_logits(cls_list[-1], mask_list[-1])
