"""retrain_suite.graph_checks: what a graph must pass before label_image.py imports it."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    label_image_error_line,
    load_graph_def,
    run_command,
    synthetic_image,
    write_image,
)

from retrain_suite import command_config, graph_checks
from retrain_suite.cli import label_image as label_image_cli


def last_line(process):
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    return process.stderr.strip().splitlines()[-1]


def write_graph(path, build):
    graph = tf.Graph()
    with graph.as_default():
        build()
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())


def test_graph_that_reads_files_is_refused_unless_allowed(trained, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")

    def build():
        images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3], name="Placeholder")
        leak = tf.strings.length(tf.io.read_file(str(secret)))
        scores = tf.reduce_mean(images, [1, 2]) + tf.cast(leak, tf.float32) * 0.0
        tf.nn.softmax(scores, name="final_result")

    graph = str(tmp_path / "graph.pb")
    write_graph(graph, build)
    image = os.path.join(trained["image_dir"], "red", "img0.jpg")
    labels = trained["settings"]["output_labels"]
    # label_image.py's steps, in this process (helpers.label_image_error_line).
    last = label_image_error_line(image, graph, labels)
    assert "ReadFile" in last and "--allow_unsafe_ops" in last
    _, results, _ = label_image_cli.classify_with_graph(command_config.LabelImageConfig(
        image=(image,), graph=graph, labels=labels, allow_unsafe_ops=True))
    assert list(results) == [0]  # classified: the command exits 0


def test_unsafe_op_hidden_in_a_function_is_found():
    graph = tf.Graph()
    with graph.as_default():

        @tf.function
        def sneaky(x):
            tf.io.write_file("never-run", tf.strings.reduce_join(tf.strings.as_string(x)))
            return x

        images = tf.compat.v1.placeholder(tf.float32, [None], name="Placeholder")
        tf.identity(sneaky(images), name="final_result")
    unsafe = graph_checks.unsafe_ops(graph.as_graph_def())
    assert "WriteFile" in unsafe


def test_exported_graphs_pass_the_check(trained):
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    assert graph_checks.unsafe_ops(graph_def) == []
    graph_checks.check_graph(graph_def, "g.pb")
    assert graph_checks.input_size(graph_def, "Placeholder") == (32, 32)


def graph_calling(function_name):
    """A GraphDef whose output is a PartitionedCall of a function its library lacks."""
    graph_def = tf.compat.v1.GraphDef()
    placeholder = graph_def.node.add(name="Placeholder", op="Placeholder")
    placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
    placeholder.attr["shape"].shape.CopyFrom(
        tf.TensorShape([None, 8, 8, 3]).as_proto())
    call = graph_def.node.add(name="final_result", op="PartitionedCall", input=["Placeholder"])
    call.attr["Tin"].list.type.append(tf.float32.as_datatype_enum)
    call.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
    call.attr["f"].func.name = function_name
    return graph_def


def test_graph_calling_an_undefined_function_is_refused_at_once(tmp_path):
    graph_path = tmp_path / "graph.pb"
    graph_path.write_bytes(graph_calling("WriteFile").SerializeToString())
    (tmp_path / "labels.txt").write_text("a\nb\n")
    image = str(tmp_path / "x.png")
    write_image(image, synthetic_image((1, 2, 3), "solid", 20, 24, np.random.RandomState(0)), "PNG")
    for allowed in (False, True):  # label_image.py's steps, in this process
        assert label_image_error_line(image, str(graph_path), str(tmp_path / "labels.txt"),
                                      allow_unsafe_ops=allowed) == (
            f"error: Graph {graph_path} calls functions it does not define: WriteFile. "
            "It is damaged or not a graph exported by retrain.py."
        )


def test_long_undefined_function_names_are_cut_short():
    with pytest.raises(graph_checks.GraphError) as raised:
        graph_checks.check_functions_defined(graph_calling("W" * 100000), "g.pb")
    assert len(str(raised.value)) < 300


def splat_constant_graph(dims):
    """A 1 KB classifier graph one of whose constants is one value filling `dims`."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3], name="Placeholder")
        splat = tf.constant(1.0, shape=[2, 2], name="splat")
        logits = tf.reduce_mean(image, [1, 2])[:, :2] + tf.reduce_sum(splat) * 0.0
        tf.nn.softmax(logits, name="final_result")
    graph_def = graph.as_graph_def()
    (node,) = [n for n in graph_def.node if n.name == "splat"]
    tensor = node.attr["value"].tensor
    del tensor.tensor_shape.dim[:]
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    tensor.ClearField("tensor_content")
    tensor.float_val[:] = [1.0]
    return graph_def


def test_a_graph_whose_constants_declare_gigabytes_is_refused_before_it_runs(tmp_path):
    graph = tmp_path / "graph.pb"
    graph.write_bytes(splat_constant_graph([200_000, 100_000]).SerializeToString())  # 80 GB
    (tmp_path / "labels.txt").write_text("a\nb\n")
    image = str(tmp_path / "img.png")
    write_image(image, synthetic_image((220, 40, 40), "stripes", 32, 32, np.random.RandomState(0)))
    process = run_command("label_image.py", image, str(graph), str(tmp_path / "labels.txt"))
    assert process.returncode == 1
    # 80 GB for the splat, and a few bytes for the graph's other constants.
    assert re.fullmatch(
        f"error: Graph {re.escape(str(graph))} declares 80,000,000,0[0-9][0-9] bytes of "
        f"constants, far more than its {graph.stat().st_size:,} bytes hold. It is damaged or "
        "not a graph exported by retrain.py.", last_line(process))
    # A splat that fits the slack is a graph like any other.
    graph_checks.check_constants_fit(splat_constant_graph([1000, 1000]), str(graph))


def test_check_graph_lets_unsafe_ops_through_only_when_allowed_and_the_rest_never():
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="Placeholder")
        leak = tf.strings.length(tf.io.read_file("never-read"))
        tf.nn.softmax(tf.reduce_mean(images, [1, 2]) + tf.cast(leak, tf.float32), name="final_result")
    reads = graph.as_graph_def()
    with pytest.raises(graph_checks.GraphError, match="ReadFile"):
        graph_checks.check_graph(reads, "g.pb")
    graph_checks.check_graph(reads, "g.pb", allow_unsafe_ops=True)
    for broken in (graph_calling("WriteFile"), splat_constant_graph([200_000, 100_000])):
        with pytest.raises(graph_checks.GraphError, match="It is damaged"):
            graph_checks.check_graph(broken, "g.pb", allow_unsafe_ops=True)


def test_input_size_is_the_placeholders_and_a_missing_layer_names_its_flag():
    fixed = graph_calling("f")
    assert graph_checks.input_size(fixed, "Placeholder") == (8, 8)
    fixed.node[0].attr["shape"].shape.CopyFrom(tf.TensorShape([None, None, None, 3]).as_proto())
    assert graph_checks.input_size(fixed, "Placeholder") is None
    with pytest.raises(graph_checks.GraphError,
                       match="no input_layer named 'input'; pass the right --input_layer"):
        graph_checks.input_size(fixed, "input")
