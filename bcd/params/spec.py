"""Resolve once: the immutable spec a stage command hands to the layers below.

A stage command (``python -m bcd teacher|train|evaluate``) loads the params, resolves what its
job depends on here, once, and passes the spec down; training, evaluation and the runtime
checks read the spec and never the params dict (nor call back into the resolution)::

    cfg = P.load_params(files)
    job = P.student_job(cfg, "r18-bcd", seed=0)     # a TrainSpec
    train_student(job)                               # -> job.evaluation after training

Every mapping and list in a spec is read-only (:class:`Frozen`, :class:`FrozenList`: a change
raises ``TypeError``); ``copy.deepcopy`` of one gives a plain, mutable copy, and ``json`` writes
them as the dicts and lists they hold, so hashes of a spec (provenance, the evaluation key) are
those of the resolved dicts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bcd.params.load import files_of, remake_command
from bcd.params.paths import data_dir, run_paths, teacher_paths
from bcd.params.resolve import (data_section, data_spec, dataset_of, lookup, resolve_evaluate,
                                resolve_run, resolve_teacher)
from bcd.params.stages import stage_name


def _refuse(self, *args, **kwargs):
    raise TypeError("a resolved spec is read-only; change a copy (copy.deepcopy(spec))")


class Frozen(dict):
    """A read-only dict; ``copy.deepcopy`` returns a plain dict."""

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __deepcopy__(self, memo):
        return {copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()}

    def __copy__(self):
        return dict(self)

    def __reduce__(self):
        return dict, (dict(self),)


class FrozenList(list):
    """A read-only list; ``copy.deepcopy`` returns a plain list."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __deepcopy__(self, memo):
        return [copy.deepcopy(v, memo) for v in self]

    def __copy__(self):
        return list(self)

    def __reduce__(self):
        return list, (list(self),)


def freeze(obj: Any) -> Any:
    """``obj`` with every dict and list (recursively) made read-only."""
    if isinstance(obj, Mapping):
        return Frozen((k, freeze(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return FrozenList(freeze(v) for v in obj)
    return obj


@dataclass(frozen=True)
class DataSpec:
    """One dataset key's data: ``key`` (None = the top-level ``data``), its whole ``section``
    (what the folder checks read), ``settings`` (what a stage depends on: the section without
    other datasets' sub-sections, :func:`bcd.params.data_spec`), the data stage's folder
    ``dir`` and the params ``files`` (for messages saying how to make it)."""

    key: str | None
    section: Frozen
    settings: Frozen
    dir: Path
    files: tuple[str, ...]

    @property
    def dataset(self) -> str:
        return self.section["dataset"]

    def make_command(self) -> str:
        """The command that prepares this dataset (``python -m bcd data ...``)."""
        return (f"python -m bcd data --params {' --params '.join(self.files)}"
                f"{'' if self.key is None else f' --dataset {self.key}'}")


@dataclass(frozen=True)
class TeacherCheckpoint:
    """The trained teacher a distillation run reads: its weights file and how to (re)make it."""

    name: str
    path: Path
    train_command: str  # python -m bcd teacher ...
    remake: str         # the Snakemake / DVC command that rebuilds it (bcd.params.remake_command)


@dataclass(frozen=True)
class EvaluationSpec:
    """What evaluating one model's weights depends on. ``settings`` is
    :func:`bcd.params.resolve_evaluate` (model, data, ``evaluation``): the evaluation's cache
    key; ``threads`` is ``resources.evaluate.threads``."""

    kind: str            # "teacher" or "student"
    name: str
    seed: int | None
    model_name: str
    model: Frozen
    iters: int
    data: DataSpec
    paths: Frozen
    settings: Frozen
    threads: int


@dataclass(frozen=True)
class TrainSpec:
    """One training job (a teacher, or a student run x seed): ``settings`` is
    :func:`bcd.params.resolve_teacher` / :func:`bcd.params.resolve_run`, ``threads`` the kind's
    ``resources.<kind>.threads``, ``teacher`` the checkpoint a distillation run reads (None
    otherwise), ``evaluation`` the evaluation training runs at its end."""

    kind: str            # "teacher" or "student"
    name: str
    seed: int
    settings: Frozen
    data: DataSpec
    paths: Frozen
    threads: int
    teacher: TeacherCheckpoint | None
    evaluation: EvaluationSpec
    files: tuple[str, ...]


def data_job(cfg, key: str | None = None) -> DataSpec:
    """The :class:`DataSpec` of the top-level ``data`` (None) or ``datasets.<key>``."""
    return DataSpec(key=key, section=freeze(data_section(cfg, key)),
                    settings=freeze(data_spec(cfg, key)), dir=data_dir(cfg, key),
                    files=tuple(map(str, files_of(cfg))))


def _threads(cfg, kind: str) -> int:
    return int(lookup(cfg, "resources", kind)["threads"])


def evaluation_job(cfg, *, run: str | None = None, seed: int | None = None,
                   teacher: str | None = None) -> EvaluationSpec:
    """The :class:`EvaluationSpec` of a teacher, or of a run x seed."""
    if (run is None) == (teacher is None):
        raise ValueError("evaluate needs exactly one of --run (with --seed) or --teacher")
    if teacher is not None:
        spec = resolve_teacher(cfg, teacher)
        kind, name, seed, paths = "teacher", teacher, None, teacher_paths(cfg, teacher)
        model_name, model = spec["model_name"], spec["model"]
    else:
        if seed is None:
            raise ValueError("evaluate --run needs --seed")
        spec = resolve_run(cfg, run)
        kind, name, paths = "student", run, run_paths(cfg, run, seed)
        model_name, model = spec["student"]["model_name"], spec["student"]["model"]
    return EvaluationSpec(
        kind=kind, name=name, seed=seed, model_name=model_name, model=freeze(model),
        iters=int(spec["train"]["iters"]),
        data=data_job(cfg, dataset_of(cfg, run=run, teacher=teacher)), paths=freeze(paths),
        settings=freeze(resolve_evaluate(cfg, run=run, teacher=teacher)),
        threads=_threads(cfg, "evaluate"))


def teacher_checkpoint(cfg, name: str) -> TeacherCheckpoint:
    """Where teacher ``name``'s weights are, and the commands that make them."""
    path = Path(teacher_paths(cfg, name)["model"])
    train = (f"python -m bcd teacher --params {' '.join(map(str, files_of(cfg)))} "
             f"--teacher {name}")
    return TeacherCheckpoint(name=name, path=path, train_command=train,
                             remake=remake_command(cfg, stage_name("teacher", name), path))


def teacher_job(cfg, name: str) -> TrainSpec:
    """The :class:`TrainSpec` of teacher ``name`` (its seed from the params)."""
    spec = resolve_teacher(cfg, name)
    return TrainSpec(kind="teacher", name=name, seed=spec["seed"], settings=freeze(spec),
                     data=data_job(cfg, dataset_of(cfg, teacher=name)),
                     paths=freeze(teacher_paths(cfg, name)), threads=_threads(cfg, "teacher"),
                     teacher=None, evaluation=evaluation_job(cfg, teacher=name),
                     files=tuple(map(str, files_of(cfg))))


def student_job(cfg, run: str, seed: int) -> TrainSpec:
    """The :class:`TrainSpec` of ``run`` x ``seed``; ``teacher`` is set for distillation runs."""
    spec = resolve_run(cfg, run)
    teacher = teacher_checkpoint(cfg, spec["teacher"]["name"]) if spec["methods"] else None
    return TrainSpec(kind="student", name=run, seed=seed, settings=freeze(spec),
                     data=data_job(cfg, dataset_of(cfg, run=run)),
                     paths=freeze(run_paths(cfg, run, seed)), threads=_threads(cfg, "train"),
                     teacher=teacher, evaluation=evaluation_job(cfg, run=run, seed=seed),
                     files=tuple(map(str, files_of(cfg))))
