"""Evaluation datasets from specs: ``synth:<task>``, ``synth:retrieval``, ``folder:DIR``, ``tfds:NAME[:split]``,
``wds:SHARDS`` and ``karpathy:JSON:IMAGEDIR``.

A classification set has images, integer labels and (usually) its own class names; a retrieval set has images
and several captions per image. Images are read one by one (``read(i)``: a PIL image, a uint8 array, or an
exception for an undecodable file, which the loader counts and skips) and preprocessed with the model's eval
transform (``vlscale.models.transforms.eval_transform``). The in-memory synthetic sets keep their preprocessed
pixels per image size, so evaluating many checkpoints renders and resizes them once.

``name`` is the ``downstream_dataset`` written to the results table: the paper's name where the data is one of the
paper's benchmarks (``imagenet1k``, ``mscoco_captions``, ...), ``synth_<task>`` for the synthetic sets, else
``--name`` or the folder's basename / the JSON file's stem / the dataset's name.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlscale.errors import UserError
from vlscale.eval import batches, imagenet_layouts
from vlscale.eval.imagenet_layouts import WNID as _WNID
from vlscale.eval.prompts import (IMAGENET_SUBSETS, Prompts, imagenet_classnames, imagenet_subset_indices,
                                  openai_templates, synth_prompts)

SYNTH_TASKS = ("colour", "shape", "count", "colour_shape")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_SYNTH_EXAMPLES = 1000  # per zero-shot task, and images for synth:retrieval
# Paper (CLIP_benchmark) names of the datasets a spec can point at.
CANONICAL_NAMES = {
    "imagenet2012": "imagenet1k",
    "imagenet1k": "imagenet1k",
    "imagenet_v2": "imagenetv2",
    "imagenet_sketch": "imagenet_sketch",
    "imagenet_a": "imagenet-a",
    "imagenet_r": "imagenet-r",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "coco_captions": "mscoco_captions",
    "dataset_coco": "mscoco_captions",
    "dataset_flickr30k": "flickr30k",
    "dataset_flickr8k": "flickr8k",
}


class CorruptImage(Exception):
    pass


@dataclass
class ImageSet:
    """Images read by index; ``name`` is the canonical downstream dataset name."""

    name: str
    spec: str
    num_images: int
    read: Callable[[int], Any]
    pixels: np.ndarray | None = None  # uint8 [N, H, W, 3] for in-memory sets
    _cache: dict = field(default_factory=dict, repr=False)

    def preprocessed(self, i: int, image_size: int) -> np.ndarray | None:
        """The eval-transformed float32 image i, or None when it cannot be decoded."""
        return self._example(i, image_size)[0]

    def _example(self, i: int, image_size: int) -> tuple[np.ndarray | None, int | None]:
        """(eval-transformed image or None if undecodable, label if ``read`` returns one with the image)."""
        from PIL import Image

        from vlscale.models.transforms import eval_transform, load_image

        label = None
        try:
            img = self.read(i)
            if isinstance(img, tuple):  # (image, label) from sources that store both in one record
                img, label = img
            if isinstance(img, (bytes, bytearray, memoryview)):
                img = load_image(img)
            if isinstance(img, np.ndarray):
                if img.ndim == 2:
                    img = np.repeat(img[..., None], 3, axis=-1)
                img = Image.fromarray(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
            return eval_transform(img, size=image_size), label
        except Exception:  # any decode failure of one file: counted, not fatal (the rule)
            return None, label

    def _all_pixels(self, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        if image_size not in self._cache:
            imgs = [self.preprocessed(i, image_size) for i in range(self.num_images)]
            ok = np.array([x is not None for x in imgs])
            blank = np.zeros((image_size, image_size, 3), np.float32)
            self._cache[image_size] = (np.stack([x if x is not None else blank for x in imgs]), ok)
        return self._cache[image_size]

    def loader(self, image_size: int) -> Callable[[np.ndarray], dict]:
        """``load(indices)`` for ``batches.run_batched``: ``{"image", "valid"}`` (+ ``"label"`` for classification)."""
        labels = getattr(self, "labels", None)
        if self.pixels is not None and labels is None and isinstance(self, ClassificationSet):
            raise ValueError("in-memory classification sets carry their labels")

        def load(idx: np.ndarray) -> dict:
            real = idx >= 0
            if self.pixels is not None:
                allpix, allok = self._all_pixels(image_size)
                images = np.zeros((len(idx), image_size, image_size, 3), np.float32)
                images[real] = allpix[idx[real]]
                valid = np.zeros(len(idx), bool)
                valid[real] = allok[idx[real]]
            else:
                got = batches.map_examples(lambda i: self._example(i, image_size), idx)
                valid = np.array([g is not None and g[0] is not None for g in got])
                images = np.zeros((len(idx), image_size, image_size, 3), np.float32)
                for r, g in enumerate(got):
                    if g is not None and g[0] is not None:
                        images[r] = g[0]
            out = {"image": images, "valid": valid}
            if isinstance(self, ClassificationSet):
                lab = np.full(len(idx), -1, np.int32)
                if labels is not None:
                    lab[real] = labels[idx[real]]
                else:  # labels arrive with the images
                    lab[:] = [g[1] if g is not None and g[1] is not None else -1 for g in got]
                    valid &= lab >= 0
                out["label"] = lab
            return out

        return load


@dataclass
class ClassificationSet(ImageSet):
    labels: np.ndarray | None = None  # int32 [N]; None: each record carries its label (TFDS)
    prompts: Prompts | None = None  # the dataset's own class names/templates, if it has them
    num_classes: int | None = None


@dataclass
class RetrievalSet(ImageSet):
    captions: list[list[str]] = None

    @property
    def num_texts(self) -> int:
        return sum(len(c) for c in self.captions)


def _from_pixels(cls, name, spec, pixels, **kw):
    from PIL import Image

    return cls(name=name, spec=spec, num_images=len(pixels), read=lambda i: Image.fromarray(pixels[i]),
               pixels=pixels, **kw)


# --- synthetic ---------------------------------------------------------------------------------------------------


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
        ds = _from_pixels(RetrievalSet, "synth_retrieval", spec, images, captions=captions)
    elif task in SYNTH_TASKS:
        t = _synth_tasks(cfg, n, seed)[task]
        prompts = synth_prompts(task, cfg)
        ds = _from_pixels(ClassificationSet, f"synth_{task}", spec, t.images, labels=t.labels, prompts=prompts,
                          num_classes=len(prompts.classnames))
    else:
        raise UserError(f"unknown synthetic dataset synth:{task}; choose one of "
                        f"{', '.join('synth:' + t for t in SYNTH_TASKS + ('retrieval',))}")
    _SYNTH_SETS[key] = ds
    return ds


# --- files -------------------------------------------------------------------------------------------------------


def _read_file(path: str):
    from vlscale.models.transforms import load_image

    return load_image(path)


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
    return ClassificationSet(name=ds_name, spec=f"folder:{root}", num_images=len(paths),
                             read=lambda i: _read_file(paths[i]), labels=np.asarray(labels, np.int32),
                             prompts=prompts, num_classes=len(names))


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
                             num_images=n, read=read, labels=None, prompts=prompts, num_classes=len(names))


def _wds_records(spec: str) -> list[dict]:
    from vlscale.data import shards, webdataset

    records = []
    for path in shards.expand_shards(spec):
        for rec in webdataset.iter_tar_samples(path):
            if webdataset.BAD_KEY not in rec:
                records.append(rec)
    return records


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
    records = _wds_records(spec_body)
    if not records:
        raise UserError(f"wds:{spec_body}: the shards hold no samples")
    name = name or _wds_base(spec_body)
    read = lambda i: _wds_image(records[i])  # noqa: E731
    if task == "retrieval":
        captions = []
        for rec in records:
            caps = _json_field(rec, "captions")
            if caps is None and rec.get("txt") is not None:
                caps = [rec["txt"].decode("utf-8", "replace") if isinstance(rec["txt"], bytes) else rec["txt"]]
            if not caps:
                raise UserError(f"wds:{spec_body}: sample {rec['__key__']} has no captions (txt or json 'captions')")
            captions.append([str(c) for c in caps])
        return RetrievalSet(name=name, spec=f"wds:{spec_body}", num_images=len(records), read=read, captions=captions)
    labels = []
    for rec in records:
        label = rec.get("cls")
        label = int(label.decode() if isinstance(label, bytes) else label) if label is not None else _json_field(rec, "label")
        if label is None:
            raise UserError(f"wds:{spec_body}: sample {rec['__key__']} has no label (a cls field or json 'label')")
        labels.append(int(label))
    return ClassificationSet(name=name, spec=f"wds:{spec_body}", num_images=len(records), read=read,
                             labels=np.asarray(labels, np.int32), prompts=None, num_classes=None)


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
    return RetrievalSet(name=name or CANONICAL_NAMES.get(jp.stem, jp.stem), spec=f"karpathy:{spec_body}",
                        num_images=len(paths), read=lambda i: _read_file(paths[i]), captions=captions)


# --- specs -------------------------------------------------------------------------------------------------------

KINDS = ("synth", "folder", "tfds", "wds", "karpathy")


def _wds_base(body: str) -> str:
    """``/data/cifar10/{000..009}.tar`` -> cifar10; ``/data/coco-{0..9}.tar`` -> coco; a directory -> its name."""
    p = Path(body.split("::")[0])
    stem = re.split(r"[{*?\[]", p.name)[0]
    stem = (stem[:-4] if stem.endswith(".tar") else stem).rstrip("-_.")
    if p.suffix != ".tar" and "{" not in p.name and not set("*?[") & set(p.name):
        stem = p.name  # a directory of shards
    if not stem or stem.isdigit():
        stem = p.parent.name or "wds"
    return CANONICAL_NAMES.get(stem, stem)


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
        return _wds_base(body)
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
