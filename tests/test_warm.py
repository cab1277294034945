"""The warm-start server (bcd.warm): a job forked from it computes what a fresh process computes,
relays its exit status and messages, dies with its job, and never runs code older than the
files."""
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from project_copy import BCD, MICRO, PACKAGE, copy_project  # noqa: E402  (tests/project_copy.py)
from project_copy import run as _run  # noqa: E402

from bcd import warm  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("warm"), PACKAGE)
    env = {k: v for k, v in os.environ.items() if k != warm.SOCKET_ENV}
    _run(BCD + ["data", *MICRO], cwd=root, env=env)
    _run(BCD + ["teacher", *MICRO, "--teacher", "pspnet-r101"], cwd=root, env=env)
    sock = str(root / "s.sock")
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(BCD + ["serve", "--socket", sock, "--parent", str(os.getpid())],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while not Path(sock).exists():
        assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()
        time.sleep(0.2)
    yield root, sock, env, proc
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
    assert not Path(sock).exists(), "the server left its socket behind"


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _weights_and_metrics(root: Path):
    run = root / "runs/micro/r18-bcd/seed0"
    state = torch.load(run / "model.pth", weights_only=True)["state_dict"]
    metrics = json.loads((run / "work/evaluation.json").read_text())["metrics"]
    for key in ("eval_seconds", "weights_sha256", "train_cost"):  # measured or meta-dependent
        metrics.pop(key)
    return state, metrics


def test_a_job_forked_from_the_server_computes_what_a_fresh_process_computes(server):
    """A distillation run (student, teacher, BD and CD through mmrazor), bit for bit."""
    root, sock, env, _ = server
    args = BCD + ["train", *MICRO, "--run", "r18-bcd", "--seed", "0"]
    _run(args, cwd=root, env={**env, warm.SOCKET_ENV: sock})
    assert "warm-start: train" in (root / "server.log").read_text()  # it went through the server
    warm_state, warm_metrics = _weights_and_metrics(root)
    subprocess.run(["rm", "-rf", str(root / "runs/micro/r18-bcd")], check=True)
    _run(args, cwd=root, env=env)
    fresh_state, fresh_metrics = _weights_and_metrics(root)
    assert warm_state.keys() == fresh_state.keys()
    assert all(torch.equal(warm_state[k], fresh_state[k]) for k in warm_state)
    assert warm_metrics == fresh_metrics


def test_exit_status_and_messages_come_back_from_the_child(server):
    root, sock, env, _ = server
    args = BCD + ["train", *MICRO, "--run", "no-such-run", "--seed", "0"]
    fresh = _run(args, cwd=root, env=env, check=False)
    warm_ = _run(args, cwd=root, env={**env, warm.SOCKET_ENV: sock}, check=False)
    assert fresh.returncode == warm_.returncode == 2
    assert "no-such-run" in warm_.stderr and warm_.stderr == fresh.stderr


def test_a_killed_job_takes_its_child_with_it(server, tmp_path):
    root, sock, env, proc = server
    overlay = tmp_path / "long.yaml"
    overlay.write_text("train:\n  student:\n    iters: 100000\n    val_interval: 100000\n")
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        job = subprocess.Popen(BCD + ["train", *MICRO, "--params", str(overlay), "--run", "r18",
                                      "--seed", "1"], cwd=root, stdout=out,
                               stderr=subprocess.STDOUT, env={**env, warm.SOCKET_ENV: sock})
    deadline = time.time() + 120
    while "iter " not in log.read_text():
        assert job.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    assert _descendants(proc.pid), "the job runs in a child of the server"
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=30)
    deadline = time.time() + 30
    while _descendants(proc.pid):
        assert time.time() < deadline, "the child outlived its job"
        time.sleep(0.2)
    assert proc.poll() is None, "the server serves on"


def test_code_changed_after_the_server_started_runs_in_a_fresh_process(server):
    root, sock, env, _ = server
    args = BCD + ["check-params", *MICRO]
    before = _run(args, cwd=root, env={**env, warm.SOCKET_ENV: sock})
    assert "fresh process" not in before.stderr
    archs = root / "bcd/archs.py"
    archs.write_text(archs.read_text() + "\n# edited while the server runs\n")
    after = _run(args, cwd=root, env={**env, warm.SOCKET_ENV: sock})
    assert "code changed since the warm-start server started" in after.stderr
    assert after.stdout == before.stdout


def test_without_a_reachable_server_the_command_runs_in_its_own_process(server, tmp_path):
    root, _, env, _ = server
    out = _run(BCD + ["check-params", *MICRO], cwd=root,
               env={**env, warm.SOCKET_ENV: str(tmp_path / "nobody.sock")})
    assert out.returncode == 0 and out.stdout


def test_socket_paths_fit_af_unix_and_differ_per_key():
    a, b = warm.socket_path("1:/a"), warm.socket_path("2:/a")
    assert a != b and len(a.encode()) < 104


def test_a_job_of_another_checkout_runs_its_own_code(server, tmp_path):
    root, sock, env, _ = server
    other = copy_project(tmp_path / "other", PACKAGE)
    out = _run(BCD + ["check-params", *MICRO], cwd=other, env={**env, warm.SOCKET_ENV: sock})
    assert "not the warm-start server's: running in a fresh process" in out.stderr


def test_a_local_snakemake_run_starts_the_server_runs_jobs_in_it_and_stops_it(tmp_path):
    (tmp_path / "wf").mkdir()
    root = copy_project(tmp_path / "wf")
    env = {k: v for k, v in os.environ.items()
           if k not in (warm.SOCKET_ENV, warm.SWITCH_ENV, "BCD_RECORD_IMPORTS")}
    _run([sys.executable, "-m", "snakemake", "runs/micro/teachers/pspnet-r101/metrics.json",
          "--cores", "2", "--configfile", "params/micro.yaml"], cwd=root, env=env)
    log = (root / ".snakemake/log/bcd-warm-start.log").read_text()
    assert "bcd warm-start server" in log
    # the teacher's job may start before the server listens (it then runs on its own); its
    # evaluation starts after the teacher's training, when the server has long been ready
    assert "warm-start: evaluate" in log, log
    sock = re.search(r" on (\S+\.sock) ", log).group(1)
    deadline = time.time() + 10
    while Path(sock).exists():  # the server stops with Snakemake and removes its socket
        assert time.time() < deadline, "the server outlived Snakemake"
        time.sleep(0.2)
