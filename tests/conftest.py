"""Shared fixtures: synthetic image folders and generated modules, all offline."""

import os
import signal
import subprocess
import sys
import threading

from retrain_suite.cli import startup

# The pytest workers import TensorFlow here; without this their C++ start-up lines
# land in pytest's output. The environment given is a throwaway: os.environ stays as
# it is, so the commands the tests start behave as a user's would.
startup.quiet_tensorflow(argv=[], environ={})

import helpers  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import logging  # noqa: E402
from PIL import Image  # noqa: E402

from retrain_suite import config as config_lib  # noqa: E402
from retrain_suite import evaluation, export  # noqa: E402
from retrain_suite.bottleneck import make_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The Ctrl-C tests send SIGINT to the commands they start. A suite started with
# SIGINT ignored (a background job of a script, nohup) would pass that on to them,
# and they would run on: an ignored signal stays ignored across exec, while a
# handled one goes back to its default, which Python turns into Ctrl-C handling.
if (signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()):
    signal.signal(signal.SIGINT, signal.default_int_handler)


# In-process runs log through absl, which stays at WARNING until flags are parsed.
logging.set_verbosity(logging.INFO)

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


@pytest.fixture
def dataset_dir(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("modules") / "tiny")
    make_module.write_module("tiny", path)
    return path


@pytest.fixture(scope="session")
def inception_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("modules") / "inception_v3")
    make_module.write_module("inception_v3", path)
    return path


def load_graph_def(path):
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    return graph_def


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_module):
    """One real `retrain.py` command-line run on a 3-class dataset with the tiny module.

    -> dict with the settings used, the process (stdout/stderr), and the dataset folder.
    """
    root = tmp_path_factory.mktemp("trained")
    image_dir = make_dataset(root / "data", per_class=20)
    settings = retrain_settings(
        root, image_dir, tiny_module, validation_percentage=15, testing_percentage=25,
        saved_model_dir=str(root / "out" / "saved_model"),
    )
    settings.update(CLASSIC_DEFAULTS)
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    args.append("--logging_verbosity=INFO")  # a classic flag too, but not part of the config
    process = run_script("retrain.py", *args, check=True)
    return {"settings": settings, "process": process, "image_dir": image_dir, "root": root}


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


@pytest.fixture(scope="module")
def ten_thousand_classes():
    """helpers.many_classes' 10,000 classes -> (truth, predictions, labels, their report)."""
    truth, predictions, labels = helpers.many_classes()
    return truth, predictions, labels, evaluation.evaluate(truth, predictions, labels)
