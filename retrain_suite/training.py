"""Training the final layer on cached bottlenecks, and choosing the layer that is kept.

`train` runs the loop: training steps (many per sess.run, in calls short
enough for Ctrl-C to stop the run promptly), an evaluation every
eval_step_interval steps (logged, and written to TensorBoard), and, with
validation images, the choice of the layer to keep (`BestLayer`: best on the
whole validation set) and early stopping. It saves the kept layer to the
checkpoint the export restores from.
"""

import dataclasses
import os
import time
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import dataset as dataset_lib
from retrain_suite import export, final_layer, schedules
from retrain_suite.bottleneck import compute


def sample(rng, count, size):
    """Indices of a random subset of `size` out of `count`; all of them if size is -1."""
    if size == -1 or size >= count:
        return np.arange(count)
    return np.sort(rng.choice(count, size, replace=False))


@dataclasses.dataclass
class BestLayer:
    """The best evaluation so far, for --keep_best and --early_stopping_patience.

    The score of an evaluation is its accuracy on the *whole* validation set,
    ties broken by the lower cross entropy there. Not the logged accuracy on a
    --validation_batch_size sample: a new sample is drawn at every evaluation,
    so comparing samples would pick the luckiest draw rather than the best
    layer. Ties are common (small sets often reach 100%), and among layers
    with equal accuracy the one more confident on the right answers is better.
    """

    patience: int = 0  # evaluations without improvement before stopping; 0: never
    step: Optional[int] = None
    accuracy: float = -1.0
    cross_entropy: float = float("inf")
    values: Optional[list] = None  # the layer's variable values at `step`
    evaluations_without_improvement: int = 0

    def update(self, step, accuracy, cross_entropy, values):
        """Record one evaluation; values is a callable giving the layer's values. -> improved?"""
        if (accuracy, -cross_entropy) > (self.accuracy, -self.cross_entropy):
            self.step, self.accuracy, self.cross_entropy = step, accuracy, cross_entropy
            self.values = values()
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        return False

    def should_stop(self):
        return bool(self.patience) and self.evaluations_without_improvement >= self.patience


@dataclasses.dataclass
class TrainingResult:
    steps: int  # training steps taken (fewer than asked when stopped early)
    kept_step: int  # the step whose final layer was saved and is exported
    # {split: (rows int [n] into that set's arrays, predictions int64 [n])} for the
    # evaluated sets: all validation images, test images as --test_batch_size samples.
    predictions: dict
    layer: dict  # {variable name: ndarray}: the kept layer's values, what is exported
    # {split: float32 [n] the probability given to the predicted class}, row for row
    # with predictions: what the report shows of a wrong image. Not the [n, C]
    # probabilities: 1.2 GB for 30,000 images of 10,000 classes.
    confidences: dict = None


EVALUATION_CELLS = 2**22  # probabilities [B, C] per Session call when evaluating a set
# (16 MB of float32): memory bounded at any number of images and classes


def rows_per_call(class_count):
    """How many images one evaluation call takes: a batch of at most EVALUATION_CELLS
    probabilities (every image at once with few classes)."""
    return max(1, EVALUATION_CELLS // class_count)


def _calls(g, count):
    """Slices of `count` rows, one per evaluation call of rows_per_call images."""
    step = rows_per_call(int(g.probabilities.shape[1]))
    return [slice(start, start + step) for start in range(0, count, step)]


def predict(sess, g, x):
    """The layer's prediction for each bottleneck of x (float32 [n, D]), in calls of
    rows_per_call images. -> (predictions int64 [n], confidences float32 [n]: the
    probability given to each predicted class)."""
    predictions, confidences = [np.zeros([0], np.int64)], [np.zeros([0], np.float32)]
    for rows in _calls(g, len(x)):
        predicted, probabilities = sess.run([g.predictions, g.probabilities],
                                            {g.bottleneck_input: x[rows]})
        predictions.append(predicted)
        confidences.append(probabilities[np.arange(len(predicted)), predicted])
    return np.concatenate(predictions), np.concatenate(confidences)


def score(sess, g, x, y):
    """Accuracy and mean cross entropy of the layer on x (float32 [n, D]), y (int64
    [n]), in calls of rows_per_call images: each call's means weighted by its
    images (in one call, exactly the graph's). -> (accuracy, cross entropy)."""
    accuracy = entropy = 0.0
    for rows in _calls(g, len(x)):
        batch_accuracy, batch_entropy = sess.run(
            [g.accuracy, g.cross_entropy], {g.bottleneck_input: x[rows], g.ground_truth: y[rows]})
        accuracy += float(batch_accuracy) * len(y[rows])
        entropy += float(batch_entropy) * len(y[rows])
    return accuracy / len(y), entropy / len(y)


SECONDS_PER_CALL = 0.1  # the aim for one call of the train_steps loop


class StepsPerCall:
    """How many steps the next call of the in-graph train_steps loop runs.

    Python handles Ctrl-C (SIGINT) only between Session calls: one call of
    every step before the next evaluation (a million of them with
    --eval_step_interval=1000000) left Ctrl-C waiting for minutes. A call runs
    as many steps as took about SECONDS_PER_CALL on the calls so far: it
    starts at one step and at most doubles from one call to the next, so
    neither a first call slowed by start-up nor a lucky fast one makes a long
    call. How the steps are cut into calls never changes the result: the loop
    runs exactly the arithmetic, batches and dropout masks of one call per step.
    """

    def __init__(self):
        self.steps = 1

    def next(self, left):
        """The steps of the next call, of `left` still to run before an evaluation."""
        return min(self.steps, left)

    def measured(self, steps, seconds):
        """Record that a call of `steps` steps took `seconds`."""
        fitting = steps * SECONDS_PER_CALL / max(seconds, 1e-9)
        self.steps = int(max(1, min(2 * self.steps, fitting)))


def loss_settings(config, train_y, class_count):
    weights = None
    if config.training.class_weighting == "balanced":
        weights = final_layer.balanced_class_weights(train_y, class_count)
        logging.info("Class weights (balanced): %s", format_weights(weights))
    return final_layer.LossSettings(
        class_weights=weights, label_smoothing=config.training.label_smoothing,
        l2_regularization=config.training.l2_regularization,
    )


def validate(sess, g, val_x, val_y, rows, rate, step, writer, best):
    """Evaluate the layer on the validation `rows` sample (logged, summarised) and,
    when best (a BestLayer) is given, score it on the whole set. -> log text."""
    accuracy, entropy, summary = sess.run(
        [g.accuracy, g.cross_entropy, g.summaries],
        {g.bottleneck_input: val_x[rows], g.ground_truth: val_y[rows], g.learning_rate: rate},
    )
    writer.add_summary(summary, step)
    message = f", validation accuracy {100 * accuracy:.1f}% (N={len(rows)})"
    if best is None:
        return message
    if len(rows) < len(val_y):
        accuracy, entropy = score(sess, g, val_x, val_y)
        message += f", all {len(val_y)}: {100 * accuracy:.1f}%"
    if best.update(step, accuracy, entropy, lambda: g.layer_values(sess)):
        message += " (best so far)"
    return message


def train(arrays, class_count, config, export_intermediate, batch_source=None,
          in_graph_loop=True):
    """Train the final layer; save the kept one to config.outputs.checkpoint_path. -> TrainingResult.

    export_intermediate(step, {variable name: ndarray}) is called every
    --intermediate_store_frequency steps.

    batch_source: see final_layer.build_training_graph (distorted training images).
    The steps between two evaluations run in the graph's train_steps loop, in
    calls of about SECONDS_PER_CALL each (StepsPerCall), unless in_graph_loop is
    False or there is a batch_source: then every step is a call of its own.
    Both give the same layer for the same seed.
    """
    train_x, train_y, _ = arrays["training"]
    val_x, val_y, _ = arrays["validation"]
    test_x, test_y, _ = arrays["testing"]
    seed = config.training.random_seed
    rng = np.random.RandomState(seed)
    g = final_layer.build_training_graph(
        train_x.shape[1], class_count, config.outputs.final_tensor_name, config.training.optimizer,
        config.training.learning_rate, config.training.train_batch_size, seed,
        hidden_units=config.training.hidden_units,
        loss_settings=loss_settings(config, train_y, class_count),
        sampling=config.training.sampling, batch_source=batch_source,
        dropout=config.training.dropout > 0,
    )
    summaries_dir = config.outputs.summaries_dir
    steps, interval = config.training.how_many_training_steps, config.evaluation.eval_step_interval
    selecting = bool(len(val_y)) and (
        config.training.keep_best or config.training.early_stopping_patience > 0
    )
    best = BestLayer(patience=config.training.early_stopping_patience)
    if not len(val_y):
        logging.info("No validation images: validation accuracy is not reported, and the "
                     "last step's layer is exported.")

    def rate_at(step):
        return schedules.learning_rate_at(
            config.training.learning_rate_schedule, step, config.training.learning_rate, steps,
            config.training.learning_rate_decay, config.training.decay_steps,
        )

    looping = in_graph_loop and g.train_steps is not None
    chunks = StepsPerCall()
    with tf.compat.v1.Session(graph=g.graph) as sess:
        train_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "train"), g.graph)
        validation_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "validation"))
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: train_x, g.labels: train_y})
        start = time.monotonic()
        step = 0
        while step < steps:
            if looping:
                # The steps before the next evaluation in calls of the train_steps loop,
                # each short enough for Ctrl-C (see StepsPerCall); the evaluation's own
                # step then runs below as before, with its metrics.
                evaluation_step = min(steps, (step // interval + 1) * interval)
                while evaluation_step - 1 > step:
                    count = chunks.next(evaluation_step - 1 - step)
                    feed = {g.learning_rates: [rate_at(s) for s in range(step, step + count)]}
                    if g.dropout_rate is not None:
                        feed[g.dropout_rate] = config.training.dropout
                    called = time.monotonic()
                    sess.run(g.train_steps, feed)
                    chunks.measured(count, time.monotonic() - called)
                    step += count
            rate = rate_at(step)
            step += 1
            if batch_source is not None and step == 2:
                clock = time.monotonic()  # Step 1 paid the start-up costs.
            if batch_source is not None and step == 4:
                per_step = (time.monotonic() - clock) / 2
                log_distortion_cost(per_step, steps, config.training.train_batch_size)
            feed = {g.learning_rate: rate}
            if g.dropout_rate is not None:
                feed[g.dropout_rate] = config.training.dropout
            if step % interval and step != steps:
                sess.run(g.train_step, feed)
                continue
            _, train_accuracy, cross_entropy, summary = sess.run(
                [g.train_step, g.accuracy, g.cross_entropy, g.summaries], feed
            )
            train_writer.add_summary(summary, step)
            message = (
                f"Step {step}/{steps}: train accuracy {100 * train_accuracy:.1f}%, "
                f"cross entropy {cross_entropy:.4f}"
            )
            if len(val_y):
                rows = sample(rng, len(val_y), config.evaluation.validation_batch_size)
                message += validate(
                    sess, g, val_x, val_y, rows, rate, step, validation_writer,
                    best if selecting else None,
                )
            logging.info("%s", message)
            frequency = config.outputs.intermediate_store_frequency
            if frequency and step % frequency == 0 and step != steps:
                export_intermediate(step, g.named_layer_values(sess))
            if best.should_stop():
                logging.info(
                    "Early stopping at step %d: no better validation score in %d evaluations "
                    "since step %d.", step, best.patience, best.step,
                )
                break
        elapsed = time.monotonic() - start
        logging.info("Trained %d steps in %.1fs (%.0f steps/s).", step, elapsed,
                     step / max(elapsed, 1e-9))
        train_writer.close()
        validation_writer.close()
        kept_step = step
        if selecting and config.training.keep_best:
            g.restore_layer_values(sess, best.values)
            kept_step = best.step
            logging.info(
                "Keeping the final layer from step %d of %d: validation accuracy %.1f%%, "
                "cross entropy %.4f (all %d validation images).", best.step, step,
                100 * best.accuracy, best.cross_entropy, len(val_y),
            )
        layer = g.named_layer_values(sess)
        export.write_output("checkpoint_path", config.outputs.checkpoint_path,
                     lambda: final_layer.save_checkpoint(g.saver, sess, config.outputs.checkpoint_path))
        predictions, confidences = {}, {}
        for split, x, y, size in (("validation", val_x, val_y, -1),
                                  ("testing", test_x, test_y, config.evaluation.test_batch_size)):
            if len(y):
                rows = sample(rng, len(y), size)
                predicted, confidences[split] = predict(sess, g, x[rows])
                predictions[split] = (rows, predicted)
    return TrainingResult(steps=step, kept_step=kept_step, predictions=predictions, layer=layer,
                          confidences=confidences)


def log_distortion_cost(per_step, steps, batch_size):
    logging.info(
        "Distortions are on: every step decodes, distorts and runs the module on %d "
        "images instead of reading cached bottlenecks: %.2f s a step here, about %s for "
        "%d steps.", batch_size, per_step, compute.format_duration(per_step * steps), steps,
    )


def format_weights(weights):
    """Class weights for the log: each one, or their range past MAX_CLASSES_LISTED classes."""
    if len(weights) <= dataset_lib.MAX_CLASSES_LISTED:
        return ", ".join(f"{w:.3f}" for w in weights)
    present = weights[weights > 0]
    return (f"{present.min():.3f} to {present.max():.3f} over the {len(present)} classes with "
            f"training images (0 for the {len(weights) - len(present)} without)")
