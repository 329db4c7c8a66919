"""Helpers shared by the test files: images, datasets, settings, scripts, runs of the
later stages. Import them from here; conftest.py holds only fixtures and the session's
set-up (pytest advises against importing from conftest)."""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import threading

import forked_commands
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.tools import flatbuffer_utils
from PIL import Image

from retrain_suite import command_config, errors, export, run_data, tflite_metadata
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.dataset import split as split_lib


def prepared_run(arrays, class_count, source=None, input_size=(8, 8), max_image_pixels=10**8):
    """A run_data.PreparedRun of in-memory sets, for the stages after the bottlenecks.

    arrays: {split: (vectors float32 [n, D], labels int64 [n], images)}, images a
    list of dataset.Image (or Nones, when nothing reads them). Rows number the
    images of the three sets one after the other, in SPLITS order: the order of
    `source`'s images, if one is given.
    """
    splits, first = {}, 0
    every = []
    for name in dataset_lib.SPLITS:
        vectors, labels, images = arrays[name]
        rows = np.arange(first, first + len(labels), dtype=np.int64)
        first += len(labels)
        images = tuple(images) if len(images) == len(labels) else (None,) * len(labels)
        every.extend(i for i in images if i is not None)
        splits[name] = run_data.Split(name, images, np.asarray(labels, np.int64),
                                      np.asarray(vectors, np.float32), rows)
    dataset = dataset_lib.Dataset("", [f"class_{n}" for n in range(class_count)], every)
    return run_data.PreparedRun(dataset=dataset, source=source, **splits, contents={},
                                input_size=input_size, max_image_pixels=max_image_pixels)


def run_of_images(source, training_rows, class_names, input_size, labels=None):
    """run_data.images_only over `source`'s images at training_rows (labels int [n],
    class 0 if not given)."""
    labels = np.zeros(len(training_rows), np.int64) if labels is None else labels
    run = run_data.images_only(source, labels, class_names, input_size, 10**8)
    training = dataclasses.replace(run.training, rows=np.asarray(training_rows, np.int64))
    return dataclasses.replace(run, training=training)


# An evaluation of four classes to check by hand (test_evaluation*.py).
LABELS = ["a", "b", "c", "d"]
# Ten images of a, b and c (none of d); rows true, columns predicted:
#        a  b  c  d
#   a  [ 2, 1, 1, 0 ]
#   b  [ 1, 1, 0, 0 ]
#   c  [ 0, 1, 3, 0 ]
#   d  [ 0, 0, 0, 0 ]
TRUTH = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]


def many_classes(class_count=10_000, per_class=3, seed=0):
    """Synthetic predictions: 70% right, the rest a random class; and class 5's extra
    20 images all taken for class 9. -> (truth, predictions, labels)."""
    rng = np.random.RandomState(seed)
    truth = np.repeat(np.arange(class_count), per_class)
    predictions = np.where(rng.rand(len(truth)) < 0.7, truth,
                           rng.randint(0, class_count, len(truth)))
    truth = np.concatenate([truth, np.full(20, 5)])
    predictions = np.concatenate([predictions, np.full(20, 9)])
    return truth, predictions, [f"class_{i:05d}" for i in range(class_count)]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Three classes a random-feature module separates easily: distinct colours and patterns.
CLASS_STYLES = {
    "red": ((220, 40, 40), "solid"),
    "green": ((40, 190, 60), "stripes"),
    "blue": ((40, 60, 210), "checker"),
}


def synthetic_image(colour, pattern, height, width, rng):
    """uint8 [height, width, 3]: a coloured pattern with noise."""
    y, x = np.mgrid[0:height, 0:width]
    if pattern == "stripes":
        mask = (x // 4) % 2 == 0
    elif pattern == "checker":
        mask = ((x // 6) + (y // 6)) % 2 == 0
    else:
        mask = np.ones((height, width), bool)
    base = np.where(mask[..., None], np.array(colour), np.array(colour) // 3)
    noisy = base + rng.randint(-20, 21, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_image(path, pixels, fmt=None, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    image.save(path, fmt)


def make_dataset(root, per_class=12, classes=CLASS_STYLES, seed=0):
    """Write a class-per-folder dataset with mixed formats and odd sizes. -> root."""
    rng = np.random.RandomState(seed)
    for label, (colour, pattern) in classes.items():
        for i in range(per_class):
            height, width = 30 + 7 * (i % 5), 40 + 5 * (i % 3)
            pixels = synthetic_image(colour, pattern, height, width, rng)
            kind = i % 4
            if kind == 0:
                write_image(os.path.join(root, label, f"img{i}.jpg"), pixels, "JPEG")
            elif kind == 1:
                write_image(os.path.join(root, label, f"img{i}.png"), pixels, "PNG")
            elif kind == 2:
                write_image(os.path.join(root, label, f"img{i}.JPEG"), pixels, "JPEG")
            else:
                # Grayscale keeps the pattern but loses the colour.
                write_image(os.path.join(root, label, f"img{i}_gray.png"), pixels, "PNG", "L")
    return str(root)


def load_graph_def(path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def graph_probabilities(graph_path, images):
    """The frozen graph at graph_path on images (float32 [N, H, W, 3]). -> float32 [N, C]."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(load_graph_def(graph_path), name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run("final_result:0", {"Placeholder:0": images})


def final_layer_constants(path):
    """{op name: array} of the trained layer's constants in a frozen graph file."""
    import tensorflow as tf

    constants = {
        node.name: tf.make_ndarray(node.attr["value"].tensor)
        for node in load_graph_def(path).node
        if node.name.startswith("final_retrain_ops/") and node.op == "Const"
    }
    assert constants, f"no final layer in {path}"
    return constants


def probabilities_from_bottlenecks(graph_def, vectors):
    """Run a frozen graph from its `bottleneck` tensor: float32 [N, D] -> [N, C]."""
    import tensorflow as tf


    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run("final_result:0", {export.BOTTLENECK_NAME + ":0": vectors})


def run_script(*args, check=False, env=None):
    """Run one of the project's scripts in a fresh Python (environment `env`, default ours).

    -> CompletedProcess (text)."""
    process = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    if check and process.returncode != 0:
        raise AssertionError(
            f"{args} exited {process.returncode}\nstdout:\n{process.stdout}\n"
            f"stderr:\n{process.stderr[-4000:]}"
        )
    return process


def label_image_error_line(*positional, **flags):
    """The one line label_image.py ends with for this command line, found in this
    process: its positional arguments, and its flags as LabelImageConfig fields, go
    through the steps of the command's main for a frozen graph (positionals, flag
    checks, the graph's kind read from its first bytes, then the graph's
    classification), which must raise a SuiteError of one line, the error the
    command prints as `error: ...` and exits 1 with (test_label_image.py's
    test_missing_image_is_one_line_error runs the command itself). A fresh Python
    per error would cost a TensorFlow import.
    """
    from retrain_suite.cli import label_image as label_image_cli

    config = command_config.LabelImageConfig(**flags)
    with pytest.raises(errors.SuiteError) as raised:
        config = label_image_cli.with_positionals(config, list(positional))
        config.validate()
        assert not (config.is_tflite() or config.is_onnx())
        label_image_cli.classify_with_graph(config)
    assert "\n" not in str(raised.value)
    return f"error: {raised.value}"


def run_command(*args, check=False):
    """Run one of the suite's commands (retrain.py, label_image.py, pre_input.py or
    -m bottleneck, then its arguments) in a process of its own, as run_script does,
    but forked from a Python that has imported TensorFlow already (forked_commands.py):
    for tests of what the command does, not of how a fresh Python starts (those use
    run_script). -> CompletedProcess (text)."""
    forked = forked_commands.run(args, timeout=600)
    if forked is None:
        return run_script(*args, check=check)
    status, stdout, stderr = forked
    process = subprocess.CompletedProcess([sys.executable, *args], status, stdout, stderr)
    if check and process.returncode != 0:
        raise AssertionError(
            f"{args} exited {process.returncode}\nstdout:\n{process.stdout}\n"
            f"stderr:\n{process.stderr[-4000:]}"
        )
    return process


def retrain_settings(tmp_path, image_dir, module, **overrides):
    """Plain settings for retrain.run_retraining, every output under tmp_path."""

    settings = {name: config_lib.default(name) for name in config_lib.field_names()}
    settings.update(
        image_dir=image_dir,
        tfhub_module=module,
        bottleneck_dir=str(tmp_path / "bottlenecks"),
        output_graph=str(tmp_path / "out" / "output_graph.pb"),
        output_labels=str(tmp_path / "out" / "output_labels.txt"),
        summaries_dir=str(tmp_path / "logs"),
        checkpoint_path=str(tmp_path / "out" / "checkpoint"),
        intermediate_output_graphs_dir=str(tmp_path / "intermediate"),
        # The report page costs about half a second a run: the tests that look at it ask.
        report_dir="",
        how_many_training_steps=200,
        learning_rate=0.1,  # The tiny module's features are small; 0.01 learns slowly.
        eval_step_interval=50,
        random_seed=1,
    )
    settings.update(overrides)
    return settings


CLASSIC_DEFAULTS = {
    # Every flag of the classic TF Hub retrain.py, spelled out as an old command line would.
    "intermediate_store_frequency": 0,
    "train_batch_size": 100,
    "test_batch_size": -1,
    "validation_batch_size": 100,
    "print_misclassified_test_images": False,
    "final_tensor_name": "final_result",
    "flip_left_right": False,
    "random_crop": 0,
    "random_scale": 0,
    "random_brightness": 0,
}


class unblocking_fifo:
    """`with unblocking_fifo(path):` a FIFO at path that a blocking reader cannot hang on.

    A reader that opens it blocking (the bug the tests guard against) is let
    go at once by a writer that opens and closes the other end: it reads
    nothing instead of waiting for ever, so a broken build fails its
    assertion instead of hanging the suite. A non-blocking reader never meets
    the writer, which gives up when the block ends.
    """

    def __init__(self, path):
        self.path = str(path)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._release_readers, daemon=True)

    def _release_readers(self):
        while not self._done.wait(0.01):
            try:  # Fails (ENXIO) while no reader has the FIFO open.
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    def __enter__(self):
        os.mkfifo(self.path)
        self._thread.start()
        return self.path

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False


def bare_model():
    """The smallest TFLite flatbuffer the metadata writer accepts (no graph: not runnable)."""
    model = tflite_schema.ModelT()
    model.version = 3
    model.buffers = [tflite_schema.BufferT()]
    model.subgraphs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def model_with_labels(labels=("cat", "dog")):
    metadata = tflite_metadata.image_classifier_metadata(
        "classifier", "test", (32, 32), len(labels), (0.0, 255.0))
    return tflite_metadata.with_metadata(bare_model(), metadata, labels)


def images_in_split(image_dir, split, settings):
    """-> (the dataset of image_dir as settings split it, its images in `split`)."""
    dataset = dataset_lib.build_dataset(
        image_dir, settings["validation_percentage"], settings["testing_percentage"]
    )
    return dataset, dataset.in_split(split)


# The dataset and pre_input tests': placeholder files, the split formula written out
# independently, and a dataset with copies of each kind.


def expected_split(relative_path, validation, testing):
    """The documented split formula, written out independently of pre_input.

    `_nohash_` and what follows it are cut from the file name only: a folder
    named `x_nohash_y` is part of every path under it.
    """
    folder, slash, file_name = relative_path.rpartition("/")
    cut = file_name.find("_nohash_")
    name = relative_path if cut < 0 else folder + slash + file_name[:cut]
    h = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    p = (h % 2**27) * (100.0 / (2**27 - 1))
    if p < validation:
        return "validation"
    if p < validation + testing:
        return "testing"
    return "training"


def touch(path, data=b"x"):
    """A placeholder file: scanning and splitting never decode images."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def splits_of(dataset):
    return {image.path: image.split for image in dataset.images}


def dataset_with_copies(root, validation=30, testing=30):
    """A 3-class dataset plus byte-identical copies: -> (image_dir, {kind: [(copy, original)]}).

    Copies are named so their path hash (30/30/40 split) puts them where each kind needs.
    """
    image_dir = make_dataset(root, per_class=6)

    def split(path):
        return split_lib.split_for(path, validation, testing)

    def copy_named(original, folder, wanted):
        """Copy `original` into `folder` under the first name whose split is `wanted`'s."""
        for n in range(1000):
            path = f"{folder}/copy{n}{os.path.splitext(original)[1]}"
            if wanted(split(path)) and not os.path.exists(os.path.join(image_dir, path)):
                os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
                shutil.copy(os.path.join(image_dir, original), os.path.join(image_dir, path))
                return path
        raise AssertionError("no name found")

    def first_in(label, wanted_split):
        return next(path for path in sorted(f"{label}/{n}" for n in os.listdir(os.path.join(
            image_dir, label))) if split(path) == wanted_split)

    made = {}
    original = first_in("red", "training")
    made["within"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    original = first_in("green", "training")
    made["across_sets"] = [(copy_named(original, "green/more", lambda s: s == "testing"), original)]
    original = first_in("blue", "training")
    made["across_classes"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    return image_dir, made
