"""Results tables: the paper's numbers next to ours, every "ours" number from a metrics.json.

``python -m bcd table --params F... --table NAME`` writes ``{paths.results}/tables/NAME.csv``
(machine-readable: raw means, sample standard deviations, per-seed values) and ``NAME.tex``
(the formatted view, booktabs). Rows as in the paper's Table I: the teacher first, then the
table's rows in order. A missing or malformed metrics file is an error naming the file and the
stage that makes it; no seed is ever dropped silently.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from bcd import params as P
from bcd.atomic import atomic_write, write_text_atomic

REFERENCE = Path(__file__).parent / "reference" / "bcd_reported_results.csv"
METRIC = "mIoU"

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
]
DESCRIPTIVE = ("kd_manner", "gt_mask", "boundary_type", "context_type")
QUALITY = {"boundary_iou": "mBoundaryIoU", "trimap_iou": "mTrimapIoU@{w}",
           "fragmentation": "mFragmentation"}


class MetricsError(ValueError):
    """A metrics.json a table needs is missing or malformed (the message says which stage)."""


# ----------------------------------------------------------------------------------------------
# The paper's numbers (bcd/reference/bcd_reported_results.csv: one value per row)
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _reference() -> tuple[dict, ...]:
    with open(REFERENCE, newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def paper_rows(table: Mapping[str, Any], method: str, student: str | None = None) -> list[dict]:
    """Reference rows (metric mIoU) of ``table['paper_table']`` for ``method``, narrowed by the
    table's ``paper_dataset`` / ``paper_teacher`` and by ``student`` (a row's ``paper_student``)."""
    if not table.get("paper_table"):
        return []
    want = {"table": table["paper_table"], "method": method, "metric": METRIC,
            "dataset": table.get("paper_dataset"), "teacher": table.get("paper_teacher"),
            "student": student}
    return [r for r in _reference() if all(v is None or r[k] == v for k, v in want.items())]


def paper_reference_errors(table: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """Problems with a table's references into the paper (used by bcd.params validation):
    ``[(key path below tables.NAME, message)]``."""
    out: list[tuple[tuple, str]] = []
    paper_table = table.get("paper_table")
    if paper_table is not None:
        known = sorted({r["table"] for r in _reference()})
        if paper_table not in known:
            return [(("paper_table",), f"no paper table {paper_table!r} in {P.REFERENCE_CSV} "
                                       f"(tables: {', '.join(known)})")]
        if len(paper_rows(table, "teacher")) > 1:
            out.append((("paper_table",), "several paper teacher rows match; narrow them with "
                                          "paper_dataset / paper_teacher"))
    for i, row in enumerate(table["rows"]):
        method = row.get("paper_method")
        if method is None:
            continue
        where = ("rows", i, "paper_method")
        if paper_table is None:
            out.append((where, "needs the table's paper_table"))
            continue
        found = paper_rows(table, method, row.get("paper_student"))
        if not found:
            methods = sorted({r["method"] for r in _reference() if r["table"] == paper_table})
            out.append((where, f"{method!r} matches no {METRIC} row of paper table {paper_table} "
                               f"in {P.REFERENCE_CSV} (methods: {', '.join(methods)})"))
        elif len(found) > 1:
            out.append((where, f"{method!r} matches {len(found)} rows of paper table "
                               f"{paper_table}; narrow them with paper_dataset / paper_teacher "
                               "/ paper_student"))
    return out


def _paper(table, method: str | None, student: str | None = None) -> dict | None:
    if method is None:
        return None
    found = paper_rows(table, method, student)
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
def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_metrics(path, *, stage: str, kind: str, name: str, seed=None) -> dict:
    """A metrics.json, checked: it must exist, be a JSON object for this kind/name/seed, with a
    finite ``mIoU`` and ``params``, ``flops``, ``input_shape``."""
    path = Path(path)
    remake = f"it is made by stage {stage} (`dvc repro {stage}` or `snakemake --cores 1 {path}`)"
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
        for key in (METRIC, "params", "flops"):
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


def _ours(metrics: list[dict], seeds: list) -> dict:
    values = [float(m[METRIC]) for m in metrics]
    shapes = {tuple(m["input_shape"]) for m in metrics}
    return {
        **_quality(metrics),
        "ours_miou_mean": statistics.fmean(values),
        "ours_miou_std": statistics.stdev(values) if len(values) > 1 else math.nan,
        "n_seeds": len(values),
        "seeds": ";".join(str(s) for s in seeds),
        "ours_miou_per_seed": ";".join(repr(v) for v in values),
        "params_m": statistics.fmean(m["params"] for m in metrics) / 1e6,
        "flops_g": statistics.fmean(m["flops"] for m in metrics) / 1e9,
        "input_shape": ";".join("x".join(str(int(d)) for d in s) for s in sorted(shapes)),
    }


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------
def build_table(cfg, name: str):
    """The raw table (columns :data:`COLUMNS`) as a pandas DataFrame, one row per table row."""
    import pandas as pd

    table = P.lookup(cfg, "tables", name)
    teacher = table["teacher"]
    t_stage = P.stage_name("evaluate-teacher", teacher)
    t_metrics = read_metrics(P.teacher_paths(cfg, teacher)["metrics"], stage=t_stage,
                             kind="teacher", name=teacher, seed=None)
    records = [{
        "method": table.get("teacher_label") or f"T: {teacher}", "role": "teacher",
        "run": teacher, "paper_method": "teacher", "paper": _paper(table, "teacher"),
        "student_model": None, "distill": None,
        **_ours([t_metrics], [cfg["teachers"][teacher]["seed"]]),
    }]
    all_metrics: list[list[dict]] = []
    for row in table["rows"]:
        run, seeds = row["run"], list(cfg["seeds"])
        metrics = [read_metrics(P.run_paths(cfg, run, s)["metrics"],
                                stage=P.stage_name("evaluate", run, s),
                                kind="student", name=run, seed=s) for s in seeds]
        all_metrics.append(metrics)
        spec = cfg["runs"][run]
        records.append({
            "method": row["label"], "role": "student", "run": run,
            "paper_method": row.get("paper_method"),
            "paper": _paper(table, row.get("paper_method"), row.get("paper_student")),
            "paper_base": _paper(table, "student", row.get("paper_student")),
            "student_model": spec["student"], "distill": spec.get("distill"),
            **_ours(metrics, seeds),
        })
    _check_same_teacher(table, t_metrics, [(row["run"], m) for row, ms in
                                           zip(table["rows"], all_metrics) for m in ms])
    # Gains: against the first row without distillation that has the same student model.
    for rec in records[1:]:
        base = next((b for b in records[1:] if not b["distill"]
                     and b["student_model"] == rec["student_model"]), None)
        rec["ours_gain"] = (rec["ours_miou_mean"] - base["ours_miou_mean"]
                            if base is not None and base is not rec else math.nan)
        paper, paper_base = rec["paper"], rec.pop("paper_base")
        rec["paper_gain"] = (round(float(paper["value"]) - float(paper_base["value"]), 2)
                             if paper and paper_base and paper is not paper_base
                             and rec["paper_method"] != "student" else math.nan)
    records[0]["ours_gain"] = records[0]["paper_gain"] = math.nan
    for rec in records:
        paper = rec.pop("paper")
        for col in DESCRIPTIVE:
            rec[col] = (paper or {}).get(col) or ""
        rec["paper_miou"] = float(paper["value"]) if paper else math.nan
        rec["paper_params_m"] = _unit(paper["params"], "M") if paper else math.nan
        rec["paper_flops_g"] = _unit(paper["flops"], "G") if paper else math.nan
    return pd.DataFrame.from_records(records, columns=COLUMNS)


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


def format_table(df):
    """The formatted view (strings, LaTeX-escaped) of a :func:`build_table` frame."""
    import pandas as pd

    def ours(r):
        if r.n_seeds > 1:
            return f"{r.ours_miou_mean:.2f} $\\pm$ {r.ours_miou_std:.2f}"
        return f"{r.ours_miou_mean:.2f}"

    def pm(mean, std):
        if not _is_number(mean):
            return "--"
        return f"{mean:.2f} $\\pm$ {std:.2f}" if _is_number(std) else f"{mean:.2f}"

    view = {"Method": [_tex_escape(m) for m in df["method"]]}
    if any(df[c].astype(str).str.len().gt(0).any() for c in DESCRIPTIVE):
        for col, title in zip(DESCRIPTIVE, ("KD manner", "GT mask", "Boundary", "Context")):
            view[title] = [_tex_escape(v) if v else "--" for v in df[col]]
    quality = {}
    if df["ours_boundary_iou_mean"].notna().any():
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
    return pd.DataFrame({
        **view,
        "Paper mIoU": [_num(v) if _is_number(v) else "--" for v in df["paper_miou"]],
        "Paper gain": [_gain(v) for v in df["paper_gain"]],
        "Ours mIoU": [ours(r) for r in df.itertuples()],
        "Ours gain": [_gain(v) for v in df["ours_gain"]],
        "Seeds": [str(int(n)) for n in df["n_seeds"]],
        "Params (M)": [_num(v) for v in df["params_m"]],
        "FLOPs (G)": [_num(v) for v in df["flops_g"]],
        **({"Paper Params (M)": [_num(v) for v in df["paper_params_m"]],
            "Paper FLOPs (G)": [_num(v) for v in df["paper_flops_g"]]}
           if df["paper_params_m"].notna().any() else {}),
        **quality,
    })


def _caption(cfg, name: str, df) -> str:
    table = cfg["tables"][name]
    seeds = len(cfg["seeds"])
    shapes = sorted(set(df["input_shape"]))
    size = (shapes[0].replace("x", r"$\times$") if len(shapes) == 1
            else "each row's input size (see the CSV)")
    ours = (f"mean $\\pm$ sample standard deviation over {seeds} seeds" if seeds > 1
            else "one seed")
    return (f"{_tex_escape(table['caption'])}. Ours: {ours} (teacher: one run), profile "
            f"{_tex_escape(cfg['profile'])}; our Params and FLOPs are counted by mmengine at "
            f"{size}, the paper's at its own input size. Paper values from "
            f"{_tex_escape(P.REFERENCE_CSV)}; gains are computed against the student row.")


def to_latex(cfg, name: str, df) -> str:
    """booktabs LaTeX; the tabular is scaled to the line width (needs ``graphicx``)."""
    view = format_table(df)
    tex = view.style.hide(axis="index").to_latex(
        column_format="l" + "r" * (view.shape[1] - 1), hrules=True, position="t",
        position_float="centering", caption=_caption(cfg, name, df), label=f"tab:{name}")
    begin, end = tex.index("\\begin{tabular}"), tex.index("\\end{tabular}") + len("\\end{tabular}")
    return (tex[:begin] + "\\resizebox{\\linewidth}{!}{%\n" + tex[begin:end] + "%\n}"
            + tex[end:])


def write_table(cfg, name: str) -> dict:
    """Write ``NAME.csv`` and ``NAME.tex`` (each via a temporary file); returns their paths."""
    df = build_table(cfg, name)
    paths = P.table_paths(cfg, name)
    tex = to_latex(cfg, name, df)
    atomic_write(paths["csv"], lambda p: df.to_csv(p, index=False))
    write_text_atomic(paths["tex"], tex)
    return paths


def main_table(args) -> None:
    """``python -m bcd table --params F... --table NAME``."""
    cfg = P.load_params(args.params)
    paths = write_table(cfg, args.table)
    print(f"table {args.table}: {paths['csv']}, {paths['tex']}")
