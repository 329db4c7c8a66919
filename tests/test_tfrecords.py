"""pre_input.py --tfrecords and retrain.py --tfrecord_dir."""

import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import final_layer_constants, make_dataset, retrain_settings, run_command
from test_fine_tuning import release_fifo

from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite import errors, job, preparation, tflite_metadata, tfrecords
from retrain_suite.images import pipelines as image_pipelines


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    image_dir = make_dataset(root / "data", per_class=16)
    with open(os.path.join(image_dir, "red", "broken.jpg"), "w") as f:
        f.write("not an image")
    process = run_command(
        "pre_input.py", f"--image_dir={image_dir}", f"--output_dir={root}/prepared",
        "--tfrecords", "--validation_percentage=15", "--testing_percentage=25", check=True,
    )
    return root, image_dir, str(root / "prepared"), process


def read_all(files):
    examples = []
    for record in tf.data.TFRecordDataset(files):
        examples.append(tf.io.parse_single_example(record, image_pipelines.TFRECORD_FEATURES))
    return examples


def test_records_parse_with_plain_tfrecorddataset_and_hold_the_files_bytes(prepared):
    _, image_dir, out, process = prepared
    assert "broken.jpg" in process.stderr  # Bad images are reported and left out.
    labels = open(os.path.join(out, "labels.txt")).read().split()
    for split in dataset_lib.SPLITS:
        examples = read_all([os.path.join(out, f"{split}.tfrecord")])
        listed = open(os.path.join(out, f"{split}.txt"), encoding="utf-8").read().splitlines()
        assert [e["image/path"].numpy().decode() for e in examples] == [
            line.split("\t")[0] for line in listed]
        for example in examples:
            path = example["image/path"].numpy().decode()
            assert path != "red/broken.jpg"
            with open(os.path.join(image_dir, path), "rb") as f:
                data = f.read()
            assert example["image/encoded"].numpy() == data
            label = example["image/label_text"].numpy().decode()
            assert labels[int(example["image/label"])] == label == path.split("/")[0]
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
            assert [int(example["image/height"]), int(example["image/width"])] == \
                decoded.shape[:2].as_list()


def test_records_are_about_the_size_of_the_images(prepared):
    _, image_dir, out, _ = prepared
    images = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(image_dir) for f in files
        if f != "broken.jpg"
    )
    records = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                  if f.endswith(".tfrecord"))
    assert abs(records - images) <= 0.10 * images, (records, images)


def test_training_from_records_matches_training_from_the_folder(prepared, tiny_module, tmp_path):
    _, image_dir, out, _ = prepared
    common = dict(bottleneck_dir=str(tmp_path / "shared_cache"), how_many_training_steps=100,
                  random_seed=5)
    from_folder = retrain_settings(
        tmp_path / "folder", image_dir, tiny_module, validation_percentage=15,
        testing_percentage=25, **common,
    )
    accuracy_folder = job.run_retraining(config_lib.from_flat(from_folder))
    from_records = retrain_settings(tmp_path / "records", "", tiny_module, **common)
    from_records["tfrecord_dir"] = out
    accuracy_records = job.run_retraining(config_lib.from_flat(from_records))
    assert accuracy_records == accuracy_folder == 1.0
    expected, got = final_layer_constants(from_folder["output_graph"]), final_layer_constants(
        from_records["output_graph"])
    assert sorted(expected) == sorted(got) and expected
    for name in expected:
        np.testing.assert_array_equal(expected[name], got[name])
    assert open(from_records["output_labels"]).read() == open(from_folder["output_labels"]).read()


def test_switching_to_records_reuses_every_bottleneck(prepared, tiny_module, tmp_path, caplog):
    _, image_dir, out, _ = prepared
    cache = str(tmp_path / "cache")
    settings = retrain_settings(tmp_path / "a", image_dir, tiny_module, bottleneck_dir=cache,
                                how_many_training_steps=10, eval_step_interval=5)
    job.run_retraining(config_lib.from_flat(settings))
    caplog.clear()
    caplog.set_level("INFO")
    settings = retrain_settings(tmp_path / "b", "", tiny_module, bottleneck_dir=cache,
                                how_many_training_steps=10, eval_step_interval=5)
    settings["tfrecord_dir"] = out
    job.run_retraining(config_lib.from_flat(settings))
    assert ("Bottlenecks: 48 images, 48 distinct (0 copies): 0 computed, 48 from the cache, "
            "0 skipped") in caplog.text


def test_large_splits_are_sharded_and_stale_shards_removed(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    dataset = dataset_lib.build_dataset(image_dir, 10, 10)
    out = str(tmp_path / "out")
    written = tfrecords.write_tfrecords(dataset, out, images_per_shard=5)
    training = dataset.in_split("training")
    shards = -(-len(training) // 5)
    assert written["training"] == [
        f"training-{n:05d}-of-{shards:05d}.tfrecord" for n in range(shards)]
    assert len(read_all([os.path.join(out, f) for f in written["training"]])) == len(training)
    tfrecords.write_tfrecords(dataset, out, images_per_shard=1000)
    assert sorted(f for f in os.listdir(out) if f.startswith("training")) == ["training.tfrecord"]


def test_tfrecord_dir_refuses_a_split_it_cannot_apply(prepared, tiny_module, tmp_path):
    _, image_dir, out, _ = prepared
    settings = retrain_settings(tmp_path, "", tiny_module, validation_percentage=30)
    settings["tfrecord_dir"] = out
    with pytest.raises(config_lib.UsageError, match="split is the one in the files"):
        job.run_retraining(config_lib.from_flat(settings))
    settings = retrain_settings(tmp_path, "", tiny_module, split_by="content")
    settings["tfrecord_dir"] = out
    with pytest.raises(config_lib.UsageError, match="--tfrecords --split_by=content"):
        job.run_retraining(config_lib.from_flat(settings))
    settings = retrain_settings(tmp_path, image_dir, tiny_module)
    settings["tfrecord_dir"] = out
    with pytest.raises(config_lib.UsageError, match="not both"):
        job.run_retraining(config_lib.from_flat(settings))
    settings = retrain_settings(tmp_path, "", tiny_module)
    settings["tfrecord_dir"] = str(tmp_path / "no_records")  # Outputs may not be inside it.
    os.mkdir(settings["tfrecord_dir"])
    with pytest.raises(dataset_lib.DatasetError, match="no labels.txt"):
        job.run_retraining(config_lib.from_flat(settings))


def test_distortions_read_training_images_from_the_records(prepared, tiny_module, tmp_path,
                                                          caplog):
    _, _, out, _ = prepared
    caplog.set_level("INFO")
    settings = retrain_settings(tmp_path, "", tiny_module, how_many_training_steps=400,
                                eval_step_interval=50, flip_left_right=True, random_crop=10,
                                train_batch_size=32)
    settings["tfrecord_dir"] = out
    assert job.run_retraining(config_lib.from_flat(settings)) == 1.0
    assert "Distortions are on" in caplog.text


# --- the folder's other files, and damaged records -----------------------------------


def test_a_users_own_tfrecord_files_in_the_folder_are_neither_deleted_nor_read(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    dataset = dataset_lib.build_dataset(image_dir, 10, 10)
    out = tmp_path / "out"
    written = tfrecords.write_tfrecords(dataset, str(out), images_per_shard=5)
    # The user's own files beside the suite's: one a copy of real records.
    backup = out / "training_2019_backup.tfrecord"
    kept = (out / written["training"][0]).read_bytes()
    backup.write_bytes(kept)
    (out / "testing.old.tfrecord").write_bytes(b"mine")
    preparation.write_lists(dataset, str(out))
    read, _ = tfrecords.read_tfrecords(str(out))
    assert [i.path for i in read.images] == [
        i.path for split in dataset_lib.SPLITS for i in dataset.in_split(split)]
    tfrecords.write_tfrecords(dataset, str(out), images_per_shard=1000)
    assert backup.read_bytes() == kept
    assert (out / "testing.old.tfrecord").read_bytes() == b"mine"
    assert sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) == [
        "testing.old.tfrecord", "testing.tfrecord", "training.tfrecord",
        "training_2019_backup.tfrecord", "validation.tfrecord"]


def test_shards_of_two_writes_are_refused_not_read_twice(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    dataset = dataset_lib.build_dataset(image_dir, 10, 10)
    out = tmp_path / "out"
    written = tfrecords.write_tfrecords(dataset, str(out), images_per_shard=5)
    preparation.write_lists(dataset, str(out))
    # A write killed after its new shard and before removing the old ones.
    (out / "training.tfrecord").write_bytes((out / written["training"][0]).read_bytes())
    with pytest.raises(dataset_lib.DatasetError, match="not one complete set"):
        tfrecords.read_tfrecords(str(out))


def feature(value):
    if isinstance(value, int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def png(colour):
    return tf.io.encode_png(tf.constant([[colour] * 4] * 4, tf.uint8)).numpy()


def good_examples(count=4):
    """Two classes, count // 2 images each: {feature name: value} per example."""
    return [{"image/encoded": png([200 * (n % 2), 30 + n, 30]), "image/label": n % 2,
             "image/label_text": [b"blue", b"red"][n % 2], "image/path": f"x/{n}.png".encode(),
             "image/height": 4, "image/width": 4} for n in range(count)]


def write_records(folder, examples):
    """labels.txt and training.tfrecord holding examples. -> the record file's path."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("blue\nred\n")
    path = os.path.join(folder, "training.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for values in examples:
            writer.write(tf.train.Example(features=tf.train.Features(
                feature={k: feature(v) for k, v in values.items()})).SerializeToString())
    return path


def damaged(kind, path):
    """Damage the record file at path the way `kind` says."""
    data = bytearray(open(path, "rb").read())
    if kind == "truncated":
        data = data[:-7]
    else:  # a flipped byte inside the last record's image: its checksum no longer holds
        data[-30] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


EDITS = {
    "label -1": lambda e: e.update({"image/label": -1}),  # labels[-1] is 'red': it passed
    "label past the labels": lambda e: e.update({"image/label": 2}),
    "no label": lambda e: e.pop("image/label"),
    "label_text not UTF-8": lambda e: e.update({"image/label_text": b"\xffred"}),
    "no image": lambda e: e.pop("image/encoded"),
    "path not UTF-8": lambda e: e.update({"image/path": b"x/\xff.png"}),
}


@pytest.mark.parametrize("kind", ["truncated", "bad checksum", *EDITS])
def test_damaged_records_are_one_dataset_error_naming_the_file(tmp_path, kind):
    examples = good_examples()
    if kind in EDITS:
        examples[3]["image/label_text"] = b"red"
        examples[3]["image/label"] = 1
        EDITS[kind](examples[3])
    path = write_records(tmp_path / "records", examples)
    if kind not in EDITS:
        damaged(kind, path)
    with pytest.raises(dataset_lib.DatasetError) as raised:
        tfrecords.read_tfrecords(str(tmp_path / "records"))
    message = str(raised.value)
    assert message.startswith(f"{path}, record 3: ") and "pre_input.py --tfrecords" in message
    assert "\n" not in message


def test_a_record_declaring_more_data_than_its_file_holds_is_refused_not_allocated(tmp_path):
    """A header whose length checksum holds, declaring 64 GiB: TensorFlow's reader
    allocated it and the process died (SIGSEGV), so the records are walked first."""
    path = write_records(tmp_path / "records", good_examples())
    length = struct.pack("<Q", 1 << 36)
    header = length + struct.pack("<I", masked_crc32c(length))
    with open(path, "ab") as f:
        f.write(header + b"x" * 100)
    # In a process of its own: before the fix, reading crashed the interpreter.
    process = subprocess.run(
        [sys.executable, "-c", "import sys; from retrain_suite import tfrecords, dataset\n"
         "try:\n    tfrecords.read_tfrecords(sys.argv[1])\n"
         "except dataset.DatasetError as e:\n    print(e)", str(tmp_path / "records")],
        capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.strip() == (
        f"{path}, record 4: declares 68,719,476,736 bytes of data, more than the file holds; "
        "write the records again with pre_input.py --tfrecords.")


def masked_crc32c(data):
    """The masked CRC-32C (Castagnoli) a TFRecord header carries."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_record_damaged_after_it_was_read_is_a_dataset_error_when_read_again(tmp_path):
    path = write_records(tmp_path / "records", good_examples())
    dataset, images = tfrecords.read_tfrecords(str(tmp_path / "records"))
    assert len(images.inspect(10**6)) == len(dataset.images) == 4
    examples = good_examples()
    del examples[2]["image/encoded"]
    write_records(tmp_path / "records", examples)
    with pytest.raises(dataset_lib.DatasetError, match=f"{path}, record 2: image/encoded holds 0"):
        images.inspect(10**6)
    # The graph reader takes the lost image as undecodable, and the reason is asked of
    # the checked reader.
    with pytest.raises(dataset_lib.DatasetError, match="record 2"):
        images.why_undecodable(2)


@pytest.mark.parametrize("name", ["training.tfrecord", "labels.txt"])
def test_a_fifo_named_like_a_shard_or_the_labels_is_refused_not_waited_on(tmp_path, name):
    write_records(tmp_path / "records", good_examples())
    path = str(tmp_path / "records" / name)
    os.remove(path)
    os.mkfifo(path)
    # Were the FIFO waited on, this writer would end the wait (with no bytes) after a
    # while, and the test would fail on the missing error instead of hanging.
    release = threading.Timer(20, release_fifo, [path])
    release.start()
    try:
        with pytest.raises(dataset_lib.DatasetError, match="not a regular file .a FIFO"):
            tfrecords.read_tfrecords(str(tmp_path / "records"))
    finally:
        release.cancel()


def test_the_same_image_twice_in_the_records_is_refused(tmp_path):
    examples = good_examples()
    examples[3]["image/path"] = examples[1]["image/path"]
    write_records(tmp_path / "records", examples)
    with pytest.raises(dataset_lib.DatasetError, match="in the records twice"):
        tfrecords.read_tfrecords(str(tmp_path / "records"))


def test_retrain_on_damaged_records_ends_in_one_error_line(tmp_path):
    path = write_records(tmp_path / "records", good_examples())
    damaged("truncated", path)
    # retrain.py --tfrecord_dir=... --bottleneck_dir=... --output_graph=..., its run in this
    # process: a SuiteError of one line is the command's `error:` line.
    with pytest.raises(errors.SuiteError) as raised:
        job.run_retraining(config_lib.from_flat({
            "tfrecord_dir": str(tmp_path / "records"), "bottleneck_dir": str(tmp_path / "cache"),
            "output_graph": str(tmp_path / "out" / "g.pb")}))
    assert "\n" not in str(raised.value)
    assert f"error: {raised.value}".startswith(f"error: {path}, record 3: ")


def test_records_damaged_while_the_run_reads_them_are_one_dataset_error(
        tmp_path, tiny_module, monkeypatch):
    path = write_records(tmp_path / "records", good_examples(8))
    settings = retrain_settings(tmp_path, "", tiny_module, how_many_training_steps=2)
    settings["tfrecord_dir"] = str(tmp_path / "records")
    read = tfrecords.read_tfrecords

    def read_then_damage_after_inspection(folder):
        dataset, images = read(folder)
        inspect = images.inspect

        def inspect_then_cut(max_pixels):
            files = inspect(max_pixels)
            damaged("bad checksum", path)  # Between the checked read and the tf.data pipeline.
            return files

        images.inspect = inspect_then_cut
        return dataset, images

    monkeypatch.setattr(tfrecords, "read_tfrecords", read_then_damage_after_inspection)
    with pytest.raises(dataset_lib.DatasetError, match=f"{path}, record 7: "):
        job.run_retraining(config_lib.from_flat(settings))


def test_a_labels_file_larger_than_any_labels_beside_the_records_is_refused_unread(tmp_path):
    folder = str(tmp_path / "records")
    write_records(folder, good_examples())
    with open(os.path.join(folder, "labels.txt"), "r+b") as f:
        f.truncate(tflite_metadata.MAX_LABELS_BYTES + 1)
    with pytest.raises(dataset_lib.DatasetError, match="larger than the 67,108,864 bytes"):
        tfrecords.read_tfrecords(folder)
