"""Evaluation sets read from image files: an image folder per class (``folder:DIR``) and Karpathy's caption JSON
(``karpathy:JSON:IMAGEDIR``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlscale.errors import UserError
from vlscale.eval import image_cache, imagenet_layouts
from vlscale.eval.image_sets import CANONICAL_NAMES, ClassificationSet, RetrievalSet, read_image_file
from vlscale.eval.prompts import Prompts, openai_templates

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_dataset(root: str, classnames: list[str] | None = None, name: str | None = None) -> ClassificationSet:
    """``DIR/<class>/*.jpg``. A folder is the class whose name equals the folder's with ``_`` read as a space.

    With ``classnames`` the labels follow that list's order and every folder must match a name; otherwise the
    sorted folder names are the classes. Two ImageNet layouts are read as they unpack (``_imagenet_folders``):
    folders named by WordNet id (ImageNet-1k val, -Sketch, -A, -R) and by label index (ImageNet-V2), see
    ``imagenet_layouts``.
    """
    d = Path(root)
    if not d.is_dir():
        raise UserError(f"folder:{root}: not a directory")
    folders = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"folder:{root}: has no class sub-folders (expected DIR/<class>/<image>)")
    ds_name = name or d.resolve().name
    canonical = CANONICAL_NAMES.get(ds_name.replace("-", "_"), ds_name)
    by_id = imagenet_layouts.folder_classes(root, [f.name for f in folders], classnames, canonical)
    if by_id is not None:
        names, index = by_id
    else:
        names = [f.name.replace("_", " ") for f in folders] if classnames is None else list(classnames)
        index = {n: i for i, n in enumerate(names)}
        twice = {n for n in names if names.count(n) > 1}
        for f in folders:
            if {f.name.replace("_", " "), f.name} & twice:
                raise UserError(f"folder:{root}: sub-folder {f.name!r} matches a class name that --classnames "
                                "lists twice; a folder needs a unique name to match")
    paths, labels = [], []
    for f in folders:
        label = index.get(f.name) if by_id is not None else index.get(f.name.replace("_", " "), index.get(f.name))
        if label is None:
            raise UserError(f"folder:{root}: sub-folder {f.name!r} matches no class name in --classnames "
                            "(a folder matches the name equal to its own with '_' read as a space)")
        for p in sorted(f.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(p))
                labels.append(label)
    if not paths:
        raise UserError(f"folder:{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    prompts = Prompts(tuple(names), tuple(openai_templates()), source=f"folder:{root}")
    spec = f"folder:{root}"
    return ClassificationSet(name=ds_name, spec=spec, num_images=len(paths),
                             read=lambda i: read_image_file(paths[i]), labels=np.asarray(labels, np.int32),
                             prompts=prompts, num_classes=len(names),
                             source=image_cache.source_of_files(spec, paths))


def karpathy_dataset(spec_body: str, split: str | None = None, name: str | None = None) -> RetrievalSet:
    """Karpathy's ``dataset_coco.json`` layout: ``images[]`` with ``filepath``, ``filename``, ``split`` and
    ``sentences[].raw``; the ``test`` split unless ``split`` says otherwise."""
    json_path, sep, image_dir = spec_body.partition(":")
    if not sep:
        raise UserError(f"karpathy:{spec_body}: write karpathy:JSON:IMAGEDIR")
    jp, idir = Path(json_path), Path(image_dir)
    if not jp.is_file():
        raise UserError(f"karpathy: annotation file {jp} does not exist")
    if not idir.is_dir():
        raise UserError(f"karpathy: image folder {idir} does not exist")
    try:
        data = json.loads(jp.read_text(encoding="utf-8"))
        entries = data["images"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"karpathy: {jp} is not in Karpathy's layout (a JSON object with an 'images' list)") from None
    split = split or "test"
    chosen = [e for e in entries if e.get("split") == split]
    if not chosen:
        have = sorted({str(e.get("split")) for e in entries})
        raise UserError(f"karpathy: {jp} has no images in split {split!r} (splits: {', '.join(have)}); use --split")
    paths = [str(idir / e.get("filepath", "") / e["filename"]) for e in chosen]
    captions = [[s["raw"] for s in e.get("sentences", [])] for e in chosen]
    if any(not c for c in captions):
        raise UserError(f"karpathy: an image of {jp} has no sentences")
    spec = f"karpathy:{spec_body}"
    return RetrievalSet(name=name or CANONICAL_NAMES.get(jp.stem, jp.stem), spec=spec, num_images=len(paths),
                        read=lambda i: read_image_file(paths[i]), captions=captions,
                        source=image_cache.source_of_files(spec, paths))
