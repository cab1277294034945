"""Comparison distillation losses of the BCD paper's Tables III-V, as plain PyTorch modules.

One module per method; every class has a ``loss_weight`` attribute (read at each call) and a
``forward`` that returns a scalar already multiplied by it; each module declares its wiring
(``METHOD``, :mod:`bcd.methods`; the detection methods of Table V, CrossKD, FGD and LD, on
the detectors' FPN and dense heads). CWD is mmrazor's ``ChannelWiseDivergence``:
``cwd.py`` only declares it. Equations and choices: ``docs/baselines.md``.
"""
from .bpkd import BPKDLoss, edge_body_masks
from .cirkd import CrossImageRelationLoss
from .crosskd import CrossKDLoss, align_to_teacher, giou, kd_quality_focal
from .fgd import ContextBlock, FGDLoss, fgd_attention, fgd_masks
from .ifvd import IFVDLoss, intra_class_similarity
from .ld import LDLoss, edge_kl
from .pixel_kd import PixelKDLoss
from .skd import PairwiseSimilarityLoss, node_similarity
from .sstkd import SSTKDLoss, intensity_histogram, laplacian_pyramid
from .tat import TATLoss, target_aware_error

__all__ = [
    "BPKDLoss",
    "ContextBlock",
    "CrossImageRelationLoss",
    "CrossKDLoss",
    "FGDLoss",
    "IFVDLoss",
    "LDLoss",
    "PairwiseSimilarityLoss",
    "PixelKDLoss",
    "SSTKDLoss",
    "TATLoss",
    "align_to_teacher",
    "edge_body_masks",
    "edge_kl",
    "fgd_attention",
    "fgd_masks",
    "giou",
    "intensity_histogram",
    "intra_class_similarity",
    "kd_quality_focal",
    "laplacian_pyramid",
    "node_similarity",
    "target_aware_error",
]
