r"""The batch size of a forward pass over many images, measured when not given.

Which size is fastest depends on the CPU (or GPU) and the module: with a
random-weight Inception V3 on a 2-core Xeon, batches of 8 ran 15% faster than
batches of 32, and on other machines larger batches win. So unless the user
gives one, the first images are run at each of CANDIDATES: one batch of each
to warm up (the first batch of a new shape also pays for allocating and
preparing the kernels of that shape, so it is not timed), then TIMED_BATCHES
rounds of one timed batch of each size in turn. Taking turns spreads whatever
else the machine is doing over all the sizes instead of landing on one, and
each size's best batch counts (other work only ever slows a batch down). The
rest run at the size with the fewest seconds per image. Every batch's results
are kept, so measuring costs only the difference in speed of the slower sizes
on those first images, not extra work.

Too few images to measure (fewer than MIN_IMAGES_TO_MEASURE) run at
DEFAULT_BATCH_SIZE: measuring would then cost more than it could save.
"""

import math
import time

import numpy as np
import tensorflow as tf
from absl import logging

CANDIDATES = (8, 16, 32)


TIMED_BATCHES = 2


DEFAULT_BATCH_SIZE = 32


# The measuring batches, and at least two full batches at whichever size wins.
MIN_IMAGES_TO_MEASURE = (1 + TIMED_BATCHES) * sum(CANDIDATES) + 2 * max(CANDIDATES)


def default_description():
    """What an unset batch size flag means, for --help."""
    sizes = [str(size) for size in CANDIDATES]
    return (f"the fastest of {', '.join(sizes[:-1])} and {sizes[-1]} per image, measured on "
            f"the first images ({DEFAULT_BATCH_SIZE} for fewer than {MIN_IMAGES_TO_MEASURE} "
            "images)")


def fastest_batch_size(seconds_per_image):
    """{batch size: seconds per image} -> the size with the fewest; the larger on a tie."""
    return min(seconds_per_image, key=lambda size: (seconds_per_image[size], -size))


def block_size(given=None):
    """Images per pipeline batch ("block") of a BatchedRun: a given size itself, else the
    largest that divides every candidate, so that any candidate batch is whole blocks."""
    return given or math.gcd(*CANDIDATES)


def images_held(given=None):
    """The most decoded images a BatchedRun holds at once: blocks prefetched (as many as
    the largest batch, and the pipeline's own one), the batch being put together and the
    batch running; a given size's blocks are its batches, one prefetched."""
    if given:
        return 3 * given
    block = block_size()
    return 3 * max(CANDIDATES) + block


class BatchedRun:
    """One pass over images in batches through a graph, at a given or measured batch size.

    make_batches(positions, block) -> tf.data.Dataset of (position int64 [B], ...,
    images float32 [B, H, W, 3]) for the images at `positions` (ints, yielded back as
    each image's position), in batches ("blocks") of `block` images. Images that cannot
    be decoded may be left out. One pipeline of it runs from the first image to the
    last, never restarted, so decoding goes on while the batches run: the batches are
    put together from its blocks (of block_size()) and fed through `element`,
    placeholders of the same structure (`position` and `images` are its first and last
    parts: the tensors to compute from); `batches` runs the pass.

    The measuring batches time the graph's run on a batch already decoded, not the wait
    for decoding: which size the module runs fastest at, whatever the decoding's speed.
    """

    def __init__(self, make_batches, positions, batch_size=None):
        positions = list(positions)
        self.given = batch_size
        self.segments = []  # (batch size, positions) run first to measure, in order
        if batch_size is None and len(positions) >= MIN_IMAGES_TO_MEASURE:
            start = 0
            for _ in range(1 + TIMED_BATCHES):  # A warm-up round, then the timed ones.
                for size in CANDIDATES:
                    self.segments.append((size, positions[start:start + size]))
                    start += size
            self.rest = positions[start:]
        else:
            self.rest = positions
        self.chosen = batch_size or (None if self.segments else DEFAULT_BATCH_SIZE)
        self.steady_rate = None  # images/s at the chosen size (see batches)
        self.measuring = False  # True while batches yields the batches that measure
        self.seconds_per_image = {}  # {candidate: best seconds per image measured}
        block = block_size(self.chosen if not self.segments else None)
        blocks = make_batches(positions, block)
        if self.segments:
            # Blocks enough for the largest batch wait ready while a batch runs.
            blocks = blocks.prefetch(max(CANDIDATES) // block)
        iterator = tf.compat.v1.data.make_initializable_iterator(blocks)
        self.start = iterator.initializer
        self.blocks = iterator.get_next()
        self.element = tuple(
            tf.compat.v1.placeholder(part.dtype, part.shape, name=f"batch_{i}")
            for i, part in enumerate(self.blocks)
        )
        self.position, self.images = self.element[0], self.element[-1]

    def plan(self):
        """How the images will be batched, for the log."""
        if self.segments:
            sizes = [str(size) for size in CANDIDATES]
            measured = sum(len(part) for _, part in self.segments)
            return (f"measuring {', '.join(sizes[:-1])} and {sizes[-1]} images per forward pass "
                    f"on the first {measured} images (each size once to warm up, then "
                    f"{TIMED_BATCHES} timed rounds), then the fastest per image for the other "
                    f"{len(self.rest)}")
        if self.given:
            return f"{self.chosen}, as given"
        return f"{self.chosen} (too few images to measure the fastest size)"

    def batches(self, sess, fetches, clock=time.monotonic):
        """Yield sess.run([position, *fetches]) for every batch, measuring first if asked.

        Sets `chosen`, `seconds_per_image` (when measured) and `steady_rate`:
        images/s of the batches after the first one at the size used (the first
        pays for graph optimisation at that size). When that first batch is the
        only one, the rate is the measured one at the chosen size.
        """
        fetches = [self.position, *fetches]
        sess.run(self.start)
        source = _Blocks(sess, self.blocks)
        if self.segments:
            seen = set()  # sizes whose warm-up batch has run
            for size, _ in self.segments:
                parts = source.take(size)
                if parts is None:
                    break
                began = clock()
                values = sess.run(fetches, dict(zip(self.element, parts)))
                ended = clock()
                self.measuring = True
                yield values
                if size in seen and len(values[0]) == size:
                    per_image = (ended - began) / size
                    self.seconds_per_image[size] = min(
                        self.seconds_per_image.get(size, per_image), per_image
                    )
                seen.add(size)
            self.measuring = False
            if self.seconds_per_image:
                self.chosen = fastest_batch_size(self.seconds_per_image)
            else:  # Nothing could be decoded among the first images.
                self.chosen = DEFAULT_BATCH_SIZE
            logging.info(
                "Batch size %d: the fastest per image of %s; the other %d images run in "
                "batches of %d.", self.chosen,
                ", ".join(f"{size}: {1000 * seconds:.1f} ms" for size, seconds in
                          sorted(self.seconds_per_image.items())),
                len(self.rest), self.chosen,
            )
        start, count = None, 0
        while True:
            parts = source.take(self.chosen)
            if parts is None:
                break
            values = sess.run(fetches, dict(zip(self.element, parts)))
            yield values
            if start is None:
                start = clock()
            else:
                count += len(values[0])
        if count:
            self.steady_rate = count / max(clock() - start, 1e-9)
        elif self.chosen in self.seconds_per_image:
            self.steady_rate = 1.0 / self.seconds_per_image[self.chosen]


class _Blocks:
    """The blocks of a BatchedRun's pipeline, taken as batches of any size."""

    def __init__(self, sess, element):
        self.sess, self.element = sess, element
        self.held = []  # blocks (tuples of arrays) not yet taken, in order
        self.ended = False

    def take(self, size):
        """The next `size` images (fewer at the end) as a tuple of arrays, one per part of
        the element; None once none are left."""
        while not self.ended and sum(len(block[0]) for block in self.held) < size:
            try:
                self.held.append(tuple(self.sess.run(self.element)))
            except tf.errors.OutOfRangeError:
                self.ended = True
        if not self.held:
            return None
        if len(self.held) == 1 and len(self.held[0][0]) == size:
            return self.held.pop()  # a whole block: no copy
        parts = [np.concatenate(arrays) for arrays in zip(*self.held)]
        taken = tuple(part[:size] for part in parts)
        rest = tuple(part[size:] for part in parts)
        self.held = [rest] if len(rest[0]) else []
        return taken
