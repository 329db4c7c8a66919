r"""Function calls in a frozen GraphDef replaced by the functions' bodies.

A TF2 SavedModel's forward pass is a library function, and a frozen module
keeps it one: its weights are Const nodes of the top-level graph, fed to a
`StatefulPartitionedCall`. Grappler can fold each batch normalization into
the convolution before it only where the weights are constants in the same
graph as the convolution. Left to inline the call itself, Grappler first
specializes the function on its constant inputs, copying the weights into the
function library several times over: on the random Inception V3 (88 MB of
weights) a Session's peak memory went from 1.5 GB with the module as loaded
to 3.6 GB. With the bodies inlined here, beforehand, the same folding takes
2.3 GB, the first batch is no slower than the module's, and every later batch
is about 8% faster.

`function_def_to_graph_def` (TensorFlow's own conversion of a FunctionDef's
`node:output:index` names into GraphDef names) does the translation.
"""

import hashlib
import re

import tensorflow as tf

try:  # Not in TensorFlow's public API: a release without it cannot inline (ValueError).
    from tensorflow.python.framework.function_def_to_graph import function_def_to_graph_def
except ImportError:
    function_def_to_graph_def = None

CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")

# Nested calls deeper than this are left as calls (a function that calls itself).
MAX_DEPTH = 32

# The most nodes inlining may create: a function that calls another twice, nested
# 32 deep, would otherwise need billions. Real modules need thousands.
MAX_INLINED_NODES = 1_000_000


def inline_function_calls(graph_def):
    """A copy of graph_def with every call of a library function by a top-level
    (Stateful)PartitionedCall node replaced by the function's nodes, nested
    calls included. -> tf.compat.v1.GraphDef.

    The body's nodes are named `<call node>/<node>`; a node named as the call
    (an IdentityN of the body's outputs, a NoOp if it has none) keeps the call's
    outputs and control edges, so every consumer reads the same tensors.
    Functions with attributes of their own (type-polymorphic) and calls
    through other ops (If, While) stay calls; the library keeps the functions
    still called, and only those. Nodes of the body that have no inputs
    (constants) do not wait for the call's control inputs.

    Raises ValueError when inlining would create more than MAX_INLINED_NODES
    nodes.
    """
    if function_def_to_graph_def is None:
        raise ValueError("this TensorFlow has no function_def_to_graph_def to inline calls with")
    library = {f.signature.name: f for f in graph_def.library.function}
    result = tf.compat.v1.GraphDef()
    result.versions.CopyFrom(graph_def.versions)
    result.library.CopyFrom(graph_def.library)
    names = {node.name for node in graph_def.node}
    # function_def_to_graph_def looks up the functions a body calls in the default graph.
    with tf.Graph().as_default():
        tf.compat.v1.import_graph_def(_library_only(graph_def), name="")
        pending = [(node, 0) for node in graph_def.node]
        created = 0
        while pending:
            node, depth = pending.pop()
            function = library.get(node.attr["f"].func.name) if node.op in CALL_OPS else None
            if function is None or depth >= MAX_DEPTH or not _inlinable(function, node):
                result.node.add().CopyFrom(node)
                continue
            body = _body_nodes(node, function, names)
            created += len(body)
            if created > MAX_INLINED_NODES:
                raise ValueError(
                    f"inlining the graph's function calls would create over {MAX_INLINED_NODES:,} "
                    "nodes (calls nested and repeated too deep)"
                )
            names.update(n.name for n in body)
            pending.extend((n, depth + 1) for n in body)
    drop_unused_functions(result)
    return result


def _library_only(graph_def):
    library = tf.compat.v1.GraphDef()
    library.versions.CopyFrom(graph_def.versions)
    library.library.CopyFrom(graph_def.library)
    return library


def _inlinable(function, call):
    signature = function.signature
    data_inputs = [i for i in call.input if not i.startswith("^")]
    return (
        not signature.attr
        and len(data_inputs) == len(signature.input_arg)
        # A type given by an attribute reads 0 (DT_INVALID) here.
        and all(arg.type for arg in (*signature.input_arg, *signature.output_arg))
    )


def _body_nodes(call, function, taken):
    """The nodes that replace `call`: its function's body under a fresh prefix."""
    body, flat_names = function_def_to_graph_def(function)
    prefix, number = call.name + "/", 0
    while any(name.startswith(prefix) for name in taken):
        number += 1
        prefix = f"{call.name}_inlined_{number}/"

    def renamed(tensor):
        control = tensor.startswith("^")
        return ("^" if control else "") + prefix + tensor.lstrip("^")

    data_inputs = [i for i in call.input if not i.startswith("^")]
    controls = [i for i in call.input if i.startswith("^")]
    arguments = dict(zip((arg.name for arg in function.signature.input_arg), data_inputs))
    nodes = []
    for original in body.node:
        if original.name in arguments and original.op == "Placeholder":
            # An argument: the tensor the call was given, after the call's control inputs.
            node = tf.compat.v1.NodeDef(
                name=prefix + original.name, op="Identity",
                input=[arguments[original.name]] + controls,
            )
            node.attr["T"].type = original.attr["dtype"].type
            nodes.append(node)
            continue
        node = tf.compat.v1.NodeDef()
        node.CopyFrom(original)
        node.name = prefix + original.name
        del node.input[:]
        node.input.extend(renamed(i) for i in original.input)
        if "_class" in node.attr:  # Colocation with nodes of the body: their new names.
            groups = [g.decode() for g in node.attr["_class"].list.s]
            del node.attr["_class"].list.s[:]
            node.attr["_class"].list.s.extend(
                ("loc:@" + prefix + g[len("loc:@"):]).encode() if g.startswith("loc:@") else g.encode()
                for g in groups
            )
        nodes.append(node)
    outputs = [prefix + flat_names[function.ret[arg.name]] for arg in function.signature.output_arg]
    side_effects = ["^" + prefix + name for name in function.control_ret.values()]
    if outputs:
        joined = tf.compat.v1.NodeDef(name=call.name, op="IdentityN", input=outputs + side_effects)
        joined.attr["T"].list.type.extend(arg.type for arg in function.signature.output_arg)
    else:
        joined = tf.compat.v1.NodeDef(name=call.name, op="NoOp", input=side_effects)
    joined.device = call.device
    nodes.append(joined)
    return nodes


def drop_unused_functions(graph_def):
    """Remove, in place, the library functions no node calls (a loaded module's save and
    restore functions, a function whose calls were inlined)."""
    functions = {f.signature.name: f for f in graph_def.library.function}
    used, pending = set(), [n for n in graph_def.node]
    while pending:
        node = pending.pop()
        # A node may also call a library function by using it as its op.
        for name in (*called_functions(node), node.op):
            if name in functions and name not in used:
                used.add(name)
                pending.extend(functions[name].node_def)
    kept = [f for f in graph_def.library.function if f.signature.name in used]
    gradients = [g for g in graph_def.library.gradient if g.function_name in used]
    del graph_def.library.function[:]
    graph_def.library.function.extend(kept)
    del graph_def.library.gradient[:]
    graph_def.library.gradient.extend(gradients)


def called_functions(node):
    """Names of the functions a node calls through its attributes (`f` of PartitionedCall, ...)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        for func in value.list.func:
            yield func.name


# TensorFlow names a traced function with a counter of the whole process
# (`__inference__features_frozen_1926`): the same graph built after other work
# gets other names, and so other bytes.
_COUNTER = re.compile(r"^(.*?)_(\d+)$")


def name_functions_canonically(graph_def):
    """Rename, in place, the library functions by what they are, not by when the process
    made them: `<name without its counter>_<16 hex digits of a SHA-256>` of the
    function (hashed with its callees' new names) and of the whole graph. The same
    graph gets the same names in any process; two different functions, or one
    function in two graphs with other weights, never share a name (a process
    registers every function it runs, and its specializations, under their names,
    and refuses a second definition). Every call (an attribute's function, a node whose op is a
    function, a gradient) follows. A library whose calls loop is left as it is.
    """
    functions = {f.signature.name: f for f in graph_def.library.function}
    renamed, visiting = {}, set()

    def callees(function):
        return [name for node in function.node_def
                for name in (*called_functions(node), node.op) if name in functions]

    def visit(name):
        if name in renamed:
            return True
        if name in visiting:
            return False  # a loop
        visiting.add(name)
        if not all(visit(callee) for callee in callees(functions[name])):
            return False
        copy = type(functions[name])()
        copy.CopyFrom(functions[name])
        copy.signature.name = ""
        for node in copy.node_def:
            _rename_calls(node, renamed)
        digest = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:16]
        match = _COUNTER.match(name)
        renamed[name] = f"{match.group(1) if match else name}_{digest}"
        visiting.discard(name)
        return True

    if not all(visit(name) for name in sorted(functions)):
        return
    # Grappler specializes a function for each graph that calls it, folding in that
    # graph's constants (the weights), and registers the result under the function's
    # name: the same function called by two graphs with other weights would clash in
    # one process. So each name also carries a digest of the whole graph.
    # Renamed in place (no copy of a graph that holds the weights), hashed, renamed again.
    _apply(graph_def, renamed)
    digest = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()
    final = {}
    for name, content in renamed.items():
        match = _COUNTER.match(name)
        suffix = hashlib.sha256(f"{content}\0{digest}".encode()).hexdigest()[:16]
        final[content] = f"{match.group(1) if match else name}_{suffix}"
    _apply(graph_def, final)


def _apply(graph_def, renamed):
    """Rename graph_def's functions and every call of them as renamed says, in place, and
    put the library in the order of the names (its order too came from the counters)."""
    for node in graph_def.node:
        _rename_calls(node, renamed)
    for function in graph_def.library.function:
        function.signature.name = renamed[function.signature.name]
        for node in function.node_def:
            _rename_calls(node, renamed)
    ordered = sorted(graph_def.library.function, key=lambda f: f.signature.name)
    del graph_def.library.function[:]
    graph_def.library.function.extend(ordered)
    for gradient in graph_def.library.gradient:
        gradient.function_name = renamed.get(gradient.function_name, gradient.function_name)
        gradient.gradient_func = renamed.get(gradient.gradient_func, gradient.gradient_func)


def _rename_calls(node, renamed):
    """Point node's function calls (op, attribute functions) at their names in renamed."""
    if node.op in renamed:
        node.op = renamed[node.op]
    for value in node.attr.values():
        if value.HasField("func") and value.func.name in renamed:
            value.func.name = renamed[value.func.name]
        for func in value.list.func:
            if func.name in renamed:
                func.name = renamed[func.name]
