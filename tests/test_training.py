"""retrain_suite.training (through a whole run): what the final layer is trained on."""

import dataclasses
import os
import re
import subprocess
import sys
import time

import helpers
import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, make_dataset, retrain_settings, synthetic_image, write_image

from retrain_suite import config as config_lib
from retrain_suite import final_layer, job, training


def test_test_images_are_never_trained_on(tmp_path, tiny_module, caplog):
    # Labels drawn at random, independent of the pictures: nothing generalises,
    # but the layer can memorise what it trains on. So it must reach ~100% on
    # its training images and stay near chance on the test images; had the
    # test images been trained on, they would be memorised too.
    rng = np.random.RandomState(3)
    image_dir = tmp_path / "random_labels"
    for i in range(80):
        colour = tuple(int(c) for c in rng.randint(0, 256, 3))
        pattern = ("solid", "stripes", "checker")[rng.randint(3)]
        label = "ab"[rng.randint(2)]
        write_image(str(image_dir / label / f"img{i}.png"),
                    synthetic_image(colour, pattern, 32, 32, rng), "PNG")
    settings = retrain_settings(
        tmp_path, str(image_dir), tiny_module, testing_percentage=40, validation_percentage=0,
        how_many_training_steps=2000, learning_rate=0.01, hidden_units=512,
        eval_step_interval=2000, optimizer="adam",
    )
    caplog.set_level("INFO")
    accuracy = job.run_retraining(config_lib.from_flat(settings))
    train_accuracy = float(re.findall(r"train accuracy ([\d.]+)%", caplog.text)[-1])
    assert train_accuracy >= 95, caplog.text
    # ~32 test images: by chance, 75% or more has a probability below 0.3%
    # (binomial, n=32, p=0.5); memorised, they would score ~100%.
    assert accuracy is not None and accuracy < 0.75, accuracy



# Run in a fresh Python as retrain.py: half a second into the first call of training's
# in-graph loop (train_steps), a thread says so and sends SIGINT, as Ctrl-C would.
INTERRUPT_IN_THE_LOOP = """
import os, signal, sys, threading
sys.argv = ["retrain.py"] + sys.argv[1:]
import tensorflow as tf
from retrain_suite import final_layer
build, run, loops = final_layer.build_training_graph, tf.compat.v1.Session.run, []

def recording_build(*args, **kwargs):
    graph = build(*args, **kwargs)
    loops.append(graph.train_steps)
    return graph

def interrupt():
    print("sending SIGINT", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGINT)

def interrupting_run(self, fetches, *args, **kwargs):
    if loops and fetches is loops[-1] and not interrupting_run.sent:
        interrupting_run.sent = True
        threading.Timer(0.5, interrupt).start()
    return run(self, fetches, *args, **kwargs)

interrupting_run.sent = False
final_layer.build_training_graph = recording_build
tf.compat.v1.Session.run = interrupting_run
from retrain_suite.cli import commands
commands.retrain()
"""


@pytest.mark.slow
def test_ctrl_c_in_a_long_stretch_between_evaluations_stops_the_run(tmp_path, tiny_module):
    # With a million steps between evaluations, Ctrl-C must not wait for them: Python
    # handles it between Session calls only, so no call may run for long.
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module,
                                how_many_training_steps=10**7, eval_step_interval=10**6)
    log = tmp_path / "log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", INTERRUPT_IN_THE_LOOP,
             *(f"--{k}={v}" for k, v in settings.items() if v is not None)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        while "sending SIGINT" not in log.read_text() and process.poll() is None:
            time.sleep(0.2)
        try:
            # A liveness bound, not a speed: the run without it went on for minutes.
            status = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            status = "still running 20 s after SIGINT"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = log.read_text().strip().splitlines()
    assert "sending SIGINT" in lines, lines[-20:]
    assert status == 130, lines[-20:]
    assert lines[-1].startswith("interrupted: the bottlenecks cached so far in "), lines[-1]
    assert not os.path.exists(settings["output_graph"])


def test_balanced_class_weights_of_10000_classes_are_logged_in_one_short_line():
    weights = np.linspace(0.5, 2.0, 10_000).astype(np.float32)
    weights[:3] = 0  # classes without training images
    line = training.format_weights(weights)
    assert line == "0.500 to 2.000 over the 9997 classes with training images (0 for the 3 without)"
    assert training.format_weights(np.array([0.5, 2.0], np.float32)) == "0.500, 2.000"


def many_class_arrays(classes=2000, dimension=8, seed=0):
    """train's arrays for `classes` classes and a few dozen images: every class
    has two training images; 30 validation and 20 test images."""
    rng = np.random.RandomState(seed)
    centres = rng.normal(0, 1, (classes, dimension)).astype(np.float32)
    arrays = {}
    for split, labels in (("training", np.repeat(np.arange(classes), 2)),
                          ("validation", rng.randint(0, classes, 30)),
                          ("testing", rng.randint(0, classes, 20))):
        labels = np.sort(labels).astype(np.int64)
        vectors = (centres[labels] + rng.normal(0, 0.1, (len(labels), dimension))).astype(np.float32)
        arrays[split] = (vectors, labels, [None] * len(labels))
    return arrays


def train_recording_feeds(tmp_path, monkeypatch, caplog, arrays, classes, **settings_overrides):
    """training.train on arrays -> (result, log lines without timings, largest
    number of bottlenecks fed to one Session call)."""
    settings = {name: config_lib.default(name) for name in config_lib.field_names()}
    settings.update(how_many_training_steps=6, eval_step_interval=3, train_batch_size=16,
                    learning_rate=0.5, random_seed=3, validation_batch_size=5,
                    summaries_dir=str(tmp_path / "logs"),
                    checkpoint_path=str(tmp_path / "out" / "layer"))
    settings.update(settings_overrides)
    fed = []
    run = tf.compat.v1.Session.run

    def recording_run(self, fetches, feed_dict=None, *args, **kwargs):
        fed.extend(len(value) for key, value in (feed_dict or {}).items()
                   if getattr(key, "name", "").startswith("BottleneckInputPlaceholder"))
        return run(self, fetches, feed_dict, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1.Session, "run", recording_run)
    caplog.clear()
    caplog.set_level("INFO")
    config = config_lib.from_flat(settings)
    result = training.train(helpers.prepared_run(arrays, classes), config.training,
                            config.evaluation, config.outputs)
    monkeypatch.setattr(tf.compat.v1.Session, "run", run)
    lines = [re.sub(r"in [\d.]+s \(\d+ steps/s\)", "", r.getMessage()) for r in caplog.records
             if r.name == "absl"]
    return result, lines, max(fed)


def test_final_evaluation_keeps_one_probability_per_image_computed_in_bounded_calls(
    tmp_path, monkeypatch, caplog
):
    classes = 2000
    arrays = many_class_arrays(classes)
    whole, whole_log, whole_fed = train_recording_feeds(
        tmp_path / "whole", monkeypatch, caplog, arrays, classes, keep_best=True)
    # Every set in one call at the default bound (these sets are small) ...
    assert whole_fed == len(arrays["validation"][1])
    # ... and in calls of 7 images when the bound is 7 images' probabilities.
    monkeypatch.setattr(training, "EVALUATION_CELLS", 7 * classes + 6)
    batched, batched_log, batched_fed = train_recording_feeds(
        tmp_path / "batched", monkeypatch, caplog, arrays, classes, keep_best=True)
    assert batched_fed == 7
    # The same choices and scores (the whole validation set's, weighted by each
    # call's images), predictions and confidences.
    assert any(", all 30: " in line for line in whole_log), whole_log
    assert batched_log == whole_log
    assert (batched.steps, batched.kept_step) == (whole.steps, whole.kept_step)
    weights = whole.layer[final_layer.SCOPE + "/weights"]
    biases = whole.layer[final_layer.SCOPE + "/biases"]
    for split in ("validation", "testing"):
        rows, predicted = batched.predictions[split].positions, batched.predictions[split].classes
        np.testing.assert_array_equal(rows, whole.predictions[split].positions)
        np.testing.assert_array_equal(predicted, whole.predictions[split].classes)
        # One float32 per image, not [n, C]: the probability of the predicted class.
        confidences = batched.predictions[split].confidences
        assert confidences.shape == (len(rows),) and confidences.dtype == np.float32
        np.testing.assert_array_equal(confidences, whole.predictions[split].confidences)
        logits = arrays[split][0][rows].astype(np.float64) @ weights + biases
        expected = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_array_equal(predicted, np.argmax(expected, axis=1))
        np.testing.assert_allclose(confidences, expected.max(axis=1), rtol=1e-4)
    # Nothing the result keeps but the layer itself has an axis of the classes.
    for field in dataclasses.fields(batched):
        if field.name == "layer":
            continue
        held = getattr(batched, field.name)
        values = held.values() if isinstance(held, dict) else [held]
        shapes = [np.shape(a) for v in values for a in (v if isinstance(v, tuple) else [v])]
        assert all(classes not in shape for shape in shapes), (field.name, shapes)


def test_progress_lines_show_the_first_each_tenth_a_quiet_stretch_and_the_last():
    now = [0.0]
    progress = training.ProgressLines(1000, clock=lambda: now[0])
    shown = []
    for step in range(10, 1001, 10):
        now[0] += 0.01
        if step == 500:
            now[0] += training.ProgressLines.PROGRESS_SECONDS  # a slow stretch
        if progress.due(step):
            shown.append(step)
    assert shown == [10, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    # A stretch of PROGRESS_SECONDS without a line shows the next evaluation.
    now[0] = 0.0
    slow = training.ProgressLines(10**6, clock=lambda: now[0])
    assert slow.due(1) and not slow.due(2)
    now[0] = training.ProgressLines.PROGRESS_SECONDS
    assert slow.due(3) and not slow.due(4)


def test_training_shows_about_ten_step_lines_at_info_and_every_evaluation_at_debug(
    tmp_path, monkeypatch, caplog
):
    arrays = many_class_arrays(classes=3)
    monkeypatch.setattr(training.ProgressLines, "PROGRESS_SECONDS", 10**6)
    _, lines, _ = train_recording_feeds(tmp_path / "info", monkeypatch, caplog, arrays, 3,
                                        how_many_training_steps=400, eval_step_interval=4)
    shown = [int(re.match(r"Step (\d+)/400", line).group(1)) for line in lines
             if line.startswith("Step ")]
    assert shown == [4] + list(range(40, 401, 40)), lines
    caplog.clear()
    caplog.set_level("DEBUG", logger="absl")  # what --logging_verbosity=DEBUG sets
    config = config_lib.from_flat({**{n: config_lib.default(n) for n in config_lib.field_names()},
                                   "how_many_training_steps": 400, "eval_step_interval": 4,
                                   "summaries_dir": str(tmp_path / "debug" / "logs"),
                                   "checkpoint_path": str(tmp_path / "debug" / "layer")})
    training.train(helpers.prepared_run(arrays, 3), config.training, config.evaluation,
                   config.outputs)
    assert sum(r.getMessage().startswith("Step ") for r in caplog.records) == 100
