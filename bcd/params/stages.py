"""The stages: the DAG shared by the Snakefile and dvc.yaml, and the resources of their jobs."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from bcd.codedeps import stage_code
from bcd.data.registry import dataset_entry
from bcd.params.load import ParamsError, files_of
from bcd.params.paths import (data_dir, figures_inputs, figures_outputs, run_paths,
                              table_paths, teacher_paths)
from bcd.params.resolve import (data_keys, data_section, dataset_of, datasets_used,
                                figures_spec, lookup, param_keys_for_evaluate,
                                param_keys_for_figures, param_keys_for_run,
                                param_keys_for_table, param_keys_for_teacher, run_seeds,
                                runs_used, table_groups, table_seeds, teachers_used,
                                unique)


#: Kinds of jobs with their own `resources.<kind>` (Snakemake rules: `evaluate_teacher` is
#: an `evaluate`).
RESOURCE_KINDS = ("data", "teacher", "train", "evaluate", "table", "figures")


#: Optional fields passed to Snakemake (and the SLURM plugin) under the same name.
_SLURM_FIELDS = ("slurm_partition", "slurm_account", "slurm_extra")


def rule_threads(cfg, kind: str) -> int:
    """Snakemake ``threads:`` of a kind of job (``resources.<kind>.threads``)."""
    return int(lookup(cfg, "resources", kind)["threads"])


def rule_resources(cfg, kind: str) -> dict:
    """Snakemake ``resources:`` of a kind of job, from ``resources.<kind>``.

    Names are those of Snakemake and snakemake-executor-plugin-slurm: ``mem_mb`` (--mem),
    ``runtime`` in minutes (-t), ``cpus_per_task`` = threads (--cpus-per-task; explicit, so a
    dry run shows what SLURM gets although it caps ``threads`` at --cores), ``gpu`` (--gpus;
    only when > 0) and the optional ``slurm_partition`` (-p), ``slurm_account`` (-A) and
    ``slurm_extra``. Not part of any stage's spec: changing them reruns nothing.
    """
    spec = lookup(cfg, "resources", kind)
    out = {"mem_mb": int(spec["mem_mb"]), "runtime": int(spec["runtime"]),
           "cpus_per_task": int(spec["threads"])}
    if spec["gpus"]:
        out["gpu"] = int(spec["gpus"])
    out.update({k: spec[k] for k in _SLURM_FIELDS if k in spec})
    return out


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    cache: bool = True  # False: outs are small files kept in git (tables)


def stage_name(kind: str, name: str | None = None, seed=None) -> str:
    """``data`` (the top-level data) or ``data-D`` (``datasets.D``), ``teacher-T``,
    ``evaluate-teacher-T``, ``train-R-seedS``, ``evaluate-R-seedS``, ``table-N``, ``figures``."""
    if kind == "figures" or (kind == "data" and name is None):
        return kind
    if kind == "data":
        return f"data-{name}"
    if kind in ("teacher", "evaluate-teacher", "table"):
        return f"{kind}-{name}"
    if kind in ("train", "evaluate"):
        return f"{kind}-{name}-seed{seed}"
    raise ValueError(f"unknown stage kind {kind!r}")


def command(cfg, subcommand: str, *args: str, python: str = "python") -> str:
    """The shell command of a stage: ``python -m bcd SUB --params F... ARGS``."""
    params = [f"--params {shlex.quote(f)}" for f in files_of(cfg)]
    return " ".join([python, "-m", "bcd", subcommand, *params, *args])


def stages(cfg) -> list[Stage]:
    """Every stage: the data of each dataset used, the teachers used, every run a table needs x
    seed, every table, and the figures (when the params have a ``figures`` section, see
    :func:`figures_spec`)."""
    out = []
    for ds in datasets_used(cfg):
        args = () if ds is None else ("--dataset", ds)
        crop = [f"{k}.{c}" for k in (["data"] if ds is None else [f"datasets.{ds}"])
                for c in ("height", "width")]
        # the crop is a setting of the data stage only where it is the image size (shapes)
        shapes = dataset_entry(data_section(cfg, ds)).crop_is_image_size
        out.append(Stage(stage_name("data", ds), command(cfg, "data", *args), stage_code("data"),
                         (str(data_dir(cfg, ds)),),
                         params=tuple(k for k in data_keys(cfg, ds) if k not in crop or shapes)))
    for t in teachers_used(cfg):
        data = str(data_dir(cfg, dataset_of(cfg, teacher=t)))
        p = teacher_paths(cfg, t)
        out.append(Stage(stage_name("teacher", t), command(cfg, "teacher", "--teacher", t),
                         (data, *stage_code("teacher")), (str(p["model"]), str(p["train_log"])),
                         params=tuple(param_keys_for_teacher(cfg, t))))
        out.append(Stage(stage_name("evaluate-teacher", t),
                         command(cfg, "evaluate", "--teacher", t),
                         (data, str(p["model"]), *stage_code("evaluate")), (str(p["metrics"]),),
                         (str(p["summary"]),), params=tuple(param_keys_for_evaluate(cfg, teacher=t)),
                         cache=False))
    for run in runs_used(cfg):
        spec = cfg["runs"][run]
        data = str(data_dir(cfg, spec.get("dataset")))
        teacher = spec.get("teacher")
        teacher_model = (str(teacher_paths(cfg, teacher)["model"]),) if teacher else ()
        for seed in run_seeds(cfg, run):
            p = run_paths(cfg, run, seed)
            args = ("--run", run, "--seed", str(seed))
            out.append(Stage(stage_name("train", run, seed), command(cfg, "train", *args),
                             (data, *teacher_model, *stage_code("train")),
                             (str(p["model"]), str(p["train_log"]), str(p["distill_heads"])),
                             params=tuple(param_keys_for_run(cfg, run))))
            out.append(Stage(stage_name("evaluate", run, seed), command(cfg, "evaluate", *args),
                             (data, str(p["model"]), *stage_code("evaluate")),
                             (str(p["metrics"]),), (str(p["summary"]),),
                             params=tuple(param_keys_for_evaluate(cfg, run=run)), cache=False))
    for name in cfg["tables"]:
        p = table_paths(cfg, name)
        out.append(Stage(stage_name("table", name), command(cfg, "table", "--table", name),
                         (*stage_code("table"), *map(str, table_metrics(cfg, name))),
                         (str(p["csv"]), str(p["tex"])),
                         params=tuple(param_keys_for_table(cfg, name)), cache=False))
    if figures_spec(cfg) is not None:
        ins = figures_inputs(cfg)
        deps = (ins["data"], *ins["weights"], *ins["metrics"], *ins["train_logs"], ins["table"])
        out.append(Stage(stage_name("figures"), command(cfg, "figures"),
                         (*unique(deps), *stage_code("figures")), tuple(figures_outputs(cfg)),
                         params=tuple(param_keys_for_figures(cfg)), cache=False))
    names = [s.name for s in out]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ParamsError(f"{', '.join(files_of(cfg))}: two stages would be named "
                          f"{', '.join(clashes)}; rename a run or teacher")
    return out


def table_metrics(cfg, name: str) -> list[Path]:
    """The metrics.json files a table reads: per teacher group, its teacher's, then every row's
    run x seed."""
    files = []
    for group in table_groups(lookup(cfg, "tables", name)):
        files.append(teacher_paths(cfg, group["teacher"])["metrics"])
        files += [run_paths(cfg, row["run"], seed)["metrics"]
                  for row in group["rows"] for seed in table_seeds(cfg, name)]
    return files


def code_files(paths: Iterable[str]) -> list[str]:
    """Code paths with folders expanded to their files (what DVC hashes; caches excluded)."""
    out = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.rglob("*") if f.is_file()
                          and "__pycache__" not in f.parts and f.suffix != ".pyc")
        else:
            out.append(str(path))
    return out
