"""Training the final layer on cached bottlenecks, and choosing the layer that is kept.

`train` runs the loop: training steps (many per sess.run, in calls short
enough for Ctrl-C to stop the run promptly), an evaluation every
eval_step_interval steps (logged, and written to TensorBoard), and, with
validation images, the choice of the layer to keep (`BestLayer`: best on the
whole validation set) and early stopping. It saves the kept layer to the
checkpoint the export restores from. Every evaluation is also kept, as an
`EvaluationPoint`, in the result's `history` (the report page's curves and
results.csv).
"""

import dataclasses
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import dataset as dataset_lib
from retrain_suite import (
    export,
    final_layer,
    held_validation,
    run_data,
    schedules,
    streamed_batches,
)
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


@dataclasses.dataclass(frozen=True)
class EvaluationPoint:
    """One evaluation of training or fine-tuning: the numbers its log line shows.

    Accuracies are fractions in [0, 1], cross entropies and losses means per
    image (nats); None where that phase does not measure the value. A
    cross entropy or loss may be NaN or infinite when training diverged.
    """

    step: int
    # On the step's training batch; bottleneck training only (fine-tuning does not measure them).
    train_accuracy: Optional[float]
    train_cross_entropy: Optional[float]  # plain: no class weights, smoothing or L2
    # Fine-tuning only: the step's training loss (weights, smoothing, L2 and the module's
    # regularization included); None at step 0, before any step.
    train_loss: Optional[float]
    # On validation_images images: a --validation_batch_size sample in training (as
    # logged and in TensorBoard), every validation image in fine-tuning. None without them.
    validation_accuracy: Optional[float]
    validation_cross_entropy: Optional[float]
    validation_images: int


@dataclasses.dataclass
class TrainingResult:
    steps: int  # training steps taken (fewer than asked when stopped early)
    kept_step: int  # the step whose final layer was saved and is exported
    # {split name: run_data.Predictions} for the evaluated sets: every validation
    # image, the test images as a --test_batch_size sample. One predicted class and
    # its probability per image, not the [n, C] probabilities: 1.2 GB for 30,000
    # images of 10,000 classes.
    predictions: dict
    layer: dict  # {variable name: ndarray}: the kept layer's values, what is exported
    # [EvaluationPoint]: every evaluation, in step order (every --eval_step_interval
    # steps and the last step).
    history: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a caller adds to training: intermediate exports, another batch source."""

    # (step, {variable name: ndarray}) -> None, every --intermediate_store_frequency steps
    export_intermediate: Optional[Callable] = None
    batch_source: Optional[Callable] = None  # see final_layer.build_training_graph
    # Run the steps between evaluations in the graph's train_steps loop (False: a
    # Session call per step; both give the same layer for the same seed).
    in_graph_loop: bool = True


EVALUATION_CELLS = 2**22  # probabilities [B, C] per Session call when evaluating a set
# (16 MB of float32): memory bounded at any number of images and classes


def rows_per_call(class_count):
    """How many images one evaluation call takes: a batch of at most EVALUATION_CELLS
    probabilities (every image at once with few classes)."""
    return max(1, EVALUATION_CELLS // class_count)


def _calls(g, x):
    """Slices of the rows of x (float32 [n, D]), one per evaluation call of
    rows_per_call images. Vectors streamed from the store are read call by call, so
    a call then also holds at most EVALUATION_CELLS of them."""
    step = rows_per_call(int(g.probabilities.shape[1]))
    if streamed_batches.is_streamed(x):
        step = min(step, rows_per_call(int(x.shape[1])))
    return [slice(start, start + step) for start in range(0, len(x), step)]


def predict(sess, g, x):
    """The layer's prediction for each bottleneck of x (float32 [n, D]), in calls of
    rows_per_call images. -> (predictions int64 [n], confidences float32 [n]: the
    probability given to each predicted class)."""
    predictions, confidences = [np.zeros([0], np.int64)], [np.zeros([0], np.float32)]
    for rows in _calls(g, x):
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
    for rows in _calls(g, x):
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


def run_steps(sess, g, chunks, rates, dropout):
    """Run the first chunks.next(len(rates)) training steps in one call of g.train_steps
    (a final_layer.TrainingGraph), step n at learning rate rates[n], timed for chunks
    (a StepsPerCall). -> the number of steps run."""
    count = chunks.next(len(rates))
    feed = {g.learning_rates: rates[:count]}
    if g.dropout_rate is not None:
        feed[g.dropout_rate] = dropout
    called = time.monotonic()
    sess.run(g.train_steps, feed)
    chunks.measured(count, time.monotonic() - called)
    return count


def loss_settings(training, train_y, class_count):
    """The loss of a config.TrainingConfig for training labels train_y (int64 [n])."""
    weights = None
    if training.class_weighting == "balanced":
        weights = final_layer.balanced_class_weights(train_y, class_count)
        logging.info("Class weights (balanced): %s", format_weights(weights))
    return final_layer.LossSettings(
        class_weights=weights, label_smoothing=training.label_smoothing,
        l2_regularization=training.l2_regularization,
    )


class ProgressLines:
    """Which evaluation lines of training the console shows (INFO); the rest go to DEBUG.

    Shown: the first evaluation, the first past each tenth of the steps, the first
    PROGRESS_SECONDS or more after the last one shown, and the last step. Every
    evaluation is still written to TensorBoard (and the report) whatever is shown.
    """

    PROGRESS_SECONDS = 5.0

    def __init__(self, total_steps, clock=time.monotonic):
        self.total, self.clock = total_steps, clock
        self.shown_tenth = self.shown_at = None

    def due(self, step):
        """Whether the evaluation at step (1-based) is shown; records it when it is."""
        tenth, now = step * 10 // self.total, self.clock()
        if (self.shown_at is None or step >= self.total or tenth > self.shown_tenth
                or now - self.shown_at >= self.PROGRESS_SECONDS):
            self.shown_tenth, self.shown_at = tenth, now
            return True
        return False


@dataclasses.dataclass(frozen=True)
class _Evaluator:
    """The validation set and where its evaluations go, during one training Session."""

    sess: tf.compat.v1.Session
    g: final_layer.TrainingGraph
    validation: object  # run_data.Split
    writer: tf.compat.v1.summary.FileWriter
    best: Optional[BestLayer]  # None: no layer is chosen (every evaluation only logged)


def validate(evaluator, rows, rate, step, held=None):
    """Evaluate the layer on the validation `rows` sample (logged, summarised) and,
    when a layer is being chosen, score it on the whole set. -> (log text, the
    sample's accuracy, the sample's cross entropy).

    held: the held_validation.Evaluated of this evaluation step's call, which
    already holds every number (the held path); None: the fed path, one Session
    call when the whole set fits in one call (rows_per_call): the sample through
    bottleneck_input with its summaries, the whole set through scored_input, and
    the layer's values; call by call for streamed vectors.
    """
    sess, g, validation = evaluator.sess, evaluator.g, evaluator.validation
    val_x, val_y = validation.bottlenecks, validation.labels
    choosing = evaluator.best is not None
    sampled_part = len(rows) < len(val_y)
    whole_in_call, values = False, None
    if held is not None:
        accuracy, entropy, summary = held.accuracy, held.cross_entropy, held.summary
        whole_in_call, values = sampled_part and held.correct is not None, held.values
        fetched = [None, None, None, held.correct, held.cross_entropies]
    elif (streamed_batches.is_streamed(val_x)
            and len(_calls(g, sampled_x := streamed_batches.subset(val_x, rows))) > 1):
        # A sample too large to read from the store at once: scored call by call,
        # and summarised by its two numbers.
        accuracy, entropy = score(sess, g, sampled_x, val_y[rows])
        summary = tf.compat.v1.Summary(value=[
            tf.compat.v1.Summary.Value(tag="accuracy", simple_value=accuracy),
            tf.compat.v1.Summary.Value(tag="cross_entropy", simple_value=entropy)])
    else:
        fetches = [g.accuracy, g.cross_entropy, g.validation_summaries]
        feed = {g.bottleneck_input: streamed_batches.subset(val_x, rows)[:],
                g.ground_truth: val_y[rows], g.learning_rate: rate}
        # Streamed vectors are not read whole at every evaluation: score() reads them
        # call by call below.
        whole_in_call = (choosing and sampled_part and not streamed_batches.is_streamed(val_x)
                         and len(val_y) <= rows_per_call(int(g.probabilities.shape[1])))
        if whole_in_call:
            fetches += [g.scored_correct, g.scored_cross_entropy]
            feed.update({g.scored_input: val_x, g.scored_labels: val_y})
        if choosing:
            fetches += list(g.variables)
        fetched = sess.run(fetches, feed)
        accuracy, entropy, summary = fetched[:3]
        if choosing:
            values = fetched[-len(g.variables):]
    evaluator.writer.add_summary(summary, step)
    sampled = (float(accuracy), float(entropy))
    message = f", validation accuracy {100 * accuracy:.1f}% (N={len(rows)})"
    if not choosing:
        return (message, *sampled)
    if whole_in_call:
        correct, entropies = fetched[3], fetched[4]
        accuracy, entropy = float(np.mean(correct)), float(np.mean(entropies))
    elif sampled_part:
        accuracy, entropy = score(sess, g, val_x, val_y)
    if sampled_part:
        message += f", all {len(val_y)}: {100 * accuracy:.1f}%"
    if evaluator.best.update(step, accuracy, entropy,
                             lambda: values if values is not None else g.layer_values(sess)):
        message += " (best so far)"
    return (message, *sampled)


def train(run, training, evaluation, outputs, hooks=Hooks()):
    """Train the final layer on run's bottlenecks; save the kept one. -> TrainingResult.

    run: a run_data.PreparedRun; training, evaluation, outputs: the
    config.TrainingConfig, EvaluationConfig and OutputConfig of the run (the
    kept layer goes to outputs.checkpoint_path, TensorBoard to
    outputs.summaries_dir). The steps between two evaluations run in the
    graph's train_steps loop, in calls of about SECONDS_PER_CALL each
    (StepsPerCall), unless hooks.in_graph_loop is False or there is a
    hooks.batch_source: then every step is a call of its own.
    """
    validation, testing = run.validation, run.testing
    train_y, val_y = run.training.labels, validation.labels
    seed = training.random_seed
    rng = np.random.RandomState(seed)
    spec = final_layer.LayerSpec(run.class_count, outputs.final_tensor_name, training.hidden_units)
    streamed = streamed_batches.is_streamed(run.training.bottlenecks)
    stream = (streamed_batches.Source.of(run.training.bottlenecks, train_y)
              if streamed and hooks.batch_source is None else None)
    losses = loss_settings(training, train_y, run.class_count)
    g = final_layer.build_training_graph(
        run.dimension, spec, training, losses, hooks.batch_source, stream)
    summaries_dir = outputs.summaries_dir
    steps, interval = training.how_many_training_steps, evaluation.eval_step_interval
    selecting = bool(len(val_y)) and (
        training.keep_best or training.early_stopping_patience > 0
    )
    best = BestLayer(patience=training.early_stopping_patience)
    if not len(val_y):
        logging.info("No validation images: validation accuracy is not reported, and the "
                     "last step's layer is exported.")

    def rate_at(step):
        return schedules.learning_rate_at(
            training.learning_rate_schedule, step, training.learning_rate, steps,
            training.learning_rate_decay, training.decay_steps,
        )

    looping = hooks.in_graph_loop and g.train_steps is not None
    # The validation set held in the graph: its evaluation in the step's own call.
    held = (held_validation.build(g, spec, losses)
            if len(val_y) and held_validation.fits(validation.bottlenecks)
            and len(val_y) <= rows_per_call(run.class_count) else None)
    chunks = StepsPerCall()
    progress = ProgressLines(steps)
    with tf.compat.v1.Session(graph=g.graph) as sess, streamed_batches.failures_raised(stream):
        train_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "train"), g.graph)
        validation_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "validation"))
        sess.run(tf.compat.v1.global_variables_initializer())
        if g.iterator_feed is not None:
            sess.run(g.iterator_init, g.iterator_feed)
        elif streamed:  # Batches of distorted images: the vectors are not read.
            sess.run(g.iterator_init)
        else:
            sess.run(g.iterator_init, {g.bottlenecks: run.training.bottlenecks, g.labels: train_y})
        evaluator = _Evaluator(sess, g, validation, validation_writer, best if selecting else None)
        if held is not None:
            held.initialize(sess, validation.bottlenecks, val_y)
        start = time.monotonic()
        step = 0
        history = []
        while step < steps:
            if looping:
                # The steps before the next evaluation in calls of the train_steps loop,
                # each short enough for Ctrl-C (see StepsPerCall); the evaluation's own
                # step then runs below as before, with its metrics.
                evaluation_step = min(steps, (step // interval + 1) * interval)
                while evaluation_step - 1 > step:
                    rates = [rate_at(s) for s in range(step, evaluation_step - 1)]
                    step += run_steps(sess, g, chunks, rates, training.dropout)
            rate = rate_at(step)
            step += 1
            if hooks.batch_source is not None and step == 2:
                clock = time.monotonic()  # Step 1 paid the start-up costs.
            if hooks.batch_source is not None and step == 4:
                per_step = (time.monotonic() - clock) / 2
                log_distortion_cost(per_step, steps, training.train_batch_size)
            feed = {g.learning_rate: rate}
            if g.dropout_rate is not None:
                feed[g.dropout_rate] = training.dropout
            if step % interval and step != steps:
                sess.run(g.train_step, feed)
                continue
            done = None
            if held is not None:  # the step and the validation after it in one call
                rows = sample(rng, len(val_y), evaluation.validation_batch_size)
                done = held.evaluate(sess, feed, rows, whole=evaluator.best is not None)
                train_accuracy, cross_entropy, summary = (
                    done.train_accuracy, done.train_cross_entropy, done.train_summary)
            else:
                _, train_accuracy, cross_entropy, summary = sess.run(
                    [g.train_step, g.accuracy, g.cross_entropy, g.summaries], feed
                )
            train_writer.add_summary(summary, step)
            message = (
                f"Step {step}/{steps}: train accuracy {100 * train_accuracy:.1f}%, "
                f"cross entropy {cross_entropy:.4f}"
            )
            validated = (None, None, 0)
            if len(val_y):
                if done is None:
                    rows = sample(rng, len(val_y), evaluation.validation_batch_size)
                text, *scores = validate(evaluator, rows, rate, step, done)
                message += text
                validated = (*scores, len(rows))
            shown = progress.due(step) or best.should_stop()
            logging.log(logging.INFO if shown else logging.DEBUG, "%s", message)
            history.append(EvaluationPoint(step, float(train_accuracy), float(cross_entropy),
                                           None, *validated))
            frequency = outputs.intermediate_store_frequency
            if frequency and step % frequency == 0 and step != steps:
                hooks.export_intermediate(step, g.named_layer_values(sess))
            if best.should_stop():
                logging.info(
                    "Early stopping at step %d: no better validation score in %d evaluations "
                    "since step %d.", step, best.patience, best.step,
                )
                break
        log_steps_rate(step, start)
        train_writer.close()
        validation_writer.close()
        kept_step = step
        if selecting and training.keep_best:
            g.restore_layer_values(sess, best.values)
            kept_step = best.step
            logging.info(
                "Keeping the final layer from step %d of %d: validation accuracy %.1f%%, "
                "cross entropy %.4f (all %d validation images).", best.step, step,
                100 * best.accuracy, best.cross_entropy, len(val_y),
            )
        layer = g.named_layer_values(sess)
        export.write_output("checkpoint_path", outputs.checkpoint_path,
                            lambda: final_layer.save_checkpoint(g.saver, sess, outputs.checkpoint_path))
        predictions = {}
        for split, size in ((validation, -1), (testing, evaluation.test_batch_size)):
            if len(split):
                positions = sample(rng, len(split), size)
                classes, confidences = predict(
                    sess, g, streamed_batches.subset(split.bottlenecks, positions))
                predictions[split.name] = run_data.Predictions(positions, classes, confidences)
    return TrainingResult(steps=step, kept_step=kept_step, predictions=predictions, layer=layer,
                          history=history)


def log_steps_rate(steps, start):
    """The line that ends training: steps taken since start (time.monotonic()) and their rate."""
    elapsed = time.monotonic() - start
    logging.info("Trained %d steps in %.1fs (%.0f steps/s).", steps, elapsed,
                 steps / max(elapsed, 1e-9))


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
