"""pre_input: the decode check and list writers (retrain_suite.preparation) and the script.

The scan, split, counts and copies it reports are tested in test_dataset_*.py
and test_copies.py.
"""

import os

import numpy as np
from helpers import (
    dataset_with_copies,
    make_dataset,
    run_command,
    splits_of,
    synthetic_image,
    touch,
    write_image,
)

from retrain_suite import dataset as dataset_lib
from retrain_suite import preparation, tfrecords


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
    bad = dict(preparation.find_bad_images(dataset))
    assert set(bad) == {"red/text.jpg", "red/empty.jpg"}
    assert bad["red/empty.jpg"] == "empty file"
    assert bad["red/text.jpg"].startswith("not a decodable image")
    assert "\n" not in bad["red/text.jpg"]


def test_pre_input_script_writes_lists_and_prints_table(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    touch(os.path.join(image_dir, "green", "broken.jpg"), b"not an image")
    output_dir = tmp_path / "prepared"
    process = run_command(
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
    process = run_command(
        "pre_input.py", f"--image_dir={missing}", f"--output_dir={tmp_path / 'out'}"
    )
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    error_lines = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, process.stderr[-3000:]
    assert str(missing) in error_lines[0]
    assert not (tmp_path / "out").exists()


def test_pre_input_script_without_image_dir_flag_fails_in_one_line(tmp_path):
    process = run_command("pre_input.py", f"--output_dir={tmp_path / 'out'}")
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == "error: --image_dir is required (see --help)."


def test_pre_input_script_prints_copies_and_splits_by_content(tmp_path):
    image_dir, made = dataset_with_copies(tmp_path / "data")
    output_dir = tmp_path / "prepared"
    process = run_command(
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
