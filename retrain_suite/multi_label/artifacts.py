"""The exported files of a multi-label run, loaded again and run on the test set: one table.

Each file (frozen graph, SavedModel, TFLite, ONNX: those the run wrote) is run with its
own runtime, as artifact_check does for a single-label run, and judged with its own
thresholds (the graph's constant, the SavedModel's 'above_threshold' output, the TFLite
file's packed thresholds.txt, the ONNX file's 'thresholds' metadata), never training's:
a file that lost or changed its thresholds shows it. Per file: its mAP, exact-match
ratio and micro-averaged F1 on the test set (the validation set without test images),
its agreement with training (the fraction of images given exactly the label set the
trained layer gave them), and its latency. Files are always run (no check memo).
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

from retrain_suite import artifact_check, classifier, reporting
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.multi_label import metrics


@dataclasses.dataclass
class MultiLabelArtifact:
    format: str  # "frozen graph", "SavedModel", "TFLite (none)", "ONNX"
    path: str
    size_bytes: int
    images_per_call: int
    count: int  # images run
    mean_average_precision: float | None
    exact_match: float | None
    micro_f1: float | None
    agreement: float | None  # same label set as training, fraction of the images
    latency_ms: float  # mean per image

    def as_dict(self):
        return dataclasses.asdict(self)


class _Thresholded:
    """A single-label runner of artifact_check with the file's own thresholds:
    predict -> (scores float32 [B, C], label sets bool [B, C])."""

    def __init__(self, runner, thresholds, path):
        if thresholds is None:
            raise classifier.LabelError(f"{path} holds no thresholds: it is not a multi-label "
                                        "model; run again to write it anew.")
        self.runner, self.thresholds = runner, classifier.checked_thresholds(thresholds, path)
        self.images_per_call = runner.images_per_call

    def predict(self, images):
        scores = self.runner.predict(images)
        return scores, metrics.predicted_sets(scores, self.thresholds)

    def close(self):
        self.runner.close()


class _SavedModel:
    """A multi-label SavedModel through its signature's 'prediction' and 'above_threshold'."""

    images_per_call = artifact_check.BATCH_SIZE

    def __init__(self, path):
        problem = module_lib.module_folder_problem(path)
        if problem:
            raise classifier.LabelError(f"SavedModel {path} cannot be used: {problem}.")
        self.serve = tf.saved_model.load(path).signatures["serving_default"]
        if "above_threshold" not in self.serve.structured_outputs:
            raise classifier.LabelError(f"SavedModel {path} has no 'above_threshold' output: it "
                                        "is not a multi-label model; run again to write it anew.")

    def predict(self, images):
        outputs = self.serve(image=tf.constant(images))
        return outputs["prediction"].numpy(), outputs["above_threshold"].numpy()

    def close(self):
        pass


def _graph(outputs):
    runner = artifact_check.GraphRunner(outputs.output_graph, outputs.final_tensor_name)
    graph_def = runner.graph.as_graph_def()
    return _Thresholded(runner, classifier.multi_label_thresholds(
        graph_def, outputs.final_tensor_name), outputs.output_graph)


def _model(runner, path):
    return _Thresholded(runner, runner.model.thresholds, path)


def artifacts_of(outputs, class_names):
    """[(format, path, runner factory)] of the files a multi-label run wrote."""
    artifacts = [("frozen graph", outputs.output_graph, lambda: _graph(outputs))]
    if outputs.saved_model_dir:
        artifacts.append(("SavedModel", outputs.saved_model_dir,
                          lambda: _SavedModel(outputs.saved_model_dir)))
    tflite_path, onnx_path = outputs.tflite_output_file, outputs.onnx_output_file
    if tflite_path:
        artifacts.append((f"TFLite ({outputs.tflite_quantization})", tflite_path,
                          lambda: _model(artifact_check.TFLiteRunner(tflite_path), tflite_path)))
    if onnx_path:
        artifacts.append(("ONNX", onnx_path, lambda: _model(
            artifact_check.ONNXRunner(onnx_path, class_names), onnx_path)))
    return artifacts


def _run(name, path, runner, batches, split, trained_sets, labels):
    """Run one file over the batches. -> MultiLabelArtifact."""
    count = len(split)
    scores = np.zeros([count, len(labels)], np.float32)
    sets = np.zeros([count, len(labels)], bool)
    seconds, warm = 0.0, False
    for positions, images in batches:
        if not warm:
            runner.predict(images[:1])  # loading and first-call costs, not timed
            warm = True
        start = time.perf_counter()
        scores[positions], sets[positions] = runner.predict(images)
        seconds += time.perf_counter() - start
    report = metrics.evaluate(scores, split.targets, np.full(len(labels), 0.5), labels, sets)
    return MultiLabelArtifact(
        format=name, path=path, size_bytes=artifact_check.size_of(path),
        images_per_call=runner.images_per_call, count=count,
        mean_average_precision=report["mean_average_precision"],
        exact_match=report["exact_match"], micro_f1=report["micro_avg"]["f1"],
        agreement=float(np.mean(np.all(sets == trained_sets, axis=1))) if count else None,
        latency_ms=1000 * seconds / max(count, 1),
    )


def check_run(outputs, run, result):
    """Check the run's exported files on its test set (validation set without test images).

    outputs: the config.OutputConfig; run: the run_data.PreparedRun; result: the
    multi_label.training.MultiLabelResult. -> (set name, [MultiLabelArtifact]), or None
    when there are no such images.
    """
    split = run.testing if len(run.testing) else run.validation
    if not len(split):
        return None
    trained_sets = metrics.predicted_sets(result.scores[split.name], result.thresholds)
    position_of = {row: n for n, row in enumerate(split.rows.tolist())}
    checked = []
    for name, path, make in artifacts_of(outputs, run.class_names):
        runner = make()
        try:
            batches = ((np.array([position_of[i] for i in indices.tolist()]), pixels)
                       for indices, _, pixels in run.image_batches(
                           split.rows.tolist(), artifact_check.BATCH_SIZE).as_numpy_iterator())
            checked.append(_run(name, path, runner, batches, split, trained_sets,
                                run.class_names))
        finally:
            runner.close()
    return reporting.SET_NAMES[split.name].lower(), checked


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(results, set_name):
    """The results as an aligned text table for the log."""
    rows = [("format", "size", f"{set_name} mAP", "exact match", "micro F1",
             "agrees with training", "ms/image", "images/call")]
    for r in results:
        rows.append((r.format, artifact_check.format_size(r.size_bytes),
                     f"{_percent(r.mean_average_precision)} (N={r.count})", _percent(r.exact_match),
                     _percent(r.micro_f1), _percent(r.agreement), f"{r.latency_ms:.2f}",
                     str(r.images_per_call)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)
