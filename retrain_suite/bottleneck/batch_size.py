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

import time

import tensorflow as tf
from absl import logging

from retrain_suite.images import pipelines as image_pipelines

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


class BatchedRun:
    """One pass over images in batches through a graph, at a given or measured batch size.

    make_batches(positions, batch_size) -> tf.data.Dataset of (position int64
    [B], ..., images float32 [B, H, W, 3]) for the images at `positions` (ints,
    yielded back as each image's position); batch_size is an int or an int64
    scalar tensor. Images that cannot be decoded may be left out of the
    batches. Built in the default graph: `position` and `images` are the
    tensors to compute from; `batches` runs the pass.
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
        self.rest_size = tf.compat.v1.placeholder_with_default(
            tf.constant(self.chosen or DEFAULT_BATCH_SIZE, tf.int64), [], "batch_size"
        )
        rest = make_batches(self.rest, self.rest_size)
        iterator = tf.compat.v1.data.Iterator.from_structure(
            tf.compat.v1.data.get_output_types(rest), tf.compat.v1.data.get_output_shapes(rest)
        )
        self.rest_init = iterator.make_initializer(rest)
        self.measure_init = None
        if self.segments:
            # One pipeline per size, over all of that size's positions, taking turns in
            # the order of the segments. A pipeline per segment (nine) measured 100 MiB
            # more peak memory over 2,000 images. An image that cannot be decoded makes
            # its size's pipeline end a batch early; that turn is skipped, not the others.
            sizes = [size for size, _ in self.segments]
            pipelines = [
                make_batches([p for s, part in self.segments if s == size for p in part], size)
                for size in CANDIDATES
            ]
            turns = tf.data.Dataset.from_tensor_slices(
                tf.constant([CANDIDATES.index(size) for size in sizes], tf.int64)
            )
            measured = tf.data.Dataset.choose_from_datasets(
                pipelines, turns, stop_on_empty_dataset=False
            )
            # Without this the first batch of each size would wait for its decoding.
            self.measure_init = iterator.make_initializer(measured.prefetch(1))
        # (position, ..., images): the first and last parts of each element.
        self.element = iterator.get_next()
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
        images/s of the batches after the first one at the size used. The
        first pays for set-up: graph optimisation without measuring; after
        measuring, the restart of the input pipeline at the chosen size (no
        batch is decoded ahead yet). When that first batch is the only one,
        the rate is the measured one at the chosen size.
        """
        fetches = [self.position, *fetches]
        if self.segments:
            size_of = {p: size for size, part in self.segments for p in part}
            seen = set()  # sizes whose warm-up batch has run
            sess.run(self.measure_init)
            stream = image_pipelines.each_batch(sess, fetches)
            while True:
                began = clock()
                values = next(stream, None)
                if values is None:
                    break
                ended = clock()
                self.measuring = True
                yield values
                if not len(values[0]):
                    continue
                size = size_of[int(values[0][0])]
                if size in seen:
                    per_image = (ended - began) / len(values[0])
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
        if not self.rest:
            return
        sess.run(self.rest_init, {self.rest_size: self.chosen})
        start, count = None, 0
        for values in image_pipelines.each_batch(sess, fetches):
            yield values
            if start is None:
                start = clock()
            else:
                count += len(values[0])
        if count:
            self.steady_rate = count / max(clock() - start, 1e-9)
        elif self.chosen in self.seconds_per_image:
            self.steady_rate = 1.0 / self.seconds_per_image[self.chosen]
