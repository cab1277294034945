"""After a kill of Snakemake itself: `make reproduce` again frees the stale lock
(tools/unlock_stale.py) and never the lock of a Snakemake that still runs."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools/unlock_stale.py"


def _locked_folder(tmp_path) -> Path:
    (tmp_path / "Snakefile").write_text("rule all:\n    input: []\n")
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(str(tmp_path / "x"))
    (locks / "0.output.lock").write_text(str(tmp_path / "y"))
    return locks


def test_a_stale_lock_is_removed(tmp_path):
    pytest.importorskip("snakemake")
    locks = _locked_folder(tmp_path)
    proc = subprocess.run([sys.executable, str(TOOL)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "stale Snakemake lock" in proc.stderr
    assert not locks.exists() or not any(locks.iterdir())


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_the_lock_of_a_running_snakemake_is_kept(tmp_path):
    locks = _locked_folder(tmp_path)
    # a live process that looks like Snakemake in this folder (argv[0] = "snakemake")
    alive = subprocess.Popen(["snakemake", "60"], executable=shutil.which("sleep"), cwd=tmp_path)
    try:
        proc = subprocess.run([sys.executable, str(TOOL)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
    finally:
        alive.kill()
        alive.wait()
    assert proc.returncode == 0 and f"pid {alive.pid}" in proc.stderr
    assert len(list(locks.iterdir())) == 2
