"""pre_input: finding images, labels, the hash split, bad images and the script."""

import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
from helpers import make_dataset, run_script, synthetic_image, write_image

from retrain_suite import dataset as dataset_lib
from retrain_suite import tfrecords


def expected_split(relative_path, validation, testing):
    """The documented split formula, written out independently of pre_input.

    `_nohash_` and what follows it are cut from the file name only: a folder
    named `x_nohash_y` is part of every path under it.
    """
    folder, slash, file_name = relative_path.rpartition("/")
    cut = file_name.find("_nohash_")
    name = relative_path if cut < 0 else folder + slash + file_name[:cut]
    h = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    p = (h % 2**27) * (100.0 / (2**27 - 1))
    if p < validation:
        return "validation"
    if p < validation + testing:
        return "testing"
    return "training"


def touch(path, data=b"x"):
    """A placeholder file: scanning and splitting never decode images."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def splits_of(dataset):
    return {image.path: image.split for image in dataset.images}


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
    got = [dataset_lib.split_for(name, validation, testing) for name in KNOWN_NAMES]
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
    assert dataset_lib.split_for(name, validation, testing) == split


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
    splits = {dataset_lib.split_for(path, 30, 30) for path in paths}
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
    found = dataset_lib.find_images(str(image_dir))
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
    everything = dataset_lib.find_images(str(image_dir))
    assert set(everything) == {"a", "b", "cache"}
    found = dataset_lib.find_images(
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


def test_class_with_fewer_than_20_images_logs_a_warning(tmp_path, caplog):
    image_dir = tmp_path / "data"
    for i in range(5):
        touch(image_dir / "small" / f"{i}.jpg")
    for i in range(dataset_lib.MIN_IMAGES_PER_CLASS):
        touch(image_dir / "big" / f"{i}.jpg")
    dataset = dataset_lib.build_dataset(str(image_dir), 10, 10)
    with caplog.at_level(logging.WARNING, logger="absl"):
        dataset_lib.warn_about_small_classes(dataset)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("small" in m and "only 5 images" in m for m in messages), messages
    assert not any("big" in m and "only" in m for m in messages), messages


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
    dataset_lib.check_percentages(validation, testing)


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
    dataset_lib.write_lists(dataset, str(tmp_path / "lists"))
    with open(tmp_path / "lists" / "training.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == 6 and all(len(line.split("\t")) == 2 for line in lines)


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


def write_good_images(image_dir, count=3):
    rng = np.random.RandomState(0)
    for label, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        for i in range(count):
            write_image(
                os.path.join(image_dir, label, f"{i}.jpg"),
                synthetic_image(colour, "solid", 20, 24, rng), "JPEG",
            )


def test_find_bad_images_reports_undecodable_and_empty_files(tmp_path):
    image_dir = str(tmp_path / "data")
    write_good_images(image_dir)
    touch(os.path.join(image_dir, "red", "text.jpg"), b"this is not an image at all\n" * 5)
    touch(os.path.join(image_dir, "red", "empty.jpg"), b"")
    # A PNG with a .jpg name: the format comes from the content.
    write_image(
        os.path.join(image_dir, "blue", "really_png.jpg"),
        np.full((10, 12, 3), 90, np.uint8), "PNG",
    )
    dataset = dataset_lib.build_dataset(image_dir, 10, 10)
    assert len(dataset.images) == 9
    bad = dict(dataset_lib.find_bad_images(dataset))
    assert set(bad) == {"red/text.jpg", "red/empty.jpg"}
    assert bad["red/empty.jpg"] == "empty file"
    assert bad["red/text.jpg"].startswith("not a decodable image")
    assert "\n" not in bad["red/text.jpg"]


def test_pre_input_script_writes_lists_and_prints_table(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    touch(os.path.join(image_dir, "green", "broken.jpg"), b"not an image")
    output_dir = tmp_path / "prepared"
    process = run_script(
        "pre_input.py", f"--image_dir={image_dir}", f"--output_dir={output_dir}",
        "--validation_percentage=20", "--testing_percentage=15",
    )
    assert process.returncode == 0, process.stderr[-3000:]

    assert (output_dir / "labels.txt").read_text(encoding="utf-8") == "blue\ngreen\nred\n"
    dataset = dataset_lib.build_dataset(image_dir, 20, 15).without(["green/broken.jpg"])
    listed = {}
    for split in dataset_lib.SPLITS:
        text = (output_dir / f"{split}.txt").read_text(encoding="utf-8")
        for line in text.splitlines():
            path, label = line.split("\t")
            assert path.split("/")[0] == label
            listed[path] = split
    assert listed == splits_of(dataset)
    assert len(listed) == 36

    lines = process.stdout.splitlines()
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "training", "validation", "testing", "total", "skipped"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()
            and line.split()[0] in ("blue", "green", "red", "TOTAL")}
    counts = dataset_lib.counts_by_class(dataset)
    for label in ("blue", "green", "red"):
        want = [counts[label][s] for s in dataset_lib.SPLITS] + [12, int(label == "green")]
        assert rows[label] == [str(n) for n in want]
    assert rows["TOTAL"][-2:] == ["36", "1"]


def test_pre_input_script_reports_missing_image_dir_in_one_line(tmp_path):
    missing = tmp_path / "no_such_folder"
    process = run_script(
        "pre_input.py", f"--image_dir={missing}", f"--output_dir={tmp_path / 'out'}"
    )
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    error_lines = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, process.stderr[-3000:]
    assert str(missing) in error_lines[0]
    assert not (tmp_path / "out").exists()


def test_pre_input_script_without_image_dir_flag_fails_in_one_line(tmp_path):
    process = run_script("pre_input.py", f"--output_dir={tmp_path / 'out'}")
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == "error: --image_dir is required (see --help)."


# --- copies: within a set, across sets, across classes ---------------------------------------


def dataset_with_copies(root, validation=30, testing=30):
    """A 3-class dataset plus byte-identical copies: -> (image_dir, {kind: [(copy, original)]}).

    Copies are named so their path hash (30/30/40 split) puts them where each kind needs.
    """
    image_dir = make_dataset(root, per_class=6)

    def split(path):
        return dataset_lib.split_for(path, validation, testing)

    def copy_named(original, folder, wanted):
        """Copy `original` into `folder` under the first name whose split is `wanted`'s."""
        for n in range(1000):
            path = f"{folder}/copy{n}{os.path.splitext(original)[1]}"
            if wanted(split(path)) and not os.path.exists(os.path.join(image_dir, path)):
                os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
                shutil.copy(os.path.join(image_dir, original), os.path.join(image_dir, path))
                return path
        raise AssertionError("no name found")

    def first_in(label, wanted_split):
        return next(path for path in sorted(f"{label}/{n}" for n in os.listdir(os.path.join(
            image_dir, label))) if split(path) == wanted_split)

    made = {}
    original = first_in("red", "training")
    made["within"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    original = first_in("green", "training")
    made["across_sets"] = [(copy_named(original, "green/more", lambda s: s == "testing"), original)]
    original = first_in("blue", "training")
    made["across_classes"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    return image_dir, made


def test_copies_report_names_each_kind_and_the_evaluated_copy(tmp_path):
    image_dir, made = dataset_with_copies(tmp_path / "data")
    dataset = dataset_lib.build_dataset(image_dir, 30, 30)
    copies = dataset_lib.find_copies(dataset.images, dataset_lib.content_hashes(dataset))
    assert (copies.images, copies.distinct, copies.copies) == (21, 18, 3)

    def paths(groups):
        return [sorted(i.path for i in group) for group in groups]

    assert paths(copies.within_set) == [sorted(made["within"][0])]
    assert paths(copies.across_sets) == [sorted(made["across_sets"][0])]
    assert paths(copies.across_classes) == [sorted(made["across_classes"][0])]
    report = dataset_lib.format_copies(copies).splitlines()
    assert report[0] == "Copies: 21 images, 18 distinct (3 are copies of another image)."
    test_copy, original = made["across_sets"][0]
    assert f"    testing {test_copy} is a copy of training {original}" in report
    assert "    " + " = ".join(sorted(made["across_classes"][0])) in report
    assert "    " + " = ".join(sorted(made["within"][0])) in report
    assert any("inflates the reported accuracy" in line for line in report)
    assert any("label noise" in line for line in report)


def test_copies_report_without_copies_is_one_line():
    images = [dataset_lib.Image(f"a/{n}.jpg", "a", 0, "training") for n in range(3)]
    copies = dataset_lib.find_copies(images, ["1", "2", None])
    assert dataset_lib.format_copies(copies) == "Copies: none; 2 images, all distinct."


def test_copies_report_names_five_groups_of_a_kind_then_counts(tmp_path):
    images = [dataset_lib.Image(f"a/{n}_{k}.jpg", "a", 0, "training") for n in range(7) for k in (0, 1)]
    copies = dataset_lib.find_copies(images, [str(n) for n in range(7) for _ in (0, 1)])
    report = dataset_lib.format_copies(copies).splitlines()
    assert report[1].startswith("  7 within one class and set")
    assert report[2:] == [f"    a/{n}_0.jpg = a/{n}_1.jpg" for n in range(5)] + ["    ... and 2 more"]


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


def test_pre_input_script_prints_copies_and_splits_by_content(tmp_path):
    image_dir, made = dataset_with_copies(tmp_path / "data")
    output_dir = tmp_path / "prepared"
    process = run_script(
        "pre_input.py", f"--image_dir={image_dir}", f"--output_dir={output_dir}",
        "--validation_percentage=30", "--testing_percentage=30", "--split_by=content", "--tfrecords",
        check=True,
    )
    assert "Copies: 21 images, 18 distinct (3 are copies of another image)." in process.stdout
    listed = {}
    for split in dataset_lib.SPLITS:
        for line in (output_dir / f"{split}.txt").read_text(encoding="utf-8").splitlines():
            listed[line.split("\t")[0]] = split
    for kind in ("within", "across_sets"):
        copy, original = made[kind][0]
        assert listed[copy] == listed[original], kind
    # The TFRecords hold the same split as the lists.
    dataset, _ = tfrecords.read_tfrecords(str(output_dir))
    assert splits_of(dataset) == listed


def test_a_large_group_of_copies_is_one_line_with_its_size_by_set():
    splits = ["training"] * 5 + ["validation"] + ["testing"] * 2
    images = [dataset_lib.Image(f"a/{n}.jpg", "a", 0, split) for n, split in enumerate(splits)]
    copies = dataset_lib.find_copies(images, ["same"] * len(images))
    assert dataset_lib.format_copies(copies).splitlines()[2] == (
        "    validation a/5.jpg is a copy of training a/0.jpg "
        "(8 images: 5 training, 1 validation, 2 testing)"
    )


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
