"""``python -m bcd.bench <command>``: performance benchmarks (no workflow involved).

    python -m bcd.bench context                      # naive vs blockwise context distillation
    python -m bcd.bench context --sizes 64 --json results/bench/context.json
    python -m bcd.bench step                         # one BCD training step vs one logit-KD step
    python -m bcd.bench grads --run r18-bcd          # each loss term's gradient norm at iteration 1
    python -m bcd.bench device --json out.json       # the GPU check (CPU-able parts on a CPU)
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bcd.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from bcd.bench import context, device, grads, step

    ctx = sub.add_parser("context", help="context distillation: materialised vs blockwise",
                         description=context.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    context.add_arguments(ctx)
    ctx.set_defaults(func=context.main)

    stp = sub.add_parser("step", help="one training step: BCD vs plain logit KD",
                         description=step.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    step.add_arguments(stp)
    stp.set_defaults(func=step.main)

    grd = sub.add_parser("grads", help="each loss term's gradient norm on the student backbone",
                         description=grads.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    grads.add_arguments(grd)
    grd.set_defaults(func=grads.main)

    dev = sub.add_parser("device", help="the GPU check: context loss, paper-width step in "
                                        "fp32/bf16/fp16, one-GPU torchrun with SyncBN",
                         description=device.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    device.add_arguments(dev)
    dev.set_defaults(func=device.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_context-worker"]:  # internal: one measurement in a fresh process
        from bcd.bench.context import worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
