"""The paper profile (params/paper.yaml) builds and runs here.

1. Every model of the profile at the paper's width builds (mmengine Config -> mmseg model), and
   every run's training config is made (config-time checks: taps, strides, channel counts) with
   its distiller built (connectors and loss heads at 256 channels).
2. For each of the four datasets, a tiny folder in its exact layout (tests/test_paper_datasets.py)
   and a params overlay written here (64x64 crops, 2 iterations, narrow models, no ImageNet
   weights: offline): the data stage, the teacher and ONE distillation run per student
   architecture of that dataset run through bcd's own stage functions.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.mm import configs  # noqa: E402

from test_paper_datasets import MAKERS  # noqa: E402  (tiny folders in each exact layout)

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "params" / "default.yaml", ROOT / "params" / "paper.yaml"]
PAPER = P.load_params(FILES)


def _num_classes(cfg, model: str) -> int:
    """Classes of the first dataset a run or teacher of ``model`` uses (VOC if none)."""
    users = [s.get("dataset") for s in (*cfg["teachers"].values(), *cfg["runs"].values())
             if model in (s.get("model"), s.get("student"))]
    return configs.num_classes(P.data_spec(cfg, users[0] if users else "voc12aug"))


# ----------------------------------------------------------------------------------------------
# 1. Paper width: every model and every run config builds (nothing is trained)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", list(PAPER["models"]))
def test_every_paper_model_builds_at_paper_width(model):
    from mmengine.config import Config

    from bcd.mm import detection

    spec = PAPER["models"][model]
    if detection.is_detector(spec):  # Table V: at MS-COCO's 80 classes
        cfg = Config(detection.detector(spec, 80))
    else:
        cfg = Config(configs.segmentor(spec, _num_classes(PAPER, model), (512, 512)))
    if spec.get("pretrained"):  # kept in the config (loaded by init_weights, not by building)
        assert cfg.backbone.init_cfg.checkpoint == spec["pretrained"]
    net = configs.model_registry(spec).build(cfg)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    assert millions > (20 if spec.get("depth") in (38, 101) else 0.2), (model, millions)


def test_every_paper_run_config_and_distiller_builds(tmp_path):
    from mmengine.config import Config
    from mmrazor.registry import MODELS

    built = 0
    for run in PAPER["runs"]:
        spec = P.resolve_run(PAPER, run)
        config = configs.distill_config(
            student_spec=spec["student"]["model"],
            teacher_spec=spec["teacher"]["model"] if spec["teacher"] else None,
            teacher_ckpt=tmp_path / "teacher.pth", methods=spec["methods"],
            decay_schedule=spec["weight_decay_schedule"], data=spec["data"],
            data_root=tmp_path, train=spec["train"], work_dir=tmp_path / run, seed=0,
            log_file=tmp_path / run / "log.json")
        # Table V's detectors: MS-COCO's 1x schedule (train.detection)
        iters = 177432 if "arch" in spec["student"]["model"] and spec["student"]["model"][
            "arch"] in ("gfl", "retinanet", "cascade_mask_rcnn") else 40000
        assert isinstance(config, Config) and config.train_cfg.max_iters == iters
        if not spec["methods"]:
            continue
        methods = copy.deepcopy(spec["methods"])
        for m in methods.values():  # CIRKD's reference banks are GBs of RAM: shrink to build
            if m["type"] == "CrossImageRelationLoss":
                m.update(pixel_memory_size=16, region_memory_size=4)
        distiller = MODELS.build(configs.distiller(
            methods, spec["student"]["model"], spec["teacher"]["model"], seed=0,
            num_classes=configs.num_classes(spec["data"])))
        assert distiller is not None
        built += 1
    assert built == sum(1 for r in PAPER["runs"].values() if r.get("distill"))


# ----------------------------------------------------------------------------------------------
# 2. Two iterations per dataset on tiny folders in the exact layouts
# ----------------------------------------------------------------------------------------------
#: one distillation run per student architecture of each dataset (the +BCD run), and one per
#: teacher architecture
SMOKE = {
    "voc12aug": ["r18-bcd", "voc-r38-bcd", "voc-effb1-bcd", "voc-segformer-bcd"],
    "cityscapes": ["cs-r18-bcd", "cs-r38-bcd", "cs-effb1-bcd", "cs-segformer-bcd"],
    "ade20k": ["ade-r18-bcd", "ade-espnet-bcd", "ade-mbv2-bcd", "ade-segformer-bcd",
               "ade-segformer-m2f-bcd"],  # and the Mask2Former teacher
    "coco_stuff10k": ["dlv3p-r18-bcd", "coco-mbv2-bcd", "coco-segformer-bcd"],
}
NARROW = {"espnet": 4, "pspnet-r18-half": 4}  # base_channels of the smoke overlay (else 8)


def test_smoke_covers_every_architecture_of_every_table():
    from test_paper_smoke_a import KEYS as A
    from test_paper_smoke_b import KEYS as B

    assert sorted(A + B) == sorted(SMOKE)
    for key, runs in SMOKE.items():
        students = {PAPER["runs"][r]["student"] for r in runs}
        used = {PAPER["runs"][r]["student"] for r in P.runs_used(PAPER)
                if PAPER["runs"][r]["dataset"] == key}
        assert students == used, key
        assert all(PAPER["runs"][r]["dataset"] == key and PAPER["runs"][r].get("distill")
                   for r in runs), key


def _smoke_overlay(tmp_path: Path, roots: dict) -> Path:
    # amp none: the profile's fp16 needs a GPU (a CPU run of it is refused, tests/test_amp.py)
    train = dict(iters=2, batch_size=2, val_interval=2, checkpoint_interval=2, amp="none")
    overlay = {
        "profile": "paper-smoke",
        "seeds": [0],
        "paths": {"data": "data/checked", "datasets": "data/checked", "runs": "runs",
                  "results": "results"},
        # evaluated at 128x64 instead of the paper's 2048x512 / 2048x1024 (data.scale)
        "datasets": {k: {"root": str(root), "height": 64, "width": 64, "scale": [128, 64]}
                     for k, root in roots.items()},
        "models": {name: {"pretrained": None, "base_channels": NARROW.get(name, 8)}
                   for name in PAPER["models"]},
        "train": {"teacher": train, "student": train},
        "methods": {"bd": {"fused_channels": 16}, "cd": {"fused_channels": 16},
                    "bd-det": {"fused_channels": 16}, "cd-det": {"fused_channels": 16}},
    }
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def make_smoke(tmp: Path, keys) -> tuple[Path, list[str]]:
    """Tiny folders of the datasets ``keys`` in their exact layouts, and the params files of a
    smoke run on them (the paper profile + :func:`_smoke_overlay`). The smoke runs are split over
    tests/test_paper_smoke_*.py, two datasets each, so the test workers share them."""
    roots = {k: MAKERS[k](tmp / "datasets", np.random.default_rng(0)) for k in keys}
    return tmp, [*map(str, FILES), str(_smoke_overlay(tmp, roots))]


def smoke_tests(keys):
    """The module fixture and the test of one tests/test_paper_smoke_*.py file (one file per
    pair of datasets, so the two test workers share them): ``smoke, test = smoke_tests(KEYS)``."""
    @pytest.fixture(scope="module")
    def smoke(tmp_path_factory):
        return make_smoke(tmp_path_factory.mktemp("paper-smoke"), keys)

    @pytest.mark.parametrize("dataset", keys)
    def test_two_iterations_per_student_architecture(smoke, dataset, monkeypatch):
        two_iterations(smoke, dataset, monkeypatch)

    return smoke, test_two_iterations_per_student_architecture


def two_iterations(smoke, dataset, monkeypatch):
    """The data stage on ``dataset``'s tiny folder, its teachers and every SMOKE run for two
    iterations."""
    import torch

    from bcd import cli
    from bcd.train import train_student, train_teacher
    from bcd.weights import load_weights

    tmp, files = smoke
    monkeypatch.chdir(tmp)  # the overlay's paths are relative to the working directory
    torch.set_num_threads(1)
    cfg = P.load_params(files)
    assert cfg["models"]["pspnet-r101"].get("pretrained") is None  # offline
    args = ["data", *[a for f in files for a in ("--params", f)], "--dataset", dataset]
    assert cli.main(args) == 0
    stamp = json.loads((P.data_dir(cfg, dataset) / "dataset.json").read_text())
    assert stamp["dataset"] == dataset
    teachers = {cfg["runs"][r]["teacher"] for r in SMOKE[dataset]}
    for teacher in teachers:
        assert P.dataset_of(cfg, teacher=teacher) == dataset
        train_teacher(P.teacher_job(cfg, teacher))
    for run in SMOKE[dataset]:
        path = train_student(P.student_job(cfg, run, 0))
        assert load_weights(path), run
        log = json.loads(P.run_paths(cfg, run, 0)["train_log"].read_text())
        assert log["train"], run
