r"""Every tf.data pipeline of the suite, and the one image preprocessing function.

`decode_and_resize` is the single place where an encoded image becomes the
float32 `[H, W, 3]` tensor in [0, 1] that a TF Hub image feature-vector module
expects. Bottleneck computation and `label_image.py` both call it, so an image
is preprocessed the same way when it is cached for training and when it is
classified later: no train/serve skew.

All functions here build graph ops; call them inside a `tf.Graph().as_default()`
block (or eagerly, for a quick look).
"""

import dataclasses
import hashlib
import io
import os
import stat
import struct
import warnings
from typing import Optional

import numpy as np
import tensorflow as tf
from PIL import Image

from retrain_suite import errors

AUTOTUNE = tf.data.AUTOTUNE


# Images decoded at once: fixed, not AUTOTUNE, so the images in flight are bounded
# by construction (with AUTOTUNE one bench/run.py run saw peak memory 13% higher
# for 2,000 images than for 200). One image per core and one batch ahead still
# keep the module fed: decoding a batch takes a fraction of its forward pass.
PARALLEL_DECODES = os.cpu_count() or 1


JPEG_DECODE_RATIOS = (8, 4, 2)  # the reduced scales libjpeg decodes at, largest first


# Raise whenever decode_and_resize changes its output: cached bottlenecks are keyed on it.
PREPROCESSING_VERSION = 3  # 3: large JPEGs decoded at reduced scale


DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # 100 Mpx: 10000x10000 decodes in ~300 MB.


_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """What reading an image file told us, before any decoding."""

    sha1: Optional[str]  # hex digest of the file's bytes; None if unreadable
    orientation: int  # EXIF orientation 1-8 (1: stored upright)
    problem: Optional[str]  # why the file cannot be used, or None
    width: int = 0  # as stored, from the header (0 when there is a problem)
    height: int = 0


def read_regular_file(path, max_bytes=None):
    """The bytes of one file the suite reads. -> (bytes, None), or (None, one-line reason).

    Every local file the suite reads goes through here (images, cache entries,
    labels files, graphs, TFLite models, checkpoints). A local path is opened
    non-blocking and checked with fstat on the open descriptor before anything
    is read, so a FIFO, socket, device or folder put where a file was expected
    is refused instead of blocking the run forever, even if it replaced a
    regular file after the folder was scanned. With max_bytes, a larger file
    is refused without being read whole (at most max_bytes + 1 bytes are
    read, so a file that grows while it is read is caught too). A missing
    file's reason is MISSING.
    """
    data, problem = _read_regular(path, None if max_bytes is None else max_bytes + 1)
    if problem is None and max_bytes is not None and len(data) > max_bytes:
        return None, f"larger than the {max_bytes:,} bytes allowed for it"
    return data, problem


def read_file_start(path, count):
    """Up to count bytes from the start of a file, read as read_regular_file reads.

    -> (bytes, None), or (None, one-line reason).
    """
    return _read_regular(path, count)


def _read_regular(path, count):
    """read_regular_file's reading: the whole file, or its first count bytes."""
    if "://" in path:  # Remote file systems (gs://, ...) hold no special files.
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read(-1 if count is None else count), None
        except tf.errors.NotFoundError:
            return None, MISSING
        except (tf.errors.OpError, OSError) as e:
            return None, f"cannot be read: {errors.one_line(e)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, MISSING
    except OSError as e:
        return None, f"cannot be read: {path}; {e.strerror}"
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # Checked before open(), which fails on a folder.
            return None, f"not a regular file ({special_file_kind(mode)})"
        with open(fd, "rb", closefd=False) as f:
            return f.read(-1 if count is None else count), None
    except OSError as e:
        return None, f"cannot be read: {path}; {e.strerror}"
    finally:
        os.close(fd)


MISSING = "cannot be read: no such file"  # read_regular_file's reason for a file that is not there


def as_clause(problem):
    """A read_regular_file reason as a clause after a file's name or "it":
    "is not a regular file (a FIFO)", "cannot be read: ...", "larger than ..."."""
    return problem if problem.startswith(("cannot", "larger")) else "is " + problem


def special_file_kind(mode):
    """What a non-regular file is, from its st_mode, as a phrase for messages."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def inspect_image_file(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Read a file once: its content hash, EXIF orientation, and any reason to skip it.

    Only the header is parsed (no pixels are decoded), so an image whose
    width x height exceeds max_pixels is refused here before it can take
    gigabytes of memory.
    """
    data, problem = read_regular_file(path)
    if problem:
        return ImageFile(None, 1, problem)
    return inspect_image_bytes(data, max_pixels)


def inspect_image_bytes(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """inspect_image_file for an encoded image already in memory.

    The size comes from image_size (the header as TensorFlow's decoders read
    it); an image whose size cannot be read there is refused, because its
    decoder would allocate whatever the header says.
    """
    sha1 = hashlib.sha1(data).hexdigest()
    if not data:
        return ImageFile(sha1, 1, "empty file")
    size = image_size(data)
    if size is None:
        return ImageFile(
            sha1, 1,
            "not a decodable image: not a JPEG, PNG, GIF or BMP file, or its header "
            "does not say its size",
        )
    width, height = size
    if width * height > max_pixels:
        return ImageFile(
            sha1, 1,
            f"too large: {width}x{height} = {width * height / 1e6:.0f} Mpx, over the limit "
            f"of {max_pixels / 1e6:g} Mpx (raise --max_image_pixels to allow it)",
        )
    return ImageFile(sha1, _orientation(data), None, width, height)


def image_size(data):
    """(width, height) in pixels from an encoded image's header, or None if not found there.

    Read here rather than by PIL, which gives up on headers TensorFlow's
    decoders accept (a PNG with a damaged text chunk, say): the size checked
    must be the size the decoder will allocate. JPEG: the first frame header
    (SOFn); PNG: IHDR, which must come first (libpng allocates that, and
    TensorFlow decodes an APNG's default image only); GIF: the logical
    screen, or the first frame's descriptor where it is wider or taller (the
    decoder allocates both, and a file may declare a 16x16 screen around a
    20000x20000 frame); only the first frame is ever decoded (see
    decodable_bytes), so later frames do not count; BMP:
    the signed 32-bit fields TensorFlow reads (a negative height means
    top-down rows). A zero size (a JPEG whose height comes later, in a DNL
    segment) counts as unknown.
    """
    size = None
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        frame = _gif_first_frame(data)
        if frame is not None:
            (screen_width, screen_height), (frame_width, frame_height), _ = frame
            size = (max(screen_width, frame_width), max(screen_height, frame_height))
    elif data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        size = (width, abs(height)) if width > 0 else None
    if size is None or not all(size):
        return None
    return int(size[0]), int(size[1])


def decodable_bytes(data):
    """The part of an encoded image that is handed to the decoder (bytes).

    A GIF: its header and first frame, then a trailer. TensorFlow's GIF
    decoder reads every frame into memory (giflib's DGifSlurp) and keeps an
    output frame per frame before the first is taken, so a 300-frame
    animation cost ~300 times one frame; cut here, the decoder sees a
    one-frame GIF with the same first frame, and the size checked by
    image_size is all it allocates. Other formats: the bytes unchanged. The
    image's content hash is always that of the whole file.
    """
    if data[:6] in (b"GIF87a", b"GIF89a"):
        frame = _gif_first_frame(data)
        if frame is not None:
            return data[:frame[2]] + _GIF_TRAILER
    return data


_GIF_EXTENSION, _GIF_IMAGE, _GIF_TRAILER = 0x21, 0x2C, b"\x3b"


def _gif_first_frame(data):
    """GIF bytes -> ((screen width, height), (first frame width, height), end of the first
    frame's data), walking the blocks; None if the file ends or breaks before it."""
    if len(data) < 13:
        return None
    screen_width, screen_height, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + _gif_colour_table_bytes(flags)  # after the logical screen, its colour table
    while i < len(data):
        if data[i] == _GIF_EXTENSION:  # introducer, label, then data sub-blocks
            i = _gif_sub_blocks_end(data, i + 2)
        elif data[i] == _GIF_IMAGE:  # introducer, left, top, width, height, flags
            if i + 10 > len(data):
                return None
            frame_width, frame_height, flags = struct.unpack("<HHB", data[i + 5:i + 10])
            i += 10 + _gif_colour_table_bytes(flags)  # the frame's own colour table
            end = _gif_sub_blocks_end(data, i + 1)  # after the LZW minimum code size
            if end is None:
                return None
            return (screen_width, screen_height), (frame_width, frame_height), end
        else:  # the trailer, or bytes that are no block: no frame to decode
            return None
        if i is None:
            return None
    return None


def _gif_colour_table_bytes(flags):
    """Bytes of the colour table that a GIF screen or frame descriptor's flags announce."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif_sub_blocks_end(data, i):
    """Position after the data sub-blocks starting at i (each: a size byte, then that
    many bytes; a zero size ends them), or None if the data ends first."""
    while i < len(data):
        size = data[i]
        i += 1 + size
        if size == 0:
            return i
    return None


# JPEG markers with no length field, and frame-header markers that are not frames.
_JPEG_STANDALONE = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])


_JPEG_NOT_FRAMES = frozenset([0xC4, 0xC8, 0xCC])  # DHT, JPG extension, DAC


def _jpeg_size(data):
    """(width, height) from a JPEG's first SOFn segment, walking segments by length."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # Fill byte before a marker.
            i += 1
            continue
        i += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # End of image, or a scan before any frame header.
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_FRAMES:
            if i + 7 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            return width, height
        i += length
    return None


def _orientation(data):
    """EXIF orientation 1-8 from the header; 1 if there is none or PIL cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # We apply our own limit.
            try:
                image = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except Exception:  # Only the orientation is asked of PIL; the decoder judges the rest.
        return 1
    # image.getexif() would decode a whole PNG to look for EXIF after the pixels;
    # the EXIF block in the header is where cameras and editors put it.
    orientation = 1
    if image.info.get("exif"):
        try:
            exif = Image.Exif()
            exif.load(image.info["exif"])
            orientation = exif.get(_EXIF_ORIENTATION, 1)
        except Exception:  # Damaged EXIF: treat the image as stored upright.
            orientation = 1
    return orientation if orientation in range(1, 9) else 1


def why_undecodable(path, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """A one-line reason why the image at path cannot be read or decoded."""
    data, problem = read_regular_file(path)
    return problem or why_bytes_undecodable(data, max_pixels)


def why_bytes_undecodable(data, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """A one-line reason why encoded image bytes cannot be used (refused or undecodable)."""
    problem = inspect_image_bytes(data, max_pixels).problem
    if problem:
        return problem
    try:
        tf.io.decode_image(decodable_bytes(data), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        return f"not a decodable image: {errors.one_line(e)}"
    return "could not be decoded"



def orient(image, orientation):
    """Turn a decoded [H, W, C] image upright according to its EXIF orientation (1-8)."""
    branches = [
        lambda: image,  # 1: upright
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4: mirrored vertically
        lambda: tf.image.transpose(image),  # 5: mirrored, then turned
        lambda: tf.image.rot90(image, 3),  # 6: needs a quarter turn clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), 2),  # 7: transverse
        lambda: tf.image.rot90(image, 1),  # 8: needs a quarter turn anticlockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def jpeg_decode_ratio(image_height, image_width, height, width):
    """The largest JPEG decode ratio (1, 2, 4 or 8) that keeps the image >= height x width.

    libjpeg decodes at 1/ratio of the full size, rounding up, while doing a
    fraction of the work; a photo much larger than the module input then never
    exists at full resolution. Works on Python ints and on int32 tensors alike.
    """
    chosen = 1
    for ratio in reversed(JPEG_DECODE_RATIOS):  # 2, 4, 8: keep the last that fits
        fits = ((image_height + ratio - 1) // ratio >= height) & (
            (image_width + ratio - 1) // ratio >= width
        )
        if isinstance(fits, tf.Tensor):
            chosen = tf.where(fits, ratio, chosen)
        elif fits:
            chosen = ratio
    return chosen


def _decode_uint8(encoded, height, width):
    """Encoded bytes -> uint8 [h, w, 3]; a JPEG at reduced scale if still >= height x width."""

    def decode_jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        ratio = jpeg_decode_ratio(shape[0], shape[1], height, width)
        # decode_jpeg's ratio is an attribute, not a tensor: one branch per ratio.
        branches = [
            lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r) for r in (1, 2, 4, 8)
        ]
        index = tf.cast(tf.math.round(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0)),
                        tf.int32)
        return tf.switch_case(index, branches)

    def decode_other():
        return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg, decode_other)
    image.set_shape([None, None, 3])
    return image


def decode_and_resize(encoded, height, width, orientation=1):
    """Encoded image bytes (JPEG, PNG, GIF, BMP) -> float32 [height, width, 3] in [0, 1].

    The format is found from the content, not the file name. Grayscale, palette,
    alpha, CMYK and 16-bit images all come out as 3-channel RGB; a GIF gives its
    first frame. `orientation` (EXIF, 1-8) turns the image upright as a person
    sees it. A JPEG at least twice the output size in both dimensions is
    decoded at reduced scale (see jpeg_decode_ratio), never below the output
    size. Resizing is bilinear, without keeping the aspect ratio, as the
    classic retrain script did.
    """
    # Turning the small resized image upright is cheaper than turning the full one
    # and gives the same pixels: bilinear resizing commutes with flips and
    # transposes. Orientations 5-8 swap the axes, so resize to the swapped size.
    orientation = tf.cast(orientation, tf.int32)
    size = tf.where(orientation >= 5, [width, height], [height, width])
    # Decoding to uint8 and resizing before scaling keeps the full-size copy at one
    # byte per value instead of four; the arithmetic is the same.
    image = _decode_uint8(encoded, size[0], size[1])
    resized = tf.image.resize(image, size, method="bilinear") / 255.0
    upright = orient(resized, orientation)
    upright.set_shape([height, width, 3])
    return upright


def image_batches(paths, height, width, batch_size, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Image files -> dataset of (index int64 [B], content string [B], images float32 [B, H, W, 3]).

    `index` is each image's position in `paths`; `content` is the hex SHA-1 of
    the very bytes that were decoded (see _ImageSource.batches). Files that
    cannot be read or decoded, or are larger than max_pixels, are dropped from
    the stream, so a caller finds them as the indices that never came out.
    Reading and decoding run in parallel and the next batches are prefetched
    while the current one is being used.
    """
    return ImageFiles(paths).batches(list(range(len(paths))), height, width, batch_size, max_pixels)


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
        return index, content, decode_and_resize(data, height, width, orientation)

    dataset = encoded.map(decode, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors()
    return dataset.batch(batch_size).prefetch(1)


def _checked(data, max_pixels):
    """What the pipeline needs from the bytes it is about to decode, as numpy values.

    -> (bytes to decode, hex SHA-1, EXIF orientation, usable): the hash,
    orientation and size limit all come from these bytes, never from an
    earlier read of the file, which may have held other bytes. The bytes to
    decode are decodable_bytes(data) (a GIF's first frame); the hash is of
    the whole data.
    """
    info = inspect_image_bytes(data, max_pixels) if data is not None else None
    if info is None or info.problem:
        return np.array(b"", object), np.array(b"", object), np.int32(1), np.bool_(False)
    return (np.array(decodable_bytes(data), object), np.array(info.sha1.encode("ascii"), object),
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

    def batches(self, indices, height, width, batch_size, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
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
        return [inspect_image_file(path, max_pixels) for path in self.paths]

    def encoded_dataset(self, indices, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, shuffle_seed=None):
        """Dataset of (index int64, content string, encoded bytes, orientation int32).

        Each file at `indices` is read once (see read_regular_file: special files
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

    def read_checked(self, index, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        """The file at position index (numpy int), read once: _checked's tuple."""
        data, problem = read_regular_file(self.paths[int(index)])
        return _checked(None if problem else data, max_pixels)

    def why_undecodable(self, index, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        return why_undecodable(self.paths[index], max_pixels)


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
        return [inspect_image_bytes(data, max_pixels) for data in self.encoded()]

    def encoded_dataset(self, indices, max_pixels=DEFAULT_MAX_IMAGE_PIXELS, shuffle_seed=None):
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

    def why_undecodable(self, index, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        for i, data in enumerate(self.encoded()):
            if i == index:
                return why_bytes_undecodable(data, max_pixels)
        return "missing from the record files"


@dataclasses.dataclass(frozen=True)
class Distortions:
    """Random changes to training images (data augmentation); all off by default.

    crop: margin in percent (the image is enlarged by it, then a window of the
    input size is cut at random); scale: extra random enlargement, 0 to this
    percent; brightness: pixel values multiplied by a factor within +-percent;
    rotation: degrees, either way; hue: shift in [0, 0.5]; saturation: factor
    within 1 +- this amount.
    """

    flip_left_right: bool = False
    crop: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    rotation: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0

    def any(self):
        return self != Distortions()


def distort(image, height, width, distortions, seed):
    """Float image [h, w, 3] in [0, 1] -> a random variant, float32 [height, width, 3] in [0, 1].

    seed: int32 [2]; the same seed gives the same variant (stateless random ops),
    so a run is repeatable however the pipeline's parallel calls interleave.
    """
    seeds = tf.random.experimental.stateless_split(seed, 7)
    enlarge = tf.constant(1.0 + distortions.crop / 100.0)
    if distortions.scale:
        enlarge *= tf.random.stateless_uniform([], seeds[0], 1.0, 1.0 + distortions.scale / 100.0)
    # The small epsilon keeps 1.1 * 30 = 33.000000000000004 from becoming 34.
    size = tf.cast(tf.math.ceil(enlarge * tf.constant([height, width], tf.float32) - 1e-3), tf.int32)
    image = tf.image.resize(image, size, method="bilinear")
    image = tf.image.stateless_random_crop(image, [height, width, 3], seeds[1])
    if distortions.rotation:
        radians = distortions.rotation * np.pi / 180.0
        angle = tf.random.stateless_uniform([], seeds[2], -radians, radians)
        image = rotate(image, angle)
    if distortions.flip_left_right:
        image = tf.image.stateless_random_flip_left_right(image, seeds[3])
    if distortions.brightness:
        factor = tf.random.stateless_uniform(
            [], seeds[4], 1.0 - distortions.brightness / 100.0, 1.0 + distortions.brightness / 100.0
        )
        image = image * factor
    if distortions.hue:
        image = tf.image.stateless_random_hue(tf.clip_by_value(image, 0, 1), distortions.hue, seeds[5])
    if distortions.saturation:
        image = tf.image.stateless_random_saturation(
            tf.clip_by_value(image, 0, 1), 1.0 - distortions.saturation,
            1.0 + distortions.saturation, seeds[6],
        )
    return tf.clip_by_value(image, 0.0, 1.0)


def rotate(image, angle):
    """Rotate [h, w, c] about its centre by angle (radians, anticlockwise); edges reflect."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_centre, y_centre = (w - 1) / 2, (h - 1) / 2
    # Maps each output pixel to the input pixel it samples: input = R (output - c) + c.
    transform = tf.stack([
        cos, -sin, x_centre - cos * x_centre + sin * y_centre,
        sin, cos, y_centre - sin * x_centre - cos * y_centre,
        0.0, 0.0,
    ])[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform, output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
    return rotated[0]


def decoded_distorted(data, orientation, height, width, distortions, seed, element):
    """Encoded bytes -> float32 [height, width, 3], distorted with a variant drawn
    from (seed, element), a scalar int64: the same element gets the same distortion.

    Decodes straight to the largest size distort() can ask for: the full-size
    image is never held as floats, and the shared function turns it upright.
    """
    largest = (1.0 + distortions.crop / 100.0) * (1.0 + distortions.scale / 100.0)
    work_height, work_width = (int(np.ceil(n * largest - 1e-3)) for n in (height, width))
    upright = decode_and_resize(data, work_height, work_width, orientation)
    element_seed = tf.cast(tf.stack([tf.cast(seed, tf.int64), element]), tf.int32)
    return distort(upright, height, width, distortions, element_seed)


def distorted_batches(images, indices, labels, height, width, batch_size, distortions, seed,
                      max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Endless batches of randomly distorted training images for the module.

    images: an ImageFiles or TFRecordImages; indices: the training images in
    it, with their int64 labels. Yields (images float32 [B, height, width, 3]
    in [0, 1], labels int64 [B]). Decoding and distortion run in parallel and
    batches are prefetched, so the module does not wait on them. Undecodable
    images, and images over max_pixels, are dropped.
    """
    label_by_index = dict(zip(indices, labels))
    label_of = tf.constant([label_by_index.get(i, 0) for i in range(max(indices) + 1)], tf.int64)
    encoded = images.encoded_dataset(indices, max_pixels, shuffle_seed=seed).enumerate()

    def load(count, element):
        index, _, data, orientation = element
        image = decoded_distorted(data, orientation, height, width, distortions, seed, count)
        return image, tf.gather(label_of, index)

    dataset = encoded.map(load, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors()
    return dataset.batch(batch_size).prefetch(1)


def fine_tuning_batches(images, indices, labels, height, width, batch_size, distortions, seed,
                        first_step=0, max_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Endless batches of training images for fine-tuning, from first_step on.

    images: an ImageFiles (read by position); indices: the training images in
    it, with their int64 labels. Yields (images float32 [B, height, width, 3]
    in [0, 1], labels int64 [B]). Element j of the stream (in batch
    j // batch_size) is image j % N of epoch j // N, in an order drawn
    statelessly from (seed, epoch), and distorted (when any distortion is on)
    with a variant drawn from (seed, j): every batch is a function of (seed,
    step) alone, so a run resumed at first_step trains on exactly the batches
    an uninterrupted one does. An image that cannot be read or decoded any
    more is dropped, which shifts the batches after it.
    """
    count = len(indices)
    order = tf.constant(list(indices), tf.int64)
    label_of = tf.constant(list(labels), tf.int64)
    first = first_step * batch_size
    first_epoch = first // count

    def epoch(number):
        positions = tf.argsort(tf.random.stateless_uniform(
            [count], tf.stack([tf.cast(seed, tf.int64), number])))
        elements = number * count + tf.range(count, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(
            (elements, tf.gather(order, positions), tf.gather(label_of, positions)))

    stream = tf.data.Dataset.counter(first_epoch, dtype=tf.int64).flat_map(epoch)
    stream = stream.skip(first - first_epoch * count)

    def load(element, index, label):
        data, _, orientation, usable = tf.numpy_function(
            lambda i: images.read_checked(i, max_pixels), [index],
            [tf.string, tf.string, tf.int32, tf.bool], stateful=False,
        )
        for tensor in (data, orientation, usable):
            tensor.set_shape([])
        if not distortions.any():
            return decode_and_resize(data, height, width, orientation), label, usable
        image = decoded_distorted(data, orientation, height, width, distortions, seed, element)
        return image, label, usable

    dataset = stream.map(load, num_parallel_calls=PARALLEL_DECODES, deterministic=True)
    dataset = dataset.ignore_errors().filter(lambda image, label, usable: usable)
    dataset = dataset.map(lambda image, label, usable: (image, label))
    return dataset.batch(batch_size).prefetch(1)


def training_batches(bottlenecks, labels, batch_size, seed):
    """In-memory bottlenecks -> endless shuffled batches for training.

    bottlenecks: float32 [N, D] tensor (feed it through a placeholder so the
    array is not copied into the graph); labels: int64 [N]. Yields
    (float32 [B, D], int64 [B]); every example is seen once per epoch, in a new
    order each epoch, deterministically for a given seed.
    """
    dataset = tf.data.Dataset.from_tensor_slices((bottlenecks, labels))
    dataset = dataset.shuffle(
        buffer_size=tf.cast(tf.shape(labels)[0], tf.int64),
        seed=seed,
        reshuffle_each_iteration=True,
    )
    return dataset.repeat().batch(batch_size).prefetch(AUTOTUNE)


def class_uniform_batches(bottlenecks, labels, batch_size, seed):
    """In-memory bottlenecks -> endless batches in which every class is equally likely.

    Same arguments and output as training_batches, but each example of a batch
    is drawn independently (with replacement): first a class, uniformly among
    the classes that have examples, then an example of that class. Small
    classes are therefore oversampled, as the classic retrain script's
    per-class sampling did. Deterministic for a given seed.
    """
    labels32 = tf.cast(labels, tf.int32)
    class_count = tf.reduce_max(labels32) + 1
    per_class = tf.math.unsorted_segment_sum(tf.ones_like(labels32), labels32, class_count)
    # Each example's chance is 1 / (examples of its class); classes then tie.
    example_logits = -tf.math.log(tf.cast(tf.gather(per_class, labels32), tf.float32))

    def draw(step):
        rows = tf.random.stateless_categorical(
            example_logits[None, :], batch_size, seed=tf.stack([tf.cast(seed, tf.int64), step])
        )[0]
        return tf.gather(bottlenecks, rows), tf.gather(labels, rows)

    return tf.data.Dataset.counter().map(draw).prefetch(AUTOTUNE)
