r"""Up-front memory estimates, checked against this machine's RAM.

A size flag that cannot fit (a batch of a hundred million, a billion hidden
units) is refused before any work, with the memory it would need, instead of
growing until the machine swaps or the process is killed. `estimate` is the
one estimate: retrain.py's check (job.check_memory) and the cache fill's
(python -m bottleneck) both count with it.
"""

import dataclasses
import math
import os
import re
from typing import Optional

from retrain_suite import errors, streamed_batches
from retrain_suite.bottleneck import batch_size as batch_size_lib


class TooBig(errors.SuiteError):
    """A size flag needs more memory than this machine has."""

    area = "memory"


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def format_bytes(count):
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(text):
    """'8GB' -> 8000000000: a count of bytes, with an optional unit (B, KB, MB, GB, TB:
    powers of 1000, as format_bytes writes; KiB, MiB, GiB, TiB: of 1024; any case).
    Raises ValueError for anything else, and for a size below one byte or too large."""
    match = _SIZE.match(text)
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size")
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or not 1 <= value < 2**63:
        raise ValueError(f"{text!r} is out of range")
    return int(value)


def shortfall(needed, limit=None):
    """None if `needed` bytes fit in RAM (or RAM is unknown), else a text like
    'about 51.2 GB of memory; this machine has 24.6 GB'. limit: bytes to check
    against instead of RAM (--memory_limit), or None."""
    available = physical_memory() if limit is None else limit
    if available is None or needed <= available:
        return None
    has = ("this machine has" if limit is None else "the limit (--memory_limit) is")
    return f"about {format_bytes(needed)} of memory; {has} {format_bytes(available)}"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What a run holds in memory, as counts; a part the run lacks is 0.

    The fields named like flags are those flags' values, so an estimate can
    name the flag to lower and its value.
    """

    image_count: int  # N images
    input_size: tuple  # (height, width) of the module's input, pixels
    bottleneck_batch_size: Optional[int] = None  # images per forward pass; None: measured
    dimension: int = 0  # D values per bottleneck, all held; 0: none held (the cache fill)
    class_count: int = 0  # C
    train_batch_size: int = 0  # B bottlenecks per training step; 0: no training
    hidden_units: int = 0  # H; 0: no hidden layer
    distorted: bool = False  # training batches are decoded images, not cached vectors
    fine_tune_batch_size: int = 0  # images per fine-tuning step; 0: no fine-tuning
    # The vectors are streamed from the packed store (streamed_batches): not held; two
    # chunks of them and each image's position and label instead.
    streamed: bool = False
    # Decoded images the bottleneck pass keeps for the exported files' check and the int8
    # calibration (checked_images), held until the check.
    kept_images: int = 0


# What streaming holds per image (values of 4 bytes): its position and key in the
# store's index (packed_store.StoreIndex: 28 bytes), and the training pipeline's
# sorted key, row and label (24 bytes).
STREAMED_VALUES_PER_IMAGE = 13


@dataclasses.dataclass(frozen=True)
class Estimate:
    needed: int  # bytes
    largest: str  # the flag whose part of `needed` is largest: the one to lower


def estimate(sizes):
    """The memory a run of these sizes needs, in float32 values counted as bytes.

    Counted: the bottlenecks [N, D]; a training batch [B, D] twice (one
    prefetched) and its logits [B, C] x3; the layer's weights with their
    gradients and two optimizer slots (x4); a batch's hidden activations
    [B, H] x3 (ReLU output, its gradient, dropout); decoded images
    [min(held, N), h, w, 3] for the bottlenecks, where held is
    batch_size.images_held (the blocks decoded ahead, the batch being put together and
    the batch running); with distortions a training batch of images twice; with
    fine-tuning, a fine-tuning batch of images twice (the module's own
    activations and gradients for it are not counted: they depend on the module).
    Streamed, instead of the bottlenecks: STREAMED_VALUES_PER_IMAGE per image and
    the vectors the pipeline holds (streamed_batches.held_rows: two chunks, the blocks
    being read). And the decoded images kept for the check and calibration.
    """
    batch, hidden, classes = sizes.train_batch_size, sizes.hidden_units, sizes.class_count
    dimension = sizes.dimension
    height, width = sizes.input_size
    pixels = height * width * 3
    held = batch_size_lib.images_held(sizes.bottleneck_batch_size, 4 * pixels)
    weights = dimension * hidden + hidden * classes if hidden else dimension * classes
    parts = {
        "train_batch_size": 2 * batch * dimension + 3 * batch * classes,
        "hidden_units": 4 * (weights + hidden + classes) + 3 * batch * hidden,
        "bottleneck_batch_size": min(held, sizes.image_count) * pixels,
    }
    if sizes.distorted:
        parts["train_batch_size"] += 2 * batch * pixels
    if sizes.fine_tune_batch_size:
        parts["fine_tune_batch_size"] = 2 * sizes.fine_tune_batch_size * pixels
    if sizes.streamed:
        held = (STREAMED_VALUES_PER_IMAGE * sizes.image_count
                + streamed_batches.held_rows(dimension, sizes.image_count, batch) * dimension)
    else:
        held = sizes.image_count * dimension
    # The kept images are no flag's part: they are kept only where they fit
    # (checked_images.fits), so no flag is named for them.
    held += sizes.kept_images * pixels
    return Estimate(4 * (held + sum(parts.values())), max(parts, key=parts.get))


def vectors_bytes(sizes):
    """Bytes of the bottleneck vectors [N, D] of sizes, held in memory."""
    return 4 * sizes.image_count * sizes.dimension
