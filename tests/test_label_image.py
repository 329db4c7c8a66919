"""label_image.py: batches, folders, formats, and one-line errors."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    label_image_error_line,
    load_graph_def,
    run_command,
    unblocking_fifo,
    write_image,
)

from retrain_suite import classifier, tflite
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.images import pipelines as image_pipelines


def last_line(text):
    return text.strip().splitlines()[-1]


def test_folder_is_classified_in_blocks_headed_by_path(trained, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for label in ("red", "blue"):
        shutil.copy(os.path.join(trained["image_dir"], label, "img1.png"), folder / f"{label}.png")
    (folder / "notes.txt").write_text("not an image")
    settings = trained["settings"]
    process = run_command(
        "label_image.py", "--image", str(folder), "--graph", settings["output_graph"],
        "--labels", settings["output_labels"], "--top_k=1", check=True,
    )
    assert process.stdout.splitlines() == [
        str(folder / "blue.png"), process.stdout.splitlines()[1],
        str(folder / "red.png"), process.stdout.splitlines()[3],
    ]
    assert process.stdout.splitlines()[1].split()[0] == "blue"
    assert process.stdout.splitlines()[3].split()[0] == "red"


def test_images_follow_graph_and_labels_flags_positionally(trained):
    settings = trained["settings"]
    images = [os.path.join(trained["image_dir"], label, "img1.png") for label in ("red", "blue")]
    process = run_command(
        "label_image.py", "--graph", settings["output_graph"], "--labels", settings["output_labels"],
        *images, "--top_k=1", check=True,
    )
    lines = process.stdout.splitlines()
    assert lines[0::2] == images
    assert [line.split()[0] for line in lines[1::2]] == ["red", "blue"]


def test_only_one_of_graph_and_labels_beside_positionals_is_refused_in_one_line(trained):
    settings = trained["settings"]
    image = os.path.join(trained["image_dir"], "red", "img1.png")
    line = label_image_error_line(image, settings["output_labels"], graph=settings["output_graph"])
    assert line.startswith("error: usage: label_image.py IMAGE [IMAGE ...] GRAPH")


def test_undecodable_image_is_reported_and_others_still_classified(trained, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not a jpeg</html>")
    good = os.path.join(trained["image_dir"], "green", "img1.png")
    settings = trained["settings"]
    process = run_command(
        "label_image.py", str(bad), good, settings["output_graph"], settings["output_labels"],
        "--output_format=json",
    )
    assert process.returncode == 1
    results = json.loads(process.stdout)
    assert results[0]["image"] == str(bad) and "not a decodable image" in results[0]["error"]
    assert results[1]["predictions"][0]["label"] == "green"


def test_missing_image_is_one_line_error(trained, tmp_path):
    settings = trained["settings"]
    process = run_command(
        "label_image.py", str(tmp_path / "nope.jpg"), settings["output_graph"],
        settings["output_labels"],
    )
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert last_line(process.stderr) == f"error: Image {tmp_path / 'nope.jpg'} does not exist."


def test_graph_without_named_tensor_is_one_line_error(trained):
    settings = trained["settings"]
    image = os.path.join(trained["image_dir"], "red", "img0.jpg")
    line = label_image_error_line(image, settings["output_graph"], settings["output_labels"],
                      output_layer="softmax")
    assert line.startswith("error: The graph has no output_layer named 'softmax'")


def test_labels_file_of_wrong_length_is_one_line_error(trained, tmp_path):
    settings = trained["settings"]
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    image = os.path.join(trained["image_dir"], "red", "img0.jpg")
    line = label_image_error_line(image, settings["output_graph"], str(labels))
    assert "has 2 labels but the graph outputs 3 classes" in line


def test_file_that_is_not_a_graph_is_one_line_error(trained, tmp_path):
    graph = tmp_path / "graph.pb"
    graph.write_bytes(b"\xff\x00garbage" * 10)
    image = os.path.join(trained["image_dir"], "red", "img0.jpg")
    line = label_image_error_line(image, str(graph), trained["settings"]["output_labels"])
    assert "is not a TensorFlow GraphDef file" in line


def test_session_config_keeps_grappler_on_a_gpu(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert not classifier.session_config().graph_options.rewrite_options.disable_meta_optimizer
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert classifier.session_config().graph_options.rewrite_options.disable_meta_optimizer


def test_on_a_cpu_graph_runs_without_grappler_and_gives_what_grappler_gives(trained, monkeypatch):
    config = classifier.session_config()
    on_a_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert config.graph_options.rewrite_options.disable_meta_optimizer != on_a_gpu
    assert config.gpu_options.allow_growth
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    folder = os.path.join(trained["image_dir"], sorted(os.listdir(trained["image_dir"]))[0])
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))[:6]]
    plain = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    monkeypatch.setattr(classifier, "session_config", tf.compat.v1.ConfigProto)
    optimised = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    assert sorted(plain) == sorted(optimised) == list(range(len(paths)))
    for i in plain:
        np.testing.assert_allclose(plain[i], optimised[i], atol=1e-5)


def test_measured_batch_size_gives_the_probabilities_of_a_given_one(trained, monkeypatch, caplog):
    monkeypatch.setattr(batch_size_lib, "CANDIDATES", (2, 3, 4))
    monkeypatch.setattr(batch_size_lib, "MIN_IMAGES_TO_MEASURE", 3 * 9 + 8)
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    image_dir = trained["image_dir"]
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(image_dir)
                   for name in names)
    paths = (paths * 3)[:40]
    caplog.set_level(logging.INFO)
    measured = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    assert re.search(r"Batch size [234]: the fastest per image of 2: .*; the other 13 images",
                     caplog.text)
    given = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32, batch_size=7))
    assert sorted(measured) == sorted(given) == list(range(len(paths)))
    for i in given:
        np.testing.assert_allclose(measured[i], given[i], rtol=1e-5, atol=1e-6)


def test_batch_size_must_be_positive(trained):
    settings = trained["settings"]
    line = label_image_error_line(image=[os.path.join(trained["image_dir"], "red")],
                      graph=settings["output_graph"], labels=settings["output_labels"],
                      batch_size=0)
    assert line.startswith("error: --batch_size=0 must be positive")


def test_tflite_model_takes_input_mean_and_std_as_the_frozen_graph_does(trained, tmp_path):
    settings = trained["settings"]
    graph_def = load_graph_def(settings["output_graph"])
    labels = classifier.load_labels(settings["output_labels"])
    model = tmp_path / "model.tflite"  # float: its input takes any value, as the graph's does
    tflite.write_tflite(str(model), tflite.convert(graph_def, 32, 32, "final_result", "none"),
                        labels, 32, 32, "float32")
    paths = [os.path.join(trained["image_dir"], label, name)
             for label in ("blue", "green", "red") for name in ("img0.jpg", "img3_gray.png")]
    mean, std = 100.0, 80.0
    # What the flags mean: the graph fed (pixel - mean) / std of the 0-255 pixel values.
    ((_, _, decoded),) = image_pipelines.image_batches(paths, 32, 32, len(paths)).as_numpy_iterator()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            expected, plain = (sess.run("final_result:0", {"Placeholder:0": images})
                               for images in ((decoded * 255.0 - mean) / std, decoded))
    assert np.abs(expected - plain).max() > 0.05  # else ignoring the flags would pass
    on_graph = classifier.classify(graph_def, paths, classifier.Preprocessing(
        height=32, width=32, input_mean=mean, input_std=std, batch_size=len(paths)))
    np.testing.assert_allclose([on_graph[i] for i in range(len(paths))], expected, atol=1e-5)
    process = run_command("label_image.py", *paths, str(model), f"--input_mean={mean}",
                         f"--input_std={std}", f"--top_k={len(labels)}", "--output_format=json",
                         check=True)
    printed = json.loads(process.stdout)
    assert [entry["image"] for entry in printed] == paths
    for entry, probabilities in zip(printed, expected):
        scores = {p["label"]: p["score"] for p in entry["predictions"]}
        np.testing.assert_allclose([scores[label] for label in labels], probabilities, atol=1e-4)
        assert entry["predictions"][0]["label"] == labels[np.argmax(probabilities)]


@pytest.mark.parametrize("load, what", [
    (classifier.load_graph, "Graph file"), (classifier.load_labels, "Labels file"),
    (classifier.load_tflite, "Model file"),
])
def test_fifo_named_as_graph_labels_or_model_is_refused_not_waited_on(tmp_path, load, what):
    with unblocking_fifo(tmp_path / "pipe") as fifo:
        with pytest.raises(classifier.LabelError) as raised:
            load(fifo)
    assert str(raised.value) == f"{what} {fifo} cannot be used: not a regular file (a FIFO)."


def test_fifo_given_as_graph_is_one_error_line_not_a_hang(trained, tmp_path):
    """The command looks at the graph's first bytes (is it a TFLite model?) before
    loading it: both reads refuse the FIFO without waiting for a writer."""
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    image = os.path.join(trained["image_dir"], "red", "img1.png")
    # A process of its own, ended after a while if it hangs: a hang is the failure.
    process = run_command("label_image.py", "--graph", str(fifo), "--labels",
                          trained["settings"]["output_labels"], image)
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert last_line(process.stderr) == (
        f"error: Graph file {fifo} cannot be used: not a regular file (a FIFO).")


def test_folder_named_as_graph_is_one_line_error(tmp_path):
    (tmp_path / "graph.pb").mkdir()
    with pytest.raises(classifier.LabelError, match="cannot be used: not a regular file"):
        classifier.load_graph(str(tmp_path / "graph.pb"))


def int8_model(path, top):
    """A 3-class uint8-input TFLite classifier (colour means) calibrated on values 0 to top."""
    weights = tf.constant(np.eye(3, dtype=np.float32) * 4.0)
    function = tf.function(
        lambda image: tf.nn.softmax(tf.matmul(tf.reduce_mean(image, [1, 2]), weights)),
        input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)],
    ).get_concrete_function()
    rng = np.random.RandomState(0)

    def representative_dataset():
        for _ in range(8):
            image = rng.rand(1, 8, 8, 3).astype(np.float32) * top
            image[0, 0, 0], image[0, 0, 1] = 0.0, top
            yield [image]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], function)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.uint8
    tflite.write_tflite(str(path), converter.convert(), ["red", "green", "blue"], 8, 8, "int8")
    return str(path)


@pytest.fixture(scope="module")
def int8_photos(tmp_path_factory):
    """(an int8 model taking pixel/255, one stopping short of 1.0, [a red photo])."""
    root = tmp_path_factory.mktemp("int8")
    photo = str(root / "red.png")
    write_image(photo, np.full((8, 8, 3), (230, 30, 20), np.uint8))
    return int8_model(root / "full.tflite", 1.0), int8_model(root / "short.tflite", 0.998), [photo]


@pytest.mark.parametrize("mean, std, low, high", [
    (127.5, 127.5, "-1", "1"), (0.0, 1.0, "0", "255"), (-10.0, 255.0, "0.03922", "1.039"),
])
def test_int8_model_refuses_mean_and_std_its_input_cannot_hold(int8_photos, mean, std, low, high):
    model, _ = classifier.load_tflite(int8_photos[0])
    assert model.input["quantization"][0] == pytest.approx(1 / 255)
    with pytest.raises(classifier.LabelError) as raised:
        classifier.classify_tflite(
            model, int8_photos[2], classifier.Preprocessing(input_mean=mean, input_std=std))
    assert str(raised.value) == (
        f"--input_mean={mean:g} and --input_std={std:g} turn pixels into values from {low} to "
        f"{high}, but this quantized model's uint8 input holds only 0 to 1 (the rest would be "
        "clipped); it takes pixel/255 (0 to 1), as retrain.py's models do: leave --input_mean "
        "and --input_std at their defaults.")


def test_int8_model_with_mean_and_std_out_of_range_is_one_error_line(int8_photos):
    process = run_command("label_image.py", *int8_photos[2], int8_photos[0],
                         "--input_mean=127.5", "--input_std=127.5")
    assert process.returncode == 1
    assert process.stdout == ""
    assert last_line(process.stderr).startswith(
        "error: --input_mean=127.5 and --input_std=127.5 turn pixels into values from -1 to 1")
    assert "Traceback" not in process.stderr


def test_int8_model_stopping_short_of_1_keeps_working_within_one_step(int8_photos):
    model, labels = classifier.load_tflite(int8_photos[1])
    scale, zero_point = model.input["quantization"]
    assert zero_point == 0 and 1.0 - 255 * scale > 0.001  # short of 1.0, by less than a step
    by_default = classifier.classify_tflite(model, int8_photos[2])
    # 0.2 below the default mean: 255 becomes 1.0008, past the input's top 0.998, by less
    # than a step (0.0039).
    nudged = classifier.classify_tflite(
        model, int8_photos[2], classifier.Preprocessing(input_mean=-0.2))
    assert labels[int(np.argmax(by_default[0]))] == "red"
    np.testing.assert_allclose(nudged[0], by_default[0], atol=0.01)
