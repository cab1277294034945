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
from bcd.atomic import atomic_write, write_json_atomic

log = logging.getLogger("bcd")


def _setup_threads() -> None:
    n = os.environ.get("BCD_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))


def require_dataset(cfg, dataset: str | None = None) -> Path:
    """The prepared dataset folder of the top-level ``data`` (None) or ``datasets.<dataset>``, or
    a clear error saying how to make it. The paper's datasets stay at ``root``, checked as the
    data stage checks them (:mod:`bcd.data.paper`)."""
    from bcd.data import paper

    root, data = P.data_dir(cfg, dataset), P.data_section(cfg, dataset)
    make = (f"run `python -m bcd data --params {' --params '.join(map(str, P.files_of(cfg)))}"
            f"{'' if dataset is None else f' --dataset {dataset}'}` first")
    if data["dataset"] in paper.DATASETS:
        paper.check_dataset(data["dataset"], data["root"])
        return Path(data["root"])
    if data["dataset"] == "shapes":
        from bcd.data.synthetic import check_dataset
        from bcd.mm.configs import eval_split

        split = eval_split(data)
        if check_dataset(root)["counts"][split] == 0:  # a folder from before the test split
            raise FileNotFoundError(f"dataset {root} holds no {split} split, which the tables "
                                    f"report (shapes.eval_split); rebuild it: {make}")
    elif data["dataset"] == "camvid":
        from bcd.data import camvid
        try:
            camvid.check_dataset(root)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; {make}") from None
    elif not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} is missing; {make}")
    return root


def require_teacher(cfg, teacher: str) -> Path:
    path = P.teacher_paths(cfg, teacher)["model"]
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} is missing; train it with `python -m bcd teacher --params "
            f"{' '.join(map(str, P.files_of(cfg)))} --teacher {teacher}` (or `snakemake {path}`)")
    return Path(path)


def save_weights(module: torch.nn.Module, path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Save plain weights (loadable with ``weights_only=True``) atomically."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save({"state_dict": state, "meta": dict(meta)}, tmp))


TRUST_ENV = "BCD_TRUST_CHECKPOINTS"  # =1: the user vouches for every checkpoint (full unpickling)


def _load_weights_file(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``: checkpoints handed to bcd are untrusted input.

    Only with ``BCD_TRUST_CHECKPOINTS=1`` (``--trust-checkpoints``) is a file that needs full
    unpickling loaded.
    """
    if os.environ.get(TRUST_ENV) == "1":
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated/corrupt/pickled files raise many types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise ValueError(
                f"{path}: not plain weights; loading it fully would unpickle arbitrary Python "
                "objects, which can execute code. Convert it to a plain state dict "
                "(torch.save(model.state_dict(), ...)), or, only for a file you trust, rerun with "
                f"--trust-checkpoints ({TRUST_ENV}=1). (torch said: {first})") from err
        raise ValueError(f"{path}: not a readable weights file ({first})") from err


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a weights file written by :func:`save_weights` (or any plain state dict), weights only."""
    ckpt = _load_weights_file(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a weights file (expected a dict of tensors under "
                         "'state_dict')")
    return state


def load_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict :func:`save_weights` stored (empty for a foreign weights file)."""
    ckpt = _load_weights_file(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return meta if isinstance(meta, dict) else {}


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path) -> None:
    """Refuse a checkpoint whose keys or shapes do not match ``model`` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint "
                          f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise ValueError(f"{path} does not fit the model's architecture: " + "; ".join(detail))


def _run(config) -> Any:
    from mmengine.runner import Runner

    runner = Runner.from_cfg(config)
    runner.train()
    return runner


def keep_selected(runner, train: Mapping[str, Any]) -> dict:
    """Load the weights ``train.select`` names into ``runner.model``; return what was kept.

    ``last``: the model as training left it. ``best``: the checkpoint of the best val mIoU that
    mmengine's CheckpointHook wrote in the run's own work folder (``bcd.mm.configs``).
    """
    if train.get("select", "last") != "best":
        return {"select": "last", "iter": int(train["iters"])}
    hub = runner.message_hub
    path = hub.get_info("best_ckpt")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"train.select is best, but the best-val checkpoint {path or '(none recorded)'} is "
            f"not in {runner.work_dir} (a run killed while mmengine replaced it); delete that "
            "folder to train again")
    ckpt = runner.load_checkpoint(path, map_location="cpu")
    return {"select": "best", "iter": int(ckpt["meta"]["iter"]),
            "val_mIoU": float(hub.get_info("best_score")), "checkpoint": Path(path).name}


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
    """What must match for a killed run to be resumed: its settings, teacher and seed.

    The code version is recorded (provenance) but not compared: a user who updates bcd while a
    long run is preempted still resumes it rather than losing hours.
    """
    return {"spec_sha256": made_from["spec_sha256"], "seed": made_from["seed"],
            "teacher_sha256": made_from["teacher_sha256"]}


def _checkpoints(work: Path) -> list[Path]:
    """mmengine's ``iter_<N>.pth`` checkpoints in ``work``, oldest first."""
    found = [p for p in work.glob("iter_*.pth") if p.stem[5:].isdigit()] if work.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem[5:]))


def _prepare_work_dir_once(work: Path, fingerprint: Mapping[str, Any]) -> bool:
    """:func:`prepare_work_dir` on rank 0; every rank gets its answer (one process: the same)."""
    from bcd.mm import distributed

    resume = prepare_work_dir(work, fingerprint) if distributed.is_main() else None
    return bool(distributed.broadcast(resume))


def prepare_work_dir(work: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Make ``work`` ready for a run; True when it holds a checkpoint of the same run to resume.

    A work dir written by a run with other settings (params, teacher, seed) is moved aside to
    ``work.stale`` (replacing an older one) rather than resumed; nothing else is deleted.
    """
    stamp = work / "run_fingerprint.json"
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    pointer = work / "last_checkpoint"
    saved = _checkpoints(work)
    if saved and not pointer.is_file():
        # killed between writing a checkpoint (atomically, so it is complete) and mmengine's
        # pointer to it: point at the newest one
        pointer.write_text(str(saved[-1].resolve()))
    if pointer.is_file():
        try:
            same = json.loads(stamp.read_text()) == fingerprint
        except (OSError, ValueError):
            same = False
        target = Path(pointer.read_text().strip())
        if same and target.is_file():
            log.warning("resuming from %s", target)
            return True
        stale = work.with_name(work.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        work.rename(stale)
        log.warning("%s held checkpoints of a run with other settings; moved to %s", work, stale)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, fingerprint)
    return False


def train_teacher(cfg, name: str, launcher: str = "none") -> Path:
    """Fine-tune (here: train from scratch) one teacher; write its weights and training log."""
    from bcd.mm import compat, configs, distributed

    _setup_threads()
    _, world = distributed.init(launcher)
    spec = P.resolve_teacher(cfg, name)
    paths = P.teacher_paths(cfg, name)
    root = require_dataset(cfg, P.dataset_of(cfg, teacher=name))
    work = Path(paths["dir"]) / "work"
    compat.trust_checkpoint_root(work)
    made_from = provenance.record(kind="teacher", name=name, seed=spec["seed"], spec=spec)
    resume = _prepare_work_dir_once(work, _fingerprint(made_from))
    t0 = time.time()
    config = configs.teacher_config(spec=spec["model"], data=spec["data"], data_root=root,
                                    train=spec["train"], work_dir=work, seed=spec["seed"],
                                    log_file=paths["train_log"], resume=resume,
                                    launcher=launcher)
    runner = _run(config)
    kept = keep_selected(runner, spec["train"])
    if distributed.is_main():
        save_weights(distributed.unwrap(runner.model), paths["model"],
                     dict(kind="teacher", name=name, model=spec["model"], seed=spec["seed"],
                          iters=spec["train"]["iters"], **training_cost(runner, t0),
                          kept=kept, resumed=resume, processes=world, provenance=made_from))
        del runner
        if world == 1:  # one process: evaluation collectives would wait for the other ranks
            _evaluate_now(cfg, teacher=name)
    distributed.barrier()
    return Path(paths["model"])


def train_student(cfg, run: str, seed: int, launcher: str = "none") -> Path:
    """Train one student run (plain, or distilled from its teacher) for one seed."""
    from bcd.mm import compat, configs, distributed

    _setup_threads()
    _, world = distributed.init(launcher)
    spec = P.resolve_run(cfg, run)
    paths = P.run_paths(cfg, run, seed)
    root = require_dataset(cfg, P.dataset_of(cfg, run=run))
    teacher_ckpt, teacher_spec = None, None
    if spec["methods"]:
        teacher_ckpt = require_teacher(cfg, spec["teacher"]["name"])
        teacher_spec = spec["teacher"]["model"]
        _check_teacher(teacher_spec, spec["data"], teacher_ckpt)
    work = Path(paths["dir"]) / "work"
    compat.trust_checkpoint_root(work)
    made_from = provenance.record(kind="student", name=run, seed=seed, spec=spec,
                                  teacher_ckpt=teacher_ckpt)
    resume = _prepare_work_dir_once(work, _fingerprint(made_from))
    t0 = time.time()
    config = configs.distill_config(
        student_spec=spec["student"]["model"], teacher_spec=teacher_spec,
        teacher_ckpt=teacher_ckpt, methods=spec["methods"],
        decay_schedule=spec["weight_decay_schedule"], data=spec["data"], data_root=root,
        train=spec["train"], work_dir=work, seed=seed, log_file=paths["train_log"],
        resume=resume, launcher=launcher)
    runner = _run(config)
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
        _evaluate_now(cfg, run=run, seed=seed)
    distributed.barrier()
    return Path(paths["model"])


def _evaluate_now(cfg, **target) -> None:
    """Evaluate the weights just written, for the evaluate stage to reuse (bcd.evaluate)."""
    import gc

    from bcd.evaluate import evaluate_after_training

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    evaluate_after_training(cfg, **target)


def _check_teacher(teacher_spec, data, ckpt: Path) -> None:
    """Refuse a teacher checkpoint that does not fit the teacher architecture, before training."""
    from mmseg.registry import MODELS

    from bcd.mm import configs

    model = MODELS.build(configs.segmentor(teacher_spec, configs.num_classes(data),
                                           configs.crop_size(data)))
    check_state_dict(model, load_weights(ckpt), ckpt)


logging.getLogger("mmengine").setLevel(logging.WARNING)
