"""retrain.py --multi_label end to end with the tiny module, on generated photos of two or
three marks: the run's report, every exported file and its thresholds, label_image's
output, the photos untouched; and a run from a labels CSV."""

import json
import os

import helpers
import numpy as np
import pytest
from multi_label_helpers import make_multi_label_photos, marked_image

from retrain_suite import classifier, export, job, onnx_model, tflite_metadata
from retrain_suite import config as config_lib
from retrain_suite.multi_label import metrics
from retrain_suite.multi_label import stages as ml_stages


def snapshot(folder):
    """{relative path: (bytes, mtime)} of every file under folder."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory, tiny_module):
    """One retrain.py --multi_label run writing every kind of file. -> dict."""
    root = tmp_path_factory.mktemp("multi_label")
    image_dir = str(root / "data")
    truth = make_multi_label_photos(image_dir, count=120, marks=(2, 3))
    before = snapshot(image_dir)
    out = root / "out"
    settings = helpers.retrain_settings(
        root, image_dir, tiny_module, multi_label=True, how_many_training_steps=600,
        validation_percentage=20, testing_percentage=20, eval_step_interval=100,
        eval_report=str(out / "report.json"), saved_model_dir=str(out / "saved_model"),
        tflite_output_file=str(out / "model.tflite"), onnx_output_file=str(out / "model.onnx"),
        report_dir=str(root / "report"),
    )
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    process = helpers.run_command("retrain.py", *args, check=True)
    with open(out / "report.json", encoding="utf-8") as f:
        report = json.load(f)
    return {"settings": settings, "process": process, "report": report, "truth": truth,
            "before": before, "root": root, "image_dir": image_dir}


def test_the_run_reports_multi_label_metrics_and_leaves_the_photos_alone(multi_label_run):
    report, log = multi_label_run["report"], multi_label_run["process"].stderr
    assert report["multi_label"] is True
    assert report["labels"] == ["blue", "green", "red", "yellow"]
    assert all(0 < t < 1 for t in report["thresholds"])
    testing = report["testing"]
    assert testing["mean_average_precision"] >= 0.9, testing
    assert testing["macro_avg"]["f1"] >= 0.8, testing
    assert [c["threshold"] for c in testing["classes"]] == report["thresholds"]
    assert "Test: mean average precision" in log and "exact match" in log
    # One example per photo, though each is filed in two or three folders.
    counted = sum(row["training"] + row["validation"] + row["testing"]
                  for row in report["images_per_class"])
    assert counted == sum(len(labels) for labels in multi_label_run["truth"].values())
    assert snapshot(multi_label_run["image_dir"]) == multi_label_run["before"]
    page = open(os.path.join(multi_label_run["settings"]["report_dir"], "report.html"),
                encoding="utf-8").read()
    assert "mean average precision" in page and "confusion_matrix" not in page


def test_every_exported_file_carries_the_thresholds_and_agrees(multi_label_run):
    settings, report = multi_label_run["settings"], multi_label_run["report"]
    thresholds = np.array(report["thresholds"], np.float32)
    graph_def = helpers.load_graph_def(settings["output_graph"])
    np.testing.assert_array_equal(export.graph_thresholds(graph_def, "final_result"), thresholds)
    with open(settings["tflite_output_file"], "rb") as f:
        np.testing.assert_array_equal(tflite_metadata.packed_thresholds(f.read()), thresholds)
    with open(settings["onnx_output_file"], "rb") as f:
        model = onnx_model.parse(f.read())
    np.testing.assert_allclose(onnx_model.metadata_thresholds(model), thresholds)
    files = report["artifacts"]["files"]
    assert [f["format"] for f in files] == ["frozen graph", "SavedModel", "TFLite (none)", "ONNX"]
    for checked in files:
        assert checked["agreement"] == 1.0, checked
        assert checked["mean_average_precision"] == pytest.approx(
            report["testing"]["mean_average_precision"], abs=0.02), checked


def test_label_image_prints_every_label_above_its_threshold(multi_label_run, tmp_path):
    settings = multi_label_run["settings"]
    rng = np.random.RandomState(5)
    two = str(tmp_path / "two.png")
    helpers.write_image(two, marked_image(("green", "red"), rng), "PNG")
    for model in ([settings["output_graph"], settings["output_labels"]],
                  [settings["tflite_output_file"]]):
        process = helpers.run_command("label_image.py", two, *model, check=True)
        assert sorted(line.split()[0] for line in process.stdout.splitlines()) == [
            "green", "red"], process.stdout


def test_label_image_says_when_no_label_is_above_its_threshold(capsys):
    keep = classifier.above_thresholds(np.array([0.5, 0.9], np.float32))
    results = {0: keep(np.array([0.6, 0.95], np.float32)), 1: keep(np.array([0.4, 0.8], np.float32))}
    classifier.print_results(["a.jpg", "b.jpg"], results, {}, ["cat", "dog"], "text")
    assert capsys.readouterr().out.splitlines() == [
        "a.jpg", "  dog 0.95000", "  cat 0.60000", "b.jpg", f"  {classifier.NO_LABEL}"]


def test_multi_label_recovers_two_mark_photos_that_a_softmax_cannot(multi_label_run, tmp_path):
    # The softmax of a single-label run on the same folders (each photo filed once per
    # label), trained on the same cached bottlenecks, predicts one label per photo.
    import test_multi_label

    settings = dict(multi_label_run["settings"], report_dir="", eval_report="",
                    saved_model_dir="", tflite_output_file="", onnx_output_file="")
    config = config_lib.from_flat(settings)
    dataset, images = ml_stages.scan(config)
    run = job.prepare_run(config, dataset, images)
    sets = {s.name: (s.bottlenecks, s.targets) for s in (run.training, run.validation, run.testing)}
    single = config_lib.from_flat(dict(settings, multi_label=False,
                                       checkpoint_path=str(tmp_path / "ck"),
                                       summaries_dir=str(tmp_path / "logs")))
    softmax = test_multi_label.softmax_on_copies(sets, tmp_path, single)
    labels = run.class_names
    theirs = metrics.evaluate(softmax, run.testing.targets, np.full(len(labels), 0.5), labels,
                              predicted=np.eye(len(labels), dtype=bool)[np.argmax(softmax, 1)])
    ours = multi_label_run["report"]["testing"]
    assert ours["macro_avg"]["f1"] >= theirs["macro_avg"]["f1"] + 0.2, (ours, theirs)
    assert ours["exact_match"] >= 0.5 and theirs["exact_match"] == 0.0, (ours, theirs)
    assert ours["mean_average_precision"] >= theirs["mean_average_precision"] - 0.02


def test_a_run_from_a_labels_csv(tmp_path, tiny_module, caplog):
    truth = make_multi_label_photos(tmp_path / "set", count=40, csv_name="labels.csv")
    csv_path = str(tmp_path / "set" / "labels.csv")
    settings = helpers.retrain_settings(
        tmp_path, str(tmp_path / "set" / "images"), tiny_module, multi_label=True,
        labels_csv=csv_path, report_dir="", eval_report=str(tmp_path / "r.json"),
        how_many_training_steps=100)
    # The CSV is an input: no output may be written over it.
    with pytest.raises(Exception, match="labels_csv") as raised:
        job.run_retraining(config_lib.from_flat(dict(settings, eval_report=csv_path)))
    assert "\n" not in str(raised.value)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    with open(tmp_path / "r.json", encoding="utf-8") as f:
        report = json.load(f)
    assert sorted(report["labels"]) == sorted({label for labels in truth.values() for label in labels})
    assert "40 distinct photos" in caplog.text
