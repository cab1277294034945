"""Fair distillation runs: a teacher entirely in eval mode, and seeds paired with plain runs.

Two things made mmrazor's ``SingleTeacherDistill`` bias every comparison between a plain run and
a distilled run of one seed (docs/method.md, "Fair comparisons: teacher mode and paired seeds"):

1. Its ``train()`` puts only the teacher's BatchNorm layers in eval mode; the mmseg heads'
   dropout (p = 0.1) stayed active, so every method distilled from a randomly perturbed teacher
   whose dropout masks also consumed the global random numbers.
2. Building the distiller and the teacher draws random numbers after the student is built, and
   their weight initialisation draws more, so the student's own initialisation and the training
   stream (augmentation, student dropout) depended on which distiller was built.

:class:`PairedTeacherDistill` fixes both for the model; :class:`TrainingSeedHook` re-seeds the
global generators from the run's seed right before the first iteration, so every run of a seed
(any model, plain or distilled) starts training from the same random stream.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner.utils import set_random_seed
from mmrazor.models.algorithms import SingleTeacherDistill
from mmrazor.registry import MODELS

from bcd.mm.resume import capture_rng_state, restore_rng_state


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without moving the global Python, numpy and torch random streams."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def training_seed(seed: int) -> int:
    """The seed the global generators get right before training (derived from the run's seed,
    so training draws do not replay the weight initialisation's stream)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, 0x62636474]).generate_state(1)[0])


@MODELS.register_module(force=True)
class PairedTeacherDistill(SingleTeacherDistill):
    """mmrazor's ``SingleTeacherDistill`` with the teacher entirely in eval mode and the student
    on the seed's random stream as in a plain run.

    - Teacher mode: after every ``train()`` call and before every teacher forward, every module
      of the (non-trainable) teacher has ``training == False``: no dropout, no drop-path, frozen
      BatchNorm statistics (mmrazor's ``teacher_norm_eval`` covered BatchNorm only).
    - Paired seeds: the student is built first; the distiller (connectors, learnable loss heads)
      and the teacher (built, initialised and loaded) are built with the global generators
      restored afterwards, and :meth:`init_weights` initialises the student first and the rest
      with the generators restored. The student therefore gets the very weights a plain run of
      the same seed gets, and the stream after initialisation is the plain run's too.

    Arguments are ``SingleTeacherDistill``'s. With ``teacher_trainable=True`` the teacher keeps
    mmrazor's behaviour (it trains).
    """

    def __init__(self, architecture, **kwargs) -> None:
        if isinstance(architecture, dict):
            architecture = MODELS.build(architecture)
        with preserved_rng():
            super().__init__(architecture=architecture, **kwargs)
        # connectors that read a model's modules (CrossKD's teacher-head tail, the detector
        # heads' held features and targets: bcd.mm.registry) get them handed over here, held
        # outside the module tree (no duplicated parameters, nothing for the optimiser)
        for connector in self.distiller.connectors.values():
            bind = getattr(connector, "bind_models", None)
            if callable(bind):
                bind(self.student, self.teacher)
        self._teacher_eval()
        if not self.teacher_trainable:
            # mmrazor runs a frozen teacher with mode="loss" only for its recorders; its losses
            # are discarded. The "tensor" forward runs the same modules the recorders tap
            # (backbone, decode head) without the auxiliary head, the resized logits' CE and
            # the accuracy: same recorded values, less work. When every teacher recorder taps
            # the backbone (BD/CD alone), the teacher runs extract_feat only: its decode head
            # (a Mask2Former's pixel and transformer decoders) would compute nothing recorded.
            # A detector's teacher (mmdet) runs extract_feat (backbone + FPN) and its dense head
            # (GFL's/RetinaNet's head, Cascade's RPN: the last module a method reads), which is
            # its "tensor" forward without Cascade's RoI heads: they would compute nothing
            # recorded, and mmdet 3.3's tensor-mode Cascade forward fails on flipped training
            # images (merge_aug_masks slices a tensor with ::-1).
            sources = [r.source for r in self.distiller.teacher_recorders.recorders.values()]
            self._teacher_backbone_only = bool(sources) and all(
                src == "backbone" or src.startswith("backbone.") for src in sources)
            self._teacher_dense_head = None
            if type(self.teacher).__module__.startswith("mmdet.") and not any(
                    "roi_head" in src for src in sources):
                self._teacher_dense_head = next(
                    (h for h in ("rpn_head", "bbox_head") if hasattr(self.teacher, h)), None)
            self.teacher.loss = self._teacher_forward

    def init_weights(self) -> None:
        if not self.student.is_init:
            self.student.init_weights()  # on the global stream, as a plain run's model
        with preserved_rng():
            super().init_weights()

    def _teacher_eval(self) -> None:
        if not self.teacher_trainable:
            self.teacher.eval()

    def train(self, mode: bool = True):
        if self.teacher_trainable:
            super().train(mode)
            return self
        # One pass over the modules (the training loop calls this every iteration): the
        # student and the distiller take ``mode``, the frozen teacher is always in eval mode.
        # mmrazor's version walked the teacher three times (train, its BatchNorms, eval).
        self.training = mode
        for child in self.children():
            child.train(mode and child is not self.teacher)
        return self

    def _teacher_forward(self, inputs, data_samples=None) -> dict:
        if self._teacher_backbone_only:
            self.teacher.extract_feat(inputs)
        elif self._teacher_dense_head is not None:
            getattr(self.teacher, self._teacher_dense_head)(self.teacher.extract_feat(inputs))
        else:
            self.teacher(inputs, data_samples, mode="tensor")
        return {}

    def loss(self, batch_inputs, data_samples=None):
        self._teacher_eval()  # whatever set modules of the teacher to training since train()
        return super().loss(batch_inputs, data_samples)


@HOOKS.register_module(force=True)
class TrainingSeedHook(Hook):
    """Re-seed the global generators with :func:`training_seed` of ``runner.seed`` before the
    first iteration (after the model is built and initialised).

    Every run of one seed then draws its augmentation and dropout from the same stream, whatever
    its model's construction consumed. On resume, :class:`bcd.mm.resume.ResumableIterBasedTrainLoop`
    restores the checkpoint's states afterwards, so exact resume is unchanged.
    """

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        set_random_seed(training_seed(runner.seed))  # Python, numpy, torch (every device)
