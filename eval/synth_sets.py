"""The synthetic evaluation sets (``synth:<task>``, ``synth:retrieval``), drawn from a run's own generator knobs.

One object per set and size, so its preprocessed pixels are cached across the checkpoints of a study.
"""

from __future__ import annotations

import functools

from vlscale.data.synth_tasks import ZEROSHOT_TASKS
from vlscale.errors import UserError
from vlscale.eval.image_sets import ClassificationSet, RetrievalSet, from_pixels
from vlscale.eval.prompts import synth_prompts

DEFAULT_SYNTH_EXAMPLES = 1000  # per zero-shot task, and images for synth:retrieval


def synth_config(knobs: dict | None = None):
    """The ``SynthConfig`` of a training run's ``data.synth.knobs`` (so a run is scored on its own distribution)."""
    from vlscale.data import synth_scene

    return synth_scene.SynthConfig.from_dict(dict(knobs or {}))


@functools.lru_cache(maxsize=8)
def _synth_tasks(cfg, n: int, seed: int):
    from vlscale.data import synth_eval_sets

    return synth_eval_sets.make_zeroshot_tasks(cfg, n, seed)


@functools.lru_cache(maxsize=4)
def _synth_retrieval(cfg, n: int, seed: int):
    from vlscale.data import synth_eval_sets

    return synth_eval_sets.make_retrieval_split(cfg, n, seed)


_SYNTH_SETS: dict = {}


def synth_dataset(task: str, num_examples: int | None = None, seed: int = 0, knobs: dict | None = None):
    cfg = synth_config(knobs)
    n = int(num_examples or DEFAULT_SYNTH_EXAMPLES)
    if n < 1:
        raise UserError(f"--num-examples {n}: need at least one example")
    key = (task, cfg, n, seed)
    if key in _SYNTH_SETS:  # one object per set, so its preprocessed pixels are cached across checkpoints
        return _SYNTH_SETS[key]
    spec = f"synth:{task}"
    if task == "retrieval":
        images, captions = _synth_retrieval(cfg, n, seed)
        ds = from_pixels(RetrievalSet, "synth_retrieval", spec, images, captions=captions)
    elif task in ZEROSHOT_TASKS:
        t = _synth_tasks(cfg, n, seed)[task]
        prompts = synth_prompts(task, cfg)
        ds = from_pixels(ClassificationSet, f"synth_{task}", spec, t.images, labels=t.labels, prompts=prompts,
                          num_classes=len(prompts.classnames))
    else:
        raise UserError(f"unknown synthetic dataset synth:{task}; choose one of "
                        f"{', '.join('synth:' + t for t in ZEROSHOT_TASKS + ('retrieval',))}")
    _SYNTH_SETS[key] = ds
    return ds
