"""retrain_suite.bottleneck.module: loading, input size, freezing."""


import contextlib
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, run_command, write_image

from retrain_suite.bottleneck import compute, inlining, make_module
from retrain_suite.bottleneck import module as module_lib


def test_load_reads_static_input_size_from_signature(tiny_module):
    with tf.Graph().as_default():
        module = module_lib.load(tiny_module, default_image_size=99)
        assert (module.height, module.width) == (32, 32)
        features = module(tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3]))
        assert features.shape.as_list() == [None, 64]


@pytest.fixture(scope="module")
def any_size_module(tmp_path_factory):
    """A module whose signature leaves height and width open: mean colour, [N, 3]."""

    class MeanColour(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    path = str(tmp_path_factory.mktemp("modules") / "mean_colour")
    tf.saved_model.save(MeanColour(), path)
    return path


def test_load_uses_default_size_when_signature_leaves_it_open(any_size_module):
    with tf.Graph().as_default():
        module = module_lib.load(any_size_module, default_image_size=48)
        assert (module.height, module.width) == (48, 48)
        features = module(tf.fill([2, 48, 48, 3], 0.25))
        with tf.compat.v1.Session() as sess:
            values = sess.run(features)
    np.testing.assert_allclose(values, np.full((2, 3), 0.25), atol=1e-6)


def test_compute_bottlenecks_uses_default_size_for_open_signature(tmp_path, any_size_module):
    path = str(tmp_path / "img.png")
    write_image(path, np.full((20, 30, 3), (255, 0, 51), np.uint8), "PNG")
    result = compute.compute_bottlenecks(
        [path], any_size_module, str(tmp_path / "bn"), default_image_size=24
    )
    assert (result.height, result.width) == (24, 24)
    assert "_24x24_float32" in result.module_key
    np.testing.assert_allclose(result.vectors, [[1.0, 0.0, 0.2]], atol=1e-5)


def test_load_of_nonexistent_path_raises_module_error_naming_it(tmp_path):
    missing = str(tmp_path / "no_module_here")
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(missing)
    assert missing in str(raised.value)
    assert "\n" not in str(raised.value)


def test_load_of_savedmodel_that_is_not_callable_raises_module_error(tmp_path):
    class NotCallable(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable([1.0, 2.0])

    path = str(tmp_path / "not_callable")
    tf.saved_model.save(NotCallable(), path)
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(path)
    assert path in str(raised.value)
    assert "cannot be called" in str(raised.value)


def test_frozen_forward_pass_matches_the_module_as_loaded_and_reads_no_variables(tiny_module):
    images = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
    with tf.Graph().as_default() as loaded_graph:
        module = module_lib.load(tiny_module)
        features = module(tf.constant(images))
        with tf.compat.v1.Session(graph=loaded_graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            expected = sess.run(features)
    frozen = module_lib.freeze(module)
    with tf.Graph().as_default() as graph:
        features = frozen(tf.constant(images))
        with tf.compat.v1.Session(graph=graph) as sess:  # No initializers: nothing to restore.
            values = sess.run(features)
        graph_def = graph.as_graph_def()
    ops = {n.op for n in graph_def.node}
    assert not ops & {"VarHandleOp", "ReadVariableOp", "VariableV2"}, ops
    # The module's calls are inlined: the weights are constants beside the
    # convolutions they feed, and the library holds no copy of them.
    assert not ops & set(inlining.CALL_OPS) and not graph_def.library.function, ops
    assert "Conv2D" in ops
    assert (frozen.height, frozen.width, frozen.graph) == (32, 32, None)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])
    with pytest.raises(ValueError, match="frozen already"):
        module_lib.freeze(frozen)


def test_freeze_refuses_weights_too_large_for_a_graph_def(tiny_module, monkeypatch):
    monkeypatch.setattr(module_lib, "MAX_FROZEN_BYTES", 100)
    with tf.Graph().as_default():
        module = module_lib.load(tiny_module)
    with pytest.raises(module_lib.ModuleError) as raised:
        module_lib.freeze(module)
    assert tiny_module in str(raised.value) and "smaller module" in str(raised.value)


def test_made_modules_follow_the_reusable_saved_model_api(tiny_module):
    # Fine-tuning needs `training=`, variables and regularization losses from hub.load.
    with tf.Graph().as_default():
        module = module_lib.load(tiny_module)
        images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3])
        inference, training = module(images), module(images, training=True)
        trainable = module.trainable_variables
        assert len(trainable) == 4 and len(module.variables) == 4
        losses = module.regularization_losses()
        assert len(losses) == 1
        gradients = tf.gradients(tf.reduce_sum(training) + losses[0], trainable)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            batch = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
            first, second, loss, grads = sess.run(
                [inference, training, losses[0], gradients], {images: batch})
    np.testing.assert_array_equal(first, second)  # no layer of the tiny module differs in training
    assert loss > 0 and all(np.abs(g).sum() > 0 for g in grads)
    module_lib.check_fine_tunable(tiny_module)


@contextlib.contextmanager
def released_fifo(path):
    """`with released_fifo(path):` a FIFO at path whose blocking readers are let go.

    helpers.unblocking_fifo lets them go from a thread, which cannot run while
    TensorFlow's loader waits in C++ holding the GIL; a writer in another
    process can. A reader that never opens the FIFO leaves the writer waiting
    until the block ends.
    """
    os.mkfifo(path)
    writer = subprocess.Popen(["sh", "-c", 'while [ -p "$0" ]; do : > "$0"; done', path])
    try:
        yield path
    finally:
        writer.kill()
        writer.wait()


def copy_with_fifo(module, tmp_path, name):
    """A copy of module whose file `name` is gone, to be replaced by a FIFO. -> (folder, path)."""
    folder = str(tmp_path / "module")
    shutil.copytree(module, folder)
    os.remove(os.path.join(folder, name))
    return folder, os.path.join(folder, name)


@pytest.mark.parametrize("name", [
    "saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001",
])
def test_a_fifo_in_a_module_folder_is_refused_in_one_line_before_loading(
        tiny_module, tmp_path, name):
    folder, where = copy_with_fifo(tiny_module, tmp_path, name)
    with released_fifo(where), tf.Graph().as_default():
        with pytest.raises(module_lib.ModuleError) as raised:
            module_lib.load(folder)
    assert str(raised.value) == (
        f"Cannot load module {folder}: {where} is a FIFO, not a regular file. Put the module's "
        "own files back (unpack or download it again), or pass another module.")


def test_a_socket_in_a_module_s_assets_is_refused(tiny_module, tmp_path):
    folder = str(tmp_path / "m")  # short: a socket's path has a length limit
    shutil.copytree(tiny_module, folder)
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(os.path.join(folder, "assets", "s"))
        with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError,
                                                    match=r"assets/s is a socket, not a regular"):
            module_lib.load(folder)
    finally:
        server.close()


def test_a_module_folder_linked_into_itself_is_walked_once_and_loads(
        tiny_module, tmp_path, monkeypatch):
    folder = str(tmp_path / "module")
    shutil.copytree(tiny_module, folder)
    for name in ("a", "b"):  # two links back: 2**40 paths before the kernel says ELOOP
        os.symlink("..", os.path.join(folder, "assets", name))
    scanned, scandir = [], os.scandir

    def counted_scandir(path):
        scanned.append(path)
        if len(scanned) > 100:
            raise AssertionError("the walk goes round the links")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted_scandir)
    assert module_lib.module_folder_problem(folder) is None
    assert sorted(os.path.relpath(p, folder) for p in scanned) == [".", "assets", "variables"]
    monkeypatch.undo()
    with tf.Graph().as_default():
        assert (module_lib.load(folder).height, module_lib.load(folder).width) == (32, 32)


def test_a_saved_model_pb_larger_than_a_protocol_buffer_is_refused_unread(tiny_module, tmp_path):
    folder = str(tmp_path / "module")
    shutil.copytree(tiny_module, folder)
    # Sparse: 2 GiB that take no disk. Read, it would take gigabytes of memory.
    os.truncate(os.path.join(folder, "saved_model.pb"), module_lib.MAX_SAVED_MODEL_PB_BYTES + 1)
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(folder)
    assert str(raised.value).startswith(
        f"Cannot load module {folder}: {folder}/saved_model.pb holds 2,147,483,648 bytes, more "
        "than the 2,147,483,647 a protocol buffer can hold.")


def test_a_saved_model_pb_of_garbage_is_one_line(tiny_module, tmp_path):
    folder = str(tmp_path / "module")
    shutil.copytree(tiny_module, folder)
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(np.random.RandomState(0).bytes(5000))
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(folder)
    assert str(raised.value).startswith(f"Cannot load module {folder}: ")
    assert "\n" not in str(raised.value)


def test_bottleneck_command_on_a_module_holding_a_fifo_ends_in_one_error_line(
        tiny_module, tmp_path):
    folder, where = copy_with_fifo(tiny_module, tmp_path, "variables/variables.index")
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    with released_fifo(where):
        process = run_command("-m", "bottleneck", f"--image_dir={image_dir}",
                             f"--bottleneck_dir={tmp_path / 'bottlenecks'}",
                             f"--tfhub_module={folder}")
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: Cannot load module {folder}: {where} is a FIFO, not a regular file. Put the "
        "module's own files back (unpack or download it again), or pass another module.")
    assert "Traceback" not in process.stderr


def test_a_run_loads_the_module_once_for_its_checks_and_its_bottlenecks(
    tmp_path, tiny_module, monkeypatch
):
    from helpers import make_dataset, retrain_settings

    from retrain_suite import config as config_lib
    from retrain_suite import job

    monkeypatch.setattr(module_lib, "_shared", [None, None])  # nothing loaded before
    loads = []
    import tensorflow_hub as hub  # what module.load imports

    hub_load = hub.load
    monkeypatch.setattr(hub, "load", lambda path: loads.append(path) or hub_load(path))
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    config = config_lib.from_flat(retrain_settings(tmp_path, image_dir, tiny_module))
    dataset, images, config = job.scan_and_check(config)
    assert len(loads) == 1  # the export graph's names are checked with the module in it
    run = job.prepare_run(config, dataset, images)
    assert len(loads) == 1 and len(run.training)  # the bottlenecks froze that same load
    # A module rewritten in place is another module: loaded anew.
    rewritten = str(tmp_path / "module")
    shutil.copytree(tiny_module, rewritten)
    module_lib.load_shared(rewritten, 32)
    module_lib.load_shared(rewritten, 32)
    assert len(loads) == 2
    make_module.write_module("tiny", rewritten, seed=3)
    module_lib.load_shared(rewritten, 32)
    assert len(loads) == 3


def test_the_weights_of_the_shared_module_are_the_module_s_not_the_names_check_s_layer(
        tiny_module):
    # The names check loads the module into the export graph, with a final layer of
    # 100 hidden units, and keeps it for the bottlenecks: the memory that freezing
    # its weights takes is still the module's alone.
    from retrain_suite import export, final_layer

    with tf.Graph().as_default():
        alone = module_lib.weight_bytes(module_lib.load(tiny_module))
    export.check_final_tensor_name(tiny_module, 299, final_layer.LayerSpec(2, "final_result", 100))
    assert module_lib.weight_bytes(module_lib.load_shared(tiny_module)) == alone > 0
