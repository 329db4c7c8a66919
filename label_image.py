r"""Classify images with a graph exported by retrain.py.

    python label_image.py photo.jpg output_graph.pb output_labels.txt
    python label_image.py --image photos/ --graph output_graph.pb --labels output_labels.txt
    python label_image.py --graph output_graph.pb --labels output_labels.txt photos/*.jpg

prints the --top_k labels with their scores, best first. Several images (or a
folder of them) are classified in batches, each block headed by the image
path; --output_format=json prints one JSON document for scripts.

Images are decoded and resized by the same function retrain.py used for the
bottlenecks, so an image gets the same probabilities here as in training.
"""

import json
import os
import sys

import command_startup

command_startup.quiet_tensorflow()  # before anything imports TensorFlow

import numpy as np
import tensorflow as tf
from absl import flags

import input_pipeline
import pre_input

FLAGS = flags.FLAGS


# Ops a retrained classifier (any TF Hub image feature-vector module plus the new
# layer) is made of: arithmetic, neural-network and array ops, and calls to the
# graph's own functions, whose bodies are checked too. Everything else, such as
# ReadFile, WriteFile, SaveV2, RestoreV2, MatchingFiles or PyFunc, could touch
# files or run code when someone else's graph is loaded, and is refused.
SAFE_OPS = frozenset("""
    Const Placeholder PlaceholderWithDefault Identity IdentityN NoOp StopGradient Snapshot
    Add AddV2 AddN Sub Mul Div RealDiv DivNoNan FloorDiv FloorMod Maximum Minimum Neg Abs
    Square Sqrt Rsqrt Exp Log Log1p Pow Reciprocal Tanh Sigmoid Erf Floor Ceil Round Sign
    SquaredDifference Cast ClipByValue Cumsum
    MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum BiasAdd
    Conv2D Conv3D DepthwiseConv2dNative MaxPool MaxPoolV2 AvgPool LRN
    FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3
    Relu Relu6 Elu Selu LeakyRelu Softplus Softsign Softmax LogSoftmax
    Mean Sum Max Min Prod ArgMax ArgMin All Any L2Loss
    Reshape Squeeze ExpandDims ConcatV2 Concat Pack Unpack Split SplitV Slice StridedSlice
    Transpose Tile Pad PadV2 MirrorPad Shape ShapeN Size Rank Fill ZerosLike OnesLike Range
    Gather GatherV2 GatherNd Select SelectV2 BroadcastTo BroadcastArgs
    Equal NotEqual Less LessEqual Greater GreaterEqual LogicalAnd LogicalOr LogicalNot
    ResizeBilinear ResizeNearestNeighbor ResizeBicubic
    PartitionedCall StatefulPartitionedCall If StatelessIf While StatelessWhile
    Enter Exit Merge Switch NextIteration LoopCond
""".split())


class LabelError(Exception):
    """A problem with the user's images, graph or labels."""


def load_graph(path):
    """Frozen graph file -> tf.compat.v1.GraphDef."""
    if not tf.io.gfile.exists(path):
        raise LabelError(f"Graph file {path} does not exist.")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
    except Exception as e:  # protobuf raises its own DecodeError
        raise LabelError(f"{path} is not a TensorFlow GraphDef file ({e}).") from e
    return graph_def


def load_labels(path):
    """Labels file -> [label, ...] in output order."""
    if not tf.io.gfile.exists(path):
        raise LabelError(f"Labels file {path} does not exist.")
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip("\r\n") for line in f.read().decode("utf-8").splitlines()]


def unsafe_ops(graph_def):
    """Sorted names of the ops in the graph and its functions that are not in SAFE_OPS."""
    functions = {f.signature.name for f in graph_def.library.function}
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return sorted({n.op for n in nodes if n.op not in SAFE_OPS and n.op not in functions})


def check_graph_is_safe(graph_def, path):
    unsafe = unsafe_ops(graph_def)
    if unsafe:
        raise LabelError(
            f"Graph {path} contains ops that can read or write files or run code: "
            f"{', '.join(unsafe)}. A graph exported by retrain.py has none; if you "
            "trust this graph, pass --allow_unsafe_ops."
        )


def find_node(graph_def, name, role):
    for node in graph_def.node:
        if node.name == name:
            return node
    raise LabelError(
        f"The graph has no {role} named {name!r}; pass the right --{role} "
        "(retrain.py's graphs use Placeholder and final_result)."
    )


def input_size(graph_def, input_layer):
    """(height, width) from the input placeholder's shape, or None when not fixed."""
    node = find_node(graph_def, input_layer, "input_layer")
    if "shape" in node.attr:
        dims = [d.size for d in node.attr["shape"].shape.dim]
        if len(dims) == 4 and dims[1] > 0 and dims[2] > 0:
            return dims[1], dims[2]
    return None


def list_images(arguments):
    """Files and folders -> image files (folders: their images, sorted, non-recursive)."""
    images = []
    for argument in arguments:
        if tf.io.gfile.isdir(argument):
            names = sorted(
                name for name in tf.io.gfile.listdir(argument)
                if not name.startswith(".")
                and os.path.splitext(name)[1].lower() in pre_input.IMAGE_EXTENSIONS
            )
            if not names:
                raise LabelError(f"Folder {argument} holds no images.")
            images.extend(os.path.join(argument, name) for name in names)
        elif tf.io.gfile.exists(argument):
            images.append(argument)
        else:
            raise LabelError(f"Image {argument} does not exist.")
    return images


def classify(graph_def, paths, height, width, input_layer="Placeholder",
             output_layer="final_result", input_mean=0.0, input_std=255.0, batch_size=32,
             orientations=None):
    """Run the graph on image files. -> {index: probabilities float32 [C]}.

    orientations: EXIF orientation per path (see input_pipeline.inspect_image_file);
    default upright. Images that cannot be decoded are missing from the result.
    """
    find_node(graph_def, output_layer, "output_layer")
    graph = tf.Graph()
    with graph.as_default():
        batches = input_pipeline.image_batches(paths, height, width, batch_size, orientations)
        indices, images = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
        if (input_mean, input_std) != (0.0, 255.0):
            # Same arithmetic as the stock label_image: (pixel - mean) / std on 0-255 values.
            images = (images * 255.0 - input_mean) / input_std
        (probabilities,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={input_layer + ":0": images},
            return_elements=[output_layer + ":0"], name="",
        )
        results = {}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            for batch_indices, values in input_pipeline.each_batch(sess, [indices, probabilities]):
                results.update(zip(batch_indices.tolist(), values))
    return results


def session_config():
    """ConfigProto for classifying: GPU memory as needed; on a CPU, no Grappler.

    The exported graph holds the module's weights as constants, and Grappler's
    passes over them cost more than they give a classifying run on a CPU.
    Measured with a random Inception V3 graph on 2 cores: they added ~3 s
    before the first batch and raised the peak memory of classifying 100
    photos from 1.7 GiB to 3.4 GiB, for a forward pass 5% faster afterwards
    (1.79 against 1.88 s per 32 images); the probabilities printed were the
    same. On a GPU they stay on: their layout and fusion passes matter more
    there, and were not measured.
    """
    config = tf.compat.v1.ConfigProto()
    config.gpu_options.allow_growth = True
    if not tf.config.list_physical_devices("GPU"):
        config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def top_labels(probabilities, labels, k):
    """[(label, score), ...] of the k best, best first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


def define_flags():
    """The command line's flags (defined on demand, so that importing this module is free)."""
    flags.DEFINE_multi_string("image", [], "Image file or folder of images; repeat for more.")
    flags.DEFINE_string("graph", None, "Frozen graph (.pb) written by retrain.py.")
    flags.DEFINE_string("labels", None, "Labels file written by retrain.py.")
    flags.DEFINE_string("input_layer", "Placeholder", "Name of the graph's image input.")
    flags.DEFINE_string("output_layer", "final_result", "Name of the graph's probabilities output.")
    flags.DEFINE_integer("input_height", None, "Image height fed to the graph; default: from the graph.")
    flags.DEFINE_integer("input_width", None, "Image width fed to the graph; default: from the graph.")
    flags.DEFINE_float("input_mean", 0, "Subtracted from pixel values (0-255) before scaling.")
    flags.DEFINE_float("input_std", 255, "Pixel values are divided by this after the mean.")
    flags.DEFINE_integer("top_k", 5, "How many labels to print per image.")
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
    flags.DEFINE_enum("output_format", "text", ["text", "json"], "How to print the results.")
    flags.DEFINE_integer(
        "max_image_pixels", input_pipeline.DEFAULT_MAX_IMAGE_PIXELS,
        "Images with more pixels (width x height) are refused instead of decoded.",
    )
    flags.DEFINE_bool(
        "allow_unsafe_ops", False,
        "Run a graph even if it holds ops that can read or write files or run code.",
    )


def main(argv):
    images, graph, labels = list(FLAGS.image), FLAGS.graph, FLAGS.labels
    positional = argv[1:]
    if positional and graph and labels:
        images += positional  # `--graph g.pb --labels l.txt photos/*.jpg`
    elif positional:
        # The classic form names the graph and labels last; with only one of them
        # given as a flag, which positional is which would be a guess.
        if len(positional) < 3 or graph or labels:
            sys.exit(
                "error: usage: label_image.py IMAGE [IMAGE ...] GRAPH LABELS, or "
                "--graph GRAPH --labels LABELS IMAGE [IMAGE ...] (or --image IMAGE)"
            )
        images, graph, labels = images + positional[:-2], positional[-2], positional[-1]
    if not images or not graph or not labels:
        sys.exit("error: give an image, a graph and a labels file (see --help).")
    tf.get_logger().setLevel("ERROR")
    try:
        paths = list_images(images)
        graph_def = load_graph(graph)
        if not FLAGS.allow_unsafe_ops:
            check_graph_is_safe(graph_def, graph)
        label_list = load_labels(labels)
        size = input_size(graph_def, FLAGS.input_layer)
        height = FLAGS.input_height or (size and size[0])
        width = FLAGS.input_width or (size and size[1])
        if not height or not width:
            raise LabelError("The graph's input size is not fixed; pass --input_height and --input_width.")
        files = [input_pipeline.inspect_image_file(p, FLAGS.max_image_pixels) for p in paths]
        usable = [i for i, f in enumerate(files) if not f.problem]
        found = classify(
            graph_def, [paths[i] for i in usable], height, width, FLAGS.input_layer,
            FLAGS.output_layer, FLAGS.input_mean, FLAGS.input_std, FLAGS.batch_size,
            [files[i].orientation for i in usable],
        )
        results = {usable[j]: probabilities for j, probabilities in found.items()}
        output_size = len(next(iter(results.values()))) if results else None
        if output_size is not None and output_size != len(label_list):
            raise LabelError(
                f"The labels file {labels} has {len(label_list)} labels but the graph "
                f"outputs {output_size} classes; use the labels file written with this graph."
            )
    except LabelError as e:
        sys.exit(f"error: {e}")
    except (ValueError, tf.errors.OpError) as e:
        sys.exit(f"error: cannot run graph {graph}: {str(e).splitlines()[0]}")

    failures = {
        i: files[i].problem or input_pipeline.why_undecodable(path)
        for i, path in enumerate(paths) if i not in results
    }
    print_results(paths, results, failures, label_list, FLAGS.top_k, FLAGS.output_format)
    if failures:
        sys.exit(1)


def print_results(paths, results, failures, labels, top_k, output_format):
    if output_format == "json":
        document = []
        for i, path in enumerate(paths):
            if i in failures:
                document.append({"image": path, "error": failures[i]})
            else:
                document.append({
                    "image": path,
                    "predictions": [
                        {"label": label, "score": score}
                        for label, score in top_labels(results[i], labels, top_k)
                    ],
                })
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return
    several = len(paths) > 1
    for i, path in enumerate(paths):
        if i in failures:
            print(f"error: cannot classify {path}: {failures[i]}", file=sys.stderr)
            continue
        if several:
            print(path)
        for label, score in top_labels(results[i], labels, top_k):
            print(f"{'  ' if several else ''}{label} {score:.5f}")


def run():
    define_flags()
    command_startup.run(main)


if __name__ == "__main__":
    run()
