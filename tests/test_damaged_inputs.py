"""Damaged inputs the suite reads back, and command lines it cannot parse.

Each ends in one `error:` line (or, for a fine-tuning checkpoint, a warning and
a fresh start), never a traceback or a hang: flag errors of every command,
flag files that are FIFOs, folders, missing, not UTF-8 or huge, a deleted
working folder, and fine-tuning checkpoints that are damaged or cannot be
written. Damaged TFRecords: tests/test_tfrecords.py.
"""

import os
import subprocess
import sys
import threading

import pytest
from conftest import ROOT
from test_fine_tuning import release_fifo

from retrain_suite.cli import startup

TIMEOUT = 300  # A hang is the failure; each command here ends in seconds.


def one_error_line(process):
    """The process's last stderr line, after checking it failed with that line alone."""
    assert process.returncode not in (0, None), process.stderr[-2000:]
    assert "Traceback" not in process.stderr and "FATAL" not in process.stderr, process.stderr[-3000:]
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), process.stderr[-2000:]
    assert not any(line.startswith("Pass --helpshort") for line in lines)
    return lines[-1]


def command(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT)


COMMANDS = (["retrain.py"], ["label_image.py"], ["pre_input.py"], ["-m", "bottleneck"])


@pytest.mark.parametrize("args", COMMANDS, ids=lambda c: c[-1])
def test_an_unknown_flag_is_one_error_line_in_every_command(args):
    line = one_error_line(command(*args, "--no_such_flag=1"))
    assert "Unknown command line flag 'no_such_flag'" in line


def test_a_flag_value_of_the_wrong_type_is_one_error_line():
    line = one_error_line(command("retrain.py", "--how_many_training_steps=abc"))
    assert "--how_many_training_steps=abc" in line and "invalid literal" in line


def test_a_fifo_as_flagfile_is_refused_not_waited_on(tmp_path):
    fifo = str(tmp_path / "flags")
    os.mkfifo(fifo)
    # Were the FIFO opened blocking, this writer would end the wait after a while (absl
    # then reads no flags) and the test would fail on the missing error, not hang.
    release = threading.Timer(60, release_fifo, [fifo])
    release.start()
    try:
        process = command("pre_input.py", f"--flagfile={fifo}")
    finally:
        release.cancel()
    assert one_error_line(process) == (
        f"error: --flagfile={fifo} is not a regular file (a FIFO); give a text file of flags, "
        "one a line. See --help.")


@pytest.mark.parametrize("kind", ["fifo", "nested fifo", "folder", "missing", "not UTF-8", "huge"])
def test_every_flagfile_that_is_not_a_small_text_file_is_one_flag_error(tmp_path, kind):
    path = str(tmp_path / "flags")
    if kind in ("fifo", "nested fifo"):
        os.mkfifo(path)
    elif kind == "folder":
        os.mkdir(path)
    elif kind == "not UTF-8":
        with open(path, "wb") as f:
            f.write(b"--image_dir=caf\xe9\n")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.write(b"# " + b"x" * startup.MAX_FLAGFILE_BYTES + b"\n")
    given = path
    if kind == "nested fifo":
        given = str(tmp_path / "outer")
        with open(given, "w") as f:
            f.write(f"# flags\n--image_dir=data\n--flagfile={path}\n")
    release = threading.Timer(60, release_fifo, [path])
    release.start()
    try:
        with pytest.raises(SystemExit) as raised:
            startup.parse_flags(["prog", "--image_dir=x", "--flagfile", given])
    finally:
        release.cancel()
    expected = {"fifo": "is not a regular file (a FIFO)",
                "nested fifo": "is not a regular file (a FIFO)",
                "folder": "is not a regular file (a folder)",
                "missing": "cannot be read: No such file or directory",
                "not UTF-8": "is not UTF-8 text", "huge": "is over 1 MiB"}[kind]
    assert str(raised.value).startswith(f"error: --flagfile={path} {expected}")
    assert "\n" not in str(raised.value)


def test_a_deleted_working_folder_is_one_error_line(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    # The command starts in the folder, which is removed before Python starts.
    process = subprocess.run(
        ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" "$@"', sys.executable,
         os.path.join(ROOT, "retrain.py"), "--image_dir=data"],
        capture_output=True, text=True, timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert "the working folder cannot be found" in one_error_line(process)
