r"""The retrained classifier as a TFLite model: conversion, quantization, and running it.

The TFLite model has the frozen graph's contract with a batch of one: input
float32 [1, H, W, 3], RGB in [0, 1]; output float32 [1, C], the class
probabilities in the labels file's order. Its labels and input normalization
are inside it as TFLite Model Metadata (see tflite_metadata).

Quantization (--tflite_quantization):
- none: float32 weights and arithmetic.
- dynamic: weights stored as int8 (about 4x smaller), dequantized or used in
  int8 kernels at run time; input and output stay float32. No calibration.
- float16: weights stored as float16 (about 2x smaller); computed in float32
  on CPUs, in float16 on GPUs that support it.
- int8: weights and activations int8, ranges calibrated on a sample of the
  user's own training images; input and output are uint8 for integer-only
  accelerators (Edge TPU, NNAPI, microcontrollers). The input's quantization
  is scale 1/255, zero point 0, so the uint8 input is the 0-255 pixel value
  of the resized image, which is what MediaPipe and the Task Library feed a
  quantized model. The output's is scale 1/256, zero point 0.

Conversion goes through TensorFlow's TFLiteConverter from a concrete
function; the model is run with LiteRT's interpreter (`ai-edge-litert`),
`tf.lite.Interpreter` being deprecated.
"""

import os

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from retrain_suite import atomic_files, console, errors, export, tflite_metadata
from retrain_suite.images import files as image_files

QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


# Training images sampled to calibrate int8 ranges: the low end of TFLite's
# guidance (about 100 to 500). Calibration runs each image through the float
# model, about 20 ms an image for a MobileNet v1 0.25 on 2 cores: 300 images made
# int8 the longest phase of a run, and on 60 photos the random MobileNet's int8
# file agreed with the frozen graph as often calibrated on 100 as on 300.
CALIBRATION_IMAGES = 100
CALIBRATION_BATCH = 32  # images decoded at once for the calibration


TFLITE_IDENTIFIER = b"TFL3"  # bytes 4-8 of every TFLite flatbuffer


class TFLiteError(errors.SuiteError):
    """The classifier's graph cannot be converted to TFLite (an op TFLite lacks, say)."""

    area = "tflite"


def is_tflite(data):
    """Whether data (bytes, at least the first 8) is a TFLite flatbuffer."""
    return data[4:8] == TFLITE_IDENTIFIER


def calibration_indices(count, seed, size=CALIBRATION_IMAGES):
    """Sorted positions of up to size of count training images, the same for the same seed."""
    chosen = np.random.RandomState(seed).choice(count, min(count, size), replace=False)
    return sorted(chosen.tolist())


def pin_input_range(images):
    """float32 [N, H, W, 3] in [0, 1] -> a copy whose first image holds a black and a white pixel.

    int8 calibration sets the input's quantization from the smallest and
    largest value it sees; photos without a pure black or white pixel would
    give an input scale other than 1/255 and a uint8 input that is no longer
    the pixel value. Two pixels of one image move no other range noticeably.
    """
    pinned = np.array(images, np.float32)
    if len(pinned):
        pinned[0, 0, 0, :] = 0.0
        pinned[0, 0, -1, :] = 1.0
    return pinned


def convert(graph_def, height, width, final_tensor_name, quantization, calibration_batches=None):
    """Frozen graph (export.frozen_graph) -> TFLite flatbuffer (bytes), without metadata.

    calibration_batches: for int8 only, a function returning an iterable of
    float32 [B, H, W, 3] arrays in [0, 1] (the calibration images).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")

    def classify(image):
        (probabilities,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={export.INPUT_NAME + ":0": image},
            return_elements=[final_tensor_name + ":0"], name="",
        )
        return probabilities

    function = tf.compat.v1.wrap_function(
        classify, [tf.TensorSpec([1, height, width, 3], tf.float32, name="image")]
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], function)
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        def representative_dataset():
            first = True
            for batch in calibration_batches():
                if first:
                    batch, first = pin_input_range(batch), False
                for image in batch:
                    yield [image[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    try:
        with console.native_output_filtered():
            return converter.convert()
    except Exception as e:  # the converter's ConverterError is not public API
        raise TFLiteError(
            f"the classifier cannot be converted to TFLite ({errors.one_line(e)}); the "
            "frozen graph and labels were written. Drop --tflite_output_file, or try another "
            "--tflite_quantization or module."
        ) from e


def write_tflite(path, model, labels, height, width, description, thresholds=None):
    """Write model (bytes from convert) with its metadata and labels (and a multi-label
    model's thresholds, float [C]) to path, atomically."""
    metadata = tflite_metadata.image_classifier_metadata(
        name="Retrained image classifier", description=description, input_size=(height, width),
        class_count=len(labels), normalization=(0.0, 255.0), multi_label=thresholds is not None,
    )
    atomic_files.write_bytes(path, tflite_metadata.with_metadata(model, metadata, labels,
                                                                 thresholds))


class TFLiteClassifier:
    """A TFLite image classifier run by LiteRT's interpreter, one image per call.

    Takes float32 images in [0, 1] whatever the model's input type: a uint8
    input gets them quantized with its own scale and zero point, and a uint8
    output is dequantized, so every model gives float32 probabilities.
    """

    def __init__(self, model):
        """model: the TFLite file's bytes."""
        # A multi-label model's thresholds (float32 [C]), or None; set by whoever
        # read them from the metadata (classifier.load_tflite).
        self.thresholds = None
        # Every core, as TensorFlow uses for the graph: the runtime's own default is
        # not the same on every version and platform.
        self.interpreter = Interpreter(model_content=bytes(model), num_threads=os.cpu_count() or 1)
        with console.native_output_filtered():  # the runtime's note of the delegate it made
            self.interpreter.allocate_tensors()
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        shape = self.input["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"expected an image input [1, H, W, 3], got {shape.tolist()}")
        self.height, self.width = int(shape[1]), int(shape[2])

    def _quantize(self, image):
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] == np.float32:
            return image.astype(np.float32)
        info = np.iinfo(self.input["dtype"])
        values = np.round(image / scale + zero_point)
        return np.clip(values, info.min, info.max).astype(self.input["dtype"])

    def probabilities(self, image):
        """float32 [H, W, 3] in [0, 1] -> float32 [C]."""
        self.interpreter.set_tensor(self.input["index"], self._quantize(image)[np.newaxis])
        self.interpreter.invoke()
        values = self.interpreter.get_tensor(self.output["index"])[0]
        if self.output["dtype"] != np.float32:
            scale, zero_point = self.output["quantization"]
            values = (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def predict(self, images):
        """float32 [B, H, W, 3] -> float32 [B, C], one interpreter call per image."""
        return np.stack([self.probabilities(image) for image in images])


def calibration_rows(run, seed):
    """The rows of run's (a run_data.PreparedRun) int8 calibration images: calibration_indices
    of its training images, chosen by seed. -> [int]."""
    return calibration_rows_of(run.training.rows, seed)


def calibration_rows_of(training_rows, seed):
    """calibration_rows of the training images at training_rows (int [n], a Split's)."""
    return np.asarray(training_rows)[calibration_indices(len(training_rows), seed)].tolist()


def export_for_run(outputs, graph_def, run, seed, module, calibration=None):
    """Convert, quantize and write the run's TFLite file (outputs.tflite_output_file).

    outputs: the run's config.OutputConfig; graph_def: the frozen classifier;
    run: the run_data.PreparedRun. int8 calibrates on calibration_rows(run, seed),
    in batches of CALIBRATION_BATCH: those of calibration (a
    checked_images.DecodedAhead of those rows) when it decoded them, else decoded
    here. module: the module's handle, named in the file's description. -> the
    number of calibration images (0: none).
    """
    quantization = outputs.tflite_quantization
    chosen = calibration_rows(run, seed)

    def calibration_batches():
        ready = (calibration.batches() if calibration is not None
                 and calibration.rows == chosen else None)
        if ready is not None:
            return (pixels for _, pixels in ready)
        return (pixels for _, _, pixels in
                run.image_batches(chosen, CALIBRATION_BATCH).as_numpy_iterator())

    height, width = run.input_size
    model = convert(graph_def, height, width, outputs.final_tensor_name, quantization,
                    calibration_batches if quantization == "int8" else None)
    if "://" not in module:  # a local folder: its name, not where it was on this machine
        module = os.path.basename(os.path.normpath(module))
    description = (
        f"{run.class_count} {'labels (multi-label)' if run.multi_label else 'classes'} "
        f"retrained on {module}; TFLite "
        f"quantization {quantization}"
        + (f", calibrated on {len(chosen)} training images." if quantization == "int8" else ".")
    )
    thresholds = export.graph_thresholds(graph_def, outputs.final_tensor_name)
    write_tflite(outputs.tflite_output_file, model, run.class_names, height, width, description,
                 thresholds)
    return len(chosen) if quantization == "int8" else 0


def is_tflite_file(path):
    """Whether the file at path is a TFLite flatbuffer (by its content, not its name)."""
    start, problem = image_files.read_file_start(path, 8)  # a FIFO is not waited on
    return problem is None and is_tflite(start)
