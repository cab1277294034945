"""Pixel pairs and the lines between them, for the boundary-to-affinity conversion of Eq. 2.

A pair ``(i, j)`` is a pixel ``i`` and a partner ``j = i + (dy, dx)`` for every offset with
``0 < dy^2 + dx^2 <= radius^2`` (all directions). The line ``Pi_ij`` between them is the set of
``n + 1`` pixels ``i + (round(k dy / n), round(k dx / n))``, ``k = 0..n``, ``n = max(|dy|, |dx|)``
(both endpoints included; ties are rounded half away from zero, so the line of ``-d`` is the mirror
image of the line of ``d``).

Everything that depends only on the radius (the offsets, the unique shifts all lines use, and each
line's indices into those shifts) is computed once per radius and cached. The per-image work is a
loop over the unique shifts (slices of a padded map) and one gather; there is no loop over pixels.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _check_radius(radius: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    return radius


@functools.lru_cache(maxsize=None)
def pair_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """All offsets ``(dy, dx)`` with ``0 < dy^2 + dx^2 <= radius^2``, sorted (Eq. 2's pair set).

    Args:
        radius: pair radius in feature-map pixels, integer ``>= 1`` (no default).

    Returns:
        Tuple of ``P`` offsets ``(dy, dx)``; radius 1 gives the 4-neighbourhood.
    """
    _check_radius(radius)
    return tuple(
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if 0 < dy * dy + dx * dx <= radius * radius
    )


@functools.lru_cache(maxsize=None)
def line_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Offsets (relative to ``i``) of the pixels on the line ``Pi_ij`` from ``i`` to ``i + (dy, dx)``.

    Args:
        dy: vertical offset of the partner ``j`` (no default).
        dx: horizontal offset of the partner ``j`` (no default); ``(dy, dx) != (0, 0)``.

    Returns:
        Tuple of ``n + 1`` offsets ``(round(k dy / n), round(k dx / n))``, ``k = 0..n``,
        ``n = max(|dy|, |dx|)``, starting at ``(0, 0)`` and ending at ``(dy, dx)``.
    """
    if (dy, dx) == (0, 0):
        raise ValueError("line_points: the offset (0, 0) does not define a pair")
    n = max(abs(dy), abs(dx))
    return tuple((_round_half_away(k * dy / n), _round_half_away(k * dx / n)) for k in range(n + 1))


@dataclass(frozen=True)
class PairLines:
    """Precomputed pair set and line geometry for one radius (see :func:`pair_lines`).

    Attributes:
        radius: the pair radius.
        offsets: ``(P, 2)`` long tensor, the partner offsets ``(dy, dx)`` (:func:`pair_offsets`).
        shifts: ``(U, 2)`` long tensor, the unique offsets used by all lines (includes ``(0, 0)``).
        line_index: ``(P, K)`` long tensor, row ``p`` lists the indices into ``shifts`` of the
            ``K = radius + 1`` (at most) points of line ``p``; shorter lines repeat their last
            point, which does not change a maximum over the line.
    """

    radius: int
    offsets: Tensor
    shifts: Tensor
    line_index: Tensor


@functools.lru_cache(maxsize=None)
def pair_lines(radius: int) -> PairLines:
    """Build (once per radius, cached) the pair offsets, unique shifts and line indices.

    Args:
        radius: pair radius in feature-map pixels, integer ``>= 1`` (no default).

    Returns:
        A :class:`PairLines` with CPU tensors.
    """
    offsets = pair_offsets(radius)
    lines = [line_points(dy, dx) for dy, dx in offsets]
    shifts = sorted({point for line in lines for point in line})
    position = {s: u for u, s in enumerate(shifts)}
    k_max = max(len(line) for line in lines)
    index = [
        [position[p] for p in line] + [position[line[-1]]] * (k_max - len(line)) for line in lines
    ]
    return PairLines(
        radius=radius,
        offsets=torch.tensor(offsets, dtype=torch.long),
        shifts=torch.tensor(shifts, dtype=torch.long),
        line_index=torch.tensor(index, dtype=torch.long),
    )


def shifted(x: Tensor, shifts: Tensor, pad_value: float | int = 0) -> Tensor:
    """Stack of shifted copies of ``x``: ``out[n, u, y, x] = x[n, y + sy_u, x + sx_u]``.

    Positions that fall outside the map take ``pad_value``.

    Args:
        x: ``(N, H, W)`` map (any dtype; float maps keep their autograd graph).
        shifts: ``(U, 2)`` integer tensor of shifts ``(sy, sx)``.
        pad_value: value for positions outside the map. Default ``0``.

    Returns:
        ``(N, U, H, W)`` tensor with ``x``'s dtype and device.
    """
    if x.dim() != 3:
        raise ValueError(f"shifted: expected x of shape (N, H, W), got {tuple(x.shape)}")
    if shifts.dim() != 2 or shifts.shape[1] != 2:
        raise ValueError(f"shifted: expected shifts of shape (U, 2), got {tuple(shifts.shape)}")
    n, h, w = x.shape
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    padded = x.new_full((n, h + 2 * pad, w + 2 * pad), pad_value)
    padded[:, pad : pad + h, pad : pad + w] = x
    copies = [
        padded[:, pad + sy : pad + sy + h, pad + sx : pad + sx + w] for sy, sx in shifts.tolist()
    ]
    return torch.stack(copies, dim=1)


def partner_mask(offsets: Tensor, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Which pairs have their partner inside the map.

    Args:
        offsets: ``(P, 2)`` integer tensor of offsets ``(dy, dx)``.
        height: map height ``H`` (no default).
        width: map width ``W`` (no default).
        device: device of the result. Default ``"cpu"``.

    Returns:
        ``(P, H, W)`` bool tensor, ``True`` where ``(y + dy, x + dx)`` lies inside the map.
    """
    offsets = offsets.to(device)
    ys = torch.arange(height, device=device).view(1, height, 1) + offsets[:, 0].view(-1, 1, 1)
    xs = torch.arange(width, device=device).view(1, 1, width) + offsets[:, 1].view(-1, 1, 1)
    return ((ys >= 0) & (ys < height)) & ((xs >= 0) & (xs < width))


def line_max(x: Tensor, radius: int) -> Tensor:
    """Maximum of ``x`` over the line ``Pi_ij`` of every pair (the ``max`` of Eq. 2).

    Args:
        x: ``(N, H, W)`` map, e.g. boundary logits or probabilities.
        radius: pair radius, integer ``>= 1`` (no default).

    Returns:
        ``(N, P, H, W)`` tensor, ``out[n, p, y, x] = max_{q in Pi(y, x; offset p)} x[n, q]``, with
        ``P = len(pair_offsets(radius))``. Entries whose partner lies outside the map are
        meaningless (their out-of-map line points read 0); mask them with :func:`partner_mask`.
    """
    geometry = pair_lines(radius)
    stack = shifted(x, geometry.shifts, pad_value=0)  # (N, U, H, W)
    on_lines = stack[:, geometry.line_index.to(x.device)]  # (N, P, K, H, W)
    return on_lines.amax(dim=2)
