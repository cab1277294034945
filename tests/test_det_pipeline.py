"""Table V's pipeline on the embedded detection set: `python -m bcd data`, `teacher`, `train`
(a plain and a BCD student) and `evaluate` for detectors in a copy of the project, metrics.json
as the contract says (docs/detection.md); the COCO 2017 folder checks; malformed detector params
refused with the file and key."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from bcd import params as P
from project_copy import ROOT, copy_project, run

pytest.importorskip("mmdet", reason="the detection stack is installed by tools/setup_env.sh")

DEFAULT = ROOT / "params" / "default.yaml"
BOX_KEYS = [f"bbox_{k}" for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")]
MASK_KEYS = [k.replace("bbox", "segm") for k in BOX_KEYS]
COMMON_KEYS = ("kind", "name", "seed", "model", "model_spec", "split", "params", "flops",
               "input_shape", "iters", "eval_seconds", "weights_sha256", "provenance", "kept",
               "train_cost", "task")


def _narrow(arch, depth, **more):
    return dict(arch=arch, depth=depth, base_channels=8, neck_channels=32, **more)


def _params() -> dict:
    """A whole small matrix on the generated COCO-format set (not an overlay: the default's
    segmentation teachers and runs would sit on a segmentation dataset)."""
    base = yaml.safe_load(DEFAULT.read_text())
    train = dict(iters=2, batch_size=2, lr=0.01, momentum=0.9, weight_decay=0.0001)
    return {
        "profile": "det-test", "seeds": [0], "paths": base["paths"],
        "resources": base["resources"],
        "data": {"dataset": "shapes_coco", "height": 48, "width": 48,
                 "shapes_coco": {"seed": 3, "num_train": 6, "num_val": 3, "num_test": 3}},
        "models": {"gfl-r50": _narrow("gfl", 50), "gfl-r18": _narrow("gfl", 18),
                   "cmr-r50": _narrow("cascade_mask_rcnn", 50, fc_channels=32,
                                      proposals={"rpn": 32, "rois": 16})},
        "train": {"teacher": dict(train), "student": dict(train),
                  "detection": {"student": {"optimizer": "adamw", "lr": 0.0001,
                                            "weight_decay": 0.05, "schedule": "step",
                                            "iters": 3}}},
        "teachers": {"gfl-r50": {"model": "gfl-r50", "seed": 0}},
        "methods": {
            "bd": {"type": "BoundaryDistillLoss", "loss_weight": 0.1, "fused_channels": 32,
                   "teacher_fusion_seed": 0},
            "cd": {"type": "ContextDistillLoss", "loss_weight": 0.05, "fused_channels": 32,
                   "teacher_fusion_seed": 0}},
        "runs": {"gfl-r18": {"student": "gfl-r18"},
                 "gfl-r18-bcd": {"student": "gfl-r18", "teacher": "gfl-r50",
                                 "distill": ["bd", "cd"], "weight_decay_schedule": True},
                 "cmr-r50": {"student": "cmr-r50"}},
        "tables": {},
    }


def _bcd(proj, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BCD_QUIET": "1"}
    env.pop("PYTHONPATH", None)  # the copy's bcd, not the checkout's
    return run([sys.executable, "-m", "bcd", *args], cwd=proj, check=check, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detpipe")
    proj = copy_project(tmp / "proj", names=("bcd", "params"))
    path = proj / "params" / "det.yaml"
    path.write_text(yaml.safe_dump(_params(), sort_keys=False))
    _bcd(proj, "data", "--params", "params/det.yaml")
    return proj, ["--params", "params/det.yaml"]


def _metrics(proj, cfg, run=None, seed=None, teacher=None) -> dict:
    paths = (P.teacher_paths(cfg, teacher) if teacher else P.run_paths(cfg, run, seed))
    return json.loads((proj / paths["metrics"]).read_text())


def _check(metrics: dict, masks: bool) -> None:
    assert metrics["task"] == "detection" and "mIoU" not in metrics
    assert set(COMMON_KEYS) <= set(metrics), set(COMMON_KEYS) - set(metrics)
    for key in BOX_KEYS + (MASK_KEYS if masks else []):
        value = metrics[key]
        assert value is None or 0.0 <= value <= 100.0, (key, value)
    for key in ("bbox_mAP", "bbox_mAP_50") + (("segm_mAP",) if masks else ()):
        assert metrics[key] is not None, key
    assert masks == ("segm_mAP" in metrics)
    assert metrics["params"] > 0 and metrics["flops"] > 0
    assert metrics["input_shape"] == [3, 48, 48]


def test_detectors_run_data_teacher_train_evaluate(project):
    proj, params = project
    cfg = P.load_params(proj / "params" / "det.yaml")
    root = proj / cfg["paths"]["data"]
    assert (root / "annotations" / "instances_test.json").is_file()

    _bcd(proj, "teacher", *params, "--teacher", "gfl-r50")
    _bcd(proj, "evaluate", *params, "--teacher", "gfl-r50", "--recompute")
    teacher = _metrics(proj, cfg, teacher="gfl-r50")
    _check(teacher, masks=False)
    assert teacher["split"] == "test" and teacher["iters"] == 2

    for name in ("gfl-r18", "gfl-r18-bcd"):
        _bcd(proj, "train", *params, "--run", name, "--seed", "0")
        out = _bcd(proj, "evaluate", *params, "--run", name, "--seed", "0")
        assert "box mAP" in out.stdout, out.stdout
        metrics = _metrics(proj, cfg, run=name, seed=0)
        _check(metrics, masks=False)
        assert metrics["evaluated"].startswith("at the end of training")  # the same numbers
        assert metrics["iters"] == 3  # train.detection.student
    log = (proj / P.run_paths(cfg, "gfl-r18-bcd", 0)["train_log"]).read_text()
    assert "distill.loss_bd" in log and "distill.loss_cd" in log
    # the same student weights at iteration 0: paired seeds (bcd.mm.distill)
    plain, bcd = (_metrics(proj, cfg, run=r, seed=0) for r in ("gfl-r18", "gfl-r18-bcd"))
    assert plain["params"] == bcd["params"] and plain["flops"] == bcd["flops"]


def test_cascade_mask_rcnn_reports_mask_map(project):
    proj, params = project
    cfg = P.load_params(proj / "params" / "det.yaml")
    _bcd(proj, "train", *params, "--run", "cmr-r50", "--seed", "0")
    _bcd(proj, "evaluate", *params, "--run", "cmr-r50", "--seed", "0")
    metrics = _metrics(proj, cfg, run="cmr-r50", seed=0)
    _check(metrics, masks=True)


def test_a_missing_coco2017_annotation_file_is_named(project, tmp_path):
    proj, _ = project
    coco = tmp_path / "coco"
    for folder in ("train2017", "val2017", "annotations"):
        (coco / folder).mkdir(parents=True)
    (coco / "annotations" / "instances_train2017.json").write_text("{}")
    overlay = tmp_path / "coco.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"dataset": "coco2017", "height": 800,
                                                "width": 1333, "root": str(coco)}}))
    # the generated set's section stays (ignored: another dataset's), as in a profile overlay
    proc = _bcd(proj, "data", "--params", "params/det.yaml", "--params", str(overlay),
                check=False)
    assert proc.returncode == 1, proc.stderr
    assert "missing annotations/instances_val2017.json" in proc.stderr, proc.stderr
    assert "cocodataset.org" in proc.stderr
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    _bcd(proj, "data", "--params", "params/det.yaml", "--params", str(overlay))
    record = json.loads((proj / "data" / "embedded" / "dataset.json").read_text())
    assert record["dataset"] == "coco2017" and record["root"] == str(coco.resolve())


# ----------------------------------------------------------------------------------------------
# Params: detector specs, their datasets, train.detection, optimizer and schedule
# ----------------------------------------------------------------------------------------------
def _write(tmp_path, cfg, name="det.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _errors(tmp_path, change) -> list[tuple[str, str, str]]:
    cfg = _params()
    change(cfg)
    path = _write(tmp_path, cfg)
    with pytest.raises(P.ParamsError) as info:
        P.load_params(path)
    assert all(f == str(path) for f, _, _ in info.value.errors)
    return [(k, m) for _, k, m in info.value.errors]


def test_the_embedded_detection_params_resolve(tmp_path):
    cfg = P.load_params(_write(tmp_path, _params()))
    teacher, run = P.resolve_teacher(cfg, "gfl-r50"), P.resolve_run(cfg, "gfl-r18-bcd")
    assert teacher["train"]["iters"] == 2 and "optimizer" not in teacher["train"]
    assert run["train"] == dict(iters=3, batch_size=2, lr=0.0001, momentum=0.9,
                                weight_decay=0.05, optimizer="adamw", schedule="step")
    assert "train.detection.student" in P.param_keys_for_run(cfg, "gfl-r18-bcd")
    assert "train.detection.teacher" not in P.param_keys_for_teacher(cfg, "gfl-r50")


@pytest.mark.parametrize("change, key, message", [
    (lambda c: c["models"]["gfl-r18"].update(neck_channels=40),
     "models.gfl-r18.neck_channels", "multiple of 32"),
    (lambda c: c["models"].update({"gfl-r18": {"arch": "gfl", "depth": 18, "base_channels": 4}}),
     "models.gfl-r18.base_channels", "not a multiple of 32"),  # no neck_channels: 256 x 4 / 64
    (lambda c: c["models"]["gfl-r18"].update(proposals={"rpn": 10}),
     "models.gfl-r18.proposals", "applies to cascade_mask_rcnn"),
    (lambda c: c["models"]["gfl-r18"].update(depth=38),
     "models.gfl-r18.depth", "not 38"),
    (lambda c: c["models"]["gfl-r18"].pop("depth"), "models.gfl-r18.depth", "missing"),
    (lambda c: c["models"]["gfl-r18"].update(aspp_dilations=[1, 2]),
     "models.gfl-r18.aspp_dilations", "does not apply to the detector gfl"),
    (lambda c: c["models"]["gfl-r18"].update(arch="yolo"), "models.gfl-r18.arch",
     "is not one of"),
    (lambda c: c["models"].update(seg={"arch": "pspnet", "depth": 18, "base_channels": 8,
                                       "neck_channels": 32}),
     "models.seg.neck_channels", "is a detector setting"),
    (lambda c: c["train"]["detection"]["student"].update(optimizer="adam"),
     "train.detection.student.optimizer", "is not one of"),
    (lambda c: c["train"]["detection"]["student"].update(schedule="cosine"),
     "train.detection.student.schedule", "is not one of"),
    (lambda c: c["train"]["teacher"].update(betas=[0.9, 0.99]),
     "train.teacher.betas", "AdamW's"),
    (lambda c: c["train"]["detection"].update(teacher={"bogus": 1}),
     "train.detection.teacher.bogus", "unknown key"),
])
def test_malformed_detector_params_are_refused_with_file_and_key(tmp_path, change, key,
                                                                  message):
    errors = _errors(tmp_path, change)
    assert any(k == key and message in m for k, m in errors), errors


def test_a_detector_needs_a_detection_dataset_and_a_segmentor_a_segmentation_one(tmp_path):
    def seg_data(cfg):
        cfg["data"] = {"dataset": "shapes", "height": 48,
                       "shapes": {"seed": 0, "num_train": 4, "num_val": 2, "num_test": 2}}

    errors = dict(_errors(tmp_path, seg_data))
    msg = errors["teachers.gfl-r50.model"]
    assert "'gfl-r50' (gfl / resnet-50) is a detector" in msg and "shapes" in msg, msg
    assert "a detector" in errors["runs.gfl-r18.student"]

    def seg_model(cfg):
        cfg["models"]["seg"] = {"arch": "pspnet", "depth": 18, "base_channels": 8}
        cfg["runs"]["seg"] = {"student": "seg"}

    msg = dict(_errors(tmp_path, seg_model))["runs.seg.student"]
    assert "is a segmentor" in msg and "shapes_coco" in msg and "detection dataset" in msg, msg


def test_coco_numbers_are_percent_and_undefined_ones_none():
    from bcd.evaluate import coco_percent

    got = coco_percent({"coco/bbox_mAP": 0.388, "coco/bbox_mAP_50": 1.0,
                        "coco/bbox_mAP_75": 0.0, "coco/bbox_mAP_s": 0.25,
                        "coco/bbox_mAP_m": -1.0, "coco/bbox_mAP_l": -1.0}, "bbox")
    assert got == {"bbox_mAP": 38.8, "bbox_mAP_50": 100.0, "bbox_mAP_75": 0.0,
                   "bbox_mAP_s": 25.0, "bbox_mAP_m": None, "bbox_mAP_l": None}
    # nothing detected: mmdet reports no numbers
    assert set(coco_percent({}, "segm").values()) == {0.0}


def test_detector_runs_get_coco_metric_optimizer_and_schedule(tmp_path):
    from bcd.mm import configs

    cfg = P.load_params(_write(tmp_path, _params()))
    spec, data = P.resolve_run(cfg, "cmr-r50"), P.data_spec(cfg)
    run = configs.distill_config(
        student_spec=spec["student"]["model"], teacher_spec=None, teacher_ckpt=None, methods={},
        decay_schedule=False, data=data, data_root=tmp_path / "data",
        train=dict(spec["train"], select="best", iters=120), work_dir=tmp_path / "work",
        seed=0, log_file=tmp_path / "log.json")
    assert run.default_scope == "mmdet" and run.model.type == "CascadeRCNN"
    assert run.val_evaluator == dict(type="mmdet.CocoMetric", metric=["bbox", "segm"],
                                     ann_file=str(tmp_path / "data/annotations/instances_val.json"),
                                     format_only=False)
    assert run.default_hooks.checkpoint.save_best == "coco/bbox_mAP"
    assert run.optim_wrapper.optimizer == dict(type="AdamW", lr=0.0001, weight_decay=0.05,
                                               betas=(0.9, 0.999))
    warm, steps = run.param_scheduler
    assert (warm.type, warm.end, warm.start_factor) == ("LinearLR", 12, 0.001)
    assert (steps.type, steps.milestones, steps.gamma) == ("MultiStepLR", [80, 110], 0.1)
    train = run.train_dataloader.dataset
    assert train.filter_cfg == dict(filter_empty_gt=True, min_size=0)
    assert [s["type"] for s in train.pipeline] == ["LoadImageFromFile", "LoadAnnotations",
                                                   "Resize", "RandomFlip", "PackDetInputs"]
    assert train.pipeline[2]["scale"] == (48, 48) and train.metainfo["classes"][0] == "stripes"
    assert "filter_cfg" not in run.val_dataloader.dataset
