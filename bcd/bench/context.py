"""Context distillation: materialised ``HW x HW`` relations vs the blockwise exact computation.

For every feature size, :class:`bcd.losses.ContextDistillLoss` (forward + backward, the
configuration of ``params/default.yaml``: 1x1 student alignment, channel standardisation,
``'entry'`` reduction) is run with ``block_size=0`` (naive, materialised) and with the blockwise
computation, on the same seeded inputs. Reported per size:

* peak extra memory of one forward + backward: on CPU the growth of the process's resident-set
  high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) over its value once the inputs exist,
  measured in a fresh subprocess per method (torch's CPU allocations are invisible to
  ``tracemalloc``); on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before;
* time of one forward + backward: median over ``--repeats`` after ``--warmup`` rounds, the
  methods alternating within one subprocess so that they share the machine's load;
* the ratios blockwise / naive, and the largest absolute and relative differences of the loss
  value and of the gradient with respect to the student features.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bcd.bench import write_result

NAIVE = "naive"


# ----------------------------------------------------------------------------------------------
# Worker side (runs in a fresh subprocess)
# ----------------------------------------------------------------------------------------------
def _setup(spec: dict):
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return torch


def _loss_module(spec: dict, block_size: int):
    from bcd.losses import ContextDistillLoss

    temperature = None
    if spec["temperature"] == "stat":  # statistic computed every call, tau never raised
        temperature = {"init": 1.0, "factor": 1.05, "threshold": float("inf")}
    loss = ContextDistillLoss(in_channels=spec["channels"], temperature=temperature,
                              block_size=block_size)
    return loss.to(spec["device"]).train()


def _inputs(torch, spec: dict):
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    shape = (spec["batch"], spec["channels"], spec["height"], spec["width"])
    dtype = getattr(torch, spec.get("dtype", "float32"))  # the loss computes in float32 inside
    preds_s = torch.randn(shape, generator=gen).to(spec["device"], dtype).requires_grad_(True)
    preds_t = torch.randn(shape, generator=gen).to(spec["device"], dtype)
    return preds_s, preds_t


def _step(torch, loss, preds_s, preds_t, device: str):
    preds_s.grad = None
    loss.zero_grad(set_to_none=True)
    value = loss(preds_s, preds_t)
    value.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value


def _block(method: str) -> int:
    return 0 if method == NAIVE else int(method.split("=", 1)[1])


def worker(spec: dict) -> dict:
    """One forward + backward of ``spec['method']`` in a fresh process: its peak extra memory,
    its value and gradient (saved to ``spec['out']``); then, if ``spec['time_methods']`` is set,
    those methods alternating, ``warmup`` rounds and ``repeats`` timed ones, on the same inputs.
    """
    torch = _setup(spec)
    device = spec["device"]
    loss = _loss_module(spec, _block(spec["method"]))
    # Initialise the libraries (thread pools, BLAS) on a tiny input first, outside the window.
    tiny = dict(spec, batch=1, height=2, width=2)
    _step(torch, loss, *_inputs(torch, tiny), device)
    preds_s, preds_t = _inputs(torch, spec)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    value = _step(torch, loss, preds_s, preds_t, device)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    torch.save({"value": value.detach().double().cpu(),
                "grad": preds_s.grad.detach().double().cpu()}, spec["out"])
    result = {"peak_bytes": int(peak)}
    if spec.get("time_methods"):
        losses = {m: _loss_module(spec, _block(m)) for m in spec["time_methods"]}
        times: dict[str, list[float]] = {m: [] for m in losses}
        for round_ in range(spec["warmup"] + spec["repeats"]):
            for method, module in losses.items():
                t0 = time.perf_counter()
                _step(torch, module, preds_s, preds_t, device)
                if round_ >= spec["warmup"]:
                    times[method].append(time.perf_counter() - t0)
        result["times"] = times
    return result


def worker_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = worker(spec)
    print("BCD_BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------
def _run_worker(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "bcd.bench", "_context-worker", json.dumps(spec)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the bcd package
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("BCD_BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}


def parse_size(text: str) -> tuple[int, int]:
    """``'64'`` -> (64, 64); ``'48x64'`` -> (48, 64)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or HxW") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or HxW with N >= 1")
    return dims[0], dims[1]


def _diff(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|)."""
    err = float((a - b).abs().max())
    scale = float(b.abs().max())
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))


def _mib(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.1f}"


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def run(args) -> dict:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = [NAIVE] + [f"blockwise={b}" for b in args.block_size]
    meta = {
        "device": device,
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batch": args.batch, "channels": args.channels, "temperature": args.temperature,
        "dtype": args.dtype,
        "repeats": args.repeats, "warmup": args.warmup,
        "memory": "cuda max_memory_allocated" if device.startswith("cuda")
        else "ru_maxrss growth in a fresh subprocess",
    }
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    print(f"context distillation, forward + backward: batch {args.batch}, {args.channels} "
          f"channels, {args.dtype} inputs, device {device}, {meta['threads']} threads, temperature {args.temperature}, "
          f"time = median of {args.repeats} after {args.warmup} warm-up")
    header = (f"{'size':>7} {'HW':>5} {'method':>14} {'peak MiB':>10} {'time s':>8} "
              f"{'mem ratio':>9} {'time ratio':>10} {'value rel':>9} {'grad abs':>9} "
              f"{'grad rel':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bcd-bench-") as tmp:
        for height, width in args.sizes:
            base = {"batch": args.batch, "channels": args.channels, "height": height,
                    "width": width, "device": device, "threads": args.threads,
                    "temperature": args.temperature, "seed": args.seed, "dtype": args.dtype}
            mem = {}
            for method in methods:  # one fresh process each; the last one also times them all
                out = str(Path(tmp) / f"{height}x{width}-{method}.pt")
                extra = {}
                if method == methods[-1]:
                    extra = dict(time_methods=methods, warmup=args.warmup, repeats=args.repeats)
                mem[method] = _run_worker(dict(base, method=method, out=out, **extra))
                mem[method]["out"] = out
            timing = mem[methods[-1]]
            if "error" not in timing and "times" not in timing:
                timing = {"error": "no times"}
            ref = mem[NAIVE]
            ref_saved = torch.load(ref["out"]) if "error" not in ref else None
            ref_time = None
            if "error" not in timing:
                ref_time = statistics.median(timing["times"][NAIVE])
            for method in methods:
                res = mem[method]
                row = {"height": height, "width": width, "hw": height * width,
                       "method": method, "block_size": _block(method),
                       "peak_bytes": res.get("peak_bytes"), "error": res.get("error"),
                       "time_s": None, "times_s": None}
                if "error" not in timing:
                    row["times_s"] = timing["times"][method]
                    row["time_s"] = statistics.median(timing["times"][method])
                elif row["error"] is None:
                    row["error"] = timing["error"]
                if method != NAIVE and ref_saved is not None and "error" not in res:
                    saved = torch.load(res["out"])
                    row["value_abs"], row["value_rel"] = _diff(saved["value"], ref_saved["value"])
                    row["grad_abs"], row["grad_rel"] = _diff(saved["grad"], ref_saved["grad"])
                    if ref.get("peak_bytes"):
                        row["mem_ratio"] = res["peak_bytes"] / ref["peak_bytes"]
                    if ref_time and row["time_s"] is not None:
                        row["time_ratio"] = row["time_s"] / ref_time
                rows.append(row)
                print(f"{height:>3}x{width:<3} {height * width:>5} {method:>14} "
                      f"{_mib(row['peak_bytes']):>10} {_fmt(row['time_s'], '.3f'):>8} "
                      f"{_fmt(row.get('mem_ratio'), '.3f'):>9} "
                      f"{_fmt(row.get('time_ratio'), '.3f'):>10} "
                      f"{_fmt(row.get('value_rel'), '.1e'):>9} "
                      f"{_fmt(row.get('grad_abs'), '.1e'):>9} "
                      f"{_fmt(row.get('grad_rel'), '.1e'):>9}"
                      + (f"  ERROR {row['error']}" if row["error"] else ""), flush=True)
    print("mem ratio / time ratio: blockwise over naive. value rel: |dL| / |L|; grad abs: "
          "max |d grad|; grad rel: max |d grad| / max |grad| (w.r.t. the student features).")
    result = {"meta": meta, "rows": rows}
    return write_result(result, args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bcd.losses.relation import DEFAULT_BLOCK_SIZE

    parser.add_argument("--sizes", nargs="+", type=parse_size,
                        default=[(16, 16), (32, 32), (48, 48), (64, 64)],
                        help="feature map sizes, N (square) or HxW (default: 16 32 48 64; 64 = "
                             "the paper's 512x512 input at output stride 8)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8, the paper's)")
    parser.add_argument("--channels", type=int, default=256,
                        help="feature channels d (default 256, the paper's)")
    parser.add_argument("--block-size", type=int, nargs="+", default=[DEFAULT_BLOCK_SIZE],
                        help=f"rows per block of the blockwise computation; several values are "
                             f"compared side by side (default {DEFAULT_BLOCK_SIZE})")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--temperature", choices=("fixed", "stat"), default="fixed",
                        help="'fixed': tau = 1; 'stat': the adaptive temperature's statistic is "
                             "computed at every call as in training (threshold set to infinity "
                             "so that tau, and hence the work, stays the same). Default fixed")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the feature maps handed to the loss, as under autocast "
                             "(the loss computes in float32 inside; default float32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random features")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def main(args) -> int:
    for name in ("batch", "channels", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bcd.bench context: --{name} must be >= 1")
    if args.warmup < 0 or min(args.block_size) < 1:
        raise SystemExit("bcd.bench context: --warmup must be >= 0 and --block-size >= 1")
    result = run(args)
    return 1 if any(r["error"] for r in result["rows"]) else 0
