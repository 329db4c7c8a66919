"""The test-module command line (python -m bottleneck.make_module): write a random-weight module."""

import sys

import tensorflow as tf
from absl import flags

from retrain_suite import errors
from retrain_suite.bottleneck import make_module
from retrain_suite.cli import flags as shared_flags
from retrain_suite.cli import startup

FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.output_dir:
        sys.exit("error: --output_dir is required.")
    try:
        make_module.write_module(FLAGS.kind, FLAGS.output_dir, FLAGS.seed)
    except errors.SuiteError as e:
        sys.exit(f"error: {e}")
    except FileExistsError as e:  # A folder of the user's, a file or a symlink: left as it is.
        sys.exit(f"error: --output_dir={FLAGS.output_dir} {e.strerror}; it is replaced as a "
                 "whole, so give a new folder, an empty one or a module this command wrote.")
    except (OSError, tf.errors.OpError) as e:
        sys.exit(f"error: cannot write --output_dir={FLAGS.output_dir}: "
                 f"{getattr(e, 'strerror', None) or errors.one_line(e)}.")
    print(f"Wrote a random-weight {FLAGS.kind} feature-vector module to {FLAGS.output_dir}")


def define_flags():
    """The command line's flags (defined on demand, not on import)."""
    flags.DEFINE_enum("kind", "tiny", make_module.KINDS, "Which module to write.")
    flags.DEFINE_string("output_dir", None, "Folder to write the SavedModel into (replaced if present).")
    flags.DEFINE_integer("seed", 0, "Seed of the random weights.")


def run():
    shared_flags.define_command_flags(define_flags)
    startup.run(main)
