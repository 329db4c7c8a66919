"""retrain_suite.artifact_check: every exported file run on the test set, the accuracy and
"agrees with training" columns, and the --assert_accuracy_at_least gate on the files."""

import json

import numpy as np
import pytest
import tensorflow as tf
from helpers import load_graph_def, make_dataset, retrain_settings, run_command

from retrain_suite import artifact_check, job, reporting
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.images import pipelines as image_pipelines


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory, tiny_module):
    """One in-process run whose final test accuracy is a --test_batch_size sample of 4, with
    a TFLite file, and --assert_accuracy_at_least=1.0, which every file of it just meets."""
    root = tmp_path_factory.mktemp("artifact_check")
    image_dir = make_dataset(root / "data", per_class=20)
    settings = retrain_settings(
        root, image_dir, tiny_module, validation_percentage=15, testing_percentage=25,
        test_batch_size=4, assert_accuracy_at_least=1.0,
        tflite_output_file=str(root / "out" / "model.tflite"), tflite_quantization="none",
        eval_report=str(root / "out" / "report.json"),
    )
    job.run_retraining(config_lib.from_flat(settings))
    with open(settings["eval_report"]) as f:
        report = json.load(f)
    dataset = dataset_lib.build_dataset(image_dir, 15, 25)
    paths = sorted(dataset.full_path(image) for image in dataset.in_split("testing"))
    return {"settings": settings, "report": report, "test_paths": paths}


def decoded_test_images_and_graph_classes(run):
    """The run's test images decoded as in training (float32 [N, 32, 32, 3]) and the class
    its frozen graph gives each (int [N]), from a Session of its own."""
    batches = image_pipelines.image_batches(run["test_paths"], 32, 32, 64)
    images = np.concatenate([pixels for _, _, pixels in batches.as_numpy_iterator()])
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(load_graph_def(run["settings"]["output_graph"]), name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            probabilities = sess.run("final_result:0", {"Placeholder:0": images})
    return images, np.argmax(probabilities, axis=1)


def check_graph(run, images, truth, trained_predictions):
    """artifact_check.check_artifacts on the run's frozen graph, the images in two batches."""
    path = run["settings"]["output_graph"]
    batches = [(part, images[part]) for part in np.array_split(np.arange(len(images)), 2)]
    (result,) = artifact_check.check_artifacts(
        [("frozen graph", path, lambda: artifact_check.GraphRunner(path, "final_result"))],
        batches, truth, trained_predictions,
    )
    return result


def test_a_sampled_test_accuracy_still_checks_every_file_on_every_test_image(sampled_run):
    report, count = sampled_run["report"], len(sampled_run["test_paths"])
    assert report["testing"]["count"] == 4 < count
    files = {row["format"]: row for row in report["artifacts"]["files"]}
    assert set(files) == {"frozen graph", "TFLite (none)"}
    for row in files.values():
        assert row["count"] == count
        # Training predicted only its sample, and the files give the same classes there.
        assert row["agreement"] == 1.0


def test_files_scoring_exactly_the_accuracy_bar_pass_it(sampled_run):
    # The run finished: no file was refused for an accuracy equal to the bar.
    files = sampled_run["report"]["artifacts"]["files"]
    assert [row["accuracy"] for row in files] == [1.0, 1.0]
    assert sampled_run["settings"]["assert_accuracy_at_least"] == 1.0


def test_a_file_passes_a_bar_equal_to_its_accuracy_and_fails_one_just_above(sampled_run):
    images, classes = decoded_test_images_and_graph_classes(sampled_run)
    truth = classes.copy()
    truth[3:10] = (classes[3:10] + 1) % 3  # 7 wrong answers of 10
    result = check_graph(sampled_run, images[:10], truth[:10], {})
    assert result.accuracy == 0.3
    artifact_check.check_accuracy([result], 0.3, "test")  # what --assert_accuracy_at_least=0.3 holds
    with pytest.raises(reporting.AccuracyError, match=r"frozen graph test accuracy 30\.0%"):
        artifact_check.check_accuracy([result], 0.31, "test")


def test_agreement_is_over_the_images_training_predicted_accuracy_over_all(sampled_run):
    images, classes = decoded_test_images_and_graph_classes(sampled_run)
    sample = [1, 4, 11, 15]  # what a --test_batch_size of 4 had training predict
    trained = {p: int(classes[p]) for p in sample}
    trained[11] = (trained[11] + 1) % 3  # training predicted otherwise on one of them
    truth = classes.copy()
    truth[0] = (classes[0] + 1) % 3  # one test image the graph gets wrong, outside the sample
    result = check_graph(sampled_run, images, truth, trained)
    assert result.count == len(images)
    assert result.agreement == 0.75
    assert result.accuracy == (len(images) - 1) / len(images)


def test_agreement_with_training_is_not_accuracy_when_the_test_set_has_mistakes(sampled_run):
    images, classes = decoded_test_images_and_graph_classes(sampled_run)
    truth = classes.copy()
    truth[[2, 5, 9]] = (classes[[2, 5, 9]] + 1) % 3  # three images the classifier gets wrong
    # Training made the same mistakes: the file agrees with it everywhere.
    result = check_graph(sampled_run, images, truth, dict(enumerate(classes.tolist())))
    assert result.accuracy == (len(images) - 3) / len(images)
    assert result.agreement == 1.0


def rerun_files(settings, in_this_process=False, **changes):
    """retrain.py with settings (and changes) as a command line, as a rerun is: a process of
    its own; in_this_process: the same run in this process instead, for a run whose checks
    must not be reused (the rerun that reuses them runs alone, so that only the cache on
    disk can be what it reuses). -> {format: its row of the report's exported files},
    stdout and stderr (None in this process)."""
    settings = dict(settings, **changes)
    if in_this_process:
        job.run_retraining(config_lib.from_flat(settings))
        output = None
    else:
        args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
        process = run_command("retrain.py", *args, check=True)
        output = process.stdout + process.stderr
    with open(settings["eval_report"]) as f:
        rows = json.load(f)["artifacts"]["files"]
    return {row["format"]: row for row in rows}, output


@pytest.mark.slow
def test_a_rerun_reuses_the_check_of_byte_identical_files_and_runs_changed_ones(
        tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, testing_percentage=30,
        tflite_output_file=str(tmp_path / "out" / "model.tflite"),
        eval_report=str(tmp_path / "out" / "report.json"))
    first, _ = rerun_files(settings, in_this_process=True)
    # The same command again, in a process of its own: the same bytes on the same images,
    # nothing run again.
    again, log = rerun_files(settings)
    assert set(again) == set(first) == {"frozen graph", "TFLite (none)"}
    assert "2 of the exported files are byte for byte ones already checked" in log
    assert "(earlier)" in log
    for name, row in again.items():
        assert row["reused"] is True and first[name]["reused"] is False
        for field in ("count", "accuracy", "agreement", "latency_ms", "size_bytes"):
            assert row[field] == first[name][field], (name, field)
    # Another seed trains another layer: other bytes, run again.
    other, _ = rerun_files(settings, in_this_process=True, random_seed=settings["random_seed"] + 1)
    assert [row["reused"] for row in other.values()] == [False, False]
