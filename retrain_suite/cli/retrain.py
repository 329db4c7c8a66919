"""The retrain command line: flags -> config.RetrainConfig -> job.run_retraining."""

import sys

import tensorflow as tf
from absl import flags, logging

from retrain_suite import config as config_lib
from retrain_suite import console, errors, job
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS


def config_from_flags():
    """The parsed flags as a RetrainConfig."""
    return config_lib.from_flat({name: FLAGS[name].value for name in config_lib.field_names()})


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    logging.set_verbosity(FLAGS.logging_verbosity.lower().replace("warn", "warning"))
    tf.get_logger().setLevel("ERROR")  # TensorFlow's own deprecation chatter.
    if not logging.level_debug():
        console.quiet_third_parties()
    try:
        job.run_retraining(config_from_flags())
    except errors.SuiteError as e:
        sys.exit(f"error: {e}")


def run():
    shared_flags.define_command_flags(shared_flags.define_retrain_flags)
    # Cache entries and outputs are written whole under temporary names, so
    # whatever was finished before the interrupt is complete and is reused.
    startup.run(main, lambda: (
        f"interrupted: the bottlenecks cached so far in {FLAGS['bottleneck_dir'].value} "
        "are kept and outputs not yet written are unchanged; run the same command again "
        "to continue."
    ))
