"""What every stage process needs before and around its work: the thread count, the prepared
dataset and teacher it reads.

Used by the train, evaluate and figures stages, which hand it the resolved specs of
:mod:`bcd.params.spec`; imports nothing above :mod:`bcd.params`
(besides :mod:`bcd.data` and :mod:`bcd.mm.configs` for the dataset and teacher checks). The
weights I/O lives in :mod:`bcd.weights`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from bcd.params.spec import DataSpec, TeacherCheckpoint
from bcd.atomic import is_complete
from bcd.weights import check_state_dict, load_weights

THREADS_ENV = "BCD_THREADS"


def setup_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for a job and return the number.

    The params fix it (``resources.<kind>.threads``, the ``threads`` of the job's resolved spec),
    so the plain command, Snakemake and DVC compute with the same number and give the same
    numbers (reductions are summed in a thread-count-dependent order). ``BCD_THREADS``
    overrides it; the number used is recorded in the run's provenance and resume fingerprint.
    Without a number (a bare call): the environment's ``BCD_THREADS`` / ``OMP_NUM_THREADS`` or
    torch's default.
    """
    n = os.environ.get(THREADS_ENV) or threads or os.environ.get("OMP_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def require_dataset(spec: DataSpec) -> Path:
    """The prepared dataset folder of a dataset key (``spec``: :func:`bcd.params.data_job`), or
    a clear error saying how to make it. The paper's datasets stay at ``root``, checked as the
    data stage checks them (:mod:`bcd.data.paper`)."""
    from bcd.data.registry import dataset_entry

    root, data = spec.dir, spec.section
    make = f"run `{spec.make_command()}` first"
    return Path(dataset_entry(data).require(data, root, make))


def require_teacher(teacher: TeacherCheckpoint) -> Path:
    """The teacher's weights file, or a clear error saying how to make (or remake) it."""
    path = teacher.path
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher checkpoint {path} is missing; train it with `{teacher.train_command}` "
            f"(or {teacher.remake})")
    if not is_complete(path):
        raise ValueError(
            f"teacher checkpoint {path} is truncated or corrupt (not a whole torch file); "
            f"rebuild it with {teacher.remake}")
    return path


def check_teacher(teacher_spec, data, ckpt: Path) -> None:
    """Refuse a teacher checkpoint that does not fit the teacher architecture (a segmentor or
    a detector), before training."""
    from mmengine.config import ConfigDict

    from bcd.mm import configs

    cfg = ConfigDict(configs.model_config(teacher_spec, data))  # mmdet reads attributes
    model = configs.model_registry(teacher_spec).build(cfg)
    check_state_dict(model, load_weights(ckpt), ckpt)
