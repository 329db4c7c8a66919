"""Fine-tuning (--fine_tune_steps): better than bottleneck training where the module's
random features fall short, never worse, exported whole, resumable, and refused for
modules it cannot train."""

import csv
import json
import logging as std_logging
import os
import re
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import load_graph_def, retrain_settings, run_command, write_image
from test_faults import kill_when

from retrain_suite import (
    classifier,
    dataset,
    export,
    final_layer,
    fine_tuning,
    fine_tuning_checkpoint,
    job,
)
from retrain_suite import config as config_lib
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import make_module
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.dataset import split as split_lib


def tinted_image(label, rng, size=32):
    """uint8 [size, size, 3]: a random grey level, strong pixel noise, and a faint
    red (label 0) or green (label 1) tint.

    The tiny module's features of these images are large and dominated by the
    grey level and the noise: the tests' bottleneck training (learning rate 0.1,
    200 steps) keeps a layer near chance on them, while fine-tuning at 0.02 tunes
    the convolutions to the tint and reaches 100% (5 data and module seeds tried).
    A slower, longer bottleneck training (Adam at 0.001, 2000 steps) also reaches
    100% here: the test shows fine-tuning improving on the bottleneck training it
    starts from, not on the best bottleneck training there could be.
    """
    grey = rng.uniform(0.1, 0.9) * np.ones((size, size, 3)) + rng.normal(0, 0.3, (size, size, 3))
    tint = np.array([0.05, -0.05, 0.0]) * (1 if label == 0 else -1)
    pixels = grey + tint + rng.normal(0, 0.03, (size, size, 3))
    return np.clip(pixels * 255, 0, 255).astype(np.uint8)


def write_tinted_dataset(root, per_class=40, swap_validation_tints=False):
    """Two classes of tinted_image. swap_validation_tints: the validation images (at
    the tests' 25/25 split) get the other class's tint, so a model that learns the
    tint gets them wrong; every other image is the same as without it."""
    rng = np.random.RandomState(0)
    for label, name in enumerate(("reddish", "greenish")):
        for i in range(per_class):
            tint = label
            if swap_validation_tints and split_lib.split_for(f"{name}/img{i}.png", 25, 25) == "validation":
                tint = 1 - label
            write_image(os.path.join(root, name, f"img{i}.png"), tinted_image(tint, rng), "PNG")
    return str(root)


FINE_TUNING = dict(fine_tune_steps=100, fine_tune_eval_interval=25, fine_tune_learning_rate=0.02,
                   fine_tune_batch_size=16)


def settings_for(root, image_dir, module, cache, **overrides):
    settings = retrain_settings(
        root, image_dir, module, validation_percentage=25, testing_percentage=25,
        bottleneck_dir=cache, eval_report=str(root / "out" / "report.json"),
        report_dir=str(root / "report"), **overrides,
    )
    return settings


class _Collect(std_logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_logged(settings, monkeypatch=None):
    """job.run_retraining in this process. -> (log text, fine_tuning.FineTuningResult or None)."""
    tuned = []
    if monkeypatch is not None:
        original = fine_tuning.fine_tune
        monkeypatch.setattr(fine_tuning, "fine_tune",
                            lambda *a, **k: tuned.append(original(*a, **k)) or tuned[-1])
    handler = _Collect()
    std_logging.getLogger("absl").addHandler(handler)
    try:
        job.run_retraining(config_lib.from_flat(settings))
    finally:
        std_logging.getLogger("absl").removeHandler(handler)
    return "\n".join(handler.messages), (tuned[0] if tuned else None)


def cache_state(folder):
    """{path: bytes} of the bottleneck cache's files (not the memos', in checks/, exports/
    and modules/)."""
    state = {}
    for parent, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if f not in memo_lib.KINDS]
        for name in files:
            with open(os.path.join(parent, name), "rb") as f:
                state[os.path.join(parent, name)] = f.read()
    return state


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_module):
    """The tinted dataset trained twice with one cache: bottlenecks only, then fine-tuned."""
    root = tmp_path_factory.mktemp("fine_tuning")
    image_dir = write_tinted_dataset(root / "data")
    cache = str(root / "bottlenecks")
    plain = settings_for(root / "plain", image_dir, tiny_module, cache)
    plain_log, _ = run_logged(plain)
    cached = cache_state(cache)
    tuned = settings_for(root / "tuned", image_dir, tiny_module, cache,
                         saved_model_dir=str(root / "tuned" / "out" / "saved_model"),
                         tflite_output_file=str(root / "tuned" / "out" / "model.tflite"),
                         **FINE_TUNING)
    with pytest.MonkeyPatch.context() as monkeypatch:
        tuned_log, result = run_logged(tuned, monkeypatch)
    return {"root": root, "image_dir": image_dir, "cache": cache, "plain": plain,
            "tuned": tuned, "plain_log": plain_log, "tuned_log": tuned_log, "result": result,
            "cached_before": cached, "cached_after": cache_state(cache)}


def report(settings):
    with open(settings["eval_report"]) as f:
        return json.load(f)


def test_fine_tuning_raises_validation_and_test_accuracy(runs):
    plain, tuned = report(runs["plain"]), report(runs["tuned"])
    assert tuned["validation"]["accuracy"] > plain["validation"]["accuracy"]
    assert tuned["testing"]["accuracy"] >= plain["testing"]["accuracy"] + 0.2
    assert tuned["fine_tuning"]["kept_step"] > 0 and not tuned["fine_tuning"]["diverged"]
    assert "Fine-tuning step 0/100 (the bottleneck-trained model)" in runs["tuned_log"]
    assert "Keeping the fine-tuned model from fine-tuning step" in runs["tuned_log"]
    assert "points over the bottleneck-trained model" in runs["tuned_log"]
    # The exported files (frozen graph, SavedModel, TFLite) are the tuned model: each
    # scores what training measured.
    assert len(tuned["artifacts"]["files"]) == 3
    for artifact in tuned["artifacts"]["files"]:
        assert artifact["agreement"] == 1.0
        assert artifact["accuracy"] == tuned["testing"]["accuracy"]
    # Tuned features would poison the cache: it must be exactly as bottleneck training left it.
    assert runs["cached_after"] == runs["cached_before"]


def test_fine_tuning_curves_are_in_tensorboard(runs):
    folder = os.path.join(runs["tuned"]["summaries_dir"], fine_tuning.TENSORBOARD_RUN)
    points = {}
    for name in os.listdir(folder):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                points.setdefault(value.tag, {})[event.step] = value.simple_value
    assert sorted(points["validation_accuracy"]) == [0, 25, 50, 75, 100]
    assert sorted(points["loss"]) == [25, 50, 75, 100]
    tuned = report(runs["tuned"])
    kept = tuned["fine_tuning"]["kept_step"]
    assert points["validation_accuracy"][kept] == pytest.approx(tuned["validation"]["accuracy"])
    assert points["validation_accuracy"][0] < points["validation_accuracy"][kept]


def test_fine_tuning_history_is_its_logged_evaluations_and_the_reports_curves(runs):
    history, log = runs["result"].history, runs["tuned_log"]
    assert [p.step for p in history] == [0, 25, 50, 75, 100]
    logged = re.findall(r"Fine-tuning step (\d+)/100(?: \(the bottleneck-trained model\))?:"
                        r"(?: loss ([\d.]+),)? validation accuracy ([\d.]+)%, cross entropy "
                        r"([\d.]+)", log)
    assert [int(step) for step, *_ in logged] == [p.step for p in history]
    for p, (_, loss, accuracy, entropy) in zip(history, logged):
        assert (p.train_accuracy, p.train_cross_entropy) == (None, None)
        assert (f"{p.train_loss:.4f}" if p.step else "") == loss
        assert f"{100 * p.validation_accuracy:.1f}" == accuracy
        assert f"{p.validation_cross_entropy:.4f}" == entropy
    with open(os.path.join(runs["tuned"]["report_dir"], "results.csv")) as f:
        rows = [row for row in csv.DictReader(f) if row["phase"] == "fine-tuning"]
    assert [int(row["step"]) for row in rows] == [0, 25, 50, 75, 100]
    assert os.path.exists(os.path.join(runs["tuned"]["report_dir"], "fine_tuning_curves.png"))
    assert not os.path.exists(os.path.join(runs["plain"]["report_dir"], "fine_tuning_curves.png"))


def test_exported_graph_reproduces_the_in_run_probabilities(runs):
    result, settings = runs["result"], runs["tuned"]
    graph_def = load_graph_def(settings["output_graph"])
    split = dataset.build_dataset(runs["image_dir"], 25, 25).in_split("testing")
    images = sorted(split, key=lambda i: (i.label_index, i.path))
    testing = result.predictions["testing"]
    rows, predicted = testing.positions, testing.classes
    paths = [os.path.join(runs["image_dir"], images[r].path) for r in rows]
    classified = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    got = np.array([classified[n] for n in range(len(paths))])
    np.testing.assert_array_equal(np.argmax(got, axis=1), predicted)
    np.testing.assert_allclose(got[np.arange(len(rows)), predicted], testing.confidences,
                               atol=1e-5)
    # The module's weights in the graph are the tuned ones, not the module's own.
    assert result.module_values is not None
    assert constants(settings["output_graph"]) != constants(runs["plain"]["output_graph"])


def test_diverging_fine_tuning_exports_the_bottleneck_trained_model(runs, tiny_module):
    root = runs["root"] / "diverged"
    settings = settings_for(root, runs["image_dir"], tiny_module, runs["cache"],
                            **{**FINE_TUNING, "fine_tune_steps": 10, "fine_tune_eval_interval": 5,
                               "fine_tune_learning_rate": 1e12})
    # A checkpoint of another configuration (the tuned run's) is ignored, not resumed.
    os.makedirs(root / "out")
    shutil.copy(fine_tuning_checkpoint.checkpoint_file(runs["tuned"]["checkpoint_path"]),
                fine_tuning_checkpoint.checkpoint_file(settings["checkpoint_path"]))
    log, _ = run_logged(settings)
    assert "Ignoring the fine-tuning checkpoint" in log and "other flags" in log
    assert "Fine-tuning diverged" in log
    assert "exporting the bottleneck-trained model" in log
    assert report(settings)["fine_tuning"]["kept_step"] == 0
    assert report(settings)["fine_tuning"]["diverged"]
    assert constants(settings["output_graph"]) == constants(runs["plain"]["output_graph"])


def validation_images(image_dir):
    """-> (paths, labels) of the validation images, in the order of the run's arrays."""
    split = dataset.build_dataset(image_dir, 25, 25).in_split("validation")
    images = sorted(split, key=lambda i: (i.label_index, i.path))
    return [os.path.join(image_dir, i.path) for i in images], [i.label_index for i in images]


def validation_scores(graph_def, image_dir):
    """What a frozen graph scores on the validation images.
    -> (probabilities [n, C], accuracy, mean cross entropy)."""
    paths, truth = validation_images(image_dir)
    classified = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    probabilities = np.array([classified[n] for n in range(len(paths))])
    return (probabilities, float(np.mean(np.argmax(probabilities, axis=1) == truth)),
            float(np.mean(-np.log(probabilities[np.arange(len(truth)), truth]))))


def logged_evaluations(log):
    """{fine-tuning step: (validation accuracy text, cross entropy)} from a run's log."""
    return {int(step): (accuracy, float(entropy)) for step, accuracy, entropy in re.findall(
        r"Fine-tuning step (\d+)/\d+[^\n]*?validation accuracy ([\d.]+)%, cross entropy ([\d.]+)",
        log)}


def script_validation_scores(monkeypatch, scores):
    """Make fine-tuning's choice see scores [(accuracy, cross entropy)], one per
    validation evaluation in order (step 0 first): what is best is then up to the
    test. The per-image answers the choice's margin compares (selection.py) agree
    with the scripted accuracy: the first round(accuracy * n) images right, the
    rest wrong. Evaluations past the script (the kept model's, measured for the
    report) are real. -> {step: the real (predictions [n], confidences [n]) of each
    scripted evaluation}."""
    real, scripted, measured = fine_tuning._evaluate, iter(scores), {}

    def evaluate(sess, g, split, rows, truth):
        predicted, accuracy, cross_entropy = real(sess, g, split, rows, truth)
        score = next(scripted, None) if split == "validation" else None
        if score is None:
            return predicted, accuracy, cross_entropy
        measured[int(sess.run(g.step))] = predicted
        right = np.arange(len(truth)) < round(score[0] * len(truth))
        answers = np.where(right, truth, (np.asarray(truth) + 1) % 2)  # two classes
        return ((answers, predicted[1]), *score)

    monkeypatch.setattr(fine_tuning, "_evaluate", evaluate)
    return measured


@pytest.fixture(scope="module")
def peaked(runs, tiny_module):
    """Fine-tuning whose validation score peaks at step 25: then a tie in accuracy
    with a higher cross entropy (step 50), then a lower accuracy (step 75), where
    --early_stopping_patience=2 stops it."""
    settings = settings_for(runs["root"] / "peaked", runs["image_dir"], tiny_module,
                            runs["cache"], early_stopping_patience=2,
                            **{**FINE_TUNING, "fine_tune_steps": 200})
    with pytest.MonkeyPatch.context() as monkeypatch:
        measured = script_validation_scores(
            monkeypatch, [(0.5, 1.0), (0.8, 0.5), (0.8, 0.6), (0.7, 0.1)])
        log, result = run_logged(settings, monkeypatch)
    return {"settings": settings, "log": log, "result": result, "measured": measured}


def test_a_later_worse_evaluation_is_not_the_one_kept(peaked, runs):
    result, settings = peaked["result"], peaked["settings"]
    assert (result.kept_step, report(settings)["fine_tuning"]["kept_step"]) == (25, 25)
    assert "Keeping the fine-tuned model from fine-tuning step 25 of 75" in peaked["log"]
    # The exported graph is the model step 25 evaluated, not the last one (step 75).
    exported, _, _ = validation_scores(load_graph_def(settings["output_graph"]),
                                       runs["image_dir"])
    rows = np.arange(len(exported))

    def as_evaluated(probabilities):  # what _evaluate keeps of them
        predicted = np.argmax(probabilities, axis=1)
        return predicted, probabilities[rows, predicted]

    predicted, confidences = as_evaluated(exported)
    np.testing.assert_array_equal(predicted, peaked["measured"][25][0])
    np.testing.assert_allclose(confidences, peaked["measured"][25][1], atol=1e-5)
    last_predicted, last_confidences = peaked["measured"][75]
    assert (np.any(predicted != last_predicted)
            or np.abs(confidences - last_confidences).max() > 1e-3)


def test_fine_tuning_stops_early_patience_evaluations_after_its_best(peaked):
    log = peaked["log"]
    assert ("Early stopping of fine-tuning at step 75: no better validation score in 2 "
            "evaluations since step 25.") in log
    assert "Fine-tuning step 75/200" in log and "Fine-tuning step 100/200" not in log
    assert peaked["result"].steps == 75
    assert report(peaked["settings"])["fine_tuning"]["steps_trained"] == 75


def test_a_fine_tuned_blip_within_the_margin_keeps_the_bottleneck_trained_model(
        runs, tiny_module):
    """The best fine-tuned evaluation gets one validation image more right than step 0:
    better, but by less than two standard errors of the paired difference."""
    n = len(validation_images(runs["image_dir"])[0])
    settings = settings_for(runs["root"] / "blip", runs["image_dir"], tiny_module, runs["cache"],
                            **{**FINE_TUNING, "fine_tune_steps": 75})
    with pytest.MonkeyPatch.context() as monkeypatch:
        script_validation_scores(monkeypatch, [(10 / n, 1.0), (11 / n, 0.5), (11 / n, 0.6),
                                               (10 / n, 0.7)])
        log, result = run_logged(settings, monkeypatch)
    assert "Fine-tuning step 25/75" in log and "(best so far)" in log
    assert result.kept_step == 0 and report(settings)["fine_tuning"]["kept_step"] == 0
    versus = report(settings)["fine_tuning"]["versus_bottleneck_trained"]
    assert versus["gain"] == pytest.approx(1 / n) and versus["margin"] > 1 / n
    assert not versus["fine_tuned_kept"] and result.versus_start.images == n
    assert "so the bottleneck-trained model is kept" in log
    assert constants(settings["output_graph"]) == constants(runs["plain"]["output_graph"])


def test_fine_tuning_that_only_gets_worse_exports_the_bottleneck_trained_model(
        runs, tiny_module):
    """The validation images carry the other class's tint: the better fine-tuning learns
    the tint, the worse it scores there, and its loss stays finite."""
    root = runs["root"] / "worse"
    image_dir = write_tinted_dataset(root / "data", swap_validation_tints=True)
    plain = settings_for(root / "plain", image_dir, tiny_module, runs["cache"])
    run_logged(plain)
    tuned = settings_for(root / "tuned", image_dir, tiny_module, runs["cache"],
                         **{**FINE_TUNING, "fine_tune_eval_interval": 50})
    log, _ = run_logged(tuned)
    scores = logged_evaluations(log)
    assert sorted(scores) == [0, 50, 100]
    start = float(scores[0][0])
    assert all(float(accuracy) < start for accuracy, _ in (scores[50], scores[100]))
    assert "diverged" not in log and not report(tuned)["fine_tuning"]["diverged"]
    assert "Keeping the bottleneck-trained model (module unchanged)" in log
    assert report(tuned)["fine_tuning"]["kept_step"] == 0
    assert report(tuned)["validation"]["accuracy"] == pytest.approx(start / 100, abs=5e-4)
    assert constants(tuned["output_graph"]) == constants(plain["output_graph"])


@pytest.fixture(scope="module")
def batch_norm_module(tmp_path_factory):
    """A 32x32 module of one convolution, batch normalization and pooling. Its stored
    statistics (mean 0, variance 1) are far from the tinted images' and move half way
    to each batch's at every step trained with training=True (momentum 0.5), so
    inference mode and batch statistics score very differently."""
    network = tf.keras.Sequential([
        tf.keras.Input((32, 32, 3)),
        tf.keras.layers.Conv2D(16, 3, padding="same",
                               kernel_initializer=tf.keras.initializers.GlorotUniform(seed=0)),
        tf.keras.layers.BatchNormalization(momentum=0.5),
        tf.keras.layers.ReLU(),
        tf.keras.layers.GlobalAveragePooling2D(),
    ])
    path = str(tmp_path_factory.mktemp("modules") / "batch_norm")
    make_module.save(make_module._FeatureVector(network, 32, 32, False), path)
    return path


def test_with_batch_norm_trained_each_logged_validation_score_is_the_exported_graphs(
        runs, batch_norm_module, tmp_path, monkeypatch):
    settings = settings_for(tmp_path, runs["image_dir"], batch_norm_module,
                            str(tmp_path / "bottlenecks"), keep_best=False,
                            **{**FINE_TUNING, "fine_tune_steps": 4, "fine_tune_eval_interval": 2,
                               "fine_tune_batch_norm": True})
    evaluated = {}  # step: every variable's value, as each evaluation saves them
    write_checkpoint = fine_tuning_checkpoint.write

    def spy(path, fingerprint, step, current, *rest):
        evaluated[step] = current
        write_checkpoint(path, fingerprint, step, current, *rest)

    monkeypatch.setattr(fine_tuning_checkpoint, "write", spy)
    log, result = run_logged(settings, monkeypatch)
    logged = logged_evaluations(log)
    assert sorted(logged) == sorted(evaluated) == [0, 2, 4]
    with tf.Graph().as_default():
        names = [v.op.name for v in module_lib.load(batch_norm_module).variables]
    assert any("moving" in name for name in names)
    for step, values in evaluated.items():
        graph_def = export.frozen_graph(
            batch_norm_module, 32, final_layer.LayerSpec(2),
            {name: values[name] for name in result.layer},
            module_values=[values[name] for name in names])
        _, accuracy, cross_entropy = validation_scores(graph_def, runs["image_dir"])
        assert f"{100 * accuracy:.1f}" == logged[step][0], step
        assert cross_entropy == pytest.approx(logged[step][1], abs=2e-4), step
    # The moving statistics trained are exported: the file scores what step 4 logged.
    assert result.kept_step == 4
    _, accuracy, cross_entropy = validation_scores(
        load_graph_def(settings["output_graph"]), runs["image_dir"])
    assert (f"{100 * accuracy:.1f}", cross_entropy) == (
        logged[4][0], pytest.approx(logged[4][1], abs=2e-4))


@pytest.mark.parametrize("kind", ["fifo", "damaged"])
def test_a_fifo_or_damaged_fine_tuning_checkpoint_is_ignored_not_waited_on(runs, tiny_module, kind):
    root = runs["root"] / f"checkpoint_{kind}"
    settings = settings_for(root, runs["image_dir"], tiny_module, runs["cache"],
                            **{**FINE_TUNING, "fine_tune_steps": 2, "fine_tune_eval_interval": 2})
    path = fine_tuning_checkpoint.checkpoint_file(settings["checkpoint_path"])
    os.makedirs(os.path.dirname(path))
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 not the rest of a zip file")
    # Were the FIFO waited on, this writer would end the wait (with no bytes) after a
    # minute, and the test would fail on the reason instead of hanging.
    release = threading.Timer(60, release_fifo, [path])
    release.start()
    try:
        log, _ = run_logged(settings)
    finally:
        release.cancel()
    reason = "not a regular file (a FIFO)" if kind == "fifo" else "cannot be read"
    assert "Ignoring the fine-tuning checkpoint" in log and reason in log
    assert report(settings)["fine_tuning"]["steps_trained"] == 2
    with open(path, "rb") as f:  # replaced by this run's own checkpoint
        assert f.read(2) == b"PK"


def release_fifo(path):
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # No reader waits on it (or it is no FIFO now): nothing to release.
        pass


def constants(path):
    """Every constant of a frozen graph (module weights and final layer), as sorted bytes."""
    return sorted((node.attr["dtype"].type, node.attr["value"].tensor.SerializeToString())
                  for node in load_graph_def(path).node if node.op == "Const")


def cli_args(settings):
    return [f"--{name}={value}" for name, value in settings.items() if value is not None]


@pytest.mark.slow
def test_killed_fine_tuning_resumes_to_the_uninterrupted_result(runs, tiny_module):
    settings = settings_for(runs["root"] / "killed", runs["image_dir"], tiny_module, runs["cache"],
                            **FINE_TUNING)
    settings["eval_report"] = None
    path = fine_tuning_checkpoint.checkpoint_file(settings["checkpoint_path"])
    # Step 25 is logged before its checkpoint is written: killed on the log line
    # alone, the run could leave only step 0's, and the rerun would start over.
    kill_when(cli_args(settings), lambda log: "Fine-tuning step 25/100" in log
              and (checkpoint_step(path) or 0) >= 25)
    killed_at = checkpoint_step(path)  # 25, unless this machine stalled the poll
    assert 0 < killed_at < 100
    finished = run_command("retrain.py", *cli_args(settings), check=True).stderr
    assert f"Resuming fine-tuning from step {killed_at} " in finished
    assert "Fine-tuning step 0/100" not in finished
    assert f"Fine-tuning step {killed_at}/100" not in finished
    assert f"Fine-tuning step {killed_at + 25}/100" in finished
    split = dataset.build_dataset(runs["image_dir"], 25, 25).in_split("testing")
    images = sorted(split, key=lambda i: (i.label_index, i.path))
    rows = runs["result"].predictions["testing"].positions
    paths = [os.path.join(runs["image_dir"], images[r].path) for r in rows]
    # The uninterrupted run's exported probabilities (its in-run ones: see
    # test_exported_graph_reproduces_the_in_run_probabilities).
    size = classifier.Preprocessing(height=32, width=32)
    expected = classifier.classify(load_graph_def(runs["tuned"]["output_graph"]), paths, size)
    classified = classifier.classify(load_graph_def(settings["output_graph"]), paths, size)
    np.testing.assert_allclose(np.array([classified[n] for n in range(len(paths))]),
                               np.array([expected[n] for n in range(len(paths))]), atol=1e-6)


def checkpoint_step(path):
    """The step of the fine-tuning checkpoint at path; None while there is none.

    It is written under another name and renamed, so what is there is whole."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            return json.loads(str(stored["meta"]))["step"]
    except FileNotFoundError:
        return None


def write_untrainable_module(path, listed_variables):
    """A module called with training=, whose weights are constants (listed_variables
    False: like one frozen from a GraphDef), or variables whose call takes no
    training argument (listed_variables True)."""
    root = tf.train.Checkpoint()
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32)
    if listed_variables:
        weights = tf.Variable(tf.ones([3, 8]))
        root.weights = weights
        root.variables = [weights]
        root.trainable_variables = [weights]
        root.__call__ = tf.function(lambda images: tf.reduce_mean(images, [1, 2]) @ weights,
                                    input_signature=[spec])
    else:
        call = tf.function(lambda images, training=False: tf.reduce_mean(images, [1, 2]) @ tf.ones([3, 8]))
        for training in (False, True):
            call.get_concrete_function(spec, training=training)
        root.__call__ = call
        root.variables, root.trainable_variables = [], []
    tf.saved_model.save(root, path)
    return path


@pytest.mark.parametrize("listed_variables, message", [
    (False, "lists no trainable variables"),
    (True, "cannot be called with training=True"),
])
def test_a_module_that_cannot_be_fine_tuned_is_refused_before_any_work(
        tmp_path, runs, listed_variables, message):
    module = write_untrainable_module(str(tmp_path / "module"), listed_variables)
    cache = str(tmp_path / "bottlenecks")
    settings = settings_for(tmp_path, runs["image_dir"], module, cache, **FINE_TUNING)
    with pytest.raises(module_lib.ModuleError) as error:
        job.run_retraining(config_lib.from_flat(settings))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not os.path.exists(cache)


def test_fine_tuning_needs_validation_images(tmp_path, runs, tiny_module):
    settings = settings_for(tmp_path, runs["image_dir"], tiny_module, str(tmp_path / "cache"),
                            **FINE_TUNING)
    settings["validation_percentage"] = 0
    with pytest.raises(config_lib.UsageError, match="needs validation images"):
        job.run_retraining(config_lib.from_flat(settings))
