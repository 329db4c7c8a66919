r"""Export of the retrained classifier: frozen graph, labels file, SavedModel.

The frozen graph takes `Placeholder`, float32 [None, H, W, 3] with values in
[0, 1], and gives `final_result` (or --final_tensor_name), float32 [None, C]
class probabilities in the order of the labels file. Module and final layer
are constants in it, so it runs anywhere TensorFlow can import a GraphDef,
including TensorFlow's stock label_image example.

A multi-label graph (--multi_label) gives independent sigmoid scores in [0, 1]
instead, and holds its per-class thresholds as the constant
`<final_tensor_name>_thresholds`, float32 [C]: a label is predicted when its
score is >= its threshold.
"""


import dataclasses
import os

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files, errors, final_layer
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import inlining
from retrain_suite.bottleneck import module as module_lib

INPUT_NAME = "Placeholder"


BOTTLENECK_NAME = "bottleneck"


# A multi-label graph's per-class thresholds: the constant <final_tensor_name> + this.
THRESHOLDS_SUFFIX = "_thresholds"


def thresholds_name(final_tensor_name):
    """The name of a multi-label graph's thresholds constant, float32 [C]."""
    return final_tensor_name + THRESHOLDS_SUFFIX


def graph_thresholds(graph_def, final_tensor_name):
    """The thresholds constant of a multi-label graph_def, float32 [C], or None without one."""
    name = thresholds_name(final_tensor_name)
    for node in graph_def.node:
        if node.name == name and node.op == "Const":
            return tf.make_ndarray(node.attr["value"].tensor).astype(np.float32)
    return None


def _export_graph(handle, default_image_size, spec, thresholds=None):
    """A new graph: Placeholder -> module -> bottleneck -> final layer (a final_layer.LayerSpec),
    and for a multi-label layer the thresholds constant (float [C]; None: 0.5 each).

    -> (graph, bottleneck, module_lib.FeatureVectorModule)."""
    graph = tf.Graph()
    with graph.as_default():
        module = module_lib.load(handle, default_image_size)
        images = tf.compat.v1.placeholder(
            tf.float32, [None, module.height, module.width, 3], INPUT_NAME
        )
        if images.op.name != INPUT_NAME:
            raise ValueError(f"module {handle} already uses the op name {INPUT_NAME}")
        bottleneck = tf.identity(module(images), name=BOTTLENECK_NAME)
        _add_layer(bottleneck, spec, thresholds)
    return graph, bottleneck, module


def _add_layer(bottleneck, spec, thresholds):
    """The final layer of spec on bottleneck, in its graph, and a multi-label layer's
    thresholds constant. Raises ValueError when one of their names is taken."""
    final_layer.add_final_layer(bottleneck, spec.class_count, spec.final_tensor_name,
                                spec.hidden_units, sigmoid=spec.multi_label)
    if spec.multi_label:
        name = thresholds_name(spec.final_tensor_name)
        values = [0.5] * spec.class_count if thresholds is None else thresholds
        constant = tf.constant(np.asarray(values, np.float32), name=name)
        if constant.op.name != name:
            raise ValueError(f"tensor name {name!r} (the thresholds) is already used in the graph")


def _frozen_export_graph(frozen, spec, thresholds=None):
    """_export_graph's graph made from the module as this process froze it (a
    module.FrozenForward): its weights are constants already, so the module is not
    loaded again (1.0 s of a 1,000-photo run with MobileNet v1 0.25). Raises ValueError
    when a name of spec's is taken there."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(
            tf.float32, [None, frozen.height, frozen.width, 3], INPUT_NAME)
        bottleneck = tf.identity(frozen(images), name=BOTTLENECK_NAME)
        _add_layer(bottleneck, spec, thresholds)
    return graph


def check_final_tensor_name(handle, default_image_size, spec, memo=None):
    """Build the export graph of spec (a final_layer.LayerSpec: its names, hidden width and
    kind matter, not its class count) without weights. -> (module output size D,
    (height, width)).

    Raises ValueError when final_tensor_name is not a valid op name, or is
    taken in the graph (by the module, the input `Placeholder`, ...): what
    export would otherwise find only after all the training. The module
    loaded for it is kept for module.load_shared (the bottlenecks' freezing),
    and its sizes for module.known_shape. memo: a memo.Memo of kind "modules":
    a check that passed before (remember_final_tensor_name_check) for the same
    module files, image size and spec (and the same code) is not built again,
    and the module is not loaded until something needs it.
    """
    memo = memo or memo_lib.Memo(None, "modules")
    key = _names_check_key(handle, default_image_size, spec)
    known = _remembered_shape(memo.get(key)) if key else None
    if known is None:
        _, bottleneck, module = _export_graph(handle, default_image_size, spec)
        # The bottleneck computation that follows uses this load instead of loading it again.
        module_lib.keep(module, default_image_size)
        images = bottleneck.graph.get_tensor_by_name(INPUT_NAME + ":0")
        known = int(bottleneck.shape[-1]), (int(images.shape[1]), int(images.shape[2]))
    module_lib.remember_shape(handle, default_image_size, known[1], known[0])
    return known


def remember_final_tensor_name_check(handle, default_image_size, spec, memo):
    """Remember in memo (kind "modules") that check_final_tensor_name passed for spec, with
    the module's sizes, for the next run. Called once the run's other checks have passed too
    and its cache folder exists: a refused run leaves nothing behind."""
    shape = module_lib.known_shape(handle, default_image_size)
    key = _names_check_key(handle, default_image_size, spec)
    if shape is None or key is None or _remembered_shape(memo.get(key)) is not None:
        return
    height, width, dimension = shape
    memo.put(key, {"dimension": dimension, "height": height, "width": width})


def _names_check_key(handle, default_image_size, spec):
    identity = module_lib.identity(handle, default_image_size)
    if identity is None:
        return None
    names = dataclasses.replace(spec, class_count=2)  # the class count changes no name
    return memo_lib.key_of("final tensor name check", repr(identity), repr(names))


def _remembered_shape(entry):
    """(D, (height, width)) from a "modules" memo entry, or None when it does not hold one."""
    if entry is None:
        return None
    values = [entry.get(name) for name in ("dimension", "height", "width")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31 for v in values):
        logging.warning("Ignoring a damaged module memo entry: %r.", entry)
        return None
    return values[0], (values[1], values[2])


def frozen_graph(handle, default_image_size, spec, layer, module_values=None, thresholds=None):
    """Module + the trained final layer -> frozen tf.compat.v1.GraphDef.

    spec: the final_layer.LayerSpec the layer was trained with; layer:
    {variable name: ndarray}, the final layer's values as trained
    (final_layer.TrainingGraph.named_layer_values), so the export holds the
    layer this process trained whatever else shares a checkpoint path. The layer is
    built without dropout: the export computes exactly what evaluation did.
    module_values: None for the module's own weights, or fine-tuned ones:
    [ndarray], one per variable of the loaded module's `variables`, in that
    order (fine_tuning.FineTuningResult.module_values). The order is the one
    the module saved, the same in every graph it is loaded into; a count,
    shape or dtype that differs is a ValueError, never a silent mismatch.
    thresholds: a multi-label layer's, float [C] inside (0, 1): kept in the graph as
    the constant `<final_tensor_name>_thresholds`.
    """
    graph = None
    if module_values is None:
        # Always from the frozen module where it freezes, so that the same module and
        # layer give the same bytes whether or not this process had frozen it.
        try:
            graph = _frozen_export_graph(module_lib.shared_frozen(handle, default_image_size),
                                         spec, thresholds)
        except (module_lib.ModuleError, ValueError, KeyError, tf.errors.OpError):
            graph = None  # too large to freeze, or a name taken there: built as loaded
    if graph is None:
        graph, _, module = _export_graph(handle, default_image_size, spec, thresholds)
    outputs = [spec.final_tensor_name]
    if spec.multi_label:
        outputs.append(thresholds_name(spec.final_tensor_name))
    with graph.as_default():
        variables = final_layer.final_layer_variables(graph)
        if sorted(v.op.name for v in variables) != sorted(layer):
            raise ValueError(f"layer values for {sorted(layer)}, graph has "
                             f"{sorted(v.op.name for v in variables)}")
        module_variables = [] if module_values is None else module.variables
        if module_values is not None:
            check_module_values(module_variables, module_values)
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run([
                tf.compat.v1.global_variables_initializer(),
                tf.compat.v1.tables_initializer(),
            ])
            for variable in variables:
                variable.load(layer[variable.op.name], sess)
            for variable, value in zip(module_variables, module_values or []):
                variable.load(value, sess)
            graph_def = module_lib.constant_graph_def(sess, outputs)
    # The same module and layer, the same bytes, whatever the process built before.
    inlining.name_functions_canonically(graph_def)
    return graph_def


def check_module_values(variables, values):
    """Raise ValueError unless values ([ndarray]) fit variables one for one (shape, dtype)."""
    if len(variables) != len(values):
        raise ValueError(f"{len(values)} module values for {len(variables)} module variables")
    for variable, value in zip(variables, values):
        if (tuple(variable.shape.as_list()) != value.shape
                or variable.dtype.base_dtype.as_numpy_dtype != value.dtype):
            raise ValueError(
                f"module variable {variable.op.name} is {variable.shape} {variable.dtype.base_dtype}, "
                f"its value {value.shape} {value.dtype}"
            )


def write_frozen_graph(graph_def, path):
    # Deterministic: the attribute maps in a fixed order, so the same graph gives the
    # same bytes (the same seed and data, the same file; the check of the exported
    # files recognises a file it has already run by those bytes).
    atomic_files.write_bytes(path, graph_def.SerializeToString(deterministic=True))


def write_labels(labels, path):
    atomic_files.write_text(path, "".join(f"{label}\n" for label in labels))


def write_saved_model(graph_def, final_tensor_name, path):
    """A SavedModel of the frozen graph with a 'serving_default' signature.

    Inputs {'image': float32 [None, H, W, 3] in [0, 1]}, outputs
    {'prediction': float32 [None, C]}, for TensorFlow Serving; a multi-label graph
    (one holding the thresholds constant) adds {'above_threshold': bool [None, C]},
    each score >= its class's threshold, and keeps the constant in the graph. With its
    fingerprint.pb where this TensorFlow can write one (see write_fingerprint).
    """

    def build(folder):
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
            images = graph.get_tensor_by_name(INPUT_NAME + ":0")
            prediction = graph.get_tensor_by_name(final_tensor_name + ":0")
            outputs = {"prediction": prediction}
            names = {node.name for node in graph_def.node}
            if thresholds_name(final_tensor_name) in names:
                thresholds = graph.get_tensor_by_name(thresholds_name(final_tensor_name) + ":0")
                outputs["above_threshold"] = tf.greater_equal(
                    prediction, thresholds, name=final_tensor_name + "_above_threshold")
            signature = tf.compat.v1.saved_model.predict_signature_def(
                inputs={"image": images}, outputs=outputs
            )
            with tf.compat.v1.Session(graph=graph) as sess:
                builder = tf.compat.v1.saved_model.Builder(folder)
                builder.add_meta_graph_and_variables(
                    sess,
                    [tf.saved_model.SERVING],
                    signature_def_map={
                        tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY: signature
                    },
                    strip_default_attrs=True,
                )
                builder.save()
        write_fingerprint(folder)

    atomic_files.replace_dir(path, build, atomic_files.SAVED_MODEL_ENTRIES)


def write_fingerprint(folder):
    """Write fingerprint.pb (tf.saved_model.experimental.read_fingerprint's file) into a
    SavedModel folder, where this TensorFlow can. -> True when written.

    TensorFlow's TF1 Builder writes none, and a SavedModel without one makes
    TensorFlow's loader log "Fingerprint not found". The fingerprint is made
    by the function tf.saved_model.save calls, which is private: where it is
    missing or fails, the SavedModel is kept without one and a DEBUG line
    says why.
    """
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import (
            constants as saved_model_constants,
        )
        from tensorflow.python.saved_model.pywrap_saved_model import (
            fingerprinting as fingerprinting_pywrap,
        )

        fingerprint = fingerprinting_pywrap.CreateFingerprintDef(folder)
        name = saved_model_constants.FINGERPRINT_FILENAME
    except Exception as e:  # noqa: BLE001 - a private API: any failure means no fingerprint
        logging.debug("No fingerprint.pb written into %s: %s", folder, errors.one_line(e))
        return False
    atomic_files.write_bytes(os.path.join(folder, name), fingerprint)
    return True


class OutputError(errors.SuiteError):
    """An output could not be written at the end of the run (disk full, ...)."""

    area = "outputs"


def write_output(flag, path, write):
    """write() -> its result; an OSError or TensorFlow error becomes one OutputError naming path."""
    try:
        return write()
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or errors.one_line(e)
        raise OutputError(
            f"Cannot write --{flag}={path}: {reason}. Nothing partial "
            "was left there; free some space or choose another location, then run again "
            "(cached bottlenecks are reused)."
        ) from e
