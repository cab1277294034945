"""Remove Snakemake's lock of this checkout when the Snakemake that took it is gone.

After ``kill -9`` of ``snakemake`` (or a crash of the machine) its lock stays in
``.snakemake/locks`` and every later call fails with ``LockException`` until ``snakemake
--unlock``. ``make reproduce`` runs this first: if no live process of this user runs Snakemake
in this directory (Linux: ``/proc/<pid>/cwd`` and ``cmdline``), the lock is stale and is
removed; if one does, nothing is touched and Snakemake refuses the second run as it should.
Elsewhere than Linux it only says what to do.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def snakemake_running_in(folder: Path) -> list[int]:
    """PIDs of live processes whose command line runs snakemake with ``folder`` as cwd."""
    here, found = folder.resolve(), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid():
                continue
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if any(Path(a.decode(errors="replace")).name.startswith("snakemake") or
                   a == b"snakemake" for a in cmd[:3]) and Path(os.readlink(proc / "cwd")) == here:
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def main() -> int:
    folder = Path.cwd()
    locks = folder / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return 0
    if not Path("/proc/self/cwd").exists():
        print(f"{locks} holds a lock; if no Snakemake runs here, `snakemake --unlock` frees it",
              file=sys.stderr)
        return 0
    running = snakemake_running_in(folder)
    if running:
        print(f"Snakemake is running in {folder} (pid {', '.join(map(str, running))}); "
              "not unlocking", file=sys.stderr)
        return 0
    print(f"removing a stale Snakemake lock in {folder} (no Snakemake runs here)", file=sys.stderr)
    return subprocess.call([sys.executable, "-m", "snakemake", "--unlock", "--quiet"],
                           stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
