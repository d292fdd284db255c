"""What an evaluation set is: images read by index (``ImageSet``), with labels (``ClassificationSet``) or captions
(``RetrievalSet``), preprocessed with the model's eval transform and batched for ``batches.run_batched``.

Images are read one by one (``read(i)``: a PIL image, encoded bytes, a uint8 array, or an exception for an
undecodable file, which the loader counts and skips). In-memory sets keep their preprocessed pixels per image size,
so evaluating many checkpoints resizes them once. ``name`` is the ``downstream_dataset`` written to the results
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


def from_pixels(cls, name, spec, pixels, **kw):
    """An in-memory set of ``cls`` over uint8 ``pixels`` [N, H, W, 3]."""
    from PIL import Image

    return cls(name=name, spec=spec, num_images=len(pixels), read=lambda i: Image.fromarray(pixels[i]),
               pixels=pixels, **kw)


def read_image_file(path: str):
    """An image file as a PIL image (``models.transforms.load_image``)."""
    from vlscale.models.transforms import load_image

    return load_image(path)
