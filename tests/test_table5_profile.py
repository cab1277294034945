"""Table V in the workflow: the paper profile plans every Table V run x seed on MS-COCO 2017, the
embedded overlay (params/table5.yaml) plans the same table on the generated COCO-format scenes,
and Snakemake's dry run of the overlay builds table5.csv from them."""
import subprocess
import sys

from bcd import params as P
from project_copy import ROOT

DEFAULT = ROOT / "params" / "default.yaml"
PAIRS = {"gfl-r50": ("coco-gfl-r18", "gfl-r18", ("fgd", "pkd", "ld", "crosskd", "bcd")),
         "cmr-r101": ("coco-cmr-r50", "cmr-r50", ("fgd", "pkd", "crosskd", "bcd")),
         "retina-r101": ("coco-retina-r50", "retina-r50", ("fgd", "pkd", "crosskd", "bcd"))}


def _runs():
    return {f"{prefix}{'' if m is None else '-' + m}": (teacher, student)
            for teacher, (prefix, student, methods) in PAIRS.items()
            for m in (None, *methods)}


def _check_table5(cfg, width):
    names = {s.name for s in P.stages(cfg)}
    runs = _runs()
    assert len(runs) == 16
    for teacher in PAIRS:
        assert f"teacher-{teacher}" in names and cfg["teachers"][teacher]["dataset"] == "coco"
    for run in runs:
        for seed in cfg["seeds"]:
            assert f"train-{run}-seed{seed}" in names and f"evaluate-{run}-seed{seed}" in names
    assert "table-table5" in names
    groups = P.table_groups(cfg["tables"]["table5"])
    assert [g["teacher"] for g in groups] == list(PAIRS)
    assert [r["run"] for g in groups for r in g["rows"]] == list(runs)
    for model in ("gfl-r50", "gfl-r18", "cmr-r101", "cmr-r50", "retina-r101", "retina-r50"):
        assert cfg["models"][model]["base_channels"] == width
    # LD only where the head predicts box distributions (GFL)
    assert "coco-cmr-r50-ld" not in cfg["runs"] and "coco-retina-r50-ld" not in cfg["runs"]
    return names


def test_the_paper_profile_plans_every_table5_run_and_seed():
    cfg = P.load_params([DEFAULT, ROOT / "params" / "paper.yaml"])
    _check_table5(cfg, width=64)
    assert cfg["datasets"]["coco"]["dataset"] == "coco2017"
    student = P.resolve_run(cfg, "coco-gfl-r18-bcd")["train"]
    assert student["optimizer"] == "adamw" and student["lr"] == 0.0001
    assert student["weight_decay"] == 0.05 and student["batch_size"] == 8


def test_the_embedded_overlay_plans_table5_apart_from_the_default_data():
    cfg = P.load_params([DEFAULT, ROOT / "params" / "table5.yaml"])
    names = _check_table5(cfg, width=16)
    assert {"data", "data-coco", "table-table1"} <= names
    assert P.data_dir(cfg, "coco").as_posix() == "data/embedded-datasets/coco"
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile",
         "params/table5.yaml", "--", "results/tables/table5.csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = out.stdout + out.stderr
    assert "table5" in plan and "train-coco-gfl-r18-bcd-seed0" in plan, plan[-2000:]


def test_bd_reading_class_probabilities_is_refused_on_a_detector(tmp_path):
    import pytest
    import yaml

    overlay = tmp_path / "bd.yaml"
    overlay.write_text(yaml.safe_dump({"runs": {"coco-gfl-r18-bcd": {"distill": ["bd", "cd"]}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, ROOT / "params" / "table5.yaml", overlay])
    assert "runs.coco-gfl-r18-bcd.distill[0]" in str(info.value)
    assert "teacher.logits" in str(info.value) and "teacher: probe" in str(info.value)
