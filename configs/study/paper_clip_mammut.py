"""The paper's grid (Nezhurina et al. 2025): openCLIP vs openMaMMUT on DataComp-1.4B, cosine schedule, 14 CLIP and
15 MaMMUT ViT scales x 11 samples-seen scales (1.28M ... 3.07B), a small lr x global-batch sweep per scale.

Meant for ``vlscale study launch`` on a cluster with DataComp-style webdataset shards (set ``datasets.*.overrides``
to your shard paths). Model scales and samples-seen scales are those of the paper's published tables
(../shared/data/laion_scaling_results.csv, actual samples: 3M -> 3.072M etc.); the sweep values per scale are a
subset of those its runs used (ade20k_segmentation_results.csv: global batch, lr, warm-up per scale), two to six
combinations per cell instead of the paper's full search.
"""

from __future__ import annotations

import ml_collections

CLIP = ["ViT-S-32", "ViT-M-32", "ViT-S-16", "ViT-S-14", "ViT-B-32", "ViT-M-16", "ViT-L-32", "ViT-B-16-text-plus",
        "ViT-B-14", "ViT-H-32", "ViT-L-16", "ViT-L-14", "ViT-H-16", "ViT-H-14"]
MAMMUT = ["mammut_" + m for m in ("ViT-S-32", "ViT-M-32", "ViT-S-16", "ViT-S-14", "ViT-B-32", "ViT-M-16", "ViT-M-14",
                                   "ViT-L-32", "ViT-B-14", "ViT-B-16", "ViT-H-32", "ViT-L-16", "ViT-L-14", "ViT-H-16",
                                   "ViT-H-14")]
SAMPLES = [1_280_000, 3_072_000, 6_400_000, 12_800_000, 30_720_000, 64_000_000, 128_000_000, 307_200_000,
           640_000_000, 1_280_000_000, 3_072_000_000]
# samples seen -> (global batch sizes, learning rates, warm-up steps), from the paper's runs at that scale.
SWEEP = {
    1_280_000: ([256, 512], [5e-4, 1e-3, 2e-3], [500]),
    3_072_000: ([512, 1024], [5e-4, 1e-3, 2e-3], [1500]),
    6_400_000: ([1024, 2048], [5e-4, 1e-3], [1500]),
    12_800_000: ([2048, 4096], [1e-3, 2e-3], [2000]),
    30_720_000: ([2048, 4096], [1e-3, 2e-3], [3000]),
    64_000_000: ([4096, 8192], [1e-3, 2e-3], [4000]),
    128_000_000: ([8192, 16384], [1e-3, 2e-3], [4000]),
    307_200_000: ([16384, 32768], [1e-3, 2e-3], [4000]),
    640_000_000: ([32768], [1e-3, 2e-3], [6000]),
    1_280_000_000: ([90624], [2e-3, 2.5e-3], [6000]),
    3_072_000_000: ([90624, 181248], [2e-3, 4e-3], [10000]),
}


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "paper_clip_mammut"
    c.description = "openCLIP vs openMaMMUT on DataComp-1.4B, cosine, the paper's model and samples-seen scales"
    c.models = ml_collections.ConfigDict({"clip": CLIP, "mammut": MAMMUT})
    c.samples_seen = SAMPLES
    c.max_samples_seen = ml_collections.ConfigDict()
    c.sweep = ml_collections.ConfigDict({"lr": [1e-3], "global_batch_size": [4096], "warmup": [2000]})
    c.sweep_per_samples = ml_collections.ConfigDict({
        str(s): {"global_batch_size": bs, "lr": lr, "warmup": w} for s, (bs, lr, w) in SWEEP.items()})
    c.sweep_per_model = ml_collections.ConfigDict()
    c.schedule = "cosine"
    c.cooldown_fraction = 0.0
    c.seed = 0
    c.keep_checkpoints = "final"
    c.replicates = ml_collections.ConfigDict({"count": 1, "models": [], "samples_seen": []})
    c.datasets = ml_collections.ConfigDict({
        "datacomp_1b": {"data": "webdataset", "overrides": {"data": {"shards": "/data/datacomp_1b/{00000..13999}.tar"}}},
    })
    c.train = ml_collections.ConfigDict({"dtype": "bfloat16", "remat": "block", "checkpoint_every": 1000,
                                         "log_every": 100})
    c.eval = ml_collections.ConfigDict({"suite": "paper"})
    c.fit = ml_collections.ConfigDict()
    c.fit.group_by = "model_type"
    c.fit.groups = ["clip", "mammut"]
    c.fit.benchmarks = ["imagenet1k/acc1", "mscoco_captions/image_retrieval_recall@5",
                        "mscoco_captions/text_retrieval_recall@5"]
    c.fit.form = "saturation_both"
    c.fit.frontier = "bins"
    c.fit.fit_fraction = None
    c.fit.fit_max_compute = 1e12  # the paper fits up to 1e12 GFLOPs and holds out the rest
    c.fit.predict = [2.14e12, 2.59e12]  # openCLIP / openMaMMUT ViT-L/14 at 12.8B samples
    c.fit.bootstrap = 1000
    c.fit.level = 0.95
    # One 8-GPU H100 node at about 40% of its bf16 peak per run; compile and eval per checkpoint on the same node.
    c.estimate = ml_collections.ConfigDict({"train_gflops_per_s": 3.0e6, "compile_s": 120.0, "eval_s": 300.0})
    return c
