"""bcd.tables on hand-written metrics files: statistics, paper columns, errors, LaTeX."""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcd import params as P
from bcd import tables as T

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params" / "default.yaml"

# Our (fake) mIoU per run and seed, and the paper's Table I (bcd_reported_results.csv).
OURS = {"r18": [60.0, 61.0, 62.5], "r18-bd": [61.0, 62.0, 63.0], "r18-cd": [62.0, 62.0, 62.0],
        "r18-bd-cd": [63.0, 64.0, 66.0], "r18-bcd": [64.0, 65.5, 66.0]}
TEACHER = 70.25
PAPER = {"teacher": 77.82, "student": 70.78, "+BD": 71.69, "+CD": 72.55, "+BD+CD": 73.98,
         "+BD+CD+WD": 74.65}


def _metrics(kind, name, seed, miou, params=1_234_567, flops=2.5e9):
    return {"kind": kind, "name": name, "seed": seed, "model": "x", "split": "val", "mIoU": miou,
            "mAcc": miou, "aAcc": 90.0, "per_class_iou": {"a": miou}, "params": params,
            "flops": flops, "input_shape": [3, 64, 64], "iters": 10}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """The default params, run in tmp_path, with every metrics file written by hand."""
    monkeypatch.chdir(tmp_path)
    cfg = P.load_params([DEFAULT])
    _write_json(P.teacher_paths(cfg, "pspnet-r101")["metrics"],
                _metrics("teacher", "pspnet-r101", None, TEACHER, 9_000_000, 4.0e10))
    for run, values in OURS.items():
        for seed, miou in zip(cfg["seeds"], values):
            _write_json(P.run_paths(cfg, run, seed)["metrics"], _metrics("student", run, seed, miou))
    return cfg


def test_rows_and_our_numbers(cfg):
    df = T.build_table(cfg, "table1")
    assert list(df.columns) == T.COLUMNS
    assert list(df["method"]) == ["T: PSPNet-R101", "S: PSPNet-R18", "+BD", "+CD", "+BD+CD",
                                  "+BD+CD+WD"]
    assert list(df["role"]) == ["teacher"] + ["student"] * 5
    for run, values in OURS.items():
        row = df[df["run"] == run].iloc[0]
        assert row["ours_miou_mean"] == pytest.approx(statistics.mean(values))
        assert row["ours_miou_std"] == pytest.approx(statistics.stdev(values))  # ddof=1
        assert row["n_seeds"] == 3 and row["seeds"] == "0;1;2"
        assert [float(v) for v in row["ours_miou_per_seed"].split(";")] == values
        base = statistics.mean(OURS["r18"])
        if run == "r18":
            assert math.isnan(row["ours_gain"])
        else:
            assert row["ours_gain"] == pytest.approx(statistics.mean(values) - base)
    assert df["ours_miou_std"].iloc[2] == pytest.approx(1.0)
    teacher = df.iloc[0]
    assert teacher["ours_miou_mean"] == TEACHER and teacher["n_seeds"] == 1
    assert math.isnan(teacher["ours_miou_std"]) and math.isnan(teacher["ours_gain"])
    assert teacher["params_m"] == pytest.approx(9.0) and teacher["flops_g"] == pytest.approx(40.0)
    assert df["params_m"].iloc[1] == pytest.approx(1.234567)
    assert set(df["input_shape"]) == {"3x64x64"}


def test_paper_columns_come_from_the_reference_csv(cfg):
    df = T.build_table(cfg, "table1")
    assert list(df["paper_miou"]) == [PAPER[m] for m in ["teacher", "student", "+BD", "+CD",
                                                         "+BD+CD", "+BD+CD+WD"]]
    gains = list(df["paper_gain"])
    assert math.isnan(gains[0]) and math.isnan(gains[1])
    assert gains[2:] == [0.91, 1.77, 3.20, 3.87]  # the gains printed in Table I
    assert df["paper_params_m"].iloc[0] == 70.43 and df["paper_flops_g"].iloc[0] == 411.6
    assert df["paper_params_m"].iloc[1] == 15.24 and df["paper_flops_g"].iloc[5] == 106.2


def test_rows_without_a_paper_value_are_empty(cfg, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"tables": {"table1": {"rows": [
        {"run": "r18", "label": "baseline"}, {"run": "r18-bd", "label": "bd, no paper row"}]}}}))
    cfg = P.load_params([DEFAULT, overlay])
    df = T.build_table(cfg, "table1")
    assert df["paper_miou"].iloc[0] == PAPER["teacher"]
    assert df["paper_miou"].iloc[1:].isna().all() and df["paper_gain"].isna().all()
    gain = statistics.mean(OURS["r18-bd"]) - statistics.mean(OURS["r18"])
    assert df["ours_gain"].iloc[2] == pytest.approx(gain)


def test_a_single_seed_shows_no_std(cfg, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("seeds: [1]\n")
    cfg = P.load_params([DEFAULT, overlay])
    df = T.build_table(cfg, "table1")
    assert df["n_seeds"].tolist() == [1] * 6 and df["ours_miou_std"].isna().all()
    assert df["ours_miou_mean"].iloc[1] == OURS["r18"][1]
    assert "$\\pm$" not in T.to_latex(cfg, "table1", df).split("\\midrule")[1]


def test_missing_metrics_file_names_it_and_its_stage(cfg):
    missing = P.run_paths(cfg, "r18-cd", 1)["metrics"]
    missing.unlink()
    with pytest.raises(T.MetricsError) as info:
        T.build_table(cfg, "table1")
    message = str(info.value)
    assert str(missing) in message and "missing" in message
    assert "evaluate-r18-cd-seed1" in message


def test_missing_teacher_metrics_names_the_teacher_stage(cfg):
    P.teacher_paths(cfg, "pspnet-r101")["metrics"].unlink()
    with pytest.raises(T.MetricsError, match="evaluate-teacher-pspnet-r101"):
        T.build_table(cfg, "table1")


@pytest.mark.parametrize("content,words", [
    ("{not json", "unreadable"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps(_metrics("student", "r18-bd", 2, float("nan"))), "mIoU"),
    (json.dumps(_metrics("student", "r18-bd", 2, "71")), "mIoU"),
    (json.dumps(_metrics("student", "r18-bd", 0, 70.0)), "seed is 0, expected 2"),
    (json.dumps(_metrics("student", "r18", 2, 70.0)), "name is 'r18', expected 'r18-bd'"),
    (json.dumps({k: v for k, v in _metrics("student", "r18-bd", 2, 70.0).items()
                 if k != "flops"}), "flops"),
])
def test_malformed_metrics_file_names_it(cfg, content, words):
    path = P.run_paths(cfg, "r18-bd", 2)["metrics"]
    path.write_text(content)
    with pytest.raises(T.MetricsError) as info:
        T.build_table(cfg, "table1")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message
    assert "evaluate-r18-bd-seed2" in message


def test_write_table_csv_and_tex(cfg):
    paths = T.write_table(cfg, "table1")
    assert paths == P.table_paths(cfg, "table1")
    df = pd.read_csv(paths["csv"])
    assert list(df.columns) == T.COLUMNS and len(df) == 6
    assert df["ours_miou_mean"].iloc[5] == pytest.approx(statistics.mean(OURS["r18-bcd"]))
    assert df["ours_miou_per_seed"].iloc[1] == "60.0;61.0;62.5"
    tex = paths["tex"].read_text()
    for word in ("\\toprule", "\\midrule", "\\bottomrule", "\\caption{", "\\label{tab:table1}",
                 "Ours mIoU", "Paper mIoU", "Params (M)", "FLOPs (G)"):
        assert word in tex, word
    assert "61.17 $\\pm$ 1.26" in tex            # r18: mean 61.17, sample std 1.26
    assert "+4.00" in tex and "+3.87" in tex      # our and the paper's gain of +BD+CD+WD
    assert "3$\\times$64$\\times$64" in tex      # the input size of our FLOPs
    assert "PSPNet-R101 $\\rightarrow$ PSPNet-R18" in tex
    assert not list(paths["csv"].parent.glob(".*tmp*"))


def test_tex_escapes_special_characters(cfg, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"tables": {"table1": {
        "caption": "50% of A & B_1 #2", "rows": [{"run": "r18", "label": "S_1 & {x}"}]}}}))
    cfg = P.load_params([DEFAULT, overlay])
    tex = T.to_latex(cfg, "table1", T.build_table(cfg, "table1"))
    assert "S\\_1 \\& \\{x\\}" in tex and "50\\% of A \\& B\\_1 \\#2" in tex


def test_main_table_command(cfg, capsys):
    T.main_table(argparse.Namespace(params=[str(DEFAULT)], table="table1"))
    assert Path("results/tables/table1.csv").is_file()
    assert Path("results/tables/table1.tex").is_file()
    assert "results/tables/table1.csv" in capsys.readouterr().out


def test_a_table_refuses_runs_distilled_from_another_teacher_checkpoint(cfg):
    """Provenance: every distilled run names the sha256 of the teacher weights it used."""
    t_path = P.teacher_paths(cfg, "pspnet-r101")["metrics"]
    teacher = json.loads(Path(t_path).read_text())
    teacher["weights_sha256"] = "a" * 64
    _write_json(t_path, teacher)
    for run in ("r18-bd", "r18-cd", "r18-bd-cd", "r18-bcd"):
        for seed in cfg["seeds"]:
            path = P.run_paths(cfg, run, seed)["metrics"]
            m = json.loads(Path(path).read_text())
            m["provenance"] = {"teacher_sha256": "a" * 64}
            _write_json(path, m)
    assert len(T.build_table(cfg, "table1")) == 6  # all from the teacher the table evaluated
    stale = P.run_paths(cfg, "r18-cd", 1)["metrics"]
    m = json.loads(Path(stale).read_text())
    m["provenance"] = {"teacher_sha256": "b" * 64}
    _write_json(stale, m)
    with pytest.raises(T.MetricsError, match=r"different teacher checkpoints.*r18-cd seed 1.*bbbbbbbbbbbb"):
        T.build_table(cfg, "table1")
