"""BCD distillation losses (plain PyTorch): boundary distillation (Eq. 2-3), context distillation (Eq. 4-5)."""
from ._kl import tempered_kl
from .boundary import (
    BoundaryDistillLoss,
    affinity_from_boundary,
    boundary_logits,
    label_affinity_probe,
)
from .context import ContextDistillLoss, relation_kl, relation_logits
from .pairs import PairLines, line_max, line_points, pair_lines, pair_offsets, partner_mask, shifted
from . import baselines  # noqa: F401  (comparison losses of Tables III-IV, docs/baselines.md)

__all__ = [
    "BoundaryDistillLoss",
    "ContextDistillLoss",
    "PairLines",
    "affinity_from_boundary",
    "boundary_logits",
    "label_affinity_probe",
    "line_max",
    "line_points",
    "pair_lines",
    "pair_offsets",
    "partner_mask",
    "relation_kl",
    "relation_logits",
    "shifted",
    "tempered_kl",
]
