"""TFLite export: the float model's probabilities, int8's uint8 contract and the images it is
calibrated on, float16's weights, the metadata read back by a reader of its own, label_image on
a .tflite, and the accuracy gate on every exported file."""

import io
import json
import os
import shutil
import zipfile

import flatbuffers
import helpers
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.interpreter import Interpreter
from helpers import load_graph_def, make_dataset, retrain_settings, run_command

from retrain_suite import checked_images, command_config, job, reporting, tflite
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.cli import label_image as label_image_cli
from retrain_suite.images import pipelines as image_pipelines


def record_files_read_by_tflite_export(patch):
    """-> the list, filled as files are read, of the image files (index into their source,
    path) read while tflite.export_for_run runs: what int8 calibration decodes."""
    read, exporting = [], []
    real_read, real_export = image_pipelines.ImageFiles.read_checked, tflite.export_for_run

    def read_checked(self, index, *args, **kwargs):
        if exporting:
            read.append((int(index), self.paths[int(index)]))
        return real_read(self, index, *args, **kwargs)

    def export_for_run(*args, **kwargs):
        exporting.append(True)
        try:
            return real_export(*args, **kwargs)
        finally:
            exporting.clear()

    patch.setattr(image_pipelines.ImageFiles, "read_checked", read_checked)
    patch.setattr(tflite, "export_for_run", export_for_run)
    return read


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, tiny_module):
    """One in-process run writing an int8 TFLite file, a SavedModel and the JSON report,
    with the image files its TFLite export read recorded."""
    root = tmp_path_factory.mktemp("tflite")
    image_dir = make_dataset(root / "data", per_class=20)
    settings = retrain_settings(
        root, image_dir, tiny_module, validation_percentage=15, testing_percentage=25,
        saved_model_dir=str(root / "out" / "saved_model"),
        tflite_output_file=str(root / "out" / "model.tflite"), tflite_quantization="int8",
        eval_report=str(root / "out" / "report.json"),
    )
    with pytest.MonkeyPatch.context() as patch:
        calibration_reads = record_files_read_by_tflite_export(patch)
        # What is read during the export is calibration's alone: the check's images are
        # not decoded meanwhile (checked_images; tests/test_phases.py checks that).
        patch.setattr(checked_images.DecodedAhead, "start", lambda self, **kwargs: None)
        job.run_retraining(config_lib.from_flat(settings))
    return {"settings": settings, "root": root, "image_dir": image_dir,
            "calibration_reads": calibration_reads}


def decoded_images(run):
    """float32 [N, 32, 32, 3] in [0, 1]: every image of the run's folder, decoded as in training."""
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(run["image_dir"]) for name in names
    )
    batches = image_pipelines.image_batches(paths, 32, 32, 64)
    return np.concatenate([images for _, _, images in batches.as_numpy_iterator()])


def tflite_probabilities(model, images):
    """Run a TFLite model with the interpreter directly, one image per call (float input only)."""
    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    out = []
    for image in images:
        interpreter.set_tensor(given["index"], image[np.newaxis])
        interpreter.invoke()
        out.append(interpreter.get_tensor(taken["index"])[0].copy())
    return np.array(out)


@pytest.mark.slow
def test_float_tflite_agrees_with_the_frozen_graph(int8_run, tmp_path):
    graph_path = int8_run["settings"]["output_graph"]
    model = tflite.convert(load_graph_def(graph_path), 32, 32, "final_result", "none")
    images = decoded_images(int8_run)
    expected = helpers.graph_probabilities(graph_path, images)
    # Same float32 arithmetic in other kernels (XNNPACK): rounding differences only.
    np.testing.assert_allclose(tflite_probabilities(model, images), expected, atol=1e-4)


@pytest.mark.slow
def test_int8_file_has_uint8_input_and_output_and_its_accuracy_is_in_the_report(int8_run):
    with open(int8_run["settings"]["tflite_output_file"], "rb") as f:
        interpreter = Interpreter(model_content=f.read())
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert given["dtype"] == np.uint8 and taken["dtype"] == np.uint8
    assert list(given["shape"]) == [1, 32, 32, 3]
    # The uint8 input is the 0-255 pixel value: what MediaPipe and the Task Library feed.
    scale, zero_point = given["quantization"]
    assert zero_point == 0 and scale == pytest.approx(1 / 255)
    with open(int8_run["settings"]["eval_report"]) as f:
        report = json.load(f)
    files = {row["format"]: row for row in report["artifacts"]["files"]}
    assert set(files) == {"frozen graph", "SavedModel", "TFLite (int8)"}
    assert report["artifacts"]["set"] == "test"
    tflite_row = files["TFLite (int8)"]
    assert tflite_row["count"] == report["testing"]["count"]
    assert tflite_row["size_bytes"] == os.path.getsize(int8_run["settings"]["tflite_output_file"])
    # The colours are easy: int8 keeps the float graph's test accuracy here.
    assert tflite_row["accuracy"] == files["frozen graph"]["accuracy"] == report["testing"]["accuracy"]
    assert files["frozen graph"]["agreement"] == 1.0


# An independent reader of the metadata: generic flatbuffer table access with the
# field numbers of tensorflow/tflite-support's metadata_schema.fbs (1.0.0), nothing
# from retrain_suite. A union field takes two numbers: its type, then its value.
def _field(table, number):
    offset = table.Offset(4 + 2 * number)
    return offset + table.Pos if offset else None


def _sub_table(table, number):
    at = _field(table, number)
    return flatbuffers.table.Table(table.Bytes, table.Indirect(at)) if at else None


def _tables(table, number):
    offset = table.Offset(4 + 2 * number)
    start = table.Vector(offset)
    return [flatbuffers.table.Table(table.Bytes, table.Indirect(start + 4 * i))
            for i in range(table.VectorLen(offset))]


def _string(table, number):
    return table.String(_field(table, number)).decode()


def _byte(table, number):
    return table.Get(flatbuffers.number_types.Int8Flags, _field(table, number))


def _floats(table, number):
    return table.GetVectorAsNumpy(flatbuffers.number_types.Float32Flags, table.Offset(4 + 2 * number))


def read_metadata(model):
    """The parts of a model's ModelMetadata a classifier needs, and its packed files."""
    root = tflite_schema.Model.GetRootAs(model, 0)
    (entry,) = [root.Metadata(i) for i in range(root.MetadataLength())
                if root.Metadata(i).Name() == b"TFLITE_METADATA"]
    buf = root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert buf[4:8] == b"M001"
    metadata = flatbuffers.table.Table(bytearray(buf), int.from_bytes(buf[:4], "little"))
    (subgraph,) = _tables(metadata, 3)
    (image,), (probability,) = _tables(subgraph, 2), _tables(subgraph, 3)
    content = _sub_table(image, 3)
    (unit,) = _tables(image, 4)
    normalization = _sub_table(unit, 1)
    input_stats = _sub_table(image, 5)
    (labels_file,) = _tables(probability, 6)
    archive = zipfile.ZipFile(io.BytesIO(model))
    return {
        "name": _string(metadata, 0),
        "min_parser_version": _string(metadata, 7),
        "input_content_type": _byte(content, 0),  # 2: ImageProperties
        "color_space": _byte(_sub_table(content, 1), 0),  # 1: RGB
        "unit_type": _byte(unit, 0),  # 1: NormalizationOptions
        "mean": _floats(normalization, 0).tolist(),
        "std": _floats(normalization, 1).tolist(),
        "input_max": _floats(input_stats, 0).tolist(),
        "input_min": _floats(input_stats, 1).tolist(),
        "labels_file": _string(labels_file, 0),
        "labels_file_type": _byte(labels_file, 2),  # 2: TENSOR_AXIS_LABELS
        "packed": {info.filename: info.compress_type for info in archive.infolist()},
        "labels": archive.read(_string(labels_file, 0)).decode().splitlines(),
    }


@pytest.mark.slow
def test_metadata_holds_the_labels_in_order_and_the_normalization(int8_run, tmp_path):
    graph_path = int8_run["settings"]["output_graph"]
    model = tflite.convert(load_graph_def(graph_path), 32, 32, "final_result", "none")
    labels = ["zebra", "pâquerette", "roses with spaces"]  # not sorted: the order is kept
    path = tmp_path / "model.tflite"
    tflite.write_tflite(str(path), model, labels, 32, 32, "three classes")
    written = path.read_bytes()
    found = read_metadata(written)
    assert found["labels"] == labels
    assert found["labels_file_type"] == 2 and found["packed"] == {
        found["labels_file"]: zipfile.ZIP_STORED
    }
    assert (found["input_content_type"], found["color_space"], found["unit_type"]) == (2, 1, 1)
    assert found["mean"] == [0.0] and found["std"] == [255.0]
    # The range of what the model takes: (0 - mean) / std to (255 - mean) / std.
    assert found["input_min"] == [0.0] and found["input_max"] == [1.0]
    assert found["min_parser_version"] == "1.0.0" and found["name"]
    # The metadata changed nothing the interpreter computes.
    images = decoded_images(int8_run)[:4]
    np.testing.assert_array_equal(
        tflite_probabilities(written, images), tflite_probabilities(model, images)
    )


@pytest.mark.slow
def test_the_run_s_int8_file_carries_the_run_s_labels(int8_run):
    with open(int8_run["settings"]["tflite_output_file"], "rb") as f:
        found = read_metadata(f.read())
    with open(int8_run["settings"]["output_labels"]) as f:
        assert found["labels"] == f.read().splitlines() == ["blue", "green", "red"]
    assert (found["mean"], found["std"]) == ([0.0], [255.0])
    assert (found["input_min"], found["input_max"]) == ([0.0], [1.0])


@pytest.mark.slow
def test_label_image_on_tflite_prints_the_graph_s_top_labels(int8_run):
    settings = int8_run["settings"]
    images = [os.path.join(int8_run["image_dir"], label, name)
              for label in ("blue", "green", "red") for name in ("img0.jpg", "img3_gray.png")]
    # On the frozen graph, what label_image.py runs, in this process.
    _, on_graph, labels = label_image_cli.classify_with_graph(command_config.LabelImageConfig(
        image=images, graph=settings["output_graph"], labels=settings["output_labels"], top_k=1))
    # No labels file: they come from the model's metadata.
    on_tflite = run_command("label_image.py", *images, settings["tflite_output_file"],
                           "--top_k=1", "--output_format=json", check=True)
    top = [[image, labels[on_graph[i].classes[0]]] for i, image in enumerate(images)]
    assert [[d["image"], d["predictions"][0]["label"]] for d in json.loads(on_tflite.stdout)] == top
    assert len(top) == 6


def test_quantization_without_an_output_file_is_a_usage_error(tmp_path):
    with pytest.raises(config_lib.UsageError, match="needs --tflite_output_file"):
        config_lib.from_flat({"image_dir": str(tmp_path), "tflite_quantization": "int8"}).validate()


def test_calibration_sample_is_reproducible_from_the_seed():
    assert tflite.calibration_indices(1000, 7) == tflite.calibration_indices(1000, 7)
    assert tflite.calibration_indices(1000, 7) != tflite.calibration_indices(1000, 8)
    assert len(tflite.calibration_indices(1000, 7)) == tflite.CALIBRATION_IMAGES
    assert tflite.calibration_indices(5, 7) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_an_exported_file_below_the_accuracy_gate_fails_the_run_but_stays_written(
        int8_run, tmp_path, monkeypatch):
    # A quantization that costs everything: the TFLite file's answers shifted by one class.
    real = tflite.TFLiteClassifier.probabilities
    monkeypatch.setattr(tflite.TFLiteClassifier, "probabilities",
                        lambda self, image: np.roll(real(self, image), 1))
    settings = dict(int8_run["settings"], **{
        name: str(tmp_path / "out" / os.path.basename(int8_run["settings"][name]))
        for name in ("output_graph", "output_labels", "tflite_output_file", "eval_report",
                     "checkpoint_path", "saved_model_dir")
    })
    # A cache of its own: the check memo of int8_run's cache would rightly reuse the
    # predictions of the same bytes, which this test's runtime changes.
    shutil.copytree(settings["bottleneck_dir"], tmp_path / "bottlenecks",
                    ignore=shutil.ignore_patterns("checks"))
    settings.update(summaries_dir=str(tmp_path / "logs"), assert_accuracy_at_least=0.9,
                    bottleneck_dir=str(tmp_path / "bottlenecks"))
    with pytest.raises(reporting.AccuracyError, match=r"TFLite \(int8\) test accuracy") as error:
        job.run_retraining(config_lib.from_flat(settings))
    assert "frozen graph" not in str(error.value)
    assert os.path.getsize(settings["tflite_output_file"]) > 0
    with open(settings["eval_report"]) as f:
        assert len(json.load(f)["artifacts"]["files"]) == 3


def test_a_graph_tflite_cannot_run_is_one_line_error_not_a_traceback():
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], "Placeholder")
        # Betainc has no TFLite kernel, as some modules' ops have none.
        odd = tf.math.betainc(tf.ones_like(images), tf.ones_like(images), images)
        tf.nn.softmax(tf.reduce_mean(odd, [1, 2]), name="final_result")
    with pytest.raises(tflite.TFLiteError, match="Betainc") as error:
        tflite.convert(graph.as_graph_def(), 8, 8, "final_result", "none")
    assert "\n" not in str(error.value) and "--tflite_output_file" in str(error.value)


@pytest.mark.slow
def test_label_image_on_a_tflite_without_labels_inside_asks_for_a_labels_file(int8_run, tmp_path):
    settings = int8_run["settings"]
    bare = tmp_path / "bare.tflite"  # converted, but no metadata written into it
    bare.write_bytes(tflite.convert(load_graph_def(settings["output_graph"]), 32, 32,
                                    "final_result", "none"))
    image = os.path.join(int8_run["image_dir"], "red", "img0.jpg")
    refused = run_command("label_image.py", image, str(bare))
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {bare} holds no labels in its metadata; pass its labels file."
    )
    given = run_command("label_image.py", "--image", image, "--graph", str(bare),
                       "--labels", settings["output_labels"], "--top_k=1", check=True)
    assert given.stdout.split()[0] == "red"


@pytest.mark.slow
def test_int8_calibration_decodes_every_training_image_once_and_no_other(int8_run):
    settings = int8_run["settings"]
    dataset = dataset_lib.build_dataset(
        int8_run["image_dir"], settings["validation_percentage"], settings["testing_percentage"]
    )
    training = sorted(dataset.full_path(image) for image in dataset.in_split("training"))
    assert 0 < len(training) < tflite.CALIBRATION_IMAGES  # so every one of them is used
    assert sorted(path for _, path in int8_run["calibration_reads"]) == training


def repeated_images(run, times):
    """An ImageFiles of every image of the run's folder, times over."""
    paths = sorted(os.path.join(folder, name)
                   for folder, _, names in os.walk(run["image_dir"]) for name in names)
    return image_pipelines.ImageFiles(paths * times)


@pytest.mark.slow
def test_int8_calibration_decodes_its_sample_of_training_images_when_there_are_more(
        int8_run, tmp_path, monkeypatch):
    settings = int8_run["settings"]
    # 720 images in the source; the even rows, 360 of them, are the training images.
    images = repeated_images(int8_run, 12)
    training_rows = list(range(0, len(images), 2))
    read = record_files_read_by_tflite_export(monkeypatch)
    # ... and the samples the converter calibrates on: one image each, all that was read.
    given, real_convert = [], tf.lite.TFLiteConverter.convert

    def convert(converter):
        dataset = converter.representative_dataset

        def counted():
            for sample in dataset():
                given.append([np.shape(tensor) for tensor in sample])
                yield sample

        converter.representative_dataset = counted
        return real_convert(converter)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "convert", convert)
    config = config_lib.from_flat(dict(settings, tflite_output_file=str(tmp_path / "m.tflite")))
    run = helpers.run_of_images(images, training_rows, ["blue", "green", "red"], (32, 32))
    calibrated = tflite.export_for_run(config.outputs, load_graph_def(settings["output_graph"]),
                                       run, config.training.random_seed, "module")
    rows = [row for row, _ in read]
    assert tflite.CALIBRATION_IMAGES < len(training_rows)
    assert calibrated == len(rows) == len(set(rows)) == tflite.CALIBRATION_IMAGES
    assert set(rows) <= set(training_rows)
    assert given == [[(1, 32, 32, 3)]] * tflite.CALIBRATION_IMAGES


@pytest.mark.slow
def test_int8_calibration_decoded_ahead_makes_the_same_file_without_decoding_in_the_export(
        int8_run, tmp_path, monkeypatch):
    settings = int8_run["settings"]
    images = repeated_images(int8_run, 4)
    run = helpers.run_of_images(images, list(range(1, len(images), 2)),
                                ["blue", "green", "red"], (32, 32))
    seed = settings["random_seed"]
    rows = tflite.calibration_rows(run, seed)
    assert len(rows) == tflite.CALIBRATION_IMAGES
    read = record_files_read_by_tflite_export(monkeypatch)
    written = {}
    for ahead in (False, True):
        calibration = None
        if ahead:
            calibration = checked_images.DecodedAhead(run, rows, tflite.CALIBRATION_BATCH)
            calibration.start()
            assert calibration.batches() is not None  # decoded before the export begins
        path = tmp_path / f"ahead_{ahead}.tflite"
        config = config_lib.from_flat(dict(settings, tflite_output_file=str(path)))
        read.clear()
        calibrated = tflite.export_for_run(config.outputs, load_graph_def(settings["output_graph"]),
                                           run, seed, "module", calibration)
        assert calibrated == tflite.CALIBRATION_IMAGES
        assert len(read) == (0 if ahead else tflite.CALIBRATION_IMAGES)
        written[ahead] = path.read_bytes()
    assert written[True] == written[False]  # the same images, in the same batches
    # Rows other than the calibration's are not taken for them.
    other = checked_images.DecodedAhead(run, rows[1:], tflite.CALIBRATION_BATCH)
    other.start()
    assert other.batches() is not None
    read.clear()
    tflite.export_for_run(config.outputs, load_graph_def(settings["output_graph"]), run, seed,
                          "module", other)
    assert len(read) == tflite.CALIBRATION_IMAGES and path.read_bytes() == written[False]


def constant_bytes_by_type(model):
    """{TensorType name: bytes} of a TFLite model's constant tensors (those holding data)."""
    root = tflite_schema.Model.GetRootAs(model, 0)
    names = {value: name for name, value in vars(tflite_schema.TensorType).items()
             if not name.startswith("_")}
    found = {}
    subgraph = root.Subgraphs(0)
    for i in range(subgraph.TensorsLength()):
        tensor = subgraph.Tensors(i)
        size = root.Buffers(tensor.Buffer()).DataLength()
        if size:
            found[names[tensor.Type()]] = found.get(names[tensor.Type()], 0) + size
    return found


@pytest.mark.slow
def test_float16_file_holds_its_weights_as_float16_and_agrees_with_the_frozen_graph(
        int8_run, tmp_path):
    settings = int8_run["settings"]
    graph_path = settings["output_graph"]
    written = {}
    for quantization in ("none", "float16"):
        path = tmp_path / f"{quantization}.tflite"
        config = config_lib.from_flat(dict(
            settings, tflite_quantization=quantization, tflite_output_file=str(path)))
        run = helpers.run_of_images(image_pipelines.ImageFiles([]), [], ["blue", "green", "red"],
                                    (32, 32))
        tflite.export_for_run(config.outputs, load_graph_def(graph_path), run,
                              config.training.random_seed, "module")
        written[quantization] = path.read_bytes()
    weights = {name: constant_bytes_by_type(model) for name, model in written.items()}
    # Every float weight is float16, at half the bytes; none is left float32 or made int8.
    assert weights["float16"].keys() - {"INT32"} == {"FLOAT16"}
    assert weights["none"].keys() - {"INT32"} == {"FLOAT32"}
    assert weights["float16"]["FLOAT16"] * 2 == weights["none"]["FLOAT32"]
    # The tiny module's few weights leave the file's own structure a large share of it.
    assert len(written["float16"]) < 0.65 * len(written["none"])
    images = decoded_images(int8_run)
    # Weights rounded to float16 (11 significant bits), arithmetic still float32.
    np.testing.assert_allclose(tflite_probabilities(written["float16"], images),
                               helpers.graph_probabilities(graph_path, images), atol=1e-3)
