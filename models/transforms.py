"""Image preprocessing identical to open_clip's (reference-models.md §6), as numpy functions on PIL images.

open_clip runs torchvision transforms on PIL images, and torchvision hands the pixel work to PIL. So the
pixels are reproduced exactly by calling the same PIL operations with the same integer geometry, then
doing the float steps (÷255, subtract mean, divide by std) in float32 like torch does:

- eval: ``Resize(size, BICUBIC)`` on the shortest side → ``CenterCrop(size)`` → ``convert('RGB')`` →
  ``ToTensor`` → ``Normalize(OpenAI mean/std)``;
- train: ``RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3), BICUBIC)`` → the same tail.

The mode conversion comes *after* the geometry, as in open_clip: an RGBA image is resized with PIL's
alpha-premultiplied filter and only then loses its alpha; a palette ('P') or bilevel ('1') image is
resized with nearest neighbour (PIL's rule for those modes) before its colours are looked up.

Outputs are HWC float32 (the layout the Flax models take), not torch's CHW.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

# open_clip constants.py L1-2 (the statistics of OpenAI's CLIP training set).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 224  # PreprocessCfg default; every model in the paper's profile table uses 224 px
TRAIN_SCALE = (0.9, 1.0)  # open_clip AugmentationCfg.scale used for the paper's runs
TRAIN_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop default
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries this many boxes before its fallback

_MEAN32 = np.asarray(OPENAI_MEAN, dtype=np.float32)
_STD32 = np.asarray(OPENAI_STD, dtype=np.float32)
_BICUBIC = Image.Resampling.BICUBIC


def shortest_side_resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: the short side becomes ``size`` and the long
    side ``int(size * long / short)`` (truncated, not rounded)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """PIL crop box (left, upper, right, lower) of torchvision's ``CenterCrop(size)``.

    Offsets are ``int(round((dim - size) / 2))`` with Python's round (half to even), so an odd margin of
    1 gives offset 0 and a margin of 3 gives 2.
    """
    if size > width or size > height:
        raise ValueError(f"centre crop {size} does not fit in a {width}x{height} image; resize first")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """PIL bicubic (antialiased) resize; a no-op at the same size, as in torchvision."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), _BICUBIC)


def to_normalized_array(image: Image.Image) -> np.ndarray:
    """``convert('RGB')`` → ÷255 → normalise with the OpenAI statistics; float32 HWC.

    Each step is one correctly rounded float32 operation, the same ones torch's ``ToTensor`` and
    ``Normalize`` perform, so the result matches open_clip bit for bit.
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels = pixels / np.float32(255)
    return (pixels - _MEAN32) / _STD32


def eval_resize_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """The geometry of the eval transform: shortest side to ``size`` (bicubic), centre crop; mode kept.

    For pipelines that ship uint8 pixels and normalise on the accelerator.
    """
    width, height = shortest_side_resize_size(*image.size, size)
    return resize(image, width, height).crop(center_crop_box(width, height, size))


def eval_transform(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """open_clip's eval preprocessing: shortest side to ``size`` (bicubic), centre crop, RGB, normalise."""
    return to_normalized_array(eval_resize_crop(image, size))


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: Sequence[float] = TRAIN_SCALE,
    ratio: Sequence[float] = TRAIN_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) drawn like torchvision's ``RandomResizedCrop.get_params``.

    Up to ten boxes with area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); the first that fits
    is placed uniformly. If none fits, the largest centred box whose aspect ratio is clamped into
    ``ratio``. (torchvision draws in float32 from torch's RNG; the distribution is the same.)
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w = width
        crop_h = int(round(crop_w / min(ratio)))
    elif in_ratio > max(ratio):
        crop_h = height
        crop_w = int(round(crop_h * max(ratio)))
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def resized_crop(image: Image.Image, top: int, left: int, height: int, width: int, size: int) -> Image.Image:
    """torchvision ``F.resized_crop`` on PIL: crop the box, then bicubic-resize it to ``size`` x ``size``.

    Cropping first matters: resizing with PIL's ``box=`` argument would let the filter see pixels outside
    the box and give different values at the edges.
    """
    image = image.crop((left, top, left + width, top + height))
    return resize(image, size, size)


def train_transform(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: Sequence[float] = TRAIN_SCALE,
    ratio: Sequence[float] = TRAIN_RATIO,
) -> np.ndarray:
    """open_clip's train preprocessing: RandomResizedCrop (bicubic), RGB, normalise; float32 HWC."""
    return to_normalized_array(train_resize_crop(image, size, rng, scale, ratio))


def train_resize_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: Sequence[float] = TRAIN_SCALE,
    ratio: Sequence[float] = TRAIN_RATIO,
) -> Image.Image:
    """The geometry of the train transform (a random box, resized to ``size`` x ``size``); mode kept."""
    top, left, crop_h, crop_w = random_resized_crop_box(*image.size, rng, scale, ratio)
    return resized_crop(image, top, left, crop_h, crop_w, size)


def load_image(
    path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview, mode: str | None = None
) -> Image.Image:
    """Opens and decodes an image file or encoded bytes, fully loaded (no file handle left open).

    The image keeps its stored mode by default, so ``eval_transform`` converts to RGB after the
    geometry exactly like open_clip on a file it opened itself. Pass ``mode="RGB"`` to convert at
    decode time instead, which is what webdataset's ``"pilrgb"`` decoder (open_clip's training loader)
    does. EXIF orientation is not applied, as in open_clip.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        loaded = Image.open(io.BytesIO(bytes(path_or_bytes)))
        loaded.load()
    else:
        with open(path_or_bytes, "rb") as f:
            loaded = Image.open(f)
            loaded.load()
    if mode is not None and loaded.mode != mode:
        loaded = loaded.convert(mode)
    return loaded


def read_eval_image(path: str | os.PathLike, size: int) -> tuple[np.ndarray | None, str | None]:
    """(the eval-preprocessed image, None), or (None, why it cannot be read: not an image, empty, truncated)."""
    if os.path.getsize(path) == 0:
        return None, "empty file"
    try:
        return eval_transform(load_image(path), size=size), None
    except Image.UnidentifiedImageError:
        return None, "not an image format PIL can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL raises all of these
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, msg
