"""retrain_suite.reporting: the accuracy gate, the final accuracy line, and what a run
writes for the user to read (log tables, TensorBoard pictures), at any number of classes."""

import glob
import io
import json
import os
import types

import numpy as np
import pytest
import tensorflow as tf
from helpers import retrain_settings, write_image
from PIL import Image

from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite import evaluation, job, reporting


def report(accuracy, count=20):
    return {"accuracy": accuracy, "count": count}


def test_accuracy_equal_to_the_gate_passes():
    # "at least": a classifier exactly at the threshold is good enough.
    reporting.check_accuracy({"testing": report(0.9)}, 0.9)
    reporting.check_accuracy({"testing": report(1.0)}, 1.0)
    reporting.check_accuracy({"testing": report(0.0)}, 0.0)


def test_accuracy_below_the_gate_fails_naming_the_set():
    with pytest.raises(reporting.AccuracyError, match=r"test accuracy 85\.0% \(N=20\)"):
        reporting.check_accuracy({"testing": report(0.85)}, 0.9)
    with pytest.raises(reporting.AccuracyError, match="validation accuracy"):
        reporting.check_accuracy({"validation": report(0.5)}, 0.9)


def tensorboard_images(folder, tag):
    """The PNG bytes of every image summary `tag` in a TensorBoard run folder."""
    return [value.image.encoded_image_string
            for path in glob.glob(os.path.join(folder, "events.out.tfevents.*"))
            for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value if value.tag == tag]


def test_a_summary_that_cannot_be_written_is_a_warning_not_the_end_of_the_run(tmp_path, caplog):
    labels = ["a", "b", "c"]
    reports = {}
    for split in ("testing", "validation"):
        reports[split] = evaluation.evaluate([0, 1, 2, 2], [0, 1, 2, 1], labels)
        reports[split]["misclassified"] = []
    settings = retrain_settings(tmp_path, str(tmp_path / "images"), "unused")
    # A file where the test run's folder belongs: TensorBoard cannot write there.
    os.makedirs(settings["summaries_dir"])
    (tmp_path / "logs" / "test").write_text("not a folder")
    caplog.set_level("WARNING")
    # No wrong images: nothing of the run but its class names is read.
    reporting.write_evaluation_summaries(
        types.SimpleNamespace(class_names=labels), reports, settings["summaries_dir"], 7)
    assert "Could not write the testing set's TensorBoard evaluation to " in caplog.text
    # The validation set's pictures, written after the failing test set's, are there.
    (picture,) = tensorboard_images(str(tmp_path / "logs" / "validation"), "confusion_matrix")
    assert Image.open(io.BytesIO(picture)).format == "PNG"


def test_a_run_of_800_classes_of_3_images_exports_with_bounded_pictures_and_tables(
    tmp_path, tiny_module, caplog
):
    # The size at which a picture of 18 pixels per class and side grew past what PIL
    # opens, killing the run after its training, before anything was exported.
    classes = 800
    rng = np.random.RandomState(0)
    for c in range(classes):
        colour = rng.randint(0, 256, 3).astype(np.uint8)
        for i in range(3):
            write_image(str(tmp_path / "data" / f"class{c:03d}" / f"img{i}.png"),
                        np.tile(colour, (8, 8, 1)), "PNG")
    settings = retrain_settings(
        tmp_path, str(tmp_path / "data"), tiny_module, how_many_training_steps=20,
        eval_step_interval=10, validation_percentage=20, testing_percentage=20,
        eval_report=str(tmp_path / "out" / "report.json"),
    )
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    assert os.path.getsize(settings["output_graph"]) > 0
    with open(settings["eval_report"], encoding="utf-8") as f:
        testing = json.load(f)["testing"]
    assert len(testing["classes"]) == classes and testing["confusion_matrix"] is None
    assert sum(n for _, _, n in testing["confusion_counts"]) == testing["count"]
    for run in ("test", "validation"):
        (picture,) = tensorboard_images(os.path.join(settings["summaries_dir"], run),
                                        "confusion_matrix")
        assert max(Image.open(io.BytesIO(picture)).size) < 1500
    (table,) = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("Test accuracy ")]
    assert len(table.splitlines()) < 2 * evaluation.MAX_CLASSES_LISTED + 20
    assert f"... and {classes - evaluation.MAX_CLASSES_LISTED} more classes" in table
    # The counts per class and set: the smallest classes in the log, every class in the report.
    listed = dataset_lib.MAX_CLASSES_LISTED
    (counts,) = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("Images per class and set:")]
    assert len(counts.splitlines()) == listed + 6
    assert counts.splitlines()[-1] == (f"... and {classes - listed} more classes (every class's "
                                       "counts are in the --eval_report JSON).")
    with open(settings["eval_report"], encoding="utf-8") as f:
        per_class = json.load(f)["images_per_class"]
    assert [c["label"] for c in per_class] == [f"class{c:03d}" for c in range(classes)]
    assert all(sum(c[s] for s in dataset_lib.SPLITS) == 3 for c in per_class)
    assert sum(c["testing"] for c in per_class) == testing["count"]
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "absl" and r.levelname == "WARNING"]
    assert len(warnings) <= listed + 5, warnings[listed:]
    assert any(w.startswith("... and ") and f"more warnings about classes: {classes} of the "
               f"{classes} classes have fewer than 20 images" in w for w in warnings), warnings
