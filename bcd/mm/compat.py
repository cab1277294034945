"""Compatibility layer for the OpenMMLab stack on torch 2.13 (the one place for such patches).

The OpenMMLab packages are no longer released, so the project pins mmcv 2.1.0, mmengine 0.10.7,
mmsegmentation 1.2.2 and mmrazor 1.0.0 and patches their incompatibilities here. Each patch is
idempotent and has a test (``tests/test_compat.py``) that fails without it.

1. ``import mmrazor.models`` fails on torch >= 2.x: ``torch.ao.quantization.fuser_method_mappings``
   no longer has ``reverse2``, ``reverse3`` and ``reverse_sequential_wrapper2``, and mmrazor's
   quantization backend mapping builds backend configs that torch 2.13 rejects. We provide the three
   helpers and a stand-in ``mmrazor.structures.quantization.backend_config.mapping`` whose
   ``BackendConfigs`` maps every backend to ``None``. mmrazor's quantization features stay
   unavailable; distillers, recorders, connectors and losses work.
2. torch >= 2.6 loads checkpoints with ``weights_only=True``; mmengine's loader then fails on its own
   resume checkpoints (numpy scalars, ``HistoryBuffer``). Checkpoints under a *trusted* root (the
   project's own run directories, see :func:`trust_checkpoint_root`) are loaded fully; anything else
   is loaded as weights only, and a file that needs full unpickling is refused with a message that
   explains the risk and how to allow it explicitly.
3. ``SyncBN`` (mmseg's configs' default) only runs on GPUs once a process group exists: a CPU run
   with several processes (gloo) fails with "SyncBatchNorm expected input tensor to be on GPU".
   CPU runs use ``BN`` (:func:`syncbn_to_bn`); a single process tolerates either.
4. mmengine writes checkpoints in place: a run killed mid-write leaves a truncated file under the
   final name. Local checkpoints are written to a temporary sibling and renamed into place
   (:func:`save_checkpoint_atomic`), so a checkpoint file is complete or absent.
5. ImageNet weights named by a model spec's ``pretrained`` (``open-mmlab://``, ``mmcls://``,
   ``http(s)://`` or a local path) reach the backbone as ``init_cfg=dict(type='Pretrained')``. On a
   machine without network access mmengine fails deep in urllib; the ``Pretrained`` initializer is
   replaced by :class:`PretrainedWeights`, which names the URL and the model and says what to do
   (network access or a local file). Local files still go through patch 2. Tested in
   tests/test_paper_models.py.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import torch

from bcd.atomic import atomic_write
from bcd.weights import UntrustedCheckpointError, load_checkpoint

_APPLIED = False
_TRUSTED_ROOTS: set[Path] = set()


# --------------------------------------------------------------------------------------------
# Patch 1: mmrazor import on torch 2.13
# --------------------------------------------------------------------------------------------
def _reverse2(f):
    def reversed_fuser(is_qat, x, y):
        return f(is_qat, y, x)

    return reversed_fuser


def _reverse3(f):
    def reversed_fuser(is_qat, x, w):
        y, z = w
        return f(is_qat, z, y, x)

    return reversed_fuser


def _sequential_wrapper2(sequential):
    def fuser_method(is_qat, m1, m2):
        return sequential(m1, m2)

    return fuser_method


def patch_mmrazor_import() -> None:
    """Make ``import mmrazor.models`` work on torch 2.13 (see module docstring, patch 1)."""
    from torch.ao.quantization import fuser_method_mappings as fmm

    if not hasattr(fmm, "reverse2"):
        fmm.reverse2 = _reverse2
    if not hasattr(fmm, "reverse3"):
        fmm.reverse3 = _reverse3
    if not hasattr(fmm, "reverse_sequential_wrapper2"):
        fmm.reverse_sequential_wrapper2 = lambda sequential: _reverse2(_sequential_wrapper2(sequential))
    name = "mmrazor.structures.quantization.backend_config.mapping"
    if name not in sys.modules:
        stand_in = types.ModuleType(name)
        stand_in.__doc__ = "bcd stand-in: quantization backends are unavailable on torch 2.13."
        stand_in.BackendConfigs = {k: None for k in ("academic", "native", "tensorrt", "openvino")}
        sys.modules[name] = stand_in


# --------------------------------------------------------------------------------------------
# Patch 2: checkpoint loading under weights_only
# --------------------------------------------------------------------------------------------
def trust_checkpoint_root(path: str | os.PathLike) -> None:
    """Declare a directory as the project's own: checkpoints below it are loaded fully."""
    _TRUSTED_ROOTS.add(Path(path).resolve())


def is_trusted(path: str | os.PathLike) -> bool:
    """True for a file under a root :func:`trust_checkpoint_root` declared (the user's
    ``BCD_TRUST_CHECKPOINTS=1`` is applied by :func:`bcd.weights.load_checkpoint`)."""
    p = Path(path).resolve()
    return any(p == root or root in p.parents for root in _TRUSTED_ROOTS)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint: fully if it lies under a trusted root, else as weights only
    (:func:`bcd.weights.load_checkpoint`, the one trust rule).

    Raises:
        FileNotFoundError: the file does not exist.
        UntrustedCheckpointError: an untrusted file needs full unpickling.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_checkpoint(path, map_location, trusted=is_trusted(path))


def patch_checkpoint_loading() -> None:
    """Route mmengine's local checkpoint loader through :func:`load_checkpoint_file`."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        return load_checkpoint_file(filename, map_location)

    CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)


# --------------------------------------------------------------------------------------------
# Patch 3: SyncBN -> BN on CPU
# --------------------------------------------------------------------------------------------
def syncbn_to_bn(cfg: Any) -> Any:
    """Return ``cfg`` with every ``type='SyncBN'`` replaced by ``'BN'`` (recursively, in place).

    Use it for CPU runs (see patch 3); GPU runs keep SyncBN.
    """
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == "type" and value == "SyncBN":
                cfg[key] = "BN"
            else:
                syncbn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for item in cfg:
            syncbn_to_bn(item)
    return cfg


# --------------------------------------------------------------------------------------------
# Patch 4: atomic checkpoint writes
# --------------------------------------------------------------------------------------------
def save_checkpoint_atomic(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint`` for local files, written atomically (patch 4)."""
    if "://" in str(filename) or file_client_args is not None or backend_args is not None:
        return _ORIGINAL_SAVE(checkpoint, filename, file_client_args, backend_args)
    atomic_write(filename, lambda tmp: torch.save(checkpoint, tmp))
    return None


_ORIGINAL_SAVE = None


def patch_checkpoint_saving() -> None:
    """Make mmengine's Runner save local checkpoints atomically."""
    global _ORIGINAL_SAVE
    from mmengine.runner import checkpoint as mm_ckpt
    from mmengine.runner import runner as mm_runner

    if _ORIGINAL_SAVE is None:
        _ORIGINAL_SAVE = mm_ckpt.save_checkpoint
    mm_runner.save_checkpoint = save_checkpoint_atomic


# --------------------------------------------------------------------------------------------
# Patch 5: pretrained backbone weights with a clear message when they cannot be fetched
# --------------------------------------------------------------------------------------------
REMOTE_PREFIXES = ("open-mmlab://", "openmmlab://", "mmcls://", "http://", "https://",
                   "modelzoo://", "torchvision://")


class PretrainedWeightsError(RuntimeError):
    """A model's pretrained weights could not be read (no network, or no such file)."""


def patch_pretrained_init() -> None:
    """Register :class:`PretrainedWeights` as mmengine's ``Pretrained`` initializer (patch 5)."""
    from mmengine.model.weight_init import PretrainedInit
    from mmengine.registry import WEIGHT_INITIALIZERS

    class PretrainedWeights(PretrainedInit):
        """mmengine's ``Pretrained`` plus ``model`` (a description used in error messages).

        Args:
            checkpoint: a local path or a URL (``open-mmlab://``, ``mmcls://``, ``http(s)://``).
            model: what the weights initialise, e.g. ``'pspnet / ResNetV1c-101 backbone'``.
            prefix, map_location: as mmengine's ``PretrainedInit``.
        """

        def __init__(self, checkpoint, model=None, prefix=None, map_location="cpu"):
            super().__init__(checkpoint, prefix=prefix, map_location=map_location)
            self.model = model

        def __call__(self, module):
            what = self.model or type(module).__name__
            remote = str(self.checkpoint).startswith(REMOTE_PREFIXES)
            try:
                return super().__call__(module)
            except UntrustedCheckpointError:
                raise
            except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
                if remote:
                    raise PretrainedWeightsError(
                        f"cannot fetch the pretrained weights {self.checkpoint} for {what}: "
                        "this machine needs network access to download them; offline, download "
                        "the file elsewhere and set the model's `pretrained` to its local path "
                        f"(docs/models.md). ({type(err).__name__}: {err})") from err
                if isinstance(err, FileNotFoundError):
                    raise PretrainedWeightsError(
                        f"pretrained weights for {what} not found: {self.checkpoint} (set the "
                        "model's `pretrained` to an existing file or a URL)") from err
                raise

    WEIGHT_INITIALIZERS.register_module(name="Pretrained", module=PretrainedWeights, force=True)


def apply() -> None:
    """Apply every patch once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    patch_mmrazor_import()
    patch_checkpoint_loading()
    patch_checkpoint_saving()
    patch_pretrained_init()
    _APPLIED = True
