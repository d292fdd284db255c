"""Images per second of the training input pipeline, against open_clip's webdataset loader, same run.

What is timed: read 256-px JPEG webdataset shards -> decode -> RandomResizedCrop to 224 -> normalise ->
tokenise -> batch, i.e. the per-sample work of open_clip's training loader (``get_wds_dataset``), at
worker counts 0, 1, 2 (``--workers``). "per core" divides by the processes doing the work
(max(1, workers)). Start-up (two batches from every worker) is not timed. vlscale's default is uint8
(normalised later on the device, ``normalize.normalize_images``); the f32 row normalises on the host.

Worker processes: grain spawns its workers, so the vlscale rows run in this process, which holds an
initialised JAX runtime like the trainer does. open_clip's loader forks its workers (torch's default), and
forking a process that holds a JAX runtime can deadlock, so each open_clip row runs in a fresh interpreter
that never starts JAX (``--open-clip-row``).

It also times reading alone, to decide whether shards should be converted to ArrayRecord: the same
records read from the tar shards (vlscale's reader) and from an ArrayRecord file (grain's source).

Usage: python bench/data_pipeline.py [--samples 1024] [--batch 64] [--workers 0,1,2] [--out DIR]
Needs the test extras (torch, webdataset, open_clip_torch) for the comparison; without them it prints
vlscale's numbers only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

# One thread per process on both sides, so "per core" means one core.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from vlscale.configs import data as data_config  # noqa: E402
from vlscale.data import iterator, normalize, synth, synth_eval_sets, synth_scene, synth_shards, webdataset  # noqa: E402

SHARD_IMAGE_SIZE = 256  # the benchmark shards: 256-px JPEG
MODEL_IMAGE_SIZE = 224  # every model in the paper's profile table (models/transforms.py IMAGE_SIZE)


def warmup_batches(workers: int) -> int:
    """Untimed batches: two from every worker, so no process is still starting when timing begins."""
    return 2 * max(1, workers) + 1


def write_shards(out_dir: str, samples: int, shards: int) -> list[str]:
    cfg = synth_scene.SynthConfig(image_size=SHARD_IMAGE_SIZE)
    return synth_shards.write_synth_shards(out_dir, shards, samples // shards, cfg=cfg, seed=0, quality=90)


def time_vlscale(shard_dir: str, samples: int, batch: int, workers: int, image_dtype: str = "uint8") -> float:
    config = data_config.get_config("webdataset")
    config.shards = shard_dir
    config.update(image_size=MODEL_IMAGE_SIZE, batch_size=batch, train=True, worker_count=workers,
                  shuffle_window=256, worker_buffer_size=2, image_dtype=image_dtype)
    n_batches = samples // batch
    with iterator.make_iterator(config) as it:
        for _ in range(warmup_batches(workers)):
            next(it)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            b = next(it)
        dt = time.perf_counter() - t0
    assert b["image"].shape == (batch, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE, 3) and b["image"].dtype == image_dtype
    return n_batches * batch / dt


def open_clip_available() -> bool:
    try:
        import open_clip  # noqa: F401
        import open_clip_train.data  # noqa: F401
        import torch  # noqa: F401
        import webdataset as wds  # noqa: F401
    except ImportError:
        return False
    return True


def time_open_clip(shard_paths: list[str], samples: int, batch: int, workers: int) -> float:
    """open_clip's training loader: the stage list of ``open_clip_train.data.get_wds_dataset``.

    Rebuilt from webdataset's own stages because open_clip_train 3.3.0's ``group_by_keys_nothrow``
    no longer matches the installed webdataset's sample format (KeyError 'fname'); the stages, their
    order, the transforms (``open_clip.image_transform(224, is_train=True)``) and the tokenizer are
    open_clip's.
    """
    import open_clip
    import torch
    import webdataset as wds

    torch.set_num_threads(1)
    preprocess = open_clip.image_transform(MODEL_IMAGE_SIZE, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    n_batches = samples // batch
    stages = [
        wds.SimpleShardList(list(shard_paths)),
        wds.shuffle(bufsize=2000, initial=500),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=5000, initial=1000),  # open_clip's _SAMPLE_SHUFFLE_SIZE / _INITIAL
        wds.select(lambda s: ("txt" in s) and any(k in s for k in ("png", "jpg", "jpeg", "webp"))),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(batch, partial=False),
    ]
    dataset = wds.DataPipeline(*stages).repeat(nepochs=1000)
    loader = wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                           persistent_workers=workers > 0)
    it = iter(loader)
    for _ in range(warmup_batches(workers)):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        images, _texts = next(it)
    dt = time.perf_counter() - t0
    assert tuple(images.shape) == (batch, 3, MODEL_IMAGE_SIZE, MODEL_IMAGE_SIZE)
    del it, loader
    return n_batches * batch / dt


def time_open_clip_isolated(shard_dir: str, samples: int, batch: int, workers: int) -> float:
    """``time_open_clip`` in a fresh interpreter: its forked workers never copy a JAX runtime."""
    cmd = [sys.executable, os.path.abspath(__file__), "--open-clip-row", str(workers), "--out", shard_dir,
           "--samples", str(samples), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["images_per_s"])


def _pack(jpg: bytes, txt) -> bytes:
    """A record as length-prefixed bytes (no pickle: reading a record must never run code)."""
    text = txt if isinstance(txt, bytes) else str(txt).encode()
    return len(jpg).to_bytes(8, "little") + jpg + text


def _unpack(record: bytes) -> dict:
    n = int.from_bytes(record[:8], "little")
    return {"jpg": record[8:8 + n], "txt": record[8 + n:]}


def time_reading(shard_paths: list[str], tmp: str) -> tuple[float, float]:
    """Records per second, read only (no decode): tar shards vs the same records in ArrayRecord."""
    import grain
    from array_record.python import array_record_module

    records = [r for p in shard_paths for r in webdataset.iter_tar_samples(p)]
    ar_path = os.path.join(tmp, "records.array_record")
    writer = array_record_module.ArrayRecordWriter(ar_path, "group_size:1")
    for r in records:
        writer.write(_pack(r["jpg"], r["txt"]))
    writer.close()

    t0 = time.perf_counter()
    n = sum(1 for p in shard_paths for _ in webdataset.iter_tar_samples(p))
    tar_rate = n / (time.perf_counter() - t0)
    source = grain.sources.ArrayRecordDataSource([ar_path])
    t0 = time.perf_counter()
    n = sum(1 for i in range(len(source)) if _unpack(source[i]))
    ar_rate = n / (time.perf_counter() - t0)
    return tar_rate, ar_rate


def time_data_wait(model_name: str, batch: int, steps: int, workers: int, prefetch: int, in_memory: bool,
                   image_dtype: str) -> dict:
    """Data wait as a share of step time: a real jitted CLIP train step of a tiny model, fed by the pipeline.

    Source: the synthetic stream at the model's image size, either rendered and augmented on the fly
    (streaming) or rendered once and served from memory (``in_memory``, the CPU demo's setting).
    """
    import jax
    import jax.numpy as jnp

    from vlscale.models import registry
    from vlscale.models.config import get_config as model_config
    from vlscale.train.losses import model_loss

    cfg = model_config(model_name)
    model = registry.build_model(cfg)
    params = registry.init_params(model, 0)

    @jax.jit
    def step(params, images, tokens):
        if images.dtype == jnp.uint8:
            images = normalize.normalize_images(images)

        def loss_fn(p):
            return model_loss(model.apply({"params": p}, images, tokens), cfg.family)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda w, g: w - 1e-3 * g, params, grads), loss

    config = data_config.get_config("synth")
    config.update(image_size=cfg.image_size, context_length=cfg.context_length, batch_size=batch,
                  worker_count=workers, prefetch=prefetch, in_memory=in_memory, image_dtype=image_dtype,
                  in_memory_samples=max(4096, 4 * batch))
    config.synth.knobs.image_size = cfg.image_size
    with iterator.make_iterator(config) as it:
        b = next(it)
        params, loss = step(params, b["image"], b["text"])  # compile
        jax.block_until_ready(loss)
        wait0 = it.wait_s
        t0 = time.perf_counter()
        for _ in range(steps):
            b = next(it)
            params, loss = step(params, b["image"], b["text"])
        jax.block_until_ready(loss)
        total = time.perf_counter() - t0
        wait = it.wait_s - wait0
    return {"model": model_name, "batch": batch, "workers": workers, "prefetch": prefetch, "in_memory": in_memory,
            "image_dtype": image_dtype,
            "step_ms": 1e3 * total / steps, "wait_ms": 1e3 * wait / steps, "wait_share": wait / total}


def pixel_probe(train_sizes=(1000, 4000, 16000), image_size: int = 32, test_per_task: int = 960) -> list:
    """Sanity check that the synthetic tasks are learnable but not trivial: a ridge-regression probe on
    raw 16x16 pixels (no model), trained on the training stream's labels, scored on the zero-shot sets.

    Accuracy should rise with samples and stay well below 100% for shape and count.
    """
    cfg = synth_scene.SynthConfig(image_size=image_size)
    tasks = synth_eval_sets.make_zeroshot_tasks(cfg, test_per_task, seed=0, tasks=("colour", "shape", "count"))

    def features(images):
        x = images.reshape(len(images), 16, image_size // 16, 16, image_size // 16, 3).mean(axis=(2, 4))
        return x.reshape(len(images), -1).astype(np.float64) / 255.0

    samples = [synth.generate(cfg, 0, "train", i) for i in range(max(train_sizes))]
    x_all = features(np.stack([s["image"] for s in samples]))
    rows = []
    for n in train_sizes:
        x = x_all[:n]
        mu, sd = x.mean(0), x.std(0) + 1e-6
        xs = np.concatenate([(x - mu) / sd, np.ones((n, 1))], axis=1)
        row = {"train_samples": n}
        for name, task in tasks.items():
            k = len(task.classnames)
            y = np.eye(k)[[s["labels"][name] for s in samples[:n]]]
            w = np.linalg.solve(xs.T @ xs + 10.0 * np.eye(xs.shape[1]), xs.T @ y)
            xt = np.concatenate([(features(task.images) - mu) / sd, np.ones((len(task.images), 1))], axis=1)
            row[name] = float(((xt @ w).argmax(1) == task.labels).mean())
            row[f"{name}_chance"] = 1.0 / k
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024, help="timed images per configuration")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each cell this many times, interleaved, and keep the fastest (a shared machine)")
    parser.add_argument("--out", default=None, help="where to write the shards (default: a temporary folder)")
    parser.add_argument("--wait-model", default="tiny-clip", help="model for the data-wait measurement")
    parser.add_argument("--wait-steps", type=int, default=30)
    parser.add_argument("--wait-batch", type=int, default=256)
    parser.add_argument("--only", choices=("throughput", "wait", "difficulty"), default=None, help="run one part only")
    parser.add_argument("--open-clip-row", type=int, default=None, metavar="WORKERS",
                        help=argparse.SUPPRESS)  # internal: one open_clip row on the shards in --out, as JSON
    args = parser.parse_args()
    if args.open_clip_row is not None:
        paths = sorted(glob.glob(os.path.join(args.out, "*.tar")))
        rate = time_open_clip(paths, args.samples, args.batch, args.open_clip_row)
        print(json.dumps({"images_per_s": rate}))
        return
    if args.only == "difficulty":
        print("raw-pixel ridge probe on the synthetic zero-shot tasks (accuracy; chance in brackets):")
        for r in pixel_probe():
            print(f"  {r['train_samples']:>6} train samples: " + ", ".join(
                f"{t} {r[t]:.3f} ({r[t + '_chance']:.3f})" for t in ("colour", "shape", "count")))
        return
    if args.only != "throughput":
        print(f"data wait in a {args.wait_model} CPU train step (synthetic stream, batch {args.wait_batch}, "
              f"{args.wait_steps} steps):")
        settings = ((0, 2, False, "float32"), (1, 2, False, "uint8"), (0, 2, True, "float32"), (0, 2, True, "uint8"))
        for workers, prefetch, in_memory, dtype in settings:
            r = time_data_wait(args.wait_model, args.wait_batch, args.wait_steps, workers, prefetch, in_memory, dtype)
            where = "in memory" if in_memory else "streaming"
            print(f"  {where:>9}, {dtype:>7}, workers {workers}, prefetch {prefetch}: step {r['step_ms']:6.1f} ms, "
                  f"data wait {r['wait_ms']:6.1f} ms ({r['wait_share']:.1%} of step time)")
        if args.only == "wait":
            return
    workers = [int(w) for w in args.workers.split(",")]
    tmp = args.out or tempfile.mkdtemp(prefix="vlscale_bench_")
    # Enough shards for every worker; samples to cover a timed pass plus start-up.
    shards = max(args.shards, max(workers))
    paths = write_shards(tmp, args.samples + args.batch * warmup_batches(max(workers)), shards)
    print(f"{len(paths)} shards of {SHARD_IMAGE_SIZE}-px JPEG in {tmp}; cores: {os.cpu_count()}, "
          f"load average: {os.getloadavg()[0]:.1f}")

    tar_rate, ar_rate = time_reading(paths, tmp)
    print(f"read only (no decode): tar shards {tar_rate:,.0f} records/s, ArrayRecord {ar_rate:,.0f} records/s")

    with_oc = open_clip_available()
    if not with_oc:
        print("torch/webdataset/open_clip not installed: printing vlscale only")
    rows = []
    for w in workers:
        ours = ours_u8 = 0.0
        theirs = 0.0 if with_oc else float("nan")
        for _ in range(args.repeats):  # interleaved, so a burst of load on the machine hits every column
            ours = max(ours, time_vlscale(tmp, args.samples, args.batch, w, image_dtype="float32"))
            ours_u8 = max(ours_u8, time_vlscale(tmp, args.samples, args.batch, w))
            if with_oc:
                theirs = max(theirs, time_open_clip_isolated(tmp, args.samples, args.batch, w))
        rows.append((w, ours, ours_u8, theirs))

    print(f"\ndecode + RandomResizedCrop({MODEL_IMAGE_SIZE}) + normalise + tokenise, batch {args.batch}, "
          f"{args.samples} images per row, best of {args.repeats}; img/s (per core); "
          f"load average now {os.getloadavg()[0]:.1f}")
    print("vlscale f32: normalised on the host (same work as open_clip); u8 (the default): normalised on the "
          "device later")
    header = (f"{'workers':>7} | {'vlscale f32':>17} | {'vlscale u8':>17} | {'open_clip':>17} | "
              f"{'f32/open_clip':>13} | {'u8/open_clip':>12}")
    print(header)
    print("-" * len(header))
    for w, ours, ours_u8, theirs in rows:
        cores = max(1, w)

        def cell(v):
            return f"{v:>8.1f} ({v / cores:>6.1f})"

        print(f"{w:>7} | {cell(ours)} | {cell(ours_u8)} | {cell(theirs)} | {ours / theirs:>13.2f} | "
              f"{ours_u8 / theirs:>12.2f}")


if __name__ == "__main__":
    main()
