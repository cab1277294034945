"""Tables with several teacher groups (params ``groups``) and detector tables (Table V's
columns), on hand-written metrics files: values, paired statistics per group, the paper's
values, the mask note, the LaTeX, and the params checks of the groups.

The detector table's params use the embedded profile's segmentation models as stand-ins for
the detectors: a table reads only the metrics files, whose ``"task": "detection"`` and
``model_spec.arch`` (det_contract.md, "metrics.json of a detector") decide its columns."""
from __future__ import annotations

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
T_975_2 = 4.302652729911275  # Student's t, 0.975 quantile, 2 degrees of freedom

# ----------------------------------------------------------------------------------------------
# A Table V in three groups: box AP per seed (and mask AP for Cascade Mask R-CNN)
# ----------------------------------------------------------------------------------------------
DET_TEACHERS = {"t-gfl": ("gfl", 40.0, None), "t-cmr": ("cascade_mask_rcnn", 45.0, 39.0),
                "t-retina": ("retinanet", 38.0, None)}
DET_RUNS = {  # run: (teacher or None, arch, box per seed, mask per seed or None)
    "gfl-s": (None, "gfl", [30.0, 31.0, 32.5], None),
    "gfl-bcd": ("t-gfl", "gfl", [31.0, 32.0, 33.0], None),          # diffs 1, 1, 0.5
    "cmr-s": (None, "cascade_mask_rcnn", [40.0, 41.0, 42.0], [35.0, 35.5, 36.0]),
    "cmr-bcd": ("t-cmr", "cascade_mask_rcnn", [42.0, 42.0, 42.0], [36.0, 36.0, 37.0]),
    "retina-s": (None, "retinanet", [35.0, 35.0, 35.0], None),
    "retina-bcd": ("t-retina", "retinanet", [34.0, 34.5, 35.0], None),  # diffs -1, -0.5, 0
}
TABLE5 = {
    "caption": "BCD for detection (paper Table V: MS-COCO 2017 val)",
    "paper_table": "V",
    "groups": [
        {"teacher": "t-gfl", "teacher_label": "T: GFL-R50", "paper_teacher": "GFL-50", "rows": [
            {"run": "gfl-s", "label": "S: GFL-R18", "paper_method": "student"},
            {"run": "gfl-bcd", "label": "GFL-R18 +BCD", "paper_method": "BCD"}]},
        {"teacher": "t-cmr", "paper_teacher": "Cascade Mask R-CNN-101", "rows": [
            {"run": "cmr-s", "label": "S: Cascade-R50", "paper_method": "student"},
            {"run": "cmr-bcd", "label": "Cascade-R50 +BCD", "paper_method": "BCD"}]},
        {"teacher": "t-retina", "teacher_label": "T: RetinaNet-R101",
         "paper_teacher": "RetinaNet-101", "rows": [
             {"run": "retina-s", "label": "S: RetinaNet-R50"},  # the paper prints no student row
             {"run": "retina-bcd", "label": "RetinaNet-R50 +BCD", "paper_method": "BCD"}]},
    ],
}
MASK_NOTE = ("AP^m only for Cascade Mask R-CNN: GFL and RetinaNet predict no masks; the paper "
             "prints an AP^m column for them")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _det_metrics(kind, name, seed, arch, box, mask=None):
    out = {"kind": kind, "name": name, "seed": seed, "task": "detection", "model": name,
           "model_spec": {"arch": arch, "depth": 50, "base_channels": 16}, "split": "val",
           "params": 2_000_000, "flops": 3.0e9, "input_shape": [3, 64, 96], "iters": 10}
    out.update({f"bbox_mAP{s}": box for s in ("", "_50", "_75", "_s", "_m", "_l")})
    if mask is not None:
        out.update({f"segm_mAP{s}": mask for s in ("", "_50", "_75", "_s", "_m", "_l")})
    return out


def _overlay(tmp_path: Path, data: dict, name: str = "o.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _det_params(tmp_path, table=None) -> dict:
    models = {m: {"arch": "pspnet", "depth": 18, "base_channels": 16}
              for m in ("fake-gfl", "fake-cmr", "fake-retina")}   # not the default's detectors
    teachers = {t: {"model": "pspnet-r101", "seed": 0} for t in DET_TEACHERS}
    student = {"gfl": "fake-gfl", "cascade_mask_rcnn": "fake-cmr", "retinanet": "fake-retina"}
    runs = {}
    for run, (teacher, arch, _, _) in DET_RUNS.items():
        runs[run] = {"student": student[arch]}
        if teacher:
            runs[run].update(teacher=teacher, distill=["bd", "cd"])
    # every seed (the default's table5, which this one overlays, reads two)
    return {"models": models, "teachers": teachers, "runs": runs,
            "tables": {"table5": {"num_seeds": 3, **(table or TABLE5)}}}


@pytest.fixture
def det(tmp_path, monkeypatch):
    """The default params plus a three-group detector table, metrics written by hand."""
    monkeypatch.chdir(tmp_path)
    cfg = P.load_params([DEFAULT, _overlay(tmp_path, _det_params(tmp_path))])
    for t, (arch, box, mask) in DET_TEACHERS.items():
        _write_json(P.teacher_paths(cfg, t)["metrics"],
                    _det_metrics("teacher", t, None, arch, box, mask))
    for run, (_, arch, boxes, masks) in DET_RUNS.items():
        for i, seed in enumerate(cfg["seeds"]):
            _write_json(P.run_paths(cfg, run, seed)["metrics"], _det_metrics(
                "student", run, seed, arch, boxes[i], masks[i] if masks else None))
    return cfg


def _half(diffs):
    return T_975_2 * statistics.stdev(diffs) / math.sqrt(len(diffs))


def test_detector_table_columns_and_our_numbers(det):
    raw = T.build_table(det, "table5")
    assert list(raw.columns) == T.table_columns("detection", grouped=True)
    df = raw.set_index("run")
    assert "ours_miou_mean" not in df.columns and "paper_miou" not in df.columns
    for col in ("paper_ap_box", "paper_ap_mask", "ours_ap_box_mean", "ours_ap_box_std",
                "ours_ap_mask_mean", "ours_ap_mask_std"):
        assert col in df.columns, col
    assert list(df.index) == ["t-gfl", "gfl-s", "gfl-bcd", "t-cmr", "cmr-s", "cmr-bcd",
                              "t-retina", "retina-s", "retina-bcd"]
    assert list(df["group"]) == ["t-gfl"] * 3 + ["t-cmr"] * 3 + ["t-retina"] * 3
    assert list(df["method"])[:4] == ["T: GFL-R50", "S: GFL-R18", "GFL-R18 +BCD", "T: t-cmr"]
    for run, (_, _, boxes, masks) in DET_RUNS.items():
        assert df.loc[run, "ours_ap_box_mean"] == pytest.approx(statistics.mean(boxes))
        assert df.loc[run, "ours_ap_box_std"] == pytest.approx(statistics.stdev(boxes))
        assert [float(v) for v in df.loc[run, "ours_ap_box_per_seed"].split(";")] == boxes
        if masks:
            assert df.loc[run, "ours_ap_mask_mean"] == pytest.approx(statistics.mean(masks))
            assert df.loc[run, "ours_ap_mask_std"] == pytest.approx(statistics.stdev(masks))
        else:  # no masks: empty mask columns
            assert math.isnan(df.loc[run, "ours_ap_mask_mean"])
            assert math.isnan(df.loc[run, "ours_ap_mask_std"])
            assert df.loc[run, "ours_ap_mask_per_seed"] == ""
    assert df.loc["gfl-s", "ours_ap_box_mean"] == pytest.approx(31.166667, abs=1e-6)
    assert df.loc["cmr-bcd", "ours_ap_mask_std"] == pytest.approx(math.sqrt(1 / 3))
    assert df.loc["t-cmr", "ours_ap_box_mean"] == 45.0 and df.loc["t-cmr", "n_seeds"] == 1
    assert df.loc["t-cmr", "ours_ap_mask_mean"] == 39.0
    assert math.isnan(df.loc["t-cmr", "ours_ap_box_std"])
    assert df.loc["gfl-bcd", "params_m"] == pytest.approx(2.0)
    assert df.loc["gfl-bcd", "flops_g"] == pytest.approx(3.0)
    assert set(df["input_shape"]) == {"3x64x96"}


def test_detector_table_paired_statistics_within_each_group(det):
    df = T.build_table(det, "table5").set_index("run")
    for run, ref in (("gfl-bcd", "gfl-s"), ("cmr-bcd", "cmr-s"), ("retina-bcd", "retina-s")):
        assert df.loc[run, "paired_reference"] == ref and df.loc[run, "paired_n"] == 3
    # GFL: box diffs 1, 1, 0.5 -> 0.83 [+0.12, +1.55] gain
    row = df.loc["gfl-bcd"]
    assert row["paired_diff_per_seed"] == "1;1;0.5"
    assert row["paired_diff_mean"] == pytest.approx(2.5 / 3)
    assert row["paired_diff_ci_low"] == pytest.approx(2.5 / 3 - _half([1, 1, 0.5]))
    assert row["verdict"] == "gain" and row["ours_gain"] == pytest.approx(2.5 / 3)
    # Cascade: box diffs 2, 1, 0 -> 1 +- 2.48 n.s.; mask diffs 1, 0.5, 1 -> 0.83 [+0.12, +1.55]
    row = df.loc["cmr-bcd"]
    assert row["paired_diff_mean"] == pytest.approx(1.0) and row["verdict"] == "n.s."
    assert row["paired_diff_ci_high"] == pytest.approx(1.0 + _half([2, 1, 0]))
    assert row["paired_ap_mask_diff_mean"] == pytest.approx(2.5 / 3)
    assert row["paired_ap_mask_ci_low"] == pytest.approx(2.5 / 3 - _half([1, 0.5, 1]))
    assert row["paired_ap_mask_ci_high"] == pytest.approx(2.5 / 3 + _half([1, 0.5, 1]))
    assert row["paired_ap_mask_verdict"] == "gain"
    # RetinaNet: diffs -1, -0.5, 0 -> -0.5 +- 1.24 n.s.; no masks: no paired mask AP
    row = df.loc["retina-bcd"]
    assert row["paired_diff_mean"] == pytest.approx(-0.5) and row["verdict"] == "n.s."
    assert math.isnan(row["paired_ap_mask_diff_mean"]) and row["paired_ap_mask_verdict"] == ""
    for run in ("t-gfl", "gfl-s", "t-cmr", "cmr-s", "t-retina", "retina-s"):
        assert df.loc[run, "paired_reference"] == "" and math.isnan(df.loc[run, "ours_gain"])


def test_detector_table_paper_values_from_table_v(det):
    df = T.build_table(det, "table5").set_index("run")
    box = {"t-gfl": 40.2, "gfl-s": 35.8, "gfl-bcd": 38.8, "t-cmr": 42.9, "cmr-s": 41.9,
           "cmr-bcd": 42.5, "t-retina": 38.9, "retina-bcd": 38.5}
    for run, value in box.items():
        assert df.loc[run, "paper_ap_box"] == value, run
    assert math.isnan(df.loc["retina-s", "paper_ap_box"])  # no paper_method
    # AP mask: the paper's value only where the model has masks (Cascade Mask R-CNN)
    assert df.loc["t-cmr", "paper_ap_mask"] == 37.3 and df.loc["cmr-s", "paper_ap_mask"] == 36.5
    assert df.loc["cmr-bcd", "paper_ap_mask"] == 37.0
    for run in ("t-gfl", "gfl-s", "gfl-bcd", "t-retina", "retina-bcd"):
        assert math.isnan(df.loc[run, "paper_ap_mask"]), run
    assert df.loc["gfl-bcd", "paper_gain"] == 3.0 and df.loc["cmr-bcd", "paper_gain"] == 0.6
    assert math.isnan(df.loc["retina-bcd", "paper_gain"])  # the paper has no RetinaNet student
    assert df["paper_params_m"].isna().all() and df["paper_flops_g"].isna().all()


def test_detector_table_csv_tex_and_mask_note(det):
    paths = T.write_table(det, "table5")
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == T.table_columns("detection", grouped=True)
    assert csv["ours_ap_box_per_seed"].iloc[1] == "30;31;32.5"
    assert pd.isna(csv["ours_ap_mask_mean"].iloc[1]) and csv["ours_ap_mask_mean"].iloc[5] == \
        pytest.approx(36.333333)
    assert T.mask_note(T.build_table(det, "table5")) == MASK_NOTE
    tex = paths["tex"].read_text()
    for word in ("Paper AP$^b$", "Paper AP$^m$", "Ours AP$^b$", "Ours AP$^m$",
                 "Ours gain [95\\% CI]", "Ours AP$^m$ gain [95\\% CI]", "\\label{tab:table5}"):
        assert word in tex, word
    assert ("AP$^m$ only for Cascade Mask R-CNN: GFL and RetinaNet predict no masks; the paper "
            "prints an AP$^m$ column for them") in " ".join(tex.split())
    assert "mIoU" not in tex and "B-IoU" not in tex
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    assert body.count("\\midrule") == 2  # a rule between the three groups
    lines = [line for line in body.splitlines() if line.strip() and "midrule" not in line]
    assert len(lines) == 9
    # GFL-R18 +BCD: paper 38.8, mask "--", ours 32.00 +- 1.00, paired +0.83 [+0.12, +1.55] gain
    assert lines[2].startswith("GFL-R18 +BCD & 38.80 & -- & +3.00 & 32.00 $\\pm$ 1.00 & -- & "
                               "+0.83 [+0.12, +1.55] gain & -- &")
    assert lines[5].startswith("Cascade-R50 +BCD & 42.50 & 37.00 & +0.60 & 42.00 $\\pm$ 0.00 & "
                               "36.33 $\\pm$ 0.58 & +1.00 [-1.48, +3.48] n.s. & "
                               "+0.83 [+0.12, +1.55] gain &")
    assert lines[0].startswith("T: GFL-R50 & 40.20 & -- & -- & 40.00 & -- & -- & -- & 1 &")
    assert lines[1].count("(reference)") == 1 and lines[4].count("(reference)") == 2
    assert "in its teacher's group" in tex


def test_a_table_of_detectors_with_masks_only_has_no_note(det, tmp_path):
    table = {**TABLE5, "groups": TABLE5["groups"][1:2]}
    cfg = P.load_params([DEFAULT, _overlay(tmp_path, _det_params(tmp_path, table), "c.yaml")])
    df = T.build_table(cfg, "table5")
    assert T.mask_note(df) == "" and df["ours_ap_mask_mean"].notna().all()
    assert "predict no masks" not in T.to_latex(cfg, "table5", df)


def test_a_table_mixing_tasks_names_the_files(det):
    path = P.run_paths(det, "cmr-s", 1)["metrics"]
    seg = {**json.loads(path.read_text()), "mIoU": 50.0}
    del seg["task"]
    _write_json(path, seg)
    with pytest.raises(T.MetricsError) as info:
        T.build_table(det, "table5")
    message = str(info.value)
    assert "table 'table5' mixes tasks" in message and str(path) in message
    assert "is segmentation" in message and "is detection" in message


def test_a_seed_without_the_mask_ap_of_its_row_is_an_error_naming_it(det):
    path = P.run_paths(det, "cmr-bcd", 2)["metrics"]
    m = json.loads(path.read_text())
    _write_json(path, {k: v for k, v in m.items() if k != "segm_mAP"})
    with pytest.raises(T.MetricsError, match=rf"^{path}: no finite segm_mAP"):
        T.build_table(det, "table5")


def test_a_detector_metrics_file_without_box_ap_or_with_an_unknown_task(det):
    path = P.run_paths(det, "gfl-s", 0)["metrics"]
    m = json.loads(path.read_text())
    _write_json(path, {k: v for k, v in m.items() if k != "bbox_mAP"})
    with pytest.raises(T.MetricsError, match=r"bbox_mAP is None, expected a finite number"):
        T.build_table(det, "table5")
    _write_json(path, {**m, "task": "panoptic"})
    with pytest.raises(T.MetricsError, match=r"task is 'panoptic', expected one of"):
        T.build_table(det, "table5")


def test_each_group_checks_its_own_teacher_checkpoint(det):
    for t in DET_TEACHERS:
        path = P.teacher_paths(det, t)["metrics"]
        _write_json(path, {**json.loads(path.read_text()), "weights_sha256": t[2] * 64})
    for run, (teacher, *_) in DET_RUNS.items():
        for seed in det["seeds"]:
            path = P.run_paths(det, run, seed)["metrics"]
            made = {"teacher_sha256": teacher[2] * 64} if teacher else {}
            _write_json(path, {**json.loads(path.read_text()), "provenance": made})
    assert len(T.build_table(det, "table5")) == 9  # each group from its own teacher
    path = P.run_paths(det, "retina-bcd", 1)["metrics"]
    _write_json(path, {**json.loads(path.read_text()), "provenance": {"teacher_sha256": "g" * 64}})
    with pytest.raises(T.MetricsError, match=r"retina-bcd seed 1 used teacher gggg"):
        T.build_table(det, "table5")


def test_the_table_stage_reads_every_group(det):
    files = [str(p) for p in P.table_metrics(det, "table5")]
    assert files[0] == str(P.teacher_paths(det, "t-gfl")["metrics"])
    assert files[7] == str(P.teacher_paths(det, "t-cmr")["metrics"])
    assert files[14] == str(P.teacher_paths(det, "t-retina")["metrics"])
    assert len(files) == 3 + 6 * 3
    assert {"t-gfl", "t-cmr", "t-retina"} <= set(P.teachers_used(det))
    assert set(DET_RUNS) <= set(P.runs_used(det))
    assert P.table_dataset(det, "table5") is None
    stage = next(s for s in P.stages(det) if s.name == "table-table5")
    assert set(files) <= set(stage.deps)


# ----------------------------------------------------------------------------------------------
# A segmentation table in two groups
# ----------------------------------------------------------------------------------------------
SEG = {"pspnet-r101": 70.0, "deeplabv3plus-r101": 72.0,
       "r18": [60.0, 61.0, 62.5], "r18-bd": [61.0, 62.0, 63.0],        # diffs 1, 1, 0.5
       "dlv3p-r18": [50.0, 51.0, 52.0], "dlv3p-r18-bcd": [52.0, 52.5, 53.0]}  # 2, 1.5, 1
SEG_TABLE = {"caption": "Two teachers", "groups": [
    {"teacher": "pspnet-r101", "teacher_label": "T: PSPNet-R101", "rows": [
        {"run": "r18", "label": "S: PSPNet-R18"}, {"run": "r18-bd", "label": "+BD"}]},
    {"teacher": "deeplabv3plus-r101", "rows": [
        {"run": "dlv3p-r18", "label": "S: DLV3+-R18"},
        {"run": "dlv3p-r18-bcd", "label": "DLV3+ +BCD"}]}]}


@pytest.fixture
def seg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = P.load_params([DEFAULT, _overlay(tmp_path, {"tables": {"two": SEG_TABLE}})])
    for name, values in SEG.items():
        if isinstance(values, float):
            _write_json(P.teacher_paths(cfg, name)["metrics"], {
                "kind": "teacher", "name": name, "seed": None, "mIoU": values,
                "params": 9e6, "flops": 4e10, "input_shape": [3, 64, 64]})
            continue
        for seed, v in zip(cfg["seeds"], values):
            _write_json(P.run_paths(cfg, name, seed)["metrics"], {
                "kind": "student", "name": name, "seed": seed, "mIoU": v, "params": 1e6,
                "flops": 2e9, "input_shape": [3, 64, 64]})
    return cfg


def test_segmentation_table_in_two_groups(seg):
    paths = T.write_table(seg, "two")
    df = pd.read_csv(paths["csv"])
    assert list(df.columns) == T.table_columns("segmentation", grouped=True)
    assert list(df.columns) == T.COLUMNS[:3] + ["group"] + T.COLUMNS[3:]
    assert list(df["run"]) == ["pspnet-r101", "r18", "r18-bd", "deeplabv3plus-r101",
                               "dlv3p-r18", "dlv3p-r18-bcd"]
    assert list(df["role"]) == ["teacher", "student", "student"] * 2
    assert list(df["method"])[3] == "T: deeplabv3plus-r101"
    d = df.set_index("run")
    assert d.loc["dlv3p-r18-bcd", "ours_miou_mean"] == pytest.approx(52.5)
    assert d.loc["dlv3p-r18-bcd", "ours_miou_std"] == pytest.approx(0.5)
    assert d.loc["deeplabv3plus-r101", "ours_miou_mean"] == 72.0
    assert d.loc["r18-bd", "paired_reference"] == "r18"
    assert d.loc["dlv3p-r18-bcd", "paired_reference"] == "dlv3p-r18"
    assert d.loc["dlv3p-r18-bcd", "paired_diff_per_seed"] == "2;1.5;1"
    assert d.loc["dlv3p-r18-bcd", "paired_diff_mean"] == pytest.approx(1.5)
    assert d.loc["dlv3p-r18-bcd", "paired_diff_ci_low"] == pytest.approx(1.5 - _half([2, 1.5, 1]))
    assert d.loc["dlv3p-r18-bcd", "verdict"] == "gain"
    assert d.loc["r18-bd", "paired_diff_mean"] == pytest.approx(2.5 / 3)
    tex = paths["tex"].read_text()
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    assert body.count("\\midrule") == 1
    assert "+1.50 [+0.26, +2.74] gain" in tex and tex.count("(reference)") == 2
    assert "Ours mIoU" in tex and "in its teacher's group" in tex


def test_split_summary_pairs_within_groups(seg, monkeypatch):
    monkeypatch.setattr(T, "_split_result", lambda cfg, kind, name, seed, split: {
        "mIoU": SEG[name] if kind == "teacher" else SEG[name][seed], "per_class_iou": {}})
    df = T.split_summary(seg, "two", "test").set_index("run")
    assert df.loc["dlv3p-r18-bcd", "paired_diff_mean"] == pytest.approx(1.5)
    assert df.loc["r18-bd", "paired_diff_mean"] == pytest.approx(2.5 / 3)
    assert math.isnan(df.loc["dlv3p-r18", "paired_diff_mean"])


# ----------------------------------------------------------------------------------------------
# Params checks of the groups
# ----------------------------------------------------------------------------------------------
def _refused(tmp_path, table: dict, extra: dict | None = None) -> str:
    overlay = _overlay(tmp_path, {**(extra or {}), "tables": {"two": table}}, "bad.yaml")
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    return str(info.value)


def _group(g: int, **changes) -> dict:
    groups = [dict(x) for x in SEG_TABLE["groups"]]
    groups[g].update(changes)
    return {**SEG_TABLE, "groups": groups}


@pytest.mark.parametrize("table, where, words", [
    (_group(1, teacher="nope"), "tables.two.groups[1].teacher", "unknown teacher 'nope'"),
    (_group(1, rows=[{"run": "r18-bd", "label": "again"}]), "tables.two.groups[1].rows[0].run",
     "run 'r18-bd' listed twice"),
    (_group(1, rows=[{"run": "r18-cd", "label": "x"}]), "tables.two.groups[1].rows[0].run",
     "table 'two' mixes teachers: row 0 (run 'r18-cd') is distilled from 'pspnet-r101', group "
     "1's teacher is 'deeplabv3plus-r101'"),
    (_group(1, teacher="pspnet-r101"), "tables.two.groups[1].teacher",
     "teacher 'pspnet-r101' already heads group 0"),
    ({**SEG_TABLE, "teacher": "pspnet-r101"}, "tables.two.teacher",
     "teacher and groups together: a table lists either one teacher (teacher + rows) or "
     "teacher groups (groups), not both"),
    ({"caption": "x", "teacher": "pspnet-r101"}, "tables.two.rows",
     "missing (required, or list `groups` of {teacher, rows})"),
    ({**SEG_TABLE, "groups": []}, "tables.two.groups", "should be non-empty"),
    (_group(0, label="x"), "tables.two.groups[0].label", "unknown key 'label'"),
    (_group(0, paper_method="x"), "tables.two.groups[0].paper_method", "unknown key"),
])
def test_bad_groups_are_refused_with_file_and_key(tmp_path, table, where, words):
    message = _refused(tmp_path, table)
    line = next((x for x in message.splitlines() if f": {where}: " in x), "")
    assert line.startswith(f"{tmp_path / 'bad.yaml'}: {where}: "), message
    assert words in line, message


def test_groups_on_different_datasets_are_refused(tmp_path):
    cfg = P.load_params([DEFAULT])
    extra = {"datasets": {"other": cfg["data"]},
             "teachers": {"t-other": {"model": "deeplabv3plus-r101", "seed": 0,
                                      "dataset": "other"}},
             "runs": {"o-s": {"student": "deeplabv3plus-r18", "dataset": "other"}}}
    table = _group(1, teacher="t-other", rows=[{"run": "o-s", "label": "S"}])
    message = _refused(tmp_path, table, extra)
    assert ("tables.two.groups[1].teacher: table 'two' mixes datasets: group 1's teacher "
            "'t-other' trains on datasets.other, group 0's teacher 'pspnet-r101' on the "
            "top-level data") in message


def test_a_group_paper_method_is_looked_up_by_box_ap_in_table_v(tmp_path):
    table = json.loads(json.dumps(TABLE5))
    table["groups"][2]["rows"][0]["paper_method"] = "student"  # RetinaNet: no student row
    overlay = _overlay(tmp_path, _det_params(tmp_path, table), "bad.yaml")
    with pytest.raises(P.ParamsError, match=r"tables\.table5\.groups\[2\]\.rows\[0\]\."
                                            r"paper_method: 'student' matches no AP_box row"):
        P.load_params([DEFAULT, overlay])
    del table["groups"][2]["paper_teacher"]  # three paper teachers match
    table["groups"][2]["rows"][0].pop("paper_method")
    overlay = _overlay(tmp_path, _det_params(tmp_path, table), "bad.yaml")
    with pytest.raises(P.ParamsError, match=r"tables\.table5\.groups\[2\]\.paper_teacher: "
                                            r"several paper teacher rows match"):
        P.load_params([DEFAULT, overlay])


def test_the_figures_refuse_a_table_with_several_groups(tmp_path):
    message = _refused(tmp_path, SEG_TABLE, {"figures": {"table": "two"}})
    assert "figures.table: table 'two' has 2 teacher groups" in message


def test_groups_helper_keeps_the_one_teacher_form():
    cfg = P.load_params([DEFAULT])
    table = cfg["tables"]["table1"]
    assert P.table_groups(table) == [table]
    groups = P.table_groups({**TABLE5, "paper_dataset": "MS-COCO 2017"})
    assert [g["teacher"] for g in groups] == ["t-gfl", "t-cmr", "t-retina"]
    assert groups[1]["paper_table"] == "V" and groups[1]["caption"] == TABLE5["caption"]
    assert groups[1]["paper_dataset"] == "MS-COCO 2017" and "groups" not in groups[1]
    assert [r["run"] for r in P.table_rows(TABLE5)] == list(DET_RUNS)
