"""Evaluation datasets from specs, parsed and dispatched: ``synth:<task>``, ``synth:retrieval``, ``folder:DIR``,
``tfds:NAME[:split]``, ``wds:SHARDS`` and ``karpathy:JSON:IMAGEDIR``.

Each kind has its module: ``synth_sets`` (the synthetic sets), ``file_sets`` (an image folder per class,
Karpathy's caption JSON), ``tfds_sets`` (prepared TFDS splits), ``wds_sets`` (webdataset shards); ``image_sets``
holds what they return.

``name`` is the ``downstream_dataset`` written to the results table: the paper's name where the data is one of the
paper's benchmarks (``imagenet1k``, ``mscoco_captions``, ...), ``synth_<task>`` for the synthetic sets, else
``--name`` or the folder's basename / the JSON file's stem / the dataset's name.
"""

from __future__ import annotations

from pathlib import Path

from vlscale.errors import UserError
from vlscale.eval.file_sets import folder_dataset, karpathy_dataset
from vlscale.eval.image_sets import CANONICAL_NAMES, ClassificationSet, RetrievalSet
from vlscale.eval.synth_sets import synth_dataset
from vlscale.eval.tfds_sets import tfds_dataset
from vlscale.eval.wds_sets import wds_base_name, wds_dataset

KINDS = ("synth", "folder", "tfds", "wds", "karpathy")


def dataset_name(spec: str, name: str | None = None) -> str:
    """The ``downstream_dataset`` a spec is written under, without opening it."""
    if name:
        return name
    kind, _, body = spec.partition(":")
    if kind == "synth":
        return f"synth_{body}"
    if kind == "folder":
        return Path(body).resolve().name
    if kind == "tfds":
        ds = body.partition(":")[0]
        return CANONICAL_NAMES.get(ds.split("/")[0], ds.replace("/", "_"))
    if kind == "wds":
        return wds_base_name(body)
    if kind == "karpathy":
        stem = Path(body.partition(":")[0]).stem
        return CANONICAL_NAMES.get(stem, stem)
    return spec


def open_dataset(spec: str, task: str, *, name: str | None = None, classnames: list[str] | None = None,
                 data_dir: str | None = None, split: str | None = None, num_examples: int | None = None,
                 seed: int = 0, synth_knobs: dict | None = None):
    """The dataset a spec names, for ``task`` ("zeroshot"/"generative" need classes, "retrieval" captions)."""
    kind, sep, body = spec.partition(":")
    if not sep or kind not in KINDS or not body:
        raise UserError(f"dataset spec {spec!r}: write one of synth:<task>, folder:DIR, tfds:NAME[:split], "
                        "wds:SHARDS, karpathy:JSON:IMAGEDIR")
    want_retrieval = task == "retrieval"
    if kind == "synth":
        ds = synth_dataset(body, num_examples, seed, synth_knobs)
        if name:
            ds = _renamed(ds, name)
    elif kind == "folder":
        ds = folder_dataset(body, classnames, name)
    elif kind == "tfds":
        ds = tfds_dataset(body, data_dir, name, split)
    elif kind == "wds":
        ds = wds_dataset(body, task, name)
    else:
        ds = karpathy_dataset(body, split, name)
    if want_retrieval and not isinstance(ds, RetrievalSet):
        raise UserError(f"--task retrieval needs images with captions; {spec} is a classification set "
                        "(use synth:retrieval, karpathy:JSON:IMAGEDIR or wds: shards with captions)")
    if not want_retrieval and not isinstance(ds, ClassificationSet):
        raise UserError(f"--task {task} needs labelled images; {spec} is a retrieval set")
    if ds.num_images == 0:
        raise UserError(f"dataset {spec} is empty")
    return ds


def _renamed(ds, name):
    import copy

    out = copy.copy(ds)
    out.name = name
    return out
