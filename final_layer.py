"""The new classification layer trained on top of the bottlenecks.

`add_final_layer` is called both by training (on a bottleneck placeholder) and
by export (on the module's output), so the exported graph holds exactly the
layer that was trained, restored by variable name from the checkpoint.
"""

import dataclasses
import os

import tensorflow as tf

import atomic_files
import input_pipeline

SCOPE = "final_retrain_ops"
OPTIMIZERS = ("sgd", "momentum", "adam")


def add_final_layer(bottleneck, class_count, final_tensor_name):
    """bottleneck float32 [N, D] -> (logits [N, C], probabilities [N, C] named final_tensor_name)."""
    dimension = int(bottleneck.shape[-1])
    with tf.compat.v1.variable_scope(SCOPE):
        weights = tf.compat.v1.get_variable(
            "weights", [dimension, class_count],
            initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.001),
        )
        biases = tf.compat.v1.get_variable(
            "biases", [class_count], initializer=tf.compat.v1.zeros_initializer()
        )
        logits = tf.compat.v1.nn.xw_plus_b(bottleneck, weights, biases, name="logits")
    probabilities = tf.nn.softmax(logits, name=final_tensor_name)
    if probabilities.op.name != final_tensor_name:
        raise ValueError(f"tensor name {final_tensor_name!r} is already used in the graph")
    return logits, probabilities


def final_layer_variables(graph):
    return graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES, scope=SCOPE + "/")


def save_checkpoint(saver, sess, path):
    """Save the final layer to path (the TF checkpoint prefix)."""
    # TF keeps an index of checkpoints in a file named "checkpoint" beside them;
    # a checkpoint called "checkpoint" itself needs that index named otherwise.
    index = "checkpoint_state" if os.path.basename(path) == "checkpoint" else None
    atomic_files.make_parent(path)
    saver.save(sess, path, latest_filename=index, write_meta_graph=False)


def make_optimizer(name, learning_rate):
    if name == "sgd":
        return tf.compat.v1.train.GradientDescentOptimizer(learning_rate)
    if name == "momentum":
        return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=0.9)
    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {name!r}")


@dataclasses.dataclass
class TrainingGraph:
    graph: tf.Graph
    bottlenecks: tf.Tensor  # placeholder: the whole training set, float32 [N, D]
    labels: tf.Tensor  # placeholder: int64 [N]
    iterator_init: tf.Operation
    bottleneck_input: tf.Tensor  # a training batch unless fed
    ground_truth: tf.Tensor  # its labels unless fed
    train_step: tf.Operation
    cross_entropy: tf.Tensor
    accuracy: tf.Tensor
    predictions: tf.Tensor  # int64 [N] class indices
    summaries: tf.Tensor
    saver: tf.compat.v1.train.Saver


def build_training_graph(
    dimension, class_count, final_tensor_name, optimizer, learning_rate, batch_size, seed
):
    """The graph that trains the final layer from in-memory bottlenecks.

    Training batches come from a tf.data pipeline over the bottlenecks fed once
    through `bottlenecks`/`labels` at iterator initialisation. Feeding
    `bottleneck_input` and `ground_truth` instead evaluates any other set.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        bottlenecks = tf.compat.v1.placeholder(tf.float32, [None, dimension], "train_bottlenecks")
        labels = tf.compat.v1.placeholder(tf.int64, [None], "train_labels")
        iterator = tf.compat.v1.data.make_initializable_iterator(
            input_pipeline.training_batches(bottlenecks, labels, batch_size, seed)
        )
        batch, batch_labels = iterator.get_next()
        bottleneck_input = tf.compat.v1.placeholder_with_default(
            batch, [None, dimension], "BottleneckInputPlaceholder"
        )
        ground_truth = tf.compat.v1.placeholder_with_default(
            batch_labels, [None], "GroundTruthInput"
        )
        logits, probabilities = add_final_layer(bottleneck_input, class_count, final_tensor_name)
        with tf.name_scope("loss"):
            cross_entropy = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=ground_truth, logits=logits
                )
            )
        train_step = make_optimizer(optimizer, learning_rate).minimize(cross_entropy)
        with tf.name_scope("evaluation"):
            predictions = tf.argmax(probabilities, 1)
            accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, ground_truth), tf.float32))
        weights, biases = final_layer_variables(graph)
        summaries = tf.compat.v1.summary.merge([
            tf.compat.v1.summary.scalar("accuracy", accuracy),
            tf.compat.v1.summary.scalar("cross_entropy", cross_entropy),
            tf.compat.v1.summary.histogram("final_layer/weights", weights),
            tf.compat.v1.summary.histogram("final_layer/biases", biases),
            tf.compat.v1.summary.histogram("final_layer/logits", logits),
        ])
        saver = tf.compat.v1.train.Saver(final_layer_variables(graph))
    return TrainingGraph(
        graph, bottlenecks, labels, iterator.initializer, bottleneck_input, ground_truth,
        train_step, cross_entropy, accuracy, predictions, summaries, saver,
    )
