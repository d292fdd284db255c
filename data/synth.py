"""Synthetic captioned shapes: a procedurally drawn image-text dataset for CPU-sized scaling studies.

Each image shows 1..``max_count`` copies of one shape in one colour and size, sometimes with a
distractor object of another shape and colour, on a solid, gradient or textured background with
optional clutter strokes and pixel noise. Captions come from templates with paraphrases and synonyms:
attribute order varies, counts appear as words or digits, and optional attributes (size, position,
background, distractor) are mentioned only some of the time, so the text supervises the image only
partly, as web captions do. ``synth_scene`` holds the vocabulary, the knobs and scene sampling,
``synth_render`` the drawing, ``synth_captions`` the text; this module joins them into samples.

Everything is a pure function of ``(seed, split, index)``: sample ``i`` can be drawn in any order, by
any worker, and is the same on every machine. ``SynthSource`` exposes that as a grain random-access
source (an effectively endless stream), ``synth_shards.write_synth_shards`` writes webdataset tar shards so
the real tar reader is exercised end to end, ``synth_eval_sets.make_zeroshot_tasks`` / ``make_retrieval_split``
build the evaluation sets (classify colour, shape, count, colour+shape; retrieval with 5 captions per image)
with CLIP-style class names and prompt templates, and ``synth_stats.dataset_stats`` measures variety and balance.

What makes it hard enough for scaling curves (measured numbers in docs/data.md): 12 colours with near
neighbours (red/orange/pink/brown, blue/cyan/purple) plus per-object colour jitter, 8 shapes of which
several differ only in small details at 64 px (circle/hexagon/pentagon, square/diamond), counting up to
4 with occasional overlap, distractors, clutter and noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlscale.data.synth_captions import caption
from vlscale.data.synth_render import render
from vlscale.data.synth_scene import SPLITS, SynthConfig, sample_rng, sample_scene


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
