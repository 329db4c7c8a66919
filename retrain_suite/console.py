"""What reaches the console besides the suite's own lines: third-party noise kept off it.

Converting to TFLite, loading a SavedModel back and running a TFLite model make
TensorFlow and LiteRT write lines a user has nothing to do about: absl INFO
lines from TensorFlow's Python (`Using new converter...`, `Fingerprint not
found. Saved model loading will continue.`), Python warnings from inside
TensorFlow (`Statistics for quantized inputs were expected...`), and lines
their C++ writes straight to file descriptors 1 and 2 (`fully_quantize: 0,
inference_type: 6, ...`, `INFO: Created TensorFlow Lite XNNPACK delegate for
CPU.`), and `Use '@tf.function' or '@defun' to decorate the function.`, which
the converter writes to sys.stderr once for each function it cannot trace.

- `quiet_third_parties()` (called by a command when --logging_verbosity is not
  DEBUG) drops TensorFlow's and LiteRT's own absl records below WARNING and
  their Python warnings. Their warnings and errors still show.
- `native_output_filtered()` wraps a call whose C++ (or whose Python, straight to
  sys.stderr) writes such lines: what the
  call writes to file descriptors 1 and 2 is held, and afterwards written
  back less the lines NATIVE_NOISE matches, so a real error from the C++
  side is still shown (after the call, not during it). At DEBUG verbosity
  nothing is held or dropped.
"""

import contextlib
import logging as std_logging
import os
import re
import sys
import tempfile
import warnings

import ai_edge_litert
import tensorflow as tf
from absl import logging

# Where the third parties' Python lives: their log records carry these paths.
THIRD_PARTY_DIRS = tuple(os.path.dirname(module.__file__) + os.sep
                         for module in (tf, ai_edge_litert))

# Lines the converter's and the interpreter's C++ write that say nothing to act on.
# The converter's Python also writes one of them to sys.stderr for each function of
# a graph it cannot trace (565 times for a MobileNet).
NATIVE_NOISE = re.compile(
    r"^(fully_quantize: \d+, inference_type: "
    r"|Use '@tf\.function' or '@defun' to decorate the function\.$"
    r"|INFO: Created TensorFlow Lite \w+ delegate for CPU\."
    r"|Estimated count of arithmetic ops: "
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+\.(cc|h):\d+\] )"
)


class ThirdPartyInfo(std_logging.Filter):
    """Drops absl records below WARNING that TensorFlow's or LiteRT's own code made."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or not record.pathname.startswith(
            THIRD_PARTY_DIRS)


_FILTER = ThirdPartyInfo()


def quiet_third_parties():
    """Keep TensorFlow's and LiteRT's INFO lines and Python warnings off the console."""
    logger = std_logging.getLogger("absl")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", module=r"(tensorflow|ai_edge_litert)(\.|$)")


@contextlib.contextmanager
def native_output_filtered():
    """Hold what the block writes to file descriptors 1 and 2, then write it back less
    the NATIVE_NOISE lines. At DEBUG verbosity, or without those descriptors, the
    block's output goes straight through."""
    if logging.level_debug():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
    except OSError:  # a detached process: nothing to filter
        yield
        return
    held = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    try:
        for fd, file in held.items():
            os.dup2(file.fileno(), fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, file in held.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            file.seek(0)
            kept = [line for line in file
                    if not NATIVE_NOISE.search(line.decode("utf-8", "replace"))]
            file.close()
            if kept:
                os.write(fd, b"".join(kept))
