"""The label_image command line: flags -> classifier (graph, labels, images) -> printed labels."""

import sys

import tensorflow as tf
from absl import flags

from retrain_suite import classifier, errors, graph_checks, tflite
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup
from retrain_suite.images import files as image_files

FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags (defined on demand, so that importing this module is free)."""
    flags.DEFINE_multi_string("image", [], "Image file or folder of images; repeat for more.")
    flags.DEFINE_string(
        "graph", None, "Frozen graph (.pb) or TFLite model (.tflite) written by retrain.py."
    )
    flags.DEFINE_string(
        "labels", None, "Labels file written by retrain.py; default for a TFLite model: the "
        "labels inside it.",
    )
    flags.DEFINE_string("input_layer", "Placeholder", "Name of the graph's image input.")
    flags.DEFINE_string("output_layer", "final_result", "Name of the graph's probabilities output.")
    flags.DEFINE_integer("input_height", None, "Image height fed to the graph; default: from the graph.")
    flags.DEFINE_integer("input_width", None, "Image width fed to the graph; default: from the graph.")
    flags.DEFINE_float("input_mean", 0, "Subtracted from pixel values (0-255) before scaling.")
    flags.DEFINE_float("input_std", 255, "Pixel values are divided by this after the mean.")
    flags.DEFINE_integer("top_k", 5, "How many labels to print per image.")
    flags.DEFINE_integer(
        "batch_size", None,
        "Images per forward pass. Default: " + batch_size_lib.default_description() + ".",
    )
    flags.DEFINE_enum("output_format", "text", ["text", "json"], "How to print the results.")
    shared_flags.define_max_image_pixels()
    flags.DEFINE_bool(
        "allow_unsafe_ops", False,
        "Run a graph even if it holds ops that can read or write files or run code.",
    )


def main(argv):
    images, graph, labels = list(FLAGS.image), FLAGS.graph, FLAGS.labels
    positional = argv[1:]
    if positional and not graph and not labels and len(positional) >= 2 and (
            tflite.is_tflite_file(positional[-1])):
        images, graph, positional = images + positional[:-1], positional[-1], []
    if positional and graph and (labels or tflite.is_tflite_file(graph)):
        images += positional  # `--graph g.pb --labels l.txt photos/*.jpg`
    elif positional:
        # The classic form names the graph and labels last; with only one of them
        # given as a flag, which positional is which would be a guess.
        if len(positional) < 3 or graph or labels:
            sys.exit(
                "error: usage: label_image.py IMAGE [IMAGE ...] GRAPH LABELS, or "
                "label_image.py IMAGE [IMAGE ...] MODEL.tflite, or "
                "--graph GRAPH --labels LABELS IMAGE [IMAGE ...] (or --image IMAGE)"
            )
        images, graph, labels = images + positional[:-2], positional[-2], positional[-1]
    problem = classifier.flag_problem({name: FLAGS[name].value for name in FLAGS})
    if problem:
        sys.exit(f"error: {problem}")
    if images and graph and tflite.is_tflite_file(graph):
        sys.exit(run_tflite(images, graph, labels))
    if not images or not graph or not labels:
        sys.exit("error: give an image, a graph and a labels file, or an image and a TFLite "
                 "model (see --help).")
    tf.get_logger().setLevel("ERROR")
    try:
        paths = classifier.list_images(images)
        graph_def = classifier.load_graph(graph)
        graph_checks.check_graph(graph_def, graph, FLAGS.allow_unsafe_ops)
        label_list = classifier.load_labels(labels)
        results = classifier.classify(
            graph_def, paths, preprocessing_from_flags(), FLAGS.input_layer, FLAGS.output_layer,
            keep=classifier.top_classes(FLAGS.top_k),
        )
        classifier.check_label_count(results, label_list, f"The labels file {labels}", "graph")
    except (classifier.LabelError, graph_checks.GraphError) as e:
        sys.exit(f"error: {e}")
    except (ValueError, tf.errors.OpError) as e:
        sys.exit(f"error: cannot run graph {graph}: {errors.one_line(e)}")

    failures = {
        i: image_files.why_undecodable(path, FLAGS.max_image_pixels)
        for i, path in enumerate(paths) if i not in results
    }
    classifier.print_results(paths, results, failures, label_list, FLAGS.output_format)
    if failures:
        sys.exit(1)


def run_tflite(images, model_path, labels):
    """label_image with a TFLite model. -> exit status."""
    for name in ("input_layer", "output_layer"):
        if FLAGS[name].present:
            sys.exit(f"error: --{name} names a frozen graph's tensor; a TFLite model has one "
                     "input and one output, so drop it.")
    try:
        paths = classifier.list_images(images)
        model, packed = classifier.load_tflite(model_path)
        classifier.check_tflite_size(model, preprocessing_from_flags())
        if labels:
            label_list = classifier.load_labels(labels)
        elif packed is not None:
            label_list = packed
        else:
            raise classifier.LabelError(
                f"{model_path} holds no labels in its metadata; pass its labels file."
            )
        results = classifier.classify_tflite(
            model, paths, preprocessing_from_flags(), keep=classifier.top_classes(FLAGS.top_k)
        )
        source = f"The labels file {labels}" if labels else "The metadata inside the model"
        classifier.check_label_count(results, label_list, source, "model")
    except classifier.LabelError as e:
        return f"error: {e}"
    except (ValueError, RuntimeError) as e:
        return f"error: cannot run TFLite model {model_path}: {str(e).splitlines()[0]}"
    failures = {
        i: image_files.why_undecodable(path, FLAGS.max_image_pixels)
        for i, path in enumerate(paths) if i not in results
    }
    classifier.print_results(paths, results, failures, label_list, FLAGS.output_format)
    return 1 if failures else 0


def preprocessing_from_flags():
    """The image flags as a classifier.Preprocessing."""
    return classifier.Preprocessing(
        height=FLAGS.input_height, width=FLAGS.input_width, input_mean=FLAGS.input_mean,
        input_std=FLAGS.input_std, batch_size=FLAGS.batch_size, max_pixels=FLAGS.max_image_pixels,
    )


def run():
    shared_flags.define_command_flags(define_flags)
    startup.run(main, lambda: (
        "interrupted: nothing was written; run the same command again to classify the images."
    ))
