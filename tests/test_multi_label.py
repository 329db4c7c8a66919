"""retrain_suite.multi_label without a module: the threshold rule, the metrics, the labels
CSV and its refusals, labels from copies in several folders, the flags refused with
--multi_label, and training on in-memory synthetic bottlenecks against a softmax."""

import dataclasses
import json
import os

import helpers
import numpy as np
import pytest

from retrain_suite import (
    classifier,
    final_layer,
    onnx_model,
    output_paths,
    run_data,
    tflite_metadata,
    training,
)
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.multi_label import labels as labels_lib
from retrain_suite.multi_label import metrics, options
from retrain_suite.multi_label import thresholds as thresholds_lib
from retrain_suite.multi_label import training as ml_training

# --- the threshold rule ---------------------------------------------------------------


@pytest.mark.parametrize("scores, truth, expected", [
    # Separable: the middle of the gap between the last "no" and the first "yes".
    ([0.1, 0.2, 0.6, 0.9], [0, 0, 1, 1], 0.4),
    # The best F1 (0.8) says yes to everything: the range (0, 0.2], its middle.
    ([0.2, 0.5, 0.8], [1, 0, 1], 0.1),
    # F1 2/3 on (0.5, 0.9] and on (0, 0.2]: the wider range wins.
    ([0.9, 0.5, 0.4, 0.2], [1, 0, 0, 1], 0.7),
    # F1 2/3 on (0.5, 0.75] and (0, 0.25], equally wide: the lower one.
    ([0.75, 0.5, 0.375, 0.25], [1, 0, 0, 1], 0.125),
    # No validation image has the class: no F1 to measure.
    ([0.3, 0.9], [0, 0], 0.5),
    # Every score the same: the only yes-to-all range, (0, 0.6].
    ([0.6, 0.6, 0.6], [1, 0, 1], 0.3),
])
def test_the_threshold_is_the_middle_of_the_widest_best_f1_range(scores, truth, expected):
    assert thresholds_lib.choose_threshold(scores, np.array(truth, bool)) == pytest.approx(expected)


def test_thresholds_are_inside_zero_one_whatever_the_scores():
    rng = np.random.RandomState(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        scores = rng.choice([0.0, 1.0, 0.5, rng.rand()], n)
        truth = rng.rand(n) < 0.5
        t = thresholds_lib.choose_threshold(scores, truth)
        assert 0 < t < 1, (scores, truth, t)


def test_thresholds_are_chosen_per_class():
    scores = np.array([[0.1, 0.9], [0.9, 0.1], [0.8, 0.2]], np.float32)
    targets = np.array([[0, 1], [1, 0], [1, 0]], np.float32)
    chosen = thresholds_lib.choose_thresholds(scores, targets)
    assert chosen.dtype == np.float32
    np.testing.assert_allclose(chosen, [0.45, 0.55], rtol=1e-6)


# --- the metrics ----------------------------------------------------------------------


def test_average_precision_by_hand():
    # Hits at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert metrics.average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx(5 / 6)
    # Equal scores are one step: precision 1/2 at full recall.
    assert metrics.average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert metrics.average_precision([0.5, 0.2], [False, False]) is None


def test_evaluate_counts_exact_matches_and_per_class_ratios():
    labels = ["a", "b", "c"]
    scores = np.array([[0.9, 0.8, 0.1],    # {a, b}: right
                       [0.9, 0.1, 0.1],    # {a}, truth {a, b}: b missed
                       [0.1, 0.1, 0.1],    # {}: right (no labels)
                       [0.1, 0.7, 0.1]])   # {b}, truth {}: b wrongly given
    targets = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    report = metrics.evaluate(scores, targets, np.full(3, 0.5), labels)
    assert report["exact_match"] == pytest.approx(0.5)
    a, b, c = report["classes"]
    assert (a["precision"], a["recall"], a["f1"]) == (1.0, 1.0, 1.0)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert (c["precision"], c["recall"], c["f1"], c["average_precision"]) == (None, None, None,
                                                                              None)
    # mAP over the classes that occur: a (1.0) and b (a hit at rank 1, then one in the tied
    # group of 0.1 at ranks 3-4: precision 2/4 there): (1 + 2/4) / 2.
    assert report["mean_average_precision"] == pytest.approx((1 + 0.75) / 2)
    assert report["micro_avg"]["f1"] == pytest.approx(2 * 3 / (4 + 4))
    text = metrics.format_report("Test", report)
    assert "exact match 50.0%" in text and "(macro average)" in text


def test_the_log_table_is_bounded_at_many_classes():
    labels = [f"c{i}" for i in range(100)]
    rng = np.random.RandomState(0)
    report = metrics.evaluate(rng.rand(20, 100), rng.rand(20, 100) < 0.3, np.full(100, 0.5),
                              labels)
    lines = metrics.format_report("Test", report).splitlines()
    assert len(lines) < dataset_lib.MAX_CLASSES_LISTED + 8
    assert "70 more classes" in lines[-1]


# --- labels from a CSV ----------------------------------------------------------------


def photos(root, names):
    """Placeholder image files of distinct bytes (nothing here decodes them)."""
    for n, name in enumerate(names):
        helpers.touch(os.path.join(root, *name.split("/")), f"photo {n}".encode())
    return str(root)


def write_csv(path, text, encoding="utf-8"):
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return str(path)


def test_a_csv_gives_each_photo_its_labels(tmp_path):
    image_dir = photos(tmp_path / "images", ["a/1.jpg", "a/2.jpg", "b/3.png", "b/4.png"])
    csv_path = write_csv(tmp_path / "labels.csv", "\ufeffPath, Labels\n"
                         "a/1.jpg,beach;dog\n"
                         "./a/2.jpg, dog ;; \n"      # trimmed, empty pieces ignored
                         '"b/3.png","city;beach"\n'
                         "b/4.png,\n")               # no labels: a negative example
    found = labels_lib.read_labels_csv(image_dir, csv_path, ";")
    assert found == {"a/1.jpg": ("beach", "dog"), "a/2.jpg": ("dog",),
                     "b/3.png": ("beach", "city"), "b/4.png": ()}
    dataset = labels_lib.build_multi_label_dataset(image_dir, (0, 0), csv_path)
    assert dataset.labels == ["beach", "city", "dog"]
    assert dataset.label_sets["b/4.png"] == ()
    negative = next(i for i in dataset.images if i.path == "b/4.png")
    assert (negative.label, negative.label_index) == ("", -1)
    counts = dataset_lib.counts_by_class(dataset)
    assert {label: c["training"] for label, c in counts.items()} == {"beach": 2, "city": 1,
                                                                     "dog": 2}


def test_the_delimiter_is_a_flag(tmp_path):
    image_dir = photos(tmp_path / "images", ["a/1.jpg"])
    csv_path = write_csv(tmp_path / "labels.csv", "path,labels\na/1.jpg,x|y\n")
    assert labels_lib.read_labels_csv(image_dir, csv_path, "|") == {"a/1.jpg": ("x", "y")}


def test_copies_named_in_a_csv_are_one_photo_with_every_label(tmp_path):
    image_dir = photos(tmp_path / "images", ["a/1.jpg", "b/2.jpg"])
    helpers.touch(os.path.join(image_dir, "b", "copy.jpg"), b"photo 0")  # a copy of a/1.jpg
    csv_path = write_csv(tmp_path / "l.csv", "path,labels\na/1.jpg,x\nb/copy.jpg,y\nb/2.jpg,y\n")
    dataset = labels_lib.build_multi_label_dataset(image_dir, (0, 0), csv_path)
    assert dataset.label_sets == {"a/1.jpg": ("x", "y"), "b/2.jpg": ("y",)}


REFUSED_ROWS = {
    "no header": ("a/1.jpg,x\n", "first row must be the header"),
    "absolute": ("path,labels\n/etc/passwd.jpg,x\n", "not relative"),
    "dotdot": ("path,labels\n../outside.jpg,x\n", "outside.jpg' leads outside"),
    "missing": ("path,labels\na/9.jpg,x\n", "does not exist"),
    "not an image": ("path,labels\na/notes.txt,x\n", "not an image file name"),
    "twice": ("path,labels\na/1.jpg,x\n./a/1.jpg,y\n", "listed a second time"),
    "three columns": ("path,labels\na/1.jpg,x,y\n", "3 columns"),
    "header only": ("path,labels\n", "no rows"),
    "empty file": ("", "not even the header"),
    "control character": ("path,labels\na/1.jpg,x\x07y\n", "control character"),
    "line break": ('path,labels\na/1.jpg,"x\ny"\n', "line break"),
    "one label": ("path,labels\na/1.jpg,x\n", "1 label(s)"),
    "bad quoting": ('path,labels\na/1.jpg,"x"y\n', "not valid CSV"),
    "empty path": ("path,labels\n,x\n", "path is empty"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_ROWS))
def test_a_csv_that_cannot_be_used_is_refused_in_one_line(tmp_path, case):
    image_dir = photos(tmp_path / "images", ["a/1.jpg", "a/notes.txt"])
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"outside")
    text, expected = REFUSED_ROWS[case]
    csv_path = write_csv(tmp_path / "labels.csv", text)
    with pytest.raises(labels_lib.LabelsFileError) as raised:
        labels_lib.build_multi_label_dataset(image_dir, (0, 0), csv_path)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_a_symlink_out_of_the_image_folder_is_refused(tmp_path):
    image_dir = photos(tmp_path / "images", ["a/1.jpg"])
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.jpg", os.path.join(image_dir, "a", "link.jpg"))
    csv_path = write_csv(tmp_path / "labels.csv", "path,labels\na/1.jpg,x\na/link.jpg,y\n")
    with pytest.raises(labels_lib.LabelsFileError, match="link that leads outside"):
        labels_lib.read_labels_csv(image_dir, csv_path, ";")


def test_a_csv_that_is_not_utf8_a_fifo_or_huge_is_refused(tmp_path, monkeypatch):
    image_dir = photos(tmp_path / "images", ["a/1.jpg"])
    latin = write_csv(tmp_path / "latin.csv", "path,labels\na/1.jpg,café\n", "latin-1")
    with pytest.raises(labels_lib.LabelsFileError, match="not UTF-8"):
        labels_lib.read_labels_csv(image_dir, latin, ";")
    with helpers.unblocking_fifo(tmp_path / "fifo.csv") as fifo:
        with pytest.raises(labels_lib.LabelsFileError, match="cannot be used"):
            labels_lib.read_labels_csv(image_dir, fifo, ";")
    monkeypatch.setattr(labels_lib, "MAX_CSV_BYTES", 10)
    big = write_csv(tmp_path / "big.csv", "path,labels\na/1.jpg,x;y\n")
    with pytest.raises(labels_lib.LabelsFileError, match="larger than"):
        labels_lib.read_labels_csv(image_dir, big, ";")
    with pytest.raises(labels_lib.LabelsFileError, match="does not exist"):
        labels_lib.read_labels_csv(image_dir, str(tmp_path / "none.csv"), ";")


# --- labels from copies in several class folders -----------------------------------


def test_a_photo_filed_in_two_folders_is_one_example_with_both_labels(tmp_path):
    image_dir = photos(tmp_path, ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg"])
    helpers.touch(os.path.join(image_dir, "dog", "same_as_1.jpg"), b"photo 0")
    before = {p: open(os.path.join(image_dir, p), "rb").read()
              for p in ("cat/1.jpg", "dog/same_as_1.jpg")}
    dataset = labels_lib.build_multi_label_dataset(image_dir, (30, 30))
    assert dataset.label_sets == {"cat/1.jpg": ("cat", "dog"), "cat/2.jpg": ("cat",),
                                  "dog/3.jpg": ("dog",)}
    # The split is by content: the hash of the bytes, whichever copy is kept.
    kept = next(i for i in dataset.images if i.path == "cat/1.jpg")
    import hashlib
    assert kept.split == dataset_lib.split.split_for(hashlib.sha1(b"photo 0").hexdigest(), 30, 30)
    assert {p: open(os.path.join(image_dir, p), "rb").read() for p in before} == before


def test_dropping_an_image_keeps_the_label_sets_and_their_classes(tmp_path):
    image_dir = photos(tmp_path, ["a/1.jpg", "b/2.jpg", "c/3.jpg"])
    helpers.touch(os.path.join(image_dir, "c", "copy.jpg"), b"photo 0")
    dataset = labels_lib.build_multi_label_dataset(image_dir, (0, 0))
    left = dataset.without(["c/3.jpg"])
    assert left.labels == ["a", "b", "c"]  # c is still a label of a/1.jpg
    assert left.label_sets == {"a/1.jpg": ("a", "c"), "b/2.jpg": ("b",)}


def test_the_run_data_holds_multi_hot_targets(tmp_path):
    image_dir = photos(tmp_path, ["a/1.jpg", "b/2.jpg"])
    helpers.touch(os.path.join(image_dir, "b", "copy.jpg"), b"photo 0")
    dataset = labels_lib.build_multi_label_dataset(image_dir, (0, 0))
    targets = run_data.multi_hot(dataset, dataset.images)
    assert targets.tolist() == [[1, 1], [0, 1]]
    assert run_data.multi_hot(dataclasses.replace(dataset, label_sets=None), dataset.images) is None


# --- the flags ------------------------------------------------------------------------


ON = {"multi_label": True, "image_dir": "x"}


@pytest.mark.parametrize("flags, expected", [
    ({"labels_csv": "l.csv", "image_dir": "x"}, "--labels_csv applies only to --multi_label"),
    ({"labels_delimiter": "|", "image_dir": "x"}, "--labels_delimiter applies only"),
    ({**ON, "labels_delimiter": ","}, "--labels_delimiter=',' must be one printable"),
    ({**ON, "labels_delimiter": ";;"}, "must be one printable"),
    ({"multi_label": True, "tfrecord_dir": "t"}, "--tfrecord_dir does not work with --multi_label"),
    ({**ON, "fine_tune_steps": 10}, "--fine_tune_steps does not work"),
    ({**ON, "flip_left_right": True}, "--distortions"),
    ({**ON, "class_weighting": "balanced"}, "--class_weighting=balanced does not work"),
    ({**ON, "sampling": "uniform"}, "--sampling=uniform does not work"),
    ({**ON, "intermediate_store_frequency": 5}, "--intermediate_store_frequency does not"),
    ({**ON, "print_misclassified_test_images": True}, "--print_misclassified_test_images"),
    ({**ON, "assert_accuracy_at_least": 0.5}, "--assert_accuracy_at_least does not"),
    ({**ON, "validation_batch_size": 10}, "--validation_batch_size does not"),
    ({**ON, "test_batch_size": 10}, "--test_batch_size does not"),
])
def test_flags_without_a_multi_label_meaning_are_refused(flags, expected):
    with pytest.raises(options.MultiLabelUsageError) as raised:
        config_lib.from_flat(flags).validate()
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_multi_label_flags_that_work_pass():
    config_lib.from_flat({**ON, "labels_csv": "l.csv", "labels_delimiter": "|",
                          "label_smoothing": 0.1, "hidden_units": 8, "dropout": 0.2}).validate()


# --- training on synthetic bottlenecks, against a softmax on the same data ---------


def synthetic_sets(seed=0, classes=4, dimension=16):
    """Bottlenecks of two- or three-label images: the sum of their labels' directions
    plus noise. -> {split: (vectors [n, D], targets [n, C])}."""
    rng = np.random.RandomState(seed)
    directions = rng.randn(classes, dimension)
    sets = {}
    for split, count in (("training", 300), ("validation", 80), ("testing", 80)):
        targets = np.zeros([count, classes], np.float32)
        for row in targets:
            row[rng.choice(classes, rng.choice([2, 3]), replace=False)] = 1
        vectors = targets @ directions + 0.3 * rng.randn(count, dimension)
        sets[split] = (vectors.astype(np.float32), targets)
    return sets


def multi_label_run(sets):
    splits = {name: run_data.Split(name, (None,) * len(t), np.zeros(len(t), np.int64), v,
                                   np.arange(len(t)), t) for name, (v, t) in sets.items()}
    classes = sets["training"][1].shape[1]
    dataset = dataset_lib.Dataset("", [f"class_{c}" for c in range(classes)], [], label_sets={})
    return run_data.PreparedRun(dataset=dataset, source=None, **splits, contents={},
                                input_size=(8, 8), max_image_pixels=10**8)


def softmax_on_copies(sets, tmp_path, settings):
    """A softmax trained on the same images, each filed once per label (as copies in
    several class folders give a single-label run). -> its probabilities on the test set."""
    vectors, targets = sets["training"]
    rows, labels = np.nonzero(targets)
    arrays = {"training": (vectors[rows], labels, []),
              "validation": (sets["validation"][0], np.argmax(sets["validation"][1], 1), []),
              "testing": (sets["testing"][0], np.zeros(len(sets["testing"][0])), [])}
    run = helpers.prepared_run(arrays, targets.shape[1])
    result = training.train(run, settings.training, settings.evaluation, settings.outputs)
    g = final_layer.build_training_graph(run.dimension, final_layer.LayerSpec(targets.shape[1]),
                                         dataclasses.replace(settings.training, random_seed=0))
    import tensorflow as tf
    with tf.compat.v1.Session(graph=g.graph) as sess:
        for variable in g.variables:
            variable.load(result.layer[variable.op.name], sess)
        return sess.run(g.probabilities, {g.bottleneck_input: sets["testing"][0]})


def test_multi_label_recovers_what_a_softmax_on_copies_cannot(tmp_path):
    sets = synthetic_sets()
    settings = config_lib.from_flat(helpers.retrain_settings(
        tmp_path, "x", "m", how_many_training_steps=600, learning_rate=0.1, eval_step_interval=100))
    result = ml_training.train(multi_label_run(sets), settings.training, settings.evaluation,
                               settings.outputs)
    labels = ["a", "b", "c", "d"]
    truth = sets["testing"][1]
    ours = metrics.evaluate(result.scores["testing"], truth, result.thresholds, labels)
    softmax = softmax_on_copies(sets, tmp_path, settings)
    theirs = metrics.evaluate(softmax, truth, np.full(4, 0.5), labels,
                              predicted=np.eye(4, dtype=bool)[np.argmax(softmax, 1)])
    assert ours["macro_avg"]["f1"] >= 0.9, ours
    assert ours["macro_avg"]["f1"] >= theirs["macro_avg"]["f1"] + 0.2, (ours, theirs)
    assert ours["exact_match"] >= 0.7 and theirs["exact_match"] == 0.0
    assert ours["mean_average_precision"] >= 0.95
    assert ours["mean_average_precision"] >= theirs["mean_average_precision"], (ours, theirs)
    assert np.all((result.thresholds > 0) & (result.thresholds < 1))
    # Independent scores: a photo's every label scores high (a softmax shares out 1).
    assert np.mean(result.scores["testing"][truth > 0] > 0.5) > 0.9


# --- thresholds read back from files ----------------------------------------------


@pytest.mark.parametrize("values", [[0.0, 0.5], [0.5, 1.0], [1.5, 0.5], [float("nan"), 0.5]])
def test_thresholds_outside_zero_one_are_refused(values):
    with pytest.raises(classifier.LabelError, match=r"outside \(0, 1\)"):
        classifier.checked_thresholds(values, "The graph's final_result_thresholds")
    metadata = tflite_metadata.image_classifier_metadata("c", "t", (32, 32), 2, (0.0, 255.0),
                                                         multi_label=True)
    model = tflite_metadata.with_metadata(helpers.bare_model(), metadata, ["a", "b"], values)
    with pytest.raises(tflite_metadata.MetadataError, match=r"outside \(0, 1\)"):
        tflite_metadata.packed_thresholds(model)
    import onnx

    onnx_file = onnx.ModelProto()
    onnx.helper.set_model_props(onnx_file, {"thresholds": json.dumps(values)})
    with pytest.raises(onnx_model.LabelsError, match=r"inside \(0, 1\)"):
        onnx_model.metadata_thresholds(onnx_file)


def test_thresholds_packed_in_a_tflite_file_read_back():
    metadata = tflite_metadata.image_classifier_metadata("c", "t", (32, 32), 2, (0.0, 255.0),
                                                         multi_label=True)
    model = tflite_metadata.with_metadata(helpers.bare_model(), metadata, ["a", "b"], [0.25, 0.7])
    np.testing.assert_allclose(tflite_metadata.packed_thresholds(model), [0.25, 0.7])
    assert tflite_metadata.packed_labels(model) == ["a", "b"]
    assert tflite_metadata.packed_thresholds(helpers.model_with_labels()) is None


@pytest.mark.parametrize("flag", ["output_labels", "eval_report", "summaries_dir"])
def test_an_output_on_or_around_the_labels_csv_is_refused_before_any_work(tmp_path, flag):
    csv_path = tmp_path / "meta" / "labels.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("path,labels\na/1.jpg,x\n")
    target = str(csv_path.parent) if flag == "summaries_dir" else str(csv_path)
    settings = helpers.retrain_settings(tmp_path, str(tmp_path / "photos"), "module/",
                                        multi_label=True, labels_csv=str(csv_path),
                                        **{flag: target})
    config = config_lib.from_flat(settings)
    with pytest.raises(output_paths.PathError, match=f"--{flag}=.* --labels_csv="):
        output_paths.check_output_paths(config.data, config.module, config.outputs,
                                        config.evaluation.eval_report,
                                        config.multi_label.labels_csv)
    assert csv_path.read_text() == "path,labels\na/1.jpg,x\n"
