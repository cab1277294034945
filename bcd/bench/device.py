"""The device check: what bcd needs from a GPU, measured in one command (<= 8 minutes on one GPU).

    python -m bcd.bench device --json results/bench/device.json

On a CUDA machine it runs, each in its own process so that one failure does not hide the rest:

1. ``context``: the context-distillation loss at the paper's scale (batch 8, 64x64 maps, 256
   channels), materialised against blockwise: value, gradient, peak CUDA memory, time; with
   float32 and with bfloat16 inputs (what autocast hands the loss);
2. ``step``: one paper-width training step, PSPNet-R101 -> PSPNet-R18 with BCD (and logit KD
   beside it), 512x512, batch 8, in float32, bf16 and fp16 (``train.<role>.amp``): time and
   peak CUDA memory;
3. ``ddp``: a one-GPU ``torchrun`` distillation run with SyncBN and NCCL on the micro profile
   (data, teacher and a BCD student of a few iterations, in a temporary project).

On a CPU-only machine it runs the CPU-able parts at small sizes (context and step in float32 and
bf16) and lists what it skipped and why; ``tests/test_bench.py`` runs it that way. The JSON holds
each part's result (or error) and ``skipped``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bcd.bench import write_result

ROOT = Path(__file__).resolve().parents[2]


def _bench(args: list[str], out: Path, timeout: int) -> dict:
    """``python -m bcd.bench ARGS --json OUT`` in a fresh process: its JSON, or the error."""
    cmd = [sys.executable, "-m", "bcd.bench", *args, "--json", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": " ".join(cmd[1:])}
    result = {"command": " ".join(cmd[1:]), "seconds": round(time.perf_counter() - t0, 1),
              "stdout": proc.stdout[-4000:]}
    if proc.returncode != 0 or not out.is_file():
        result["error"] = f"exit {proc.returncode}: " + " | ".join(
            (proc.stderr or proc.stdout).strip().splitlines()[-4:])
        return result
    result["result"] = json.loads(out.read_text())
    return result


def _ddp(tmp: Path, timeout: int) -> dict:
    """A one-GPU torchrun BCD run (SyncBN, NCCL) on the micro profile, in a temporary project."""
    shutil.copytree(ROOT / "params", tmp / "params")
    overlay = tmp / "params" / "device.yaml"
    overlay.write_text("paths: {data: data, runs: runs, results: results}\n")
    params = ["--params", "params/default.yaml", "--params", "params/micro.yaml",
              "--params", "params/device.yaml"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    steps = [[sys.executable, "-m", "bcd", "data", *params],
             [sys.executable, "-m", "bcd", "teacher", *params, "--teacher", "pspnet-r101",
              "--quiet"],
             [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "bcd",
              "--", "train", "--launcher", "pytorch", *params, "--run", "r18-bcd", "--seed", "0",
              "--quiet"]]
    t0 = time.perf_counter()
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s: {' '.join(cmd[2:5])}"}
        if proc.returncode != 0:
            return {"error": f"{' '.join(cmd[2:5])} exited {proc.returncode}: " + " | ".join(
                proc.stderr.strip().splitlines()[-4:])}
    import torch

    meta = torch.load(tmp / "runs/r18-bcd/seed0/model.pth", weights_only=True)["meta"]
    return {"seconds": round(time.perf_counter() - t0, 1), "processes": meta.get("processes"),
            "train_seconds": meta.get("seconds"), "peak_cuda_mb": meta.get("peak_cuda_mb"),
            "seconds_per_iter": meta.get("seconds_per_iter")}


def run(args) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    result = {"meta": {"torch": torch.__version__, "cuda": cuda,
                       "gpu": torch.cuda.get_device_name() if cuda else None},
              "parts": {}, "skipped": []}
    skip = result["skipped"]
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bcd-device-") as tmp:
        tmp = Path(tmp)
        if cuda:
            ctx = ["context", "--sizes", "64", "--batch", "8", "--channels", "256",
                   "--device", "cuda", "--repeats", "3"]
            stp = ["step", "--base-channels", "64", "--size", "512", "--batch", "8",
                   "--device", "cuda", "--methods", "kd", "bcd", "--amp", "none", "bf16", "fp16",
                   "--repeats", "3", "--warmup", "2"]
        else:  # the CPU-able parts at a size a 2-core machine does in a minute or two
            ctx = ["context", "--sizes", "16", "--batch", "2", "--channels", "32",
                   "--repeats", "1", "--warmup", "0"]
            stp = ["step", "--size", "64", "--batch", "2", "--methods", "kd", "bcd",
                   "--amp", "none", "bf16", "--repeats", "1", "--warmup", "1"]
            skip.append({"part": "context at the paper's scale (b 8, 64x64, 256 ch)",
                         "reason": "no GPU: run at b 2, 16x16, 32 channels instead"})
            skip.append({"part": "step fp16 and the paper-width 512x512 batch-8 step",
                         "reason": "no GPU (CPU autocast has no float16): a 64x64 batch-2 step "
                                   "in float32 and bf16 instead"})
            skip.append({"part": "ddp (torchrun, NCCL, SyncBN)",
                         "reason": "no GPU; CPU multi-process training (gloo) is covered by "
                                   "tests/test_distributed.py"})
        for dtype in ("float32", "bfloat16"):
            result["parts"][f"context_{dtype}"] = _bench(
                ctx + ["--dtype", dtype], tmp / f"context-{dtype}.json", args.part_timeout)
        result["parts"]["step"] = _bench(stp, tmp / "step.json", args.part_timeout)
        if cuda:
            result["parts"]["ddp"] = _ddp(tmp / "ddp", args.part_timeout)
    result["meta"]["seconds"] = round(time.perf_counter() - t_all, 1)
    for name, part in result["parts"].items():
        state = f"ERROR {part['error']}" if part.get("error") else f"ok ({part.get('seconds')} s)"
        print(f"{name:>18}: {state}")
    for s in skip:
        print(f"skipped: {s['part']}: {s['reason']}")
    return write_result(result, args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu", action="store_true",
                        help="run the CPU-able parts even where a GPU is available")
    parser.add_argument("--part-timeout", type=int, default=240,
                        help="seconds each part may take (default 240)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def main(args) -> int:
    result = run(args)
    return 1 if any(p.get("error") for p in result["parts"].values()) else 0
