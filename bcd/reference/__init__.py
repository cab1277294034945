"""The paper's reported numbers (``bcd_reported_results.csv`` beside this file: every number of
Tables I-V, one value per row) and the lookups the tables and the params validation make into
them. Plain Python: imports nothing else of bcd."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

#: the file, and its path relative to the repository root (a dependency of the table stages)
REFERENCE = Path(__file__).parent / "bcd_reported_results.csv"
REFERENCE_CSV = "bcd/reference/bcd_reported_results.csv"
#: the metric the tables compare: of segmentation (mIoU), of detection (AP_box; AP_mask beside)
METRIC = "mIoU"
DETECTION_METRICS = ("AP_box", "AP_mask")


@lru_cache(maxsize=None)
def rows() -> tuple[dict, ...]:
    with open(REFERENCE, newline="", encoding="utf-8") as fh:
        return tuple(csv.DictReader(fh))


def primary_metric(paper_table: str | None) -> str:
    """The metric a paper table's rows are looked up by: ``AP_box`` for a table that reports
    it (Table V), else ``mIoU``."""
    found = {r["metric"] for r in rows() if r["table"] == paper_table}
    return DETECTION_METRICS[0] if DETECTION_METRICS[0] in found else METRIC


def paper_rows(table: Mapping[str, Any], method: str, student: str | None = None,
               metric: str | None = None) -> list[dict]:
    """Reference rows of ``table['paper_table']`` for ``method`` and ``metric`` (default: the
    paper table's :func:`primary_metric`), narrowed by the table's ``paper_dataset`` /
    ``paper_teacher`` and by ``student`` (a row's ``paper_student``). ``table``: a table in the
    one-teacher form, or one teacher group of it (``bcd.params.table_groups``).

    A student trained alone has no teacher: the paper prints it once per dataset, and the CSV
    files it under that dataset's first teacher (Table II, ADE20K: under PSPNet-101, not again
    under Mask2Former). So ``student`` rows of a named ``student`` found under no row of
    ``paper_teacher`` are looked up under any teacher of the dataset (without a named student
    that would match other pairs' students: Table V's RetinaNet has no student row)."""
    if not table.get("paper_table"):
        return []
    want = {"table": table["paper_table"], "method": method,
            "metric": metric or primary_metric(table["paper_table"]),
            "dataset": table.get("paper_dataset"), "teacher": table.get("paper_teacher"),
            "student": student}
    found = [r for r in rows() if all(v is None or r[k] == v for k, v in want.items())]
    if not found and method == "student" and want["teacher"] is not None and student:
        return paper_rows({**table, "paper_teacher": None}, method, student, metric)
    return found


def paper_reference_errors(table: Mapping[str, Any],
                           groups: Sequence[Mapping[str, Any]] | None = None
                           ) -> list[tuple[tuple, str]]:
    """Problems with a table's references into the paper (used by bcd.params validation):
    ``[(key path below tables.NAME, message)]``. ``groups``: the table's teacher groups, each
    in the one-teacher form (``bcd.params.table_groups``); None for a table in that form."""
    out: list[tuple[tuple, str]] = []
    paper_table = table.get("paper_table")
    if paper_table is not None:
        known = sorted({r["table"] for r in rows()})
        if paper_table not in known:
            return [(("paper_table",), f"no paper table {paper_table!r} in {REFERENCE_CSV} "
                                       f"(tables: {', '.join(known)})")]
    metric = primary_metric(paper_table)
    parts = [((), table)] if groups is None else [(("groups", g), group)
                                                  for g, group in enumerate(groups)]
    for prefix, group in parts:
        if paper_table is not None and len(paper_rows(group, "teacher")) > 1:
            out.append((prefix + (("paper_teacher",) if prefix else ("paper_table",)),
                        "several paper teacher rows match; narrow them with paper_dataset / "
                        "paper_teacher"))
        for i, row in enumerate(group["rows"]):
            method = row.get("paper_method")
            if method is None:
                continue
            where = prefix + ("rows", i, "paper_method")
            if paper_table is None:
                out.append((where, "needs the table's paper_table"))
                continue
            found = paper_rows(group, method, row.get("paper_student"))
            if not found:
                methods = sorted({r["method"] for r in rows() if r["table"] == paper_table})
                out.append((where, f"{method!r} matches no {metric} row of paper table "
                                   f"{paper_table} in {REFERENCE_CSV} (methods: "
                                   f"{', '.join(methods)})"))
            elif len(found) > 1:
                out.append((where, f"{method!r} matches {len(found)} rows of paper table "
                                   f"{paper_table}; narrow them with paper_dataset / "
                                   "paper_teacher / paper_student"))
    return out
