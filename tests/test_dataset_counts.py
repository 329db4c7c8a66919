"""retrain_suite.dataset.counts: images per class and set, the warnings about small
classes and the count table, bounded at any number of classes."""

import logging

from helpers import touch

from retrain_suite import dataset as dataset_lib
from retrain_suite.dataset import counts


def test_class_with_fewer_than_20_images_logs_a_warning(tmp_path, caplog):
    image_dir = tmp_path / "data"
    for i in range(5):
        touch(image_dir / "small" / f"{i}.jpg")
    for i in range(counts.MIN_IMAGES_PER_CLASS):
        touch(image_dir / "big" / f"{i}.jpg")
    dataset = dataset_lib.build_dataset(str(image_dir), 10, 10)
    with caplog.at_level(logging.WARNING, logger="absl"):
        dataset_lib.warn_about_small_classes(dataset)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("small" in m and "only 5 images" in m for m in messages), messages
    assert not any("big" in m and "only" in m for m in messages), messages


def many_small_classes(classes=800):
    """A Dataset of `classes` classes of 3 images (training, training, validation),
    except class 7 (1 image) and class 500 (2): no file is read."""
    images = []
    for index in range(classes):
        label = f"class{index:03d}"
        count = {7: 1, 500: 2}.get(index, 3)
        for n, split in enumerate(("training", "training", "validation")[:count]):
            images.append(dataset_lib.Image(f"{label}/{n}.jpg", label, index, split))
    return dataset_lib.Dataset("data", [f"class{i:03d}" for i in range(classes)], images)


def test_count_table_of_800_classes_lists_the_smallest_and_says_how_many_more():
    dataset = many_small_classes()
    lines = dataset_lib.format_count_table(
        dataset, [("class500/broken.jpg", "not an image")], "the counts are elsewhere"
    ).splitlines()
    limit = dataset_lib.MAX_CLASSES_LISTED
    assert len(lines) == limit + 5
    assert lines[0] == f"The {limit} classes with the fewest images, of 800:"
    assert lines[1].split() == ["class", "training", "validation", "testing", "total", "skipped"]
    rows = [line.split() for line in lines[3:3 + limit]]
    # The fewest images first, then label order among classes of 3.
    assert [row[0] for row in rows] == ["class007", "class500"] + [
        f"class{i:03d}" for i in range(limit) if i != 7][:limit - 2]
    assert rows[0][1:] == ["1", "0", "0", "1", "0"]
    assert rows[1][1:] == ["2", "0", "0", "2", "1"]
    # TOTAL counts every class, not only those listed.
    assert lines[3 + limit].split() == ["TOTAL", "1599", "798", "0", "2397", "1"]
    assert lines[-1] == f"... and {800 - limit} more classes (the counts are elsewhere)."


def test_warnings_about_800_small_classes_are_bounded_and_counted(caplog):
    dataset = many_small_classes()
    with caplog.at_level(logging.WARNING, logger="absl"):
        dataset_lib.warn_about_small_classes(dataset, "the counts are elsewhere")
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    limit = dataset_lib.MAX_CLASSES_LISTED
    assert len(messages) == limit + 2, messages[:3]
    # The smallest classes' warnings first, each class's own in order.
    assert messages[:4] == [
        "Class class007 has only 1 images; 20 or more give a useful classifier.",
        "Class class007 has no validation or testing images.",
        "Class class500 has only 2 images; 20 or more give a useful classifier.",
        "Class class500 has no validation or testing images.",
    ]
    # Every class is small and has no testing images: 1600 warnings in all.
    assert messages[limit] == (
        f"... and {1600 - limit} more warnings about classes: 800 of the 800 classes have "
        "fewer than 20 images, 800 have a set without images (the counts are elsewhere)."
    )
    assert messages[limit + 1] == "The testing set is empty."
