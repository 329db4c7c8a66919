"""What a frozen graph must pass before label_image.py imports it, and where its ends are.

A graph file is someone else's code: before it is imported, its functions
must all be defined and its constants must fit the bytes it holds (both
whatever --allow_unsafe_ops says), and every op must be on an allow list of
arithmetic, neural-network and array ops (`check_graph`). `input_size` and
`find_node` find the input and output the classifier feeds and reads.
"""

import math

import tensorflow as tf

from retrain_suite import errors
from retrain_suite.bottleneck import inlining

# Ops a retrained classifier (any TF Hub image feature-vector module plus the new
# layer) is made of: arithmetic, neural-network and array ops, and calls to the
# graph's own functions, whose bodies are checked too. Everything else, such as
# ReadFile, WriteFile, SaveV2, RestoreV2, MatchingFiles or PyFunc, could touch
# files or run code when someone else's graph is loaded, and is refused.
SAFE_OPS = frozenset("""
    Const Placeholder PlaceholderWithDefault Identity IdentityN NoOp StopGradient Snapshot
    Add AddV2 AddN Sub Mul Div RealDiv DivNoNan FloorDiv FloorMod Maximum Minimum Neg Abs
    Square Sqrt Rsqrt Exp Log Log1p Pow Reciprocal Tanh Sigmoid Erf Floor Ceil Round Sign
    SquaredDifference Cast ClipByValue Cumsum
    MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum BiasAdd
    Conv2D Conv3D DepthwiseConv2dNative MaxPool MaxPoolV2 AvgPool LRN
    FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3
    Relu Relu6 Elu Selu LeakyRelu Softplus Softsign Softmax LogSoftmax
    Mean Sum Max Min Prod ArgMax ArgMin All Any L2Loss
    Reshape Squeeze ExpandDims ConcatV2 Concat Pack Unpack Split SplitV Slice StridedSlice
    Transpose Tile Pad PadV2 MirrorPad Shape ShapeN Size Rank Fill ZerosLike OnesLike Range
    Gather GatherV2 GatherNd Select SelectV2 BroadcastTo BroadcastArgs
    Equal NotEqual Less LessEqual Greater GreaterEqual LogicalAnd LogicalOr LogicalNot
    ResizeBilinear ResizeNearestNeighbor ResizeBicubic
    PartitionedCall StatefulPartitionedCall If StatelessIf While StatelessWhile
    Enter Exit Merge Switch NextIteration LoopCond
""".split())

# Room for splat constants (a Const of one value repeated to its shape) beyond the
# bytes the graph holds: a graph retrain.py writes stores every weight whole.
CONSTANT_SLACK_BYTES = 64 * 1024 * 1024


class GraphError(errors.SuiteError):
    """A graph that cannot or should not be run, or whose input or output is not found."""

    area = "graph"


def check_graph(graph_def, path, allow_unsafe_ops=False):
    """Raise GraphError for a graph that must not be imported (path names it in the message).

    Undefined functions and oversized constants are refused whatever
    allow_unsafe_ops says; ops off SAFE_OPS only when it is False.
    """
    check_functions_defined(graph_def, path)
    check_constants_fit(graph_def, path)
    if not allow_unsafe_ops:
        check_graph_is_safe(graph_def, path)


def _all_nodes(graph_def):
    """The graph's nodes, then those of every function in its library."""
    return [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]


def unsafe_ops(graph_def):
    """Sorted names of the ops in the graph and its functions that are not in SAFE_OPS."""
    functions = {f.signature.name for f in graph_def.library.function}
    return sorted({n.op for n in _all_nodes(graph_def) if n.op not in SAFE_OPS and n.op not in functions})


def undefined_functions(graph_def):
    """Sorted names of functions that nodes of the graph or its functions call, but
    that the graph's library does not define."""
    defined = {f.signature.name for f in graph_def.library.function}
    return sorted({
        name for n in _all_nodes(graph_def) for name in inlining.called_functions(n)
        if name not in defined
    })


def _short_list(names, count=5, width=60):
    shown = [name if len(name) <= width else name[:width] + "..." for name in names[:count]]
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(shown) + more


def check_functions_defined(graph_def, path):
    """Refuse a graph calling functions its library lacks, whatever --allow_unsafe_ops says:
    it cannot run, and TensorFlow would spend minutes building an error message for it."""
    missing = undefined_functions(graph_def)
    if missing:
        raise GraphError(
            f"Graph {path} calls functions it does not define: {_short_list(missing)}. "
            "It is damaged or not a graph exported by retrain.py."
        )


def check_constants_fit(graph_def, path):
    """Refuse a graph whose constants declare far more bytes than the file holds,
    whatever --allow_unsafe_ops says: a Const may give one value and a shape to fill,
    so a 1 KB graph could ask for 80 GB (TensorFlow took 24 s to refuse one)."""
    declared = 0
    for node in _all_nodes(graph_def):
        if node.op != "Const" or "value" not in node.attr:
            continue
        tensor = node.attr["value"].tensor
        dims = [d.size for d in tensor.tensor_shape.dim]
        if any(d < 0 for d in dims):
            continue
        try:
            item = tf.dtypes.as_dtype(tensor.dtype).size or 8  # 0 for strings
        except (TypeError, ValueError):  # a dtype number TensorFlow does not know
            item = 8
        declared += math.prod(dims) * item
    if declared > graph_def.ByteSize() + CONSTANT_SLACK_BYTES:
        raise GraphError(
            f"Graph {path} declares {declared:,} bytes of constants, far more than its "
            f"{graph_def.ByteSize():,} bytes hold. It is damaged or not a graph exported by "
            "retrain.py."
        )


def check_graph_is_safe(graph_def, path):
    """Refuse a graph holding ops off SAFE_OPS (what --allow_unsafe_ops lets through)."""
    unsafe = unsafe_ops(graph_def)
    if unsafe:
        raise GraphError(
            f"Graph {path} contains ops that can read or write files or run code: "
            f"{_short_list(unsafe, 20)}. A graph exported by retrain.py has none; if you "
            "trust this graph, pass --allow_unsafe_ops."
        )


def find_node(graph_def, name, role):
    """The graph's node called name; role ("input_layer" or "output_layer") names the flag."""
    for node in graph_def.node:
        if node.name == name:
            return node
    raise GraphError(
        f"The graph has no {role} named {name!r}; pass the right --{role} "
        "(retrain.py's graphs use Placeholder and final_result)."
    )


def input_size(graph_def, input_layer):
    """(height, width) from the input placeholder's shape, or None when not fixed."""
    node = find_node(graph_def, input_layer, "input_layer")
    if "shape" in node.attr:
        dims = [d.size for d in node.attr["shape"].shape.dim]
        if len(dims) == 4 and dims[1] > 0 and dims[2] > 0:
            return dims[1], dims[2]
    return None
