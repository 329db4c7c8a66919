"""retrain_suite.bottleneck.inlining: function calls in a GraphDef replaced by their bodies."""

import numpy as np
import pytest
import tensorflow as tf

from retrain_suite.bottleneck import inlining


def run(graph_def, fetches, feeds):
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(fetches, feeds)


def call_ops(graph_def):
    ops = [n.op for n in graph_def.node]
    ops += [n.op for f in graph_def.library.function for n in f.node_def]
    return [op for op in ops if op in inlining.CALL_OPS]


def nested_call_graph():
    """x, y -> a = relu(2x) + 1 times y, b = relu(2y) + 1, through a function calling a function."""

    @tf.function
    def inner(v):
        return tf.nn.relu(v * 2.0) + 1.0

    @tf.function
    def outer(x, y):
        return inner(x) * y, inner(y)

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.compat.v1.placeholder(tf.float32, [None], name="y")
        a, b = outer(x, y)
        tf.identity(a, name="a")
        tf.identity(b, name="b")
    return graph.as_graph_def()


def test_nested_calls_are_inlined_and_compute_the_same():
    graph_def = nested_call_graph()
    assert len(call_ops(graph_def)) == 3  # the outer call, and two of the inner in its body
    flat = inlining.inline_function_calls(graph_def)
    assert call_ops(flat) == []
    feeds = {"x:0": [-1.0, 0.5, 3.0], "y:0": [2.0, -4.0, 0.25]}
    expected = run(graph_def, ["a:0", "b:0"], feeds)
    values = run(flat, ["a:0", "b:0"], feeds)
    np.testing.assert_array_equal(values[0], expected[0])
    np.testing.assert_array_equal(values[1], expected[1])
    np.testing.assert_array_equal(values[1], [5.0, 1.0, 1.5])
    # The input is not modified.
    assert len(call_ops(graph_def)) == 3


def test_body_nodes_do_not_collide_with_nodes_named_like_them():
    graph_def = nested_call_graph()
    (call,) = [n for n in graph_def.node if n.op in inlining.CALL_OPS]
    # Top-level nodes already named as the body's nodes would be, under the call's name.
    with tf.Graph().as_default() as graph:
        tf.constant(7.0, name=call.name + "/mul")
        tf.constant(8.0, name=call.name + "/x")
    graph_def.node.extend(graph.as_graph_def().node)
    flat = inlining.inline_function_calls(graph_def)
    names = [n.name for n in flat.node]
    assert len(names) == len(set(names))
    values = run(flat, ["a:0", call.name + "/mul:0", call.name + "/x:0"], {"x:0": [1.0], "y:0": [3.0]})
    assert values[0].tolist() == [9.0] and values[1:] == [7.0, 8.0]


def test_a_body_s_side_effects_still_run_for_those_that_wait_on_the_call():
    @tf.function
    def checked(v):
        tf.debugging.assert_positive(v, message="not positive")  # no output depends on it

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        checked(x)
        (call,) = [op for op in graph.get_operations() if op.type in inlining.CALL_OPS]
        with tf.control_dependencies([call]):
            tf.identity(x, name="out")
    flat = inlining.inline_function_calls(graph.as_graph_def())
    assert call_ops(flat) == []
    assert run(flat, "out:0", {"x:0": [1.0]}).tolist() == [1.0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="not positive"):
        run(flat, "out:0", {"x:0": [-1.0]})


def test_calls_that_would_multiply_without_end_are_refused(monkeypatch):
    graph_def = nested_call_graph()  # 1 outer call whose body makes 2 inner calls
    monkeypatch.setattr(inlining, "MAX_INLINED_NODES", 12)
    with pytest.raises(ValueError, match="over 12 nodes"):
        inlining.inline_function_calls(graph_def)


def test_a_tensorflow_without_the_conversion_refuses_with_value_error(monkeypatch):
    # compute falls back to the module as loaded on ValueError (test_compute).
    monkeypatch.setattr(inlining, "function_def_to_graph_def", None)
    with pytest.raises(ValueError, match="no function_def_to_graph_def"):
        inlining.inline_function_calls(nested_call_graph())


def colocated_call_graph():
    """x -> a = (2x + 1) x, b = (2a + 1) a: two calls of a function, nested in a third, whose
    nodes are colocated (`_class: loc:@...`) with other nodes of the body and its argument."""

    @tf.function
    def colocated(v):
        doubled = tf.multiply(v, 2.0, name="double")
        with tf.compat.v1.colocate_with(doubled.op):
            plus = tf.add(doubled, 1.0, name="plus")
        with tf.compat.v1.colocate_with(v.op):
            return tf.multiply(plus, v, name="times")

    @tf.function
    def twice(x):
        a = colocated(x)
        return a, colocated(a)

    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        a, b = twice(x)
        tf.identity(a, name="a")
        tf.identity(b, name="b")
    return graph.as_graph_def()


def colocations(nodes):
    """{node name: [the names it is colocated with]}."""
    return {
        node.name: [group.decode()[len("loc:@"):] for group in node.attr["_class"].list.s]
        for node in nodes if "_class" in node.attr
    }


def test_colocations_in_a_body_name_the_inlined_nodes_and_it_computes_the_same():
    graph_def = colocated_call_graph()
    in_bodies = colocations(n for f in graph_def.library.function for n in f.node_def)
    assert set(sum(in_bodies.values(), [])) >= {"double", "v"}  # what the test is about
    flat = inlining.inline_function_calls(graph_def)
    assert call_ops(flat) == []
    names = {node.name for node in flat.node}
    colocated = colocations(flat.node)
    # Kept on the nodes of both inner calls, or dropped from all of them.
    assert len(colocated) in (0, 2 * len(in_bodies))
    for name, groups in colocated.items():
        (body_name,) = [b for b in in_bodies if name.endswith("/" + b)]
        prefix = name[:-len(body_name)]
        # With the node's own inlined call's copies, not another call's, nor the body's names.
        assert groups == [prefix + group for group in in_bodies[body_name]], name
        assert set(groups) <= names, name
    feeds = {"x:0": [-1.0, 0.5, 3.0]}
    expected = run(graph_def, ["a:0", "b:0"], feeds)
    values = run(flat, ["a:0", "b:0"], feeds)
    np.testing.assert_array_equal(values[0], expected[0])
    np.testing.assert_array_equal(values[1], expected[1])
    np.testing.assert_array_equal(values[0], [1.0, 1.0, 21.0])
