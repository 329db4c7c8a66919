"""End to end: evaluation reports, TensorBoard pictures, early stopping, the accuracy
assert, and the training options through export and label_image."""

import glob
import io
import json
import logging as std_logging
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    final_layer_constants,
    load_graph_def,
    make_dataset,
    probabilities_from_bottlenecks,
    retrain_settings,
    run_command,
)
from PIL import Image

from retrain_suite import classifier, final_layer, job, reporting, schedules
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import compute
from retrain_suite.dataset import split as split_lib


def names_in_split(label, split, count, settings, prefix="extra"):
    """File names that put an image of class folder `label` into `split`."""
    names = []
    for i in range(10000):
        name = f"{prefix}{i}.png"
        if split_lib.split_for(f"{label}/{name}", settings["validation_percentage"],
                               settings["testing_percentage"]) == split:
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError("not enough names")


def events(folder):
    """{tag: [(step, Summary.Value)]} from every event file of a TensorBoard run folder."""
    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_module):
    """One run with most training options, an eval report, and two wrong test images."""
    root = tmp_path_factory.mktemp("evaluated")
    image_dir = make_dataset(root / "data", per_class=16)
    settings = retrain_settings(
        root, image_dir, tiny_module, testing_percentage=25, validation_percentage=15,
        eval_report=str(root / "out" / "report.json"), hidden_units=16, dropout=0.3,
        l2_regularization=0.0001, label_smoothing=0.05, sampling="uniform",
        learning_rate_schedule="cosine", assert_accuracy_at_least=0.5,
        saved_model_dir=str(root / "out" / "saved_model"),
    )
    # Red images filed under green, in the testing set: they must come out wrong.
    for name in names_in_split("green", "testing", 2, settings, "mislabelled"):
        shutil.copy(os.path.join(image_dir, "red", "img1.png"), os.path.join(image_dir, "green", name))
    handler = _Collect()
    std_logging.getLogger("absl").addHandler(handler)
    try:
        accuracy = job.run_retraining(config_lib.from_flat(settings))
    finally:
        std_logging.getLogger("absl").removeHandler(handler)
    return {"settings": settings, "accuracy": accuracy, "log": "\n".join(handler.messages),
            "image_dir": image_dir}


class _Collect(std_logging.Handler):
    """Keeps the log messages of a module-scoped run (caplog is per test)."""

    def __init__(self):
        super().__init__(std_logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_eval_report_json_matches_the_logged_tables(evaluated):
    settings = evaluated["settings"]
    with open(settings["eval_report"], encoding="utf-8") as f:
        report = json.load(f)
    assert report["labels"] == ["blue", "green", "red"]
    testing = report["testing"]
    assert testing["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert testing["accuracy"] < 1.0
    matrix = np.array(testing["confusion_matrix"])
    assert matrix.sum() == testing["count"] and np.trace(matrix) / matrix.sum() == pytest.approx(
        testing["accuracy"]
    )
    assert [c["support"] for c in testing["classes"]] == matrix.sum(axis=1).tolist()
    assert matrix[1, 2] >= 2  # the red images filed under green
    wrong = {m["image"]: m for m in testing["misclassified"]}
    assert len(wrong) == matrix.sum() - np.trace(matrix)
    assert all(m["true"] == "green" and m["predicted"] == "red"
               for path, m in wrong.items() if "mislabelled" in path)
    # A mistake's confidence is the probability of the wrong class it was given: at least
    # 1/3 (3 classes) since that class won, and at most 1.
    assert all(1 / 3 <= m["confidence"] <= 1 for m in wrong.values())
    assert report["validation"]["count"] > 0 and report["steps_trained"] == 200
    log = evaluated["log"]
    assert f"Test accuracy {100 * testing['accuracy']:.1f}% (N={testing['count']})" in log
    assert "Test confusion matrix (rows: true class, columns: predicted class):" in log
    assert "Validation confusion matrix" in log
    assert not glob.glob(os.path.join(os.path.dirname(settings["eval_report"]), "*.tmp-*"))


def test_tensorboard_test_run_has_confusion_matrix_per_class_accuracy_and_wrong_images(evaluated):
    logs = evaluated["settings"]["summaries_dir"]
    test = events(os.path.join(logs, "test"))
    assert {"accuracy", "confusion_matrix", "misclassified", "per_class_accuracy/blue",
            "per_class_accuracy/green", "per_class_accuracy/red"} <= set(test)
    ((step, green),) = test["per_class_accuracy/green"]
    assert step == 200 and green.simple_value < 1.0
    ((_, grid),) = test["misclassified"]
    picture = Image.open(io.BytesIO(grid.image.encoded_image_string))
    assert picture.format == "PNG" and picture.size == (grid.image.width, grid.image.height)
    ((_, matrix),) = test["confusion_matrix"]
    assert Image.open(io.BytesIO(matrix.image.encoded_image_string)).format == "PNG"
    validation = events(os.path.join(logs, "validation"))
    assert {"confusion_matrix", "per_class_accuracy/red", "accuracy"} <= set(validation)
    train = events(os.path.join(logs, "train"))
    assert {"loss", "learning_rate", "final_layer/hidden_weights"} <= set(train)


def test_learning_rate_in_tensorboard_follows_the_schedule(evaluated):
    train = events(os.path.join(evaluated["settings"]["summaries_dir"], "train"))
    rates = {step: value.simple_value for step, value in train["learning_rate"]}
    assert sorted(rates) == [50, 100, 150, 200]
    for step, rate in rates.items():
        # Step s trains with the rate for s - 1 steps already taken.
        assert rate == pytest.approx(schedules.learning_rate_at("cosine", step - 1, 0.1, 200), rel=1e-5)


def test_hidden_layer_and_dropout_export_gives_the_cached_bottleneck_probabilities(
    evaluated, tiny_module
):
    settings = evaluated["settings"]
    dataset = dataset_lib.build_dataset(
        evaluated["image_dir"], settings["validation_percentage"], settings["testing_percentage"]
    )
    paths = [dataset.full_path(image) for image in dataset.in_split("training")[:5]]
    cached = compute.compute_bottlenecks(paths, tiny_module, settings["bottleneck_dir"])
    assert cached.reused == len(paths)
    graph_def = load_graph_def(settings["output_graph"])
    names = {node.name for node in graph_def.node}
    assert "final_retrain_ops/hidden_weights" in names
    assert not [name for name in names if "dropout" in name.lower()]
    through_label_image = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    through_cache = probabilities_from_bottlenecks(graph_def, cached.vectors)
    for i in range(len(paths)):
        np.testing.assert_allclose(through_label_image[i], through_cache[i], atol=1e-5)
    served = tf.saved_model.load(settings["saved_model_dir"]).signatures["serving_default"]
    assert served(image=tf.zeros([2, 32, 32, 3]))["prediction"].shape == (2, 3)


def test_passing_assert_logs_and_exports(evaluated):
    assert "Test accuracy" in evaluated["log"] and "meets --assert_accuracy_at_least=0.5" in evaluated["log"]
    assert os.path.exists(evaluated["settings"]["output_graph"])


def test_training_options_reach_the_training_graph(dataset_dir, tiny_module, tmp_path, monkeypatch):
    seen = {}
    build = final_layer.build_training_graph

    def spy(dimension, spec, training, loss_settings=None, batch_source=None, stream=None):
        seen.update(spec=spec, training=training, loss_settings=loss_settings)
        return build(dimension, spec, training, loss_settings, batch_source, stream)

    monkeypatch.setattr(final_layer, "build_training_graph", spy)
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, how_many_training_steps=10, eval_step_interval=10,
        hidden_units=8, class_weighting="balanced", label_smoothing=0.1, l2_regularization=0.5,
        sampling="uniform",
    )
    job.run_retraining(config_lib.from_flat(settings))
    assert seen["spec"].hidden_units == 8 and seen["training"].sampling == "uniform"
    loss = seen["loss_settings"]
    assert loss.label_smoothing == 0.1 and loss.l2_regularization == 0.5
    assert loss.class_weights is not None and len(loss.class_weights) == 3


def mislabel_validation(image_dir, settings):
    """Give every validation image the content of another class's image: a layer that
    learns the classes gets them all wrong, more confidently at every evaluation."""
    dataset = dataset_lib.build_dataset(
        image_dir, settings["validation_percentage"], settings["testing_percentage"]
    )
    validation = dataset.in_split("validation")
    assert len(validation) >= 3
    donor = {label: next(i for i in dataset.in_split("training") if i.label != label)
             for label in dataset.labels}
    for image in validation:
        shutil.copy(dataset.full_path(donor[image.label]), dataset.full_path(image))


def test_early_stopping_stops_and_exports_the_best_layer(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, validation_percentage=25, testing_percentage=0,
        early_stopping_patience=2, eval_step_interval=10, intermediate_store_frequency=10,
        how_many_training_steps=200, eval_report=str(tmp_path / "report.json"),
        validation_batch_size=3,
    )
    mislabel_validation(image_dir, settings)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    # The logged sample is 3 images; the choice is scored on all of them.
    assert re.search(r"validation accuracy \d+\.\d% \(N=3\), all \d+: ", caplog.text)
    stopped = int(re.search(r"Early stopping at step (\d+)", caplog.text).group(1))
    kept = int(re.search(r"Keeping the final layer from step (\d+) of (\d+)", caplog.text).group(1))
    assert stopped == kept + 2 * 10 and stopped < 200
    assert f"Step {stopped + 10}/200" not in caplog.text
    with open(settings["eval_report"], encoding="utf-8") as f:
        report = json.load(f)
    assert (report["steps_trained"], report["kept_step"]) == (stopped, kept)
    folder = settings["intermediate_output_graphs_dir"]

    def weights(path):
        for node in load_graph_def(path).node:
            if node.name == "final_retrain_ops/weights":
                return tf.make_ndarray(node.attr["value"].tensor)

    exported = weights(settings["output_graph"])
    np.testing.assert_array_equal(exported, weights(os.path.join(folder, f"intermediate_{kept}.pb")))
    assert not np.array_equal(exported, weights(os.path.join(folder, f"intermediate_{stopped}.pb")))
    # Every later evaluation was worse on the whole validation set.
    graph_def = load_graph_def(settings["output_graph"])
    dataset = dataset_lib.build_dataset(image_dir, 25, 0)
    paths = [dataset.full_path(i) for i in dataset.in_split("validation")]
    truth = [i.label_index for i in dataset.in_split("validation")]

    def validation_cross_entropy(graph):
        probabilities = classifier.classify(graph, paths, classifier.Preprocessing(height=32, width=32))
        return -np.mean([np.log(probabilities[n][t]) for n, t in enumerate(truth)])

    for step in range(kept + 10, stopped + 1, 10):
        later = load_graph_def(os.path.join(folder, f"intermediate_{step}.pb"))
        assert validation_cross_entropy(later) > validation_cross_entropy(graph_def)


def test_without_keep_best_the_last_layer_is_exported(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, validation_percentage=25, testing_percentage=0,
        keep_best=False, how_many_training_steps=40, eval_step_interval=10,
        eval_report=str(tmp_path / "report.json"),
    )
    mislabel_validation(image_dir, settings)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    assert "Keeping the final layer" not in caplog.text
    with open(settings["eval_report"], encoding="utf-8") as f:
        assert json.load(f)["kept_step"] == 40


def test_early_stopping_without_keep_best_exports_the_last_layer(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, validation_percentage=25, testing_percentage=0,
        keep_best=False, early_stopping_patience=2, eval_step_interval=10,
        intermediate_store_frequency=10, how_many_training_steps=200,
        eval_report=str(tmp_path / "report.json"),
    )
    mislabel_validation(image_dir, settings)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    stopped, best = map(int, re.search(
        r"Early stopping at step (\d+): no better validation score in 2 evaluations since "
        r"step (\d+)", caplog.text).groups())
    assert stopped == best + 2 * 10 and stopped < 200
    assert "Keeping the final layer" not in caplog.text
    with open(settings["eval_report"], encoding="utf-8") as f:
        report = json.load(f)
    assert (report["steps_trained"], report["kept_step"]) == (stopped, stopped)
    exported = final_layer_constants(settings["output_graph"])
    folder = settings["intermediate_output_graphs_dir"]
    last = final_layer_constants(os.path.join(folder, f"intermediate_{stopped}.pb"))
    best_layer = final_layer_constants(os.path.join(folder, f"intermediate_{best}.pb"))
    assert exported.keys() == last.keys()
    for name in exported:
        np.testing.assert_array_equal(exported[name], last[name])
    assert any(not np.array_equal(exported[n], best_layer[n]) for n in exported)


def test_exponential_schedule_accepts_a_decay_of_one(dataset_dir, tiny_module, tmp_path):
    # Documented as in (0, 1]: 1 is the schedule that keeps the base rate.
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, how_many_training_steps=20, eval_step_interval=10,
        learning_rate_schedule="exponential", learning_rate_decay=1.0,
    )
    job.run_retraining(config_lib.from_flat(settings))
    train = events(os.path.join(settings["summaries_dir"], "train"))
    rates = {step: value.simple_value for step, value in train["learning_rate"]}
    assert sorted(rates) == [10, 20]
    assert all(rate == pytest.approx(0.1) for rate in rates.values())


def test_failed_assert_exits_with_both_numbers_and_exports_nothing(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, validation_percentage=25, testing_percentage=0,
        how_many_training_steps=30, eval_step_interval=10, assert_accuracy_at_least=0.9,
        saved_model_dir=str(tmp_path / "out" / "saved_model"),
        eval_report=str(tmp_path / "out" / "report.json"),
    )
    mislabel_validation(image_dir, settings)
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    process = run_command("retrain.py", *args)
    assert process.returncode == 1
    last = process.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: validation accuracy \d+\.\d% \(N=\d+\) is below "
        r"--assert_accuracy_at_least=0\.9 \(90\.0%\); nothing was exported\.", last
    ), last
    assert "Traceback" not in process.stderr
    for output in ("output_graph", "output_labels", "saved_model_dir"):
        assert not os.path.exists(settings[output]), output
    assert os.path.exists(settings["eval_report"])  # the report says what went wrong


def test_assert_uses_the_test_set_when_there_is_one(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, testing_percentage=25, how_many_training_steps=20,
        eval_step_interval=10, assert_accuracy_at_least=1.0, learning_rate=1e-6,
    )
    with pytest.raises(reporting.AccuracyError, match=r"^test accuracy .* is below"):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["output_graph"])
    assert not os.path.exists(settings["output_labels"])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"dropout": 1.0}, r"--dropout=1.0 must be in \[0, 1\)"),
        ({"dropout": -0.1}, "--dropout"),
        ({"label_smoothing": 1.5}, "--label_smoothing"),
        ({"hidden_units": -1}, "--hidden_units"),
        ({"early_stopping_patience": -3}, "--early_stopping_patience=-3 must be 0 or positive"),
        ({"l2_regularization": -1.0}, "--l2_regularization"),
        ({"assert_accuracy_at_least": 90}, r"--assert_accuracy_at_least=90 must be a fraction"),
        ({"assert_accuracy_at_least": -0.1}, "--assert_accuracy_at_least"),
        ({"learning_rate_decay": 0.0, "learning_rate_schedule": "exponential"}, "--learning_rate_decay"),
        ({"decay_steps": -1, "learning_rate_schedule": "exponential"}, "--decay_steps"),
        ({"decay_steps": 100}, "--decay_steps applies only to --learning_rate_schedule=exponential"),
        ({"learning_rate_decay": 0.5, "learning_rate_schedule": "cosine"}, "--learning_rate_decay"),
        ({"early_stopping_patience": 2, "validation_percentage": 0}, "needs validation images"),
        ({"assert_accuracy_at_least": 0.5, "validation_percentage": 0, "testing_percentage": 0},
         "needs test or validation images"),
    ],
)
def test_unusable_training_flags_are_refused_before_any_work(
    dataset_dir, tiny_module, tmp_path, override, message
):
    settings = retrain_settings(tmp_path, dataset_dir, tiny_module)
    settings.update(override)
    with pytest.raises(config_lib.UsageError, match=message) as raised:
        job.run_retraining(config_lib.from_flat(settings))
    assert "\n" not in str(raised.value)
    assert not os.path.exists(settings["bottleneck_dir"])
    assert not os.path.exists(settings["output_graph"])
