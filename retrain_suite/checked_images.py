r"""The images the exported-files check runs on, decoded ahead while an export converts.

The int8 TFLite conversion spends seconds in LiteRT's calibration, which
releases Python's lock and leaves a core idle on a 2-core machine; the check
that follows decodes every test image again (about 1 s for 100 large photos).
DecodedAhead decodes them on a thread meanwhile, when they fit in
MAX_BYTES, and hands the check its batches; anything that goes wrong there
is left to the check, which then decodes them itself as before.
"""

import threading

import numpy as np

from retrain_suite import memory_budget

# The most decoded pixels held ahead: float32 [n, H, W, 3] of the check's images.
MAX_BYTES = 512 * 2**20


def fits(count, input_size):
    """Whether count images of input_size (height, width) fit in MAX_BYTES (and in an
    eighth of this machine's memory)."""
    height, width = input_size
    limit = MAX_BYTES
    memory = memory_budget.physical_memory()
    if memory is not None:
        limit = min(limit, memory // 8)
    return count * height * width * 3 * 4 <= limit


class DecodedAhead:
    """The rows of a run's source, decoded on a thread once start() is called.

    run: the run_data.PreparedRun; rows: the check's images (int row indices, its
    order); batch_size: images per batch, as the check runs them.
    """

    def __init__(self, run, rows, batch_size):
        self.run, self.rows, self.batch_size = run, list(rows), batch_size
        self._batches, self._failed = [], False
        self._thread = None

    def start(self):
        """Begin decoding (once; nothing when the images would not fit)."""
        if self._thread is None and self.rows and fits(len(self.rows), self.run.input_size):
            self._thread = threading.Thread(target=self._decode, name="decoded-ahead",
                                            daemon=True)
            self._thread.start()

    def _decode(self):
        try:
            decoded = self.run.image_batches(self.rows, self.batch_size)
            for indices, _, pixels in decoded.as_numpy_iterator():
                self._batches.append((np.asarray(indices), pixels))
        except Exception:  # the check decodes them again, and reports what fails
            self._failed = True

    def batches(self):
        """[(indices int [B], pixels float32 [B, H, W, 3])] covering every row, waiting
        for the thread; None when it never started or did not finish its work."""
        if self._thread is None:
            return None
        self._thread.join()
        if self._failed:
            return None
        return self._batches
