"""The smallest study that exercises the whole path (train, evaluate, fit, report): CI and the notebook use it.

Two models (CLIP-XS, MaMMUT-XS), constant LR, checkpoints at 128/192/256 samples, a reduced evaluation. Its
fits have too few points to mean much; use ``tiny_shapes`` (``make demo``) for a real frontier.
"""

from __future__ import annotations

from vlscale.configs.study import tiny_shapes


def get_config():
    c = tiny_shapes.get_config()
    c.name = "micro_shapes"
    c.description = "CLIP-XS vs MaMMUT-XS on synthetic shapes, 256 samples each: the end-to-end smoke study"
    c.models = {"clip": ["shapes-clip-XS"], "mammut": ["shapes-mammut-XS"]}
    c.max_samples_seen = {}
    c.samples_seen = [128, 192, 256]
    c.sweep = {"lr": [2e-3], "global_batch_size": [32], "warmup": [2]}
    c.sweep_per_model = {}
    c.keep_checkpoints = "all"
    c.train.checkpoint_every = 2
    c.train.log_every = 2
    c.train.data.in_memory_samples = 256
    c.eval.tasks = [{"task": "zeroshot", "dataset": "synth:colour", "num_examples": 128},
                    {"task": "retrieval", "dataset": "synth:retrieval", "num_examples": 64}]
    c.fit.benchmarks = ["synth_colour/acc1", "synth_retrieval/image_retrieval_recall@5"]
    c.fit.form = ["power"]  # 2 parameters: the few frontier points per group can still be fitted
    c.fit.fit_fraction = None
    c.fit.bootstrap = 0
    c.estimate.compile_s = 10.0
    return c
