"""The cache-fill command line (python -m bottleneck): flags -> compute.compute_bottlenecks,
or with --runner -> bottleneck.beam_fill, a Beam pipeline (Beam's own options pass through)."""

import logging as py_logging
import sys

import tensorflow as tf
from absl import flags, logging

from retrain_suite import command_config, errors, memory_budget, output_paths
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import compute, packed_compaction, packed_store
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.bottleneck import stores as stores_lib
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS


def main(argv, pipeline_args=()):
    """The command; pipeline_args: Beam's options, split off the command line by
    pipeline_args_of (only with --runner)."""
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    tf.get_logger().setLevel("ERROR")
    config = shared_flags.config_from_flags(command_config.BottleneckConfig)
    try:
        config.validate()
        check_cache_location(config.bottleneck_dir, config.image_dir, config.tfhub_module)
        if config.runner is not None:
            # A Beam fill writes the packed store: an explicit --bottleneck_store=files
            # is refused, never ignored.
            if FLAGS["bottleneck_store"].present and config.bottleneck_store != "packed":
                raise command_config.UsageError(
                    f"--runner writes the packed store, not --bottleneck_store="
                    f"{config.bottleneck_store}: drop that flag or make it packed.")
            fill_on_beam(config, list(pipeline_args))
        precision = module_lib.mixed_precision_type() if config.mixed_precision else "float32"
        if config.image_dir and config.runner is None:
            fill(config, precision)
        if config.compact:
            identity = compute.store_identity(config.tfhub_module, config.image_size, precision)
            packed_compaction.compact(packed_store.PackedStore(config.bottleneck_dir, identity))
    except errors.SuiteError as e:
        sys.exit(f"error: {e}")


def fill(config, precision):
    """Compute the vectors of every image of config.image_dir that no store holds yet."""
    # The split does not matter here; any valid percentages will do.
    dataset = dataset_lib.build_dataset(
        config.image_dir, 0, 0, exclude_dirs=[config.bottleneck_dir]
    )
    logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
    check_batch_memory(config.batch_size, len(dataset.images), config.tfhub_module,
                       config.image_size)
    compute.compute_bottlenecks(
        [dataset.full_path(image) for image in dataset.images], config.tfhub_module,
        config.bottleneck_dir, config.image_size, config.batch_size, config.max_image_pixels,
        precision=precision, store=stores_lib.StoreOptions(kind=config.bottleneck_store),
    )


BEAM_MISSING = "error: --runner needs Apache Beam: pip install -e '.[beam]'"


def fill_on_beam(config, pipeline_args):
    """The fill as a Beam pipeline (bottleneck.beam_fill), its options checked first."""
    # Beam's import warns that Google Cloud's optional clients are missing (apitools,
    # BigQuery): nothing the fill uses.
    py_logging.disable(py_logging.WARNING)
    try:
        from retrain_suite.bottleneck import beam_fill, beam_lists
    except ImportError as e:  # Beam is an extra; only a missing Beam is the user's to fix
        if (e.name or "").split(".")[0] != "apache_beam":
            raise
        sys.exit(BEAM_MISSING)
    finally:
        py_logging.disable(py_logging.NOTSET)
    runner, options = beam_fill.runner_and_options(config.runner, pipeline_args)
    split_lists = None
    if config.split_lists_dir is not None:
        output_paths.check_not_empty([("split_lists_dir", config.split_lists_dir)])
        output_paths.check_apart([("split_lists_dir", config.split_lists_dir)],
                                 [("image_dir", config.image_dir),
                                  ("bottleneck_dir", config.bottleneck_dir)])
        beam_lists.check_folder(config.split_lists_dir)
        validation, testing = config.split_percentages()
        split_lists = beam_lists.SplitLists(config.split_lists_dir, validation, testing,
                                            config.split_by or "path")
    precision = module_lib.mixed_precision_type() if config.mixed_precision else "float32"
    beam_fill.fill_store(beam_fill.Fill(
        image_dir=config.image_dir, handle=config.tfhub_module,
        bottleneck_dir=config.bottleneck_dir, image_size=config.image_size, precision=precision,
        batch_size=config.batch_size or batch_size_lib.DEFAULT_BATCH_SIZE,
        max_image_pixels=config.max_image_pixels, shard_entries=config.shard_entries,
        split_lists=split_lists,
    ), runner, options)


def pipeline_args_of(args, flag_values):
    """Split a command line (args, without the program) into (ours, Beam's).

    Ours are the flags defined in flag_values (absl's FlagValues), with the value that
    follows a non-boolean one written without '='; everything else is Beam's (its
    options and their values), for beam_fill.runner_and_options to parse and refuse
    what Beam does not know. Only used with --runner: without it absl parses
    everything, as before. Arguments after '--' stay ours.
    """
    ours, beams, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            ours += args[i:]
            break
        name, has_value, _ = arg.lstrip("-").partition("=")
        known = arg.startswith("-") and (
            name in flag_values or (name.startswith("no") and name[2:] in flag_values
                                    and flag_values[name[2:]].boolean))
        if not known:
            beams.append(arg)
        else:
            ours.append(arg)
            if (not has_value and name in flag_values and not flag_values[name].boolean
                    and i + 1 < len(args)):
                i += 1
                ours.append(args[i])
        i += 1
    return ours, beams


def runner_asked(args):
    """True when the command line (args, without the program) gives --runner."""
    for arg in args:
        if arg == "--":
            return False
        if arg.startswith("-") and arg.lstrip("-").partition("=")[0] == "runner":
            return True
    return False


def check_cache_location(bottleneck_dir, image_dir, handle):
    """Raise output_paths.PathError for an empty --bottleneck_dir, or one that is the
    image folder, around it, or the same as, inside or around a local module folder.
    A subfolder of the image folder is fine: it is not scanned as a class."""
    output_paths.check_not_empty([("bottleneck_dir", bottleneck_dir)])
    where = output_paths.relation(bottleneck_dir, image_dir) if image_dir else None
    if where in ("the same as", "around"):
        raise output_paths.PathError(
            f"--bottleneck_dir={bottleneck_dir} is {where} --image_dir={image_dir}: the "
            "cache needs a folder of its own (a subfolder of --image_dir is fine)."
        )
    module = output_paths.local_module_folder(handle)
    if module:
        output_paths.check_apart([("bottleneck_dir", bottleneck_dir)], [("tfhub_module", module)])
    output_paths.check_folder_output("bottleneck_dir", bottleneck_dir)


def check_batch_memory(batch_size, image_count, handle, image_size):
    """Raise memory_budget.TooBig when the batches of decoded images cannot fit in memory
    (memory_budget.estimate of a run that holds no vectors and trains nothing)."""
    module = module_lib.load_shared(handle, image_size)  # kept for the computation
    needed = memory_budget.estimate(memory_budget.Sizes(
        image_count=image_count, input_size=(module.height, module.width),
        bottleneck_batch_size=batch_size,
    )).needed
    batch_size = batch_size or max(batch_size_lib.CANDIDATES)  # unset: measured among these
    missing = memory_budget.shortfall(needed)
    if missing:
        raise memory_budget.TooBig(
            f"--batch_size={batch_size} needs {missing} for batches of "
            f"{module.height}x{module.width} images. Lower it."
        )


def run():
    shared_flags.define_command_flags(define_flags)
    argv, pipeline_args = sys.argv, []
    if runner_asked(argv[1:]):
        ours, pipeline_args = pipeline_args_of(argv[1:], FLAGS)
        argv = [argv[0], *ours]
    # Entries are written whole under temporary names: each is complete or absent.
    startup.run(lambda args: main(args, pipeline_args), lambda: (
        f"interrupted: the bottlenecks cached so far in {FLAGS['bottleneck_dir'].value} "
        "are kept; run the same command again to compute only the rest."
    ), argv=argv)


def define_flags():
    """The command line's flags (defined on demand, not on import)."""
    shared_flags.define_image_dir(required=True)  # or --compact alone
    shared_flags.define_module_flags()
    flags.DEFINE_integer(
        "batch_size", command_config.default(command_config.BottleneckConfig, "batch_size"),
        "Images per forward pass. Default: " + batch_size_lib.default_description() + "; "
        f"with --runner, {batch_size_lib.DEFAULT_BATCH_SIZE}.",
    )
    shared_flags.define_max_image_pixels()
    flags.DEFINE_bool(
        "compact", command_config.default(command_config.BottleneckConfig, "compact"),
        "Compact the module's packed store (see --bottleneck_store=packed): rewrite its small "
        "shards into few full ones, each vector once, and delete killed writers' left-overs "
        "older than an hour. Needs only --tfhub_module (with --image_size, "
        "--mixed_precision as for the fill) and --bottleneck_dir; with --image_dir, the "
        "cache is filled first. Safe while other runs read or write the store.",
    )
    flags.DEFINE_string(
        "runner", None,
        "Run the fill as an Apache Beam pipeline on this runner (needs pip install -e "
        "'.[beam]'): FnApiRunner or DirectRunner (in this process; "
        "--direct_running_mode=multi_processing --direct_num_workers=N for N processes), "
        "DataflowRunner, FlinkRunner, SparkRunner, PortableRunner, ... Beam's own options "
        "(--project, --region, --temp_location, --num_workers, --setup_file, ...) follow "
        "on the command line. Writes the packed store (<bottleneck_dir>/<module key>/packed).",
    )
    flags.DEFINE_integer(
        "shard_entries", None,
        "With --runner: the most vectors per packed shard (a shard is also written at "
        "the end of each of Beam's bundles). Default: about 64 MB of entries.",
    )
    flags.DEFINE_string(
        "split_lists_dir", None,
        "With --runner: also write the split lists there as sharded text "
        "(split-SSSSS-of-NNNNN.tsv, one '<set>\\t<class>\\t<path>' line per image) and "
        "the copies report (copies.txt), computed in the pipeline. A new or empty folder.",
    )
    flags.DEFINE_float("validation_percentage", None, "With --split_lists_dir: percentage "
                       "of images in the validation set. Default: 10.")
    flags.DEFINE_float("testing_percentage", None, "With --split_lists_dir: percentage of "
                       "images in the testing set. Default: 10.")
    flags.DEFINE_enum("split_by", None, ["path", "content"], "With --split_lists_dir: what "
                      "picks an image's set (see retrain.py --split_by). Default: path.")
