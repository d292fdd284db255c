"""The decode stage: records -> validated, transformed, tokenised samples; bad records are skipped and counted."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from vlscale.data import samples as samples_lib
from vlscale.data.normalize import IMAGE_DTYPES
from vlscale.errors import UserError


class DecodeIterDataset(grain.IterDataset):
    """Decodes, validates, transforms and tokenises records; skips bad ones and counts them.

    Each output element carries ``skipped``: an int32 vector (one slot per ``samples.BAD_REASONS``)
    of records skipped since the previous good one, so counts survive worker processes and batching.
    The training augmentation draws its randomness from (seed, records read, record key), which makes it
    reproducible on resume and different across workers.
    """

    def __init__(self, parent: grain.IterDataset, *, image_size: int, context_length: int, train: bool,
                 seed: int, train_scale=(0.9, 1.0), max_consecutive_bad: int = 1000,
                 warn_interval_s: float = 30.0, image_dtype: str = "float32"):
        super().__init__(parent)
        if image_dtype not in IMAGE_DTYPES:
            raise UserError(f"data.image_dtype {image_dtype!r} is not one of {IMAGE_DTYPES}")
        self.image_dtype = image_dtype
        self.image_size = image_size
        self.context_length = context_length
        self.train = train
        self.seed = seed
        self.train_scale = tuple(train_scale)
        self.max_consecutive_bad = max_consecutive_bad
        self.warn_interval_s = warn_interval_s

    def __iter__(self):
        return _DecodeIterator(self, self._parent.__iter__())

    def __str__(self) -> str:
        return f"DecodeIterDataset(image_size={self.image_size}, train={self.train})"


class SampleDecoder:
    """One record to one sample: ``{"image": [H,W,3], "text": int32 [ctx]}``; raises ``samples.BadSample``.

    ``rng`` given: the training augmentation (RandomResizedCrop) draws from it; None: the eval geometry.
    Picklable (the tokenizer is built on first use), so grain can ship it to worker processes.
    """

    def __init__(self, *, image_size: int, context_length: int, train_scale=(0.9, 1.0), image_dtype: str = "uint8"):
        if image_dtype not in IMAGE_DTYPES:
            raise UserError(f"data.image_dtype {image_dtype!r} is not one of {IMAGE_DTYPES}")
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.train_scale, self.image_dtype = tuple(train_scale), image_dtype
        self._tokenizer = None

    def __getstate__(self):
        return {**self.__dict__, "_tokenizer": None}

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        from vlscale.models import transforms as t

        image, caption = samples_lib.decode_record(record)
        try:
            if self._tokenizer is None:
                from vlscale.models import tokenizer as tokenizer_lib

                self._tokenizer = tokenizer_lib.get_tokenizer(self.context_length)
            size = self.image_size
            if self.image_dtype == "float32":  # the models' transforms, as they are
                if rng is not None:
                    pixels = t.train_transform(image, size, rng, scale=self.train_scale)
                else:
                    pixels = t.eval_transform(image, size)
            else:  # the same geometry, stopping before normalisation (tested equal after normalize_images)
                if rng is not None:
                    image = t.train_resize_crop(image, size, rng, scale=self.train_scale)
                else:
                    image = t.eval_resize_crop(image, size)
                pixels = np.asarray(image.convert("RGB"), np.uint8)
            tokens = self._tokenizer(caption)[0]
        except Exception as e:  # noqa: BLE001 - one bad sample must not end a multi-day run
            raise samples_lib.BadSample("transform_error", f"{type(e).__name__}: {e}") from None
        return {"image": pixels, "text": np.asarray(tokens, np.int32)}


class _DecodeIterator(grain.DatasetIterator):
    def __init__(self, ds: DecodeIterDataset, parent):
        super().__init__(parent)
        self._ds = ds
        self._decoder = SampleDecoder(image_size=ds.image_size, context_length=ds.context_length,
                                      train_scale=ds.train_scale, image_dtype=ds.image_dtype)
        self._read = 0
        self._warner = samples_lib.RateLimitedWarner(ds.warn_interval_s)

    def _process(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        rng = None
        if self._ds.train:
            key = f"{record.get('__url__', '')}/{record.get('__key__', '')}".encode()
            rng = np.random.default_rng([self._ds.seed, self._read, zlib.crc32(key)])
        return self._decoder(record, rng)

    def __next__(self) -> dict[str, np.ndarray]:
        skipped = np.zeros(len(samples_lib.BAD_REASONS), np.int32)
        while True:
            try:
                record = next(self._parent)
            except StopIteration:
                if skipped.any():  # a finite stream that ends in bad records: report them on a blank row
                    return self._blank(skipped)
                raise
            self._read += 1
            try:
                out = self._process(record)
            except samples_lib.BadSample as bad:
                skipped[samples_lib.REASON_INDEX[bad.reason]] += 1
                where = f"{record.get('__url__', '')} {record.get('__key__', '')}".strip()
                self._warner.warn(bad.reason, f"{where} {bad.detail}".strip())
                if skipped.sum() >= self._ds.max_consecutive_bad:
                    raise samples_lib.BadDataError(
                        f"{int(skipped.sum())} records in a row were bad (last: {bad.reason} at {where}); "
                        "check the data source"
                    ) from None
                continue
            out["skipped"] = skipped
            out["valid"] = np.bool_(True)
            return out

    def _blank(self, skipped: np.ndarray) -> dict[str, np.ndarray]:
        size = self._ds.image_size
        return {"image": np.zeros((size, size, 3), self._ds.image_dtype),
                "text": np.zeros(self._ds.context_length, np.int32), "skipped": skipped, "valid": np.bool_(False)}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "read": self._read}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._read = int(state["read"])
