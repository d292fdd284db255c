"""Synthetic captioned shapes: a procedurally drawn image-text dataset for CPU-sized scaling studies.

Each image shows 1..``max_count`` copies of one shape in one colour and size, sometimes with a
distractor object of another shape and colour, on a solid, gradient or textured background with
optional clutter strokes and pixel noise. Captions come from templates with paraphrases and synonyms:
attribute order varies, counts appear as words or digits, and optional attributes (size, position,
background, distractor) are mentioned only some of the time, so the text supervises the image only
partly, as web captions do.

Everything is a pure function of ``(seed, split, index)``: sample ``i`` can be drawn in any order, by
any worker, and is the same on every machine. ``SynthSource`` exposes that as a grain random-access
source (an effectively endless stream), ``write_synth_shards`` writes webdataset tar shards so the real
tar reader is exercised end to end, and ``make_zeroshot_tasks`` / ``make_retrieval_split`` build the
evaluation sets (classify colour, shape, count, colour+shape; retrieval with 5 captions per image)
with CLIP-style class names and prompt templates.

What makes it hard enough for scaling curves (measured numbers in docs/data.md): 12 colours with near
neighbours (red/orange/pink/brown, blue/cyan/purple) plus per-object colour jitter, 8 shapes of which
several differ only in small details at 64 px (circle/hexagon/pentagon, square/diamond), counting up to
4 with occasional overlap, distractors, clutter and noise.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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
# 3x3 grid cells for a single object: (row, col) -> phrases.
POSITION_PHRASES = {
    (0, 0): ["in the top left", "in the upper left corner"],
    (0, 1): ["at the top", "near the top"],
    (0, 2): ["in the top right", "in the upper right corner"],
    (1, 0): ["on the left", "on the left side"],
    (1, 1): ["in the center", "in the middle", "in the centre"],
    (1, 2): ["on the right", "on the right side"],
    (2, 0): ["in the bottom left", "in the lower left corner"],
    (2, 1): ["at the bottom", "near the bottom"],
    (2, 2): ["in the bottom right", "in the lower right corner"],
}
FRAMES_SINGULAR = ["{}", "a photo of {}", "an image of {}", "a drawing of {}", "there is {}", "this picture shows {}",
                   "{} drawn on a canvas", "a simple illustration with {}", "look, {}", "a rendering of {}"]
FRAMES_PLURAL = ["{}", "a photo of {}", "an image of {}", "a drawing of {}", "there are {}", "this picture shows {}",
                 "{} drawn on a canvas", "a simple illustration with {}", "look, {}", "a rendering of {}"]
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


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    last = last + "es" if last.endswith(("s", "x", "sh", "ch")) else last + "s"
    return f"{head} {last}" if head else last


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(cfg: SynthConfig, scene: Scene, rng: np.random.Generator) -> str:
    """One caption for a scene, drawn from templates, paraphrases and synonyms."""
    n = scene.count
    noun = _pick(rng, SHAPE_SYNONYMS[cfg.shapes[scene.shape]])
    noun = noun if n == 1 else _plural(noun)
    colour_name = cfg.colours[scene.colour]
    colour = _pick(rng, COLOUR_SYNONYMS.get(colour_name, [colour_name])) if rng.random() < cfg.p_mention_colour else None
    size = _pick(rng, SIZE_SYNONYMS[cfg.sizes[scene.size]]) if rng.random() < cfg.p_mention_size else None
    adjectives = [a for a in (size, colour) if a]
    style = int(rng.integers(3))
    if style == 0 or not adjectives:  # "two small red circles"
        core = " ".join(adjectives + [noun])
    elif style == 1:  # "two circles, small and red" / "a circle that is red"
        if rng.random() < 0.5:
            core = f"{noun}, {' and '.join(adjectives[::-1] if rng.random() < 0.5 else adjectives)}"
        else:
            core = f"{noun} that {'is' if n == 1 else 'are'} {' and '.join(adjectives)}"
    else:  # "two red circles (small)"
        core = " ".join([a for a in adjectives if a != size] + [noun]) + (f" ({size})" if size else "")
        if not size:
            core = " ".join(adjectives + [noun])
    if n == 1:
        count = _pick(rng, ["a", "one", "1", "a single"])
        if count == "a":
            count = _article(core)
    else:
        count = _pick(rng, [COUNT_WORDS[n], str(n)] + (["a pair of"] if n == 2 else []))
    phrase = f"{count} {core}"
    extras = []
    if scene.cell is not None and rng.random() < cfg.p_mention_position:
        extras.append(_pick(rng, POSITION_PHRASES[scene.cell]))
    if scene.background == "solid" and rng.random() < cfg.p_mention_background:
        bg = cfg.colours[scene.background_colour]
        extras.append(_pick(rng, [f"on a {bg} background", f"against a {bg} backdrop", f"over {bg}"]))
    if scene.distractor is not None and rng.random() < cfg.p_mention_distractor:
        d_noun = _pick(rng, SHAPE_SYNONYMS[cfg.shapes[scene.distractor[0]]])
        d_col = cfg.colours[scene.distractor[1]]
        extras.append(_pick(rng, [f"next to a {d_col} {d_noun}", f"and {_article(d_col)} {d_col} {d_noun}",
                                  f"with a small {d_col} {d_noun} nearby"]))
    rng.shuffle(extras)
    text = " ".join([phrase] + extras)
    frame = _pick(rng, FRAMES_SINGULAR if n == 1 else FRAMES_PLURAL)
    text = frame.format(text)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4:
        text += "."
    return text


def generate(cfg: SynthConfig, seed: int, split: str, index: int, *, num_captions: int = 1,
             distractors: bool = True, **fixed: int) -> dict[str, Any]:
    """Sample ``index`` of ``split``: ``{"image": uint8 [H,W,3], "caption": str, "captions", "labels"}``."""
    rng = sample_rng(seed, split, index)
    scene = sample_scene(cfg, rng, distractors=distractors, **fixed)
    image = render(cfg, scene, rng)
    captions = [caption(cfg, scene, np.random.default_rng([seed, SPLITS[split], index, k + 1])) for k in range(num_captions)]
    return {"image": image, "caption": captions[0], "captions": captions, "labels": scene.labels(),
            "key": f"{index:09d}"}


class SynthSource:
    """Grain random-access source over the synthetic stream: record ``i`` is ``generate(cfg, seed, split, i)``.

    ``length`` defaults to 2**40 (an endless stream for any practical run); records are
    ``{"image": uint8 array, "caption": str, "__key__": str}`` like decoded webdataset samples.
    """

    def __init__(self, cfg: SynthConfig | None = None, seed: int = 0, split: str = "train", length: int = 2**40):
        self.cfg = cfg or SynthConfig()
        self.seed, self.split, self.length = seed, split, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = generate(self.cfg, self.seed, self.split, int(index))
        return {"image": s["image"], "caption": s["caption"], "__key__": s["key"]}

    def __repr__(self) -> str:
        return f"SynthSource(seed={self.seed}, split={self.split!r}, length={self.length})"


def encode_image(image: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    pil_fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    kwargs = {"quality": quality} if pil_fmt in ("JPEG", "WEBP") else {}
    if pil_fmt == "JPEG":
        kwargs["subsampling"] = 0  # 4:4:4: at 32-64 px, halving chroma resolution would blur small shapes' colours
    Image.fromarray(image).save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


def write_synth_shards(out_dir: str | os.PathLike, num_shards: int, samples_per_shard: int, *,
                       cfg: SynthConfig | None = None, seed: int = 0, split: str = "train",
                       image_format: str = "jpg", quality: int = 95) -> list[str]:
    """Writes ``num_shards`` webdataset tars ``out_dir/{00000..}.tar`` (KEY.jpg + KEY.txt + KEY.json).

    Sample ``k`` of shard ``s`` is stream index ``s * samples_per_shard + k``, so shards are
    reproducible one by one. Also writes ``out_dir/synth.json`` with the config and seed.
    """
    from vlscale.data.webdataset import ShardWriter

    cfg = cfg or SynthConfig()
    os.makedirs(out_dir, exist_ok=True)
    with ShardWriter(os.path.join(str(out_dir), "%05d.tar"), samples_per_shard) as writer:
        for i in range(num_shards * samples_per_shard):
            s = generate(cfg, seed, split, i)
            writer.write(s["key"], {
                image_format: encode_image(s["image"], image_format, quality),
                "txt": s["caption"],
                "json": json.dumps({"key": s["key"], "caption": s["caption"], "labels": s["labels"]}),
            })
    with open(os.path.join(str(out_dir), "synth.json"), "w") as f:
        json.dump({"seed": seed, "split": split, "num_shards": num_shards, "samples_per_shard": samples_per_shard,
                   "image_format": image_format, "config": cfg.to_dict()}, f, indent=2)
    return writer.paths


# ---- zero-shot tasks -------------------------------------------------------------------------------

# Class names and prompt templates of the zero-shot tasks are data files shipped with the evaluator, beside the
# ImageNet-1k names and OpenAI's templates (``vlscale/eval/assets/synth_<task>_{classnames,templates}.txt``, read by
# ``vlscale.eval.prompts.synth_task_lists``). A class-names file lists the names of the generator's whole vocabulary
# in its order (COLOURS, SHAPES, counts 1..9, colours x shapes colour-major); a run's config picks its subset.
ZEROSHOT_TASKS = ("colour", "shape", "count", "colour_shape")


def _task_lists(task: str) -> tuple[list[str], tuple[str, ...]]:
    from vlscale.eval.prompts import synth_task_lists

    return synth_task_lists(task)


COLOUR_TEMPLATES = _task_lists("colour")[1]
SHAPE_TEMPLATES = _task_lists("shape")[1]
COUNT_TEMPLATES = _task_lists("count")[1]
OBJECT_TEMPLATES = _task_lists("colour_shape")[1]


def _fill(template: str, classname: str) -> str:
    return template.replace("{c}", classname) if "{c}" in template else template.replace("{}", classname)


@dataclasses.dataclass
class ZeroShotTask:
    """A CLIP-style classification task: images, integer labels, class names and prompt templates."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]

    def prompts(self, label: int) -> list[str]:
        return [_fill(t, self.classnames[label]) for t in self.templates]


def task_classnames(cfg: SynthConfig) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """``{task: (class names in label order, templates)}`` for ``cfg``'s colours, shapes and counts, from the files."""
    lists = {t: _task_lists(t) for t in ZEROSHOT_TASKS}
    vocab = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(range(1, len(COUNT_WORDS))),
             "colour_shape": [(c, s) for c in COLOURS for s in SHAPES]}
    for t, keys in vocab.items():
        if len(lists[t][0]) != len(keys):
            raise ValueError(f"synth_{t}_classnames.txt has {len(lists[t][0])} names; the generator has {len(keys)}")
    name = {t: dict(zip(vocab[t], lists[t][0])) for t in ZEROSHOT_TASKS}
    labels = {"colour": list(cfg.colours), "shape": list(cfg.shapes), "count": list(range(1, cfg.max_count + 1)),
              "colour_shape": [(c, s) for c in cfg.colours for s in cfg.shapes]}
    return {t: ([name[t][k] for k in labels[t]], lists[t][1]) for t in ZEROSHOT_TASKS}


def make_zeroshot_tasks(cfg: SynthConfig, num_per_task: int, seed: int = 0,
                        tasks: Sequence[str] = ("colour", "shape", "count", "colour_shape")) -> dict[str, ZeroShotTask]:
    """Class-balanced eval sets (label = i mod classes), drawn without distractors so labels are unambiguous.

    They use their own split of the stream, disjoint from the training shards for the same seed.
    """
    names = task_classnames(cfg)
    out = {}
    for t_i, name in enumerate(tasks):
        classnames, templates = names[name]
        k = len(classnames)
        images, labels = [], []
        for i in range(num_per_task):
            label = i % k
            if name == "colour_shape":
                fixed = {"colour": label // len(cfg.shapes), "shape": label % len(cfg.shapes)}
            else:
                fixed = {name: label}
            s = generate(cfg, seed, "zeroshot", t_i * 10**9 + i, distractors=False, **fixed)
            images.append(s["image"])
            labels.append(label)
        out[name] = ZeroShotTask(name, classnames, list(templates), np.stack(images), np.asarray(labels, np.int32))
    return out


def make_retrieval_split(cfg: SynthConfig, num_images: int, seed: int = 0, captions_per_image: int = 5):
    """Images with ``captions_per_image`` independent captions each: (uint8 [N,H,W,3], list of N lists)."""
    samples = [generate(cfg, seed, "retrieval", i, num_captions=captions_per_image) for i in range(num_images)]
    return np.stack([s["image"] for s in samples]), [s["captions"] for s in samples]


def write_eval_sets(out_dir: str | os.PathLike, cfg: SynthConfig, num_per_task: int, num_retrieval: int,
                    seed: int = 0) -> str:
    """Writes ``zeroshot/{task}.npz`` (images, labels), ``zeroshot/retrieval.npz`` and ``zeroshot/tasks.json``."""
    folder = os.path.join(str(out_dir), "zeroshot")
    os.makedirs(folder, exist_ok=True)
    meta: dict[str, Any] = {"seed": seed, "config": cfg.to_dict(), "tasks": {}}
    for name, task in make_zeroshot_tasks(cfg, num_per_task, seed).items():
        np.savez_compressed(os.path.join(folder, f"{name}.npz"), images=task.images, labels=task.labels)
        meta["tasks"][name] = {"classnames": task.classnames, "templates": task.templates}
    images, captions = make_retrieval_split(cfg, num_retrieval, seed)
    np.savez_compressed(os.path.join(folder, "retrieval.npz"), images=images)
    meta["retrieval"] = {"captions": captions}
    with open(os.path.join(folder, "tasks.json"), "w") as f:
        json.dump(meta, f)
    return folder


def load_eval_sets(folder: str | os.PathLike) -> tuple[dict[str, ZeroShotTask], tuple[np.ndarray, list[list[str]]]]:
    """Reads what ``write_eval_sets`` wrote: (tasks by name, (retrieval images, captions))."""
    folder = str(folder)
    with open(os.path.join(folder, "tasks.json")) as f:
        meta = json.load(f)
    tasks = {}
    for name, m in meta["tasks"].items():
        z = np.load(os.path.join(folder, f"{name}.npz"))
        tasks[name] = ZeroShotTask(name, m["classnames"], m["templates"], z["images"], z["labels"])
    images = np.load(os.path.join(folder, "retrieval.npz"))["images"]
    return tasks, (images, meta["retrieval"]["captions"])


# ---- sanity statistics -----------------------------------------------------------------------------

def _entropy_bits(counts: Counter) -> float:
    p = np.asarray(list(counts.values()), np.float64)
    p = p / p.sum()
    return float(-(p * np.log2(p)).sum())


def dataset_stats(cfg: SynthConfig, num_samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Caption and label statistics that show the task is varied and balanced (no model needed).

    Reports the fraction of unique captions, word-unigram entropy, captions per (colour, shape,
    count) combination, and for each attribute its entropy relative to uniform (1.0 = balanced) and the
    max/min class-frequency ratio.
    """
    words: Counter = Counter()
    captions: Counter = Counter()
    labels: dict[str, Counter] = {k: Counter() for k in ("shape", "colour", "size", "count")}
    combos: dict[tuple, set] = {}
    lengths = []
    for i in range(num_samples):
        rng = sample_rng(seed, "train", i)
        scene = sample_scene(cfg, rng)
        text = caption(cfg, scene, rng)
        captions[text] += 1
        toks = text.lower().replace(".", " ").replace(",", " ").split()
        words.update(toks)
        lengths.append(len(toks))
        for k, v in scene.labels().items():
            labels[k][v] += 1
        combos.setdefault((scene.colour, scene.shape, scene.count), set()).add(text)
    sizes = {"shape": len(cfg.shapes), "colour": len(cfg.colours), "size": len(cfg.sizes), "count": cfg.max_count}
    attrs = {}
    for k, c in labels.items():
        attrs[k] = {"classes": sizes[k], "entropy_ratio": _entropy_bits(c) / math.log2(sizes[k]) if sizes[k] > 1 else 1.0,
                    "max_min_ratio": max(c.values()) / max(min(c.values()), 1)}
    return {
        "samples": num_samples,
        "unique_caption_fraction": len(captions) / num_samples,
        "caption_entropy_bits": _entropy_bits(captions),
        "word_entropy_bits": _entropy_bits(words),
        "vocabulary": len(words),
        "mean_caption_words": float(np.mean(lengths)),
        "label_combinations": len(combos),
        "distinct_captions_per_combination": float(np.mean([len(v) for v in combos.values()])),
        "attributes": attrs,
    }
