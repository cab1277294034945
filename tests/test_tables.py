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


def test_the_rebuild_command_names_the_profile_and_forces_the_corrupt_file(cfg, tmp_path):
    """The suggested command works for the profile in use: its overlays as --configfile, and
    --force (a corrupt file exists, so neither tool would rebuild it by itself)."""
    overlay = tmp_path / "o.yaml"
    overlay.write_text("seeds: [1]\n")
    cfg = P.load_params([DEFAULT, overlay])
    path = P.run_paths(cfg, "r18-bd", 1)["metrics"]
    path.write_text("{not json")
    with pytest.raises(T.MetricsError) as info:
        T.build_table(cfg, "table1")
    assert f"`snakemake --cores 1 --force --configfile {overlay} -- {path}`" in str(info.value)


def test_write_table_csv_and_tex(cfg):
    paths = T.write_table(cfg, "table1")
    assert paths == P.table_paths(cfg, "table1")
    df = pd.read_csv(paths["csv"])
    assert list(df.columns) == T.COLUMNS and len(df) == 6
    assert df["ours_miou_mean"].iloc[5] == pytest.approx(statistics.mean(OURS["r18-bcd"]))
    assert df["ours_miou_per_seed"].iloc[1] == "60;61;62.5"   # 6 significant digits, no noise
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


# ----------------------------------------------------------------------------------------------
# Paired statistics against the reference row
# ----------------------------------------------------------------------------------------------
T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student's t, 0.975 quantile (tables)


def test_t_quantile_matches_printed_tables():
    assert T.t_quantile(2) == pytest.approx(T_975[2], abs=1e-9)
    assert T.t_quantile(4) == pytest.approx(T_975[4], abs=1e-9)


def test_paired_difference_hand_computed():
    """diffs [1, 2, 3]: mean 2, sd 1, half width t_{0.975,2} * 1 / sqrt(3) = 2.4841."""
    got = T.paired_difference({0: 11.0, 1: 12.5, 2: 14.0}, {0: 10.0, 1: 10.5, 2: 11.0})
    assert got["seeds"] == [0, 1, 2] and got["per_seed"] == [1.0, 2.0, 3.0] and got["n"] == 3
    assert got["mean"] == pytest.approx(2.0) and got["sd"] == pytest.approx(1.0)
    assert got["ci_low"] == pytest.approx(2 - 2.4841, abs=1e-4)
    assert got["ci_high"] == pytest.approx(2 + 2.4841, abs=1e-4)
    assert got["verdict"] == "n.s."
    # pairing is by seed, not by position
    got = T.paired_difference({2: 14.0, 0: 11.0, 1: 12.5}, {0: 10.0, 1: 10.5, 2: 11.0})
    assert dict(zip(got["seeds"], got["per_seed"])) == {0: 1.0, 1: 2.0, 2: 3.0}


@pytest.mark.parametrize("diffs, verdict", [
    ([1.0, 1.2, 0.8], "gain"),     # mean 1, CI 1 +- 0.50: above 0
    ([-1.0, -1.2, -0.8], "loss"),  # below 0
    ([1.0, 2.0, 3.0], "n.s."),     # 2 +- 2.48 holds 0
    ([0.7], "n/a"),                # one seed: no interval
])
def test_verdicts(diffs, verdict):
    got = T.paired_difference({s: 50.0 + d for s, d in enumerate(diffs)},
                              {s: 50.0 for s in range(len(diffs))})
    assert got["verdict"] == verdict
    if len(diffs) == 1:
        assert math.isnan(got["ci_low"]) and math.isnan(got["ci_high"])
        assert got["mean"] == pytest.approx(0.7)
    assert T.verdict(0.1, 2.0, 3) == "gain" and T.verdict(-2.0, -0.1, 3) == "loss"
    assert T.verdict(0.0, 1.0, 3) == "n.s." and T.verdict(-1.0, 1.0, 1) == "n/a"


def test_a_seed_missing_from_the_reference_row_is_an_error_naming_it():
    with pytest.raises(T.MetricsError, match=r"seed\(s\) 2 missing from its reference row "
                                             r"'S' \(run r18\)"):
        T.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 1.0},
                            row="row '+BD' (run r18-bd)", against="its reference row 'S' (run r18)")
    with pytest.raises(T.MetricsError, match=r"seed\(s\) 3, 4 missing from row '\+BD'"):
        T.paired_difference({0: 1.0}, {0: 1.0, 3: 1.0, 4: 1.0}, row="row '+BD'")


def _expected_paired(run):
    diffs = [a - b for a, b in zip(OURS[run], OURS["r18"])]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = T_975[2] * sd / math.sqrt(3)
    return diffs, mean, mean - half, mean + half


def test_table_rows_carry_paired_statistics(cfg):
    df = T.build_table(cfg, "table1")
    verdicts = {}
    for run in ("r18-bd", "r18-cd", "r18-bd-cd", "r18-bcd"):
        row = df[df["run"] == run].iloc[0]
        diffs, mean, low, high = _expected_paired(run)
        assert row["paired_reference"] == "r18" and row["paired_n"] == 3
        assert [float(v) for v in row["paired_diff_per_seed"].split(";")] == pytest.approx(diffs)
        assert row["paired_diff_mean"] == pytest.approx(mean)
        assert row["paired_diff_mean"] == pytest.approx(row["ours_gain"])  # same seeds
        assert row["paired_diff_ci_low"] == pytest.approx(low)
        assert row["paired_diff_ci_high"] == pytest.approx(high)
        verdicts[run] = row["verdict"]
    # r18-bd: diffs [1, 1, 0.5] -> 0.83 [+0.12, +1.55]; r18-cd: [2, 1, -0.5] -> n.s.
    assert verdicts == {"r18-bd": "gain", "r18-cd": "n.s.", "r18-bd-cd": "gain",
                        "r18-bcd": "gain"}
    for run in ("pspnet-r101", "r18"):  # the teacher and the reference row itself: empty
        row = df[df["run"] == run].iloc[0]
        assert row["paired_reference"] == "" and row["verdict"] == ""
        assert math.isnan(row["paired_diff_mean"]) and math.isnan(row["paired_diff_ci_low"])
    # the metrics have no Boundary IoU: no paired Boundary IoU
    assert df["paired_boundary_iou_diff_mean"].isna().all()


def test_paired_boundary_iou(cfg):
    biou = {"r18": [30.0, 31.0, 32.0], "r18-bd": [29.0, 30.5, 31.0]}  # diffs [-1, -0.5, -1]
    for run, values in biou.items():
        for seed, v in zip(cfg["seeds"], values):
            path = P.run_paths(cfg, run, seed)["metrics"]
            m = json.loads(path.read_text())
            _write_json(path, {**m, "mBoundaryIoU": v})
    overlay = Path("o.yaml")
    overlay.write_text(yaml.safe_dump({"tables": {"table1": {"rows": [
        {"run": "r18", "label": "S"}, {"run": "r18-bd", "label": "+BD"}]}}}))
    cfg = P.load_params([DEFAULT, overlay])
    df = T.build_table(cfg, "table1")
    row = df.iloc[2]
    half = T_975[2] * statistics.stdev([-1, -0.5, -1]) / math.sqrt(3)
    assert row["paired_boundary_iou_diff_mean"] == pytest.approx(-2.5 / 3)
    assert row["paired_boundary_iou_ci_low"] == pytest.approx(-2.5 / 3 - half)
    assert row["paired_boundary_iou_ci_high"] == pytest.approx(-2.5 / 3 + half)
    assert row["paired_boundary_iou_verdict"] == "loss"
    tex = T.to_latex(cfg, "table1", df)
    assert "Ours B-IoU gain [95\\% CI]" in tex
    assert f"-0.83 [{-2.5 / 3 - half:+.2f}, {-2.5 / 3 + half:+.2f}] loss" in tex


def test_csv_numbers_carry_no_float32_noise(cfg):
    """mmseg's metrics are float32 rounded to 2 decimals: 12.15 arrives as 12.149999618530273;
    the CSV writes 6 significant digits."""
    import numpy as np

    noisy = float(np.float32(12.15))
    assert repr(noisy) != "12.15" and T.CSV_FLOAT % noisy == "12.15"
    assert T.CSV_FLOAT % (noisy - float(np.float32(11.5))) == "0.65"
    # per-seed differences: cut to 6 significant digits before subtracting (measured case:
    # 25.22 and 25.6 as float32 gave -0.380001)
    a, b = float(np.float32(25.22)), float(np.float32(25.6))
    assert T.CSV_FLOAT % (a - b) == "-0.380001"
    per = T._per_seed([{"seed": 0, "mIoU": a}], "mIoU")[0] - T._per_seed(
        [{"seed": 0, "mIoU": b}], "mIoU")[0]
    assert T.CSV_FLOAT % per == "-0.38"


def test_csv_and_latex_show_the_paired_columns(cfg):
    paths = T.write_table(cfg, "table1")
    df = pd.read_csv(paths["csv"])
    for col in ("paired_diff_mean", "paired_diff_ci_low", "paired_diff_ci_high",
                "paired_diff_per_seed", "paired_n", "verdict", "paired_reference"):
        assert col in df.columns, col
    assert df["paired_diff_per_seed"].iloc[2] == "1;1;0.5"
    assert df["verdict"].iloc[3] == "n.s." and pd.isna(df["verdict"].iloc[1])
    tex = paths["tex"].read_text()
    _, mean, low, high = _expected_paired("r18-bd")
    assert "Ours gain [95\\% CI]" in tex
    assert f"+0.83 [{low:+.2f}, {high:+.2f}] gain" in tex
    assert "+0.83 [+0.12, +1.55] gain" in tex   # the same, printed by hand
    assert "(reference)" in tex and "Student-t confidence interval over seeds" in tex


def test_one_seed_gives_no_interval(cfg, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("seeds: [1]\n")
    cfg = P.load_params([DEFAULT, overlay])
    df = T.build_table(cfg, "table1")
    row = df[df["run"] == "r18-bd"].iloc[0]
    assert row["paired_n"] == 1 and row["verdict"] == "n/a"
    assert row["paired_diff_mean"] == pytest.approx(OURS["r18-bd"][1] - OURS["r18"][1])
    assert math.isnan(row["paired_diff_ci_low"]) and math.isnan(row["paired_diff_ci_high"])
    tex = T.to_latex(cfg, "table1", df)
    assert "+1.00 n/a" in tex and "one seed gives no interval" in tex


def test_five_seeds_flow_into_the_plan_and_the_table(cfg, tmp_path):
    """`seeds` is the one source of the seed count: 5 seeds -> 5 runs per row, n = 5."""
    overlay = tmp_path / "o.yaml"
    overlay.write_text("seeds: [0, 1, 2, 3, 4]\n")
    cfg = P.load_params([DEFAULT, overlay])
    names = {s.name for s in P.stages(cfg)}
    assert {f"train-r18-bd-seed{s}" for s in range(5)} <= names
    table = next(s for s in P.stages(cfg) if s.name == "table-table1")
    assert str(P.run_paths(cfg, "r18-bd", 4)["metrics"]) in table.deps
    extra = {"r18": [61.0, 60.0], "r18-bd": [62.0, 61.5], "r18-cd": [61.0, 60.0],
             "r18-bd-cd": [61.0, 60.0], "r18-bcd": [61.0, 60.0]}
    for run, values in extra.items():
        for seed, miou in zip((3, 4), values):
            _write_json(P.run_paths(cfg, run, seed)["metrics"],
                        _metrics("student", run, seed, miou))
    df = T.build_table(cfg, "table1")
    row = df[df["run"] == "r18-bd"].iloc[0]
    diffs = [1.0, 1.0, 0.5, 1.0, 1.5]
    half = T_975[4] * statistics.stdev(diffs) / math.sqrt(5)
    assert row["n_seeds"] == 5 and row["paired_n"] == 5 and row["seeds"] == "0;1;2;3;4"
    assert row["paired_diff_ci_low"] == pytest.approx(statistics.mean(diffs) - half)
    assert "over 5 seeds" in T.to_latex(cfg, "table1", df)


# ----------------------------------------------------------------------------------------------
# Training cost
# ----------------------------------------------------------------------------------------------
def _with_cost(path, **cost):
    m = json.loads(Path(path).read_text())
    _write_json(path, {**m, "train_cost": {"seconds": None, "seconds_per_iter": None,
                                           "peak_rss_mb": None, "peak_cuda_mb": None, **cost}})


def test_cost_columns_from_metrics_and_empty_for_old_files(cfg):
    for seed, (s, per_iter, rss) in zip(cfg["seeds"], [(60, 0.5, 900), (120, 0.7, 1000),
                                                       (90, 0.6, 1100)]):
        _with_cost(P.run_paths(cfg, "r18-bd", seed)["metrics"], seconds=s,
                   seconds_per_iter=per_iter, peak_rss_mb=rss)
        _with_cost(P.run_paths(cfg, "r18-cd", seed)["metrics"], seconds=s,
                   seconds_per_iter=per_iter, peak_rss_mb=rss, peak_cuda_mb=300.0 + seed)
    # r18-bcd: one seed's metrics predate the records -> the row's cost stays empty
    _with_cost(P.run_paths(cfg, "r18-bcd", 0)["metrics"], seconds=10, seconds_per_iter=0.1,
               peak_rss_mb=5)
    df = T.build_table(cfg, "table1").set_index("run")
    assert df.loc["r18-bd", "train_s_per_iter"] == pytest.approx(0.6)
    assert df.loc["r18-bd", "train_minutes"] == pytest.approx(1.5)
    assert df.loc["r18-bd", "peak_mem_mb"] == pytest.approx(1000)
    assert df.loc["r18-bd", "peak_mem_kind"] == "rss"
    assert df.loc["r18-cd", "peak_mem_mb"] == pytest.approx(301.0)
    assert df.loc["r18-cd", "peak_mem_kind"] == "cuda"
    for run in ("pspnet-r101", "r18", "r18-bcd"):  # no train_cost (or not in every seed)
        assert df.loc[run, ["train_s_per_iter", "train_minutes", "peak_mem_mb"]].isna().all()
        assert df.loc[run, "peak_mem_kind"] == ""
    paths = T.write_table(cfg, "table1")
    csv_df = pd.read_csv(paths["csv"]).set_index("run")
    assert csv_df.loc["r18-bd", "train_minutes"] == pytest.approx(1.5)
    assert pd.isna(csv_df.loc["r18", "train_minutes"])  # an empty cell
    tex = paths["tex"].read_text()
    assert "s/iter" in tex and "Train (min)" in tex and "Peak mem. (MB)" in tex  # rss + cuda
    assert "0.600 & 1.50 & 1000" in tex and "includes the teacher" in tex


def test_old_metrics_files_give_no_cost_columns_in_latex(cfg):
    df = T.build_table(cfg, "table1")
    assert df[["train_s_per_iter", "train_minutes", "peak_mem_mb"]].isna().all().all()
    tex = T.to_latex(cfg, "table1", df)
    assert "s/iter" not in tex and "Train (min)" not in tex


def test_evaluate_carries_the_training_cost_of_the_weights_meta():
    from bcd.evaluate import train_cost

    meta = {"seconds": 12.5, "seconds_per_iter": 0.25, "peak_rss_mb": 800.0,
            "peak_cuda_mb": None, "processes": 1, "resumed": False, "kind": "student"}
    assert train_cost(meta) == {"seconds": 12.5, "seconds_per_iter": 0.25, "peak_rss_mb": 800.0,
                                "peak_cuda_mb": None, "processes": 1, "resumed": False}
    old = train_cost({"seconds": 3.0, "kind": "student"})  # weights saved before the records
    assert old["seconds"] == 3.0 and old["seconds_per_iter"] is None
    assert train_cost({}) is None  # foreign weights


def test_training_cost_reads_the_iteration_timer(monkeypatch):
    pytest.importorskip("mmengine")
    import resource

    from mmengine.logging import MessageHub

    from bcd import train

    hub = MessageHub(name="bcd-test-cost")
    for value in (0.2, 0.4, 0.6):
        hub.update_scalar("train/time", value)
    runner = argparse.Namespace(message_hub=hub)
    monkeypatch.setattr(train.time, "time", lambda: 110.0)
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    cost = train.training_cost(runner, 100.0)
    assert cost["seconds"] == 10.0 and cost["seconds_per_iter"] == pytest.approx(0.4)
    assert cost["peak_cuda_mb"] is None
    assert cost["peak_rss_mb"] == pytest.approx(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.1)
    assert train.training_cost(argparse.Namespace(message_hub=MessageHub(name="empty")),
                               100.0)["seconds_per_iter"] is None


def test_each_row_is_paired_with_the_plain_run_of_its_own_student_model(cfg, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(yaml.safe_dump({"tables": {"table1": {"rows": [
        {"run": "r18", "label": "S: R18"}, {"run": "r18-bd", "label": "+BD"},
        {"run": "dlv3p-r18", "label": "S: DLV3+"}, {"run": "r18-cd", "label": "+CD"}]}}}))
    cfg = P.load_params([DEFAULT, overlay])
    for seed, miou in zip(cfg["seeds"], [50.0, 51.0, 52.0]):
        _write_json(P.run_paths(cfg, "dlv3p-r18", seed)["metrics"],
                    _metrics("student", "dlv3p-r18", seed, miou))
    df = T.build_table(cfg, "table1").set_index("run")
    assert df.loc["r18-bd", "paired_reference"] == "r18"
    assert df.loc["r18-cd", "paired_reference"] == "r18"
    # the other architecture's plain run is its own reference, not paired with r18
    assert df.loc["dlv3p-r18", "paired_reference"] == ""
    assert math.isnan(df.loc["dlv3p-r18", "paired_diff_mean"])
    assert T.to_latex(cfg, "table1", df.reset_index()).count("(reference)") == 1
