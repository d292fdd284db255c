"""Evaluation sets from locally prepared TFDS classification splits (``tfds:NAME[:split]``); never downloads."""

from __future__ import annotations

import os

import numpy as np

from vlscale.errors import UserError
from vlscale.eval import image_cache
from vlscale.eval.image_sets import CANONICAL_NAMES, ClassificationSet
from vlscale.eval.imagenet_layouts import WNID as _WNID
from vlscale.eval.prompts import (IMAGENET_SUBSETS, Prompts, imagenet_classnames, imagenet_subset_indices,
                                  openai_templates)


def tfds_dataset(spec_body: str, data_dir: str | None, name: str | None = None,
                 split: str | None = None) -> ClassificationSet:
    """A locally prepared TFDS classification split (array_record format); never downloads.

    The split is the spec's (``tfds:NAME:split``), else ``split`` (``--split``), else validation / test."""
    ds_name, _, spec_split = spec_body.partition(":")
    if spec_split and split and spec_split != split:
        raise UserError(f"tfds:{spec_body} names split {spec_split!r} but --split {split} was given; give one")
    split = spec_split or split
    import tensorflow_datasets as tfds

    how = (f"prepare it once with `tfds build {ds_name} --data_dir DIR --file_format array_record` (ImageNet: put "
           "the archives in DIR/downloads/manual first; a dataset of your own: `tfds build path/to/its/builder` with "
           "the same flags), then pass --data-dir DIR")
    try:
        builder = tfds.builder(ds_name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:  # not in TFDS's catalog, and not prepared in data_dir either
        raise UserError(f"tfds:{ds_name} is not a TFDS catalog dataset and is not prepared in --data-dir "
                        f"{data_dir or '(TFDS default)'}; {how}") from None
    except Exception as e:
        raise UserError(f"tfds:{ds_name}: unknown TFDS dataset ({str(e).splitlines()[0] if str(e) else e})") from None
    if not builder.is_prepared():
        raise UserError(f"tfds:{ds_name} is not prepared in --data-dir {data_dir or '(TFDS default)'}; {how}")
    splits = list(builder.info.splits)
    split = split or ("validation" if "validation" in splits else "test" if "test" in splits else "")
    if split not in splits:
        raise UserError(f"tfds:{ds_name}: no split {split!r}; it has {', '.join(splits)}")
    try:
        # Images stay encoded: PIL decodes them (open_clip's path), and reading a record never decodes twice.
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:
        raise UserError(f"tfds:{ds_name}:{split} cannot be read randomly ({type(e).__name__}); prepare it with "
                        "--file_format array_record") from None
    feature = builder.info.features["label"] if "label" in builder.info.features else None
    names = list(getattr(feature, "names", []) or [])
    if feature is None or not names:
        raise UserError(f"tfds:{ds_name}: has no ClassLabel feature 'label'; zero-shot classification needs one")
    canonical = CANONICAL_NAMES.get(ds_name.split("/")[0])
    to_subset = None  # ImageNet-1k label -> label of a 200-class subset (-1: not one of its classes)
    if all(_WNID.match(n) for n in names):  # ImageNet-style WordNet ids: the shipped readable names
        if len(names) != 1000:
            raise UserError(f"tfds:{ds_name}: its {len(names)} labels are WordNet ids; pass --classnames FILE")
        names = imagenet_classnames()
        if canonical in IMAGENET_SUBSETS:
            # TFDS labels ImageNet-A/-R in ImageNet-1k's label space; the benchmark classifies among its 200 classes.
            subset = imagenet_subset_indices(canonical)
            to_subset = np.full(1000, -1, np.int64)
            to_subset[subset] = np.arange(len(subset))
            names = [names[i] for i in subset]
    else:
        names = [n.replace("_", " ") for n in names]
    prompts = Prompts(tuple(names), tuple(openai_templates()), source=f"tfds:{ds_name}")
    n = len(source)
    if n == 0:
        raise UserError(f"tfds:{ds_name}:{split} is empty")

    def read(i):
        ex = source[i]
        label = int(ex["label"])
        return ex["image"], int(to_subset[label]) if to_subset is not None else label

    return ClassificationSet(name=name or canonical or ds_name.replace("/", "_"), spec=f"tfds:{spec_body}",
                             num_images=n, read=read, labels=None, prompts=prompts, num_classes=len(names),
                             source=_source(builder, f"tfds:{ds_name}", split))


def _source(builder, spec: str, split: str) -> str | None:
    """The prepared dataset's files (its version folder: every split's records and its metadata), stamped; None
    when there is no local folder to stamp."""
    folder = getattr(builder, "data_dir", None)
    if folder is None or "://" in os.fspath(folder):
        return None
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    return image_cache.source_of_files(spec, [os.path.join(folder, f) for f in names], split=split)
