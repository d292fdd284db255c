"""TFDS datasets prepared locally (``tfds.data_source``) as image-caption records.

Captions come from a text feature (``caption_key``, e.g. COCO captions) or from a class label turned
into text with a template (``label_key`` + ``caption_template``, e.g. ImageNet: "a photo of a goldfish.").
Needs the dataset prepared in ``array_record`` format under ``data_dir`` (no download at run time).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlscale.errors import UserError


def _lookup(example: dict, key: str):
    """``a/b`` reaches into nested features (e.g. ``captions/text``)."""
    value: Any = example
    for part in key.split("/"):
        value = value[part]
    return value


class TfdsCaptionSource:
    """Random-access source over a prepared TFDS split: ``{"image": uint8 array, "caption": str, "__key__"}``."""

    def __init__(self, name: str, data_dir: str | None = None, split: str = "train", image_key: str = "image",
                 caption_key: str | None = None, label_key: str | None = "label",
                 caption_template: str = "a photo of a {}."):
        import tensorflow_datasets as tfds

        if not name:
            raise UserError("data.source is 'tfds' but data.tfds.name is empty; name a locally prepared dataset")
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            self._source = builder.as_data_source(split=split)
        except Exception as e:  # tfds raises many types for "not prepared"
            raise UserError(
                f"TFDS dataset {name!r} split {split!r} is not readable in data_dir {data_dir!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); prepare it there in array_record format first"
            ) from None
        self.name, self.split = name, split
        self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
        self.caption_template = caption_template
        self._classnames = None
        if caption_key is None:
            feature = builder.info.features[label_key] if label_key else None
            names = getattr(feature, "names", None)
            if not names:
                raise UserError(f"TFDS dataset {name!r}: set data.tfds.caption_key to a text feature or "
                                "data.tfds.label_key to a ClassLabel feature")
            self._classnames = [n.replace("_", " ") for n in names]

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self._source[int(index)]
        if self._classnames is not None:
            caption = self.caption_template.format(self._classnames[int(_lookup(ex, self.label_key))])
        else:
            caption = _lookup(ex, self.caption_key)
            if isinstance(caption, np.ndarray):  # several captions per image: take the first
                caption = caption.reshape(-1)[0] if caption.size else None
        return {"image": np.asarray(_lookup(ex, self.image_key)), "caption": caption, "__key__": f"{self.split}/{index}",
                "__url__": f"tfds:{self.name}"}

    def __repr__(self) -> str:
        return f"TfdsCaptionSource({self.name!r}, split={self.split!r}, n={len(self)})"
