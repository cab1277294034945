"""Results tables: the paper's numbers next to ours, every "ours" number from a metrics.json.

``python -m bcd table --params F... --table NAME`` writes ``{paths.results}/tables/NAME.csv``
(machine-readable: raw means, sample standard deviations, per-seed values) and ``NAME.tex``
(the formatted view, booktabs). Rows as in the paper's Table I: the teacher first, then the
table's rows in order. A missing or malformed metrics file is an error naming the file and the
stage that makes it; no seed is ever dropped silently.

Each row is compared with its *reference row*: the table's first row without distillation that
trains the same student model (in a one-architecture table, the student row). The comparison is
paired by seed (:func:`paired_difference`): the per-seed differences of mIoU (and Boundary IoU),
their mean, a 95 % Student-t confidence interval over seeds and a verdict (gain / loss / n.s.;
n/a with one seed). Each row also carries what its training cost (``train_*``, ``peak_mem_*``),
from the ``train_cost`` the train stage recorded and the evaluate stage copied into
metrics.json; metrics files written before that have none, and those cells stay empty.

A table may list teacher groups (params ``groups``, :func:`bcd.params.table_groups`): each
group is its teacher row, then its rows, with the reference row and the paper's values looked
up within the group; the CSV then has a ``group`` column (the group's teacher). The metrics
decide the columns (:data:`TASKS`): a segmentor's (mIoU, Boundary IoU, :data:`COLUMNS`) or,
for metrics with ``"task": "detection"``, a detector's (COCO box and mask AP in percent,
:data:`DETECTION_COLUMNS`; the mask columns empty for models that predict no masks). A table
whose metrics mix tasks is an error naming the files.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bcd import params as P
from bcd.atomic import atomic_write, write_text_atomic
from bcd.reference import METRIC, REFERENCE, REFERENCE_CSV, paper_rows

#: Raw columns of the CSV (and of :func:`build_table`), in order.
COLUMNS = [
    "method", "role", "run", "paper_method", "paper_miou", "paper_gain", "paper_params_m",
    "paper_flops_g", "ours_miou_mean", "ours_miou_std", "ours_gain", "n_seeds", "seeds",
    "ours_miou_per_seed", "params_m", "flops_g", "input_shape",
    # the paper's descriptive columns (Table III), where its row has them
    "kd_manner", "gt_mask", "boundary_type", "context_type",
    # boundary and connectivity quality (bcd.metrics), mean and std over seeds
    "ours_boundary_iou_mean", "ours_boundary_iou_std", "ours_trimap_iou_mean",
    "ours_trimap_iou_std", "trimap_width", "ours_fragmentation_mean", "ours_fragmentation_std",
    # paired by seed with the reference row (run `paired_reference`): mIoU, then Boundary IoU
    "paired_reference", "paired_n", "paired_diff_mean", "paired_diff_ci_low",
    "paired_diff_ci_high", "paired_diff_per_seed", "verdict",
    "paired_boundary_iou_diff_mean", "paired_boundary_iou_ci_low",
    "paired_boundary_iou_ci_high", "paired_boundary_iou_verdict",
    # training cost (mean over seeds; empty for metrics files without train_cost)
    "train_s_per_iter", "train_minutes", "peak_mem_mb", "peak_mem_kind",
]
#: Raw columns of a detector table (metrics with ``"task": "detection"``): COCO box / mask
#: mAP (0.50:0.95, percent); the ``paired_*`` columns compare AP box, ``paired_ap_mask_*`` AP mask.
DETECTION_COLUMNS = [
    "method", "role", "run", "paper_method", "paper_ap_box", "paper_ap_mask", "paper_gain",
    "paper_params_m", "paper_flops_g", "ours_ap_box_mean", "ours_ap_box_std",
    "ours_ap_mask_mean", "ours_ap_mask_std", "ours_gain", "n_seeds", "seeds",
    "ours_ap_box_per_seed", "ours_ap_mask_per_seed", "params_m", "flops_g", "input_shape",
    "paired_reference", "paired_n", "paired_diff_mean", "paired_diff_ci_low",
    "paired_diff_ci_high", "paired_diff_per_seed", "verdict",
    "paired_ap_mask_diff_mean", "paired_ap_mask_ci_low", "paired_ap_mask_ci_high",
    "paired_ap_mask_verdict",
    "train_s_per_iter", "train_minutes", "peak_mem_mb", "peak_mem_kind",
]
DESCRIPTIVE = ("kd_manner", "gt_mask", "boundary_type", "context_type")
QUALITY = {"boundary_iou": "mBoundaryIoU", "trimap_iou": "mTrimapIoU@{w}",
           "fragmentation": "mFragmentation"}
#: Two-sided level of the paired confidence intervals.
CONFIDENCE = 0.95
#: Verdicts of a paired comparison (:func:`verdict`).
GAIN, LOSS, NOT_SIGNIFICANT, UNDEFINED = "gain", "loss", "n.s.", "n/a"


class MetricsError(ValueError):
    """A metrics.json a table needs is missing or malformed (the message says which stage)."""


@dataclass(frozen=True)
class Measure:
    """One metric of a table: its ``metrics.json`` key, its column stem (``ours_<stem>_mean``,
    ``paper_<stem>``), its ``metric`` in the reference CSV and its LaTeX title."""
    key: str
    stem: str
    paper: str
    title: str


@dataclass(frozen=True)
class TaskTable:
    """What a table shows for one task. ``measures[0]`` is the compared metric (gains, the
    ``paired_diff_*`` columns); the others may be absent from a model's metrics (then empty).
    ``second``: the metric paired beside it (``<second_prefix>_diff_mean`` ...).
    ``segmentation``: the Boundary IoU / trimap / fragmentation columns and Table III's
    descriptive ones."""
    task: str
    measures: tuple
    second: Measure
    second_prefix: str
    columns: tuple
    segmentation: bool


#: The tasks a table can show, by the ``task`` of the metrics (absent: segmentation).
TASKS = {
    "segmentation": TaskTable(
        "segmentation", (Measure(METRIC, "miou", METRIC, "mIoU"),),
        Measure("mBoundaryIoU", "boundary_iou", "", "B-IoU"), "paired_boundary_iou",
        tuple(COLUMNS), True),
    "detection": TaskTable(
        "detection", (Measure("bbox_mAP", "ap_box", "AP_box", "AP$^b$"),
                      Measure("segm_mAP", "ap_mask", "AP_mask", "AP$^m$")),
        Measure("segm_mAP", "ap_mask", "AP_mask", "AP$^m$"), "paired_ap_mask",
        tuple(DETECTION_COLUMNS), False),
}
#: display names of the detector archs (the note on mask AP)
ARCH_NAMES = {"gfl": "GFL", "retinanet": "RetinaNet", "cascade_mask_rcnn": "Cascade Mask R-CNN"}


def task_of(metrics: Mapping) -> str:
    """The task of a metrics.json (``task``; segmentors' files predate the key)."""
    return metrics.get("task", "segmentation")


def table_columns(task: str, grouped: bool = False) -> list[str]:
    """The CSV columns of a table of ``task``; a table with teacher groups has a ``group``
    column (the group's teacher) after ``run``."""
    cols = list(TASKS[task].columns)
    return cols[:3] + ["group"] + cols[3:] if grouped else cols


# ----------------------------------------------------------------------------------------------
# The paper's numbers (bcd/reference/bcd_reported_results.csv: one value per row)
# ----------------------------------------------------------------------------------------------
def _paper(table, method: str | None, student: str | None = None,
           metric: str | None = None) -> dict | None:
    if method is None:
        return None
    found = paper_rows(table, method, student, metric)
    return found[0] if len(found) == 1 else None


def _unit(text: str | None, suffix: str) -> float:
    """``'15.24M'`` -> 15.24 (for suffix M); empty -> NaN."""
    text = (text or "").strip()
    if not text:
        return math.nan
    if not text.endswith(suffix):
        raise ValueError(f"{REFERENCE}: {text!r} does not end with {suffix}")
    return float(text[: -len(suffix)])


# ----------------------------------------------------------------------------------------------
# Our numbers (metrics.json written by `python -m bcd evaluate`)
# ----------------------------------------------------------------------------------------------
#: numbers in the CSVs: 6 significant digits, so float32 noise (mmseg's metrics are float32
#: rounded to 2 decimals: 12.15 arrives as 12.149999936421713) does not show
CSV_FLOAT = "%.6g"


def _csv_num(v: float) -> str:
    return CSV_FLOAT % v


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_metrics(path, *, stage: str, kind: str, name: str, seed=None, cfg=None) -> dict:
    """A metrics.json, checked: it must exist, be a JSON object for this kind/name/seed, with a
    finite ``mIoU`` (a detector's, ``"task": "detection"``: ``bbox_mAP``) and ``params``,
    ``flops``, ``input_shape``. ``cfg`` (the loaded params) makes the error's rebuild command
    that of its profile."""
    path = Path(path)
    remake = (f"it is made by stage {stage}: rebuild it with "
              f"{P.remake_command(cfg, stage, path) if cfg is not None else f'`dvc repro --force {stage}`'}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetricsError(f"{path}: metrics file is missing; {remake}") from None
    except (OSError, ValueError) as err:
        raise MetricsError(f"{path}: unreadable metrics file ({err}); {remake}") from None
    problems = []
    if not isinstance(data, dict):
        problems.append("not a JSON object")
    else:
        for key, want in (("kind", kind), ("name", name), ("seed", seed)):
            if data.get(key) != want:
                problems.append(f"{key} is {data.get(key)!r}, expected {want!r}")
        task = TASKS.get(task_of(data))
        if task is None:
            problems.append(f"task is {data.get('task')!r}, expected one of "
                            f"{', '.join(map(repr, TASKS))}")
        for key in ((task.measures[0].key,) if task else ()) + ("params", "flops"):
            if not _is_number(data.get(key)):
                problems.append(f"{key} is {data.get(key)!r}, expected a finite number")
        shape = data.get("input_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(map(_is_number, shape))):
            problems.append(f"input_shape is {shape!r}, expected [3, H, W]")
    if problems:
        raise MetricsError(f"{path}: malformed metrics file: {'; '.join(problems)}; {remake}")
    return data


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _quality(metrics: list[dict]) -> dict:
    """Boundary IoU, trimap IoU (narrowest band) and fragmentation, over the seeds that have them."""
    widths = [(m.get("quality_settings") or {}).get("trimap_widths") for m in metrics]
    width = min(widths[0]) if widths and widths[0] else None
    out = {"trimap_width": width if width is not None else math.nan}
    for name, key in QUALITY.items():
        key = key.format(w=width)
        vals = [float(m[key]) for m in metrics if _is_number(m.get(key))]
        mean, std = _mean_std(vals) if len(vals) == len(metrics) else (math.nan, math.nan)
        out[f"ours_{name}_mean"], out[f"ours_{name}_std"] = mean, std
    return out


def _values(spec: TaskTable, measure: Measure, metrics: list[dict], files: list) -> list | None:
    """Every seed's value of ``measure``, or None when no seed's metrics have it (a model
    without that output: a detector without masks); only some seeds having it is an error."""
    have = [_is_number(m.get(measure.key)) for m in metrics]
    if all(have):
        return [float(m[measure.key]) for m in metrics]
    if not any(have) and measure != spec.measures[0]:
        return None
    path = files[have.index(False)]
    raise MetricsError(f"{path}: no finite {measure.key}, but the metrics of the other seeds "
                       "of its row have it; rebuild it")


def _ours(spec: TaskTable, metrics: list[dict], seeds: list, files: list) -> dict:
    shapes = {tuple(m["input_shape"]) for m in metrics}
    out = _quality(metrics) if spec.segmentation else {}
    for measure in spec.measures:
        values = _values(spec, measure, metrics, files)
        mean, std = _mean_std(values or [])
        out.update({f"ours_{measure.stem}_mean": mean, f"ours_{measure.stem}_std": std,
                    f"ours_{measure.stem}_per_seed": ";".join(_csv_num(v)
                                                              for v in values or [])})
    return {
        **out,
        "n_seeds": len(metrics),
        "seeds": ";".join(str(s) for s in seeds),
        "params_m": statistics.fmean(m["params"] for m in metrics) / 1e6,
        "flops_g": statistics.fmean(m["flops"] for m in metrics) / 1e9,
        "input_shape": ";".join("x".join(str(int(d)) for d in s) for s in sorted(shapes)),
    }


def _cost(metrics: list[dict]) -> dict:
    """Training cost, mean over seeds (NaN unless every seed's metrics have it): seconds per
    iteration, minutes in all, peak memory (CUDA's peak allocation when every seed trained on
    CUDA, else the process's peak RSS; ``peak_mem_kind`` says which)."""
    costs = [m.get("train_cost") if isinstance(m.get("train_cost"), dict) else {}
             for m in metrics]

    def mean(key, scale=1.0):
        vals = [c.get(key) for c in costs]
        return (statistics.fmean(vals) / scale if vals and all(map(_is_number, vals))
                else math.nan)

    out = {"train_s_per_iter": mean("seconds_per_iter"), "train_minutes": mean("seconds", 60.0),
           "peak_mem_mb": mean("peak_cuda_mb"), "peak_mem_kind": "cuda"}
    if not _is_number(out["peak_mem_mb"]):
        out["peak_mem_mb"], out["peak_mem_kind"] = mean("peak_rss_mb"), "rss"
    if not _is_number(out["peak_mem_mb"]):
        out["peak_mem_kind"] = ""
    return out


# ----------------------------------------------------------------------------------------------
# Paired comparison with the reference row
# ----------------------------------------------------------------------------------------------
def t_quantile(dof: int) -> float:
    """The two-sided :data:`CONFIDENCE` quantile of Student's t with ``dof`` degrees of freedom
    (``t_{0.975, dof}``; 4.3027 for 2)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + CONFIDENCE / 2, dof))


def verdict(low: float, high: float, n: int) -> str:
    """``gain`` when the interval lies above zero, ``loss`` below, ``n.s.`` when it holds zero;
    ``n/a`` with fewer than two seeds (no interval)."""
    if n < 2 or not (_is_number(low) and _is_number(high)):
        return UNDEFINED
    return GAIN if low > 0 else LOSS if high < 0 else NOT_SIGNIFICANT


def paired_difference(values: Mapping[Any, float], reference: Mapping[Any, float], *,
                      row: str = "row", against: str = "reference row") -> dict:
    """Per-seed differences ``values[s] - reference[s]`` and their Student-t interval.

    ``values``, ``reference``: ``{seed: metric}``. Both must have the same seeds: a seed one
    side lacks is an error naming it (no seed is dropped). Returns ``seeds`` and ``per_seed``
    (in ``values``' order), ``n``, ``mean``, ``sd`` (sample standard deviation), ``ci_low`` /
    ``ci_high`` = mean -+ t_{0.975, n-1} sd / sqrt(n) (NaN with one seed) and ``verdict``.
    """
    only_row = [s for s in values if s not in reference]
    only_ref = [s for s in reference if s not in values]
    if only_row or only_ref:
        detail = "; ".join(f"seed(s) {', '.join(map(str, seeds))} missing from {side}"
                           for seeds, side in ((only_ref, row), (only_row, against)) if seeds)
        raise MetricsError(f"{row} cannot be paired by seed with {against}: {detail}")
    seeds = list(values)
    if not seeds:
        raise MetricsError(f"{row}: no seeds to pair with {against}")
    diffs = [float(values[s]) - float(reference[s]) for s in seeds]
    n, mean = len(diffs), statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    low, high = mean - half, mean + half
    return {"seeds": seeds, "per_seed": diffs, "n": n, "mean": mean, "sd": sd,
            "ci_low": low, "ci_high": high, "verdict": verdict(low, high, n)}


def _per_seed(metrics: list[dict], key: str) -> dict | None:
    """``{seed: metrics[key]}``, or None when a seed's metrics lack ``key``. Values are cut to
    the 6 significant digits the CSVs keep (the metrics are float32 numbers: 25.219999313 is
    25.22), so the per-seed differences carry no float32 noise (-0.38, not -0.380001)."""
    out = {m["seed"]: m.get(key) for m in metrics}
    if not all(map(_is_number, out.values())):
        return None
    return {s: float(CSV_FLOAT % float(v)) for s, v in out.items()}


def _paired(spec: TaskTable, rec: dict, base: dict | None) -> dict:
    """The ``paired_*`` / ``verdict`` columns of a row against its reference row ``base``
    (empty for the reference row itself, the teacher, and a row without a reference): the
    compared metric, then ``spec.second`` where both rows have it."""
    second = spec.second_prefix
    out = {"paired_reference": "", "paired_n": math.nan, "paired_diff_mean": math.nan,
           "paired_diff_ci_low": math.nan, "paired_diff_ci_high": math.nan,
           "paired_diff_per_seed": "", "verdict": "",
           f"{second}_diff_mean": math.nan, f"{second}_ci_low": math.nan,
           f"{second}_ci_high": math.nan, f"{second}_verdict": ""}
    if base is None or base is rec:
        return out
    row = f"row {rec['method']!r} (run {rec['run']})"
    against = f"its reference row {base['method']!r} (run {base['run']})"
    key = spec.measures[0].key
    got = paired_difference(_per_seed(rec["metrics"], key), _per_seed(base["metrics"], key),
                            row=row, against=against)
    out.update({"paired_reference": base["run"], "paired_n": got["n"],
                "paired_diff_mean": got["mean"], "paired_diff_ci_low": got["ci_low"],
                "paired_diff_ci_high": got["ci_high"],
                "paired_diff_per_seed": ";".join(_csv_num(v) for v in got["per_seed"]),
                "verdict": got["verdict"]})
    key = spec.second.key
    mine, theirs = _per_seed(rec["metrics"], key), _per_seed(base["metrics"], key)
    if mine is not None and theirs is not None:
        got = paired_difference(mine, theirs, row=row, against=against)
        out.update({f"{second}_diff_mean": got["mean"], f"{second}_ci_low": got["ci_low"],
                    f"{second}_ci_high": got["ci_high"], f"{second}_verdict": got["verdict"]})
    return out


def reference_row(records: list[dict], rec: dict) -> dict | None:
    """The row ``rec`` is compared with: the table's first row without distillation that trains
    the same student model (None for the teacher, or when the table has no such row)."""
    if rec["role"] == "teacher":
        return None
    return next((b for b in records if b["role"] != "teacher" and not b["distill"]
                 and b["student_model"] == rec["student_model"]), None)


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def _read_group(cfg, group: dict, seeds: list) -> list[dict]:
    """A teacher group's records (its teacher row, then its rows over ``seeds``) with their
    metrics, read and checked; the teacher checkpoint every distilled row used is checked
    against the teacher's."""
    teacher = group["teacher"]
    t_path = P.teacher_paths(cfg, teacher)["metrics"]
    t_metrics = read_metrics(t_path, stage=P.stage_name("evaluate-teacher", teacher),
                             kind="teacher", name=teacher, seed=None, cfg=cfg)
    records = [{
        "method": group.get("teacher_label") or f"T: {teacher}", "role": "teacher",
        "run": teacher, "group": teacher, "paper_method": "teacher", "paper_student": None,
        "student_model": None, "distill": None, "metrics": [t_metrics], "files": [t_path],
        "seed_list": [cfg["teachers"][teacher]["seed"]],
    }]
    for row in group["rows"]:
        run = row["run"]
        files = [P.run_paths(cfg, run, s)["metrics"] for s in seeds]
        metrics = [read_metrics(f, stage=P.stage_name("evaluate", run, s), kind="student",
                                name=run, seed=s, cfg=cfg) for f, s in zip(files, seeds)]
        spec = cfg["runs"][run]
        records.append({
            "method": row["label"], "role": "student", "run": run, "group": teacher,
            "paper_method": row.get("paper_method"), "paper_student": row.get("paper_student"),
            "student_model": spec["student"], "distill": spec.get("distill"),
            "metrics": metrics, "files": files, "seed_list": seeds,
        })
    _check_same_teacher(group, t_metrics, [(rec["run"], m) for rec in records[1:]
                                           for m in rec["metrics"]])
    return records


def _table_task(name: str, groups: list[list[dict]]) -> TaskTable:
    """The one task of a table's metrics (a table mixing tasks is an error naming two files)."""
    seen: dict[str, Path] = {}
    for rec in (r for records in groups for r in records):
        for path, m in zip(rec["files"], rec["metrics"]):
            seen.setdefault(task_of(m), path)
    if len(seen) > 1:
        detail = ", ".join(f"{path} is {task}" for task, path in seen.items())
        raise MetricsError(f"table {name!r} mixes tasks: {detail}; a table compares the "
                           "metrics of one task (make one table per task)")
    return TASKS[next(iter(seen))]


def _finish_group(spec: TaskTable, group: dict, records: list[dict]) -> None:
    """Our numbers, the paper's values, gains and paired statistics of one group's records
    (in place): each row against its reference row in the group (:func:`reference_row`)."""
    first = spec.measures[0]
    for rec in records:
        rec.update(_ours(spec, rec["metrics"], rec["seed_list"], rec["files"]))
        rec.update(_cost(rec["metrics"]))
    for rec in records:
        base = reference_row(records, rec)
        rec["ours_gain"] = (rec[f"ours_{first.stem}_mean"] - base[f"ours_{first.stem}_mean"]
                            if base is not None and base is not rec else math.nan)
        rec.update(_paired(spec, rec, base))
        method, student = rec["paper_method"], rec["paper_student"]
        paper = _paper(group, method, student, first.paper)
        paper_base = _paper(group, "student", student, first.paper)
        rec["paper_gain"] = (round(float(paper["value"]) - float(paper_base["value"]), 2)
                             if rec["role"] != "teacher" and paper and paper_base
                             and paper is not paper_base and method != "student" else math.nan)
        for col in DESCRIPTIVE:
            rec[col] = (paper or {}).get(col) or ""
        for measure in spec.measures:  # a model without masks: no paper AP mask either
            shown = measure is first or _is_number(rec[f"ours_{measure.stem}_mean"])
            found = _paper(group, method, student, measure.paper) if shown else None
            rec[f"paper_{measure.stem}"] = float(found["value"]) if found else math.nan
        rec["paper_params_m"] = _unit(paper["params"], "M") if paper else math.nan
        rec["paper_flops_g"] = _unit(paper["flops"], "G") if paper else math.nan


def build_table(cfg, name: str):
    """The raw table (columns :func:`table_columns` of its task: :data:`COLUMNS` for
    segmentors, :data:`DETECTION_COLUMNS` for detectors) as a pandas DataFrame, one row per
    table row: per teacher group, its teacher row, then its rows."""
    import pandas as pd

    table = P.lookup(cfg, "tables", name)
    groups = P.table_groups(table)
    records = [_read_group(cfg, group, P.table_seeds(cfg, name)) for group in groups]
    spec = _table_task(name, records)
    for group, recs in zip(groups, records):
        _finish_group(spec, group, recs)
    rows = [rec for recs in records for rec in recs]
    df = pd.DataFrame.from_records(rows, columns=table_columns(spec.task, "groups" in table))
    df.attrs["models"] = {rec["run"]: _model_name(rec["metrics"][0]) for rec in rows}
    return df


def _model_name(metrics: Mapping) -> str:
    """A row's model for the notes beside a table: the arch's display name (:data:`ARCH_NAMES`),
    else the params model name."""
    arch = (metrics.get("model_spec") or {}).get("arch")
    return ARCH_NAMES.get(arch) or str(arch or metrics.get("model") or "?")


def _check_same_teacher(table, t_metrics: dict, runs: list[tuple[str, dict]]) -> None:
    """Refuse a table whose distilled runs were made from different teacher checkpoints.

    Every distilled run's provenance names the sha256 of the teacher weights it used; they must
    all equal the hash of the teacher weights the table's teacher row evaluated.
    """
    want = t_metrics.get("weights_sha256")
    seen: dict[str, list[str]] = {}
    for run, m in runs:
        made = m.get("provenance") or {}
        got = made.get("teacher_sha256")
        if got:
            seen.setdefault(got, []).append(f"{run} seed {m.get('seed')}")
    if want:
        bad = {h: r for h, r in seen.items() if h != want}
    else:
        bad = seen if len(seen) > 1 else {}
    if bad:
        detail = "; ".join(f"{', '.join(r[:3])}{' ...' if len(r) > 3 else ''} used teacher "
                           f"{h[:12]}" for h, r in bad.items())
        raise MetricsError(
            f"table {table.get('caption', '')!r} would mix runs distilled from different teacher "
            f"checkpoints: the teacher row evaluated {str(want)[:12]}, but {detail}. Retrain those "
            "runs against the current teacher (snakemake/dvc repro does this when the teacher "
            "changed).")


def _tex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}
    out = "".join(special.get(c, c) for c in str(text))
    return out.replace("->", r"$\rightarrow$").replace("±", r"$\pm$").replace("×", r"$\times$")


def _num(x: float) -> str:
    if not _is_number(x):
        return "--"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3g}"


def _gain(x: float) -> str:
    return f"{x:+.2f}" if _is_number(x) else "--"


def _ci_title() -> str:
    return f"[{CONFIDENCE * 100:.0f}\\% CI]"


def format_paired(mean: float, low: float, high: float, verdict_: str) -> str:
    """``+0.45 [-0.20, +1.10] n.s.``; ``+0.45 n/a`` without an interval; ``--`` without a
    comparison."""
    if not _is_number(mean):
        return "--"
    if _is_number(low) and _is_number(high):
        return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] {verdict_}"
    return f"{mean:+.2f} {verdict_ or UNDEFINED}"


def frame_task(df) -> TaskTable:
    """The task of a :func:`build_table` frame (by its columns)."""
    return TASKS["detection" if "ours_ap_box_mean" in df.columns else "segmentation"]


def format_table(df):
    """The formatted view (strings, LaTeX-escaped) of a :func:`build_table` frame."""
    import pandas as pd

    spec = frame_task(df)
    first, others = spec.measures[0], spec.measures[1:]
    second = spec.second_prefix

    def ours(r):
        mean, std = getattr(r, f"ours_{first.stem}_mean"), getattr(r, f"ours_{first.stem}_std")
        if r.n_seeds > 1:
            return f"{mean:.2f} $\\pm$ {std:.2f}"
        return f"{mean:.2f}"

    def pm(mean, std):
        if not _is_number(mean):
            return "--"
        return f"{mean:.2f} $\\pm$ {std:.2f}" if _is_number(std) else f"{mean:.2f}"

    reference_runs = set(df["paired_reference"].dropna().astype(str)) - {""}

    def paired(r, stem: str, ci: str, verdict_col: str, has: str | None = None):
        if r.role != "teacher" and r.run in reference_runs:  # `has`: the row's own value
            return "(reference)" if has is None or _is_number(getattr(r, has)) else "--"
        return format_paired(getattr(r, f"{stem}_mean"), getattr(r, f"{ci}_low"),
                             getattr(r, f"{ci}_high"), getattr(r, verdict_col))

    view = {"Method": [_tex_escape(m) for m in df["method"]]}
    if spec.segmentation and any(df[c].astype(str).str.len().gt(0).any() for c in DESCRIPTIVE):
        for col, title in zip(DESCRIPTIVE, ("KD manner", "GT mask", "Boundary", "Context")):
            view[title] = [_tex_escape(v) if v else "--" for v in df[col]]
    quality = {}
    if spec.segmentation and df["ours_boundary_iou_mean"].notna().any():
        w = df["trimap_width"].dropna()
        w = int(w.iloc[0]) if len(w) else "?"
        quality = {
            "Ours B-IoU": [pm(a, b) for a, b in zip(df["ours_boundary_iou_mean"],
                                                    df["ours_boundary_iou_std"])],
            f"Ours trimap@{w}": [pm(a, b) for a, b in zip(df["ours_trimap_iou_mean"],
                                                          df["ours_trimap_iou_std"])],
            "Ours frag. (\\%)": [pm(a, b) for a, b in zip(df["ours_fragmentation_mean"],
                                                        df["ours_fragmentation_std"])],
        }
    second_gain = {}
    if df[f"{second}_diff_mean"].notna().any():
        second_gain = {f"Ours {spec.second.title} gain {_ci_title()}": [
            paired(r, f"{second}_diff", f"{second}_ci", f"{second}_verdict",
                   f"ours_{spec.second.stem}_mean") for r in df.itertuples()]}
    if quality and second_gain:
        items = list(quality.items())  # the B-IoU gain right after the B-IoU
        quality = dict([items[0], *second_gain.items(), *items[1:]])
    if spec.segmentation:
        second_gain = {}
    shown = [m for m in others if df[f"ours_{m.stem}_mean"].notna().any()
             or df[f"paper_{m.stem}"].notna().any()]
    cost = {}
    if df[["train_s_per_iter", "train_minutes", "peak_mem_mb"]].notna().any().any():
        kinds = sorted(set(df["peak_mem_kind"].dropna().astype(str)) - {""})
        mem = {"cuda": "Peak CUDA (MB)", "rss": "Peak RSS (MB)"}.get(
            kinds[0] if len(kinds) == 1 else "", "Peak mem. (MB)")
        cost = {"s/iter": [f"{v:.3f}" if _is_number(v) else "--" for v in df["train_s_per_iter"]],
                "Train (min)": [f"{v:.2f}" if _is_number(v) else "--" for v in df["train_minutes"]],
                mem: [f"{v:.0f}" if _is_number(v) else "--" for v in df["peak_mem_mb"]]}
    return pd.DataFrame({
        **view,
        **{f"Paper {m.title}": [_num(v) if _is_number(v) else "--" for v in df[f"paper_{m.stem}"]]
           for m in (first, *shown)},
        "Paper gain": [_gain(v) for v in df["paper_gain"]],
        f"Ours {first.title}": [ours(r) for r in df.itertuples()],
        **{f"Ours {m.title}": [pm(a, b) for a, b in zip(df[f"ours_{m.stem}_mean"],
                                                       df[f"ours_{m.stem}_std"])]
           for m in shown},
        f"Ours gain {_ci_title()}": [paired(r, "paired_diff", "paired_diff_ci", "verdict")
                                for r in df.itertuples()],
        **second_gain,
        "Seeds": [str(int(n)) for n in df["n_seeds"]],
        "Params (M)": [_num(v) for v in df["params_m"]],
        "FLOPs (G)": [_num(v) for v in df["flops_g"]],
        **({"Paper Params (M)": [_num(v) for v in df["paper_params_m"]],
            "Paper FLOPs (G)": [_num(v) for v in df["paper_flops_g"]]}
           if df["paper_params_m"].notna().any() else {}),
        **quality,
        **cost,
    })


def _caption(cfg, name: str, df) -> str:
    table = cfg["tables"][name]
    seeds = len(P.table_seeds(cfg, name))
    shapes = sorted(set(df["input_shape"]))
    size = (shapes[0].replace("x", r"$\times$") if len(shapes) == 1
            else "each row's input size (see the CSV)")
    ours = (f"mean $\\pm$ sample standard deviation over {seeds} seeds" if seeds > 1
            else "one seed")
    level = f"{CONFIDENCE * 100:.0f}\\%"
    paired = (f"Our gains are paired by seed: the mean of the per-seed differences to the "
              f"reference row (the first row without distillation of the same student model), "
              f"with its {level} Student-t confidence interval over seeds; gain / loss: the "
              "interval lies above / below zero, n.s.: it holds zero" if seeds > 1 else
              "Our gains: the difference to the reference row (the first row without "
              "distillation of the same student model); one seed gives no interval (n/a)")
    cost = ""
    if df[["train_s_per_iter", "train_minutes", "peak_mem_mb"]].notna().any().any():
        cost = (" Training cost, mean over seeds: seconds per iteration (mmengine's iteration "
                "timer), wall minutes of the training process without the final evaluation, "
                "and its peak memory (on CUDA the peak allocation, else the peak resident set, "
                "which for distilled runs includes the teacher); -- where the run's metrics "
                "predate these records.")
    if "group" in df.columns:
        paired = paired.replace("of the same student model", "of the same student model in "
                                "its teacher's group")
    task = ""
    if not frame_task(df).segmentation:
        task = (" AP$^b$ / AP$^m$: COCO box / mask mAP (IoU 0.50:0.95, percent); our gains "
                "compare AP$^b$ (and AP$^m$ where both rows have masks)." + _mask_note(df))
    return (f"{_tex_escape(table['caption'])}. Ours: {ours} (teacher: one run), profile "
            f"{_tex_escape(cfg['profile'])}; our Params and FLOPs are counted by mmengine at "
            f"{size}, the paper's at its own input size. Paper values from "
            f"{_tex_escape(REFERENCE_CSV)}; the paper's gains are against its student row. "
            f"{paired}.{task}{cost}")


def _and(names: list[str]) -> str:
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)


def mask_note(df) -> str:
    """The note beside a detector table whose rows include models without masks (plain text):
    ``AP^m only for Cascade Mask R-CNN: GFL and RetinaNet predict no masks; the paper prints an
    AP^m column for them``; empty when every row has masks."""
    models = df.attrs.get("models") or {}
    names = [models.get(run, method) for run, method in zip(df["run"], df["method"])]
    has = list(df["ours_ap_mask_mean"].notna())
    masks = list(dict.fromkeys(n for n, h in zip(names, has) if h))
    without = list(dict.fromkeys(n for n, h in zip(names, has) if not h and n not in masks))
    if not without:
        return ""
    head = f"AP^m only for {_and(masks)}" if masks else "AP^m: no model here predicts masks"
    return (f"{head}: {_and(without)} predict{'s' if len(without) == 1 else ''} no masks; the "
            "paper prints an AP^m column for them")


def _mask_note(df) -> str:
    note = mask_note(df)
    if not note:
        return ""
    return (" " + _tex_escape(note).replace("AP\\textasciicircum{}m", "AP$^m$")
            + f" (its values are in {_tex_escape(REFERENCE_CSV)}).")


def to_latex(cfg, name: str, df) -> str:
    """booktabs LaTeX; the tabular is scaled to the line width (needs ``graphicx``)."""
    view = format_table(df)
    tex = view.style.hide(axis="index").to_latex(
        column_format="l" + "r" * (view.shape[1] - 1), hrules=True, position="t",
        position_float="centering", caption=_caption(cfg, name, df), label=f"tab:{name}")
    begin, end = tex.index("\\begin{tabular}"), tex.index("\\end{tabular}") + len("\\end{tabular}")
    if "group" in df.columns:  # a rule above each teacher group but the first
        head, rule, body = tex[begin:end].partition("\\midrule\n")
        lines = body.split("\n")
        starts = {i for i, role in enumerate(df["role"]) if role == "teacher" and i > 0}
        body = "\n".join(("\\midrule\n" + line) if i in starts else line
                         for i, line in enumerate(lines))
        tex = tex[:begin] + head + rule + body + tex[end:]
        end = tex.index("\\end{tabular}") + len("\\end{tabular}")
    return (tex[:begin] + "\\resizebox{\\linewidth}{!}{%\n" + tex[begin:end] + "%\n}"
            + tex[end:])


def write_table(cfg, name: str) -> dict:
    """Write ``NAME.csv`` and ``NAME.tex`` (each via a temporary file); returns their paths."""
    df = build_table(cfg, name)
    paths = P.table_paths(cfg, name)
    tex = to_latex(cfg, name, df)
    atomic_write(paths["csv"], lambda p: df.to_csv(p, index=False, float_format=CSV_FLOAT))
    write_text_atomic(paths["tex"], tex)
    return paths


def main_table(args) -> None:
    """``python -m bcd table --params F... --table NAME``."""
    cfg = P.load_params(args.params)
    paths = write_table(cfg, args.table)
    print(f"table {args.table}: {paths['csv']}, {paths['tex']}")


# ----------------------------------------------------------------------------------------------
# A table's rows on one split, per class: the val split (for decisions) or the test split
# ----------------------------------------------------------------------------------------------
def _split_result(cfg, kind: str, name: str, seed, split: str) -> dict:
    """``{"mIoU": .., "per_class_iou": {class: IoU}}`` of a run (or the teacher) on ``split``:
    ``val`` from the last validation of its train_log.json (it must be at the final iteration,
    i.e. of the kept weights), ``test`` (the tables' split) from its metrics.json."""
    files = P.teacher_paths(cfg, name) if kind == "teacher" else P.run_paths(cfg, name, seed)
    if split != "val":
        m = read_metrics(files["metrics"], stage=P.stage_name(
            "evaluate-teacher" if kind == "teacher" else "evaluate", name,
            *(() if kind == "teacher" else (seed,))), kind=kind, name=name, seed=seed, cfg=cfg)
        if m.get("split") != split:
            raise MetricsError(f"{files['metrics']}: evaluated on {m.get('split')!r}, not {split!r}")
        return {"mIoU": float(m[METRIC]), "per_class_iou": dict(m.get("per_class_iou") or {})}
    path = files["train_log"]
    try:
        log = json.loads(Path(path).read_text(encoding="utf-8"))
        last = log["val"][-1]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise MetricsError(f"{path}: no validation result to read ({err!r}); train the run "
                           "with a val_interval that divides its iterations") from None
    iters = P.resolve_teacher(cfg, name)["train"]["iters"] if kind == "teacher" else \
        P.resolve_run(cfg, name)["train"]["iters"]
    if last.get("iter") != iters:
        raise MetricsError(f"{path}: the last validation is at iteration {last.get('iter')}, not "
                           f"at the final {iters}: set val_interval to divide train iters")
    return {"mIoU": float(last[METRIC]),
            "per_class_iou": {k[4:]: float(v) for k, v in last.items() if k.startswith("IoU.")}}


def split_summary(cfg, name: str, split: str = "val"):
    """A table's rows on ``split`` (``val``: the last validation during training; else the
    evaluated split): mean / sd of mIoU over seeds, the paired difference to the reference row
    (as in the tables: mean, 95 % CI, verdict) and every class's mean IoU (``iou.<class>``).
    The val numbers are for choosing settings; the tables report the test split."""
    import pandas as pd

    out = []
    for group in P.table_groups(P.lookup(cfg, "tables", name)):
        out += _split_group(cfg, group, P.table_seeds(cfg, name), split)
    return pd.DataFrame.from_records(out)


def _split_group(cfg, group: dict, seeds: list, split: str) -> list[dict]:
    """:func:`split_summary`'s lines of one teacher group."""
    teacher = group["teacher"]
    t_seed = cfg["teachers"][teacher]["seed"]
    rows = [{"method": group.get("teacher_label") or f"T: {teacher}", "role": "teacher",
             "run": teacher, "student_model": None, "distill": None,
             "res": {t_seed: _split_result(cfg, "teacher", teacher, None, split)}}]
    for row in group["rows"]:
        spec = cfg["runs"][row["run"]]
        rows.append({"method": row["label"], "role": "student", "run": row["run"],
                     "student_model": spec["student"], "distill": spec.get("distill"),
                     "res": {s: _split_result(cfg, "student", row["run"], s, split)
                             for s in seeds}})
    out = []
    for rec in rows:
        values = {s: r["mIoU"] for s, r in rec["res"].items()}
        mean, sd = _mean_std(list(values.values()))
        line = {"method": rec["method"], "run": rec["run"], "split": split, "n_seeds": len(values),
                "miou_mean": mean, "miou_std": sd}
        base = reference_row(rows, rec)
        if base is not None and base is not rec:
            got = paired_difference(values, {s: r["mIoU"] for s, r in base["res"].items()},
                                    row=f"row {rec['method']!r}", against=f"{base['method']!r}")
            line.update(paired_diff_mean=got["mean"], paired_diff_ci_low=got["ci_low"],
                        paired_diff_ci_high=got["ci_high"], verdict=got["verdict"])
        classes = next(iter(rec["res"].values()))["per_class_iou"]
        for c in classes:
            vals = [r["per_class_iou"].get(c, math.nan) for r in rec["res"].values()]
            line[f"iou.{c}"] = statistics.fmean(vals)
        out.append(line)
    return out


def main_summary(args) -> None:
    """``python -m bcd summary --params F... --table NAME [--split val]``: print the rows and
    write ``<results>/summaries/NAME.<split>.csv``."""
    cfg = P.load_params(args.params)
    df = split_summary(cfg, args.table, args.split)
    path = Path(cfg["paths"]["results"]) / "summaries" / f"{args.table}.{args.split}.csv"
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.4g"))
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(df.round(2).to_string(index=False))
    print(f"summary of {args.table} on {args.split}: {path}")
