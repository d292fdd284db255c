"""`vlscale eval` and `vlscale caption`.

Only argparse-level code at import time (the CLI imports every package's cli module for `vlscale --help`);
jax and the models load inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlscale.commands import multihost

EVAL_EXAMPLES = """examples:
  vlscale eval --checkpoint runs/clip_xs --task zeroshot --dataset synth:colour
  vlscale eval --checkpoint runs/clip_xs --task retrieval --dataset synth:retrieval
  vlscale eval --checkpoint runs/clip_xs --suite synth              # the run's protocol checkpoints, whole suite
  vlscale eval --checkpoint runs/mammut_xs --task generative --dataset synth:colour
  vlscale eval --checkpoint ckpt/b32 --task zeroshot --dataset tfds:imagenet2012 --data-dir /data/tfds \\
      --pretrain-dataset datacomp_1b --lr-scheduler cosine --samples-seen 1.28e9
  vlscale eval --checkpoint ckpt/b32 --task retrieval --dataset karpathy:coco/dataset_coco.json:coco
  vlscale eval --checkpoint ckpt/b32 --task zeroshot --dataset folder:pets --classnames pets.txt
"""
CAPTION_EXAMPLES = """examples:
  vlscale caption --checkpoint runs/mammut_xs cat.jpg dog.jpg
  vlscale caption --checkpoint ckpt/mammut_b32 --method greedy photos/*.jpg
"""


def register(registry) -> None:
    registry.add("eval", "Zero-shot classification, retrieval and MaMMUT generative scoring into the results table.",
                 _configure_eval, _run_eval,
                 description="Evaluate a checkpoint (a training workdir, WORKDIR/checkpoints/N, or a `vlscale "
                 "convert` directory) with CLIP_benchmark's metrics. Prints the metrics, writes "
                 "OUT/<task>_<dataset>.json and appends rows in the fitter's schema to the results table "
                 "(--results, default WORKDIR/results.csv). A workdir is evaluated at the checkpoints the paper's "
                 "protocol uses that have no rows yet: the final one for cosine/const-cooldown runs, every "
                 "kept one past warm-up for const runs (--all-checkpoints: every one).\n\n"
                 "dataset specs: synth:colour|shape|count|colour_shape|retrieval, folder:DIR, tfds:NAME[:split], "
                 "wds:SHARDS, karpathy:JSON:IMAGEDIR (see docs/eval.md)\n\n" + EVAL_EXAMPLES)
    registry.add("caption", "Caption images with a MaMMUT checkpoint (beam search or greedy, KV cache).",
                 _configure_caption, _run_caption,
                 description="Caption images with a MaMMUT checkpoint: open_clip eval preprocessing, then beam "
                 "search (default) or greedy decoding on the KV cache. Prints one line per image: "
                 "path<TAB>caption.\n\n" + CAPTION_EXAMPLES)


def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR",
                   help="training workdir, WORKDIR/checkpoints/N, or a `vlscale convert` output directory")
    p.add_argument("--task", choices=("zeroshot", "retrieval", "generative"), help="what to evaluate")
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec, e.g. synth:colour, tfds:imagenet2012")
    p.add_argument("--suite", metavar="NAME", help="a named suite instead of --task/--dataset: synth, paper")
    p.add_argument("--out", metavar="DIR", help="where the JSON files go: a folder or gs://BUCKET/PATH (default "
                   "WORKDIR/eval/step_N or CKPT/eval; a workdir's checkpoints go to DIR/step_N)")
    p.add_argument("--results", metavar="FILE.csv", help="results table to append to: a file or gs://BUCKET/PATH.csv "
                   "(default WORKDIR/results.csv)")
    p.add_argument("--classnames", metavar="FILE", help="class names, one per line or a JSON list (label order)")
    p.add_argument("--templates", metavar="FILE", help="prompt templates with a {c} placeholder, one per line or JSON")
    p.add_argument("--name", help="downstream_dataset name to write (default: the dataset's canonical name)")
    p.add_argument("--data-dir", metavar="DIR", help="TFDS data directory (tfds: datasets; never downloads)")
    p.add_argument("--split", help="split to evaluate (tfds: default validation; karpathy: default test)")
    p.add_argument("--num-examples", type=int, metavar="N", help="synth: examples per task (default 1000)")
    p.add_argument("--batch-size", type=int, default=256, help="global eval batch size (default 256)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 on GPU/TPU, fp32 on CPU; fp32: float32, highest matmul precision; "
                   "bf16: bfloat16 compute")
    p.add_argument("--all-checkpoints", action="store_true", help="with a workdir: evaluate every kept checkpoint")
    multihost.add_flags(p)
    ident = p.add_argument_group("identity of a converted checkpoint (rows are written only when all three are given)")
    ident.add_argument("--pretrain-dataset", help="e.g. datacomp_1b")
    ident.add_argument("--lr-scheduler", help="e.g. cosine, const")
    ident.add_argument("--samples-seen", help="samples seen in pre-training, e.g. 1.28e9")


def _task_specs(args) -> list:
    from vlscale.errors import UserError
    from vlscale.eval.runner import TaskSpec
    from vlscale.eval.suites import suite_tasks

    if args.suite:
        if args.task or args.dataset:
            raise UserError("give either --suite or --task with --dataset, not both")
        return suite_tasks(args.suite)
    if not args.task or not args.dataset:
        raise UserError("give --task and --dataset (e.g. --task zeroshot --dataset synth:colour), or --suite NAME")
    for flag, value in (("--classnames", args.classnames), ("--templates", args.templates)):
        if value and not Path(value).is_file():
            raise UserError(f"{flag} {value}: file does not exist")
    if args.num_examples is not None and args.num_examples < 1:
        raise UserError(f"--num-examples {args.num_examples}: must be at least 1")
    return [TaskSpec(args.task, args.dataset, name=args.name, classnames=args.classnames, templates=args.templates,
                     data_dir=args.data_dir, split=args.split, num_examples=args.num_examples)]


def _identity(args) -> dict | None:
    from vlscale.errors import UserError

    ident = {"pretrain_dataset": args.pretrain_dataset, "lr_scheduler": args.lr_scheduler,
             "samples_seen": args.samples_seen}
    if args.samples_seen is not None:
        try:
            value = float(args.samples_seen)
        except ValueError:
            raise UserError(f"--samples-seen {args.samples_seen!r}: write a number like 1.28e9") from None
        if not value > 0:
            raise UserError(f"--samples-seen {args.samples_seen}: must be positive")
    return ident if any(v is not None for v in ident.values()) else None


def format_record(r: dict) -> str:
    where = f", step {r['step']}" if r.get("step") is not None else ""
    metrics = "  ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items())
    line = f"{r['dataset']} ({r['task']}{where}): {metrics}"
    if r.get("skipped_images"):
        line += f"  [skipped {r['skipped_images']} undecodable images]"
    return line


def _check_outputs(args) -> None:
    """--out and --results must be writable before any work starts (one line naming the flag)."""
    from vlscale.errors import UserError

    try:
        from vlscale.runtime.files import check_output_dir, check_output_file
    except ImportError:  # older checkouts: only the folder case
        if args.results and Path(args.results).is_dir():
            raise UserError(f"--results {args.results}: is a folder; give a CSV file name") from None
        return
    if args.out:
        check_output_dir(args.out, flag="--out", remote_ok=True)
    if args.results:
        check_output_file(args.results, flag="--results", suffixes=(".csv",), remote_ok=True)


def _run_eval(args) -> int:
    import sys

    from vlscale.errors import UserError
    from vlscale.eval import runner
    from vlscale.models import checkpoints

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be positive")
    tasks = _task_specs(args)
    ident = _identity(args)
    from vlscale.runtime.paths import resolve

    path = resolve(args.checkpoint)
    if not path.exists():
        raise UserError(f"--checkpoint {path}: does not exist")
    _check_outputs(args)
    multihost.initialize(args)
    import jax

    main = jax.process_index() == 0  # every process computes; the first one reports and writes
    dtype = args.precision  # auto | fp32 | bf16, resolved by vlscale.eval.encoders.resolve_dtype
    if checkpoints.is_workdir(path) and (path / checkpoints.RUN_JSON).is_file():
        records = runner.evaluate_run(path, tasks, results=args.results, all_checkpoints=args.all_checkpoints,
                                      batch_size=args.batch_size, dtype=dtype, out_dir=args.out)
        if not records and main:
            print(f"nothing to evaluate in {path}: the protocol's checkpoints already have rows in "
                  f"{args.results or path / 'results.csv'} (or the run has not finished; --all-checkpoints "
                  "evaluates every kept checkpoint)")
    else:
        records = runner.evaluate_checkpoint(path, tasks, out_dir=args.out, results=args.results,
                                             batch_size=args.batch_size, identity=ident, dtype=dtype)
    if not main:
        return 0
    for r in records:
        print(format_record(r))
    added = {}
    for r in records:
        if "results" in r:
            added[r["results"]] = added.get(r["results"], 0) + r.get("rows_added", 0)
    for table, n in added.items():
        print(f"results: {n} new rows in {table}" + (" (the rest were already there)" if n == 0 else ""))
    sys.stdout.flush()
    return 0


def _configure_caption(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT_OR_WORKDIR", help="a MaMMUT checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--method", choices=("beam_search", "greedy"), default="beam_search")
    p.add_argument("--num-beams", type=int, default=6, help="beams for beam search (default 6, the fork's)")
    p.add_argument("--seq-len", type=int, help="tokens per caption including SOT (default min(30, context))")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    multihost.add_flags(p)


def _check_caption_options(args, config) -> None:
    """--num-beams and --seq-len within what this model can decode (one line naming the flag)."""
    from vlscale.errors import UserError
    from vlscale.models.generate import max_num_beams

    if args.method == "beam_search" and args.num_beams > max_num_beams(config):
        raise UserError(f"--num-beams {args.num_beams}: at most {max_num_beams(config)} for this model (beam search "
                        f"ranks beams x {config.text.vocab_size} vocabulary tokens with int32 indices)")
    context = config.context_length
    if args.seq_len is not None and not 1 < args.seq_len <= context:
        raise UserError(f"--seq-len {args.seq_len}: must be in 2..{context} (the model's context length)")


def _run_caption(args) -> int:
    import numpy as np

    from vlscale.errors import UserError
    from vlscale.eval import generative
    from vlscale.models import checkpoints
    from vlscale.eval.encoders import EvalModel
    from vlscale.models.transforms import read_eval_image

    folders = [p for p in args.images if Path(p).is_dir()]
    if folders:
        raise UserError(f"{folders[0]} is a folder; name image files")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise UserError(f"image file(s) not found: {', '.join(missing[:3])}")
    if args.num_beams < 1 or args.batch_size < 1:
        raise UserError("--num-beams and --batch-size must be positive")
    multihost.initialize(args)
    import jax

    ckpt = checkpoints.load(args.checkpoint)
    em = EvalModel.create(ckpt.model_name, ckpt.params, dtype="float32" if args.precision == "fp32" else "bfloat16")
    generative.require_generative(em, "caption", "")
    _check_caption_options(args, em.config)
    size = em.config.image_size
    pixels = []
    for p in args.images:  # every image is read before any decoding: a file that is not one stops it, as embed does
        px, reason = read_eval_image(p, size)
        if px is None:
            raise UserError(f"cannot read image {p}: {reason}")
        pixels.append(px)
    options = {"num_beams": args.num_beams} if args.method == "beam_search" else {}
    if args.seq_len is not None:
        options["seq_len"] = args.seq_len
    for start in range(0, len(args.images), args.batch_size):
        paths, chunk = args.images[start:start + args.batch_size], pixels[start:start + args.batch_size]
        n = len(chunk)
        pad = (-n) % args.batch_size if n < args.batch_size else 0
        batch = np.stack(chunk + [chunk[0]] * pad)  # one compiled shape for every batch
        captions = generative.caption_images(em, batch, method=args.method, **options)[:n]
        if jax.process_index() == 0:  # every process decodes the same batch; the first one prints
            for p, c in zip(paths, captions):
                print(f"{p}\t{c}")
    return 0
