"""Captions per second per core: vlscale's tokenizer against open_clip's SimpleTokenizer, same run.

The data pipeline tokenises every caption of every step, so the tokenizer must keep up with the
accelerators: at 32k captions per step and a step per second, one core has to do tens of thousands of
captions per second, or the loader needs that many workers. Both tokenizers run single-threaded on
the same synthetic web-style captions (word frequencies Zipf-distributed over CLIP's own whole-word
vocabulary, with numbers, mixed case, accents, CJK, emoji and html entities), in two settings:

- cold: a fresh tokenizer on unseen captions (empty BPE cache, the start of a run);
- warm: a tokenizer whose cache was filled by a different caption sample from the same distribution
  (steady state in a long run).

Usage: python bench/tokenizer_speed.py [--captions 5000] [--repeats 3] [--seed 0]
Needs the test extras (torch, open_clip_torch) for the comparison.
"""

from __future__ import annotations

import argparse
import os
import random
import time

# One core: keep torch (open_clip returns torch tensors) from spreading over threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from vlscale.models import tokenizer as tk  # noqa: E402

TEMPLATES = (
    "{w} {w} {w}",
    "a photo of a {w} {w}",
    "{W} {w} {w} {w} {w} {w}{tail}",
    "{w} {w} {w}, {w} {w} {w} and {w} {w}{tail}",
    "{W} {W} {w} {num} {w} {w}",
    "{w}-{w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w}{tail}",
    "Buy {w} {w} for ${num}.99 - {W} {w}{tail}",
    "{W} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w} {w}{tail}",
)
TAILS = ("", "", "", "", ".", "!", " #{w}", " | {W} {W}", " (19{d}{d})", " 😀", " ❤️", " &amp; {w}", " – {w} café",
         " 東京 {w}", " naïve {w}", " Zürich", " ©20{d}{d}", " it's {w}", " DON'T {W}")


def whole_words() -> list[str]:
    """CLIP's whole-word tokens in merge order (roughly by corpus frequency): a realistic vocabulary."""
    words = [a + b for a, b in tk.read_merges() if b.endswith(tk.END_OF_WORD)]
    return [w[: -len(tk.END_OF_WORD)] for w in words if w[: -len(tk.END_OF_WORD)].isalpha() and w.isascii()]


def make_captions(n: int, seed: int) -> list[str]:
    """Web-style captions, word ranks drawn from a Zipf law (exponent 1.1) over CLIP's vocabulary."""
    vocab = whole_words()
    rnd = random.Random(seed)
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.1, size=n * 40)
    ranks = ranks[ranks <= len(vocab)] - 1
    stream = iter(ranks.tolist())

    def word():
        return vocab[next(stream)]

    captions = []
    for _ in range(n):
        text = rnd.choice(TEMPLATES)
        text = text.replace("{tail}", rnd.choice(TAILS))
        while "{" in text:
            text = (text.replace("{w}", word(), 1).replace("{W}", word().capitalize(), 1)
                    .replace("{num}", str(rnd.randint(1, 10_000)), 1).replace("{d}", str(rnd.randint(0, 9)), 1))
        if rnd.random() < 0.05:
            text = text.upper()
        captions.append(text)
    return captions


def captions_per_second(tokenize, captions: list[str], repeats: int) -> float:
    """Captions per CPU-second of this process, best of ``repeats``.

    CPU time rather than wall time: on a shared machine the wall clock also counts time spent waiting
    for a core, while CPU time is what one dedicated core would take (both run single-threaded).
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        tokenize(captions)
        best = min(best, time.process_time() - start)
    return len(captions) / best


def run(n: int, repeats: int, seed: int) -> list[tuple[str, str, float]]:
    from open_clip.tokenizer import SimpleTokenizer
    import torch

    torch.set_num_threads(1)
    warmup, measured = make_captions(n, seed), make_captions(n, seed + 1)
    # Ids must agree before speed means anything.
    reference = SimpleTokenizer()
    assert np.array_equal(tk.Tokenizer()(measured), reference(measured).numpy()), "ids differ from open_clip"

    plain = [c for c in measured if is_plain_ascii(c)]
    other = [c for c in measured if not is_plain_ascii(c)]
    rows = []
    for name, make in (("open_clip SimpleTokenizer", SimpleTokenizer), ("vlscale Tokenizer", tk.Tokenizer)):
        # Cold: a new tokenizer per repeat, so each timing starts with an empty cache.
        cold = captions_per_second(lambda texts: make()(texts), measured, repeats)
        construct = captions_per_second(lambda texts: make(), [None], repeats)  # remove construction time
        cold = len(measured) / (len(measured) / cold - 1 / construct)
        warm_tok = make()
        warm_tok(warmup)
        rows += [
            (name, "cold cache, all", cold),
            (name, "warm cache, all", captions_per_second(warm_tok, measured, repeats)),
            (name, "warm, plain ASCII", captions_per_second(warm_tok, plain, repeats)),
            (name, "warm, other", captions_per_second(warm_tok, other, repeats)),
        ]
    return rows


def is_plain_ascii(caption: str) -> bool:
    """Captions for which vlscale skips ftfy (no entities, no non-ASCII characters)."""
    return caption.isascii() and "&" not in caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=5000, help="captions per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = run(args.captions, args.repeats, args.seed)
    baseline = {setting: rate for name, setting, rate in rows if name.startswith("open_clip")}
    ascii_share = np.mean([is_plain_ascii(c) for c in make_captions(args.captions, args.seed + 1)])
    print(f"{args.captions} captions, 1 thread, CPU time, best of {args.repeats}; {ascii_share:.0%} plain ASCII "
          "(vlscale skips ftfy for those; the others pay ftfy's cost in both)")
    print(f"{'tokenizer':<28}{'setting':<20}{'captions/s':>12}{'vs open_clip':>14}")
    for name, setting, rate in rows:
        print(f"{name:<28}{setting:<20}{rate:>12,.0f}{rate / baseline[setting]:>13.2f}x")


if __name__ == "__main__":
    main()
