"""Captions for a synthetic scene: templates, paraphrases and synonyms, optional attributes mentioned only
some of the time, so the text supervises the image only partly, as web captions do."""

from __future__ import annotations

import numpy as np

from vlscale.data.synth_scene import COLOUR_SYNONYMS, COUNT_WORDS, SHAPE_SYNONYMS, SIZE_SYNONYMS, Scene, SynthConfig

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
