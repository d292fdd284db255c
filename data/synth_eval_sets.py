"""The synthetic evaluation sets: class-balanced zero-shot tasks and a retrieval split, built, written and read.

Class names and prompt templates are data files shipped with the generator
(``data/assets/synth_<task>_{classnames,templates}.txt``, read by ``vlscale.data.synth_tasks``). A class-names
file lists the names of the generator's whole vocabulary in its order (COLOURS, SHAPES, counts 1..9, colours x
shapes colour-major); a run's config picks its subset (``task_classnames``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from vlscale.data.synth import generate
from vlscale.data.synth_scene import COLOURS, COUNT_WORDS, SHAPES, SynthConfig
from vlscale.data.synth_tasks import ZEROSHOT_TASKS
from vlscale.data.synth_tasks import task_lists as _task_lists

COLOUR_TEMPLATES = _task_lists("colour")[1]
SHAPE_TEMPLATES = _task_lists("shape")[1]
COUNT_TEMPLATES = _task_lists("count")[1]
OBJECT_TEMPLATES = _task_lists("colour_shape")[1]


def _fill(template: str, classname: str) -> str:
    return template.replace("{c}", classname) if "{c}" in template else template.replace("{}", classname)


@dataclasses.dataclass
class ZeroShotTask:
    """A CLIP-style classification task: images, integer labels, class names and prompt templates."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]

    def prompts(self, label: int) -> list[str]:
        return [_fill(t, self.classnames[label]) for t in self.templates]


def task_classnames(cfg: SynthConfig) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """``{task: (class names in label order, templates)}`` for ``cfg``'s colours, shapes and counts, from the files."""
    lists = {t: _task_lists(t) for t in ZEROSHOT_TASKS}
    vocab = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(range(1, len(COUNT_WORDS))),
             "colour_shape": [(c, s) for c in COLOURS for s in SHAPES]}
    for t, keys in vocab.items():
        if len(lists[t][0]) != len(keys):
            raise ValueError(f"synth_{t}_classnames.txt has {len(lists[t][0])} names; the generator has {len(keys)}")
    name = {t: dict(zip(vocab[t], lists[t][0])) for t in ZEROSHOT_TASKS}
    labels = {"colour": list(cfg.colours), "shape": list(cfg.shapes), "count": list(range(1, cfg.max_count + 1)),
              "colour_shape": [(c, s) for c in cfg.colours for s in cfg.shapes]}
    return {t: ([name[t][k] for k in labels[t]], lists[t][1]) for t in ZEROSHOT_TASKS}


def make_zeroshot_tasks(cfg: SynthConfig, num_per_task: int, seed: int = 0,
                        tasks: Sequence[str] = ("colour", "shape", "count", "colour_shape")) -> dict[str, ZeroShotTask]:
    """Class-balanced eval sets (label = i mod classes), drawn without distractors so labels are unambiguous.

    They use their own split of the stream, disjoint from the training shards for the same seed.
    """
    names = task_classnames(cfg)
    out = {}
    for t_i, name in enumerate(tasks):
        classnames, templates = names[name]
        k = len(classnames)
        images, labels = [], []
        for i in range(num_per_task):
            label = i % k
            if name == "colour_shape":
                fixed = {"colour": label // len(cfg.shapes), "shape": label % len(cfg.shapes)}
            else:
                fixed = {name: label}
            s = generate(cfg, seed, "zeroshot", t_i * 10**9 + i, distractors=False, **fixed)
            images.append(s["image"])
            labels.append(label)
        out[name] = ZeroShotTask(name, classnames, list(templates), np.stack(images), np.asarray(labels, np.int32))
    return out


def make_retrieval_split(cfg: SynthConfig, num_images: int, seed: int = 0, captions_per_image: int = 5):
    """Images with ``captions_per_image`` independent captions each: (uint8 [N,H,W,3], list of N lists)."""
    samples = [generate(cfg, seed, "retrieval", i, num_captions=captions_per_image) for i in range(num_images)]
    return np.stack([s["image"] for s in samples]), [s["captions"] for s in samples]


def write_eval_sets(out_dir: str | os.PathLike, cfg: SynthConfig, num_per_task: int, num_retrieval: int,
                    seed: int = 0) -> str:
    """Writes ``zeroshot/{task}.npz`` (images, labels), ``zeroshot/retrieval.npz`` and ``zeroshot/tasks.json``."""
    folder = os.path.join(str(out_dir), "zeroshot")
    os.makedirs(folder, exist_ok=True)
    meta: dict[str, Any] = {"seed": seed, "config": cfg.to_dict(), "tasks": {}}
    for name, task in make_zeroshot_tasks(cfg, num_per_task, seed).items():
        np.savez_compressed(os.path.join(folder, f"{name}.npz"), images=task.images, labels=task.labels)
        meta["tasks"][name] = {"classnames": task.classnames, "templates": task.templates}
    images, captions = make_retrieval_split(cfg, num_retrieval, seed)
    np.savez_compressed(os.path.join(folder, "retrieval.npz"), images=images)
    meta["retrieval"] = {"captions": captions}
    with open(os.path.join(folder, "tasks.json"), "w") as f:
        json.dump(meta, f)
    return folder


def load_eval_sets(folder: str | os.PathLike) -> tuple[dict[str, ZeroShotTask], tuple[np.ndarray, list[list[str]]]]:
    """Reads what ``write_eval_sets`` wrote: (tasks by name, (retrieval images, captions))."""
    folder = str(folder)
    with open(os.path.join(folder, "tasks.json")) as f:
        meta = json.load(f)
    tasks = {}
    for name, m in meta["tasks"].items():
        z = np.load(os.path.join(folder, f"{name}.npz"))
        tasks[name] = ZeroShotTask(name, m["classnames"], m["templates"], z["images"], z["labels"])
    images = np.load(os.path.join(folder, "retrieval.npz"))["images"]
    return tasks, (images, meta["retrieval"]["captions"])

