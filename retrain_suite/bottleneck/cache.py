r"""The on-disk bottleneck cache.

Layout: `<bottleneck_dir>/<module key>/<2 hex>/<content key>.f32`.

- The module key names the module (a local folder by its content, see
  module_fingerprint), its input size and precision, so vectors of two modules
  never mix.
- The content key is the SHA-1 of the image file's bytes, the very bytes that
  were decoded into the vector (image_pipelines' batches hash what they
  decode): an image changed in place gets a new entry, a renamed or moved one
  keeps its vector, and copies of one image share it.
- An entry is the vector as little-endian float32, then the content key it
  was written for (the 20 bytes of the SHA-1), then the CRC-32 of all that
  (4 bytes): 8,216 bytes for a 2048-d vector, against ~20 KB for the classic
  script's text files. A truncated, garbled or non-finite entry, and an
  entry holding another image's key (copied, linked or renamed over this
  one), is detected on reading and recomputed: a file name alone never
  vouches for a vector.
- Entries are read like images (image_files.read_regular_file): a FIFO or
  device in an entry's place is refused and recomputed, never waited on.
- Entries are written to a temporary name and renamed, so a killed run never
  leaves half an entry, and two runs sharing a cache never see each other's
  partial writes.
"""

import hashlib
import os
import re
import zlib

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files, errors
from retrain_suite.images import files as image_files
from retrain_suite.images import preprocess as image_preprocess

ENTRY_SUFFIX = ".f32"


# Raise whenever the entry layout changes: it is part of the folder name, so an
# older cache is left alone and its vectors recomputed, never misread.
ENTRY_FORMAT = 2  # 2: the content key is inside the entry


_KEY_BYTES = 20  # a SHA-1 digest


class CacheError(errors.SuiteError):
    """The cache cannot be written (disk full, no permission, ...)."""

    area = "cache"


def module_key(handle, height, width, precision="float32"):
    """Folder name for one module at one input size and precision.

    A local module folder is named by its content (module_fingerprint), so a
    module rewritten in place gets a new key while a copy of it elsewhere
    shares the old one; a TF Hub handle by the handle, which names one
    published version.
    """
    if os.path.isdir(handle):
        folder = os.path.realpath(handle)
        name = os.path.basename(folder)
        digest = module_fingerprint(folder)[:16]
    else:
        name = handle.rstrip("/")
        digest = hashlib.sha1(handle.encode("utf-8")).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[-60:]
    # A change to preprocessing changes every vector: it must not reuse old entries.
    version = image_preprocess.PREPROCESSING_VERSION
    return f"{name}_{digest}_{height}x{width}_{precision}_p{version}_e{ENTRY_FORMAT}"


# What a SavedModel's vectors depend on: the graph, and the variables index,
# which holds every variable's shape, dtype and a CRC-32C of its bytes (and
# TensorFlow checks the data against those CRCs when it restores them).
_FINGERPRINTED_FILES = ("saved_model.pb", "saved_model.pbtxt", "variables/variables.index")


def module_fingerprint(folder):
    """Hex SHA-1 of a local SavedModel's content: its graph and its variables index.

    Cheap: these are small files that loading reads anyway, and the index
    stands for the weights through their CRC-32Cs, so the large data files are
    not read here. TensorFlow's own fingerprint.pb is not used: it is absent
    from SavedModels written before TF 2.12, and nothing makes it follow files
    copied over an existing folder.
    """
    digest = hashlib.sha1()
    for name in _FINGERPRINTED_FILES:
        path = os.path.join(folder, name)
        data, problem = image_files.read_regular_file(path)
        if problem == image_files.MISSING:
            continue
        if problem:
            raise CacheError(
                f"Cannot read {path} to identify the module: it {image_files.as_clause(problem)}. "
                "Check the module folder."
            )
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def encode_entry(vector, content):
    """float32 [D] vector stored under content (hex SHA-1) -> the entry's bytes."""
    data = np.asarray(vector, dtype="<f4").tobytes() + bytes.fromhex(content)
    return data + zlib.crc32(data).to_bytes(4, "little")


def decode_entry(data, content):
    """Entry bytes read for content (hex SHA-1) -> float32 [D] vector, or None with the
    reason why it cannot be used."""
    if len(data) < 4 + _KEY_BYTES + 4 or len(data) % 4:
        return None, f"wrong length ({len(data)} bytes)"
    checked, crc = data[:-4], data[-4:]
    if zlib.crc32(checked).to_bytes(4, "little") != crc:
        return None, "checksum mismatch"
    body, key = checked[:-_KEY_BYTES], checked[-_KEY_BYTES:]
    if key != bytes.fromhex(content):
        return None, f"it holds the vector of another image, {key.hex()}"
    vector = np.frombuffer(body, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        return None, "non-finite values"
    return vector, None


MAX_ENTRY_BYTES = 64 * 1024 * 1024  # the most read for an entry of unknown dimension


class BottleneckCache:
    """The cache of one module: content key -> float32 [D] vector."""

    def __init__(self, bottleneck_dir, key):
        self.root = os.path.join(bottleneck_dir, key)
        self._made_dirs = set()

    def path_for(self, content):
        return os.path.join(self.root, content[:2], content + ENTRY_SUFFIX)

    def lookup(self, content, dimension=None):
        """The cached vector, or None if absent or damaged (damage is logged).

        Never reads more than an entry of `dimension` values can hold (or
        MAX_ENTRY_BYTES without one): a huge file in an entry's place is
        damage, not gigabytes read.
        """
        path = self.path_for(content)
        largest = MAX_ENTRY_BYTES if dimension is None else 4 * dimension + _KEY_BYTES + 4
        data, problem = image_files.read_regular_file(path, max_bytes=largest)
        if problem == image_files.MISSING:
            return None
        if problem:  # Unreadable, or a folder or FIFO in its place.
            logging.warning("Cannot read cache entry %s (%s); recomputing it.", path, problem)
            return None
        vector, damage = decode_entry(data, content)
        if vector is not None and dimension is not None and vector.shape[0] != dimension:
            vector, damage = None, f"{vector.shape[0]} values, expected {dimension}"
        if damage:
            logging.warning("Damaged cache entry %s (%s); recomputing it.", path, damage)
        return vector

    def store(self, content, vector):
        path = self.path_for(content)
        folder = os.path.dirname(path)
        try:
            if folder not in self._made_dirs:
                tf.io.gfile.makedirs(folder)
                self._made_dirs.add(folder)
            atomic_files.write_bytes(path, encode_entry(vector, content))
        except (tf.errors.OpError, OSError) as e:
            message = getattr(e, "message", None) or str(e)
            raise CacheError(
                f"Cannot write bottleneck cache entry {path}: {message.strip()}. "
                "Free some space or pass a writable --bottleneck_dir."
            ) from e
