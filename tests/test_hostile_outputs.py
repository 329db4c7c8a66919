"""Hostile output flags, numbers, late write failures, shared checkpoints and Ctrl-C.

Every refusal here happens before any work: no bottleneck is computed, nothing
is written, and the photos are byte-for-byte and time-for-time as they were.
"""

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    ROOT,
    final_layer_constants,
    make_dataset,
    retrain_settings,
    run_command,
    run_script,
)

from retrain_suite import (
    atomic_files,
    errors,
    export,
    job,
    memory_budget,
    output_paths,
    preparation,
    reporting,
)
from retrain_suite import config as config_lib
from retrain_suite.cli import bottleneck as bottleneck_cli


def snapshot(folder):
    """{relative path: (sha1, mtime_ns)} of every file under folder, and every folder."""
    found = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).hexdigest()
            found[os.path.relpath(path, folder)] = (digest, info.st_mtime_ns)
    return found


def a_photo(image_dir):
    return os.path.join(image_dir, "red", "img0.jpg")


def refused_before_any_work(settings, match):
    with pytest.raises(errors.SuiteError, match=match):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["bottleneck_dir"])
    assert not os.path.exists(settings["output_graph"]) or os.path.isdir(settings["output_graph"])


def hostile_overrides(image_dir, module, tmp_path):
    """(flag overrides, error text) that put an output on, in or around an input or another output."""
    photo = a_photo(image_dir)
    red = os.path.join(image_dir, "red")
    out = str(tmp_path / "out")
    return [
        ({"saved_model_dir": image_dir}, "saved_model_dir=.* is the same as --image_dir"),
        ({"saved_model_dir": red}, "saved_model_dir=.* is inside --image_dir"),
        ({"saved_model_dir": os.path.dirname(image_dir)}, "is around --image_dir"),
        ({"output_graph": photo}, "output_graph=.* is inside --image_dir"),
        ({"output_labels": photo}, "output_labels=.* is inside --image_dir"),
        ({"eval_report": photo}, "eval_report=.* is inside --image_dir"),
        ({"checkpoint_path": os.path.join(red, "ckpt")}, "checkpoint_path=.* is inside"),
        ({"summaries_dir": image_dir}, "summaries_dir=.* is the same as --image_dir"),
        ({"intermediate_output_graphs_dir": red, "intermediate_store_frequency": 5},
         "intermediate_output_graphs_dir=.* is inside --image_dir"),
        # Spelled another way: through '..' and a relative path.
        ({"output_graph": os.path.relpath(os.path.join(red, "..", "red", "img0.jpg"))},
         "is inside --image_dir"),
        ({"output_graph": os.path.join(out, "same.txt"),
          "output_labels": os.path.join(out, "same.txt")}, "is the same as --output_labels"),
        ({"saved_model_dir": out}, "output_graph=.* is inside --saved_model_dir"),
        ({"output_graph": os.path.join(module, "graph.pb")}, "is inside --tfhub_module"),
        ({"output_graph": str(tmp_path / "bottlenecks" / "g.pb")}, "inside --bottleneck_dir"),
        ({"bottleneck_dir": image_dir}, "bottleneck_dir=.* is the same as --image_dir"),
        ({"bottleneck_dir": os.path.dirname(image_dir)}, "bottleneck_dir=.* is around"),
        ({"bottleneck_dir": module}, "bottleneck_dir=.* is the same as --tfhub_module"),
    ]


def test_outputs_on_or_around_inputs_or_each_other_are_refused_and_photos_stay_identical(
    tmp_path, tiny_module
):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    before = snapshot(image_dir)
    module_before = snapshot(tiny_module)
    for override, match in hostile_overrides(image_dir, tiny_module, tmp_path):
        settings = retrain_settings(tmp_path, image_dir, tiny_module, **override)
        with pytest.raises(output_paths.PathError, match=match) as raised:
            job.run_retraining(config_lib.from_flat(settings))
        # retrain.py prints a SuiteError as its one `error:` line (below).
        assert "\n" not in str(raised.value) and str(raised.value).startswith("--"), override
        assert not os.path.exists(tmp_path / "bottlenecks"), override
        assert not os.path.exists(tmp_path / "out"), override
        assert snapshot(image_dir) == before, override
    # And as a user would type one, one line, photos untouched (one fresh Python: the
    # refusals above all take the same way out).
    args = [f"--{k}={v}" for k, v in
            retrain_settings(tmp_path, image_dir, tiny_module).items() if v is not None]
    process = run_command("retrain.py", *args, f"--saved_model_dir={os.path.join(image_dir, 'red')}")
    assert process.returncode == 1, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith(
        f"error: --saved_model_dir={os.path.join(image_dir, 'red')} is inside --image_dir")
    assert snapshot(image_dir) == before
    assert snapshot(tiny_module) == module_before


def test_symlink_to_the_image_folder_is_seen_through(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    os.symlink(image_dir, tmp_path / "link")
    settings = retrain_settings(tmp_path, image_dir, tiny_module,
                                saved_model_dir=str(tmp_path / "link"))
    refused_before_any_work(settings, "saved_model_dir=.* is the same as --image_dir")
    assert os.listdir(os.path.join(image_dir, "red"))


def test_saved_model_dir_holding_foreign_files_is_refused_and_kept(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    settings = retrain_settings(tmp_path, image_dir, tiny_module, saved_model_dir=str(folder))
    refused_before_any_work(settings, r"holds files this suite did not write \(notes.txt\)")
    assert (folder / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("link", [False, True], ids=["folder", "link"])
def test_saved_model_dir_holding_a_foreign_subfolder_is_refused_in_one_line_and_kept(
    tmp_path, tiny_module, link
):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    folder = tmp_path / "model"
    (folder / "variables").mkdir(parents=True)  # what an earlier export left ...
    (folder / "saved_model.pb").write_bytes(b"earlier")
    if link:  # ... and, under a name a SavedModel has, a link to the user's folder
        os.symlink(os.path.join(image_dir, "red"), folder / "assets")
        named = "(the link assets)"
    else:  # ... and the user's own folder beside it
        (folder / "notes").mkdir()
        (folder / "notes" / "todo.txt").write_text("precious")
        named = "(notes)"
    before, photos = snapshot(folder), snapshot(image_dir)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, saved_model_dir=str(folder))
    config = config_lib.from_flat(settings)
    with pytest.raises(output_paths.PathError) as raised:
        output_paths.check_output_paths(config.data, config.module, config.outputs,
                                        config.evaluation.eval_report)
    message = str(raised.value)
    assert "\n" not in message  # the command prints it as one `error:` line
    assert message.startswith(f"--saved_model_dir={folder} holds files this suite did not "
                              f"write {named}")
    refused_before_any_work(settings, "did not write " + re.escape(named))
    assert snapshot(folder) == before
    assert snapshot(image_dir) == photos


def test_replace_dir_never_removes_what_it_did_not_write(tmp_path):
    def write(folder):
        os.makedirs(os.path.join(folder, "variables"))
        with open(os.path.join(folder, "saved_model.pb"), "w") as f:
            f.write("new")

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"photo")
    with pytest.raises(FileExistsError, match="did not write"):
        atomic_files.replace_dir(str(foreign), write, atomic_files.SAVED_MODEL_ENTRIES)
    assert (foreign / "a.jpg").read_bytes() == b"photo"
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # No temporary left.
    os.symlink(foreign, tmp_path / "link")
    with pytest.raises(FileExistsError, match="symlink"):
        atomic_files.replace_dir(str(tmp_path / "link"), write, atomic_files.SAVED_MODEL_ENTRIES)
    assert (foreign / "a.jpg").read_bytes() == b"photo"
    ours = tmp_path / "model"
    atomic_files.replace_dir(str(ours), write, atomic_files.SAVED_MODEL_ENTRIES)
    atomic_files.replace_dir(str(ours), write, atomic_files.SAVED_MODEL_ENTRIES)  # Replaced.
    assert sorted(os.listdir(ours)) == ["saved_model.pb", "variables"]


@pytest.mark.parametrize(
    "flag", ["bottleneck_dir", "output_graph", "output_labels", "checkpoint_path",
             "summaries_dir", "tfhub_module"],
)
def test_empty_path_flags_are_refused(tmp_path, tiny_module, flag, monkeypatch):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, **{flag: ""})
    with pytest.raises(output_paths.PathError, match=f"--{flag} is empty"):
        job.run_retraining(config_lib.from_flat(settings))
    assert os.listdir(work) == []


def test_pre_input_output_dir_on_inputs_or_a_file_is_one_error_line(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    before = snapshot(image_dir)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    refusals = ((image_dir, "is the same as --image_dir"),
                (os.path.join(image_dir, "red"), "is inside --image_dir"),
                (str(tmp_path), "is around --image_dir"),
                (str(a_file), "is a file, not a folder"))
    # pre_input.py's check of --output_dir, before any work; its PathError is the
    # command's one `error:` line (one fresh Python below runs the command itself).
    for output_dir, message in refusals:
        with pytest.raises(output_paths.PathError) as raised:
            preparation.check_output_dir(output_dir, image_dir)
        last = f"error: {raised.value}"
        assert "\n" not in last
        assert last.startswith(f"error: --output_dir={output_dir} ") and message in last, last
    for output_dir, message in refusals[3:]:
        process = run_command("pre_input.py", f"--image_dir={image_dir}",
                              f"--output_dir={output_dir}", "--tfrecords")
        assert process.returncode == 1
        assert "Traceback" not in process.stderr
        last = process.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --output_dir={output_dir} ") and message in last, last
    assert snapshot(image_dir) == before
    assert a_file.read_text() == "not a folder"


def test_bottleneck_command_refuses_a_cache_on_the_image_folder(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    before = snapshot(image_dir)
    refusals = ((image_dir, "is the same as --image_dir"), ("", "is empty"))
    # The command's check of the cache's place, before any work; its PathError is the
    # command's one `error:` line (one fresh Python below runs the command itself).
    for cache, message in refusals:
        with pytest.raises(output_paths.PathError) as raised:
            bottleneck_cli.check_cache_location(cache, image_dir, tiny_module)
        last = f"error: {raised.value}"
        assert "\n" not in last
        assert last.startswith("error: --bottleneck_dir") and message in last, last
    for cache, message in refusals[:1]:
        process = run_command("-m", "bottleneck", f"--image_dir={image_dir}",
                              f"--bottleneck_dir={cache}", f"--tfhub_module={tiny_module}")
        assert process.returncode == 1
        assert "Traceback" not in process.stderr
        last = process.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --bottleneck_dir") and message in last, last
    assert snapshot(image_dir) == before


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ({"learning_rate": float("nan")}, "--learning_rate=nan must be a finite number"),
        ({"learning_rate": float("inf")}, "--learning_rate=inf must be a finite number"),
        ({"l2_regularization": float("nan")}, "--l2_regularization=nan must be a finite"),
        ({"dropout": float("nan")}, "--dropout=nan must be a finite"),
        ({"random_seed": -5}, "--random_seed=-5 must be between 0 and 2147483647"),
        ({"random_seed": 2**33}, "--random_seed=8589934592 must be between 0"),
        ({"how_many_training_steps": 2**70}, "too large"),
    ],
)
def test_numbers_that_cannot_work_are_refused(tmp_path, tiny_module, override, message):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, **override)
    refused_before_any_work(settings, message)


@pytest.mark.parametrize("flag", ["train_batch_size", "hidden_units"])
def test_sizes_that_cannot_fit_in_memory_are_refused_with_the_memory_needed(
    tmp_path, tiny_module, flag
):
    # The tiny module gives 64 float32 values per image: a batch (or a hidden
    # layer) this wide needs more than all of this machine's memory.
    size = memory_budget.physical_memory() // (64 * 4) + 1
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, **{flag: size})
    refused_before_any_work(
        settings, rf"--{flag}={size} needs about .* of memory; this machine has .*B"
    )


def test_numbers_on_the_command_line_are_one_error_line(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    process = run_command("retrain.py", f"--image_dir={image_dir}", "--learning_rate=nan",
                          f"--bottleneck_dir={tmp_path}/b")
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == (
        "error: --learning_rate=nan must be a finite number."
    )
    process = run_command("pre_input.py", f"--image_dir={image_dir}",
                          f"--output_dir={tmp_path}/p", "--validation_percentage=nan")
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "--validation_percentage=nan" in process.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "p")


# --- output failures that used to come after all the training ----------------------------


def test_output_graph_that_is_a_folder_or_too_long_is_refused_before_any_work(
    tmp_path, tiny_module
):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    settings = retrain_settings(tmp_path, image_dir, tiny_module, output_graph=str(folder))
    refused_before_any_work(settings, "output_graph=.* is a folder")
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long_name = "g" * (limit - 5) + ".pb"  # Legal, but not with the temporary suffix.
    settings = retrain_settings(tmp_path, image_dir, tiny_module,
                                output_graph=str(tmp_path / long_name))
    refused_before_any_work(settings, "output_graph=.* temporary name")


@pytest.mark.parametrize(
    "name, message",
    [("", "not a TensorFlow op name"), ("bad name!", "not a TensorFlow op name"),
     ("Placeholder", "already"), ("conv1", "already"), ("GroundTruthInput", "already")],
)
def test_unusable_final_tensor_name_is_refused_before_any_work(
    tmp_path, tiny_module, name, message
):
    # conv1 is a name inside the tiny module's graph; GroundTruthInput is an
    # input of the training graph; Placeholder is the export's input.
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, final_tensor_name=name)
    refused_before_any_work(settings, f"--final_tensor_name=.*{message}")


@pytest.mark.parametrize("flag", ["output_graph", "saved_model_dir"])
def test_full_disk_at_export_is_one_error_naming_the_path_and_leaves_nothing(
    tmp_path, tiny_module, monkeypatch, flag
):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    settings = retrain_settings(tmp_path, image_dir, tiny_module, how_many_training_steps=10,
                                eval_step_interval=5, saved_model_dir=str(out / "model"))
    target = settings[flag]
    if flag == "output_graph":
        real_gfile = tf.io.gfile.GFile

        def full_disk(path, mode="r"):
            if "w" in mode and f"{os.path.basename(target)}.tmp-" in str(path):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_gfile(path, mode)

        monkeypatch.setattr(tf.io.gfile, "GFile", full_disk)
    else:
        save = tf.compat.v1.saved_model.Builder.save

        def full_disk(self, *args, **kwargs):
            save(self, *args, **kwargs)  # A folder of files, then the disk is full.
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tf.compat.v1.saved_model.Builder, "save", full_disk)
    with pytest.raises(export.OutputError) as raised:
        job.run_retraining(config_lib.from_flat(settings))
    message = str(raised.value)
    assert f"--{flag}={target}" in message and "No space left on device" in message
    assert "\n" not in message
    leftovers = [name for name in os.listdir(out) if ".tmp-" in name]
    assert leftovers == []
    assert not os.path.exists(target)


# --- shared checkpoint -------------------------------------------------------------------


def test_export_holds_the_layer_this_run_trained_even_if_the_checkpoint_is_overwritten(
    tmp_path, tiny_module, monkeypatch
):
    image_dir = make_dataset(tmp_path / "data", per_class=6)
    clean = retrain_settings(tmp_path / "clean", image_dir, tiny_module,
                             how_many_training_steps=30, eval_step_interval=10, random_seed=1)
    job.run_retraining(config_lib.from_flat(clean))
    other = retrain_settings(tmp_path / "other", image_dir, tiny_module,
                             how_many_training_steps=30, eval_step_interval=10, random_seed=2)
    job.run_retraining(config_lib.from_flat(other))
    shared = retrain_settings(tmp_path / "shared", image_dir, tiny_module,
                              how_many_training_steps=30, eval_step_interval=10, random_seed=1)
    report = reporting.report_test_results

    def meanwhile_another_run_saves(*args):
        # Another run writing the same --checkpoint_path between training and export.
        for name in os.listdir(os.path.dirname(other["checkpoint_path"])):
            if name.startswith("checkpoint.") and not name.endswith(".lock"):
                with open(os.path.join(os.path.dirname(other["checkpoint_path"]), name), "rb") as f:
                    data = f.read()
                with open(os.path.join(os.path.dirname(shared["checkpoint_path"]), name), "wb") as f:
                    f.write(data)
        return report(*args)

    monkeypatch.setattr(reporting, "report_test_results", meanwhile_another_run_saves)
    job.run_retraining(config_lib.from_flat(shared))
    expected = final_layer_constants(clean["output_graph"])
    got = final_layer_constants(shared["output_graph"])
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert any(not np.array_equal(final_layer_constants(other["output_graph"])[n], expected[n])
               for n in expected)


def start(args, log):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


def wait_for(log, text, process, seconds=300):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(log) as f:
            if text in f.read():
                return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    with open(log) as f:
        raise AssertionError(f"{text!r} never appeared:\n{f.read()[-3000:]}")


def interrupt(process, log):
    """SIGINT, as Ctrl-C sends it. -> (exit status, stderr lines)."""
    process.send_signal(signal.SIGINT)
    try:
        status = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()  # Not left running (some of them train for ever).
        process.wait()
        raise
    with open(log) as f:
        return status, f.read().strip().splitlines()


@pytest.mark.slow
def test_two_runs_at_once_on_one_checkpoint_path_the_second_is_refused(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module,
                                how_many_training_steps=10**7, eval_step_interval=1000)
    args = ["retrain.py"] + [f"--{k}={v}" for k, v in settings.items() if v is not None]
    first = start(args, tmp_path / "first.log")
    try:
        wait_for(tmp_path / "first.log", "Step 1000/", first)
        # The second run is retrain.py's in this process: its SuiteError is the
        # command's one `error:` line (a fresh Python would add a TensorFlow import
        # while the first trains on).
        second = dict(settings, output_graph=f"{tmp_path}/second.pb",
                      output_labels=f"{tmp_path}/second.txt",
                      summaries_dir=f"{tmp_path}/second_logs", how_many_training_steps=20)
        with pytest.raises(errors.SuiteError) as raised:
            job.run_retraining(config_lib.from_flat(second))
        last = f"error: {raised.value}"
        assert "\n" not in last
        assert last.startswith(f"error: --checkpoint_path={settings['checkpoint_path']} is in "
                               f"use by another retrain.py run (pid {first.pid})"), last
        assert not os.path.exists(tmp_path / "second.pb")
    finally:
        status, lines = interrupt(first, tmp_path / "first.log")
    assert status == 130


def module_command(name, hook):
    """argv running script `name` in a fresh Python whose `hook` (code) runs first."""
    return ["-c", f"import sys; sys.argv = [{name!r}] + sys.argv[1:]\n{hook}"]


@pytest.mark.slow
def test_ctrl_c_during_training_prints_one_line_and_exits_130(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    settings = retrain_settings(tmp_path, image_dir, tiny_module,
                                how_many_training_steps=10**7, eval_step_interval=1000)
    log = tmp_path / "log"
    process = start(["retrain.py"] + [f"--{k}={v}" for k, v in settings.items()
                                      if v is not None], log)
    wait_for(log, "Step 1000/", process)
    status, lines = interrupt(process, log)
    assert status == 130
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines)
    assert lines[-1] == (
        f"interrupted: the bottlenecks cached so far in {settings['bottleneck_dir']} are kept "
        "and outputs not yet written are unchanged; run the same command again to continue."
    )
    assert not os.path.exists(settings["output_graph"])
    entries = [f for _, _, files in os.walk(settings["bottleneck_dir"]) for f in files]
    assert not [f for f in entries if ".tmp-" in f]
    assert len([f for f in entries if f.endswith(".f32")]) == 12  # and the module memo's entry


# Each command gets a real SIGINT from inside, at a point where it is working.
SELF_INTERRUPT = "import os, signal; os.kill(os.getpid(), signal.SIGINT)"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pre_input", "bottleneck", "label_image"])
def test_ctrl_c_in_the_other_commands_prints_one_line_and_exits_130(
    tmp_path, tiny_module, trained, script
):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    if script == "pre_input":
        hook = ("from retrain_suite import preparation\nfind = preparation.find_bad_images\n"
                f"def hooked(*a, **k):\n    {SELF_INTERRUPT}\n    return find(*a, **k)\n"
                "preparation.find_bad_images = hooked\n"
                "from retrain_suite.cli import commands\ncommands.pre_input()")
        args = [f"--image_dir={image_dir}", f"--output_dir={tmp_path}/out"]
        expected = "interrupted: nothing in --output_dir was left half-written"
    elif script == "bottleneck":
        hook = ("from retrain_suite.bottleneck import cache\nstore = cache.BottleneckCache.store\n"
                f"def hooked(*a):\n    store(*a)\n    {SELF_INTERRUPT}\n"
                "cache.BottleneckCache.store = hooked\n"
                "from retrain_suite.cli import commands\ncommands.bottleneck()")
        args = [f"--image_dir={image_dir}", f"--bottleneck_dir={tmp_path}/cache",
                f"--tfhub_module={tiny_module}", "--batch_size=2"]
        expected = f"interrupted: the bottlenecks cached so far in {tmp_path}/cache are kept"
    else:
        hook = ("from retrain_suite import classifier\nclassify = classifier.classify\n"
                f"def hooked(*a, **k):\n    {SELF_INTERRUPT}\n    return classify(*a, **k)\n"
                "classifier.classify = hooked\n"
                "from retrain_suite.cli import commands\ncommands.label_image()")
        args = [a_photo(image_dir), trained["settings"]["output_graph"],
                trained["settings"]["output_labels"]]
        expected = "interrupted: nothing was written"
    process = run_script(*module_command(script, hook), *args)
    lines = process.stderr.strip().splitlines()
    assert process.returncode == 130, process.stderr[-3000:]
    assert "Traceback" not in process.stderr and "KeyboardInterrupt" not in process.stderr
    assert lines[-1].startswith(expected), lines[-1]
    if script == "bottleneck":
        entries = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
        assert entries and not [f for f in entries if ".tmp-" in f]


# --- the user's files beside the outputs -------------------------------------------------

# Files a user may keep in the folders the suite writes into, named like its outputs.
USERS_FILES = ("training_2019_backup.tfrecord", "validation.tfrecord.bak", "testing-old.tfrecord",
               "checkpoint.lock.txt", "notes.txt", "events.out.tfevents.mine")


def put_users_files(folder):
    os.makedirs(folder, exist_ok=True)
    for name in USERS_FILES:
        with open(os.path.join(folder, name), "w") as f:
            f.write(f"the user's own {name}\n")


def test_the_users_files_in_every_output_folder_survive_every_command(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=6)
    out = tmp_path / "out"
    folders = [out, tmp_path / "prepared", tmp_path / "summaries", tmp_path / "intermediate",
               tmp_path / "cache"]
    for folder in folders:
        put_users_files(folder)
    before = {str(f): snapshot(f) for f in folders}
    run_command("pre_input.py", f"--image_dir={image_dir}", f"--output_dir={tmp_path / 'prepared'}",
                "--tfrecords", "--images_per_shard=4", check=True)
    run_command("-m", "bottleneck", f"--image_dir={image_dir}", f"--tfhub_module={tiny_module}",
                f"--bottleneck_dir={tmp_path / 'cache'}", check=True)
    common = dict(bottleneck_dir=str(tmp_path / "cache"), summaries_dir=str(tmp_path / "summaries"),
                  intermediate_output_graphs_dir=str(tmp_path / "intermediate"),
                  intermediate_store_frequency=2, how_many_training_steps=4,
                  eval_step_interval=2, eval_report=str(out / "report.json"))
    from_records = retrain_settings(tmp_path, "", tiny_module, **common)
    from_records["tfrecord_dir"] = str(tmp_path / "prepared")
    job.run_retraining(config_lib.from_flat(from_records))
    fine_tuned = retrain_settings(tmp_path, image_dir, tiny_module, fine_tune_steps=2,
                                  validation_percentage=25,
                                  fine_tune_eval_interval=1, fine_tune_batch_size=4, **common)
    for _ in range(2):  # The second run resumes, replaces and removes what the first wrote.
        job.run_retraining(config_lib.from_flat(fine_tuned))
    for folder in folders:
        after = snapshot(folder)
        for name in USERS_FILES:
            assert after[name] == before[str(folder)][name], (folder, name)


def test_make_module_into_a_folder_of_the_users_is_one_error_line_and_leaves_it(tmp_path):
    folder = tmp_path / "mine"
    put_users_files(folder)
    before = snapshot(folder)
    process = run_script("-m", "bottleneck.make_module", f"--output_dir={folder}")
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr[-2000:]
    assert process.stderr.strip().splitlines()[-1].startswith(
        f"error: --output_dir={folder} holds files this suite did not write")
    assert snapshot(folder) == before


def test_a_users_file_named_checkpoint_beside_the_checkpoint_survives_a_run(tmp_path, tiny_module):
    """TensorFlow's Saver writes a state file named `checkpoint` in the checkpoint's
    folder unless told not to: /tmp/checkpoint for the default --checkpoint_path."""
    image_dir = make_dataset(str(tmp_path / "data"), per_class=3)
    (tmp_path / "out").mkdir()
    mine = tmp_path / "out" / "checkpoint"
    mine.write_bytes(b"my notes")
    settings = retrain_settings(tmp_path, image_dir, tiny_module, how_many_training_steps=2,
                                checkpoint_path=str(tmp_path / "out" / "layer"))
    job.run_retraining(config_lib.from_flat(settings))
    assert mine.read_bytes() == b"my notes"
    assert sorted(os.listdir(tmp_path / "out"))[:4] == [
        "checkpoint", "layer.data-00000-of-00001", "layer.index", "layer.lock"]
