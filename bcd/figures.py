"""Figures from the workflow's outputs: the paper's qualitative grids (Fig. 1/5/6), its boundary
figure (Fig. 3), training curves, and a chart of the ablation table (Table I).

    python -m bcd figures --params F...

reads the params' ``figures`` section and writes, each file to a temporary name renamed into
place, under ``{paths.results}``:

- ``figures/qualitative.{png,pdf}``: for ``num_images`` evaluation images, the image, the ground
  truth, the table's teacher, ``student`` and ``distilled`` (seed ``seed``) and the pixels where
  the two students differ (:func:`difference_mask`);
- ``figures/boundary.{png,pdf}``: the boundary maps of ``distilled``'s BD heads (teacher and
  student side) next to the ground-truth edge mask BPKD distils on;
- ``figures/training_curves.{png,pdf}``: loss terms, temperatures, r(t) and validation mIoU of
  the table's runs (seed ``seed``), from their ``train_log.json``;
- ``figures/ablation.{png,pdf}``: the table's rows: each row's mIoU gain over its reference row
  paired by seed, with its 95 % confidence interval and verdict; mean +- std over seeds of
  mIoU, Boundary IoU and fragmentation, the teacher as a reference line, the paper's mIoU in
  its own panel;
- ``plots/<run>-seed<S>.csv`` and ``plots/<run>-seed<S>-val.csv``: the training logs as flat
  per-iteration rows, the data of ``dvc plots show`` (:func:`dvc_plots`).

The drawing functions (``plot_*``) take plain arrays, dicts and data frames and return a
matplotlib ``Figure`` (Agg canvas, no pyplot state); the model side (weights, inference, the
boundary heads) is in ``load_*`` / :func:`predict` / :func:`boundary_maps`.
"""
from __future__ import annotations

import csv
import json
import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bcd import methods as catalog
from bcd import params as P
from bcd.atomic import atomic_write

IGNORE_INDEX = 255
DPI = 150

# Codes of :func:`difference_mask` and how the grid draws them.
SAME, FIXED, BROKEN, CHANGED = 0, 1, 2, 3
DIFF_STYLE = {
    FIXED: ((0.0, 0.75, 0.0), "green: student + BCD right, student wrong"),
    BROKEN: ((0.90, 0.0, 0.0), "red: student right, student + BCD wrong"),
    CHANGED: ((0.25, 0.25, 0.25), "grey: they differ, both wrong (or unlabelled)"),
}


# ----------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------
def settings(cfg) -> dict:
    """The resolved ``figures`` section (:func:`bcd.params.figures_spec`)."""
    spec = P.figures_spec(cfg)
    if spec is None:
        if "figures" not in cfg:
            raise ValueError(f"{', '.join(P.files_of(cfg))}: no `figures` section in the params")
        raise ValueError(f"{', '.join(P.files_of(cfg))}: figures: table "
                         f"{cfg['figures']['table']!r} has no row without distillation or none "
                         "with a BD term from its teacher; set figures.student and "
                         "figures.distilled")
    return spec


def difference_mask(gt, student, distilled, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Where two predictions differ, and which one the ground truth agrees with.

    Returns a ``uint8`` map of ``gt``'s shape: :data:`SAME` (0) where the predictions agree,
    :data:`FIXED` (1) where ``distilled`` is right and ``student`` wrong, :data:`BROKEN` (2) where
    ``student`` is right and ``distilled`` wrong, :data:`CHANGED` (3) where they differ and
    neither is right, or the pixel is unlabelled (``ignore_index``: no verdict).
    """
    gt, student, distilled = (np.asarray(a) for a in (gt, student, distilled))
    if not gt.shape == student.shape == distilled.shape:
        raise ValueError(f"difference_mask: shapes differ: gt {gt.shape}, student "
                         f"{student.shape}, distilled {distilled.shape}")
    differ = student != distilled
    labelled = gt != ignore_index
    out = np.zeros(gt.shape, np.uint8)
    out[differ] = CHANGED
    out[differ & labelled & (distilled == gt)] = FIXED
    out[differ & labelled & (student == gt)] = BROKEN
    return out


def select_images(gts: Sequence, students: Sequence, distilleds: Sequence, n: int,
                  how: str = "most_different", ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Indices of the ``n`` images to show: the first ``n`` (``how='first'``), or those where
    the two predictions differ on the most labelled pixels, most first, ties in file order."""
    count = len(gts)
    if not count == len(students) == len(distilleds):
        raise ValueError("select_images: one prediction of each model per image is needed")
    if how == "first":
        return list(range(min(n, count)))
    if how != "most_different":
        raise ValueError(f"select_images: unknown selection {how!r} (most_different, first)")
    diff = [int(((np.asarray(s) != np.asarray(d)) & (np.asarray(g) != ignore_index)).sum())
            for g, s, d in zip(gts, students, distilleds)]
    return sorted(range(count), key=lambda i: (-diff[i], i))[:n]


def colorize(labels, palette: Sequence[Sequence[int]],
             ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Label map -> ``(H, W, 3)`` uint8 RGB with the dataset palette; unknown and ignored
    labels white."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    labels = np.asarray(labels)
    out = lut[np.clip(labels, 0, 255).astype(np.intp)]
    out[(labels < 0) | (labels > 255) | (labels == ignore_index)] = 255
    return out


def label_edges(labels) -> np.ndarray:
    """Pixels whose right or lower neighbour carries another label (1-pixel class borders)."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def dataset_classes(data: Mapping[str, Any]) -> tuple[tuple[str, ...], list[list[int]]]:
    """Class names and palette of the params' dataset (its registry entry's, or those of its
    mmseg dataset class: the paper's datasets)."""
    from bcd.data.registry import dataset_entry

    entry = dataset_entry(data)
    if entry.classes is None:  # mmseg's own class names and palette
        import bcd.mm  # noqa: F401
        from mmseg.registry import DATASETS

        meta = DATASETS.get(entry.mmseg_type).METAINFO
        return tuple(meta["classes"]), [list(c) for c in meta["palette"]]
    return tuple(entry.classes), [list(c) for c in entry.palette]


# ----------------------------------------------------------------------------------------------
# Training logs: flat rows (CSV for dvc plots) and the columns a run logs
# ----------------------------------------------------------------------------------------------
def column_name(key: str) -> str:
    """A train_log.json key as a flat column name: the distillation wrapper's ``student.``
    prefix dropped (a plain run logs ``decode.loss_ce``, a distilled one
    ``student.decode.loss_ce``) and dots made underscores (a dot is a nested field in Vega)."""
    if key.startswith("student."):
        key = key[len("student."):]
    return key.replace(".", "_")


def flatten_log(log: Mapping[str, Any]) -> dict[str, list[dict]]:
    """``{"train": [...], "val": [...]}`` of a train_log.json with :func:`column_name` keys."""
    if not isinstance(log, Mapping) or not all(isinstance(log.get(k), list)
                                               for k in ("train", "val")):
        raise ValueError("a training log must be a JSON object with lists 'train' and 'val'")
    return {part: [{column_name(k): v for k, v in row.items()} for row in log[part]]
            for part in ("train", "val")}


def curve_columns(cfg, run: str) -> dict[str, list[str]]:
    """The columns every export of ``run`` has (what :func:`dvc_plots` may name): total loss,
    the student's cross-entropy, one ``distill_loss_<method>`` per distillation term,
    ``loss_<method>_tau`` for BCD's terms, ``r_t`` with the decay schedule, and ``lr``."""
    spec = cfg["runs"][run]
    methods = spec.get("distill", [])
    # BCD's terms: r(t) scales them (bcd.methods' `scheduled`) and they log their temperature
    bcd = catalog.scheduled({m: cfg["methods"][m] for m in methods})
    train = ["iter", "loss", "decode_loss_ce", *[f"distill_loss_{m}" for m in methods],
             *[f"loss_{m}_tau" for m in bcd], *(["r_t"] if bcd and spec.get(
                 "weight_decay_schedule") else []), "lr"]
    return {"train": train, "val": ["iter", "mIoU"]}


def write_rows_csv(path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Rows as CSV with ``columns`` first, then any other keys in order of appearance; a
    missing value is an empty cell."""
    names = list(dict.fromkeys([*columns, *(k for row in rows for k in row)]))

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.DictWriter(fh, fieldnames=names, restval="", lineterminator="\n")
            out.writeheader()
            out.writerows(rows)

    return atomic_write(Path(path), write)


def read_log(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"training log {path} is missing; it is written by the train "
                                "stage") from None
    except ValueError as err:
        raise ValueError(f"{path}: unreadable training log ({err})") from None


def export_curves(cfg) -> list[Path]:
    """``plots/<run>-seed<S>[-val].csv`` for every run of the figures table."""
    seed, written = settings(cfg)["seed"], []
    for run in P.figures_runs(cfg):
        log = flatten_log(read_log(P.run_paths(cfg, run, seed)["train_log"]))
        cols, paths = curve_columns(cfg, run), P.curve_paths(cfg, run, seed)
        written += [write_rows_csv(paths[k], log[k], cols[k]) for k in ("train", "val")]
    return written


def dvc_plots(cfg) -> list:
    """The top-level ``plots:`` of dvc.yaml: the curve exports (x = iteration), the table's
    mIoU as horizontal bars and the figures' PNGs (``dvc plots show`` renders them all)."""
    seed, table = settings(cfg)["seed"], settings(cfg)["table"]
    runs = P.figures_runs(cfg)
    paths = {r: {k: str(v) for k, v in P.curve_paths(cfg, r, seed).items()} for r in runs}
    cols = {r: curve_columns(cfg, r)["train"] for r in runs}

    def curves(pid, title, y_label, pick, part="train"):
        y = {paths[r][part]: pick(r) for r in runs if pick(r)}
        return {pid: {"template": "linear", "x": "iter", "y": y, "title": title,
                      "x_label": "iteration", "y_label": y_label}} if y else None

    entries = [
        curves("train-loss", f"Total training loss (seed {seed})", "loss", lambda r: ["loss"]),
        curves("student-ce", f"Student cross-entropy (seed {seed})", "cross-entropy",
               lambda r: ["decode_loss_ce"]),
        curves("distill-losses", f"Distillation terms (seed {seed})", "weighted loss",
               lambda r: [c for c in cols[r] if c.startswith("distill_loss_")]),
        curves("temperature", f"Distillation temperature (seed {seed})", "tau",
               lambda r: [c for c in cols[r] if c.endswith("_tau")]),
        curves("r_t", f"Loss-weight decay r(t) (seed {seed})", "r(t)",
               lambda r: [c for c in cols[r] if c == "r_t"]),
        curves("val-miou", f"Validation mIoU (seed {seed})", "mIoU (%)", lambda r: ["mIoU"],
               part="val"),
        {f"{table}-miou": {"template": "bar_horizontal", "x": "ours_miou_mean",
                           "y": {str(P.table_paths(cfg, table)["csv"]): "method"},
                           "title": f"{table}: mIoU (%), mean over seeds",
                           "x_label": "mIoU (%)", "y_label": "row"}},
        *[str(p["png"]) for p in P.figure_paths(cfg).values()],
    ]
    return [e for e in entries if e]


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float, **kw):
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, paths: Mapping[str, Path]) -> list[Path]:
    """Write ``fig`` in every format of ``paths`` (``{"png": path, "pdf": path}``), each to a
    temporary name renamed into place; metadata without dates, so reruns give the same bytes."""
    written = []
    for fmt, path in paths.items():
        meta = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}
        written.append(atomic_write(Path(path), lambda tmp, fmt=fmt: fig.savefig(
            tmp, format=fmt, dpi=DPI, metadata=meta.get(fmt))))
    return written


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _class_handles(class_names, palette, labels_present=None):
    from matplotlib.patches import Patch

    keep = range(len(class_names)) if labels_present is None else sorted(labels_present)
    return [Patch(facecolor=np.asarray(palette[k]) / 255, edgecolor="0.5", label=class_names[k])
            for k in keep if k < len(class_names)]


def _cell_size(shape, width: float = 1.55) -> tuple[float, float]:
    h, w = shape[:2]
    return width, width * h / w


def plot_qualitative(samples: Sequence[Mapping[str, Any]], titles: Mapping[str, str],
                     class_names: Sequence[str], palette,
                     ignore_index: int = IGNORE_INDEX):
    """The qualitative grid: one row per sample, columns image, ground truth, teacher, student,
    student + BCD and the difference map (:func:`difference_mask`) over a faded image.

    ``samples``: dicts with ``name``, ``image`` (``(H, W, 3)`` uint8 RGB) and label maps ``gt``,
    ``teacher``, ``student``, ``distilled`` (``(H, W)``). ``titles``: column titles for
    ``teacher``, ``student`` and ``distilled``.
    """
    from matplotlib.patches import Patch

    if not samples:
        raise ValueError("plot_qualitative: no samples")
    cols = ["image", "gt", "teacher", "student", "distilled", "diff"]
    heads = {"image": "Image", "gt": "Ground truth", "diff": "Student + BCD\nvs student",
             **titles}
    cw, ch = _cell_size(samples[0]["image"].shape)
    fig = _new_figure(cw * len(cols), ch * len(samples) + 1.1)
    axes = fig.subplots(len(samples), len(cols), squeeze=False)
    present = set()
    for r, sample in enumerate(samples):
        diff = difference_mask(sample["gt"], sample["student"], sample["distilled"],
                               ignore_index)
        for c, key in enumerate(cols):
            ax = axes[r, c]
            if key == "image":
                ax.imshow(sample["image"], interpolation="nearest")
                ax.set_ylabel(str(sample["name"]), fontsize=8)
            elif key == "diff":
                grey = np.asarray(sample["image"], float).mean(axis=-1) / 255.0
                canvas = np.repeat((0.65 + 0.3 * grey)[..., None], 3, axis=-1)
                for code, (colour, _) in DIFF_STYLE.items():
                    canvas[diff == code] = colour
                ax.imshow(canvas, interpolation="nearest")
                n = {code: int((diff == code).sum()) for code in (FIXED, BROKEN, CHANGED)}
                ax.set_xlabel(f"{n[FIXED]} green, {n[BROKEN]} red,\n{n[CHANGED]} grey pixels",
                              fontsize=7)
            else:
                labels = np.asarray(sample[key])
                present.update(int(v) for v in np.unique(labels) if v != ignore_index)
                ax.imshow(colorize(labels, palette, ignore_index), interpolation="nearest")
            _off(ax)
            if r == 0:
                ax.set_title(heads[key], fontsize=8)
    classes = _class_handles(class_names, palette, present)
    fig.legend(handles=classes, loc="outside lower left", ncol=min(4, len(classes)), fontsize=7,
               title="classes (white: unlabelled)", title_fontsize=7)
    fig.legend(handles=[Patch(facecolor=colour, label=text) for colour, text in
                        DIFF_STYLE.values()], loc="outside lower right", fontsize=7,
               title="last column: where the two students differ", title_fontsize=7)
    return fig


def plot_boundary(samples: Sequence[Mapping[str, Any]], class_names: Sequence[str], palette,
                  bpkd_label: str = "BPKD edge mask", ignore_index: int = IGNORE_INDEX):
    """The boundary figure (paper Fig. 3): image, ground truth, BPKD's ground-truth edge mask,
    and BCD's boundary maps ``B = sigmoid(Conv_1x1(fused features))`` of the teacher and the
    student, each drawn over the image's extent at its own resolution, with the ground truth's
    class borders (full resolution) in cyan on the boundary maps.

    ``samples``: dicts with ``name``, ``image``, ``gt``, ``bpkd_edge`` (bool ``(h, w)``),
    ``boundary_teacher`` and optionally ``boundary_student`` (``(h', w')`` in ``[0, 1]``).
    """
    from matplotlib.lines import Line2D

    if not samples:
        raise ValueError("plot_boundary: no samples")
    has_student = all(s.get("boundary_student") is not None for s in samples)
    cols = ["image", "gt", "bpkd", "teacher"] + (["student"] if has_student else [])
    cw, ch = _cell_size(samples[0]["image"].shape, 1.75)
    fig = _new_figure(cw * len(cols) + 0.6, ch * len(samples) + 0.9)
    axes = fig.subplots(len(samples), len(cols), squeeze=False)
    image = None
    for r, sample in enumerate(samples):
        h, w = np.asarray(sample["gt"]).shape
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        edges = np.zeros((h, w, 4))
        edges[label_edges(sample["gt"])] = (0.0, 1.0, 1.0, 0.9)  # cyan, the rest transparent
        shapes = {k: np.asarray(sample[v]).shape for k, v in
                  (("bpkd", "bpkd_edge"), ("teacher", "boundary_teacher"),
                   ("student", "boundary_student")) if sample.get(v) is not None}
        heads = {"image": "Image", "gt": "Ground truth",
                 "bpkd": f"{bpkd_label}\n(black: edge, {'x'.join(map(str, shapes['bpkd']))})",
                 "teacher": "BCD boundary map, teacher\n"
                            f"B_T ({'x'.join(map(str, shapes['teacher']))})",
                 "student": "BCD boundary map, student\n"
                            f"B_S ({'x'.join(map(str, shapes.get('student', ())))})"}
        for c, key in enumerate(cols):
            ax = axes[r, c]
            if key == "image":
                ax.imshow(sample["image"], interpolation="nearest")
                ax.set_ylabel(str(sample["name"]), fontsize=8)
            elif key == "gt":
                ax.imshow(colorize(sample["gt"], palette, ignore_index), interpolation="nearest")
            elif key == "bpkd":
                ax.imshow(np.asarray(sample["bpkd_edge"], float), cmap="gray_r", vmin=0, vmax=1,
                          extent=extent, interpolation="nearest")
            else:
                image = ax.imshow(np.asarray(sample[f"boundary_{key}"], float), cmap="magma",
                                  vmin=0, vmax=1, extent=extent, interpolation="nearest")
                ax.imshow(edges, extent=extent, interpolation="nearest")
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            _off(ax)
            if r == 0:
                ax.set_title(heads[key], fontsize=8)
    fig.colorbar(image, ax=axes[:, -1], shrink=0.8, label="boundary probability B")
    handles = _class_handles(class_names, palette, {int(v) for s in samples
                                                    for v in np.unique(s["gt"])
                                                    if v != ignore_index})
    fig.legend(handles=handles, loc="outside lower left", ncol=min(4, len(handles)),
               fontsize=7, title="classes (white: unlabelled)", title_fontsize=7)
    fig.legend(handles=[Line2D([], [], color="cyan", lw=2, label="ground-truth class borders\n"
                               "(full resolution)")], loc="outside lower right", fontsize=7)
    return fig


def _series(rows: Sequence[Mapping[str, Any]], key: str):
    pts = [(r["iter"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None


def plot_training_curves(logs: Sequence[tuple[str, Mapping[str, Any]]], title: str = ""):
    """Training curves of several runs (one colour each): total loss, student cross-entropy,
    distillation terms (one line style per term), temperatures, r(t) and validation mIoU.

    ``logs``: ``(label, flat log)`` pairs, flat logs as returned by :func:`flatten_log`.
    """
    from matplotlib.lines import Line2D

    fig = _new_figure(11.0, 6.6)
    axes = fig.subplots(2, 3).ravel()
    panels = [
        ("Total training loss", "loss", lambda k: k == "loss", "train"),
        ("Student cross-entropy (decode head)", "cross-entropy",
         lambda k: k == "decode_loss_ce", "train"),
        ("Distillation terms (weighted)", "loss", lambda k: k.startswith("distill_loss_"), "train"),
        ("Distillation temperature", "tau", lambda k: k.endswith("_tau"), "train"),
        ("Loss-weight decay r(t)", "r(t)", lambda k: k == "r_t", "train"),
        ("Validation mIoU", "mIoU (%)", lambda k: k == "mIoU", "val"),
    ]
    colours = [f"C{i}" for i in range(10)]
    dashes = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
    run_handles = []
    for i, (label, _) in enumerate(logs):
        run_handles.append(Line2D([], [], color=colours[i % 10], lw=2, label=label))
    for ax, (name, y_label, want, part) in zip(axes, panels):
        terms: dict[str, Any] = {}
        drawn = 0
        for i, (label, log) in enumerate(logs):
            rows = log.get(part, [])
            keys = [k for k in dict.fromkeys(k for row in rows for k in row) if want(k)]
            for key in keys:
                series = _series(rows, key)
                if series is None:
                    continue
                style = terms.setdefault(key, dashes[len(terms) % len(dashes)])
                ax.plot(*series, color=colours[i % 10], ls=style, lw=1.2,
                        marker="o" if part == "val" or len(series[0]) < 3 else None, ms=4)
                drawn += 1
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center",
                    transform=ax.transAxes, color="0.4", fontsize=8)
            continue
        if len(terms) > 1:
            ax.legend(handles=[Line2D([], [], color="0.2", ls=s, label=k)
                               for k, s in terms.items()], fontsize=7, loc="best")
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if y_label == "loss" and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
    last = max([r["iter"] for _, log in logs for part in ("train", "val")
                for r in log.get(part, []) if isinstance(r.get("iter"), (int, float))] or [1])
    for ax in axes:
        ax.set_xlim(0, last * 1.03)
    fig.legend(handles=run_handles, loc="outside lower center", ncol=min(6, len(run_handles)),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _numbers(df, col):
    import pandas as pd

    if col not in df:
        return None
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    return None if np.isnan(values).all() else values


#: Colours of the paired verdicts (bcd.tables.verdict) in the ablation chart.
VERDICT_STYLE = {"gain": ("C2", "gain: CI above 0"), "n.s.": ("0.35", "n.s.: CI holds 0"),
                 "loss": ("C3", "loss: CI below 0")}
PAIRED_TITLE = "Ours: mIoU gain over the reference row, paired by seed (mean, 95% CI)"


def _per_seed_values(cell) -> list[float]:
    return [float(v) for v in str(cell).split(";") if v not in ("", "nan")]


def plot_paired(ax, rows, x, labels) -> None:
    """The paired mIoU gains of a table's rows (``paired_diff_*``, ``verdict`` of the CSV):
    per row the mean difference to its reference row with its 95 % CI as error bars, coloured
    and labelled by verdict, the per-seed differences as dots; the reference rows at 0."""
    import pandas as pd

    ax.set_title(PAIRED_TITLE, fontsize=10)
    ax.set_ylabel("Δ mIoU (points)")
    mean = _numbers(rows, "paired_diff_mean")
    if mean is None:
        ax.text(0.5, 0.5, "no paired differences in this table\n(one row, or a table CSV "
                "written before bcd computed them)", ha="center", va="center",
                transform=ax.transAxes, color="0.4", fontsize=8)
        ax.set_xticks([])
        return
    nan = np.full(len(rows), np.nan)
    low = _numbers(rows, "paired_diff_ci_low")
    high = _numbers(rows, "paired_diff_ci_high")
    low, high = (nan if low is None else low), (nan if high is None else high)
    verdicts = [v if isinstance(v, str) else "" for v in rows.get("verdict", [""] * len(rows))]
    ax.axhline(0.0, color="k", lw=0.8)
    shown = [0.0]
    for name, (color, label) in VERDICT_STYLE.items():
        pick = [i for i in range(len(rows)) if verdicts[i] == name and math.isfinite(mean[i])
                and math.isfinite(low[i]) and math.isfinite(high[i])]
        if pick:
            err = [mean[pick] - low[pick], high[pick] - mean[pick]]
            ax.errorbar(x[pick], mean[pick], yerr=err, fmt="o", color=color, ms=6, capsize=4,
                        lw=1.6, label=label)
            shown += [*low[pick], *high[pick]]
    single = [i for i in range(len(rows))
              if math.isfinite(mean[i]) and not math.isfinite(low[i])]
    if single:
        ax.plot(x[single], mean[single], "o", mfc="none", color="0.35", ms=6,
                label="one seed: no interval (n/a)")
    refs = set(rows.get("paired_reference", pd.Series(dtype=str)).dropna().astype(str))
    ref = [i for i, run in enumerate(rows["run"]) if str(run) in refs - {""}]
    if ref:
        ax.plot(x[ref], np.zeros(len(ref)), "s", color="0.6", ms=6, label="reference row")
    labelled = False
    for i, cell in enumerate(rows.get("paired_diff_per_seed", [])):
        seeds = _per_seed_values(cell)
        if seeds:
            ax.scatter([i + 0.18] * len(seeds), seeds, s=7, color="k", alpha=0.6, zorder=3,
                       label=None if labelled else "seeds (per-seed Δ)")
            labelled, shown = True, shown + seeds
    for i in range(len(rows)):
        if math.isfinite(mean[i]):
            top = high[i] if math.isfinite(high[i]) else mean[i]
            text = f"{mean[i]:+.2f} {verdicts[i] or 'n/a'}"
            ax.annotate(text, (i, top), textcoords="offset points", xytext=(0, 5), ha="center",
                        fontsize=7, color=VERDICT_STYLE.get(verdicts[i], ("0.35",))[0])
        shown.append(mean[i])
    shown = np.asarray([v for v in shown if math.isfinite(v)])
    lo, hi = shown.min(), shown.max()
    pad = 0.1 * (hi - lo) + 0.05
    ax.set_ylim(lo - pad, hi + 2.5 * pad)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_xticks(x, labels, fontsize=8, rotation=20)
    ax.legend(fontsize=7, loc="upper left", ncol=6)
    ax.grid(axis="y", alpha=0.3)


def plot_ablation(df, title: str = ""):
    """A results table (``bcd.tables`` CSV): on top, each row's mIoU gain over its reference
    row paired by seed, with its 95 % CI and verdict (:func:`plot_paired`); below, bars of
    mean +- std over seeds of mIoU, Boundary IoU and fragmentation per student row (per-seed
    mIoU as dots), the teacher as a dashed line; the paper's mIoU in a separate panel
    (markers, its teacher dashed)."""
    if "role" not in df or "method" not in df:
        raise ValueError("plot_ablation: the table needs columns 'role' and 'method'")
    teacher = df[df["role"] == "teacher"]
    rows = df[df["role"] != "teacher"].reset_index(drop=True)
    labels = [textwrap.fill(str(m), 14) for m in rows["method"]]
    x = np.arange(len(rows))
    fig = _new_figure(10.0, 10.5)
    grid = fig.add_gridspec(3, 2)
    axes = [fig.add_subplot(grid[r, c]) for r in (1, 2) for c in (0, 1)]
    plot_paired(fig.add_subplot(grid[0, :]), rows, x, labels)
    panels = [("ours_miou", "mIoU (%)", "Ours: mIoU"),
              ("ours_boundary_iou", "Boundary IoU (%)", "Ours: Boundary IoU"),
              ("ours_fragmentation", "fragmented regions (%)",
               "Ours: fragmentation (lower is better)")]
    for ax, (stem, y_label, name) in zip(axes, panels):
        mean, std = _numbers(rows, f"{stem}_mean"), _numbers(rows, f"{stem}_std")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(y_label)
        if mean is None:
            ax.text(0.5, 0.5, f"no values in column {stem}_mean\n(metrics without them?)",
                    ha="center", va="center",
                    transform=ax.transAxes, color="0.4", fontsize=8)
            ax.set_xticks([])
            continue
        err = None if std is None else np.nan_to_num(std)
        bars = ax.bar(x, mean, yerr=err, capsize=3, color="C0", alpha=0.8,
                      label="mean ± std over seeds")
        ax.bar_label(bars, labels=[f"{m:.2f}" if math.isfinite(m) else "" for m in mean],
                     padding=2, fontsize=7)
        if stem == "ours_miou" and "ours_miou_per_seed" in rows:
            for i, cell in enumerate(rows["ours_miou_per_seed"]):
                seeds = _per_seed_values(cell)
                ax.scatter([i] * len(seeds), seeds, s=9, color="k", zorder=3,
                           label="seeds" if i == 0 else None)
        t = _numbers(teacher, f"{stem}_mean")
        if t is not None and math.isfinite(t[0]):
            ax.axhline(t[0], color="C3", ls="--", lw=1.2, label=f"teacher {t[0]:.2f}")
        top = np.nanmax(np.concatenate([mean + (0 if err is None else err),
                                        [] if t is None else t]))
        ax.set_ylim(0, top * 1.3 if top > 0 else 1)
        ax.set_xticks(x, labels, fontsize=8, rotation=20)
        ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[3]
    paper = _numbers(rows, "paper_miou")
    ax.set_title("Paper (reported): mIoU", fontsize=10)
    ax.set_ylabel("mIoU (%)")
    if paper is None:
        ax.text(0.5, 0.5, "no paper values for this table", ha="center", va="center",
                transform=ax.transAxes, color="0.4", fontsize=8)
        ax.set_xticks([])
    else:
        ax.plot(x, paper, "D", color="C1", ms=6, label="paper")
        for i, v in enumerate(paper):
            if math.isfinite(v):
                ax.annotate(f"{v:.2f}", (i, v), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
        t = _numbers(teacher, "paper_miou")
        if t is not None and math.isfinite(t[0]):
            ax.axhline(t[0], color="C3", ls="--", lw=1.2, label=f"paper teacher {t[0]:.2f}")
        ax.set_xticks(x, labels, fontsize=8, rotation=20)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        lo = np.nanmin(paper)
        hi = max(np.nanmax(paper), t[0] if t is not None and math.isfinite(t[0]) else -np.inf)
        ax.set_ylim(lo - 0.15 * (hi - lo + 1), hi + 0.35 * (hi - lo + 1))
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# Models: weights, inference, boundary heads (OpenMMLab code imported here only)
# ----------------------------------------------------------------------------------------------
def load_segmentor(cfg, model_spec: Mapping[str, Any], ckpt):
    """An mmseg segmentor of ``model_spec`` with the weights ``ckpt`` (checked), in eval mode."""
    import bcd.mm  # noqa: F401  (registers bcd's modules, applies the compat patches)
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    from bcd.mm import configs
    from bcd.weights import check_state_dict, load_weights

    data = P.data_spec(cfg, P.figures_dataset(cfg))
    # a ConfigDict, as the Runner passes it (EncoderDecoder reads test_cfg.mode)
    model = MODELS.build(ConfigDict(configs.segmentor(model_spec, configs.num_classes(data),
                                                      configs.crop_size(data))))
    state = load_weights(ckpt)
    check_state_dict(model, state, ckpt)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_distiller(cfg, run: str, seed: int):
    """The mmrazor distiller of ``run`` with its saved state (``distill_heads.pth``)."""
    import bcd.mm  # noqa: F401
    from mmrazor.registry import MODELS

    from bcd.mm import configs
    from bcd.weights import check_state_dict, load_weights

    spec = P.resolve_run(cfg, run)
    path = P.run_paths(cfg, run, seed)["distill_heads"]
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path} is missing: the distiller's heads are written by the train stage; "
            f"retrain the run (`python -m bcd train --params "
            f"{' --params '.join(P.files_of(cfg))} --run {run} --seed {seed}`)")
    distiller = MODELS.build(configs.distiller(
        spec["methods"], spec["student"]["model"], spec["teacher"]["model"], seed=seed,
        num_classes=configs.num_classes(spec["data"])))
    state = load_weights(path)
    check_state_dict(distiller, state, path)
    distiller.load_state_dict(state, strict=True)
    return distiller.eval()


def load_eval_samples(cfg) -> list[dict]:
    """The evaluation split (the one the tables report) through the test pipeline: mmseg's
    packed inputs (``inputs``, ``data_samples``) per image, in file order."""
    import bcd.mm  # noqa: F401
    from mmseg.registry import DATASETS

    from bcd.mm import configs
    from bcd.runtime import require_dataset

    key = P.figures_dataset(cfg)
    data = P.data_spec(cfg, key)
    dataset = DATASETS.build(configs.dataset(data, require_dataset(P.data_job(cfg, key)),
                                             configs.eval_split(data), train=False))
    return [dataset[i] for i in range(len(dataset))]


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict(model, samples: Sequence[dict], batch_size: int = 8) -> list[np.ndarray]:
    """Label maps ``(H, W)`` of a segmentor on packed samples (``model.test_step``: the data
    preprocessor, then whole-image inference as in the evaluate stage)."""
    import torch
    from mmengine.dataset import pseudo_collate

    out = []
    with torch.no_grad():
        for chunk in _batches(list(samples), batch_size):
            for result in model.test_step(pseudo_collate(list(chunk))):
                out.append(result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64))
    return out


def sample_image(sample: dict) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of a packed sample (mmseg loads BGR)."""
    return sample["inputs"].numpy()[::-1].transpose(1, 2, 0).copy()


def sample_gt(sample: dict) -> np.ndarray:
    return sample["data_samples"].gt_sem_seg.data[0].numpy().astype(np.int64)


def sample_name(sample: dict) -> str:
    """``<split folder> <file stem>`` of a packed sample, e.g. ``val 00008``."""
    path = Path(sample["data_samples"].metainfo.get("img_path", "?"))
    return f"{path.parent.name} {path.stem}".strip()


def boundary_maps(cfg, run: str, seed: int, teacher, student, samples: Sequence[dict]) -> dict:
    """BCD's boundary maps of ``run``'s BD term on packed samples, and BPKD's edge mask.

    ``B = sigmoid(Conv_1x1(X^c))`` (Eq. 2) with ``X^c`` the fused features of the teacher
    (frozen fusion ``t_fuse`` and ``teacher_conv``, or with BD's ``teacher: prediction`` the
    boundary derived from the teacher's class probabilities) and of the student (``s_fuse``,
    ``student_conv``), at the fused resolution (1/8); BPKD's edge band
    (:func:`bcd.losses.baselines.bpkd.edge_body_masks`) of the ground truth resized, nearest, to
    the teacher logits' size, with the params' BPKD settings (BPKDLoss's defaults without one).
    Returns ``{"teacher": (N, h, w), "student": (N, h, w), "bpkd_edge": (N, h', w') bool}``.
    """
    import torch
    from mmengine.dataset import pseudo_collate

    from bcd.losses.baselines._common import labels_at
    from bcd.losses.baselines.bpkd import edge_body_masks
    from bcd.losses.boundary import boundary_logits
    from bcd.mm import configs

    methods = P.resolve_run(cfg, run)["methods"]
    bd = next(m for m, s in methods.items() if s["type"] == "BoundaryDistillLoss")
    distiller = load_distiller(cfg, run, seed)
    loss = distiller.distill_losses[f"loss_{bd}"]
    taps = configs.loss_inputs("BoundaryDistillLoss", methods[bd])
    fuse = {side: distiller.connectors[configs.TAPS[taps[arg]]["connector"]]
            for side, arg in (("teacher", "preds_T"), ("student", "preds_S"))}
    heads = {"teacher": loss.teacher_conv, "student": loss.student_conv}
    bpkd = P.bpkd_methods(cfg)
    edge_cfg = cfg["methods"][bpkd[0]] if bpkd else {}
    out = {}
    with torch.no_grad():
        batch = pseudo_collate(list(samples))
        for side, model in (("teacher", teacher), ("student", student)):
            inputs = model.data_preprocessor(batch, False)["inputs"]
            feats = model.extract_feat(inputs)
            fused = fuse[side](feats)
            if side == "teacher":
                logits = model.decode_head(feats)
                # the teacher boundary the loss distils: teacher_conv's, or (teacher: prediction)
                # the one derived from the teacher's class probabilities
                z = loss.teacher_boundary_logits(fused, logits)
            else:
                z = boundary_logits(fused, heads[side])
            out[side] = torch.sigmoid(z).numpy()
        gt = torch.stack([torch.as_tensor(sample_gt(s)) for s in samples])
        labels = labels_at("figures", gt, len(samples), tuple(logits.shape[-2:]), "cpu")
        edge, _ = edge_body_masks(labels, int(edge_cfg.get("kernel_size", 3)),
                                  int(edge_cfg.get("compute_iters", 1)),
                                  int(edge_cfg.get("ignore_index", IGNORE_INDEX)))
        out["bpkd_edge"] = edge.numpy()
    return out


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def _miou(cfg, kind: str, name: str, seed) -> str:
    from bcd import tables

    paths = (P.teacher_paths(cfg, name) if kind == "teacher" else P.run_paths(cfg, name, seed))
    stage = (P.stage_name("evaluate-teacher", name) if kind == "teacher"
             else P.stage_name("evaluate", name, seed))
    m = tables.read_metrics(paths["metrics"], stage=stage, kind=kind, name=name,
                            seed=None if kind == "teacher" else seed, cfg=cfg)
    return f"mIoU {m['mIoU']:.2f}"


def _labels(cfg) -> dict:
    """Display names from the table: its teacher label and its rows' labels, by run."""
    table = P.table_groups(cfg["tables"][settings(cfg)["table"]])[0]  # figures: one group
    out = {row["run"]: row["label"] for row in table["rows"]}
    out[table["teacher"]] = table.get("teacher_label") or f"T: {table['teacher']}"
    return out


def make_qualitative_and_boundary(cfg) -> list[Path]:
    """Inference for the grid and the boundary figure; writes both."""
    from bcd.runtime import setup_threads

    setup_threads(P.rule_threads(cfg, "figures"))
    fig_cfg, seed = settings(cfg), settings(cfg)["seed"]
    table = P.table_groups(cfg["tables"][fig_cfg["table"]])[0]  # figures: one group
    t_name, s_run, d_run = table["teacher"], fig_cfg["student"], fig_cfg["distilled"]
    names = _labels(cfg)
    classes, palette = dataset_classes(P.data_spec(cfg, P.figures_dataset(cfg)))
    samples = load_eval_samples(cfg)
    models = {
        "teacher": load_segmentor(cfg, P.resolve_teacher(cfg, t_name)["model"],
                                  P.teacher_paths(cfg, t_name)["model"]),
        "student": load_segmentor(cfg, P.resolve_run(cfg, s_run)["student"]["model"],
                                  P.run_paths(cfg, s_run, seed)["model"]),
        "distilled": load_segmentor(cfg, P.resolve_run(cfg, d_run)["student"]["model"],
                                    P.run_paths(cfg, d_run, seed)["model"]),
    }
    gts = [sample_gt(s) for s in samples]
    preds = {k: predict(models[k], samples) for k in ("student", "distilled")}
    chosen = select_images(gts, preds["student"], preds["distilled"], fig_cfg["num_images"],
                           fig_cfg["select"])
    teacher_preds = predict(models["teacher"], [samples[i] for i in chosen])
    rows = [{"name": sample_name(samples[i]), "image": sample_image(samples[i]), "gt": gts[i],
             "teacher": t_pred, "student": preds["student"][i],
             "distilled": preds["distilled"][i]} for i, t_pred in zip(chosen, teacher_preds)]
    titles = {
        "teacher": f"Teacher\n{names[t_name]}\n{_miou(cfg, 'teacher', t_name, None)}",
        "student": f"Student\n{names[s_run]}\n{_miou(cfg, 'student', s_run, seed)}",
        "distilled": f"Student + BCD\n{names[d_run]}\n{_miou(cfg, 'student', d_run, seed)}",
    }
    paths = P.figure_paths(cfg)
    written = save_figure(plot_qualitative(rows, titles, classes, palette), paths["qualitative"])

    shown = chosen[: fig_cfg["boundary_images"]]
    maps = boundary_maps(cfg, d_run, seed, models["teacher"], models["distilled"],
                         [samples[i] for i in shown])
    b_rows = [{"name": sample_name(samples[i]), "image": sample_image(samples[i]), "gt": gts[i],
               "bpkd_edge": maps["bpkd_edge"][k], "boundary_teacher": maps["teacher"][k],
               "boundary_student": maps["student"][k]} for k, i in enumerate(shown)]
    written += save_figure(plot_boundary(b_rows, classes, palette), paths["boundary"])
    return written


def make_figures(cfg) -> list[Path]:
    """Every figure and curve export of the params' ``figures`` section; returns the files."""
    import pandas as pd

    fig_cfg, paths = settings(cfg), P.figure_paths(cfg)
    seed, name = fig_cfg["seed"], fig_cfg["table"]
    written = export_curves(cfg)
    labels = _labels(cfg)
    logs = [(labels[run], flatten_log(read_log(P.run_paths(cfg, run, seed)["train_log"])))
            for run in P.figures_runs(cfg)]
    written += save_figure(plot_training_curves(
        logs, f"Training curves, {name} runs, seed {seed} (profile {cfg['profile']})"),
        paths["training_curves"])
    csv_path = P.table_paths(cfg, name)["csv"]
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"table {csv_path} is missing; it is made by stage "
                                f"{P.stage_name('table', name)}")
    caption = cfg["tables"][name]["caption"]
    written += save_figure(plot_ablation(pd.read_csv(csv_path), f"{caption}; ours: profile "
                                         f"{cfg['profile']}, {len(cfg['seeds'])} seed(s)"),
                           paths["ablation"])
    written += make_qualitative_and_boundary(cfg)
    return written


def main_figures(args) -> None:
    """``python -m bcd figures --params F...``."""
    cfg = P.load_params(args.params)
    for path in make_figures(cfg):
        print(f"wrote {path}")
