r"""Images a later stage needs, decoded ahead while other work runs, or kept from the
bottleneck pass.

- The exported-files check's images, during the int8 TFLite conversion: its
  calibration releases Python's lock and leaves a core idle on a 2-core
  machine, and the check that follows decodes every test image again (about
  1 s for 100 large photos).
- The int8 calibration images (tflite.calibration_rows), during training,
  which runs on one core: decoding 100 large photos was a quarter of the
  TFLite phase.

The bottleneck pass keeps the pixels of both sets when they fit in MAX_BYTES
(wanted_rows, run_data.PreparedRun.decoded): then nothing is decoded again.
Otherwise DecodedAhead decodes what is missing on a thread, when it fits, and
hands over its batches; anything that goes wrong there is left to the stage,
which then decodes them itself as before.
"""

import threading

import numpy as np

from retrain_suite import memory_budget, run_data, tflite

# The most decoded pixels held ahead: float32 [n, H, W, 3] of the check's images.
MAX_BYTES = 512 * 2**20


def wanted_rows(dataset, input_size, seed, calibrated):
    """The rows of a scanned dataset (image i at row i) whose pixels the stages after
    training need, for the bottleneck pass to keep: the check's set (the test images,
    else the validation images) and, when calibrated, the int8 calibration images that
    seed chooses (tflite.calibration_rows). -> sorted [int]; none when they would not
    fit (fits)."""
    checked_split = "testing" if dataset.in_split("testing") else "validation"
    training_count = len(dataset.in_split("training")) if calibrated else 0
    count = len(dataset.in_split(checked_split)) + min(training_count, tflite.CALIBRATION_IMAGES)
    if not fits(count, input_size):  # before sorting a large dataset's sets for nothing
        return []
    rows = set(run_data.split_rows(dataset, checked_split)[1].tolist())
    if calibrated:
        _, training = run_data.split_rows(dataset, "training")
        rows.update(tflite.calibration_rows_of(training, seed))
    return sorted(rows)


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
    name: the thread's. Rows the bottleneck pass kept (run.decoded) are not decoded
    again; when every row was kept, no thread is started.
    """

    def __init__(self, run, rows, batch_size, name="decoded-ahead"):
        self.run, self.rows, self.batch_size, self.name = run, list(rows), batch_size, name
        self._decoded, self._failed = {}, False
        self._thread, self._started = None, False

    def start(self, kept_only=False):
        """Begin decoding (once; nothing when the images would not fit). kept_only: only
        when every row was kept, so that nothing is decoded (there is nothing to do
        meanwhile)."""
        if self._started or not self.rows:
            return
        missing = [row for row in self.rows if row not in self.run.decoded]
        if missing and (kept_only or not fits(len(self.rows), self.run.input_size)):
            return
        self._started = True
        if missing:
            self._thread = threading.Thread(target=self._decode, args=(missing,),
                                            name=self.name, daemon=True)
            self._thread.start()

    def _decode(self, rows):
        try:
            decoded = self.run.image_batches(rows, self.batch_size)
            for indices, _, pixels in decoded.as_numpy_iterator():
                self._decoded.update(zip(np.asarray(indices).tolist(), pixels))
        except Exception:  # the check decodes them again, and reports what fails
            self._failed = True

    def batches(self):
        """An iterable of (indices int [B], pixels float32 [B, H, W, 3]) covering every row
        (in order, those that could be decoded), once the thread is done; None when it
        never started or did not finish its work."""
        if not self._started:
            return None
        if self._thread is not None:
            self._thread.join()
        if self._failed:
            return None
        found = [row for row in self.rows if row in self.run.decoded or row in self._decoded]
        return self._batches_of(found)

    def _batches_of(self, rows):
        # One batch at a time: the images are held once, not twice.
        for start in range(0, len(rows), self.batch_size):
            part = rows[start:start + self.batch_size]
            yield np.array(part, np.int64), np.stack(
                [self.run.decoded[row] if row in self.run.decoded else self._decoded[row]
                 for row in part])
