"""Multi-process training through mmengine's launcher: ``python -m bcd train ... --launcher
pytorch`` started by ``torchrun --nproc_per_node N``.

- The process group is set up here, before mmengine's Runner (which then finds it ready): NCCL
  with one GPU per process (``LOCAL_RANK``) when CUDA is available, gloo on CPU. mmengine's own
  ``init_dist`` would call ``torch.cuda.set_device`` on a CPU-only machine and fail.
- Each rank reads its own shard of the data: mmengine's samplers (``InfiniteSampler`` for
  training, ``DefaultSampler`` for validation) split by rank and world size. The batch size of
  the params is per process (per GPU), as in mmseg: the global batch is ``batch_size x N``.
- The model is wrapped in DDP (:class:`BCDDistributedDataParallel`: mmengine's wrapper, without
  ``device_ids`` for a CPU model, which DDP refuses); gradients are averaged over the ranks.
- Batch norm: on GPUs mmengine converts BN to SyncBN (``sync_bn='torch'``), as mmseg's
  multi-GPU configs do. SyncBN does not run on CPU (``bcd.mm.compat``, patch 3), so there each
  rank normalises with its own batch and :class:`SyncNormBuffersHook` averages the BN running
  statistics over the ranks after every iteration: every rank holds the same model at all times.
- Only rank 0 writes weights, checkpoints, logs and metrics (:func:`is_main`).
- Everything else that must agree across ranks is all-reduced where it is computed (the
  adaptive temperature's range statistic, :mod:`bcd.schedule`).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import HOOKS, MODEL_WRAPPERS

LAUNCHERS = ("none", "pytorch")


def backend() -> str:
    """``nccl`` with CUDA, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init(launcher: str = "none") -> tuple[int, int]:
    """Join the process group of a ``torchrun`` launch; returns ``(rank, world_size)``.

    ``launcher='none'``: a single process, ``(0, 1)``. ``'pytorch'``: reads torchrun's
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r} (known: {', '.join(LAUNCHERS)})")
    if launcher == "none":
        return 0, 1
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ValueError(f"--launcher pytorch needs the environment torchrun sets "
                         f"({', '.join(missing)} missing): start it with "
                         "`torchrun --nproc_per_node N -m bcd -- ...`")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend=backend())
    return dist.get_rank(), dist.get_world_size()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def broadcast(value):
    """``value`` of rank 0, on every rank (a picklable object; unchanged in a single process)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (the model itself otherwise)."""
    return model.module if is_model_wrapper(model) else model


@MODEL_WRAPPERS.register_module(force=True)
class BCDDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper; on CPU without ``device_ids`` (the Runner passes
    ``[LOCAL_RANK]``, which DDP rejects for a CPU module)."""

    def __init__(self, module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


@HOOKS.register_module(force=True)
class SyncNormBuffersHook(Hook):
    """Average the running mean/variance of every batch norm in training mode over the ranks,
    after every training iteration (CPU runs, where SyncBN is unavailable).

    Frozen modules (the teacher, in eval mode) are left alone; ``num_batches_tracked`` is the
    same on every rank. The average of the ranks' running statistics stands in for SyncBN's
    global batch statistics (the variance lacks the between-rank term).
    """

    priority = "ABOVE_NORMAL"  # before the checkpoint hook and validation

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        n = world_size()
        if n == 1:
            return
        buffers = [buf for m in unwrap(runner.model).modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   and m.training and m.track_running_stats
                   for buf in (m.running_mean, m.running_var) if buf is not None]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= n
        offset = 0
        for buf in buffers:
            buf.copy_(flat[offset:offset + buf.numel()].view_as(buf))
            offset += buf.numel()
