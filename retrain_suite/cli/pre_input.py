"""The pre_input command line: check and split a dataset ahead of training.

    python pre_input.py --image_dir data/ --output_dir prepared/

decodes every image once, and writes `labels.txt` plus `training.txt`,
`validation.txt` and `testing.txt` (one line per image: relative path, a tab,
label), then prints a table of counts per class; --tfrecords also writes the
images as TFRecord files.
"""

import sys

import tensorflow as tf
from absl import flags, logging

from retrain_suite import command_config, errors, preparation, tfrecords
from retrain_suite import dataset as dataset_lib
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS
_CONFIG = command_config.PreInputConfig  # the flags' defaults are its fields'


def define_flags():
    shared_flags.define_image_dir(required=True)
    flags.DEFINE_string(
        "output_dir", command_config.default(_CONFIG, "output_dir"),
        "Where labels.txt and the split lists are written.",
    )
    shared_flags.define_split_flags()
    shared_flags.define_split_by()
    shared_flags.define_max_image_pixels()
    flags.DEFINE_bool(
        "tfrecords", command_config.default(_CONFIG, "tfrecords"),
        "Also write training/validation/testing .tfrecord files holding the encoded images.",
    )
    flags.DEFINE_integer(
        "images_per_shard", command_config.default(_CONFIG, "images_per_shard"),
        "With --tfrecords: images per TFRecord file before sharding.",
    )


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    config = shared_flags.config_from_flags(command_config.PreInputConfig)
    try:
        config.validate()
        preparation.check_output_dir(config.output_dir, config.image_dir)
        dataset = dataset_lib.build_dataset(
            config.image_dir, config.validation_percentage, config.testing_percentage,
            split_by=config.split_by,
        )
        logging.info("Checking %d images...", len(dataset.images))
        bad = preparation.find_bad_images(dataset, config.max_image_pixels)
        for path, reason in bad:
            logging.warning("Skipping %s: %s", path, reason)
        dataset = dataset.without(path for path, _ in bad)
        copies = dataset_lib.find_copies(dataset.images, preparation.content_hashes(dataset))
        preparation.write_lists(dataset, config.output_dir)
        if config.tfrecords:
            logging.info("Writing TFRecords...")
            written = tfrecords.write_tfrecords(dataset, config.output_dir, config.images_per_shard)
    except errors.SuiteError as e:
        sys.exit(f"error: {e}")
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        sys.exit(f"error: cannot write into --output_dir={config.output_dir}: "
                 f"{reason.strip().splitlines()[0]}; free some space or choose another folder.")
    # Past dataset_lib.MAX_CLASSES_LISTED classes the table shows the smallest.
    full_counts = "the lists in --output_dir give every image's class and set"
    dataset_lib.warn_about_small_classes(dataset, full_counts)
    print(dataset_lib.format_count_table(dataset, bad, full_counts))
    print(dataset_lib.format_copies(copies))
    print(f"Wrote labels.txt and {', '.join(s + '.txt' for s in dataset_lib.SPLITS)} to {config.output_dir}")
    if config.tfrecords:
        files = [name for split in dataset_lib.SPLITS for name in written[split]]
        print(f"Wrote {', '.join(files)} to {config.output_dir}")


def run():
    shared_flags.define_command_flags(define_flags)
    # Each list and record file is written whole under a temporary name: an
    # interrupt leaves the previous version of each, or none.
    startup.run(main, lambda: (
        "interrupted: nothing in --output_dir was left half-written; run the same command "
        "again to check and write it all."
    ))
