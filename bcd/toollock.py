"""One workflow tool at a time on a checkout: Snakemake and DVC write the same files.

DVC holds its repository lock (``.dvc/tmp/lock``, an ``fcntl`` lock through ``zc.lockfile``)
for the whole of ``dvc repro``, stage commands included. The Snakefile calls
:func:`hold_dvc_lock` in Snakemake's main process: if DVC holds the lock, Snakemake stops
before any job with a message saying so; else Snakemake takes the same lock and keeps it until
it exits, so a ``dvc repro`` started meanwhile stops at once with DVC's "Unable to acquire lock"
(the lock file then names the holder: ``<pid> snakemake``). Two Snakemakes are kept apart by
Snakemake's own locks, two DVCs by DVC's. Jobs started by the holding Snakemake (and SLURM jobs,
which inherit its environment) skip the check (``BCD_TOOL_LOCK``). Plain Python; ``zc.lockfile``
is DVC's own dependency.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV = "BCD_TOOL_LOCK"
_HELD: list = []


class ToolLockError(RuntimeError):
    """Another workflow tool runs on this checkout."""


def hold_dvc_lock(root: str | os.PathLike = ".", tool: str = "snakemake") -> bool:
    """Take DVC's repository lock for this process's lifetime; True if taken (False: no DVC
    repository here, or this process descends from the holder). Raises :class:`ToolLockError`
    when DVC holds it."""
    if os.environ.get(ENV) or _HELD:
        return False
    dvc = Path(root) / ".dvc"
    if not dvc.is_dir():
        return False
    try:
        import zc.lockfile
    except ImportError:  # DVC not installed: nothing to keep apart
        return False
    (dvc / "tmp").mkdir(exist_ok=True)
    path = dvc / "tmp" / "lock"
    try:
        lock = zc.lockfile.LockFile(str(path), content_template="{pid} " + tool)
    except zc.lockfile.LockError:
        raise ToolLockError(_refusal(path, tool)) from None
    _HELD.append(lock)
    os.environ[ENV] = f"{os.getpid()} {tool}"
    return True


def _refusal(path: Path, tool: str) -> str:
    """Why ``tool`` cannot start: the lock's holder as its file names it (``<pid> <tool>``;
    DVC writes its pid alone)."""
    try:
        holder = path.read_text().split()
    except OSError:
        holder = []
    pid = holder[0] if holder else "?"
    if len(holder) > 1 and holder[1] == "snakemake":
        return (f"another Snakemake (pid {pid}) is running jobs on this checkout ({path} is "
                f"locked): wait for it to finish (or stop it), then run this again. A dry run "
                f"(-n) works meanwhile.")
    return (f"DVC is running on this checkout ({path} is locked by pid {pid}): {tool} and DVC "
            "write the same files and must not run at the same time. Wait for DVC to finish "
            "(or stop it), then run this again.")
