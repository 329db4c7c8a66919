"""The entry points of the commands, installed and in the checkout alike.

Each quiets TensorFlow's C++ start-up lines (see startup) and only then imports
its command line, which imports TensorFlow: the order is the point, so the
imports are inside the functions.
"""

from retrain_suite.cli import startup


def retrain():
    startup.quiet_tensorflow()
    from retrain_suite.cli import retrain as command

    command.run()


def label_image():
    startup.quiet_tensorflow()
    from retrain_suite.cli import label_image as command

    command.run()


def pre_input():
    startup.quiet_tensorflow()
    from retrain_suite.cli import pre_input as command

    command.run()


def bottleneck():
    startup.quiet_tensorflow()
    from retrain_suite.cli import bottleneck as command

    command.run()


def make_module():
    startup.quiet_tensorflow()
    from retrain_suite.cli import make_module as command

    command.run()
