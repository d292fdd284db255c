"""Preprocessing matches open_clip's torchvision pipelines on real photographs, odd sizes and image modes."""

import io
import math

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from vlscale.models import transforms as tf

pytestmark = pytest.mark.parity

PIXEL_ATOL = 1e-6  # the bar; the implementation is in fact bit-exact
ODD_SIZES = [(1, 1), (3, 1000), (1000, 3), (225, 224), (224, 224), (500, 333), (333, 500), (223, 225)]


@pytest.fixture(scope="module")
def reference_eval():
    from open_clip.transform import image_transform

    return image_transform(tf.IMAGE_SIZE, is_train=False)


@pytest.fixture(scope="module")
def photo():
    return tf.load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def as_hwc(tensor):
    return tensor.permute(1, 2, 0).numpy()


def assert_pixels_match(ours, theirs):
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=PIXEL_ATOL)


def noise_image(width, height, seed=0):
    """An RGBA image of uniform noise (every channel, alpha included, takes all values)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"])
def test_sample_photographs_match_open_clip_eval(reference_eval, name):
    image = tf.load_image(cbook.get_sample_data(name, asfileobj=False))
    assert_pixels_match(tf.eval_transform(image), as_hwc(reference_eval(image)))


def test_eval_output_is_normalised_hwc(photo):
    out = tf.eval_transform(photo)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, tf.to_normalized_array(tf.eval_resize_crop(photo)))
    # De-normalising gives back 8-bit pixel values (up to float rounding).
    pixels = (out * np.float32(tf.OPENAI_STD) + np.float32(tf.OPENAI_MEAN)) * 255
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert 0 <= pixels.min() and pixels.max() <= 255.001


@pytest.mark.parametrize("width,height", ODD_SIZES)
def test_odd_sizes_match_open_clip_eval(reference_eval, photo, width, height):
    # A crop of the photograph resized to the odd size keeps real image structure at every size.
    image = photo.resize((width, height), Image.Resampling.BILINEAR)
    assert_pixels_match(tf.eval_transform(image), as_hwc(reference_eval(image)))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "PA", "CMYK", "I", "I;16", "F", "1", "YCbCr", "RGBX"])
def test_image_modes_match_open_clip_eval(reference_eval, photo, mode):
    small = photo.resize((300, 257), Image.Resampling.BILINEAR)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(small.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    elif mode in ("RGBA", "LA", "PA"):
        image = small.convert(mode)
        alpha = Image.fromarray(np.random.default_rng(0).integers(0, 256, (257, 300), dtype=np.uint8))
        image.putalpha(alpha)
    else:
        image = small.convert(mode)
    assert_pixels_match(tf.eval_transform(image), as_hwc(reference_eval(image)))


def test_palette_with_transparency_matches_open_clip_eval(reference_eval, photo):
    image = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    image.info["transparency"] = 3
    assert_pixels_match(tf.eval_transform(image), as_hwc(reference_eval(image)))


@pytest.mark.parametrize("size", [32, 64, 225])
def test_other_sizes_match_open_clip_eval(photo, size):
    from open_clip.transform import image_transform

    reference = image_transform(size, is_train=False)
    assert_pixels_match(tf.eval_transform(photo, size=size), as_hwc(reference(photo)))


def test_resize_and_crop_geometry_follows_torchvision():
    # Long side truncated, not rounded: 224 * 1000 / 3 = 74666.67 → 74666.
    assert tf.shortest_side_resize_size(3, 1000, 224) == (224, 74666)
    assert tf.shortest_side_resize_size(1000, 3, 224) == (74666, 224)
    assert tf.shortest_side_resize_size(500, 333, 224) == (336, 224)
    # Crop offsets round half to even: a margin of 1 → offset 0, a margin of 3 → offset 2.
    assert tf.center_crop_box(225, 224, 224) == (0, 0, 224, 224)
    assert tf.center_crop_box(227, 224, 224) == (2, 0, 226, 224)
    assert tf.center_crop_box(336, 224, 224) == (56, 0, 280, 224)
    with pytest.raises(ValueError, match="resize first"):
        tf.center_crop_box(100, 300, 224)


@pytest.mark.parametrize(
    "box", [(0, 0, 512, 600), (10, 20, 400, 350), (600 - 37, 512 - 41, 37, 41), (100, 100, 224, 224), (5, 3, 7, 9)]
)
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_fixed_box_resized_crop_matches_torchvision(photo, box, mode):
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode, Normalize

    top, left, height, width = box
    image = photo.convert(mode)
    theirs = F.resized_crop(image, top, left, height, width, [224, 224], InterpolationMode.BICUBIC)
    theirs = Normalize(tf.OPENAI_MEAN, tf.OPENAI_STD)(F.to_tensor(theirs.convert("RGB")))
    ours = tf.to_normalized_array(tf.resized_crop(image, top, left, height, width, 224))
    assert_pixels_match(ours, as_hwc(theirs))


def test_open_clip_train_pipeline_with_a_fixed_box(photo, monkeypatch):
    """With torchvision's box draw pinned, open_clip's whole train transform equals ours on that box."""
    from open_clip.transform import image_transform
    from torchvision.transforms import InterpolationMode, RandomResizedCrop

    reference = image_transform(224, is_train=True)
    crop = reference.transforms[0]
    assert isinstance(crop, RandomResizedCrop) and crop.interpolation == InterpolationMode.BICUBIC
    assert tuple(crop.scale) == tf.TRAIN_SCALE and tuple(crop.ratio) == tf.TRAIN_RATIO
    box = (10, 20, 400, 350)
    monkeypatch.setattr(RandomResizedCrop, "get_params", staticmethod(lambda image, scale, ratio: box))
    for mode in ("RGB", "RGBA", "P", "L"):
        image = photo.convert(mode)
        assert_pixels_match(tf.to_normalized_array(tf.resized_crop(image, *box, 224)), as_hwc(reference(image)))


def test_train_transform_is_resized_crop_of_the_drawn_box(photo):
    out = tf.train_transform(photo, 64, np.random.default_rng(7))
    box = tf.random_resized_crop_box(*photo.size, np.random.default_rng(7))
    np.testing.assert_array_equal(out, tf.to_normalized_array(tf.resized_crop(photo, *box, 64)))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    cropped = tf.train_resize_crop(photo, 64, np.random.default_rng(7))
    assert cropped.size == (64, 64)
    np.testing.assert_array_equal(out, tf.to_normalized_array(cropped))
    # Same seed, same crop; another seed, another crop.
    np.testing.assert_array_equal(out, tf.train_transform(photo, 64, np.random.default_rng(7)))
    assert not np.array_equal(out, tf.train_transform(photo, 64, np.random.default_rng(8)))


@pytest.mark.parametrize("width,height", [(600, 512), (224, 224), (500, 333), (40, 7), (7, 40)])
def test_drawn_boxes_obey_scale_and_ratio(width, height):
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = tf.random_resized_crop_box(width, height, rng)
        assert 0 < h <= height and 0 < w <= width
        assert 0 <= top <= height - h and 0 <= left <= width - w
        if (h, w) != fallback_shape(width, height):
            # Rounding of each side to an integer loosens the bounds by at most half a pixel per side.
            lo_area = (math.sqrt(0.9 * width * height) - 1) ** 2 / (width * height)
            assert lo_area <= h * w / (width * height) <= (width + 0.5) * (height + 0.5) / (width * height)
            assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4


def fallback_shape(width, height):
    """torchvision's fallback crop (height, width): the whole image with its aspect ratio clamped."""
    if width / height < 3 / 4:
        return round(width / (3 / 4)), width
    if width / height > 4 / 3:
        return height, round(height * 4 / 3)
    return height, width


def test_fallback_box_is_central_with_clamped_ratio():
    # No box with area >= 90% and aspect in [3/4, 4/3] fits a 1000x3 strip, so every draw falls back.
    assert tf.random_resized_crop_box(1000, 3, np.random.default_rng(0)) == (0, 498, 3, 4)
    assert tf.random_resized_crop_box(3, 1000, np.random.default_rng(0)) == (498, 0, 4, 3)
    # A 5x4 image can still fall back (small sizes round out of range) and then uses the whole image.
    boxes = {tf.random_resized_crop_box(5, 4, np.random.default_rng(s)) for s in range(200)}
    assert all(0 < h <= 4 and 0 < w <= 5 for _, _, h, w in boxes)


def test_box_distribution_matches_torchvision():
    """Area fraction and log aspect ratio follow torchvision's distribution (two-sample KS test)."""
    import torch
    from scipy.stats import ks_2samp
    from torchvision.transforms import RandomResizedCrop

    width, height, n = 500, 333, 2000
    torch.manual_seed(0)
    theirs = np.array([RandomResizedCrop.get_params(Image.new("L", (width, height)), [0.9, 1.0], [3 / 4, 4 / 3])
                       for _ in range(n)])
    rng = np.random.default_rng(0)
    ours = np.array([tf.random_resized_crop_box(width, height, rng) for _ in range(n)])

    def stats(boxes):
        top, left, h, w = boxes.T
        return h * w / (width * height), np.log(w / h), top / (height - h + 1), left / (width - w + 1)

    for ours_stat, theirs_stat in zip(stats(ours), stats(theirs)):
        assert ks_2samp(ours_stat, theirs_stat).pvalue > 1e-3


def test_load_image_from_path_and_bytes(tmp_path, photo):
    rgba = noise_image(37, 21, seed=1)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buffer.getvalue())
    for source in (path, str(path), buffer.getvalue(), bytearray(buffer.getvalue()), memoryview(buffer.getvalue())):
        loaded = tf.load_image(source)
        assert loaded.mode == "RGBA" and loaded.size == (37, 21)
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(rgba))
    as_rgb = tf.load_image(buffer.getvalue(), mode="RGB")
    assert as_rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(as_rgb), np.asarray(rgba)[..., :3])
    assert photo.mode == "RGB" and photo.size == (512, 600)
