"""What a run was made from: params, code version, teacher checkpoint hash, seed.

Recorded in every weights file's ``meta`` and copied into the run's ``metrics.json`` by the
evaluate stage, so a table can refuse to mix runs distilled from different teacher checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

PACKAGE_ROOT = Path(__file__).resolve().parent


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_digest(obj: Any) -> str:
    """A stable hash of a JSON-able object (a resolved run spec)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The ``bcd`` source: a hash of its files, and the git commit when run from a checkout."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".csv"):
            digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            digest.update(path.read_bytes())
    out = {"bcd_source_sha256": digest.hexdigest()}
    try:
        rev = subprocess.run(["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            out["git_commit"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def record(*, kind: str, name: str, seed: int, spec: Mapping[str, Any],
           teacher_ckpt: str | os.PathLike | None = None, threads: int | None = None) -> dict:
    """The provenance of one training run (``threads``: torch's intra-op thread count it
    computed with)."""
    return {
        "kind": kind, "name": name, "seed": seed, "spec": dict(spec),
        "spec_sha256": spec_digest(spec), "code": code_version(), "threads": threads,
        "teacher_checkpoint": str(teacher_ckpt) if teacher_ckpt else None,
        "teacher_sha256": file_sha256(teacher_ckpt) if teacher_ckpt else None,
    }
