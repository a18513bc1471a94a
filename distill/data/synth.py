"""Synthetic face identities: the project's default data, written in the real InsightFace formats.

Why: no labelled real faces can be installed offline (data.md §4), yet the whole pipeline (train,
distill, evaluate, export) needs a recognition task with real structure. Each identity is a fixed
set of drawn traits (face shape, skin, eyes, brows, nose, mouth, hair, beard, glasses, marks); each
image of it varies the things a camera varies (pose, expression, light, blur, noise, occlusion,
background, JPEG quality). A model must learn the traits and ignore the nuisances, which is the
real task in miniature.

Faces are drawn at 2x with Pillow polygons (so pose is a point transform, not a raster warp), box
downsampled to 112x112, and laid out near the ArcFace 5-point template (eyes y~51, nose ~72, mouth
~92) like aligned crops. Everything is seeded: the same spec gives byte-identical files.

``difficulty`` in [0, 1] scales the per-image variation and how strongly identities are pulled
toward shared "family" prototypes (look-alikes make hard negatives).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from distill.atomic import atomic_path, write_json
from distill.data.recordio import write_insightface_rec
from distill.data.verification_bin import write_verification_bin

SIZE = 112
SS = 2  # supersampling factor of the drawing canvas
CX = 56.0  # face centre x; the template is symmetric about it
EYE_Y = 51.6
NOSE_Y = 71.7
MOUTH_Y = 92.3
GENERATOR_VERSION = 1

# seed streams (the second entry of every SeedSequence), so no two uses of a seed collide
_TRAIN_ID, _VAL_ID, _PROTO, _TRAIN_IMG, _VAL_PAIRS, _VAL_IMG, _SHEET = 1, 2, 3, 4, 5, 6, 7
_DEV_ID, _DEV_PAIRS, _DEV_IMG = 8, 9, 10
_TEST_ID, _TEST_PAIRS, _TEST_IMG = 11, 12, 13
# per verification split: (pair-plan stream, image stream); its identities' stream is identity_for's
_PAIR_STREAMS = {
    "val": (_VAL_PAIRS, _VAL_IMG),
    "dev": (_DEV_PAIRS, _DEV_IMG),
    "test": (_TEST_PAIRS, _TEST_IMG),
}
_N_PROTOTYPES = 48
_NOISE_PAD = 48

_SKIN = np.array(
    [
        (255, 226, 200),
        (242, 198, 170),
        (226, 176, 140),
        (200, 140, 104),
        (165, 110, 75),
        (125, 82, 55),
        (88, 58, 40),
    ],
    dtype=np.float64,
)
_HAIR = [
    ((22, 18, 16), 0.26),
    ((55, 38, 26), 0.22),
    ((100, 68, 40), 0.15),
    ((145, 105, 65), 0.09),
    ((210, 175, 110), 0.09),
    ((150, 65, 30), 0.06),
    ((140, 138, 135), 0.06),
    ((215, 212, 205), 0.03),
    ((60, 70, 150), 0.02),
    ((170, 60, 120), 0.02),
]
_IRIS = [(85, 52, 28), (45, 30, 20), (120, 92, 50), (75, 115, 70), (80, 120, 170), (115, 128, 140)]
_HAIR_STYLES = ("bald", "buzz", "short", "side_part", "fringe", "medium", "long", "curly")
_BEARDS = ("none", "stubble", "moustache", "goatee", "full")
_GLASSES = ("none", "round", "rect", "sun")


def _lerp(a: Any, b: Any, t: float) -> Any:
    if isinstance(a, tuple):
        return tuple(x + (y - x) * t for x, y in zip(a, b, strict=True))
    return a + (b - a) * t


def _rgb(c: tuple[float, ...] | np.ndarray) -> tuple[int, int, int]:
    r, g, b = int(c[0] + 0.5), int(c[1] + 0.5), int(c[2] + 0.5)
    return (min(max(r, 0), 255), min(max(g, 0), 255), min(max(b, 0), 255))


def _shade(c: tuple[float, ...], k: float) -> tuple[float, float, float]:
    return (c[0] * k, c[1] * k, c[2] * k)


@dataclass(frozen=True)
class Identity:
    """The stable traits of one synthetic person (lengths in 112-pixel units)."""

    skin: tuple[float, float, float]
    face_rx: float
    face_ry: float
    face_cy: float
    jaw: float  # lower-face width factor: small = V-shaped
    chin: float  # chin roundness exponent
    ear_size: float
    eye_dx: float
    eye_dy: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    iris: tuple[float, float, float]
    iris_r: float
    lid: float
    brow_dy: float
    brow_len: float
    brow_thick: float
    brow_arch: float
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_dy: float
    mouth_w: float
    lip_up: float
    lip_low: float
    lip_color: tuple[float, float, float]
    smile: float
    hair_color: tuple[float, float, float]
    hair_style: int
    hairline: float
    hair_volume: float
    hair_part: int
    beard: int
    glasses: int
    glasses_color: tuple[float, float, float]
    blush: float
    mole: tuple[float, float, float]  # x, y, radius (radius 0 = none)
    wrinkles: int
    detail: tuple[float, ...]  # 64 uniforms in [0, 1): freckle, curl and strand positions

    @property
    def hair_style_name(self) -> str:
        return _HAIR_STYLES[self.hair_style]


def _pick(rng: np.random.Generator, table: list[tuple[tuple[int, int, int], float]]) -> tuple[float, ...]:
    probs = np.array([p for _, p in table])
    c = table[int(rng.choice(len(table), p=probs / probs.sum()))][0]
    return tuple(float(v) for v in c)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's traits from ``rng`` (no mixing)."""
    u = rng.uniform
    t = u(0, len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    skin = _SKIN[i] + (_SKIN[i + 1] - _SKIN[i]) * (t - i) + rng.normal(0, 6, 3) * np.array([1.0, 0.8, 0.8])
    hair = _pick(rng, _HAIR)
    grey = u() < 0.12
    if grey:
        hair = _lerp(hair, (170.0, 168.0, 165.0), u(0.3, 0.8))
    hair = tuple(float(v) for v in np.clip(np.array(hair) * u(0.85, 1.15), 0, 255))
    style = int(rng.choice(len(_HAIR_STYLES), p=[0.07, 0.1, 0.2, 0.14, 0.12, 0.13, 0.14, 0.1]))
    beard = int(rng.choice(len(_BEARDS), p=[0.62, 0.12, 0.1, 0.07, 0.09]))
    glasses = int(rng.choice(len(_GLASSES), p=[0.72, 0.12, 0.12, 0.04]))
    iris = _IRIS[int(rng.integers(len(_IRIS)))]
    lip = np.array(skin) * np.array([0.85, 0.62, 0.62]) + np.array([25, 0, 5]) + rng.normal(0, 8, 3)
    has_mole = u() < 0.3
    return Identity(
        skin=tuple(float(v) for v in np.clip(skin, 30, 255)),
        face_rx=u(35, 44),
        face_ry=u(49, 57),
        face_cy=u(57, 62),
        jaw=u(0.55, 0.95),
        chin=u(0.7, 1.3),
        ear_size=u(0.8, 1.25),
        eye_dx=u(15.5, 19.5),
        eye_dy=u(-2.0, 2.0),
        eye_w=u(5.5, 8.5),
        eye_h=u(2.2, 4.2),
        eye_tilt=u(-0.12, 0.2),
        iris=tuple(float(v) for v in np.clip(np.array(iris) * u(0.8, 1.2), 0, 255)),
        iris_r=u(0.42, 0.6),
        lid=u(0.8, 1.6),
        brow_dy=u(6.0, 10.5),
        brow_len=u(7.0, 11.0),
        brow_thick=u(1.2, 3.6),
        brow_arch=u(-0.5, 3.5),
        brow_tilt=u(-2.5, 2.5),
        nose_len=u(-3.5, 3.5),
        nose_w=u(4.0, 7.5),
        mouth_dy=u(-3.0, 3.0),
        mouth_w=u(10.5, 16.5),
        lip_up=u(1.3, 3.6),
        lip_low=u(1.8, 4.8),
        lip_color=tuple(float(v) for v in np.clip(lip, 20, 255)),
        smile=u(-0.3, 0.5),
        hair_color=hair,
        hair_style=style,
        hairline=u(14, 28),
        hair_volume=u(2.0, 7.0),
        hair_part=int(rng.choice([-1, 1])),
        beard=beard,
        glasses=glasses,
        glasses_color=_pick(
            rng, [((20, 20, 20), 0.5), ((90, 60, 30), 0.2), ((160, 160, 170), 0.2), ((140, 30, 40), 0.1)]
        ),
        blush=u(0.0, 1.0),
        mole=(u(-24, 24), u(58, 90), u(0.9, 1.8) if has_mole else 0.0),
        wrinkles=int(rng.choice(4, p=[0.65, 0.15, 0.12, 0.08])),
        detail=tuple(rng.uniform(0, 1, 64).tolist()),
    )


def mix_identities(own: Identity, proto: Identity, weight: float, rng: np.random.Generator) -> Identity:
    """Pull ``own`` toward ``proto`` by ``weight``: continuous traits interpolate, discrete ones are
    inherited with probability ``weight`` (so relatives look alike without being equal)."""
    values = {}
    for f in dataclasses.fields(Identity):
        a, b = getattr(own, f.name), getattr(proto, f.name)
        if f.name == "detail":
            values[f.name] = a
        elif isinstance(a, int):
            values[f.name] = b if rng.uniform() < weight else a
        else:
            values[f.name] = _lerp(a, b, weight)
    return Identity(**values)


def identity_for(seed: int, split: str, index: int, difficulty: float) -> Identity:
    """Identity ``index`` of ``split`` ("train", "val", "dev" or "test"); the splits use disjoint seed
    streams, and share the population (the same prototypes) for one ``seed``."""
    stream = {"train": _TRAIN_ID, "val": _VAL_ID, "dev": _DEV_ID, "test": _TEST_ID, "sheet": _SHEET}[split]
    rng = np.random.default_rng([seed, stream, index])
    own = sample_identity(rng)
    proto_index = int(rng.integers(_N_PROTOTYPES))
    weight = rng.uniform(0.0, 0.85) * float(np.clip(difficulty, 0.0, 1.0))
    proto = sample_identity(np.random.default_rng([seed, _PROTO, proto_index]))
    return mix_identities(own, proto, weight, rng)


@dataclass(frozen=True)
class Variation:
    """What changes between two photos of the same person."""

    yaw: float
    pitch: float
    roll: float
    scale: float
    tx: float
    ty: float
    smile: float
    mouth_open: float
    brow_raise: float
    eye_open: float
    gaze: tuple[float, float]
    light_dir: float
    light_strength: float
    light_hardness: float
    brightness: float
    cast: tuple[float, float, float]
    contrast: float
    background: int
    bg_colors: tuple[tuple[float, float, float], ...]
    clothes: tuple[float, float, float]
    wear_glasses: bool
    occlusion: int  # 0 none, 1 object, 2 hand, 3 face mask, 4 cap
    occ_params: tuple[float, ...]
    blur: float  # 0 = sharp, else the blur radius in pixels (also stands in for low resolution)
    noise: float
    noise_offset: tuple[int, int]
    jpeg_quality: int


def _muted(rng: np.random.Generator, n: int) -> list[tuple[float, float, float]]:
    """``n`` background-ish colours: mostly desaturated, occasionally vivid."""
    grey = rng.uniform(40, 220, (n, 1))
    sat = np.where(
        rng.uniform(0, 1, (n, 1)) < 0.85, rng.uniform(0.1, 0.5, (n, 1)), rng.uniform(0.5, 0.9, (n, 1))
    )
    c = np.clip(grey + (rng.uniform(0, 255, (n, 3)) - grey) * sat, 0, 255)
    return [tuple(row) for row in c.tolist()]


def sample_variation(
    rng: np.random.Generator,
    ident: Identity,
    difficulty: float,
    jpeg_quality_range: tuple[int, int] = (60, 95),
) -> Variation:
    """Per-image nuisance parameters; their spread grows with ``difficulty``."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    a = 0.3 + 0.7 * d
    u, n = rng.uniform, rng.normal
    glasses_on = ident.glasses > 0 and u() < 0.9
    occ = 0
    if u() < 0.3 * d:
        occ = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.25, 0.2, 0.2]))
    *bg, clothes = _muted(rng, 7)
    return Variation(
        yaw=float(np.clip(n(0, 0.3 * a), -0.7, 0.7)),
        pitch=float(np.clip(n(0, 0.14 * a), -0.35, 0.35)),
        roll=float(np.clip(n(0, 6.0 * a), -20, 20)),
        scale=float(np.clip(1 + n(0, 0.05 * a), 0.85, 1.15)),
        tx=float(n(0, 2.0 * a)),
        ty=float(n(0, 2.0 * a)),
        smile=float(np.clip(ident.smile + n(0, 0.45 * a), -0.6, 1.2)),
        mouth_open=float(u(0.2, 1.0)) if u() < 0.3 * a else 0.0,
        brow_raise=float(n(0, 1.3 * a)),
        eye_open=float(u(0.1, 0.45)) if u() < 0.03 + 0.07 * d else float(u(0.85, 1.1)),
        gaze=(float(n(0, 0.6 * a)), float(n(0, 0.3 * a))),
        light_dir=float(u(0, 2 * math.pi)),
        light_strength=float(u(0, 0.5 * a)),
        light_hardness=float(u(0.8, 1.0 + 4.0 * d)),
        brightness=float(math.exp(n(0, 0.2 * a))),
        cast=tuple(float(math.exp(v)) for v in n(0, 0.06 * a, 3)),
        contrast=float(np.clip(1 + n(0, 0.15 * a), 0.6, 1.4)),
        background=int(rng.integers(4)),
        bg_colors=tuple(bg),
        clothes=clothes,
        wear_glasses=bool(glasses_on),
        occlusion=occ,
        occ_params=tuple(float(v) for v in rng.uniform(0, 1, 8)),
        blur=float(u(0.3, 0.4 + 1.4 * d)) if u() < 0.25 + 0.45 * d else 0.0,
        noise=float(u(0, 2 + 7 * d)),
        noise_offset=(int(rng.integers(_NOISE_PAD)), int(rng.integers(_NOISE_PAD))),
        jpeg_quality=int(rng.integers(jpeg_quality_range[0], jpeg_quality_range[1] + 1)),
    )


class _Pose:
    """Maps face-plane points (112 units, depth z toward the camera) to canvas pixels.

    Yaw/pitch rotate a head whose surface curves back away from the midline, so the far side
    compresses and the nose moves most; roll, scale and shift apply to the whole head.
    """

    def __init__(self, ident: Identity, var: Variation):
        self.cy = ident.face_cy
        self.sy, self.cyaw = math.sin(var.yaw), math.cos(var.yaw)
        self.sp, self.cp = math.sin(var.pitch), math.cos(var.pitch)
        r = math.radians(var.roll)
        self.scale = var.scale
        self.cr, self.sr = math.cos(r) * var.scale, math.sin(r) * var.scale
        self.tx, self.ty = var.tx, var.ty
        self.roll_cy = 62.0

    def apply(self, pts: np.ndarray, z: np.ndarray) -> np.ndarray:
        x = pts[:, 0] - CX
        y = pts[:, 1] - self.cy
        zz = z - 0.011 * x * x - 0.004 * y * y  # rounded head: the sides sit further back
        x2 = x * self.cyaw + zz * self.sy
        z2 = zz * self.cyaw - x * self.sy
        y2 = y * self.cp - z2 * self.sp + (self.cy - self.roll_cy)
        out = np.empty_like(pts)
        out[:, 0] = (x2 * self.cr - y2 * self.sr + CX + self.tx) * SS
        out[:, 1] = (x2 * self.sr + y2 * self.cr + self.roll_cy + self.ty) * SS
        return out

    def width(self, w: float) -> int:
        return max(1, round(w * self.scale * SS))


class _Sketch:
    """A display list: shapes are collected in face coordinates, posed in one vectorised step, then drawn
    in order (painter's algorithm). Batching keeps a face at ~1 ms instead of ~50 small numpy calls."""

    def __init__(self) -> None:
        self.cmds: list[tuple[bool, int, tuple[int, int, int], float]] = []
        self.pts: list[np.ndarray] = []
        self.zs: list[np.ndarray] = []

    def _add(self, is_line: bool, pts: np.ndarray, z: float | np.ndarray, fill: Any, width: float) -> None:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        self.pts.append(pts)
        self.zs.append(
            np.full(len(pts), z) if isinstance(z, (int, float)) else np.asarray(z, dtype=np.float64)
        )
        self.cmds.append((is_line, len(pts), _rgb(fill), width))

    def poly(self, pts: np.ndarray, z: float | np.ndarray, fill: Any) -> None:
        self._add(False, pts, z, fill, 0.0)

    def line(self, pts: np.ndarray, z: float | np.ndarray, fill: Any, width: float) -> None:
        self._add(True, pts, z, fill, width)

    def render(self, img: Image.Image, pose: _Pose) -> None:
        flat = pose.apply(np.concatenate(self.pts), np.concatenate(self.zs)).ravel().tolist()
        dr = ImageDraw.Draw(img)
        i = 0
        for is_line, n, fill, width in self.cmds:
            seg = flat[2 * i : 2 * (i + n)]
            i += n
            if is_line:
                dr.line(seg, fill=fill, width=pose.width(width), joint="curve" if n > 2 else None)
            else:
                dr.polygon(seg, fill=fill)


@functools.cache
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    c.flags.writeable = False
    s.flags.writeable = False
    return c, s


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20, angle: float = 0.0) -> np.ndarray:
    c, s = _unit_circle(n)
    out = np.empty((n, 2))
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        out[:, 0] = cx + rx * c * ca - ry * s * sa
        out[:, 1] = cy + rx * c * sa + ry * s * ca
    else:
        out[:, 0] = cx + rx * c
        out[:, 1] = cy + ry * s
    return out


def _head_outline(ident: Identity, grow: float = 0.0, n: int = 40) -> np.ndarray:
    """Closed face outline starting at the top, clockwise; ``grow`` inflates it (for hair)."""
    c, s = _unit_circle(n)  # angle measured from the top: x ~ sin, y ~ -cos
    lower = np.clip(-c, 0, None)
    w = 1 - (1 - ident.jaw) * lower**1.4
    rx, ry = ident.face_rx + grow, ident.face_ry + grow
    out = np.empty((n, 2))
    out[:, 0] = CX + rx * s * w
    out[:, 1] = ident.face_cy - ry * np.sign(c) * np.abs(c) ** np.where(c < 0, ident.chin, 1.0)
    return out


def _background(rng: np.random.Generator, var: Variation) -> Image.Image:
    cols = np.array(var.bg_colors, dtype=np.float64)
    full = (SIZE * SS, SIZE * SS)
    if var.background == 0:  # flat wall
        return Image.new("RGB", full, _rgb(cols[0]))
    if var.background == 1:  # two-colour gradient
        ramp = np.linspace(cols[0], cols[1], SIZE * SS).astype(np.uint8)
        grid = np.broadcast_to(
            ramp[:, None, :] if rng.uniform() < 0.5 else ramp[None], (SIZE * SS, SIZE * SS, 3)
        )
        return Image.fromarray(np.ascontiguousarray(grid))
    if var.background == 2:  # out-of-focus scene
        w = rng.uniform(0, 1, (3, 3, 1))
        small = cols[0] * w + cols[1] * (1 - w)
        return Image.fromarray(small.astype(np.uint8)).resize(full, Image.BILINEAR)
    img = Image.new("RGB", full, _rgb(cols[0]))  # cluttered: a few shapes
    dr = ImageDraw.Draw(img)
    for k in range(1, 6):
        x0, y0 = rng.uniform(0, SIZE * SS, 2)
        w, h = rng.uniform(20, 120, 2)
        (dr.rectangle if k % 2 else dr.ellipse)([x0, y0, x0 + w, y0 + h], fill=_rgb(cols[k]))
    return img


def _draw_hair_back(sk: _Sketch, ident: Identity, color: Any) -> None:
    style = ident.hair_style_name
    if style not in ("medium", "long", "curly"):
        return
    v = ident.hair_volume
    bottom = {"medium": 92.0, "long": 126.0, "curly": 96.0}[style]
    top = _head_outline(ident, grow=v + 1.0, n=40)
    arc = np.concatenate([top[30:], top[:11]])  # left side over the top to the right side
    left, right = arc[0], arc[-1]
    side = 6.0 + v * (1.6 if style == "long" else 1.0)
    pts = np.concatenate(
        [
            [[left[0] - side * 0.4, bottom], [left[0] - side * 0.2, (left[1] + bottom) / 2]],
            arc,
            [[right[0] + side * 0.2, (right[1] + bottom) / 2], [right[0] + side * 0.4, bottom]],
        ]
    )
    sk.poly(pts, -14.0, color)


def _draw_body(sk: _Sketch, ident: Identity, skin: Any, var: Variation) -> None:
    nw = ident.face_rx * 0.55
    neck = np.array([[CX - nw, 70], [CX + nw, 70], [CX + nw * 1.05, 122], [CX - nw * 1.05, 122]])
    sk.poly(neck, -30.0, _shade(skin, 0.78))
    shoulders = np.array(
        [
            [-20, 140], [-20, 112], [CX - nw - 12, 104], [CX - nw, 103], [CX, 116],
            [CX + nw, 103], [CX + nw + 12, 104], [132, 112], [132, 140],
        ]
    )  # fmt: skip
    sk.poly(shoulders, -34.0, var.clothes)
    sk.line(np.array([[CX - nw, 103], [CX, 116], [CX + nw, 103]]), -33.0, _shade(var.clothes, 0.7), 1.0)


def _draw_ears(sk: _Sketch, ident: Identity, skin: Any) -> None:
    for s in (-1, 1):
        ex = CX + s * (ident.face_rx * 0.97)
        ey = 64.0 + ident.eye_dy
        w, h = 5.5 * ident.ear_size, 11.0 * ident.ear_size
        sk.poly(_ellipse(ex + s * 2.5, ey, w, h, 16), -22.0, _shade(skin, 0.93))
        sk.poly(_ellipse(ex + s * 3.0, ey, w * 0.45, h * 0.6, 12), -22.0, _shade(skin, 0.75))


def _draw_face_base(sk: _Sketch, ident: Identity, skin: Any) -> None:
    sk.poly(_head_outline(ident), 0.0, _shade(skin, 0.9))  # a darker rim reads as roundness
    sk.poly(_head_outline(ident, grow=-2.0), 0.5, skin)
    if ident.blush > 0.55:  # rosy cheeks
        col = _lerp(skin, (220.0, 110.0, 110.0), (ident.blush - 0.55) * 0.25)
        for s in (-1, 1):
            sk.poly(_ellipse(CX + s * (ident.eye_dx + 3), 73, 7, 5, 16), 2.0, col)


def _eye_curves(
    ident: Identity, s: int, openness: float, n: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cx, cy = CX + s * ident.eye_dx, EYE_Y + ident.eye_dy
    t = _HALF_T[n]
    sin_t, cos_t = np.sin(t), np.cos(t)
    x = -cos_t * ident.eye_w
    h = ident.eye_h * openness
    up = -h * sin_t**0.7 * (1 + 0.15 * cos_t * s)  # fuller toward the outer corner
    low = 0.6 * h * sin_t**0.9
    ang = -ident.eye_tilt * s
    ca, sa = math.cos(ang), math.sin(ang)

    def place(yv: np.ndarray) -> np.ndarray:
        return np.stack([cx + x * ca - yv * sa, cy + x * sa + yv * ca], axis=1)

    return place(up), place(low), np.array([cx, cy])


def _draw_eyes(sk: _Sketch, ident: Identity, var: Variation, skin: Any) -> None:
    o = var.eye_open
    lid_col = _shade(ident.hair_color, 0.5) if sum(ident.hair_color) < 300 else (40.0, 30.0, 25.0)
    for s in (-1, 1):
        up, low, c = _eye_curves(ident, s, o)
        sk.poly(np.concatenate([up, low[::-1][1:-1]]), 1.0, (238, 232, 226))
        r = ident.iris_r * ident.eye_w * 0.95
        gx, gy = c[0] + var.gaze[0] * 1.5 - var.yaw * 2.0, c[1] + var.gaze[1]
        sk.poly(_ellipse(gx, gy, r, r, 16), 1.5, ident.iris)
        sk.poly(_ellipse(gx, gy, r * 0.45, r * 0.45, 12), 1.6, (12, 10, 10))
        sk.poly(_ellipse(gx + 0.35 * r, gy - 0.35 * r, r * 0.2, r * 0.2, 8), 1.7, (250, 250, 250))
        # skin caps above and below the lids clip the iris to the eye opening
        sk.poly(np.concatenate([up, (up + [0.0, -r - 2.5])[::-1]]), 1.0, skin)
        sk.poly(np.concatenate([low, (low + [0.0, r + 2.5])[::-1]]), 1.0, skin)
        sk.line(up, 1.0, lid_col, ident.lid)
        sk.line(low[1:-1], 1.0, _shade(skin, 0.8), 0.6)
        if ident.wrinkles >= 2:  # crow's feet
            ox = up[-1] if s > 0 else up[0]
            for k in (-1, 0, 1):
                sk.line(np.array([ox + [s * 1.5, 0], ox + [s * 4.5, k * 1.8]]), 0.0, _shade(skin, 0.85), 0.5)


def _draw_brows(sk: _Sketch, ident: Identity, var: Variation) -> None:
    col = _shade(ident.hair_color, 0.75) if sum(ident.hair_color) > 150 else ident.hair_color
    if ident.hair_style_name == "bald" and sum(ident.hair_color) > 500:
        col = (120.0, 110.0, 100.0)
    u = _LIN01_7
    for s in (-1, 1):
        x = CX + s * (ident.eye_dx - ident.eye_w * 0.9 + u * ident.brow_len * 1.7)
        base = EYE_Y + ident.eye_dy - ident.brow_dy - var.brow_raise * (0.5 + 0.5 * u)
        y = base - ident.brow_arch * np.sin(np.pi * u * 0.85) + ident.brow_tilt * (u - 0.3)
        th = ident.brow_thick * (1.1 - 0.6 * u)
        outline = np.concatenate([np.stack([x, y - th / 2], 1), np.stack([x, y + th / 2], 1)[::-1]])
        sk.poly(outline, 2.0, col)


def _draw_nose(sk: _Sketch, ident: Identity, skin: Any) -> None:
    tip = NOSE_Y + ident.nose_len
    w = ident.nose_w
    mid = _shade(skin, 0.86)
    bridge = np.array([[CX - 3.0, EYE_Y + 4], [CX - w * 0.55, tip - 5], [CX - w * 0.75, tip - 1]])
    sk.line(bridge, np.array([5.0, 9.0, 8.0]), mid, 1.0)
    t = _NOSE_T
    for s in (-1, 1):
        wing = np.stack(
            [CX + s * (w * 0.55 + 1.8 * np.cos(t / 1.6)), tip - 1.2 + 2.0 * np.sin(t / 1.6)], axis=1
        )
        sk.line(wing, 8.0, mid, 0.9)
        sk.poly(_ellipse(CX + s * w * 0.38, tip + 1.0, w * 0.22, 1.1, 10, s * 0.3), 9.0, _shade(skin, 0.72))
    sk.poly(_ellipse(CX, tip - 2.0, w * 0.35, 1.6, 10), 14.0, _lerp(skin, (255.0, 255.0, 255.0), 0.12))


def _mouth_curves(ident: Identity, var: Variation) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upper-lip top, lip line, lower-lip bottom and the mouth opening's lower edge."""
    my = MOUTH_Y + ident.mouth_dy
    w = ident.mouth_w * (1 + 0.12 * max(var.smile, 0))
    u = _LIN11_11
    x = CX + u * w
    line = my - var.smile * 3.2 * u**2 + var.smile * 0.8
    bow = 1 - 0.35 * np.exp(-((u * 6) ** 2))  # cupid's bow dip
    top = line - ident.lip_up * (1 - u**2) ** 0.6 * bow - 0.3
    opening = var.mouth_open * 4.5 * (1 - u**2) ** 0.8
    bottom = line + opening + ident.lip_low * (1 - u**2) ** 0.7 + 0.3
    return (
        np.stack([x, top], 1),
        np.stack([x, line], 1),
        np.stack([x, bottom], 1),
        np.stack([x, line + opening], 1),
    )


def _draw_mouth(sk: _Sketch, ident: Identity, var: Variation) -> None:
    top, line, bottom, open_low = _mouth_curves(ident, var)
    sk.poly(np.concatenate([top, bottom[::-1]]), 5.0, ident.lip_color)
    if var.mouth_open > 0:
        sk.poly(np.concatenate([line, open_low[::-1]]), 4.0, (60, 20, 25))
        teeth = line + np.stack([np.zeros(len(line)), (open_low[:, 1] - line[:, 1]) * 0.4], 1)
        sk.poly(np.concatenate([line[2:-2], teeth[2:-2][::-1]]), 4.5, (235, 230, 215))
    sk.line(line, 5.0, _shade(ident.lip_color, 0.75), 0.8)


def _draw_beard(sk: _Sketch, ident: Identity, var: Variation, skin: Any) -> None:
    kind = _BEARDS[ident.beard]
    if kind == "none":
        return
    col = ident.hair_color
    if col[2] > col[1] + 8:  # dyed hair (natural hair has blue <= green): natural beard
        col = (60.0, 42.0, 30.0)
    top, _, bottom, _ = _mouth_curves(ident, var)
    if kind in ("stubble", "full"):
        lower = _head_outline(ident, n=40)[12:29]  # right side around the chin to the left side
        cheek_y = NOSE_Y + ident.nose_len + (5 if kind == "full" else 7)
        inner = np.array(
            [[lower[-1][0] + 3, cheek_y - 4], [CX - 14, cheek_y + 3], [CX, cheek_y + 4],
             [CX + 14, cheek_y + 3],
             [lower[0][0] - 3, cheek_y - 4]]
        )  # fmt: skip
        if kind == "stubble":  # a shadow of the hair colour, always darker than the skin
            dark = col if sum(col) < sum(skin) * 0.6 else _shade(skin, 0.55)
            sk.poly(np.concatenate([lower, inner]), 3.0, _lerp(skin, dark, 0.3))
        else:
            sk.poly(np.concatenate([lower, inner]), 3.0, col)
    if kind in ("moustache", "full", "goatee"):
        t = top.copy()
        t[:, 0] = CX + (t[:, 0] - CX) * 1.15
        sk.poly(np.concatenate([t[1:-1] + [0, 0.6], (t[1:-1] + [0.0, -3.2])[::-1]]), 6.0, col)
    if kind == "goatee":
        chin = np.array([[CX + 6, 108.0], [CX, 111.0], [CX - 6, 108.0]])
        sk.poly(np.concatenate([bottom[2:-2] + [0.0, 1.0], chin]), 4.0, col)


def _hairline_pts(ident: Identity, n: int = 13) -> np.ndarray:
    """Front hair boundary, from the right temple across the forehead to the left temple."""
    u = np.linspace(1, -1, n)
    temple = EYE_Y + ident.eye_dy - 9.0
    style = ident.hair_style_name
    line = ident.hairline + (temple - ident.hairline) * np.abs(u) ** 3
    if style == "fringe":
        line = np.minimum(temple, ident.hairline + 14 + 2 * np.abs(u) ** 2)
        line = line + (np.asarray(ident.detail[:n]) * 3 - 1.5) * (np.arange(n) % 2)
    elif style == "side_part":
        line = line + 4 * np.clip(u * ident.hair_part, 0, None) ** 1.5 - 2
    elif style == "bald":
        line = np.full(n, temple + 2)
    x = CX + u * ident.face_rx * (0.98 - 0.05 * (1 - np.abs(u)))
    return np.stack([x, line], 1)


def _draw_hair_front(sk: _Sketch, ident: Identity, color: Any) -> None:
    style = ident.hair_style_name
    v = ident.hair_volume if style not in ("buzz", "bald") else 0.8
    outline = _head_outline(ident, grow=v, n=48)
    arc = np.concatenate([outline[38:], outline[:11]])  # left temple over the top to the right temple
    if style == "bald":  # only the sides above the ears
        for side in (arc[:5], arc[-5:]):
            inner = side[::-1] + [(CX - side[:, 0].mean()) * 0.12, 2.0]
            sk.poly(np.concatenate([side, inner]), -10.0, color)
        return
    if style == "buzz":
        color = _lerp(tuple(color), ident.skin, 0.35)
    hairline = _hairline_pts(ident)
    sk.poly(np.concatenate([arc, hairline]), -6.0, color)
    q = ident.detail
    if style == "curly":
        for k, p in enumerate(arc[::2]):
            r = 3 + 3 * q[16 + k % 16]
            sk.poly(_ellipse(p[0], p[1], r, r, 10), -6.0, color)
    if style != "buzz":
        dark = _shade(color, 0.7)
        for k in range(5):  # a few strands for texture
            a, b = arc[2 + int(q[32 + k] * (len(arc) - 4))], hairline[int(q[40 + k] * len(hairline))]
            mid = a * 0.55 + b * 0.45 + (np.array(q[48 + 2 * k : 50 + 2 * k]) - 0.5) * 3
            sk.line(np.array([a * 0.85 + b * 0.15, mid, a * 0.4 + b * 0.6]), -4.0, dark, 0.7)


def _draw_marks(sk: _Sketch, ident: Identity, skin: Any) -> None:
    if ident.mole[2] > 0:
        x, y, r = ident.mole
        sk.poly(_ellipse(CX + x, y, r, r, 8), 3.0, _shade(skin, 0.45))
    if ident.wrinkles in (1, 3):
        xs = np.linspace(CX - 12, CX + 12, 5)
        for k in range(2):
            y = ident.hairline + 6 + k * 3.5
            if y < EYE_Y - ident.brow_dy - 4:
                sk.line(np.stack([xs, y + 0.8 * np.cos(xs / 4.0)], 1), 1.0, _shade(skin, 0.88), 0.5)
    if ident.blush < 0.2:  # freckles
        q = np.asarray(ident.detail)
        sides = np.where(q[:14] < 0.5, 1.0, -1.0)
        xs, ys = CX + sides * (6 + 20 * q[14:28]), 60 + 16 * q[28:42]
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            sk.poly(_ellipse(x, y, 0.6, 0.6, 6), 2.0, _shade(skin, 0.8))


def _draw_glasses(sk: _Sketch, ident: Identity) -> None:
    kind = _GLASSES[ident.glasses]
    col = ident.glasses_color
    cy = EYE_Y + ident.eye_dy + 0.5
    rw, rh = ident.eye_w + 3.5, ident.eye_h + 4.0
    for s in (-1, 1):
        cx = CX + s * ident.eye_dx
        if kind == "round":
            lens = _ellipse(cx, cy, rw, rh + 0.5, 20)
        else:
            c, si = _unit_circle(20)
            lens = np.stack(
                [cx + rw * np.sign(c) * np.abs(c) ** 0.4, cy + rh * np.sign(si) * np.abs(si) ** 0.4], 1
            )
        if kind == "sun":
            sk.poly(lens, 4.0, (25, 25, 30))
        sk.line(np.concatenate([lens, lens[:1]]), 4.0, col, 1.6 if kind == "sun" else 1.1)
        temple = np.array([[cx + s * rw, cy - 1], [CX + s * (ident.face_rx + 1), cy]])
        sk.line(temple, np.array([4.0, -12.0]), col, 1.0)
    bridge = np.array([[CX - ident.eye_dx + rw, cy - 1], [CX, cy - 2.5], [CX + ident.eye_dx - rw, cy - 1]])
    sk.line(bridge, 8.0, col, 1.0)


def _draw_occlusion(sk: _Sketch, ident: Identity, var: Variation) -> None:
    q = var.occ_params
    if var.occlusion == 1:  # an object in front of the face
        w, h = 18 + 30 * q[0], 14 + 24 * q[1]
        x, y = 20 + 72 * q[2] - w / 2, 40 + 60 * q[3] - h / 2
        sk.poly(
            np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]),
            20.0,
            _shade(var.bg_colors[5], 0.6 + 0.5 * q[4]),
        )
    elif var.occlusion == 2:  # a hand from below
        skin = _lerp(ident.skin, tuple(_SKIN[int(q[4] * (len(_SKIN) - 1))]), 0.6)
        s = 1 if q[0] < 0.5 else -1
        cx, cy = CX + s * (10 + 20 * q[1]), 100 + 10 * q[2]
        sk.poly(_ellipse(cx, cy, 16, 13, 18, s * 0.4), 20.0, skin)
        for k in range(4):
            fx = cx - 11 + k * 7
            sk.poly(_ellipse(fx, cy - 16 - 4 * q[3] + abs(k - 1.5) * 2, 3.0, 9.0, 12), 20.0, skin)
    elif var.occlusion == 3:  # a face mask over mouth and nose
        col = ((160, 200, 230), (240, 240, 240), (40, 40, 45), (120, 170, 140))[int(q[0] * 3.99)]
        top_y = NOSE_Y + ident.nose_len - 8
        rx = ident.face_rx * 0.92
        pts = np.array(
            [
                [CX - rx, top_y + 4], [CX - 8, top_y - 2], [CX, top_y - 3], [CX + 8, top_y - 2],
                [CX + rx, top_y + 4],
                [CX + rx * 0.8, 104], [CX, 112], [CX - rx * 0.8, 104],
            ]
        )  # fmt: skip
        sk.poly(pts, 12.0, col)
        for s in (-1, 1):
            sk.line(np.array([[CX + s * rx, top_y + 6], [CX + s * (ident.face_rx + 1), 66]]), 0.0, col, 1.2)
    elif var.occlusion == 4:  # a cap
        brim_y = ident.hairline + 2 + 10 * q[0]
        crown = _head_outline(ident, grow=ident.hair_volume + 2, n=40)
        arc = np.concatenate([crown[33:], crown[:8]])
        arc = arc[arc[:, 1] <= brim_y + 2]
        if len(arc) >= 2:
            brim = np.array(
                [[arc[-1][0] + 4, brim_y + 2], [CX, brim_y + 6 + 6 * q[1]], [arc[0][0] - 4, brim_y + 2]]
            )
            sk.poly(np.concatenate([arc, brim]), 0.0, var.clothes)


_HALF_T = {9: np.linspace(0, np.pi, 9)}
_LIN01_7 = np.linspace(0, 1, 7)
_LIN11_11 = np.linspace(-1, 1, 11)
_NOSE_T = np.linspace(-0.3, 1.3, 8) * np.pi
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
_XX = (_XX - SIZE / 2) / (SIZE / 2)
_YY = (_YY - SIZE / 2) / (SIZE / 2)
# one fixed field of sensor noise; each image takes a window at a random offset (10x cheaper than
# drawing fresh normals per image, and still different for every photo)
_NOISE = (
    np.random.default_rng(20240917)
    .standard_normal((SIZE + _NOISE_PAD, SIZE + _NOISE_PAD, 3))
    .astype(np.float32)
)
for _a in (_HALF_T[9], _LIN01_7, _LIN11_11, _NOSE_T, _XX, _YY, _NOISE):
    _a.flags.writeable = False


def _blur(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian-like blur by an antialiased downscale and a bicubic upscale (4x faster than GaussianBlur)."""
    s = max(12, round(SIZE / (1.0 + 0.9 * radius)))
    return img.resize((s, s), Image.BILINEAR).resize((SIZE, SIZE), Image.BILINEAR)


def _photometric(img: Image.Image, var: Variation) -> np.ndarray:
    if var.blur > 0:
        img = _blur(img, var.blur)
    a = np.asarray(img, dtype=np.float32)
    proj = math.cos(var.light_dir) * _XX + math.sin(var.light_dir) * _YY
    gain = np.tanh(var.light_hardness * proj)
    gain *= var.brightness * var.light_strength
    gain += var.brightness
    mean = float(a.mean()) * var.brightness
    a *= gain[..., None]
    a *= np.asarray(var.cast, dtype=np.float32) * var.contrast
    a += mean * (1.0 - var.contrast)
    if var.noise > 0:
        ox, oy = var.noise_offset
        a += _NOISE[oy : oy + SIZE, ox : ox + SIZE] * var.noise
    a += 0.5
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def render_face(ident: Identity, var: Variation, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw one photo: a ``(112, 112, 3)`` uint8 RGB array (``rng`` drives the background details)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    img = _background(rng, var)
    skin, hair = ident.skin, ident.hair_color
    sk = _Sketch()
    if ident.hair_style_name == "long":  # long hair falls over the shoulders
        _draw_body(sk, ident, skin, var)
        _draw_hair_back(sk, ident, hair)
    else:
        _draw_hair_back(sk, ident, hair)
        _draw_body(sk, ident, skin, var)
    _draw_ears(sk, ident, skin)
    _draw_face_base(sk, ident, skin)
    _draw_marks(sk, ident, skin)
    _draw_beard(sk, ident, var, skin)  # before nose and lips, which sit on top of it
    _draw_nose(sk, ident, skin)
    _draw_mouth(sk, ident, var)
    _draw_eyes(sk, ident, var, skin)
    _draw_brows(sk, ident, var)
    _draw_hair_front(sk, ident, hair)
    if var.wear_glasses:
        _draw_glasses(sk, ident)
    if var.occlusion:
        _draw_occlusion(sk, ident, var)
    sk.render(img, _Pose(ident, var))
    return _photometric(img.reduce(SS), var)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def render_identity_images(
    ident: Identity,
    n: int,
    difficulty: float,
    rng: np.random.Generator,
    jpeg_quality_range: tuple[int, int] = (60, 95),
) -> tuple[np.ndarray, list[Variation]]:
    """``n`` photos of one identity: ``(n, 112, 112, 3)`` uint8 plus the variations used."""
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    vars_: list[Variation] = []
    for i in range(n):
        var = sample_variation(rng, ident, difficulty, jpeg_quality_range)
        out[i] = render_face(ident, var, rng)
        vars_.append(var)
    return out, vars_


# The one "tiny" size: the smoke preset's data and the tests' (pipeline.config PRESETS["tiny"] uses it).
TINY = {
    "train_identities": 12,
    "images_per_identity": 6,
    "val_identities": 10,
    "val_pairs": 40,
    "dev_identities": 10,
    "dev_pairs": 40,
}


@dataclass
class SynthSpec:
    """Sizes and knobs of a synthetic data set (defaults: small enough for a CPU run)."""

    train_identities: int = 300
    images_per_identity: int = 24
    val_identities: int = 200
    val_pairs: int = 1200
    # a second held-out set of other identities, for choices a stage makes (synth_dev.bin; 0 pairs = none):
    # the val set stays for reporting only
    dev_identities: int = 200
    dev_pairs: int = 600
    difficulty: float = 0.5
    seed: int = 0
    jpeg_quality_range: tuple[int, int] = field(default=(60, 95))

    @classmethod
    def tiny(cls, seed: int = 0, difficulty: float = 0.5) -> SynthSpec:
        """The ``--preset tiny`` set (12 identities x 6 images; val and dev: 10 identities, 40 pairs)."""
        return cls(**TINY, difficulty=difficulty, seed=seed)

    def validate(self) -> None:
        if self.train_identities < 1 or self.images_per_identity < 1:
            raise ValueError("train_identities and images_per_identity must be >= 1")
        if self.val_pairs < 0 or (self.val_pairs > 0 and self.val_identities < 2):
            raise ValueError("val_pairs needs at least 2 val_identities")
        if self.dev_pairs < 0 or (self.dev_pairs > 0 and self.dev_identities < 2):
            raise ValueError("dev_pairs needs at least 2 dev_identities")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        lo, hi = self.jpeg_quality_range
        if not 1 <= lo <= hi <= 100:
            raise ValueError(
                f"jpeg_quality_range must satisfy 1 <= lo <= hi <= 100, got {self.jpeg_quality_range}"
            )
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


def _identity_jpegs(spec: SynthSpec, k: int) -> list[bytes]:
    """Training identity ``k``'s images: drawn from its own seeded generator, so any process can make them."""
    ident = identity_for(spec.seed, "train", k, spec.difficulty)
    rng = np.random.default_rng([spec.seed, _TRAIN_IMG, k])
    out = []
    for _ in range(spec.images_per_identity):
        var = sample_variation(rng, ident, spec.difficulty, spec.jpeg_quality_range)
        out.append(encode_jpeg(render_face(ident, var, rng), var.jpeg_quality))
    return out


def _pair_jpegs(spec: SynthSpec, split: str, i: int, pair: tuple[int, int]) -> list[bytes]:
    """Pair ``i`` of ``split`` ("val" or "dev"): its two images (identities by index), from the pair's own
    seeded generator."""
    rng = np.random.default_rng([spec.seed, _PAIR_STREAMS[split][1], i])
    out = []
    for v in pair:
        ident = _held_out_identity(spec.seed, split, v, spec.difficulty)
        var = sample_variation(rng, ident, spec.difficulty, spec.jpeg_quality_range)
        out.append(encode_jpeg(render_face(ident, var, rng), var.jpeg_quality))
    return out


@functools.lru_cache(maxsize=512)
def _held_out_identity(seed: int, split: str, v: int, difficulty: float) -> Identity:
    return identity_for(seed, split, v, difficulty)


def _in_order(fn: Any, args: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """``fn(*a)`` for each ``a``, in order; over ``workers`` spawned processes when more than one.

    Spawn, not fork: the parent may already run torch's or other libraries' threads, which a forked
    child would inherit half-initialised.
    """
    if workers <= 1 or len(args) < 2:
        yield from (fn(*a) for a in args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(fn, *zip(*args, strict=True), chunksize=max(1, len(args) // (8 * workers)))


def _train_items(spec: SynthSpec, progress: bool, workers: int = 1) -> Iterator[tuple[int, bytes]]:
    from tqdm import tqdm

    ids = [(spec, k) for k in range(spec.train_identities)]
    per_identity = _in_order(_identity_jpegs, ids, workers)
    for k, jpegs in enumerate(
        tqdm(per_identity, total=len(ids), desc="synth train", unit="id", disable=not progress)
    ):
        for jpeg in jpegs:
            yield k, jpeg


def val_pair_plan(
    spec: SynthSpec, split: str = "val", sizes: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs (P, 2) identity indices of ``split``, issame (P,))``: positives and negatives alternate, so
    any contiguous block (each of the 10 evaluation folds) is balanced to within one pair. ``sizes``:
    (identities, pairs) of a split the spec does not size (the report-only "test" split)."""
    identities, p = sizes or (getattr(spec, f"{split}_identities"), getattr(spec, f"{split}_pairs"))
    rng = np.random.default_rng([spec.seed, _PAIR_STREAMS[split][0]])
    issame = np.arange(p) % 2 == 0
    n_pos = int(issame.sum())
    pos_ids = np.concatenate([rng.permutation(identities) for _ in range(n_pos // identities + 1)])
    pairs = np.empty((p, 2), dtype=np.int64)
    pairs[issame, 0] = pairs[issame, 1] = pos_ids[:n_pos]
    for i in np.flatnonzero(~issame):
        a, b = rng.choice(identities, 2, replace=False)
        pairs[i] = (a, b)
    return pairs, issame


def _write_pairs(
    out: Path, spec: SynthSpec, split: str, progress: bool, workers: int, sizes: tuple[int, int] | None = None
) -> tuple[int, int, int]:
    """``synth_{split}.bin`` (when the split has pairs); returns (pairs, positive pairs, identities used)."""
    from tqdm import tqdm

    pairs, issame = val_pair_plan(spec, split, sizes)
    if not len(pairs):
        return 0, 0, 0
    images: list[bytes] = []
    jobs = [(spec, split, i, tuple(pairs[i].tolist())) for i in range(len(pairs))]
    bar = tqdm(
        _in_order(_pair_jpegs, jobs, workers),
        total=len(jobs),
        desc=f"synth {split}",
        unit="pair",
        disable=not progress,
    )
    for jpegs in bar:
        images.extend(jpegs)
    write_verification_bin(out / f"synth_{split}.bin", images, issame.tolist())
    return len(pairs), int(issame.sum()), len(set(pairs.reshape(-1).tolist()))


def synthesize_split(
    out_dir: str | os.PathLike,
    spec: SynthSpec,
    split: str,
    sizes: tuple[int, int] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write only ``synth_{split}.bin`` into ``out_dir``: for "val"/"dev" the bytes ``synthesize`` writes;
    "test" (``sizes`` = (identities, pairs)) is a third held-out set over identities no other split uses,
    from the same population, for report-only readings; the data stage never writes it."""
    spec.validate()
    if split == "test" and (sizes is None or sizes[1] < 2 or sizes[1] % 2 or sizes[0] < 2):
        raise ValueError(
            f"the test split needs sizes (identities >= 2, an even number of pairs), got {sizes}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _write_pairs(out, spec, split, progress, workers or os.cpu_count() or 1, sizes)[0]:
        raise ValueError(f"{split}: 0 pairs, nothing to write")
    return out / f"synth_{split}.bin"


def synthesize(
    out_dir: str | os.PathLike, spec: SynthSpec, progress: bool = True, workers: int | None = None
) -> dict[str, Any]:
    """Write ``train.rec/.idx``, ``property``, ``synth_val.bin``, ``synth_dev.bin`` and ``synth_meta.json``
    into ``out_dir`` (val: the reporting set; dev: other held-out identities, for choices made in a stage).

    ``workers`` processes render the faces (default: one per core); every identity and pair draws from
    its own seeded generator, so the files are the same bytes for any number of workers.
    """
    spec.validate()
    workers = workers or os.cpu_count() or 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = write_insightface_rec(out, _train_items(spec, progress, workers), spec.train_identities)
    val_pairs, val_positives, val_idents = _write_pairs(out, spec, "val", progress, workers)
    dev_pairs, _, dev_idents = _write_pairs(out, spec, "dev", progress, workers)
    meta = {
        "generator": f"facekd.synth v{GENERATOR_VERSION}",
        "spec": dataclasses.asdict(spec),
        "train_images": counts["images"],
        "train_identities": counts["identities"],
        "val_identities_used": val_idents,
        "val_pairs": val_pairs,
        "val_positive_pairs": val_positives,
        "dev_identities_used": dev_idents,
        "dev_pairs": dev_pairs,
        "image_size": [SIZE, SIZE],
        "files": ["train.rec", "train.idx", "property"]
        + (["synth_val.bin"] if val_pairs else [])
        + (["synth_dev.bin"] if dev_pairs else []),
    }
    write_json(out / "synth_meta.json", meta)
    return {**meta, "out_dir": str(out), "seconds": round(time.perf_counter() - t0, 2)}


def contact_sheet(
    path: str | os.PathLike,
    identities: int = 8,
    per_identity: int = 6,
    difficulty: float = 0.5,
    seed: int = 0,
) -> Path:
    """Save a PNG grid, one row per identity, to eyeball what the generator draws."""
    sheet = Image.new("RGB", (per_identity * (SIZE + 4), identities * (SIZE + 4)), (255, 255, 255))
    for r in range(identities):
        ident = identity_for(seed, "sheet", r, difficulty)
        imgs, _ = render_identity_images(
            ident, per_identity, difficulty, np.random.default_rng([seed, _SHEET, 1000 + r])
        )
        for c in range(per_identity):
            sheet.paste(Image.fromarray(imgs[c]), (c * (SIZE + 4) + 2, r * (SIZE + 4) + 2))
    target = Path(path)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target
