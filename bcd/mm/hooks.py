"""mmengine hooks of bcd: the loss-weight decay r(t), a non-finite-loss guard, logging."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from bcd.atomic import write_json_atomic
from bcd.schedule import decay


def _scalar(value) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def _distiller(runner):
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return getattr(model, "distiller", None)


@HOOKS.register_module(force=True)
class DistillLossDecayHook(Hook):
    """Scale the named distillation losses by r(t) = 1 - (t-1)/t_max every iteration (Eq. 7-8).

    The paper counts t in epochs; with iteration-based training (the paper's 40k iterations) we
    apply r per iteration, t = runner.iter + 1, t_max = runner.max_iters (docs/method.md).

    Args:
        loss_names (Sequence[str]): keys of ``distiller.distill_losses`` to scale,
            e.g. ``('loss_bd', 'loss_cd')``.
    """

    priority = "ABOVE_NORMAL"

    def __init__(self, loss_names: Sequence[str] = ("loss_bd", "loss_cd")) -> None:
        self.loss_names = tuple(loss_names)
        self._base: dict[str, float] = {}

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        distiller = _distiller(runner)
        if distiller is None:
            raise RuntimeError("DistillLossDecayHook needs a distillation model (no .distiller)")
        r = decay(runner.iter + 1, runner.max_iters)
        for name in self.loss_names:
            if name not in distiller.distill_losses:
                raise KeyError(f"DistillLossDecayHook: no distill loss named {name!r}; "
                               f"have {sorted(distiller.distill_losses)}")
            loss = distiller.distill_losses[name]
            base = self._base.setdefault(name, float(loss.loss_weight))
            loss.loss_weight = base * r
        runner.message_hub.update_scalar("train/r_t", r)


@HOOKS.register_module(force=True)
class NonFiniteLossHook(Hook):
    """Stop at the first NaN/inf loss term, naming the term and the iteration.

    Runs before the checkpoint hook, so the last checkpoint written stays the last good one and
    nothing already on disk is touched. A finite but huge loss can still overflow the update and
    leave non-finite weights; before every checkpoint the weights are checked too, so a
    checkpoint with non-finite weights is never written (the error then names the loss terms of
    that iteration, largest first).
    """

    priority = "VERY_HIGH"

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs:
            return
        self._last = {k: _scalar(v) for k, v in outputs.items()}
        bad = {k: v for k, v in self._last.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"non-finite loss at iteration {runner.iter + 1}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f". Training stopped; checkpoints already in {runner.work_dir} are kept.")

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict") or {}
        broken = [k for k, v in state.items()
                  if hasattr(v, "is_floating_point") and v.is_floating_point()
                  and not bool(v.isfinite().all())]
        if broken:
            terms = sorted(self._last.items(), key=lambda kv: -abs(kv[1]))
            raise FloatingPointError(
                f"non-finite weights after iteration {runner.iter + 1} ({len(broken)} tensors, "
                f"e.g. {broken[0]}): the update overflowed although the loss was finite; loss "
                "terms of that iteration, largest first: "
                + ", ".join(f"{k}={v:.3g}" for k, v in terms if k != "loss")
                + f". Training stopped before writing that checkpoint; earlier checkpoints in "
                f"{runner.work_dir} are kept.")


@HOOKS.register_module(force=True)
class DistillScalarsHook(Hook):
    """Log each distillation loss's temperature and sub-terms; clear connector memos."""

    priority = "NORMAL"

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        distiller = _distiller(runner)
        if distiller is None:
            return
        for name, loss in distiller.distill_losses.items():
            temp = getattr(loss, "temperature", None)
            if temp is not None and hasattr(temp, "tau"):
                runner.message_hub.update_scalar(f"train/{name}_tau", float(temp.tau))
            for attr in ("last_kd", "last_probe"):
                val = getattr(loss, attr, None)
                if val is not None:
                    runner.message_hub.update_scalar(f"train/{name}_{attr[5:]}", float(val))
        for conn in distiller.connectors.values():
            if hasattr(conn, "clear_memo"):
                conn.clear_memo()


@HOOKS.register_module(force=True)
class TrainLogHook(Hook):
    """Collect per-iteration scalars and validation metrics; write them as one JSON at the end.

    Args:
        out_file (str): where to write ``{"train": [...], "val": [...]}`` (atomically).
        interval (int): record every ``interval`` iterations (and the last one).
    """

    priority = "LOW"

    def __init__(self, out_file: str, interval: int = 10) -> None:
        self.out_file = out_file
        self.interval = interval
        self.train: list[dict] = []
        self.val: list[dict] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        it = runner.iter + 1
        if it % self.interval and it != runner.max_iters:
            return
        row = {"iter": it}
        row.update({k: _scalar(v) for k, v in (outputs or {}).items()})
        for key in ("train/r_t",) + tuple(k for k in runner.message_hub.log_scalars
                                         if k.endswith(("_tau", "_kd", "_probe"))):
            if key in runner.message_hub.log_scalars:
                row[key.split("/", 1)[1]] = float(runner.message_hub.get_scalar(key).current())
        row["lr"] = float(runner.optim_wrapper.get_lr()["lr"][0])
        self.train.append(row)

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        if metrics:
            self.val.append({"iter": runner.iter, **{k: float(v) for k, v in metrics.items()}})

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint["bcd_train_log"] = {"train": list(self.train), "val": list(self.val)}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """On resume, continue the log of the interrupted run (rows up to the checkpoint)."""
        saved = checkpoint.get("bcd_train_log") or {}
        self.train, self.val = list(saved.get("train", [])), list(saved.get("val", []))

    def after_run(self, runner) -> None:
        if is_main_process():  # multi-process runs: rank 0 writes (every rank logs the same)
            write_json_atomic(self.out_file, {"train": self.train, "val": self.val})
