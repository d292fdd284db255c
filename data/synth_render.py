"""Drawing a synthetic scene as pixels: background, clutter, the objects, a distractor, pixel noise."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from vlscale.data.synth_scene import COLOURS, SIZES, Scene, SynthConfig


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline points of a shape of radius ``r`` centred at (cx, cy), rotated by ``angle`` radians."""
    if shape == "triangle":
        pts = [(1.0, a) for a in np.linspace(0, 2 * np.pi, 3, endpoint=False) - np.pi / 2]
    elif shape == "square":
        pts = [(1.0, a) for a in np.linspace(0, 2 * np.pi, 4, endpoint=False) + np.pi / 4]
    elif shape == "pentagon":
        pts = [(1.0, a) for a in np.linspace(0, 2 * np.pi, 5, endpoint=False) - np.pi / 2]
    elif shape == "hexagon":
        pts = [(1.0, a) for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)]
    elif shape == "star":
        pts = [(1.0 if k % 2 == 0 else 0.45, a) for k, a in enumerate(np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2)]
    elif shape == "diamond":
        # A rhombus: tall and narrow, so it differs from a rotated square by its aspect.
        return _rotate([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)], cx, cy, angle)
    elif shape == "cross":
        t = 0.33 * r
        xy = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        return _rotate(xy, cx, cy, angle)
    else:
        raise ValueError(shape)
    return _rotate([(rad * r * math.cos(a), rad * r * math.sin(a)) for rad, a in pts], cx, cy, angle)


def _rotate(xy, cx, cy, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in xy]


def _jittered(rgb, rng, amount):
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.uniform(-amount, amount, 3), 0, 255))


def _background(cfg: SynthConfig, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    side = cfg.image_size
    base = np.asarray(COLOURS[cfg.colours[scene.background_colour]], np.float32)
    # Muted towards mid-gray so objects of the same hue family still stand out a little.
    base = 0.65 * base + 0.35 * 128
    if scene.background == "solid":
        img = np.broadcast_to(base, (side, side, 3)).copy()
    elif scene.background == "gradient":
        other = np.asarray(COLOURS[cfg.colours[int(rng.integers(len(cfg.colours)))]], np.float32) * 0.5 + 64
        t = np.linspace(0, 1, side, dtype=np.float32)
        a = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(a) * t[None, :] + np.sin(a) * t[:, None])
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        img = base + ramp[..., None] * (other - base)
    else:  # texture: low-frequency noise, upsampled
        k = int(rng.integers(3, 8))
        coarse = rng.standard_normal((k, k, 1), dtype=np.float32) * np.float32(30)
        reps = -(-side // k)
        img = base + np.repeat(np.repeat(coarse, reps, axis=0), reps, axis=1)[:side, :side]
    return img


def render(cfg: SynthConfig, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draws a scene as uint8 [H, W, 3]."""
    side = cfg.image_size
    bg = _background(cfg, scene, rng)
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(cfg.clutter_max + 1))):
        col = _jittered(COLOURS[cfg.colours[int(rng.integers(len(cfg.colours)))]], rng, 40)
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, side, 4))
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=col, width=1)
        else:
            draw.ellipse([x0, y0, x0 + 2, y0 + 2], fill=col)
    r = SIZES[cfg.sizes[scene.size]] * side / 2
    base_angle = rng.uniform(0, 2 * np.pi) if cfg.rotate else 0.0
    for cx, cy in scene.centres:
        col = _jittered(COLOURS[cfg.colours[scene.colour]], rng, cfg.colour_jitter)
        angle = base_angle + (rng.uniform(-0.3, 0.3) if cfg.rotate else 0.0)
        _draw_shape(draw, cfg.shapes[scene.shape], cx, cy, r, angle, col)
    if scene.distractor is not None:
        d_shape, d_colour, (dx, dy) = scene.distractor
        col = _jittered(COLOURS[cfg.colours[d_colour]], rng, cfg.colour_jitter)
        _draw_shape(draw, cfg.shapes[d_shape], dx, dy, SIZES["small"] * side / 2 * 0.8,
                    rng.uniform(0, 2 * np.pi) if cfg.rotate else 0.0, col)
    std = rng.uniform(0, cfg.noise_max)
    if std <= 0:
        return np.asarray(im, dtype=np.uint8)
    out = rng.standard_normal((side, side, 3), dtype=np.float32)
    out *= np.float32(std)
    out += np.asarray(im, dtype=np.float32)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _draw_shape(draw, shape, cx, cy, r, angle, col):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=col)
