"""Several datasets in one run matrix (``datasets:``, ``teachers.T.dataset``, ``runs.R.dataset``)
and the paper profile's plan and tables: stages per dataset, validation naming file and key,
every table row's run x seed planned, Table II's rows against the paper's numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from bcd import params as P
from bcd import tables as T

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "params" / "default.yaml"
PAPER = ROOT / "params" / "paper.yaml"
PAPER_FILES = [str(DEFAULT), str(PAPER)]
# every table of the paper profile and the paper table it reproduces
PAPER_TABLES = {"table1": "I", "table2-voc": "II", "table2-cityscapes": "II",
                "table2-ade20k": "II", "table2-ade20k-mask2former": "II", "table2-coco": "II",
                "table3": "III", "table3-cityscapes": "III", "table3-ade20k": "III",
                "table4": "IV", "table5": "V"}


def _overlay(tmp_path: Path, data: dict, name="overlay.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


TWO = {  # a second generated dataset next to the default's, with its own teacher and runs
    "datasets": {"big": {"dataset": "shapes", "height": 48, "width": 48,
                         "shapes": {"seed": 7, "num_train": 8, "num_val": 4, "num_test": 4}},
                 "other": {"dataset": "shapes", "height": 32,
                           "shapes": {"seed": 8, "num_train": 8, "num_val": 4, "num_test": 4}}},
    "teachers": {"pspnet-r101": {"dataset": "big"}, "deeplabv3plus-r101": {"dataset": "other"}},
    # every run must name its teacher's dataset (absent = the top-level data)
    "runs": {r: {"dataset": "other" if r.startswith("dlv3p") else "big"}
             for r, spec in yaml.safe_load(DEFAULT.read_text())["runs"].items()
             if "dataset" not in spec},   # the segmentation runs (Table V's name theirs)
    "tables": {"table1": {"rows": [{"run": "r18", "label": "S"},
                                   {"run": "r18-bcd", "label": "BCD"}]},
               "table3": {"rows": [{"run": "r18-bd", "label": "BD"}]},
               "table4": {"rows": [{"run": "dlv3p-r18-tat", "label": "TAT"}]},
               "table5": None},           # dropped: the detectors and their dataset
}
KEYED = "data/embedded-datasets"  # the default's paths.datasets


def _errors(files) -> list[tuple[str, str, str]]:
    with pytest.raises(P.ParamsError) as info:
        P.load_params(files)
    return info.value.errors


# ----------------------------------------------------------------------------------------------
# The matrix: stages, paths, resolution
# ----------------------------------------------------------------------------------------------
def test_each_dataset_has_its_data_stage_and_each_stage_depends_on_its_own(tmp_path):
    cfg = P.load_params([DEFAULT, _overlay(tmp_path, TWO)])
    stages = {s.name: s for s in P.stages(cfg)}
    assert P.datasets_used(cfg) == ["big", "other"]
    assert "data" not in stages  # the top-level data is used by no built stage
    big, other = stages["data-big"], stages["data-other"]
    assert big.outs == (f"{KEYED}/big",) and other.outs == (f"{KEYED}/other",)
    assert big.cmd.endswith("--dataset big")
    assert "datasets.big.shapes" in big.params and "datasets.other.shapes" not in big.params
    for name, folder in (("teacher-pspnet-r101", "big"), ("train-r18-bcd-seed0", "big"),
                         ("evaluate-r18-seed1", "big"), ("teacher-deeplabv3plus-r101", "other"),
                         ("train-dlv3p-r18-tat-seed0", "other"),
                         ("evaluate-teacher-deeplabv3plus-r101", "other")):
        data_deps = [d for d in stages[name].deps if d.startswith("data/")]
        assert data_deps == [f"{KEYED}/{folder}"], name
        assert any(k.startswith(f"datasets.{folder}.") for k in stages[name].params), name
        assert not any(k.startswith("data.") for k in stages[name].params), name
    assert stages["figures"].deps[0] == f"{KEYED}/big"  # table1's dataset
    run = P.resolve_run(cfg, "dlv3p-r18-tat")
    assert run["data"]["height"] == 32 and run["data"]["shapes"]["seed"] == 8
    assert P.resolve_teacher(cfg, "pspnet-r101")["data"]["height"] == 48
    assert P.resolve_evaluate(cfg, run="r18")["data"] == P.data_spec(cfg, "big")


def test_single_dataset_profiles_are_unchanged():
    """No keyed dataset used (micro: Table V dropped): the one data stage is `data` writing
    paths.data."""
    micro = ROOT / "params" / "micro.yaml"
    cfg = P.load_params([DEFAULT, micro])
    assert P.datasets_used(cfg) == [None]
    data = P.stages(cfg)[0]
    assert (data.name, data.outs, data.cmd.split()[-1]) == ("data", ("data/micro",), str(micro))
    # the default: the shapes data and Table V's keyed object scenes, folders apart
    cfg = P.load_params([DEFAULT])
    assert P.datasets_used(cfg) == [None, "shapes-coco"]
    assert [s.outs for s in P.stages(cfg)[:2]] == [("data/embedded",),
                                                  (f"{KEYED}/shapes-coco",)]


# ----------------------------------------------------------------------------------------------
# Validation: the file and the key path of each problem
# ----------------------------------------------------------------------------------------------
def test_unknown_dataset_names_file_and_key(tmp_path):
    bad = _overlay(tmp_path, {**TWO, "runs": {**TWO["runs"], "r18": {"dataset": "vocc"}}})
    errors = _errors([DEFAULT, bad])
    assert (str(bad), "runs.r18.dataset",
            "unknown dataset 'vocc' (datasets: big, other, shapes-coco)") in errors


def test_run_on_another_dataset_than_its_teacher_is_refused(tmp_path):
    bad = _overlay(tmp_path, {**TWO, "runs": {**TWO["runs"], "r18-bd": {"dataset": "other"}}})
    msgs = [m for f, k, m in _errors([DEFAULT, bad]) if (f, k) == (str(bad), "runs.r18-bd.dataset")]
    assert msgs and "teacher 'pspnet-r101' on datasets.big" in msgs[0], msgs


def test_table_mixing_datasets_names_table_and_row(tmp_path):
    rows = [{"run": "r18", "label": "S"}, {"run": "dlv3p-r18", "label": "other data"}]
    bad = _overlay(tmp_path, {**TWO, "tables": {**TWO["tables"], "table1": {"rows": rows}}})
    found = {(k, m) for f, k, m in _errors([DEFAULT, bad]) if f == str(bad)}
    assert any(k == "tables.table1.rows[1].run" and "table 'table1' mixes datasets" in m
               and "run 'dlv3p-r18'" in m and "datasets.other" in m for k, m in found), found


def test_table_mixing_teachers_names_table_and_row(tmp_path):
    overlay = {**TWO, "teachers": {**TWO["teachers"],
                                   "second": {"model": "pspnet-r101", "seed": 1, "dataset": "big"}},
               "runs": {**TWO["runs"], "r18-bcd": {"teacher": "second", "dataset": "big"}}}
    bad = _overlay(tmp_path, overlay)
    found = [(k, m) for f, k, m in _errors([DEFAULT, bad])]
    assert any(k == "tables.table1.rows[1].run" and "table 'table1' mixes teachers" in m
               and "'second'" in m for k, m in found), found


def test_bad_section_under_datasets_names_its_key_path(tmp_path):
    bad = _overlay(tmp_path, {"datasets": {"ade": {"dataset": "ade20k", "root": "x",
                                                   "height": 640}}})
    errors = _errors([DEFAULT, bad])
    assert any(k == "datasets.ade.height" and "larger than the short side 512" in m
               and f == str(bad) for f, k, m in errors), errors
    bad = _overlay(tmp_path, {"datasets": {"ade": {"dataset": "ade20k", "height": 64}}}, "b.yaml")
    assert (str(bad), "datasets.ade.root", "missing (required)") in _errors([DEFAULT, bad])


def test_top_level_data_and_datasets_both_used_is_refused(tmp_path):
    # pspnet-r101 and its runs back on the top-level data, the DeepLabV3+ ones on `other`
    overlay = {**TWO, "teachers": {"deeplabv3plus-r101": {"dataset": "other"}},
               "runs": {k: v for k, v in TWO["runs"].items() if k.startswith("dlv3p")},
               "paths": {"datasets": "data/embedded"}}   # the keyed folders inside paths.data
    bad = _overlay(tmp_path, overlay)
    errors = _errors([DEFAULT, bad])
    assert any(k == "datasets" and "both used" in m and "runs.r18" in m for f, k, m in errors), \
        errors
    # with the datasets' folders outside paths.data, both are fine: no folder nests in another
    apart = _overlay(tmp_path, {**overlay, "paths": {"datasets": "data/keys"}}, "apart.yaml")
    cfg = P.load_params([DEFAULT, apart])
    assert P.data_dir(cfg) == Path("data/embedded")
    assert P.data_dir(cfg, "other") == Path("data/keys/other")
    assert {s.name for s in P.stages(cfg)} >= {"data", "data-other"}


# ----------------------------------------------------------------------------------------------
# The paper profile
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paper():
    return P.load_params(PAPER_FILES)


def test_paper_profile_plans_every_row_of_every_table(paper):
    names = {s.name for s in P.stages(paper)}
    assert set(paper["tables"]) == set(PAPER_TABLES)
    for table, roman in PAPER_TABLES.items():
        spec = paper["tables"][table]
        assert spec["paper_table"] == roman and f"table-{table}" in names
        for row in P.table_rows(spec):
            for seed in paper["seeds"]:
                assert {f"train-{row['run']}-seed{seed}",
                        f"evaluate-{row['run']}-seed{seed}"} <= names, (table, row)
    assert {f"data-{k}" for k in ("voc12aug", "cityscapes", "ade20k", "coco_stuff10k",
                                 "coco")} <= names


def test_paper_profile_settings(paper):
    for role in ("teacher", "student"):
        t = paper["train"][role]
        assert (t["iters"], t["batch_size"], t["lr"], t["momentum"]) == (40000, 8, 0.01, 0.9)
    for key in ("voc12aug", "cityscapes", "ade20k", "coco_stuff10k"):
        d = paper["datasets"][key]
        assert (d["dataset"], d["height"], d["width"]) == (key, 512, 512)
    bd, cd = paper["methods"]["bd"], paper["methods"]["cd"]
    # the paper profile inherits the readings and weights the val protocol chose (docs/method.md)
    assert (bd["form"], bd["teacher"], bd["loss_weight"]) == ("spatial", "prediction", 0.1)
    assert (cd["reduction"], cd["teacher_features"], cd["loss_weight"]) == ("row", "fused", 0.05)
    assert bd["teacher_fusion_seed"] == cd["teacher_fusion_seed"] == 0
    assert bd["fused_channels"] == cd["fused_channels"] == 256
    assert bd["temperature"] == cd["temperature"] == {"init": 1.0, "factor": 1.05,
                                                      "threshold": 0.5}
    cirkd = paper["methods"]["cirkd"]
    assert (cirkd["pixel_memory_size"], cirkd["region_memory_size"]) == (20000, 2000)
    for name, spec in paper["models"].items():
        if spec.get("backbone", "resnet") == "resnet" and spec["arch"] != "segformer" \
                and spec["arch"] != "espnet":
            assert spec["base_channels"] == (32 if name == "pspnet-r18-half" else 64), name
        if spec["arch"] == "deeplabv3plus" and "aspp_dilations" in spec:
            assert spec["aspp_dilations"] == [1, 12, 24, 36], name
    assert paper["models"]["pspnet-r101"]["pretrained"] == "open-mmlab://resnet101_v1c"
    # the teachers each train on one dataset; table rows share their teacher's
    assert {t: s["dataset"] for t, s in paper["teachers"].items()} == {
        "pspnet-r101": "voc12aug", "pspnet-r101-cityscapes": "cityscapes",
        "pspnet-r101-ade20k": "ade20k", "mask2former-ade20k": "ade20k",
        "deeplabv3plus-r101": "coco_stuff10k",
        "gfl-r50": "coco", "cmr-r101": "coco", "retina-r101": "coco"}  # Table V's detectors
    # Table II's Mask2Former: mmseg's R50 ADE20K config at the paper's width
    m2f = paper["models"][paper["teachers"]["mask2former-ade20k"]["model"]]
    assert (m2f["arch"], m2f["depth"], m2f["base_channels"]) == ("mask2former", 50, 64)


def _metrics(kind, name, seed, miou):
    return {"kind": kind, "name": name, "seed": seed, "model": "x", "split": "val",
            "mIoU": miou, "params": 1e6, "flops": 1e9, "input_shape": [3, 512, 512]}


@pytest.mark.parametrize("table", ["table2-voc", "table2-cityscapes", "table2-ade20k",
                                   "table2-ade20k-mask2former", "table2-coco"])
def test_table_ii_rows_compare_each_student_with_its_own_plain_run(paper, table, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = paper["tables"][table]
    path = P.teacher_paths(paper, spec["teacher"])["metrics"]
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_metrics("teacher", spec["teacher"], None, 50.0)))
    ours = {}
    for i, row in enumerate(spec["rows"]):
        ours[row["run"]] = 30.0 + 2 * i + (1.5 if row["paper_method"] == "+BCD" else 0.0)
        for seed in paper["seeds"]:
            p = P.run_paths(paper, row["run"], seed)["metrics"]
            p.parent.mkdir(parents=True)
            p.write_text(json.dumps(_metrics("student", row["run"], seed, ours[row["run"]])))
    df = T.build_table(paper, table)
    from bcd.reference import rows

    reference = rows()
    assert len(df) == 1 + len(spec["rows"])
    teacher = [r for r in reference if r["table"] == "II" and r["dataset"] == spec["paper_dataset"]
               and r["method"] == "teacher" and r["teacher"] == r["student"]
               and r["teacher"] == spec.get("paper_teacher", r["teacher"])]
    assert df.iloc[0]["paper_miou"] == float(teacher[0]["value"])
    for rec, row in zip(df.iloc[1:].itertuples(), spec["rows"]):
        paper_row = [r for r in reference if r["table"] == "II"
                     and r["dataset"] == spec["paper_dataset"]
                     and r["method"] == row["paper_method"] and r["student"] == row["paper_student"]
                     # a student alone is printed once per dataset (bcd.reference.paper_rows)
                     and (row["paper_method"] == "student"
                          or r["teacher"] == spec.get("paper_teacher", r["teacher"]))]
        assert len(paper_row) == 1 and rec.paper_miou == float(paper_row[0]["value"])
        if row["paper_method"] == "+BCD":
            # the gain is against this architecture's own plain run, in ours and in the paper's
            assert rec.ours_gain == pytest.approx(3.5)  # 2 (next row) + 1.5
            assert rec.paper_gain == pytest.approx(float(paper_row[0]["printed_gain"]))
        else:
            assert math.isnan(rec.paper_gain) and math.isnan(rec.ours_gain)  # the baseline row
    assert "Mask2Former" not in set(df["method"])
