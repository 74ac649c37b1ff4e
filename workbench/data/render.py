"""Vectorised renderer for SynthSocial: a batch of stylised people from per-image labels and jitter.

Every image is painted, in painter's order, from a few dozen axis-aligned primitives (ellipses and
trapezoids; a rectangle is a trapezoid with equal widths). A primitive covers pixel (y, x) iff

    A[b, x] <= T[b, y]

with ``A`` a function of the column only and ``T`` of the row only (ellipse: A = (dx/rx)²,
T = 1 - (dy/ry)²; trapezoid: A = |dx|, T = its half-width at row y, -inf outside its rows). So a
primitive costs one broadcast comparison and one masked fill of a ``uint8`` material map
[b, H, W], restricted to the primitive's bounding box over the batch; colours come from a
per-image palette at the end. Per-image parameters are computed with numpy on [b]-vectors (cheap
for b = 1 too); only the full-resolution steps use torch. Nothing loops over pixels or images, and
every step is elementwise IEEE arithmetic (no transcendental functions), so row ``i`` of a batch
does not depend on the other images in the batch: ``SynthSocial[i]`` equals row ``i`` of any batch.

Coordinates: x to the right and y downwards, both in [0, 1] over the image. The person is laid out
in a canonical frame (centre x = 0.5, head centre y = 0.36) and mapped into the image with a
per-image shift and scale.

Visual cues (what a model can learn from):
- gender: hair silhouette (long hair to the shoulders vs short), clothing cut (broad straight
  shoulders vs narrow shoulders and a flared hem), neckline (white collar and tie vs a scoop
  neckline), lip colour;
- age: hair colour (dark vs grey/white), slightly less hair, and a receding hairline for old men;
- ethnicity: one of four skin palettes, jittered in shade and channel;
- occupation: uniform colour plus glyphs (hat or glasses, chest badge, the tool in the hand);
- scene: background colours and a texture (stripes, tiles, buildings, furrows, blackboard, runway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from . import vocab

# --------------------------------------------------------------------------- materials
# Indices into each image's palette [b, N_MATERIALS, 3].
BG0, BG1, BG2, SKIN, HAIR, UNIFORM, FEATURE, MOUTH, TIE, SHIRT = range(10)
N_HEAD_GLYPHS = 4  # glyph slots that follow the head (hats, glasses)
N_BODY_GLYPHS = 5  # glyph slots on the body (badges, tools)
N_GLYPHS = N_HEAD_GLYPHS + N_BODY_GLYPHS
GLYPH0 = 10
N_MATERIALS = GLYPH0 + N_GLYPHS

RGB = tuple[float, float, float]
SKIN_COLOURS: dict[str, RGB] = {
    "white": (0.98, 0.84, 0.78),
    "black": (0.40, 0.26, 0.17),
    "asian": (0.90, 0.74, 0.50),
    "indian": (0.70, 0.50, 0.34),
}
YOUNG_HAIR: tuple[RGB, ...] = (
    (0.08, 0.07, 0.07),  # black
    (0.24, 0.15, 0.09),  # dark brown
    (0.38, 0.24, 0.13),  # brown
    (0.48, 0.22, 0.10),  # auburn
)
OLD_HAIR: tuple[RGB, ...] = (
    (0.62, 0.62, 0.63),  # grey
    (0.77, 0.77, 0.79),  # silver
    (0.91, 0.91, 0.89),  # white
)
UNIFORM_COLOURS: dict[str, RGB] = {
    "doctor": (0.94, 0.94, 0.94),
    "nurse": (0.30, 0.68, 0.72),
    "chef": (0.20, 0.20, 0.22),
    "firefighter": (0.80, 0.16, 0.12),
    "engineer": (0.98, 0.55, 0.10),
    "teacher": (0.52, 0.32, 0.62),
    "farmer": (0.30, 0.45, 0.75),
    "pilot": (0.10, 0.14, 0.36),
}
TIE_COLOURS: tuple[RGB, ...] = ((0.55, 0.10, 0.12), (0.10, 0.15, 0.40), (0.10, 0.35, 0.20), (0.12, 0.12, 0.12))
MOUTH_COLOURS: tuple[RGB, ...] = ((0.35, 0.18, 0.15), (0.78, 0.22, 0.28))  # by gender code
FEATURE_COLOUR: RGB = (0.08, 0.06, 0.06)
SHIRT_COLOUR: RGB = (0.97, 0.97, 0.97)

# Scene: (wall or sky, floor or ground, pattern) colours, and the horizon row.
SCENE_COLOURS: dict[str, tuple[RGB, RGB, RGB]] = {
    "hospital": ((0.82, 0.93, 0.91), (0.74, 0.76, 0.80), (0.60, 0.83, 0.80)),
    "kitchen": ((0.95, 0.90, 0.78), (0.55, 0.37, 0.20), (0.74, 0.57, 0.42)),
    "street": ((0.72, 0.80, 0.88), (0.32, 0.32, 0.34), (0.58, 0.50, 0.46)),
    "field": ((0.58, 0.78, 0.96), (0.36, 0.64, 0.26), (0.24, 0.48, 0.17)),
    "classroom": ((0.90, 0.84, 0.70), (0.52, 0.36, 0.24), (0.16, 0.36, 0.26)),
    "airport": ((0.68, 0.84, 0.97), (0.46, 0.47, 0.50), (0.96, 0.96, 0.92)),
}
HORIZON: dict[str, float] = {
    "hospital": 0.80, "kitchen": 0.72, "street": 0.76, "field": 0.52, "classroom": 0.86, "airport": 0.70,
}

# --------------------------------------------------------------------------- glyphs
# A glyph primitive: (kind, cx, cy, rx, ry, rgb, ymax); kind "e" ellipse or "r" rectangle; ymax
# clips rows below it (a helmet dome), same frame as cy. Head glyphs are offsets from the head
# centre in units of an unscaled head and follow the head; body glyphs are canonical coordinates.
_INF = math.inf
_SILVER, _GOLD, _RED, _WHITE = (0.80, 0.82, 0.85), (0.90, 0.74, 0.20), (0.85, 0.10, 0.12), (0.97, 0.97, 0.97)
_BROWN, _DARK, _STRAW = (0.55, 0.36, 0.18), (0.10, 0.10, 0.11), (0.88, 0.76, 0.42)
HAND = (0.69, 0.86)  # canonical position of the hand that holds the tool

HEAD_GLYPHS: dict[str, tuple[tuple, ...]] = {
    "doctor": (  # head mirror on a band
        ("r", 0.0, -0.11, 0.125, 0.009, (0.25, 0.25, 0.28), _INF),
        ("e", 0.0, -0.11, 0.037, 0.032, _SILVER, _INF),
    ),
    "nurse": (  # white cap with a red cross
        ("r", 0.0, -0.155, 0.085, 0.038, _WHITE, _INF),
        ("r", 0.0, -0.155, 0.028, 0.009, _RED, _INF),
        ("r", 0.0, -0.155, 0.009, 0.028, _RED, _INF),
    ),
    "chef": (  # tall toque
        ("r", 0.0, -0.20, 0.095, 0.075, _WHITE, _INF),
        ("e", 0.0, -0.28, 0.13, 0.065, _WHITE, _INF),
        ("r", 0.0, -0.135, 0.10, 0.014, (0.80, 0.80, 0.82), _INF),
    ),
    "firefighter": (  # yellow helmet dome, brim, gold shield
        ("e", 0.0, -0.08, 0.15, 0.10, (0.96, 0.80, 0.10), -0.08),
        ("r", 0.0, -0.08, 0.19, 0.015, (0.96, 0.80, 0.10), _INF),
        ("r", 0.0, -0.13, 0.032, 0.032, _GOLD, _INF),
    ),
    "engineer": (  # white hard hat with a ridge
        ("e", 0.0, -0.085, 0.14, 0.09, _WHITE, -0.085),
        ("r", 0.0, -0.085, 0.165, 0.013, _WHITE, _INF),
        ("r", 0.0, -0.13, 0.016, 0.045, (0.78, 0.78, 0.80), _INF),
    ),
    "teacher": (  # glasses: one dark frame, two pale lenses
        ("r", 0.0, 0.012, 0.083, 0.026, _DARK, _INF),
        ("r", -0.047, 0.012, 0.022, 0.016, (0.78, 0.88, 0.94), _INF),
        ("r", 0.047, 0.012, 0.022, 0.016, (0.78, 0.88, 0.94), _INF),
    ),
    "farmer": (  # straw hat with a band
        ("r", 0.0, -0.125, 0.22, 0.018, _STRAW, _INF),
        ("r", 0.0, -0.175, 0.115, 0.052, _STRAW, _INF),
        ("r", 0.0, -0.14, 0.115, 0.012, (0.45, 0.28, 0.12), _INF),
    ),
    "pilot": (  # white peaked cap, black band and visor, gold badge
        ("r", 0.0, -0.165, 0.13, 0.042, _WHITE, _INF),
        ("r", 0.0, -0.118, 0.125, 0.013, _DARK, _INF),
        ("r", 0.0, -0.10, 0.12, 0.014, _DARK, _INF),
        ("e", 0.0, -0.165, 0.03, 0.024, _GOLD, _INF),
    ),
}
BODY_GLYPHS: dict[str, tuple[tuple, ...]] = {
    "doctor": (  # red cross badge, clipboard
        ("r", 0.38, 0.72, 0.036, 0.012, _RED, _INF),
        ("r", 0.38, 0.72, 0.012, 0.036, _RED, _INF),
        ("r", 0.69, 0.82, 0.062, 0.082, _BROWN, _INF),
        ("r", 0.69, 0.835, 0.046, 0.056, _WHITE, _INF),
    ),
    "nurse": (  # syringe: barrel, plunger, needle
        ("r", 0.69, 0.80, 0.018, 0.075, (0.88, 0.94, 1.0), _INF),
        ("r", 0.69, 0.72, 0.034, 0.010, (0.45, 0.45, 0.50), _INF),
        ("r", 0.69, 0.91, 0.007, 0.045, _SILVER, _INF),
    ),
    "chef": (  # frying pan
        ("e", 0.70, 0.75, 0.075, 0.05, _SILVER, _INF),
        ("r", 0.70, 0.84, 0.013, 0.05, _DARK, _INF),
    ),
    "firefighter": (  # reflective stripe, axe
        ("r", 0.50, 0.93, 0.17, 0.015, (0.85, 0.96, 0.30), _INF),
        ("r", 0.69, 0.80, 0.012, 0.11, _BROWN, _INF),
        ("r", 0.72, 0.70, 0.038, 0.024, _SILVER, _INF),
    ),
    "engineer": (  # reflective stripes, wrench
        ("r", 0.50, 0.76, 0.16, 0.012, _SILVER, _INF),
        ("r", 0.50, 0.90, 0.16, 0.012, _SILVER, _INF),
        ("r", 0.69, 0.80, 0.013, 0.08, (0.55, 0.56, 0.60), _INF),
        ("e", 0.69, 0.715, 0.032, 0.028, (0.55, 0.56, 0.60), _INF),
    ),
    "teacher": (  # red book with a gold spine
        ("r", 0.69, 0.82, 0.065, 0.07, (0.72, 0.14, 0.14), _INF),
        ("r", 0.69, 0.82, 0.006, 0.07, _GOLD, _INF),
    ),
    "farmer": (  # pitchfork: handle, crossbar, three prongs
        ("r", 0.69, 0.78, 0.010, 0.17, _BROWN, _INF),
        ("r", 0.69, 0.61, 0.048, 0.010, _SILVER, _INF),
        ("r", 0.65, 0.57, 0.008, 0.04, _SILVER, _INF),
        ("r", 0.69, 0.57, 0.008, 0.04, _SILVER, _INF),
        ("r", 0.73, 0.57, 0.008, 0.04, _SILVER, _INF),
    ),
    "pilot": (  # gold wings, flight bag
        ("r", 0.37, 0.71, 0.065, 0.012, _GOLD, _INF),
        ("r", 0.71, 0.91, 0.075, 0.065, (0.50, 0.32, 0.20), _INF),
        ("r", 0.71, 0.835, 0.028, 0.013, _DARK, _INF),
    ),
}

# --------------------------------------------------------------------------- jitter
#: Names of the per-image uniform [0, 1) draws the renderer consumes, in column order.
JITTER_FIELDS: tuple[str, ...] = (
    "pos_x", "pos_y", "scale", "head_scale", "body_width", "hair_length", "hairline",
    "hair_pick", "hair_shade", "skin_shade", "skin_r", "skin_g", "skin_b",
    "uniform_shade", "uniform_r", "uniform_g", "uniform_b", "glyph_shade", "tie_pick",
    "bg_shade0", "bg_shade1", "bg_shade2", "bg_r", "bg_g", "bg_b",
    "horizon", "phase_x", "phase_y", "edge", "brightness", "contrast", "noise_offset",
)
N_JITTER = len(JITTER_FIELDS)
CODE_KEYS: tuple[str, ...] = ("occupation", "gender", "ethnicity", "age", "scene")


@dataclass(frozen=True)
class RenderStyle:
    """Strength of the nuisance variation (fractions of the image side or of a colour value).

    position_jitter / vertical_jitter: max shift of the person; scale_range: person size factor;
    colour_jitter: relative shade change of uniforms, hair, glyphs and backgrounds; skin_jitter:
    relative shade change of skin (small enough that the four palettes stay separable);
    noise_std: std of additive Gaussian pixel noise; brightness_jitter / contrast_range: global light.
    """

    position_jitter: float = 0.06
    vertical_jitter: float = 0.04
    scale_range: tuple[float, float] = (0.9, 1.08)
    colour_jitter: float = 0.06
    skin_jitter: float = 0.05
    noise_std: float = 0.04
    brightness_jitter: float = 0.04
    contrast_range: tuple[float, float] = (0.92, 1.08)

    def __post_init__(self) -> None:
        for name in ("position_jitter", "vertical_jitter", "colour_jitter", "skin_jitter",
                     "noise_std", "brightness_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"RenderStyle.{name} must be in [0, 0.5], got {value}")
        for name in ("scale_range", "contrast_range"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ValueError(f"RenderStyle.{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")


# --------------------------------------------------------------------------- noise
class NoiseBank:
    """Index-determined pixel noise: image ``i`` reads a window of one long seeded Gaussian vector.

    The window's start is a per-image offset drawn up front with the other jitter, so an image's
    noise depends only on (bank seed, offset), never on the batch it is rendered in. With 2**18
    offsets two images rarely share a pattern, and reading a window is one gather.
    """

    def __init__(self, rng: np.random.Generator, image_size: int, n_offsets: int = 1 << 18):
        self.image_size = image_size
        self.n_pixels = 3 * image_size * image_size
        self.n_offsets = n_offsets
        flat = torch.from_numpy(rng.standard_normal(self.n_pixels + n_offsets, dtype=np.float32))
        # All windows as one overlapping strided view [n_offsets, n_pixels]; nothing is copied.
        self._windows = flat.as_strided((n_offsets, self.n_pixels), (1, 1))

    def take(self, offsets: np.ndarray) -> Tensor:
        """Standard-normal noise for a batch: int offsets [b] in [0, n_offsets) -> float32 [b, 3, H, W]."""
        s = self.image_size
        index = torch.from_numpy(np.asarray(offsets, dtype=np.int64))
        return self._windows.index_select(0, index).view(-1, 3, s, s)


# --------------------------------------------------------------------------- primitives
class _Layers:
    """Painter's-order primitives with per-image parameters, stored as arrays [capacity, b].

    A primitive is an ellipse (centre, radii rx, ry) or a trapezoid (centre, half-width ``rx`` at the
    top and ``rx2`` at the bottom, half-height ``ry``), optionally clipped to rows [ymin, ymax] and
    hidden per image with ``visible``. Values may be scalars or arrays [b] (canonical frame).
    """

    _FLOATS = ("cx", "cy", "rx", "ry", "rx2", "ymin", "ymax")

    def __init__(self, batch: int, capacity: int = 48):
        self.n = 0
        self.f = {k: np.empty((capacity, batch), np.float32) for k in self._FLOATS}
        self.ellipse_ = np.empty((capacity, batch), bool)
        self.visible = np.empty((capacity, batch), bool)
        self.material = np.empty((capacity, batch), np.uint8)

    def add(self, *, ellipse, material, cx, cy, rx, ry, rx2=None, ymin=-_INF, ymax=_INF, visible=True):
        k = self.n
        values = dict(cx=cx, cy=cy, rx=rx, ry=ry, rx2=rx if rx2 is None else rx2, ymin=ymin, ymax=ymax)
        for name, value in values.items():
            self.f[name][k] = value
        self.ellipse_[k], self.material[k], self.visible[k] = ellipse, material, visible
        self.n = k + 1

    def ellipse(self, material, cx, cy, rx, ry, **kw) -> None:
        self.add(ellipse=True, material=material, cx=cx, cy=cy, rx=rx, ry=ry, **kw)

    def rect(self, material, cx, cy, rx, ry, **kw) -> None:
        self.add(ellipse=False, material=material, cx=cx, cy=cy, rx=rx, ry=ry, **kw)


def _span(hit: np.ndarray) -> np.ndarray:
    """First and one-past-last True index along the last axis: bool [S, n] -> int [S, 2] ((n, 0) if none)."""
    n = hit.shape[-1]
    idx = np.arange(n)
    return np.stack([np.where(hit, idx, n).min(-1), np.where(hit, idx, -1).max(-1) + 1], -1)


def _rasterise(layers: _Layers, mat: Tensor, px: np.ndarray, py: np.ndarray, scale: np.ndarray) -> Tensor:
    """Paint primitives onto a material map.

    layers: canonical-frame primitives; mat: uint8 [b, H, W], painted in place and returned;
    px, py, scale: float32 [b], image position of canonical (0.5, 0.5) and the person's size.
    """
    n, size = layers.n, mat.shape[-1]
    f = {k: v[:n] for k, v in layers.f.items()}  # [S, b]
    grid = ((np.arange(size, dtype=np.float32) + np.float32(0.5)) / np.float32(size))  # pixel centres
    cx = px + scale * (f["cx"] - np.float32(0.5))
    cy = py + scale * (f["cy"] - np.float32(0.5))
    # Radii kept away from 0 so hidden or degenerate primitives give no inf/nan (masked anyway).
    rx = np.maximum(scale * f["rx"], np.float32(1e-6))[..., None]
    ry = np.maximum(scale * f["ry"], np.float32(1e-6))[..., None]
    rx2 = (scale * f["rx2"])[..., None]
    ymin = (py + scale * (f["ymin"] - np.float32(0.5)))[..., None]
    ymax = (py + scale * (f["ymax"] - np.float32(0.5)))[..., None]
    dx = grid - cx[..., None]  # [S, b, W]
    dy = grid - cy[..., None]  # [S, b, H]
    is_ell = layers.ellipse_[:n, :, None]
    q = dx / rx
    col_term = np.where(is_ell, q * q, np.abs(dx))
    r = dy / ry
    frac = (dy + ry) / (np.float32(2) * ry)  # 0 at a trapezoid's top row, 1 at its bottom row
    row_term = np.where(is_ell, np.float32(1) - r * r, rx + (rx2 - rx) * frac)
    rows_in = (np.abs(dy) <= ry) & (grid >= ymin) & (grid <= ymax) & layers.visible[:n, :, None]
    row_term = np.where(rows_in, row_term, np.float32(-_INF)).astype(np.float32)
    col_term = col_term.astype(np.float32)

    # Bounding box of each primitive over the batch; only that window of the map is touched. The
    # window depends on the batch, but pixels outside it are uncovered for every image in the
    # batch, so an image's pixels do not depend on its batch-mates.
    row_hit = (row_term > -_INF).any(1)
    col_hit = (col_term <= row_term.max(2, keepdims=True)).any(1)
    boxes = np.concatenate([_span(row_hit), _span(col_hit)], 1).tolist()
    material = layers.material[:n]
    constant = (material == material[:, :1]).all(1).tolist()
    col_t, row_t = torch.from_numpy(col_term), torch.from_numpy(row_term)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        if r1 <= r0 or c1 <= c0:
            continue
        window = mat[:, r0:r1, c0:c1]
        inside = col_t[k, :, None, c0:c1] <= row_t[k, :, r0:r1, None]  # [b, h, w]
        if constant[k]:
            window.masked_fill_(inside, int(material[k, 0]))
        else:
            per_image = torch.from_numpy(material[k].copy())[:, None, None]
            window.copy_(torch.where(inside, per_image, window))
    return mat


# --------------------------------------------------------------------------- tables
def _a(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


_SKIN_T = _a([SKIN_COLOURS[e] for e in vocab.ETHNICITIES])
_YOUNG_HAIR_T = _a(YOUNG_HAIR)
_OLD_HAIR_T = _a(OLD_HAIR)
_UNIFORM_T = _a([UNIFORM_COLOURS[o] for o in vocab.OCCUPATIONS])
_SCENE_T = _a([SCENE_COLOURS[s] for s in vocab.SCENES])  # [n_scenes, 3, 3]
_HORIZON_T = _a([HORIZON[s] for s in vocab.SCENES])
_TIE_T = _a(TIE_COLOURS)
_MOUTH_T = _a(MOUTH_COLOURS)


def _glyph_tables() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Glyph geometry per field, arrays [n_occupations, N_GLYPHS], and colours [n_occ, N_GLYPHS, 3]."""
    n_occ = len(vocab.OCCUPATIONS)
    geom = {k: np.zeros((n_occ, N_GLYPHS), np.float32) for k in ("cx", "cy", "rx", "ry")}
    geom["ymax"] = np.full((n_occ, N_GLYPHS), _INF, np.float32)
    flags = {k: np.zeros((n_occ, N_GLYPHS), bool) for k in ("ellipse", "visible")}
    colours = np.zeros((n_occ, N_GLYPHS, 3), np.float32)
    for o, occ in enumerate(vocab.OCCUPATIONS):
        for first, limit, table in ((0, N_HEAD_GLYPHS, HEAD_GLYPHS), (N_HEAD_GLYPHS, N_BODY_GLYPHS, BODY_GLYPHS)):
            prims = table[occ]
            if len(prims) > limit:
                raise AssertionError(f"{occ!r} has {len(prims)} glyph primitives in a group of {limit} slots")
            for g, (kind, cx, cy, rx, ry, rgb, ymax) in enumerate(prims, start=first):
                flags["ellipse"][o, g], flags["visible"][o, g] = kind == "e", True
                geom["cx"][o, g], geom["cy"][o, g], geom["rx"][o, g], geom["ry"][o, g] = cx, cy, rx, ry
                geom["ymax"][o, g], colours[o, g] = ymax, rgb
    return {**geom, **flags}, colours


_GLYPH_GEOM, _GLYPH_COLOURS = _glyph_tables()


# --------------------------------------------------------------------------- background
def _frac(z: np.ndarray) -> np.ndarray:
    return z - np.floor(z)


def _parity(z: np.ndarray) -> np.ndarray:
    return np.remainder(np.floor(z), 2) == 1


def _background(scene: np.ndarray, j: Mapping[str, np.ndarray], size: int) -> Tensor:
    """Material map [b, H, W] uint8 of the scene: wall/sky BG0, floor/ground BG1, pattern BG2.

    The pattern is ``(rA & cA) ^ (rB & cB)`` of per-row and per-column masks [b, H] / [b, W]: enough
    for stripes, checkerboards, buildings with windows and dashes, in four full-size operations.
    """
    b = scene.shape[0]
    grid = (np.arange(size, dtype=np.float32) + np.float32(0.5)) / np.float32(size)
    y = x = np.broadcast_to(grid, (b, size))
    col = lambda name: j[name][:, None]  # noqa: E731 - short alias for a [b, 1] column
    above = y < _HORIZON_T[scene][:, None] + np.float32(0.08) * (col("horizon") - np.float32(0.5))
    phx, phy = col("phase_x"), col("phase_y")
    edge = np.float32(0.06) * (col("edge") - np.float32(0.5))
    none = np.zeros((b, size), bool)
    every = np.ones((b, size), bool)
    buildings = (y > 0.14 + edge) & above
    pats = {  # scene -> (rA, cA, rB, cB)
        "hospital": (above, _frac(x / 0.14 + phx) < 0.4, none, every),
        "kitchen": (above, _parity(x / 0.125 + phx), above & _parity(y / 0.125 + phy), every),
        "street": (buildings, _frac(x / 0.28 + phx) < 0.78, buildings & (_frac(y / 0.1 + phy) < 0.45),
                   (_frac(x / 0.28 + phx) < 0.78) & (_frac(x / 0.07 + 4 * phx) < 0.5)),
        "field": (~above & (_frac(y / 0.08 + phy) < 0.35), every, none, every),
        "classroom": ((y > 0.08 + edge) & (y < 0.58 + edge), (x > 0.05 + edge) & (x < 0.95 + edge), none, every),
        "airport": (np.abs(y - 0.86 - edge) < 0.018, _frac(x / 0.2 + phx) < 0.5, above, _frac(x / 0.2 + phy) < 0.06),
    }
    ra, ca, rb, cb = (np.zeros((b, size), bool) for _ in range(4))
    for s, name in enumerate(vocab.SCENES):
        sel = scene == s
        if sel.any():
            for out, mask in zip((ra, ca, rb, cb), pats[name]):
                out[sel] = mask[sel]
    ra, ca, rb, cb, above = (torch.from_numpy(np.ascontiguousarray(m)) for m in (ra, ca, rb, cb, above))
    base = torch.where(above, torch.tensor(BG0, dtype=torch.uint8), torch.tensor(BG1, dtype=torch.uint8))
    pattern = (ra[:, :, None] & ca[:, None, :]) ^ (rb[:, :, None] & cb[:, None, :])
    return torch.where(pattern, torch.tensor(BG2, dtype=torch.uint8), base[:, :, None])


# --------------------------------------------------------------------------- person
def _person(codes: Mapping[str, np.ndarray], j: Mapping[str, np.ndarray]) -> _Layers:
    """The person's primitives in painter's order (canonical frame); arrays are [b]."""
    occ, female, old = codes["occupation"], codes["gender"] == 1, codes["age"] == 1
    male = ~female
    f32 = np.float32
    layers = _Layers(occ.shape[0])
    hs = f32(0.92) + f32(0.16) * j["head_scale"]  # head size factor
    bw = f32(0.94) + f32(0.12) * j["body_width"]  # body width factor
    head_x, head_y, head_rx, head_ry = f32(0.5), f32(0.36), f32(0.115) * hs, f32(0.145) * hs

    # Clothing cut: broad straight shoulders (male) vs narrow shoulders and a flared hem (female).
    shoulder = np.where(female, f32(0.19) * bw, f32(0.27) * bw)
    hem = np.where(female, f32(0.32) * bw, f32(0.25) * bw)
    layers.ellipse(UNIFORM, 0.5, 0.67, shoulder, 0.08)
    layers.add(ellipse=False, material=UNIFORM, cx=0.5, cy=0.885, rx=shoulder, ry=0.215, rx2=hem)

    # Hair behind the head: long to the shoulders (female) vs a short cap (male); less when old.
    volume = np.where(old, f32(0.94), f32(1.0))
    hair_rx = np.where(female, f32(0.158), f32(0.142)) * hs * volume
    hair_ry = np.where(female, f32(0.178), f32(0.172)) * hs * volume
    hair_cy = head_y - f32(0.012) * hs
    layers.ellipse(HAIR, head_x, hair_cy, hair_rx, hair_ry, ymax=np.where(female, f32(_INF), head_y + f32(0.05) * hs))
    hair_end = f32(0.66) + f32(0.12) * j["hair_length"]
    layers.rect(HAIR, head_x, (head_y + hair_end) / f32(2), hair_rx, (hair_end - head_y) / f32(2), visible=female)

    layers.rect(SKIN, 0.5, 0.54, f32(0.045) * hs, 0.065)  # neck
    # Neckline: white collar V (male, a downward trapezoid) vs a skin scoop (female, half ellipse).
    layers.add(ellipse=female, material=np.where(female, SKIN, SHIRT), cx=0.5,
               cy=np.where(female, f32(0.59), f32(0.645)), rx=np.where(female, f32(0.085), f32(0.07)),
               ry=np.where(female, f32(0.06), f32(0.055)), rx2=np.where(female, f32(0.085), f32(0.004)),
               ymin=np.where(female, f32(0.59), f32(-_INF)))
    layers.add(ellipse=False, material=TIE, cx=0.5, cy=0.71, rx=0.014, ry=0.11, rx2=0.03, visible=male)

    layers.ellipse(SKIN, head_x, head_y, head_rx, head_ry)  # face
    # Fringe: the hair ellipse above the hairline; old men's hairline recedes.
    hairline_depth = np.where(female, f32(0.06), np.where(old, f32(0.022), f32(0.04)))
    hairline = head_y - head_ry + hairline_depth * hs + f32(0.012) * (j["hairline"] - f32(0.5))
    layers.ellipse(HAIR, head_x, hair_cy, hair_rx, hair_ry, ymax=hairline)
    for side in (-1, 1):  # eyes
        eye_x = head_x + f32(side * 0.045) * hs
        layers.ellipse(FEATURE, eye_x, head_y + f32(0.012) * hs, f32(0.016) * hs, f32(0.02) * hs)
    layers.rect(MOUTH, head_x, head_y + f32(0.075) * hs, f32(0.034) * hs, f32(0.01) * hs)

    # Occupation glyphs: the first N_HEAD_GLYPHS slots follow the head, the rest sit on the body.
    for g in range(N_GLYPHS):
        geom = {k: v[occ, g] for k, v in _GLYPH_GEOM.items()}
        if g < N_HEAD_GLYPHS:
            cx, cy = head_x + hs * geom["cx"], head_y + hs * geom["cy"]
            rx, ry, ymax = hs * geom["rx"], hs * geom["ry"], head_y + hs * geom["ymax"]
        else:
            cx, cy, rx, ry, ymax = geom["cx"], geom["cy"], geom["rx"], geom["ry"], geom["ymax"]
        layers.add(ellipse=geom["ellipse"], material=GLYPH0 + g, cx=cx, cy=cy, rx=rx, ry=ry,
                   ymax=ymax, visible=geom["visible"])
    layers.ellipse(SKIN, HAND[0], HAND[1], 0.033, 0.033)  # the hand holding the tool
    return layers


# --------------------------------------------------------------------------- palette
def _shade(colour: np.ndarray, u: np.ndarray, amount: float) -> np.ndarray:
    """Scale colours [b, ..., 3] by a factor in [1 - amount, 1 + amount] set by uniforms u [b]."""
    factor = np.float32(1) + np.float32(amount) * (np.float32(2) * u - np.float32(1))
    return colour * factor.reshape(-1, *([1] * (colour.ndim - 1)))


def _pick(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row of ``table`` chosen uniformly by u in [0, 1): table [n, 3], u [b] -> [b, 3]."""
    return table[np.minimum((u * np.float32(len(table))).astype(np.int64), len(table) - 1)]


def _palette(codes: Mapping[str, np.ndarray], j: Mapping[str, np.ndarray], style: RenderStyle) -> np.ndarray:
    """Per-image colours of every material, float32 [b, N_MATERIALS, 3], in [0, 1]."""
    b = codes["occupation"].shape[0]
    cj = style.colour_jitter
    rgb = lambda prefix, amp: np.float32(amp) * (np.float32(2) * np.stack(  # noqa: E731
        [j[prefix + c] for c in ("_r", "_g", "_b")], 1) - np.float32(1))
    pal = np.empty((b, N_MATERIALS, 3), np.float32)
    scene = _SCENE_T[codes["scene"]]  # [b, 3, 3]
    tint = rgb("bg", 0.03)
    for k in range(3):
        pal[:, BG0 + k] = _shade(scene[:, k], j[f"bg_shade{k}"], cj) + tint
    pal[:, SKIN] = _shade(_SKIN_T[codes["ethnicity"]], j["skin_shade"], style.skin_jitter) + rgb("skin", 0.02)
    old, young = _pick(_OLD_HAIR_T, j["hair_pick"]), _pick(_YOUNG_HAIR_T, j["hair_pick"])
    hair = np.where((codes["age"] == 1)[:, None], old, young)
    pal[:, HAIR] = _shade(hair, j["hair_shade"], cj)
    pal[:, UNIFORM] = _shade(_UNIFORM_T[codes["occupation"]], j["uniform_shade"], cj) + rgb("uniform", 0.03)
    pal[:, FEATURE] = FEATURE_COLOUR
    pal[:, MOUTH] = _MOUTH_T[codes["gender"]]
    pal[:, TIE] = _pick(_TIE_T, j["tie_pick"])
    pal[:, SHIRT] = SHIRT_COLOUR
    pal[:, GLYPH0:] = _shade(_GLYPH_COLOURS[codes["occupation"]], j["glyph_shade"], cj)
    return np.clip(pal, 0, 1, out=pal)


# --------------------------------------------------------------------------- entry point
def render_batch(
    codes: Mapping[str, np.ndarray | Tensor],
    jitter: np.ndarray | Tensor,
    image_size: int,
    noise: NoiseBank | None = None,
    style: RenderStyle | None = None,
) -> Tensor:
    """Render a batch of SynthSocial images.

    Args:
        codes: integer label codes [b] for ``occupation``, ``gender``, ``ethnicity``, ``age`` and
            ``scene`` (coded as in ``vocab.LABEL_NAMES``); numpy arrays or tensors.
        jitter: uniform draws in [0, 1), [b, N_JITTER], columns named by ``JITTER_FIELDS``.
        image_size: side of the square image in pixels (>= 16).
        noise: pixel-noise source; None renders without noise (to inspect the cues).
        style: nuisance strengths; default ``RenderStyle()``.

    Returns:
        float32 tensor [b, 3, image_size, image_size] in [0, 1].
    """
    style = style or RenderStyle()
    missing = set(CODE_KEYS) - set(codes)
    if missing:
        raise KeyError(f"render_batch() needs label codes for {sorted(missing)}; got keys {sorted(codes)}")
    jitter = np.asarray(jitter, dtype=np.float32)
    if jitter.ndim != 2 or jitter.shape[1] != N_JITTER:
        raise ValueError(f"jitter must have shape [b, {N_JITTER}] (columns JITTER_FIELDS), got {jitter.shape}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the cues to be visible, got {image_size}")
    if noise is not None and noise.image_size != image_size:
        raise ValueError(f"the noise bank is for {noise.image_size}px images but image_size={image_size}")
    b = jitter.shape[0]
    codes = {k: np.asarray(codes[k], dtype=np.int64).reshape(b) for k in CODE_KEYS}
    j = dict(zip(JITTER_FIELDS, jitter.T))
    f32 = np.float32

    px = f32(0.5) + f32(style.position_jitter) * (f32(2) * j["pos_x"] - f32(1))
    py = f32(0.5) + f32(style.vertical_jitter) * (f32(2) * j["pos_y"] - f32(1))
    lo, hi = style.scale_range
    scale = f32(lo) + f32(hi - lo) * j["scale"]

    mat = _background(codes["scene"], j, image_size)
    mat = _rasterise(_person(codes, j), mat, px, py, scale)

    # Global light is applied to the palette (identical to applying it per pixel, and cheaper).
    clo, chi = style.contrast_range
    contrast = f32(clo) + f32(chi - clo) * j["contrast"]
    brightness = f32(style.brightness_jitter) * (f32(2) * j["brightness"] - f32(1))
    pal = _palette(codes, j, style) * contrast[:, None, None] + brightness[:, None, None]
    pal = torch.from_numpy(np.ascontiguousarray(pal.transpose(0, 2, 1)))  # [b, 3, M]
    index = mat.view(b, 1, -1).long().expand(b, 3, -1)
    img = torch.gather(pal, 2, index).view(b, 3, image_size, image_size)
    if noise is not None and style.noise_std > 0:
        offsets = np.minimum((j["noise_offset"].astype(np.float64) * noise.n_offsets).astype(np.int64),
                             noise.n_offsets - 1)
        # Scale, then add: two separately rounded steps (a fused multiply-add could differ by batch).
        img.add_(noise.take(offsets).mul_(style.noise_std))
    return img.clamp_(0.0, 1.0)


def contact_sheet(images: Tensor, ncol: int = 8, pad: int = 2) -> Tensor:
    """Tile images [n, 3, H, W] into one image [3, rows*(H+pad)+pad, ncol*(W+pad)+pad], white gaps."""
    n, c, h, w = images.shape
    rows = -(-n // ncol)
    sheet = torch.ones(c, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        sheet[:, top:top + h, left:left + w] = images[i]
    return sheet
