"""Does the synthetic captioned-shapes dataset give scaling curves? Zero-shot error of CPU-sized CLIPs (or
MaMMUTs) trained at several model sizes and sample budgets — with the project's own trainer and evaluator.

Each (size, budget) pair is its own cosine run (``vlscale.train.run``: AdamW, warm-up 5 %, the paper's recipe),
evaluated on the synthetic zero-shot tasks (``vlscale.eval.evaluate_checkpoint``). If larger models and more
samples lower the error, the dataset can carry a CPU scaling study; ``vlscale study`` is the full method.

Usage: python bench/synth_scaling.py [--family clip|mammut] [--sizes XS,S,M,L] [--budgets 65536,262144]
       [--batch 256] [--dir runs/synth_scaling]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TASKS = ("colour", "shape", "count", "colour_shape")
CHANCE = "chance: colour 0.917, shape 0.875, count 0.75, colour_shape 0.990"
EVAL_PER_TASK = 960


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("clip", "mammut"), default="clip")
    parser.add_argument("--sizes", default="XS,S,M,L", help="shapes-<family>-<size> models")
    parser.add_argument("--budgets", default="65536,262144,1048576", help="training samples seen per run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default="runs/synth_scaling", help="one workdir per run below this (resumable)")
    args = parser.parse_args()

    from vlscale.configs import train as train_config
    from vlscale.eval import evaluate_checkpoint
    from vlscale.models import registry
    from vlscale.train import run

    rows = []
    for size in args.sizes.split(","):
        model = f"shapes-{args.family}-{size}"
        n_params = registry.count_params(registry.param_shapes(registry.build_model(model)))
        for budget in (int(b) for b in args.budgets.split(",")):
            cfg = train_config.get_config(f"model={model},data=synth")
            cfg.global_batch_size, cfg.total_samples, cfg.lr, cfg.seed = args.batch, budget, args.lr, args.seed
            cfg.warmup = max(1, budget // args.batch // 20)
            cfg.log_every, cfg.checkpoint_every = 50, 10**9
            cfg.data.in_memory, cfg.data.in_memory_samples = True, max(budget, 20_000)
            workdir = Path(args.dir) / f"{model}_s{budget}"
            t0 = time.perf_counter()
            final = run(cfg, workdir, progress=False)
            tasks = [{"task": "zeroshot", "dataset": f"synth:{t}", "num_examples": EVAL_PER_TASK} for t in TASKS]
            records = evaluate_checkpoint(str(workdir), tasks, log=lambda m: None)
            errors = {r["dataset"].removeprefix("synth_"): 1.0 - r["metrics"]["acc1"] for r in records}
            errors["mean"] = sum(errors.values()) / len(errors)
            rows.append((size, n_params, budget, final["loss"], errors))
            print(f"{model} ({n_params / 1e6:.2f}M params) {budget:>9,} samples: loss {final['loss']:.3f}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in errors.items())
                  + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)

    names = list(rows[0][4])
    print(f"\nzero-shot error (1 - accuracy); {CHANCE}")
    print(f"{'size':>4} | {'params':>8} | {'samples':>9} | {'loss':>6} | " + " | ".join(f"{n:>12}" for n in names))
    for size, n_params, seen, loss, errors in rows:
        print(f"{size:>4} | {n_params / 1e6:>7.2f}M | {seen:>9,} | {loss:>6.3f} | "
              + " | ".join(f"{errors[n]:>12.3f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
