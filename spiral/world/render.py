"""Procedural renderer for the tabletop world (DESIGN §4): symbolic state + action → frames.

The scene is a side view of a shelf-like table. Everything is laid out in *base units*
(the canvas is 1×1, x to the right, y down) and scaled by ``size`` when drawn, so any
resolution gives the same picture. Drawing is pure numpy with analytic anti-aliasing
(exact pixel coverage for axis-aligned rectangles, a half-pixel ramp on signed distances
for polygons and discs), which keeps it deterministic and fast (thousands of 64×64
frames per second on one core).

Layout (base units):

- table top at ``TABLE_Y``; five slots (``domain.SLOTS``) spread over the left ~65%;
- blocks are ``BLOCK_SIZE`` squares standing on a slot or stacked (4 high fits);
- the box stands on the right. Every block has its own fixed cell inside it (a 2×2 grid
  seen through a translucent glass front), so what is in the box stays visible and
  recognisable with the lid closed. The lid is hinged at the box's top-right corner and
  rotates up to vertical when open;
- a hanging lamp top-left with a pull cord; when lit the bulb glows and the whole scene
  gets warmer and brighter (a global change, ~40/255 in mean colour);
- a gripper (vertical arm from the top, palm and two fingers) that parks at ``HOME``.

Failures (``FAILURES``) are rendered on purpose as labelled negatives, one small renderer per kind
(``_RENDERERS``); what each one does, including deterministic fallbacks, is described in
:func:`render_action`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from spiral.world.domain import (
    BLOCKS,
    BOX,
    LAMP,
    SLOTS,
    Action,
    State,
    apply,
    check,
    is_applicable,
)

__all__ = [
    "FAILURES",
    "FAILURE_KIND",
    "Appearance",
    "RenderResult",
    "render_state",
    "render_action",
    "rest_positions",
    "block_rect",
    "BLOCK_SIZE",
    "TABLE_Y",
    "HOME",
]

FAILURES: tuple[str, ...] = ("incomplete", "wrong_object", "extra_motion", "teleport", "drift", "no_motion")
FAILURE_KIND: dict[str, str] = {
    "incomplete": "incomplete_action",
    "wrong_object": "missing_action",
    "no_motion": "missing_action",
    "extra_motion": "physical_violation",
    "teleport": "sudden_switch",
    "drift": "scene_drift",
}

# ---------------------------------------------------------------- layout (base units)
BLOCK_SIZE = 0.10
BS = BLOCK_SIZE
TABLE_Y = 0.82
SLOT_X: tuple[float, ...] = (0.085, 0.21, 0.335, 0.46, 0.585)
BOX_X0, BOX_X1, BOX_TOP = 0.675, 0.955, 0.54
BOX_WALL = 0.012
_CELL_W = (BOX_X1 - BOX_X0 - 2 * BOX_WALL) / 2
_COLS = (BOX_X0 + BOX_WALL + _CELL_W / 2, BOX_X0 + BOX_WALL + 1.5 * _CELL_W)
_ROW_Y = (TABLE_Y - BOX_WALL, TABLE_Y - BOX_WALL - 0.13)  # block bottoms: lower row, upper row
#: Fixed cell of each block inside the box: (centre x, bottom y).
BOX_SPOT: dict[str, tuple[float, float]] = {
    "red_block": (_COLS[0], _ROW_Y[0]),
    "green_block": (_COLS[1], _ROW_Y[0]),
    "blue_block": (_COLS[0], _ROW_Y[1]),
    "yellow_block": (_COLS[1], _ROW_Y[1]),
}
LID_LEN, LID_TH = 0.31, 0.034
LID_OPEN_DEG = 90.0
HINGE = (BOX_X1, BOX_TOP)
LAMP_X, SHADE_Y0, SHADE_Y1 = 0.12, 0.045, 0.13
BULB = (LAMP_X, 0.142, 0.036)  # x, y, radius
KNOB_X, KNOB_Y, KNOB_R = 0.20, 0.24, 0.015
PULL = 0.04
# gripper: pose = (x, palm bottom y, finger half-gap)
HOME: tuple[float, float, float] = (0.45, 0.10, 0.075)
G_OPEN, G_BLOCK, G_THIN = 0.075, BS / 2 + 0.001, 0.022
FINGER_W, FINGER_L, PALM_H, ARM_W = 0.016, 0.065, 0.022, 0.028
CARRY_GY = 0.25  # palm height while carrying: a held block's bottom (<= 0.37) clears a 4-tower (top 0.42)

_DIM, _WARM = 0.84, np.array([26.0, 14.0, -6.0], np.float32)
_GLOW_COL = np.array([60.0, 50.0, 20.0], np.float32)

Vec3 = tuple[float, float, float]


# ---------------------------------------------------------------- appearance
@dataclass(frozen=True)
class Appearance:
    """The look of one scene, fixed for a whole episode (colour jitter, slot offsets, a distractor).

    Sampling it per scene makes learned recognisers robust to small visual changes while
    the layout (and so the symbolic meaning of positions) stays the same.
    """

    block_rgb: tuple[Vec3, ...] = ((205.0, 45.0, 40.0), (45.0, 165.0, 60.0), (45.0, 85.0, 215.0), (235.0, 205.0, 35.0))
    wall_rgb: Vec3 = (200.0, 204.0, 196.0)
    table_rgb: Vec3 = (150.0, 105.0, 65.0)
    box_rgb: Vec3 = (95.0, 80.0, 70.0)
    lid_rgb: Vec3 = (150.0, 70.0, 35.0)
    glass_rgb: Vec3 = (190.0, 220.0, 235.0)
    slot_dx: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    distractor: str | None = None  # "plant", "cup", "picture" or None
    distractor_dx: float = 0.0

    @classmethod
    def default(cls) -> Appearance:
        return cls()

    @classmethod
    def sample(cls, scene_seed: int) -> Appearance:
        """A slightly jittered look, deterministic in ``scene_seed``; colour names stay unambiguous."""
        rng = np.random.default_rng([int(scene_seed), 7919])
        d = cls()

        def jit(c: Vec3, amount: float) -> Vec3:
            return tuple(float(np.clip(round(v + rng.uniform(-amount, amount), 1), 0, 255)) for v in c)  # type: ignore[return-value]

        walls = ((200.0, 204.0, 196.0), (210.0, 200.0, 185.0), (190.0, 200.0, 210.0), (205.0, 195.0, 200.0))
        tables = ((150.0, 105.0, 65.0), (125.0, 90.0, 60.0), (165.0, 125.0, 80.0), (120.0, 110.0, 100.0))
        return cls(
            block_rgb=tuple(jit(c, 16) for c in d.block_rgb),
            wall_rgb=jit(walls[int(rng.integers(len(walls)))], 8),
            table_rgb=jit(tables[int(rng.integers(len(tables)))], 8),
            box_rgb=jit(d.box_rgb, 10),
            lid_rgb=jit(d.lid_rgb, 10),
            glass_rgb=jit(d.glass_rgb, 8),
            slot_dx=tuple(round(float(v), 4) for v in rng.uniform(-0.005, 0.005, len(SLOTS))),
            distractor=(None, "plant", "cup", "picture")[int(rng.integers(4))],
            distractor_dx=round(float(rng.uniform(-0.03, 0.03)), 4),
        )


# ---------------------------------------------------------------- result
@dataclass
class RenderResult:
    """A rendered clip plus its ground truth (what really happened, not what was asked)."""

    frames: np.ndarray
    end_state: State
    failure: str | None
    held: list[str | None]
    moved: set[str]
    meta: dict[str, Any] = field(default_factory=dict)
    #: per-frame ground truth for training recognisers: block positions (centre x, bottom y, base units),
    #: the block in the gripper, lid opening, light level, cord pull and gripper pose (x, palm y, half-gap)
    frame_labels: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- geometry helpers
def rest_positions(state: State, appearance: Appearance | None = None) -> dict[str, tuple[float, float]]:
    """(centre x, bottom y) in base units of every block at rest in ``state``."""
    app = appearance or Appearance.default()
    out: dict[str, tuple[float, float]] = {}
    for b in BLOCKS:
        base = state.base_slot(b)
        if base == BOX:
            out[b] = BOX_SPOT[b]
        else:
            i = SLOTS.index(base)
            out[b] = (SLOT_X[i] + app.slot_dx[i], TABLE_Y - state.height(b) * BS)
    return out


def block_rect(pos: tuple[float, float], size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), exclusive end, fully covered by a block at ``pos``; for tests and recognisers."""
    x, yb = pos
    return (math.ceil((x - BS / 2) * size), math.ceil((yb - BS) * size), math.floor((x + BS / 2) * size),
            math.floor(yb * size))


def _lid_frame(phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the lid (hinge → free end) and across it (outer face) at open fraction ``phi``."""
    th = math.radians(LID_OPEN_DEG * phi)
    return np.array([-math.cos(th), -math.sin(th)]), np.array([math.sin(th), -math.cos(th)])


def _lid_corners(phi: float) -> np.ndarray:
    u, v = _lid_frame(phi)
    h = np.array(HINGE)
    return np.stack([h, h + LID_LEN * u, h + LID_LEN * u + LID_TH * v, h + LID_TH * v])


def _lid_grip(phi: float) -> tuple[float, float]:
    """Gripper (x, palm y) holding the lid's free end."""
    u, v = _lid_frame(phi)
    p = np.array(HINGE) + (LID_LEN - 0.018) * u + (LID_TH / 2) * v
    return float(p[0]), float(p[1]) - 0.014


# ---------------------------------------------------------------- raster primitives (pixel units)
# Each primitive becomes a cached "layer": the pixel window it touches, what to keep of the image
# there (1 - coverage·alpha) and what to add (colour·coverage·alpha). Static things (blocks at rest,
# the gripper at home, the lid shut) hit the cache, so a frame costs a couple of numpy ops per object.
_AR = np.arange(4097, dtype=np.float32)
_Layer = tuple  # (iy0, iy1, ix0, ix1, keep[h,w,1], prem[h,w,C]) or None


def _cov(a0: float, a1: float, i0: int, i1: int) -> np.ndarray:
    """Exact coverage of pixels i0..i1-1 by the interval [a0, a1]."""
    c = np.ones(i1 - i0, np.float32)
    c[0] = min(i0 + 1.0, a1) - max(float(i0), a0)
    if i1 - i0 > 1:
        c[-1] = a1 - max(i1 - 1.0, a0)
    return c


def _finish(iy0: int, ix0: int, a: np.ndarray, col: tuple, alpha: float) -> _Layer:
    a = (a * alpha).astype(np.float32)[..., None]
    keep = 1.0 - a
    prem = a * np.asarray(col, np.float32)
    keep.flags.writeable = prem.flags.writeable = False  # cached and shared between frames
    return iy0, iy0 + a.shape[0], ix0, ix0 + a.shape[1], keep, prem


@lru_cache(maxsize=4096)
def _rect_layer(x0: float, y0: float, x1: float, y1: float, h: int, w: int, col: tuple, alpha: float) -> _Layer:
    ix0, ix1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)), w)
    iy0, iy1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)), h)
    if ix1 <= ix0 or iy1 <= iy0 or x1 <= x0 or y1 <= y0:
        return None
    return _finish(iy0, ix0, np.outer(_cov(y0, y1, iy0, iy1), _cov(x0, x1, ix0, ix1)), col, alpha)


@lru_cache(maxsize=2048)
def _poly_layer(pts: tuple, h: int, w: int, col: tuple, alpha: float) -> _Layer:
    """Convex polygon; coverage is a half-pixel ramp on the signed distance to its edges."""
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    ix0, iy0 = max(int(math.floor(p[:, 0].min())), 0), max(int(math.floor(p[:, 1].min())), 0)
    ix1, iy1 = min(int(math.ceil(p[:, 0].max())), w), min(int(math.ceil(p[:, 1].max())), h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    q = np.roll(p, -1, axis=0)
    e = q - p
    area = np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1])
    n = np.stack([e[:, 1], -e[:, 0]], 1) * (1.0 if area > 0 else -1.0)  # outward normals
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    c = np.sum(n * p, axis=1)
    xs, ys = _AR[ix0:ix1] + 0.5, _AR[iy0:iy1] + 0.5
    d = np.max(n[:, 0, None, None] * xs[None, None, :] + n[:, 1, None, None] * ys[None, :, None] - c[:, None, None], 0)
    return _finish(iy0, ix0, np.clip(0.5 - d, 0, 1), col, alpha)


@lru_cache(maxsize=2048)
def _disc_layer(cx: float, cy: float, r: float, h: int, w: int, col: tuple, alpha: float) -> _Layer:
    ix0, ix1 = max(int(math.floor(cx - r - 1)), 0), min(int(math.ceil(cx + r + 1)), w)
    iy0, iy1 = max(int(math.floor(cy - r - 1)), 0), min(int(math.ceil(cy + r + 1)), h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    dx, dy = _AR[ix0:ix1] + 0.5 - cx, _AR[iy0:iy1] + 0.5 - cy
    d = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2) - r
    return _finish(iy0, ix0, np.clip(0.5 - d, 0, 1), col, alpha)


def _blend(img: np.ndarray, layer: _Layer) -> None:
    if layer is not None:
        iy0, iy1, ix0, ix1, keep, prem = layer
        reg = img[iy0:iy1, ix0:ix1]
        reg *= keep
        reg += prem


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, col: tuple, alpha: float = 1.0) -> None:
    _blend(img, _rect_layer(x0, y0, x1, y1, img.shape[0], img.shape[1], col, alpha))


def _poly(img: np.ndarray, pts: np.ndarray, col: tuple, alpha: float = 1.0) -> None:
    key = tuple(float(v) for v in np.asarray(pts).ravel())
    _blend(img, _poly_layer(key, img.shape[0], img.shape[1], col, alpha))


def _disc(img: np.ndarray, cx: float, cy: float, r: float, col: tuple, alpha: float = 1.0) -> None:
    _blend(img, _disc_layer(cx, cy, r, img.shape[0], img.shape[1], col, alpha))


def _c(rgb: Vec3 | tuple[float, ...], k: float = 1.0) -> tuple[float, ...]:
    return tuple(min(255.0, max(0.0, float(v) * k)) for v in rgb)


def _rgba(rgb: Vec3 | tuple[float, ...]) -> tuple[float, ...]:
    return (*(float(v) for v in rgb), 255.0)


# ---------------------------------------------------------------- cached static layers
@lru_cache(maxsize=96)
def _background(app: Appearance, size: int) -> np.ndarray:
    """Wall, table, slot marks, box interior, lamp fixture and the distractor: everything that never moves."""
    s = float(size)
    img = np.empty((size, size, 3), np.float32)
    yy = (_AR[:size] + 0.5) / s
    img[:] = (np.asarray(app.wall_rgb, np.float32)[None, :] * (1.04 - 0.10 * yy)[:, None])[:, None, :]
    _rect(img, 0, TABLE_Y * s, s, s, _c(app.table_rgb, 0.72))
    _rect(img, 0, TABLE_Y * s, s, (TABLE_Y + 0.045) * s, _c(app.table_rgb, 1.08))
    _rect(img, 0, (TABLE_Y + 0.045) * s, s, (TABLE_Y + 0.055) * s, _c(app.table_rgb, 0.55))
    for i, x in enumerate(SLOT_X):
        xc = x + app.slot_dx[i]
        _rect(img, (xc - BS / 2) * s, (TABLE_Y + 0.008) * s, (xc + BS / 2) * s, (TABLE_Y + 0.02) * s,
              _c(app.table_rgb, 0.88))
    # box interior (the back wall seen through the glass front)
    _rect(img, BOX_X0 * s, BOX_TOP * s, BOX_X1 * s, TABLE_Y * s, tuple(0.55 * c + 52.0 for c in app.box_rgb))
    # lamp fixture: ceiling cord and shade (bulb, pull cord and knob change, so are drawn per frame)
    _rect(img, (LAMP_X - 0.006) * s, 0, (LAMP_X + 0.006) * s, SHADE_Y0 * s, _c((40, 40, 45)))
    shade = np.array([[LAMP_X - 0.04, SHADE_Y0], [LAMP_X + 0.04, SHADE_Y0], [LAMP_X + 0.09, SHADE_Y1],
                      [LAMP_X - 0.09, SHADE_Y1]]) * s
    _poly(img, shade, _c((60, 95, 80)))
    _draw_distractor(img, app, s)
    img.flags.writeable = False
    return img


def _draw_distractor(img: np.ndarray, app: Appearance, s: float) -> None:
    if app.distractor is None:
        return
    x = 0.80 + app.distractor_dx
    shelf_y = 0.19
    if app.distractor in ("plant", "cup"):
        _rect(img, (x - 0.09) * s, shelf_y * s, (x + 0.09) * s, (shelf_y + 0.014) * s, _c((90, 70, 55)))
    if app.distractor == "plant":
        pot = np.array([[x - 0.035, shelf_y - 0.06], [x + 0.035, shelf_y - 0.06], [x + 0.025, shelf_y],
                        [x - 0.025, shelf_y]]) * s
        _poly(img, pot, _c((185, 95, 60)))
        for dx, dy, r in ((-0.03, -0.09, 0.028), (0.03, -0.095, 0.026), (0.0, -0.125, 0.03)):
            _disc(img, (x + dx) * s, (shelf_y + dy) * s, r * s, _c((70, 120, 70)))
    elif app.distractor == "cup":
        _disc(img, (x + 0.04) * s, (shelf_y - 0.035) * s, 0.022 * s, _c((230, 230, 235)))
        _disc(img, (x + 0.04) * s, (shelf_y - 0.035) * s, 0.011 * s, _c(app.wall_rgb, 0.99))
        _rect(img, (x - 0.04) * s, (shelf_y - 0.075) * s, (x + 0.04) * s, shelf_y * s, _c((230, 230, 235)))
        _rect(img, (x - 0.04) * s, (shelf_y - 0.05) * s, (x + 0.04) * s, (shelf_y - 0.035) * s, _c((150, 60, 140)))
    elif app.distractor == "picture":
        _rect(img, (x - 0.08) * s, 0.05 * s, (x + 0.08) * s, 0.20 * s, _c((70, 55, 45)))
        _rect(img, (x - 0.065) * s, 0.065 * s, (x + 0.065) * s, 0.185 * s, _c((170, 200, 225)))
        hill = np.array([[x - 0.065, 0.185], [x - 0.01, 0.11], [x + 0.05, 0.185]]) * s
        _poly(img, hill, _c((110, 140, 120)))


@lru_cache(maxsize=96)
def _box_front(app: Appearance, size: int) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
    """Premultiplied RGB and alpha of the box's glass front and frame, composited over blocks inside it."""
    s = float(size)
    x0, y0 = int(math.floor(BOX_X0 * s)), int(math.floor(BOX_TOP * s))
    x1, y1 = min(int(math.ceil(BOX_X1 * s)) + 1, size), min(int(math.ceil(TABLE_Y * s)) + 1, size)
    layer = np.zeros((y1 - y0, x1 - x0, 4), np.float32)
    ox, oy = x0, y0

    def r(a: float, b: float, c: float, d: float, col: np.ndarray, alpha: float = 1.0) -> None:
        _rect(layer, a * s - ox, b * s - oy, c * s - ox, d * s - oy, col, alpha)

    r(BOX_X0, BOX_TOP, BOX_X1, TABLE_Y, _rgba(app.glass_rgb), 0.18)
    mid = (BOX_X0 + BOX_X1) / 2
    r(mid - 0.003, BOX_TOP, mid + 0.003, TABLE_Y, _rgba(app.box_rgb), 0.6)
    ym = _ROW_Y[0] - 0.115
    r(BOX_X0, ym - 0.003, BOX_X1, ym + 0.003, _rgba(app.box_rgb), 0.6)
    r(BOX_X0, BOX_TOP, BOX_X0 + BOX_WALL, TABLE_Y, _rgba(app.box_rgb))
    r(BOX_X1 - BOX_WALL, BOX_TOP, BOX_X1, TABLE_Y, _rgba(app.box_rgb))
    r(BOX_X0, TABLE_Y - BOX_WALL, BOX_X1, TABLE_Y, _rgba(app.box_rgb))
    r(BOX_X0 + BOX_WALL, BOX_TOP + 0.03, BOX_X0 + BOX_WALL + 0.02, TABLE_Y - 0.05, _rgba((255, 255, 255)), 0.25)
    return x0, y0, x1, y1, layer[..., :3].copy(), 1.0 - layer[..., 3:] / 255.0  # rgb is already premultiplied


@lru_cache(maxsize=16)
def _glow(size: int) -> np.ndarray:
    s = float(size)
    c = (_AR[:size] + 0.5) / s
    d2 = (c[None, :] - BULB[0]) ** 2 + (c[:, None] - BULB[1]) ** 2
    g = np.exp(-d2 / (2 * 0.13**2)) + 0.35 * np.exp(-d2 / (2 * 0.45**2))
    return (g[..., None] * _GLOW_COL).astype(np.float32)


# ---------------------------------------------------------------- scene drawing
@dataclass
class _Scene:
    blocks: dict[str, tuple[float, float]]
    lid: float = 0.0
    light: float = 0.0
    pull: float = 0.0
    gripper: tuple[float, float, float] | None = HOME
    held: str | None = None
    app: Appearance = field(default_factory=Appearance)


def _compose(layers: list[_Layer]) -> _Layer:
    """Merge layers (in drawing order) into one with the same effect: keep = Πk, prem = (p1·k2 + p2)·k3 + p3 …"""
    ls = [x for x in layers if x is not None]
    if not ls:
        return None
    y0, y1 = min(x[0] for x in ls), max(x[1] for x in ls)
    x0, x1 = min(x[2] for x in ls), max(x[3] for x in ls)
    keep = np.ones((y1 - y0, x1 - x0, 1), np.float32)
    prem = np.zeros((y1 - y0, x1 - x0, ls[0][5].shape[-1]), np.float32)
    for a0, a1, b0, b1, k, p in ls:
        kr, pr = keep[a0 - y0:a1 - y0, b0 - x0:b1 - x0], prem[a0 - y0:a1 - y0, b0 - x0:b1 - x0]
        kr *= k
        pr *= k
        pr += p
    keep.flags.writeable = prem.flags.writeable = False
    return y0, y1, x0, x1, keep, prem


@lru_cache(maxsize=2048)
def _block_layer(x: float, yb: float, size: int, rgb: Vec3) -> _Layer:
    """A block: dark rim, body, and a light band on top so stacked blocks read as separate squares."""
    s = float(size)
    x0, y0, x1, y1 = (x - BS / 2) * s, (yb - BS) * s, (x + BS / 2) * s, yb * s
    e = 0.012 * s
    return _compose([
        _rect_layer(x0, y0, x1, y1, size, size, _c(rgb, 0.55), 1.0),
        _rect_layer(x0 + e, y0 + e, x1 - e, y1 - e, size, size, _c(rgb), 1.0),
        _rect_layer(x0 + e, y0 + e, x1 - e, y0 + 2.2 * e, size, size, _c(rgb, 1.25), 1.0),
    ])


@lru_cache(maxsize=512)
def _gripper_layer(gx: float, gy: float, g: float, size: int) -> _Layer:
    s = float(size)
    return _compose([
        _rect_layer((gx - ARM_W / 2) * s, -1.0, (gx + ARM_W / 2) * s, (gy - PALM_H) * s, size, size, _GRIP_ARM, 1.0),
        _rect_layer((gx - g - FINGER_W) * s, (gy - PALM_H) * s, (gx + g + FINGER_W) * s, gy * s, size, size,
                    _GRIP_PALM, 1.0),
        _rect_layer((gx - g - FINGER_W) * s, gy * s, (gx - g) * s, (gy + FINGER_L) * s, size, size, _GRIP_FINGER, 1.0),
        _rect_layer((gx + g) * s, gy * s, (gx + g + FINGER_W) * s, (gy + FINGER_L) * s, size, size, _GRIP_FINGER, 1.0),
    ])


@lru_cache(maxsize=1024)
def _lamp_layer(pull: float, light: float, size: int) -> _Layer:
    """Pull cord, knob and bulb (off: grey glass, on: near white)."""
    s = float(size)
    ky = KNOB_Y + pull
    bulb = tuple(a * (1 - light) + b * light for a, b in zip(_BULB_OFF, _BULB_ON, strict=True))
    return _compose([
        _rect_layer((KNOB_X - 0.003) * s, (SHADE_Y1 - 0.01) * s, (KNOB_X + 0.003) * s, ky * s, size, size,
                    (60.0, 60.0, 60.0), 1.0),
        _disc_layer(KNOB_X * s, ky * s, KNOB_R * s, size, size, (200.0, 170.0, 60.0), 1.0),
        _disc_layer(BULB[0] * s, BULB[1] * s, BULB[2] * s, size, size, bulb, 1.0),
    ])


@lru_cache(maxsize=1024)
def _lid_layer(phi: float, size: int, rgb: Vec3) -> _Layer:
    key = tuple(float(v) for v in (_lid_corners(phi) * size).ravel())
    return _poly_layer(key, size, size, _c(rgb), 1.0)


@lru_cache(maxsize=64)
def _light_add(size: int) -> np.ndarray:
    return _WARM + _glow(size)


_GRIP_ARM, _GRIP_PALM, _GRIP_FINGER = (120.0, 125.0, 138.0), (70.0, 72.0, 82.0), (40.0, 40.0, 48.0)
_BULB_OFF, _BULB_ON = (175.0, 175.0, 165.0), (255.0, 250.0, 200.0)


def _in_box_layer(pos: tuple[float, float]) -> bool:
    return BOX_X0 < pos[0] < BOX_X1 and pos[1] > BOX_TOP + 0.01


def _draw(sc: _Scene, size: int) -> np.ndarray:
    """Rasterise one scene to an H×W×3 uint8 frame.

    Order: background, blocks inside the box, the box's glass front, lid, other blocks (held
    one last), lamp parts, gripper, then the global lamp light over everything.
    """
    app = sc.app
    img = _background(app, size).copy()
    order = sorted(BLOCKS, key=lambda b: (b == sc.held, -sc.blocks[b][1]))
    inside = [_in_box_layer(sc.blocks[b]) for b in order]
    for b, ins in zip(order, inside, strict=True):
        if ins:
            _blend(img, _block_layer(*sc.blocks[b], size, app.block_rgb[BLOCKS.index(b)]))
    x0, y0, x1, y1, prem, keep = _box_front(app, size)
    reg = img[y0:y1, x0:x1]
    reg *= keep
    reg += prem
    _blend(img, _lid_layer(float(sc.lid), size, app.lid_rgb))
    for b, ins in zip(order, inside, strict=True):
        if not ins:
            _blend(img, _block_layer(*sc.blocks[b], size, app.block_rgb[BLOCKS.index(b)]))
    lit = float(sc.light)
    _blend(img, _lamp_layer(float(sc.pull), lit, size))
    if sc.gripper is not None:
        _blend(img, _gripper_layer(*(float(v) for v in sc.gripper), size))
    # global light: dim and cool when off, warm and bright (with a halo round the bulb) when on
    img *= _DIM + (1 - _DIM) * lit
    if lit > 0:
        img += lit * _light_add(size)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def _gripper_pose(gripper: Any, held: str | None) -> tuple[float, float, float] | None:
    if gripper is False:
        return None
    if gripper is None or gripper is True:
        return (HOME[0], HOME[1], G_BLOCK if held else G_OPEN)
    g = tuple(float(v) for v in gripper)
    if len(g) == 2:
        return (g[0], g[1], G_BLOCK if held else G_OPEN)
    if len(g) == 3:
        return g  # type: ignore[return-value]
    raise ValueError(f"gripper must be None (home), False (hidden) or (x, y[, half_gap]) in base units, got {gripper!r}")


def render_state(state: State, *, appearance: Appearance | None = None, size: int = 64, gripper: Any = None,
                 held: str | None = None, light: float | None = None) -> np.ndarray:
    """Render one H×W×3 uint8 frame of ``state``.

    ``gripper``: None parks it at ``HOME`` (as in the first/last frame of every clip), False hides
    it, or an (x, palm_y[, finger_half_gap]) pose in base units. ``held`` draws that block in the
    gripper instead of at its symbolic location. ``light`` overrides the lamp level (0..1).
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    app = appearance or Appearance.default()
    pos = rest_positions(state, app)
    pose = _gripper_pose(gripper, held)
    if held is not None:
        if held not in BLOCKS:
            raise ValueError(f"held must be a block name ({', '.join(BLOCKS)}), got {held!r}")
        if pose is None:
            raise ValueError("held needs a visible gripper; pass gripper=None or a pose")
        pos[held] = (pose[0], pose[1] + BS)
    lit = float(state.lamp_on) if light is None else float(np.clip(light, 0.0, 1.0))
    sc = _Scene(pos, lid=float(state.box_open), light=lit, gripper=pose, held=held, app=app)
    return _draw(sc, size)


# ---------------------------------------------------------------- motion: keyframed paths
GX, GY, GG, LID, LIGHT, PULLV = range(6)
_KEYS = {"gx": GX, "gy": GY, "g": GG, "lid": LID, "light": LIGHT, "pull": PULLV}


def _ease(s: float) -> float:
    return s * s * (3.0 - 2.0 * s)


class _Path:
    """Piecewise eased keyframes over [0, 1] for (gripper x, y, gap, lid, light, pull) plus what the gripper drags."""

    def __init__(self, state: State):
        self.vals = [np.array([HOME[0], HOME[1], HOME[2], float(state.box_open), float(state.lamp_on), 0.0])]
        self.durs: list[float] = []
        self.attach: list[str | None] = []
        self.times: np.ndarray | None = None
        self.tlist: list[float] = []

    def go(self, dur: float, attach: str | None = None, **change: float) -> _Path:
        v = self.vals[-1].copy()
        for k, x in change.items():
            v[_KEYS[k]] = x
        self.vals.append(v)
        self.durs.append(dur)
        self.attach.append(attach)
        return self

    def done(self) -> _Path:
        t = np.concatenate([[0.0], np.cumsum(self.durs)])
        self.times = t / t[-1] if self.durs else t
        self.times[-1] = 1.0 if self.durs else 0.0
        self.tlist = [float(x) for x in self.times]
        return self

    def at(self, t: float) -> tuple[np.ndarray, str | None]:
        assert self.times is not None
        if not self.durs:
            return self.vals[0], None
        k = min(max(bisect_left(self.tlist, t) - 1, 0), len(self.durs) - 1)
        t0, t1 = self.tlist[k], self.tlist[k + 1]
        e = _ease(min(max((t - t0) / max(t1 - t0, 1e-12), 0.0), 1.0))
        return self.vals[k] * (1.0 - e) + self.vals[k + 1] * e, self.attach[k]

    def span(self, mode: str) -> tuple[float, float]:
        """First and last time the gripper drags ``mode`` ("block" or "lid")."""
        assert self.times is not None
        ks = [k for k, a in enumerate(self.attach) if a == mode]
        return (float(self.times[ks[0]]), float(self.times[ks[-1] + 1])) if ks else (2.0, 2.0)


class _Jit:
    """Seeded multiplicative jitter of segment durations."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, d: float) -> float:
        return d * float(self.rng.uniform(0.8, 1.25))


def _move_path(state: State, p0: tuple[float, float], p1: tuple[float, float], rng: np.random.Generator) -> _Path:
    j = _Jit(rng)
    carry = CARRY_GY + float(rng.uniform(-0.03, 0.02))
    (x0, yb0), (x1, yb1) = p0, p1
    p = _Path(state)
    p.go(j(1.0), gx=x0, gy=carry, g=G_OPEN).go(j(0.7), gy=yb0 - BS).go(j(0.35), g=G_BLOCK)
    p.go(j(0.7), "block", gy=carry).go(j(1.2), "block", gx=x1).go(j(0.7), "block", gy=yb1 - BS)
    p.go(j(0.35), g=G_OPEN).go(j(0.6), gy=carry).go(j(1.0), gx=HOME[0], gy=HOME[1])
    return p.done()


def _lid_path(state: State, phi1: float, rng: np.random.Generator) -> _Path:
    j = _Jit(rng)
    phi0 = float(state.box_open)
    gx0, gy0 = _lid_grip(phi0)
    gx1, gy1 = _lid_grip(phi1)
    hover = 0.07 + float(rng.uniform(0.0, 0.03))
    p = _Path(state)
    p.go(j(1.0), gx=gx0, gy=gy0 - hover, g=0.045).go(j(0.6), gy=gy0).go(j(0.35), g=G_THIN)
    p.go(j(1.6), "lid", lid=phi1, gx=gx1, gy=gy1).go(j(0.35), g=0.045)
    p.go(j(0.6), gy=gy1 - hover).go(j(1.0), gx=HOME[0], gy=HOME[1], g=G_OPEN)
    return p.done()


def _lamp_path(state: State, light1: float, rng: np.random.Generator) -> _Path:
    j = _Jit(rng)
    l0 = float(state.lamp_on)
    ky = KNOB_Y - 0.016
    hover = 0.05 + float(rng.uniform(0.0, 0.02))
    p = _Path(state)
    p.go(j(1.0), gx=KNOB_X, gy=ky - hover, g=0.04).go(j(0.6), gy=ky).go(j(0.3), g=G_THIN)
    p.go(j(0.5), gy=ky + PULL, pull=PULL, light=l0 + (light1 - l0) * 0.5).go(j(0.35), g=0.04, light=light1)
    p.go(j(0.6), gy=ky - hover, pull=0.0).go(j(1.0), gx=HOME[0], gy=HOME[1], g=G_OPEN)
    return p.done()


def _hover_path(state: State, target: tuple[float, float], rng: np.random.Generator, touch: bool) -> _Path:
    """The gripper goes over ``target`` (x, y top) and back without taking anything."""
    j = _Jit(rng)
    x, y = target
    p = _Path(state)
    hover = min(CARRY_GY, y - 0.1) + float(rng.uniform(-0.02, 0.02))
    p.go(j(1.2), gx=x, gy=hover)
    if touch:
        p.go(j(0.7), gy=max(hover, y - 0.05)).go(j(0.4), g=G_BLOCK).go(j(0.4), g=G_OPEN).go(j(0.7), gy=hover)
    else:
        p.go(j(1.0))
    p.go(j(1.2), gx=HOME[0], gy=HOME[1])
    return p.done()


def _object_target(state: State, action: Action, app: Appearance) -> tuple[float, float]:
    """Where the gripper would go for ``action`` (x, top y), used by paths that only pretend."""
    if action.verb == "move":
        x, yb = rest_positions(state, app)[action.args[0]]
        return x, yb - BS
    if action.verb in ("open", "close"):
        gx, gy = _lid_grip(float(state.box_open))
        return gx, gy + 0.07
    return KNOB_X, KNOB_Y + 0.03


# ---------------------------------------------------------------- clip assembly
def _success_path(state: State, action: Action, app: Appearance, rng: np.random.Generator) -> tuple[_Path, str | None]:
    if action.verb == "move":
        b, _ = action.args
        pos0, pos1 = rest_positions(state, app), rest_positions(apply(state, action), app)
        return _move_path(state, pos0[b], pos1[b], rng), b
    if action.verb in ("open", "close"):
        return _lid_path(state, float(action.verb == "open"), rng), None
    return _lamp_path(state, float(action.verb == "switch_on"), rng), None


def _scene_at(path: _Path, t: float, state: State, block: str | None, p_start: dict, p_end: dict,
              app: Appearance) -> _Scene:
    v, att = path.at(t)
    pos = dict(p_start)
    gx, gy, g = float(v[GX]), float(v[GY]), float(v[GG])
    if att == "lid":
        gx, gy = _lid_grip(float(v[LID]))
    held = None
    if block is not None:
        ta, _ = path.span("block")
        if att == "block":
            pos[block] = (gx, gy + BS)
            held = block
        elif t > ta:
            pos[block] = p_end[block]
    return _Scene(pos, lid=float(v[LID]), light=float(v[LIGHT]), pull=float(v[PULLV]), gripper=(gx, gy, g),
                  held=held, app=app)


def _pick(rng: np.random.Generator, options: list) -> Any:
    return options[int(rng.integers(len(options)))]


def _toggle(state: State, obj: str) -> Action:
    if obj == BOX:
        return Action("close" if state.box_open else "open", (BOX,))
    return Action("switch_off" if state.lamp_on else "switch_on", (LAMP,))


def _free_slots(state: State) -> list[str]:
    return [s for s in SLOTS if state.free(s)]


def _wrong_action(state: State, action: Action, rng: np.random.Generator) -> tuple[Action, str]:
    """A different object's action; the note says which rule picked it."""
    if action.verb == "move":
        b, d = action.args
        same_dest = [Action("move", (c, d)) for c in BLOCKS if c not in (b, d) and is_applicable(state, Action("move", (c, d)))]
        if same_dest:
            return _pick(rng, same_dest), "other block to the requested destination"
        to_slot = [Action("move", (c, s)) for c in BLOCKS if c not in (b, d) for s in _free_slots(state)
                   if is_applicable(state, Action("move", (c, s)))]
        if to_slot:
            return _pick(rng, to_slot), "requested destination illegal for others: other block to a free slot"
        return _toggle(state, LAMP), "no other block can move: the lamp is toggled instead"
    other = _toggle(state, LAMP if action.verb in ("open", "close") else BOX)
    moves = [Action("move", (c, s)) for c in BLOCKS for s in _free_slots(state)
             if state.where(c) != BOX and is_applicable(state, Action("move", (c, s)))]
    if moves and rng.random() < 0.5:
        return _pick(rng, moves), "a block is moved instead"
    return other, "the other fixture is operated instead"


def _frame_times(n: int) -> list[float]:
    return [i / (n - 1) for i in range(n)]


@dataclass
class _Clip:
    """What a clip renderer reads: the request, the two random streams and the ``meta`` it fills in."""

    state: State
    action: Action
    app: Appearance
    seed: int
    ts: list[float]
    rng: np.random.Generator  # motion jitter
    crng: np.random.Generator  # failure choices
    meta: dict[str, Any]
    pos0: dict[str, tuple[float, float]]

    def run(self, path: _Path, block: str | None, p_end: dict) -> list[_Scene]:
        return [_scene_at(path, t, self.state, block, self.pos0, p_end, self.app) for t in self.ts]


#: what a clip renderer returns: the scenes, the true end state and the objects that changed
_Rendered = tuple[list[_Scene], State, set[str]]


def _perform(c: _Clip, action: Action) -> _Rendered:
    """The gripper carries out ``action`` (the requested one or another)."""
    end = apply(c.state, action)
    path, block = _success_path(c.state, action, c.app, c.rng)
    scenes = c.run(path, block, rest_positions(end, c.app))
    c.meta["performed"] = [str(action)]
    return scenes, end, _changed(c.state, end)


def _succeed(c: _Clip) -> _Rendered:
    """No failure: the requested action."""
    return _perform(c, c.action)


def _drift(c: _Clip) -> _Rendered:
    """The action succeeds while the wall and table colours drift linearly to ``meta["drift_rgb"]``."""
    scenes, end, moved = _perform(c, c.action)
    app = c.app
    drift = c.crng.normal(size=3)
    drift = drift / np.linalg.norm(drift) * c.crng.uniform(55, 70)
    drift = np.where(np.asarray(app.wall_rgb) + drift > 245, -np.abs(drift), drift)
    drift = np.where(np.asarray(app.wall_rgb) + drift < 10, np.abs(drift), drift)
    for sc, t in zip(scenes, c.ts, strict=True):
        sc.app = replace(app, wall_rgb=_shift(app.wall_rgb, drift * t), table_rgb=_shift(app.table_rgb, drift * t))
    c.meta["drift_rgb"] = [round(float(x), 2) for x in drift]
    return scenes, end, moved


def _extra_motion(c: _Clip) -> _Rendered:
    """The action succeeds and something else moves by itself (:func:`_add_extra_motion`)."""
    scenes, end, _ = _perform(c, c.action)
    end = _add_extra_motion(c, end, scenes)
    return scenes, end, _changed(c.state, end)


def _wrong_object(c: _Clip) -> _Rendered:
    """Another object's action is carried out (:func:`_wrong_action` picks it)."""
    wrong, why = _wrong_action(c.state, c.action, c.crng)
    scenes, end, moved = _perform(c, wrong)
    c.meta["wrong_rule"] = why
    return scenes, end, moved


def _teleport(c: _Clip) -> _Rendered:
    """The gripper only hovers; the object switches from start to end at ``meta["jump_frame"]``."""
    end = apply(c.state, c.action)
    path = _hover_path(c.state, _object_target(c.state, c.action, c.app), c.rng, touch=False)
    n = len(c.ts)
    k = int(c.crng.integers(max(1, n // 3), max(2, (2 * n) // 3 + 1)))  # 1 <= k <= n - 1 for n >= 3
    pos1 = rest_positions(end, c.app)
    scenes = []
    for i, t in enumerate(c.ts):
        v, _ = path.at(t)
        src = end if i >= k else c.state
        scenes.append(_Scene(pos1 if i >= k else dict(c.pos0), lid=float(src.box_open), light=float(src.lamp_on),
                             gripper=(float(v[GX]), float(v[GY]), float(v[GG])), app=c.app))
    c.meta.update(performed=[str(c.action)], jump_frame=k)
    return scenes, end, _changed(c.state, end)


def _no_motion(c: _Clip) -> _Rendered:
    """Nothing changes; by seed the gripper visits the object without taking it, or stays home."""
    if c.crng.random() < 0.5:
        path = _hover_path(c.state, _object_target(c.state, c.action, c.app), c.rng, touch=True)
        c.meta["no_motion_variant"] = "gripper_visits"
    else:
        path = _Path(c.state).done()
        c.meta["no_motion_variant"] = "gripper_still"
    scenes = c.run(path, None, c.pos0)
    c.meta["performed"] = []
    return scenes, c.state, set()


def _incomplete(c: _Clip) -> _Rendered:
    """The action stops part-way; the end state is the original one (the real positions are in ``meta``)."""
    state, action, app, rng, crng, ts, meta, pos0 = c.state, c.action, c.app, c.rng, c.crng, c.ts, c.meta, c.pos0
    meta["performed"] = []
    if action.verb == "move":
        b, _ = action.args
        target = rest_positions(apply(state, action), app)[b]
        drop = _drop_spot(state, b, pos0[b], target, app)
        if drop is not None and c.seed % 2 == 1:
            path = _move_path(state, pos0[b], drop, rng)
            scenes = c.run(path, b, {**pos0, b: drop})
            meta["incomplete"] = {"object": b, "variant": "drop", "position": drop}
            return scenes, state, {b}
        path = _move_path(state, pos0[b], target, rng)
        ta, tb = path.span("block")
        # stop inside the carry segment (the middle third of the "block" span): never at a valid location
        stop = ta + (tb - ta) * float(crng.uniform(0.4, 0.6))
        scenes = [_scene_at(path, min(t, stop), state, b, pos0, pos0, app) for t in ts]
        meta["incomplete"] = {"object": b, "variant": "stall", "position": scenes[-1].blocks[b], "progress": stop}
        return scenes, state, {b}
    if action.verb in ("open", "close"):
        f = float(crng.uniform(0.35, 0.6))
        phi = f if action.verb == "open" else 1.0 - f
        path = _lid_path(state, phi, rng)
        meta["incomplete"] = {"object": BOX, "variant": "lid_part_way", "lid": phi}
        return c.run(path, None, pos0), state, {BOX}
    path = _lamp_path(state, float(state.lamp_on), rng)
    meta["incomplete"] = {"object": LAMP, "variant": "light_unchanged"}
    return c.run(path, None, pos0), state, set()


def _shift(rgb: Vec3, d: np.ndarray) -> Vec3:
    return tuple(float(np.clip(c + x, 0, 255)) for c, x in zip(rgb, d, strict=True))  # type: ignore[return-value]


def _changed(a: State, b: State) -> set[str]:
    out = {x for x in BLOCKS if a.where(x) != b.where(x)}
    if a.box_open != b.box_open:
        out.add(BOX)
    if a.lamp_on != b.lamp_on:
        out.add(LAMP)
    return out


def _add_extra_motion(clip: _Clip, end: State, scenes: list[_Scene]) -> State:
    """Make something move on its own during the clip (mutates ``scenes``); returns the true end state."""
    state, action, app, crng, ts, meta = clip.state, clip.action, clip.app, clip.crng, clip.ts, clip.meta
    involved = set(action.args)
    blocks = [c for c in BLOCKS if c not in involved and state.where(c) != BOX and state.clear(c) and end.clear(c)]
    slots = [s for s in SLOTS if state.free(s) and end.free(s)]
    a = float(crng.uniform(0.2, 0.4))
    b = a + float(crng.uniform(0.3, 0.4))
    if blocks and slots:
        c, slot = _pick(crng, blocks), _pick(crng, slots)
        new_end = end.with_loc(c, slot)
        new_end.validate()
        p0, p1 = rest_positions(state, app)[c], rest_positions(new_end, app)[c]
        for sc, t in zip(scenes, ts, strict=True):
            e = _ease(float(np.clip((t - a) / (b - a), 0, 1)))
            sc.blocks[c] = (p0[0] * (1 - e) + p1[0] * e, p0[1] * (1 - e) + p1[1] * e)
        meta["extra"] = {"object": c, "from": state.where(c), "to": slot}
        meta["performed"].append(f"move({c}, {slot}) [no gripper]")
        return new_end
    obj = BOX if action.verb in ("switch_on", "switch_off") else LAMP
    tog = _toggle(end, obj)
    new_end = apply(end, tog)
    v0, v1 = (float(end.box_open), float(new_end.box_open)) if obj == BOX else (float(end.lamp_on), float(new_end.lamp_on))
    for sc, t in zip(scenes, ts, strict=True):
        e = _ease(float(np.clip((t - a) / (b - a), 0, 1)))
        if obj == BOX:
            sc.lid = v0 * (1 - e) + v1 * e
        else:
            sc.light = v0 * (1 - e) + v1 * e
    meta["extra"] = {"object": obj, "from": None, "to": tog.verb, "fallback": "no free block/slot"}
    meta["performed"].append(f"{tog} [no gripper]")
    return new_end


#: one renderer per failure kind (None: the action as asked); see :func:`render_action`
_RENDERERS: dict[str | None, Callable[[_Clip], _Rendered]] = {
    None: _succeed,
    "incomplete": _incomplete,
    "wrong_object": _wrong_object,
    "extra_motion": _extra_motion,
    "teleport": _teleport,
    "drift": _drift,
    "no_motion": _no_motion,
}


def render_action(state: State, action: Action, *, appearance: Appearance | None = None, seed: int = 0,
                  size: int = 64, frames: int = 9, failure: str | None = None) -> RenderResult:
    """Render the gripper carrying out ``action`` from ``state``, or a labelled failure of it.

    Frame 0 is ``render_state(state)`` (gripper at home); on success the last frame is
    ``render_state(apply(state, action))``. ``seed`` jitters path heights and timing only;
    the result is a pure function of all arguments. Raises ``PreconditionError`` if the
    action is not applicable, ``ValueError`` for bad ``failure``/``frames``/``size``.

    Failures (``meta["failure_kind"]`` is ``FAILURE_KIND[failure]``):

    - ``incomplete``: move → either ``"stall"`` (the gripper stops mid-carry and the block
      hangs in it until the end; gripper NOT home in the last frame) or ``"drop"`` (the block
      is put on the table between two slots, not a valid location; odd seeds drop when two
      adjacent slots are free, otherwise it stalls). open/close → the lid is left part-open
      (``meta["lid"]`` in (0, 1)). lamp → the cord is pulled but the light does not change.
      ``end_state`` is the *original* state; the real positions are in ``meta``.
    - ``wrong_object``: move → another block goes to the requested destination if legal,
      else another block to a free slot, else the lamp toggles; open/close ↔ lamp (or, by
      seed, a block moved to a free slot). ``end_state`` is what really happened and
      ``meta["performed"]`` names the action.
    - ``extra_motion``: the action succeeds and another clear block (not in the box, not
      involved) slides by itself to a slot free before and after; if none, the lamp toggles
      by itself (or the lid, for lamp actions). ``meta["extra"]`` says what moved.
    - ``teleport``: the gripper only hovers; the object switches from start to end between
      frames ``meta["jump_frame"] - 1`` and ``meta["jump_frame"]``.
    - ``drift``: the action succeeds while the wall and table colours drift linearly to
      ``meta["drift_rgb"]`` (added RGB, 0..255 scale) in the last frame.
    - ``no_motion``: nothing changes; by seed the gripper either goes to the object and back
      without taking it or stays home.
    """
    check(state, action)
    if failure is not None and failure not in FAILURES:
        raise ValueError(f"unknown failure {failure!r}; choose one of {', '.join(FAILURES)} or None")
    if frames < 3:
        raise ValueError(f"frames must be >= 3, got {frames}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    app = appearance or Appearance.default()
    clip = _Clip(state, action, app, int(seed), _frame_times(frames),
                 rng=np.random.default_rng([int(seed), 1]), crng=np.random.default_rng([int(seed), 2]),
                 meta={"action": str(action), "failure_kind": FAILURE_KIND.get(failure or "", None)},
                 pos0=rest_positions(state, app))
    scenes, end, moved = _RENDERERS[failure](clip)
    meta = clip.meta
    frames_arr = np.stack([_draw(sc, size) for sc in scenes])
    last = scenes[-1]
    meta.update(
        positions={b: (round(x, 5), round(y, 5)) for b, (x, y) in last.blocks.items()},
        lid=round(last.lid, 5),
        light=round(last.light, 5),
        gripper_home=bool(last.gripper is not None and np.allclose(last.gripper[:2], HOME[:2])),
    )
    labels = [{"blocks": dict(sc.blocks), "held": sc.held, "lid": float(sc.lid), "light": float(sc.light),
               "pull": float(sc.pull), "gripper": sc.gripper} for sc in scenes]
    return RenderResult(frames_arr, end, failure, [sc.held for sc in scenes], moved, meta, labels)


def _drop_spot(state: State, block: str, p0: tuple[float, float], p1: tuple[float, float],
               app: Appearance) -> tuple[float, float] | None:
    """A table spot half-way between two adjacent slots that are both free (ignoring ``block`` itself)."""
    without = {s for s in SLOTS if state.free(s) or (state.where(block) == s)}
    mids = []
    for i in range(len(SLOTS) - 1):
        if SLOTS[i] in without and SLOTS[i + 1] in without:
            x = (SLOT_X[i] + app.slot_dx[i] + SLOT_X[i + 1] + app.slot_dx[i + 1]) / 2
            mids.append((abs(x - (p0[0] + p1[0]) / 2), x))
    if not mids:
        return None
    return (min(mids)[1], TABLE_Y)


def render_plan(
    state: State,
    steps: Any,
    *,
    appearance: Appearance | None = None,
    seed: int = 0,
    size: int = 64,
    frames: int = 9,
) -> tuple[np.ndarray, list[tuple[int, int]], list[RenderResult]]:
    """Render a sequence of actions (``Action``s, ``SubAction``s or a ``Plan``) as one ground-truth video.

    Each step gets its own seed derived from ``seed`` and its index; consecutive steps share
    their boundary frame. Returns the video, each step's inclusive frame range and the
    per-step results (end states for chaining and labels).
    """
    from spiral.compose import compose

    items = getattr(steps, "steps", steps)
    results: list[RenderResult] = []
    s = state
    for k, item in enumerate(items):
        action = item if isinstance(item, Action) else Action(item.verb, tuple(item.objects))
        step_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0] >> 1)
        res = render_action(s, action, appearance=appearance, seed=step_seed, size=size, frames=frames)
        results.append(res)
        s = res.end_state
    if not results:
        still = render_state(state, appearance=appearance, size=size)[None]
        return still, [], []
    video, bounds = compose([r.frames for r in results])
    return video, bounds, results


ARTIFACT_LEVEL = 64.0  # grey levels: above blur, one-pixel offsets, relighting errors and drift; below a block


def artifact_area(frame: np.ndarray, expected: np.ndarray) -> float:
    """Fraction of ``frame``'s pixels farther than ARTIFACT_LEVEL, in some channel, from ``expected`` (a render of
    the state the frame is read as): what a state reader reads but the frame does not show, such as a patch of
    colour noise read as a block or a block that vanished (the benchmark's faithful step success, the critic's
    consistency, GRPO's artifact_penalty)."""
    return float((np.abs(frame.astype(np.float64) - expected.astype(np.float64)).max(axis=-1) > ARTIFACT_LEVEL).mean())

