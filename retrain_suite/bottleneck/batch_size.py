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
import queue
import threading
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


# Decoded images waiting for the module, at most (rounded down to whole blocks, at least
# one block): AHEAD_IMAGES, and no more than AHEAD_BYTES of them. Enough to hold what
# decoding does on an idle core while the module is frozen and its batch sizes warm up
# (about 1.5 s of a 1,000-photo run), so that time is not lost: 128 images are 77 MB at
# 224x224 and 137 MB at 299x299; at 600x600, 32 (whole blocks of 8 within 160 MB).
AHEAD_IMAGES = 128
AHEAD_BYTES = 160 * 2**20


def _ahead_blocks(block, image_bytes):
    """Blocks of `block` images of image_bytes each waiting for the module, at most."""
    return max(1, min(AHEAD_IMAGES, AHEAD_BYTES // max(image_bytes, 1)) // block)


def images_held(given=None, image_bytes=0):
    """The most decoded images (of image_bytes each) a BatchedRun holds at once: the
    blocks waiting (_ahead_blocks), the one its thread holds while they are full, the
    pipeline's own prefetched one, the batch being put together and the batch running."""
    block = block_size(given)
    batch = given or max(CANDIDATES)
    return (_ahead_blocks(block, image_bytes) + 2) * block + 2 * batch


class BatchedRun:
    """One pass over images in batches through a graph, at a given or measured batch size.

    make_batches(positions, block) -> tf.data.Dataset of (position int64 [B], ...,
    images float32 [B, H, W, 3]) for the images at `positions` (ints, yielded back as
    each image's position), in batches ("blocks") of `block` images. Images that cannot
    be decoded may be left out. One pipeline of it runs from the first image to the
    last, never restarted, in a graph and Session of its own on a thread: decoding
    starts with start() (or the first batch), goes on while the batches run and while
    the caller still sets up what they run through, up to AHEAD_IMAGES (or AHEAD_BYTES)
    ahead. The batches are put together from its blocks (of block_size()) and fed
    through `element`, placeholders of the same structure made in the graph that is the
    default when `element` (or `position`, `images`) is first asked for (`position` and
    `images` are its first and last parts: the tensors to compute from); `batches` runs
    the pass.

    The measuring batches time the graph's run on a batch already decoded, not the wait
    for decoding: which size the module runs fastest at, whatever the decoding's speed.
    """

    def __init__(self, make_batches, positions, batch_size=None, decode_config=None):
        """decode_config: the ConfigProto of the decoding Session (default: TensorFlow's,
        with no GPU: decoding runs on the CPU and must not take a GPU's memory)."""
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
        self._decoder = _Decoder(make_batches, positions, block, decode_config)
        self._element = None

    @property
    def element(self):
        """Placeholders of a block's structure, in the graph that is the default at the
        first call."""
        if self._element is None:
            self._element = tuple(
                tf.compat.v1.placeholder(dtype, shape, name=f"batch_{i}")
                for i, (dtype, shape) in enumerate(self._decoder.parts)
            )
        return self._element

    @property
    def position(self):
        return self.element[0]

    @property
    def images(self):
        return self.element[-1]

    def start(self):
        """Begin decoding now, before the graph the batches run through is ready."""
        self._decoder.start()

    def stop(self):
        """Stop decoding (batches does once it ends; before, the caller, if it never runs)."""
        self._decoder.stop()

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
        only one, the rate is the measured one at the chosen size. Decoding stops
        when the pass ends, however it ends (an error, the caller stopping early).
        """
        fetches = [self.position, *fetches]
        self._decoder.start()  # raises in take() if this run was stopped or used before
        try:
            yield from self._batches(sess, fetches, _Blocks(self._decoder), clock)
        finally:
            self._decoder.stop()

    def _batches(self, sess, fetches, source, clock):
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


_END = object()  # what _Decoder's queue holds after the last block


class _Decoder:
    """make_batches' pipeline in a graph and Session of its own, run on a thread that
    puts its blocks in a queue of _ahead_blocks (a failure too, raised by take)."""

    def __init__(self, make_batches, positions, block, config):
        self.graph = tf.Graph()
        with self.graph.as_default():
            dataset = make_batches(positions, block)
            self.parts = [(spec.dtype, spec.shape)
                          for spec in tf.nest.flatten(dataset.element_spec)]
            self.next = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
        if config is None:
            config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
        self.config = config
        dtype, shape = self.parts[-1]  # the images: float32 [B, H, W, 3]
        image_bytes = 0 if shape.rank is None else dtype.size * int(
            np.prod([d or 1 for d in shape.as_list()[1:]]))
        self.queue = queue.Queue(_ahead_blocks(block, image_bytes))
        self.stopping = threading.Event()
        self.thread = None

    def start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="decoding", daemon=True)
            self.thread.start()

    def _run(self):
        try:
            with tf.compat.v1.Session(graph=self.graph, config=self.config) as sess:
                while not self.stopping.is_set():
                    try:
                        block = tuple(sess.run(self.next))
                    except tf.errors.OutOfRangeError:
                        break
                    self._put(block)
            self._put(_END)
        except BaseException as e:  # raised where the blocks are taken
            self._put(e)

    def _put(self, item):
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self):
        """The next block (a tuple of arrays), or None after the last; raises what the
        pipeline raised, and RuntimeError once decoding was stopped (rather than waiting
        for blocks that will never come)."""
        while True:
            if self.stopping.is_set():
                raise RuntimeError("the images of this pass were already taken or stopped: "
                                   "a BatchedRun runs once")
            try:
                item = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                continue
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self):
        """Stop decoding, wait for the thread (closing its Session waits for the blocks
        being decoded and prefetched), and drop the blocks not taken."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        while not self.queue.empty():
            self.queue.get_nowait()


class _Blocks:
    """The blocks of a BatchedRun's pipeline, taken as batches of any size."""

    def __init__(self, decoder):
        self.decoder = decoder
        self.held = []  # blocks (tuples of arrays) not yet taken, in order
        self.ended = False

    def take(self, size):
        """The next `size` images (fewer at the end) as a tuple of arrays, one per part of
        the element; None once none are left."""
        while not self.ended and sum(len(block[0]) for block in self.held) < size:
            block = self.decoder.take()
            if block is None:
                self.ended = True
            else:
                self.held.append(block)
        if not self.held:
            return None
        if len(self.held) == 1 and len(self.held[0][0]) == size:
            return self.held.pop()  # a whole block: no copy
        parts = [np.concatenate(arrays) for arrays in zip(*self.held)]
        taken = tuple(part[:size] for part in parts)
        rest = tuple(part[size:] for part in parts)
        self.held = [rest] if len(rest[0]) else []
        return taken
