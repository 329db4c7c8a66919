"""A dataset as TFRecord files: written by pre_input.py --tfrecords, read by retrain.py
--tfrecord_dir.

Each split goes to its own sharded files (`training-00000-of-00002.tfrecord`),
one example per image holding the encoded bytes as stored, its label and its
path relative to the image folder (input_pipeline.TFRECORD_FEATURES), so the
split, the labels and the bottleneck cache keys are those of the folder.
"""

import os

import tensorflow as tf

from retrain_suite import atomic_files, input_pipeline
from retrain_suite import dataset as dataset_lib


def shard_names(split, count):
    """File names of a split's TFRecord shards: one file, or numbered shards."""
    if count <= 1:
        return [f"{split}.tfrecord"]
    return [f"{split}-{n:05d}-of-{count:05d}.tfrecord" for n in range(count)]


def write_tfrecords(dataset, output_dir, images_per_shard=1000):
    """Write each split's images as TFRecord shards of input_pipeline.TFRECORD_FEATURES.

    Each example holds the image file's bytes as read (not decoded pixels), so
    the records are about the size of the images. Returns {split: [file names]}.
    Shards of an earlier run that the new split does not use are removed.
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
        for stale in tf.io.gfile.glob(os.path.join(output_dir, f"{split}*.tfrecord")):
            if os.path.basename(stale) not in names:
                tf.io.gfile.remove(stale)
        written[split] = names
    return written


def _write_shard(dataset, images, path):
    temporary = atomic_files.temporary_name(path)
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for image in images:
                data, problem = input_pipeline.read_regular_file(dataset.full_path(image))
                if problem:
                    raise dataset_lib.DatasetError(
                        f"{dataset.full_path(image)} {problem} while the records were written; "
                        "run pre_input.py again."
                    )
                info = input_pipeline.inspect_image_bytes(data, max_pixels=float("inf"))
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


def read_tfrecords(tfrecord_dir):
    """A folder written by write_tfrecords -> (Dataset, input_pipeline.TFRecordImages).

    The split is the one in the files. Dataset.images are in record order, so
    image i of the dataset is example i of the TFRecordImages.
    """
    labels_path = os.path.join(tfrecord_dir, "labels.txt")
    if not tf.io.gfile.exists(labels_path):
        raise dataset_lib.DatasetError(
            f"{tfrecord_dir} has no labels.txt; write it with "
            f"pre_input.py --output_dir {tfrecord_dir} --tfrecords."
        )
    with tf.io.gfile.GFile(labels_path, "rb") as f:
        data = f.read()
    try:
        labels = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise dataset_lib.DatasetError(
            f"{labels_path} is not UTF-8 text; write it again with pre_input.py --tfrecords."
        ) from e
    files, images = [], []
    for split in dataset_lib.SPLITS:
        names = sorted(tf.io.gfile.glob(os.path.join(tfrecord_dir, f"{split}*.tfrecord")))
        files.extend(names)
        spec = {k: v for k, v in input_pipeline.TFRECORD_FEATURES.items() if k != "image/encoded"}
        for record in tf.data.TFRecordDataset(names).as_numpy_iterator():
            example = tf.io.parse_single_example(record, spec)
            label = example["image/label_text"].numpy().decode("utf-8")
            index = int(example["image/label"].numpy())
            if index >= len(labels) or labels[index] != label:
                raise dataset_lib.DatasetError(
                    f"The records in {tfrecord_dir} do not match its labels.txt "
                    f"({label!r} has index {index}); write them again with pre_input.py."
                )
            path = example["image/path"].numpy().decode("utf-8")
            images.append(dataset_lib.Image(path, label, index, split))
    if not images:
        raise dataset_lib.DatasetError(f"{tfrecord_dir} holds no TFRecord examples.")
    dataset_lib._check_enough_classes(sorted({i.label for i in images}), tfrecord_dir)
    names = [f"{tfrecord_dir}:{image.path}" for image in images]
    return (dataset_lib.Dataset(tfrecord_dir, labels, images),
            input_pipeline.TFRecordImages(files, names))
