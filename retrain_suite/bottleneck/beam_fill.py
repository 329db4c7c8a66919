r"""The cache fill as an Apache Beam pipeline: `python -m bottleneck --runner=...`.

The work of compute.compute_bottlenecks, spread over Beam's workers, into the
packed store (packed_store.py):

    class folders ── MatchAll: listed on the workers, one pattern per class
      ── the scan's rules (scan.listed_image) ── Reshuffle: spread over the workers
      ── read once: content hash, header checks (images.files), the split
      ── group by content: copies are computed once ── skip what the store holds
      ── read again and decode with images.preprocess.decode_and_resize
      ── BatchElements (--batch_size) ── the module, loaded once per worker in setup()
      ── ShardWriter: committed shards, a shard per bundle or per --shard_entries

The counts line at the end is compute.Counts.line(), from the pipeline's Beam
counters. The vectors are bit-identical to compute_bottlenecks' for the same
module and images (the same decode and frozen forward pass; on this machine's
CPU the batch size changes no bit either). beam_lists.py adds the split lists
and the copies report. Only these two rooms import apache_beam; the command
imports them only when --runner is given.
"""

import argparse
import dataclasses
import os
import stat
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
import tensorflow as tf
from absl import logging
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners import create_runner
from apache_beam.runners.runner import PipelineState

from retrain_suite import errors
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import beam_lists, compute, packed_store
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.dataset import scan
from retrain_suite.dataset import split as split_lib
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.images import preprocess as image_preprocess

COUNTERS = "bottleneck"  # the namespace of the pipeline's counters

# Beam's DirectRunner first tries the Prism runner, which downloads a binary (and,
# offline, fails after a delay and a long message): locally the in-process runner is
# named instead. It honours --direct_running_mode and --direct_num_workers.
LOCAL_RUNNERS = {"DirectRunner": "FnApiRunner", "SwitchingDirectRunner": "FnApiRunner"}


class PipelineError(errors.SuiteError):
    """Bad --runner or pipeline options, or a pipeline that failed."""

    area = "beam"


@dataclasses.dataclass(frozen=True)
class Fill:
    """What one fill computes, and where it writes (the command's flags, typed)."""

    image_dir: str  # one subfolder per class; local or gs://
    handle: str  # TF Hub handle or module folder, readable from every worker
    bottleneck_dir: str  # the packed store goes to <bottleneck_dir>/<module key>/packed
    image_size: int = module_lib.DEFAULT_IMAGE_SIZE  # when the module does not fix it
    precision: str = "float32"  # or "bfloat16" / "float16" (module.mixed_precision_type)
    batch_size: int = batch_size_lib.DEFAULT_BATCH_SIZE  # images per forward pass
    max_image_pixels: int = image_files.DEFAULT_MAX_IMAGE_PIXELS  # width x height
    shard_entries: Optional[int] = None  # most entries per shard; None: ~64 MB shards
    split_lists: Optional[beam_lists.SplitLists] = None  # also write the lists and copies


class Listed(NamedTuple):
    """One image after its first read (the element between the listing and the grouping)."""

    path: str  # relative to the image folder, '/' separated
    label: str  # its class folder
    content: Optional[str]  # hex SHA-1 of the bytes read; None if unreadable
    problem: Optional[str]  # why it cannot be used (images.files' reasons), or None
    split: Optional[str]  # its set, when the split lists are written


def runner_and_options(runner, args):
    """--runner and Beam's own options (args: [str]) -> (runner object, PipelineOptions),
    both checked before any work: an unknown option, a bad value and what Beam's validator
    finds for the runner (a Dataflow job without --project, ...) raise PipelineError."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]  # every PipelineOptions class's arguments

    def refuse(message):
        raise PipelineError(f"bad pipeline option: {message}. See Beam's pipeline options.")

    parser.exit_on_error, parser.error = False, refuse
    try:
        _, unknown = parser.parse_known_args(args)
    except argparse.ArgumentError as e:  # a bad value
        refuse(f"{e.argument_name}: {e.message}" if e.argument_name else e.message)
    if unknown:
        raise PipelineError(
            f"unknown option {' '.join(unknown)}: neither a flag of this command (see --help) "
            "nor a Beam pipeline option."
        )
    name = LOCAL_RUNNERS.get(runner, runner)
    if name != runner:
        logging.info("--runner=%s runs as Beam's %s: the same in-process runner, without "
                     "first trying the Prism runner (which downloads a binary).", runner, name)
    try:
        runner_object = create_runner(name)
    except (ValueError, ImportError, AttributeError, TypeError) as e:
        raise PipelineError(f"--runner={runner} is not a Beam runner: {errors.one_line(e)}") from e
    options = PipelineOptions([*args, f"--runner={name}"])
    problems = PipelineOptionsValidator(options, runner_object).validate()
    if problems:
        raise PipelineError(f"pipeline options for {name}: {'; '.join(problems)}")
    return runner_object, options


def store_identity(fill):
    """The packed_store.StoreIdentity of fill's module (loaded here if its shape is not
    known yet: the driver needs the input size and dimension)."""
    return compute.store_identity(fill.handle, fill.image_size, fill.precision)


def fill_store(fill, runner, options):
    """Run the fill (Fill) on runner with options (runner_and_options). -> compute.Counts,
    also logged as the counts line. Raises dataset.DatasetError for an unusable image
    folder and PipelineError for a pipeline that failed."""
    local = "://" not in fill.image_dir
    fill = dataclasses.replace(fill, image_dir=os.path.abspath(fill.image_dir) if local
                               else fill.image_dir.rstrip("/"))
    scan.check_image_dir(fill.image_dir)
    excluded = tuple(p for p in (fill.bottleneck_dir, fill.split_lists and fill.split_lists.folder) if p)
    classes = scan.class_folders(fill.image_dir, excluded)
    for label, _ in classes:
        scan.check_label(label)
    identity = store_identity(fill)
    store = packed_store.PackedStore(fill.bottleneck_dir, identity)
    logging.info("Module %s: %dx%d input, %d-d output, %s; packed store %s; %d class folders.",
                 fill.handle, identity.height, identity.width, identity.dimension,
                 fill.precision, store.root, len(classes))
    pipeline = beam.Pipeline(runner=runner, options=options)
    patterns = [match_pattern(folder) for _, folder in classes]
    listed = (pipeline
              | "Class folders" >> beam.Create(patterns)
              | "List" >> fileio.MatchAll()
              | "Scan rules" >> beam.FlatMap(_images_of, fill.image_dir, excluded)
              # Without it every image went to one worker of the multi-process runner.
              | "Spread" >> beam.Reshuffle()
              | "Read and hash" >> beam.ParDo(_ReadAndHash(fill)))
    groups = listed | "By content" >> beam.GroupBy(_content_key)
    if fill.split_lists:
        beam_lists.write_lists(listed, groups, fill.split_lists)
    _ = (groups
         | "Skip stored" >> beam.ParDo(_SkipStored(fill, identity))
         | "Read and decode" >> beam.ParDo(_Decode(fill, identity))
         | "Batch" >> beam.BatchElements(min_batch_size=fill.batch_size,
                                         max_batch_size=fill.batch_size)
         | "Module" >> beam.ParDo(_Forward(fill))
         | "Write shards" >> beam.ParDo(_WriteShards(fill, identity)))
    try:
        result = pipeline.run()
        state = result.wait_until_finish()
    except errors.SuiteError:
        raise
    except Exception as e:  # a worker's error arrives wrapped, traceback and all
        raise PipelineError(f"the Beam pipeline failed: {_last_error_line(e)}") from e
    if state not in (PipelineState.DONE, None):
        raise PipelineError(f"the Beam pipeline ended {state}; see the runner's log.")
    counts = counts_of(result)
    logging.info("%s", counts.line())
    return counts


def _last_error_line(error):
    """The line of a wrapped worker error that names the exception ('CacheError: ...')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Error: " in line or "Exception: " in line]
    return errors.one_line(named[-1] if named else error)


def counts_of(result):
    """compute.Counts from a finished pipeline's counters (committed where the runner
    gives them, else attempted)."""
    found = {}
    query = result.metrics().query(MetricsFilter().with_namespace(COUNTERS))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        found[counter.key.metric.name] = found.get(counter.key.metric.name, 0) + (value or 0)
    return compute.Counts(**{name: found.get(name, 0) for name in
                             ("images", "distinct", "computed", "cached", "skipped")})


def match_pattern(folder):
    """Beam's file pattern for every file under folder, its glob characters escaped."""
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in folder.rstrip("/"))
    return escaped + "/**"


def _file_kind(path):
    """scan.folder_entries' kind of a listed file: 'file', or a special file's phrase.
    Found with stat (never opening it); a remote file is a file."""
    if "://" in path:
        return "file"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "file"  # reading it says why
    return "file" if stat.S_ISREG(mode) else image_files.special_file_kind(mode)


def _images_of(metadata, image_dir, excluded):
    """fileio's FileMetadata -> its path relative to image_dir, when the scan takes it."""
    relative, reason = scan.listed_image(image_dir, metadata.path, excluded,
                                         _file_kind(metadata.path))
    if reason:
        logging.warning("Skipping %s: %s.", scan.shown(metadata.path), reason)
    if relative:
        yield relative


def _content_key(listed):
    """What groups the images: their content, or the path of one that could not be read
    (which counts as a content of its own, as compute.count_by_content counts it)."""
    return listed.content if listed.content is not None else "unreadable:" + listed.path


def _full_path(image_dir, relative):
    return "/".join([image_dir, relative]) if "://" in image_dir else os.path.join(
        image_dir, *relative.split("/"))


class _ReadAndHash(beam.DoFn):
    """Relative path -> Listed: the file read once (images.files.inspect_image_file:
    special files refused unopened, the pixel limit from the header)."""

    def __init__(self, fill):
        self.fill = fill
        self.images = Metrics.counter(COUNTERS, "images")

    def process(self, relative):
        fill = self.fill
        info = image_files.inspect_image_file(_full_path(fill.image_dir, relative),
                                              fill.max_image_pixels)
        self.images.inc()
        split = None
        if fill.split_lists:
            lists = fill.split_lists
            by_content = lists.split_by == "content" and info.sha1 is not None
            split = split_lib.split_for(info.sha1 if by_content else relative,
                                        lists.validation_percentage, lists.testing_percentage)
        yield Listed(relative, relative.split("/")[0], info.sha1, info.problem, split)


class _SkipStored(beam.DoFn):
    """(content key, [Listed]) -> (content, full path) of one image per content that the
    packed store lacks and that can be used; counts distinct, cached and skipped."""

    def __init__(self, fill, identity):
        self.fill, self.identity = fill, identity
        self.distinct = Metrics.counter(COUNTERS, "distinct")
        self.cached = Metrics.counter(COUNTERS, "cached")
        self.skipped = Metrics.counter(COUNTERS, "skipped")

    def setup(self):
        # Once per worker: the store's keys (28 bytes an entry), never its vectors.
        self.index = packed_store.PackedStore(self.fill.bottleneck_dir, self.identity).index()

    def process(self, group):
        _, images = group
        images = sorted(images)
        first = images[0]
        self.distinct.inc()
        if first.problem:
            self.skipped.inc()
            for image in images:
                logging.warning("Skipping %s: %s", image.path, image.problem)
        elif self.index.position(first.content) is not None:
            self.cached.inc()
        else:
            yield first.content, _full_path(self.fill.image_dir, first.path)


class _Decode(beam.DoFn):
    """(content, full path) -> (content decoded, float32 [H, W, 3] in [0, 1]): the file read
    again and decoded by image_preprocess.decode_and_resize, as compute's pipeline does."""

    def __init__(self, fill, identity):
        self.fill, self.size = fill, (identity.height, identity.width)
        self.skipped = Metrics.counter(COUNTERS, "skipped")

    def setup(self):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.data = tf.compat.v1.placeholder(tf.string, [])
            self.orientation = tf.compat.v1.placeholder(tf.int32, [])
            self.image = image_preprocess.decode_and_resize(self.data, *self.size,
                                                            self.orientation)
        # Grappler off: its arithmetic rewrite turns the division by 255 into another
        # rounding (a last-bit difference measured here), while compute's tf.data
        # pipeline runs decode_and_resize's ops as written.
        config = tf.compat.v1.ConfigProto()
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)

    def process(self, element):
        listed_content, path = element
        max_pixels = self.fill.max_image_pixels
        data, content, orientation, usable = image_pipelines.ImageFiles([path]).read_checked(
            0, max_pixels)
        reason = None if usable else image_files.why_undecodable(path, max_pixels)
        if usable:
            try:
                image = self.session.run(self.image, {self.data: data.item(),
                                                      self.orientation: int(orientation)})
            except tf.errors.OpError as e:
                reason = f"not a decodable image: {errors.one_line(e)}"
        if reason:
            self.skipped.inc()
            logging.warning("Skipping %s: %s", path, reason)
            return
        content = content.item().decode("ascii")
        if content != listed_content:
            # Stored under what was decoded, as compute does; its old copies wait for a rerun.
            logging.warning("%s changed while it was being read; its new content was used.",
                            path)
        yield content, image

    def teardown(self):
        self.session.close()


class _Forward(beam.DoFn):
    """[(content, image)] (a batch) -> (content, float32 [D] vector) each: the module,
    loaded and frozen once per worker (a loaded SavedModel cannot be pickled)."""

    def __init__(self, fill):
        self.fill = fill
        self.computed = Metrics.counter(COUNTERS, "computed")

    def setup(self):
        fill = self.fill
        module = module_lib.load_shared(fill.handle, fill.image_size)
        forward, graph = compute.frozen_forward(module, fill.precision)
        with graph.as_default():
            self.images = tf.compat.v1.placeholder(tf.float32,
                                                   [None, module.height, module.width, 3])
            self.features = forward(self.images)
            initializers = [tf.compat.v1.global_variables_initializer(),
                            tf.compat.v1.tables_initializer()]
        self.session = tf.compat.v1.Session(
            graph=graph, config=module_lib.session_config(fill.precision))
        self.session.run(initializers)
        logging.info("Worker process %d: module ready.", os.getpid())

    def process(self, batch):
        contents = [content for content, _ in batch]
        vectors = self.session.run(self.features,
                                   {self.images: np.stack([image for _, image in batch])})
        self.computed.inc(len(batch))
        yield from zip(contents, vectors)

    def teardown(self):
        self.session.close()


class _WriteShards(beam.DoFn):
    """(content, vector) -> committed shards of the packed store: one every
    fill.shard_entries entries and one at each bundle's end."""

    def __init__(self, fill, identity):
        self.fill, self.identity = fill, identity

    def setup(self):
        self.store = packed_store.PackedStore(self.fill.bottleneck_dir, self.identity)

    def start_bundle(self):
        self.writer = packed_store.ShardWriter(self.store, self.fill.shard_entries)

    def process(self, element):
        self.writer.add(*element)

    def finish_bundle(self):
        self.writer.flush()
