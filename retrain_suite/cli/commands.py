"""The entry points of the commands, installed and in the checkout alike.

Each quiets TensorFlow's C++ start-up lines (see startup) and only then imports
its command line, which imports TensorFlow: the order is the point, so the
imports are inside the functions.
"""

import atexit
import contextlib
import gc
import os
import sys

from retrain_suite.cli import startup


@contextlib.contextmanager
def imports_uncollected():
    """A command's imports with Python's cyclic garbage collector off, and what they made
    frozen out of its reach afterwards (gc.freeze).

    The collector's full passes over what importing TensorFlow makes ran six times
    during a retrain.py start-up, 0.35 s in all on 2 cores (timed with gc.callbacks),
    and each later full pass walked all of it again (0.12 s each). Those objects are the
    modules' own and live as long as the process; objects made afterwards are collected
    as before.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def exit_without_teardown(run):
    """Run a command (it ends in SystemExit, as absl's app.run does), then end the
    process at once with its exit status.

    Once a command has returned, every output is written and closed (whole-file
    writes, closed summary writers), and what is left is Python's teardown of
    TensorFlow: freeing graphs, sessions and thread pools, 1 to 2.6 s after a
    retrain.py run on 2 cores, which the user waits for and which does nothing
    for them. The atexit handlers still run first (logging's flush among them, and
    whatever else was registered: a child process to stop, a file to close), then
    the standard streams are flushed. An exception other than SystemExit is left
    to Python, traceback and all.
    """
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)  # what Python prints for sys.exit("message")
        code = 1
    # CPython's own exit runs these the same way; only the teardown after them is skipped.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def retrain():
    with imports_uncollected():
        startup.quiet_tensorflow()
        from retrain_suite.cli import retrain as command

    exit_without_teardown(command.run)


def label_image():
    with imports_uncollected():
        startup.quiet_tensorflow()
        from retrain_suite.cli import label_image as command

    exit_without_teardown(command.run)


def pre_input():
    with imports_uncollected():
        startup.quiet_tensorflow()
        from retrain_suite.cli import pre_input as command

    command.run()


def bottleneck():
    with imports_uncollected():
        startup.quiet_tensorflow()
        from retrain_suite.cli import bottleneck as command

    command.run()


def make_module():
    with imports_uncollected():
        startup.quiet_tensorflow()
        from retrain_suite.cli import make_module as command

    command.run()
