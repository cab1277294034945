"""Which checkpoint a rerun resumes from (bcd.train.prepare_work_dir), at every step of
mmengine's checkpoint sequence and in a moved or copied project: deterministic states of the
work dir instead of a kill at a polled moment (tests/test_resume.py kills real runs)."""
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from bcd.train import COMPUTE_KEYS, prepare_work_dir

FP = {"spec_sha256": "abc", "seed": 0, "teacher_sha256": None, "threads": 1}


def _ckpt(work: Path, it: int) -> Path:
    path = work / f"iter_{it}.pth"
    torch.save({"meta": {"iter": it}, "state_dict": {"w": torch.full((2,), float(it))}}, path)
    return path


def _run_dir(tmp_path, iters=(3, 6), pointer="last") -> Path:
    """A work dir as a killed run leaves it: stamp, checkpoints, mmengine's pointer."""
    work = tmp_path / "runs/r/seed0/work"
    work.mkdir(parents=True)
    (work / "run_fingerprint.json").write_text(json.dumps(FP))
    paths = [_ckpt(work, i) for i in iters]
    if pointer == "last":
        (work / "last_checkpoint").write_text(str(paths[-1].resolve()))
    return work


def _resumes_from(work: Path, fp=FP) -> str | None:
    if not prepare_work_dir(work, fp):
        return None
    target = Path((work / "last_checkpoint").read_text())
    assert target.parent == work.resolve(), "resumed from a checkpoint outside the work dir"
    return target.name


# mmengine's CheckpointHook at iteration 6: torch.save to a temporary file (bcd's atomic patch),
# rename to iter_6.pth, then open(last_checkpoint, "w") (truncates it) and write the path.
def test_kill_while_the_checkpoint_is_written_resumes_from_the_one_before(tmp_path):
    work = _run_dir(tmp_path, iters=(3,))
    (work / ".iter_6.pth.tmp123").write_bytes(b"PK\x03\x04 half a zip")
    assert _resumes_from(work) == "iter_3.pth"


def test_kill_after_the_rename_before_the_pointer_resumes_from_it(tmp_path):
    work = _run_dir(tmp_path, iters=(3,))
    _ckpt(work, 6)                                     # the pointer still names iter_3
    assert _resumes_from(work) == "iter_6.pth"


def test_kill_while_mmengine_rewrites_the_pointer_resumes(tmp_path):
    work = _run_dir(tmp_path)
    (work / "last_checkpoint").write_text("")          # truncated by open(..., "w"), not written
    assert _resumes_from(work) == "iter_6.pth"


def test_kill_after_the_pointer_resumes_from_it(tmp_path):
    work = _run_dir(tmp_path)
    assert _resumes_from(work) == "iter_6.pth"


def test_no_pointer_at_all_resumes_from_the_newest(tmp_path):
    work = _run_dir(tmp_path, pointer=None)
    assert _resumes_from(work) == "iter_6.pth"


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(tmp_path, caplog):
    work = _run_dir(tmp_path)
    data = (work / "iter_6.pth").read_bytes()
    (work / "iter_6.pth").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="bcd"):
        assert _resumes_from(work) == "iter_3.pth"
    assert (work / "iter_6.pth.corrupt").is_file() and not (work / "iter_6.pth").exists()
    assert "iter_6.pth is truncated or corrupt" in caplog.text


def test_no_complete_checkpoint_starts_over_and_keeps_the_folder_aside(tmp_path):
    work = _run_dir(tmp_path, iters=(3,))
    (work / "iter_3.pth").write_bytes(b"garbage")
    assert _resumes_from(work) is None
    assert (work.parent / "work.stale" / "iter_3.pth.corrupt").is_file()
    assert json.loads((work / "run_fingerprint.json").read_text()) == FP


def test_a_moved_project_resumes_from_its_own_checkpoint(tmp_path):
    work = _run_dir(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")        # the pointer names a path that is gone
    assert _resumes_from(tmp_path / "new/runs/r/seed0/work") == "iter_6.pth"


def test_a_copied_project_never_resumes_from_the_originals_checkpoint(tmp_path):
    work = _run_dir(tmp_path / "a", iters=(3,))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _ckpt(work, 6)                                      # the original goes on training
    (work / "last_checkpoint").write_text(str((work / "iter_6.pth").resolve()))
    copy = tmp_path / "b/runs/r/seed0/work"
    assert _resumes_from(copy) == "iter_3.pth"          # its own, not a's iter_6
    assert (work / "last_checkpoint").read_text().endswith("a/runs/r/seed0/work/iter_6.pth")


def test_other_settings_move_the_checkpoints_aside(tmp_path):
    work = _run_dir(tmp_path)
    assert _resumes_from(work, dict(FP, spec_sha256="other")) is None
    assert (work.parent / "work.stale" / "iter_6.pth").is_file()


def test_another_thread_count_is_refused_with_the_way_to_resume(tmp_path):
    assert "threads" in COMPUTE_KEYS
    work = _run_dir(tmp_path)
    with pytest.raises(ValueError, match="threads 1 then, 2 now.*BCD_THREADS=1"):
        prepare_work_dir(work, dict(FP, threads=2))
    assert (work / "iter_6.pth").is_file() and not (work.parent / "work.stale").exists()


def test_a_truncated_teacher_checkpoint_is_named_with_the_command_that_rebuilds_it(
        tmp_path, monkeypatch):
    from bcd import params as P
    from bcd.runtime import require_teacher

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "o.yaml"
    overlay.write_text("paths: {runs: runs/trunc}\n")
    cfg = P.load_params([root / "params/default.yaml", overlay])
    path = P.teacher_paths(cfg, "pspnet-r101")["model"]
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(64)}}, path)
    assert require_teacher(P.teacher_checkpoint(cfg, "pspnet-r101")) == path
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt.*snakemake --cores 1 --force "
                                         f"--configfile {overlay} -- {path}"):
        require_teacher(P.teacher_checkpoint(cfg, "pspnet-r101"))
