"""The yardsticks each figure is measured against: the classic method, the classic
training loop, and the limit (the module's own forward pass on pre-decoded batches)."""

import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import config as config_lib
from retrain_suite import export, final_layer
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import pipelines as image_pipelines


def classic_training(batch_size, seed):
    """The classic script's layer training: plain SGD at 0.01 on the bottlenecks."""
    return config_lib.TrainingConfig(optimizer="sgd", learning_rate=0.01,
                                     train_batch_size=batch_size, random_seed=seed)


def classic_bottlenecks(paths, handle, text_dir):
    """Yardstick (a). -> (steady images/s, {part: mean seconds per image}).

    The parts are where each image's time goes: the decode-and-resize session
    run (reading the file included), the module's run on a batch of one, and
    writing the text file; all three after the first image.
    """
    graph = tf.Graph()
    with graph.as_default():
        module = module_lib.load(handle)
        encoded = tf.compat.v1.placeholder(tf.string, [])
        decoded = tf.image.convert_image_dtype(
            tf.io.decode_image(encoded, channels=3, expand_animations=False), tf.float32
        )
        resized = tf.compat.v1.image.resize_bilinear(decoded[tf.newaxis], [module.height, module.width])
        image_input = tf.compat.v1.placeholder(tf.float32, [1, module.height, module.width, 3])
        features = module(image_input)
        parts = dict.fromkeys(("decode", "module", "text"), 0.0)
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            start = None
            for path in paths:
                began = time.monotonic()
                data = tf.io.gfile.GFile(path, "rb").read()
                pixels = sess.run(resized, {encoded: data})
                decoded_at = time.monotonic()
                vector = sess.run(features, {image_input: pixels})[0]
                computed_at = time.monotonic()
                text_path = os.path.join(text_dir, os.path.basename(path) + ".txt")
                with tf.io.gfile.GFile(text_path, "w") as f:
                    f.write(",".join(str(x) for x in vector))
                if start is None:
                    start = time.monotonic()
                    continue
                parts["decode"] += decoded_at - began
                parts["module"] += computed_at - decoded_at
                parts["text"] += time.monotonic() - computed_at
    count = len(paths) - 1
    return count / (time.monotonic() - start), {k: v / count for k, v in parts.items()}


def limit_rate(images, handle, batch_sizes):
    """Yardstick (c): float32 [N, H, W, 3] in memory -> (best images/s, its batch size)."""
    graph = tf.Graph()
    best = (0.0, None)
    with graph.as_default():
        module = module_lib.load(handle)
        image_input = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
        features = module(image_input)
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for batch_size in batch_sizes:
                batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
                batches = [b for b in batches if len(b) == batch_size]
                if len(batches) < 2:
                    logging.warning("Too few images for a limit at batch size %d.", batch_size)
                    continue
                sess.run(features, {image_input: batches[0]})  # Warm-up at this shape.
                start = time.monotonic()
                for batch in batches:
                    sess.run(features, {image_input: batch})
                rate = len(batches) * batch_size / (time.monotonic() - start)
                logging.info("Limit at batch size %d: %.2f images/s", batch_size, rate)
                best = max(best, (rate, batch_size))
    return best


def fine_tuning_limit_rate(images, handle, batch_size, steps, class_count=3):
    """Yardstick (d): fine-tuning steps on one pre-decoded batch fed from memory.

    images float32 [N, H, W, 3], N >= batch_size. Each step is the module's
    forward and backward pass and a momentum update of its trainable variables
    and a softmax layer, as in fine-tuning, without reading or decoding.
    -> images/s over `steps` steps after two untimed ones.
    """
    graph = tf.Graph()
    with graph.as_default():
        module = module_lib.load(handle)
        image_input = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
        labels = tf.constant(np.arange(batch_size) % class_count, tf.int64)
        logits = final_layer.layer_logits(module(image_input, training=False), class_count)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        variables = module.trainable_variables + final_layer.final_layer_variables(graph)
        step = final_layer.make_optimizer("momentum", 1e-4).minimize(loss, var_list=variables)
        batch = images[:batch_size]
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(2):
                sess.run(step, {image_input: batch})
            start = time.monotonic()
            for _ in range(steps):
                sess.run(step, {image_input: batch})
            return steps * batch_size / (time.monotonic() - start)


def decoded_in_memory(paths, height, width):
    """The photos decoded and resized by the shared pipeline. -> float32 [N, H, W, 3]."""
    graph = tf.Graph()
    with graph.as_default():
        batches = image_pipelines.image_batches(paths, height, width, 64)
        _, _, images = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
        out = []
        with tf.compat.v1.Session(graph=graph) as sess:
            while True:
                try:
                    out.append(sess.run(images))
                except tf.errors.OutOfRangeError:
                    return np.concatenate(out)


def read_classic_text(path):
    """A classic text bottleneck -> float32 [D], parsed as the classic script did."""
    with tf.io.gfile.GFile(path, "r") as f:
        return np.array([float(x) for x in f.read().split(",")], np.float32)


def classic_training_rate(text_paths, labels, steps, batch_size, class_count, seed=0):
    """Yardstick (b). -> steps/s."""
    rng = np.random.RandomState(seed)
    dimension = read_classic_text(text_paths[0]).shape[0]
    g = final_layer.build_training_graph(
        dimension, final_layer.LayerSpec(class_count), classic_training(batch_size, seed)
    )
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        start = time.monotonic()
        for _ in range(steps):
            rows = rng.randint(len(text_paths), size=batch_size)
            batch = np.stack([read_classic_text(text_paths[r]) for r in rows])
            sess.run(g.train_step, {g.bottleneck_input: batch, g.ground_truth: labels[rows]})
        return steps / (time.monotonic() - start)


def our_training_rate(vectors, labels, steps, batch_size, class_count, interval, seed=0):
    """Our hot loop (retrain.train): in-memory vectors through tf.data, the steps
    between two evaluations (every `interval` steps) in one call, the evaluation's
    step in a call of its own (its metrics left out, as the classic loop's are). -> steps/s."""
    g = final_layer.build_training_graph(
        vectors.shape[1], final_layer.LayerSpec(class_count), classic_training(batch_size, seed)
    )
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: vectors, g.labels: labels})
        start = time.monotonic()
        step = 0
        while step < steps:
            # Rates fed as retrain.train feeds them.
            looped = min(interval, steps - step) - 1
            if looped:
                sess.run(g.train_steps, {g.learning_rates: [0.01] * looped})
            sess.run(g.train_step, {g.learning_rate: 0.01})
            step += looped + 1
        return steps / (time.monotonic() - start)


def classic_warm_rerun(handle, text_paths, labels, splits, steps, batch_size, class_count, out):
    """The classic script's warm rerun: every vector re-read from text, training
    re-reading a batch of files per step (and 100 validation files every 10
    steps), the test set read, then the same export as ours. -> seconds."""
    start = time.monotonic()
    graph = tf.Graph()
    with graph.as_default():
        module_lib.load(handle)  # The classic script builds the module graph first.
    for path in text_paths:  # Its cache pass opens and parses every bottleneck.
        read_classic_text(path)
    rng = np.random.RandomState(0)
    train = np.flatnonzero(splits == "training")
    validation = np.flatnonzero(splits == "validation")
    test = np.flatnonzero(splits == "testing")
    dimension = read_classic_text(text_paths[0]).shape[0]
    g = final_layer.build_training_graph(
        dimension, final_layer.LayerSpec(class_count), classic_training(batch_size, 0))

    def batch_of(rows):
        return np.stack([read_classic_text(text_paths[r]) for r in rows])

    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for step in range(1, steps + 1):
            rows = train[rng.randint(len(train), size=batch_size)]
            sess.run(g.train_step, {g.bottleneck_input: batch_of(rows), g.ground_truth: labels[rows]})
            if step % 10 == 0 or step == steps:
                rows = validation[rng.randint(len(validation), size=100)]
                sess.run(g.accuracy, {g.bottleneck_input: batch_of(rows), g.ground_truth: labels[rows]})
        sess.run(g.accuracy, {g.bottleneck_input: batch_of(test), g.ground_truth: labels[test]})
        checkpoint = os.path.join(out, "classic_checkpoint")
        final_layer.save_checkpoint(g.saver, sess, checkpoint)
        layer = g.named_layer_values(sess)
    graph_def = export.frozen_graph(handle, module_lib.DEFAULT_IMAGE_SIZE,
                                    final_layer.LayerSpec(class_count), layer)
    export.write_frozen_graph(graph_def, os.path.join(out, "classic_graph.pb"))
    return time.monotonic() - start
