"""The tests' shared helpers for running the project in a subprocess: a copy of the project (so
the checkout stays clean) and the runner that fails with the ends of a command's output.

``tests/conftest.py`` wraps :func:`copy_project` in the ``project_copy`` fixture; module-scoped
fixtures (a whole workflow run shared by a module's tests) call it directly with a folder of
their own from ``tmp_path_factory``."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: what a workflow run needs: the Snakefile and its rules, the package, the params
WORKFLOW = ("Snakefile", "workflow", "bcd", "params")
#: the package and the params alone: what ``python -m bcd <stage>`` needs
PACKAGE = ("bcd", "params")
#: ``python -m bcd`` (the interpreter running the tests)
BCD = [sys.executable, "-m", "bcd"]
#: the micro profile's params, as the stage commands take them
MICRO = ["--params", "params/default.yaml", "--params", "params/micro.yaml"]


def copy_project(dest: Path, names=WORKFLOW) -> Path:
    """Copy ``names`` of the repository root into ``dest`` (caches left out); return ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def tool_env(**extra) -> dict:
    """This environment with the venv's tools (``dvc``, ``snakemake``) first on PATH, DVC's
    analytics off, and ``extra``."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def run(args, cwd, timeout=900, check=True, env=None):
    """Run a command; with ``check``, fail with the ends of its output when it fails."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc
