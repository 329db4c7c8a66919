r"""Every file the run exported, loaded again and run on the test set: one table.

After export, each artifact (frozen graph, SavedModel when asked, TFLite when
asked, ONNX when asked) is loaded from disk and run with its own runtime:
TensorFlow for the graph and the SavedModel, LiteRT's interpreter for TFLite,
onnxruntime (CPUExecutionProvider) for ONNX, whose session is made once and
whose metadata labels must be the run's. The test images
are decoded once, in batches, by the same function as in training
(image_preprocess.decode_and_resize), and each batch goes through every
artifact in turn, so memory stays bounded by one batch.

Per artifact the table gives: the file's size, its accuracy on the test set,
its agreement with the in-training predictions (the fraction of the images
that training's final evaluation also predicted on which the file's top
class is the same), and its mean latency per image on this machine (graph and
SavedModel and ONNX run BATCH_SIZE images per call, TFLite one; the first call, which
pays for loading, is not timed).

A file whose bytes, runtime and test images are those of an earlier check (the
check memo, check_memo) is not run again: its predictions are read back from the
memo and the accuracy and agreement computed from them as for a file just run;
its row says `(earlier)` after the latency measured then, and `reused` in the
JSON report. A rerun that changes nothing writes byte-identical files, so it
does not run the whole module over the test images a second time.
"""

import dataclasses
import os
import time
from importlib import metadata

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import check_memo, classifier, evaluation_pictures, export, reporting
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import module as module_lib

BATCH_SIZE = 32  # test images decoded, and run through the graph and SavedModel, per call


@dataclasses.dataclass
class ArtifactResult:
    format: str  # "frozen graph", "SavedModel", "TFLite (int8)", ...
    path: str
    size_bytes: int
    images_per_call: int
    count: int  # test images run
    accuracy: float
    agreement: float | None  # None when training predicted none of these images
    latency_ms: float  # mean per image
    reused: bool = False  # the predictions of an earlier check of the same bytes (check_memo)

    def as_dict(self):
        return dataclasses.asdict(self)


class GraphRunner:
    """A frozen graph file run by a TensorFlow Session."""

    images_per_call = BATCH_SIZE

    def __init__(self, path, final_tensor_name):
        graph_def = classifier.load_graph(path)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph, config=classifier.session_config())
        self.input = export.INPUT_NAME + ":0"
        self.output = final_tensor_name + ":0"

    def predict(self, images):
        return self.session.run(self.output, {self.input: images})

    def close(self):
        self.session.close()


class SavedModelRunner:
    """A SavedModel folder run through its serving_default signature."""

    images_per_call = BATCH_SIZE

    def __init__(self, path):
        # The loader opens every file in the folder blocking: a FIFO put there
        # since export would hang the run.
        problem = module_lib.module_folder_problem(path)
        if problem:
            raise classifier.LabelError(f"SavedModel {path} cannot be used: {problem}.")
        self.serve = tf.saved_model.load(path).signatures["serving_default"]

    def predict(self, images):
        return self.serve(image=tf.constant(images))["prediction"].numpy()

    def close(self):
        pass


class TFLiteRunner:
    """A TFLite file run by LiteRT's interpreter, one image per call."""

    images_per_call = 1

    def __init__(self, path):
        self.model, _ = classifier.load_tflite(path)  # a damaged file is a LabelError

    def predict(self, images):
        return self.model.predict(images)

    def close(self):
        pass


class ONNXRunner:
    """An ONNX file run by onnxruntime, BATCH_SIZE images per call."""

    images_per_call = BATCH_SIZE

    def __init__(self, path, labels):
        """labels: the run's class names, which the file's metadata must hold."""
        self.model, found = classifier.load_onnx(path)  # a damaged file is a LabelError
        if found != list(labels):
            raise classifier.LabelError(
                f"ONNX model {path} holds "
                + ("no labels" if found is None else f"{len(found)} other labels")
                + f" in its metadata, not this run's {len(labels)}; it changed since it was "
                "written: run again to write it anew."
            )

    def predict(self, images):
        return self.model.predict(images)

    def close(self):
        pass


def size_of(path):
    """Bytes of a file, or of every file under a folder."""
    if not tf.io.gfile.isdir(path):
        return tf.io.gfile.stat(path).length
    return sum(
        tf.io.gfile.stat(os.path.join(folder, name)).length
        for folder, _, names in tf.io.gfile.walk(path) for name in names
    )


def check_artifacts(artifacts, batches, truth, trained_predictions):
    """Run each artifact on the test images. -> [ArtifactResult] in the order given.

    artifacts: [(format, path, runner factory)]; batches: iterable of
    (positions int [B] into truth, images float32 [B, H, W, 3] in [0, 1]);
    truth: int [N] true class per test image; trained_predictions:
    {position: class predicted in training} (a sample when --test_batch_size
    sampled).
    """
    results, _ = _run_artifacts(artifacts, batches, truth, trained_predictions)
    return results


def _run_artifacts(artifacts, batches, truth, trained_predictions):
    """check_artifacts. -> ([ArtifactResult], [{position: predicted class}] per artifact)."""
    runners = [(name, path, make()) for name, path, make in artifacts]
    predicted = [{} for _ in runners]
    seconds = [0.0] * len(runners)
    warm = [False] * len(runners)
    try:
        for positions, images in batches:
            for n, (_, _, runner) in enumerate(runners):
                if not warm[n]:
                    runner.predict(images[:1])  # loading and first-call costs, not timed
                    warm[n] = True
                start = time.perf_counter()
                probabilities = runner.predict(images)
                seconds[n] += time.perf_counter() - start
                predicted[n].update(zip(positions.tolist(), np.argmax(probabilities, axis=1).tolist()))
    finally:
        for _, _, runner in runners:
            runner.close()
    results = [
        _result(name, path, runner.images_per_call, predicted[n], truth, trained_predictions,
                1000 * seconds[n] / max(len(predicted[n]), 1))
        for n, (name, path, runner) in enumerate(runners)
    ]
    return results, predicted


def _result(name, path, images_per_call, predicted, truth, trained_predictions, latency_ms,
            reused=False):
    """One ArtifactResult from its predictions ({position: class}) on the test images."""
    positions = sorted(predicted)
    guesses = np.array([predicted[p] for p in positions])
    shared = [p for p in positions if p in trained_predictions]
    return ArtifactResult(
        format=name, path=path, size_bytes=size_of(path),
        images_per_call=images_per_call, count=len(positions),
        accuracy=float(np.mean(guesses == np.asarray(truth)[positions])) if positions else 0.0,
        agreement=(float(np.mean([predicted[p] == trained_predictions[p] for p in shared]))
                   if shared else None),
        latency_ms=latency_ms, reused=reused,
    )


def format_table(results, set_name):
    """The results as an aligned text table for the log."""
    rows = [("format", "size", f"{set_name} accuracy", "agrees with training", "ms/image", "images/call")]
    for r in results:
        rows.append((
            r.format, format_size(r.size_bytes), f"{100 * r.accuracy:.1f}% (N={r.count})",
            "-" if r.agreement is None else f"{100 * r.agreement:.1f}%",
            f"{r.latency_ms:.2f}" + (" (earlier)" if r.reused else ""), str(r.images_per_call),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def format_size(size_bytes):
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def check_accuracy(results, threshold, set_name):
    """Raise reporting.AccuracyError naming every artifact whose accuracy is below threshold."""
    failing = [r for r in results if r.accuracy < threshold]
    if failing:
        raise reporting.AccuracyError(
            "; ".join(f"{r.format} {set_name} accuracy {100 * r.accuracy:.1f}% (N={r.count})"
                      for r in failing)
            + f" below --assert_accuracy_at_least={threshold:g} ({100 * threshold:.1f}%); "
            "the files were written. Choose a milder --tflite_quantization, or lower the bar."
        )
    logging.info("Every exported file meets --assert_accuracy_at_least=%g.", threshold)


# The runtime that runs each format: its package's version is part of a memo's key.
RUNTIME_PACKAGES = {"frozen graph": "tensorflow", "SavedModel": "tensorflow",
                    "TFLite": "ai-edge-litert", "ONNX": "onnxruntime"}


def memo_key(memo, name, path, test_set):
    """The check memo's key of the file at path in format name, or None when it cannot
    be told (the file unreadable: the runner says why; the runtime not installed)."""
    if not memo.folder:
        return None
    package = RUNTIME_PACKAGES[name.split(" (")[0]]
    try:
        runtime = f"{name}|{package} {metadata.version(package)}"
        return memo.key(memo_lib.file_digest(path), runtime, test_set)
    except (OSError, metadata.PackageNotFoundError, tf.errors.OpError):
        return None


def check_run(outputs, run, result, memo=None, displayed_rows=(), ahead=None):
    """Check the run's exported files on its test set (validation set if it has no test images).

    outputs: the run's config.OutputConfig (which files were written); run: the
    run_data.PreparedRun; result: the training.TrainingResult of the exported
    model; memo: a check_memo.CheckMemo (files already checked are not run again);
    displayed_rows: rows of the set whose pictures the run shows later (TensorBoard's
    grid of mistakes, the report page's thumbnails): as the check decodes them, they
    are kept in run.displayed, so they are not decoded a second time; ahead: a
    checked_images.DecodedAhead of the set's rows, whose batches are used when it
    decoded them (while an export converted).
    -> (set name, [ArtifactResult]), or None when there are no such images.
    """
    memo = memo or check_memo.CheckMemo(None)
    split = run.testing if len(run.testing) else run.validation
    if not len(split):
        logging.info("No test or validation images: the exported files are not checked.")
        return None
    rows = split.rows.tolist()
    position_of = {row: n for n, row in enumerate(rows)}
    trained = {}
    if split.name in result.predictions:
        predicted = result.predictions[split.name]
        trained = dict(zip(predicted.positions.tolist(), predicted.classes.tolist()))
    artifacts = [("frozen graph", outputs.output_graph,
                  lambda: GraphRunner(outputs.output_graph, outputs.final_tensor_name))]
    if outputs.saved_model_dir:
        artifacts.append(("SavedModel", outputs.saved_model_dir,
                          lambda: SavedModelRunner(outputs.saved_model_dir)))
    if outputs.tflite_output_file:
        artifacts.append((f"TFLite ({outputs.tflite_quantization})", outputs.tflite_output_file,
                          lambda: TFLiteRunner(outputs.tflite_output_file)))
    if outputs.onnx_output_file:
        artifacts.append(("ONNX", outputs.onnx_output_file,
                          lambda: ONNXRunner(outputs.onnx_output_file, run.class_names)))
    test_set = check_memo.test_set_key([run.contents[image.path] for image in split.images],
                                       run.input_size, run.class_names)
    results, to_run = [None] * len(artifacts), []
    for n, (format_name, path, _) in enumerate(artifacts):
        key = memo_key(memo, format_name, path, test_set)
        earlier = memo.lookup(key, len(rows)) if key else None
        if earlier:
            predicted, latency, per_call = earlier
            results[n] = _result(format_name, path, per_call, dict(enumerate(predicted)),
                                 split.labels, trained, latency, reused=True)
        else:
            to_run.append((n, key))
    if len(to_run) < len(artifacts):
        logging.info("%d of the exported files are byte for byte ones already checked on "
                     "these images by the same runtime (%s): their predictions are reused.",
                     len(artifacts) - len(to_run), os.path.join(memo.folder, "checks"))
    if to_run:
        decoded = None
        if ahead is not None and ahead.rows == rows:
            # No conversion started it: it serves the images the bottleneck pass kept.
            ahead.start(kept_only=True)
            decoded = ahead.batches()
        if decoded is None:
            decoded = ((indices, pixels) for indices, _, pixels
                       in run.image_batches(rows, BATCH_SIZE).as_numpy_iterator())
        kept = set(displayed_rows)
        batches = (
            (np.array([position_of[i] for i in indices.tolist()]),
             evaluation_pictures.keep_displayed(run, indices, pixels, kept))
            for indices, pixels in decoded
        )
        ran, predicted = _run_artifacts([artifacts[n] for n, _ in to_run], batches,
                                        split.labels, trained)
        for (n, key), checked, by_position in zip(to_run, ran, predicted):
            results[n] = checked
            # Remembered only if the file is still the one hashed before it was run.
            format_name, path, _ = artifacts[n]
            if key and len(by_position) == len(rows) and key == memo_key(
                    memo, format_name, path, test_set):
                memo.store(key, [by_position[p] for p in range(len(rows))],
                           checked.latency_ms, checked.images_per_call)
    return reporting.SET_NAMES[split.name].lower(), results
