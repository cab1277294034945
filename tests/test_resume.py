"""A training run killed part-way resumes from its last checkpoint and ends exactly where an
uninterrupted run ends (same weights, same log), through mmengine's resume (bcd.mm.resume).

The jobs that run to their end go through a warm-start server (bcd.warm; the same weights as a
fresh process, tests/test_warm.py), which saves each the ~6 s of importing the stack: the project
copy holds only params/, so its ``python -m bcd`` is the server's package. The runs that are
killed, and the thread-count test (which is about the process's environment), run on their own.
"""
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from project_copy import BCD, MICRO, run  # noqa: E402  (tests/project_copy.py)

from bcd import warm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV},
       "BCD_THREADS": "1", "PYTHONHASHSEED": "0"}
WARM_ENV = dict(ENV)  # + the server's socket, once it listens (the ``project`` fixture)


def _bcd(project, *args, check=True, wait=True, overlays=()):
    cmd = [*BCD, *args, *MICRO, "--params", "params/resume.yaml"]
    cmd += [a for o in overlays for a in ("--params", o)]
    if not wait:  # killed part-way: a process of its own, killed at once
        return subprocess.Popen(cmd, cwd=project, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    return run(cmd, project, timeout=600, check=check, env=WARM_ENV)


@pytest.fixture(scope="module")
def warm_server(tmp_path_factory):
    """A warm-start server for this module's jobs (started with the jobs' environment)."""
    folder = tmp_path_factory.mktemp("warm")
    sock, log = folder / "s.sock", open(folder / "server.log", "w")
    proc = subprocess.Popen([*BCD, "serve", "--socket", str(sock), "--parent", str(os.getpid())],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    yield sock, folder / "server.log"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def project(project_copy, warm_server):
    sock, log = warm_server
    root = project_copy(("params",), "resume")
    overlay = {"paths": {"data": "data", "runs": "runs", "results": "results"},
               "train": {"student": {"iters": 12, "val_interval": 12, "checkpoint_interval": 3}}}
    (root / "params/resume.yaml").write_text(yaml.safe_dump(overlay))
    _bcd(root, "data")  # meanwhile the server imports the stack
    deadline = time.time() + 300
    while not sock.exists():
        assert time.time() < deadline, log.read_text()
        time.sleep(0.2)
    WARM_ENV[warm.SOCKET_ENV] = str(sock)
    _bcd(root, "teacher", "--teacher", "pspnet-r101")
    assert "warm-start: teacher" in log.read_text(), log.read_text()  # it went through it
    return root


def _kill_after_checkpoint(project, run, seed, ckpt_name):
    work = project / f"runs/{run}/seed{seed}/work"
    proc = _bcd(project, "train", "--run", run, "--seed", str(seed), wait=False)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if (work / ckpt_name).is_file():
            proc.kill()
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -9, f"the run was not killed part-way: {proc.stderr.read()[-2000:]}"
    assert not (project / f"runs/{run}/seed{seed}/model.pth").exists()


def test_killed_run_resumes_to_the_same_weights(project):
    # a distillation run (mmrazor): the plain student path uses the same loop and hooks
    run = "r18-bcd"
    _bcd(project, "train", "--run", run, "--seed", "0")
    out = project / f"runs/{run}/seed0"
    reference = {k: v.clone() for k, v in
                 torch.load(out / "model.pth", weights_only=True)["state_dict"].items()}
    ref_log = json.loads((out / "train_log.json").read_text())
    shutil.rmtree(out)

    _kill_after_checkpoint(project, run, 0, "iter_6.pth")
    proc = _bcd(project, "train", "--run", run, "--seed", "0")
    assert "resuming" in proc.stderr
    ckpt = torch.load(out / "model.pth", weights_only=True)
    assert ckpt["meta"]["resumed"] is True
    resumed = ckpt["state_dict"]
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    log = json.loads((out / "train_log.json").read_text())
    assert [r["iter"] for r in log["train"]] == [r["iter"] for r in ref_log["train"]]
    assert log["train"][-1]["loss"] == pytest.approx(ref_log["train"][-1]["loss"], rel=0, abs=0)


def test_changed_settings_do_not_resume_stale_checkpoints(project):
    run, out = "r18", project / "runs/r18/seed1"
    _kill_after_checkpoint(project, run, 1, "iter_3.pth")
    overlay = project / "params/resume.yaml"
    cfg = yaml.safe_load(overlay.read_text())
    cfg["train"]["student"]["lr"] = 0.02
    overlay.write_text(yaml.safe_dump(cfg))
    try:
        proc = _bcd(project, "train", "--run", run, "--seed", "1")
    finally:
        cfg["train"]["student"].pop("lr")
        overlay.write_text(yaml.safe_dump(cfg))
    assert "resuming" not in proc.stderr and "other settings" in proc.stderr
    assert (out / "work.stale" / "iter_3.pth").is_file(), "the old checkpoints were not kept aside"
    assert torch.load(out / "model.pth", weights_only=True)["meta"]["resumed"] is False


def test_select_best_keeps_the_best_validation_weights(project):
    """``train.select: best``: the kept weights are those of the val evaluation with the best
    mIoU (the first of equals), read back from mmengine's best checkpoint; ``last`` keeps the
    last iteration's."""
    (project / "params/best.yaml").write_text(yaml.safe_dump(
        {"train": {"student": {"val_interval": 3, "select": "best"}}}))
    _bcd(project, "train", "--run", "r18", "--seed", "2", overlays=["params/best.yaml"])
    out = project / "runs/r18/seed2"
    val = json.loads((out / "train_log.json").read_text())["val"]
    assert [r["iter"] for r in val] == [3, 6, 9, 12]
    best = max(val, key=lambda r: r["mIoU"])  # max() returns the first of equals, as mmengine
    saved = torch.load(out / "model.pth", weights_only=True)
    kept = saved["meta"]["kept"]
    assert kept["select"] == "best" and kept["iter"] == best["iter"]
    assert kept["val_mIoU"] == pytest.approx(best["mIoU"])
    ckpt = torch.load(out / "work" / kept["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["meta"]["iter"] == best["iter"]
    for key, value in saved["state_dict"].items():
        assert torch.equal(ckpt["state_dict"][key], value), key

    proc = _bcd(project, "train", "--run", "r18", "--seed", "3")
    saved = torch.load(project / "runs/r18/seed3/model.pth", weights_only=True)["meta"]
    assert saved["kept"] == {"select": "last", "iter": 12}
    # progress lines on stderr, one per progress_interval(12) = 1 iteration
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[train r18 seed 3] iter ")]
    assert [ln.split()[5] for ln in lines] == [f"{i}/12" for i in range(1, 13)]
    assert "loss " in lines[-1] and "decode.loss_ce" in lines[-1] and "ETA 0m00s" in lines[-1]
    assert " it/s " in lines[-1]
    # the thread count the run computed with (ENV: BCD_THREADS=1) is in its provenance
    assert saved["provenance"]["threads"] == 1


def test_quiet_training_prints_no_progress(project):
    proc = _bcd(project, "train", "--run", "r18", "--seed", "4", "--quiet")
    assert "iter " not in proc.stderr


def test_a_copied_project_resumes_its_own_killed_run(project, tmp_path):
    """Kill a run, copy the project elsewhere and rerun in the copy: it resumes from the copy's
    own checkpoint (the pointer mmengine wrote names the original's) and ends where an
    uninterrupted run ends."""
    run, out = "r18", "runs/r18/seed5"
    _bcd(project, "train", "--run", run, "--seed", "5", "--quiet")
    reference = torch.load(project / out / "model.pth", weights_only=True)["state_dict"]
    shutil.rmtree(project / out)
    _kill_after_checkpoint(project, run, 5, "iter_3.pth")
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    shutil.rmtree(project / out)                          # the original is gone: nothing to read
    proc = _bcd(copy, "train", "--run", run, "--seed", "5", "--quiet")
    assert f"resuming from {out}/work/iter_" in proc.stderr
    resumed = torch.load(copy / out / "model.pth", weights_only=True)
    assert resumed["meta"]["resumed"] is True
    assert all(torch.equal(reference[k], v) for k, v in resumed["state_dict"].items())


def test_the_thread_count_comes_from_the_params_whatever_the_environment(project):
    """The plain command, Snakemake (OMP_NUM_THREADS = the job's threads) and DVC (the shell's
    environment) compute with resources.train.threads: the same weights under each."""
    weights = []
    for i, omp in enumerate(("1", "2")):
        env = {k: v for k, v in ENV.items() if k != "BCD_THREADS"}
        env["OMP_NUM_THREADS"] = omp
        overlay = project / f"params/seed{i}.yaml"
        overlay.write_text(yaml.safe_dump({"paths": {"runs": f"runs/t{i}"}}))
        cmd = [*BCD, "train", "--run", "r18", "--seed", "0", "--quiet", *MICRO,
               "--params", "params/resume.yaml", "--params", str(overlay)]
        run(cmd, project, timeout=600, env=env)
        saved = torch.load(project / f"runs/t{i}/r18/seed0/model.pth", weights_only=True)
        assert saved["meta"]["provenance"]["threads"] == 1       # resources.train.threads
        weights.append(saved["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bf16_mixed_precision_trains_teacher_and_student_on_the_cpu(project):
    """train.<role>.amp: bf16 runs the teacher and a BCD student under CPU autocast (the losses
    in float32): finite losses, the setting in the run's provenance, weights in float32."""
    (project / "params/amp.yaml").write_text(yaml.safe_dump(
        {"paths": {"runs": "runs/amp"},
         "train": {"teacher": {"amp": "bf16"}, "student": {"amp": "bf16"}}}))
    _bcd(project, "teacher", "--teacher", "pspnet-r101", "--quiet", overlays=["params/amp.yaml"])
    _bcd(project, "train", "--run", "r18-bcd", "--seed", "0", "--quiet",
         overlays=["params/amp.yaml"])
    saved = torch.load(project / "runs/amp/r18-bcd/seed0/model.pth", weights_only=True)
    assert saved["meta"]["provenance"]["spec"]["train"]["amp"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in saved["state_dict"].values())
    log = json.loads((project / "runs/amp/r18-bcd/seed0/train_log.json").read_text())
    assert all(math.isfinite(r["loss"]) for r in log["train"])
    assert any(k.startswith("distill.loss_bd") for k in log["train"][-1])
