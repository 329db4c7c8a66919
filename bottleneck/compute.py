"""The batched forward pass that turns images into cached bottleneck vectors.

Only images whose content is not in the cache are computed. They flow through
one tf.data pipeline (parallel read, decode and resize, prefetch) into one
module call per batch, so decoding overlaps the forward pass and there is one
`sess.run` per batch, never per image.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging

import input_pipeline
from bottleneck import cache as cache_lib
from bottleneck import module as module_lib

DEFAULT_BATCH_SIZE = 32
PROGRESS_SECONDS = 10.0


@dataclasses.dataclass
class Bottlenecks:
    vectors: np.ndarray  # float32 [N, D], row i for paths[i]; zeros where skipped
    skipped: dict  # {index: reason} for images that could not be read or decoded
    computed: int
    reused: int
    height: int  # the module's input size
    width: int
    module_key: str
    orientations: list  # EXIF orientation of each image, for decoding it again
    # Images per second of the forward passes after the first batch (which also
    # pays for graph optimisation); None when fewer than two batches ran.
    steady_rate: float = None
    # SHA-1 hex of each image's file, None where it could not be read.
    contents: list = None

    def summary(self):
        """'bottlenecks: N images, D distinct: C computed, R reused, S skipped'.

        N counts images, D their distinct contents (a copy's vector is computed
        once); C, R and S count images and add up to N.
        """
        images = len(self.vectors)
        distinct = len({c for c in self.contents or () if c is not None})
        return (
            f"bottlenecks: {images} images, {distinct} distinct: {self.computed} computed, "
            f"{self.reused} reused, {len(self.skipped)} skipped"
        )


class Progress:
    """Logs count, rate and time left every few seconds during long work."""

    def __init__(self, total, what, interval=PROGRESS_SECONDS, clock=time.monotonic):
        self.total, self.what, self.interval, self.clock = total, what, interval, clock
        self.done = 0
        self.start = self.last = clock()

    def update(self, count):
        self.done += count
        now = self.clock()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            logging.info("%s", self.line(now))

    def line(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (
            f"{self.what}: {self.done}/{self.total} ({100.0 * self.done / self.total:.0f}%), "
            f"{rate:.1f} images/s, {format_duration(left)} left"
        )


def format_duration(seconds):
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def compute_bottlenecks(
    images, handle, bottleneck_dir, default_image_size=module_lib.DEFAULT_IMAGE_SIZE,
    batch_size=DEFAULT_BATCH_SIZE, max_image_pixels=input_pipeline.DEFAULT_MAX_IMAGE_PIXELS,
    precision="float32",
):
    """Bottleneck vectors for images, from the cache or computed and cached.

    images: full paths of image files, or an input_pipeline.ImageFiles or
    TFRecordImages. handle: TF Hub handle or local module folder. precision:
    "float32", or "bfloat16"/"float16" for a mixed-precision forward pass
    (cached under its own key). Returns Bottlenecks, row i for image i; images
    that cannot be read or decoded, or are larger than max_image_pixels, are
    skipped with a warning, not fatal. Raises module.ModuleError and
    cache.CacheError for problems that stop the work.
    """
    if isinstance(images, (list, tuple)):
        images = input_pipeline.ImageFiles(images)
    files = images.inspect(max_image_pixels)
    contents = [None if f.problem else f.sha1 for f in files]
    skipped = {i: f.problem for i, f in enumerate(files) if f.problem}
    module_lib.use_gpu_memory_as_needed()
    graph = tf.Graph()
    with graph.as_default():
        module = module_lib.load(handle, default_image_size)
        probe = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
        dimension = int(module(probe).shape[-1])
    height, width = module.height, module.width
    key = cache_lib.module_key(handle, height, width, precision)
    cache = cache_lib.BottleneckCache(bottleneck_dir, key)
    logging.info(
        "Module %s: %dx%d input, %d-d output, %s, running on %s; cache %s",
        handle, height, width, dimension, precision,
        module_lib.describe_device(), cache.root,
    )

    vectors = np.zeros([len(images), dimension], np.float32)
    missing = {}  # content key -> indices needing it
    reused = 0
    for i, content in enumerate(contents):
        if content is None:
            continue
        vector = cache.lookup(content, dimension)
        if vector is None:
            missing.setdefault(content, []).append(i)
        else:
            vectors[i] = vector
            reused += 1

    todo = [indices[0] for indices in missing.values()]
    done = set()
    steady_rate = None
    if todo:
        forward = module  # Runs in `graph`, reading the weights from its variables.
        if precision != "float32":
            # The rewrite needs constant weights (see module.freeze). Frozen only now:
            # a run with every vector cached does not pay for it.
            forward, graph = module_lib.freeze(module, precision), tf.Graph()
        needing = sum(len(indices) for indices in missing.values())
        copies = ""
        if needing > len(todo):  # a copy's vector is computed once and stored for every copy
            extra = needing - len(todo)
            copies = f" for {needing} images ({extra} {'is a copy' if extra == 1 else 'are copies'})"
        logging.info("Computing %d bottlenecks%s in batches of %d...", len(todo), copies, batch_size)
        with graph.as_default():
            batches = images.batches(
                todo, [files[i].orientation for i in todo], height, width, batch_size
            )
            batch_index, pixels = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
            features = forward(pixels)
            progress = Progress(len(todo), "bottlenecks")
            config = module_lib.session_config(precision)
            with tf.compat.v1.Session(graph=graph, config=config) as sess:
                sess.run([
                    tf.compat.v1.global_variables_initializer(),
                    tf.compat.v1.tables_initializer(),
                ])
                steady_start = steady_count = None
                for indices, values in input_pipeline.each_batch(sess, [batch_index, features]):
                    for i, vector in zip(indices.tolist(), values):
                        content = contents[i]
                        cache.store(content, vector)
                        vectors[missing[content]] = vector
                        done.add(i)
                    progress.update(len(indices))
                    if steady_start is None:
                        steady_start, steady_count = time.monotonic(), progress.done
                if steady_start is not None and progress.done > steady_count:
                    steady_rate = (progress.done - steady_count) / (time.monotonic() - steady_start)

    computed = 0
    for first in todo:
        indices = missing[contents[first]]
        if first in done:
            computed += len(indices)
        else:
            reason = images.why_undecodable(first)
            for i in indices:
                skipped[i] = reason
    for i in sorted(skipped):
        logging.warning("Skipping %s: %s", images.name(i), skipped[i])
    result = Bottlenecks(
        vectors, skipped, computed, reused, height, width, key,
        [f.orientation for f in files], steady_rate, [f.sha1 for f in files],
    )
    logging.info("%s", result.summary())
    return result
