"""Caption and label statistics of the synthetic stream: is the task varied and balanced (no model needed)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from vlscale.data.synth_captions import caption
from vlscale.data.synth_scene import SynthConfig, sample_rng, sample_scene


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

