"""Every tf.data pipeline of the suite, and the one image preprocessing function.

`decode_and_resize` is the single place where an encoded image becomes the
float32 `[H, W, 3]` tensor in [0, 1] that a TF Hub image feature-vector module
expects. Bottleneck computation and `label_image.py` both call it, so an image
is preprocessed the same way when it is cached for training and when it is
classified later: no train/serve skew.

All functions here build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import dataclasses
import hashlib
import io
import re
import warnings

import tensorflow as tf
from PIL import Image

AUTOTUNE = tf.data.AUTOTUNE
# Raise whenever decode_and_resize changes its output: cached bottlenecks are keyed on it.
PREPROCESSING_VERSION = 2
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # 100 Mpx: 10000x10000 decodes in ~300 MB.
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """What reading an image file told us, before any decoding."""

    sha1: str | None  # hex digest of the file's bytes; None if unreadable
    orientation: int  # EXIF orientation 1-8 (1: stored upright)
    problem: str | None  # why the file cannot be used, or None


def inspect_image_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Read a file once: its content hash, EXIF orientation, and any reason to skip it.

    Only the header is parsed (no pixels are decoded), so an image whose
    width x height exceeds max_pixels is refused here before it can take
    gigabytes of memory.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        return ImageFile(None, 1, f"cannot be read: {one_line(e)}")
    sha1 = hashlib.sha1(data).hexdigest()
    if not data:
        return ImageFile(sha1, 1, "empty file")
    width, height, orientation = _header(data)
    if width * height > max_pixels:
        return ImageFile(
            sha1, orientation,
            f"too large: {width}x{height} = {width * height / 1e6:.0f} Mpx, over the limit "
            f"of {max_pixels / 1e6:g} Mpx (raise --max_image_pixels to allow it)",
        )
    return ImageFile(sha1, orientation, None)


def _header(data):
    """(width, height, EXIF orientation) from the header alone; zeros and 1 if unparsable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # We apply our own limit.
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        width, height = image.size
    except Exception:  # Not for PIL to judge: TensorFlow's decoder has the last word.
        return 0, 0, 1
    # image.getexif() would decode a whole PNG to look for EXIF after the pixels;
    # the EXIF block in the header is where cameras and editors put it.
    orientation = 1
    if image.info.get("exif"):
        try:
            exif = Image.Exif()
            exif.load(image.info["exif"])
            orientation = exif.get(_EXIF_ORIENTATION, 1)
        except Exception:  # Damaged EXIF: treat the image as stored upright.
            orientation = 1
    return width, height, orientation if orientation in range(1, 9) else 1


def why_undecodable(path):
    """A one-line reason why the image at path cannot be read or decoded."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (tf.errors.OpError, OSError) as e:
        return f"cannot be read: {one_line(e)}"
    if not data:
        return "empty file"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        return f"not a decodable image: {one_line(e)}"
    return "could not be decoded"


def one_line(error):
    """An exception as one short line, without TensorFlow's op context."""
    text = str(getattr(error, "message", None) or error)
    text = re.sub(r"\{\{.*?\}\}\s*", "", text).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def decode_and_resize(encoded, height, width, orientation=1):
    """Encoded image bytes (JPEG, PNG, GIF, BMP) -> float32 [height, width, 3] in [0, 1].

    The format is found from the content, not the file name. Grayscale, palette,
    alpha, CMYK and 16-bit images all come out as 3-channel RGB; a GIF gives its
    first frame. `orientation` (EXIF, 1-8) turns the image upright as a person
    sees it. Resizing is bilinear, without keeping the aspect ratio, as the
    classic retrain script did.
    """
    # Decoding to uint8 and resizing before scaling keeps the full-size copy at one
    # byte per value instead of four; the arithmetic is the same.
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    # Turning the small resized image upright is cheaper than turning the full one
    # and gives the same pixels: bilinear resizing commutes with flips and
    # transposes. Orientations 5-8 swap the axes, so resize to the swapped size.
    orientation = tf.cast(orientation, tf.int32)
    size = tf.where(orientation >= 5, [width, height], [height, width])
    resized = tf.image.resize(image, size, method="bilinear") / 255.0
    upright = orient(resized, orientation)
    upright.set_shape([height, width, 3])
    return upright


def image_batches(paths, height, width, batch_size, orientations=None):
    """Image files -> dataset of (index int64 [B], images float32 [B, H, W, 3]).

    `index` is each image's position in `paths`; `orientations` (EXIF, one per
    path, default upright) come from inspect_image_file. Files that cannot be
    read or decoded are dropped from the stream, so a caller finds them as the
    indices that never came out. Reading and decoding run in parallel and the
    next batches are prefetched while the current one is being used.
    """

    def load(index, path, orientation):
        return index, decode_and_resize(tf.io.read_file(path), height, width, orientation)

    if orientations is None:
        orientations = [1] * len(paths)
    dataset = tf.data.Dataset.from_tensor_slices((
        tf.range(len(paths), dtype=tf.int64),
        tf.constant(list(paths), tf.string),
        tf.constant(list(orientations), tf.int32),
    ))
    dataset = dataset.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors()
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def training_batches(bottlenecks, labels, batch_size, seed):
    """In-memory bottlenecks -> endless shuffled batches for training.

    bottlenecks: float32 [N, D] tensor (feed it through a placeholder so the
    array is not copied into the graph); labels: int64 [N]. Yields
    (float32 [B, D], int64 [B]); every example is seen once per epoch, in a new
    order each epoch, deterministically for a given seed.
    """
    dataset = tf.data.Dataset.from_tensor_slices((bottlenecks, labels))
    dataset = dataset.shuffle(
        buffer_size=tf.cast(tf.shape(labels)[0], tf.int64),
        seed=seed,
        reshuffle_each_iteration=True,
    )
    return dataset.repeat().batch(batch_size).prefetch(AUTOTUNE)
