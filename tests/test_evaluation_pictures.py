"""evaluation_pictures.py: the confusion matrix picture, the misclassified grid and the
TensorBoard summary, checked pixel by pixel and bounded at any number of classes."""

import collections
import io

import helpers
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from retrain_suite import evaluation, evaluation_pictures, run_data
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.images import preprocess as image_preprocess

LABELS, TRUTH, PREDICTED = helpers.LABELS, helpers.TRUTH, helpers.PREDICTED




def png_size(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_confusion_matrix_picture_grows_with_classes_and_darkens_the_diagonal():
    small = evaluation_pictures.confusion_matrix_png([[0, 0, 5], [1, 0, 1], [1, 1, 4]], ["cat", "dog"])
    large = evaluation_pictures.confusion_matrix_png([[i, i, 3] for i in range(6)],
                                            [f"class{i}" for i in range(6)])
    assert png_size(large)[0] > png_size(small)[0]
    image = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), np.int64)
    # The darkest pixels are the filled diagonal cells, the lightest the empty corners.
    assert image.min() < 100 and image.max() == 255


def test_misclassified_grid_has_four_columns_and_at_most_sixteen_tiles():
    tiles = [np.full((32, 32, 3), 40 * (i % 6), np.uint8) for i in range(20)]
    captions = [("red", "green")] * 20
    width, height = png_size(evaluation_pictures.misclassified_grid_png(tiles, captions))
    tile_width = evaluation_pictures.TILE + evaluation_pictures.GAP
    tile_height = evaluation_pictures.TILE + evaluation_pictures.CAPTION + evaluation_pictures.GAP
    assert (width // tile_width, height // tile_height) == (4, 4)
    width, height = png_size(evaluation_pictures.misclassified_grid_png(tiles[:2], captions[:2]))
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
    shown = evaluation_pictures.mistakes_to_show(misclassified, labels)
    assert len(shown) == evaluation_pictures.MAX_MISCLASSIFIED_SHOWN == 16
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
    assert evaluation_pictures.mistakes_to_show([], labels) == []
    assert evaluation_pictures.mistakes_to_show(misclassified[:3], labels) == sorted(
        misclassified[:3], key=lambda m: -m["confidence"]
    )


def test_summary_proto_has_scalars_per_class_and_images():
    report = evaluation.evaluate(TRUTH, PREDICTED, LABELS)
    grid = evaluation_pictures.misclassified_grid_png([np.zeros((8, 8, 3), np.uint8)], [("a", "b")])
    summary = evaluation_pictures.evaluation_summary(report, LABELS, misclassified_png=grid)
    tags = {v.tag: v for v in summary.value}
    assert tags["accuracy"].simple_value == pytest.approx(0.6)
    assert tags["per_class_accuracy/a"].simple_value == pytest.approx(0.5)
    assert "per_class_accuracy/d" not in tags  # no images of d: no accuracy to show
    assert tags["confusion_matrix"].image.encoded_image_string.startswith(b"\x89PNG")
    assert png_size(tags["misclassified"].image.encoded_image_string) == (
        tags["misclassified"].image.width, tags["misclassified"].image.height
    )
    without = evaluation_pictures.evaluation_summary(report, LABELS, with_accuracy=False)
    assert "accuracy" not in {v.tag for v in without.value}


def test_display_images_are_decoded_by_the_shared_function(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 10:] = 255
    path = str(tmp_path / "half.png")
    Image.fromarray(pixels).save(path)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    images = image_pipelines.ImageFiles([path, str(tmp_path / "broken.jpg")])
    loaded = evaluation_pictures.load_display_images(helpers.run_of_images(images, [0, 1], ["a"], (8, 8)),
                                            [0, 1])
    assert set(loaded) == {0}
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        expected = sess.run(image_preprocess.decode_and_resize(tf.io.read_file(path), 8, 8))
    np.testing.assert_array_equal(loaded[0], np.round(expected * 255).astype(np.uint8))


def test_a_run_decodes_each_displayed_image_once(tmp_path, monkeypatch):
    paths = []
    for n in range(3):
        paths.append(str(tmp_path / f"{n}.png"))
        Image.fromarray(np.full((6, 6, 3), 80 * n, np.uint8)).save(paths[-1])
    run = helpers.run_of_images(image_pipelines.ImageFiles(paths), [0, 1, 2], ["a"], (8, 8))
    decoded = []
    real = run_data.PreparedRun.image_batches
    monkeypatch.setattr(run_data.PreparedRun, "image_batches",
                        lambda self, rows, size: decoded.append(list(rows)) or real(self, rows, size))
    first = evaluation_pictures.load_display_images(run, [2, 0])
    again = evaluation_pictures.load_display_images(run, [0, 1, 2])  # TensorBoard, then the page
    assert decoded == [[2, 0], [1]]
    assert set(first) == {0, 2} and set(again) == {0, 1, 2}
    np.testing.assert_array_equal(first[2], again[2])


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
    one_and_fifty = evaluation_pictures.confusion_matrix_png([[0, 0, 1], [1, 1, 50]], labels)
    fifty_and_fifty = evaluation_pictures.confusion_matrix_png([[0, 0, 50], [1, 1, 50]], labels)
    # The commonest colour but white: the shade of a cell holding all its row's images.
    full = most_common_colour(fifty_and_fifty)
    count, box = pixels_of(fifty_and_fifty, full)
    # The rare class's one right image fills its diagonal cell with the same shade as
    # the common class's 50: the same two cells, as dark (the digits differ a little).
    one_count, one_box = pixels_of(one_and_fifty, full)
    assert one_box == box
    assert abs(one_count - count) < 0.05 * count


def test_confusion_picture_of_10000_classes_is_bounded_and_shows_the_most_confused(
    ten_thousand_classes
):
    truth, predictions, labels, report = ten_thousand_classes
    png = evaluation_pictures.confusion_matrix_png(report["confusion_counts"], labels, "Test")
    image = Image.open(io.BytesIO(png))  # PIL's own limit on pixels applies
    assert image.format == "PNG" and max(image.size) < 1500, image.size
    shown = evaluation_pictures.most_confused_classes(report["confusion_counts"], len(labels))
    assert len(shown) == evaluation_pictures.MAX_PICTURE_CLASSES and {5, 9} <= set(shown.tolist())
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
    summary = evaluation_pictures.evaluation_summary(report, labels)
    per_class = {v.tag.split("/", 1)[1]: v.simple_value for v in summary.value
                 if v.tag.startswith("per_class_accuracy/")}
    assert len(per_class) == evaluation.MAX_CLASSES_LISTED
    recalls = sorted(c["recall"] for c in report["classes"])
    assert max(per_class.values()) == pytest.approx(recalls[evaluation.MAX_CLASSES_LISTED - 1])
    (picture,) = [v.image for v in summary.value if v.tag == "confusion_matrix"]
    assert max(picture.width, picture.height) < 1500
