"""The one weights format of bcd and its trust rule: checkpoints handed to bcd are untrusted
input, loaded as weights only (``torch.load(weights_only=True)``) unless the user vouches for
them (``BCD_TRUST_CHECKPOINTS=1`` / ``--trust-checkpoints``). Plain torch: no OpenMMLab import,
nothing of bcd above :mod:`bcd.atomic`."""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from bcd.atomic import atomic_write


def save_weights(module: torch.nn.Module, path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Save plain weights (loadable with ``weights_only=True``) atomically."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save({"state_dict": state, "meta": dict(meta)}, tmp))


TRUST_ENV = "BCD_TRUST_CHECKPOINTS"  # =1: the user vouches for every checkpoint (full unpickling)


class UntrustedCheckpointError(ValueError):
    """A checkpoint from outside the project needs full unpickling (arbitrary code execution)."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *,
                    trusted: bool = False) -> Any:
    """``torch.load`` under bcd's one trust rule, for every file bcd reads (its own weights
    files here, and mmengine's checkpoint loader through :mod:`bcd.mm.compat`).

    A file is loaded fully only when ``trusted`` (a checkpoint the project wrote in its own run
    folders) or when the user vouches for every file (``BCD_TRUST_CHECKPOINTS=1``,
    ``--trust-checkpoints``); anything else is untrusted input, loaded as weights only
    (``weights_only=True``). An untrusted file that needs unpickling raises
    :class:`UntrustedCheckpointError`, a truncated or corrupt one ``ValueError``, both naming the
    file; a missing one ``FileNotFoundError``.
    """
    if trusted or os.environ.get(TRUST_ENV) == "1":
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated/corrupt/pickled files raise many types
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Weights only load failed" in str(err):
            raise UntrustedCheckpointError(
                f"{path}: not plain weights; loading it fully would unpickle arbitrary Python "
                "objects, which can execute code. Convert it to a plain state dict "
                "(torch.save(model.state_dict(), ...)), or, only for a file you trust, rerun with "
                f"--trust-checkpoints ({TRUST_ENV}=1). (torch said: {first})") from err
        raise ValueError(f"{path}: not a readable weights file ({first})") from err


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a weights file written by :func:`save_weights` (or any plain state dict), weights only."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a weights file (expected a dict of tensors under "
                         "'state_dict')")
    return state


def load_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict :func:`save_weights` stored (empty for a foreign weights file)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return meta if isinstance(meta, dict) else {}


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path) -> None:
    """Refuse a checkpoint whose keys or shapes do not match ``model`` exactly."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} shape mismatches (e.g. {k}: checkpoint "
                          f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise ValueError(f"{path} does not fit the model's architecture: " + "; ".join(detail))
