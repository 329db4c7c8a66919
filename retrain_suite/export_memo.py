r"""Exported files a rerun already holds: kept, not built and written again.

The export graph of a run is the module, loaded into a new graph, with the
trained layer on top, frozen: for Inception V3 on 2 cores, 7 s and 90 MB
written, then seconds more for each SavedModel, TFLite or ONNX file made from
it. A rerun that changes nothing would make the same files again. So each
exported file is remembered (memo.Memo, kind "exports") as the SHA-256 of every
byte it had when this suite wrote it, under a key of everything that decides
its content:

- the frozen graph: the module's identity (its files' fingerprint and the
  image size), the layer's spec (classes, final tensor name, hidden width),
  every value of the trained layer and of fine-tuned module weights;
- a file made from the frozen graph: the frozen graph's digest, its kind and
  the settings and data that go into it (the TFLite quantization, the seed and
  the training images that calibrate it, the labels, the module's name);
- always: the suite's code and TensorFlow's version (memo.key_of), and the
  version of the converter that makes the file.

When the file at the output path still has the remembered digest, it is
the file this run would write (made by this code from the same inputs), and
it is kept as it is. The entry also holds the file's signature (path, device,
inode, size, modification and change times) when it was last hashed: a file
that still has it is not read again (memo.recall_digest; 90 MB of SHA-256 is
about 0.2 s on 2 cores); anything else (no entry, another file there, a damaged
entry) writes it anew and remembers that. Writing stays whole-or-nothing
(export.write_output); keeping never touches the file.
"""

import dataclasses
import hashlib
import re
from importlib import metadata

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import export
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import files as image_files

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Written:
    """One exported file after ExportMemo.write."""

    result: object  # what the write function returned (as remembered, when kept)
    digest: str  # hex SHA-256 of the file as it is now (memo.file_digest), or "" if unknown
    kept: bool  # the file was already the one this run writes: left as it was


def values_digest(values):
    """Hex SHA-256 of {name: ndarray} (or a list of ndarrays: names are positions), every
    name, dtype, shape and byte."""
    if not isinstance(values, dict):
        values = {str(n): value for n, value in enumerate(values)}
    digest = hashlib.sha256()
    for name in sorted(values):
        value = values[name]
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


class ExportMemo:
    """Exported files remembered in memo (a memo.Memo of kind "exports")."""

    def __init__(self, memo):
        self.memo = memo

    def write(self, flag, path, key, write):
        """Keep the file at path when it is the one remembered under key; else write it
        with export.write_output(flag, path, write) and remember it. key None: always
        write. -> Written."""
        entry = self.memo.get(key) if key else None
        if entry is not None:
            digest = entry.get("digest")
            # A file still as it was when remembered is not read again (memo.recall_digest).
            recalled = memo_lib.recall_digest(path, entry.get("file"))
            if isinstance(digest, str) and _DIGEST.match(digest) and _digest_or_none(path) == digest:
                logging.info("%s is already the file this run writes (the same inputs, byte "
                             "for byte as written before): kept.", path)
                if not recalled:  # read this time: the next run need not
                    self.memo.put(key, {**entry, "file": memo_lib.signature_record(path)})
                return Written(entry.get("result"), digest, True)
        result = export.write_output(flag, path, write)
        digest = _digest_or_none(path) or ""
        if key and digest:
            self.memo.put(key, {"digest": digest, "result": result,
                                "file": memo_lib.signature_record(path)})
        return Written(result, digest, False)


def _digest_or_none(path):
    try:
        return memo_lib.file_digest(path) if tf.io.gfile.exists(path) else None
    except (OSError, tf.errors.OpError):
        return None


def frozen_graph_key(handle, image_size, exported):
    """The memo key of the frozen graph of exported (a run_exports.ExportedLayer: spec,
    layer values, fine-tuned module weights, thresholds) on the module, or None when the
    module cannot be named by its content (module.identity)."""
    name = module_lib.identity(handle, image_size)
    if name is None:
        return None
    tuned, thresholds = exported.module_values, exported.thresholds
    return memo_lib.key_of(
        "frozen graph", repr(name), repr(exported.spec), values_digest(exported.layer),
        "as loaded" if tuned is None else values_digest(tuned),
        "none" if thresholds is None else values_digest([np.asarray(thresholds, np.float32)]),
    )


def derived_key(kind, graph_digest, *settings):
    """The memo key of a file of kind made from the frozen graph whose digest is
    graph_digest, with settings (strs: whatever else goes into it); None without a digest."""
    if not graph_digest:
        return None
    return memo_lib.key_of(kind, graph_digest, *settings)


def read_graph_def(path, digest):
    """The GraphDef in the frozen graph file at path, which must still have digest (else
    OSError: it changed after it was kept)."""
    data, problem = image_files.read_regular_file(path)
    if problem:
        raise OSError(f"{path} {image_files.as_clause(problem)}")
    if memo_lib.data_digest(data) != digest:
        raise OSError(f"{path} changed while the run was using it")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    return graph_def
