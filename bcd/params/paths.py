"""Every file a stage reads or writes, relative to the repository root (the working directory
of every stage)."""
from __future__ import annotations

from pathlib import Path

from bcd.params.resolve import figures_dataset, figures_spec, table_groups


def data_dir(cfg, dataset: str | None = None) -> Path:
    """The data stage's folder: ``paths.data`` for the top-level ``data``, ``{paths.datasets}/<key>``
    (``paths.datasets`` defaults to ``paths.data``) for ``datasets.<key>``."""
    root = Path(cfg["paths"]["data"])
    if dataset is None:
        return root
    return Path(cfg["paths"].get("datasets") or root) / str(dataset)


def _stage_files(folder: Path) -> dict:
    """``metrics``: the full evaluation (per class, every metric, provenance); ``summary``: its
    headline numbers, the file DVC shows as the stage's metrics (``dvc metrics show``)."""
    return dict(dir=folder, model=folder / "model.pth", train_log=folder / "train_log.json",
                metrics=folder / "metrics.json", summary=folder / "summary.json")


def teacher_paths(cfg, name: str) -> dict:
    return _stage_files(Path(cfg["paths"]["runs"]) / "teachers" / str(name))


def run_paths(cfg, run: str, seed) -> dict:
    """A student run's files; ``distill_heads`` is the distiller's state (connectors and loss
    heads, e.g. BD's boundary convs), which ``model.pth`` (the student alone) lacks; a run
    without distillation writes an empty one."""
    folder = Path(cfg["paths"]["runs"]) / str(run) / f"seed{seed}"
    return {**_stage_files(folder), "distill_heads": folder / "distill_heads.pth"}


def table_paths(cfg, name: str) -> dict:
    folder = Path(cfg["paths"]["results"]) / "tables"
    return dict(csv=folder / f"{name}.csv", tex=folder / f"{name}.tex")


FIGURE_NAMES = ("qualitative", "boundary", "training_curves", "ablation")


FIGURE_FORMATS = ("png", "pdf")


def figure_paths(cfg) -> dict:
    """``{name: {format: path}}`` of the figures (``{paths.results}/figures/``)."""
    folder = Path(cfg["paths"]["results"]) / "figures"
    return {name: {fmt: folder / f"{name}.{fmt}" for fmt in FIGURE_FORMATS}
            for name in FIGURE_NAMES}


def curve_paths(cfg, run: str, seed) -> dict:
    """Flat per-iteration exports of a run's train_log.json (``dvc plots``): ``train`` (one row
    per logged iteration) and ``val`` (one row per validation)."""
    folder = Path(cfg["paths"]["results"]) / "plots"
    return {"train": folder / f"{run}-seed{seed}.csv", "val": folder / f"{run}-seed{seed}-val.csv"}


def figures_runs(cfg) -> list[str]:
    """Runs whose training curves the figures stage draws and exports: the figures table's rows."""
    group = table_groups(cfg["tables"][figures_spec(cfg)["table"]])[0]  # figures: one group
    return [row["run"] for row in group["rows"]]


def figures_inputs(cfg) -> dict:
    """Every file the figures stage reads, by role (paths as strings)."""
    fig = figures_spec(cfg)
    seed, teacher = fig["seed"], table_groups(cfg["tables"][fig["table"]])[0]["teacher"]
    t, s, d = (teacher_paths(cfg, teacher), run_paths(cfg, fig["student"], seed),
               run_paths(cfg, fig["distilled"], seed))
    return {
        "data": str(data_dir(cfg, figures_dataset(cfg))),
        "weights": [str(t["model"]), str(s["model"]), str(d["model"]), str(d["distill_heads"])],
        "metrics": [str(t["metrics"]), str(s["metrics"]), str(d["metrics"])],
        "train_logs": [str(run_paths(cfg, r, seed)["train_log"]) for r in figures_runs(cfg)],
        "table": str(table_paths(cfg, fig["table"])["csv"]),
    }


def figures_outputs(cfg) -> list[str]:
    """The figures (every format) and the curve exports, as strings."""
    out = [str(p) for formats in figure_paths(cfg).values() for p in formats.values()]
    for run in figures_runs(cfg):
        out += [str(p) for p in curve_paths(cfg, run, figures_spec(cfg)["seed"]).values()]
    return out


def log_path(cfg, stage: str) -> Path:
    """Snakemake's ``log:`` file of a stage (DVC prints the output instead)."""
    return Path(cfg["paths"]["runs"]) / "logs" / f"{stage}.log"
