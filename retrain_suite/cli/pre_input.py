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

from retrain_suite import dataset as dataset_lib
from retrain_suite import output_paths, preparation, tfrecords
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS


def define_flags():
    shared_flags.define_image_dir(required=True)
    flags.DEFINE_string("output_dir", None, "Where labels.txt and the split lists are written.")
    shared_flags.define_split_flags()
    shared_flags.define_split_by()
    shared_flags.define_max_image_pixels()
    flags.DEFINE_bool(
        "tfrecords", False,
        "Also write training/validation/testing .tfrecord files holding the encoded images.",
    )
    flags.DEFINE_integer(
        "images_per_shard", 1000, "With --tfrecords: images per TFRecord file before sharding."
    )


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    for name in ("image_dir", "output_dir"):
        if not FLAGS[name].value:
            sys.exit(f"error: --{name} is required (see --help).")
    for name in ("images_per_shard", "max_image_pixels"):
        if FLAGS[name].value <= 0:
            sys.exit(f"error: --{name}={FLAGS[name].value} must be positive.")
    try:
        preparation.check_output_dir(FLAGS.output_dir, FLAGS.image_dir)
    except output_paths.PathError as e:
        sys.exit(f"error: {e}")
    try:
        dataset = dataset_lib.build_dataset(
            FLAGS.image_dir, FLAGS.validation_percentage, FLAGS.testing_percentage,
            split_by=FLAGS.split_by,
        )
        logging.info("Checking %d images...", len(dataset.images))
        bad = preparation.find_bad_images(dataset, FLAGS.max_image_pixels)
        for path, reason in bad:
            logging.warning("Skipping %s: %s", path, reason)
        dataset = dataset.without(path for path, _ in bad)
        copies = dataset_lib.find_copies(dataset.images, preparation.content_hashes(dataset))
        preparation.write_lists(dataset, FLAGS.output_dir)
        if FLAGS.tfrecords:
            logging.info("Writing TFRecords...")
            written = tfrecords.write_tfrecords(dataset, FLAGS.output_dir, FLAGS.images_per_shard)
    except dataset_lib.DatasetError as e:
        sys.exit(f"error: {e}")
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or getattr(e, "message", None) or str(e)
        sys.exit(f"error: cannot write into --output_dir={FLAGS.output_dir}: "
                 f"{reason.strip().splitlines()[0]}; free some space or choose another folder.")
    # Past dataset_lib.MAX_CLASSES_LISTED classes the table shows the smallest.
    full_counts = "the lists in --output_dir give every image's class and set"
    dataset_lib.warn_about_small_classes(dataset, full_counts)
    print(dataset_lib.format_count_table(dataset, bad, full_counts))
    print(dataset_lib.format_copies(copies))
    print(f"Wrote labels.txt and {', '.join(s + '.txt' for s in dataset_lib.SPLITS)} to {FLAGS.output_dir}")
    if FLAGS.tfrecords:
        files = [name for split in dataset_lib.SPLITS for name in written[split]]
        print(f"Wrote {', '.join(files)} to {FLAGS.output_dir}")


def run():
    shared_flags.define_command_flags(define_flags)
    # Each list and record file is written whole under a temporary name: an
    # interrupt leaves the previous version of each, or none.
    startup.run(main, lambda: (
        "interrupted: nothing in --output_dir was left half-written; run the same command "
        "again to check and write it all."
    ))
