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

from retrain_suite import errors, memory_budget, photo_memo
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.bottleneck import packed_store
from retrain_suite.bottleneck import stores as stores_lib
from retrain_suite.bottleneck.progress import Progress, format_duration  # noqa: F401 (training, tuning)
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines


@dataclasses.dataclass(frozen=True)
class Counts:
    """What one compute_bottlenecks call did, counted by distinct image content.

    images: every image asked for; distinct: their distinct contents (an
    unreadable file counts as one of its own), so images - distinct are
    copies; computed (one forward pass each), cached (read from the cache)
    and skipped (unreadable, undecodable or too large) count distinct contents
    and add up to distinct, except where a file changed while it was read and
    its new content was computed besides.
    """

    images: int
    distinct: int
    computed: int
    cached: int
    skipped: int

    def line(self):
        """The one counts line that ends the bottleneck phase."""
        copies = self.images - self.distinct
        return (
            f"Bottlenecks: {self.images} images, {self.distinct} distinct "
            f"({copies} {'copy' if copies == 1 else 'copies'}): {self.computed} computed, "
            f"{self.cached} from the cache, {self.skipped} skipped (unreadable or too large)"
        )


@dataclasses.dataclass
class Bottlenecks:
    # float32 [N, D], row i for paths[i]; zeros where skipped. An np.ndarray, or with
    # StoreOptions(hold_vectors=False) a packed_store.StoreVectors reading the shards.
    vectors: np.ndarray
    skipped: dict  # {index: reason} for images that could not be read or decoded
    computed: int  # images whose vector was computed in this call (copies included)
    reused: int  # images whose vector came from the cache
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
    counts: Counts = None  # by distinct content, for the log
    # {index: float32 [height, width, 3]}: the decoded images asked to be kept (keep_pixels)
    # among those computed here (copies share one array); none for vectors from the cache.
    pixels: dict = dataclasses.field(default_factory=dict)

    def summary(self):
        """Counts.line(): 'Bottlenecks: N images, D distinct (K copies): C computed, ...'."""
        return self.counts.line()


def compute_bottlenecks(
    images, handle, bottleneck_dir, default_image_size=module_lib.DEFAULT_IMAGE_SIZE,
    batch_size=None, max_image_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS,
    precision="float32", store=None, keep_pixels=(),
):
    """Bottleneck vectors for images, from the cache or computed and cached.

    images: full paths of image files, or an image_pipelines.ImageFiles or
    TFRecordImages. handle: TF Hub handle or local module folder. batch_size:
    images per forward pass, or None to measure the fastest (see
    bottleneck.batch_size). precision:
    "float32", or "bfloat16"/"float16" for a mixed-precision forward pass
    (cached under its own key). store: stores.StoreOptions, where computed
    vectors go ("files" or "packed" shards; both are read) and whether the
    result holds them (hold_vectors=False: Bottlenecks.vectors is a
    packed_store.StoreVectors). keep_pixels: indices of images whose decoded pixels a
    later stage needs (Bottlenecks.pixels holds those decoded here: the caller bounds
    their memory). Returns Bottlenecks, row i for image i; images
    that cannot be read or decoded, or are larger than max_image_pixels, are
    skipped with a warning, not fatal. Raises module.ModuleError and
    cache.CacheError for problems that stop the work.
    """
    if isinstance(images, (list, tuple)):
        images = image_pipelines.ImageFiles(images)
    module_lib.use_gpu_memory_as_needed()
    identity = store_identity(handle, default_image_size, precision)
    store = store or stores_lib.StoreOptions()
    with stores_lib.Stores(bottleneck_dir, identity, store) as stores:
        logging.info(
            "Module %s: %dx%d input, %d-d output, %s, running on %s; cache %s",
            handle, identity.height, identity.width, identity.dimension, precision,
            module_lib.describe_device(), stores.describe(),
        )
        result = _compute(images, handle, stores,
                          _Asked(default_image_size, batch_size, max_image_pixels, precision,
                                 frozenset(keep_pixels), bottleneck_dir))
    if not store.hold_vectors:
        result.vectors = stores.vectors_of(
            [None if i in result.skipped else c for i, c in enumerate(result.contents)])
    logging.info("%s", result.summary())
    return result


def store_identity(handle, default_image_size, precision):
    """The packed_store.StoreIdentity of the module's vectors at precision (its cache key,
    input size and dimension)."""
    # The run's checks loaded it already (export.check_final_tensor_name): shared, not
    # reloaded. Or they only remembered its sizes: then it is loaded only if a vector is
    # missing.
    height, width, dimension = module_shape(handle, default_image_size)
    key = cache_lib.module_key(handle, height, width, precision)
    return packed_store.StoreIdentity(key, handle, height, width, precision, dimension)


@dataclasses.dataclass(frozen=True)
class _Asked:
    """compute_bottlenecks' arguments that _compute passes on."""

    default_image_size: int
    batch_size: int  # or None: measured
    max_image_pixels: int
    precision: str
    keep_pixels: frozenset  # indices whose decoded images are kept
    bottleneck_dir: str  # where photo_memo remembers the photos read


def _inspect(images, max_image_pixels, bottleneck_dir):
    """[ImageFile] of images in order. Photo files unchanged since a run read them are
    answered from photo_memo, without reading them."""
    if not isinstance(images, image_pipelines.ImageFiles):
        return images.inspect(max_image_pixels)
    inspected = photo_memo.PhotoMemo.of_cache(bottleneck_dir).inspect(images.paths, max_image_pixels)
    logging.debug("Read %d of %d photos; the others are unchanged since a run read them.",
                  inspected.read, len(images))
    return inspected.files


def _compute(images, handle, stores, asked):
    """compute_bottlenecks' work, with the stores open. -> Bottlenecks (vectors None
    when not held)."""
    identity = stores.packed.identity
    height, width, dimension = identity.height, identity.width, identity.dimension
    batch_size, max_image_pixels = asked.batch_size, asked.max_image_pixels
    default_image_size, precision = asked.default_image_size, asked.precision
    files = _inspect(images, max_image_pixels, asked.bottleneck_dir)
    contents = [None if f.problem else f.sha1 for f in files]
    hashes = [f.sha1 for f in files]  # also of files read but refused, for the copies count
    skipped = {i: f.problem for i, f in enumerate(files) if f.problem}

    held = stores.options.hold_vectors
    vectors = np.zeros([len(images), dimension], np.float32) if held else _NotHeld()
    found = stores.lookup(contents, vectors if held else None)
    missing = {}  # content key -> indices needing it
    for i, content in enumerate(contents):
        if content is not None and i not in found:
            missing.setdefault(content, []).append(i)
    reused, cached = len(found), {contents[i] for i in found}

    computed, forward_passes, steady_rate, chosen = 0, 0, None, None
    pixels = {}  # index -> decoded image, for asked.keep_pixels
    if missing:
        # Logged before freezing and building the pipeline, which take seconds of their own.
        log_work(len(missing), sum(len(indices) for indices in missing.values()))
        decoding = _Decoding(images, (height, width), max_image_pixels)
        # Decoding starts before the module is loaded and frozen (a second or more of
        # one core's work), so that it goes on meanwhile.
        todo = [indices[0] for indices in missing.values()]
        run = decoding.run(todo, batch_size)
        run.start()
        try:
            # Loaded (if need be) and frozen only now: a run with every vector cached
            # does not pay for it.
            module = module_lib.load_shared(handle, default_image_size)
            forward, graph = frozen_forward(module, precision)
            forward_pass = _ForwardPass(forward, graph, module_lib.session_config(precision))
        except BaseException:
            run.stop()
            raise
        while missing:
            # The pipeline hashes the bytes it decodes, and the vector is stored
            # under that hash. A file changed since inspection comes out under a
            # new hash: its vector is its new content's, and any copies of its old
            # content still need theirs, so they go round again (at the batch size
            # the first round chose).
            if run is None:
                todo = [indices[0] for indices in missing.values()]
                run = decoding.run(todo, chosen)
            try:
                progress = Progress(len(todo), "Bottlenecks")
                came_out, changed = set(), False
                logging.log(logging.INFO if chosen is None else logging.DEBUG,
                            "Batch size: %s.", run.plan())
                for batch in _computed_batches(forward_pass, run, progress.restart):
                    forward_passes += len(batch)
                    for i, content, vector, image in batch:
                        came_out.add(i)
                        stores.put(content, vector)  # As they come: a killed run keeps them.
                        old = contents[i]
                        if content == old:
                            vectors[missing[old]] = vector
                            _keep(pixels, missing[old], asked.keep_pixels, image)
                            computed += len(missing.pop(old))
                            continue
                        _keep(pixels, [i], asked.keep_pixels, image)
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
                    progress.update(len(batch), steady=not run.measuring)
            finally:
                run.stop()  # however the pass ended: decoding stops too
            if chosen is None:
                steady_rate, chosen = run.steady_rate, run.chosen
            run = None
            for first in todo:
                if first not in came_out:
                    reason = images.why_undecodable(first, max_image_pixels)
                    for i in missing.pop(contents[first]):
                        skipped[i] = reason
            if not changed:
                break

    for i in sorted(skipped):
        logging.warning("Skipping %s: %s", images.name(i), skipped[i])
    counts = count_by_content(hashes, skipped, forward_passes, len(cached))
    return Bottlenecks(
        vectors if held else None, skipped, computed, reused, height, width,
        identity.module_key, steady_rate,
        chosen, hashes, counts, pixels,
    )


def _keep(pixels, indices, wanted, image):
    """Keep a copy of image (a row of a fed batch) in pixels for those of indices wanted."""
    kept = [i for i in indices if i in wanted]
    if kept:
        image = np.array(image)  # not a view holding the whole batch
        pixels.update((i, image) for i in kept)


class _NotHeld:
    """Where the vectors would go when they are not held: assignments are dropped."""

    def __setitem__(self, rows, values):
        pass


def module_shape(handle, default_image_size=module_lib.DEFAULT_IMAGE_SIZE):
    """(height, width, D) of the module: as remembered (module.known_shape), else loaded
    (module.load_shared, kept for the computation) and called on a placeholder."""
    shape = module_lib.known_shape(handle, default_image_size)
    if shape is None:
        module = module_lib.load_shared(handle, default_image_size)
        with module.graph.as_default():
            probe = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
            shape = module.height, module.width, int(module(probe).shape[-1])
    return shape


def log_work(distinct, images):
    """The line that starts the computation: how many vectors, for how many images."""
    what = f"{distinct} bottleneck{'' if distinct == 1 else 's'}"
    if images > distinct:  # a copy's vector is computed once and stored for every copy
        extra = images - distinct
        what += f" for {images} images ({extra} {'is a copy' if extra == 1 else 'are copies'})"
    logging.info("Computing %s...", what)


def count_by_content(hashes, skipped, computed, cached):
    """Counts of one compute_bottlenecks call. hashes: hex SHA-1 per image or None where
    unreadable; skipped: {index: reason}; computed: forward passes; cached: distinct
    contents read from the cache."""
    keys = [h if h is not None else ("unreadable", i) for i, h in enumerate(hashes)]
    skipped_keys = {keys[i] for i in skipped}
    return Counts(images=len(keys), distinct=len(set(keys)), computed=computed, cached=cached,
                  skipped=len(skipped_keys))


# Peak memory that freezing adds, per byte of the module's weights: computing 102
# bottlenecks with the random Inception V3 (88 MB of weights) peaked at 2.77 GB
# frozen against 1.35 GB as loaded (maximum resident set size).
FROZEN_MEMORY_PER_WEIGHT_BYTE = 16


def frozen_forward(module, precision):
    """(forward pass, its graph): the module with its weights frozen, where it can be.

    Constant weights let Grappler fold each batch normalization into its
    convolution (about 8% faster in float32, see module.freeze), and the
    mixed-precision rewrite needs them. In float32 the module is run as
    loaded, reading its variables in the graph it was loaded into, where freezing would take more
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
        return module, module.graph
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
        return module, module.graph
    logging.info(
        "Froze the module's weights into the graph in %.1f s, for a faster forward pass.",
        time.monotonic() - began,
    )
    return forward, tf.Graph()


@dataclasses.dataclass(frozen=True)
class _ForwardPass:
    """The module's forward pass that every batch of one compute_bottlenecks call runs."""

    forward: object  # float32 [B, H, W, 3] -> [B, D]: the module, frozen where it could be
    graph: tf.Graph  # forward's graph
    session_config: tf.compat.v1.ConfigProto


@dataclasses.dataclass(frozen=True)
class _Decoding:
    """How one compute_bottlenecks call decodes its images."""

    images: object  # images.pipelines.ImageFiles or TFRecordImages
    input_size: tuple  # (height, width) in pixels
    max_image_pixels: int

    def run(self, todo, batch_size):
        """The batch_size.BatchedRun over the images at `todo`. batch_size: an int, or None
        to measure the fastest (the run's `chosen` and `steady_rate` say what it found,
        once its batches are done)."""
        (height, width), images = self.input_size, self.images
        return batch_size_lib.BatchedRun(
            lambda indices, size: images.batches(indices, height, width, size,
                                                 self.max_image_pixels),
            todo, batch_size,
        )


def _computed_batches(forward_pass, run, on_ready):
    """The batches of run (a _Decoding.run) through the module. Yields [(index, content,
    vector, image)] per batch.

    content: hex SHA-1 of the bytes decoded; vector: float32 [D]; image: the decoded
    pixels float32 [H, W, 3] (a view of the batch fed). Images that
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
            # The images fetched are the ones fed: nothing more is computed.
            for indices, contents, values, images in run.batches(
                    sess, [batch_content, features, pixels]):
                yield [
                    (i, content.decode("ascii"), vector, image)
                    for i, content, vector, image in zip(indices.tolist(), contents, values,
                                                         images)
                ]
