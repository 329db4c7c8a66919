r"""Running an exported graph on new images: what label_image.py does.

Loading a frozen graph and refusing one that holds ops that could touch files
or run code (`check_graph_is_safe`), reading its labels file, finding images,
and classifying them in batches. Images are decoded and resized by the same
function retrain.py used for the bottlenecks (input_pipeline.decode_and_resize),
so an image gets the same probabilities here as in training.
"""

import dataclasses
import json
import math
import os
import re
import stat
import sys

import numpy as np
import tensorflow as tf

from retrain_suite import errors, input_pipeline, tflite, tflite_metadata
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import inlining
from retrain_suite.dataset import scan

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


class LabelError(errors.SuiteError):
    """A problem with the user's images, graph or labels."""

    area = "classifier"


def read_input_file(path, what, max_bytes=None):
    """The bytes of a file the user named (what: "Graph file", ...); LabelError if unusable.

    Read without blocking (input_pipeline.read_regular_file): a FIFO or device
    named as a graph, labels file or model is refused, never waited on.
    """
    data, problem = input_pipeline.read_regular_file(path, max_bytes)
    if problem == input_pipeline.MISSING:
        raise LabelError(f"{what} {path} does not exist.")
    if problem:
        raise LabelError(f"{what} {path} cannot be used: {problem}.")
    return data


def load_graph(path):
    """Frozen graph file -> tf.compat.v1.GraphDef."""
    data = read_input_file(path, "Graph file")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as e:  # protobuf raises its own DecodeError
        raise LabelError(f"{path} is not a TensorFlow GraphDef file ({e}).") from e
    return graph_def


def check_label_count(results, labels, source, what):
    """Raise LabelError unless each result ({index: TopClasses}) has one class per label.

    source names where the labels came from; what is "graph" or "model".
    """
    output_size = next(iter(results.values())).class_count if results else None
    if output_size is not None and output_size != len(labels):
        raise LabelError(
            f"{source} has {len(labels)} labels but the {what} outputs {output_size} classes; "
            f"use the labels written with this {what}."
        )


def load_labels(path):
    """Labels file -> [label, ...] in output order (a UTF-8 byte-order mark is dropped)."""
    data = read_input_file(path, "Labels file", tflite_metadata.MAX_LABELS_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelError(
            f"Labels file {path} is not UTF-8 text; pass the labels file retrain.py wrote."
        ) from e
    return text.splitlines()


def unsafe_ops(graph_def):
    """Sorted names of the ops in the graph and its functions that are not in SAFE_OPS."""
    functions = {f.signature.name for f in graph_def.library.function}
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return sorted({n.op for n in nodes if n.op not in SAFE_OPS and n.op not in functions})


def undefined_functions(graph_def):
    """Sorted names of functions that nodes of the graph or its functions call, but
    that the graph's library does not define."""
    defined = {f.signature.name for f in graph_def.library.function}
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return sorted({name for n in nodes for name in inlining.called_functions(n) if name not in defined})


def _short_list(names, count=5, width=60):
    shown = [name if len(name) <= width else name[:width] + "..." for name in names[:count]]
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(shown) + more


def check_functions_defined(graph_def, path):
    """Refuse a graph calling functions its library lacks, whatever --allow_unsafe_ops says:
    it cannot run, and TensorFlow would spend minutes building an error message for it."""
    missing = undefined_functions(graph_def)
    if missing:
        raise LabelError(
            f"Graph {path} calls functions it does not define: {_short_list(missing)}. "
            "It is damaged or not a graph exported by retrain.py."
        )


# Room for splat constants (a Const of one value repeated to its shape) beyond the
# bytes the graph holds: a graph retrain.py writes stores every weight whole.
CONSTANT_SLACK_BYTES = 64 * 1024 * 1024


def check_constants_fit(graph_def, path):
    """Refuse a graph whose constants declare far more bytes than the file holds,
    whatever --allow_unsafe_ops says: a Const may give one value and a shape to fill,
    so a 1 KB graph could ask for 80 GB (TensorFlow took 24 s to refuse one)."""
    declared = 0
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    for node in nodes:
        if node.op != "Const" or "value" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        dims = [d.size for d in tensor.tensor_shape.dim]
        if any(d < 0 for d in dims):
            continue
        try:
            item = tf.dtypes.as_dtype(tensor.dtype).size or 8  # 0 for strings
        except (TypeError, ValueError):  # a dtype number TensorFlow does not know
            item = 8
        declared += math.prod(dims) * item
    if declared > graph_def.ByteSize() + CONSTANT_SLACK_BYTES:
        raise LabelError(
            f"Graph {path} declares {declared:,} bytes of constants, far more than its "
            f"{graph_def.ByteSize():,} bytes hold. It is damaged or not a graph exported by "
            "retrain.py."
        )


def check_graph_is_safe(graph_def, path):
    unsafe = unsafe_ops(graph_def)
    if unsafe:
        raise LabelError(
            f"Graph {path} contains ops that can read or write files or run code: "
            f"{_short_list(unsafe, 20)}. A graph exported by retrain.py has none; if you "
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
    """Files and folders -> image files (folders: their images, sorted, non-recursive).

    A folder's subfolders (even one named x.jpg) are not images, and its
    special files (FIFOs, sockets, devices) and names that are not valid UTF-8
    are skipped with a warning on stderr. A file given by name is classified or
    reported as it is (a FIFO is refused without being waited on).
    """
    images = []
    for argument in arguments:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", argument):
            raise LabelError(
                f"Image {argument} is a URL; label_image.py reads local files: download "
                "it and pass the file."
            )
        if not scan.name_is_utf8(argument):
            raise LabelError(
                f"Image name {scan.shown(argument)} is not valid UTF-8; rename the file."
            )
        try:
            is_folder = stat.S_ISDIR(os.stat(argument).st_mode)
        except FileNotFoundError as e:
            raise LabelError(f"Image {argument} does not exist.") from e
        except OSError as e:
            raise LabelError(f"Image {argument} cannot be read: {e.strerror}.") from e
        if not is_folder:
            images.append(argument)
            continue
        try:
            entries = scan.folder_entries(argument)
        except OSError as e:
            raise LabelError(f"Folder {argument} cannot be read: {e.strerror}.") from e
        names = []
        for name, kind in entries:
            if name.startswith(".") or kind == "dir":
                continue
            if os.path.splitext(name)[1].lower() not in scan.IMAGE_EXTENSIONS:
                continue
            full = os.path.join(argument, name)
            if not scan.name_is_utf8(name):
                print(f"warning: skipping {scan.shown(full)}: its name is not valid "
                      "UTF-8", file=sys.stderr)
            elif kind != "file":
                print(f"warning: skipping {full}: not a regular file ({kind})", file=sys.stderr)
            else:
                names.append(name)
        if not names:
            raise LabelError(f"Folder {argument} holds no images.")
        images.extend(os.path.join(argument, name) for name in names)
    return images


def classify(graph_def, paths, height, width, input_layer="Placeholder",
             output_layer="final_result", input_mean=0.0, input_std=255.0, batch_size=None,
             max_pixels=input_pipeline.DEFAULT_MAX_IMAGE_PIXELS, keep=None):
    """Run the graph on image files. -> {index: probabilities float32 [C]}, or
    {index: keep(probabilities)} (top_classes(k), say: then what is held grows
    with the images times k, not times the classes).

    batch_size: images per forward pass, or None to measure the fastest (see
    bottleneck.batch_size). Each file is read once, its size checked against
    max_pixels from its header and its EXIF orientation applied. Images that
    cannot be read or decoded, or are too large, are missing from the result.
    """
    find_node(graph_def, output_layer, "output_layer")
    files = input_pipeline.ImageFiles(paths)
    graph = tf.Graph()
    with graph.as_default():
        run = batch_size_lib.BatchedRun(
            lambda indices, size: files.batches(indices, height, width, size, max_pixels).map(
                lambda index, content, images: (index, images)
            ),
            range(len(paths)), batch_size,
        )
        images = run.images
        if (input_mean, input_std) != (0.0, 255.0):
            # Same arithmetic as the stock label_image: (pixel - mean) / std on 0-255 values.
            images = (images * 255.0 - input_mean) / input_std
        (probabilities,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={input_layer + ":0": images},
            return_elements=[output_layer + ":0"], name="",
        )
        results = {}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            for batch_indices, values in run.batches(sess, [probabilities]):
                results.update(zip(batch_indices.tolist(), map(keep or _as_is, values)))
    return results


def _as_is(probabilities):
    return probabilities


@dataclasses.dataclass(frozen=True)
class TopClasses:
    """The best classes of one image's probabilities [C]."""

    classes: np.ndarray  # int64 [k], best first (ties: the lower class first)
    scores: np.ndarray  # float32 [k], their probabilities
    class_count: int  # C


def top_classes(k):
    """-> a keep function for classify: probabilities [C] -> TopClasses of the k best."""

    def keep(probabilities):
        order = np.argsort(-probabilities, kind="stable")[:k]
        return TopClasses(order, probabilities[order], len(probabilities))

    return keep


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


def flag_problem(values):
    """What is wrong with the numeric flags (a dict: flag name -> value), as one line, or None."""
    if values["batch_size"] is not None and values["batch_size"] < 1:
        return (f"--batch_size={values['batch_size']} must be positive (or left out to "
                "measure the fastest).")
    for name in ("top_k", "max_image_pixels"):
        if values[name] < 1:
            return f"--{name}={values[name]} must be at least 1."
    for name in ("input_height", "input_width"):
        if values[name] is not None and values[name] < 1:
            return f"--{name}={values[name]} must be positive (or left out: from the graph)."
    for name in ("input_mean", "input_std"):
        if not math.isfinite(values[name]):
            return f"--{name}={values[name]} must be a finite number."
    if values["input_std"] == 0:
        return "--input_std=0 would divide every pixel by zero; retrain.py's graphs use 255."
    return None


def print_results(paths, results, failures, labels, output_format):
    """Print each image's TopClasses (results: {index: TopClasses}) or its failure."""

    def top_labels(top):
        return [(labels[c], float(score)) for c, score in zip(top.classes, top.scores)]

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
                        for label, score in top_labels(results[i])
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
        for label, score in top_labels(results[i]):
            print(f"{'  ' if several else ''}{label} {score:.5f}")


def load_tflite(path):
    """TFLite file -> (tflite.TFLiteClassifier, labels from its metadata or None)."""
    model = read_input_file(path, "Model file")
    try:
        return tflite.TFLiteClassifier(model), tflite_metadata.packed_labels(model)
    except tflite_metadata.MetadataError as e:
        raise LabelError(f"Cannot read the labels inside {path}: {e}.") from e
    except ValueError as e:
        raise LabelError(f"{path} is not an image classifier this command can run ({e}).") from e


def check_tflite_input_range(model, input_mean, input_std):
    """Raise LabelError when a quantized model's input cannot hold (pixel - mean) / std.

    A uint8 (or int8) input holds only the values its scale and zero point
    reach: TFLiteClassifier clips anything outside, so flags that move the
    0-255 pixels out of that range would silently give wrong answers. Values
    up to one quantization step outside are rounding (a model calibrated to
    stop just short of 1.0). The default flags feed pixel / 255, the contract
    of every model retrain.py writes, and are never refused; a float input
    takes any value.
    """
    if model.input["dtype"] == np.float32 or (input_mean, input_std) == (0.0, 255.0):
        return
    scale, zero_point = (float(v) for v in model.input["quantization"])
    limits = np.iinfo(model.input["dtype"])
    low, high = (limits.min - zero_point) * scale, (limits.max - zero_point) * scale
    fed_low, fed_high = sorted(((0.0 - input_mean) / input_std, (255.0 - input_mean) / input_std))
    step = scale * (1 + 1e-6)  # one step, and the float rounding of its own arithmetic
    if fed_low >= low - step and fed_high <= high + step:
        return
    if abs(low) <= step and abs(high - 1.0) <= step:
        fix = ("it takes pixel/255 (0 to 1), as retrain.py's models do: leave --input_mean "
               "and --input_std at their defaults.")
    else:
        fix = "pass an --input_mean and --input_std that map 0-255 into that range."
    raise LabelError(
        f"--input_mean={input_mean:g} and --input_std={input_std:g} turn pixels into values "
        f"from {fed_low:.4g} to {fed_high:.4g}, but this quantized model's {model.input['dtype'].__name__} "
        f"input holds only {low:.4g} to {high:.4g} (the rest would be clipped); {fix}"
    )


def classify_tflite(model, paths, input_mean=0.0, input_std=255.0, batch_size=None,
                    max_pixels=input_pipeline.DEFAULT_MAX_IMAGE_PIXELS, keep=None):
    """As classify, with a tflite.TFLiteClassifier: one image per interpreter call.

    Images are read once, checked and decoded by the same pipeline as
    classify, in batches of batch_size (unset: the default; the interpreter
    takes one image at a time whatever the decoding batch). -> {index:
    probabilities float32 [C]} or {index: keep(probabilities)}; images that
    cannot be used are missing.
    Raises LabelError, before any image is read, when a quantized input cannot
    hold what input_mean and input_std make of the pixels.
    """
    check_tflite_input_range(model, input_mean, input_std)
    batches = input_pipeline.image_batches(
        paths, model.height, model.width, batch_size or batch_size_lib.DEFAULT_BATCH_SIZE, max_pixels
    )
    results = {}
    for indices, _, images in batches.as_numpy_iterator():
        if (input_mean, input_std) != (0.0, 255.0):
            images = (images * 255.0 - input_mean) / input_std
        for index, image in zip(indices.tolist(), images):
            results[index] = (keep or _as_is)(model.probabilities(image))
    return results
