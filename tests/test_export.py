"""retrain_suite.export: the frozen graph's and the SavedModel's contract, and the labels file."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers import load_graph_def

from retrain_suite import export
from retrain_suite.bottleneck import inlining
from retrain_suite.bottleneck import module as module_lib


def test_frozen_graph_has_placeholder_input_and_final_result_output(trained):
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    nodes = {node.name: node for node in graph_def.node}
    placeholder = nodes["Placeholder"]
    assert placeholder.op == "Placeholder"
    assert [d.size for d in placeholder.attr["shape"].shape.dim] == [-1, 32, 32, 3]
    assert nodes["final_result"].op == "Softmax"
    ops = {node.op for node in graph_def.node}
    ops |= {n.op for f in graph_def.library.function for n in f.node_def}
    assert not ops & {"VarHandleOp", "VariableV2", "SaveV2", "RestoreV2", "ReadVariableOp"}


def test_the_frozen_graph_file_is_its_deterministic_serialization(trained):
    # The same graph, the same bytes: map fields (node attributes) in a fixed order.
    with open(trained["settings"]["output_graph"], "rb") as f:
        written = f.read()
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(written)
    assert written == graph_def.SerializeToString(deterministic=True)


def test_saved_model_has_a_serving_signature(trained):
    loaded = tf.saved_model.load(trained["settings"]["saved_model_dir"])
    serve = loaded.signatures["serving_default"]
    images = tf.random.uniform([4, 32, 32, 3])
    prediction = serve(image=images)["prediction"].numpy()
    assert prediction.shape == (4, 3)
    np.testing.assert_allclose(prediction.sum(axis=1), 1.0, atol=1e-5)


def test_saved_model_has_the_fingerprint_tensorflow_reads(trained):
    folder = trained["settings"]["saved_model_dir"]
    fingerprint = tf.saved_model.experimental.read_fingerprint(folder)
    assert fingerprint.saved_model_checksum and fingerprint.graph_def_program_hash
    # Without it TensorFlow's loader says so on the console.
    assert "Fingerprint not found" not in trained["process"].stderr


def test_saved_model_is_written_without_a_fingerprint_where_tensorflow_cannot(
    tmp_path, trained, monkeypatch, caplog
):
    from helpers import load_graph_def
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    def missing(folder):
        raise AttributeError("CreateFingerprintDef is gone (faked)")

    monkeypatch.setattr(fingerprinting, "CreateFingerprintDef", missing)
    caplog.set_level("DEBUG", logger="absl")
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    folder = str(tmp_path / "saved_model")
    export.write_saved_model(graph_def, "final_result", folder)
    assert sorted(os.listdir(folder)) == ["saved_model.pb", "variables"]
    assert "No fingerprint.pb written into" in caplog.text
    assert "CreateFingerprintDef is gone (faked)" in caplog.text
    serve = tf.saved_model.load(folder).signatures["serving_default"]
    assert serve(image=tf.zeros([1, 32, 32, 3]))["prediction"].shape == (1, 3)


def test_labels_file_is_one_label_per_line_in_class_order_in_utf8(tmp_path):
    path = tmp_path / "labels.txt"
    export.write_labels(["daisy", "pâquerette", "roses with spaces"], str(path))
    assert path.read_bytes() == "daisy\npâquerette\nroses with spaces\n".encode()


def test_exported_graph_gives_the_probabilities_of_its_cached_bottleneck_path(trained):
    # The graph's `bottleneck` tensor feeds the same layer as the image path does.
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            vectors, probabilities = sess.run(
                [export.BOTTLENECK_NAME + ":0", "final_result:0"],
                {export.INPUT_NAME + ":0": images},
            )
            again = sess.run("final_result:0", {export.BOTTLENECK_NAME + ":0": vectors})
    np.testing.assert_allclose(probabilities, again, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_a_session_error_while_writing_names_its_reason_not_graph_execution(tmp_path):
    """A Saver that cannot write its index file: TensorFlow's message starts with
    "Graph execution error:" and the node's definition; the one line gives the reason."""
    (tmp_path / "layer.index").mkdir()  # a folder where the checkpoint's index file goes
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("v", [1])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            with pytest.raises(export.OutputError) as raised:
                export.write_output("checkpoint_path", str(tmp_path / "layer"), lambda: saver.save(
                    sess, str(tmp_path / "layer"), write_meta_graph=False))
    message = str(raised.value)
    assert "\n" not in message and "Graph execution error" not in message
    assert "Is a directory" in message


def test_the_same_layer_gives_the_same_graph_bytes_whatever_the_process_built_before(
        tiny_module):
    from retrain_suite import final_layer

    spec = final_layer.LayerSpec(3)
    layer = {final_layer.SCOPE + "/weights": np.ones([64, 3], np.float32),
             final_layer.SCOPE + "/biases": np.zeros([3], np.float32)}
    # Module values given (as fine-tuning gives them): built from the module as loaded.
    values = module_values(tiny_module)
    first = export.frozen_graph(tiny_module, 32, spec, layer, values)
    # TensorFlow numbers traced functions across the process: building more moves it on.
    export.check_final_tensor_name(tiny_module, 32, final_layer.LayerSpec(2, "final_result"))
    second = export.frozen_graph(tiny_module, 32, spec, layer, values)
    assert first.library.function  # the module's calls are functions of the library
    assert (first.SerializeToString(deterministic=True)
            == second.SerializeToString(deterministic=True))
    assert all(re.search(r"_[0-9a-f]{16}$", f.signature.name) for f in first.library.function)
    # The same functions in a graph with other weights: other names, since TensorFlow
    # registers each function's specialization for a graph (its constants folded in)
    # under the function's name.
    other_layer = dict(layer, **{final_layer.SCOPE + "/biases": np.ones([3], np.float32)})
    other = export.frozen_graph(tiny_module, 32, spec, other_layer, values)
    assert ({f.signature.name for f in other.library.function}
            .isdisjoint(f.signature.name for f in first.library.function))
    # Another function body: another name (a process refuses two definitions under one
    # name), for it and for the function calling it.
    changed = tf.compat.v1.GraphDef()
    changed.CopyFrom(first)
    body = next(f for f in changed.library.function if "features" in f.signature.name)
    conv = next(n for n in body.node_def if n.op == "Conv2D")
    conv.attr["padding"].s = b"VALID" if conv.attr["padding"].s != b"VALID" else b"SAME"
    inlining.name_functions_canonically(changed)
    assert ({f.signature.name for f in changed.library.function}
            .isdisjoint(f.signature.name for f in first.library.function))



def module_values(handle):
    """The module's own weights, [ndarray] in its variables' order."""
    module = module_lib.load_shared(handle, 32)
    with tf.compat.v1.Session(graph=module.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        return sess.run(module.variables)


def test_the_module_frozen_for_the_bottlenecks_is_exported_in_the_same_bytes_as_one_frozen_anew(
        tiny_module, monkeypatch):
    from retrain_suite import final_layer

    spec = final_layer.LayerSpec(3)
    layer = {final_layer.SCOPE + "/weights": np.ones([64, 3], np.float32),
             final_layer.SCOPE + "/biases": np.zeros([3], np.float32)}
    # As a run does: the names check loads the module, the bottlenecks freeze it.
    module_lib._shared[:] = [None, None]
    export.check_final_tensor_name(tiny_module, 32, final_layer.LayerSpec(2, "final_result"))
    module_lib.freeze(module_lib.load_shared(tiny_module, 32))
    frozen = module_lib.load_shared(tiny_module, 32).frozen
    # Frozen once per loaded module: a second freeze (a Beam worker in this process) reuses it.
    assert module_lib.freeze(module_lib.load_shared(tiny_module, 32))._callable is frozen
    loads = []
    real_load = module_lib.load
    monkeypatch.setattr(module_lib, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    reused = export.frozen_graph(tiny_module, 32, spec, layer)
    assert loads == []  # the frozen module of the bottlenecks, not loaded again
    assert not reused.library.function  # its calls inlined, weights constants
    # A process that never froze it (a rerun with every vector cached) freezes it anew:
    # the same bytes.
    module_lib._shared[:] = [None, None]
    anew = export.frozen_graph(tiny_module, 32, spec, layer)
    assert len(loads) == 1
    assert (reused.SerializeToString(deterministic=True)
            == anew.SerializeToString(deterministic=True))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(anew, name="")
        images = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
        with tf.compat.v1.Session(graph=graph) as sess:
            probabilities = sess.run("final_result:0", {export.INPUT_NAME + ":0": images})
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
