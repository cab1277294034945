"""What settings a stage's outputs were made with, whichever tool made them.

Snakemake reruns a job whose ``params:`` changed only for outputs it built itself (its own
metadata); outputs built by ``dvc repro`` or a plain ``python -m bcd ...`` carry none, and a later
Snakemake with a changed setting would call them up to date. So every stage command records,
once it has succeeded, the digest of its *stage spec* (the same canonical settings Snakemake's
``params:`` trigger compares) beside its first output::

    <folder of the first output>/.<stage>.spec.json      {"stage": ..., "spec_sha256": ...}

and the Snakefile gives each job one more input, :func:`stale_stamp`: nothing while the record
matches (or there is none), else a stamp file ``.<stage>.spec-changed`` whose modification time
is set to now, so Snakemake sees an input newer than the outputs and reruns the job, which then
writes a matching record. Once created, a stamp stays an input of its job (a changing input set
would itself trigger a rerun). A truncated or corrupt checkpoint (a teacher's or a run's
``model.pth``) is outdated the same way: Snakemake rebuilds it, and every stage after it. DVC needs none of this: it compares the params it recorded in
``dvc.lock``. Plain Python, no OpenMMLab import.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bcd import params as P
from bcd.atomic import is_complete, write_json_atomic
from bcd.provenance import spec_digest

#: stage kinds (bcd.params.stage_name) and the arguments naming one stage
KINDS = ("data", "teacher", "evaluate-teacher", "train", "evaluate", "table", "figures")


def stage_spec(cfg, kind: str, name: str | None = None, seed=None):
    """The settings a stage's outputs depend on (its Snakemake ``params:`` rerun trigger; the
    seed and the names are in the output paths)."""
    if kind == "data":
        return P.data_spec(cfg, name)
    if kind == "teacher":
        return P.resolve_teacher(cfg, name)
    if kind == "evaluate-teacher":
        return P.resolve_evaluate(cfg, teacher=name)
    if kind == "train":
        return P.resolve_run(cfg, name)
    if kind == "evaluate":
        return P.resolve_evaluate(cfg, run=name)
    if kind == "table":
        return P.resolve_table(cfg, name)
    if kind == "figures":
        return P.resolve_figures(cfg)
    raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(KINDS)})")


def first_output(cfg, kind: str, name: str | None = None, seed=None) -> Path:
    if kind == "data":
        return P.data_dir(cfg, name)
    if kind == "teacher":
        return P.teacher_paths(cfg, name)["model"]
    if kind == "evaluate-teacher":
        return P.teacher_paths(cfg, name)["metrics"]
    if kind == "train":
        return P.run_paths(cfg, name, seed)["model"]
    if kind == "evaluate":
        return P.run_paths(cfg, name, seed)["metrics"]
    if kind == "table":
        return P.table_paths(cfg, name)["csv"]
    if kind == "figures":
        return Path(P.figures_outputs(cfg)[0])
    raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(KINDS)})")


def _paths(cfg, kind, name, seed) -> tuple[Path, Path]:
    stage = P.stage_name(kind, name, seed)
    folder = Path(first_output(cfg, kind, name, seed)).parent
    return folder / f".{stage}.spec.json", folder / f".{stage}.spec-changed"


def record(cfg, kind: str, name: str | None = None, seed=None) -> Path:
    """Write the stage's record (after the stage succeeded)."""
    path, _ = _paths(cfg, kind, name, seed)
    digest = spec_digest(stage_spec(cfg, kind, name, seed))
    return write_json_atomic(path, {"stage": P.stage_name(kind, name, seed),
                                    "spec_sha256": digest})


def recorded_digest(cfg, kind: str, name: str | None = None, seed=None) -> str | None:
    """The digest the outputs were made with; None without a (readable) record."""
    path, _ = _paths(cfg, kind, name, seed)
    try:
        return json.loads(path.read_text())["spec_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _outdated(cfg, kind, name, seed, out: Path) -> bool:
    """The outputs were made with other settings than the current ones, or (weights of a
    teacher or a run) the checkpoint is truncated or corrupt: rebuild."""
    recorded = recorded_digest(cfg, kind, name, seed)
    if recorded is not None and recorded != spec_digest(stage_spec(cfg, kind, name, seed)):
        return True
    return kind in ("teacher", "train") and out.exists() and not is_complete(out)


def stale_stamp(cfg, kind: str, name: str | None = None, seed=None) -> list[str]:
    """The Snakefile's extra input of a job: ``[]``, or ``[stamp]`` with the stamp's time set
    to now when the outputs are outdated (see the module doc; also a truncated checkpoint)."""
    _, stamp = _paths(cfg, kind, name, seed)
    out = Path(first_output(cfg, kind, name, seed))
    if _outdated(cfg, kind, name, seed, out):
        built = out.stat().st_mtime if out.exists() else 0.0
        if not stamp.exists() or stamp.stat().st_mtime <= built:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.touch()
            now = max(time.time(), built + 1)  # newer than the outputs, whatever the clocks
            os.utime(stamp, (now, now))
    return [str(stamp)] if stamp.exists() else []
