r"""The bytes of one packed-store shard, and how a shard file is opened and written.

A shard (see packed_store for the store): a 32-byte header (b"RSBSHARD",
format version uint32 LE, dimension D uint32 LE, count n uint64 LE, 8 zero
bytes), then n records of R = 20 + 4*D + 4 bytes: the content key (the 20 raw
bytes of the SHA-1 of the image file's bytes), the vector as D little-endian
float32, the CRC-32 (zlib, IEEE) of the key and vector bytes as uint32 LE.
Fixed-size records: numpy reads them with one np.frombuffer of record_dtype,
tf.data with FixedLengthRecordDataset(path, R, header_bytes=HEADER_BYTES).
"""

import os
import re
import stat
import zlib

import numpy as np
import tensorflow as tf

from retrain_suite import atomic_files
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.images import files as image_files

MAGIC = b"RSBSHARD"
VERSION = 1
HEADER_BYTES = 32
FORMAT_NAME = "retrain_suite packed bottlenecks"
SHARD_SUFFIX = ".shard"
MANIFEST_SUFFIX = ".manifest.json"
SHARD_NAME = re.compile(r"shard-\d{8}T\d{6}-[0-9a-f]{16}")
KEY_BYTES = 20


def key_hex(key):
    """The hex SHA-1 (40 digits) of a record's key as numpy hands it over. A numpy S20
    value drops its trailing zero bytes when it becomes Python bytes (one SHA-1 in 256
    ends in one), so they are put back: `key.hex()` would give a shorter, other content."""
    return bytes(key).ljust(KEY_BYTES, b"\0").hex()


def record_bytes(dimension):
    """R: the bytes of one record (key, D float32, CRC-32)."""
    return KEY_BYTES + 4 * dimension + 4


def record_dtype(dimension):
    """The numpy dtype of one record, packed, little-endian."""
    return np.dtype([("key", "S20"), ("vector", "<f4", (dimension,)), ("crc", "<u4")])


def join(*parts):
    """A path under the store: "/"-joined, as gfile takes it for local and gs:// paths."""
    return "/".join([parts[0].rstrip("/"), *parts[1:]])


def crcs(records):
    """uint32 [n]: the CRC-32 of each record's key and vector bytes. records: the
    structured array of record_dtype."""
    data = memoryview(np.ascontiguousarray(records)).cast("B")
    return span_crcs(checked_spans(data, records.dtype.itemsize))


def checked_spans(data, size):
    """[memoryview]: the bytes each record's CRC covers (its key and vector), for each
    record of size bytes in data (bytes-like). Views, no copies: a reader makes them
    once per buffer it reads into again and again."""
    view = memoryview(data).cast("B")
    return [view[start:start + size - 4] for start in range(0, len(view) - size + 1, size)]


def span_crcs(spans):
    """uint32 [n]: zlib's CRC-32 of each of spans (bytes-like): one zlib call each,
    iterated in C, no object made per span."""
    return np.fromiter(map(zlib.crc32, spans), np.uint32, len(spans))


def encode_shard(contents, vectors):
    """(hex SHA-1 per entry, float32 [n, D]) -> the shard's bytes."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(contents) != len(vectors):
        raise ValueError(f"{len(contents)} keys for vectors of shape {vectors.shape}")
    dimension = vectors.shape[1]
    records = np.zeros(len(vectors), record_dtype(dimension))
    records["key"] = [bytes.fromhex(c) for c in contents]
    records["vector"] = vectors
    records["crc"] = crcs(records)
    return header(dimension, len(vectors)) + records.tobytes()


def header(dimension, count):
    """The 32 header bytes of a shard of count records of dimension values."""
    return (MAGIC + np.array([VERSION, dimension], "<u4").tobytes()
            + np.array([count], "<u8").tobytes() + bytes(8))


class NotRegular(cache_lib.CacheError):
    """A folder, FIFO or device where a shard was expected."""


def open_shard(path):
    """A binary file object on the shard at path, never blocking on a special file.

    Local: opened non-blocking and checked with fstat on the descriptor (as
    images.files reads), so a FIFO or folder in a shard's place is refused
    rather than waited on. Object stores hold no special files: gfile.
    """
    if "://" in path:
        return tf.io.gfile.GFile(path, "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(f"is {image_files.special_file_kind(mode)}, not a shard")
    return open(fd, "rb")


def file_size(handle, path):
    if "://" in path:
        return tf.io.gfile.stat(path).length
    return os.fstat(handle.fileno()).st_size


def write_whole(path, data):
    """Write data at path so that no reader ever sees part of it.

    Local: a temporary name, then a rename. Object stores: straight to path,
    where an object appears whole when its upload ends, and a rename is a copy.
    """
    if "://" in path:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    else:
        atomic_files.write_bytes(path, data)


class Refused(cache_lib.CacheError):
    """A shard or manifest this run cannot use; the message says why."""


def finite_rows(vectors):
    """[n] bool: which rows of float32 [n, D] are all finite. A NaN or an infinity
    carries into its row's sum, so one pass of sums (einsum's, vectorized) settles
    every row whose sum is finite; only the others (non-finite values, or finite ones
    whose sum overflows) are checked value by value."""
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(np.einsum("ij->i", vectors))
    if not finite.all():
        suspects = np.flatnonzero(~finite)
        finite[suspects] = np.isfinite(vectors[suspects]).all(axis=1)
    return finite


def read_exactly(handle, buffer, count):
    """The next count bytes of handle, read into buffer where the file can (no new
    allocation per chunk). Raises Refused if the file ends first."""
    if hasattr(handle, "readinto"):
        view = memoryview(buffer)[:count]
        done = 0
        while done < count:
            got = handle.readinto(view[done:])
            if not got:
                break
            done += got
        data = view[:done]
    else:  # gfile
        data = handle.read(count)
    if len(data) != count:
        raise Refused("it is shorter than it was a moment ago")
    return data
