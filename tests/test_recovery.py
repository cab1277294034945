"""After a kill of Snakemake itself: `make reproduce` again frees the stale lock
(tools/unlock_stale.py) and never the lock of a Snakemake that still runs."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from project_copy import WORKFLOW, copy_project  # tests/project_copy.py

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


# ---- Snakemake and DVC never run at once on one checkout (bcd.toollock) -----------------------
def _project(tmp_path) -> Path:
    copy_project(tmp_path, (*WORKFLOW, "dvc.yaml"))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True, timeout=120)
    return tmp_path


def _snakemake_beside_a_held_lock(root: Path, holder: str | None, *flags: str):
    """Snakemake on the micro data stage while the DVC repository lock is held by another
    process (``holder``: the tool name its lock file records; DVC writes its pid alone)."""
    import zc.lockfile

    (root / ".dvc/tmp").mkdir(exist_ok=True)
    template = "{pid}" + (f" {holder}" if holder else "")
    held = zc.lockfile.LockFile(str(root / ".dvc/tmp/lock"), content_template=template)
    try:
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *flags,
                               "data/micro", "--configfile", "params/micro.yaml"], cwd=root,
                              capture_output=True, text=True, timeout=300)
    finally:
        held.close()


def test_snakemake_refuses_to_start_while_dvc_runs(tmp_path):
    pytest.importorskip("dvc")
    root = _project(tmp_path)
    proc = _snakemake_beside_a_held_lock(root, None)   # what `dvc repro` holds
    assert proc.returncode != 0
    assert "DVC is running on this checkout" in proc.stderr + proc.stdout
    assert not (root / "data/micro").exists()


def test_a_dry_run_is_answered_while_another_tool_runs(tmp_path):
    """-n changes nothing: it is not refused, and it leaves the other tool's lock alone."""
    pytest.importorskip("dvc")
    root = _project(tmp_path)
    proc = _snakemake_beside_a_held_lock(root, "snakemake", "-n")
    real = _snakemake_beside_a_held_lock(root, "snakemake")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rule data" in proc.stdout + proc.stderr
    assert real.returncode != 0
    assert "another Snakemake" in real.stderr + real.stdout
    assert not (root / "data/micro").exists()


def test_dvc_refuses_to_start_while_snakemake_runs(tmp_path):
    pytest.importorskip("dvc")
    import time

    root = _project(tmp_path)
    smk = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1",
                            "runs/micro/teachers/pspnet-r101/model.pth",
                            "--configfile", "params/micro.yaml"], cwd=root,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = root / ".dvc/tmp/lock"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and smk.poll() is None:
            if lock.is_file() and "snakemake" in lock.read_text():
                break
            time.sleep(0.2)
        assert smk.poll() is None, "snakemake ended before the check"
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "data"], cwd=root,
                              capture_output=True, text=True, timeout=300)
        assert smk.poll() is None, "snakemake ended during the check: inconclusive"
    finally:
        smk.kill()
        smk.wait()
    assert proc.returncode != 0 and "Unable to acquire lock" in proc.stderr + proc.stdout
