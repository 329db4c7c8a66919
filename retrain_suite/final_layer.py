r"""The new classification layer trained on top of the bottlenecks.

`add_final_layer` is called both by training (on a bottleneck placeholder) and
by export (on the module's output), so the exported graph holds exactly the
layer that was trained, its values copied in by variable name. With
`hidden_units` it is two layers (ReLU hidden layer, then softmax); dropout
exists only in the training graph, never in the export.
"""

import dataclasses
import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from retrain_suite import atomic_files, streamed_batches, vector_batches

SCOPE = "final_retrain_ops"


OPTIMIZERS = ("sgd", "momentum", "adam")


CLASS_WEIGHTINGS = ("none", "balanced")


SAMPLINGS = ("proportional", "uniform")


def add_final_layer(bottleneck, class_count, final_tensor_name, hidden_units=0, dropout=None,
                    sigmoid=False):
    """bottleneck float32 [N, D] -> (logits [N, C], probabilities [N, C] named final_tensor_name).

    sigmoid: the outputs are independent scores in [0, 1], one per class (a
    multi-label layer), instead of a softmax's probabilities that sum to 1.

    hidden_units > 0 puts a ReLU layer of that width between the bottleneck and
    the softmax. dropout: None for no dropout op at all (as in the export), or
    a function features -> features that drops a fraction of the softmax
    layer's inputs: the hidden activations, or the bottleneck when there is no
    hidden layer (see build_training_graph). Variable names:
    `final_retrain_ops/weights` and `.../biases` for the softmax layer (as
    before hidden layers existed), `.../hidden_weights` and `.../hidden_biases`
    for the hidden layer.
    """
    logits = layer_logits(bottleneck, class_count, hidden_units, dropout)
    probabilities = (tf.nn.sigmoid if sigmoid else tf.nn.softmax)(logits, name=final_tensor_name)
    if probabilities.op.name != final_tensor_name:
        raise ValueError(f"tensor name {final_tensor_name!r} is already used in the graph")
    return logits, probabilities


def layer_logits(bottleneck, class_count, hidden_units=0, dropout=None):
    """The layer's logits float32 [N, C] (see add_final_layer), its variables
    made on the first call in a graph and reused on later ones (the training
    loop builds the layer twice on the same variables)."""
    dimension = int(bottleneck.shape[-1])
    with tf.compat.v1.variable_scope(SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
        features = bottleneck
        if hidden_units:
            hidden_weights = tf.compat.v1.get_variable(
                "hidden_weights", [dimension, hidden_units],
                # He initialisation keeps ReLU activations from shrinking or exploding.
                initializer=tf.compat.v1.truncated_normal_initializer(
                    stddev=math.sqrt(2.0 / dimension)
                ),
            )
            hidden_biases = tf.compat.v1.get_variable(
                "hidden_biases", [hidden_units], initializer=tf.compat.v1.zeros_initializer()
            )
            features = tf.nn.relu(
                tf.compat.v1.nn.xw_plus_b(features, hidden_weights, hidden_biases), name="hidden"
            )
            dimension = hidden_units
        if dropout is not None:
            features = dropout(features)
        weights = tf.compat.v1.get_variable(
            "weights", [dimension, class_count],
            initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.001),
        )
        biases = tf.compat.v1.get_variable(
            "biases", [class_count], initializer=tf.compat.v1.zeros_initializer()
        )
        return tf.compat.v1.nn.xw_plus_b(features, weights, biases, name="logits")


def final_layer_variables(graph):
    return graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES, scope=SCOPE + "/")


def weight_matrices(graph):
    """The layer's weight matrices (not biases): what L2 regularisation shrinks."""
    return [v for v in final_layer_variables(graph) if v.op.name.endswith("weights")]


def save_checkpoint(saver, sess, path):
    """Save the final layer to path (the TF checkpoint prefix): <path>.index and
    <path>.data-00000-of-00001, nothing else. Without write_state TensorFlow would
    also write a file named `checkpoint` beside them, a name that is not the
    user's path and may be a file of theirs (/tmp/checkpoint by default)."""
    atomic_files.make_parent(path)
    # latest_filename names the state file not written; TensorFlow still refuses
    # one equal to the prefix's name (a --checkpoint_path ending in /checkpoint).
    saver.save(sess, path, write_meta_graph=False, write_state=False,
               latest_filename=os.path.basename(path) + ".state")


def make_optimizer(name, learning_rate):
    if name == "sgd":
        return tf.compat.v1.train.GradientDescentOptimizer(learning_rate)
    if name == "momentum":
        return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=0.9)
    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {name!r}")


def balanced_class_weights(labels, class_count):
    """Training labels int [N] -> float32 [C] loss weights, N / (K * n_c) for each class c.

    K is the number of classes with training examples. Every class then carries
    the same total weight (N / K) in an epoch, and the weights average to 1
    over the examples, so the loss keeps its scale. A class with no training
    examples gets weight 0 (it never occurs in a batch).
    """
    counts = np.bincount(np.asarray(labels, np.int64), minlength=class_count).astype(np.float64)
    present = np.count_nonzero(counts)
    weights = np.zeros(class_count, np.float64)
    weights[counts > 0] = counts.sum() / (present * counts[counts > 0])
    return weights.astype(np.float32)


@dataclasses.dataclass
class LossSettings:
    """How the training loss is made from the cross entropy.

    class_weights: float32 [C] per-class weights, or None for all 1.
    label_smoothing: epsilon in [0, 1); targets become (1 - eps) * one_hot + eps / C.
    l2_regularization: lambda; the loss gains lambda * sum of squared weights
        (weight matrices only, not biases).
    """

    class_weights: object = None
    label_smoothing: float = 0.0
    l2_regularization: float = 0.0


@dataclasses.dataclass
class TrainingGraph:
    graph: tf.Graph
    bottlenecks: tf.Tensor  # placeholder: the whole training set, float32 [N, D]
    labels: tf.Tensor  # placeholder: int64 [N]
    iterator_init: tf.Operation
    bottleneck_input: tf.Tensor  # a training batch unless fed
    ground_truth: tf.Tensor  # its labels unless fed
    learning_rate: tf.Tensor  # float32 scalar, fed at every step from schedules
    dropout_rate: tf.Tensor  # float32 scalar, 0 unless fed (for training steps only); None
    # when the graph was built without dropout
    train_step: tf.Operation  # one training step
    # Several training steps in one run: as many as there are rates fed to
    # `learning_rates` (float32 [k], one per step), with exactly the arithmetic,
    # batches and dropout masks of k runs of train_step. None with a batch_source.
    train_steps: Optional[tf.Operation]
    learning_rates: Optional[tf.Tensor]
    cross_entropy: tf.Tensor  # plain mean cross entropy: no weights, smoothing or L2
    loss: tf.Tensor  # what the optimizer minimises (see LossSettings)
    accuracy: tf.Tensor
    predictions: tf.Tensor  # int64 [N] class indices
    probabilities: tf.Tensor  # float32 [N, C]
    summaries: tf.Tensor
    saver: tf.compat.v1.train.Saver
    variables: list  # the final layer's variables, in a fixed order
    assign_values: tf.Operation  # sets them all from value_inputs
    value_inputs: list  # one placeholder per variable, same shapes
    # A second way into the same layer (no dropout), beside bottleneck_input: a whole
    # set's bottlenecks float32 [n, D] and labels int64 [n] scored in the same call that
    # evaluates a sample through bottleneck_input (and its summaries).
    scored_input: tf.Tensor = None
    scored_labels: tf.Tensor = None
    scored_correct: tf.Tensor = None  # float32 [n]: 1 where the predicted class is the label
    scored_cross_entropy: tf.Tensor = None  # float32 [n]: each image's plain cross entropy
    # With a stream: what initialising the iterator is fed (the store positions and
    # labels); None: feed the in-memory `bottlenecks` and `labels` instead.
    iterator_feed: Optional[dict] = None
    # What the validation run of TensorBoard gets from a sample through bottleneck_input:
    # summaries without the weights' histograms (the training run has them).
    validation_summaries: tf.Tensor = None

    def layer_values(self, sess):
        """The final layer's current variable values, [ndarray] in `variables` order."""
        return sess.run(self.variables)

    def named_layer_values(self, sess):
        """{variable name: ndarray}: the layer's current values, for export.frozen_graph."""
        return {v.op.name: value for v, value in zip(self.variables, self.layer_values(sess))}

    def restore_layer_values(self, sess, values):
        """Put values from layer_values back into the variables (e.g. the best step's)."""
        sess.run(self.assign_values, dict(zip(self.value_inputs, values)))


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """The new layer's shape: what training builds and export builds again."""

    class_count: int  # C, the softmax's outputs
    final_tensor_name: str = "final_result"  # the name of the probabilities [N, C]
    hidden_units: int = 0  # width of a ReLU layer before the softmax; 0: none
    multi_label: bool = False  # sigmoid outputs (independent scores) instead of a softmax


def build_training_graph(dimension, spec, training, loss_settings=None, batch_source=None,
                         stream=None):
    """The graph that trains the final layer (a LayerSpec) on D=dimension bottlenecks.

    training: a config.TrainingConfig; its optimizer, learning_rate,
    train_batch_size, random_seed, sampling and dropout (> 0: the dropout op
    is built; its rate is fed per step) shape the graph.

    Training batches come from a tf.data pipeline over the bottlenecks fed once
    through `bottlenecks`/`labels` at iterator initialisation (shuffled epochs,
    or class-uniform draws with sampling="uniform"). Feeding `bottleneck_input`
    and `ground_truth` instead evaluates any other set. `learning_rate` is the
    default of the fed learning-rate placeholder.

    Between evaluations, `train_steps` runs many steps in one Session call: at
    about a millisecond a step, the Python round trip of a call per step would
    cost as much as the step. Its loop body is the same layer, loss and
    optimizer update as train_step, on the same variables and the same
    iterator. Dropout masks are drawn from (seed, step number), a stateless
    draw, so a step's mask is the same whichever op runs it.

    batch_source: optional function called inside the graph, returning
    (bottlenecks float32 [B, D], labels int64 [B], iterator initializer): the
    training batches then come from it (distorted images through the module)
    instead of the in-memory bottlenecks, one step per call (no train_steps:
    its batch is computed outside any loop). Only the final layer is trained.

    stream: optional streamed_batches.Source: the training batches are read from
    the packed store's shards instead (streamed_batches.training_batches), the
    iterator initialised with `iterator_feed`; the `bottlenecks`/`labels`
    placeholders are then not read.
    """
    class_count, final_tensor_name, hidden_units = spec.class_count, spec.final_tensor_name, spec.hidden_units
    batch_size, seed, sampling = training.train_batch_size, training.random_seed, training.sampling
    dropout = training.dropout > 0
    loss_settings = loss_settings or LossSettings()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        bottlenecks = tf.compat.v1.placeholder(tf.float32, [None, dimension], "train_bottlenecks")
        labels = tf.compat.v1.placeholder(tf.int64, [None], "train_labels")
        iterator_feed = None
        if stream is not None:
            if sampling != "proportional":
                raise ValueError(f"sampling={sampling!r} needs the vectors in memory")
            batches, iterator_feed = streamed_batches.training_batches(stream, batch_size, seed)
        elif sampling == "uniform":
            batches = vector_batches.class_uniform_batches(bottlenecks, labels, batch_size, seed)
        elif sampling == "proportional":
            batches = vector_batches.training_batches(bottlenecks, labels, batch_size, seed)
        else:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
        iterator = None
        if batch_source is None:
            iterator = tf.compat.v1.data.make_initializable_iterator(batches)
            batch, batch_labels = iterator.get_next()
            iterator_init = iterator.initializer
        else:
            batch, batch_labels, iterator_init = batch_source()
        bottleneck_input = tf.compat.v1.placeholder_with_default(
            batch, [None, dimension], "BottleneckInputPlaceholder"
        )
        ground_truth = tf.compat.v1.placeholder_with_default(
            batch_labels, [None], "GroundTruthInput"
        )
        # Steps taken so far: the dropout masks' seed, and train_steps' start.
        step_count = tf.compat.v1.get_variable(
            "training_steps_taken", [], tf.int64, tf.compat.v1.zeros_initializer(),
            trainable=False,
        )
        # No dropout op unless asked for: drawing its random mask costs every step.
        dropout_rate = (
            tf.compat.v1.placeholder_with_default(0.0, [], "dropout_rate") if dropout else None
        )

        def dropout_at(step):
            if dropout_rate is None:
                return None
            return lambda features: tf.nn.experimental.stateless_dropout(
                features, rate=dropout_rate, seed=tf.stack([tf.constant(seed, tf.int64), step]),
                name="dropout",
            )

        rate = tf.compat.v1.placeholder_with_default(float(training.learning_rate), [],
                                                    "learning_rate_input")
        # The rate is read when an update is built: `rate` for train_step, the
        # step's own rate inside the train_steps loop.
        current_rate = [rate]
        opt = make_optimizer(training.optimizer, lambda: current_rate[0])
        step = step_count.read_value()
        logits, probabilities = add_final_layer(
            bottleneck_input, class_count, final_tensor_name, hidden_units, dropout_at(step)
        )
        variables = final_layer_variables(graph)
        with tf.name_scope("losses"):
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=ground_truth, logits=logits
                )
            )
            loss = training_loss(logits, ground_truth, class_count, loss_settings, graph)
        # Only the new layer learns, even when a module's variables are in the graph.
        update = opt.minimize(loss, var_list=variables)
        with tf.control_dependencies([update]):
            train_step = step_count.assign_add(1).op

        train_steps = learning_rates = None
        if iterator is not None:
            learning_rates = tf.compat.v1.placeholder(tf.float32, [None], "learning_rates")
            first = step_count.read_value()

            def one_step(i):
                step_batch, step_labels = iterator.get_next()
                step_logits = layer_logits(
                    step_batch, class_count, hidden_units, dropout_at(first + tf.cast(i, tf.int64))
                )
                step_loss = training_loss(step_logits, step_labels, class_count, loss_settings, graph)
                current_rate[0] = learning_rates[i]
                step_update = opt.minimize(step_loss, var_list=variables)
                current_rate[0] = rate
                with tf.control_dependencies([step_update]):
                    return i + 1

            count = tf.size(learning_rates)
            # One iteration at a time: each step reads the weights the previous one wrote.
            done = tf.compat.v1.while_loop(
                lambda i: i < count, one_step, [tf.constant(0)], parallel_iterations=1,
                name="train_steps",
            )
            with tf.control_dependencies([done]):
                train_steps = step_count.assign_add(tf.cast(count, tf.int64)).op
        with tf.name_scope("evaluation"):
            predictions = tf.argmax(probabilities, 1)
            accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, ground_truth), tf.float32))
        with tf.name_scope("scored_set"):
            scored_input = tf.compat.v1.placeholder(tf.float32, [None, dimension], "bottlenecks")
            scored_labels = tf.compat.v1.placeholder(tf.int64, [None], "labels")
            scored_logits = layer_logits(scored_input, class_count, hidden_units)
            scored_correct = tf.cast(tf.equal(tf.argmax(scored_logits, 1), scored_labels),
                                     tf.float32)
            scored_cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=scored_labels, logits=scored_logits)
        measured = [
            tf.compat.v1.summary.scalar("accuracy", accuracy),
            tf.compat.v1.summary.scalar("cross_entropy", cross_entropy),
            tf.compat.v1.summary.scalar("loss", loss),
            tf.compat.v1.summary.scalar("learning_rate", rate),
            tf.compat.v1.summary.histogram("final_layer/logits", logits),
        ]
        summaries = tf.compat.v1.summary.merge([
            *measured,
            *(tf.compat.v1.summary.histogram("final_layer/" + v.op.name.split("/")[-1], v)
              for v in variables),
        ])
        # The weights' histograms are the training run's: a validation run's, at the
        # same step, would show the same weights again (and cost 0.4 ms an evaluation).
        validation_summaries = tf.compat.v1.summary.merge(measured)
        saver = tf.compat.v1.train.Saver(variables)
        with tf.name_scope("restore_values"):
            value_inputs = [tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape) for v in variables]
            assign_values = tf.group(*(v.assign(x) for v, x in zip(variables, value_inputs)))
    return TrainingGraph(
        graph=graph, bottlenecks=bottlenecks, labels=labels, iterator_init=iterator_init,
        bottleneck_input=bottleneck_input, ground_truth=ground_truth, learning_rate=rate,
        dropout_rate=dropout_rate, train_step=train_step, train_steps=train_steps,
        learning_rates=learning_rates, cross_entropy=cross_entropy, loss=loss,
        accuracy=accuracy, predictions=predictions, probabilities=probabilities,
        summaries=summaries, saver=saver, variables=variables, assign_values=assign_values,
        value_inputs=value_inputs, scored_input=scored_input, scored_labels=scored_labels,
        scored_correct=scored_correct, scored_cross_entropy=scored_cross_entropy,
        iterator_feed=iterator_feed, validation_summaries=validation_summaries,
    )


def training_loss(logits, labels, class_count, settings, graph):
    """Scalar loss: mean over the batch of w[label] * smoothed cross entropy, plus L2.

    logits float32 [B, C], labels int64 [B]. The mean divides by B (not by the
    sum of the weights), as Keras' class_weight does.
    """
    targets = tf.one_hot(labels, class_count)
    if settings.label_smoothing:
        targets = targets * (1.0 - settings.label_smoothing) + settings.label_smoothing / class_count
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    if settings.class_weights is not None:
        weights = tf.constant(np.asarray(settings.class_weights, np.float32), name="class_weights")
        per_example = per_example * tf.gather(weights, labels)
    loss = tf.reduce_mean(per_example)
    if settings.l2_regularization:
        squares = tf.add_n([tf.reduce_sum(tf.square(w)) for w in weight_matrices(graph)])
        loss = loss + settings.l2_regularization * squares
    return tf.identity(loss, name="total")
