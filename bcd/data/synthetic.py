"""The embedded default dataset: seeded synthetic scenes that exercise BCD's two failure modes.

Small students "predict the main object regions fairly well but fail in boundary and connecting
regions" (paper, Sec. I). Every scene is built so that both matter, at a size that trains on two
CPU cores in minutes (default 64x64 RGB):

* **boundary completeness** - thin structures one or two pixels wide (``wire``: straight and
  curved wires and poles; ``ring``: thin closed rings), and objects of different classes that
  touch and share long boundaries (regions split in two classes, objects placed on the edge of
  other objects);
* **region connectivity** - large textured regions (``stripes``, ``checker``, ``speckle``) whose
  texture statistics, not their colour, identify the class, cut into several pieces by occluders
  (bands, plates, wires) that still belong to one region.

All classes draw their colours from one shared palette with random jitter, and every image gets a
global brightness/contrast/colour-cast jitter, a little blur and pixel noise, so a per-pixel
colour lookup cannot separate the classes: texture, shape and context decide. Labels are
``0..K-1`` (0 = background, itself textured); the ignore label 255 is never used.

Three splits: ``train`` (split id 0), ``val`` (1: choices are made on it) and ``test`` (2: the
tables report it). Each sample uses its own generator
``numpy.random.default_rng([seed, split_id, index])``, so a sample does not depend on generation
order or on the size of the other splits (adding a test split leaves train and val unchanged).

    python -m bcd.data.synthetic --out /tmp/shapes --seed 0 --grid /tmp/synthetic_grid.png
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bcd.data.entry import DatasetEntry

GENERATOR_VERSION = "bcd-shapes-1"

CLASSES: tuple[str, ...] = ("background", "stripes", "checker", "speckle", "plate", "wire", "ring")
# Visualisation colours (mmseg METAINFO palette); unrelated to the colours used in the images.
PALETTE: list[list[int]] = [
    [0, 0, 0],        # background
    [230, 25, 75],    # stripes
    [60, 180, 75],    # checker
    [255, 225, 25],   # speckle
    [0, 130, 200],    # plate
    [245, 130, 48],   # wire
    [240, 50, 230],   # ring
]

BACKGROUND, STRIPES, CHECKER, SPECKLE, PLATE, WIRE, RING = range(len(CLASSES))
TEXTURED = (STRIPES, CHECKER, SPECKLE)
SOLID = (STRIPES, CHECKER, SPECKLE, PLATE)  # classes that form regions (not thin)
SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
MIN_SIZE = 16
HINT = "run `python -m bcd data --params <file>`"

# Image colours shared by every class (class identity never follows from colour alone).
_BASE_COLOURS = np.array([
    [196, 64, 52], [64, 150, 72], [56, 96, 196], [214, 190, 70], [140, 80, 168],
    [70, 176, 180], [222, 128, 48], [128, 128, 128], [92, 70, 52], [222, 220, 206],
], dtype=np.float64)
_COLOUR_JITTER = 14.0


# ----------------------------------------------------------------------------------------------
# Drawing primitives (numpy only; float canvas, coordinates are pixel centres)
# ----------------------------------------------------------------------------------------------
class _Canvas:
    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.s = min(height, width) / 64.0  # geometric scale relative to the default size
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float64)
        self.img = np.zeros((height, width, 3), np.float64)
        self.lab = np.zeros((height, width), np.uint8)

    def paint(self, mask: np.ndarray, cls: int, tex: np.ndarray) -> None:
        self.img[mask] = tex[mask]
        self.lab[mask] = cls

    def random_point(self, rng, mask: np.ndarray | None = None) -> tuple[float, float]:
        if mask is not None and mask.any():
            ys, xs = np.nonzero(mask)
            k = rng.integers(len(ys))
            return float(ys[k]), float(xs[k])
        return float(rng.uniform(0, self.h - 1)), float(rng.uniform(0, self.w - 1))


def _colour(rng, exclude: int | None = None) -> tuple[np.ndarray, int]:
    n = len(_BASE_COLOURS)
    k = int(rng.integers(n - (exclude is not None)))
    if exclude is not None and k >= exclude:
        k += 1
    return _BASE_COLOURS[k] + rng.normal(0.0, _COLOUR_JITTER, 3), k


def _two_colours(rng) -> tuple[np.ndarray, np.ndarray]:
    c1, k1 = _colour(rng)
    c2, _ = _colour(rng, exclude=k1)
    t = rng.uniform(0.55, 1.0)  # texture contrast
    return c1, c1 + t * (c2 - c1)


def _mix(c1: np.ndarray, c2: np.ndarray, m: np.ndarray) -> np.ndarray:
    return c1 * (1.0 - m[..., None]) + c2 * m[..., None]


def _rotated(cv: _Canvas, theta: float, oy: float = 0.0, ox: float = 0.0):
    c, s = np.cos(theta), np.sin(theta)
    u = (cv.xx - ox) * c + (cv.yy - oy) * s
    v = -(cv.xx - ox) * s + (cv.yy - oy) * c
    return u, v


def _smooth_field(rng, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise in [0, 1]: a random (cells+1)^2 grid, smoothstep-interpolated to (h, w)."""
    g = rng.random((cells_y + 1, cells_x + 1))

    def axis(n, cells):
        t = np.linspace(0.0, cells, n)
        i = np.minimum(np.floor(t).astype(int), cells - 1)
        f = t - i
        return i, f * f * (3 - 2 * f)

    iy, fy = axis(h, cells_y)
    ix, fx = axis(w, cells_x)
    rows = g[iy] * (1 - fy)[:, None] + g[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx)[None, :] + rows[:, ix + 1] * fx[None, :]


# Textures: each returns a full-canvas float image; the painter keeps the masked part.
def _tex_background(rng, cv: _Canvas) -> np.ndarray:
    c1, c2 = _two_colours(rng)
    cells = int(rng.integers(2, 5))
    f = _smooth_field(rng, cv.h, cv.w, cells, max(2, round(cells * cv.w / cv.h)))
    f = 0.75 * f + 0.25 * _smooth_field(rng, cv.h, cv.w, 2 * cells, max(2, round(2 * cells * cv.w / cv.h)))
    return _mix(c1, c2, f)


def _tex_stripes(rng, cv: _Canvas) -> np.ndarray:
    c1, c2 = _two_colours(rng)
    period = max(3.0, rng.uniform(3.0, 6.5) * cv.s)
    u, v = _rotated(cv, rng.uniform(0, np.pi))
    wobble = rng.uniform(0, 0.8) * np.sin(2 * np.pi * v / rng.uniform(12, 30) / cv.s + rng.uniform(0, 6.3))
    wave = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi) + wobble)
    m = np.clip(0.5 + rng.uniform(1.0, 3.0) * (wave + rng.uniform(-0.3, 0.3)), 0, 1)
    return _mix(c1, c2, m)


def _tex_checker(rng, cv: _Canvas) -> np.ndarray:
    c1, c2 = _two_colours(rng)
    cell = max(2.0, rng.uniform(2.0, 4.5) * cv.s)
    u, v = _rotated(cv, rng.uniform(0, np.pi / 2))
    u = u / cell + rng.uniform(0, 2)
    v = v / (cell * rng.uniform(0.8, 1.25)) + rng.uniform(0, 2)
    m = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    return _mix(c1, c2, m)


def _tex_speckle(rng, cv: _Canvas) -> np.ndarray:
    c1, c2 = _two_colours(rng)
    grain = 2 if (cv.s >= 1.4 and rng.random() < 0.5) else 1
    gh, gw = -(-cv.h // grain), -(-cv.w // grain)
    m = (rng.random((gh, gw)) < rng.uniform(0.3, 0.7)).astype(np.float64)
    m = np.repeat(np.repeat(m, grain, 0), grain, 1)[: cv.h, : cv.w]
    return _mix(c1, c2, m)


def _tex_flat(rng, cv: _Canvas) -> np.ndarray:
    c, _ = _colour(rng)
    u, _v = _rotated(cv, rng.uniform(0, 2 * np.pi), cv.h / 2, cv.w / 2)
    shade = rng.uniform(-25, 25) * u / (0.5 * max(cv.h, cv.w))
    return c[None, None, :] + shade[..., None]


_TEXTURES: dict[int, Callable] = {
    BACKGROUND: _tex_background, STRIPES: _tex_stripes, CHECKER: _tex_checker,
    SPECKLE: _tex_speckle, PLATE: _tex_flat, WIRE: _tex_flat, RING: _tex_flat,
}


def _texture(rng, cv: _Canvas, cls: int, mask: np.ndarray, tries: int = 3) -> np.ndarray:
    """A texture for ``cls`` that stands out from what is under ``mask`` (best of a few draws)."""
    if not mask.any():
        return cv.img
    under = cv.img[mask]
    best, best_score = None, -1.0
    for _ in range(tries):
        tex = _TEXTURES[cls](rng, cv)
        d = np.linalg.norm(tex[mask] - under, axis=1)
        q = d.size // 4
        score = float(np.partition(d, q)[q])  # 25th percentile of the per-pixel contrast
        if score > best_score:
            best, best_score = tex, score
        if score > 60:
            break
    return best


# Shapes: boolean masks.
def _blob(rng, cv: _Canvas, cy: float, cx: float, r: float, irregular: float = 1.0) -> np.ndarray:
    """Star-shaped blob: an elongated, rotated disc with a random low-frequency radius."""
    u, v = _rotated(cv, rng.uniform(0, np.pi), cy, cx)
    e = rng.uniform(0.6, 1.0)
    u, v = u / np.sqrt(e), v * np.sqrt(e)
    ang = np.arctan2(v, u)
    rad = np.ones_like(ang)
    for k in (2, 3, 4, 5):
        rad += irregular * rng.uniform(-0.13, 0.13) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) <= r * rad


def _polygon(rng, cv: _Canvas, cy: float, cx: float, r: float) -> np.ndarray:
    """Convex polygon (3-6 vertices on a rotated ellipse; 4 gives quadrilaterals/rectangles)."""
    n = int(rng.integers(3, 7))
    if rng.random() < 0.35:  # rotated rectangle
        a, b = r * rng.uniform(0.6, 1.2), r * rng.uniform(0.4, 1.0)
        u, v = _rotated(cv, rng.uniform(0, np.pi), cy, cx)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    ang = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * 2 * np.pi / n + rng.uniform(0, 2 * np.pi)
    e = rng.uniform(0.6, 1.0)
    py, px = cy + r * e * np.sin(ang), cx + r * np.cos(ang)
    my, mx = py.mean(), px.mean()  # inside a convex polygon
    mask = np.ones((cv.h, cv.w), bool)
    for i in range(n):
        y0, x0, y1, x1 = py[i], px[i], py[(i + 1) % n], px[(i + 1) % n]
        cross = (x1 - x0) * (cv.yy - y0) - (y1 - y0) * (cv.xx - x0)
        inside = 1.0 if (x1 - x0) * (my - y0) - (y1 - y0) * (mx - x0) >= 0 else -1.0
        mask &= cross * inside >= 0
    return mask


def _ground(rng, cv: _Canvas) -> np.ndarray:
    """A large region bounded by one wavy line, covering 25-55 % of the image."""
    u, v = _rotated(cv, rng.uniform(0, 2 * np.pi), cv.h / 2, cv.w / 2)
    size = min(cv.h, cv.w)
    p = u + rng.uniform(0, 0.09) * size * np.sin(2 * np.pi * v / (rng.uniform(0.4, 1.3) * size)
                                                 + rng.uniform(0, 2 * np.pi))
    return p > np.quantile(p, 1.0 - rng.uniform(0.25, 0.55))


def _thin_band(sd: np.ndarray, ny: np.ndarray | float, nx: np.ndarray | float, k: int) -> np.ndarray:
    """Pixels of a curve whose signed distance is ``sd`` and unit normal (ny, nx), ``k`` px thick.

    The band is measured along the dominant axis of the normal, so every row (or column) that
    crosses the curve holds exactly ``k`` pixels: a 3x3-cross erosion removes the whole curve.
    """
    m = np.maximum(np.abs(ny), np.abs(nx))
    if k == 1:
        return np.abs(sd) <= 0.5 * m
    return (sd >= -m) & (sd < m)


def _segment(cv: _Canvas, y0, x0, y1, x1, k: int) -> np.ndarray:
    dy, dx = y1 - y0, x1 - x0
    length = max(np.hypot(dy, dx), 1e-6)
    ty, tx = dy / length, dx / length
    t = (cv.yy - y0) * ty + (cv.xx - x0) * tx
    sd = -(cv.yy - y0) * tx + (cv.xx - x0) * ty
    ny, nx = -tx, ty
    return _thin_band(sd, ny, nx, k) & (t >= -0.5) & (t <= length + 0.5)


def _wire(rng, cv: _Canvas, k: int) -> np.ndarray:
    """A straight wire across the image, a pole, or a gently curved cable (quadratic Bezier)."""
    h, w = cv.h, cv.w
    kind = rng.choice(3, p=[0.45, 0.25, 0.30])
    if kind == 1:  # pole: near-vertical, partial height
        x = rng.uniform(1, w - 2)
        length = rng.uniform(0.35, 0.9) * h
        y0 = rng.uniform(0, h - length)
        tilt = np.tan(rng.uniform(-0.15, 0.15)) * length
        return _segment(cv, y0, x, y0 + length, x + tilt, k)
    cy, cx = cv.random_point(rng)
    theta = rng.uniform(0, np.pi)
    reach = 1.5 * max(h, w)
    p0 = np.array([cy - reach * np.sin(theta), cx - reach * np.cos(theta)])
    p2 = np.array([cy + reach * np.sin(theta), cx + reach * np.cos(theta)])
    if kind == 0:
        return _segment(cv, *p0, *p2, k)
    # curved: sag the midpoint sideways, sample 12 segments
    normal = np.array([np.cos(theta), -np.sin(theta)])
    p1 = np.array([cy, cx]) + normal * rng.uniform(-0.7, 0.7) * min(h, w)
    ts = np.linspace(0, 1, 13)[:, None]
    pts = (1 - ts) ** 2 * p0 + 2 * (1 - ts) * ts * p1 + ts ** 2 * p2
    mask = np.zeros((h, w), bool)
    for a, b in zip(pts[:-1], pts[1:]):
        mask |= _segment(cv, a[0], a[1], b[0], b[1], k)
    return mask


def _ring(rng, cv: _Canvas, k: int) -> np.ndarray:
    """A thin closed ring (slightly elliptic), ``k`` px thick."""
    r = max(3.5, rng.uniform(4.0, 12.0) * cv.s)
    cy, cx = cv.random_point(rng)
    b = r * rng.uniform(0.7, 1.0)
    return _ellipse_ring(cv, cy, cx, r, b, rng.uniform(0, np.pi), k)


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3-cross binary erosion (the image border counts as inside)."""
    p = np.pad(mask, 1, mode="edge")
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _region(rng, cv: _Canvas, lo: float, hi: float, point=None) -> np.ndarray:
    cy, cx = point if point is not None else cv.random_point(rng)
    r = rng.uniform(lo, hi) * np.sqrt(cv.h * cv.w)
    if rng.random() < 0.55:
        return _blob(rng, cv, cy, cx, r, irregular=rng.uniform(0.3, 1.2))
    return _polygon(rng, cv, cy, cx, r)


def _split(rng, cv: _Canvas, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``mask`` in two along a slightly wavy line through one of its pixels."""
    core = _erode(_erode(mask))
    cy, cx = cv.random_point(rng, core if core.any() else mask)
    u, v = _rotated(cv, rng.uniform(0, 2 * np.pi), cy, cx)
    side = u + rng.uniform(0, 2.5) * cv.s * np.sin(v / (rng.uniform(3, 8) * cv.s)
                                                   + rng.uniform(0, 2 * np.pi)) > 0
    return mask & side, mask & ~side


def _other(rng, choices, avoid: int) -> int:
    rest = [c for c in choices if c != avoid]
    return int(rest[rng.integers(len(rest))])


def _dominant(lab: np.ndarray, mask: np.ndarray) -> int:
    return int(np.bincount(lab[mask], minlength=len(CLASSES)).argmax()) if mask.any() else -1


def _photometric(rng, img: np.ndarray) -> np.ndarray:
    """Blur a little, jitter brightness/contrast/colour cast globally, add pixel noise."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(p[dy:dy + img.shape[0], dx:dx + img.shape[1]] for dy in range(3) for dx in range(3)) / 9
    a = rng.uniform(0.0, 0.35)
    img = (1 - a) * img + a * blur
    img = (img - 128.0) * rng.uniform(0.75, 1.2) + 128.0 + rng.uniform(-30, 30) + rng.normal(0, 6, 3)
    img = img + rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _check_size(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {MIN_SIZE}, got {value!r}")
    if value < MIN_SIZE:
        raise ValueError(f"{name} must be >= {MIN_SIZE} pixels, got {value}")
    return int(value)


def render_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (H, W, 3), label uint8 (H, W))`` with labels in ``0..K-1``.

    Layers, painted back to front: textured background; one or two large textured regions
    (sometimes split between two classes: long shared boundaries); medium objects, mostly placed
    on the edge of what is there (touching objects); bands crossing a large region (one region,
    several pieces); thin wires, poles and rings (1-2 px); small late occluders that cut thin
    structures; then photometric jitter and noise.
    """
    height, width = _check_size(height, "height"), _check_size(width, "width")
    cv = _Canvas(height, width)
    size = np.sqrt(height * width)
    cv.paint(np.ones((height, width), bool), BACKGROUND, _tex_background(rng, cv))

    # 1. large textured regions (connectivity); sometimes split in two classes (boundaries)
    large = []
    for _ in range(int(rng.integers(1, 3))):
        mask = _ground(rng, cv) if rng.random() < 0.4 else _region(rng, cv, 0.25, 0.42)
        cls = PLATE if rng.random() < 0.1 else int(rng.choice(TEXTURED))
        if rng.random() < 0.35:
            m1, m2 = _split(rng, cv, mask)
            cv.paint(m1, cls, _texture(rng, cv, cls, m1))
            cls2 = _other(rng, SOLID, cls)
            cv.paint(m2, cls2, _texture(rng, cv, cls2, m2))
        else:
            cv.paint(mask, cls, _texture(rng, cv, cls, mask))
        large.append(mask)

    # 2. medium objects, mostly on the edge of existing regions (touching, shared boundaries)
    for _ in range(int(rng.integers(2, 4))):
        fg = cv.lab != BACKGROUND
        edge = fg & ~_erode(fg)
        point = cv.random_point(rng, edge) if rng.random() < 0.65 else None
        mask = _region(rng, cv, 0.09, 0.2, point)
        cls = int(rng.choice(SOLID, p=[0.2, 0.2, 0.2, 0.4]))
        if _dominant(cv.lab, mask) == cls:
            cls = _other(rng, SOLID, cls)
        cv.paint(mask, cls, _texture(rng, cv, cls, mask))

    # 3. bands across a large region: the region is seen as several pieces
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 3))):
            target = large[int(rng.integers(len(large)))] & (cv.lab != BACKGROUND)
            cy, cx = cv.random_point(rng, target)
            u, v = _rotated(cv, rng.uniform(0, np.pi), cy, cx)
            half = rng.uniform(1.25, 3.5) * cv.s
            mask = (np.abs(v) < half) & (np.abs(u) < rng.uniform(0.3, 0.8) * size)
            under = _dominant(cv.lab, mask)
            cls = PLATE if (rng.random() < 0.5 and under != PLATE) else _other(rng, SOLID, under)
            cv.paint(mask, cls, _texture(rng, cv, cls, mask))

    # 4. thin structures, 1 or 2 px thick (boundary completeness)
    for _ in range(int(rng.integers(1, 4))):
        mask = _wire(rng, cv, int(rng.integers(1, 3)))
        cv.paint(mask, WIRE, _texture(rng, cv, WIRE, mask))
    for _ in range(int(rng.integers(1, 3))):
        mask = _ring(rng, cv, int(rng.integers(1, 3)))
        cv.paint(mask, RING, _texture(rng, cv, RING, mask))

    # 5. small late occluders that cut thin structures into pieces
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            thin = (cv.lab == WIRE) | (cv.lab == RING)
            mask = _region(rng, cv, 0.05, 0.1, cv.random_point(rng, thin))
            cls = int(rng.choice(SOLID))
            cv.paint(mask, cls, _texture(rng, cv, cls, mask))

    return _photometric(rng, cv.img), cv.lab.copy()


def _ellipse_ring(cv: _Canvas, cy: float, cx: float, a: float, b: float, theta: float,
                  k: int) -> np.ndarray:
    """A closed elliptic ring ``k`` px thick, centre (cy, cx), half-axes a, b, rotated theta."""
    u, v = _rotated(cv, theta, cy, cx)
    rho = np.maximum(np.sqrt((u / a) ** 2 + (v / b) ** 2), 1e-9)
    gu, gv = u / a ** 2 / rho, v / b ** 2 / rho  # gradient of rho in (u, v)
    gn = np.maximum(np.hypot(gu, gv), 1e-9)
    sd = (rho - 1.0) / gn  # first-order signed distance to the ellipse
    c, s = np.cos(theta), np.sin(theta)
    nx, ny = (gu * c - gv * s) / gn, (gu * s + gv * c) / gn  # unit normal in image axes
    return _thin_band(sd, ny, nx, k)


def _object(rng, cv: _Canvas, cls: int, cy: float, cx: float, r: float) -> np.ndarray:
    """One whole object of ``cls`` of radius ``r`` at (cy, cx): a textured or flat region, a ring
    2-3 px thick, or a wire (a straight or bent stroke 2-3 px thick, about 2r long)."""
    k = max(2, int(round(rng.uniform(2.0, 3.0) * cv.s)))
    if cls == RING:
        return _ellipse_ring(cv, cy, cx, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, np.pi), k)
    if cls == WIRE:
        theta = rng.uniform(0, np.pi)
        dy, dx = r * np.sin(theta), r * np.cos(theta)
        bend = rng.uniform(-0.5, 0.5) * r  # the middle point moved sideways: a bent wire
        my, mx = cy + bend * np.cos(theta), cx - bend * np.sin(theta)
        return (_segment(cv, cy - dy, cx - dx, my, mx, k)
                | _segment(cv, my, mx, cy + dy, cx + dx, k))
    if rng.random() < 0.5:
        return _blob(rng, cv, cy, cx, r, irregular=rng.uniform(0.3, 1.0))
    return _polygon(rng, cv, cy, cx, r)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def _box_iou(a, b) -> float:
    ih = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def render_objects(rng: np.random.Generator, height: int, width: int, *,
                   objects: tuple[int, int] = (2, 4), radius: tuple[float, float] = (0.14, 0.26),
                   max_overlap: float = 0.15, min_visible: float = 0.6,
                   min_area: int = 8) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One detection scene: ``(image uint8 (H, W, 3), [(class, visible mask), ...])``.

    The classes of :data:`CLASSES` as whole objects on the textured background (the embedded
    detection set, :mod:`bcd.data.coco`): ``objects`` (inclusive range) objects of random
    classes, radius ``radius`` x the image's side, placed so that no two boxes overlap by more
    than ``max_overlap`` IoU (up to 30 draws each; an object that finds no place is left out).
    Later objects may hide parts of earlier ones; an object is kept when at least
    ``min_visible`` of it and ``min_area`` pixels stay visible, and its instance mask is what
    is visible. The same photometric jitter as :func:`render_sample`.
    """
    height, width = _check_size(height, "height"), _check_size(width, "width")
    cv = _Canvas(height, width)
    side = min(height, width)
    cv.paint(np.ones((height, width), bool), BACKGROUND, _tex_background(rng, cv))
    placed: list[tuple[int, np.ndarray]] = []
    boxes = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        for _try in range(30):
            r = rng.uniform(*radius) * side
            cy, cx = rng.uniform(0.6 * r, height - 0.6 * r), rng.uniform(0.6 * r, width - 0.6 * r)
            mask = _object(rng, cv, cls, cy, cx, r)
            box = _box(mask)
            if box and all(_box_iou(box, b) <= max_overlap for b in boxes):
                break
        else:
            continue
        cv.paint(mask, cls, _texture(rng, cv, cls, mask))
        placed.append((cls, mask))
        boxes.append(box)
    found = []
    for i, (cls, mask) in enumerate(placed):
        visible = mask.copy()
        for _cls, later in placed[i + 1:]:
            visible &= ~later
        if visible.sum() >= max(min_area, min_visible * mask.sum()):
            found.append((cls, visible))
    return _photometric(rng, cv.img), found


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of generation order and of the other samples."""
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def colorize(label: np.ndarray) -> np.ndarray:
    """Label map -> RGB with :data:`PALETTE` (unknown labels white)."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(PALETTE)] = np.array(PALETTE, np.uint8)
    return lut[label]


# ----------------------------------------------------------------------------------------------
# The dataset folder (mmseg layout)
# ----------------------------------------------------------------------------------------------
# A folder whose meta.json differs in one of these (an old one without num_test included) was
# generated with other arguments.
ARG_KEYS = ("seed", "num_train", "num_val", "num_test", "height", "width", "generator_version")


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write one PNG (RGB for (H, W, 3), mode 'L' for (H, W)); deterministic bytes."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _validate(seed, num_train, num_val, height, width, num_test=0) -> dict:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not _is_int(num_test) or num_test < 0:
        raise ValueError(f"num_test must be a non-negative integer, got {num_test!r}")
    height = _check_size(height, "height")
    width = height if width is None else _check_size(width, "width")
    return dict(seed=int(seed), num_train=int(num_train), num_val=int(num_val),
                num_test=int(num_test), height=height, width=width,
                generator_version=GENERATOR_VERSION)


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / "meta.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return {}


def _write_dataset(out: Path, args: dict) -> None:
    counts = {}
    for split in SPLITS:
        hist = np.zeros(len(CLASSES), np.int64)
        if args[f"num_{split}"]:  # no folder for an empty split (num_test: 0)
            (out / "img_dir" / split).mkdir(parents=True)
            (out / "ann_dir" / split).mkdir(parents=True)
        for i in range(args[f"num_{split}"]):
            img, lab = render_sample(sample_rng(args["seed"], split, i), args["height"], args["width"])
            _save_png(out / "img_dir" / split / f"{i:05d}.png", img)
            _save_png(out / "ann_dir" / split / f"{i:05d}.png", lab)
            hist += np.bincount(lab.ravel(), minlength=len(CLASSES))
        counts[split] = hist
    meta = dict(args)
    meta.update(
        classes=list(CLASSES), palette=PALETTE, ignore_index=255,
        class_pixel_counts={s: [int(c) for c in counts[s]] for s in SPLITS},
        class_frequencies={s: [round(float(c) / max(int(counts[s].sum()), 1), 6) for c in counts[s]]
                           for s in SPLITS},
        layout=dict(img_dir="img_dir/{split}/{index:05d}.png", ann_dir="ann_dir/{split}/{index:05d}.png"),
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def generate(root: str | Path, seed: int, num_train: int, num_val: int, height: int,
             width: int | None = None, overwrite: bool = False, *, num_test: int = 0) -> Path:
    """Write the dataset to ``root`` (mmseg layout) and return ``root``.

    ``root/img_dir/{train,val,test}/{i:05d}.png`` (RGB),
    ``root/ann_dir/{train,val,test}/{i:05d}.png`` (labels, mode 'L') and, last,
    ``root/meta.json``; ``num_test`` 0 writes no test folders. Everything is written to a temporary
    sibling folder that is renamed into place at the end, so an interrupted run leaves nothing
    under ``root``. Idempotent: a complete ``root`` made with the same arguments is returned
    untouched (an incomplete one is rewritten); one made with other arguments raises
    :class:`FileExistsError` unless ``overwrite``.
    """
    args = _validate(seed, num_train, num_val, height, width, num_test)
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder; remove it or choose another path")
        meta = _read_meta(root)
        if meta is None and not any(root.iterdir()):
            pass  # an empty folder (e.g. created by a workflow engine): fill it
        elif meta is None:
            if not overwrite or not ((root / "img_dir").is_dir() or (root / "ann_dir").is_dir()):
                raise FileExistsError(
                    f"{root} exists but holds no meta.json (not a dataset written by generate(), or "
                    f"an incomplete one); remove it or pass overwrite=True")
        else:
            differing = [k for k in ARG_KEYS if meta.get(k) != args[k]]
            if not differing:
                try:
                    check_dataset(root, deep=False)
                    return root
                except (FileNotFoundError, ValueError):
                    pass  # same arguments but incomplete: regenerate (deterministic)
            elif not overwrite:
                detail = ", ".join(f"{k}: {meta.get(k)!r} there, {args[k]!r} asked" for k in differing)
                raise FileExistsError(
                    f"{root} holds a dataset generated with different arguments ({detail}); "
                    f"pass overwrite=True or choose another path")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write_dataset(tmp, args)
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, trash / root.name)
            try:
                os.replace(tmp, root)
            except OSError:
                os.replace(trash / root.name, root)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            try:
                os.replace(tmp, root)
            except OSError:
                # another process won the race: fine if it wrote the same dataset
                other = _read_meta(root) or {}
                if any(other.get(k) != args[k] for k in ARG_KEYS):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG header (no decoding)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check_dataset(root: str | Path, deep: bool = True) -> dict:
    """Verify a prepared dataset folder and return its meta data (plus ``root`` and ``counts``).

    Checks that ``meta.json`` exists, that every split holds exactly the images and labels it
    names (a meta.json without ``num_test``, written before the test split existed: no test
    split), and that every label has the size of its image; with ``deep`` it also decodes the
    labels and checks their mode ('L') and values (``< len(classes)``). Raises
    :class:`FileNotFoundError` (something missing) or :class:`ValueError` (something wrong) with
    a message naming the file and how to rebuild the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist; {HINT} to generate it")
    meta = _read_meta(root)
    if meta is None:
        raise FileNotFoundError(
            f"{root / 'meta.json'} is missing: {root} is not a prepared dataset (or its preparation "
            f"was interrupted); {HINT} to generate it")
    missing_keys = [k for k in ("num_train", "num_val", "height", "width", "classes") if k not in meta]
    if missing_keys:
        raise ValueError(f"{root / 'meta.json'} is unreadable or lacks {missing_keys}; {HINT} "
                         f"(remove the folder first if it was not written by bcd)")
    h, w, k = meta["height"], meta["width"], len(meta["classes"])
    counts = {}
    for split in SPLITS:
        n = meta.get(f"num_{split}", 0)  # only num_test may be absent (checked above)
        counts[split] = n
        if n == 0:
            continue
        expected = {f"{i:05d}.png" for i in range(n)}
        for sub in ("img_dir", "ann_dir"):
            d = root / sub / split
            if not d.is_dir():
                raise FileNotFoundError(f"folder {d} is missing from the dataset {root}; {HINT} to "
                                        f"regenerate it")
            have = {p.name for p in d.iterdir() if p.suffix == ".png"}
            if expected - have:
                lost = sorted(expected - have)
                what = "label" if sub == "ann_dir" else "image"
                raise FileNotFoundError(
                    f"{len(lost)} {what} file(s) missing in {d} (first: {sub}/{split}/{lost[0]}; "
                    f"meta.json says {n}); {HINT} to regenerate the dataset")
            if have - expected:
                extra = sorted(have - expected)
                raise ValueError(f"{len(extra)} unexpected file(s) in {d} (first: {extra[0]}; "
                                 f"meta.json says {n}); {HINT} with a clean folder")
        if deep:
            from PIL import Image

            for name in sorted(expected):
                img_p, ann_p = root / "img_dir" / split / name, root / "ann_dir" / split / name
                isize, asize = _png_size(img_p), _png_size(ann_p)
                if isize != (w, h):
                    raise ValueError(f"image {img_p} is {isize[0]}x{isize[1]} (WxH), meta.json says "
                                     f"{w}x{h}; {HINT} to regenerate the dataset")
                if asize != isize:
                    raise ValueError(f"label {ann_p} is {asize[0]}x{asize[1]} (WxH) but its image "
                                     f"{img_p} is {isize[0]}x{isize[1]}; {HINT} to regenerate the dataset")
                with Image.open(ann_p) as im:
                    if im.mode != "L":
                        raise ValueError(f"label {ann_p} has mode {im.mode!r}, expected 'L'; {HINT}")
                    top = int(np.asarray(im).max())
                if top >= k:
                    raise ValueError(f"label {ann_p} holds value {top} but there are only {k} classes; "
                                     f"{HINT} to regenerate the dataset")
    return dict(meta, root=str(root), counts=counts)


# ----------------------------------------------------------------------------------------------
# Command line: generate, summarise, and draw a grid of samples
# ----------------------------------------------------------------------------------------------
def sample_grid(seed: int = 0, n: int = 8, height: int = 64, width: int | None = None,
                scale: int = 4, split: str = "train") -> np.ndarray:
    """An RGB grid of ``n`` samples, each shown as ``image | colourised label``, two per row."""
    width = height if width is None else width
    tiles = []
    for i in range(n):
        img, lab = render_sample(sample_rng(seed, split, i), height, width)
        pair = np.concatenate([img, np.full((height, 1, 3), 255, np.uint8), colorize(lab)], axis=1)
        tiles.append(np.kron(pair, np.ones((scale, scale, 1), np.uint8)))
    th, tw = tiles[0].shape[:2]
    cols, gap = 2, 3 * scale
    rows = -(-n // cols)
    grid = np.full((rows * (th + gap) - gap, cols * (tw + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (th + gap): r * (th + gap) + th, c * (tw + gap): c * (tw + gap) + tw] = t
    return grid


# ----------------------------------------------------------------------------------------------
# The registry entry (bcd.data.registry): params ``data.dataset: shapes``
# ----------------------------------------------------------------------------------------------
#: JSON schema of ``data.shapes`` (merged into the params schema by bcd.data.registry)
SETTINGS = {"shapes": {
    "description": "the generated dataset (bcd.data.synthetic)",
    "type": "object",
    "additionalProperties": False,
    "required": ["seed", "num_train", "num_val"],
    "properties": {
        "seed": {"type": "integer", "minimum": 0},
        "num_train": {"type": "integer", "minimum": 1},
        "num_val": {"type": "integer", "minimum": 1},
        "num_test": {"type": "integer", "minimum": 0, "description": (
            "test images (split id 2; absent = 0, which eval_split test refuses); train and val "
            "do not depend on it")},
        "eval_split": {"enum": ["val", "test"], "description": "split of the tables (default test)"},
    },
}}


def _prepare(data, out: Path) -> Path:
    gen = data["shapes"]
    # the stage owns its folder: one generated with other arguments (an older params file, or
    # one from before the test split) is rebuilt, as Snakemake and DVC would clear it
    return generate(out, seed=gen["seed"], num_train=gen["num_train"], num_val=gen["num_val"],
                    num_test=gen.get("num_test", 0), height=data["height"],
                    width=data.get("width"), overwrite=True)


def eval_split(data) -> str:
    """``shapes.eval_split``, by default test (choices are made on val, which training
    evaluates); refused when there are no test images."""
    shapes = data.get("shapes") or {}
    split = shapes.get("eval_split", "test")
    if split == "test" and not shapes.get("num_test"):
        raise ValueError(f"the tables report the test split (shapes.eval_split, default test) "
                         f"but shapes.num_test is "
                         f"{shapes.get('num_test', 'absent')}: set data.shapes.num_test (e.g. 96) "
                         "and rerun the data stage, or report val with shapes.eval_split: val")
    return split


def _require(data, root: Path, make: str) -> Path:
    split = eval_split(data)
    if check_dataset(root)["counts"][split] == 0:  # a folder from before the test split
        raise FileNotFoundError(f"dataset {root} holds no {split} split, which the tables "
                                f"report (shapes.eval_split); rebuild it: {make}")
    return root


def _dataset(data, root, split: str, train: bool) -> dict:
    """mmseg config of one split: whole images, random flip when training."""
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    if train:
        pipeline.append(dict(type="RandomFlip", prob=0.5))
    pipeline.append(dict(type="PackSegInputs"))
    return dict(_scope_="mmseg", type="BCDShapesDataset", data_root=str(root),
                data_prefix=dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}"),
                pipeline=pipeline)


def _param_errors(data) -> list:
    shapes = data.get("shapes") or {}
    if shapes.get("eval_split", "test") == "test" and not shapes.get("num_test"):
        return [(("shapes", "num_test"),
                 f"no test images (num_test {shapes.get('num_test', 'absent')}), but the "
                 "tables report the test split (shapes.eval_split: test, the default): set "
                 "num_test (params/default.yaml has 96), or report val with "
                 "shapes.eval_split: val")]
    return []


ENTRIES = (DatasetEntry(
    name="shapes", title="generated shapes", mmseg_type="BCDShapesDataset",
    num_classes=len(CLASSES), classes=CLASSES, palette=tuple(map(tuple, PALETTE)),
    settings=SETTINGS, required=("shapes",), prepare=_prepare, require=_require,
    dataset=_dataset, eval_split=eval_split, param_errors=_param_errors,
    crop_is_image_size=True),)  # the data stage reads the crop: it is the image size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bcd.data.synthetic",
                                 description="Generate the embedded dataset and summarise it.")
    ap.add_argument("--out", required=True, help="dataset folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=320)
    ap.add_argument("--num-val", type=int, default=96)
    ap.add_argument("--num-test", type=int, default=96)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--grid", default="/tmp/synthetic_grid.png",
                    help="PNG grid of 8 samples (image | label); '' to skip")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    root = generate(a.out, a.seed, a.num_train, a.num_val, a.height, a.width,
                    overwrite=a.overwrite, num_test=a.num_test)
    dt = time.perf_counter() - t0
    meta = check_dataset(root)
    print(f"dataset: {root}  ({meta['num_train']} train + {meta['num_val']} val + "
          f"{meta['num_test']} test, {meta['height']}x{meta['width']}, seed {meta['seed']}, "
          f"{dt:.2f} s)")
    print(f"{'class':<12}" + "".join(f"{s:>10}" for s in SPLITS))
    for k, name in enumerate(CLASSES):
        print(f"{k} {name:<10}" + "".join(f"{meta['class_frequencies'][s][k]:>10.4f}" for s in SPLITS))
    if a.grid:
        from PIL import Image

        Image.fromarray(sample_grid(a.seed, 8, a.height, a.width)).save(a.grid)
        print(f"grid of 8 train samples: {a.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
