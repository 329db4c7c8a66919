"""evaluation.py: metrics against a hand-computed confusion matrix, tables, pictures."""

import collections
import io
import json
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrain_suite import evaluation
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.images import preprocess as image_preprocess

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
    counts = evaluation.confusion_counts(TRUTH, PREDICTED, 4)
    # The non-zero cells only, row by row: (true, predicted, images).
    np.testing.assert_array_equal(
        counts, [[0, 0, 2], [0, 1, 1], [0, 2, 1], [1, 0, 1], [1, 1, 1], [2, 1, 1], [2, 2, 3]]
    )
    np.testing.assert_array_equal(
        evaluation.dense_matrix(counts, 4), [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    )


def test_json_report_matches_hand_computed_metrics(tmp_path):
    path = tmp_path / "report.json"
    evaluation.write_report(str(path), evaluation.evaluate(TRUTH, PREDICTED, LABELS))
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["count"] == 10
    assert report["accuracy"] == pytest.approx(6 / 10)
    assert report["confusion_matrix"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    assert report["confusion_counts"] == [
        [0, 0, 2], [0, 1, 1], [0, 2, 1], [1, 0, 1], [1, 1, 1], [2, 1, 1], [2, 2, 3]
    ]
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
    small = evaluation.confusion_matrix_png([[0, 0, 5], [1, 0, 1], [1, 1, 4]], ["cat", "dog"])
    large = evaluation.confusion_matrix_png([[i, i, 3] for i in range(6)],
                                            [f"class{i}" for i in range(6)])
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
    images = image_pipelines.ImageFiles([path, str(tmp_path / "broken.jpg")])
    loaded = evaluation.load_display_images(images, [0, 1], 8, 8)
    assert set(loaded) == {0}
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        expected = sess.run(image_preprocess.decode_and_resize(tf.io.read_file(path), 8, 8))
    np.testing.assert_array_equal(loaded[0], np.round(expected * 255).astype(np.uint8))


def most_common_colour(png, leaving_out=((255, 255, 255),)):
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(image, axis=0, return_counts=True)
    kept = [(n, tuple(c)) for c, n in zip(colours.tolist(), counts) if tuple(c) not in leaving_out]
    return max(kept)[1]


def pixels_of(png, colour):
    """(count, bounding box (left, top, right, bottom)) of the pixels of that colour."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    ys, xs = np.nonzero(np.all(image == colour, axis=-1))
    return len(xs), (xs.min(), ys.min(), xs.max(), ys.max())


def test_confusion_matrix_picture_shades_by_row_share_not_by_count():
    labels = ["rare", "common"]
    # Both classes all right: one image of rare, 50 of common; then 50 of each.
    one_and_fifty = evaluation.confusion_matrix_png([[0, 0, 1], [1, 1, 50]], labels)
    fifty_and_fifty = evaluation.confusion_matrix_png([[0, 0, 50], [1, 1, 50]], labels)
    # The commonest colour but white: the shade of a cell holding all its row's images.
    full = most_common_colour(fifty_and_fifty)
    count, box = pixels_of(fifty_and_fifty, full)
    # The rare class's one right image fills its diagonal cell with the same shade as
    # the common class's 50: the same two cells, as dark (the digits differ a little).
    one_count, one_box = pixels_of(one_and_fifty, full)
    assert one_box == box
    assert abs(one_count - count) < 0.05 * count


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


@pytest.fixture(scope="module")
def ten_thousand_classes():
    truth, predictions, labels = many_classes()
    return truth, predictions, labels, evaluation.evaluate(truth, predictions, labels)


def test_report_of_10000_classes_keeps_every_cell_without_a_dense_matrix():
    truth, predictions, labels = many_classes()
    tracemalloc.start()
    try:
        report = evaluation.evaluate(truth, predictions, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A dense [10000, 10000] int64 matrix alone is 800 MB.
    assert peak < 100 * 2**20, peak
    assert report["confusion_matrix"] is None
    cells = collections.Counter(zip(truth.tolist(), predictions.tolist()))
    assert report["confusion_counts"] == [[t, p, n] for (t, p), n in sorted(cells.items())]
    assert len(report["classes"]) == 10_000
    assert report["classes"][5]["support"] == 23
    assert report["accuracy"] == pytest.approx(np.mean(truth == predictions))


def test_log_tables_of_10000_classes_list_the_worst_and_say_how_many_more(ten_thousand_classes):
    _, _, labels, report = ten_thousand_classes
    lines = evaluation.format_report("Test", report, labels).splitlines()
    assert len(lines) < 2 * evaluation.MAX_CLASSES_LISTED + 20
    assert lines[1] == "The 30 classes with the lowest F1, of 10000:"
    rows = lines[4:4 + 30]
    f1 = {c["label"]: c["f1"] for c in report["classes"]}
    lowest = sorted(f1[label] for label in f1 if f1[label] is not None)[:30]
    assert [f1[row.split()[0]] for row in rows] == pytest.approx(lowest)
    assert lines[4 + 30].startswith("(macro average)")
    assert lines[4 + 31] == (
        "... and 9970 more classes (every class is in the --eval_report JSON).")
    start = next(n for n, line in enumerate(lines) if "most frequent confusions" in line)
    assert lines[start].startswith("Test: the 30 most frequent confusions, of ")
    confusions = lines[start + 3:]
    assert len(confusions) == 30
    assert confusions[0].split() == ["class_00005", "class_00009", "20", "87.0%"]


def test_confusion_picture_of_10000_classes_is_bounded_and_shows_the_most_confused(
    ten_thousand_classes
):
    truth, predictions, labels, report = ten_thousand_classes
    png = evaluation.confusion_matrix_png(report["confusion_counts"], labels, "Test")
    image = Image.open(io.BytesIO(png))  # PIL's own limit on pixels applies
    assert image.format == "PNG" and max(image.size) < 1500, image.size
    shown = evaluation.most_confused_classes(report["confusion_counts"], len(labels))
    assert len(shown) == evaluation.MAX_PICTURE_CLASSES and {5, 9} <= set(shown.tolist())
    # No class left out has more mistakes (as true or as predicted class) than one shown.
    wrong = truth != predictions
    mistakes = np.bincount(truth[wrong], minlength=10_000) + np.bincount(
        predictions[wrong], minlength=10_000)
    assert mistakes[shown].min() >= np.delete(mistakes, shown).max()
    assert list(shown) == sorted(shown)


def test_summary_of_10000_classes_has_the_lowest_per_class_accuracies_only(
    ten_thousand_classes
):
    _, _, labels, report = ten_thousand_classes
    summary = evaluation.evaluation_summary(report, labels)
    per_class = {v.tag.split("/", 1)[1]: v.simple_value for v in summary.value
                 if v.tag.startswith("per_class_accuracy/")}
    assert len(per_class) == evaluation.MAX_CLASSES_LISTED
    recalls = sorted(c["recall"] for c in report["classes"])
    assert max(per_class.values()) == pytest.approx(recalls[evaluation.MAX_CLASSES_LISTED - 1])
    (picture,) = [v.image for v in summary.value if v.tag == "confusion_matrix"]
    assert max(picture.width, picture.height) < 1500
