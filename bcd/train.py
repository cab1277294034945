"""Stage commands that train: the teacher fine-tuning and the student runs (with or without KD).

Both go through mmengine's Runner with mmseg models and datasets; distillation runs use
:class:`bcd.mm.distill.PairedTeacherDistill` (mmrazor's ``SingleTeacherDistill``, teacher entirely
in eval mode, seeds paired with plain runs) + ``ConfigurableDistiller`` configured by
:mod:`bcd.mm.configs`.

``launcher='pytorch'`` (``--launcher pytorch`` under ``torchrun --nproc_per_node N``) trains with
N processes (:mod:`bcd.mm.distributed`): each reads its own shard of the data with the params'
batch size (per process / per GPU, as in mmseg), and only rank 0 writes files.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from bcd import params as P
from bcd import provenance
from bcd.atomic import atomic_write, is_complete, write_json_atomic
from bcd.runtime import (THREADS_ENV, check_teacher, require_dataset, require_teacher,
                         setup_threads)
from bcd.weights import save_weights

log = logging.getLogger("bcd")


QUIET_ENV = "BCD_QUIET"


def _run(config, label: str | None = None) -> Any:
    """Train with mmengine's Runner; ``label`` names the job in the progress lines
    (:class:`bcd.mm.hooks.ProgressHook`; none when ``BCD_QUIET=1``)."""
    from mmengine.runner import Runner

    from bcd.mm.hooks import progress_interval

    if label and os.environ.get(QUIET_ENV) != "1":
        every = progress_interval(config.train_cfg.max_iters)
        config.custom_hooks.append(dict(type="ProgressHook", label=label, interval=every))
    runner = Runner.from_cfg(config)
    runner.train()
    return runner


def keep_selected(runner, train: Mapping[str, Any]) -> dict:
    """Load the weights ``train.select`` names into ``runner.model``; return what was kept.

    ``last``: the model as training left it. ``best``: the checkpoint of the best val mIoU
    (detectors: COCO box mAP, recorded as ``val_bbox_mAP``) that mmengine's CheckpointHook wrote
    in the run's own work folder (``bcd.mm.configs``).
    """
    if train.get("select", "last") != "best":
        return {"select": "last", "iter": int(train["iters"])}
    hub = runner.message_hub
    path = hub.get_info("best_ckpt")
    if path:  # mmengine records an absolute path: in a moved or copied project, the run's own
        path = str(Path(runner.work_dir) / Path(path).name)
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"train.select is best, but the best-val checkpoint {path or '(none recorded)'} is "
            f"not in {runner.work_dir} (a run killed while mmengine replaced it); delete that "
            "folder to train again")
    ckpt = runner.load_checkpoint(path, map_location="cpu")
    metric = "val_bbox_mAP" if "bbox" in Path(path).name else "val_mIoU"
    return {"select": "best", "iter": int(ckpt["meta"]["iter"]),
            metric: float(hub.get_info("best_score")), "checkpoint": Path(path).name}


def training_cost(runner, t0: float) -> dict:
    """What this training process cost, for the weights' meta (and so metrics.json, the tables).

    ``seconds``: wall time since ``t0`` (runner build, training loop, validations during
    training; not the evaluation that follows). ``seconds_per_iter``: the mean of mmengine's
    iteration timer (IterTimerHook's ``train/time``: one training iteration, data loading
    included; restored with the rest of the message hub when a run resumes), None without it.
    ``peak_rss_mb``: the process's peak resident set so far (``ru_maxrss``, KiB on Linux): for
    a distilled run the teacher in memory too, and the Python/OpenMMLab runtime.
    ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` (current device) when the process used
    CUDA, else None. With several processes these are rank 0's.
    """
    import resource

    try:
        per_iter = round(float(runner.message_hub.get_scalar("train/time").mean()), 4)
    except (KeyError, ValueError, ZeroDivisionError):
        per_iter = None
    cuda = (round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    return {"seconds": round(time.time() - t0, 1), "seconds_per_iter": per_iter,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mb": cuda}


def _fingerprint(made_from: Mapping[str, Any]) -> dict:
    """What must match for a killed run to be resumed: its settings, teacher, seed and the
    thread count (results depend on it; a resume with another count is refused, not run).

    The code version is recorded (provenance) but not compared: a user who updates bcd while a
    long run is preempted still resumes it rather than losing hours.
    """
    return {"spec_sha256": made_from["spec_sha256"], "seed": made_from["seed"],
            "teacher_sha256": made_from["teacher_sha256"], "threads": made_from["threads"]}


#: fingerprint entries that describe how a run computes, not what it is: a checkpoint of a run
#: that differs only in these is not stale; resuming it under other values is refused
COMPUTE_KEYS = ("threads",)


def _checkpoints(work: Path) -> list[Path]:
    """mmengine's ``iter_<N>.pth`` checkpoints in ``work``, oldest first."""
    found = [p for p in work.glob("iter_*.pth") if p.stem[5:].isdigit()] if work.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem[5:]))


def _newest_complete(work: Path) -> Path | None:
    """The newest complete checkpoint in ``work``; newer broken ones are renamed to
    ``<name>.corrupt`` (kept for inspection, never resumed) with a warning."""
    for ckpt in reversed(_checkpoints(work)):
        if is_complete(ckpt):
            return ckpt
        aside = ckpt.with_name(ckpt.name + ".corrupt")
        ckpt.replace(aside)
        log.warning("%s is truncated or corrupt: moved to %s; resuming from the checkpoint "
                    "before it, if any", ckpt, aside.name)
    return None


def _prepare_work_dir_once(work: Path, fingerprint: Mapping[str, Any]) -> bool:
    """:func:`prepare_work_dir` on rank 0; every rank gets its answer (one process: the same)."""
    from bcd.mm import distributed

    resume = prepare_work_dir(work, fingerprint) if distributed.is_main() else None
    return bool(distributed.broadcast(resume))


def prepare_work_dir(work: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Make ``work`` ready for a run; True when it holds a checkpoint of the same run to resume.

    The checkpoint resumed is the newest *complete* ``iter_<N>.pth`` inside ``work`` itself:
    mmengine's ``last_checkpoint`` pointer is rewritten to it, whatever it held (an absolute
    path: in a moved or copied project it names a file elsewhere, which is never resumed from;
    emptied by a kill while mmengine rewrote it). A work dir written by a run with other
    settings (params, teacher, seed) is moved aside to ``work.stale`` (replacing an older one)
    rather than resumed; nothing else is deleted. One that differs only in how it computes
    (:data:`COMPUTE_KEYS`: the thread count) is refused with a ``ValueError`` saying how to
    resume it.
    """
    stamp = work / "run_fingerprint.json"
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    pointer = work / "last_checkpoint"
    newest = _newest_complete(work)
    if newest is not None or pointer.is_file():
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError):
            old = None
        same_run = isinstance(old, dict) and all(
            old.get(k) == v for k, v in fingerprint.items() if k not in COMPUTE_KEYS)
        if same_run and newest is not None:
            changed = {k: (old.get(k), fingerprint[k]) for k in COMPUTE_KEYS
                       if k in fingerprint and old.get(k) != fingerprint[k]}
            if changed:
                what = "; ".join(f"{k} {a} then, {b} now" for k, (a, b) in changed.items())
                raise ValueError(
                    f"{work}: resuming needs the settings the run started with ({what}): "
                    f"set {THREADS_ENV}={changed['threads'][0]} to resume it, or delete "
                    f"{work} to start over")
            atomic_write(pointer, lambda tmp: tmp.write_text(str(newest.resolve())))
            log.warning("resuming from %s", newest)
            return True
        stale = work.with_name(work.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        work.rename(stale)
        why = ("held checkpoints of a run with other settings" if not same_run else
               "held no complete checkpoint")
        log.warning("%s %s; moved to %s", work, why, stale)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, fingerprint)
    return False


def train_teacher(job: P.TrainSpec, launcher: str = "none") -> Path:
    """Fine-tune (here: train from scratch) one teacher; write its weights and training log.
    ``job``: :func:`bcd.params.teacher_job`."""
    from bcd.mm import compat, configs, distributed

    from bcd.mm.amp import check_device

    threads = setup_threads(job.threads)
    # a plain copy: the settings go into the weights' meta (pickled) and the mm configs
    spec, name, paths = copy.deepcopy(job.settings), job.name, job.paths
    check_device(spec["train"], "teacher")
    _, world = distributed.init(launcher)
    root = require_dataset(job.data)
    work = Path(paths["dir"]) / "work"
    compat.trust_checkpoint_root(work)
    made_from = provenance.record(kind="teacher", name=name, seed=spec["seed"], spec=spec,
                                  threads=threads)
    resume = _prepare_work_dir_once(work, _fingerprint(made_from))
    t0 = time.time()
    config = configs.teacher_config(spec=spec["model"], data=spec["data"], data_root=root,
                                    train=spec["train"], work_dir=work, seed=spec["seed"],
                                    log_file=paths["train_log"], resume=resume,
                                    launcher=launcher)
    runner = _run(config, f"teacher {name}")
    kept = keep_selected(runner, spec["train"])
    if distributed.is_main():
        save_weights(distributed.unwrap(runner.model), paths["model"],
                     dict(kind="teacher", name=name, model=spec["model"], seed=spec["seed"],
                          iters=spec["train"]["iters"], **training_cost(runner, t0),
                          kept=kept, resumed=resume, processes=world, provenance=made_from))
        del runner
        if world == 1:  # one process: evaluation collectives would wait for the other ranks
            _evaluate_now(job.evaluation)
    distributed.barrier()
    return Path(paths["model"])


def train_student(job: P.TrainSpec, launcher: str = "none") -> Path:
    """Train one student run (plain, or distilled from its teacher) for one seed.
    ``job``: :func:`bcd.params.student_job`."""
    from bcd.mm import compat, configs, distributed

    from bcd.mm.amp import check_device

    threads = setup_threads(job.threads)
    spec, run, seed, paths = copy.deepcopy(job.settings), job.name, job.seed, job.paths
    check_device(spec["train"], "student")
    _, world = distributed.init(launcher)
    root = require_dataset(job.data)
    teacher_ckpt, teacher_spec = None, None
    if spec["methods"]:
        teacher_ckpt = require_teacher(job.teacher)
        teacher_spec = spec["teacher"]["model"]
        check_teacher(teacher_spec, spec["data"], teacher_ckpt)
    work = Path(paths["dir"]) / "work"
    compat.trust_checkpoint_root(work)
    made_from = provenance.record(kind="student", name=run, seed=seed, spec=spec,
                                  teacher_ckpt=teacher_ckpt, threads=threads)
    resume = _prepare_work_dir_once(work, _fingerprint(made_from))
    t0 = time.time()
    config = configs.distill_config(
        student_spec=spec["student"]["model"], teacher_spec=teacher_spec,
        teacher_ckpt=teacher_ckpt, methods=spec["methods"],
        decay_schedule=spec["weight_decay_schedule"], data=spec["data"], data_root=root,
        train=spec["train"], work_dir=work, seed=seed, log_file=paths["train_log"],
        resume=resume, launcher=launcher)
    runner = _run(config, f"train {run} seed {seed}")
    kept = keep_selected(runner, spec["train"])
    if not distributed.is_main():  # rank 0 writes the outputs (every rank holds the same model)
        distributed.barrier()
        return Path(paths["model"])
    model = distributed.unwrap(runner.model)
    student = model.student if hasattr(model, "student") else model
    meta = dict(kind="student", run=run, seed=seed, model=spec["student"]["model"],
                methods=sorted(spec["methods"]), iters=spec["train"]["iters"],
                teacher=spec["teacher"]["name"] if spec["methods"] else None,
                **training_cost(runner, t0), kept=kept, resumed=resume,
                processes=world, provenance=made_from)
    # The distiller's own weights (connectors, loss heads such as BD's boundary convs, the
    # temperatures): not part of the student, needed by the boundary figure (bcd.figures).
    # A run without distillation writes an empty state dict, so every run has the same outputs.
    distiller = getattr(model, "distiller", None) if spec["methods"] else None
    save_weights(distiller if distiller is not None else torch.nn.Module(),
                 paths["distill_heads"], dict(meta, kind="distill_heads"))
    save_weights(student, paths["model"], meta)
    del runner, model, student, distiller
    if world == 1:  # several processes: the evaluate stage evaluates (in one process)
        _evaluate_now(job.evaluation)
    distributed.barrier()
    return Path(paths["model"])


def _evaluate_now(job: P.EvaluationSpec) -> None:
    """Evaluate the weights just written, for the evaluate stage to reuse (bcd.evaluate)."""
    import gc

    from bcd.evaluate import evaluate_after_training

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    evaluate_after_training(job)


logging.getLogger("mmengine").setLevel(logging.WARNING)
