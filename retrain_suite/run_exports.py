"""The run's exported files, each a phase of the run: the frozen graph and labels, then
the SavedModel, TFLite and ONNX files made from the frozen graph.

Single-label (job) and multi-label (multi_label.stages) runs export through here
alike; a file a rerun already holds is kept as it is (export_memo), and the
others are written whole (export.write_output).
"""

import dataclasses
from typing import Optional

import tensorflow as tf
from absl import logging

from retrain_suite import checked_images, export, export_memo, onnx_export, tflite
from retrain_suite import memo as memo_lib


@dataclasses.dataclass(frozen=True)
class ExportedLayer:
    """What the frozen graph holds on top of the module."""

    spec: object  # final_layer.LayerSpec the layer was trained with
    layer: dict  # {variable name: ndarray}: the trained layer's values
    module_values: Optional[list] = None  # fine-tuned module weights, or None as loaded
    thresholds: Optional[object] = None  # a multi-label layer's, float [C] in (0, 1)


def calibration_ahead(config, run):
    """The int8 calibration images decoded on a thread from now on (during training), as
    a started checked_images.DecodedAhead; None when no int8 TFLite file is asked for, or
    when the file is already there (a rerun that most likely keeps it)."""
    if not new_int8_file(config.outputs):
        return None
    ahead = checked_images.DecodedAhead(
        run, tflite.calibration_rows(run, config.training.random_seed), tflite.CALIBRATION_BATCH,
        "calibration-ahead")
    ahead.start()
    return ahead


def new_int8_file(outputs):
    """Whether outputs (a config.OutputConfig) ask for an int8 TFLite file that is not there
    yet (one that is there, a rerun most likely keeps)."""
    return bool(outputs.tflite_output_file and outputs.tflite_quantization == "int8"
                and not tf.io.gfile.exists(outputs.tflite_output_file))


def export_model(config, run, exported, timer, ahead=None, calibration=None):
    """Write the frozen graph of exported (an ExportedLayer) on the run's module, the labels
    (and the SavedModel, the TFLite file, the ONNX file), each a phase of timer; files a
    rerun already holds are kept (export_memo). config: the run's config.RetrainConfig;
    run: its run_data.PreparedRun; ahead: a checked_images.DecodedAhead, started when a
    TFLite file is converted (its calibration leaves a core to decode the check's images);
    calibration: calibration_ahead's, or None."""
    outputs, handle = config.outputs, config.module.tfhub_module
    memo = export_memo.ExportMemo(memo_lib.Memo.of_cache(config.module.bottleneck_dir, "exports"))
    built = []  # the GraphDef, once built or read back

    def build_graph():
        built.append(export.frozen_graph(handle, config.module.image_size, exported.spec,
                                         exported.layer, exported.module_values,
                                         exported.thresholds))
        export.write_frozen_graph(built[0], outputs.output_graph)

    with timer.phase("frozen graph and labels"):
        key = export_memo.frozen_graph_key(handle, config.module.image_size, exported)
        graph = memo.write("output_graph", outputs.output_graph, key, build_graph)
        export.write_output("output_labels", outputs.output_labels,
                            lambda: export.write_labels(run.class_names, outputs.output_labels))
    thresholds = (f" (thresholds in {export.thresholds_name(outputs.final_tensor_name)})"
                  if exported.spec.multi_label else "")
    logging.info("%s %s%s; wrote %s", "Kept" if graph.kept else "Wrote", outputs.output_graph,
                 thresholds, outputs.output_labels)

    def graph_def():
        if not built:
            built.append(export_memo.read_graph_def(outputs.output_graph, graph.digest))
        return built[0]

    def derived(kind, flag, path, settings, write):
        with timer.phase(kind):
            key = export_memo.derived_key(kind, graph.digest, *settings)
            return memo.write(flag, path, key, write)

    name = outputs.final_tensor_name
    if outputs.saved_model_dir:
        written = derived("SavedModel", "saved_model_dir", outputs.saved_model_dir,
                          (name, export_memo.package_version("tensorflow")),
                          lambda: export.write_saved_model(graph_def(), name,
                                                           outputs.saved_model_dir))
        logging.info("%s SavedModel %s", "Kept" if written.kept else "Wrote",
                     outputs.saved_model_dir)
    if outputs.tflite_output_file:
        training = [run.contents[image.path] for image in run.training.images]
        settings = (name, outputs.tflite_quantization, config.training.random_seed, handle,
                    "\0".join(run.class_names), "\0".join(training),
                    export_memo.package_version("ai-edge-litert"))
        written = derived(
            f"TFLite ({outputs.tflite_quantization})", "tflite_output_file",
            outputs.tflite_output_file, settings,
            lambda: convert_tflite(outputs, graph_def(), run, config.training.random_seed,
                                   handle, (ahead, calibration)),
        )
        # A count read back from the memo is shown only if it is one.
        calibrated = written.result if type(written.result) is int else 0
        logging.info("%s TFLite model %s (quantization %s%s)%s",
                     "Kept" if written.kept else "Wrote", outputs.tflite_output_file,
                     outputs.tflite_quantization,
                     f", calibrated on {calibrated} training images" if calibrated else "",
                     ", thresholds in its metadata" if exported.spec.multi_label else "")
    if outputs.onnx_output_file:
        settings = (name, handle, "\0".join(run.class_names), repr(run.input_size),
                    export_memo.package_version("tf2onnx"), export_memo.package_version("onnx"))
        written = derived(
            "ONNX", "onnx_output_file", outputs.onnx_output_file, settings,
            lambda: onnx_export.export_for_run(outputs, graph_def(), run, handle),
        )
        logging.info("%s ONNX model %s%s", "Kept" if written.kept else "Wrote",
                     outputs.onnx_output_file,
                     ", thresholds in its metadata" if exported.spec.multi_label else "")


def convert_tflite(outputs, graph_def, run, seed, handle, decoded):
    """tflite.export_for_run. decoded: (the check's images, the calibration images), each
    a checked_images.DecodedAhead or None: the check's are decoded meanwhile, the
    calibration's used. -> what export_for_run returns."""
    check, calibration = decoded
    if check is not None:
        check.start()
    return tflite.export_for_run(outputs, graph_def, run, seed, handle, calibration)
