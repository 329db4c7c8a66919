r"""The tf.data pipelines of bottleneck vectors held in memory, for training the final layer.

`training_batches` shuffles every example once per epoch; `class_uniform_batches`
draws each class equally often (--sampling=uniform).
"""

import tensorflow as tf

from retrain_suite.images.pipelines import fixed

# Batches made ahead of the training step. A fixed number, with tf.data's autotuning
# off (images.pipelines.fixed): its thread sleeps for up to a second between rounds,
# and closing the training Session waited for that sleep (1.0 s of idle machine after
# training, in 2 of 5 runs of 1,000 photos).
PREFETCH = 2


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
    return fixed(dataset.repeat().batch(batch_size).prefetch(PREFETCH))


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

    return fixed(tf.data.Dataset.counter().map(draw).prefetch(PREFETCH))
