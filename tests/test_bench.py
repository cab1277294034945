"""The device check (`python -m bcd.bench device`) on a CPU-only machine: it runs the CPU-able
parts and says what it skipped; and `bench step --amp` times each precision."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_runs_its_cpu_parts_and_lists_what_it_skipped(tmp_path):
    out = tmp_path / "device.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bcd.bench", "device", "--cpu", "--json",
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["parts"]) == {"context_float32", "context_bfloat16", "step"}
    assert not any(p.get("error") for p in result["parts"].values())
    rows = result["parts"]["context_bfloat16"]["result"]["rows"]
    assert rows[1]["value_rel"] < 1e-4                     # blockwise = materialised, bf16 in
    steps = {r["method"]: r for r in result["parts"]["step"]["result"]["rows"]}
    assert set(steps) == {"kd@none", "kd@bf16", "bcd@none", "bcd@bf16"}
    assert all(r["median_s"] > 0 for r in steps.values())
    skipped = " ".join(s["part"] for s in result["skipped"])
    assert "fp16" in skipped and "ddp" in skipped and "skipped: ddp" in proc.stdout
