"""final_layer.py, schedules.py and the training batches: the training options."""

import math
import re

import helpers
import numpy as np
import pytest
import tensorflow as tf

from retrain_suite import config as config_lib
from retrain_suite import final_layer, schedules, training, vector_batches


def test_constant_schedule_keeps_the_base_rate():
    assert [schedules.learning_rate_at("constant", s, 0.1, 100) for s in (0, 50, 100)] == [0.1] * 3


def test_exponential_schedule_decays_smoothly_over_decay_steps():
    rate = lambda step: schedules.learning_rate_at("exponential", step, 0.1, 1000, 0.5, 100)  # noqa: E731
    assert rate(0) == pytest.approx(0.1)
    assert rate(50) == pytest.approx(0.1 * 0.5 ** 0.5)
    assert rate(100) == pytest.approx(0.05)
    assert rate(300) == pytest.approx(0.0125)


def test_exponential_schedule_by_default_ends_at_decay_times_the_rate():
    assert schedules.default_decay_steps(4000) == 4000
    assert schedules.default_decay_steps(0) == 1
    assert schedules.learning_rate_at("exponential", 4000, 0.01, 4000, 0.1) == pytest.approx(0.001)


def test_cosine_schedule_falls_from_the_rate_to_zero():
    rate = lambda step: schedules.learning_rate_at("cosine", step, 0.2, 100)  # noqa: E731
    assert rate(0) == pytest.approx(0.2)
    assert rate(25) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert rate(50) == pytest.approx(0.1)
    assert rate(100) == pytest.approx(0.0, abs=1e-12)
    assert rate(150) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_is_a_programming_error():
    with pytest.raises(ValueError, match="schedule"):
        schedules.learning_rate_at("linear", 0, 0.1, 10)


def test_balanced_weights_give_each_class_the_same_total():
    labels = np.array([0] * 30 + [1] * 10 + [3] * 20)
    weights = final_layer.balanced_class_weights(labels, 4)
    # N / (K * n_c) with N = 60 images, K = 3 classes present; class 2 has none.
    np.testing.assert_allclose(weights, [60 / 90, 60 / 30, 0.0, 60 / 60], rtol=1e-6)
    totals = np.bincount(labels, weights=weights[labels], minlength=4)
    np.testing.assert_allclose(totals[[0, 1, 3]], [20, 20, 20], rtol=1e-6)
    assert np.mean(weights[labels]) == pytest.approx(1.0)


def layer_training(**fields):
    """A config.TrainingConfig of the given fields (sgd unless one is given)."""
    return config_lib.TrainingConfig(**fields)


def losses_on_batch(x, y, class_count, loss_settings, hidden_units=0):
    """(loss, plain cross entropy, logits [B, C], weight matrices) of a fresh layer on one batch."""
    g = final_layer.build_training_graph(
        x.shape[1], final_layer.LayerSpec(class_count, hidden_units=hidden_units),
        layer_training(learning_rate=0.1, train_batch_size=8, random_seed=3), loss_settings,
    )
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        # Large weights make the logits, and so the losses, clearly different per class.
        weights = [v for v in g.variables if v.op.name.endswith("weights")]
        for n, v in enumerate(weights):
            v.load(np.random.RandomState(n).normal(0, 1.0, v.shape.as_list()).astype(np.float32), sess)
        feed = {g.bottleneck_input: x, g.ground_truth: y}
        logits = g.graph.get_tensor_by_name("final_retrain_ops/logits:0")
        return sess.run([g.loss, g.cross_entropy, logits, weights], feed)


def numpy_cross_entropy(logits, targets):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(targets * log_softmax).sum(axis=1)


IMBALANCED_X = np.random.RandomState(0).normal(0, 1, (12, 5)).astype(np.float32)
IMBALANCED_Y = np.array([0] * 9 + [1] * 2 + [2] * 1, np.int64)  # 9 : 2 : 1


def test_balanced_class_weighting_weights_each_example_loss_by_its_class():
    weights = final_layer.balanced_class_weights(IMBALANCED_Y, 3)
    loss, plain, logits, _ = losses_on_batch(
        IMBALANCED_X, IMBALANCED_Y, 3, final_layer.LossSettings(class_weights=weights)
    )
    per_example = numpy_cross_entropy(logits, np.eye(3)[IMBALANCED_Y])
    assert loss == pytest.approx(np.mean(weights[IMBALANCED_Y] * per_example), rel=1e-5)
    # The one image of class 2 now counts as much as the nine of class 0 together.
    assert weights[2] == pytest.approx(9 * weights[0])
    assert plain == pytest.approx(np.mean(per_example), rel=1e-5)
    assert loss != pytest.approx(plain, rel=1e-3)
    unweighted, _, _, _ = losses_on_batch(IMBALANCED_X, IMBALANCED_Y, 3, final_layer.LossSettings())
    assert unweighted == pytest.approx(plain, rel=1e-6)


def test_label_smoothing_and_l2_add_to_the_loss_as_specified():
    settings = final_layer.LossSettings(label_smoothing=0.2, l2_regularization=0.01)
    loss, _, logits, weights = losses_on_batch(IMBALANCED_X, IMBALANCED_Y, 3, settings, hidden_units=4)
    targets = np.eye(3)[IMBALANCED_Y] * 0.8 + 0.2 / 3
    squares = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in weights)
    assert len(weights) == 2  # the hidden and the softmax layer's matrices, no biases
    expected = np.mean(numpy_cross_entropy(logits, targets)) + 0.01 * squares
    assert loss == pytest.approx(expected, rel=1e-5)


def class_counts_of_batches(sampling, labels, batches=40):
    g = final_layer.build_training_graph(
        2, final_layer.LayerSpec(3),
        layer_training(learning_rate=0.1, train_batch_size=50, random_seed=5, sampling=sampling),
    )
    x = np.random.RandomState(1).normal(0, 1, (len(labels), 2)).astype(np.float32)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(g.iterator_init, {g.bottlenecks: x, g.labels: labels})
        drawn = np.concatenate([sess.run(g.ground_truth) for _ in range(batches)])
    return np.bincount(drawn, minlength=3) / len(drawn)


def test_uniform_sampling_draws_every_class_equally_often():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5, np.int64)
    np.testing.assert_allclose(class_counts_of_batches("uniform", labels), [1 / 3] * 3, atol=0.04)
    np.testing.assert_allclose(class_counts_of_batches("proportional", labels), [0.8, 0.15, 0.05], atol=0.01)


def test_uniform_sampling_never_draws_a_class_without_examples():
    labels = np.array([0] * 10 + [2] * 10, np.int64)
    frequencies = class_counts_of_batches("uniform", labels, batches=10)
    assert frequencies[1] == 0 and frequencies[0] == pytest.approx(0.5, abs=0.1)


def test_uniform_batches_are_the_same_for_the_same_seed():
    def first_batches(seed):
        with tf.Graph().as_default():
            x = tf.constant(np.arange(20, dtype=np.float32).reshape(10, 2))
            y = tf.constant(np.array([0] * 7 + [1] * 3, np.int64))
            batches = vector_batches.class_uniform_batches(x, y, 6, seed)
            labels = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()[1]
            with tf.compat.v1.Session() as sess:
                return [sess.run(labels).tolist() for _ in range(3)]

    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)


def test_dropout_acts_only_when_its_rate_is_fed():
    g = final_layer.build_training_graph(
        6, final_layer.LayerSpec(3, hidden_units=8),
        layer_training(learning_rate=0.1, train_batch_size=4, random_seed=2, dropout=0.5),
    )
    x = np.random.RandomState(0).normal(0, 1, (4, 6)).astype(np.float32)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for v in g.variables:
            v.load(np.random.RandomState(1).normal(0, 1, v.shape.as_list()).astype(np.float32), sess)
        plain = [sess.run(g.probabilities, {g.bottleneck_input: x}) for _ in range(2)]
        dropped = sess.run(g.probabilities, {g.bottleneck_input: x, g.dropout_rate: 0.5})
    np.testing.assert_array_equal(plain[0], plain[1])
    assert not np.allclose(plain[0], dropped)


def test_best_layer_keeps_the_highest_accuracy_then_lowest_cross_entropy_and_stops():
    best = training.BestLayer(patience=2)
    evaluations = [  # step, accuracy, cross entropy
        (10, 0.50, 1.0), (20, 0.80, 0.9), (30, 0.80, 0.7), (40, 0.75, 0.5), (50, 0.80, 0.8),
    ]
    improved = [best.update(s, a, c, lambda s=s: [s]) for s, a, c in evaluations]
    assert improved == [True, True, True, False, False]
    assert (best.step, best.values) == (30, [30])
    assert best.should_stop()
    assert not training.BestLayer(patience=0).should_stop()


def synthetic_arrays(seed=0, dimension=12, classes=3):
    """retrain.train's arrays: {split: (vectors, labels, images)}, classes of unequal size."""
    rng = np.random.RandomState(seed)
    arrays = {}
    for split, count in (("training", 45), ("validation", 12), ("testing", 9)):
        labels = np.sort(rng.randint(0, classes, count)).astype(np.int64)
        labels[:classes] = np.arange(classes)
        centres = np.eye(classes, dimension, dtype=np.float32) * 2
        vectors = (centres[labels] + rng.normal(0, 1, (count, dimension))).astype(np.float32)
        arrays[split] = (vectors, labels, [None] * count)
    return arrays


@pytest.mark.parametrize("options", [
    {},
    {"learning_rate_schedule": "cosine", "optimizer": "momentum", "dropout": 0.3},
    {"learning_rate_schedule": "exponential", "optimizer": "adam", "hidden_units": 8,
     "dropout": 0.2, "sampling": "uniform", "class_weighting": "balanced",
     "l2_regularization": 0.01, "label_smoothing": 0.1, "early_stopping_patience": 2},
])
def test_steps_between_evaluations_in_one_call_give_the_layer_of_one_step_per_call(
    tmp_path, options, monkeypatch, caplog
):
    settings = {name: config_lib.default(name) for name in config_lib.field_names()}
    settings.update(
        how_many_training_steps=47, eval_step_interval=10, train_batch_size=8,
        learning_rate=0.1, random_seed=3, validation_batch_size=5,
        summaries_dir=str(tmp_path / "logs"), **options,
    )
    graphs = []
    build = final_layer.build_training_graph
    monkeypatch.setattr(final_layer, "build_training_graph",
                        lambda *a, **k: graphs.append(build(*a, **k)) or graphs[-1])
    fetched = []
    run = tf.compat.v1.Session.run

    def recording_run(self, fetches, feed_dict=None, *args, **kwargs):
        fetched.append((fetches, feed_dict))
        return run(self, fetches, feed_dict, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1.Session, "run", recording_run)
    caplog.set_level("INFO")
    layers, logs, loop_calls = {}, {}, {}
    for looping in (True, False):
        settings["checkpoint_path"] = str(tmp_path / f"looping_{looping}" / "layer")
        fetched.clear()
        caplog.clear()
        config = config_lib.from_flat(settings)
        result = training.train(
            helpers.prepared_run(synthetic_arrays(), 3), config.training, config.evaluation,
            config.outputs, training.Hooks(in_graph_loop=looping),
        )
        # The steps each call of the in-graph loop ran.
        loop_calls[looping] = [len(feed[graphs[-1].learning_rates]) for f, feed in fetched
                               if f is graphs[-1].train_steps]
        logs[looping] = [re.sub(r"in [\d.]+s \(\d+ steps/s\)", "", r.getMessage())
                         for r in caplog.records]
        reader = tf.train.load_checkpoint(settings["checkpoint_path"])
        layers[looping] = {name: reader.get_tensor(name)
                           for name in reader.get_variable_to_shape_map()}
        layers[looping]["steps trained, kept"] = (result.steps, result.kept_step)
    assert sorted(layers[True]) == sorted(layers[False])
    for name in layers[True]:
        np.testing.assert_array_equal(layers[True][name], layers[False][name], err_msg=name)
    assert logs[True] == logs[False]
    assert any(line.startswith("Step 10/47: ") for line in logs[True])
    # Steps 1-9, 11-19, ... in the loop (in calls as long as suit this machine: see
    # training.StepsPerCall), the evaluation steps on their own.
    steps = layers[True]["steps trained, kept"][0]
    assert loop_calls[False] == [] and loop_calls[True][0] == 1
    assert sum(loop_calls[True]) == steps - ((steps - 1) // 10 + 1)
