"""Training-time schedules of BCD: the adaptive temperature (Sec. V-B) and the decay r(t) (Eq. 7)."""
from __future__ import annotations

import numbers

import torch
import torch.distributed as dist
from torch import Tensor, nn

_STATISTICS = ("prob_range", "logit_range", "relative_range")


class AdaptiveTemperature(nn.Module):
    """Distillation temperature ``tau`` raised by ``factor`` while the teacher is too peaked.

    Sec. V-B: "tau is initialized to 1 and is multiplied by a scaling factor of 1.05 whenever the
    range of values (across all feature items in a given minibatch) exceeds 0.5". The temperature
    enters Eq. 1, 3 and 5. ``tau`` is a buffer, so it is saved in checkpoints and restored on
    resume. With ``factor=1.0`` the temperature is fixed at ``init``.

    The statistic compared with ``threshold`` (the paper does not define "range of values"):

    * ``'prob_range'`` (default): ``max - min`` over all valid entries of the minibatch of
      ``softmax(teacher_logits / tau, dim)``. Self-limiting: a larger tau flattens the teacher's
      distributions, so the rule stops raising tau.
    * ``'logit_range'``: ``max - min`` of ``teacher_logits / tau``.
    * ``'relative_range'``: like ``'prob_range'``, but each probability is first multiplied by
      the number ``K`` of valid entries of its distribution, i.e. measured relative to the
      uniform ``1 / K``: ``max - min`` of ``K * softmax(teacher_logits / tau, dim)``. 0 for
      uniform distributions, whatever ``K``; also self-limiting. Meant for distributions over
      many entries (BD's spatial softmax over ``H W`` positions), whose probabilities are all
      small, so that ``'prob_range'`` never exceeds the threshold (docs/method.md).

    Under ``torch.distributed`` the range is taken over the global minibatch (the extremes are
    all-reduced), so every rank keeps the same tau.

    Args:
        init: initial temperature, ``> 0``. Default ``1.0``.
        factor: multiplier applied when the statistic exceeds ``threshold``, ``>= 1``; ``1.0``
            means a fixed temperature. Default ``1.05``.
        threshold: the statistic must be strictly greater than this to raise tau. Default ``0.5``.
        statistic: ``'prob_range'``, ``'logit_range'`` or ``'relative_range'``. Default
            ``'prob_range'``.
        max_tau: optional upper bound for tau (``>= init``). Default ``None`` (unbounded).
    """

    def __init__(
        self,
        init: float = 1.0,
        factor: float = 1.05,
        threshold: float = 0.5,
        statistic: str = "prob_range",
        max_tau: float | None = None,
    ) -> None:
        super().__init__()
        if not float(init) > 0.0:
            raise ValueError(f"AdaptiveTemperature: init must be > 0, got {init}")
        if not float(factor) >= 1.0:
            raise ValueError(f"AdaptiveTemperature: factor must be >= 1, got {factor}")
        if statistic not in _STATISTICS:
            raise ValueError(
                f"AdaptiveTemperature: statistic must be one of {_STATISTICS}, got {statistic!r}"
            )
        if max_tau is not None and not float(max_tau) >= float(init):
            raise ValueError(
                f"AdaptiveTemperature: max_tau ({max_tau}) must be >= init ({init})"
            )
        self.factor = float(factor)
        self.threshold = float(threshold)
        self.statistic = statistic
        self.max_tau = None if max_tau is None else float(max_tau)
        # float64 so that repeated multiplication by `factor` matches Python floats exactly.
        self.register_buffer("tau_value", torch.tensor(float(init), dtype=torch.float64))

    @property
    def tau(self) -> float:
        """The current temperature."""
        return float(self.tau_value)

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau:.4g}, factor={self.factor}, threshold={self.threshold}, "
            f"statistic={self.statistic!r}, max_tau={self.max_tau}"
        )

    @torch.no_grad()
    def range_statistic(self, teacher_logits: Tensor, dim: int, mask: Tensor | None = None) -> float:
        """The range statistic of one minibatch (``nan`` when there is no valid entry).

        Args:
            teacher_logits: the teacher's un-tempered softmax inputs, any shape.
            dim: the softmax dimension (no default).
            mask: optional bool tensor broadcastable to ``teacher_logits``, ``True`` for valid
                entries. Default ``None`` (all valid).

        Returns:
            ``max - min`` of the softened probabilities (``'prob_range'``), of ``K`` times them
            (``'relative_range'``, ``K`` the distribution's number of valid entries) or of
            ``teacher_logits / tau`` (``'logit_range'``) over all valid entries.
        """
        logits = teacher_logits.detach()
        if not logits.is_floating_point():
            raise ValueError("AdaptiveTemperature: teacher_logits must be floating point")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        if mask is not None:
            if mask.dtype != torch.bool:
                raise ValueError(f"AdaptiveTemperature: mask must be bool, got {mask.dtype}")
            try:
                mask = mask.expand(logits.shape)
            except RuntimeError as err:
                raise ValueError(
                    f"AdaptiveTemperature: mask {tuple(mask.shape)} does not broadcast to "
                    f"teacher_logits {tuple(logits.shape)}"
                ) from err
        values = logits / self.tau
        if self.statistic in ("prob_range", "relative_range"):
            if mask is not None:
                values = values.masked_fill(~mask, float("-inf"))
            values = torch.softmax(values, dim=dim)
            if self.statistic == "relative_range":
                count = (values.shape[dim] if mask is None
                         else mask.sum(dim=dim, keepdim=True).to(values.dtype))
                values = values * count
        if mask is not None:
            values = values[mask]
        if values.numel():
            return self.range_from_extremes(values.min(), values.max())
        return self.range_from_extremes(None, None)

    @torch.no_grad()
    def range_from_extremes(self, minimum: Tensor | float | None,
                            maximum: Tensor | float | None) -> float:
        """The range statistic from precomputed extremes of this minibatch (this rank's part).

        For callers that compute the statistic's values piecewise and never hold them all (e.g.
        the blockwise context loss): ``minimum`` and ``maximum`` are the extremes, over this
        rank's minibatch, of the values :meth:`range_statistic` would take the range of at the
        current ``tau`` (softened probabilities for ``'prob_range'``, ``K`` times them for
        ``'relative_range'``, ``teacher_logits / tau`` for ``'logit_range'``). Under
        ``torch.distributed`` they are all-reduced here, so every rank gets the range over the
        global minibatch.

        Args:
            minimum: smallest value, a number or a 0-dim tensor; ``None`` if this rank has no
                valid entry.
            maximum: largest value, likewise.

        Returns:
            ``maximum - minimum`` over all ranks, ``nan`` when no rank has a valid entry.
        """
        if minimum is None or maximum is None:
            extremes = torch.full((2,), float("-inf"), dtype=torch.float64)
        else:
            lo, hi = (torch.as_tensor(v).detach() for v in (minimum, maximum))
            device = hi.device
            extremes = torch.stack([hi.to(device, torch.float64).reshape(()),
                                    -lo.to(device, torch.float64).reshape(())])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl" and extremes.device.type != "cuda":
                extremes = extremes.cuda()
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        if not torch.isfinite(extremes).all():
            return float("nan")
        return float(extremes[0] + extremes[1])

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, dim: int, mask: Tensor | None = None) -> float:
        """One training-step update: ``tau *= factor`` (once) if the statistic exceeds ``threshold``.

        Does nothing in eval mode (``self.training`` is False) or when ``factor == 1``.

        Args:
            teacher_logits: the teacher's un-tempered softmax inputs, any shape.
            dim: the softmax dimension (no default).
            mask: optional bool validity mask, see :meth:`range_statistic`. Default ``None``.

        Returns:
            The temperature after the update.
        """
        if not self.training or self.factor == 1.0:
            return self.tau
        return self._raise_if(self.range_statistic(teacher_logits, dim, mask))

    @torch.no_grad()
    def update_from_extremes(self, minimum: Tensor | float | None,
                             maximum: Tensor | float | None) -> float:
        """:meth:`update` from precomputed extremes (see :meth:`range_from_extremes`).

        Same rule and same no-ops (eval mode, ``factor == 1``) as :meth:`update`; the extremes
        must have been computed at the current ``tau``.

        Returns:
            The temperature after the update.
        """
        if not self.training or self.factor == 1.0:
            return self.tau
        return self._raise_if(self.range_from_extremes(minimum, maximum))

    def _raise_if(self, statistic: float) -> float:
        if statistic > self.threshold:  # False for nan
            new_tau = self.tau_value * self.factor
            if self.max_tau is not None:
                new_tau = new_tau.clamp(max=self.max_tau)
            self.tau_value.copy_(new_tau)
        return self.tau


def build_temperature(temperature: dict | AdaptiveTemperature | None) -> AdaptiveTemperature:
    """Temperature from a loss's ``temperature`` argument.

    Args:
        temperature: ``None`` -> fixed ``tau = 1`` (``AdaptiveTemperature(factor=1.0)``); a dict ->
            ``AdaptiveTemperature(**temperature)``; an instance -> used as is (may be shared).

    Returns:
        An :class:`AdaptiveTemperature`.
    """
    if temperature is None:
        return AdaptiveTemperature(init=1.0, factor=1.0)
    if isinstance(temperature, AdaptiveTemperature):
        return temperature
    if isinstance(temperature, dict):
        return AdaptiveTemperature(**temperature)
    raise ValueError(
        "temperature must be None, a dict of AdaptiveTemperature arguments or an "
        f"AdaptiveTemperature, got {type(temperature).__name__}"
    )


def decay(t: int, t_max: int) -> float:
    """Loss-weight decay ``r(t) = 1 - (t - 1) / t_max`` (Eq. 7).

    ``r(1) = 1`` and ``r(t_max) = 1 / t_max`` (never 0). The paper counts ``t`` in epochs; with
    iteration-based training (``t_max = 40000`` iterations, Sec. V-B) we apply it per iteration.

    Args:
        t: current step, ``1 <= t <= t_max`` (no default).
        t_max: total number of steps, ``>= 1`` (no default).

    Returns:
        ``r(t)`` in ``(0, 1]``.
    """
    for name, value in (("t", t), ("t_max", t_max)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"decay: {name} must be an integer, got {value!r}")
    if t_max < 1:
        raise ValueError(f"decay: t_max must be >= 1, got {t_max}")
    if not 1 <= t <= t_max:
        raise ValueError(f"decay: t must satisfy 1 <= t <= t_max = {t_max}, got {t}")
    return (int(t_max) - int(t) + 1) / int(t_max)  # = 1 - (t - 1) / t_max, exact at t = t_max
