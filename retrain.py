r"""Retrain an image classifier on your own photos by transfer learning.

Put your photos in one subfolder per class and run:

    python retrain.py --image_dir data/

What happens:

1. Every image is assigned to the training, validation or testing set by a
   hash of its path (relative to --image_dir), so the split is the same on
   every run, on every machine.
2. A pretrained image feature-vector module (Inception V3 from TF Hub by
   default) turns each image into a "bottleneck": the vector of features the
   network computes just before its own classification layer. These are
   computed in batches once and cached under --bottleneck_dir; later runs reuse
   them, so only new or changed images cost a forward pass.
3. A new softmax layer is trained on the cached bottlenecks. Every
   --eval_step_interval steps the log shows the training accuracy, the cross
   entropy (the loss; it should fall) and the accuracy on validation images
   the layer never trains on. If training accuracy is high but validation
   accuracy is low, the layer is memorising the training images.
4. The final accuracy is measured once on the testing set, and the module plus
   the new layer are exported as a frozen graph (--output_graph) with its
   labels file (--output_labels), ready for label_image.py.

Watch training with `tensorboard --logdir /tmp/retrain_logs`.
"""

import os
import random
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

import export
import final_layer
import pre_input
from bottleneck import cache as cache_lib
from bottleneck import compute
from bottleneck import module as module_lib

FLAGS = flags.FLAGS

# Input and split.
flags.DEFINE_string("image_dir", "", "Folder with one subfolder of images per class.")
flags.DEFINE_float("testing_percentage", 10, "Percentage of images used as the testing set.")
flags.DEFINE_float("validation_percentage", 10, "Percentage of images used as the validation set.")

# Module and bottlenecks.
flags.DEFINE_string(
    "tfhub_module", module_lib.DEFAULT_MODULE,
    "TF Hub handle or local SavedModel folder of an image feature-vector module.",
)
flags.DEFINE_integer(
    "image_size", module_lib.DEFAULT_IMAGE_SIZE,
    "Input height and width for modules whose signature does not fix them.",
)
flags.DEFINE_string("bottleneck_dir", "/tmp/bottleneck", "Where bottleneck vectors are cached.")
flags.DEFINE_integer(
    "bottleneck_batch_size", compute.DEFAULT_BATCH_SIZE,
    "Images per forward pass when computing bottlenecks.",
)
flags.DEFINE_bool(
    "mixed_precision", False,
    "Compute bottlenecks in bfloat16 (CPUs with bfloat16 instructions) or float16 (GPU); "
    "cached under their own key. The exported graph stays float32.",
)

# Training.
flags.DEFINE_integer("how_many_training_steps", 4000, "Training steps to run.")
flags.DEFINE_float("learning_rate", 0.01, "Learning rate of the final layer's training.")
flags.DEFINE_enum("optimizer", "sgd", final_layer.OPTIMIZERS, "Optimizer of the final layer.")
flags.DEFINE_integer("train_batch_size", 100, "Bottlenecks per training step.")
flags.DEFINE_integer(
    "random_seed", None,
    "Seed for weights, shuffling and sampling; the same seed and data give the same "
    "result. Default: a fresh seed, printed in the log.",
)

# Evaluation.
flags.DEFINE_integer("eval_step_interval", 10, "How often (in steps) to evaluate and log.")
flags.DEFINE_integer(
    "validation_batch_size", 100,
    "Validation images sampled at each evaluation; -1 uses the whole validation set.",
)
flags.DEFINE_integer(
    "test_batch_size", -1,
    "Test images sampled for the final test accuracy; -1 uses the whole testing set.",
)
flags.DEFINE_bool(
    "print_misclassified_test_images", False,
    "List every wrong test image with its true and predicted label.",
)

# Outputs.
flags.DEFINE_string("output_graph", "/tmp/output_graph.pb", "Where to write the frozen graph.")
flags.DEFINE_string("output_labels", "/tmp/output_labels.txt", "Where to write the labels file.")
flags.DEFINE_string("final_tensor_name", "final_result", "Name of the output softmax op.")
flags.DEFINE_string("saved_model_dir", "", "If set, also write a SavedModel for serving here.")
flags.DEFINE_string(
    "intermediate_output_graphs_dir", "/tmp/intermediate_graph/",
    "Where intermediate frozen graphs go (see --intermediate_store_frequency).",
)
flags.DEFINE_integer(
    "intermediate_store_frequency", 0,
    "Export a frozen graph every this many steps; 0 turns it off.",
)
flags.DEFINE_string(
    "checkpoint_path", "/tmp/_retrain_checkpoint",
    "Checkpoint of the trained final layer; the export is restored from it.",
)
flags.DEFINE_string("summaries_dir", "/tmp/retrain_logs", "TensorBoard logs (train/ and validation/ runs).")
flags.DEFINE_enum(
    "logging_verbosity", "INFO", ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"],
    "How much to log.",
)

# Distortions: accepted for old command lines, refused until they are built.
flags.DEFINE_bool("flip_left_right", False, "Randomly mirror training images (not available yet).")
flags.DEFINE_integer("random_crop", 0, "Random crop margin in percent (not available yet).")
flags.DEFINE_integer("random_scale", 0, "Random scaling in percent (not available yet).")
flags.DEFINE_integer("random_brightness", 0, "Random brightness change in percent (not available yet).")


class UsageError(Exception):
    """A flag value or output location the run cannot work with."""


def check_flags(values):
    """Raise UsageError for flag values that cannot work, before any work is done."""
    distortions = [
        name for name in ("flip_left_right", "random_crop", "random_scale", "random_brightness")
        if values[name]
    ]
    if distortions:
        raise UsageError(
            f"--{', --'.join(distortions)}: image distortions are not available in this "
            "version; run without them (training uses the cached bottlenecks)."
        )
    if not values["image_dir"]:
        raise UsageError("--image_dir is required: the folder with one subfolder per class.")
    for name in ("how_many_training_steps", "train_batch_size", "eval_step_interval",
                 "bottleneck_batch_size", "image_size"):
        if values[name] <= 0:
            raise UsageError(f"--{name}={values[name]} must be positive.")
    for name in ("validation_batch_size", "test_batch_size"):
        if values[name] == 0 or values[name] < -1:
            raise UsageError(f"--{name}={values[name]} must be positive, or -1 for all.")
    if values["intermediate_store_frequency"] < 0:
        raise UsageError("--intermediate_store_frequency must be 0 (off) or positive.")
    if values["learning_rate"] <= 0:
        raise UsageError(f"--learning_rate={values['learning_rate']} must be positive.")
    try:
        pre_input.check_percentages(
            values["validation_percentage"], values["testing_percentage"]
        )
    except pre_input.DatasetError as e:
        raise UsageError(str(e)) from e


def prepare_output_folders(paths):
    """Create the folders outputs go to, or raise UsageError naming the one that fails."""
    for path in paths:
        folder = os.path.dirname(path.rstrip("/"))
        if not folder:
            continue
        try:
            tf.io.gfile.makedirs(folder)
        except (tf.errors.OpError, OSError) as e:
            raise UsageError(
                f"Cannot create the folder {folder} for {path}: "
                f"{getattr(e, 'message', None) or e}. Choose a writable location."
            ) from e


def split_arrays(dataset, bottlenecks, row_of):
    """{split: (vectors float32 [n, D], labels int64 [n], images)} for the three sets."""
    arrays = {}
    for split in pre_input.SPLITS:
        images = dataset.in_split(split)
        rows = [row_of[image.path] for image in images]
        arrays[split] = (
            bottlenecks.vectors[rows].reshape(len(rows), bottlenecks.vectors.shape[1]),
            np.array([image.label_index for image in images], np.int64),
            images,
        )
    return arrays


def sample(rng, count, size):
    """Indices of a random subset of `size` out of `count`; all of them if size is -1."""
    if size == -1 or size >= count:
        return np.arange(count)
    return np.sort(rng.choice(count, size, replace=False))


def train(arrays, class_count, settings, export_intermediate):
    """Train the final layer; save it to settings['checkpoint_path'].

    Returns the test-set (predictions int64 [n], indices of the evaluated test
    images) or None when the testing set is empty.
    """
    train_x, train_y, _ = arrays["training"]
    val_x, val_y, _ = arrays["validation"]
    test_x, test_y, _ = arrays["testing"]
    seed = settings["random_seed"]
    rng = np.random.RandomState(seed)
    g = final_layer.build_training_graph(
        train_x.shape[1], class_count, settings["final_tensor_name"], settings["optimizer"],
        settings["learning_rate"], settings["train_batch_size"], seed,
    )
    summaries_dir = settings["summaries_dir"]
    steps, interval = settings["how_many_training_steps"], settings["eval_step_interval"]
    if not len(val_y):
        logging.info("No validation images: validation accuracy is not reported.")
    with tf.compat.v1.Session(graph=g.graph) as sess:
        train_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "train"), g.graph)
        validation_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "validation"))
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: train_x, g.labels: train_y})
        start = time.monotonic()
        for step in range(1, steps + 1):
            if step % interval and step != steps:
                sess.run(g.train_step)
                continue
            _, train_accuracy, cross_entropy, summary = sess.run(
                [g.train_step, g.accuracy, g.cross_entropy, g.summaries]
            )
            train_writer.add_summary(summary, step)
            message = (
                f"Step {step}/{steps}: train accuracy {100 * train_accuracy:.1f}%, "
                f"cross entropy {cross_entropy:.4f}"
            )
            if len(val_y):
                rows = sample(rng, len(val_y), settings["validation_batch_size"])
                validation_accuracy, summary = sess.run(
                    [g.accuracy, g.summaries],
                    {g.bottleneck_input: val_x[rows], g.ground_truth: val_y[rows]},
                )
                validation_writer.add_summary(summary, step)
                message += f", validation accuracy {100 * validation_accuracy:.1f}% (N={len(rows)})"
            logging.info("%s", message)
            frequency = settings["intermediate_store_frequency"]
            if frequency and step % frequency == 0 and step != steps:
                export_intermediate(sess, g.saver, step)
        logging.info(
            "Trained %d steps in %.1fs (%.0f steps/s).", steps, time.monotonic() - start,
            steps / max(time.monotonic() - start, 1e-9),
        )
        train_writer.close()
        validation_writer.close()
        final_layer.save_checkpoint(g.saver, sess, settings["checkpoint_path"])
        if not len(test_y):
            return None
        rows = sample(rng, len(test_y), settings["test_batch_size"])
        predictions = sess.run(
            g.predictions, {g.bottleneck_input: test_x[rows], g.ground_truth: test_y[rows]}
        )
    return predictions, rows


def report_test_results(arrays, labels, result, list_misclassified):
    """Log the final test accuracy (and the wrong images). -> accuracy or None."""
    if result is None:
        logging.info("No testing images: final test accuracy is skipped.")
        return None
    predictions, rows = result
    _, test_y, images = arrays["testing"]
    truth = test_y[rows]
    accuracy = float(np.mean(predictions == truth))
    logging.info("Final test accuracy = %.1f%% (N=%d)", 100 * accuracy, len(rows))
    if list_misclassified:
        wrong = [(images[r], p) for r, p, t in zip(rows, predictions, truth) if p != t]
        logging.info("=== MISCLASSIFIED TEST IMAGES (%d) ===", len(wrong))
        for image, predicted in wrong:
            logging.info("%s  true: %s  predicted: %s", image.path, image.label, labels[predicted])
    return accuracy


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    logging.set_verbosity(FLAGS.logging_verbosity.lower().replace("warn", "warning"))
    tf.get_logger().setLevel("ERROR")  # TensorFlow's own deprecation chatter.
    settings = {name: FLAGS[name].value for name in FLAGS}
    try:
        run_retraining(settings)
    except (UsageError, pre_input.DatasetError, module_lib.ModuleError, cache_lib.CacheError) as e:
        sys.exit(f"error: {e}")


def run_retraining(settings):
    """The whole job from plain settings (flag name -> value). -> final test accuracy or None."""
    check_flags(settings)
    dataset = pre_input.build_dataset(
        settings["image_dir"], settings["validation_percentage"],
        settings["testing_percentage"], exclude_dirs=[settings["bottleneck_dir"]],
    )
    logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
    outputs = [settings["output_graph"], settings["output_labels"], settings["checkpoint_path"]]
    if settings["saved_model_dir"]:
        outputs.append(settings["saved_model_dir"])
    prepare_output_folders(outputs)
    if settings["random_seed"] is None:
        settings["random_seed"] = random.SystemRandom().randrange(2**31)
        logging.info("Random seed %d (pass --random_seed=%d to repeat this run).",
                     settings["random_seed"], settings["random_seed"])
    paths = [dataset.full_path(image) for image in dataset.images]
    precision = module_lib.mixed_precision_type() if settings["mixed_precision"] else "float32"
    bottlenecks = compute.compute_bottlenecks(
        paths, settings["tfhub_module"], settings["bottleneck_dir"],
        settings["image_size"], settings["bottleneck_batch_size"], precision,
    )
    row_of = {image.path: n for n, image in enumerate(dataset.images)}
    if bottlenecks.skipped:
        dataset = dataset.without(dataset.images[i].path for i in bottlenecks.skipped)
    pre_input.warn_about_small_classes(dataset)
    if not dataset.in_split("training"):
        raise UsageError("No training images left; lower the validation and testing percentages.")
    logging.info("Images per class and set:\n%s", pre_input.format_count_table(dataset))
    arrays = split_arrays(dataset, bottlenecks, row_of)

    def export_graph(path):
        graph_def = export.frozen_graph(
            settings["tfhub_module"], settings["image_size"], len(dataset.labels),
            settings["checkpoint_path"], settings["final_tensor_name"],
        )
        export.write_frozen_graph(graph_def, path)
        return graph_def

    def export_intermediate(sess, saver, step):
        final_layer.save_checkpoint(saver, sess, settings["checkpoint_path"])
        folder = settings["intermediate_output_graphs_dir"]
        tf.io.gfile.makedirs(folder)
        path = os.path.join(folder, f"intermediate_{step}.pb")
        export_graph(path)
        logging.info("Wrote intermediate graph %s", path)

    result = train(arrays, len(dataset.labels), settings, export_intermediate)
    accuracy = report_test_results(
        arrays, dataset.labels, result, settings["print_misclassified_test_images"]
    )
    graph_def = export_graph(settings["output_graph"])
    export.write_labels(dataset.labels, settings["output_labels"])
    logging.info("Wrote %s and %s", settings["output_graph"], settings["output_labels"])
    if settings["saved_model_dir"]:
        export.write_saved_model(graph_def, settings["final_tensor_name"], settings["saved_model_dir"])
        logging.info("Wrote SavedModel %s", settings["saved_model_dir"])
    return accuracy


def run():
    app.run(main)


if __name__ == "__main__":
    run()
