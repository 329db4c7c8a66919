r"""Training a multi-label final layer on cached bottlenecks, and choosing what is kept.

The layer is the single-label one (final_layer.layer_logits: the same variables, the
same hidden layer and dropout) with a sigmoid instead of the softmax: each class's
score is an independent probability. The loss is the sigmoid cross entropy summed
over the classes and averaged over the batch, so each class's logit gets the gradient
(score - target), as a softmax's does: the learning rates that suit a softmax suit it.

The flags keep their meaning: optimizer, learning rate and schedule, batch size,
steps, hidden units, dropout, L2. --label_smoothing trains each class towards
1 - e/2 and e/2 instead of 1 and 0. Each evaluation (every --eval_step_interval
steps and the last) scores the whole validation set: its mean average precision
(mAP) chooses the layer kept (ties: the lower validation loss), as accuracy does for
a softmax (training.BestLayer), and drives early stopping. The thresholds are then
chosen on the kept layer's validation scores (thresholds.py). TensorBoard gets the
training batch's cross entropy (train/) and the validation mAP and cross entropy
(validation/) at each evaluation.
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import export, final_layer, schedules, vector_batches
from retrain_suite import training as training_lib
from retrain_suite.multi_label import metrics
from retrain_suite.multi_label import thresholds as thresholds_lib


@dataclasses.dataclass
class MultiLabelGraph:
    graph: tf.Graph
    bottlenecks: tf.Tensor  # placeholder: the whole training set, float32 [N, D]
    targets: tf.Tensor  # placeholder: its label sets, float32 [N, C]
    iterator_init: tf.Operation
    bottleneck_input: tf.Tensor  # a training batch unless fed
    target_input: tf.Tensor  # its label sets unless fed
    learning_rate: tf.Tensor  # float32 scalar, fed at every step
    dropout_rate: tf.Tensor  # float32 scalar placeholder, 0 unless fed; None without dropout
    train_step: tf.Operation
    cross_entropy: tf.Tensor  # plain: sigmoid cross entropy summed over classes, mean per image
    scores: tf.Tensor  # float32 [N, C] in [0, 1], named final_tensor_name
    saver: tf.compat.v1.train.Saver
    variables: list  # the final layer's variables, in a fixed order

    def named_layer_values(self, sess):
        """{variable name: ndarray}: the layer's current values, for export.frozen_graph."""
        return {v.op.name: value for v, value in zip(self.variables, sess.run(self.variables))}


def build_graph(dimension, spec, training):
    """The graph that trains a multi-label layer (spec: final_layer.LayerSpec) on
    D=dimension bottlenecks; training: a config.TrainingConfig (optimizer, rate, batch
    size, seed, dropout, L2, label smoothing)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(training.random_seed)
        bottlenecks = tf.compat.v1.placeholder(tf.float32, [None, dimension], "train_bottlenecks")
        targets = tf.compat.v1.placeholder(tf.float32, [None, spec.class_count], "train_targets")
        batches = vector_batches.training_batches(bottlenecks, targets, training.train_batch_size,
                                                  training.random_seed)
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        batch, batch_targets = iterator.get_next()
        bottleneck_input = tf.compat.v1.placeholder_with_default(
            batch, [None, dimension], "BottleneckInputPlaceholder")
        target_input = tf.compat.v1.placeholder_with_default(
            batch_targets, [None, spec.class_count], "GroundTruthInput")
        dropout_rate = None
        dropout = None
        if training.dropout > 0:
            dropout_rate = tf.compat.v1.placeholder_with_default(0.0, [], "dropout_rate")

            def dropout(features):
                return tf.nn.dropout(features, rate=dropout_rate, seed=training.random_seed)

        logits, scores = final_layer.add_final_layer(
            bottleneck_input, spec.class_count, spec.final_tensor_name, spec.hidden_units,
            dropout, sigmoid=True)
        variables = final_layer.final_layer_variables(graph)
        with tf.name_scope("losses"):
            def summed(labels):
                return tf.reduce_mean(tf.reduce_sum(
                    tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), 1))

            cross_entropy = summed(target_input)
            smoothing = training.label_smoothing
            loss = summed(target_input * (1.0 - smoothing) + smoothing / 2.0) if smoothing else (
                cross_entropy)
            if training.l2_regularization:
                squares = tf.add_n([tf.reduce_sum(tf.square(w))
                                    for w in final_layer.weight_matrices(graph)])
                loss = loss + training.l2_regularization * squares
        rate = tf.compat.v1.placeholder_with_default(float(training.learning_rate), [],
                                                    "learning_rate_input")
        optimizer = final_layer.make_optimizer(training.optimizer, rate)
        train_step = optimizer.minimize(loss, var_list=variables)
        saver = tf.compat.v1.train.Saver(variables)
    return MultiLabelGraph(graph, bottlenecks, targets, iterator.initializer, bottleneck_input,
                           target_input, rate, dropout_rate, train_step, cross_entropy, scores,
                           saver, variables)


def scores_of(sess, g, x):
    """The layer's scores float32 [n, C] for bottlenecks x float32 [n, D], in calls of
    training.rows_per_call images."""
    step = training_lib.rows_per_call(int(g.scores.shape[1]))
    parts = [sess.run(g.scores, {g.bottleneck_input: x[start:start + step]})
             for start in range(0, len(x), step)]
    return np.concatenate(parts) if parts else np.zeros([0, int(g.scores.shape[1])], np.float32)


def mean_cross_entropy(scores, targets):
    """The plain loss from scores float [n, C] and targets [n, C] (nats per image)."""
    p = np.clip(np.asarray(scores, np.float64), 1e-7, 1 - 1e-7)
    return float(np.mean(np.sum(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)), 1)))


def mean_average_precision(scores, targets):
    """mAP over the classes present in targets; 0.0 when none is."""
    values = [metrics.average_precision(scores[:, c], targets[:, c] > 0.5)
              for c in range(scores.shape[1])]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else 0.0


def _scalars(**values):
    """A TensorBoard Summary of named scalars (train/ and validation/ runs of --summaries_dir)."""
    return tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=name, simple_value=float(v))
                                       for name, v in values.items()])


@dataclasses.dataclass
class MultiLabelResult:
    steps: int  # training steps taken
    kept_step: int  # the step whose layer is exported
    layer: dict  # {variable name: ndarray}: the kept layer's values
    thresholds: np.ndarray  # float32 [C], chosen on validation (thresholds.py)
    scores: dict  # {split name: float32 [n, C]}: the kept layer on the validation and test sets
    history: list  # [training.EvaluationPoint]: train/validation losses; "accuracy" = mAP


def train(run, training, evaluation, outputs):
    """Train the multi-label layer on run's bottlenecks and targets; save the kept one
    to outputs.checkpoint_path. -> MultiLabelResult.

    run: a run_data.PreparedRun with Split.targets; training, evaluation, outputs:
    the config sections.
    """
    spec = final_layer.LayerSpec(run.class_count, outputs.final_tensor_name,
                                 training.hidden_units, multi_label=True)
    g = build_graph(run.dimension, spec, training)
    validation = run.validation
    steps, interval = training.how_many_training_steps, evaluation.eval_step_interval
    selecting = bool(len(validation)) and (training.keep_best or training.early_stopping_patience)
    best = training_lib.BestLayer(patience=training.early_stopping_patience)
    history, progress = [], training_lib.ProgressLines(steps)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        writer = tf.compat.v1.summary.FileWriter(os.path.join(outputs.summaries_dir, "train"),
                                                 g.graph)
        validation_writer = tf.compat.v1.summary.FileWriter(
            os.path.join(outputs.summaries_dir, "validation"))
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: run.training.bottlenecks,
                                   g.targets: run.training.targets})
        start, step = time.monotonic(), 0
        while step < steps:
            feed = {g.learning_rate: schedules.learning_rate_at(
                training.learning_rate_schedule, step, training.learning_rate, steps,
                training.learning_rate_decay, training.decay_steps)}
            if g.dropout_rate is not None:
                feed[g.dropout_rate] = training.dropout
            step += 1
            if step % interval and step != steps:
                sess.run(g.train_step, feed)
                continue
            _, entropy = sess.run([g.train_step, g.cross_entropy], feed)
            writer.add_summary(_scalars(cross_entropy=entropy), step)
            message = f"Step {step}/{steps}: train cross entropy {entropy:.4f}"
            point = [None, None, 0]
            if len(validation):
                scores = scores_of(sess, g, validation.bottlenecks)
                score = mean_average_precision(scores, validation.targets)
                loss = mean_cross_entropy(scores, validation.targets)
                point = [score, loss, len(validation)]
                validation_writer.add_summary(
                    _scalars(cross_entropy=loss, mean_average_precision=score), step)
                message += (f", validation mAP {100 * score:.1f}%, cross entropy {loss:.4f} "
                            f"(N={len(validation)})")
                if selecting and best.update(step, score, loss,
                                             lambda: sess.run(g.variables)):
                    message += " (best so far)"
            logging.log(logging.INFO if progress.due(step) else logging.DEBUG, "%s", message)
            history.append(training_lib.EvaluationPoint(step, None, float(entropy), None, *point))
            if selecting and best.should_stop():
                logging.info("Early stopping at step %d: no better validation mAP in %d "
                             "evaluations since step %d.", step, best.patience, best.step)
                break
        training_lib.log_steps_rate(step, start)
        writer.close()
        validation_writer.close()
        kept_step = step
        if selecting and training.keep_best:
            for variable, value in zip(g.variables, best.values):
                variable.load(value, sess)
            kept_step = best.step
            logging.info("Keeping the final layer from step %d of %d: validation mAP %.1f%% "
                         "(all %d validation images).", best.step, step, 100 * best.accuracy,
                         len(validation))
        layer = g.named_layer_values(sess)
        export.write_output("checkpoint_path", outputs.checkpoint_path,
                            lambda: final_layer.save_checkpoint(g.saver, sess,
                                                                outputs.checkpoint_path))
        scores = {split.name: scores_of(sess, g, split.bottlenecks)
                  for split in (validation, run.testing)}
    thresholds = thresholds_lib.choose_thresholds(scores["validation"], validation.targets)
    if not len(validation):
        logging.warning("No validation images: every threshold is %.1f.",
                        thresholds_lib.DEFAULT_THRESHOLD)
    return MultiLabelResult(step, kept_step, layer, thresholds, scores, history)
