"""Mixed precision for training (``train.<role>.amp``): which mmengine optimizer wrapper runs the
forward passes (student, teacher, connectors) under autocast.

- ``none``: mmengine's ``OptimWrapper``, float32.
- ``bf16``: :class:`AutocastOptimWrapper`, bfloat16 autocast without loss scaling (bfloat16 has
  float32's exponent range, so gradients do not underflow); on a GPU or on the CPU.
- ``fp16``: mmengine's ``AmpOptimWrapper`` with dynamic loss scaling; GPUs only (CPU autocast
  has no float16).

BCD's losses and the relation baselines compute in float32 whatever the autocast state
(:func:`bcd.losses.float32_math`); evaluation runs in float32.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Mapping

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

AMP_MODES = ("none", "bf16", "fp16")


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward context autocasts to ``dtype`` (default bfloat16) on the
    device mmengine trains on (CUDA when available, else the CPU)."""

    def __init__(self, dtype: str = "bfloat16", **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        from mmengine.runner.amp import autocast

        with super().optim_context(model), autocast(dtype=self.cast_dtype):
            yield


OPTIMIZERS = ("sgd", "adamw")


def optimizer_config(train: Mapping[str, Any]) -> dict:
    """The optimizer of a role's ``train`` settings: ``optimizer: sgd`` (default; lr, momentum,
    weight_decay) or ``adamw`` (lr, weight_decay, ``betas`` default (0.9, 0.999))."""
    kind = train.get("optimizer", "sgd")
    if kind == "sgd":
        return dict(type="SGD", lr=train["lr"], momentum=train["momentum"],
                    weight_decay=train["weight_decay"])
    if kind == "adamw":
        return dict(type="AdamW", lr=train["lr"], weight_decay=train["weight_decay"],
                    betas=tuple(float(b) for b in train.get("betas", (0.9, 0.999))))
    raise ValueError(f"train optimizer: unknown {kind!r} (known: {', '.join(OPTIMIZERS)})")


def optim_wrapper(train: Mapping[str, Any]) -> dict:
    """The ``optim_wrapper`` config of a role's ``train`` settings (:func:`optimizer_config`, its
    ``amp`` mode)."""
    optimizer = optimizer_config(train)
    mode = train.get("amp", "none")
    if mode == "none":
        return dict(type="OptimWrapper", optimizer=optimizer)
    if mode == "bf16":
        return dict(type="AutocastOptimWrapper", dtype="bfloat16", optimizer=optimizer)
    if mode == "fp16":
        return dict(type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic",
                    optimizer=optimizer)
    raise ValueError(f"train amp: unknown mode {mode!r} (known: {', '.join(AMP_MODES)})")


def check_device(train: Mapping[str, Any], role: str) -> None:
    """Refuse, before any work, a mode this machine cannot run (fp16 without a GPU)."""
    if train.get("amp", "none") == "fp16" and not torch.cuda.is_available():
        raise ValueError(f"train.{role}.amp is fp16, which needs a GPU (CPU autocast has no "
                         "float16); on a CPU set it to bf16 or none (a params overlay)")
