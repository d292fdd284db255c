"""The embedded default study (`make demo`): CLIP vs MaMMUT on the synthetic shapes, sized for 2 CPU cores.

Constant-LR protocol: one run per model, evaluated at a checkpoint per samples-seen budget, so the whole grid costs
one training run and one compiled train step per model (the budgets are data, not code). The budgets are spaced
2^(1/3) apart, so every group has many checkpoints both below its fit limit and above it (the held-out points).

Why these choices (measured numbers in docs/study.md and the README):

* MaMMUT's per-sample compute at these widths is dominated by its 49,408-word vocabulary head (the paper's FLOP
  convention counts it in both passes): MaMMUT-XS costs 0.100 GFLOPs per sample, CLIP-S 0.007. One MaMMUT-XS up
  to 13,056 samples (1.3e3 GFLOPs) and CLIP XS and S up to 104,000 samples (105 and 717 GFLOPs) put the two groups'
  compute ranges on top of each other, so the verdict at the largest trained compute is at most 2x beyond either
  (tests/study/test_tiny_shapes.py).
* The data is the synthetic shapes without the nuisances that only delay learning at 32 px (pixel noise, clutter,
  distractors, gradient and texture backgrounds): with them the contrastive loss sits at chance for the first
  ~8,000 samples of every model and each error curve is a late cliff no law fitted below it can predict.
* 1,000 examples per benchmark: the binomial noise of one point (about 1.6 pp at 50 % accuracy) stays under the
  3 pp a law must predict its held-out points within.

Measured (docs/study.md, "Measured"): CLIP's colour laws predict their held-out points within 3 pp with the paper's
law, but MaMMUT-XS's colour curve only leaves chance at 0.4-0.65e3 GFLOPs and CLIP's retrieval keeps accelerating,
so the held-out bar of issue 18 is not met yet.
"""

from __future__ import annotations

import ml_collections

# Budgets 2^(k/3) x 1024, rounded to whole batches of 64.
SAMPLES_SEEN = [1024, 1280, 1600, 2048, 2560, 3264, 4096, 5184, 6528, 8192, 10304, 13056, 16384, 20608, 26048,
                32768, 41280, 52032, 65536, 82560, 104000]
# Every SynthConfig field is a knob (docs/data.md); these turn off what only delays learning at 32 px.
CLEAN_SHAPES = {"image_size": 32, "noise_max": 0.0, "clutter_max": 0, "distractor_prob": 0.0,
                "background_kinds": ("solid",)}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny_shapes"
    c.description = ("CLIP vs MaMMUT, tiny models on clean synthetic captioned shapes (32 px, 16 tokens), "
                     "const LR, a checkpoint per budget")

    # Model types and their model scales (names from vlscale.models.config).
    c.models = ml_collections.ConfigDict({
        "clip": ["shapes-clip-XS", "shapes-clip-S"],
        "mammut": ["shapes-mammut-XS"],
    })
    # Samples-seen scales; MaMMUT's cap keeps its compute range on CLIP's (and its run inside the time budget).
    c.samples_seen = list(SAMPLES_SEEN)
    c.max_samples_seen = ml_collections.ConfigDict({"shapes-mammut-XS": 13056})

    # Per-scale sweep: each combination is a run (its identity: lr, global batch, warm-up steps).
    c.sweep = ml_collections.ConfigDict({"lr": [2e-3], "global_batch_size": [64], "warmup": [8]})
    # MaMMUT costs about the same per sample at any batch and learns slowly per sample (its contrastive pass shares
    # the decoder with the captioning loss), so it gets batch 16: four times CLIP's updates for the same samples.
    c.sweep_per_model = ml_collections.ConfigDict({"shapes-mammut-XS": {"global_batch_size": [16]}})

    # cosine: one run per budget; const: one run per model, a checkpoint per budget (+ cooldowns if > 0).
    c.schedule = "const"
    c.cooldown_fraction = 0.0  # const only: > 0 adds a cooldown run from each budget's checkpoint
    c.seed = 0  # the runs' seed (initialisation, data order); the README's table measures seeds 0, 1, 2
    # Checkpoints kept once a run is trained and evaluated: "all", or "final" (saves disk; cooldowns keep theirs).
    c.keep_checkpoints = "final"
    c.replicates = ml_collections.ConfigDict({"count": 1, "models": [], "samples_seen": []})

    # Training data: name -> data spec for configs/train.py plus overrides (two entries compare datasets).
    c.datasets = ml_collections.ConfigDict({"synth": {"data": "synth", "overrides": {}}})
    # Applied to every run's training config (configs/train.py fields; nested dicts update nested fields).
    c.train = ml_collections.ConfigDict({
        "dtype": "float32",
        "log_every": 16,
        # Only the budgets' milestones are checkpoints (each one is evaluated; a resumed run restarts from the last).
        "checkpoint_every": 1_000_000,
        # The trainer sets the data's image size and context from the model; render at that size too.
        "data": {"in_memory": True, "in_memory_samples": 16384, "synth": {"knobs": dict(CLEAN_SHAPES)}},
    })

    # Evaluation suite (configs/eval/<suite>.py): the synth suite's tasks the fit uses, 1,000 examples each.
    c.eval = ml_collections.ConfigDict({"suite": "synth", "tasks": [
        {"task": "zeroshot", "dataset": "synth:colour", "num_examples": 1000},
        {"task": "zeroshot", "dataset": "synth:colour_shape", "num_examples": 1000},
        {"task": "retrieval", "dataset": "synth:retrieval", "num_examples": 1000}]})

    # Fit and comparison.
    c.fit = ml_collections.ConfigDict()
    c.fit.group_by = "model_type"
    c.fit.groups = ["clip", "mammut"]
    c.fit.benchmarks = ["synth_colour/acc1", "synth_colour_shape/acc5", "synth_retrieval/image_retrieval_recall@5"]
    # Tried in order: the paper's law, then 3- and 2-parameter laws when a group has too few frontier points.
    c.fit.form = ["saturation_both", "power_floor", "power"]
    c.fit.frontier = "naive"  # the paper's bins assume paper-scale compute (bin unit 1500 GFLOPs)
    c.fit.fit_fraction = 0.5  # fit points up to this fraction of a group's largest compute; the rest held out
    c.fit.predict = [1.0]  # the largest trained compute (multiples of the table's largest when <= 10)
    c.fit.bootstrap = 200
    c.fit.level = 0.95

    # Time estimate for the plan: sustained training FLOP/s (fwd+bwd) of the machine, plus compile per model.
    c.estimate = ml_collections.ConfigDict({"train_gflops_per_s": 25.0, "compile_s": 15.0, "eval_s": 0.5})
    return c
