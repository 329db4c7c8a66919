"""evaluation.py: metrics against a hand-computed confusion matrix, tables, pictures."""

import collections
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrain_suite import evaluation, input_pipeline

LABELS = ["a", "b", "c", "d"]
# Ten images of a, b and c (none of d); rows true, columns predicted:
#        a  b  c  d
#   a  [ 2, 1, 1, 0 ]
#   b  [ 1, 1, 0, 0 ]
#   c  [ 0, 1, 3, 0 ]
#   d  [ 0, 0, 0, 0 ]
TRUTH = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]


def test_confusion_matrix_counts_rows_true_columns_predicted():
    matrix = evaluation.confusion_matrix(TRUTH, PREDICTED, 4)
    np.testing.assert_array_equal(
        matrix, [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    )


def test_json_report_matches_hand_computed_metrics(tmp_path):
    path = tmp_path / "report.json"
    evaluation.write_report(str(path), evaluation.evaluate(TRUTH, PREDICTED, LABELS))
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["count"] == 10
    assert report["accuracy"] == pytest.approx(6 / 10)
    assert report["confusion_matrix"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    a, b, c, d = report["classes"]
    assert [x["label"] for x in (a, b, c, d)] == LABELS
    # a: TP 2, predicted 3 times, 4 images.
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((2 / 3, 2 / 4, 4 / 7, 4))
    # b: TP 1, predicted 3 times, 2 images.
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5, 2))
    # c: TP 3, predicted 4 times, 4 images.
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((3 / 4, 3 / 4, 3 / 4, 4))
    # d: no images and never predicted: nothing to divide by.
    assert d == {"label": "d", "precision": None, "recall": None, "f1": None, "support": 0}
    assert report["macro_avg"]["precision"] == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3)
    assert report["macro_avg"]["f1"] == pytest.approx((4 / 7 + 2 / 5 + 3 / 4) / 3)


def test_class_never_predicted_has_no_precision_and_zero_recall():
    report = evaluation.evaluate([0, 1, 1], [0, 0, 0], ["x", "y"])
    y = report["classes"][1]
    assert y["precision"] is None and y["recall"] == 0.0 and y["f1"] == 0.0
    assert report["classes"][0]["precision"] == pytest.approx(1 / 3)


def test_log_tables_are_aligned_and_hold_the_numbers():
    report = evaluation.evaluate(TRUTH, PREDICTED, LABELS)
    text = evaluation.format_report("Test", report, LABELS)
    lines = text.splitlines()
    assert lines[0] == "Test accuracy 60.0% (N=10)"
    table = lines[1:8]
    assert table[0].split() == ["class", "precision", "recall", "F1", "support"]
    assert table[2].split() == ["a", "66.7%", "50.0%", "57.1%", "4"]
    assert table[5].split() == ["d", "-", "-", "-", "0"]
    # Right-aligned numbers: every row of the table ends in the same column.
    assert len({len(line) for line in table}) == 1
    matrix = lines[lines.index("Test confusion matrix (rows: true class, columns: predicted class):") + 1:]
    assert matrix[0].split() == ["true", "\\", "predicted", "a", "b", "c", "d"]
    assert matrix[3].split() == ["c", "0", "1", "3", "0"]
    assert len({len(line) for line in matrix}) == 1


def png_size(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_confusion_matrix_picture_grows_with_classes_and_darkens_the_diagonal():
    small = evaluation.confusion_matrix_png([[5, 0], [1, 4]], ["cat", "dog"])
    large = evaluation.confusion_matrix_png(np.eye(6, dtype=int) * 3, [f"class{i}" for i in range(6)])
    assert png_size(large)[0] > png_size(small)[0]
    image = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), np.int64)
    # The darkest pixels are the filled diagonal cells, the lightest the empty corners.
    assert image.min() < 100 and image.max() == 255


def test_misclassified_grid_has_four_columns_and_at_most_sixteen_tiles():
    tiles = [np.full((32, 32, 3), 40 * (i % 6), np.uint8) for i in range(20)]
    captions = [("red", "green")] * 20
    width, height = png_size(evaluation.misclassified_grid_png(tiles, captions))
    tile_width = evaluation.TILE + evaluation.GAP
    tile_height = evaluation.TILE + evaluation.CAPTION + evaluation.GAP
    assert (width // tile_width, height // tile_height) == (4, 4)
    width, height = png_size(evaluation.misclassified_grid_png(tiles[:2], captions[:2]))
    assert (width // tile_width, height // tile_height) == (2, 1)


def test_grid_takes_every_class_in_turn_most_confident_mistakes_first():
    labels = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    rng = np.random.RandomState(0)
    # 50 mistakes in label order, most of them daisies and dandelions, as in a real run.
    counts = {"daisy": 20, "dandelion": 20, "roses": 4, "sunflowers": 3, "tulips": 3}
    misclassified = [
        {"image": f"{label}/{n}.jpg", "true": label, "predicted": "x",
         "confidence": float(rng.uniform(0.3, 1.0))}
        for label, count in counts.items() for n in range(count)
    ]
    shown = evaluation.mistakes_to_show(misclassified, labels)
    assert len(shown) == evaluation.MAX_MISCLASSIFIED_SHOWN == 16
    assert {m["true"] for m in shown} == set(labels)
    assert {m["true"] for m in shown[:5]} == set(labels)  # the first round: one of each class
    for label in labels:
        mine = [m["confidence"] for m in shown if m["true"] == label]
        theirs = sorted((m["confidence"] for m in misclassified if m["true"] == label), reverse=True)
        assert mine == theirs[:len(mine)], label  # the most confident of that class, in order
    first_round = [m["confidence"] for m in shown[:5]]
    assert first_round == sorted(first_round, reverse=True)
    # Three full rounds (15 tiles: every class has 3 or more mistakes), then the most
    # confident of the fourth round's daisy, dandelion and roses.
    per_class = collections.Counter(m["true"] for m in shown)
    assert all(per_class[label] >= 3 for label in labels) and max(per_class.values()) == 4
    fourth = [m for m in misclassified if m["true"] in ("daisy", "dandelion", "roses")]
    assert shown[15]["true"] == max(
        ("daisy", "dandelion", "roses"),
        key=lambda label: sorted(m["confidence"] for m in fourth if m["true"] == label)[-4],
    )
    assert evaluation.mistakes_to_show([], labels) == []
    assert evaluation.mistakes_to_show(misclassified[:3], labels) == sorted(
        misclassified[:3], key=lambda m: -m["confidence"]
    )


def test_summary_proto_has_scalars_per_class_and_images():
    report = evaluation.evaluate(TRUTH, PREDICTED, LABELS)
    grid = evaluation.misclassified_grid_png([np.zeros((8, 8, 3), np.uint8)], [("a", "b")])
    summary = evaluation.evaluation_summary(report, LABELS, misclassified_png=grid)
    tags = {v.tag: v for v in summary.value}
    assert tags["accuracy"].simple_value == pytest.approx(0.6)
    assert tags["per_class_accuracy/a"].simple_value == pytest.approx(0.5)
    assert "per_class_accuracy/d" not in tags  # no images of d: no accuracy to show
    assert tags["confusion_matrix"].image.encoded_image_string.startswith(b"\x89PNG")
    assert png_size(tags["misclassified"].image.encoded_image_string) == (
        tags["misclassified"].image.width, tags["misclassified"].image.height
    )
    without = evaluation.evaluation_summary(report, LABELS, with_accuracy=False)
    assert "accuracy" not in {v.tag for v in without.value}


def test_display_images_are_decoded_by_the_shared_function(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 10:] = 255
    path = str(tmp_path / "half.png")
    Image.fromarray(pixels).save(path)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    images = input_pipeline.ImageFiles([path, str(tmp_path / "broken.jpg")])
    loaded = evaluation.load_display_images(images, [0, 1], 8, 8)
    assert set(loaded) == {0}
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        expected = sess.run(input_pipeline.decode_and_resize(tf.io.read_file(path), 8, 8))
    np.testing.assert_array_equal(loaded[0], np.round(expected * 255).astype(np.uint8))
