"""A copy of the project for the tests that run the workflow (so the checkout stays clean), and
the subprocess runner they share."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what a workflow run needs: the Snakefile and its rules, the package, the params
WORKFLOW = ("Snakefile", "workflow", "bcd", "params")


def copy_project(dest: Path, names=WORKFLOW) -> Path:
    """Copy ``names`` of the repository root into ``dest`` (caches left out); return ``dest``."""
    for name in names:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def run(args, cwd, timeout=900, check=True, env=None):
    """Run a command; with ``check``, fail with the ends of its output when it fails."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc
