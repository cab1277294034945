"""How hard each loss term pushes the student at initialisation: its gradient norm on the
student's backbone on the first training batch, and its share of the cross-entropy's.

    python -m bcd.bench grads --params params/default.yaml --run r18-bcd
    python -m bcd.bench grads --params params/default.yaml --run r18 --run r18-kd --seed 1
    python -m bcd.bench grads --params params/default.yaml --run all --json results/bench/grads.json
    python -m bcd.bench grads --params params/default.yaml --params params/paper.yaml \\
        --run r18-bcd --random-teacher --synthetic-batch --no-pretrained --batch 2

Each run is built exactly as the train stage builds it (:func:`bcd.mm.configs.distill_config`,
mmengine's Runner with the run's seed: the same initial student, teacher checkpoint, data
pipeline, sampler and hooks) and trained for one iteration in a temporary folder, without
validation or checkpoints. The run's own :class:`bcd.mm.hooks.GradNormHook` measures every loss
term's gradient norm on the student backbone (``torch.autograd.grad`` per term) and its
:class:`~bcd.mm.hooks.TrainLogHook` row of iteration 1 is what this command prints: term, loss
value, gradient norm, and the norm as a percentage of the segmentation cross-entropy's
(``decode.loss_ce``). BD's value (``distill.loss_bd``) includes its teacher-side probe, whose
gradient never reaches the student; its two parts are printed beside it.

The teacher is the trained checkpoint of the params. Without one, ``--random-teacher`` uses an
untrained teacher (PyTorch's default initialisation): a smoke test, its shares say little about a
trained teacher. ``--synthetic-batch`` replaces the dataset by random images with blocky labels
of the profile's crop size (for a profile whose dataset is absent, e.g. the paper's);
``--no-pretrained`` drops the models' ``pretrained`` weights (which need network access the
first time). ``--batch`` overrides the batch size (this changes which images form the batch).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from bcd.bench import write_result

CE_SUFFIX = "decode.loss_ce"  # the segmentation cross-entropy the shares are relative to


def _register_synthetic_dataset() -> str:
    """Register (once) the dataset ``--synthetic-batch`` uses; return its config type."""
    import torch
    from mmseg.registry import DATASETS

    from bcd.bench.step import synthetic_batch

    name = "BCDSyntheticBatch"
    if name in DATASETS.module_dict:
        return name

    class SyntheticBatch(torch.utils.data.Dataset):
        """``num`` random packed samples of ``(height, width)`` (:func:`synthetic_batch`)."""

        def __init__(self, num: int, height: int, width: int, num_classes: int, seed: int):
            self.batch = synthetic_batch(num, (height, width), num_classes, seed)
            self.metainfo = dict(classes=tuple(str(c) for c in range(num_classes)))

        def __len__(self) -> int:
            return len(self.batch["inputs"])

        def __getitem__(self, i: int) -> dict:
            return {"inputs": self.batch["inputs"][i],
                    "data_samples": self.batch["data_samples"][i]}

    DATASETS.register_module(name=name, module=SyntheticBatch, force=True)
    return name


def _teacher(cfg, spec: dict, data: dict, work: Path, random_teacher: bool,
             done: dict) -> tuple[Path, str]:
    """The run's teacher checkpoint and how it was made (a path, or an untrained teacher);
    ``done`` remembers the checked and the made ones of earlier runs (``--run all``)."""
    name = spec["teacher"]["name"]
    if ("teacher", name) not in done:
        done[("teacher", name)] = _make_teacher(cfg, spec, data, work, random_teacher)
    return done[("teacher", name)]


def _make_teacher(cfg, spec: dict, data: dict, work: Path, random_teacher: bool):
    from bcd import params as P
    from bcd import runtime as T
    from bcd.bench.step import random_teacher as make_random
    from bcd.mm import configs

    name = spec["teacher"]["name"]
    path = Path(P.teacher_paths(cfg, name)["model"])
    if path.is_file():
        T.check_teacher(spec["teacher"]["model"], data, path)
        return path, str(path)
    if not random_teacher:
        try:
            T.require_teacher(P.teacher_checkpoint(cfg, name))
        except FileNotFoundError as err:
            raise SystemExit(f"bcd.bench grads: {err}; or pass --random-teacher for an "
                             "untrained teacher (a smoke test)") from None
    path = work / f"teacher-{name}.pth"
    make_random(spec["teacher"]["model"], configs.num_classes(data), configs.crop_size(data),
                path, spec["teacher"]["seed"], "bcd.bench grads, random weights")
    return path, "untrained (random weights)"


def measure(cfg, run: str, seed: int, work: Path, *, random_teacher: bool = False,
            synthetic: bool = False, batch: int | None = None, no_pretrained: bool = False,
            done: dict | None = None) -> dict:
    """One training iteration of ``run`` (seed ``seed``) in the folder ``work``; its logged loss
    terms and their gradient norms on the student backbone (see the module doc). ``done``: a
    dict shared by the runs of one call (teachers and datasets checked or made once)."""
    from mmengine.runner import Runner

    import bcd.mm  # noqa: F401  (compat patches, registration)
    from bcd import params as P
    from bcd import runtime as T
    from bcd.mm import configs
    from bcd.mm.compat import PretrainedWeightsError

    done = {} if done is None else done
    spec = P.resolve_run(cfg, run)
    data = spec["data"]
    student_spec = copy.deepcopy(spec["student"]["model"])
    if no_pretrained:
        student_spec.pop("pretrained", None)
        if spec["teacher"]:
            spec["teacher"]["model"].pop("pretrained", None)
    work.mkdir(parents=True, exist_ok=True)
    teacher_ckpt = teacher_label = teacher_spec = None
    if spec["methods"]:
        teacher_spec = spec["teacher"]["model"]
        teacher_ckpt, teacher_label = _teacher(cfg, spec, data, work.parent, random_teacher,
                                               done)
    if synthetic:
        root = work
    else:
        key = ("dataset", P.dataset_of(cfg, run=run))
        if key not in done:
            try:
                done[key] = T.require_dataset(P.data_job(cfg, key[1]))
            except FileNotFoundError as err:
                raise SystemExit(f"bcd.bench grads: {err}; or pass --synthetic-batch for "
                                 "random images of the crop size") from None
        root = done[key]
    config = configs.distill_config(
        student_spec=student_spec, teacher_spec=teacher_spec, teacher_ckpt=teacher_ckpt,
        methods=spec["methods"], decay_schedule=spec["weight_decay_schedule"], data=data,
        data_root=root, train=spec["train"], work_dir=work, seed=seed,
        log_file=work / "train_log.json")
    # one iteration (r(t) and the learning rate of iteration 1 do not depend on the length)
    config.train_cfg.max_iters = 1
    config.val_dataloader = config.val_cfg = config.val_evaluator = None
    config.default_hooks.checkpoint = None
    # mmengine keeps one MessageHub per experiment name and one visualizer per name: unique
    # names, so that several runs in one process share neither
    config.experiment_name = f"bcd-bench-grads-{run}-seed{seed}-{time.monotonic_ns()}"
    config.visualizer.name = config.experiment_name
    if batch:
        config.train_dataloader.batch_size = int(batch)
    n = int(config.train_dataloader.batch_size)
    h, w = configs.crop_size(data)
    if synthetic:
        config.train_dataloader.dataset = dict(
            _scope_="mmseg", type=_register_synthetic_dataset(), num=n, height=h, width=w,
            num_classes=configs.num_classes(data), seed=seed)
    try:
        Runner.from_cfg(config).train()
    except PretrainedWeightsError as err:
        raise SystemExit(f"bcd.bench grads: {err} Or pass --no-pretrained (random "
                         "initialisation).") from None
    row = json.loads((work / "train_log.json").read_text())["train"][0]
    return {"run": run, "seed": seed, "student": spec["student"]["model_name"],
            "teacher": spec["teacher"]["model_name"] if spec["methods"] else None,
            "teacher_weights": teacher_label, "methods": sorted(spec["methods"]),
            "batch": {"size": n, "crop": [h, w],
                      "source": "synthetic" if synthetic else str(root)},
            "terms": _terms(row), "log_row": row}


def _terms(row: dict) -> list[dict]:
    """The table rows: every ``grad_norm.<term>`` of a TrainLogHook row, ``total`` last."""
    norms = {k[len("grad_norm."):]: v for k, v in row.items() if k.startswith("grad_norm.")}
    ce = next((v for k, v in norms.items() if k.endswith(CE_SUFFIX)), None)
    out = []
    for term, norm in sorted(norms.items(), key=lambda kv: kv[0] == "total"):
        entry = {"term": term, "loss": row.get("loss" if term == "total" else term),
                 "grad_norm": norm, "share_of_ce_pct": 100.0 * norm / ce if ce else None}
        name = term.split(".")[-1]  # loss_bd: its logged parts loss_bd_kd, loss_bd_probe
        if f"{name}_kd" in row and f"{name}_probe" in row:
            entry["student_facing_loss"] = row[f"{name}_kd"]
            entry["teacher_probe_loss"] = row[f"{name}_probe"]
        out.append(entry)
    return out


def format_table(result: dict) -> str:
    """A run's result as text."""
    teacher = (f" <- {result['teacher']} (teacher: {result['teacher_weights']})"
               if result["teacher"] else " (no teacher)")
    b = result["batch"]
    lines = [f"{result['run']}, seed {result['seed']}: {result['student']}{teacher}; first "
             f"training batch {b['size']} x {b['crop'][0]}x{b['crop'][1]} ({b['source']})"
             + (f"; {result['seconds']:.1f} s (CPU {result['cpu_seconds']:.1f} s)"
                if "seconds" in result else "")]
    width = max(len("term"), *(len(t["term"]) for t in result["terms"]))
    lines.append(f"  {'term':<{width}} {'loss':>10} {'grad norm':>11} {'% of CE':>8}")
    for t in result["terms"]:
        loss = "-" if t["loss"] is None else format(t["loss"], ".4g")
        share = "-" if t["share_of_ce_pct"] is None else format(t["share_of_ce_pct"], ".1f")
        note = ""
        if "student_facing_loss" in t:
            note = (f"  = student-facing {t['student_facing_loss']:.4g} + teacher probe "
                    f"{t['teacher_probe_loss']:.4g} (the probe's gradient never reaches the "
                    "student: the norm is the student-facing part's)")
        lines.append(f"  {t['term']:<{width}} {loss:>10} {t['grad_norm']:>11.4g} {share:>8}"
                     f"{note}")
    return "\n".join(lines)


def run(args) -> dict:
    import torch

    from bcd import params as P
    from bcd import runtime as T

    files = args.params or ["params/default.yaml"]
    cfg = P.load_params(files)
    runs = list(cfg["runs"]) if "all" in (args.run or []) else list(args.run or ["r18-bcd"])
    for r in runs:
        P.lookup(cfg, "runs", r)  # unknown names: one clear error before any work
    T.setup_threads(P.rule_threads(cfg, "train"))
    import bcd.mm  # noqa: F401  (compat patches first)

    # what mmengine and torch import lazily in the first Runner (~5 s), before the clock starts
    import mmrazor.engine  # noqa: F401
    import torch._dynamo  # noqa: F401
    results, done = [], {}
    with tempfile.TemporaryDirectory(prefix="bcd-bench-grads-") as tmp:
        for i, r in enumerate(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            result = measure(cfg, r, args.seed, Path(tmp) / f"{i}-{r}",
                             random_teacher=args.random_teacher, synthetic=args.synthetic_batch,
                             batch=args.batch, no_pretrained=args.no_pretrained, done=done)
            result["seconds"] = time.perf_counter() - t0
            result["cpu_seconds"] = time.process_time() - c0
            print(format_table(result) + "\n", flush=True)
            results.append(result)
    meta = {"params": files, "seed": args.seed, "random_teacher": args.random_teacher,
            "synthetic_batch": args.synthetic_batch, "batch": args.batch,
            "no_pretrained": args.no_pretrained, "threads": torch.get_num_threads(),
            "torch": torch.__version__}
    return write_result({"meta": meta, "runs": results}, args.json)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="extend", nargs="+", metavar="FILE",
                        help="params files, merged in order (repeatable; default "
                             "params/default.yaml)")
    parser.add_argument("--run", action="extend", nargs="+", metavar="RUN",
                        help="runs of the params (repeatable), or 'all' (default r18-bcd)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and the first batch (default 0)")
    parser.add_argument("--random-teacher", action="store_true",
                        help="where the teacher checkpoint is missing, use an untrained teacher "
                             "(smoke test)")
    parser.add_argument("--synthetic-batch", action="store_true",
                        help="random images with blocky labels of the crop size instead of the "
                             "dataset")
    parser.add_argument("--batch", type=int, default=0,
                        help="batch size (default: the params' train.student.batch_size)")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="drop the models' `pretrained` weights (random initialisation)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def main(args) -> int:
    if args.batch < 0 or args.batch == 1:
        raise SystemExit("bcd.bench grads: --batch must be >= 2 (batch norm in training mode), "
                         "or 0: the params' batch size")
    run(args)
    return 0
