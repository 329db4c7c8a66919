r"""Images a later stage needs, decoded ahead on a thread while other work runs.

- The exported-files check's images, during the int8 TFLite conversion: its
  calibration releases Python's lock and leaves a core idle on a 2-core
  machine, and the check that follows decodes every test image again (about
  1 s for 100 large photos).
- The int8 calibration images (tflite.calibration_rows), during training,
  which runs on one core: decoding 100 large photos was a quarter of the
  TFLite phase.

DecodedAhead decodes them when they fit in MAX_BYTES and hands over its
batches; anything that goes wrong there is left to the stage, which then
decodes them itself as before.
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

    run: the run_data.PreparedRun; rows: the images (int row indices, in the order
    the stage takes them); batch_size: images per batch, as the stage takes them;
    name: the thread's.
    """

    def __init__(self, run, rows, batch_size, name="decoded-ahead"):
        self.run, self.rows, self.batch_size, self.name = run, list(rows), batch_size, name
        self._batches, self._failed = [], False
        self._thread = None

    def start(self):
        """Begin decoding (once; nothing when the images would not fit)."""
        if self._thread is None and self.rows and fits(len(self.rows), self.run.input_size):
            self._thread = threading.Thread(target=self._decode, name=self.name, daemon=True)
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
