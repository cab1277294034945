"""Resolution: what one stage depends on, read out of the merged params (the run matrix, the
data section of each dataset key, the resolved run/teacher/evaluation/table/figures settings and
their DVC param key paths)."""
from __future__ import annotations

import copy
from typing import Iterable

from bcd.archs import task_of
from bcd.data.registry import settings_of
from bcd.params.load import ParamsError, deep_merge, files_of, known_names


def lookup(cfg, section: str, name: str) -> dict:
    """``cfg[section][name]``, or a ParamsError naming the section's known names."""
    try:
        return cfg[section][name]
    except KeyError:
        raise ParamsError(f"{', '.join(files_of(cfg)) or 'params'}: {section}.{name}: not defined "
                          f"({section}: {known_names(cfg.get(section, {}))})") from None


def data_section(cfg, dataset: str | None = None) -> dict:
    """The data section of a dataset key: the top-level ``data`` (None) or ``datasets.<key>``."""
    if dataset is None:
        return cfg["data"]
    return lookup(cfg, "datasets", dataset)


def data_spec(cfg, dataset: str | None = None) -> dict:
    """The data settings a stage depends on: the shared keys and the chosen dataset's section
    (the sections of other datasets are left out, so changing them reruns nothing), of the
    top-level ``data`` or of ``datasets.<dataset>``."""
    return copy.deepcopy(settings_of(data_section(cfg, dataset)))


def data_keys(cfg, dataset: str | None = None) -> list[str]:
    """Key paths of :func:`data_spec` (a stage's DVC ``params``)."""
    prefix = "data" if dataset is None else f"datasets.{dataset}"
    return [f"{prefix}.{k}" for k in data_spec(cfg, dataset)]


def dataset_of(cfg, *, run: str | None = None, teacher: str | None = None) -> str | None:
    """The dataset key of a run or teacher (``dataset``; None = the top-level ``data``)."""
    if teacher is not None:
        return lookup(cfg, "teachers", teacher).get("dataset")
    return lookup(cfg, "runs", run).get("dataset")


#: keys of a table that belong to its one teacher group (the one-teacher form)
GROUP_KEYS = ("teacher", "teacher_label", "paper_teacher", "rows")


def table_groups(table) -> list[dict]:
    """A table's teacher groups, each in the one-teacher form ``{teacher, teacher_label?, rows,
    caption, paper_table?, paper_dataset?, paper_teacher?}``: the entries of ``groups`` with
    the table's other keys (a group's ``paper_teacher`` replaces the table's), else the table
    itself as its one group. Each group: its teacher row, then its rows; paired statistics and
    the paper's values within the group."""
    if "groups" not in table:
        return [table]
    shared = {k: v for k, v in table.items() if k != "groups" and k not in GROUP_KEYS}
    return [{**shared, **group} for group in table["groups"]]


def table_rows(table) -> list[dict]:
    """Every row of a table, group after group."""
    return [row for group in table_groups(table) for row in group["rows"]]


def table_dataset(cfg, name: str) -> str | None:
    """A table's dataset: its (first) teacher's (every group's teacher and every row share it,
    checked by the validation)."""
    return dataset_of(cfg, teacher=table_groups(lookup(cfg, "tables", name))[0]["teacher"])


def figures_dataset(cfg) -> str | None:
    """The figures' dataset: their table's (None without a figures section)."""
    fig = cfg.get("figures")
    return table_dataset(cfg, fig["table"]) if fig else None


def runs_used(cfg) -> list[str]:
    """The runs some table needs, in the order of ``runs``: the workflow's run matrix (a run
    no table lists is defined but not built, so a profile shrinks the DAG by its table rows)."""
    used = {row["run"] for t in cfg["tables"].values() for row in table_rows(t)}
    return [r for r in cfg["runs"] if r in used]


def teachers_used(cfg) -> list[str]:
    used = [cfg["runs"][r]["teacher"] for r in runs_used(cfg)
            if cfg["runs"][r].get("teacher") is not None]
    used += [g["teacher"] for t in cfg["tables"].values() for g in table_groups(t)]
    return [t for t in cfg["teachers"] if t in used]


def datasets_used(cfg) -> list[str | None]:
    """The dataset keys the built stages use: None (the top-level ``data``) first, then the
    ``datasets`` keys in their order."""
    used = {cfg["teachers"][t].get("dataset") for t in teachers_used(cfg)}
    used |= {cfg["runs"][r].get("dataset") for r in runs_used(cfg)}
    return [k for k in (None, *(cfg.get("datasets") or {})) if k in used]


def draws_boundary(cfg, run: str, teacher: str) -> bool:
    spec = cfg["runs"].get(run, {})
    return spec.get("teacher") == teacher and any(
        cfg["methods"].get(m, {}).get("type") == "BoundaryDistillLoss"
        for m in spec.get("distill", []))


#: Defaults of the optional display keys of the ``figures`` section.
FIGURES_DEFAULTS = {"num_images": 4, "select": "most_different", "boundary_images": 2}


def figures_spec(cfg) -> dict | None:
    """The ``figures`` section, resolved; None when there is none, or when a run it leaves unset
    cannot be derived (then there is no figures stage, as a run no table lists is not built).

    Unset keys: ``seed`` = the first of ``seeds``; ``student`` = the table's first row without
    distillation; ``distilled`` = its last row with a BoundaryDistillLoss term from the table's
    teacher; the display keys from :data:`FIGURES_DEFAULTS`.
    """
    fig = cfg.get("figures")
    if fig is None:
        return None
    group = table_groups(cfg["tables"][fig["table"]])[0]  # one group: checked by validation
    rows = [row["run"] for row in group["rows"]]
    plain = [r for r in rows if not cfg["runs"][r].get("distill")]
    boundary = [r for r in rows if draws_boundary(cfg, r, group["teacher"])]
    spec = {**FIGURES_DEFAULTS, "seed": cfg["seeds"][0],
            "student": plain[0] if plain else None,
            "distilled": boundary[-1] if boundary else None, **fig}
    return spec if spec["student"] and spec["distilled"] else None


def _train_overrides(cfg, role: str, model: dict) -> list[str]:
    """The sections whose ``<role>`` overrides ``train.<role>`` for ``model``, least specific
    first: ``detection`` for a detector (Table V's own optimisation), then the detector's arch
    (``train.cascade_mask_rcnn``: one architecture's schedule)."""
    if task_of(model) != "detection":
        return []
    return [s for s in ("detection", model["arch"]) if (cfg["train"].get(s) or {}).get(role)]


def train_settings(cfg, role: str, model: dict) -> dict:
    """``train.<role>`` for a model, with its overrides (:func:`_train_overrides`) deep-merged
    over it in order."""
    train = copy.deepcopy(cfg["train"][role])
    for section in _train_overrides(cfg, role, model):
        train = deep_merge(train, copy.deepcopy(cfg["train"][section][role]))
    return train


def train_keys(cfg, role: str, model: dict) -> list[str]:
    """Key paths of :func:`train_settings` (a stage's DVC ``params``): ``train.<role>`` and its
    overrides, each whole, or the keys of it that no later override replaces."""
    layers = [(f"train.{role}", cfg["train"][role])]
    layers += [(f"train.{s}.{role}", cfg["train"][s][role])
               for s in _train_overrides(cfg, role, model)]
    out = []
    for i, (key, values) in enumerate(layers):
        later = {k for _, v in layers[i + 1:] for k in v}
        kept = [k for k in values if k not in later]
        out += [key] if len(kept) == len(values) else [f"{key}.{k}" for k in kept]
    return out


def resolve_teacher(cfg, name: str) -> dict:
    """A teacher, fully resolved: ``name, model_name, model`` (the model spec), ``seed``,
    ``train`` (train.teacher) and ``data``. Keys: :func:`param_keys_for_teacher`."""
    spec = lookup(cfg, "teachers", name)
    model = lookup(cfg, "models", spec["model"])
    return {
        "name": name,
        "model_name": spec["model"],
        "model": copy.deepcopy(model),
        "seed": spec["seed"],
        "train": train_settings(cfg, "teacher", model),
        "data": data_spec(cfg, spec.get("dataset")),
    }


def resolve_run(cfg, run: str) -> dict:
    """A student run, fully resolved (seeds aside): what the training code reads, and what
    Snakemake compares to decide a rerun. Keys: :func:`param_keys_for_run`.

    ``{"name", "student": {"model_name", "model"}, "teacher": None | {"name", "model_name",
    "model", "seed", "train"}, "methods": {name: settings}, "weight_decay_schedule", "train",
    "data"}``
    """
    spec = lookup(cfg, "runs", run)
    teacher = None
    if spec.get("teacher") is not None:
        teacher = resolve_teacher(cfg, spec["teacher"])
        del teacher["data"]
    return {
        "name": run,
        "student": {"model_name": spec["student"],
                    "model": copy.deepcopy(lookup(cfg, "models", spec["student"]))},
        "teacher": teacher,
        "methods": {m: copy.deepcopy(lookup(cfg, "methods", m)) for m in spec.get("distill", [])},
        "weight_decay_schedule": bool(spec.get("weight_decay_schedule", False)),
        "train": train_settings(cfg, "student", lookup(cfg, "models", spec["student"])),
        "data": data_spec(cfg, spec.get("dataset")),
    }


def table_seeds(cfg, name: str) -> list[int]:
    """The seeds of table ``name``'s rows: the first ``num_seeds`` of the top-level ``seeds``
    (all of them when the table does not set it)."""
    return list(cfg["seeds"][:lookup(cfg, "tables", name).get("num_seeds")])


def run_seeds(cfg, run: str) -> list[int]:
    """The seeds ``run`` trains with: every seed a table listing it asks for, in the order of
    the top-level ``seeds`` (a run no table lists: all of them)."""
    wanted = {s for name, table in cfg["tables"].items()
              if any(row["run"] == run for row in table_rows(table))
              for s in table_seeds(cfg, name)}
    return [s for s in cfg["seeds"] if s in wanted] if wanted else list(cfg["seeds"])


def resolve_evaluate(cfg, *, run: str | None = None, teacher: str | None = None) -> dict:
    """What an evaluation depends on besides the weights: the model spec and the data."""
    ev = copy.deepcopy(cfg.get("evaluation") or {})
    data = data_spec(cfg, dataset_of(cfg, run=run, teacher=teacher))
    if teacher is not None:
        return {"model": resolve_teacher(cfg, teacher)["model"], "data": data, "evaluation": ev}
    return {"model": resolve_run(cfg, run)["student"]["model"], "data": data, "evaluation": ev}


def resolve_table(cfg, name: str) -> dict:
    return {"table": copy.deepcopy(lookup(cfg, "tables", name)), "seeds": table_seeds(cfg, name)}


def bpkd_methods(cfg) -> list[str]:
    """Methods of type BPKDLoss (the boundary figure draws BPKD's edge mask with the first)."""
    return [m for m, spec in cfg["methods"].items() if spec["type"] == "BPKDLoss"]


def resolve_figures(cfg) -> dict:
    """What the figures depend on besides their input files: the resolved figures section, the
    data settings (split, palette) and BPKD's edge settings."""
    bpkd = bpkd_methods(cfg)
    return {"figures": figures_spec(cfg), "data": data_spec(cfg, figures_dataset(cfg)),
            "bpkd": copy.deepcopy(cfg["methods"][bpkd[0]]) if bpkd else None}


def unique(keys: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def param_keys_for_teacher(cfg, name: str) -> list[str]:
    spec = lookup(cfg, "teachers", name)
    return unique([f"teachers.{name}", f"models.{spec['model']}",
                   *train_keys(cfg, "teacher", lookup(cfg, "models", spec["model"])),
                   *data_keys(cfg, spec.get("dataset"))])


def param_keys_for_run(cfg, run: str) -> list[str]:
    spec = lookup(cfg, "runs", run)
    keys = [f"runs.{run}", f"models.{spec['student']}",
            *train_keys(cfg, "student", lookup(cfg, "models", spec["student"])),
            *data_keys(cfg, spec.get("dataset"))]
    if spec.get("teacher") is not None:
        keys += param_keys_for_teacher(cfg, spec["teacher"])
    keys += [f"methods.{m}" for m in spec.get("distill", [])]
    return unique(keys)


def param_keys_for_evaluate(cfg, *, run: str | None = None, teacher: str | None = None):
    ev = ["evaluation"] if "evaluation" in cfg else []
    data = data_keys(cfg, dataset_of(cfg, run=run, teacher=teacher))
    if teacher is not None:
        return [f"models.{lookup(cfg, 'teachers', teacher)['model']}", *data, *ev]
    return [f"models.{lookup(cfg, 'runs', run)['student']}", *data, *ev]


def param_keys_for_table(cfg, name: str) -> list[str]:
    lookup(cfg, "tables", name)
    return [f"tables.{name}", "seeds"]


def param_keys_for_figures(cfg) -> list[str]:
    return unique(["figures", *data_keys(cfg, figures_dataset(cfg)),
                    *[f"methods.{m}" for m in bpkd_methods(cfg)[:1]]])
