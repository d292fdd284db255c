"""Train-step speed of the vlscale trainer, optionally against open_clip on the same model, batch and device.

    python bench/train_step.py --model ViT-B-32 --batch 256 [--dtype bfloat16] [--vs-open-clip] [--json OUT]

Times the trainer's own compiled step (``vlscale.train.step.make_train_step``: forward, loss, backward, global-norm
clipping, AdamW, logit-scale clamp) on random inputs already on the devices, so the data pipeline is not part of
it. Reports compile time (first call minus a steady step), median step time, samples/s, TFLOP/s per device from
the paper's forward FLOPs x 3 (``vlscale.models.flops``, attention products included) and MFU against the dense
bf16 peak of the device kind (``vlscale.train.metrics.peak_flops``; none on CPU).

``--vs-open-clip`` builds open_clip's ``CLIP`` with the same dimensions and times a step as the paper's runs did
(bf16 autocast on CUDA, fused AdamW, grad-norm clipping 1.0), eager and then with ``torch.compile``, and prints
vlscale's speed-up over each. open_clip has no MaMMUT (it lives in the open_clip_mammut fork), so MaMMUT models
get no reference row. On CPU only tiny configs are practical (e.g. ``--model tiny-clip --batch 32``).

``--caption-head`` (MaMMUT) times the loss and gradient of the model alone two ways, the default forward's
[B, L-1, V] logits with ``losses.caption_loss`` and ``caption_head=False`` with the chunked
``losses.caption_nll_from_hidden``, and prints XLA's temporary-buffer bytes of each.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time


def _tokens(rng, batch: int, context: int, vocab: int):
    """Random captions of realistic lengths (SOT ... EOT then zero padding, as the tokenizer writes them)."""
    import numpy as np

    tokens = np.zeros((batch, context), np.int32)
    lengths = rng.integers(min(8, context), min(32, context) + 1, size=batch)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, vocab - 2, size=n)
        tokens[i, 0], tokens[i, n - 1] = vocab - 2, vocab - 1  # SOT 49406, EOT 49407 (the argmax)
    return tokens


def _summary(name: str, step_times: list[float], first_call_s: float, batch: int, train_flops: float,
             devices: int, peak: float | None) -> dict:
    step = statistics.median(step_times)
    tflops = train_flops / step / devices / 1e12
    return {
        "impl": name,
        "compile_s": max(first_call_s - step, 0.0),
        "step_s": step,
        "samples_per_s": batch / step,
        "tflops_per_device": tflops,
        "mfu": tflops * 1e12 / peak if peak else None,
    }


def time_vlscale(args, model_cfg, train_flops: float) -> dict:
    import jax
    import numpy as np

    from vlscale.configs import train as train_config
    from vlscale.train import optim
    from vlscale.runtime import sharding
    from vlscale.train.metrics import peak_flops
    from vlscale.train.step import make_train_step

    config = train_config.get_config(f"model={args.model},data=synth")
    config.global_batch_size = args.batch
    config.total_samples = args.batch * 1000
    config.dtype = args.dtype
    config.remat = args.remat
    config.scan_layers = args.scan_layers
    mesh = sharding.make_mesh(data=-1)
    trainer = make_train_step(config, mesh)
    state = trainer.init(0)
    rng = np.random.default_rng(0)
    size = model_cfg.image_size
    host = {"image": rng.normal(size=(args.batch, size, size, 3)).astype(np.float32),
            "text": _tokens(rng, args.batch, model_cfg.context_length, model_cfg.text.vocab_size)}
    batch = {k: jax.device_put(v, trainer.batch_shardings[k]) for k, v in host.items()}
    config.warmup = 10  # a fixed schedule: the bench times steps, not the run
    sched = optim.schedule_params(config, 1000)

    t = time.perf_counter()
    state, metrics = trainer.step(state, batch, sched)
    jax.block_until_ready(metrics["loss"])
    first = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, metrics = trainer.step(state, batch, sched)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t)
    if not math.isfinite(float(metrics["loss"])):
        raise SystemExit(f"error: non-finite loss {float(metrics['loss'])}")
    kind = jax.devices()[0].device_kind
    row = _summary("vlscale", times, first, args.batch, train_flops, jax.device_count(), peak_flops(kind))
    row.update(device_kind=kind, devices=jax.device_count(), loss=float(metrics["loss"]))
    return row


def _open_clip_model(model_cfg):
    import open_clip

    v, t = model_cfg.vision, model_cfg.text
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width, head_width=v.head_width,
                  patch_size=v.patch_size, mlp_ratio=v.mlp_ratio)
    if v.ls_init_value is not None:
        vision["ls_init_value"] = v.ls_init_value
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                layers=t.layers, mlp_ratio=t.mlp_ratio)
    return open_clip.model.CLIP(model_cfg.embed_dim, vision, text, output_dict=True)


def time_open_clip(args, model_cfg, train_flops: float, compiled: bool, peak: float | None) -> dict:
    """One open_clip training step as open_clip_train runs it: autocast, ClipLoss, clipping, fused AdamW."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = _open_clip_model(model_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.2,
                            fused=True)
    rng = np.random.default_rng(0)
    size = model_cfg.image_size
    images = torch.from_numpy(rng.normal(size=(args.batch, 3, size, size)).astype(np.float32)).to(device)
    tokens = torch.from_numpy(_tokens(rng, args.batch, model_cfg.context_length, model_cfg.text.vocab_size))
    tokens = tokens.long().to(device)
    labels = torch.arange(args.batch, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def forward_loss():
        with autocast:
            out = model(images, tokens)
            logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    loss_fn = torch.compile(forward_loss) if compiled else forward_loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    name = "open_clip + torch.compile" if compiled else "open_clip (eager)"
    row = _summary(name, times, first, args.batch, train_flops, 1, peak)
    row.update(device_kind=torch.cuda.get_device_name() if device == "cuda" else "cpu", devices=1)
    return row


def time_caption_head(args, model_cfg) -> list[dict]:
    """MaMMUT loss + gradients (no optimizer) with the plain logits path and with the chunked LM head."""
    import jax
    import numpy as np

    from vlscale.models import registry
    from vlscale.train import losses

    model = registry.build_model(model_cfg, dtype=args.dtype, remat=args.remat, scan_layers=args.scan_layers)
    params = registry.init_params(model, 0)
    rng = np.random.default_rng(0)
    size = model_cfg.image_size
    images = jax.device_put(rng.normal(size=(args.batch, size, size, 3)).astype(np.float32))
    tokens = jax.device_put(_tokens(rng, args.batch, model_cfg.context_length, model_cfg.text.vocab_size))
    rows = []
    for name, caption_head in (("logits + caption_loss", True), ("hidden + chunked head", False)):
        def loss(p, caption_head=caption_head):
            out = model.apply({"params": p}, images, tokens, caption_head=caption_head)
            return losses.model_loss(out, "mammut")[0]

        fn = jax.jit(jax.value_and_grad(loss))
        t = time.perf_counter()
        compiled = fn.lower(params).compile()
        compile_s = time.perf_counter() - t
        jax.block_until_ready(compiled(params))
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            jax.block_until_ready(compiled(params))
            times.append(time.perf_counter() - t)
        memory = compiled.memory_analysis()
        rows.append({"impl": name, "compile_s": compile_s, "step_s": statistics.median(times),
                     "temp_bytes": int(memory.temp_size_in_bytes) if memory is not None else None})
    return rows


def _format(rows: list[dict]) -> str:
    head = f"{'impl':<28}{'compile s':>10}{'step ms':>10}{'samples/s':>11}{'TFLOP/s/dev':>13}{'MFU':>7}"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['impl']:<28}  {r['error']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"{r['impl']:<28}{r['compile_s']:>10.1f}{1e3 * r['step_s']:>10.1f}{r['samples_per_s']:>11.0f}"
                     f"{r['tflops_per_device']:>13.2f}{mfu:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a vlscale model name (vlscale models --all)")
    parser.add_argument("--batch", type=int, required=True, help="global batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first (compiling) one")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    parser.add_argument("--remat", choices=("none", "block", "full"), default="none")
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--vs-open-clip", action="store_true", help="time open_clip on the same model and batch")
    parser.add_argument("--caption-head", action="store_true",
                        help="MaMMUT: loss+grad with the logits path vs the chunked LM head, time and temp memory")
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    args = parser.parse_args(argv)

    import jax

    from vlscale.errors import UserError
    from vlscale.models import flops
    from vlscale.models.config import get_config
    from vlscale.train.metrics import peak_flops

    try:
        model_cfg = get_config(args.model)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dtype is None:
        args.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    train_flops = flops.training_flops(model_cfg, args.batch)
    print(f"{args.model} batch {args.batch} {args.dtype} on {jax.device_count()} x {jax.devices()[0].device_kind}; "
          f"{train_flops / args.batch / 1e9:.2f} training GFLOPs per sample (paper forward incl. attention x 3)")
    rows = [time_vlscale(args, model_cfg, train_flops)]
    if args.vs_open_clip:
        if model_cfg.family != "clip":
            rows.append({"impl": "open_clip", "error": "no MaMMUT in open_clip (fork only): no reference row"})
        else:
            peak = peak_flops(rows[0]["device_kind"])
            for compiled in (False, True):
                try:
                    rows.append(time_open_clip(args, model_cfg, train_flops, compiled, peak))
                except Exception as e:  # torch.compile needs a working C++/Triton toolchain
                    name = "open_clip + torch.compile" if compiled else "open_clip (eager)"
                    rows.append({"impl": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"})
    print(_format(rows))
    ours = rows[0]["samples_per_s"]
    for r in rows[1:]:
        if "samples_per_s" in r:
            print(f"vlscale / {r['impl']}: {ours / r['samples_per_s']:.2f}x samples/s")
    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "rows": rows}
    if args.caption_head and model_cfg.family == "mammut":
        result["caption_head"] = time_caption_head(args, model_cfg)
        print("MaMMUT loss + gradients only (no optimizer):")
        for r in result["caption_head"]:
            temp = f"{r['temp_bytes'] / 2**20:.0f} MiB" if r["temp_bytes"] is not None else "?"
            print(f"  {r['impl']:<24} compile {r['compile_s']:5.1f} s  step {1e3 * r['step_s']:8.1f} ms  "
                  f"XLA temporaries {temp}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
