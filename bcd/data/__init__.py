"""Datasets of the embedded profile: :mod:`bcd.data.synthetic` (seeded, no download).

The names below are loaded on first use, so ``python -m bcd.data.synthetic`` runs cleanly.
"""
from __future__ import annotations

__all__ = ["CLASSES", "PALETTE", "check_dataset", "generate", "render_sample"]


def __getattr__(name: str):
    if name in __all__:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
