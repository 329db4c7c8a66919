"""vector_batches: shuffling in-memory bottlenecks into training batches."""

import numpy as np
import tensorflow as tf

from retrain_suite import vector_batches


def run_training_batches(seed, count, n=12, batch_size=4):
    """`count` batches of training_batches over n examples, as the trainer runs it."""
    graph = tf.Graph()
    with graph.as_default():
        bottlenecks = tf.compat.v1.placeholder(tf.float32, [None, 3])
        labels = tf.compat.v1.placeholder(tf.int64, [None])
        iterator = tf.compat.v1.data.make_initializable_iterator(
            vector_batches.training_batches(bottlenecks, labels, batch_size, seed)
        )
        next_batch = iterator.get_next()
        values = np.arange(n)
        feed = {
            bottlenecks: np.stack([values, values * 10, -values], axis=1).astype(np.float32),
            labels: values.astype(np.int64),
        }
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(iterator.initializer, feed)
            return [sess.run(next_batch) for _ in range(count)]


def test_training_batches_are_deterministic_for_a_seed_and_cover_each_epoch():
    batches = run_training_batches(seed=7, count=9)  # 3 epochs of 12 in batches of 4.
    again = run_training_batches(seed=7, count=9)
    other_seed = run_training_batches(seed=8, count=9)

    order = np.concatenate([labels for _, labels in batches])
    assert order.tolist() == np.concatenate([labels for _, labels in again]).tolist()
    assert order.tolist() != np.concatenate([labels for _, labels in other_seed]).tolist()

    for features, labels in batches:
        assert features.shape == (4, 3) and features.dtype == np.float32
        assert labels.dtype == np.int64
        # Each example keeps its own label.
        np.testing.assert_array_equal(features[:, 0], labels)
        np.testing.assert_array_equal(features[:, 1], labels * 10)

    epochs = order.reshape(3, 12)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(12))
    assert len({tuple(epoch) for epoch in epochs}) == 3  # A new order each epoch...
    assert epochs[0].tolist() != list(range(12))  # ...and actually shuffled.


def test_training_batches_continue_across_epoch_boundaries():
    # 10 examples in batches of 4: batches straddle epochs, but every run of
    # 10 consecutive examples from an epoch start is still each example once.
    batches = run_training_batches(seed=3, count=10, n=10, batch_size=4)
    assert all(len(labels) == 4 for _, labels in batches)
    order = np.concatenate([labels for _, labels in batches])
    for epoch in order.reshape(4, 10):
        assert sorted(epoch.tolist()) == list(range(10))


def test_training_pipelines_leave_tf_data_autotuning_off():
    """Their prefetch is fixed: autotuning's thread made closing the training Session wait
    a second for its sleep to end."""
    vectors = tf.constant(np.zeros([6, 2], np.float32))
    labels = tf.constant(np.array([0, 1, 0, 1, 0, 1], np.int64))
    for make in (vector_batches.training_batches, vector_batches.class_uniform_batches):
        assert make(vectors, labels, 4, seed=3).options().autotune.enabled is False, make
