"""The synthetic dataset's vocabulary, its knobs (``SynthConfig``) and scene sampling: what one image shows.

Each image shows 1..``max_count`` copies of one shape in one colour and size, sometimes with a distractor object
of another shape and colour, on a solid, gradient or textured background. ``sample_scene`` draws those labels
and positions; ``synth_render`` draws the pixels and ``synth_captions`` the text.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


# Colour name -> RGB centre. Chosen so several pairs are close (the fine-grained part of the task).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (245, 120, 190),
    "brown": (130, 80, 40),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
COLOUR_SYNONYMS = {"gray": ["gray", "grey"], "purple": ["purple", "violet"], "pink": ["pink", "rose"]}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "pentagon")
SHAPE_SYNONYMS = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square"],
    "triangle": ["triangle"],
    "star": ["star"],
    "hexagon": ["hexagon"],
    "diamond": ["diamond", "rhombus"],
    "cross": ["cross", "plus sign"],
    "pentagon": ["pentagon"],
}
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.34}  # object diameter as a fraction of the image side
SIZE_SYNONYMS = {"small": ["small", "tiny", "little"], "medium": ["medium", "medium-sized", "mid-sized"],
                 "large": ["large", "big", "huge"]}
COUNT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SPLITS = {"train": 0, "eval": 1, "zeroshot": 2, "retrieval": 3}


PROBABILITY_KNOBS = ("distractor_prob", "p_mention_colour", "p_mention_size", "p_mention_position",
                     "p_mention_background", "p_mention_distractor")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The generator's knobs (docs/data.md explains each and how it changes difficulty)."""

    image_size: int = 64
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = tuple(SIZES)
    max_count: int = 4
    colour_jitter: float = 18.0  # +- per channel, on the 0..255 scale
    distractor_prob: float = 0.3
    clutter_max: int = 3  # up to this many random strokes/dots
    noise_max: float = 10.0  # pixel noise std drawn uniformly in [0, noise_max]
    background_kinds: tuple[str, ...] = ("solid", "gradient", "texture")
    rotate: bool = True
    # Probabilities that an optional attribute is mentioned in the caption.
    p_mention_colour: float = 0.95
    p_mention_size: float = 0.6
    p_mention_position: float = 0.5
    p_mention_background: float = 0.35
    p_mention_distractor: float = 0.6

    def __post_init__(self):
        bad = [s for s in self.shapes if s not in SHAPE_SYNONYMS]
        bad += [c for c in self.colours if c not in COLOURS]
        bad += [z for z in self.sizes if z not in SIZES]
        if bad:
            raise ValueError(f"unknown shapes/colours/sizes {bad}; choose from {SHAPES}, {tuple(COLOURS)}, {tuple(SIZES)}")
        if not 1 <= self.max_count < len(COUNT_WORDS):
            raise ValueError(f"max_count must be in 1..{len(COUNT_WORDS) - 1}")
        if len(self.colours) < 2 or len(self.shapes) < 2:
            raise ValueError("need at least two colours and two shapes (distractors differ in both)")
        for name in PROBABILITY_KNOBS:
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN fails too
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("colour_jitter", "noise_max", "clutter_max"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SynthConfig":
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**d)


@dataclasses.dataclass
class Scene:
    """What an image shows; labels index into the config's tuples."""

    shape: int
    colour: int
    size: int
    count: int
    centres: list[tuple[float, float]]
    cell: tuple[int, int] | None  # grid cell when count == 1
    background: str
    background_colour: int
    distractor: tuple[int, int, tuple[float, float]] | None  # (shape, colour, centre), always small

    def labels(self) -> dict[str, int]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "count": self.count - 1}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def sample_scene(cfg: SynthConfig, rng: np.random.Generator, *, distractors: bool = True, **fixed: int) -> Scene:
    """Draws a scene; ``fixed`` pins labels (shape/colour/size/count-1 indices) for balanced eval sets."""
    shape = fixed.get("shape", int(rng.integers(len(cfg.shapes))))
    colour = fixed.get("colour", int(rng.integers(len(cfg.colours))))
    size = fixed.get("size", int(rng.integers(len(cfg.sizes))))
    count = fixed.get("count", int(rng.integers(cfg.max_count))) + 1
    side = cfg.image_size
    radius = SIZES[cfg.sizes[size]] * side / 2
    cell = None
    centres: list[tuple[float, float]] = []
    if count == 1:
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        lo = np.array(cell) * side / 3 + side / 6  # cell centre
        jitter = max(side / 6 - radius * 0.5, 0)
        y, x = lo + rng.uniform(-jitter, jitter, 2)
        centres.append((float(np.clip(x, radius, side - radius)), float(np.clip(y, radius, side - radius))))
    else:
        for _ in range(count):
            best = None
            for _try in range(30):  # rejection sampling for little overlap; accept overlap if crowded
                c = rng.uniform(radius, side - radius, 2)
                gap = min((math.dist(c, o) for o in centres), default=side)
                if best is None or gap > best[0]:
                    best = (gap, c)
                if gap > 2.1 * radius:
                    break
            centres.append((float(best[1][0]), float(best[1][1])))
    background = cfg.background_kinds[int(rng.integers(len(cfg.background_kinds)))]
    bg_choices = [i for i in range(len(cfg.colours)) if i != colour]
    background_colour = bg_choices[int(rng.integers(len(bg_choices)))]
    distractor = None
    if distractors and rng.random() < cfg.distractor_prob:
        d_shape = [i for i in range(len(cfg.shapes)) if i != shape][int(rng.integers(len(cfg.shapes) - 1))]
        d_colour = [i for i in range(len(cfg.colours)) if i not in (colour, background_colour)]
        d_colour = d_colour[int(rng.integers(len(d_colour)))]
        d_centre = tuple(float(v) for v in rng.uniform(side * 0.1, side * 0.9, 2))
        distractor = (d_shape, d_colour, d_centre)
    return Scene(shape, colour, size, count, centres, cell, background, background_colour, distractor)

