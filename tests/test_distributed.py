"""Multi-process training: `torchrun --nproc_per_node 2 -m bcd {teacher,train} --launcher pytorch`.

On the micro profile (CPU, gloo), in a copy of the project: a teacher, then a distillation run
with BD + CD (the teacher, the adaptive temperatures and their all-reduce at work), each with
two processes. The entry point is `python -m bcd`'s own `main`, wrapped by a small script that
records, per rank, which training images each batch held, every range statistic of the adaptive
temperatures (this rank's extremes and the all-reduced range), which files bcd wrote, and the
whole model's state dict after training. Checks: both ranks exit 0; per iteration the two
ranks' batches are disjoint and together cover the training set once per epoch; the model
(weights, BN statistics, temperatures) is identical on both ranks, and `model.pth` is rank 0's
student; every temperature update used the range over both ranks' batches; only rank 0 wrote
weights and training logs.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from project_copy import MICRO, PACKAGE, copy_project, run as _run_checked  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NPROC = 2
# Per process: batch 4; 2 processes x 4 = the 16 training images of the micro profile per
# iteration pair, so 2 iterations are one epoch. Validation at the end (8 images, 4 per rank).
OVERLAY = {"train": {"teacher": {"iters": 2, "batch_size": 4, "val_interval": 2},
                     "student": {"iters": 2, "batch_size": 4, "val_interval": 2}}}
RUN = "r18-bd-cd"  # distill: [bd, cd], adaptive temperatures (factor 1.05)

LAUNCH = r'''"""torchrun entry point: `python -m bcd ARGS` with per-rank recorders (test only)."""
import json, os, sys
from pathlib import Path

import torch

OUT = Path(os.environ["BCD_TEST_OUT"])
TAG, RANK = os.environ["BCD_TEST_TAG"], int(os.environ["RANK"])
record = {"samples": [], "ranges": [], "saved": [], "json_written": []}

import bcd.mm  # noqa: E402  (compat patches, registries)
import bcd.mm.hooks as hooks  # noqa: E402
import bcd.train as train  # noqa: E402
from bcd.mm.distributed import unwrap  # noqa: E402
from bcd.schedule import AdaptiveTemperature  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402

_range = AdaptiveTemperature.range_from_extremes


def range_from_extremes(self, minimum, maximum):
    out = _range(self, minimum, maximum)
    record["ranges"].append([None if minimum is None else float(minimum),
                             None if maximum is None else float(maximum), out])
    return out


_save = train.save_weights


def save_weights(module, path, meta):
    record["saved"].append(str(path))
    return _save(module, path, meta)


_write = hooks.write_json_atomic


def write_json_atomic(path, data):
    record["json_written"].append(str(path))
    return _write(path, data)


AdaptiveTemperature.range_from_extremes = range_from_extremes
train.save_weights = save_weights
hooks.write_json_atomic = write_json_atomic


@HOOKS.register_module(force=True)
class RecordRankHook(Hook):
    priority = "LOWEST"

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        record["samples"].append([Path(s.img_path).name for s in data_batch["data_samples"]])

    def after_run(self, runner):
        state = {k: v.detach().cpu().clone() for k, v in unwrap(runner.model).state_dict().items()}
        torch.save(state, OUT / f"{TAG}-state-rank{RANK}.pt")


_run = train._run


def run(config, *args, **kwargs):
    config.custom_hooks.append(dict(type="RecordRankHook"))
    return _run(config, *args, **kwargs)


train._run = run

from bcd.cli import main  # noqa: E402

code = main(sys.argv[1:])
(OUT / f"{TAG}-record-rank{RANK}.json").write_text(json.dumps(record))
sys.exit(code)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd, env, timeout=300):
    return _run_checked(args, cwd, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("dist"), PACKAGE)
    (root / "params/dist.yaml").write_text(yaml.safe_dump(OVERLAY))
    (root / "launch.py").write_text(LAUNCH)
    out = root / "record"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
           "BCD_TEST_OUT": str(out)}
    params = [*MICRO, "--params", "params/dist.yaml"]
    _run([sys.executable, "-m", "bcd", "data", *params], root, env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc_per_node", str(NPROC), "--master_addr", "127.0.0.1"]
    for tag, args in (("teacher", ["teacher", "--teacher", "pspnet-r101"]),
                      ("student", ["train", "--run", RUN, "--seed", "0"])):
        # `--`: torchrun's own parser would otherwise take `--run` for its `--run-path`
        _run([*torchrun, "--master_port", str(_free_port()), "launch.py", "--", *args, *params,
              "--launcher", "pytorch"], root, {**env, "BCD_TEST_TAG": tag})
    return root


def _records(project, tag):
    return [json.loads((project / f"record/{tag}-record-rank{r}.json").read_text())
            for r in range(NPROC)]


def _states(project, tag):
    import torch

    return [torch.load(project / f"record/{tag}-state-rank{r}.pt", weights_only=True)
            for r in range(NPROC)]


@pytest.mark.parametrize("tag", ["teacher", "student"])
def test_each_rank_reads_its_own_shard(project, tag):
    recs = _records(project, tag)
    train_set = sorted(p.name for p in (project / "data/micro/img_dir/train").iterdir())
    assert len(train_set) == 16
    per_rank = [r["samples"] for r in recs]
    assert all(len(s) == OVERLAY["train"][tag]["iters"] for s in per_rank)  # every iteration
    assert all(len(batch) == 4 for s in per_rank for batch in s)  # batch size per process
    for it in range(len(per_rank[0])):
        assert not set(per_rank[0][it]) & set(per_rank[1][it]), f"iteration {it}: shared images"
    # 2 iterations x 2 ranks x 4 = one epoch: every training image exactly once
    seen = [name for s in per_rank for batch in s for name in batch]
    assert sorted(seen) == train_set


@pytest.mark.parametrize("tag", ["teacher", "student"])
def test_every_rank_ends_with_the_same_model(project, tag):
    import torch

    first, second = _states(project, tag)
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{len(differ)} tensors differ between the ranks, e.g. {differ[:3]}"
    # BN statistics and the temperatures are part of what must agree
    assert any(k.endswith("running_mean") for k in first)
    if tag == "student":
        taus = [k for k in first if k.endswith("tau_value")]
        assert {"distiller.distill_losses.loss_bd.temperature.tau_value",
                "distiller.distill_losses.loss_cd.temperature.tau_value"} <= set(taus)


def test_outputs_are_rank_zeros_model(project):
    import torch

    state = _states(project, "student")[0]
    run = project / "runs/micro" / RUN / "seed0"
    saved = torch.load(run / "model.pth", weights_only=True)
    student = {k[len("architecture."):]: v for k, v in state.items()
               if k.startswith("architecture.")}
    assert saved["state_dict"].keys() == student.keys()
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in student.items())
    assert saved["meta"]["processes"] == NPROC
    teacher = torch.load(project / "runs/micro/teachers/pspnet-r101/model.pth",
                         weights_only=True)
    assert teacher["meta"]["processes"] == NPROC
    t_state = _states(project, "teacher")[0]
    assert all(torch.equal(teacher["state_dict"][k], v) for k, v in t_state.items())
    log = json.loads((run / "train_log.json").read_text())
    assert [row["iter"] for row in log["train"]][-1] == 2 and log["val"]


def test_only_rank_zero_writes(project):
    for tag in ("teacher", "student"):
        zero, one = _records(project, tag)
        assert one["saved"] == [] and one["json_written"] == []
        assert zero["json_written"] and zero["saved"]
    zero, _ = _records(project, "student")
    assert {Path(p).name for p in zero["saved"]} == {"model.pth", "distill_heads.pth"}


def test_adaptive_temperature_uses_the_global_batch(project):
    zero, one = (r["ranges"] for r in _records(project, "student"))
    # BD and CD each update their temperature once per iteration, on both ranks
    assert len(zero) == len(one) == 2 * OVERLAY["train"]["student"]["iters"]
    for (lo0, hi0, r0), (lo1, hi1, r1) in zip(zero, one):
        assert r0 == r1  # every rank takes the same decision
        assert r0 == pytest.approx(max(hi0, hi1) - min(lo0, lo1), rel=1e-12, abs=1e-12)
    # the ranks' own batches differ, so the global range is not just each rank's own
    assert any((lo0, hi0) != (lo1, hi1) for (lo0, hi0, _), (lo1, hi1, _) in zip(zero, one))


def test_single_process_runs_keep_their_settings(tmp_path):
    """Without a launcher nothing changes: no DDP wrapper, no per-rank seed, no extra hook."""
    from bcd import params as P
    from bcd.mm import configs

    cfg = P.load_params([ROOT / "params/default.yaml", ROOT / "params/micro.yaml"])
    spec = P.resolve_teacher(cfg, "pspnet-r101")
    kwargs = dict(spec=spec["model"], data=spec["data"], data_root=tmp_path, train=spec["train"],
                  work_dir=tmp_path / "work", seed=0, log_file=tmp_path / "log.json")
    single = configs.teacher_config(**kwargs)
    assert single.get("launcher", "none") == "none" and "model_wrapper_cfg" not in single
    assert single.randomness == {"seed": 0}
    multi = configs.teacher_config(**kwargs, launcher="pytorch")
    assert multi.launcher == "pytorch" and multi.randomness.diff_rank_seed
    assert multi.model_wrapper_cfg.type == "BCDDistributedDataParallel"
    hooks = [h["type"] for h in multi.custom_hooks]
    assert hooks == [h["type"] for h in single.custom_hooks] + ["SyncNormBuffersHook"]


def test_launcher_without_torchrun_is_explained(monkeypatch):
    from bcd.mm import distributed

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node N -m bcd"):
        distributed.init("pytorch")
    assert distributed.init("none") == (0, 1)
