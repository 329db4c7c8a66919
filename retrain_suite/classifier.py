r"""Running an exported classifier on image files: what label_image.py does.

Reading the user's graph, labels file, TFLite or ONNX model, finding images,
and classifying them in batches (`classify` for a frozen graph, which
graph_checks has passed; `classify_tflite` and `classify_onnx` for the models). Images are
decoded and resized by the same function retrain.py used for the bottlenecks
(image_preprocess.decode_and_resize), so an image gets the same probabilities
here as in training; `Preprocessing` says the size, normalization and batches.
"""

import dataclasses
import json
import os
import re
import stat
import sys
from typing import Optional

import numpy as np
import tensorflow as tf

from retrain_suite import errors, export, graph_checks, onnx_model, tflite, tflite_metadata
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.dataset import scan
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines


class LabelError(errors.SuiteError):
    """A problem with the user's images, graph or labels."""

    area = "classifier"


def read_input_file(path, what, max_bytes=None):
    """The bytes of a file the user named (what: "Graph file", ...); LabelError if unusable.

    Read without blocking (image_files.read_regular_file): a FIFO or device
    named as a graph, labels file or model is refused, never waited on.
    """
    data, problem = image_files.read_regular_file(path, max_bytes)
    if problem == image_files.MISSING:
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


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How image files become what a classifier is fed: float32 [N, height, width, 3]."""

    height: Optional[int] = None  # pixels; None: the graph's or model's own input height
    width: Optional[int] = None  # pixels; None: the graph's or model's own input width
    input_mean: float = 0.0  # subtracted from the 0-255 pixel values...
    input_std: float = 255.0  # ...which are then divided by this
    batch_size: Optional[int] = None  # images per forward pass; None: measured (or the default)
    max_pixels: int = image_files.DEFAULT_MAX_IMAGE_PIXELS  # width x height, from the header

    def normalize(self, images):
        """[N, H, W, 3] pixels in [0, 1] -> what the classifier is fed."""
        if (self.input_mean, self.input_std) == (0.0, 255.0):
            return images
        # Same arithmetic as the stock label_image: (pixel - mean) / std on 0-255 values.
        return (images * 255.0 - self.input_mean) / self.input_std


def graph_input_size(graph_def, input_layer, preprocessing):
    """(height, width) to feed: preprocessing's, else the input placeholder's.

    Raises LabelError when neither gives both, graph_checks.GraphError when
    the graph has no input_layer.
    """
    size = graph_checks.input_size(graph_def, input_layer)
    height = preprocessing.height if preprocessing.height is not None else size and size[0]
    width = preprocessing.width if preprocessing.width is not None else size and size[1]
    if not height or not width:
        raise LabelError("The graph's input size is not fixed; pass --input_height and --input_width.")
    return height, width


def classify(graph_def, paths, preprocessing=Preprocessing(), input_layer="Placeholder",
             output_layer="final_result", keep=None):
    """Run the graph on image files. -> {index: probabilities float32 [C]}, or
    {index: keep(probabilities)} (top_classes(k), say: then what is held grows
    with the images times k, not times the classes).

    Each file is read once, its size checked against preprocessing.max_pixels
    from its header and its EXIF orientation applied. Images that cannot be
    read or decoded, or are too large, are missing from the result.
    """
    height, width = graph_input_size(graph_def, input_layer, preprocessing)
    graph_checks.find_node(graph_def, output_layer, "output_layer")
    files = image_pipelines.ImageFiles(paths)
    graph = tf.Graph()
    with graph.as_default():
        run = batch_size_lib.BatchedRun(
            lambda indices, size: files.batches(
                indices, height, width, size, preprocessing.max_pixels
            ).map(lambda index, content, images: (index, images)),
            range(len(paths)), preprocessing.batch_size, session_config(),
        )
        (probabilities,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={input_layer + ":0": preprocessing.normalize(run.images)},
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


def above_thresholds(thresholds, k=None):
    """-> a keep function for classify of a multi-label model: scores [C] -> TopClasses of
    every class whose score is >= its threshold (thresholds float [C]), best first; at
    most k of them when k is given. Its classes may be empty: no label is predicted."""
    thresholds = np.asarray(thresholds, np.float32)

    def keep(scores):
        order = [c for c in np.argsort(-scores, kind="stable") if scores[c] >= thresholds[c]]
        order = np.array(order[:k] if k else order, np.int64)
        return TopClasses(order, scores[order], len(scores))

    return keep


def multi_label_thresholds(graph_def, output_layer):
    """A multi-label graph's thresholds (its `<output_layer>_thresholds` constant), float32
    [C], or None for a single-label graph; LabelError unless each is inside (0, 1)."""
    name = export.thresholds_name(output_layer)
    if not any(node.name == name for node in graph_def.node):
        return None
    values = export.graph_thresholds(graph_def, output_layer)
    if values is None:
        raise LabelError(f"The graph's {name} is not a constant of thresholds.")
    return checked_thresholds(values, f"The graph's {name}")


def checked_thresholds(values, source):
    """values as float32 [C]; LabelError unless a vector of numbers inside (0, 1)."""
    values = np.asarray(values, np.float32)
    if values.ndim != 1 or not np.all((values > 0) & (values < 1)):
        raise LabelError(f"{source} holds thresholds outside (0, 1) or not one per label; "
                         "the file is damaged: export it again.")
    return values


NO_LABEL = "(no label above its threshold)"


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
        if not len(results[i].classes):
            print(f"{'  ' if several else ''}{NO_LABEL}")
        for label, score in top_labels(results[i]):
            print(f"{'  ' if several else ''}{label} {score:.5f}")


def load_tflite(path):
    """TFLite file -> (tflite.TFLiteClassifier, labels from its metadata or None)."""
    model = read_input_file(path, "Model file")
    try:
        runner = tflite.TFLiteClassifier(model)
        runner.thresholds = tflite_metadata.packed_thresholds(model)
        return runner, tflite_metadata.packed_labels(model)
    except tflite_metadata.MetadataError as e:
        raise LabelError(f"Cannot read the labels inside {path}: {e}.") from e
    except ValueError as e:
        raise LabelError(f"{path} is not an image classifier this command can run ({e}).") from e


def load_onnx(path):
    """ONNX file -> (onnx_model.ONNXClassifier, labels from its metadata or None).

    The file is read once (at most onnx_model.MAX_ONNX_BYTES, without blocking).
    """
    missing = onnx_model.missing()
    if missing:
        raise LabelError(f"{path} is an ONNX model; running it needs {' and '.join(missing)}: "
                         "pip install -e '.[onnx]'")
    data = read_input_file(path, "Model file", onnx_model.MAX_ONNX_BYTES)
    try:
        return onnx_model.load(data)
    except onnx_model.LabelsError as e:
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


def check_model_size(model, preprocessing, what="TFLite model"):
    """Raise LabelError when preprocessing asks for a size the model (what: "TFLite
    model", "ONNX model") does not take."""
    for name, asked, size in (("input_height", preprocessing.height, model.height),
                              ("input_width", preprocessing.width, model.width)):
        if asked is not None and asked != size:
            raise LabelError(f"--{name}={asked}, but the {what} takes {size}; drop the flag.")


def classify_tflite(model, paths, preprocessing=Preprocessing(), keep=None):
    """As classify, with a tflite.TFLiteClassifier: one image per interpreter call.

    Images are read once, checked and decoded by the same pipeline as
    classify, at the model's own size, in batches of preprocessing.batch_size
    (unset: the default; the interpreter takes one image at a time whatever
    the decoding batch). -> {index: probabilities float32 [C]} or {index:
    keep(probabilities)}; images that cannot be used are missing.
    Raises LabelError, before any image is read, when preprocessing asks for
    another size, or a quantized input cannot hold what input_mean and
    input_std make of the pixels.
    """
    check_model_size(model, preprocessing)
    check_tflite_input_range(model, preprocessing.input_mean, preprocessing.input_std)
    return _classify_with(model, paths, preprocessing, keep)


def classify_onnx(model, paths, preprocessing=Preprocessing(), keep=None):
    """As classify_tflite, with an onnx_model.ONNXClassifier: a decoding batch per call.

    Raises LabelError, before any image is read, when preprocessing asks for another size.
    """
    check_model_size(model, preprocessing, "ONNX model")
    return _classify_with(model, paths, preprocessing, keep)


def _classify_with(model, paths, preprocessing, keep):
    """model.predict (float32 [B, H, W, 3] -> [B, C]) over the images at paths, decoded
    in batches at the model's size. -> {index: keep(probabilities)}."""
    batches = image_pipelines.image_batches(
        paths, model.height, model.width,
        preprocessing.batch_size or batch_size_lib.DEFAULT_BATCH_SIZE, preprocessing.max_pixels,
    )
    results = {}
    for indices, _, images in batches.as_numpy_iterator():
        probabilities = model.predict(preprocessing.normalize(images))
        results.update(zip(indices.tolist(), map(keep or _as_is, probabilities)))
    return results
