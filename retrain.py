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
3. A new softmax layer (optionally with a ReLU hidden layer before it) is
   trained on the cached bottlenecks. Every --eval_step_interval steps the log
   shows the training accuracy, the cross entropy (it should fall) and the
   accuracy on validation images the layer never trains on. If training
   accuracy is high but validation accuracy is low, the layer is memorising
   the training images. By default the layer kept is the one from the
   evaluation that scored best on the whole validation set (--keep_best), and
   --early_stopping_patience can stop training once that score stops rising.
4. The kept layer is measured on the testing set (and the validation set):
   accuracy, per-class precision, recall and F1, and the confusion matrix, as
   tables in the log, as JSON (--eval_report) and as pictures in TensorBoard.
   --assert_accuracy_at_least stops here, with an error, when the classifier
   is not good enough. Otherwise the module plus the new layer are exported as
   a frozen graph (--output_graph) with its labels file (--output_labels),
   ready for label_image.py.

Watch training with `tensorboard --logdir /tmp/retrain_logs`.
"""

import contextlib
import dataclasses
import math
import os
import random
import re
import sys
import time
from typing import Optional

import command_startup

command_startup.quiet_tensorflow()  # before anything imports TensorFlow

import numpy as np
import tensorflow as tf
from absl import flags, logging

import atomic_files
import evaluation
import export
import final_layer
import input_pipeline
import memory_budget
import output_paths
import pre_input
import schedules
from bottleneck import batch_size as batch_size_lib
from bottleneck import cache as cache_lib
from bottleneck import compute
from bottleneck import module as module_lib

FLAGS = flags.FLAGS

# Input and split.
flags.DEFINE_string("image_dir", "", "Folder with one subfolder of images per class.")
flags.DEFINE_string(
    "tfrecord_dir", "",
    "Instead of --image_dir: a folder written by pre_input.py --tfrecords (split included).",
)
DEFAULT_PERCENTAGE = 10
flags.DEFINE_float(
    "testing_percentage", DEFAULT_PERCENTAGE, "Percentage of images used as the testing set."
)
flags.DEFINE_float(
    "validation_percentage", DEFAULT_PERCENTAGE, "Percentage of images used as the validation set."
)
flags.DEFINE_enum(
    "split_by", "path", list(pre_input.SPLIT_BY),
    "What picks an image's set (with --image_dir): a hash of its relative path (the classic "
    "split), or of its content, which keeps every copy of a photo in one set.",
)

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
    "bottleneck_batch_size", None,
    "Images per forward pass when computing bottlenecks. Default: "
    + batch_size_lib.default_description() + ".",
)
flags.DEFINE_integer(
    "max_image_pixels", input_pipeline.DEFAULT_MAX_IMAGE_PIXELS,
    "Images with more pixels (width x height) are skipped instead of decoded.",
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
flags.DEFINE_enum(
    "learning_rate_schedule", "constant", schedules.SCHEDULES,
    "constant; exponential (times --learning_rate_decay every --decay_steps, smoothly); "
    "cosine (from --learning_rate down to 0 at the last step).",
)
flags.DEFINE_float(
    "learning_rate_decay", schedules.DEFAULT_DECAY,
    "Exponential schedule only: factor the rate is multiplied by over --decay_steps.",
)
flags.DEFINE_integer(
    "decay_steps", 0,
    "Exponential schedule only: steps over which the rate falls by --learning_rate_decay; "
    "0 means --how_many_training_steps.",
)
flags.DEFINE_integer(
    "hidden_units", 0, "Width of a ReLU hidden layer before the softmax; 0 for none.",
)
flags.DEFINE_float(
    "dropout", 0.0,
    "Fraction of the softmax layer's inputs dropped at each training step (never at "
    "evaluation or in the exported graph); in [0, 1).",
)
flags.DEFINE_float(
    "l2_regularization", 0.0, "Adds this times the sum of squared weights to the loss.",
)
flags.DEFINE_float(
    "label_smoothing", 0.0,
    "Train towards (1 - e) on the true class and e / classes everywhere; in [0, 1).",
)
flags.DEFINE_enum(
    "class_weighting", "none", final_layer.CLASS_WEIGHTINGS,
    "balanced: weight each class's loss by N / (classes * images of the class), so "
    "small classes count as much as large ones.",
)
flags.DEFINE_enum(
    "sampling", "proportional", final_layer.SAMPLINGS,
    "proportional: shuffled epochs over the training images; uniform: every class "
    "equally likely per training example (oversamples small classes).",
)
flags.DEFINE_integer(
    "early_stopping_patience", 0,
    "Stop after this many evaluations without a better validation score; 0 never stops early.",
)
flags.DEFINE_bool(
    "keep_best", True,
    "Export the final layer of the evaluation with the best validation score, not the "
    "last step's (only when there are validation images).",
)
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
flags.DEFINE_string(
    "eval_report", "",
    "If set, write the test and validation reports (accuracy, per-class precision, "
    "recall, F1, support, confusion matrix) here as JSON.",
)
flags.DEFINE_float(
    "assert_accuracy_at_least", None,
    "Fail (exit status 1) without exporting when the test accuracy (validation accuracy "
    "if there are no test images) is below this fraction, e.g. 0.9.",
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
flags.DEFINE_bool("flip_left_right", False, "Randomly mirror half of the training images.")
flags.DEFINE_integer(
    "random_crop", 0, "Margin in percent: enlarge by it, then cut a random window of input size."
)
flags.DEFINE_integer("random_scale", 0, "Extra random enlargement, 0 to this percent.")
flags.DEFINE_integer(
    "random_brightness", 0, "Multiply pixel values by a random factor within +-this percent."
)
flags.DEFINE_float("random_rotation", 0, "Rotate by a random angle within +-this many degrees.")
flags.DEFINE_float("random_hue", 0, "Shift hue by a random amount within +-this (0 to 0.5).")
flags.DEFINE_float(
    "random_saturation", 0, "Multiply saturation by a random factor within 1+-this (0 to 1)."
)


def distortions_from(values):
    """The distortion flags as an input_pipeline.Distortions."""
    return input_pipeline.Distortions(
        flip_left_right=values["flip_left_right"], crop=values["random_crop"],
        scale=values["random_scale"], brightness=values["random_brightness"],
        rotation=values["random_rotation"], hue=values["random_hue"],
        saturation=values["random_saturation"],
    )


class UsageError(Exception):
    """A flag value or output location the run cannot work with."""


class OutputError(Exception):
    """An output could not be written at the end of the run (disk full, ...)."""


class AccuracyError(Exception):
    """The trained classifier is less accurate than --assert_accuracy_at_least."""


# Seeds go to numpy (below 2**32) and TensorFlow; the drawn ones are below 2**31.
MAX_RANDOM_SEED = 2**31 - 1
# Integers TensorFlow takes as int64 (steps, sizes); larger values cannot be held.
MAX_INTEGER = 2**63 - 1


def check_numbers(values):
    """Raise UsageError for a numeric flag that is NaN, infinite or out of its type's range."""
    for name, value in sorted(values.items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name}={value} must be a finite number.")
        if isinstance(value, int) and abs(value) > MAX_INTEGER:
            raise UsageError(f"--{name}={value} is too large (the limit is 2**63 - 1).")
    seed = values.get("random_seed")
    if seed is not None and not 0 <= seed <= MAX_RANDOM_SEED:
        raise UsageError(
            f"--random_seed={seed} must be between 0 and {MAX_RANDOM_SEED} (2**31 - 1)."
        )


def check_flags(values):
    """Raise UsageError for flag values that cannot work, before any work is done."""
    check_numbers(values)
    check_final_tensor_name(values["final_tensor_name"])
    for name, low, high in (("random_crop", 0, 100), ("random_scale", 0, 100),
                            ("random_brightness", 0, 99), ("random_rotation", 0, 180),
                            ("random_hue", 0, 0.5), ("random_saturation", 0, 1)):
        if not low <= values[name] <= high:
            raise UsageError(f"--{name}={values[name]} must be between {low} and {high}.")
    if distortions_from(values).any() and values["sampling"] == "uniform":
        raise UsageError(
            "--sampling=uniform works on cached bottlenecks, and distortions train from "
            "images; use --class_weighting=balanced for small classes instead."
        )
    if values["image_dir"] and values["tfrecord_dir"]:
        raise UsageError("Give --image_dir or --tfrecord_dir, not both.")
    if values["tfrecord_dir"] and values["split_by"] != "path":
        raise UsageError(
            "With --tfrecord_dir the split is the one in the files; to split by content, run "
            "pre_input.py --tfrecords --split_by=content again."
        )
    if not values["image_dir"] and not values["tfrecord_dir"]:
        raise UsageError("--image_dir is required: the folder with one subfolder per class "
                         "(or --tfrecord_dir, a folder written by pre_input.py --tfrecords).")
    percentages = (values["validation_percentage"], values["testing_percentage"])
    if values["tfrecord_dir"] and percentages != (DEFAULT_PERCENTAGE, DEFAULT_PERCENTAGE):
        raise UsageError(
            "With --tfrecord_dir the split is the one in the files; to change it, run "
            "pre_input.py --tfrecords again with the percentages you want."
        )
    for name in ("how_many_training_steps", "train_batch_size", "eval_step_interval",
                 "bottleneck_batch_size", "image_size", "max_image_pixels"):
        if values[name] is not None and values[name] <= 0:
            raise UsageError(f"--{name}={values[name]} must be positive.")
    for name in ("validation_batch_size", "test_batch_size"):
        if values[name] == 0 or values[name] < -1:
            raise UsageError(f"--{name}={values[name]} must be positive, or -1 for all.")
    if values["intermediate_store_frequency"] < 0:
        raise UsageError("--intermediate_store_frequency must be 0 (off) or positive.")
    if values["learning_rate"] <= 0:
        raise UsageError(f"--learning_rate={values['learning_rate']} must be positive.")
    check_training_flags(values)
    try:
        pre_input.check_percentages(
            values["validation_percentage"], values["testing_percentage"]
        )
    except pre_input.DatasetError as e:
        raise UsageError(str(e)) from e


def check_training_flags(values):
    """The part of check_flags about issue-6 training and evaluation flags."""
    for name in ("dropout", "label_smoothing"):
        if not 0 <= values[name] < 1:
            raise UsageError(f"--{name}={values[name]} must be in [0, 1).")
    for name in ("hidden_units", "early_stopping_patience", "decay_steps"):
        if values[name] < 0:
            raise UsageError(f"--{name}={values[name]} must be 0 or positive.")
    if values["l2_regularization"] < 0:
        raise UsageError(f"--l2_regularization={values['l2_regularization']} must be 0 or positive.")
    if not 0 < values["learning_rate_decay"] <= 1:
        raise UsageError(f"--learning_rate_decay={values['learning_rate_decay']} must be in (0, 1].")
    if values["learning_rate_schedule"] != "exponential":
        for name, default in (("learning_rate_decay", schedules.DEFAULT_DECAY), ("decay_steps", 0)):
            if values[name] != default:
                raise UsageError(
                    f"--{name} applies only to --learning_rate_schedule=exponential, not "
                    f"{values['learning_rate_schedule']}; drop it or change the schedule."
                )
    threshold = values["assert_accuracy_at_least"]
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(
            f"--assert_accuracy_at_least={threshold} must be a fraction in [0, 1] (0.9 for 90%)."
        )


def check_sets(dataset, values):
    """Raise UsageError when a flag needs validation or test images the dataset lacks."""
    has_validation = bool(dataset.in_split("validation"))
    if values["early_stopping_patience"] and not has_validation:
        raise UsageError(
            "--early_stopping_patience needs validation images; raise "
            "--validation_percentage or drop the flag."
        )
    if (values["assert_accuracy_at_least"] is not None and not has_validation
            and not dataset.in_split("testing")):
        raise UsageError(
            "--assert_accuracy_at_least needs test or validation images; raise "
            "--testing_percentage or drop the flag."
        )


def check_output_locations(paths):
    """Raise UsageError unless each output's folder exists or can be made, and is writable.

    Nothing is created here: the folders are made when the outputs are written.
    """
    for path in paths:
        folder = os.path.dirname(path.rstrip("/")) or "."
        existing = folder
        while not tf.io.gfile.exists(existing):
            parent = os.path.dirname(existing.rstrip("/"))
            if not parent or parent == existing:
                break
            existing = parent
        if tf.io.gfile.exists(existing) and not tf.io.gfile.isdir(existing):
            raise UsageError(
                f"Cannot write {path}: {existing} is a file, not a folder. Choose another location."
            )
        if "://" not in existing and os.path.isdir(existing) and not os.access(existing, os.W_OK):
            raise UsageError(
                f"Cannot write {path}: the folder {existing} is not writable. "
                "Choose a writable location."
            )


# What TensorFlow accepts as an op name (tensorflow/python/framework/ops.py).
VALID_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\\-/>]*$")


def output_paths_of(values):
    """[(flag, path)] of everything the run writes: files, folders and a checkpoint's files."""
    outputs = [("output_graph", values["output_graph"]),
               ("output_labels", values["output_labels"]),
               ("summaries_dir", values["summaries_dir"])]
    for name in ("eval_report", "saved_model_dir"):
        if values[name]:
            outputs.append((name, values[name]))
    if values["intermediate_store_frequency"] > 0:
        outputs.append(("intermediate_output_graphs_dir", values["intermediate_output_graphs_dir"]))
    prefix = values["checkpoint_path"]
    index = final_layer.checkpoint_index_name(prefix)
    outputs += [("checkpoint_path", prefix + suffix)
                for suffix in ("", ".index", ".data-00000-of-00001", ".lock")]
    outputs.append(("checkpoint_path", os.path.join(os.path.dirname(prefix), index)))
    return outputs


def check_output_paths(values):
    """Raise UsageError unless every output can be written without touching an input.

    See output_paths: no empty path flags; no output the same as, inside or
    around --image_dir, --tfrecord_dir, --bottleneck_dir, a local module folder
    or another output; file outputs that are not folders and whose names fit;
    a --saved_model_dir that is absent, empty or a SavedModel. The cache may
    be inside --image_dir or --tfrecord_dir (neither scan it), but not either
    folder itself nor around it.
    """
    named = ["output_graph", "output_labels", "checkpoint_path", "summaries_dir",
             "bottleneck_dir", "tfhub_module"]
    if values["intermediate_store_frequency"] > 0:
        named.append("intermediate_output_graphs_dir")
    try:
        output_paths.check_not_empty((name, values[name]) for name in named)
        inputs = [(name, values[name]) for name in ("image_dir", "tfrecord_dir") if values[name]]
        module = output_paths.local_module_folder(values["tfhub_module"])
        if module:
            inputs.append(("tfhub_module", module))
        cache = values["bottleneck_dir"]
        for name, path in inputs:
            where = output_paths.relation(cache, path)
            if where and (name == "tfhub_module" or where != "inside"):
                raise output_paths.PathError(
                    f"--bottleneck_dir={cache} is {where} --{name}={path}: the cache needs a "
                    "folder of its own (a subfolder of the image or TFRecord folder is fine)."
                )
        outputs = output_paths_of(values)
        output_paths.check_apart(outputs, inputs + [("bottleneck_dir", cache)])
        for name in ("output_graph", "output_labels", "eval_report"):
            if values[name]:
                output_paths.check_file_output(name, values[name])
        output_paths.check_name_lengths(
            "checkpoint_path", values["checkpoint_path"], CHECKPOINT_SUFFIX_ROOM
        )
        if values["saved_model_dir"]:
            output_paths.check_folder_output(
                "saved_model_dir", values["saved_model_dir"], atomic_files.SAVED_MODEL_ENTRIES
            )
        output_paths.check_folder_output("summaries_dir", values["summaries_dir"])
        if values["intermediate_store_frequency"] > 0:
            output_paths.check_folder_output(
                "intermediate_output_graphs_dir", values["intermediate_output_graphs_dir"]
            )
    except output_paths.PathError as e:
        raise UsageError(str(e)) from e


# TensorFlow writes <prefix>.data-00000-of-00001 through a temporary name of
# its own (<prefix>.data-00000-of-00001.tempstate + up to 20 digits).
CHECKPOINT_SUFFIX_ROOM = len(".data-00000-of-00001.tempstate") + 20


def check_final_tensor_name(name):
    """Raise UsageError unless name is a valid op name (whether it is free is checked later)."""
    if not VALID_OP_NAME.match(name):
        raise UsageError(
            f"--final_tensor_name={name!r} is not a TensorFlow op name: letters, digits and "
            "_ . - / \\ >, starting with a letter, digit or '.'; e.g. final_result."
        )


def check_memory(values, dimension, class_count, image_count, input_size):
    """Raise UsageError when the sizes asked for need more memory than this machine has.

    dimension: bottleneck size D; input_size: (height, width) of the module.
    The estimate counts float32 values: the bottlenecks [N, D]; a training
    batch [B, D] twice (one prefetched) and its logits [B, C] x3; the layer's
    weights with their gradients and two optimizer slots (x4); a batch's
    hidden activations [B, H] x3 (ReLU output, its gradient, dropout); a
    bottleneck batch of decoded images [min(batch, N), h, w, 3] twice (one
    prefetched), and with distortions a training batch of images.
    """
    batch, hidden = values["train_batch_size"], values["hidden_units"]
    # Unset, the bottleneck batch size is measured among batch_size_lib.CANDIDATES.
    bottleneck_batch = values["bottleneck_batch_size"] or max(batch_size_lib.CANDIDATES)
    height, width = input_size
    weights = dimension * hidden + hidden * class_count if hidden else dimension * class_count
    pixels = height * width * 3
    parts = {
        "train_batch_size": 2 * batch * dimension + 3 * batch * class_count,
        "hidden_units": 4 * (weights + hidden + class_count) + 3 * batch * hidden,
        "bottleneck_batch_size": 2 * min(bottleneck_batch, image_count) * pixels,
    }
    if distortions_from(values).any():
        parts["train_batch_size"] += 2 * batch * pixels
    needed = 4 * (image_count * dimension + sum(parts.values()))
    missing = memory_budget.shortfall(needed)
    if missing:
        largest = max(parts, key=parts.get)
        raise UsageError(
            f"--{largest}={values[largest]} needs {missing} ({dimension}-value bottlenecks, "
            f"{class_count} classes, {image_count} images). Lower it."
        )


def check_names_in_graphs(values):
    """Build the training and export graphs without training. -> (D, (height, width)).

    Raises UsageError when --final_tensor_name is already taken in either (by
    the module, `Placeholder`, an input of the training graph, ...).
    """
    name = values["final_tensor_name"]
    try:
        final_layer.build_training_graph(
            1, 2, name, values["optimizer"], 0.1, 1, 0, hidden_units=values["hidden_units"],
            dropout=values["dropout"] > 0,
        )
        dimension, input_size = export.check_final_tensor_name(
            values["tfhub_module"], values["image_size"], name, values["hidden_units"]
        )
    except ValueError as e:
        raise UsageError(
            f"--final_tensor_name={name}: {e}; choose another name, e.g. final_result."
        ) from e
    return dimension, input_size


def write_output(flag, path, write):
    """Call write(); an OSError or TensorFlow error becomes one OutputError naming path."""
    try:
        write()
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        raise OutputError(
            f"Cannot write --{flag}={path}: {reason.strip().splitlines()[0]}. Nothing partial "
            "was left there; free some space or choose another location, then run again "
            "(cached bottlenecks are reused)."
        ) from e


def split_arrays(dataset, bottlenecks, row_of):
    """{split: (vectors float32 [n, D], labels int64 [n], images)} for the three sets."""
    arrays = {}
    for split in pre_input.SPLITS:
        # A canonical order: the same images give the same arrays, and so the same
        # training, whether they came from a folder or from TFRecords.
        images = sorted(dataset.in_split(split), key=lambda i: (i.label_index, i.path))
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
    # {split: float32 [n, C] class probabilities}, row for row with predictions.
    probabilities: dict = None


def loss_settings(settings, train_y, class_count):
    weights = None
    if settings["class_weighting"] == "balanced":
        weights = final_layer.balanced_class_weights(train_y, class_count)
        logging.info("Class weights (balanced): %s", ", ".join(f"{w:.3f}" for w in weights))
    return final_layer.LossSettings(
        class_weights=weights, label_smoothing=settings["label_smoothing"],
        l2_regularization=settings["l2_regularization"],
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
        accuracy, entropy = sess.run(
            [g.accuracy, g.cross_entropy], {g.bottleneck_input: val_x, g.ground_truth: val_y}
        )
        message += f", all {len(val_y)}: {100 * accuracy:.1f}%"
    if best.update(step, accuracy, entropy, lambda: g.layer_values(sess)):
        message += " (best so far)"
    return message


def train(arrays, class_count, settings, export_intermediate, batch_source=None,
          in_graph_loop=True):
    """Train the final layer; save the kept one to settings['checkpoint_path']. -> TrainingResult.

    export_intermediate(step, {variable name: ndarray}) is called every
    --intermediate_store_frequency steps.

    batch_source: see final_layer.build_training_graph (distorted training images).
    The steps between two evaluations run in one Session call (the graph's
    train_steps loop), unless in_graph_loop is False or there is a
    batch_source: then every step is a call of its own. Both give the same
    layer for the same seed.
    """
    train_x, train_y, _ = arrays["training"]
    val_x, val_y, _ = arrays["validation"]
    test_x, test_y, _ = arrays["testing"]
    seed = settings["random_seed"]
    rng = np.random.RandomState(seed)
    g = final_layer.build_training_graph(
        train_x.shape[1], class_count, settings["final_tensor_name"], settings["optimizer"],
        settings["learning_rate"], settings["train_batch_size"], seed,
        hidden_units=settings["hidden_units"],
        loss_settings=loss_settings(settings, train_y, class_count),
        sampling=settings["sampling"], batch_source=batch_source,
        dropout=settings["dropout"] > 0,
    )
    summaries_dir = settings["summaries_dir"]
    steps, interval = settings["how_many_training_steps"], settings["eval_step_interval"]
    selecting = bool(len(val_y)) and (settings["keep_best"] or settings["early_stopping_patience"] > 0)
    best = BestLayer(patience=settings["early_stopping_patience"])
    if not len(val_y):
        logging.info("No validation images: validation accuracy is not reported, and the "
                     "last step's layer is exported.")

    def rate_at(step):
        return schedules.learning_rate_at(
            settings["learning_rate_schedule"], step, settings["learning_rate"], steps,
            settings["learning_rate_decay"], settings["decay_steps"],
        )

    looping = in_graph_loop and g.train_steps is not None
    with tf.compat.v1.Session(graph=g.graph) as sess:
        train_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "train"), g.graph)
        validation_writer = tf.compat.v1.summary.FileWriter(os.path.join(summaries_dir, "validation"))
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: train_x, g.labels: train_y})
        start = time.monotonic()
        step = 0
        while step < steps:
            if looping:
                # Every step before the next evaluation in one call; the evaluation's
                # own step then runs below as before, with its metrics.
                evaluation_step = min(steps, (step // interval + 1) * interval)
                if evaluation_step - 1 > step:
                    feed = {g.learning_rates: [rate_at(s) for s in range(step, evaluation_step - 1)]}
                    if g.dropout_rate is not None:
                        feed[g.dropout_rate] = settings["dropout"]
                    sess.run(g.train_steps, feed)
                    step = evaluation_step - 1
            rate = rate_at(step)
            step += 1
            if batch_source is not None and step == 2:
                clock = time.monotonic()  # Step 1 paid the start-up costs.
            if batch_source is not None and step == 4:
                per_step = (time.monotonic() - clock) / 2
                log_distortion_cost(per_step, steps, settings["train_batch_size"])
            feed = {g.learning_rate: rate}
            if g.dropout_rate is not None:
                feed[g.dropout_rate] = settings["dropout"]
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
                rows = sample(rng, len(val_y), settings["validation_batch_size"])
                message += validate(
                    sess, g, val_x, val_y, rows, rate, step, validation_writer,
                    best if selecting else None,
                )
            logging.info("%s", message)
            frequency = settings["intermediate_store_frequency"]
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
        if selecting and settings["keep_best"]:
            g.restore_layer_values(sess, best.values)
            kept_step = best.step
            logging.info(
                "Keeping the final layer from step %d of %d: validation accuracy %.1f%%, "
                "cross entropy %.4f (all %d validation images).", best.step, step,
                100 * best.accuracy, best.cross_entropy, len(val_y),
            )
        layer = g.named_layer_values(sess)
        write_output("checkpoint_path", settings["checkpoint_path"],
                     lambda: final_layer.save_checkpoint(g.saver, sess, settings["checkpoint_path"]))
        predictions, probabilities = {}, {}
        for split, x, y, size in (("validation", val_x, val_y, -1),
                                  ("testing", test_x, test_y, settings["test_batch_size"])):
            if len(y):
                rows = sample(rng, len(y), size)
                predicted, probabilities[split] = sess.run(
                    [g.predictions, g.probabilities], {g.bottleneck_input: x[rows]}
                )
                predictions[split] = (rows, predicted)
    return TrainingResult(steps=step, kept_step=kept_step, predictions=predictions, layer=layer,
                          probabilities=probabilities)


def log_distortion_cost(per_step, steps, batch_size):
    logging.info(
        "Distortions are on: every step decodes, distorts and runs the module on %d "
        "images instead of reading cached bottlenecks: %.2f s a step here, about %s for "
        "%d steps.", batch_size, per_step, compute.format_duration(per_step * steps), steps,
    )


def report_test_results(arrays, labels, result, list_misclassified):
    """Log the final test accuracy (and the wrong images). -> accuracy or None."""
    if "testing" not in result.predictions:
        logging.info("No testing images: final test accuracy is skipped.")
        return None
    rows, predictions = result.predictions["testing"]
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


SET_NAMES = {"testing": "Test", "validation": "Validation"}


def evaluation_reports(arrays, labels, result):
    """{split: evaluation report} for the evaluated sets, with the wrong images listed.

    Each wrong image: {"image": relative path, "true": label, "predicted": label,
    "confidence": the probability the layer gave the predicted (wrong) class}.
    """
    reports = {}
    for split, (rows, predictions) in result.predictions.items():
        _, y, images = arrays[split]
        probabilities = result.probabilities[split]
        report = evaluation.evaluate(y[rows], predictions, labels)
        report["misclassified"] = [
            {"image": images[r].path, "true": images[r].label, "predicted": labels[p],
             "confidence": round(float(probabilities[n, p]), 6)}
            for n, (r, p) in enumerate(zip(rows, predictions)) if p != y[r]
        ]
        reports[split] = report
    return reports


def log_reports(reports, labels):
    for split in ("validation", "testing"):
        if split in reports:
            logging.info("%s", evaluation.format_report(SET_NAMES[split], reports[split], labels))


def write_evaluation_summaries(dataset, reports, settings, step, images, row_of, bottlenecks):
    """TensorBoard: confusion matrix, per-class accuracy (and wrong test images) at `step`.

    The test set goes to a `test/` run with its accuracy and a grid of up to 16
    misclassified test images (evaluation.mistakes_to_show: every true class
    in turn, the most confident mistakes first) as the module saw them, decoded again from
    `images` (row_of: relative path -> index there; bottlenecks: the
    compute.Bottlenecks, for the input size). The validation
    set's confusion matrix and per-class accuracy go to the `validation/` run
    (its accuracy curve is already there).
    """
    for split, run in (("testing", "test"), ("validation", "validation")):
        if split not in reports:
            continue
        report = reports[split]
        grid = None
        if split == "testing" and report["misclassified"]:
            shown = evaluation.mistakes_to_show(report["misclassified"], dataset.labels)
            indices = [row_of[m["image"]] for m in shown]
            pixels = evaluation.load_display_images(
                images, indices, bottlenecks.height, bottlenecks.width,
                settings["max_image_pixels"],
            )
            kept = [(i, m) for i, m in zip(indices, shown) if i in pixels]
            if kept:
                grid = evaluation.misclassified_grid_png(
                    [pixels[i] for i, _ in kept],
                    [(m["true"], f"{m['predicted']} ({100 * m['confidence']:.0f}%)") for _, m in kept],
                )
        summary = evaluation.evaluation_summary(
            report, dataset.labels, grid, with_accuracy=split == "testing",
            title=f"{SET_NAMES[split]} set, step {step}: confusion matrix (N={report['count']})",
        )
        with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
            # Event files are named by the second they were opened in; the suffix keeps
            # this one from overwriting the training loop's file of the same second.
            writer = tf.compat.v1.summary.FileWriter(
                os.path.join(settings["summaries_dir"], run), filename_suffix=".evaluation"
            )
            writer.add_summary(summary, step)
            writer.close()


def check_accuracy(reports, threshold):
    """Raise AccuracyError when the test accuracy (else validation's) is below threshold."""
    split = "testing" if "testing" in reports else "validation"
    report = reports[split]
    if report["accuracy"] < threshold:
        raise AccuracyError(
            f"{SET_NAMES[split].lower()} accuracy {100 * report['accuracy']:.1f}% "
            f"(N={report['count']}) is below --assert_accuracy_at_least={threshold:g} "
            f"({100 * threshold:.1f}%); nothing was exported."
        )
    logging.info("%s accuracy %.1f%% meets --assert_accuracy_at_least=%g.",
                 SET_NAMES[split], 100 * report["accuracy"], threshold)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    logging.set_verbosity(FLAGS.logging_verbosity.lower().replace("warn", "warning"))
    tf.get_logger().setLevel("ERROR")  # TensorFlow's own deprecation chatter.
    settings = {name: FLAGS[name].value for name in FLAGS}
    try:
        run_retraining(settings)
    except (UsageError, OutputError, AccuracyError, pre_input.DatasetError,
            module_lib.ModuleError, cache_lib.CacheError) as e:
        sys.exit(f"error: {e}")


def run_retraining(settings):
    """The whole job from plain settings (flag name -> value). -> final test accuracy or None.

    Raises AccuracyError, before anything is exported, when
    settings['assert_accuracy_at_least'] is set and not met.
    """
    check_flags(settings)
    check_output_paths(settings)
    return retrain_with_checked_flags(settings)


@contextlib.contextmanager
def checkpoint_lock(checkpoint):
    """Hold <checkpoint>.lock for the block, or raise UsageError if another run holds it."""
    if not output_paths.is_local(checkpoint):
        yield  # A remote filesystem has no fcntl locks.
        return
    try:
        with atomic_files.exclusive_lock(checkpoint + ".lock"):
            yield
    except atomic_files.Locked as e:  # Raised on entering only: the block never raises it.
        holder = f" (pid {e})" if str(e) else ""
        raise UsageError(
            f"--checkpoint_path={checkpoint} is in use by another retrain.py run{holder}; "
            "wait for it to finish or give this run its own --checkpoint_path."
        ) from None


def retrain_with_checked_flags(settings):
    """run_retraining after the flag and path checks: scan, check, then train holding
    the checkpoint's lock."""
    if settings["class_weighting"] == "balanced" and settings["sampling"] == "uniform":
        logging.warning(
            "--class_weighting=balanced with --sampling=uniform corrects for class sizes "
            "twice: small classes end up counting more than large ones. Use one of them."
        )
    if settings["tfrecord_dir"]:
        dataset, images = pre_input.read_tfrecords(settings["tfrecord_dir"])
    else:
        dataset = pre_input.build_dataset(
            settings["image_dir"], settings["validation_percentage"],
            settings["testing_percentage"], exclude_dirs=[settings["bottleneck_dir"]],
            split_by=settings["split_by"],
        )
        images = input_pipeline.ImageFiles(dataset.full_path(image) for image in dataset.images)
    logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
    check_sets(dataset, settings)
    outputs = [settings["output_graph"], settings["output_labels"], settings["checkpoint_path"]]
    for name in ("saved_model_dir", "eval_report"):
        if settings[name]:
            outputs.append(settings[name])
    check_output_locations(outputs + [os.path.join(settings["bottleneck_dir"], "x")])
    dimension, input_size = check_names_in_graphs(settings)
    check_memory(settings, dimension, len(dataset.labels), len(dataset.images), input_size)
    with checkpoint_lock(settings["checkpoint_path"]):
        return train_and_export(settings, dataset, images)


def train_and_export(settings, dataset, images):
    """Bottlenecks, training, evaluation and export, once every check has passed."""
    if settings["random_seed"] is None:
        settings["random_seed"] = random.SystemRandom().randrange(2**31)
        logging.info("Random seed %d (pass --random_seed=%d to repeat this run).",
                     settings["random_seed"], settings["random_seed"])
    precision = module_lib.mixed_precision_type() if settings["mixed_precision"] else "float32"
    bottlenecks = compute.compute_bottlenecks(
        images, settings["tfhub_module"], settings["bottleneck_dir"],
        settings["image_size"], settings["bottleneck_batch_size"], settings["max_image_pixels"],
        precision=precision,
    )
    row_of = {image.path: n for n, image in enumerate(dataset.images)}
    if bottlenecks.skipped:
        dataset = dataset.without(dataset.images[i].path for i in bottlenecks.skipped)
        check_sets(dataset, settings)
    log_copies(dataset, [bottlenecks.contents[row_of[i.path]] for i in dataset.images])
    pre_input.warn_about_small_classes(dataset)
    if not dataset.in_split("training"):
        raise UsageError("No training images left; lower the validation and testing percentages.")
    logging.info("Images per class and set:\n%s", pre_input.format_count_table(dataset))
    arrays = split_arrays(dataset, bottlenecks, row_of)

    def export_graph(flag, path, layer):
        graph_def = export.frozen_graph(
            settings["tfhub_module"], settings["image_size"], len(dataset.labels),
            layer, settings["final_tensor_name"], hidden_units=settings["hidden_units"],
        )
        write_output(flag, path, lambda: export.write_frozen_graph(graph_def, path))
        return graph_def

    def export_intermediate(step, layer):
        folder = settings["intermediate_output_graphs_dir"]
        path = os.path.join(folder, f"intermediate_{step}.pb")
        export_graph("intermediate_output_graphs_dir", path, layer)
        logging.info("Wrote intermediate graph %s", path)

    distortions = distortions_from(settings)
    batch_source = None
    if distortions.any():
        batch_source = distorted_batch_source(
            images, [row_of[i.path] for i in arrays["training"][2]], arrays["training"][1],
            settings, distortions,
        )
    result = train(arrays, len(dataset.labels), settings, export_intermediate, batch_source)
    accuracy = report_test_results(
        arrays, dataset.labels, result, settings["print_misclassified_test_images"]
    )
    reports = evaluation_reports(arrays, dataset.labels, result)
    log_reports(reports, dataset.labels)
    write_evaluation_summaries(
        dataset, reports, settings, result.steps, images, row_of, bottlenecks
    )
    if settings["eval_report"]:
        write_output("eval_report", settings["eval_report"], lambda: evaluation.write_report(
            settings["eval_report"], {
                "labels": dataset.labels,
                "steps_trained": result.steps,
                "kept_step": result.kept_step,
                "testing": reports.get("testing"),
                "validation": reports.get("validation"),
            }))
        logging.info("Wrote evaluation report %s", settings["eval_report"])
    if settings["assert_accuracy_at_least"] is not None:
        check_accuracy(reports, settings["assert_accuracy_at_least"])
    graph_def = export_graph("output_graph", settings["output_graph"], result.layer)
    write_output("output_labels", settings["output_labels"],
                 lambda: export.write_labels(dataset.labels, settings["output_labels"]))
    logging.info("Wrote %s and %s", settings["output_graph"], settings["output_labels"])
    if settings["saved_model_dir"]:
        write_output("saved_model_dir", settings["saved_model_dir"], lambda: export.write_saved_model(
            graph_def, settings["final_tensor_name"], settings["saved_model_dir"]))
        logging.info("Wrote SavedModel %s", settings["saved_model_dir"])
    return accuracy


def log_copies(dataset, contents):
    """Log the copies report; a warning when copies cross sets or classes."""
    copies = pre_input.find_copies(dataset.images, contents)
    log = logging.warning if copies.across_sets or copies.across_classes else logging.info
    log("%s", pre_input.format_copies(copies))


def distorted_batch_source(images, indices, labels, settings, distortions):
    """A batch_source for final_layer.build_training_graph: distorted images through the module."""

    def build():
        module = module_lib.load(settings["tfhub_module"], settings["image_size"])
        batches = input_pipeline.distorted_batches(
            images, indices, labels.tolist(),
            module.height, module.width, settings["train_batch_size"], distortions,
            settings["random_seed"], settings["max_image_pixels"],
        )
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        pixels, batch_labels = iterator.get_next()
        return module(pixels), batch_labels, iterator.initializer

    return build


def run():
    try:
        command_startup.run(main)
    except KeyboardInterrupt:
        # Cache entries and outputs are written whole under temporary names, so
        # whatever was finished before the interrupt is complete and is reused.
        print(
            f"interrupted: the bottlenecks cached so far in {FLAGS['bottleneck_dir'].value} "
            "are kept and outputs not yet written are unchanged; run the same command again "
            "to continue.", file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    run()
