"""Every tf.data pipeline of the suite, and the one image preprocessing function.

`decode_and_resize` is the single place where an encoded image becomes the
float32 `[H, W, 3]` tensor in [0, 1] that a TF Hub image feature-vector module
expects. Bottleneck computation and `label_image.py` both call it, so an image
is preprocessed the same way when it is cached for training and when it is
classified later: no train/serve skew.

All functions here build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(encoded, height, width):
    """Encoded image bytes (JPEG, PNG, GIF, BMP) -> float32 [height, width, 3] in [0, 1].

    The format is found from the content, not the file name. Grayscale, palette,
    alpha, CMYK and 16-bit images all come out as 3-channel RGB; a GIF gives its
    first frame. Resizing is bilinear, without keeping the aspect ratio, as the
    classic retrain script did.
    """
    image = tf.io.decode_image(
        encoded, channels=3, dtype=tf.float32, expand_animations=False
    )
    image.set_shape([None, None, 3])
    return tf.image.resize(image, [height, width], method="bilinear")


def image_batches(paths, height, width, batch_size):
    """Image files -> dataset of (index int64 [B], images float32 [B, H, W, 3]).

    `index` is each image's position in `paths`. Files that cannot be read or
    decoded are dropped from the stream, so a caller finds them as the indices
    that never came out. Reading and decoding run in parallel and the next
    batches are prefetched while the current one is being used.
    """

    def load(index, path):
        return index, decode_and_resize(tf.io.read_file(path), height, width)

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
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


def class_uniform_batches(bottlenecks, labels, batch_size, seed):
    """In-memory bottlenecks -> endless batches in which every class is equally likely.

    Same arguments and output as training_batches, but each example of a batch
    is drawn independently (with replacement): first a class, uniformly among
    the classes that have examples, then an example of that class. Small
    classes are therefore oversampled, as the classic retrain script's
    per-class sampling did. Deterministic for a given seed.
    """
    labels32 = tf.cast(labels, tf.int32)
    class_count = tf.reduce_max(labels32) + 1
    per_class = tf.math.unsorted_segment_sum(tf.ones_like(labels32), labels32, class_count)
    # Each example's chance is 1 / (examples of its class); classes then tie.
    example_logits = -tf.math.log(tf.cast(tf.gather(per_class, labels32), tf.float32))

    def draw(step):
        rows = tf.random.stateless_categorical(
            example_logits[None, :], batch_size, seed=tf.stack([tf.cast(seed, tf.int64), step])
        )[0]
        return tf.gather(bottlenecks, rows), tf.gather(labels, rows)

    return tf.data.Dataset.counter().map(draw).prefetch(AUTOTUNE)
