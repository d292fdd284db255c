"""Decode and validate raw records, and account for the bad ones without stopping the run.

A record from any source becomes ``(PIL image, caption)`` or a ``BadSample(reason)``. The decode stage
(``decode.DecodeIterDataset``) skips bad records and attaches the skip counts to the next good sample
as a small int vector, so the counts travel through worker processes and batching with the data and
the main process can sum them exactly (``BadSampleCounter``). Above a configurable bad fraction the
main process stops with ``BadDataError`` instead of training on garbage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from vlscale.errors import UserError

log = logging.getLogger(__name__)

# Every reason a record can be skipped for; the order fixes the layout of the per-sample skip vector.
BAD_REASONS = (
    "unreadable_shard",  # a shard that cannot be opened (not a sample: excluded from the bad fraction)
    "truncated_tar",  # a tar that ends mid-member; the rest of that shard is lost
    "missing_image",  # no image field in the record
    "empty_image",  # zero-byte image file
    "corrupt_image",  # bytes that do not decode (corrupt, truncated, unsupported)
    "missing_caption",  # no caption field
    "empty_caption",  # a caption that is only whitespace
    "bad_utf8",  # caption bytes that are not UTF-8
    "transform_error",  # decoded fine but the transform or tokenizer failed
)
REASON_INDEX = {r: i for i, r in enumerate(BAD_REASONS)}
NOT_A_SAMPLE = ("unreadable_shard",)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "text", "caption")
DEFAULT_MAX_BAD_FRACTION = 0.01  # the default: stop above 1 % bad samples


class BadSample(Exception):
    """A record that must be skipped; ``reason`` is one of ``BAD_REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class BadDataError(UserError):
    """Too much of the input is bad to keep training on it."""


def _caption_from(record: Mapping[str, Any]) -> str:
    raw = None
    for ext in CAPTION_EXTENSIONS:
        if ext in record and record[ext] is not None:
            raw = record[ext]
            break
    if raw is None and record.get("json") is not None:
        try:
            meta = json.loads(record["json"])
            raw = meta.get("caption") if isinstance(meta, dict) else None
        except (ValueError, UnicodeDecodeError):
            raw = None
    if raw is None:
        raise BadSample("missing_caption")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadSample("bad_utf8", str(e)) from None
    if not isinstance(raw, str):
        raw = str(raw)
    if not raw.strip():
        raise BadSample("empty_caption")
    return raw


def _image_from(record: Mapping[str, Any]) -> Image.Image:
    from vlscale.models.transforms import load_image

    value = None
    for ext in ("image",) + IMAGE_EXTENSIONS:
        if record.get(ext) is not None:
            value = record[ext]
            break
    if value is None:
        raise BadSample("missing_image")
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.ndim == 2:
            value = np.repeat(value[..., None], 3, axis=-1)
        if value.ndim != 3 or value.shape[-1] not in (1, 3, 4) or value.size == 0:
            raise BadSample("corrupt_image", f"array of shape {value.shape}")
        if value.shape[-1] == 1:
            value = np.repeat(value, 3, axis=-1)
        return Image.fromarray(np.ascontiguousarray(value[..., :3]).astype(np.uint8))
    try:
        if isinstance(value, str):  # a file path (image folders)
            with open(value, "rb") as f:
                value = f.read()
        if len(value) == 0:
            raise BadSample("empty_image")
        return load_image(value, mode="RGB")
    except BadSample:
        raise
    except FileNotFoundError as e:
        raise BadSample("missing_image", str(e)) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("corrupt_image", str(e)) from None


def decode_record(record: Mapping[str, Any]) -> tuple[Image.Image, str]:
    """The (RGB image, caption) of a record, or ``BadSample``. Caption problems are checked first (cheap)."""
    if "__bad__" in record:
        raise BadSample(record["__bad__"], record.get("__url__", ""))
    caption = _caption_from(record)
    return _image_from(record), caption


class RateLimitedWarner:
    """Logs a warning per reason at most once every ``interval_s``, saying how many were not logged."""

    def __init__(self, interval_s: float = 30.0, logger: logging.Logger = log):
        self.interval_s = interval_s
        self.logger = logger
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, reason: str, message: str) -> bool:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return False
        extra = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        self.logger.warning("skipping bad sample (%s): %s%s", reason, message,
                            f" [{extra} more like it not logged]" if extra else "")
        return True


class BadSampleCounter:
    """Running totals of good and skipped samples, and the bad-fraction guard.

    ``max_bad_fraction`` applies once ``min_samples`` records have been seen, so one bad file among
    the first few does not stop a run; unreadable shards are counted but are not samples.
    """

    def __init__(self, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, min_samples: int = 1000):
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.good = 0
        self.bad = np.zeros(len(BAD_REASONS), np.int64)

    def add(self, good: int, skipped: np.ndarray) -> None:
        self.good += int(good)
        self.bad += np.asarray(skipped, np.int64).reshape(-1, len(BAD_REASONS)).sum(axis=0)

    @property
    def bad_samples(self) -> int:
        return int(sum(int(self.bad[REASON_INDEX[r]]) for r in BAD_REASONS if r not in NOT_A_SAMPLE))

    @property
    def bad_fraction(self) -> float:
        total = self.good + self.bad_samples
        return self.bad_samples / total if total else 0.0

    def check(self, where: str = "") -> None:
        """Raises ``BadDataError`` above the limit; ``where`` says whose counts these are ("over 4 hosts")."""
        total = self.good + self.bad_samples
        if total >= self.min_samples and self.bad_fraction > self.max_bad_fraction:
            worst = ", ".join(f"{r}={int(n)}" for r, n in zip(BAD_REASONS, self.bad) if n)
            where = f" {where}" if where else ""
            raise BadDataError(
                f"{self.bad_fraction:.2%} of {total} samples{where} are bad ({worst}), above the limit of "
                f"{self.max_bad_fraction:.2%}; fix or drop the bad shards, or raise data.max_bad_fraction"
            )

    def metrics(self, prefix: str = "data/") -> dict[str, float]:
        out = {f"{prefix}samples_good": float(self.good), f"{prefix}bad_fraction": self.bad_fraction}
        out.update({f"{prefix}bad/{r}": float(n) for r, n in zip(BAD_REASONS, self.bad)})
        return out

    def get_state(self) -> dict[str, Any]:
        return {"good": self.good, "bad": {r: int(n) for r, n in zip(BAD_REASONS, self.bad)}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.good = int(state["good"])
        self.bad = np.asarray([int(state["bad"].get(r, 0)) for r in BAD_REASONS], np.int64)
