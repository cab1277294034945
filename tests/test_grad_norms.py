"""Diagnostics: each loss term's gradient norm on the student backbone (GradNormHook, logged in
train_log.json) and ``python -m bcd.bench grads``, on tiny models and data (seconds)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd.mm import configs, hooks  # noqa: E402
from seg_batch import seg_batch  # noqa: E402  (tests/seg_batch.py)

ROOT = Path(__file__).resolve().parents[1]
DATA = dict(dataset="shapes", height=32, width=32)
NUM_CLASSES = configs.num_classes(DATA)
TEACHER = dict(arch="pspnet", depth=50, base_channels=8)
STUDENT = dict(arch="pspnet", depth=18, base_channels=8)
METHODS = {
    "bd": dict(type="BoundaryDistillLoss", loss_weight=10.0, radius=2, teacher_probe_weight=1.0,
               fused_channels=32),
    "cd": dict(type="ContextDistillLoss", loss_weight=50.0, fused_channels=32),
    "kd": dict(type="PixelKDLoss", loss_weight=10.0, tau=1.0),
}
_names = itertools.count()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from bcd.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("shapes") / "data", seed=1, num_train=6, num_val=2,
                    height=32, width=32)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    from bcd.bench.step import random_teacher

    return random_teacher(TEACHER, NUM_CLASSES, (32, 32),
                          tmp_path_factory.mktemp("teacher") / "model.pth", 0, "test")


def _config(work: Path, data_root, teacher_ckpt, methods, iters: int):
    train = dict(iters=iters, batch_size=2, lr=0.01, momentum=0.9, weight_decay=5e-4)
    cfg = configs.distill_config(
        student_spec=STUDENT, teacher_spec=TEACHER, teacher_ckpt=teacher_ckpt, methods=methods,
        decay_schedule=True, data=DATA, data_root=data_root, train=train, work_dir=work, seed=3,
        log_file=work / "train_log.json")
    cfg.default_hooks.checkpoint = None
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.experiment_name = f"test-grad-norms-{next(_names)}"  # one MessageHub per runner
    cfg.visualizer.name = cfg.experiment_name  # and one visualizer (its folder is the run's)
    return cfg


def _train(work: Path, data_root, teacher_ckpt, methods, iters=3, grad_hook=True,
           log_interval=None, grad_interval=None):
    """Train a tiny run; its train_log.json and final state dict (student + distiller)."""
    from mmengine.runner import Runner

    cfg = _config(work, data_root, teacher_ckpt, methods, iters)
    for hook in cfg.custom_hooks:
        if hook["type"] == "TrainLogHook" and log_interval:
            hook["interval"] = log_interval
        if hook["type"] == "GradNormHook" and grad_interval:
            hook["interval"] = grad_interval
    if not grad_hook:
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h["type"] != "GradNormHook"]
    assert any(h["type"] == "GradNormHook" for h in cfg.custom_hooks) == grad_hook
    runner = Runner.from_cfg(cfg)
    runner.train()
    state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    return json.loads((work / "train_log.json").read_text()), state


def test_distilled_run_logs_grad_norms_on_the_logged_iterations(tmp_path, data_root,
                                                               teacher_ckpt, monkeypatch):
    calls = []
    measure = hooks.term_grad_norms
    monkeypatch.setattr(hooks, "term_grad_norms",
                        lambda terms, params: calls.append(sorted(terms)) or measure(terms, params))
    log, _ = _train(tmp_path, data_root, teacher_ckpt, METHODS, iters=5, log_interval=3)
    assert [row["iter"] for row in log["train"]] == [1, 3, 5]  # iteration 1, every 3rd, the last
    # measured: iteration 1, the last, every 51st (the multiple of 3 that is >= 50)
    assert len(calls) == 2, "grad norms computed on an iteration that is not measured"
    terms = {"student.decode.loss_ce", "student.aux.loss_ce", "distill.loss_bd",
             "distill.loss_cd", "distill.loss_kd"}
    assert calls[0] == sorted(terms)  # accuracies skipped
    for row in log["train"]:
        norms = {k[len("grad_norm."):]: v for k, v in row.items() if k.startswith("grad_norm.")}
        if row["iter"] == 3:
            assert not norms
            continue
        assert set(norms) == terms | {"total"}
        assert all(math.isfinite(v) and v > 0 for v in norms.values()), norms
    # the BD norm is its student-facing part's; the two parts' values are logged beside it
    first = log["train"][0]
    assert first["distill.loss_bd"] == pytest.approx(first["loss_bd_kd"] + first["loss_bd_probe"])


def test_plain_run_logs_grad_norms_at_iteration_1(tmp_path, data_root):
    log, _ = _train(tmp_path, data_root, None, {}, iters=2)
    first = log["train"][0]
    assert first["iter"] == 1
    assert {k for k in first if k.startswith("grad_norm.")} == {
        "grad_norm.decode.loss_ce", "grad_norm.aux.loss_ce", "grad_norm.total"}
    assert first["grad_norm.total"] > 0


def test_training_is_bit_identical_with_and_without_the_hook(tmp_path, data_root, teacher_ckpt):
    with_hook, state_with = _train(tmp_path / "with", data_root, teacher_ckpt, METHODS, iters=3,
                                   grad_interval=1)  # measured in every iteration
    without, state_without = _train(tmp_path / "without", data_root, teacher_ckpt, METHODS,
                                    iters=3, grad_hook=False)
    assert state_with.keys() == state_without.keys()
    changed = [k for k in state_with if not torch.equal(state_with[k], state_without[k])]
    assert not changed, f"training differs with the hook: {changed[:5]}"
    assert len(with_hook["train"]) == len(without["train"]) == 3
    for a, b in zip(with_hook["train"], without["train"]):
        assert any(k.startswith("grad_norm.") for k in a)
        assert {k: v for k, v in a.items() if not k.startswith("grad_norm.")} == b


def _algorithm(teacher_ckpt, methods):
    from mmrazor.registry import MODELS

    cfg = _config(Path("unused"), "unused", teacher_ckpt, methods, iters=10)
    torch.manual_seed(0)
    algo = MODELS.build(cfg.model.to_dict())
    algo.train()
    return algo


def _losses(algo):
    inputs, samples = seg_batch(2, 32, NUM_CLASSES)
    return algo.parse_losses(algo(inputs, samples, mode="loss"))


def _hand_norm(term, params) -> float:
    for p in params:
        p.grad = None
    term.backward(retain_graph=True)
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params
                         if p.grad is not None))
    for p in params:
        p.grad = None
    return norm


def test_grad_norms_equal_a_hand_computation(teacher_ckpt):
    algo = _algorithm(teacher_ckpt, {k: METHODS[k] for k in ("bd", "cd")})
    params = [p for p in hooks.student_backbone(algo).parameters() if p.requires_grad]
    assert params and all(p.grad is None for p in algo.parameters())
    loss, log_vars = _losses(algo)
    terms = hooks.loss_terms(log_vars)
    assert set(terms) == {"student.decode.loss_ce", "student.aux.loss_ce", "distill.loss_bd",
                          "distill.loss_cd"}
    norms = hooks.term_grad_norms(terms, params)
    assert all(p.grad is None for p in algo.parameters()), "the measurement wrote .grad"
    assert norms["distill.loss_cd"] == pytest.approx(_hand_norm(terms["distill.loss_cd"], params),
                                                     rel=1e-6)
    assert norms["student.decode.loss_ce"] == pytest.approx(
        _hand_norm(terms["student.decode.loss_ce"], params), rel=1e-6)
    assert norms["total"] == pytest.approx(_hand_norm(loss, params), rel=1e-5)
    assert norms["distill.loss_cd"] > 0


def test_a_term_that_does_not_reach_the_student_backbone_has_norm_zero(teacher_ckpt):
    # BD with alpha = 0: its value is the teacher-side probe alone (plus 0 x the KD term)
    algo = _algorithm(teacher_ckpt, {"bd": dict(METHODS["bd"], loss_weight=0.0)})
    params = [p for p in hooks.student_backbone(algo).parameters() if p.requires_grad]
    _, log_vars = _losses(algo)
    norms = hooks.term_grad_norms(hooks.loss_terms(log_vars), params)
    assert float(log_vars["distill.loss_bd"]) > 0.1  # the probe, near ln 2
    assert norms["distill.loss_bd"] == 0.0
    assert norms["student.decode.loss_ce"] > 0
    # a term whose graph holds no student parameter at all (torch returns no gradient)
    bd = algo.distiller.distill_losses["loss_bd"]
    assert hooks.term_grad_norms({"probe": bd.teacher_conv.weight.pow(2).sum()},
                                 params) == {"probe": 0.0, "total": 0.0}


def test_loss_terms_are_loss_named_tensors_that_require_grad():
    w = torch.ones(2, requires_grad=True)
    log_vars = {"loss": w.sum() * 3, "decode.loss_ce": w.sum(), "decode.acc_seg": w.sum(),
                "distill.loss_const": torch.tensor(1.0), "distill.loss_kd": (2 * w).sum()}
    assert list(hooks.loss_terms(log_vars)) == ["decode.loss_ce", "distill.loss_kd"]
    norms = hooks.term_grad_norms(hooks.loss_terms(log_vars), [w])
    assert norms == pytest.approx({"decode.loss_ce": math.sqrt(2), "distill.loss_kd":
                                   math.sqrt(8), "total": math.sqrt(18)})


def test_student_backbone_of_both_model_kinds(teacher_ckpt):
    from mmseg.registry import MODELS

    algo = _algorithm(teacher_ckpt, {"cd": METHODS["cd"]})
    assert hooks.student_backbone(algo) is algo.student.backbone
    plain = MODELS.build(configs.segmentor(STUDENT, NUM_CLASSES, (32, 32)))
    assert hooks.student_backbone(plain) is plain.backbone
    with pytest.raises(TypeError, match="no student backbone"):
        hooks.student_backbone(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------
# python -m bcd.bench grads
# ----------------------------------------------------------------------------------------------
def _overlay(tmp_path: Path, monkeypatch) -> list[str]:
    """default + micro + tiny models (base width 8); data and runs under tmp_path (the cwd)."""
    monkeypatch.chdir(tmp_path)
    tiny = {"paths": {"data": "data", "runs": "runs", "results": "results"},
            "models": {name: {"base_channels": 8} for name in ("pspnet-r101", "pspnet-r18")},
            "methods": {"bd": {"fused_channels": 32}, "cd": {"fused_channels": 32}},
            "train": {"student": {"batch_size": 2}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return ["--params", str(ROOT / "params/default.yaml"), "--params",
            str(ROOT / "params/micro.yaml"), "--params", str(path)]


def test_bench_grads_prints_the_shares(tmp_path, capsys, monkeypatch):
    from bcd.bench.cli import main

    out_json = tmp_path / "grads.json"
    assert main(["grads", *_overlay(tmp_path, monkeypatch), "--run", "r18-bcd", "--run", "r18",
                 "--random-teacher", "--synthetic-batch", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "r18-bcd, seed 0: pspnet-r18 <- pspnet-r101 (teacher: untrained" in text
    assert "teacher probe" in text
    result = json.loads(out_json.read_text())
    bcd_run, plain = result["runs"]
    terms = {t["term"]: t for t in bcd_run["terms"]}
    assert list(terms) == ["student.decode.loss_ce", "student.aux.loss_ce", "distill.loss_bd",
                           "distill.loss_cd", "total"]
    assert terms["student.decode.loss_ce"]["share_of_ce_pct"] == pytest.approx(100.0)
    cd = terms["distill.loss_cd"]
    assert cd["share_of_ce_pct"] == pytest.approx(
        100 * cd["grad_norm"] / terms["student.decode.loss_ce"]["grad_norm"])
    assert terms["distill.loss_bd"]["loss"] == pytest.approx(
        terms["distill.loss_bd"]["student_facing_loss"]
        + terms["distill.loss_bd"]["teacher_probe_loss"])
    assert bcd_run["batch"] == {"size": 2, "crop": [32, 32], "source": "synthetic"}
    assert [t["term"] for t in plain["terms"]] == ["decode.loss_ce", "aux.loss_ce", "total"]
    assert plain["teacher"] is None


def test_bench_grads_on_the_dataset_and_its_errors(tmp_path, capsys, monkeypatch):
    from bcd.bench.cli import main
    from bcd.data.synthetic import generate

    args = ["grads", *_overlay(tmp_path, monkeypatch), "--run", "r18-cd"]
    with pytest.raises(SystemExit, match="python -m bcd teacher .*--random-teacher"):
        main(args)
    with pytest.raises(SystemExit, match="--synthetic-batch"):
        main([*args, "--random-teacher"])  # no dataset yet
    with pytest.raises(SystemExit, match="--batch must be >= 2"):
        main([*args, "--batch", "1"])
    with pytest.raises(Exception, match="no-such-run"):
        main(["grads", *_overlay(tmp_path, monkeypatch), "--run", "no-such-run"])
    generate(tmp_path / "data", seed=2026, num_train=16, num_val=8, height=32, width=32,
             num_test=8)
    capsys.readouterr()
    assert main([*args, "--random-teacher"]) == 0
    text = capsys.readouterr().out
    assert "first training batch 2 x 32x32 (data)" in text and "distill.loss_cd" in text
