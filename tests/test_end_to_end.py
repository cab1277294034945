"""End to end: the real workflow on the micro profile (real training, evaluation and table).

Runs Snakemake in a copy of the project (so the checkout stays clean), then checks: the table
comes from the runs' metrics files, a second call does no work, a diverging run stops at the
first non-finite loss naming the term and the iteration, and missing inputs get clear messages.
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from project_copy import MICRO, copy_project  # noqa: E402  (tests/project_copy.py)
from project_copy import run as _run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("project"))
    # every job records the bcd modules it loaded (bcd/__main__.py), for the code-deps check
    env = {**os.environ, "BCD_RECORD_IMPORTS": str(root / "imports")}
    _run(SNAKEMAKE + ["--cores", "2", "--configfile", "params/micro.yaml"], cwd=root, env=env)
    return root


def test_each_stage_depends_on_the_code_it_runs(project):
    """Every bcd module a job of the workflow loaded is among its stage's declared code
    dependencies (bcd.codedeps, the same lists for dvc.yaml and the Snakefile): editing any
    code a stage runs reruns it."""
    from bcd import codedeps
    from bcd import params as P

    declared = {"data": P.DATA_CODE, "teacher": P.TEACHER_CODE, "train": P.TRAIN_CODE,
                "evaluate": P.EVALUATE_CODE, "table": P.TABLE_CODE, "figures": P.FIGURES_CODE}
    seen = set()
    for record in (project / "imports").glob("*.json"):
        job = json.loads(record.read_text())
        kind = job["argv"][0]
        seen.add(kind)
        files = {str(Path(f)) for f in P.code_files(str(ROOT / d) for d in declared[kind])}
        for mod in job["modules"]:
            path = codedeps.module_path(mod)
            assert path is not None and str(ROOT / path.relative_to(codedeps.ROOT)) in files, \
                f"stage kind {kind!r} loaded {mod} but does not depend on its file"
    assert seen == set(declared), f"no job recorded for {set(declared) - seen}"


def test_micro_workflow_produces_table_from_metrics(project):
    csv = project / "results/micro/tables/table1.csv"
    tex = project / "results/micro/tables/table1.tex"
    assert csv.is_file() and tex.is_file()
    assert "\\toprule" in tex.read_text()
    table = pd.read_csv(csv)
    metrics = json.loads((project / "runs/micro/r18-bcd/seed0/metrics.json").read_text())
    assert metrics["kind"] == "student" and 0.0 <= metrics["mIoU"] <= 100.0
    assert metrics["params"] > 0 and metrics["flops"] > 0
    assert set(metrics["per_class_iou"]) >= {"background", "wire"}
    ours = table.select_dtypes("number").to_numpy().ravel()
    assert any(abs(v - metrics["mIoU"]) < 1e-6 for v in ours if v == v), \
        "the table does not carry the run's measured mIoU"
    teacher = json.loads((project / "runs/micro/teachers/pspnet-r101/metrics.json").read_text())
    assert teacher["params"] > metrics["params"], "the teacher should be the larger model"
    # boundary / connectivity quality next to mIoU, in the metrics file and the table
    for key in ("mBoundaryIoU", "mTrimapIoU@1", "mFragmentation"):
        assert 0.0 <= metrics[key] <= 100.0 or metrics[key] != metrics[key]
    assert table["ours_boundary_iou_mean"].notna().all()
    assert metrics["provenance"]["teacher_sha256"] == teacher["weights_sha256"]
    # Tables III and IV: comparison methods joint with BCD, the paper's descriptive columns
    t3 = pd.read_csv(project / "results/micro/tables/table3.csv")
    joint = t3[t3["run"] == "r18-ifvd-bcd"].iloc[0]
    assert joint["kd_manner"] == "W2W" and joint["paper_miou"] == pytest.approx(74.82)
    t4 = pd.read_csv(project / "results/micro/tables/table4.csv")
    assert list(t4["run"]) == ["deeplabv3plus-r101", "dlv3p-r18-tat"]
    log = json.loads((project / "runs/micro/r18-bcd/seed0/train_log.json").read_text())
    last = log["train"][-1]
    assert {"distill.loss_bd", "distill.loss_cd", "r_t", "loss_cd_tau"} <= set(last)
    assert last["r_t"] == pytest.approx(1 - (last["iter"] - 1) / last["iter"])


def test_micro_workflow_draws_the_figures(project):
    import torch
    from PIL import Image

    figures = project / "results/micro/figures"
    for name in ("qualitative", "boundary", "training_curves", "ablation"):
        with Image.open(figures / f"{name}.png") as img:
            img.verify()
        assert (figures / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    assert not [p.name for p in figures.iterdir() if ".tmp" in p.name]
    # the training curves exported for `dvc plots show`, row for row from the training log
    log = json.loads((project / "runs/micro/r18-bcd/seed0/train_log.json").read_text())
    curves = pd.read_csv(project / "results/micro/plots/r18-bcd-seed0.csv")
    assert list(curves["iter"]) == [row["iter"] for row in log["train"]]
    assert {"decode_loss_ce", "distill_loss_bd", "distill_loss_cd", "r_t", "loss_cd_tau"} <= set(
        curves)
    val = pd.read_csv(project / "results/micro/plots/r18-bcd-seed0-val.csv")
    assert list(val["mIoU"]) == pytest.approx([row["mIoU"] for row in log["val"]])
    # the distiller's heads next to the student weights (empty for a run without distillation)
    heads = torch.load(project / "runs/micro/r18-bcd/seed0/distill_heads.pth", weights_only=True)
    assert "distill_losses.loss_bd.teacher_conv.weight" in heads["state_dict"]
    plain = torch.load(project / "runs/micro/r18/seed0/distill_heads.pth", weights_only=True)
    assert plain["state_dict"] == {}


def test_second_snakemake_call_does_no_work(project):
    out = _run(SNAKEMAKE + ["-n", "--cores", "2", "--configfile", "params/micro.yaml"], cwd=project)
    assert "Nothing to be done" in out.stdout + out.stderr


def test_diverging_run_stops_at_first_nonfinite_loss(project):
    overlay = project / "params/diverge.yaml"
    # a checkpoint every iteration, so the last good one exists when the loss blows up
    overlay.write_text(yaml.safe_dump({"methods": {"cd": {"loss_weight": 1e38}},
                                       "train": {"student": {"checkpoint_interval": 1}}}))
    model = project / "runs/micro/r18-bcd/seed0/model.pth"
    before = model.read_bytes()
    proc = _run([sys.executable, "-m", "bcd", "train", *MICRO, "--params", str(overlay),
                 "--run", "r18-bcd", "--seed", "0"], cwd=project, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    found = re.search(r"non-finite (?:loss at|weights after) iteration (\d+)([^\n]*)", err)
    assert found, err[-2000:]
    # The first iteration's loss may still be finite (a huge weight times a small loss); the run
    # must stop at the first iteration where it is not, and name the loss terms that blew up.
    assert int(found.group(1)) <= 3 and "distill.loss_cd=" in found.group(2), err[-2000:]
    # every checkpoint left behind holds finite weights, and none is from the bad iteration on
    import torch

    bad_iter = int(found.group(1))
    for ckpt in (project / "runs/micro/r18-bcd/seed0/work").glob("iter_*.pth"):
        assert int(ckpt.stem.split("_")[1]) < bad_iter, ckpt
        state = torch.load(ckpt, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert model.read_bytes() == before, "a diverging run must not overwrite finished outputs"


def test_missing_teacher_and_dataset_are_explained(project, tmp_path):
    overlay = tmp_path / "elsewhere.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"runs": "runs/nowhere", "data": "data/nowhere"}}))
    proc = _run([sys.executable, "-m", "bcd", "train", *MICRO, "--params", str(overlay),
                 "--run", "r18-bcd", "--seed", "0"], cwd=project, check=False)
    assert proc.returncode != 0 and "data/nowhere" in proc.stderr
    assert "python -m bcd data" in proc.stderr
    shutil.copytree(project / "data/micro", project / "data/nowhere")
    proc = _run([sys.executable, "-m", "bcd", "train", *MICRO, "--params", str(overlay),
                 "--run", "r18-bcd", "--seed", "0"], cwd=project, check=False)
    assert proc.returncode != 0
    assert "teacher checkpoint runs/nowhere/teachers/pspnet-r101/model.pth is missing" in proc.stderr
    assert "python -m bcd teacher" in proc.stderr


def test_wrong_teacher_checkpoint_is_refused(project, tmp_path):
    overlay = tmp_path / "wrong.yaml"
    overlay.write_text(yaml.safe_dump({"paths": {"runs": "runs/wrong"}}))
    target = project / "runs/wrong/teachers/pspnet-r101/model.pth"
    target.parent.mkdir(parents=True)
    shutil.copy2(project / "runs/micro/r18/seed0/model.pth", target)  # a student, not the R101
    proc = _run([sys.executable, "-m", "bcd", "train", *MICRO, "--params", str(overlay),
                 "--run", "r18-bcd", "--seed", "0"], cwd=project, check=False)
    assert proc.returncode != 0
    assert "does not fit the model's architecture" in proc.stderr, proc.stderr[-2000:]


def test_evaluate_stage_reuses_trainings_own_evaluation(project, tmp_path):
    """The evaluate stage writes training's end-of-run evaluation only when weights, settings and
    code all match: the same numbers as evaluating from scratch; anything else is re-measured."""
    run_dir = project / "runs/micro/r18-bcd/seed0"
    reused = json.loads((run_dir / "metrics.json").read_text())
    assert reused["evaluated"].startswith("at the end of training")
    args = [sys.executable, "-m", "bcd", "evaluate", *MICRO, "--run", "r18-bcd", "--seed", "0"]
    _run(args + ["--recompute"], cwd=project)
    fresh = json.loads((run_dir / "metrics.json").read_text())
    assert "evaluated" not in fresh
    skip = {"evaluated", "eval_seconds"}
    assert {k: v for k, v in reused.items() if k not in skip} == \
        {k: v for k, v in fresh.items() if k not in skip}
    # other evaluation settings: the key differs, the stage measures again with them
    overlay = tmp_path / "widths.yaml"
    overlay.write_text("evaluation: {trimap_widths: [3]}\n")
    _run(args + ["--params", str(overlay)], cwd=project)
    other = json.loads((run_dir / "metrics.json").read_text())
    assert "evaluated" not in other and "mTrimapIoU@3" in other and "mTrimapIoU@1" not in other
    # a damaged cache file is not trusted
    (run_dir / "work/evaluation.json").write_text("{not json")
    _run(args, cwd=project)
    assert "evaluated" not in json.loads((run_dir / "metrics.json").read_text())


def test_a_failing_table_job_keeps_the_previous_table(project):
    """A corrupt metrics file makes the table job fail; the table built before stays (the
    rule's outputs are Snakemake update() outputs) and the error names the file."""
    metrics = project / "runs/micro/r18-bcd/seed0/metrics.json"
    csv = project / "results/micro/tables/table1.csv"
    tex = project / "results/micro/tables/table1.tex"
    good, before = metrics.read_bytes(), (csv.read_bytes(), tex.read_bytes())
    stat = metrics.stat()
    try:
        metrics.write_text('{"mIoU": 12.3, "truncat')
        proc = _run(SNAKEMAKE + ["--cores", "1", "--configfile", "params/micro.yaml", "--",
                                 str(csv.relative_to(project))], cwd=project, check=False)
        assert proc.returncode != 0, "the table job should have failed on the corrupt metrics"
        assert (csv.read_bytes(), tex.read_bytes()) == before, "the previous table was lost"
        log = (project / "runs/micro/logs/table-table1.log").read_text()
        assert str(metrics.relative_to(project)) in log
    finally:
        metrics.write_bytes(good)
        os.utime(metrics, ns=(stat.st_atime_ns, stat.st_mtime_ns))
