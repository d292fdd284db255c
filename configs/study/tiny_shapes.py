"""The embedded default study: CLIP vs MaMMUT on the synthetic shapes data, sized for 2 CPU cores.

Constant-LR protocol: one run per model, evaluated at a checkpoint per samples-seen budget, so the whole
grid costs one training run per model and one compiled train step per model (the budgets are data, not code).
MaMMUT's per-sample cost is dominated by its 49,408-word vocabulary head, so it gets the smaller widths.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny_shapes"
    c.description = "CLIP vs MaMMUT, tiny models on synthetic captioned shapes (32 px, 16 tokens), const LR"

    # Model types and their model scales (names from vlscale.models.config).
    c.models = ml_collections.ConfigDict({
        "clip": ["shapes-clip-XS", "shapes-clip-S", "shapes-clip-M"],
        "mammut": ["shapes-mammut-XS", "shapes-mammut-S"],
    })
    # Samples-seen scales; per-model caps keep the expensive MaMMUTs inside the CPU budget.
    c.samples_seen = [1024, 2048, 4096, 8192, 16384, 32768]
    c.max_samples_seen = ml_collections.ConfigDict({"shapes-mammut-S": 16384})

    # Per-scale sweep: each combination is a run (its identity: lr, global batch, warm-up steps).
    c.sweep = ml_collections.ConfigDict({"lr": [2e-3], "global_batch_size": [64], "warmup": [8]})
    # The widest CLIP diverges at 2e-3 (loss 3.6 after 32k samples, worse than S).
# MaMMUT costs the same per sample at any batch, so it gets batch 32: twice the updates for the same compute.
    c.sweep_per_model = ml_collections.ConfigDict({"shapes-clip-M": {"lr": [1e-3]},
                                                   "shapes-mammut-XS": {"global_batch_size": [32]},
                                                   "shapes-mammut-S": {"global_batch_size": [32]}})

    # cosine: one run per budget; const: one run per model, a checkpoint per budget (+ cooldowns if > 0).
    c.schedule = "const"
    c.cooldown_fraction = 0.0  # const only: > 0 adds a cooldown run from each budget's checkpoint
    c.seed = 0
    # Checkpoints kept once a run is trained and evaluated: "all", or "final" (saves disk; cooldowns keep theirs).
    c.keep_checkpoints = "final"
    c.replicates = ml_collections.ConfigDict({"count": 1, "models": [], "samples_seen": []})

    # Training data: name -> data spec for configs/train.py plus overrides (two entries compare datasets).
    c.datasets = ml_collections.ConfigDict({"synth": {"data": "synth", "overrides": {}}})
    # Applied to every run's training config (configs/train.py fields; nested dicts update nested fields).
    c.train = ml_collections.ConfigDict({
        "dtype": "float32",
        "log_every": 16,
        # The trainer sets the data's image size and context from the model; render at that size too.
        "data": {"in_memory": True, "in_memory_samples": 8192, "synth": {"knobs": {"image_size": 32}}},
    })

    # Evaluation suite (configs/eval/<suite>.py).
    # The synth suite's tasks the fit uses, 500 examples each (half the suite's default: evaluation stays cheap).
    c.eval = ml_collections.ConfigDict({"suite": "synth", "tasks": [
        {"task": "zeroshot", "dataset": "synth:colour", "num_examples": 500},
        {"task": "zeroshot", "dataset": "synth:colour_shape", "num_examples": 500},
        {"task": "retrieval", "dataset": "synth:retrieval", "num_examples": 500}]})

    # Fit and comparison.
    c.fit = ml_collections.ConfigDict()
    c.fit.group_by = "model_type"
    c.fit.groups = ["clip", "mammut"]
    # Zero-shot colour moves most over this compute range; colour+shape (top-5) and retrieval are harder.
    c.fit.benchmarks = ["synth_colour/acc1", "synth_colour_shape/acc5", "synth_retrieval/image_retrieval_recall@5"]
    # Tried in order: the paper's law, then 3- and 2-parameter laws when a group has too few frontier points.
    c.fit.form = ["saturation_both", "power_floor", "power"]
    c.fit.frontier = "naive"  # the paper's bins assume paper-scale compute (bin unit 1500 GFLOPs)
    c.fit.fit_fraction = 0.5  # fit points up to this fraction of a group's largest compute; the rest held out
    c.fit.predict = [1.0, 2.0]  # multiples of the largest compute in the table (absolute when > 10)
    c.fit.bootstrap = 200
    c.fit.level = 0.95

    # Time estimate for the plan: sustained training FLOP/s (fwd+bwd) of the machine, plus compile per model.
    c.estimate = ml_collections.ConfigDict({"train_gflops_per_s": 25.0, "compile_s": 15.0, "eval_s": 3.0})
    return c
