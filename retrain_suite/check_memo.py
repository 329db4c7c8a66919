r"""What the check of the exported files remembers: a file's predictions on a test set,
under the file's bytes.

A rerun that changes nothing writes byte-identical files (the same seed and data
give the same layer; the frozen graph is serialized deterministically) and checks
them on the same test images. Running them again costs a forward pass of the
whole module per test image (about 27 s for 400 images with Inception V3 on 2
cores) to learn what the last check measured. So an entry holds one file's
predicted class for each test image, and the latency measured then, under a key
(SHA-256) of everything that decides those predictions:

- every byte of the file (of every file of a SavedModel folder, with its name),
  read back from disk after it was written;
- the format and the runtime that runs it, with its version (TensorFlow,
  LiteRT, onnxruntime), so a new runtime runs the file anew;
- the test images: their content hashes (those the bottleneck cache keys by) in
  order, the input size and the preprocessing version, so the same pixels;
- the labels the file must carry (the ONNX file's metadata is checked against them).

The same key is the same bytes run by the same runtime on the same pixels: the
same predictions. Accuracy and agreement with training are computed from them
again each time. Entries are JSON files under `<bottleneck_dir>/checks/`,
written whole; one that cannot be read or does not fit the test set is ignored,
and the file is run. Whoever can write the bottleneck cache can already change
what a run trains on; this folder asks for no more trust than that.
"""

import hashlib
import math

from absl import logging

from retrain_suite import memo as memo_lib
from retrain_suite.images import preprocess


def test_set_key(contents, input_size, labels):
    """The identity of a test set as a file sees it: contents (the images' hex content
    hashes, in position order), the module's (height, width) and the class names."""
    digest = hashlib.sha256()
    digest.update(f"{preprocess.PREPROCESSING_VERSION}\0{input_size[0]}x{input_size[1]}\0".encode())
    for label in labels:
        digest.update(label.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(b"\1")
    for content in contents:
        digest.update(bytes.fromhex(content))
    return digest.hexdigest()


class CheckMemo:
    """Earlier checks' results under folder (None: remember nothing)."""

    def __init__(self, folder):
        self.folder = folder
        self._entries = memo_lib.Memo(folder, "checks")

    def key(self, file_digest_hex, runtime, test_set):
        """The entry's name: hex SHA-256 of the file's digest, the runtime (format and
        version) and test_set_key's."""
        return hashlib.sha256(f"{file_digest_hex}\0{runtime}\0{test_set}".encode()).hexdigest()

    def lookup(self, key, count):
        """-> (predicted classes [count] as ints, latency ms, images per call), or None when
        there is no usable entry for a test set of count images."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        where = f"{self._entries.location}/{key}.json"
        try:
            predicted = [int(c) for c in entry["predicted"]]
            latency, per_call = float(entry["latency_ms"]), int(entry["images_per_call"])
        except (ValueError, KeyError, TypeError) as e:
            logging.warning("Ignoring the damaged check memo %s (%s).", where, e)
            return None
        if (len(predicted) != count or not math.isfinite(latency) or latency < 0
                or per_call < 1):
            logging.warning("Ignoring the check memo %s: it does not fit this test set.", where)
            return None
        return predicted, latency, per_call

    def store(self, key, predicted, latency_ms, images_per_call):
        """Remember one file's predictions ([count] ints). A failure to write only warns:
        the check itself is done."""
        self._entries.put(key, {"predicted": [int(c) for c in predicted],
                                "latency_ms": latency_ms, "images_per_call": images_per_call})
