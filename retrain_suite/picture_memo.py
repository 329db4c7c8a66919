r"""The report page's pictures a rerun already drew: taken from the report folder it
replaces instead of drawn again.

matplotlib takes about 0.1 s a picture on 2 cores (the curves, two confusion
matrices): a third of a second of a warm rerun that changes nothing, for the
very PNG files already in the report folder. Each picture is remembered
(memo.Memo, kind "pictures") as the SHA-256 of its bytes under a key of
everything drawn in it (its file name, the values, titles and class names, as
canonical JSON) and of the suite's code, TensorFlow's and matplotlib's
versions. When the report folder being replaced holds that file with that
digest, its bytes are used; otherwise the picture is drawn and remembered.
The memo holds digests only (a few hundred bytes a picture), never pictures.
"""

import dataclasses
import json
import os
from importlib import metadata

import numpy as np

from retrain_suite import memo as memo_lib
from retrain_suite.images import files as image_files

MAX_PICTURE_BYTES = 16 << 20  # a file larger than any picture drawn is not read


def canonical(value):
    """JSON text of value: dataclasses as dicts, numpy arrays and scalars as lists and
    numbers (never numpy's shortened repr), floats exactly (NaN and infinities named)."""

    def plain(item):
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return {"dataclass": type(item).__name__, **dataclasses.asdict(item)}
        if isinstance(item, (np.ndarray, np.generic)):
            return {"dtype": str(np.asarray(item).dtype), "values": np.asarray(item).tolist()}
        raise TypeError(f"cannot draw-key a {type(item).__name__}")

    return json.dumps(value, default=plain, sort_keys=True, ensure_ascii=True)


class PictureMemo:
    """Pictures remembered in memo (a memo.Memo of kind "pictures"), reused from folder
    (the report folder this run replaces) when it holds them."""

    def __init__(self, memo, folder):
        self.memo, self.folder = memo, folder

    @classmethod
    def of_run(cls, bottleneck_dir, report_dir):
        """The memo of a run writing report_dir, kept in its bottleneck cache's folder (as
        every memo is: memo.Memo.of_cache)."""
        return cls(memo_lib.Memo.of_cache(bottleneck_dir, "pictures"), report_dir)

    def picture(self, name, inputs, draw):
        """The PNG bytes of picture name: the folder's file when it is the one remembered
        for inputs (JSON-able, see canonical), else draw() (and remembered)."""
        key = memo_lib.key_of("report picture", name, canonical(inputs),
                              metadata.version("matplotlib"))
        entry = self.memo.get(key)
        if entry is not None and self.folder and "://" not in self.folder:
            data, problem = image_files.read_regular_file(os.path.join(self.folder, name),
                                                          MAX_PICTURE_BYTES)
            if not problem and memo_lib.data_digest(data) == entry.get("digest"):
                return data
        data = draw()
        self.memo.put(key, {"digest": memo_lib.data_digest(data)})
        return data


def drawn(memo, name, inputs, draw):
    """memo.picture(name, inputs, draw), or draw() when memo is None."""
    return draw() if memo is None else memo.picture(name, inputs, draw)
