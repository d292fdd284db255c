"""The smallest dataset comparison (docs/study.md runs it verbatim in a test): CLIP-XS trained on the synthetic
shapes and on a variant whose captions name the colour only half the time, 256 samples each, compared per
pretrain dataset. Two runs, one compiled train step; its fits have few points (see ``micro_shapes``)."""

from __future__ import annotations

from vlscale.configs.study import micro_shapes


def get_config():
    c = micro_shapes.get_config()
    c.name = "micro_datasets"
    c.description = "CLIP-XS on synthetic shapes vs the same with colour named in half the captions, 256 samples"
    c.models = {"clip": ["shapes-clip-XS"]}
    c.datasets = {"synth": {"data": "synth", "overrides": {}},
                  "synth_noisy": {"data": "synth",
                                  "overrides": {"data": {"synth": {"knobs": {"p_mention_colour": 0.5}}}}}}
    c.fit.group_by = "pretrain_dataset"
    c.fit.groups = ["synth", "synth_noisy"]
    return c
