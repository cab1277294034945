"""Atomic file writes: every file bcd produces is complete under its final name, or absent.

A writer gets a temporary sibling (``.<name>.tmp<pid>``), the data is flushed to disk, and the
file is renamed into place; on failure the temporary file is removed and an older file under the
final name stays as it was. A process killed mid-write leaves at most a ``.tmp`` sibling, which
no stage, Snakemake or DVC treats as an output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)``, fsync the result and rename it to ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """JSON (indent 1, NaN allowed) written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True))


def is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a whole torch checkpoint: a zip archive whose central directory,
    written last, is there (a truncated or overwritten file fails). Reads no tensor."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
