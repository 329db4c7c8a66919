r"""The batched forward pass that turns images into cached bottleneck vectors.

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

from retrain_suite import errors, memory_budget
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines

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
    # Images per second of the forward passes at the batch size used: after the
    # first batch (which also pays for graph optimisation) or after the batches
    # that measured the size; None when there were none.
    steady_rate: float = None
    batch_size: int = None  # images per forward pass, given or measured; None: none ran
    # SHA-1 hex of each image's bytes (as decoded; as read for a file refused), None where
    # it could not be read.
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

    def restart(self):
        """Start the clock now, after set-up that is not part of the work timed."""
        self.start = self.last = self.clock()

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
    batch_size=None, max_image_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS,
    precision="float32",
):
    """Bottleneck vectors for images, from the cache or computed and cached.

    images: full paths of image files, or an image_pipelines.ImageFiles or
    TFRecordImages. handle: TF Hub handle or local module folder. batch_size:
    images per forward pass, or None to measure the fastest (see
    bottleneck.batch_size). precision:
    "float32", or "bfloat16"/"float16" for a mixed-precision forward pass
    (cached under its own key). Returns Bottlenecks, row i for image i; images
    that cannot be read or decoded, or are larger than max_image_pixels, are
    skipped with a warning, not fatal. Raises module.ModuleError and
    cache.CacheError for problems that stop the work.
    """
    if isinstance(images, (list, tuple)):
        images = image_pipelines.ImageFiles(images)
    files = images.inspect(max_image_pixels)
    contents = [None if f.problem else f.sha1 for f in files]
    hashes = [f.sha1 for f in files]  # also of files read but refused, for the copies count
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

    computed, steady_rate, chosen = 0, None, None
    if missing:
        # Frozen only now: a run with every vector cached does not pay for it.
        forward, graph = _frozen_forward(module, precision, graph)
        forward_pass = _ForwardPass(
            images, forward, graph, module_lib.session_config(precision), (height, width),
            max_image_pixels,
        )
        while missing:
            # The pipeline hashes the bytes it decodes, and the vector is stored
            # under that hash. A file changed since inspection comes out under a
            # new hash: its vector is its new content's, and any copies of its old
            # content still need theirs, so they go round again (at the batch size
            # the first round chose).
            todo = [indices[0] for indices in missing.values()]
            needing = sum(len(indices) for indices in missing.values())
            what = f"{len(todo)} bottlenecks"
            if needing > len(todo):  # a copy's vector is computed once and stored for every copy
                extra = needing - len(todo)
                what += f" for {needing} images ({extra} {'is a copy' if extra == 1 else 'are copies'})"
            progress = Progress(len(todo), "bottlenecks")
            came_out, changed = set(), False
            run = _batched_run(forward_pass, todo, chosen or batch_size)
            logging.info("Computing %s in batches of %s...", what, run.plan())
            for batch in _computed_batches(forward_pass, run, progress.restart):
                for i, content, vector in batch:
                    came_out.add(i)
                    cache.store(content, vector)  # As they come: a killed run keeps them.
                    old = contents[i]
                    if content == old:
                        vectors[missing[old]] = vector
                        computed += len(missing.pop(old))
                        continue
                    logging.warning(
                        "%s changed while it was being read; its new content was used.",
                        images.name(i),
                    )
                    contents[i], vectors[i], changed = content, vector, True
                    hashes[i] = content
                    computed += 1
                    missing[old].remove(i)
                    if not missing[old]:
                        del missing[old]
                progress.update(len(batch))
            if chosen is None:
                steady_rate, chosen = run.steady_rate, run.chosen
            for first in todo:
                if first not in came_out:
                    reason = images.why_undecodable(first, max_image_pixels)
                    for i in missing.pop(contents[first]):
                        skipped[i] = reason
            if not changed:
                break

    for i in sorted(skipped):
        logging.warning("Skipping %s: %s", images.name(i), skipped[i])
    result = Bottlenecks(
        vectors, skipped, computed, reused, height, width, key, steady_rate, chosen, hashes,
    )
    logging.info("%s", result.summary())
    return result


# Peak memory that freezing adds, per byte of the module's weights: computing 102
# bottlenecks with the random Inception V3 (88 MB of weights) peaked at 2.77 GB
# frozen against 1.35 GB as loaded (maximum resident set size).
FROZEN_MEMORY_PER_WEIGHT_BYTE = 16


def _frozen_forward(module, precision, graph):
    """(forward pass, its graph): the module with its weights frozen, where it can be.

    Constant weights let Grappler fold each batch normalization into its
    convolution (about 8% faster in float32, see module.freeze), and the
    mixed-precision rewrite needs them. In float32 the module is run as
    loaded, reading its variables in `graph`, where freezing would take more
    than a quarter of this machine's memory, or where it cannot be frozen
    (weights over module.MAX_FROZEN_BYTES, or a graph the conversion does not
    handle); the log says which.
    """
    memory = memory_budget.physical_memory()
    extra = FROZEN_MEMORY_PER_WEIGHT_BYTE * module_lib.weight_bytes(module)
    if precision == "float32" and memory is not None and extra > memory / 4:
        logging.info(
            "Computing with the module's weights as loaded: freezing them into the graph "
            "would take about %s more memory, over a quarter of this machine's %s.",
            memory_budget.format_bytes(extra), memory_budget.format_bytes(memory),
        )
        return module, graph
    began = time.monotonic()
    try:
        forward = module_lib.freeze(module, precision)
    except (module_lib.ModuleError, ValueError, KeyError, tf.errors.OpError) as e:
        if precision != "float32":  # Float32 has a way on; mixed precision has none.
            raise
        logging.warning(
            "Computing with the module's weights as loaded: they could not be frozen into the "
            "graph (%s). The forward pass is about 8%% slower that way.", errors.one_line(e),
        )
        return module, graph
    logging.info(
        "Froze the module's weights into the graph in %.1f s, for a faster forward pass.",
        time.monotonic() - began,
    )
    return forward, tf.Graph()


@dataclasses.dataclass(frozen=True)
class _ForwardPass:
    """What every pipeline run of one compute_bottlenecks call shares."""

    images: object  # images.pipelines.ImageFiles or TFRecordImages
    forward: object  # float32 [B, H, W, 3] -> [B, D]: the module, frozen where it could be
    graph: tf.Graph  # forward's graph
    session_config: tf.compat.v1.ConfigProto
    input_size: tuple  # (height, width) in pixels
    max_image_pixels: int


def _batched_run(forward_pass, todo, batch_size):
    """The batch_size.BatchedRun over the images at `todo`, in forward_pass's graph.

    batch_size: an int, or None to measure the fastest (the run's `chosen` and
    `steady_rate` say what it found, once its batches are done).
    """
    images, (height, width) = forward_pass.images, forward_pass.input_size
    with forward_pass.graph.as_default():
        return batch_size_lib.BatchedRun(
            lambda indices, size: images.batches(indices, height, width, size,
                                                 forward_pass.max_image_pixels),
            todo, batch_size,
        )


def _computed_batches(forward_pass, run, on_ready):
    """The batches of run (a _batched_run) through the module. Yields [(index, content,
    vector)] per batch.

    content: hex SHA-1 of the bytes decoded; vector: float32 [D]. Images that
    could not be read or decoded never come out. on_ready() is called once the
    graph and Session are set up, before the first batch.
    """
    with forward_pass.graph.as_default():
        batch_content, pixels = run.element[1], run.images
        features = forward_pass.forward(pixels)
        with tf.compat.v1.Session(graph=forward_pass.graph, config=forward_pass.session_config) as sess:
            sess.run([
                tf.compat.v1.global_variables_initializer(),
                tf.compat.v1.tables_initializer(),
            ])
            on_ready()
            for indices, contents, values in run.batches(sess, [batch_content, features]):
                yield [
                    (i, content.decode("ascii"), vector)
                    for i, content, vector in zip(indices.tolist(), contents, values)
                ]
