"""bcd.specrecord: a stage's record of its settings, and the stamp that makes Snakemake rerun
outputs made (by any tool) with other settings."""
import json
import os
import time
from pathlib import Path

from bcd import params as P
from bcd import specrecord

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, weight=0.1):
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml"])
    cfg["paths"] = {**cfg["paths"], "runs": str(tmp_path / "runs"),
                    "results": str(tmp_path / "results"), "data": str(tmp_path / "data")}
    cfg["methods"]["bd"] = {**cfg["methods"]["bd"], "loss_weight": weight}
    return cfg


def _built(cfg, run="r18-bcd", seed=0):
    model = P.run_paths(cfg, run, seed)["model"]
    model.parent.mkdir(parents=True, exist_ok=True)
    _save(model)
    old = time.time() - 100
    os.utime(model, (old, old))
    return model


def _save(path, value=1.0):
    """A whole torch checkpoint (a zip file: bcd.atomic.is_complete)."""
    import torch

    torch.save({"state_dict": {"w": torch.full((4,), value)}}, path)


def test_no_record_no_stamp(tmp_path):
    cfg = _cfg(tmp_path)
    _built(cfg)
    assert specrecord.stale_stamp(cfg, "train", "r18-bcd", 0) == []


def test_a_matching_record_needs_no_rerun(tmp_path):
    cfg = _cfg(tmp_path)
    _built(cfg)
    path = specrecord.record(cfg, "train", "r18-bcd", 0)
    assert json.loads(path.read_text())["stage"] == "train-r18-bcd-seed0"
    assert path.parent == P.run_paths(cfg, "r18-bcd", 0)["dir"]
    assert specrecord.stale_stamp(cfg, "train", "r18-bcd", 0) == []


def test_changed_settings_give_a_stamp_newer_than_the_outputs(tmp_path):
    cfg = _cfg(tmp_path)
    model = _built(cfg)
    specrecord.record(cfg, "train", "r18-bcd", 0)
    changed = _cfg(tmp_path, weight=5.0)
    (stamp,) = specrecord.stale_stamp(changed, "train", "r18-bcd", 0)
    assert Path(stamp).stat().st_mtime > model.stat().st_mtime
    # a run that does not use bd is not touched
    _built(cfg, "r18")
    specrecord.record(cfg, "train", "r18", 0)
    assert specrecord.stale_stamp(changed, "train", "r18", 0) == []
    # after the rerun (new outputs, matching record) the stamp stays an input but is old
    _save(model, 2.0)
    specrecord.record(changed, "train", "r18-bcd", 0)
    before = Path(stamp).stat().st_mtime
    assert specrecord.stale_stamp(changed, "train", "r18-bcd", 0) == [stamp]
    assert Path(stamp).stat().st_mtime == before <= model.stat().st_mtime


def test_every_kind_of_stage_has_a_record_place(tmp_path):
    cfg = _cfg(tmp_path)
    for kind, name, seed in (("data", None, None), ("teacher", "pspnet-r101", None),
                             ("evaluate-teacher", "pspnet-r101", None), ("train", "r18", 0),
                             ("evaluate", "r18", 0), ("table", "table1", None),
                             ("figures", None, None)):
        path = specrecord.record(cfg, kind, name, seed)
        assert path.name == f".{P.stage_name(kind, name, seed)}.spec.json"
        assert specrecord.recorded_digest(cfg, kind, name, seed) is not None


def test_a_truncated_teacher_checkpoint_is_rebuilt(tmp_path):
    """A cut-off teacher model.pth gets the stamp, so Snakemake retrains the teacher (and the
    runs distilled from it) instead of failing in every student."""
    import torch

    cfg = _cfg(tmp_path)
    model = P.teacher_paths(cfg, "pspnet-r101")["model"]
    model.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(64)}}, model)
    assert specrecord.stale_stamp(cfg, "teacher", "pspnet-r101") == []
    model.write_bytes(model.read_bytes()[:100])
    (stamp,) = specrecord.stale_stamp(cfg, "teacher", "pspnet-r101")
    assert Path(stamp).stat().st_mtime > model.stat().st_mtime
