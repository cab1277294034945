"""The Snakemake workflow and dvc.yaml describe the same stages (commands, outputs, inputs), the
committed dvc.yaml is current, and both tools rerun exactly the stages a params change affects.

Snakemake's plan is read from ``snakemake --dry-run --forceall --printshellcmds`` (one block per
job: ``rule``, ``input:``, ``output:``, ``log:``, ``Shell command:``); log
files are named after the DVC stage, which pairs each job with its stage. The parse is checked against the
job count Snakemake prints, so a format change fails loudly instead of comparing nothing.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bcd import codedeps, dvcfile
from bcd import params as P
from project_copy import BIN, WORKFLOW, run, tool_env  # tests/project_copy.py

pytest.importorskip("snakemake", reason="snakemake is installed by tools/setup_env.sh")

ROOT = Path(__file__).resolve().parents[1]
ENV = tool_env()


def _run(args, cwd=ROOT, check=True, timeout=300) -> subprocess.CompletedProcess:
    return run(args, cwd=cwd, check=check, timeout=timeout, env=ENV)


def _snakemake(*args, cwd=ROOT, check=True):
    return _run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=cwd, check=check)


def _norm(cmd: str) -> str:
    """A command with the interpreter written as `python` and whitespace normalised."""
    words = shlex.split(cmd)
    return " ".join(["python", *map(shlex.quote, words[1:])])


def parse_plan(text: str) -> dict[str, dict]:
    """Jobs of a Snakemake dry-run by stage name (the log file's name)."""
    jobs, job = [], None
    for line in text.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):$", line)
        if head:
            job = {"rule": head.group(1)}
            jobs.append(job)
            continue
        field = re.match(r"^\s+(input|output|log): (.*)$", line)
        if job is not None and field:
            # "path (update)": Snakemake's mark of an update() output
            job[field.group(1)] = field.group(2).replace(" (update)", "")
        elif job is not None and line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: "):]
    total = re.search(r"^total\s+(\d+)$", text, re.M)
    assert total and int(total.group(1)) == len(jobs), f"cannot parse the dry-run:\n{text}"
    out = {}
    for job in jobs:
        if job["rule"] == "all":
            continue
        assert "log" in job and "shell" in job, job
        out[Path(job["log"]).stem] = job
    return out


def snakemake_plan(*args, cwd=ROOT) -> dict[str, dict]:
    proc = _snakemake("--dry-run", "--forceall", "--printshellcmds", "--nolock", *args, cwd=cwd)
    return parse_plan(proc.stdout + proc.stderr)


def _paths(entries) -> set[str]:
    return {e if isinstance(e, str) else next(iter(e)) for e in entries or []}


def _expand(deps) -> set[str]:
    """DVC deps with the code folders expanded to files, as Snakemake lists them."""
    out = set()
    for d in deps:
        out.update(P.code_files([d]) if d.startswith("bcd/") else [d])
    return out


def assert_same_stages(plan: dict[str, dict], dvc: dict[str, dict]) -> None:
    assert set(plan) == set(dvc)
    for name, stage in dvc.items():
        job = plan[name]
        redirect = f" > {job['log']} 2>&1"  # Snakemake keeps a log file; DVC prints the output
        assert job["shell"].endswith(redirect), job
        assert _norm(job["shell"][: -len(redirect)]) == _norm(stage["cmd"]), name
        assert set(job["output"].split(", ")) == _paths(stage.get("outs")) | _paths(
            stage.get("metrics")), name
        # a stage whose outputs were made with other settings has a Snakemake-only stamp input
        # (bcd.specrecord; DVC compares its own dvc.lock)
        inputs = {i for i in job.get("input", "").split(", ") if not i.endswith(".spec-changed")}
        # the code is one digest file per kind of stage (bcd.codedeps.write_digest), which names
        # the files it stands for
        digests = {i for i in inputs if i.startswith(str(codedeps.DIGEST_DIR))}
        assert len(digests) == 1, (name, digests)
        code = set(json.loads((ROOT / digests.pop()).read_text())["files"])
        inputs = {i for i in inputs if not i.startswith(str(codedeps.DIGEST_DIR))} | code
        assert inputs - {""} == _expand(stage["deps"]), name


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_committed_dvc_yaml_is_current(at_root):
    fresh = dvcfile.dvc_yaml_text(P.load_params(["params/default.yaml"]))
    assert (ROOT / "dvc.yaml").read_text() == fresh, (
        "dvc.yaml is stale: run `python -m bcd dvc-yaml --params params/default.yaml`")


def test_default_plan_matches_dvc_yaml(at_root):
    plan = snakemake_plan()
    rules = [job["rule"] for job in plan.values()]
    assert {r: rules.count(r) for r in set(rules)} == {
        "data": 1, "dataset": 1, "teacher": 5, "evaluate_teacher": 5, "train": 93 + 32,
        "evaluate": 93 + 32,
        "table": 4, "figures": 1}   # Table V: its data, 3 teachers, 16 runs x 2 seeds
    assert_same_stages(plan, yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


def test_micro_plan_matches_its_dvc_yaml(at_root, tmp_path):
    out = tmp_path / "dvc.yaml"
    _run([sys.executable, "-m", "bcd", "dvc-yaml", "--params", "params/default.yaml",
          "--params", "params/micro.yaml", "--out", str(out)])
    stages = yaml.safe_load(out.read_text())["stages"]
    # data, 2 teachers, 4 runs (train+evaluate), 3 tables, the figures
    assert len(stages) == 1 + 2 * 2 + 4 * 2 + 3 + 1
    assert all("--params params/default.yaml --params params/micro.yaml" in s["cmd"]
               for s in stages.values())
    assert_same_stages(snakemake_plan("--configfile", "params/micro.yaml"), stages)


def test_paper_plan_matches_its_dvc_yaml(at_root, tmp_path):
    """The multi-dataset profile: one data stage per dataset, every table row's run x seed
    planned, and the same stages as its dvc.yaml (written to a temporary file: the committed
    dvc.yaml is the default profile's)."""
    out = tmp_path / "dvc.yaml"
    _run([sys.executable, "-m", "bcd", "dvc-yaml", "--params", "params/default.yaml",
          "--params", "params/paper.yaml", "--out", str(out)])
    stages = yaml.safe_load(out.read_text())["stages"]
    plan = snakemake_plan("--configfile", "params/paper.yaml")
    rules = [job["rule"] for job in plan.values()]
    assert {r: rules.count(r) for r in set(rules)} == {
        "dataset": 5, "teacher": 8, "evaluate_teacher": 8, "train": 300, "evaluate": 300,
        "table": 11, "figures": 1}
    cfg = P.load_params(["params/default.yaml", "params/paper.yaml"])
    for name, table in cfg["tables"].items():
        assert plan[f"table-{name}"]["rule"] == "table"
        for row in P.table_rows(table):
            for seed in cfg["seeds"]:
                job = plan[f"train-{row['run']}-seed{seed}"]
                dataset = cfg["runs"][row["run"]]["dataset"]
                assert f"data/paper/checked/{dataset}" in job["input"].split(", "), job
                assert plan[f"evaluate-{row['run']}-seed{seed}"]["rule"] == "evaluate"
    for key in ("voc12aug", "cityscapes", "ade20k", "coco_stuff10k"):
        assert plan[f"data-{key}"]["output"] == f"data/paper/checked/{key}"
    assert_same_stages(plan, stages)


def test_dvc_reads_the_same_stages():
    pytest.importorskip("dvc", reason="dvc is installed by tools/setup_env.sh")
    if not (ROOT / ".dvc").is_dir():
        pytest.skip("no .dvc/ (run `dvc init`)")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = _run([str(BIN / "dvc"), "stage", "list", "--name-only"]).stdout.split()
    assert listed == list(stages)
    # --force: on a fresh checkout a plain --dry stops at the first missing output folder.
    dry = _run([str(BIN / "dvc"), "repro", "--dry", "--force"]).stdout
    planned = dict(re.findall(r"^Running stage '([^']+)':\n> (.*)$", dry, re.M))
    assert planned == {name: s["cmd"] for name, s in stages.items()}


def test_snakemake_rejects_a_bad_overlay_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  bd:\n    loss_weight: -1.0\n")
    proc = _snakemake("--dry-run", "--nolock", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    message = f"{bad}: methods.bd.loss_weight: -1.0 is less than the minimum of 0"
    assert message in proc.stdout + proc.stderr


def test_snakemake_refuses_config_overrides():
    proc = _snakemake("--dry-run", "--nolock", "--config", "profile=other", check=False)
    assert proc.returncode != 0 and "--configfile" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------
# Rerun triggers, end to end with stand-in stage commands
# ----------------------------------------------------------------------------------------------
FAKE_MAIN = '''"""Stand-in stage commands: write each stage's outputs from the resolved params, no training."""
import argparse, hashlib, json
from pathlib import Path
from bcd import figures, params as P, tables

ap = argparse.ArgumentParser()
ap.add_argument("command")
ap.add_argument("--params", action="append")
for opt in ("--teacher", "--run", "--seed", "--table"):
    ap.add_argument(opt)
a = ap.parse_args()
cfg = P.load_params(a.params)
seed = None if a.seed is None else int(a.seed)


def write(path, data):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, sort_keys=True))


def write_weights(path, data):
    """Weights files are zip archives, as torch writes them (a truncated one is rebuilt)."""
    import zipfile

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("data.json", date_time=(2020, 1, 1, 0, 0, 0)),
                   json.dumps(data, sort_keys=True))


if a.command == "data":
    write(P.data_dir(cfg) / "meta.json", cfg["data"])
elif a.command == "teacher":
    p = P.teacher_paths(cfg, a.teacher)
    write_weights(p["model"], P.resolve_teacher(cfg, a.teacher))
    write(p["train_log"], [])
elif a.command == "train":
    p = P.run_paths(cfg, a.run, seed)
    write_weights(p["model"], [P.resolve_run(cfg, a.run), seed])
    write(p["distill_heads"], sorted(cfg["runs"][a.run].get("distill", [])))
    cols = figures.curve_columns(cfg, a.run)
    write(p["train_log"], {part: [{c: i + 1.0 for c in cols[part]} for i in range(2)]
                           for part in ("train", "val")})
elif a.command == "evaluate":
    kind, name = ("teacher", a.teacher) if a.teacher else ("student", a.run)
    p = P.teacher_paths(cfg, a.teacher) if a.teacher else P.run_paths(cfg, a.run, seed)
    digest = int(hashlib.md5(Path(p["model"]).read_bytes()).hexdigest(), 16)
    write(p["metrics"], {"kind": kind, "name": name, "seed": seed, "mIoU": digest % 10000 / 100,
                         "params": 1000, "flops": 1e6, "input_shape": [3, 32, 32]})
    write(p["summary"], {"mIoU": digest % 10000 / 100, "params": 1000, "flops": 1e6})
elif a.command == "table":
    tables.write_table(cfg, a.table)
elif a.command == "figures":
    figures.export_curves(cfg)
    for formats in P.figure_paths(cfg).values():
        for path in formats.values():
            write(path, "a figure")

# what bcd.cli does after a stage succeeded: record the settings its outputs were made with
from bcd import specrecord
kind = {"evaluate": "evaluate-teacher" if a.teacher else "evaluate"}.get(a.command, a.command)
name = a.teacher or a.run or a.table
specrecord.record(cfg, kind, name, seed)
'''
USES_BD = {"r18-bcd", "r18-ifvd-bcd"}  # the micro profile's runs with the BD term


def change_bd_weight(root: Path) -> None:
    """Edit methods.bd.loss_weight in params/default.yaml, as a user would."""
    path = root / "params" / "default.yaml"
    text, n = re.subn(r"(?m)^(  bd:\n(?:    .*\n)*?    loss_weight: )[0-9.]+", r"\g<1>5.0",
                      path.read_text())
    assert n == 1
    path.write_text(text)
    assert P.load_params([path])["methods"]["bd"]["loss_weight"] == 5.0


@pytest.fixture
def sandbox(project_copy):
    """A copy of the workflow whose `python -m bcd` writes outputs without training."""
    root = project_copy((*WORKFLOW, "dvc.yaml", ".dvcignore"), "sandbox")
    (root / "bcd" / "__main__.py").write_text(FAKE_MAIN)
    return root


def dvc_project(sandbox, micro_dvc_yaml=True) -> str:
    """`dvc init` in the sandbox (with the micro profile's dvc.yaml); returns the dvc binary."""
    if micro_dvc_yaml:
        Path(sandbox / "dvc.yaml").write_text(dvcfile.dvc_yaml_text(P.load_params(
            ["params/default.yaml", "params/micro.yaml"])))
    dvc = str(BIN / "dvc")
    _run([dvc, "init", "--no-scm", "-q"], cwd=sandbox)
    return dvc


def assert_nothing_to_do(sandbox) -> None:
    again = _snakemake("--dry-run", "--configfile", "params/micro.yaml", cwd=sandbox)
    assert "Nothing to be done" in again.stdout + again.stderr


def assert_bd_change_reruns_only_bd_runs(sandbox) -> None:
    """After methods.bd.loss_weight changes, Snakemake plans the runs using bd and what
    follows them (their evaluations, the tables, the figures), nothing else."""
    change_bd_weight(sandbox)
    dry = _snakemake("--dry-run", "--printshellcmds", "--configfile", "params/micro.yaml",
                     cwd=sandbox)
    plan = parse_plan(dry.stdout + dry.stderr)
    assert {n for n, j in plan.items() if j["rule"] == "train"} == {
        f"train-{r}-seed0" for r in USES_BD}
    assert {j["rule"] for j in plan.values()} == {"train", "evaluate", "table", "figures"}


def test_snakemake_reruns_only_the_runs_that_use_a_changed_method(sandbox):
    _snakemake("--configfile", "params/micro.yaml", cwd=sandbox)
    assert (sandbox / "results/micro/tables/table1.tex").is_file()
    assert_nothing_to_do(sandbox)
    assert_bd_change_reruns_only_bd_runs(sandbox)


def test_dvc_reruns_only_the_runs_that_use_a_changed_method(sandbox, monkeypatch):
    pytest.importorskip("dvc", reason="dvc is installed by tools/setup_env.sh")
    monkeypatch.chdir(sandbox)
    dvc = dvc_project(sandbox)
    first = _run([dvc, "repro"], cwd=sandbox).stdout
    assert first.count("Running stage") == 17
    assert "up to date" in _run([dvc, "status"], cwd=sandbox).stdout
    # the evaluations' metrics files and the figures stage's plots, as DVC reads them
    shown = json.loads(_run([dvc, "metrics", "show", "--json"], cwd=sandbox).stdout)
    (workspace,) = shown.values()  # one revision: the workspace ("" without git)
    metrics = workspace["data"]
    assert len(metrics) == 6 and all("mIoU" in m["data"] for m in metrics.values())
    plots = json.loads(_run([dvc, "plots", "show", "--json"], cwd=sandbox).stdout)["data"]
    assert {"train-loss", "distill-losses", "r_t", "val-miou", "table1-miou",
            "results/micro/figures/qualitative.png"} <= set(plots)
    values = plots["distill-losses"][0]["content"]["data"]["values"]
    assert values and all(v["distill_loss_bd"] and v["distill_loss_cd"] for v in values)
    change_bd_weight(sandbox)
    status = json.loads(_run([dvc, "status", "--json"], cwd=sandbox).stdout)
    assert set(status) == {f"train-{r}-seed0" for r in USES_BD}
    second = _run([dvc, "repro"], cwd=sandbox).stdout
    ran = set(re.findall(r"^Running stage '([^']+)'", second, re.M))
    assert ran == ({f"train-{r}-seed0" for r in USES_BD}
                   | {f"evaluate-{r}-seed0" for r in USES_BD}
                   | {"table-table1", "table-table3", "figures"})


def test_snakemake_reruns_what_dvc_built_when_a_method_changes(sandbox, monkeypatch):
    """Outputs built by `dvc repro` carry no Snakemake metadata; the settings each stage
    recorded (bcd.specrecord) still make Snakemake rerun exactly the affected runs."""
    pytest.importorskip("dvc", reason="dvc is installed by tools/setup_env.sh")
    monkeypatch.chdir(sandbox)
    _run([dvc_project(sandbox), "repro"], cwd=sandbox)
    assert_nothing_to_do(sandbox)
    assert_bd_change_reruns_only_bd_runs(sandbox)
    # run it: the new records match, so a second call has nothing to do
    _snakemake("--configfile", "params/micro.yaml", cwd=sandbox)
    assert_nothing_to_do(sandbox)


def test_dvc_runs_another_profile_from_its_own_pipeline_file(sandbox, monkeypatch):
    """`python -m bcd dvc-yaml --out pipelines/micro/dvc.yaml` writes a profile's pipeline
    beside the committed dvc.yaml (stages with `wdir: ../..`): `dvc repro` on it builds that
    profile's outputs at the usual root-relative paths, and the committed file is untouched."""
    pytest.importorskip("dvc", reason="dvc is installed by tools/setup_env.sh")
    monkeypatch.chdir(sandbox)
    committed = Path("dvc.yaml").read_text()
    _run([sys.executable, "-c", "import sys; from bcd.cli import main; sys.exit(main())",
          "dvc-yaml", "--params", "params/default.yaml", "--params", "params/micro.yaml",
          "--out", "pipelines/micro/dvc.yaml"], cwd=sandbox)  # (the sandbox's __main__ is fake)
    dvc = dvc_project(sandbox, micro_dvc_yaml=False)
    out = _run([dvc, "repro", "pipelines/micro/dvc.yaml"], cwd=sandbox).stdout
    assert out.count("Running stage") == 17
    assert (sandbox / "results/micro/tables/table1.csv").is_file()
    assert (sandbox / "runs/micro/r18-bcd/seed0/model.pth").is_file()
    assert not (sandbox / "pipelines/micro/runs").exists()
    assert "up to date" in _run([dvc, "status", "pipelines/micro/dvc.yaml"], cwd=sandbox).stdout
    plots = json.loads(_run([dvc, "plots", "show", "--json"], cwd=sandbox).stdout)["data"]
    assert any(k.endswith("table1-miou") for k in plots), sorted(plots)
    assert Path("dvc.yaml").read_text() == committed
