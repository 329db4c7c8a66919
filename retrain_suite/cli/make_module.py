"""The test-module command line (python -m bottleneck.make_module): write a random-weight module."""

import sys

from absl import flags

from retrain_suite.bottleneck import make_module
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.output_dir:
        sys.exit("error: --output_dir is required.")
    make_module.write_module(FLAGS.kind, FLAGS.output_dir, FLAGS.seed)
    print(f"Wrote a random-weight {FLAGS.kind} feature-vector module to {FLAGS.output_dir}")


def define_flags():
    """The command line's flags (defined on demand, not on import)."""
    flags.DEFINE_enum("kind", "tiny", make_module.KINDS, "Which module to write.")
    flags.DEFINE_string("output_dir", None, "Folder to write the SavedModel into (replaced if present).")
    flags.DEFINE_integer("seed", 0, "Seed of the random weights.")


def run():
    shared_flags.define_command_flags(define_flags)
    startup.run(main)
