"""The cache-fill command line (python -m bottleneck): flags -> compute.compute_bottlenecks."""

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


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    tf.get_logger().setLevel("ERROR")
    config = shared_flags.config_from_flags(command_config.BottleneckConfig)
    try:
        config.validate()
        check_cache_location(config.bottleneck_dir, config.image_dir, config.tfhub_module)
        precision = module_lib.mixed_precision_type() if config.mixed_precision else "float32"
        if config.image_dir:
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
    # Entries are written whole under temporary names: each is complete or absent.
    startup.run(main, lambda: (
        f"interrupted: the bottlenecks cached so far in {FLAGS['bottleneck_dir'].value} "
        "are kept; run the same command again to compute only the rest."
    ))


def define_flags():
    """The command line's flags (defined on demand, not on import)."""
    shared_flags.define_image_dir(required=True)  # or --compact alone
    shared_flags.define_module_flags()
    flags.DEFINE_integer(
        "batch_size", command_config.default(command_config.BottleneckConfig, "batch_size"),
        "Images per forward pass. Default: " + batch_size_lib.default_description() + ".",
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
