"""images.preprocess: decoding every image kind, and the cache version that guards the function."""

import hashlib
import inspect
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrain_suite.images import preprocess as image_preprocess

TOP = (200, 30, 40)  # reddish, top half
BOTTOM = (20, 60, 220)  # bluish, bottom half


def two_colour_pixels(height=24, width=36):
    """uint8 [height, width, 3]: TOP over BOTTOM, so a flipped or transposed image shows."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[: height // 2] = TOP
    pixels[height // 2:] = BOTTOM
    return pixels


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def luminance(rgb):
    """PIL's RGB -> L conversion (ITU-R 601-2)."""
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114) / 1000


def grayscale_png():
    data = encode(Image.fromarray(two_colour_pixels()).convert("L"), "PNG")
    return data, [luminance(TOP)] * 3, [luminance(BOTTOM)] * 3


def palette_png():
    image = Image.fromarray(two_colour_pixels()).convert("P", palette=Image.ADAPTIVE, colors=4)
    assert image.mode == "P"
    return encode(image, "PNG"), TOP, BOTTOM


def rgba_png():
    pixels = np.concatenate(
        [two_colour_pixels(), np.full((24, 36, 1), 255, np.uint8)], axis=-1
    )
    pixels[0, 0, 3] = 0  # Some transparency, to make it a real RGBA image.
    return encode(Image.fromarray(pixels, "RGBA"), "PNG"), TOP, BOTTOM


def cmyk_jpeg():
    image = Image.fromarray(two_colour_pixels()).convert("CMYK")
    data = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    return data, TOP, BOTTOM


def sixteen_bit_png():
    pixels = np.empty((24, 36), np.uint16)
    pixels[:12] = 50000
    pixels[12:] = 10000
    image = Image.fromarray(pixels)
    if image.mode != "I;16":
        image = image.convert("I;16")
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    top, bottom = 255 * 50000 / 65535, 255 * 10000 / 65535
    return data, [top] * 3, [bottom] * 3


def bmp():
    return encode(Image.fromarray(two_colour_pixels()), "BMP"), TOP, BOTTOM


def animated_gif():
    first = Image.fromarray(two_colour_pixels()).convert("P", palette=Image.ADAPTIVE, colors=4)
    second_pixels = two_colour_pixels()[::-1].copy()  # The colours swapped.
    second = Image.fromarray(second_pixels).convert("P", palette=Image.ADAPTIVE, colors=4)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    return data, TOP, BOTTOM


@pytest.mark.parametrize(
    "make, tolerance",
    [
        (grayscale_png, 1.5),
        (palette_png, 1.5),
        (rgba_png, 1.5),
        (cmyk_jpeg, 8),
        (sixteen_bit_png, 1.5),
        (bmp, 1.5),
        (animated_gif, 1.5),
    ],
    ids=["grayscale", "palette", "rgba", "cmyk_jpeg", "16bit_png", "bmp", "animated_gif"],
)
def test_decode_and_resize_gives_rgb_float_in_unit_range(make, tolerance):
    data, top, bottom = make()
    image = image_preprocess.decode_and_resize(tf.constant(data), 10, 14)
    assert image.dtype == tf.float32
    assert image.shape.as_list() == [10, 14, 3]
    pixels = image.numpy()
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    # Away from the border between the halves, the colours are unmixed.
    np.testing.assert_allclose(pixels[1, 7] * 255, top, atol=tolerance)
    np.testing.assert_allclose(pixels[8, 3] * 255, bottom, atol=tolerance)


def test_decode_and_resize_interpolates_bilinearly():
    # Two pixels, black and white, shrunk to one: bilinear gives the mean,
    # nearest-neighbour would give one of them.
    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    image = image_preprocess.decode_and_resize(
        tf.constant(encode(Image.fromarray(pixels), "PNG")), 1, 1
    ).numpy()
    np.testing.assert_allclose(image, np.full((1, 1, 3), 0.5), atol=1e-6)


def test_decode_and_resize_finds_format_from_content_not_name(tmp_path):
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(encode(Image.fromarray(two_colour_pixels()), "PNG"))
    image = image_preprocess.decode_and_resize(tf.io.read_file(str(path)), 4, 4).numpy()
    np.testing.assert_allclose(image[0, 0] * 255, TOP, atol=1.5)


def test_decode_and_resize_works_in_a_graph_with_unknown_input_size():
    data = encode(Image.fromarray(two_colour_pixels(50, 20)), "PNG")
    with tf.Graph().as_default():
        encoded = tf.compat.v1.placeholder(tf.string, [])
        image = image_preprocess.decode_and_resize(encoded, 6, 8)
        assert image.shape.as_list() == [6, 8, 3]
        with tf.compat.v1.Session() as sess:
            pixels = sess.run(image, {encoded: data})
    assert pixels.shape == (6, 8, 3)
    np.testing.assert_allclose(pixels[0, 4] * 255, TOP, atol=1.5)
    np.testing.assert_allclose(pixels[5, 4] * 255, BOTTOM, atol=1.5)


# The source of the shared preprocessing, as of each PREPROCESSING_VERSION. Cached
# bottlenecks are keyed by that version: a change to these functions that is not
# matched by a new version would serve vectors of the old preprocessing forever.
PREPROCESSING_SOURCE_SHA256 = {
    3: "fd7366517d22043f273565930060d7e14891040300d56b439636e5c526efd0ae",
}


def preprocessing_source_digest():
    parts = [inspect.getsource(f) for f in (
        image_preprocess.decode_and_resize, image_preprocess._decode_uint8,
        image_preprocess.jpeg_decode_ratio, image_preprocess.orient,
    )]
    parts.append(repr(image_preprocess.JPEG_DECODE_RATIOS))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_a_change_to_the_preprocessing_comes_with_a_new_cache_version():
    version = image_preprocess.PREPROCESSING_VERSION
    assert version in PREPROCESSING_SOURCE_SHA256, (
        f"PREPROCESSING_VERSION {version} has no recorded digest; add "
        f"{version}: {preprocessing_source_digest()!r} here."
    )
    assert preprocessing_source_digest() == PREPROCESSING_SOURCE_SHA256[version], (
        "decode_and_resize (or a function it uses) changed: if its output changes, raise "
        "PREPROCESSING_VERSION (retrain_suite/images/preprocess.py) and record the new digest "
        "here; if it does not (a comment, a rename), record the new digest under the same version."
    )
