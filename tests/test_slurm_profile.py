"""The SLURM profile (workflow/profiles/slurm) plans every job with the params' resources.

SLURM is not installed here, and need not be: a dry run (`-n`) parses and validates the
executor plugin's settings but hands the jobs to Snakemake's dry-run executor, so neither
`sbatch`, `sinfo`, `squeue` nor `sacct` is called. The resources each job would be submitted
with are read from the dry run's `resources:` lines (`cpus_per_task` is the explicit
--cpus-per-task, since a dry run caps `threads` at --cores, which defaults to 1 there).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bcd import params as P

pytest.importorskip("snakemake", reason="snakemake is installed by tools/setup_env.sh")
pytest.importorskip("snakemake_executor_plugin_slurm",
                    reason="snakemake-executor-plugin-slurm is installed by tools/setup_env.sh")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = "workflow/profiles/slurm"
KIND = {"data": "data", "teacher": "teacher", "train": "train", "evaluate": "evaluate",
        "evaluate_teacher": "evaluate", "table": "table", "figures": "figures"}
# A cluster overlay: only params change (partition, account, GPUs, CPUs, memory, time).
CLUSTER = {"resources": {
    "teacher": {"threads": 8, "mem_mb": 32000, "runtime": 1440, "gpus": 4,
                "slurm_partition": "gpu", "slurm_account": "proj-bcd"},
    "train": {"threads": 6, "mem_mb": 24000, "runtime": 720, "gpus": 2,
              "slurm_partition": "gpu", "slurm_extra": "--qos=normal"},
    "evaluate": {"gpus": 1, "slurm_partition": "gpu-short"},
    "table": {"slurm_partition": "cpu"},
}}


def dry_run(*args: str) -> str:
    """`snakemake -n --profile workflow/profiles/slurm ARGS` with no SLURM command on PATH.
    (Several overlays go after one --configfile: a second --configfile replaces the first.)"""
    path = os.pathsep.join([str(BIN), "/usr/bin", "/bin"])
    assert all(shutil.which(c, path=path) is None for c in ("sbatch", "sinfo", "squeue", "sacct"))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--profile",
                           PROFILE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def planned_jobs(text: str) -> list[dict]:
    """One dict per planned job: rule, log, threads (1 when not printed), resources."""
    jobs, job = [], None
    for line in text.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            job = {"rule": head.group(1), "threads": 1, "resources": {}}
            jobs.append(job)
        elif job is not None and (m := re.match(r"^\s+(log|threads): (.*)$", line)):
            job[m.group(1)] = int(m.group(2)) if m.group(1) == "threads" else m.group(2)
        elif job is not None and (m := re.match(r"^\s+resources: (.*)$", line)):
            job["resources"] = dict(re.findall(r"(\w+)=([^,]*)", m.group(1)))
    total = re.search(r"^total\s+(\d+)$", text, re.M)
    assert total and int(total.group(1)) == len(jobs), f"cannot parse the dry run:\n{text}"
    return jobs


def expected(cfg, kind: str) -> dict[str, str]:
    return {k: str(v) for k, v in P.rule_resources(cfg, kind).items()}


def check_plan(jobs: list[dict], cfg) -> None:
    stages = {s.name for s in P.stages(cfg)}
    work = [j for j in jobs if j["rule"] != "all"]
    assert {Path(j["log"]).stem for j in work} == stages  # every stage, once
    assert len(work) == len(stages)
    for job in work:
        kind = KIND[job["rule"]]
        have = job["resources"]
        want = expected(cfg, kind)
        assert {k: have.get(k) for k in want} == want, (job["rule"], have)
        # nothing the params leave unset is sent (e.g. no --gpus=0, no empty partition)
        for key in ("gpu", "slurm_partition", "slurm_account", "slurm_extra"):
            assert (key in have) == (key in want), (job["rule"], key, have)


def test_profile_plans_every_job_with_the_default_resources():
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml"])
    jobs = planned_jobs(dry_run("--configfile", "params/micro.yaml"))
    check_plan(jobs, cfg)
    by_rule = {j["rule"]: j["resources"] for j in jobs}
    # the local values: a teacher 1 CPU (the two train side by side) and 4 GB, evaluations 2 GB,
    # no GPU, no partition
    assert by_rule["teacher"]["cpus_per_task"] == "1" and by_rule["teacher"]["mem_mb"] == "4000"
    assert by_rule["evaluate"]["mem_mb"] == "2000" and "gpu" not in by_rule["train"]


def test_cluster_overlay_changes_only_params(tmp_path):
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(yaml.safe_dump(CLUSTER))
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml", overlay])
    jobs = planned_jobs(dry_run("--configfile", "params/micro.yaml", str(overlay)))
    check_plan(jobs, cfg)
    train = next(j["resources"] for j in jobs if j["rule"] == "train")
    assert train == {**train, "gpu": "2", "cpus_per_task": "6", "mem_mb": "24000",
                     "runtime": "720", "slurm_partition": "gpu", "slurm_extra": "--qos=normal"}
    teacher = next(j["resources"] for j in jobs if j["rule"] == "teacher")
    assert teacher["slurm_account"] == "proj-bcd" and teacher["gpu"] == "4"
    ev = {j["rule"]: j["resources"] for j in jobs if KIND.get(j["rule"]) == "evaluate"}
    assert set(ev) == {"evaluate", "evaluate_teacher"}
    assert all(r["slurm_partition"] == "gpu-short" and r["gpu"] == "1" for r in ev.values())


def test_threads_follow_the_params(tmp_path):
    """Snakemake's `threads` (what a local run uses) equal resources.<kind>.threads."""
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(yaml.safe_dump(CLUSTER))
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml", overlay])
    jobs = planned_jobs(dry_run("--cores", "64", "--configfile", "params/micro.yaml",
                                str(overlay)))
    for job in jobs:
        if job["rule"] != "all":
            assert job["threads"] == P.rule_threads(cfg, KIND[job["rule"]]), job


def test_resources_are_not_rerun_triggers():
    """A stage's spec (Snakemake's params, DVC's param keys) never includes `resources`."""
    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml"])
    assert all(not any(k.startswith("resources") for k in s.params) for s in P.stages(cfg))
    other = P.deep_merge(cfg, CLUSTER)
    assert P.resolve_run(other, "r18-bcd") == P.resolve_run(cfg, "r18-bcd")
    assert P.resolve_teacher(other, "pspnet-r101") == P.resolve_teacher(cfg, "pspnet-r101")


def test_every_rule_kind_has_resources_in_the_schema(tmp_path):
    schema = P.schema()
    assert tuple(schema["properties"]["resources"]["required"]) == P.RESOURCE_KINDS
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"resources": {"train": {"gpus": -1, "queue": "x"}}}))
    with pytest.raises(P.ParamsError) as info:
        P.load_params([ROOT / "params/default.yaml", bad])
    assert f"{bad}: resources.train.gpus: -1 is less than the minimum of 0" in str(info.value)
    assert f"{bad}: resources.train.queue: unknown key 'queue'" in str(info.value)
