"""Zero-shot evaluation speed: vlscale.eval against open_clip's encoders in the same process, and the evaluation
budget of the default study (evaluating a checkpoint should cost at most 5 % of the training that produced it).

Rows:
  * classify: images/s of zero-shot classification (encode, normalise, logits against the classifier, top-5) at
    batch 256 on pre-processed images, vlscale (jit, batch-sharded over the local devices) vs open_clip
    (torch, no_grad, the same random weights converted).
  * classifier: seconds to build a 1000-class x 80-template classifier (ImageNet names x OpenAI templates,
    tokenising included), vlscale vs open_clip's tokenizer + encode_text.
  * budget: for each model of the study's default grid (configs/study/tiny_shapes.py), the trainer's samples/s
    (a short ``vlscale.train.run``, compile excluded) and the wall time of one checkpoint's evaluation with the
    study's suite (compiled functions warm, as in a study process), as a fraction of the training time up to each
    of the grid's samples-seen budgets; in brackets the evaluation's forward FLOPs as a fraction of that training's
    FLOPs, the least any evaluator of the same examples can cost (CLIPs; MaMMUT's FLOP count holds its captioning
    pass, which contrastive evaluation skips).

  * image cache (``--cache-only``): N checkpoints of one model evaluated one after another in one process (as
    ``vlscale study collect`` does) on a folder of JPEG files, zero-shot: total and per-checkpoint wall time with
    the decoded-image cache off (``VLSCALE_EVAL_CACHE=none``), in memory (the default), and with a cache folder
    first empty then filled by an earlier process; the metrics of every mode are checked equal.

Usage: python bench/eval.py [--model tiny-clip] [--images 1024] [--batch 256] [--skip-budget] [--budget-models ...]
       python bench/eval.py --cache-only [--model tiny-clip] [--cache-images 512] [--cache-checkpoints 3]
Tiny configs on the CPU by default; on a GPU pass a real config (--model ViT-B-32). Needs the test extras
(torch, open_clip_torch) for the open_clip rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _open_clip_model(name: str):
    import open_clip

    from vlscale.models.config import get_config

    cfg = get_config(name)
    v, t = cfg.vision, cfg.text
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width, head_width=v.head_width,
                  patch_size=v.patch_size)
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                layers=t.layers)
    return open_clip.model.CLIP(cfg.embed_dim, vision, text).eval()


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_classify(model_name: str, n: int, batch: int, device: str) -> list[tuple]:
    import torch

    from vlscale.data.normalize import normalize_host
    from vlscale.eval import synth_sets, zeroshot
    from vlscale.eval.encoders import EvalModel
    from vlscale.models import convert

    tm = _open_clip_model(model_name).to(device)
    state = {k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()}
    em = EvalModel.create(model_name, convert.torch_to_flax(state, model_name), dtype="float32")  # as open_clip
    size = em.config.image_size
    ds = synth_sets.synth_dataset("colour", n, knobs={"image_size": size})
    ds.loader(size)(np.arange(1))  # pre-process once: the rows time the model, not PIL
    classifier = zeroshot.build_classifier(em, ds.prompts, batch, progress=None)
    zeroshot.classify(em, ds, classifier, batch)  # compile
    ours = _timed(lambda: zeroshot.classify(em, ds, classifier, batch))

    pixels = normalize_host(ds._all_pixels(size)[0])
    x = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(device)
    w = torch.from_numpy(classifier).to(device)

    def open_clip_run():
        with torch.no_grad():
            for i in range(0, n, batch):
                f = tm.encode_image(x[i:i + batch])
                f = f / f.norm(dim=-1, keepdim=True)
                (100.0 * f @ w).topk(5, dim=-1)
        if device == "cuda":
            torch.cuda.synchronize()

    open_clip_run()
    ref = _timed(open_clip_run)
    return [("classify", model_name, f"{n / ours:,.0f} img/s", f"{n / ref:,.0f} img/s", ref / ours)]


def bench_classifier(model_name: str, batch: int, device: str) -> list[tuple]:
    import open_clip
    import torch

    from vlscale.eval import prompts as prompts_lib
    from vlscale.eval import zeroshot
    from vlscale.eval.encoders import EvalModel
    from vlscale.models import convert

    tm = _open_clip_model(model_name).to(device)
    state = {k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()}
    em = EvalModel.create(model_name, convert.torch_to_flax(state, model_name), dtype="float32")  # as open_clip
    p = prompts_lib.Prompts(tuple(prompts_lib.imagenet_classnames()), tuple(prompts_lib.openai_templates()))
    zeroshot.build_classifier(em, prompts_lib.Prompts(p.classnames[:8], p.templates), batch, progress=None)  # compile
    ours = _timed(lambda: zeroshot.build_classifier(em, p, batch, progress=None), repeats=1)
    ctx = em.config.context_length

    def open_clip_run():
        weights = []
        with torch.no_grad():
            for c in p.classnames:
                f = tm.encode_text(open_clip.tokenize([t.replace("{c}", c) for t in p.templates], context_length=ctx)
                                   .to(device))
                f = (f / f.norm(dim=-1, keepdim=True)).mean(0)
                weights.append(f / f.norm())
        return torch.stack(weights, 1)

    ref = _timed(open_clip_run, repeats=1)
    return [("classifier 1000x80", model_name, f"{ours:.1f} s", f"{ref:.1f} s", ref / ours)]


def bench_budget(models: list[str], steps: int) -> list[tuple]:
    import json

    from vlscale.configs import train as train_config
    from vlscale.configs.study import tiny_shapes
    from vlscale.eval import evaluate_run
    from vlscale.eval.suites import suite_tasks
    from vlscale.train import run

    study = tiny_shapes.get_config()
    # What the study evaluates at each checkpoint: its eval.tasks (fewer examples than the suite) when it has them.
    tasks = [dict(t) for t in study.eval.tasks] if study.eval.get("tasks") else suite_tasks(study.eval.suite)
    rows = []
    for model in models:
        cfg = train_config.get_config(f"model={model},data=synth")
        cfg.global_batch_size = int(study.sweep.global_batch_size[0])
        cfg.total_samples = cfg.global_batch_size * steps
        cfg.warmup, cfg.lr, cfg.schedule = 2, 2e-3, "const"
        cfg.log_every, cfg.checkpoint_every = max(1, steps // 4), steps // 2  # two checkpoints: warm = 2nd pass / 2
        cfg.data.in_memory, cfg.data.in_memory_samples = True, 1024
        cfg.data.synth.knobs = {"image_size": 32}
        with tempfile.TemporaryDirectory() as w:
            run(cfg, w)
            logs = [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
            sps = float(np.median([r["samples_per_s"] for r in logs[1:]] or [logs[-1]["samples_per_s"]]))
            t = time.perf_counter()
            evaluate_run(w, tasks, results=os.path.join(w, "cold.csv"), log=lambda m: None)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            n = len(evaluate_run(w, tasks, results=os.path.join(w, "warm.csv"), log=lambda m: None)) // len(tasks)
            warm = (time.perf_counter() - t) / n  # per checkpoint, loading it included
        caps = dict(study.max_samples_seen)
        grid = [s for s in study.samples_seen if s <= caps.get(model, float("inf"))]
        # MaMMUT's forward FLOPs hold its captioning pass and vocabulary head, which contrastive evaluation skips
        floor = None if "mammut" in model else _eval_compute(model, tasks, cfg.data.synth.knobs)
        fractions = ", ".join(f"{s:,}: {warm / (s / sps):.0%}" + (f" ({floor / s:.0%})" if floor else "") for s in grid)
        rows.append(("budget", model, f"train {sps:,.0f} samples/s",
                     f"eval {warm:.2f} s warm (first process call, 2 checkpoints: {cold:.1f} s)",
                     fractions))
    return rows


def _eval_compute(model: str, tasks: list[dict], knobs: dict) -> float:
    """The forward FLOPs of one checkpoint's evaluation in training samples' worth (training FLOPs per sample,
    fwd + bwd): divided by a budget's samples it is the smallest share of training evaluation can cost, whatever
    the implementation (the "(x %)" beside each measured share)."""
    from vlscale.eval.datasets import open_dataset
    from vlscale.eval.image_sets import RetrievalSet
    from vlscale.models import flops

    fwd = flops.forward_flops(model, contrastive_lm_head=False)
    image, text = fwd.image, fwd.text + fwd.attention / 2  # attention split between the towers (an approximation)
    total = 0.0
    for t in tasks:
        ds = open_dataset(t["dataset"], t["task"], num_examples=t.get("num_examples"), synth_knobs=dict(knobs))
        n_texts = sum(len(c) for c in ds.captions) if isinstance(ds, RetrievalSet) else len(ds.prompts.texts())
        total += ds.num_images * image + n_texts * text
    return total / flops.training_flops(model)


def _jpeg_folder(root: str, n: int, classes: int = 4) -> str:
    """``n`` JPEG files (quality 90) at 500 x 375, ImageNet's most common size, in ``classes`` class folders: smooth
    random colour fields with noise and a few ellipses, so decoding costs what a photo of that size costs."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        px = np.clip(np.asarray(low, np.int16) + rng.integers(-12, 13, (375, 500, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(px)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, 450), rng.integers(0, 330)
            draw.ellipse((x, y, x + rng.integers(20, 120), y + rng.integers(20, 120)),
                         fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return root


def bench_cache(model: str, n_images: int, n_ckpts: int, batch: int, precision: str) -> list[tuple]:
    """Rows (mode, total s, first checkpoint s, later checkpoints s each, speed-up of the total vs no cache)."""
    from vlscale.eval import evaluate_checkpoint, image_cache
    from vlscale.models import registry, saved_params

    rows, metrics = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _jpeg_folder(os.path.join(tmp, "photos"), n_images)
        ckpts = [str(saved_params.save_params(os.path.join(tmp, f"ckpt{k}"),
                                              registry.init_params(registry.build_model(model), k), model))
                 for k in range(n_ckpts)]
        tasks = [("zeroshot", f"folder:{folder}")]

        def evaluate_all(mode: str) -> list[float]:
            times = []
            for k, c in enumerate(ckpts):
                t = time.perf_counter()
                [rec] = evaluate_checkpoint(c, tasks, batch_size=batch, dtype=precision,
                                            out_dir=os.path.join(tmp, "out", mode, str(k)), log=lambda m: None)
                times.append(time.perf_counter() - t)
                metrics.setdefault(k, rec["metrics"])
                if rec["metrics"] != metrics[k]:
                    raise AssertionError(f"{mode}: checkpoint {k} gives {rec['metrics']}, not {metrics[k]}")
            return times

        modes = [("no cache", "none"), ("memory (default)", ""), ("cache folder, empty", os.path.join(tmp, "cache")),
                 ("cache folder, filled by an earlier process", os.path.join(tmp, "cache"))]
        os.environ[image_cache.CACHE_ENV] = "none"
        evaluate_all("compile")  # compiles the model's eval functions once, as a study process has
        base = None
        for label, env in modes:
            os.environ[image_cache.CACHE_ENV] = env
            image_cache.clear_memo()  # each mode starts as a new process would
            times = evaluate_all(label)
            total = sum(times)
            base = base or total
            later = f"{np.mean(times[1:]):.2f} s" if len(times) > 1 else "-"
            rows.append((label, f"{total:.2f} s", f"{times[0]:.2f} s", later, f"{base / total:.2f}x"))
        os.environ.pop(image_cache.CACHE_ENV, None)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--skip-budget", action="store_true")
    ap.add_argument("--budget-only", action="store_true", help="only the budget rows (no open_clip needed)")
    ap.add_argument("--budget-models", default="shapes-clip-XS,shapes-clip-S,shapes-mammut-XS")
    ap.add_argument("--budget-steps", type=int, default=24)
    ap.add_argument("--cache-only", action="store_true", help="only the image-cache rows (no open_clip needed)")
    ap.add_argument("--cache-images", type=int, default=512)
    ap.add_argument("--cache-checkpoints", type=int, default=3)
    ap.add_argument("--precision", default="auto", help="precision of the image-cache rows (auto, fp32, bf16)")
    args = ap.parse_args(argv)
    import jax

    print(f"# bench/eval.py on {jax.default_backend()} ({len(jax.devices())} devices), {os.cpu_count()} cores")
    if args.cache_only:
        return _print_cache(args)
    if args.budget_only:
        return _print_budget(args)
    import torch

    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    rows = bench_classify(args.model, args.images, args.batch, device)
    rows += bench_classifier(args.model, args.batch, device)
    print("| row | model | vlscale | open_clip | vlscale / open_clip speed |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f}x |")
    sys.stdout.flush()
    if not args.skip_budget:
        _print_budget(args)
    return 0


def _print_cache(args) -> int:
    from vlscale.eval.encoders import resolve_dtype

    print(f"\n{args.cache_checkpoints} checkpoints of {args.model} ({resolve_dtype(args.precision)}), zero-shot on "
          f"{args.cache_images} JPEGs (500 x 375) in one process, batch {args.batch}; compilation excluded")
    print("| image cache | all checkpoints | first | each later one | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for r in bench_cache(args.model, args.cache_images, args.cache_checkpoints, args.batch, args.precision):
        print("| " + " | ".join(str(x) for x in r) + " |", flush=True)
    print("metrics: equal in every mode, checkpoint by checkpoint")
    return 0


def _print_budget(args) -> int:
    print("\n| row | model | training | one checkpoint's evaluation (the study's eval tasks) | eval / training time "
          "up to each budget (samples) |")
    print("| --- | --- | --- | --- | --- |")
    for r in bench_budget(args.budget_models.split(","), args.budget_steps):
        print("| " + " | ".join(str(x) for x in r) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
