"""What an evaluation set is: images read by index (``ImageSet``), with labels (``ClassificationSet``) or captions
(``RetrievalSet``), preprocessed with the model's eval transform and batched for ``batches.run_batched``.

Images are read one by one (``read(i)``: a PIL image, encoded bytes, a uint8 array, or an exception for an
undecodable file, which the loader counts and skips). In-memory sets keep their preprocessed pixels per image size,
and sets read from files keep them in ``image_cache`` (per process, optionally on disk), so evaluating many
checkpoints decodes and resizes each image once. ``name`` is the ``downstream_dataset`` written to the results
table: the paper's name (``CANONICAL_NAMES``) where the data is one of the paper's benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vlscale.eval import batches
from vlscale.eval.prompts import Prompts

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
    """Images read by index; ``name`` is the canonical downstream dataset name.

    ``source`` identifies what decides the images (the spec and the stamps of the files they come from,
    ``image_cache.source_of_files``): sets that have one keep their decoded pixels across checkpoints
    (``vlscale.eval.image_cache``); None: decoded again for every evaluation.
    """

    name: str
    spec: str
    num_images: int
    read: Callable[[int], Any]
    pixels: np.ndarray | None = None  # uint8 [N, H, W, 3] for in-memory sets
    source: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def preprocessed(self, i: int, image_size: int) -> np.ndarray | None:
        """The eval-transformed float32 image i, or None when it cannot be decoded."""
        from vlscale.data.normalize import normalize_host

        px = self._decode(i, image_size)[0]
        return None if px is None else normalize_host(px)

    def _decode(self, i: int, image_size: int) -> tuple[np.ndarray | None, int | None]:
        """(uint8 [S, S, 3] after the eval transform's resize and crop, or None if undecodable; the label if
        ``read`` returns one with the image). ``normalize_host`` of it is ``eval_transform``'s output bit for bit."""
        from PIL import Image

        from vlscale.models.transforms import eval_resize_crop, load_image

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
            return np.asarray(eval_resize_crop(img, image_size).convert("RGB"), np.uint8), label
        except Exception:  # any decode failure of one file: counted, not fatal (the rule)
            return None, label

    def _all_pixels(self, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S, 3] of an in-memory set (zeros where undecodable) and which images decoded."""
        if image_size not in self._cache:
            imgs = [self._decode(i, image_size)[0] for i in range(self.num_images)]
            ok = np.array([x is not None for x in imgs])
            blank = np.zeros((image_size, image_size, 3), np.uint8)
            self._cache[image_size] = (np.stack([x if x is not None else blank for x in imgs]), ok)
        return self._cache[image_size]

    def loader(self, image_size: int) -> Callable[[np.ndarray], dict]:
        """``load(indices)`` for ``batches.run_batched``: ``{"image", "valid"}`` (+ ``"label"`` for classification).

        Images are float32, normalised; rows that are padding or undecodable are zeros and not ``valid``."""
        from vlscale.data.normalize import normalize_host
        from vlscale.eval import image_cache

        labels = getattr(self, "labels", None)
        if self.pixels is not None and labels is None and isinstance(self, ClassificationSet):
            raise ValueError("in-memory classification sets carry their labels")
        cached = image_cache.lookup(self.source, self.num_images, image_size) if self.pixels is None else None
        needed = {}  # batch size -> the rows this host loads over a whole pass (when the cached set is complete)

        def load(idx: np.ndarray) -> dict:
            real = idx >= 0
            rows = idx[real]
            pixels = np.zeros((len(idx), image_size, image_size, 3), np.uint8)
            valid = np.zeros(len(idx), bool)
            lab = np.full(len(idx), -1, np.int32)
            if self.pixels is not None:
                allpix, allok = self._all_pixels(image_size)
                pixels[real], valid[real] = allpix[rows], allok[rows]
            else:
                hit = cached.filled[rows] if cached is not None else np.zeros(len(rows), bool)
                todo = rows[~hit]
                decoded = batches.map_examples(lambda i: self._decode(i, image_size), todo)
                if cached is not None:
                    cached.store(todo, decoded)
                got_px = np.zeros((len(rows), image_size, image_size, 3), np.uint8)
                got_ok = np.zeros(len(rows), bool)
                got_lab = np.full(len(rows), -1, np.int32)
                if hit.any():
                    got_px[hit], got_ok[hit] = cached.images[rows[hit]], cached.ok[rows[hit]]
                    got_lab[hit] = cached.labels[rows[hit]]
                for k, (px, label) in zip(np.flatnonzero(~hit), decoded):
                    if px is not None:
                        got_px[k], got_ok[k] = px, True
                    if label is not None:
                        got_lab[k] = label
                pixels[real], valid[real], lab[real] = got_px, got_ok, got_lab
                if cached is not None:
                    if len(idx) not in needed:
                        needed[len(idx)] = _host_rows(len(idx), self.num_images)
                    cached.complete(needed[len(idx)])
            images = normalize_host(pixels)
            images[~valid] = 0.0
            out = {"image": images, "valid": valid}
            if isinstance(self, ClassificationSet):
                if labels is not None:
                    lab = np.full(len(idx), -1, np.int32)
                    lab[real] = labels[rows]
                else:  # labels arrive with the images
                    valid &= lab >= 0
                out["label"] = lab
            return out

        return load


def _host_rows(per_host: int, n: int) -> np.ndarray:
    """Every dataset row this host loads in a pass of ``batches.run_batched`` with ``per_host`` rows per batch."""
    import jax

    batch_size = per_host * jax.process_count()
    idx = np.concatenate([batches.host_indices(b, batch_size, n) for b in range(batches.num_batches(n, batch_size))])
    return idx[idx >= 0]


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


def from_pixels(cls, name, spec, pixels, **kw):
    """An in-memory set of ``cls`` over uint8 ``pixels`` [N, H, W, 3]."""
    from PIL import Image

    return cls(name=name, spec=spec, num_images=len(pixels), read=lambda i: Image.fromarray(pixels[i]),
               pixels=pixels, **kw)


def read_image_file(path: str):
    """An image file as a PIL image (``models.transforms.load_image``)."""
    from vlscale.models.transforms import load_image

    return load_image(path)
