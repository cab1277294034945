"""Fair comparisons (bcd.mm.distill): the teacher is entirely in eval mode in every distillation
step, and a plain run and a distilled run of one seed start from the same student weights and
see the same batches (same images, same augmentation) in the same order."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

import bcd.mm  # noqa: E402,F401  (patches + registration)
from bcd import params as P  # noqa: E402
from bcd.mm import configs  # noqa: E402
from seg_batch import saved_teacher, seg_batch  # noqa: E402  (tests/seg_batch.py)

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = configs.num_classes(dict(dataset="shapes"))
TEACHER = dict(arch="pspnet", depth=50, base_channels=8)
STUDENT = dict(arch="pspnet", depth=18, base_channels=8)
DATA = dict(dataset="shapes", height=32, width=32)
# BCD (connectors and loss heads with random init) + CIRKD (memory sampling during training) +
# KD: every source of extra random numbers a distilled run has
_ALL = P.load_params([ROOT / "params/default.yaml"])["methods"]
METHODS = {name: _ALL[name] for name in ("bd", "cd", "cirkd", "kd")}
SEED, ITERS = 3, 3


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    return saved_teacher(tmp_path_factory.mktemp("teacher"), TEACHER, NUM_CLASSES)


def _config(teacher_ckpt, methods, work, root=None):
    return configs.distill_config(
        student_spec=STUDENT, teacher_spec=TEACHER, teacher_ckpt=teacher_ckpt, methods=methods,
        decay_schedule=True, data=DATA, data_root=str(root or "unused"),
        train=dict(iters=ITERS, batch_size=2, lr=0.01, momentum=0.9, weight_decay=0.0),
        work_dir=work, seed=SEED, log_file=str(Path(work) / "train_log.json"))


def _teacher_modes(teacher):
    """Register a pre-forward hook on every teacher module; returns the list it fills with
    ``(module name, module.training)`` at each call."""
    seen = []
    for name, module in teacher.named_modules():
        module.register_forward_pre_hook(lambda m, _, name=name: seen.append((name, m.training)))
    return seen


# ----------------------------------------------------------------------------------------------
# Fault 1: the teacher is entirely in eval mode
# ----------------------------------------------------------------------------------------------
def _algorithm(teacher_ckpt, kind="PairedTeacherDistill"):
    from mmrazor.registry import MODELS

    cfg = _config(teacher_ckpt, METHODS, "unused").model.to_dict()
    cfg.update(type=kind, teacher_ckpt=teacher_ckpt and str(teacher_ckpt))
    return MODELS.build(cfg)


def test_mmrazor_alone_leaves_teacher_dropout_training(teacher_ckpt):
    """The fault: mmrazor's SingleTeacherDistill only freezes the teacher's BatchNorm."""
    algo = _algorithm(teacher_ckpt, "SingleTeacherDistill")
    algo.train()
    training = [n for n, m in algo.teacher.named_modules() if m.training]
    assert "decode_head.dropout" in training


def test_teacher_in_eval_mode_inside_a_train_step(teacher_ckpt):
    from mmengine.optim import OptimWrapper

    algo = _algorithm(teacher_ckpt)
    seen = _teacher_modes(algo.teacher)
    optim = OptimWrapper(torch.optim.SGD([p for p in algo.parameters() if p.requires_grad], lr=0.01))
    inputs, samples = seg_batch(2, 32, NUM_CLASSES)
    data = dict(inputs=list((inputs * 40 + 120).clamp(0, 255)), data_samples=samples)
    algo.train()
    algo.teacher.train()  # even a direct call on the teacher does not reach its next forward
    assert algo.student.training
    losses = algo.train_step(data, optim)
    assert {"distill.loss_bd", "distill.loss_kd", "distill.loss_cirkd"} <= set(losses)
    called = {name for name, _ in seen}
    assert {"backbone", "decode_head.dropout", "decode_head.conv_seg"} <= called
    assert len(called) > len(list(algo.teacher.modules())) // 2
    assert not [name for name, training in seen if training], "teacher modules in training mode"
    assert algo.student.training and algo.student.decode_head.dropout.training


# ----------------------------------------------------------------------------------------------
# Fault 2: paired seeds
# ----------------------------------------------------------------------------------------------
def _initial_student(build, seed=SEED):
    """A model built and initialised as mmengine's Runner does (seed, build, init_weights)."""
    from mmengine.runner import set_random_seed

    set_random_seed(seed)
    model = build()
    model.init_weights()
    student = model.student if hasattr(model, "student") else model
    return {k: v.clone() for k, v in student.state_dict().items()}, torch.get_rng_state()


def test_student_init_independent_of_the_distiller(teacher_ckpt):
    from mmseg.registry import MODELS

    plain, plain_rng = _initial_student(
        lambda: MODELS.build(configs.segmentor(STUDENT, NUM_CLASSES, (32, 32))))
    paired, paired_rng = _initial_student(lambda: _algorithm(teacher_ckpt))
    assert plain.keys() == paired.keys()
    assert not [k for k in plain if not torch.equal(plain[k], paired[k])]
    assert torch.equal(plain_rng, paired_rng)  # and the stream after initialisation is the same
    # without a checkpoint the teacher is initialised by init_weights, after the student
    paired, paired_rng = _initial_student(lambda: _algorithm(None))
    assert not [k for k in plain if not torch.equal(plain[k], paired[k])]
    assert torch.equal(plain_rng, paired_rng)
    # the fault: mmrazor's algorithm builds the distiller and the teacher on the student's stream
    unpaired, _ = _initial_student(lambda: _algorithm(teacher_ckpt, "SingleTeacherDistill"))
    assert [k for k in plain if not torch.equal(plain[k], unpaired[k])]


def test_training_seed_hook_resets_the_streams():
    from types import SimpleNamespace

    from bcd.mm.distill import TrainingSeedHook, training_seed

    states = []
    for draws in (0, 5):
        torch.rand(draws), np.random.rand(draws), [random.random() for _ in range(draws)]
        TrainingSeedHook().before_train(SimpleNamespace(seed=SEED))
        states.append((torch.get_rng_state(), np.random.get_state()[1].copy(), random.random()))
    assert torch.equal(states[0][0], states[1][0]) and np.array_equal(states[0][1], states[1][1])
    assert states[0][2] == states[1][2]
    torch.manual_seed(SEED)
    assert not torch.equal(torch.get_rng_state(), states[0][0])  # not the initialisation's seed
    assert training_seed(SEED) != training_seed(SEED + 1)


@pytest.fixture(scope="module")
def runs(teacher_ckpt, tmp_path_factory):
    """A plain and a distilled run of one seed through the real runner (3 iterations each),
    recording the student's weights at the start, each batch and the RNG states."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from bcd.data.synthetic import generate

    class Record(Hook):
        priority = "LOWEST"  # after TrainingSeedHook

        def before_train(self, runner):
            model = runner.model
            student = model.student if hasattr(model, "student") else model
            self.initial = {k: v.clone() for k, v in student.state_dict().items()}
            self.teacher = _teacher_modes(model.teacher) if hasattr(model, "teacher") else None
            self.batches, self.rng = [], []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.batches.append(
                ([s.img_path for s in data_batch["data_samples"]],
                 [s.flip for s in data_batch["data_samples"]],
                 [t.clone() for t in data_batch["inputs"]]))
            self.rng.append((torch.get_rng_state(), np.random.get_state()[1].copy(),
                             random.getstate()))

    tmp = tmp_path_factory.mktemp("pairing")
    root = generate(tmp / "data", seed=0, num_train=6, num_val=1, height=32)
    out = {}
    for name, methods in (("plain", {}), ("distilled", METHODS)):
        runner = Runner.from_cfg(_config(teacher_ckpt, methods, tmp / name, root))
        record = Record()
        runner.register_hook(record)
        runner.train()
        out[name] = record
    return out


def test_plain_and_distilled_runs_start_from_the_same_student(runs):
    plain, distilled = runs["plain"].initial, runs["distilled"].initial
    assert plain.keys() == distilled.keys()
    assert not [k for k in plain if not torch.equal(plain[k], distilled[k])]


def test_plain_and_distilled_runs_see_the_same_batches(runs):
    plain, distilled = runs["plain"].batches, runs["distilled"].batches
    assert len(plain) == len(distilled) == ITERS
    for (p_ids, p_flip, p_img), (d_ids, d_flip, d_img) in zip(plain, distilled):
        assert p_ids == d_ids and p_flip == d_flip
        assert all(torch.equal(a, b) for a, b in zip(p_img, d_img))
    # the batches are shuffled and augmented, not trivially equal
    assert len({tuple(ids) for ids, _, _ in plain}) == ITERS
    # the generators stand at the same place before every step: augmentation and the student's
    # dropout draw the same numbers (CIRKD's sampling has its own generator)
    for (pt, pn, pp), (dt, dn, dp) in zip(runs["plain"].rng, runs["distilled"].rng):
        assert torch.equal(pt, dt) and np.array_equal(pn, dn) and pp == dp


def test_teacher_in_eval_mode_in_every_runner_step(runs):
    seen = runs["distilled"].teacher
    assert len(seen) >= ITERS * 10  # every module, every step
    assert not [name for name, training in seen if training]
