"""retrain_suite.dataset.split: the hash split, its `_nohash_` rule, its percentages,
and the split by content."""

import hashlib
import os
import shutil

import pytest
from helpers import expected_split, make_dataset, splits_of, touch

from retrain_suite import dataset as dataset_lib
from retrain_suite.dataset import split as split_lib

KNOWN_NAMES = [
    "daisy/photo1.jpg",
    "daisy/more/photo2.png",
    "roses/photo3.jpg",
    "café/crème.jpeg",
    "猫/写真.JPG",
    "dogs/rex_nohash_1.jpg",
    "dogs/sub dir/with space.bmp",
    "big_nohash_cats/img1.jpg",
    "dogs/shoot_nohash_2/rex_nohash_1.jpg",
    *(f"class{i % 3}/img{i}.jpg" for i in range(200)),
]


@pytest.mark.parametrize("validation, testing", [(10, 10), (30, 25), (0, 0), (0, 50)])
def test_split_for_matches_sha1_formula_on_known_names(validation, testing):
    got = [split_lib.split_for(name, validation, testing) for name in KNOWN_NAMES]
    want = [expected_split(name, validation, testing) for name in KNOWN_NAMES]
    assert got == want
    # The names are enough to land in every set the percentages allow.
    assert ("validation" in got) == (validation > 0)
    assert ("testing" in got) == (testing > 0)
    assert "training" in got


@pytest.mark.parametrize(
    "name, validation, testing, split",
    [
        # Percentage hashes, worked out once by hand: 88.50, 3.59, 18.49, 67.22, 77.49, 94.94.
        ("daisy/photo1.jpg", 10, 10, "training"),
        ("dogs/rex_nohash_1.jpg", 10, 10, "validation"),
        ("daisy/more/photo2.png", 10, 10, "testing"),
        ("café/crème.jpeg", 70, 20, "validation"),
        ("roses/photo3.jpg", 70, 20, "testing"),
        ("猫/写真.JPG", 70, 20, "training"),
        ("daisy/photo1.jpg", 88.6, 0, "validation"),
        ("daisy/photo1.jpg", 88.4, 0.2, "testing"),
        ("daisy/photo1.jpg", 88.4, 0.1, "training"),
        # `_nohash_` in a folder name is kept: 37.44 for the whole path, where
        # "big" would be 53.26 and "big/img1.jpg" 85.59.
        ("big_nohash_cats/img1.jpg", 30, 20, "testing"),
        # Hashed as "dogs/shoot_nohash_2/rex": 4.43; "dogs/shoot" would be
        # 35.43, "dogs/shoot/rex" 46.98, the whole path 31.88.
        ("dogs/shoot_nohash_2/rex_nohash_1.jpg", 10, 30, "validation"),
    ],
)
def test_split_for_known_names_is_pinned(name, validation, testing, split):
    # Pinned values, so that a change to the formula shows even if the
    # independent implementation above were changed the same way.
    assert split_lib.split_for(name, validation, testing) == split


def test_build_dataset_splits_by_relative_posix_path(tmp_path):
    image_dir = tmp_path / "data"
    names = [f"cls{c}/nested/deeper/img{i}.jpg" for c in range(2) for i in range(40)]
    for name in names:
        touch(os.path.join(image_dir, *name.split("/")))
    dataset = dataset_lib.build_dataset(str(image_dir), 20, 20)
    assert splits_of(dataset) == {name: expected_split(name, 20, 20) for name in names}
    assert set(splits_of(dataset).values()) == set(dataset_lib.SPLITS)


def test_nohash_variants_share_a_split(tmp_path):
    image_dir = tmp_path / "data"
    subjects = [f"subject{i}" for i in range(30)]
    for label in ("a", "b"):
        for subject in subjects:
            for shot, ext in enumerate([".jpg", ".png", ".JPG"]):
                touch(image_dir / label / f"{subject}_nohash_{shot}{ext}")
    dataset = dataset_lib.build_dataset(str(image_dir), 30, 30)
    by_subject = {}
    for image in dataset.images:
        subject = image.path.split("_nohash_")[0]
        by_subject.setdefault(subject, set()).add(image.split)
    assert len(by_subject) == 60
    assert all(len(splits) == 1 for splits in by_subject.values()), by_subject
    # Not trivially true because everything went to one set.
    assert {next(iter(s)) for s in by_subject.values()} == set(dataset_lib.SPLITS)
    for subject, splits in by_subject.items():
        assert splits == {expected_split(subject, 30, 30)}


def test_nohash_in_folder_name_does_not_collapse_the_folder_into_one_split():
    paths = [f"big_nohash_cats/img{i}.jpg" for i in range(60)]
    splits = {split_lib.split_for(path, 30, 30) for path in paths}
    assert splits == set(dataset_lib.SPLITS)


def test_nohash_in_a_folder_name_is_kept_and_only_the_file_name_is_cut(tmp_path):
    image_dir = tmp_path / "data"
    plain = [f"cats_nohash_big/img{i}.jpg" for i in range(40)]
    shots = [f"dogs/shoot_nohash_{s}/rex{i}_nohash_{k}.jpg"
             for s in range(2) for i in range(20) for k in range(2)]
    for name in plain + shots:
        touch(os.path.join(image_dir, *name.split("/")))
    splits = splits_of(dataset_lib.build_dataset(str(image_dir), 30, 30))
    # Each image of the class folder by its own full path, so they spread over the sets.
    assert {name: splits[name] for name in plain} == {
        name: expected_split(name, 30, 30) for name in plain}
    assert {splits[name] for name in plain} == set(dataset_lib.SPLITS)
    # Shots of one subject stay together; each subject is hashed with its folder.
    assert {name: splits[name] for name in shots} == {
        name: expected_split(name, 30, 30) for name in shots}
    by_subject = {}
    for name in shots:
        by_subject.setdefault(name.rsplit("_nohash_", 1)[0], set()).add(splits[name])
    assert len(by_subject) == 40 and all(len(s) == 1 for s in by_subject.values())
    assert {splits[name] for name in shots} == set(dataset_lib.SPLITS)


def test_split_is_stable_when_folder_moves(tmp_path):
    original = make_dataset(tmp_path / "data", per_class=12)
    before = splits_of(dataset_lib.build_dataset(original, 25, 25))
    moved = tmp_path / "elsewhere" / "much" / "deeper"
    shutil.copytree(original, moved / "copy")
    copied = splits_of(dataset_lib.build_dataset(str(moved / "copy"), 25, 25))
    shutil.move(original, str(tmp_path / "renamed"))
    renamed = splits_of(dataset_lib.build_dataset(str(tmp_path / "renamed"), 25, 25))
    assert copied == before
    assert renamed == before
    assert set(before.values()) == set(dataset_lib.SPLITS)


def test_split_of_existing_images_is_unchanged_when_images_are_added(tmp_path):
    image_dir = tmp_path / "data"
    for label in ("b", "c"):
        for i in range(30):
            touch(image_dir / label / f"img{i}.jpg")
    before = dataset_lib.build_dataset(str(image_dir), 20, 20)
    # New images in existing classes and a new class sorting first, which
    # shifts every label index.
    for label in ("a", "b", "c"):
        for i in range(30, 60):
            touch(image_dir / label / f"img{i}.jpg")
    after = dataset_lib.build_dataset(str(image_dir), 20, 20)
    after_splits = splits_of(after)
    assert len(after.images) == 150
    assert {path: after_splits[path] for path in splits_of(before)} == splits_of(before)
    assert after.labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    "validation, testing",
    [(-1, 10), (10, -0.5), (101, 0), (0, 100.5), (50, 50), (60, 45), (0, 100), (100, 0)],
)
def test_bad_percentages_raise_dataset_error(tmp_path, validation, testing):
    image_dir = tmp_path / "data"
    touch(image_dir / "a" / "1.jpg")
    touch(image_dir / "b" / "1.jpg")
    with pytest.raises(dataset_lib.DatasetError):
        dataset_lib.build_dataset(str(image_dir), validation, testing)


@pytest.mark.parametrize("validation, testing", [(0, 0), (49.5, 50), (99, 0), (0, 99.9)])
def test_percentages_inside_range_are_accepted(validation, testing):
    split_lib.check_percentages(validation, testing)


def test_split_by_content_puts_every_copy_in_one_set_and_is_stable(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=3)
    original = os.path.join(image_dir, "red", "img0.jpg")
    for n in range(30):  # 30 names: by path they spread over all three sets
        folder = "red" if n % 2 else "blue"
        shutil.copy(original, os.path.join(image_dir, folder, f"copy{n}.jpg"))

    def copy_splits(dataset):
        return {i.split for i in dataset.images if "copy" in i.path or i.path == "red/img0.jpg"}

    assert copy_splits(dataset_lib.build_dataset(image_dir, 30, 30)) == set(dataset_lib.SPLITS)
    by_content = dataset_lib.build_dataset(image_dir, 30, 30, split_by="content")
    assert len(copy_splits(by_content)) == 1
    moved = shutil.copytree(image_dir, tmp_path / "elsewhere")
    assert splits_of(dataset_lib.build_dataset(str(moved), 30, 30, split_by="content")) \
        == splits_of(by_content)
    digest = hashlib.sha1(open(original, "rb").read()).hexdigest()
    assert copy_splits(by_content) == {expected_split(digest, 30, 30)}
    with pytest.raises(dataset_lib.DatasetError, match="--split_by=name"):
        dataset_lib.build_dataset(image_dir, 30, 30, split_by="name")
