r"""An ONNX image classifier read back and run with onnxruntime (label_image.py, artifact_check).

`load(data)` takes a model file's bytes (read by the caller, at most
MAX_ONNX_BYTES) and gives an ONNXClassifier and the labels in its metadata
(onnx_export writes them as `labels`, a JSON array). A model is run only when
it is self-contained: ONNX lets a tensor's data live in another file, named
in the model, which onnxruntime would open relative to the working directory
(a FIFO there would hang it, any readable file would become weights); a file
retrain.py wrote never has such data, so a model that has is refused.

A classifier takes float32 [B, H, W, 3] images in [0, 1], the frozen graph's
contract, and gives float32 [B, C] probabilities, on onnxruntime's
CPUExecutionProvider. `is_onnx` tells an ONNX model from a frozen graph or a
TFLite file by its first bytes.

onnx and onnxruntime belong to the optional extra `[onnx]`: they are imported
inside the functions that use them (`missing` says whether they are there).
"""

import importlib
import json
import os

import numpy as np
from absl import logging

from retrain_suite import errors, tflite_metadata
from retrain_suite.images import files as image_files

# A protocol buffer holds at most 2 GiB, and weights outside it are refused: a model
# file is never larger. Bigger files are refused before they are read whole.
MAX_ONNX_BYTES = 2**31 - 1

# The labels in the metadata are bounded as a labels file is.
MAX_LABELS_BYTES = tflite_metadata.MAX_LABELS_BYTES

LABELS_KEY = "labels"
THRESHOLDS_KEY = "thresholds"  # a multi-label model's, JSON [C] numbers inside (0, 1)

RUNTIME = ("onnx", "onnxruntime")  # what running a model needs (the [onnx] extra)

# An ONNX ModelProto as every writer serializes it (fields in number order) starts
# with ir_version (field 1, a varint: tag 0x08, a small value), then the tag of one
# of the fields after it: producer_name, producer_version, domain, model_version,
# doc_string, graph, opset_import or metadata_props. A frozen GraphDef starts with
# 0x0a (its nodes), a TFLite file with a flatbuffer offset and b"TFL3".
_IR_VERSION_TAG = 0x08
_NEXT_FIELD_TAGS = frozenset((0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72))

START_BYTES = 3  # what is_onnx reads


class LabelsError(errors.SuiteError):
    """The labels in an ONNX model's metadata cannot be read (not UTF-8, too large, not a list)."""

    area = "onnx"


def is_onnx(data):
    """Whether data (bytes, at least the first START_BYTES) starts as an ONNX model does."""
    return (len(data) >= START_BYTES and data[0] == _IR_VERSION_TAG and 0 < data[1] < 0x80
            and data[2] in _NEXT_FIELD_TAGS)


def is_onnx_file(path):
    """Whether the file at path starts as an ONNX model (by its content, not its name)."""
    start, problem = image_files.read_file_start(path, START_BYTES)  # a FIFO is not waited on
    return problem is None and is_onnx(start)


def missing(packages=RUNTIME):
    """The packages (import names) that cannot be imported here, in the order given."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _tensors(graph):
    """Every TensorProto of graph (onnx.GraphProto) and of its subgraphs' nodes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node):
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        for sparse in list(attribute.sparse_tensors) + (
                [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []):
            yield from (sparse.values, sparse.indices)
        for graph in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
            yield from _tensors(graph)


def external_tensors(model):
    """Names of the tensors of model (onnx.ModelProto) whose data is in another file."""
    import onnx

    tensors = list(_tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            tensors.extend(_attribute_tensors(node))
    return [t.name for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def parse(data):
    """Model file bytes -> onnx.ModelProto; ValueError for what is not a self-contained model."""
    import onnx
    from google.protobuf import message

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except message.DecodeError as e:
        raise ValueError(f"not an ONNX model: {errors.one_line(e)}") from e
    outside = external_tensors(model)
    if outside:
        raise ValueError(
            f"its tensor {outside[0]!r}{f' and {len(outside) - 1} more' if len(outside) > 1 else ''} "
            "keeps its data in another file; only self-contained models, as retrain.py writes "
            "them, are run"
        )
    return model


def _text(value, what):
    """A metadata key or value as str (a non-UTF-8 one parses as bytes); LabelsError if it is not."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LabelsError(f"its metadata {what} is not UTF-8 text") from e
    return value


def metadata_labels(model):
    """The labels ([str], output order) in model's metadata, or None when it has none.

    Raises LabelsError when they are not UTF-8, larger than MAX_LABELS_BYTES,
    given twice, or not a JSON array of strings.
    """
    values = []
    for prop in model.metadata_props:
        if prop.key in (LABELS_KEY, LABELS_KEY.encode()):  # bytes: a key that is not UTF-8
            values.append(prop.value)
    if not values:
        return None
    if len(values) > 1:
        raise LabelsError(f"its metadata holds {len(values)} '{LABELS_KEY}' entries")
    (value,) = values
    size = len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_LABELS_BYTES:
        raise LabelsError(f"its metadata '{LABELS_KEY}' is {size:,} bytes, more than the "
                          f"{MAX_LABELS_BYTES:,} allowed")
    text = _text(value, f"'{LABELS_KEY}'")
    try:
        labels = json.loads(text)
    except ValueError as e:
        raise LabelsError(f"its metadata '{LABELS_KEY}' is not JSON ({e})") from e
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise LabelsError(f"its metadata '{LABELS_KEY}' is not a JSON array of strings")
    return labels


class ONNXClassifier:
    """An ONNX image classifier run by onnxruntime on the CPU, a batch per call.

    Takes float32 [B, H, W, 3] in [0, 1] and gives float32 [B, C]. A model whose
    batch dimension is fixed at 1 (some converters write that) is run one image
    per call.
    """

    def __init__(self, data):
        """data: the model file's bytes (parse has passed them)."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # Every core, as TensorFlow uses for the graph: the runtime's own default
        # counts physical cores only.
        options.intra_op_num_threads = os.cpu_count() or 1
        options.log_severity_level = 0 if logging.level_debug() else 3  # 3: errors only
        try:
            self.session = onnxruntime.InferenceSession(
                bytes(data), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's error classes are not public API
            raise ValueError(f"onnxruntime cannot load it: {errors.one_line(e)}") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected one input and one output, got {len(inputs)} and {len(outputs)}")
        (self.input,), (self.output,) = inputs, outputs
        shape = list(self.input.shape)
        fixed = [isinstance(d, int) and d > 0 for d in shape]
        if (self.input.type != "tensor(float)" or len(shape) != 4 or not all(fixed[1:])
                or shape[3] != 3 or (fixed[0] and shape[0] != 1)):
            raise ValueError(f"expected a float image input [N, H, W, 3], got {self.input.type} {shape}")
        if self.output.type != "tensor(float)" or len(self.output.shape) != 2:
            raise ValueError(f"expected float probabilities [N, C], got {self.output.type} "
                             f"{list(self.output.shape)}")
        self.height, self.width = shape[1], shape[2]
        self.one_per_call = fixed[0]
        self.thresholds = None  # a multi-label model's, float32 [C]: set by load

    def predict(self, images):
        """float32 [B, H, W, 3] -> float32 [B, C]."""
        images = np.asarray(images, np.float32)
        parts = [images[i:i + 1] for i in range(len(images))] if self.one_per_call else [images]
        try:
            results = [self.session.run([self.output.name], {self.input.name: part})[0]
                       for part in parts]
        except Exception as e:  # onnxruntime's error classes are not public API
            raise RuntimeError(f"onnxruntime failed: {errors.one_line(e)}") from e
        return np.concatenate(results).astype(np.float32)


def load(data):
    """Model file bytes -> (ONNXClassifier, labels from its metadata or None).

    Raises ValueError for a file that is not an ONNX image classifier this can
    run, LabelsError when the labels in its metadata cannot be read.
    """
    model = parse(data)
    labels = metadata_labels(model)  # LabelsError when they cannot be read
    runner = ONNXClassifier(data)
    runner.thresholds = metadata_thresholds(model)
    return runner, labels


def metadata_thresholds(model):
    """A multi-label model's thresholds (float32 [C]) from its metadata, or None.

    Raises LabelsError when they are not a JSON array of numbers inside (0, 1).
    """
    values = [prop.value for prop in model.metadata_props if prop.key == THRESHOLDS_KEY]
    if not values:
        return None
    try:
        thresholds = np.array(json.loads(_text(values[0][:MAX_LABELS_BYTES], "'thresholds'")),
                              np.float32)
    except (ValueError, TypeError) as e:
        raise LabelsError("its metadata 'thresholds' is not a JSON array of numbers") from e
    if len(values) > 1 or thresholds.ndim != 1 or not np.all((thresholds > 0) & (thresholds < 1)):
        raise LabelsError("its metadata 'thresholds' is not one array of numbers inside (0, 1)")
    return thresholds
