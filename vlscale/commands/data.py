"""``vlscale data synth``: write the synthetic captioned-shapes dataset as webdataset shards.

(``vlscale data laion-results`` lives in scaling/cli.py; both join the "data" group.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlscale.commands import argtypes

# What `data synth` writes into --out; a stale one from an earlier run (an extra shard) is removed.
SYNTH_OUTPUTS = ("[0-9][0-9][0-9][0-9][0-9].tar", "synth.json", "zeroshot", "stats.json")
MAX_SHARDS = 100_000  # shard names have five digits (NNNNN.tar)
# The renderer holds a few float64 S x S x 3 arrays per image: 2048 is ~100 MB each, far above any model's input.
MAX_IMAGE_SIZE = 2048
# A sample is three tar members (image, .txt, .json), each a 512-byte header and at least one 512-byte block.
MIN_SAMPLE_BYTES = 3 * 1024


def _configure_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for NNNNN.tar shards, synth.json and zeroshot/")
    p.add_argument("--shards", type=argtypes.positive_int, default=8, help="number of shards (default 8)")
    p.add_argument("--samples-per-shard", type=argtypes.positive_int, default=2000,
                   help="samples per shard (default 2000)")
    p.add_argument("--seed", type=argtypes.nonnegative_int, default=0,
                   help="dataset seed; sample i is a pure function of (seed, i)")
    p.add_argument("--image-size", type=argtypes.positive_int, default=64,
                   help="rendered image side in pixels (default 64)")
    p.add_argument("--format", default="jpg", choices=("jpg", "png", "webp"), help="image encoding (default jpg)")
    p.add_argument("--quality", type=argtypes.positive_int, default=95, help="JPEG/WebP quality, 1-100 (default 95)")
    p.add_argument("--eval-per-task", type=argtypes.count, default=500,
                   help="images per zero-shot task (colour, shape, count, colour_shape) written to OUT/zeroshot "
                        "with the retrieval split; 0 skips OUT/zeroshot altogether (default 500)")
    p.add_argument("--retrieval", type=argtypes.count, default=None,
                   help="retrieval images (5 captions each) in OUT/zeroshot (default 500; 0 only together with "
                        "--eval-per-task 0: the evaluator reads both parts)")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="override a generator knob, e.g. --set distractor_prob=0.5 --set max_count=5 (docs/data.md)")
    p.add_argument("--stats", action="store_true", help="also print caption/label statistics (entropy, balance)")


def _eval_sizes(args) -> tuple[int, int]:
    """(images per task, retrieval images); both 0 = no OUT/zeroshot."""
    from vlscale.errors import UserError

    per_task = args.eval_per_task
    retrieval = args.retrieval if args.retrieval is not None else (500 if per_task > 0 else 0)
    if (per_task == 0) != (retrieval == 0):
        raise UserError(f"--eval-per-task {per_task} with --retrieval {retrieval}: OUT/zeroshot holds both the "
                        "zero-shot tasks and the retrieval split; give both at least 1, or --eval-per-task 0 "
                        "to skip it")
    return per_task, retrieval


def _parse_knobs(items: list[str]) -> dict:
    import dataclasses
    import json

    from vlscale.data.synth_scene import SynthConfig
    from vlscale.errors import UserError

    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    out = {}
    for item in items:
        name, eq, raw = item.partition("=")
        if not eq or name not in fields:
            raise UserError(f"--set {item!r}: expected KNOB=VALUE with KNOB one of {', '.join(fields)}")
        default = getattr(SynthConfig(), name)
        try:
            if isinstance(default, tuple):
                value = tuple(v.strip() for v in raw.split(",") if v.strip())
            elif isinstance(default, bool):
                value = raw.lower() in ("1", "true", "yes")
            else:
                value = type(default)(json.loads(raw))
        except (ValueError, TypeError):
            raise UserError(f"--set {item!r}: {raw!r} is not a valid {type(default).__name__}") from None
        out[name] = value
    return out


def _check_sizes(args) -> None:
    """Bounds that only an absurd value breaks, checked before anything is written (one line naming the flag)."""
    import shutil

    from vlscale.errors import UserError

    if args.shards > MAX_SHARDS:
        raise UserError(f"--shards {args.shards}: at most {MAX_SHARDS} (shard names have five digits); "
                        "raise --samples-per-shard instead")
    if args.image_size > MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {args.image_size}: at most {MAX_IMAGE_SIZE} pixels (the models read 224-448)")
    need = args.shards * args.samples_per_shard * MIN_SAMPLE_BYTES
    where = Path(args.out).absolute()
    while not where.exists():  # check_output_dir has made sure some parent exists
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(f"--shards {args.shards} x --samples-per-shard {args.samples_per_shard}: at least "
                        f"{need / 1e9:.3g} GB of tar files, more than the {free / 1e9:.3g} GB free at {args.out}")


def _run_synth(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    # webdataset: imported before timing the writer
    from vlscale.data import synth_eval_sets, synth_scene, synth_shards, synth_stats, webdataset  # noqa: F401
    from vlscale.errors import UserError
    from vlscale.runtime.files import atomic_output_dir, check_output_dir

    if args.shards < 1 or args.samples_per_shard < 1:
        raise UserError("--shards and --samples-per-shard must be at least 1")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality {args.quality}: must be in 1..100")
    per_task, n_retrieval = _eval_sizes(args)
    check_output_dir(args.out)
    _check_sizes(args)
    try:
        cfg = synth_scene.SynthConfig(image_size=args.image_size, **_parse_knobs(args.set))
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"bad generator knob ({' '.join('--set ' + k for k in args.set) or 'defaults'}): {e}") from None
    n = args.shards * args.samples_per_shard
    # Everything is built in a temporary folder beside --out and moved in when complete, so an interrupted run
    # never leaves shards that look like a finished dataset.
    lines = []
    with atomic_output_dir(args.out, owned=SYNTH_OUTPUTS) as tmp:
        t0 = time.perf_counter()
        paths = synth_shards.write_synth_shards(tmp, args.shards, args.samples_per_shard, cfg=cfg, seed=args.seed,
                                                image_format=args.format, quality=args.quality)
        dt = time.perf_counter() - t0
        lines.append(f"wrote {len(paths)} shards, {n} samples ({n / max(dt, 1e-9):.0f} samples/s) to {args.out}")
        if per_task > 0:
            synth_eval_sets.write_eval_sets(tmp, cfg, per_task, n_retrieval, seed=args.seed)
            lines.append(f"wrote zero-shot tasks and retrieval split to {os.path.join(args.out, 'zeroshot')}")
        if args.stats:
            stats = synth_stats.dataset_stats(cfg, num_samples=min(n, 5000), seed=args.seed)
            lines.append(json.dumps(stats, indent=1))
            with open(os.path.join(tmp, "stats.json"), "w") as f:
                json.dump(stats, f, indent=1)
    print("\n".join(lines))
    return 0


def register(registry) -> None:
    registry.add(
        "synth",
        help="write the synthetic captioned-shapes dataset as webdataset tar shards (+ zero-shot tasks)",
        configure=_configure_synth,
        handler=_run_synth,
        group="data",
        description=(
            "Write procedurally drawn shapes with varied captions as webdataset shards OUT/00000.tar ...\n"
            "plus zero-shot tasks (colour, shape, count, colour_shape) and a 5-caption retrieval split in\n"
            "OUT/zeroshot. Deterministic from --seed. Knobs are documented in docs/data.md."
        ),
    )
