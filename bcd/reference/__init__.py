"""The paper's reported numbers (``bcd_reported_results.csv`` beside this file: every number of
Tables I-V, one value per row) and the lookups the tables and the params validation make into
them. Plain Python: imports nothing else of bcd."""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

#: the file, and its path relative to the repository root (a dependency of the table stages)
REFERENCE = Path(__file__).parent / "bcd_reported_results.csv"
REFERENCE_CSV = "bcd/reference/bcd_reported_results.csv"
#: the metric the tables compare
METRIC = "mIoU"


@lru_cache(maxsize=None)
def rows() -> tuple[dict, ...]:
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
    return [r for r in rows() if all(v is None or r[k] == v for k, v in want.items())]


def paper_reference_errors(table: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """Problems with a table's references into the paper (used by bcd.params validation):
    ``[(key path below tables.NAME, message)]``."""
    out: list[tuple[tuple, str]] = []
    paper_table = table.get("paper_table")
    if paper_table is not None:
        known = sorted({r["table"] for r in rows()})
        if paper_table not in known:
            return [(("paper_table",), f"no paper table {paper_table!r} in {REFERENCE_CSV} "
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
            methods = sorted({r["method"] for r in rows() if r["table"] == paper_table})
            out.append((where, f"{method!r} matches no {METRIC} row of paper table {paper_table} "
                               f"in {REFERENCE_CSV} (methods: {', '.join(methods)})"))
        elif len(found) > 1:
            out.append((where, f"{method!r} matches {len(found)} rows of paper table "
                               f"{paper_table}; narrow them with paper_dataset / paper_teacher "
                               "/ paper_student"))
    return out
