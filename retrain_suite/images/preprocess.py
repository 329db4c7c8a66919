r"""The one image preprocessing function, `decode_and_resize`, and its helpers.

`decode_and_resize` is the single place where an encoded image becomes the
float32 `[H, W, 3]` tensor in [0, 1] that a TF Hub image feature-vector module
expects. Bottleneck computation and `label_image.py` both call it, so an image
is preprocessed the same way when it is cached for training and when it is
classified later: no train/serve skew. Cached bottlenecks are keyed on
PREPROCESSING_VERSION.

The functions build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import tensorflow as tf

JPEG_DECODE_RATIOS = (8, 4, 2)  # the reduced scales libjpeg decodes at, largest first


# Raise whenever decode_and_resize changes its output: cached bottlenecks are keyed on it.
PREPROCESSING_VERSION = 3  # 3: large JPEGs decoded at reduced scale


def orient(image, orientation):
    """Turn a decoded [H, W, C] image upright according to its EXIF orientation (1-8)."""
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4: mirrored vertically
        lambda: tf.image.transpose(image),  # 5: mirrored, then turned
        lambda: tf.image.rot90(image, 3),  # 6: needs a quarter turn clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: needs a quarter turn anticlockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def jpeg_decode_ratio(image_height, image_width, height, width):
    """The largest JPEG decode ratio (1, 2, 4 or 8) that keeps the image >= height x width.

    libjpeg decodes at 1/ratio of the full size, rounding up, while doing a
    fraction of the work; a photo much larger than the module input then never
    exists at full resolution. Works on Python ints and on int32 tensors alike.
    """
    chosen = 1
    for ratio in reversed(JPEG_DECODE_RATIOS):  # 2, 4, 8: keep the last that fits
        fits = ((image_height + ratio - 1) // ratio >= height) & (
            (image_width + ratio - 1) // ratio >= width
        )
        if isinstance(fits, tf.Tensor):
            chosen = tf.where(fits, ratio, chosen)
        elif fits:
            chosen = ratio
    return chosen


def _decode_uint8(encoded, height, width):
    """Encoded bytes -> uint8 [h, w, 3]; a JPEG at reduced scale if still >= height x width."""

    def decode_jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        ratio = jpeg_decode_ratio(shape[0], shape[1], height, width)
        # decode_jpeg's ratio is an attribute, not a tensor: one branch per ratio.
        branches = [
            lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r) for r in (1, 2, 4, 8)
        ]
        index = tf.cast(tf.math.round(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0)),
                        tf.int32)
        return tf.switch_case(index, branches)

    def decode_other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg, decode_other)
    image.set_shape([None, None, 3])
    return image


def decode_and_resize(encoded, height, width, orientation=1):
    """Encoded image bytes (JPEG, PNG, GIF, BMP) -> float32 [height, width, 3] in [0, 1].

    The format is found from the content, not the file name. Grayscale, palette,
    alpha, CMYK and 16-bit images all come out as 3-channel RGB; a GIF gives its
    first frame. `orientation` (EXIF, 1-8) turns the image upright as a person
    sees it. A JPEG at least twice the output size in both dimensions is
    decoded at reduced scale (see jpeg_decode_ratio), never below the output
    size. Resizing is bilinear, without keeping the aspect ratio, as the
    classic retrain script did.
    """
    # Turning the small resized image upright is cheaper than turning the full one
    # and gives the same pixels: bilinear resizing commutes with flips and
    # transposes. Orientations 5-8 swap the axes, so resize to the swapped size.
    orientation = tf.cast(orientation, tf.int32)
    size = tf.where(orientation >= 5, [width, height], [height, width])
    # Decoding to uint8 and resizing before scaling keeps the full-size copy at one
    # byte per value instead of four; the arithmetic is the same.
    image = _decode_uint8(encoded, size[0], size[1])
    resized = tf.image.resize(image, size, method="bilinear") / 255.0
    upright = orient(resized, orientation)
    upright.set_shape([height, width, 3])
    return upright
