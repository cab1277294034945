"""Benchmarks of bcd: ``python -m bcd.bench context``, ``step`` and ``grads``.

* :mod:`bcd.bench.context`: the context-distillation loss (Eq. 4-5) computed with materialised
  ``HW x HW`` relation matrices against the blockwise exact computation (memory, time, and the
  differences of value and gradient), at sizes up to the paper's (batch 8, 64 x 64, 256 ch).
* :mod:`bcd.bench.step`: one training step with BCD (boundary + context distillation) against
  one with plain logit KD, through the project's mmrazor glue.
* :mod:`bcd.bench.grads`: each loss term's gradient norm on the student backbone at the first
  training iteration of a run, and its share of the cross-entropy's.
"""
from __future__ import annotations

import json
import os

from bcd.atomic import write_text_atomic


def write_result(result: dict, path: str | os.PathLike | None) -> dict:
    """Write a benchmark's result as JSON to ``path`` (if given, atomically); return it."""
    if path:
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result
