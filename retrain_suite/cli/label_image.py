"""The label_image command line: flags -> LabelImageConfig -> classifier -> printed labels."""

import dataclasses
import sys

import tensorflow as tf
from absl import flags

from retrain_suite import classifier, command_config, console, errors, graph_checks, onnx_model, tflite
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup
from retrain_suite.images import files as image_files

FLAGS = flags.FLAGS
_CONFIG = command_config.LabelImageConfig  # the flags' defaults are its fields'


def _default(name):
    return command_config.default(_CONFIG, name)


def define_flags():
    """The command line's flags (defined on demand, so that importing this module is free)."""
    flags.DEFINE_multi_string(
        "image", list(_default("image")), "Image file or folder of images; repeat for more."
    )
    flags.DEFINE_string(
        "graph", _default("graph"),
        "Frozen graph (.pb), TFLite model (.tflite) or ONNX model (.onnx) written by retrain.py."
    )
    flags.DEFINE_string(
        "labels", _default("labels"), "Labels file written by retrain.py; default for a TFLite "
        "or ONNX model: the labels inside it.",
    )
    flags.DEFINE_string("input_layer", _default("input_layer"), "Name of the graph's image input.")
    flags.DEFINE_string("output_layer", _default("output_layer"), "Name of the graph's probabilities output.")
    flags.DEFINE_integer(
        "input_height", _default("input_height"), "Image height fed to the graph; default: from the graph."
    )
    flags.DEFINE_integer(
        "input_width", _default("input_width"), "Image width fed to the graph; default: from the graph."
    )
    flags.DEFINE_float(
        "input_mean", _default("input_mean"), "Subtracted from pixel values (0-255) before scaling."
    )
    flags.DEFINE_float("input_std", _default("input_std"), "Pixel values are divided by this after the mean.")
    flags.DEFINE_integer(
        "top_k", _default("top_k"),
        "How many labels to print per image. A multi-label model (retrain.py --multi_label) "
        "prints every label above its threshold, at most this many when given.",
    )
    flags.DEFINE_integer(
        "batch_size", _default("batch_size"),
        "Images per forward pass. Default: " + batch_size_lib.default_description() + ".",
    )
    flags.DEFINE_enum(
        "output_format", _default("output_format"), ["text", "json"], "How to print the results."
    )
    shared_flags.define_max_image_pixels()
    flags.DEFINE_bool(
        "allow_unsafe_ops", _default("allow_unsafe_ops"),
        "Run a graph even if it holds ops that can read or write files or run code.",
    )


def holds_labels(path):
    """Whether path is a model that can hold its labels (TFLite, ONNX), by its content."""
    return tflite.is_tflite_file(path) or onnx_model.is_onnx_file(path)


def with_positionals(config, positional):
    """config with the images, graph and labels named by positional arguments.

    Raises command_config.UsageError when which is which would be a guess.
    """
    images, graph, labels = config.image, config.graph, config.labels
    if positional and not graph and not labels and len(positional) >= 2 and (
            holds_labels(positional[-1])):
        images, graph, positional = images + tuple(positional[:-1]), positional[-1], []
    if positional and graph and (labels or holds_labels(graph)):
        images += tuple(positional)  # `--graph g.pb --labels l.txt photos/*.jpg`
    elif positional:
        # The classic form names the graph and labels last; with only one of them
        # given as a flag, which positional is which would be a guess.
        if len(positional) < 3 or graph or labels:
            raise command_config.UsageError(
                "usage: label_image.py IMAGE [IMAGE ...] GRAPH LABELS, or "
                "label_image.py IMAGE [IMAGE ...] MODEL.tflite|MODEL.onnx, or "
                "--graph GRAPH --labels LABELS IMAGE [IMAGE ...] (or --image IMAGE)"
            )
        images, graph, labels = images + tuple(positional[:-2]), positional[-2], positional[-1]
    return dataclasses.replace(config, image=images, graph=graph, labels=labels)


def preprocessing_of(config):
    """The image flags as a classifier.Preprocessing."""
    return classifier.Preprocessing(
        height=config.input_height, width=config.input_width, input_mean=config.input_mean,
        input_std=config.input_std, batch_size=config.batch_size,
        max_pixels=config.max_image_pixels,
    )


def main(argv):
    console.quiet_third_parties()  # label_image has no --logging_verbosity: always quiet
    try:
        config = with_positionals(shared_flags.config_from_flags(_CONFIG), argv[1:])
        config.validate()
        if config.is_tflite():
            paths, results, labels = classify_with_model(config, "TFLite model")
        elif config.is_onnx():
            paths, results, labels = classify_with_model(config, "ONNX model")
        else:
            tf.get_logger().setLevel("ERROR")
            paths, results, labels = classify_with_graph(config)
    except errors.SuiteError as e:
        sys.exit(f"error: {e}")
    failures = {
        i: image_files.why_undecodable(path, config.max_image_pixels)
        for i, path in enumerate(paths) if i not in results
    }
    classifier.print_results(paths, results, failures, labels, config.output_format)
    if failures:
        sys.exit(1)


def classify_with_graph(config):
    """-> (image paths, {index: TopClasses}, labels) of a frozen graph; SuiteError if unusable."""
    try:
        paths = classifier.list_images(config.image)
        graph_def = classifier.load_graph(config.graph)
        graph_checks.check_graph(graph_def, config.graph, config.allow_unsafe_ops)
        labels = classifier.load_labels(config.labels)
        thresholds = classifier.multi_label_thresholds(graph_def, config.output_layer)
        results = classifier.classify(
            graph_def, paths, preprocessing_of(config), config.input_layer, config.output_layer,
            keep=kept_labels(config, thresholds),
        )
        classifier.check_label_count(results, labels, f"The labels file {config.labels}", "graph")
    except (ValueError, tf.errors.OpError) as e:
        raise classifier.LabelError(f"cannot run graph {config.graph}: {errors.one_line(e)}") from e
    return paths, results, labels


def kept_labels(config, thresholds):
    """The keep function for classifier.classify: the --top_k best classes, or with a
    multi-label model's thresholds (float [C], or None) every label above its threshold
    (at most --top_k of them when the flag is given)."""
    if thresholds is None:
        return classifier.top_classes(config.top_k)
    return classifier.above_thresholds(thresholds, config.top_k if FLAGS["top_k"].present else None)


def classify_with_model(config, what):
    """-> (image paths, {index: TopClasses}, labels) of a TFLite or ONNX model (what:
    "TFLite model" or "ONNX model"); SuiteError if unusable."""
    for name in ("input_layer", "output_layer"):
        if FLAGS[name].present:
            raise command_config.UsageError(
                f"--{name} names a frozen graph's tensor; the {what} has one input and one "
                "output, so drop it."
            )
    preprocessing = preprocessing_of(config)
    tflite_model = what == "TFLite model"
    try:
        paths = classifier.list_images(config.image)
        load = classifier.load_tflite if tflite_model else classifier.load_onnx
        model, packed = load(config.graph)
        classifier.check_model_size(model, preprocessing, what)
        if config.labels:
            labels = classifier.load_labels(config.labels)
        elif packed is not None:
            labels = packed
        else:
            raise classifier.LabelError(
                f"{config.graph} holds no labels in its metadata; pass its labels file."
            )
        classify = classifier.classify_tflite if tflite_model else classifier.classify_onnx
        results = classify(model, paths, preprocessing, keep=kept_labels(config, model.thresholds))
        source = f"The labels file {config.labels}" if config.labels else "The metadata inside the model"
        classifier.check_label_count(results, labels, source, "model")
    except (ValueError, RuntimeError) as e:
        raise classifier.LabelError(
            f"cannot run {what} {config.graph}: {str(e).splitlines()[0]}"
        ) from e
    return paths, results, labels


def run():
    shared_flags.define_command_flags(define_flags)
    startup.run(main, lambda: (
        "interrupted: nothing was written; run the same command again to classify the images."
    ))
