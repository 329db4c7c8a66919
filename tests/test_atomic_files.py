"""retrain_suite.atomic_files and its callers: outputs are never written in place."""

import builtins
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, retrain_settings, run_command

from retrain_suite import atomic_files, evaluation, export


@pytest.fixture
def writes(monkeypatch):
    """Paths opened for writing, through tf.io.gfile or open()."""
    opened = []
    real_gfile, real_open = tf.io.gfile.GFile, builtins.open

    class SpyGFile(real_gfile):
        def __init__(self, name, mode="r"):
            if any(m in mode for m in "wa"):
                opened.append(str(name))
            super().__init__(name, mode)

    def spy_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes)) and any(m in mode for m in "wax+"):
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, "GFile", SpyGFile)
    monkeypatch.setattr(builtins, "open", spy_open)
    return opened


def test_every_output_is_written_under_a_temporary_name_then_renamed(tmp_path, writes):
    targets = {
        "labels": tmp_path / "out" / "labels.txt",
        "graph": tmp_path / "out" / "graph.pb",
        "report": tmp_path / "out" / "report.json",
        "bytes": tmp_path / "out" / "data.bin",
    }
    for path in targets.values():  # an earlier run's outputs, to be replaced
        path.parent.mkdir(exist_ok=True)
        path.write_text("old")
    writes.clear()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.add(name="x", op="NoOp")
    export.write_labels(["a", "b"], str(targets["labels"]))
    export.write_frozen_graph(graph_def, str(targets["graph"]))
    evaluation.write_report(str(targets["report"]), {"accuracy": 1.0})
    atomic_files.write_bytes(str(targets["bytes"]), b"new")
    assert writes, "the spy saw no writes"
    for path in writes:
        assert ".tmp-" in path, f"{path} was opened for writing in place"
    assert targets["labels"].read_text() == "a\nb\n"
    assert targets["bytes"].read_bytes() == b"new"
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "labels.txt"
    target.write_text("previous\n")

    def broken_rename(*args, **kwargs):
        raise tf.errors.UnavailableError(None, None, "disk went away")

    monkeypatch.setattr(tf.io.gfile, "rename", broken_rename)
    with pytest.raises(tf.errors.UnavailableError):
        atomic_files.write_text(str(target), "new\n")
    assert target.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]


def test_a_folder_is_built_beside_the_target_and_swapped_in_whole(tmp_path):
    target = tmp_path / "model"
    seen = []

    def build(folder):
        seen.append(folder)
        tf.io.gfile.makedirs(folder)
        with tf.io.gfile.GFile(folder + "/saved_model.pb", "wb") as f:
            f.write(b"x")

    atomic_files.replace_dir(str(target), build, atomic_files.SAVED_MODEL_ENTRIES)
    assert seen[0] != str(target) and ".tmp-" in seen[0]
    assert (target / "saved_model.pb").read_bytes() == b"x"


def classifier_graph_def(scale):
    """A frozen-graph stand-in: Placeholder [None, 2, 2, 3] -> final_result, softmax of
    scale times the mean colour."""
    with tf.Graph().as_default() as graph:
        images = tf.compat.v1.placeholder(tf.float32, [None, 2, 2, 3], export.INPUT_NAME)
        tf.nn.softmax(scale * tf.reduce_mean(images, [1, 2]), name="final_result")
    return graph.as_graph_def()


def saved_model_prediction(path, images):
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, [tf.saved_model.SERVING], path)
        signature = meta_graph.signature_def[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
        return sess.run(signature.outputs["prediction"].name,
                        {signature.inputs["image"].name: images})


IMAGES = np.linspace(0, 1, 2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)


def test_a_saved_model_written_twice_is_replaced_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "model"
    export.write_saved_model(classifier_graph_def(1.0), "final_result", str(target))
    first = saved_model_prediction(str(target), IMAGES)
    export.write_saved_model(classifier_graph_def(3.0), "final_result", str(target))
    # No temporary folder, and no retired copy of the first model.
    assert os.listdir(tmp_path) == ["model"]
    assert set(os.listdir(target)) <= atomic_files.SAVED_MODEL_ENTRIES
    second = saved_model_prediction(str(target), IMAGES)
    mean = IMAGES.mean(axis=(1, 2))
    np.testing.assert_allclose(first, tf.nn.softmax(mean).numpy(), rtol=1e-5)
    np.testing.assert_allclose(second, tf.nn.softmax(3.0 * mean).numpy(), rtol=1e-5)


# (where the user's folder is put in an earlier SavedModel, how it is, what the refusal names)
FOREIGN_FOLDERS = [
    ("notes", "folder", "(notes)"),
    ("variables/notes", "folder", "(variables/notes)"),
    # A link to a folder, under a name the suite writes or below one: removing
    # the old model would delete what the linked folder holds.
    ("assets", "link", "(the link assets)"),
    ("variables/mine", "link", "(the link variables/mine)"),
]


@pytest.mark.parametrize("where, kind, named", FOREIGN_FOLDERS)
def test_a_saved_model_dir_holding_a_foreign_subfolder_is_never_replaced(
    tmp_path, where, kind, named
):
    target = tmp_path / "model"
    export.write_saved_model(classifier_graph_def(1.0), "final_result", str(target))
    photos = tmp_path / "photos"  # the user's own folder, put in after the first export
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"precious")
    if kind == "link":
        os.symlink(photos, target / where)
    else:
        os.rename(photos, target / where)
        photos = target / where
    earlier = (target / "saved_model.pb").read_bytes()

    def write():
        export.write_saved_model(classifier_graph_def(3.0), "final_result", str(target))

    with pytest.raises(export.OutputError) as raised:
        export.write_output("saved_model_dir", str(target), write)
    message = str(raised.value)
    assert "\n" not in message  # printed as one `error:` line
    assert "--saved_model_dir=" in message and f"did not write {named}" in message
    assert (photos / "cat.jpg").read_bytes() == b"precious"
    assert (target / "saved_model.pb").read_bytes() == earlier
    beside = ["model", "photos"] if kind == "link" else ["model"]
    assert sorted(os.listdir(tmp_path)) == beside  # no temporary, no retired copy


@pytest.mark.parametrize("where", ["variables/notes.txt", "assets/readme.txt",
                                   "variables/variables.data-0-of-1"])
def test_a_users_file_inside_a_saved_models_own_folders_is_never_removed(tmp_path, where):
    target = tmp_path / "model"
    export.write_saved_model(classifier_graph_def(1.0), "final_result", str(target))
    (target / where).parent.mkdir(exist_ok=True)  # the suite's models have no assets/
    (target / where).write_bytes(b"precious")

    def write():
        export.write_saved_model(classifier_graph_def(3.0), "final_result", str(target))

    with pytest.raises(export.OutputError) as raised:
        export.write_output("saved_model_dir", str(target), write)
    assert f"did not write ({where})" in str(raised.value)
    assert (target / where).read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_saved_model_swap_that_fails_puts_the_previous_model_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    export.write_saved_model(classifier_graph_def(1.0), "final_result", str(target))
    real_rename = tf.io.gfile.rename

    def rename(source, destination, overwrite=False):
        if ".tmp-" in source and not source.endswith(".old"):  # the new model into place
            raise tf.errors.UnavailableError(None, None, "disk went away")
        real_rename(source, destination, overwrite)

    monkeypatch.setattr(tf.io.gfile, "rename", rename)
    with pytest.raises(tf.errors.UnavailableError):
        export.write_saved_model(classifier_graph_def(3.0), "final_result", str(target))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model"]
    np.testing.assert_allclose(saved_model_prediction(str(target), IMAGES),
                               tf.nn.softmax(IMAGES.mean(axis=(1, 2))).numpy(), rtol=1e-5)


def test_a_held_lock_is_refused_to_a_second_holder_naming_the_first_and_freed_on_exit(tmp_path):
    path = str(tmp_path / "checkpoint.lock")
    with atomic_files.exclusive_lock(path):
        with pytest.raises(atomic_files.Locked) as raised:
            with atomic_files.exclusive_lock(path):
                pass
        assert str(raised.value) == str(os.getpid())
    with atomic_files.exclusive_lock(path):  # the pid left behind is a lock file's own content
        pass
    assert open(path).read() == f"{os.getpid()}\n"


def test_a_fifo_at_the_lock_path_is_refused_in_one_line_without_waiting(tmp_path):
    path = str(tmp_path / "checkpoint.lock")
    os.mkfifo(path)
    assert refusal_to_lock(path) == (
        f"cannot lock {path}: it is a FIFO, not a regular file; move it away")


def test_a_folder_at_the_lock_path_is_refused_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.lock"
    path.mkdir()
    (path / "kept.txt").write_text("mine")
    assert refusal_to_lock(path) == (
        f"cannot lock {path}: it is a folder, not a regular file; move it away")
    assert (path / "kept.txt").read_text() == "mine"


def refusal_to_lock(path):
    """The LockFileError's message when exclusive_lock(path) refuses the file."""
    with pytest.raises(atomic_files.LockFileError) as raised:
        with atomic_files.exclusive_lock(str(path)):
            pass
    return str(raised.value)


@pytest.mark.parametrize("existing", [True, False])
def test_a_symlink_at_the_lock_path_is_never_written_through(tmp_path, existing):
    target = tmp_path / "users_file"
    if existing:
        target.write_text("123\n")  # even one that looks like a lock file's pid
    path = tmp_path / "checkpoint.lock"
    path.symlink_to(target)
    assert refusal_to_lock(path) == (
        f"cannot lock {path}: it is a symlink, and a lock file is never written through one; "
        "move it away")
    if existing:
        assert target.read_text() == "123\n"
    else:
        assert not os.path.lexists(target)  # not created through the link either


def test_a_users_file_at_the_lock_path_is_never_truncated(tmp_path):
    path = tmp_path / "checkpoint.lock"
    path.write_text("notes I keep here\n")
    assert refusal_to_lock(path) == (
        f"cannot lock {path}: it holds something other than a process id, so it is not a lock "
        "file; move it away")
    assert path.read_text() == "notes I keep here\n"


def test_a_lock_path_hard_linked_to_a_users_file_is_never_written(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("")
    path = tmp_path / "checkpoint.lock"
    os.link(mine, path)
    with pytest.raises(atomic_files.LockFileError, match="has other names"):
        with atomic_files.exclusive_lock(str(path)):
            pass
    assert mine.read_text() == ""


def test_retrain_with_a_fifo_at_its_checkpoint_lock_ends_in_one_error_line(tmp_path, tiny_module):
    settings = retrain_settings(tmp_path, make_dataset(tmp_path / "data", per_class=3),
                                tiny_module, how_many_training_steps=2)
    lock = settings["checkpoint_path"] + ".lock"
    os.makedirs(os.path.dirname(lock))
    os.mkfifo(lock)
    process = run_command("retrain.py", *(f"--{name}={value}" for name, value in settings.items()
                                         if value is not None))
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: --checkpoint_path={settings['checkpoint_path']}: cannot lock {lock}: it is a "
        "FIFO, not a regular file; move it away (it is left alone), or give this run another "
        "--checkpoint_path.")
    assert "Traceback" not in process.stderr
