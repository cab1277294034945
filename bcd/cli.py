"""``python -m bcd <command>``: the stage commands, usable with or without the workflow.

    python -m bcd data      --params params/default.yaml [--dataset KEY]
    python -m bcd teacher   --params params/default.yaml --teacher pspnet-r101
    python -m bcd train     --params params/default.yaml --run r18-bcd --seed 0
    torchrun --nproc_per_node 4 -m bcd -- train --launcher pytorch --params ... --run R --seed 0
    python -m bcd evaluate  --params params/default.yaml --run r18-bcd --seed 0
    python -m bcd evaluate  --params params/default.yaml --teacher pspnet-r101
    python -m bcd table     --params params/default.yaml --table table1
    python -m bcd figures   --params params/default.yaml
    python -m bcd check-params --params params/default.yaml
    python -m bcd dvc-yaml  --params params/default.yaml --out dvc.yaml

Several ``--params`` files are merged in order, like Snakemake's ``--configfile`` overlays.
"""
from __future__ import annotations

import argparse
import sys

from bcd import params as P


def _data(args) -> None:
    cfg = P.load_params(args.params)
    key = args.dataset  # None: the top-level `data`; else a key of `datasets`
    data, out = P.data_section(cfg, key), P.data_dir(cfg, key)
    from bcd.data.registry import dataset_entry

    # its registry entry prepares it: generated (shapes), converted (camvid), or checked where
    # it lies, never downloaded or copied (the paper's datasets)
    root = dataset_entry(data).prepare(data, out)
    print(f"dataset ready: {root}")


def _class_weights(args) -> None:
    from bcd.data.class_weights import (class_frequencies, median_frequency_weights,
                                        split_label_files)
    from bcd.data.registry import dataset_entry

    cfg = P.load_params(args.params)
    data, root = P.data_section(cfg, args.dataset), P.data_dir(cfg, args.dataset)
    entry = dataset_entry(data)
    names = entry.classes or [str(c) for c in range(entry.num_classes)]
    pixels, present_in = class_frequencies(split_label_files(root, args.split), len(names))
    weights = median_frequency_weights(pixels, present_in, args.power)
    share = pixels / max(pixels.sum(), 1)
    print(f"{'class':<14}{'pixels %':>9}{'weight':>9}")
    for name, s, w in zip(names, share, weights):
        print(f"{name:<14}{100 * s:>9.2f}{w:>9.3f}")
    print("class_weight: [" + ", ".join(f"{w:.3g}" for w in weights) + "]")


def _teacher(args) -> None:
    from bcd.train import train_teacher

    path = train_teacher(P.teacher_job(P.load_params(args.params), args.teacher),
                         launcher=args.launcher)
    print(f"teacher weights: {path}")


def _train(args) -> None:
    from bcd.train import train_student

    path = train_student(P.student_job(P.load_params(args.params), args.run, args.seed),
                         launcher=args.launcher)
    print(f"student weights: {path}")


def _add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (iteration, losses, it/s, ETA) on stderr")


def _add_launcher(p) -> None:
    p.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                   help="pytorch: one of N processes started by `torchrun --nproc_per_node N "
                        "-m bcd -- ...` (gloo on CPU, NCCL on GPUs); train.*.batch_size is per "
                        "process (per GPU). Default: a single process")


def _evaluate(args) -> None:
    from bcd.evaluate import evaluate

    job = P.evaluation_job(P.load_params(args.params), run=args.run, seed=args.seed,
                           teacher=args.teacher)
    out = evaluate(job, recompute=args.recompute)
    score = (f"mIoU {out['mIoU']:.2f}" if "mIoU" in out else f"box mAP {out['bbox_mAP']:.2f}"
             + (f", mask mAP {out['segm_mAP']:.2f}" if "segm_mAP" in out else ""))
    print(f"{out['kind']} {out['name']} seed={out['seed']}: {score}")


def _table(args) -> None:
    from bcd import tables

    tables.main_table(args)


def _summary(args) -> None:
    from bcd import tables

    tables.main_summary(args)


def _figures(args) -> None:
    from bcd import figures

    figures.main_figures(args)


def _dvc_yaml(args) -> None:
    from bcd import dvcfile

    dvcfile.main_dvc_yaml(args)


def _serve(args) -> None:
    from bcd import warm

    warm.serve(args.socket, main, parent=args.parent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bcd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(name, func, help_, checkpoints=False):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--params", action="append", required=True, metavar="FILE",
                       help="params file(s), merged in order")
        if checkpoints:  # only the commands that load weights from files
            p.add_argument("--trust-checkpoints", action="store_true",
                           help="load checkpoints that need full unpickling (arbitrary code!): "
                                "only for files you trust; default: weights only")
        p.set_defaults(func=func)
        return p

    cmd("data", _data, "generate/prepare the dataset (the paper's datasets: check data.root)"
        ).add_argument("--dataset", help="a key of the params' `datasets` (default: `data`)")
    p = cmd("class-weights", _class_weights,
            "print median-frequency class weights of a prepared split (a model's class_weight)")
    p.add_argument("--dataset", help="a key of the params' `datasets` (default: `data`)")
    p.add_argument("--split", default="train", help="the split whose labels are counted (default train)")
    p.add_argument("--power", type=float, default=1.0,
                   help="weights ** power (0.5: their square root; default 1)")
    p = cmd("teacher", _teacher, "train one teacher on its dataset, then evaluate it",
            checkpoints=True)
    p.add_argument("--teacher", required=True, help="a key of the params' `teachers`")
    _add_launcher(p)
    _add_quiet(p)
    p = cmd("train", _train, "train a student run for one seed", checkpoints=True)
    p.add_argument("--run", required=True, help="a key of the params' `runs`")
    p.add_argument("--seed", type=int, required=True, help="the seed (one of the params' `seeds`)")
    _add_launcher(p)
    _add_quiet(p)
    p = cmd("evaluate", _evaluate, "evaluate a trained run or teacher -> metrics.json",
            checkpoints=True)
    p.add_argument("--run", help="a student run (a key of `runs`; with --seed)")
    p.add_argument("--seed", type=int, help="the run's seed")
    p.add_argument("--teacher", help="a teacher (a key of `teachers`) instead of a run")
    p.add_argument("--recompute", action="store_true",
                   help="evaluate from scratch even when training's own evaluation of the same "
                        "weights, settings and code is in the work dir")
    cmd("table", _table, "build a results table (CSV + LaTeX)").add_argument(
        "--table", required=True, help="a key of the params' `tables`")
    p = cmd("summary", _summary,
            "a table's rows on one split with per-class IoUs and paired intervals (val: the "
            "last validation of each run, for choosing settings; test: the evaluated metrics)")
    p.add_argument("--table", required=True, help="a key of the params' `tables`")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val (default): the last validation of each run; test: its metrics.json")
    cmd("figures", _figures, "draw the figures (qualitative grid, boundary maps, training curves, "
                             "ablation chart) and export the training curves for dvc plots",
        checkpoints=True)
    cmd("check-params", lambda a: P.main_check(a), "validate params and print a summary")
    cmd("dvc-yaml", _dvc_yaml, "write dvc.yaml from the params").add_argument(
        "--out", default="dvc.yaml", help="where to write it (default dvc.yaml)")
    serve_help = ("warm-start server: import the stack once, fork a child per stage command "
                  "whose BCD_WARM_SOCKET names it (bcd.warm)")
    p = sub.add_parser("serve", help=serve_help, description=serve_help)
    p.add_argument("--socket", required=True, help="the AF_UNIX socket path to listen on")
    p.add_argument("--parent", type=int, help="exit when this process (the starter) exits")
    p.set_defaults(func=_serve)
    return parser


def _stage_of(args) -> tuple | None:
    """(kind, name, seed) of the workflow stage a command ran, None for the other commands."""
    cmd = args.command
    if cmd == "data":
        return ("data", args.dataset, None)
    if cmd == "teacher":
        return ("teacher", args.teacher, None)
    if cmd == "train":
        return ("train", args.run, args.seed)
    if cmd == "evaluate":
        return ("evaluate-teacher", args.teacher, None) if args.teacher else (
            "evaluate", args.run, args.seed)
    if cmd == "table":
        return ("table", args.table, None)
    if cmd == "figures":
        return ("figures", None, None)
    return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        import os

        os.environ["BCD_QUIET"] = "1"  # read by bcd.train
    if getattr(args, "trust_checkpoints", False):
        import os

        from bcd.weights import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # read by bcd.weights.load_checkpoint
    try:
        args.func(args)
        stage = _stage_of(args)
        if stage is not None:  # what the outputs were made with, for every tool (specrecord)
            from bcd import specrecord

            specrecord.record(P.load_params(args.params), *stage)
    except P.ParamsError as err:
        print(f"bcd {args.command}: invalid params: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, FloatingPointError,
            ConnectionError) as err:
        print(f"bcd {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
