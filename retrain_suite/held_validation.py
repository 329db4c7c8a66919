r"""The validation set held in the training graph, evaluated in the evaluation step's own call.

At every evaluation (every --eval_step_interval steps) training runs the
step with its metrics, then scores the layer on a sample of the validation
set (logged, and TensorBoard's validation run) and, when a layer is being
chosen, on the whole set with the layer's values (training.BestLayer). Fed
from Python, that is a second Session call per evaluation carrying the
sample's and the whole set's vectors: 400 evaluations of a 4,000-step warm
rerun cost more than its 3,600 other steps.

Held instead: the validation vectors and labels are copied into the graph
once, as two local variables initialised through placeholders (their values
never enter the graph's definition, which TensorBoard stores), and the
evaluation step's call runs, after the update (control dependencies on
train_step), the sample gathered by its rows, the whole set, the sample's
summaries and the layer's values. One call, only the sample's row numbers
fed, and the same numbers as the fed path (the same layer arithmetic on the
same weights): tests/test_held_validation.py compares them.

The summaries carry the tags of TrainingGraph.validation_summaries (made
with tf.raw_ops, whose tags are strings given here, not name scopes that a
second op of the same name would change), so TensorBoard shows the same runs.

Held only when the copy is small (HELD_BYTES) and the set is in memory:
streamed vectors and large sets stay with the fed path (training.validate).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from retrain_suite import final_layer

HELD_BYTES = 64 << 20  # the largest validation set copied into the graph (float32 vectors)


def fits(vectors):
    """Whether validation vectors (an in-memory float32 [n, D] array) are held in the graph."""
    return isinstance(vectors, np.ndarray) and 0 < vectors.nbytes <= HELD_BYTES


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """What one evaluation step's call gives, its step included."""

    train_accuracy: float  # on the step's training batch, before its update
    train_cross_entropy: float
    train_summary: bytes  # TrainingGraph.summaries of the step
    accuracy: float  # the validation sample's, after the update
    cross_entropy: float
    summary: bytes  # the sample's summaries, the tags of TrainingGraph.validation_summaries
    # The whole set's, when asked for (else None): float32 [n], 1 where an image's
    # predicted class is its label; float32 [n], each one's plain cross entropy; the
    # layer's values after the update, in TrainingGraph.variables' order.
    correct: object
    cross_entropies: object
    values: object


@dataclasses.dataclass(frozen=True)
class HeldValidation:
    """The held copy's ops in a TrainingGraph (see the module docstring)."""

    g: final_layer.TrainingGraph
    initializer: tf.Operation  # copies the placeholders' values into the graph
    vectors_input: tf.Tensor  # float32 [n, D] placeholder, fed once to the initializer
    labels_input: tf.Tensor  # int64 [n] placeholder, likewise
    rows: tf.Tensor  # int64 [m] placeholder: the sample's rows
    fetches: dict  # name -> tensor, after the update

    def initialize(self, sess, vectors, labels):
        sess.run(self.initializer, {self.vectors_input: vectors, self.labels_input: labels})

    def evaluate(self, sess, feed, rows, whole):
        """The evaluation step: one training step (feed: its learning rate and dropout),
        its metrics, then the validation sample at rows (int64 [m]) and, when whole,
        the whole set and the layer's values (else None for those). -> Evaluated."""
        g = self.g
        names = ["accuracy", "cross_entropy", "summary"]
        if whole:
            names += ["correct", "cross_entropies", "values"]
        fetched = sess.run([g.train_step, g.accuracy, g.cross_entropy, g.summaries,
                            {name: self.fetches[name] for name in names}],
                           {**feed, self.rows: rows})
        _, accuracy, entropy, summary, after = fetched
        return Evaluated(float(accuracy), float(entropy), summary, float(after["accuracy"]),
                         float(after["cross_entropy"]), after["summary"], after.get("correct"),
                         after.get("cross_entropies"), after.get("values"))


def build(g, spec, loss_settings):
    """Add the held validation set to g (a final_layer.TrainingGraph; its Session not yet
    made) for a layer of spec (a final_layer.LayerSpec, softmax) trained with
    loss_settings (final_layer.LossSettings). -> HeldValidation."""
    class_count, dimension = spec.class_count, int(g.bottleneck_input.shape[-1])
    with g.graph.as_default():
        with tf.name_scope("held_validation"):
            vectors_input = tf.compat.v1.placeholder(tf.float32, [None, dimension], "vectors")
            labels_input = tf.compat.v1.placeholder(tf.int64, [None], "labels")
            # Local, outside every collection: global_variables_initializer and the
            # Saver never touch them; only `initializer` fills them.
            vectors = tf.compat.v1.Variable(vectors_input, trainable=False, collections=[],
                                            validate_shape=False, name="held_vectors")
            labels = tf.compat.v1.Variable(labels_input, trainable=False, collections=[],
                                           validate_shape=False, name="held_labels")
            initializer = tf.group(vectors.initializer, labels.initializer)
            rows = tf.compat.v1.placeholder(tf.int64, [None], "rows")
        # Every read below (the held copy and the layer's variables) comes after the step.
        with tf.control_dependencies([g.train_step]):
            with tf.name_scope("held_validation"):
                every_x = tf.reshape(tf.identity(vectors), [-1, dimension])
                every_y = tf.identity(labels)
                sample_x, sample_y = tf.gather(every_x, rows), tf.gather(every_y, rows)
                logits = final_layer.layer_logits(sample_x, class_count, spec.hidden_units)
                accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), sample_y),
                                                  tf.float32))
                cross_entropy = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=sample_y, logits=logits))
                loss = final_layer.training_loss(logits, sample_y, class_count, loss_settings,
                                                 g.graph)
                every_logits = final_layer.layer_logits(every_x, class_count, spec.hidden_units)
                correct = tf.cast(tf.equal(tf.argmax(every_logits, 1), every_y), tf.float32)
                entropies = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=every_y, logits=every_logits)
                values = [tf.identity(v) for v in g.variables]
                summary = tf.raw_ops.MergeSummary(inputs=[
                    _scalar("accuracy", accuracy), _scalar("cross_entropy", cross_entropy),
                    _scalar("loss", loss), _scalar("learning_rate", g.learning_rate),
                    _histogram("final_layer/logits", logits),
                ])
    fetches = {"accuracy": accuracy, "cross_entropy": cross_entropy, "summary": summary,
               "correct": correct, "cross_entropies": entropies, "values": values}
    return HeldValidation(g, initializer, vectors_input, labels_input, rows, fetches)


def _scalar(tag, value):
    return tf.raw_ops.ScalarSummary(tags=tf.constant(tag), values=value)


def _histogram(tag, values):
    return tf.raw_ops.HistogramSummary(tag=tf.constant(tag), values=values)
