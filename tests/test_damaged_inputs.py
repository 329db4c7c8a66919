"""Damaged inputs the suite reads back, and command lines it cannot parse.

Each ends in one `error:` line (or, for a fine-tuning checkpoint, a warning and
a fresh start), never a traceback or a hang: flag errors of every command,
flag files that are FIFOs, folders, missing, not UTF-8 or huge, a deleted
working folder, and fine-tuning checkpoints that are damaged or cannot be
written. Damaged TFRecords: tests/test_tfrecords.py.
"""

import io
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, make_dataset, retrain_settings, run_command
from test_fine_tuning import release_fifo

from retrain_suite import atomic_files, export, fine_tuning_checkpoint, job, output_paths
from retrain_suite import config as config_lib
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


def command(*args):
    """The command in a process of its own (helpers.run_command), ended if it hangs."""
    return run_command(*args)


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
                "missing": "cannot be read: no such file",
                "not UTF-8": "is not UTF-8 text",
                "huge": "larger than the 1,048,576 bytes allowed for it"}[kind]
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


# --- the fine-tuning checkpoint ----------------------------------------------------------


def checkpoint_bytes(meta):
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **{"current/w": np.zeros(3, np.float32)})
    return buffer.getvalue()


GOOD_META = {"fingerprint": "f", "step": 4, "best_step": 2, "best_accuracy": 0.5,
             "best_cross_entropy": 0.7, "evaluations_without_improvement": 1,
             "start_score": [0.25, 1.5]}


@pytest.mark.parametrize("kind", ["meta a list", "meta without best_step", "step a string",
                                  "start_score of one", "a folder"])
def test_a_damaged_fine_tuning_checkpoint_is_ignored_with_a_warning(tmp_path, kind, caplog):
    path = str(tmp_path / "ckpt.fine_tuning")
    meta = dict(GOOD_META)
    if kind == "a folder":
        os.mkdir(path)
    else:
        if kind == "meta a list":
            meta = [meta]
        elif kind == "meta without best_step":
            del meta["best_step"]
        elif kind == "step a string":
            meta["step"] = "4"
        else:
            meta["start_score"] = [0.25]
        with open(path, "wb") as f:
            f.write(checkpoint_bytes(meta))
    caplog.set_level("WARNING")
    assert fine_tuning_checkpoint.read(path, "f") is None
    assert "Ignoring the fine-tuning checkpoint" in caplog.text and "cannot be read" in caplog.text
    # The one a run writes is read back: the checks refuse only damage.
    with open(tmp_path / "good", "wb") as f:
        f.write(checkpoint_bytes(GOOD_META))
    step, current, best, start = fine_tuning_checkpoint.read(str(tmp_path / "good"), "f")
    assert (step, list(current), best.step, start) == (4, ["w"], 2, (0.25, 1.5))


def test_a_fine_tuning_checkpoint_with_a_compressed_member_is_ignored_not_inflated(
        tmp_path, caplog):
    """np.savez stores members uncompressed; a deflated one (here 64 MiB of zeros in
    about 64 KB) is not the suite's, and is refused before anything is inflated."""
    path = tmp_path / "ckpt.fine_tuning"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(GOOD_META)),
                        **{"current/w": np.zeros(16 * 1024 * 1024, np.float32)})
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 1024 * 1024
    caplog.set_level("WARNING")
    assert fine_tuning_checkpoint.read(str(path), "f") is None
    assert "its member 'meta.npy' is compressed, which no run writes" in caplog.text


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("small") / "data", per_class=6)


def fine_tuning_settings(tmp_path, image_dir, module):
    return retrain_settings(tmp_path, image_dir, module, how_many_training_steps=4,
                            eval_step_interval=2, fine_tune_steps=2, fine_tune_eval_interval=1,
                            fine_tune_batch_size=4, validation_percentage=25)


@pytest.mark.parametrize("suffix", [".fine_tuning", ".lock", ".index"])
def test_a_folder_where_a_checkpoint_file_goes_is_refused_before_any_work(
        tmp_path, small_data, tiny_module, suffix):
    settings = fine_tuning_settings(tmp_path, small_data, tiny_module)
    folder = settings["checkpoint_path"] + suffix
    os.makedirs(folder)
    with pytest.raises(output_paths.PathError, match=f"writes {folder}, which is a folder"):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["bottleneck_dir"])


def test_a_full_disk_at_the_fine_tuning_checkpoint_is_one_output_error(
        tmp_path, small_data, tiny_module, monkeypatch):
    settings = fine_tuning_settings(tmp_path, small_data, tiny_module)
    target = fine_tuning_checkpoint.checkpoint_file(settings["checkpoint_path"])
    real_gfile = tf.io.gfile.GFile

    def full_disk(path, mode="r"):
        if "w" in mode and f"{os.path.basename(target)}.tmp-" in str(path):
            raise tf.errors.ResourceExhaustedError(None, None, f"{path}; No space left on device")
        return real_gfile(path, mode)

    monkeypatch.setattr(tf.io.gfile, "GFile", full_disk)
    with pytest.raises(export.OutputError) as raised:
        job.run_retraining(config_lib.from_flat(settings))
    message = str(raised.value)
    assert f"--checkpoint_path={target}" in message and "No space left on device" in message
    assert "\n" not in message
    assert [n for n in os.listdir(os.path.dirname(target)) if ".tmp-" in n] == []


# --- lock files ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["notes", "fifo"])
def test_a_users_file_at_the_lock_path_is_left_as_it_was(tmp_path, kind):
    path = str(tmp_path / "ckpt.lock")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "w") as f:
            f.write("my notes on this run\n")
    with pytest.raises(config_lib.UsageError,
                       match="--checkpoint_path=.*cannot lock .*ckpt.lock: it (holds|is a FIFO)"):
        with job.checkpoint_lock(str(tmp_path / "ckpt")):
            pass
    if kind == "fifo":
        assert os.path.exists(path) and not os.path.isfile(path)
    else:
        assert open(path).read() == "my notes on this run\n"
    # The suite's own lock file, left by an earlier run (its pid), is taken over.
    with open(tmp_path / "own.lock", "w") as f:
        f.write("12345\n")
    with atomic_files.exclusive_lock(str(tmp_path / "own.lock")):
        assert open(tmp_path / "own.lock").read() == f"{os.getpid()}\n"
