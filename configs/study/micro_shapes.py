"""The smallest study that gives a verdict (CI, the notebook and docs/study.md run it): CLIP-XS trained on the
synthetic shapes and on a variant whose captions name the colour only half the time, compared per dataset.

CLIP-XS is the cheapest model that learns something in a few thousand steps on 2 CPU cores: its zero-shot colour
accuracy rises from chance (8k samples) to about 0.3 (32k samples). MaMMUT-XS learns nothing within a CI budget
(its contrastive loss starts to fall after about 10k samples at 5x CLIP-XS's cost per sample), so the CLIP vs
MaMMUT comparison lives in ``tiny_shapes`` (``make demo``). Standalone (nothing inherited from ``tiny_shapes``).
"""

from __future__ import annotations

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "micro_shapes"
    c.description = "CLIP-XS on synthetic shapes vs the same with the colour named in half the captions, 32k samples"
    c.models = {"clip": ["shapes-clip-XS"]}
    c.max_samples_seen = {}
    # const LR: one run per dataset, a kept checkpoint per budget; CLIP-XS leaves chance after about 8k samples
    c.samples_seen = [8192, 12288, 16384, 24576, 32768]
    c.sweep = {"lr": [2e-3], "global_batch_size": [64], "warmup": [8]}
    c.sweep_per_model = {}
    c.schedule = "const"
    c.cooldown_fraction = 0.0
    c.seed = 0
    c.keep_checkpoints = "final"
    c.replicates = {"count": 1, "models": [], "samples_seen": []}
    c.datasets = {"synth": {"data": "synth", "overrides": {}},
                  "synth_noisy": {"data": "synth",
                                  "overrides": {"data": {"synth": {"knobs": {"p_mention_colour": 0.5}}}}}}
    c.train = {"dtype": "float32", "log_every": 32,
               "data": {"in_memory": True, "in_memory_samples": 8192, "synth": {"knobs": {"image_size": 32}}}}
    c.eval = {"suite": "synth", "tasks": [{"task": "zeroshot", "dataset": "synth:colour", "num_examples": 256},
                                          {"task": "retrieval", "dataset": "synth:retrieval", "num_examples": 128}]}
    c.fit = ml_collections.ConfigDict()
    c.fit.group_by = "pretrain_dataset"
    c.fit.groups = ["synth", "synth_noisy"]
    c.fit.benchmarks = ["synth_colour/acc1", "synth_retrieval/image_retrieval_recall@5"]
    c.fit.form = ["power_floor", "power"]  # each benchmark takes the first that leaves 2 points to spare
    c.fit.frontier = "naive"
    c.fit.fit_fraction = 0.75  # the 32k checkpoints are held out: the held-out table has something to test
    c.fit.predict = [1.0, 2.0]
    c.fit.bootstrap = 0  # delta method: 4 fitted points leave too few distinct bootstrap resamples
    c.fit.level = 0.95
    # study/timing.py calibrated from two runs of this study on the project's shared 2-core box (load 12-20)
    c.estimate = {"train_gflops_per_s": 5.0, "compile_s": 12.0, "eval_s": 1.0}
    return c
