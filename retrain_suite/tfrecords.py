"""A dataset as TFRecord files: written by pre_input.py --tfrecords, read by retrain.py
--tfrecord_dir.

Each split goes to its own sharded files (`training-00000-of-00002.tfrecord`),
one example per image holding the encoded bytes as stored, its label and its
path relative to the image folder (image_pipelines.TFRECORD_FEATURES), so the
split, the labels and the bottleneck cache keys are those of the folder.

The folder may hold other files: only names of the shard pattern
(SHARD_NAME) are read, and a writer removes only those, so a user's
`training_backup.tfrecord` is neither read as data nor deleted. Every example
read back goes through read_records, which refuses damage (a cut or
overwritten file, a missing feature, a label outside labels.txt) with one
DatasetError naming the file and the record.
"""

import dataclasses
import os
import re
import stat
import struct

import tensorflow as tf
from google.protobuf import message

from retrain_suite import atomic_files, errors, tflite_metadata
from retrain_suite import dataset as dataset_lib
from retrain_suite.dataset import model as dataset_model
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines

# The names write_tfrecords gives: `training.tfrecord`, or `training-00000-of-00002.tfrecord`.
SHARD_NAME = re.compile(
    r"(?P<split>training|validation|testing)(?:-(?P<number>\d{5})-of-(?P<count>\d{5}))?\.tfrecord"
)

# What a damaged record file's message ends with.
WRITE_AGAIN = "write the records again with pre_input.py --tfrecords"


def shard_names(split, count):
    """File names of a split's TFRecord shards: one file, or numbered shards."""
    if count <= 1:
        return [f"{split}.tfrecord"]
    return [f"{split}-{n:05d}-of-{count:05d}.tfrecord" for n in range(count)]


def shards_in(folder, split):
    """Names in folder of the shape write_tfrecords gives split's shards, sorted."""
    names = []
    for entry in tf.io.gfile.listdir(folder):
        match = SHARD_NAME.fullmatch(entry.rstrip("/"))
        if match and match["split"] == split:
            names.append(entry.rstrip("/"))
    return sorted(names)


def write_tfrecords(dataset, output_dir, images_per_shard=1000):
    """Write each split's images as TFRecord shards of image_pipelines.TFRECORD_FEATURES.

    Each example holds the image file's bytes as read (not decoded pixels), so
    the records are about the size of the images. Returns {split: [file names]}.
    Shards of an earlier run that the new split does not use are removed;
    nothing else in output_dir is.
    """
    tf.io.gfile.makedirs(output_dir)
    written = {}
    for split in dataset_lib.SPLITS:
        images = dataset.in_split(split)
        count = max(1, -(-len(images) // images_per_shard))
        names = shard_names(split, count)
        for n, name in enumerate(names):
            shard = images[n * images_per_shard:(n + 1) * images_per_shard]
            _write_shard(dataset, shard, os.path.join(output_dir, name))
        for stale in shards_in(output_dir, split):
            if stale not in names:
                tf.io.gfile.remove(os.path.join(output_dir, stale))
        written[split] = names
    return written


def _write_shard(dataset, images, path):
    temporary = atomic_files.temporary_name(path)
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image in images:
                data, problem = image_files.read_regular_file(dataset.full_path(image))
                if problem:
                    raise dataset_lib.DatasetError(
                        f"{dataset.full_path(image)} {problem} while the records were written; "
                        "run pre_input.py again."
                    )
                info = image_files.inspect_image_bytes(data, max_pixels=float("inf"))
                writer.write(_example(image, data, info).SerializeToString())
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:  # Disk full, Ctrl-C, a file gone: no half-written shard is left behind.
        if tf.io.gfile.exists(temporary):
            tf.io.gfile.remove(temporary)
        raise


def _example(image, data, info):
    def as_bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def as_int(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": as_bytes(data),
        "image/label": as_int(image.label_index),
        "image/label_text": as_bytes(image.label.encode("utf-8")),
        "image/path": as_bytes(image.path.encode("utf-8")),
        "image/height": as_int(info.height),
        "image/width": as_int(info.width),
    }))


@dataclasses.dataclass(frozen=True)
class Record:
    """One example as read back and checked."""

    path: str  # relative to the image folder the records were written from
    label: str
    label_index: int  # in labels.txt
    encoded: bytes  # the image file's bytes


def read_records(files, labels):
    """Yield (file, Record) for every example of files, in order, each one checked.

    The one way the suite reads examples back. A file that is not a regular
    file, a cut or overwritten record (the TFRecord checksums), an example
    without one of its features, text that is not UTF-8 or a label not at its
    index in labels raise DatasetError naming the file and the record.
    """
    for file in files:
        _check_framing(file)
        number = 0
        try:
            for data in tf.data.TFRecordDataset([file]).as_numpy_iterator():
                yield file, _parsed(data, labels, file, number)
                number += 1
        except tf.errors.OpError as e:
            raise _damaged(file, number, errors.one_line(e)) from e


_RECORD_HEADER = struct.Struct("<QI")  # data length, masked CRC-32C of the length
_RECORD_FOOTER_BYTES = 4  # masked CRC-32C of the data


def _check_framing(file):
    """DatasetError unless every record's declared length fits in the file.

    TensorFlow's reader allocates the length a record header declares once
    that length's own checksum holds: a 100-byte file declaring a 64 GiB
    record crashed retrain.py (SIGSEGV). Walking the headers reads 12 bytes
    a record; the data and its checksum are left to TensorFlow's reader. A
    local file is opened without blocking and must be a regular file: a FIFO
    is refused, not waited on.
    """
    with _opened(file) as f:
        size = os.fstat(f.fileno()).st_size if "://" not in file else f.size()
        offset, number = 0, 0
        while offset < size:
            f.seek(offset)
            header = f.read(_RECORD_HEADER.size)
            if len(header) < _RECORD_HEADER.size:
                raise _damaged(file, number, "cut short inside a record header")
            length, _ = _RECORD_HEADER.unpack(header)
            end = offset + _RECORD_HEADER.size + length + _RECORD_FOOTER_BYTES
            if end > size:
                raise _damaged(file, number, f"declares {length:,} bytes of data, more than "
                                             "the file holds")
            offset, number = end, number + 1


def _opened(file):
    """A record file opened for reading (Python's buffered file where local: it seeks and
    reads faster than GFile), or DatasetError if it cannot be, or is not a regular file."""
    if "://" in file:  # Remote file systems hold no special files.
        return tf.io.gfile.GFile(file, "rb")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise dataset_lib.DatasetError(f"{file} cannot be read: {e.strerror}.") from e
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise dataset_lib.DatasetError(
            f"{file} is not a regular file ({image_files.special_file_kind(mode)}); move it "
            f"away and {WRITE_AGAIN}."
        )
    return open(fd, "rb", closefd=True)


def _parsed(data, labels, file, number):
    example = tf.train.Example()
    try:
        example.ParseFromString(data)
    except message.DecodeError as e:
        raise _damaged(file, number, "not a tf.train.Example") from e
    features = example.features.feature

    def single(name, kind):
        values = getattr(features[name], kind).value if name in features else []
        if len(values) != 1:
            raise _damaged(file, number, f"{name} holds {len(values)} values, not one")
        return values[0]

    def text(name):
        try:
            return single(name, "bytes_list").decode("utf-8")
        except UnicodeDecodeError as e:
            raise _damaged(file, number, f"{name} is not UTF-8 text") from e

    encoded, index = single("image/encoded", "bytes_list"), single("image/label", "int64_list")
    label, path = text("image/label_text"), text("image/path")
    if not 0 <= index < len(labels) or labels[index] != label:
        raise _damaged(file, number, f"label {label!r} has index {index}, which is not its "
                                     "line in labels.txt")
    return Record(path, label, index, encoded)


def _damaged(file, number, problem):
    return dataset_lib.DatasetError(f"{file}, record {number}: {problem}; {WRITE_AGAIN}.")


def read_tfrecords(tfrecord_dir):
    """A folder written by write_tfrecords -> (Dataset, image_pipelines.TFRecordImages).

    The split is the one in the files. Dataset.images are in record order, so
    image i of the dataset is example i of the TFRecordImages.
    """
    labels_path = os.path.join(tfrecord_dir, "labels.txt")
    if not tf.io.gfile.exists(labels_path):
        raise dataset_lib.DatasetError(
            f"{tfrecord_dir} has no labels.txt; write it with "
            f"pre_input.py --output_dir {tfrecord_dir} --tfrecords."
        )
    data, problem = image_files.read_regular_file(labels_path,
                                                     tflite_metadata.MAX_LABELS_BYTES)
    if problem:
        raise dataset_lib.DatasetError(f"{labels_path}: {problem}; {WRITE_AGAIN}.")
    try:
        labels = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise dataset_lib.DatasetError(
            f"{labels_path} is not UTF-8 text; write it again with pre_input.py --tfrecords."
        ) from e
    files, images, seen = [], [], set()
    for split in dataset_lib.SPLITS:
        names = [os.path.join(tfrecord_dir, name) for name in _one_set_of_shards(tfrecord_dir, split)]
        files.extend(names)
        for file, record in read_records(names, labels):
            if record.path in seen:  # Rows are found by path: a second one would hide the first.
                raise dataset_lib.DatasetError(
                    f"{file}: the image {record.path!r} is in the records twice; {WRITE_AGAIN}."
                )
            seen.add(record.path)
            images.append(dataset_lib.Image(record.path, record.label, record.label_index, split))
    if not images:
        raise dataset_lib.DatasetError(f"{tfrecord_dir} holds no TFRecord examples.")
    dataset_model.check_enough_classes(sorted({i.label for i in images}), tfrecord_dir)
    names = [f"{tfrecord_dir}:{image.path}" for image in images]
    return (dataset_lib.Dataset(tfrecord_dir, labels, images),
            image_pipelines.TFRecordImages(
                files, names, lambda: (record.encoded for _, record in read_records(files, labels))))


def _one_set_of_shards(folder, split):
    """split's shard names in folder: one file, or every shard of one count. DatasetError for
    a set with shards missing or of two writes (one killed before it removed the old)."""
    names = shards_in(folder, split)
    counts = {SHARD_NAME.fullmatch(name)["count"] for name in names}
    if names and (len(counts) > 1 or names != shard_names(split, int(counts.pop() or 1))):
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise dataset_lib.DatasetError(
            f"{folder} holds {split} shards that are not one complete set ({shown}); "
            f"{WRITE_AGAIN}."
        )
    return names
