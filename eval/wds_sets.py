"""Evaluation sets from webdataset shards held in memory (``wds:SHARDS``): a ``cls`` field or json ``label`` for
classification, ``txt`` or json ``captions`` for retrieval."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vlscale.errors import UserError
from vlscale.eval import image_cache
from vlscale.eval.image_sets import CANONICAL_NAMES, ClassificationSet, CorruptImage, RetrievalSet


def _wds_records(spec: str) -> tuple[list[dict], list[str]]:
    """The good samples of the shards, and the shards' paths."""
    from vlscale.data import shards, webdataset

    records, paths = [], [str(p) for p in shards.expand_shards(spec)]
    for path in paths:
        for rec in webdataset.iter_tar_samples(path):
            if webdataset.BAD_KEY not in rec:
                records.append(rec)
    return records, paths


def _wds_image(rec: dict):
    from vlscale.models.transforms import load_image

    for ext in ("jpg", "jpeg", "png", "webp"):
        if rec.get(ext):
            return load_image(rec[ext])
    raise CorruptImage("no image field")


def _json_field(rec: dict, key: str):
    if rec.get("json") is None:
        return None
    try:
        meta = json.loads(rec["json"])
    except ValueError:
        return None
    return meta.get(key) if isinstance(meta, dict) else None


def wds_dataset(spec_body: str, task: str, name: str | None = None):
    """Webdataset shards held in memory (eval-sized sets): a ``cls`` field or json ``label`` for classification,
    ``txt`` or json ``captions`` for retrieval."""
    records, paths = _wds_records(spec_body)
    if not records:
        raise UserError(f"wds:{spec_body}: the shards hold no samples")
    name = name or wds_base_name(spec_body)
    read = lambda i: _wds_image(records[i])  # noqa: E731
    source = image_cache.source_of_files(f"wds:{spec_body}", paths)  # the shards decide the images and their order
    if task == "retrieval":
        captions = []
        for rec in records:
            caps = _json_field(rec, "captions")
            if caps is None and rec.get("txt") is not None:
                caps = [rec["txt"].decode("utf-8", "replace") if isinstance(rec["txt"], bytes) else rec["txt"]]
            if not caps:
                raise UserError(f"wds:{spec_body}: sample {rec['__key__']} has no captions (txt or json 'captions')")
            captions.append([str(c) for c in caps])
        return RetrievalSet(name=name, spec=f"wds:{spec_body}", num_images=len(records), read=read, captions=captions,
                            source=source)
    labels = []
    for rec in records:
        label = rec.get("cls")
        label = int(label.decode() if isinstance(label, bytes) else label) if label is not None else _json_field(rec, "label")
        if label is None:
            raise UserError(f"wds:{spec_body}: sample {rec['__key__']} has no label (a cls field or json 'label')")
        labels.append(int(label))
    return ClassificationSet(name=name, spec=f"wds:{spec_body}", num_images=len(records), read=read,
                             labels=np.asarray(labels, np.int32), prompts=None, num_classes=None, source=source)


def wds_base_name(body: str) -> str:
    """``/data/cifar10/{000..009}.tar`` -> cifar10; ``/data/coco-{0..9}.tar`` -> coco; a directory -> its name."""
    p = Path(body.split("::")[0])
    stem = re.split(r"[{*?\[]", p.name)[0]
    stem = (stem[:-4] if stem.endswith(".tar") else stem).rstrip("-_.")
    if p.suffix != ".tar" and "{" not in p.name and not set("*?[") & set(p.name):
        stem = p.name  # a directory of shards
    if not stem or stem.isdigit():
        stem = p.parent.name or "wds"
    return CANONICAL_NAMES.get(stem, stem)
