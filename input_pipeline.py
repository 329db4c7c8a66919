"""Every tf.data pipeline of the suite, and the one image preprocessing function.

`decode_and_resize` is the single place where an encoded image becomes the
float32 `[H, W, 3]` tensor in [0, 1] that a TF Hub image feature-vector module
expects. Bottleneck computation and `label_image.py` both call it, so an image
is preprocessed the same way when it is cached for training and when it is
classified later: no train/serve skew.

All functions here build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import os

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


JPEG_DECODE_RATIOS = (8, 4, 2)  # the reduced scales libjpeg decodes at, largest first


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


def decode_and_resize(encoded, height, width):
    """Encoded image bytes (JPEG, PNG, GIF, BMP) -> float32 [height, width, 3] in [0, 1].

    The format is found from the content, not the file name. Grayscale, palette,
    alpha, CMYK and 16-bit images all come out as 3-channel RGB; a GIF gives its
    first frame. A JPEG at least twice the output size in both dimensions is
    decoded at reduced scale (see jpeg_decode_ratio), never below the output
    size. Resizing is bilinear, without keeping the aspect ratio, as the
    classic retrain script did.
    """

    def decode_jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        ratio = jpeg_decode_ratio(shape[0], shape[1], height, width)
        # decode_jpeg's ratio is an attribute, not a tensor: one branch per ratio.
        branches = [
            lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r) for r in (1, 2, 4, 8)
        ]
        index = tf.cast(tf.math.round(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0)), tf.int32)
        return tf.image.convert_image_dtype(tf.switch_case(index, branches), tf.float32)

    def decode_other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg, decode_other)
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [height, width], method="bilinear")


def image_batches(paths, height, width, batch_size):
    """Image files -> dataset of (index int64 [B], images float32 [B, H, W, 3]).

    `index` is each image's position in `paths`. Files that cannot be read or
    decoded are dropped from the stream, so a caller finds them as the indices
    that never came out. Reading and decoding run in parallel, one image per
    core, and the next batch is prefetched while the current one is used.
    """
    # Fixed, not AUTOTUNE, so the images in flight are bounded by construction
    # (with AUTOTUNE one bench/run.py run saw peak memory 13% higher for 2,000
    # images than for 200). One image per core and one batch ahead still keep
    # the module fed: decoding a batch takes a fraction of its forward pass.
    parallel = os.cpu_count() or 1

    def load(index, path):
        return index, decode_and_resize(tf.io.read_file(path), height, width)

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    dataset = dataset.map(load, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.ignore_errors()
    return dataset.batch(batch_size).prefetch(1)


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
