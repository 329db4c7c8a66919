"""images.preprocess: JPEGs much larger than the module input are decoded at reduced scale."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrain_suite.images import preprocess as image_preprocess


def jpeg_bytes(pixels, quality=95):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def smooth_photo(height, width):
    """uint8 [height, width, 3]: gentle gradients, like a photo's large areas."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / width * 3.0)
    green = 128 + 100 * np.cos(y / height * 2.0)
    blue = 255 * (x + y) / (width + height)
    return np.clip(np.stack([red, green, blue], -1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "image_height, image_width, height, width, ratio",
    [
        (1536, 2048, 299, 299, 4),  # 384x512 at 1/4; 1/8 would be 192x256, too small
        (299, 299, 299, 299, 1),
        (300, 4000, 299, 299, 1),  # one side too short to shrink
        (598, 598, 299, 299, 2),
        (597, 597, 299, 299, 2),  # libjpeg rounds up: 597/2 -> 299
        (596, 596, 299, 299, 1),
        (2392, 2392, 299, 299, 8),
        (2384, 2392, 299, 299, 4),  # 2384/8 = 298 < 299
        (3000, 4000, 299, 299, 8),
        (300, 300, 32, 32, 8),
        (100, 50, 200, 200, 1),  # smaller than the input: full size, resize upwards
    ],
)
def test_decode_ratio_is_the_largest_that_keeps_the_input_size(
    image_height, image_width, height, width, ratio
):
    assert image_preprocess.jpeg_decode_ratio(image_height, image_width, height, width) == ratio


def test_decode_ratio_on_tensors_matches_plain_ints():
    for image_height in (1, 298, 299, 597, 598, 1195, 1196, 2391, 2392, 5000):
        for image_width in (299, 1196, 2392):
            expected = image_preprocess.jpeg_decode_ratio(image_height, image_width, 299, 299)
            got = image_preprocess.jpeg_decode_ratio(
                tf.constant(image_height), tf.constant(image_width), 299, 299
            )
            assert int(got) == expected, (image_height, image_width)


def test_large_jpeg_is_decoded_at_reduced_scale_and_close_to_full_resolution():
    encoded = jpeg_bytes(smooth_photo(1536, 2048))
    out = image_preprocess.decode_and_resize(tf.constant(encoded), 299, 299).numpy()
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    # Exactly the 1/4 decode (384x512, still above 299x299), resized.
    quarter = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3, ratio=4), tf.float32)
    assert quarter.shape[:2] == (384, 512)
    # (Up to float rounding: we resize the uint8 pixels, then scale to [0, 1].)
    np.testing.assert_allclose(out, tf.image.resize(quarter, [299, 299]).numpy(), atol=1e-6)
    # And close to decoding every pixel and shrinking with an antialiasing filter.
    full = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    reference = tf.image.resize(full, [299, 299], antialias=True).numpy()
    assert np.mean(np.abs(out - reference)) < 0.01
    assert np.max(np.abs(out - reference)) < 0.1


def test_small_jpeg_and_png_decode_exactly_as_before():
    pixels = smooth_photo(240, 320)
    for encoded in (jpeg_bytes(pixels), _png_bytes(pixels)):
        out = image_preprocess.decode_and_resize(tf.constant(encoded), 299, 299).numpy()
        full = tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)
        np.testing.assert_allclose(out, tf.image.resize(full, [299, 299]).numpy(), atol=1e-6)


def test_large_grayscale_jpeg_comes_out_rgb_at_the_input_size():
    gray = smooth_photo(1200, 1600)[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").save(buffer, "JPEG")
    out = image_preprocess.decode_and_resize(tf.constant(buffer.getvalue()), 299, 299).numpy()
    assert out.shape == (299, 299, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def _png_bytes(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
