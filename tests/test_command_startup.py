"""Every command starts quietly (no TensorFlow C++ start-up lines) and --help succeeds."""

import gc
import importlib
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, make_dataset, run_script

from retrain_suite.cli import commands, startup

COMMANDS = (["retrain.py"], ["label_image.py"], ["pre_input.py"], ["-m", "bottleneck"], ["bench/run.py"])
# What TensorFlow 2.21 writes at start-up on a machine like this one (with or without a GPU).
NOISE = re.compile(r"absl::InitializeLog|cuInit|oneDNN custom operations|cpu_feature_guard|"
                   r"cudart_stub|^[IWE]\d{4} .*\.cc:\d+\] ", re.M)


def quiet_environment():
    """Our environment without TF_CPP_MIN_LOG_LEVEL: as a user who did not ask for the C++ log."""
    return {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_help_exits_0_without_start_up_lines(command):
    process = run_script(*command, "--help", env=quiet_environment())
    assert process.returncode == 0, process.stderr[-2000:]
    assert "--helpfull" in process.stdout and "flags:" in process.stdout
    assert not NOISE.search(process.stderr), process.stderr


def test_a_flag_error_still_exits_non_zero():
    process = run_script("pre_input.py", "--images_per_shard=many", env=quiet_environment())
    assert process.returncode != 0 and "images_per_shard" in process.stderr
    assert not NOISE.search(process.stderr), process.stderr


def test_a_run_that_uses_the_device_has_only_its_own_log(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    process = run_script(
        "-m", "bottleneck", f"--image_dir={image_dir}", f"--bottleneck_dir={tmp_path / 'cache'}",
        f"--tfhub_module={tiny_module}", env=quiet_environment(), check=True,
    )
    assert "Bottlenecks: " in process.stderr
    assert not NOISE.search(process.stderr), process.stderr


def test_retrain_run_has_no_start_up_lines(trained):
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        pytest.skip("TF_CPP_MIN_LOG_LEVEL is set here: the C++ log was asked for")
    assert "Final test accuracy" in trained["process"].stderr
    assert not NOISE.search(trained["process"].stderr), trained["process"].stderr[:3000]


@pytest.mark.parametrize("argv, environ, wanted", [
    (["retrain.py"], {}, False),
    (["retrain.py", "--logging_verbosity=DEBUG"], {}, True),
    (["retrain.py", "--logging_verbosity", "debug"], {}, True),
    (["retrain.py", "-logging_verbosity=DEBUG"], {}, True),
    (["retrain.py", "--logging_verbosity=INFO"], {}, False),
    (["retrain.py", "--", "--logging_verbosity=DEBUG"], {}, False),  # after --: not a flag
    (["retrain.py"], {"TF_CPP_MIN_LOG_LEVEL": "0"}, True),
    (["retrain.py"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, True),  # the user's own choice stands
])
def test_tensorflow_log_is_wanted_on_debug_or_a_level_set_by_the_user(argv, environ, wanted):
    assert startup.tensorflow_log_wanted(argv, environ) == wanted


def test_only_start_up_noise_is_dropped():
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795960322.246738    8430 port.cc:153] oneDNN custom operations are on.\n"
        "W0000 00:00:1795960322.249117    8430 cudart_stub.cc:31] Could not find cuda drivers.\n"
        "E0000 00:00:1795960327.809358    8430 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.\n"
        "E0000 00:00:1795960327.809358    8430 something.cc:1] a real error\n"
        "/x.py:3: DeprecationWarning: kept\n"
        "I1129 13:58:11.068155 140554558049152 retrain.py:63] Python's own log: kept\n"
    )
    assert startup.without_start_up_noise(text) == (
        "E0000 00:00:1795960327.809358    8430 something.cc:1] a real error\n"
        "/x.py:3: DeprecationWarning: kept\n"
        "I1129 13:58:11.068155 140554558049152 retrain.py:63] Python's own log: kept\n"
    )


# A fresh Python's quiet start, then what it reports: TF_CPP_MIN_LOG_LEVEL, whether
# TensorFlow and matplotlib.pyplot are imported, and pyplot's name once imported after.
QUIET_START = (
    "import os, sys\nfrom retrain_suite.cli import startup\nstartup.quiet_tensorflow()\n"
    "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
    "print('tensorflow' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
    "import matplotlib.pyplot\nprint(matplotlib.pyplot.__name__)\n"
)


@pytest.fixture(scope="module")
def quiet_starts():
    """QUIET_START's lines from three fresh Pythons (shared by the two tests below, as
    each start costs a TensorFlow import): quiet, at DEBUG, and with the user's level."""
    return {
        "quiet": run_script("-c", QUIET_START, env=quiet_environment(), check=True),
        "debug": run_script("-c", QUIET_START, "--logging_verbosity=DEBUG",
                            env=quiet_environment(), check=True),
        "mine": run_script("-c", QUIET_START,
                           env={**quiet_environment(), "TF_CPP_MIN_LOG_LEVEL": "1"}, check=True),
    }


def test_the_quiet_start_leaves_a_level_the_user_set(quiet_starts):
    assert quiet_starts["quiet"].stdout.splitlines()[0] == "2"
    assert quiet_starts["debug"].stdout.splitlines()[0] == "None"
    assert quiet_starts["mine"].stdout.splitlines()[0] == "1"


def test_tensorflow_starts_without_pyplot_which_imports_afterwards(quiet_starts):
    # Keras imports matplotlib.pyplot (0.4 s) inside `import tensorflow` when it can.
    for started in quiet_starts.values():
        assert started.stdout.split()[1:] == ["True", "False", "matplotlib.pyplot"], started.stdout


def test_the_commands_start_without_tensorflow_hub_or_matplotlib_figures():
    """Imported when a module is loaded or a picture drawn (0.37 s and 0.17 s of every
    start-up otherwise): a rerun that remembers its module and keeps its pictures needs
    neither, nor does label_image.py."""
    started = run_script(
        "-c", "import sys\nfrom retrain_suite.cli import startup\nstartup.quiet_tensorflow()\n"
        "from retrain_suite.cli import label_image, pre_input, retrain\n"
        "print(sorted({'tensorflow_hub', 'matplotlib.figure'} & set(sys.modules)))\n",
        env=quiet_environment(), check=True)
    assert started.stdout.split() == ["[]"], started.stdout


def test_the_commands_import_without_the_garbage_collector_and_freeze_what_they_made():
    """Its full passes over TensorFlow's objects cost 0.35 s of each start-up, and 0.12 s
    each time again later; the collector is on again for the command's own work."""
    started = run_script(
        "-c", "import gc\nfrom retrain_suite.cli import commands, startup\npasses = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and passes.append(1))\n"
        "with commands.imports_uncollected():\n"
        "    startup.quiet_tensorflow()\n"
        "    from retrain_suite.cli import retrain\n"
        "print(len(passes), gc.isenabled(), gc.get_freeze_count() > 100_000)\n",
        env=quiet_environment(), check=True)
    assert started.stdout.split() == ["0", "True", "True"], started.stdout


@pytest.mark.parametrize("entry", ["retrain", "label_image", "pre_input", "bottleneck",
                                   "make_module"])
def test_every_command_imports_inside_imports_uncollected(entry, monkeypatch):
    seen = []
    monkeypatch.setattr(startup, "quiet_tensorflow", lambda: seen.append(("start", gc.isenabled())))
    monkeypatch.setattr(gc, "freeze", lambda: seen.append(("freeze",)))  # not this process's
    monkeypatch.setattr(commands, "exit_without_teardown", lambda run: run())
    monkeypatch.setattr(importlib.import_module(f"retrain_suite.cli.{entry}"), "run",
                        lambda: seen.append(("run", gc.isenabled())))
    getattr(commands, entry)()
    assert seen == [("start", False), ("freeze",), ("run", True)]


def test_helpfull_lists_absl_flags_too_and_exits_0():
    process = run_script("pre_input.py", "--helpfull", env=quiet_environment())
    assert process.returncode == 0 and "--image_dir" in process.stdout and "--verbosity" in process.stdout


@pytest.mark.parametrize("argv, short", [
    (["x"], None), (["x", "--help"], True), (["x", "-?"], True), (["x", "--image_dir=d", "-help"], True),
    (["x", "--helpfull"], False), (["x", "--", "--help"], None), (["x", "--helper"], None),
])
def test_help_asked(argv, short):
    assert startup.help_asked(argv) == short


FILTERED = """
import os, sys
sys.path.insert(0, {root!r})
from retrain_suite.cli import startup
with startup._stderr_filtered():
    os.write(2, b"I0000 00:00:1795960322.246738    8430 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"E0000 00:00:1795960327.809358    8430 something.cc:1] a real error\\n")
    print("python's own stderr", file=sys.stderr, flush=True)
print("after", file=sys.stderr)
"""


def test_the_filter_passes_every_other_line_through_in_order():
    process = run_script("-c", FILTERED.format(root=ROOT), check=True)
    assert process.stderr.splitlines() == [
        "E0000 00:00:1795960327.809358    8430 something.cc:1] a real error",
        "python's own stderr",
        "after",
    ]


def test_installed_command_help_shows_the_command_docstring():
    # As pip's console-script wrapper runs it: __main__ is a module without a docstring.
    script = ("import sys; sys.argv = ['pre_input', '--help']; "
              "from retrain_suite.cli.commands import pre_input; pre_input()")
    process = run_script("-c", script, env=quiet_environment())
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.startswith("The pre_input command line: check and split a dataset")


@pytest.mark.parametrize("ending, status, stderr", [
    ("pass", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit('error: no photos')", 1, "error: no photos\n"),
])
def test_a_command_ends_at_once_with_its_status_and_everything_it_printed(ending, status, stderr):
    # Output still in Python's buffers (stdout to a pipe is block-buffered) and logging's
    # handlers must be flushed before the process ends without Python's teardown.
    code = (
        "import atexit, logging, sys\n"
        "from retrain_suite.cli import commands\n"
        "def run():\n"
        "    atexit.register(lambda: sys.stderr.write('atexit ran\\n'))\n"
        "    print('a line', end='')\n"
        "    logging.getLogger('x').warning('logged')\n"
        f"    {ending}\n"
        "commands.exit_without_teardown(run)\n"
        "print('never')\n"
    )
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, env=buffered)
    assert (process.returncode, process.stdout) == (status, "a line")
    assert process.stderr == "logged\n" + stderr + "atexit ran\n"
