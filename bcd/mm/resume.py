"""Exact resume of killed runs on top of mmengine's own resume.

mmengine's ``Runner(resume=True)`` restores the model, the optimiser, the LR schedule and the
iteration counter from the work dir's ``last_checkpoint``, and its ``IterBasedTrainLoop`` skips
the batches already trained. Two things keep the resumed run from being *identical* to an
uninterrupted one, and this module fixes both:

1. The random number generators (Python, numpy, torch) are not in the checkpoint, so dropout
   masks and data augmentation differ after a resume. :class:`RNGStateHook` stores them in every
   checkpoint and hands them back on resume.
2. Skipping the trained batches runs the data pipeline again (with ``num_workers=0`` in the main
   process), which consumes the RNGs. :class:`ResumableIterBasedTrainLoop` therefore restores the
   saved states *after* the skip, right before the first new batch is drawn.

The two go together; :func:`bcd.mm.configs.runner_config` always uses both.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner import IterBasedTrainLoop

RNG_KEY = "bcd_rng_state"


def capture_rng_state() -> dict:
    """The Python, numpy and torch (CPU, and CUDA if used) generator states, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@HOOKS.register_module(force=True)
class RNGStateHook(Hook):
    """Save the RNG states in every checkpoint; keep them for the loop on resume."""

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self.pending: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = capture_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.pending = checkpoint.get(RNG_KEY)


@LOOPS.register_module(force=True)
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` whose resume continues the RNG streams of the interrupted run.

    Identical to mmengine's loop except that, after skipping the batches already trained, it
    restores the generator states :class:`RNGStateHook` found in the checkpoint.
    """

    def run(self) -> None:
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        if self._iter > 0:
            print_log(f"resuming at iteration {self._iter}: skipping the batches already trained",
                      logger="current", level=logging.WARNING)
            for _ in range(self._iter):
                next(self.dataloader_iterator)
            hooks = [h for h in self.runner.hooks if isinstance(h, RNGStateHook)]
            if hooks and hooks[0].pending is not None:
                restore_rng_state(hooks[0].pending)
                hooks[0].pending = None
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model
