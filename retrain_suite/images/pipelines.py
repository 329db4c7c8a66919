r"""The tf.data pipelines of images, and the image sources they read.

An image source (`ImageFiles`, or `TFRecordImages` for pre_input.py
--tfrecords) yields each image's bytes read once, hashed and checked as read;
the pipelines decode them with the one preprocessing function into batches of
float32 `[B, H, W, 3]` in [0, 1]: `image_batches` for bottleneck computation
and classification, `distorted_batches` and `fine_tuning_batches` (shaped by
an `ImageBatchSpec`) for training on images.

All functions here build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from retrain_suite.images import distortions as image_distortions
from retrain_suite.images import files as image_files
from retrain_suite.images import preprocess as image_preprocess

# Images decoded at once: fixed, not AUTOTUNE, so the images in flight are bounded
# by construction (with AUTOTUNE one bench/run.py run saw peak memory 13% higher
# for 2,000 images than for 200). One image per core and one batch ahead still
# keep the module fed: decoding a batch takes a fraction of its forward pass.
PARALLEL_DECODES = os.cpu_count() or 1


def image_batches(paths, height, width, batch_size, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
    """Image files -> dataset of (index int64 [B], content string [B], images float32 [B, H, W, 3]).

    `index` is each image's position in `paths`; `content` is the hex SHA-1 of
    the very bytes that were decoded (see _ImageSource.batches). Files that
    cannot be read or decoded, or are larger than max_pixels, are dropped from
    the stream, so a caller finds them as the indices that never came out.
    Reading and decoding run in parallel and the next batches are prefetched
    while the current one is being used.
    """
    return ImageFiles(paths).batches(list(range(len(paths))), height, width, batch_size, max_pixels)


def fixed(dataset):
    """dataset with tf.data's autotuning off. The pipelines here fix their parallelism and
    buffers themselves, so it has nothing to tune, and its thread sleeps for up to seconds
    between rounds: closing a Session waited for that sleep to end (4.5 s after one run
    in three of a 1,000-photo bottleneck computation)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def each_batch(sess, fetches):
    """Yield sess.run(fetches) until the input pipeline behind them runs out."""
    while True:
        try:
            yield sess.run(fetches)
        except tf.errors.OutOfRangeError:
            return


def _decoded_batches(encoded, height, width, batch_size):
    """(index, content, encoded bytes, orientation) elements -> batches of (index, content, image)."""

    def decode(index, content, data, orientation):
        return index, content, image_preprocess.decode_and_resize(data, height, width, orientation)

    dataset = encoded.map(decode, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors()
    return fixed(dataset.batch(batch_size).prefetch(1))


def _checked(data, max_pixels):
    """What the pipeline needs from the bytes it is about to decode, as numpy values.

    -> (bytes to decode, hex SHA-1, EXIF orientation, usable): the hash,
    orientation and size limit all come from these bytes, never from an
    earlier read of the file, which may have held other bytes. The bytes to
    decode are image_files.decodable_bytes(data) (a GIF's first frame); the hash is of
    the whole data.
    """
    info = image_files.inspect_image_bytes(data, max_pixels) if data is not None else None
    if info is None or info.problem:
        return np.array(b"", object), np.array(b"", object), np.int32(1), np.bool_(False)
    return (np.array(image_files.decodable_bytes(data), object), np.array(info.sha1.encode("ascii"), object),
            np.int32(info.orientation), np.bool_(True))


def _checked_elements(dataset, check):
    """index int64 elements -> (index, content, data, orientation) of the usable images.

    check: index (numpy int64) -> _checked(...)'s tuple. Runs in parallel: the
    Python work is reading and hashing, which release the GIL.
    """

    def load(index):
        data, content, orientation, usable = tf.numpy_function(
            check, [index], [tf.string, tf.string, tf.int32, tf.bool], stateful=False
        )
        for tensor in (data, content, orientation, usable):
            tensor.set_shape([])
        return index, content, data, orientation, usable

    dataset = dataset.map(load, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.filter(lambda index, content, data, orientation, usable: usable)
    return dataset.map(lambda index, content, data, orientation, usable:
                       (index, content, data, orientation))


# The examples pre_input.py --tfrecords writes: one per image, the file's bytes as read.
TFRECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),  # the image file's bytes
    "image/label": tf.io.FixedLenFeature([], tf.int64),  # index in labels.txt
    "image/label_text": tf.io.FixedLenFeature([], tf.string),  # UTF-8 class name
    "image/path": tf.io.FixedLenFeature([], tf.string),  # relative to --image_dir, '/'
    "image/height": tf.io.FixedLenFeature([], tf.int64),  # as stored, before EXIF rotation
    "image/width": tf.io.FixedLenFeature([], tf.int64),
}


class _ImageSource:
    """Common part of the image sources: decoding what encoded_dataset yields."""

    def batches(self, indices, height, width, batch_size, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
        """Dataset of (index int64 [B], content string [B], images float32 [B, H, W, 3])
        for the images at `indices`, each turned upright by its EXIF orientation.

        Each image is read once: `content` is the hex SHA-1 of the bytes that
        were decoded, and the orientation and size limit come from those same
        bytes, so a file replaced since it was inspected is hashed, checked and
        decoded as what it is now. Images that cannot be read or decoded, or
        have more than max_pixels, are dropped, so a caller finds them as the
        indices that never came out.
        """
        return _decoded_batches(
            self.encoded_dataset(indices, max_pixels), height, width, batch_size
        )


class ImageFiles(_ImageSource):
    """Images stored as files: the usual source of bottleneck computation."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def name(self, index):
        return self.paths[index]

    def inspect(self, max_pixels):
        """[ImageFile] in order: content hash, orientation, problem."""
        return image_files.inspect_image_files(self.paths, max_pixels)

    def encoded_dataset(self, indices, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS, shuffle_seed=None):
        """Dataset of (index int64, content string, encoded bytes, orientation int32).

        Each file at `indices` is read once (see image_files.read_regular_file: special files
        are refused without blocking) and hashed and checked as read;
        unusable ones are left out. With shuffle_seed, an endless stream in a
        new order each epoch (files are read after shuffling, so only indices
        wait in the buffer). Paths stay in Python: names that are not valid
        UTF-8 never need to become string tensors.
        """

        dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(indices), tf.int64))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(indices), seed=shuffle_seed).repeat()
        return _checked_elements(dataset, lambda index: self.read_checked(index, max_pixels))

    def read_checked(self, index, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
        """The file at position index (numpy int), read once: _checked's tuple."""
        data, problem = image_files.read_regular_file(self.paths[int(index)])
        return _checked(None if problem else data, max_pixels)

    def why_undecodable(self, index, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
        return image_files.why_undecodable(self.paths[index], max_pixels)


class TFRecordImages(_ImageSource):
    """Images stored in TFRecord files written by pre_input.py --tfrecords.

    An image's index counts examples across the files in the order given.
    read_encoded() yields each example's encoded image bytes in that order,
    checking each record as it goes (tfrecords.read_records: the one reader
    of examples, which raises the suite's error for a damaged one).
    """

    def __init__(self, record_files, names, read_encoded):
        self.record_files = list(record_files)
        self.names = list(names)  # one per example, for messages
        self.read_encoded = read_encoded

    def __len__(self):
        return len(self.names)

    def name(self, index):
        return self.names[index]

    def encoded(self):
        """Yield each example's encoded image bytes, in order (eagerly)."""
        return self.read_encoded()

    def inspect(self, max_pixels):
        return [image_files.inspect_image_bytes(data, max_pixels) for data in self.encoded()]

    def encoded_dataset(self, indices, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS, shuffle_seed=None):
        """As ImageFiles.encoded_dataset; examples not in `indices` are skipped unparsed.

        With shuffle_seed the stream is endless and shuffled through a buffer
        of up to 1,000 encoded images.
        """
        total = max(indices) + 1 if indices else 0
        wanted = [False] * total
        for i in indices:
            wanted[i] = True
        wanted = tf.constant(wanted, tf.bool)
        # The records were checked when read (read_encoded). One damaged since is left
        # out: without its image it reads as no bytes (undecodable); a cut or overwritten
        # file ends the stream (the decoding drops errors). why_undecodable then reads
        # it again through read_encoded, which names the file and the record.
        encoded_only = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=b"")}
        records = tf.data.TFRecordDataset(self.record_files).take(total).enumerate()
        records = records.filter(lambda index, _: tf.gather(wanted, index))
        dataset = records.map(lambda index, record: (
            index, tf.io.parse_single_example(record, encoded_only)["image/encoded"],
        ))
        if shuffle_seed is not None:
            dataset = dataset.repeat().shuffle(min(len(indices), 1000), seed=shuffle_seed)

        def check_record(index, data):
            # The bytes decoded are _checked's (a GIF's first frame only), as for files.
            decodable, content, orientation, usable = tf.numpy_function(
                lambda d: _checked(d, max_pixels), [data],
                [tf.string, tf.string, tf.int32, tf.bool], stateful=False,
            )
            for tensor in (decodable, content, orientation, usable):
                tensor.set_shape([])
            return index, content, decodable, orientation, usable

        dataset = dataset.map(check_record, num_parallel_calls=PARALLEL_DECODES,
                              deterministic=True)
        dataset = dataset.filter(lambda index, content, data, orientation, usable: usable)
        return dataset.map(lambda index, content, data, orientation, usable:
                           (index, content, data, orientation))

    def why_undecodable(self, index, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS):
        for i, data in enumerate(self.encoded()):
            if i == index:
                return image_files.why_bytes_undecodable(data, max_pixels)
        return "missing from the record files"


@dataclasses.dataclass(frozen=True)
class ImageBatchSpec:
    """The batches of training images a stream yields, and the seed they are drawn from.

    height, width: the module's input size in pixels (each image comes out
    float32 [height, width, 3] in [0, 1]); batch_size: images per batch;
    distortions: an image_distortions.Distortions (all off: the images as
    decode_and_resize gives them); seed: int, every order and distortion is
    drawn from it; max_pixels: images whose width x height (as stored) is
    larger are dropped without being decoded.
    """

    height: int
    width: int
    batch_size: int
    distortions: image_distortions.Distortions
    seed: int
    max_pixels: int = image_files.DEFAULT_MAX_IMAGE_PIXELS


def distorted_batches(images, indices, labels, spec):
    """Endless batches of randomly distorted training images for the module.

    images: an ImageFiles or TFRecordImages; indices: the training images in
    it, with their int64 labels; spec: an ImageBatchSpec. Yields (images
    float32 [B, height, width, 3] in [0, 1], labels int64 [B]). Decoding and
    distortion run in parallel and batches are prefetched, so the module does
    not wait on them. Undecodable images, and images over spec.max_pixels,
    are dropped.
    """
    label_by_index = dict(zip(indices, labels))
    label_of = tf.constant([label_by_index.get(i, 0) for i in range(max(indices) + 1)], tf.int64)
    encoded = images.encoded_dataset(indices, spec.max_pixels, shuffle_seed=spec.seed).enumerate()

    def load(count, element):
        index, _, data, orientation = element
        image = image_distortions.decoded_distorted(data, orientation, spec, count)
        return image, tf.gather(label_of, index)

    dataset = encoded.map(load, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors()
    return fixed(dataset.batch(spec.batch_size).prefetch(1))


def fine_tuning_batches(images, indices, labels, spec, first_step=0):
    """Endless batches of training images for fine-tuning, from first_step on.

    images: an ImageFiles (read by position); indices: the training images in
    it, with their int64 labels; spec: an ImageBatchSpec. Yields (images
    float32 [B, height, width, 3] in [0, 1], labels int64 [B]). Element j of
    the stream (in batch j // batch_size) is image j % N of epoch j // N, in
    an order drawn statelessly from (seed, epoch), and distorted (when any
    distortion is on) with a variant drawn from (seed, j): every batch is a
    function of (seed, step) alone, so a run resumed at first_step trains on
    exactly the batches an uninterrupted one does. An image that cannot be
    read or decoded any more is dropped, which shifts the batches after it.
    """
    count = len(indices)
    order = tf.constant(list(indices), tf.int64)
    label_of = tf.constant(list(labels), tf.int64)
    first = first_step * spec.batch_size
    first_epoch = first // count

    def epoch(number):
        positions = tf.argsort(tf.random.stateless_uniform(
            [count], tf.stack([tf.cast(spec.seed, tf.int64), number])))
        elements = number * count + tf.range(count, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(
            (elements, tf.gather(order, positions), tf.gather(label_of, positions)))

    stream = tf.data.Dataset.counter(first_epoch, dtype=tf.int64).flat_map(epoch)
    stream = stream.skip(first - first_epoch * count)

    def load(element, index, label):
        data, _, orientation, usable = tf.numpy_function(
            lambda i: images.read_checked(i, spec.max_pixels), [index],
            [tf.string, tf.string, tf.int32, tf.bool], stateful=False,
        )
        for tensor in (data, orientation, usable):
            tensor.set_shape([])
        if not spec.distortions.any():
            image = image_preprocess.decode_and_resize(data, spec.height, spec.width, orientation)
            return image, label, usable
        image = image_distortions.decoded_distorted(data, orientation, spec, element)
        return image, label, usable

    dataset = stream.map(load, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors().filter(lambda image, label, usable: usable)
    dataset = dataset.map(lambda image, label, usable: (image, label))
    return fixed(dataset.batch(spec.batch_size).prefetch(1))
