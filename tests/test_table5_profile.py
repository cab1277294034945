"""Table V in the workflow: the paper profile plans every Table V run x seed on MS-COCO 2017 with
mmdet's own detector configs, the default profile plans the same table (two seeds) on the
generated COCO-format object scenes, and Snakemake's dry run of the default builds table5.csv
from them."""
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


def _check_table5(cfg, width, dataset, seeds):
    names = {s.name for s in P.stages(cfg)}
    runs = _runs()
    assert len(runs) == 16
    for teacher in PAIRS:
        assert f"teacher-{teacher}" in names and cfg["teachers"][teacher]["dataset"] == dataset
    assert P.table_seeds(cfg, "table5") == seeds
    for run in runs:
        assert cfg["runs"][run]["dataset"] == dataset
        for seed in cfg["seeds"]:
            planned = f"train-{run}-seed{seed}" in names and f"evaluate-{run}-seed{seed}" in names
            assert planned == (seed in seeds), (run, seed)
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
    _check_table5(cfg, width=64, dataset="coco", seeds=[0, 1, 2])
    assert cfg["datasets"]["coco"]["dataset"] == "coco2017"
    student = P.resolve_run(cfg, "coco-gfl-r18-bcd")["train"]
    assert student["optimizer"] == "adamw" and student["lr"] == 0.0001
    assert student["weight_decay"] == 0.05 and student["batch_size"] == 8


def test_the_paper_detectors_build_mmdets_own_configs():
    """The paper profile overlays the default's narrow detectors (dicts merge): every key they
    set must come back to mmdet's 1x COCO config at the paper's width."""
    import pytest

    pytest.importorskip("mmdet")
    from bcd.mm import detection

    cfg = P.load_params([DEFAULT, ROOT / "params" / "paper.yaml"])
    for name in ("gfl-r50", "gfl-r18", "cmr-r101", "cmr-r50", "retina-r101", "retina-r50"):
        spec = cfg["models"][name]
        built, base = detection.detector(spec, 80), detection.base_config(spec["arch"])
        for key in ("train_cfg", "test_cfg"):
            assert built[key] == base[key], (name, key)
        assert built["neck"]["out_channels"] == base["neck"]["out_channels"] == 256
        head = "rpn_head" if spec["arch"] == "cascade_mask_rcnn" else "bbox_head"
        assert built[head]["anchor_generator"] == base[head]["anchor_generator"], name
        if spec["arch"] == "cascade_mask_rcnn":
            fcs = [h["fc_out_channels"] for h in built["roi_head"]["bbox_head"]]
            assert fcs == [h["fc_out_channels"] for h in base["roi_head"]["bbox_head"]] == [1024] * 3
    # the 1x schedule for every detector (not the default's shorter Cascade schedule)
    assert P.resolve_teacher(cfg, "cmr-r101")["train"]["iters"] == 177432
    for name in ("gfl-r18", "cmr-r50"):
        assert P.resolve_run(cfg, f"coco-{name}")["train"]["iters"] == 177432


def test_the_default_plans_table5_on_the_object_scenes_apart_from_the_shapes_data():
    cfg = P.load_params([DEFAULT])
    names = _check_table5(cfg, width=16, dataset="shapes-coco", seeds=[0, 1])  # num_seeds: 2
    assert {"data", "data-shapes-coco", "table-table1"} <= names
    assert P.data_dir(cfg, "shapes-coco").as_posix() == "data/embedded-datasets/shapes-coco"
    # Cascade Mask R-CNN's own (shorter) schedule over train.detection's
    assert P.resolve_teacher(cfg, "cmr-r101")["train"]["iters"] == 400
    assert P.resolve_teacher(cfg, "gfl-r50")["train"]["iters"] == 800
    run = P.resolve_run(cfg, "coco-cmr-r50")["train"]
    assert run["iters"] == 150 and run["optimizer"] == "adamw" and run["lr"] == 0.001
    assert "train.cascade_mask_rcnn.student" in P.param_keys_for_run(cfg, "coco-cmr-r50")
    assert "train.cascade_mask_rcnn.student" not in P.param_keys_for_run(cfg, "coco-gfl-r18")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--",
         "results/tables/table5.csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = out.stdout + out.stderr
    assert "table5" in plan and "train-coco-gfl-r18-bcd-seed1" in plan, plan[-2000:]
    assert "train-coco-gfl-r18-bcd-seed2" not in plan


def test_the_segmentation_overlays_drop_table5():
    for overlays in (["micro.yaml"], ["camvid.yaml"], ["camvid.yaml", "camvid-pretrained.yaml"]):
        cfg = P.load_params([DEFAULT, *(ROOT / "params" / o for o in overlays)])
        assert "table5" not in cfg["tables"], overlays
        assert not any(s.name.startswith("train-coco-") for s in P.stages(cfg)), overlays


def test_bd_reading_class_probabilities_is_refused_on_a_detector(tmp_path):
    import pytest
    import yaml

    overlay = tmp_path / "bd.yaml"
    overlay.write_text(yaml.safe_dump({"runs": {"coco-gfl-r18-bcd": {"distill": ["bd", "cd"]}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([DEFAULT, overlay])
    assert "runs.coco-gfl-r18-bcd.distill[0]" in str(info.value)
    assert "teacher.logits" in str(info.value) and "teacher: probe" in str(info.value)
