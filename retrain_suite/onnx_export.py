r"""The retrained classifier as an ONNX model: conversion with tf2onnx, and its metadata.

The ONNX model keeps the frozen graph's contract (export.py): one input named
`Placeholder`, float32 [N, H, W, 3] with RGB values in [0, 1], and one output
named as --final_tensor_name (`final_result`), float32 [N, C], the class
probabilities in the labels file's order. N is free (named `N`); H and W are
the module's. It runs with onnxruntime (onnx_model.ONNXClassifier) or any
runtime of ONNX opset OPSET or later.

The conversion reads the frozen GraphDef that export.frozen_graph built. A
frozen TF2 module's forward pass is one StatefulPartitionedCall of a library
function, which tf2onnx does not look into: the calls are inlined first
(bottleneck.inlining), so tf2onnx sees the module's own ops. An op tf2onnx
cannot map, left in the model by tf2onnx as it is, is an ONNXError naming it;
nothing is written then.

Metadata (the model's `metadata_props`, strings; onnxruntime's
`session.get_modelmeta().custom_metadata_map`), METADATA_KEYS:
- `labels`: the class names in output order, a JSON array of strings;
- `input_size`: JSON [height, width] in pixels;
- `input_range`: JSON [0, 1], the values the input takes (pixel / 255);
- `input_name`, `final_tensor_name`: the input's and output's names;
- `module`: the module retrained (a local folder by its name only);
- `producer`: `retrain_suite <version>`; the model's own producer_name and
  producer_version stay tf2onnx's, the converter's.
- `thresholds` (multi-label models only, retrain.py --multi_label): a JSON array of
  numbers inside (0, 1), one per label in output order; the output then holds
  independent sigmoid scores, and a label is predicted when its score is >= its
  threshold.
The model's doc_string says the same in a sentence.

tf2onnx, onnx and onnxruntime are the optional extra `[onnx]`: they are
imported only here and in onnx_model, inside the functions that use them, so
the suite runs without them and `onnx_model.missing(EXTRA)` tells a run up front.
"""

import contextlib
import importlib.metadata
import json
import logging as std_logging
import os
import warnings

from absl import logging

from retrain_suite import atomic_files, console, errors, export, onnx_model
from retrain_suite.bottleneck import inlining

# tf2onnx 1.17's default opset, and a wide choice: onnxruntime has run it since 1.10
# (2021). Fixed here, so that a later tf2onnx does not raise what a runtime must support.
OPSET = 15

# The symbolic batch dimension of the input and output.
BATCH_DIMENSION = "N"

METADATA_KEYS = ("labels", "input_size", "input_range", "input_name", "final_tensor_name",
                 "module", "producer")

EXTRA = ("tf2onnx", "onnx", "onnxruntime")  # what `pip install -e '.[onnx]'` brings

INSTALL_HINT = "pip install -e '.[onnx]'"


class ONNXError(errors.SuiteError):
    """The classifier's graph cannot be converted to ONNX (an op tf2onnx cannot map, say)."""

    area = "onnx"


class _ConverterRecords(std_logging.Filter):
    """Drops tf2onnx's log records and TensorFlow's below ERROR (deprecation notes of the
    calls tf2onnx makes); what matters of them is in the ONNXError raised."""

    def __init__(self, tf2onnx_dir, tensorflow_dir):
        super().__init__()
        self.tf2onnx_dir, self.tensorflow_dir = tf2onnx_dir, tensorflow_dir

    def filter(self, record):
        if record.pathname.startswith(self.tf2onnx_dir):
            return False
        return record.levelno >= std_logging.ERROR or not record.pathname.startswith(
            self.tensorflow_dir)


@contextlib.contextmanager
def converter_quiet():
    """Keep tf2onnx's lines off the console for the block (unless at DEBUG verbosity).

    tf2onnx logs through Python's logging, to its own loggers and to one named by a
    file's path, so its records are dropped where they are printed: by a filter on
    the root logger's and TensorFlow's logger's handlers, for the block only. Python
    warnings are ignored, and the C++ lines of TensorFlow's graph optimizer, which
    tf2onnx runs, go through console.native_output_filtered.
    """
    if logging.level_debug():
        yield
        return
    import tensorflow as tf
    import tf2onnx

    record_filter = _ConverterRecords(os.path.dirname(tf2onnx.__file__) + os.sep,
                                      os.path.dirname(tf.__file__) + os.sep)
    handlers = set(std_logging.getLogger().handlers)
    handlers |= set(std_logging.getLogger("tensorflow").handlers)
    for handler in handlers:
        handler.addFilter(record_filter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with console.native_output_filtered():
                yield
    finally:
        for handler in handlers:
            handler.removeFilter(record_filter)


def tf2onnx_converter():
    """The tf2onnx.convert module, imported without the change it makes to os.environ.

    Importing it sets TF_CPP_MIN_LOG_LEVEL=3 in the process's environment, which every
    process started afterwards inherits (a command then takes it for the user's wish
    to see TensorFlow's start-up log: cli/startup). The variable is put back as it was.
    """
    saved = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    try:
        from tf2onnx import convert as tf2onnx_convert
    finally:
        if saved is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = saved
    return tf2onnx_convert


def _failure(problem):
    return ONNXError(
        f"the classifier cannot be converted to ONNX: {problem}; the frozen graph and labels "
        "were written. Drop --onnx_output_file, or try another module."
    )


def convert(graph_def, final_tensor_name):
    """Frozen graph (export.frozen_graph) -> onnx.ModelProto, without metadata, not yet
    checked (check_model).

    Raises ONNXError when tf2onnx fails or leaves an op it cannot map.
    """
    import onnx

    tf2onnx_convert = tf2onnx_converter()
    try:
        inlined = inlining.inline_function_calls(graph_def)
    except ValueError as e:
        raise _failure(f"its module's function calls cannot be inlined ({e})") from e
    output = final_tensor_name + ":0"
    try:
        with converter_quiet():
            model, _ = tf2onnx_convert.from_graph_def(
                inlined, input_names=[export.INPUT_NAME + ":0"], output_names=[output],
                opset=OPSET,
                tensors_to_rename={export.INPUT_NAME + ":0": export.INPUT_NAME,
                                   output: final_tensor_name},
            )
    except Exception as e:  # tf2onnx raises whatever its op handlers and TensorFlow raise
        raise _failure(f"tf2onnx failed ({errors.one_line(e)})") from e
    unmapped = sorted({node.op_type for node in model.graph.node
                       if not onnx.defs.has(node.op_type, node.domain)})
    if unmapped:
        raise _failure(f"tf2onnx has no ONNX form for the TensorFlow op{'s' if len(unmapped) > 1 else ''} "
                       f"{', '.join(unmapped)} in the module")
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIMENSION
    return model


def check_model(model):
    """Raise ONNXError unless model (onnx.ModelProto) fits in onnx_model.MAX_ONNX_BYTES
    and passes ONNX's checker."""
    import onnx

    size = model.ByteSize()
    if size > onnx_model.MAX_ONNX_BYTES:  # also the most the checker takes in memory
        raise _failure(f"the model would be {size:,} bytes, more than the "
                       f"{onnx_model.MAX_ONNX_BYTES:,} an ONNX file without external data can hold")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise _failure(f"the converted model is not valid ONNX ({errors.one_line(e)})") from e


def producer():
    """`retrain_suite <version>` (the version of the installed distribution, if any)."""
    try:
        return f"retrain_suite {importlib.metadata.version('retrain-suite')}"
    except importlib.metadata.PackageNotFoundError:
        return "retrain_suite"


def metadata(labels, input_size, final_tensor_name, module):
    """{METADATA_KEYS key: string} for a model of labels ([str], output order),
    input_size (height, width), and the module's handle."""
    if "://" not in module:  # a local folder: its name, not where it was on this machine
        module = os.path.basename(os.path.normpath(module))
    return {
        onnx_model.LABELS_KEY: json.dumps(list(labels), ensure_ascii=False),
        "input_size": json.dumps(list(input_size)),
        "input_range": json.dumps([0, 1]),
        "input_name": export.INPUT_NAME,
        "final_tensor_name": final_tensor_name,
        "module": module,
        "producer": producer(),
    }


def with_metadata(model, props):
    """model (onnx.ModelProto) with props ({str: str}) as its metadata_props and a
    doc_string made from them."""
    import onnx

    onnx.helper.set_model_props(model, props)
    height, width = json.loads(props["input_size"])
    model.doc_string = (
        f"{len(json.loads(props['labels']))} classes retrained on {props['module']} by "
        f"{props['producer']}; input {props['input_name']} float32 [N, {height}, {width}, 3] "
        f"RGB in [0, 1], output {props['final_tensor_name']} float32 "
        + ("independent scores, a label predicted at or above its threshold in the metadata's "
           "'thresholds' (a JSON array). " if onnx_model.THRESHOLDS_KEY in props
           else "probabilities. ")
        + "Class names: the metadata's 'labels' (a JSON array)."
    )
    return model


def export_for_run(outputs, graph_def, run, module):
    """Convert graph_def and write the run's ONNX model to outputs.onnx_output_file, whole.

    outputs: the run's config.OutputConfig; graph_def: the frozen classifier;
    run: the run_data.PreparedRun (labels, input size); module: its handle.
    """
    model = convert(graph_def, outputs.final_tensor_name)
    props = metadata(run.class_names, run.input_size, outputs.final_tensor_name, module)
    thresholds = export.graph_thresholds(graph_def, outputs.final_tensor_name)
    if thresholds is not None:
        props[onnx_model.THRESHOLDS_KEY] = json.dumps([float(t) for t in thresholds])
    model = with_metadata(model, props)
    check_model(model)
    atomic_files.write_bytes(outputs.onnx_output_file, model.SerializeToString())
