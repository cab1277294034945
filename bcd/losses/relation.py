"""Exact relation KL of context distillation (Eq. 4-5) in memory linear in ``HW``.

Notation (one sample; the batch dimension ``N`` is carried along everywhere). ``X_t`` and
``X_s`` are the teacher's and the student's features ``O(T^c)``, ``O(S^c)`` flattened to
``(C_t, M)`` and ``(C_s, M)``, ``M = HW``; ``d`` of Eq. 4 is each side's own channel count
(the relation matrices are ``M x M`` whatever the channels, so ``C_t`` may differ from ``C_s``).
With ``a_t = 1 / (sqrt(C_t) tau)``, ``a = a_s = 1 / (sqrt(C_s) tau)`` the tempered relation
logits of Eq. 4 and their row distributions are::

    T = a_t X_t^T X_t,   S = a X_s^T X_s                       (M x M)
    p_i = softmax(T_i),   q_i = softmax(S_i)                   (row i)
    L_i = tau^2 KL(p_i || q_i) = tau^2 sum_j p_ij (log p_ij - log q_ij)       (Eq. 5, per row)

Gradient. ``dL_i / dS_ij = tau^2 (q_ij - p_ij)``. Given an upstream gradient ``g_i`` per row,
let ``G_ij = g_i tau^2 (q_ij - p_ij)``. ``X_s`` enters ``S`` twice (``S = a X_s^T X_s``), so::

    dL/dX_s = a X_s (G + G^T)        i.e.   dL/dX_s[:, k] = a sum_j X_s[:, j] (G_kj + G_jk)

For a block of rows ``R = [r0, r1)`` only ``G_R = G[R, :]`` (``|R| x M``) is needed at a time:
its rows contribute ``a X_s G_R^T`` to the columns ``R`` of the gradient and ``a X_s[:, R] G_R``
to all columns. Summing the blocks gives the exact gradient. The teacher is fixed (no gradient).

Two autograd functions use this; neither ever holds an ``M x M`` matrix, only a few
``(N, B, M)`` blocks (``B`` = ``block_size`` rows):

* :func:`relation_kl_blockwise` returns the per-row values ``(N, M)``; its backward recomputes
  the blocks (the row log-normalisers of both sides are kept from the forward, ``O(N M)``).
* :func:`relation_kl_sum` returns the per-sample sums over the rows ``(N,)``, which is all the
  loss needs. Its upstream gradient is one number per sample, so the whole gradient can be
  accumulated during the forward pass, block by block, while ``p`` and ``q`` are at hand: the
  same four matrix products as the materialised version and no recomputation. It can also
  return the extremes of the teacher's tempered logits and probabilities over the minibatch
  (the adaptive temperature's statistic, Sec. V-B) from the same pass (the extremes of ``p``
  are the exponentials of those of ``log p``, one reduction per block).

:func:`relation_kl_naive` is the materialised reference.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._kl import tempered_kl

#: Default rows per block: one ``(N, B, HW)`` block buffer is then ``8 * 256 * 4096`` floats
#: (32 MiB in float32) at the paper's scale (batch 8, 64 x 64 features); three are live at once.
DEFAULT_BLOCK_SIZE = 256

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "relation_kl_blockwise",
    "relation_kl_naive",
    "relation_kl_sum",
    "relation_logits",
    "teacher_relation_extremes",
]


def relation_logits(feat: Tensor) -> Tensor:
    """Self-relation logits ``X^T X / sqrt(d)`` of Eq. 4 (before the tempered softmax).

    Args:
        feat: features ``(N, C, H, W)``; ``X`` is ``feat`` flattened to ``(N, C, HW)``, ``d = C``
            (each side of Eq. 4 uses its own ``C``).

    Returns:
        ``(N, HW, HW)`` tensor; row ``i`` holds the scaled inner products of pixel ``i`` with
        every pixel.
    """
    x = feat.flatten(2)  # (N, C, HW)
    return torch.bmm(x.transpose(1, 2), x) / math.sqrt(feat.shape[1])


def relation_kl_naive(t_feat: Tensor, s_feat: Tensor, tau: float) -> Tensor:
    """Per-row ``tau^2 KL(softmax(T^R_i / tau) || softmax(S^R_i / tau))`` (Eq. 4-5), materialised.

    The reference version: builds the full ``(N, HW, HW)`` relation logits of both sides and lets
    autograd differentiate them (memory ``O(N HW^2)``). The teacher side is detached.

    Args:
        t_feat: teacher features ``O(T^c)``, ``(N, C_t, H, W)``.
        s_feat: student features ``O(S^c)``, ``(N, C_s, H, W)`` (``C_s`` may differ from ``C_t``).
        tau: temperature, ``> 0``.

    Returns:
        ``(N, HW)`` KL value of every row ``i`` of the relation matrices.
    """
    _check_pair("relation_kl_naive", t_feat, s_feat)
    return tempered_kl(relation_logits(t_feat.detach()), relation_logits(s_feat), tau, dim=-1)


# ----------------------------------------------------------------------------------------------
# Checks and helpers
# ----------------------------------------------------------------------------------------------
def _check(name: str, t_feat: Tensor, s_feat: Tensor | None, tau: float, block_size: int) -> int:
    feats = (t_feat,) if s_feat is None else (t_feat, s_feat)
    for x in feats:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"{name}: features must be floating point (N, C, H, W) tensors, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
    if s_feat is not None:
        _check_pair(name, t_feat, s_feat)
        if t_feat.dtype != s_feat.dtype or t_feat.device != s_feat.device:
            raise ValueError(f"{name}: teacher ({t_feat.dtype}, {t_feat.device}) and student "
                             f"({s_feat.dtype}, {s_feat.device}) features must share dtype and "
                             "device")
    if not float(tau) > 0.0:
        raise ValueError(f"{name}: tau must be > 0, got {tau}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{name}: block_size must be an int >= 1, got {block_size!r}")
    return block_size


def _check_pair(name: str, t_feat: Tensor, s_feat: Tensor) -> None:
    """Same ``N, H, W`` on both sides (the channels may differ: ``d`` is each side's own)."""
    if (t_feat.dim() != 4 or s_feat.dim() != 4 or t_feat.shape[0] != s_feat.shape[0]
            or t_feat.shape[2:] != s_feat.shape[2:]):
        raise ValueError(f"{name}: teacher {tuple(t_feat.shape)} and student "
                         f"{tuple(s_feat.shape)} features must have the same shape except "
                         "for the channels (N, H, W)")


class _Blocks:
    """Reusable block buffers: ``k`` flat arrays of ``N * B * M`` entries, viewed per block.

    Reusing them (rather than allocating per block) keeps the allocator and, on CPU, the page
    faults of fresh large allocations out of the loop; the last, shorter block uses a prefix.
    """

    def __init__(self, k: int, n: int, b: int, m: int, like: Tensor) -> None:
        self.flat = [like.new_empty(n * b * m) for _ in range(k)]
        self.n, self.m = n, m

    def views(self, rows: int) -> list[Tensor]:
        size = self.n * rows * self.m
        return [f[:size].view(self.n, rows, self.m) for f in self.flat]


def _flat(feat: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, HW)`` as a view whenever the memory allows.

    ``flatten`` copies a channels-last tensor (e.g. :func:`standardize_channels`' output, a
    ``movedim`` of a LayerNorm over ``(N, H, W, C)``); read as ``(N, HW, C)`` and transposed it
    is a view, which the matrix products take as it is.
    """
    n, c, h, w = feat.shape
    if feat.stride(1) == 1 and c > 1:  # channels innermost
        return feat.movedim(1, -1).reshape(n, h * w, c).transpose(1, 2)
    return feat.reshape(n, c, h * w)


def _logits(out: Tensor, rows: Tensor, x: Tensor, alpha: float) -> Tensor:
    """``out <- alpha * rows @ x``: a block of tempered relation logits, written in place.

    ``beta=0`` makes ``baddbmm_`` ignore ``out``'s previous (garbage) content; the scale is
    applied inside the matrix product, so no scaled copy of the features is made.
    """
    return out.baddbmm_(rows, x, beta=0.0, alpha=alpha)


def _store_lse(dst: Tensor, logits: Tensor, log_prob: Tensor) -> None:
    """``dst <- logsumexp(logits)`` row-wise, read off a log-softmax: ``max z - max log p``.

    Both maxima sit at the same entry and the log-softmax there is ``-log Z`` exactly, so this is
    ``max z + log Z`` without another pass of exponentials.
    """
    dst.copy_(logits.amax(dim=-1) - log_prob.amax(dim=-1))


def _merge_extremes(parts: list[Tensor]) -> Tensor:
    """Per-block ``(max T, min T, max log p, min log p)`` -> ``(max T, min T, max p, min p)``."""
    ext = torch.stack(parts)
    return torch.stack([ext[:, 0].max(), ext[:, 1].min(), ext[:, 2].max().exp(),
                        ext[:, 3].min().exp()])


def _alphas(xt: Tensor, xs: Tensor, tau: float) -> tuple[float, float]:
    """``(a_s, a_t)`` = ``1 / (sqrt(C) tau)`` of the student's and the teacher's ``(N, C, M)``."""
    return 1.0 / (math.sqrt(xs.shape[1]) * tau), 1.0 / (math.sqrt(xt.shape[1]) * tau)


def _row_blocks(m: int, b: int):
    for r0 in range(0, m, b):
        yield r0, min(r0 + b, m)


# ----------------------------------------------------------------------------------------------
# Per-row values, recomputing backward
# ----------------------------------------------------------------------------------------------
class _RelationKLRows(torch.autograd.Function):
    """Per-row relation KL ``(N, M)``; backward recomputes the blocks (module doc)."""

    @staticmethod
    def forward(ctx, xt: Tensor, xs: Tensor, tau: float, block_size: int) -> Tensor:
        n, c, m = xs.shape
        alpha, alpha_t = _alphas(xt, xs, tau)
        b = min(block_size, m)
        xt_rows, xs_rows = xt.transpose(1, 2), xs.transpose(1, 2)  # (N, M, C) views
        buf = _Blocks(3, n, b, m, xs)
        out = xs.new_empty(n, m)
        lse_t = xs.new_empty(n, m)  # row log-normalisers of both sides, for the backward
        lse_s = xs.new_empty(n, m)
        for r0, r1 in _row_blocks(m, b):
            z, log_p, log_q = buf.views(r1 - r0)  # z: logits, then scratch
            _logits(z, xt_rows[:, r0:r1], xt, alpha_t)  # T[R, :], tempered teacher logits
            torch.log_softmax(z, dim=-1, out=log_p)
            _store_lse(lse_t[:, r0:r1], z, log_p)
            _logits(z, xs_rows[:, r0:r1], xs, alpha)  # S[R, :]
            torch.log_softmax(z, dim=-1, out=log_q)
            _store_lse(lse_s[:, r0:r1], z, log_q)
            diff = torch.sub(log_p, log_q, out=log_q)  # log p - log q (elementwise, in place)
            p = log_p.exp_()
            torch.sum(torch.mul(p, diff, out=z), dim=-1, out=out[:, r0:r1])
        out.mul_(tau * tau)
        ctx.save_for_backward(xt, xs, lse_t, lse_s)
        ctx.tau, ctx.block_size = tau, b
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows: Tensor):
        xt, xs, lse_t, lse_s = ctx.saved_tensors
        tau, b = ctx.tau, ctx.block_size
        n, c, m = xs.shape
        alpha, alpha_t = _alphas(xt, xs, tau)
        coef = tau * tau * alpha  # tau^2 from the loss, a from S = a X_s^T X_s
        xt_rows, xs_rows = xt.transpose(1, 2), xs.transpose(1, 2)  # (N, M, C) views
        grad_rows = grad_rows.to(xs.dtype)
        grad = xs.new_zeros(n, m, c)  # dL/dX_s^T
        buf = _Blocks(2, n, b, m, xs)
        for r0, r1 in _row_blocks(m, b):
            p, q = buf.views(r1 - r0)
            _logits(p, xt_rows[:, r0:r1], xt, alpha_t)
            p.sub_(lse_t[:, r0:r1, None]).exp_()
            _logits(q, xs_rows[:, r0:r1], xs, alpha)
            q.sub_(lse_s[:, r0:r1, None]).exp_()
            g_blk = q.sub_(p).mul_(grad_rows[:, r0:r1, None])  # G_R / tau^2
            grad[:, r0:r1].baddbmm_(g_blk, xs_rows, alpha=coef)  # a X_s G_R^T (columns R)
            grad.baddbmm_(g_blk.transpose(1, 2), xs_rows[:, r0:r1], alpha=coef)  # a X_s[:, R] G_R
        return None, grad.transpose(1, 2), None, None


def relation_kl_blockwise(t_feat: Tensor, s_feat: Tensor, tau: float,
                          block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Per-row relation KL of Eq. 4-5, exact, computed over blocks of ``block_size`` rows.

    Same values and gradient as :func:`relation_kl_naive`; peak memory ``O(N B HW)`` instead of
    ``O(N HW^2)``. The backward pass recomputes the blocks (see the module doc for the
    gradient); for a reduced loss :func:`relation_kl_sum` avoids that recomputation.

    Args:
        t_feat: teacher features ``(N, C_t, H, W)``; treated as a constant (no gradient).
        s_feat: student features ``(N, C_s, H, W)``: same ``N, H, W``, dtype and device
            (``C_s`` may differ from ``C_t``; each side's ``d`` is its own channel count).
        tau: temperature, ``> 0``.
        block_size: rows per block ``B``, ``>= 1``. Default :data:`DEFAULT_BLOCK_SIZE`.

    Returns:
        ``(N, HW)`` KL value of every row, in the features' dtype and on their device.
    """
    _check("relation_kl_blockwise", t_feat, s_feat, tau, block_size)
    return _RelationKLRows.apply(_flat(t_feat.detach()), _flat(s_feat), float(tau), block_size)


# ----------------------------------------------------------------------------------------------
# Per-sample sums, gradient accumulated in the forward pass
# ----------------------------------------------------------------------------------------------
def _sum_pass(xt: Tensor, xs: Tensor, tau: float, b: int, with_grad: bool,
              with_extremes: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """One blockwise pass: per-sample row-KL sums, dL/dX_s^T for unit weights, extremes.

    Returns ``(sums (N,), grad (N, M, C) or None, extremes (4,))`` with extremes = (max, min)
    of the tempered teacher logits then of the teacher probabilities (``nan`` if not asked).
    """
    n, c, m = xs.shape
    alpha, alpha_t = _alphas(xt, xs, tau)
    coef = tau * tau * alpha
    xt_rows, xs_rows = xt.transpose(1, 2), xs.transpose(1, 2)  # (N, M, C) views
    block_sums = []
    grad = xs.new_zeros(n, m, c) if with_grad else None
    parts = []
    buf = _Blocks(3, n, b, m, xs)
    for r0, r1 in _row_blocks(m, b):
        z, log_p, log_q = buf.views(r1 - r0)  # z: logits, then scratch
        _logits(z, xt_rows[:, r0:r1], xt, alpha_t)  # T[R, :], tempered teacher logits
        torch.log_softmax(z, dim=-1, out=log_p)
        if with_extremes:  # one reduction pass each: (min, max) of T and of log p over the block
            t_min, t_max = torch.aminmax(z)
            lp_min, lp_max = torch.aminmax(log_p)
            parts.append(torch.stack([t_max, t_min, lp_max, lp_min]))
        _logits(z, xs_rows[:, r0:r1], xs, alpha)  # S[R, :]
        torch.log_softmax(z, dim=-1, out=log_q)
        diff = torch.sub(log_p, log_q, out=z)  # log p - log q
        p, q = log_p.exp_(), log_q.exp_()
        # KL of every row of the block, summed (torch's reductions, not one long dot product:
        # the terms nearly cancel and a sequential float32 sum over B * HW of them drifts)
        block_sums.append(diff.mul_(p).sum(dim=-1).sum(dim=-1))
        if with_grad:
            g_blk = q.sub_(p)  # G_R / tau^2 (unit upstream gradient)
            grad[:, r0:r1].baddbmm_(g_blk, xs_rows, alpha=coef)  # a X_s G_R^T (columns R)
            grad.baddbmm_(g_blk.transpose(1, 2), xs_rows[:, r0:r1], alpha=coef)  # a X_s[:, R] G_R
    sums = torch.stack(block_sums, dim=1).sum(dim=1).mul_(tau * tau)
    ext = _merge_extremes(parts) if parts else xs.new_full((4,), float("nan"))
    return sums, grad, ext


class _RelationKLSum(torch.autograd.Function):
    """Per-sample sums of the row KL ``(N,)`` and the teacher extremes ``(4,)`` (module doc)."""

    @staticmethod
    def forward(ctx, xt: Tensor, xs: Tensor, tau: float, block_size: int,
                with_extremes: bool, grad_enabled: bool) -> tuple[Tensor, Tensor]:
        b = min(block_size, xs.shape[-1])
        # needs_input_grad is also True under torch.no_grad(); the caller passes the grad mode
        with_grad = grad_enabled and ctx.needs_input_grad[1]
        sums, grad, ext = _sum_pass(xt, xs, tau, b, with_grad, with_extremes)
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ext)
        return sums, ext

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums: Tensor, _grad_ext: Tensor):
        (grad,) = ctx.saved_tensors
        grad_x = grad.transpose(1, 2) * grad_sums.to(grad.dtype)[:, None, None]
        return None, grad_x, None, None, None, None


def relation_kl_sum(t_feat: Tensor, s_feat: Tensor, tau: float,
                    block_size: int = DEFAULT_BLOCK_SIZE,
                    return_extremes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sum over the rows of the relation KL of Eq. 4-5, per sample: ``sum_i L_i``, ``(N,)``.

    Exact, in ``O(N B HW)`` memory. When the student features require grad, the gradient is
    accumulated during this forward pass (``a X_s (G + G^T)`` of the module doc with unit row
    weights) and only scaled by the upstream gradient in the backward pass, so forward plus
    backward cost the same four matrix products as the materialised version. The teacher gets
    no gradient.

    Args:
        t_feat: teacher features ``(N, C_t, H, W)``; treated as a constant (no gradient).
        s_feat: student features ``(N, C_s, H, W)``: same ``N, H, W``, dtype and device
            (``C_s`` may differ from ``C_t``; each side's ``d`` is its own channel count).
        tau: temperature, ``> 0``.
        block_size: rows per block ``B``, ``>= 1``. Default :data:`DEFAULT_BLOCK_SIZE`.
        return_extremes: also return, from the same pass, the ``(4,)`` tensor
            ``(max T, min T, max p, min p)`` over the whole minibatch, ``T`` the tempered
            teacher logits ``X_t^T X_t / sqrt(d) / tau`` and ``p = softmax(T)`` row-wise (what
            :class:`bcd.schedule.AdaptiveTemperature` compares with its threshold). Default False.

    Returns:
        ``(N,)`` sums (and the extremes if asked), in the features' dtype and on their device.
    """
    _check("relation_kl_sum", t_feat, s_feat, tau, block_size)
    sums, ext = _RelationKLSum.apply(_flat(t_feat.detach()), _flat(s_feat), float(tau),
                                     block_size, bool(return_extremes), torch.is_grad_enabled())
    return (sums, ext) if return_extremes else sums


@torch.no_grad()
def teacher_relation_extremes(t_feat: Tensor, tau: float,
                              block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """``(max T, min T, max p, min p)`` over the minibatch, blockwise (no ``HW x HW`` matrix).

    ``T = X_t^T X_t / sqrt(d) / tau`` are the tempered teacher relation logits of Eq. 4 and
    ``p = softmax(T)`` row-wise; the same numbers as ``relation_logits(t_feat) / tau`` and its
    softmax, computed one block of rows at a time (one matrix product per block).

    Args:
        t_feat: teacher features ``(N, C, H, W)``.
        tau: temperature, ``> 0``.
        block_size: rows per block, ``>= 1``. Default :data:`DEFAULT_BLOCK_SIZE`.

    Returns:
        ``(4,)`` tensor in the features' dtype and on their device.
    """
    _check("teacher_relation_extremes", t_feat, None, tau, block_size)
    xt = _flat(t_feat.detach())
    n, c, m = xt.shape
    alpha = 1.0 / (math.sqrt(c) * float(tau))
    xt_rows = xt.transpose(1, 2)
    b = min(block_size, m)
    buf = _Blocks(2, n, b, m, xt)
    parts = []
    for r0, r1 in _row_blocks(m, b):
        t, log_p = buf.views(r1 - r0)
        _logits(t, xt_rows[:, r0:r1], xt, alpha)
        torch.log_softmax(t, dim=-1, out=log_p)
        t_min, t_max = torch.aminmax(t)
        lp_min, lp_max = torch.aminmax(log_p)
        parts.append(torch.stack([t_max, t_min, lp_max, lp_min]))
    return _merge_extremes(parts)
