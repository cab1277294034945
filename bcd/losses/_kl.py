"""Tempered KL divergence shared by the BCD losses (the KD form of Eq. 1, 3 and 5)."""
from __future__ import annotations

import torch
from torch import Tensor


def tempered_kl(
    t_logits: Tensor,
    s_logits: Tensor,
    tau: float | Tensor,
    dim: int,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-distribution ``tau^2 * KL(softmax(T / tau) || softmax(S / tau))`` along ``dim``.

    This is the distillation term of Eq. 1 (and of Eq. 3 and Eq. 5): the paper writes it as the
    cross-entropy ``-tau^2 sum sigma(T)^{1/tau} log sigma(S)^{1/tau}``, which differs from the KL
    divergence only by the teacher entropy, a constant for the student. The teacher side is
    detached here, so no gradient ever reaches ``t_logits``.

    Args:
        t_logits: teacher logits, any shape with the distribution along ``dim``.
        s_logits: student logits, same shape as ``t_logits``.
        tau: softmax temperature, ``> 0`` (no default).
        dim: dimension along which each softmax is taken (no default).
        mask: optional bool tensor, broadcastable to the logits' shape; ``True`` marks the valid
            entries along ``dim``. Invalid entries are excluded from both softmaxes and from the
            sum. A distribution with no valid entry gets KL 0. Default ``None`` (all valid).

    Returns:
        Tensor with the logits' shape minus ``dim``: one KL value per distribution, in the
        logits' dtype and on their device.
    """
    if t_logits.shape != s_logits.shape:
        raise ValueError(
            f"tempered_kl: teacher logits {tuple(t_logits.shape)} and student logits "
            f"{tuple(s_logits.shape)} must have the same shape"
        )
    if not (t_logits.is_floating_point() and s_logits.is_floating_point()):
        raise ValueError("tempered_kl: logits must be floating point tensors")
    tau_value = float(tau)
    if not tau_value > 0.0:
        raise ValueError(f"tempered_kl: tau must be > 0, got {tau_value}")
    if t_logits.dim() == 0:
        raise ValueError("tempered_kl: logits must have at least one dimension")

    t = t_logits.detach() / tau_value
    s = s_logits / tau_value
    if mask is None:
        log_p_t = torch.log_softmax(t, dim=dim)
        log_p_s = torch.log_softmax(s, dim=dim)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)
    else:
        if mask.dtype != torch.bool:
            raise ValueError(f"tempered_kl: mask must be a bool tensor, got {mask.dtype}")
        try:
            mask = mask.expand(t.shape)
        except RuntimeError as err:
            raise ValueError(
                f"tempered_kl: mask of shape {tuple(mask.shape)} does not broadcast to the logits' "
                f"shape {tuple(t.shape)}"
            ) from err
        # -inf removes an entry from the softmax; the torch.where calls below keep the invalid
        # entries (and rows with no valid entry at all) out of the sum and free of NaN.
        neg_inf = torch.tensor(float("-inf"), dtype=t.dtype, device=t.device)
        log_p_t = torch.log_softmax(torch.where(mask, t, neg_inf), dim=dim)
        log_p_s = torch.log_softmax(torch.where(mask, s, neg_inf), dim=dim)
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        log_p_t = torch.where(mask, log_p_t, zero)
        log_p_s = torch.where(mask, log_p_s, zero)
        p_t = torch.where(mask, log_p_t.exp(), zero)
        kl = (p_t * (log_p_t - log_p_s)).sum(dim=dim)
    return kl * (tau_value * tau_value)
