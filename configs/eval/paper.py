"""The paper's suite: ImageNet-1k zero-shot, MS-COCO (Karpathy test) retrieval, and the ImageNet distribution
shifts where they are prepared (skipped with a note otherwise); ImageNet-A and -R are scored among their own 200
classes (the shipped subsets of ImageNet-1k, ``vlscale.eval.prompts.imagenet_subset_indices``).

Paths come from the arg string, e.g. ``paper:data_dir=/data/tfds,coco=/data/coco`` with
``coco/dataset_coco.json`` and the images under ``coco/`` (see docs/eval.md for preparing both).
"""

import os

import ml_collections

SHIFTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def _args(arg):
    out = {}
    for part in (arg or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def get_config(arg=None):
    a = _args(arg)
    data_dir = a.get("data_dir", os.environ.get("TFDS_DATA_DIR", ""))
    coco = a.get("coco", os.environ.get("VLSCALE_COCO_DIR", ""))
    c = ml_collections.ConfigDict()
    c.name = "paper"
    tasks = [{"task": "zeroshot", "dataset": "tfds:imagenet2012:validation", "data_dir": data_dir}]
    tasks.append({"task": "retrieval", "dataset": f"karpathy:{os.path.join(coco, 'dataset_coco.json')}:{coco}",
                  "split": "test"})
    for name in SHIFTS:
        tasks.append({"task": "zeroshot", "dataset": f"tfds:{name}", "data_dir": data_dir, "optional": True})
    c.tasks = tasks
    return c
