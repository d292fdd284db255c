"""Does the synthetic captioned-shapes dataset give scaling curves? Zero-shot error of tiny CLIPs
trained at several model sizes and sample budgets.

Each (size, budget) pair is its own run, as in a scaling study: AdamW with linear warm-up and cosine
decay over the budget, batch 256, every training sample seen once (the training set has as many
unique samples as the largest budget). The evaluation uses the dataset's zero-shot tasks (colour,
shape, count, colour_shape; class names × prompt templates, CLIP style). If larger models and more
samples lower the error measurably, the dataset can carry the project's CPU scaling demo.

This script uses no grain: it renders and tokenises in a process pool and keeps everything on the
device, so that it also runs where only jax, flax, optax and PIL are installed.

Usage: python bench/synth_scaling.py [--sizes XS,S,M,L] [--budgets 65536,262144,1048576] [--procs 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np

# Model sizes on the tiny-clip template (32 px, patch 8, context 16): (width, layers, heads).
SIZES = {"XS": (32, 1, 1), "S": (64, 2, 2), "M": (128, 3, 4), "L": (256, 4, 8)}
IMAGE_SIZE = 32
CONTEXT = 16
PEAK_LR = 1e-3
WEIGHT_DECAY = 0.1
WARMUP_FRACTION = 0.05
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the learned temperature at 100
CHUNK = 50  # optimizer steps per jitted scan
EVAL_PER_TASK = 960


def _render_chunk(job):
    from vlscale.data import synth
    from vlscale.models.tokenizer import get_tokenizer

    seed, split, start, stop = job
    cfg = synth.SynthConfig(image_size=IMAGE_SIZE)
    tok = get_tokenizer(CONTEXT)
    samples = [synth.generate(cfg, seed, split, i) for i in range(start, stop)]
    return np.stack([s["image"] for s in samples]), tok([s["caption"] for s in samples])


def render_train(n: int, seed: int, procs: int) -> tuple[np.ndarray, np.ndarray]:
    step = 4096
    jobs = [(seed, "train", a, min(a + step, n)) for a in range(0, n, step)]
    with mp.get_context("fork").Pool(procs) as pool:
        parts = pool.map(_render_chunk, jobs)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.int32)


def model_config(size: str):
    from vlscale.models.config import get_config

    width, layers, heads = SIZES[size]
    base = get_config("tiny-clip")
    return dataclasses.replace(
        base, name=f"synth-clip-{size}", embed_dim=width,
        vision=dataclasses.replace(base.vision, width=width, layers=layers, head_width=width // heads),
        text=dataclasses.replace(base.text, width=width, layers=layers, heads=heads),
    )


def normalize(images):
    import jax.numpy as jnp

    from vlscale.models.transforms import OPENAI_MEAN, OPENAI_STD

    x = images.astype(jnp.float32) / jnp.float32(255)
    return (x - jnp.asarray(OPENAI_MEAN, jnp.float32)) / jnp.asarray(OPENAI_STD, jnp.float32)


def make_trainer(model):
    import jax
    import jax.numpy as jnp
    import optax

    from vlscale.train.losses import model_loss

    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=PEAK_LR, weight_decay=WEIGHT_DECAY)

    def lr_at(step, total):
        warm = jnp.maximum(1.0, WARMUP_FRACTION * total)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip((step - warm) / jnp.maximum(total - warm, 1.0), 0, 1)))
        return PEAK_LR * jnp.where(step < warm, (step + 1) / warm, cosine)

    @jax.jit
    def chunk(params, opt_state, images, tokens, idx, step0, total):
        def one(carry, batch_idx):
            params, opt_state, step = carry
            x, t = normalize(images[batch_idx]), tokens[batch_idx]

            def loss_fn(p):
                return model_loss(model.apply({"params": p}, x, t), model.config.family)[0]

            loss, grads = jax.value_and_grad(loss_fn)(params)
            opt_state.hyperparams["learning_rate"] = lr_at(step, total)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            params["logit_scale"] = jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE)
            return (params, opt_state, step + 1), loss

        (params, opt_state, _), losses = jax.lax.scan(one, (params, opt_state, step0), idx)
        return params, opt_state, losses.mean()

    return tx, chunk


def zeroshot_errors(model, params, tasks, prompt_tokens) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    enc_img = jax.jit(lambda p, x: model.apply({"params": p}, normalize(x), normalize=True, method=model.encode_image))
    enc_txt = jax.jit(lambda p, t: model.apply({"params": p}, t, normalize=True, method=model.encode_text))
    errors = {}
    for name, task in tasks.items():
        k, m = len(task.classnames), len(task.templates)
        text = enc_txt(params, prompt_tokens[name]).reshape(k, m, -1).mean(1)
        text = text / jnp.linalg.norm(text, axis=-1, keepdims=True)
        image = enc_img(params, jnp.asarray(task.images))
        pred = np.asarray(jnp.argmax(image @ text.T, axis=-1))
        errors[name] = float((pred != task.labels).mean())
    errors["mean"] = float(np.mean([errors[n] for n in tasks]))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="XS,S,M,L")
    parser.add_argument("--budgets", default="65536,262144,1048576", help="training samples seen per run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--procs", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    budgets = [int(b) for b in args.budgets.split(",")]
    too_small = [b for b in budgets if b < CHUNK * args.batch]
    if too_small:
        parser.error(f"budgets {too_small} are below one chunk of {CHUNK} steps x batch {args.batch} = "
                     f"{CHUNK * args.batch} samples; raise them or lower --batch")

    import jax
    import jax.numpy as jnp

    from vlscale.data import synth
    from vlscale.models import registry
    from vlscale.models.tokenizer import get_tokenizer

    t0 = time.perf_counter()
    images, tokens = render_train(max(budgets), args.seed, args.procs)
    tasks = synth.make_zeroshot_tasks(synth.SynthConfig(image_size=IMAGE_SIZE), EVAL_PER_TASK, seed=args.seed)
    tok = get_tokenizer(CONTEXT)
    prompts = {n: jnp.asarray(tok([t.format(c) for c in task.classnames for t in task.templates]))
               for n, task in tasks.items()}
    print(f"rendered {len(images):,} training samples in {time.perf_counter() - t0:.0f} s on {args.procs} processes; "
          f"device {jax.devices()[0].device_kind}", flush=True)
    images_d, tokens_d = jnp.asarray(images), jnp.asarray(tokens)

    rows = []
    for size in sizes:
        cfg = model_config(size)
        model = registry.build_model(cfg)
        tx, chunk = make_trainer(model)
        n_params = sum(x.size for x in jax.tree.leaves(registry.init_params(model, 0)))
        for budget in budgets:
            steps = budget // args.batch
            steps -= steps % CHUNK
            params = registry.init_params(model, args.seed)
            opt_state = tx.init(params)
            order = np.random.default_rng([args.seed, budget]).permutation(len(images))[: steps * args.batch]
            order = jnp.asarray(order.reshape(steps // CHUNK, CHUNK, args.batch))
            t1 = time.perf_counter()
            for c in range(steps // CHUNK):
                params, opt_state, loss = chunk(params, opt_state, images_d, tokens_d, order[c],
                                                jnp.int32(c * CHUNK), jnp.float32(steps))
            loss = float(loss)
            errors = zeroshot_errors(model, params, tasks, prompts)
            rows.append((size, n_params, steps * args.batch, loss, errors))
            print(f"{size:>2} ({n_params / 1e6:5.2f}M params) {steps * args.batch:>9,} samples: loss {loss:.3f}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in errors.items())
                  + f"  [{time.perf_counter() - t1:.0f} s]", flush=True)

    names = list(rows[0][4])
    print("\nzero-shot error (1 - accuracy); chance: colour 0.917, shape 0.875, count 0.75, colour_shape 0.990")
    print(f"{'size':>4} | {'params':>8} | {'samples':>9} | {'loss':>6} | " + " | ".join(f"{n:>12}" for n in names))
    for size, n_params, seen, loss, errors in rows:
        print(f"{size:>4} | {n_params / 1e6:>7.2f}M | {seen:>9,} | {loss:>6.3f} | "
              + " | ".join(f"{errors[n]:>12.3f}" for n in names))


if __name__ == "__main__":
    sys.exit(main())
