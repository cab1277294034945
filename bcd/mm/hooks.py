"""mmengine hooks of bcd: the loss-weight decay r(t), a non-finite-loss guard, logging."""
from __future__ import annotations

import math
import sys
import time
from typing import Iterable, Mapping, Optional, Sequence

import torch

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from bcd.atomic import write_json_atomic
from bcd.schedule import decay


def _scalar(value) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def _unwrapped(runner):
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def _distiller(runner):
    return getattr(_unwrapped(runner), "distiller", None)


def logged_iteration(it: int, interval: int, max_iters: int) -> bool:
    """Whether iteration ``it`` (1-based) is the first, an ``interval``-th or the last (the rows
    of :class:`TrainLogHook`, the measurements of :class:`GradNormHook`)."""
    return it == 1 or it % interval == 0 or it == max_iters


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

    A row holds the iteration, every entry of the model's log (losses, accuracies), BCD's
    sub-terms and temperatures, r(t), the learning rate and, where :class:`GradNormHook`
    measured in that iteration, each loss term's gradient norm on the student's backbone
    (``grad_norm.<term>``).

    Args:
        out_file (str): where to write ``{"train": [...], "val": [...]}`` (atomically).
        interval (int): record iteration 1, every ``interval``-th iteration and the last one.
    """

    priority = "LOW"

    def __init__(self, out_file: str, interval: int = 10) -> None:
        self.out_file = out_file
        self.interval = interval
        self.train: list[dict] = []
        self.val: list[dict] = []

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        it = runner.iter + 1
        if not logged_iteration(it, self.interval, runner.max_iters):
            return
        row = {"iter": it}
        row.update({k: _scalar(v) for k, v in (outputs or {}).items()})
        norms = runner.message_hub.get_info(GradNormHook.INFO_KEY)
        if norms and norms.get("iter") == it:  # GradNormHook's of this very iteration
            row.update({f"grad_norm.{k}": v for k, v in norms["norms"].items()})
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


def progress_interval(iters: int) -> int:
    """Iterations between progress lines: about 20 per run, at most 50 apart."""
    return max(1, min(50, iters // 20))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@HOOKS.register_module()
class ProgressHook(Hook):
    """One line on stderr every ``interval`` iterations (and the last): iteration/total, the
    loss and its terms, iterations per second since training (re)started, and the ETA, e.g.
    ``[train r18-bcd seed 0] iter 50/500  loss 1.234 (decode.loss_ce 0.912, ...)  2.1 it/s
    ETA 3m34s``. The stage's log (Snakemake ``log:``) holds the same lines. Rank 0 only."""

    priority = "LOWEST"

    def __init__(self, label: str, interval: int = 10) -> None:
        self.label, self.interval = label, max(1, int(interval))
        self._t0: float | None = None
        self._it0 = 0

    def before_train(self, runner) -> None:
        self._t0, self._it0 = None, runner.iter  # a resumed run counts from its checkpoint

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        it, total = runner.iter + 1, runner.max_iters
        if self._t0 is None:  # the clock starts after the first iteration (start-up excluded)
            self._t0, self._it0 = time.perf_counter(), it
        if not is_main_process() or (it % self.interval and it != total):
            return
        terms = {k: _scalar(v) for k, v in (outputs or {}).items()
                 if k.startswith("loss") or ".loss" in k}
        loss = terms.pop("loss", None)
        text = f"[{self.label}] iter {it}/{total}"
        if loss is not None:
            text += f"  loss {loss:.4g}"
        if terms:
            text += " (" + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()) + ")"
        done, elapsed = it - self._it0, time.perf_counter() - self._t0
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f"  {rate:.3g} it/s  ETA {_duration((total - it) / rate)}"
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Diagnostics: how hard each loss term pushes the student
# ----------------------------------------------------------------------------------------------
def student_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The student's backbone: ``model.student.backbone`` of an mmrazor distillation algorithm
    (``SingleTeacherDistill``), ``model.backbone`` of a plain mmseg segmentor (model wrappers such
    as DDP unwrapped)."""
    if is_model_wrapper(model):
        model = model.module
    student = getattr(model, "student", model)
    backbone = getattr(student, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise TypeError(f"{type(model).__name__}: no student backbone (expected .backbone or "
                        ".student.backbone)")
    return backbone


def loss_terms(log_vars: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The terms of the total loss among a model's parsed log: entries named like losses
    (``'loss'`` in the key, as mmengine's ``parse_losses`` sums them) that are tensors requiring
    grad; the total ``'loss'`` itself and accuracies are left out."""
    return {k: v for k, v in log_vars.items()
            if k != "loss" and "loss" in k and isinstance(v, torch.Tensor) and v.requires_grad}


def term_grad_norms(terms: Mapping[str, torch.Tensor],
                    params: Iterable[torch.nn.Parameter]) -> dict[str, float]:
    """L2 norm of each term's gradient with respect to ``params`` (all of them as one vector),
    and under ``'total'`` the norm of their sum's gradient (= the sum of the terms' gradients).

    ``torch.autograd.grad`` with ``retain_graph=True``: nothing is written to ``.grad``, the graph
    stays for the training step's own backward pass, and no random numbers are drawn. A term
    whose graph does not reach ``params`` (e.g. a teacher-side probe) has norm 0.
    """
    params = [p for p in params if p.requires_grad]
    norms: dict[str, float] = {}
    total: list[torch.Tensor | None] = [None] * len(params)
    for name, term in terms.items():
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        sq = term.new_zeros((), dtype=torch.float64)
        for i, g in enumerate(grads):
            if g is None:
                continue
            sq = sq + g.detach().double().pow(2).sum()
            total[i] = g.detach() if total[i] is None else total[i] + g.detach()
        norms[name] = float(sq.sqrt())
    norms["total"] = float(sum((g.double().pow(2).sum() for g in total if g is not None),
                               torch.zeros((), dtype=torch.float64)).sqrt())
    return norms


@HOOKS.register_module(force=True)
class GradNormHook(Hook):
    """Each loss term's gradient norm on the student's backbone at iteration 1, the last and
    every ``interval``-th iteration; the run's :class:`TrainLogHook` adds them to its row of that
    iteration as ``grad_norm.<term>`` (``grad_norm.total``: all terms together).

    The terms are the model's parsed log entries that enter the total loss (:func:`loss_terms`),
    under the keys the model returns: ``decode.loss_ce`` for a plain mmseg model,
    ``student.decode.loss_ce``, ``student.aux.loss_ce``, ``distill.loss_<method>`` for a
    distillation algorithm. The norm is over all trainable parameters of the student backbone
    (:func:`student_backbone`) as one vector, on this process's batch.

    At ``before_train`` the model's ``parse_losses`` is wrapped (an instance attribute, removed
    again at ``after_train``); on a measured iteration the wrapper computes the norms with
    ``torch.autograd.grad`` before the optimiser's backward pass (:func:`term_grad_norms`: no
    ``.grad`` written, no random numbers drawn, so training is bit-identical with and without
    this hook). A measurement costs one partial backward pass per term, together 0.5-0.8 of a
    training step for BCD's four terms on the embedded models; hence the default interval below.
    The norms go to the message hub's runtime info (``INFO_KEY``), not to its scalars, so
    mmengine's logger does not average them over iterations without a measurement.

    Args:
        interval (int | None): measure at iteration 1, every ``interval``-th and the last one.
            ``None`` (default): the smallest multiple of the run's ``TrainLogHook`` interval that
            is at least ``min_interval`` (so every measurement lands in a logged row: every row
            of a long run such as the paper's 40k iterations, which logs every 400th; iterations
            1, 50 and 80 of the embedded profile's 80, which logs every iteration).
        min_interval (int): see ``interval``. Default ``50``.
    """

    priority = "NORMAL"
    INFO_KEY = "bcd_grad_norms"

    def __init__(self, interval: int | None = None, min_interval: int = 50) -> None:
        for name, value in (("interval", interval), ("min_interval", min_interval)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"GradNormHook: {name} must be an int >= 1, got {value!r}")
        self.interval = interval
        self.min_interval = min_interval
        self._every = interval
        self._due = False
        self._model = None

    def before_train(self, runner) -> None:
        self._every = self.interval
        if self._every is None:
            logs = [h for h in runner.hooks if isinstance(h, TrainLogHook)]
            if not logs:
                raise ValueError("GradNormHook: interval=None follows the run's TrainLogHook, "
                                 "but there is none; give an interval")
            log_every = logs[0].interval
            self._every = log_every * math.ceil(self.min_interval / log_every)
        model = _unwrapped(runner)
        params = [p for p in student_backbone(model).parameters() if p.requires_grad]
        parse_losses = model.parse_losses
        hub, hook = runner.message_hub, self

        def parse_and_measure(losses):
            loss, log_vars = parse_losses(losses)
            if hook._due and torch.is_grad_enabled():
                hub.update_info(hook.INFO_KEY, {"iter": runner.iter + 1, "norms":
                                                term_grad_norms(loss_terms(log_vars), params)})
            return loss, log_vars

        model.parse_losses = parse_and_measure
        self._model = model

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._due = logged_iteration(runner.iter + 1, self._every, runner.max_iters)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._due = False

    def after_train(self, runner) -> None:
        if self._model is not None and "parse_losses" in vars(self._model):
            del self._model.parse_losses  # the class's own method again
        self._model = None
