"""retrain_suite.dataset.scan and .model: finding images and labels, the checks on
names, and a Dataset less some images."""

import logging
import os

import pytest
from helpers import splits_of, touch

from retrain_suite import dataset as dataset_lib
from retrain_suite import preparation
from retrain_suite.dataset import scan


def test_labels_are_folder_names_exactly_as_written_and_sorted(tmp_path):
    names = ["café", "猫", "Zebra", "apple", "with space", "Ωmega"]
    for name in names:
        touch(tmp_path / "data" / name / "one.jpg")
    dataset = dataset_lib.build_dataset(str(tmp_path / "data"), 10, 10)
    assert dataset.labels == sorted(names)
    for image in dataset.images:
        assert image.path == f"{image.label}/one.jpg"
        assert dataset.labels[image.label_index] == image.label
        assert os.path.isfile(dataset.full_path(image))


def test_every_image_extension_found_once_and_other_files_ignored(tmp_path):
    image_dir = tmp_path / "data"
    wanted = [
        "a/1.jpg", "a/2.JPG", "a/3.jpeg", "a/4.png", "a/5.PNG", "a/6.gif", "a/7.bmp",
        "a/8.JPEG", "a/nested/9.jpg", "b/10.jpg",
    ]
    ignored = [
        "a/notes.txt", "a/.DS_Store", "a/.hidden.jpg", "a/image.jpg.part", "a/jpg",
        "a/.ipynb_checkpoints/1-checkpoint.jpg", "a/nested/.cache/x.png",
        ".ipynb_checkpoints/x.jpg", ".hidden_class/y.jpg", "top_level.jpg",
        "README.md",
    ]
    for name in wanted + ignored:
        touch(os.path.join(image_dir, *name.split("/")))
    found = scan.find_images(str(image_dir))
    assert found == {
        "a": sorted(n for n in wanted if n.startswith("a/")),
        "b": ["b/10.jpg"],
    }
    dataset = dataset_lib.build_dataset(str(image_dir), 10, 10)
    assert sorted(i.path for i in dataset.images) == sorted(wanted)
    assert dataset.labels == ["a", "b"]


def test_exclude_dirs_excludes_a_folder_inside_image_dir(tmp_path):
    image_dir = tmp_path / "data"
    for name in ["a/1.jpg", "b/2.jpg", "cache/c.jpg", "a/cache_here/d.jpg"]:
        touch(os.path.join(image_dir, *name.split("/")))
    everything = scan.find_images(str(image_dir))
    assert set(everything) == {"a", "b", "cache"}
    found = scan.find_images(
        str(image_dir),
        exclude_dirs=[str(image_dir / "cache") + "/", str(image_dir / "a" / "cache_here")],
    )
    assert found == {"a": ["a/1.jpg"], "b": ["b/2.jpg"]}


def test_fewer_than_two_classes_raises_dataset_error(tmp_path):
    image_dir = tmp_path / "data"
    touch(image_dir / "only" / "1.jpg")
    touch(image_dir / "empty" / "readme.txt")  # A folder without images is no class.
    touch(image_dir / "loose.jpg")
    with pytest.raises(dataset_lib.DatasetError, match="at least two"):
        dataset_lib.build_dataset(str(image_dir), 10, 10)
    touch(image_dir / "second" / "2.png")
    assert dataset_lib.build_dataset(str(image_dir), 10, 10).labels == ["only", "second"]


def test_missing_or_file_image_dir_raises_dataset_error(tmp_path):
    with pytest.raises(dataset_lib.DatasetError, match="does not exist"):
        dataset_lib.build_dataset(str(tmp_path / "nope"), 10, 10)
    touch(tmp_path / "file.jpg")
    with pytest.raises(dataset_lib.DatasetError, match="is a file"):
        dataset_lib.build_dataset(str(tmp_path / "file.jpg"), 10, 10)


@pytest.mark.parametrize("bad_name", ["tab\tname", "new\nline"])
def test_class_folder_with_tab_or_newline_raises_dataset_error(tmp_path, bad_name):
    image_dir = tmp_path / "data"
    touch(image_dir / "fine" / "1.jpg")
    touch(image_dir / "other" / "1.jpg")
    touch(image_dir / bad_name / "1.jpg")
    with pytest.raises(dataset_lib.DatasetError, match="rename the folder"):
        dataset_lib.build_dataset(str(image_dir), 10, 10)


@pytest.mark.parametrize("bad_name", ["a\tb.jpg", "c\nd.jpg", "e\u2028f.jpg", "sub\rfolder/g.jpg"])
def test_file_or_subfolder_with_tab_or_line_break_is_skipped_and_lists_stay_one_line_each(
    tmp_path, caplog, bad_name
):
    image_dir = tmp_path / "data"
    for label in ("one", "two"):
        for i in range(3):
            touch(image_dir / label / f"{i}.jpg")
    touch(image_dir / "one" / bad_name)
    caplog.set_level(logging.WARNING)
    dataset = dataset_lib.build_dataset(str(image_dir), 0, 0)
    assert len(dataset.images) == 6
    assert "its name holds a tab or a line break" in caplog.text
    preparation.write_lists(dataset, str(tmp_path / "lists"))
    with open(tmp_path / "lists" / "training.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 6 and all(len(line.split("\t")) == 2 for line in lines)


def test_hundreds_of_class_folders_without_images_are_warned_about_in_a_bounded_log(
    tmp_path, caplog
):
    image_dir = tmp_path / "data"
    touch(image_dir / "a" / "1.jpg")
    touch(image_dir / "b" / "1.jpg")
    for i in range(200):
        touch(image_dir / f"empty{i:03d}" / "readme.txt")
    with caplog.at_level(logging.WARNING, logger="absl"):
        dataset = dataset_lib.build_dataset(str(image_dir), 10, 10)
    assert dataset.labels == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    limit = dataset_lib.MAX_CLASSES_LISTED
    assert messages[0] == "Class folder empty000 holds no images; it is not a class."
    assert messages[limit:] == [f"... and {200 - limit} more class folders hold no images."]


def test_without_renumbers_labels_and_drops_empty_classes(tmp_path):
    image_dir = tmp_path / "data"
    for label in ("a", "b", "c"):
        for i in range(3):
            touch(image_dir / label / f"{i}.jpg")
    dataset = dataset_lib.build_dataset(str(image_dir), 10, 10)
    assert [i.label_index for i in dataset.images if i.label == "c"] == [2, 2, 2]

    smaller = dataset.without(["b/0.jpg", "b/1.jpg", "b/2.jpg", "a/1.jpg"])
    assert smaller.labels == ["a", "c"]
    assert [(i.path, i.label_index) for i in smaller.images] == [
        ("a/0.jpg", 0), ("a/2.jpg", 0), ("c/0.jpg", 1), ("c/1.jpg", 1), ("c/2.jpg", 1),
    ]
    # Splits are kept, and the original is untouched.
    assert all(i.split == splits_of(dataset)[i.path] for i in smaller.images)
    assert dataset.labels == ["a", "b", "c"] and len(dataset.images) == 9

    partly = dataset.without(["b/0.jpg"])
    assert partly.labels == ["a", "b", "c"]
    assert len(partly.images) == 8

    with pytest.raises(dataset_lib.DatasetError):
        dataset.without([f"{label}/{i}.jpg" for label in "bc" for i in range(3)])
