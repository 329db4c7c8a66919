r"""Loading a TF Hub image feature-vector module into a TF1-style graph.

The convention (TF Hub's "image feature vector", TF2 SavedModel format): the
loaded object is called on float32 images `[N, H, W, 3]` with values in [0, 1]
and returns float32 features `[N, D]`. `hub.load` inside a
`tf.Graph().as_default()` block adds the module's functions to that graph; its
weights are restored when the Session runs the variable initializers.
`freeze` turns that into a forward pass with constant weights: faster, and
what the mixed-precision rewrite needs.
"""

import dataclasses
import os
import stat

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import rewriter_config_pb2

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import inlining
from retrain_suite.images import files as image_files

DEFAULT_MODULE = "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5"


DEFAULT_IMAGE_SIZE = 299


PRECISIONS = ("float32", "bfloat16", "float16")


# CPU flags (Linux /proc/cpuinfo names) of instructions that compute in bfloat16.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


# The most weight bytes freeze() puts into a GraphDef: protocol buffers stop at
# 2 GiB, and the graph's own structure needs some room.
MAX_FROZEN_BYTES = 2**31 - 2**26


# The largest saved_model.pb a loader can parse: a protocol buffer holds at most
# 2 GiB. TensorFlow reads the whole file before parsing it (a 2 GiB file of
# zeros took 7 GB of memory and 17 s to be refused), so a larger one is refused
# by its size alone.
MAX_SAVED_MODEL_PB_BYTES = 2**31 - 1


class ModuleError(errors.SuiteError):
    """The module cannot be loaded or is not an image feature-vector module."""

    area = "module"


@dataclasses.dataclass
class FeatureVectorModule:
    handle: str
    height: int
    width: int
    _callable: object
    precision: str = "float32"  # what the forward pass computes in; see session_config
    graph: object = None  # the graph whose variables hold the weights; None when frozen
    # The variables loading the module made in that graph: its weights, whatever else
    # (an export graph's final layer) is built in the graph later.
    weight_variables: tuple = ()
    # Once freeze has frozen this loaded module: the FrozenForward it made, which export
    # imports instead of loading the module again. None until then.
    frozen: object = None

    def __call__(self, images, training=None):
        """float32 [N, height, width, 3] in [0, 1] -> float32 [N, D].

        training: None calls the module as bottlenecks always have (its
        default, inference); True or False is passed on as the Reusable
        SavedModel API's `training` argument (see check_fine_tunable).
        """
        if training is None:
            features = self._callable(images)
        else:
            features = self._callable(images, training=training)
        if isinstance(features, dict):
            raise ModuleError(
                f"Module {self.handle} returns a dict of outputs; it is not an image "
                "feature-vector module. Use one that returns [N, D] features."
            )
        if features.shape.rank != 2 or features.shape[-1] is None:
            raise ModuleError(
                f"Module {self.handle} returns shape {features.shape}, not [N, D]; "
                "it is not an image feature-vector module."
            )
        return features


    @property
    def variables(self):
        """The module's variables in the order it saved them (Reusable SavedModel API)."""
        return list(getattr(self._callable, "variables", None) or [])

    @property
    def trainable_variables(self):
        return list(getattr(self._callable, "trainable_variables", None) or [])

    def regularization_losses(self):
        """The module's own regularization losses: [float32 scalar] (empty if it has none)."""
        return [loss() for loss in getattr(self._callable, "regularization_losses", None) or []]


def check_fine_tunable(handle, default_image_size=DEFAULT_IMAGE_SIZE):
    """Raise ModuleError, in one line, unless the module can be fine-tuned.

    Fine-tuning needs TF Hub's Reusable SavedModel API: trainable variables
    listed in `trainable_variables` (each also in `variables`, which export
    copies), and a `__call__` that takes `training=True` and `training=False`.
    Uses load_shared's module (loaded now if it is not yet): a load error is
    ModuleError too.
    """
    module = load_shared(handle, default_image_size)
    with module.graph.as_default():
        trainable, every = module.trainable_variables, module.variables
        fix = ("Fine-tuning needs a TF2 SavedModel that follows TF Hub's Reusable SavedModel "
               "API; use such a module or drop --fine_tune_steps.")
        if not trainable:
            raise ModuleError(
                f"Module {handle} lists no trainable variables (`trainable_variables` is "
                "missing or empty: its weights are frozen, or it was saved without the "
                f"attributes fine-tuning needs). {fix}"
            )
        if not {id(v) for v in trainable} <= {id(v) for v in every}:
            raise ModuleError(
                f"Module {handle} lists trainable variables missing from its `variables`, "
                f"so fine-tuned weights could not be exported. {fix}"
            )
        images = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
        for training in (True, False):
            try:
                module(images, training=training)
            except (TypeError, ValueError) as e:
                raise ModuleError(
                    f"Module {handle} cannot be called with training={training} "
                    f"({errors.one_line(e).rstrip('.')}). {fix}"
                ) from e


def _fix_for(handle):
    if os.path.isdir(handle) or not ("://" in handle or handle.startswith("@")):
        return (
            "Pass a folder holding a TF2 SavedModel (with saved_model.pb) of an image "
            "feature-vector module, or a TF Hub handle."
        )
    return (
        "Without network access, download the module elsewhere and pass its "
        "unpacked folder as --tfhub_module, or set TFHUB_CACHE_DIR to a cache "
        "folder that already holds it."
    )


def load(handle, default_image_size=DEFAULT_IMAGE_SIZE):
    """Load the module into the current graph. -> FeatureVectorModule.

    Its weights are variables, restored by the graph's variable initializers.
    The input size comes from the module's input signature when it is fixed
    there, else default_image_size (square). Raises ModuleError with the
    handle, the cause and the fix.
    """
    # Imported here, not with this module: 0.37 s of every command's start-up, and a run
    # that remembers its module's names and sizes never loads it.
    import tensorflow_hub as hub

    try:
        path = hub.resolve(handle)  # a local folder as it is; a URL downloaded to the cache
    except Exception as e:  # resolving fails in many ways: network, archive, path.
        raise _load_error(handle, e) from e
    problem = module_folder_problem(path)
    if problem:
        raise ModuleError(f"Cannot load module {handle}: {problem}. Put the module's own "
                          "files back (unpack or download it again), or pass another module.")
    logging.info("Loading module %s...", handle)  # seconds for a large module
    before = set(id(v) for v in tf.compat.v1.global_variables())
    try:
        loaded = hub.load(path)
    except Exception as e:  # hub.load fails in many ways: format, missing files, versions.
        raise _load_error(handle, e) from e
    if not callable(loaded):
        raise ModuleError(
            f"Module {handle} loaded, but it cannot be called on images: it is not a "
            "TF2 image feature-vector SavedModel (TF1 Hub format modules for "
            "hub.Module are not supported). Use a TF2 feature-vector module."
        )
    height, width = _static_image_size(loaded) or (default_image_size, default_image_size)
    made = tuple(v for v in tf.compat.v1.global_variables() if id(v) not in before)
    return FeatureVectorModule(handle, height, width, loaded,
                               graph=tf.compat.v1.get_default_graph(), weight_variables=made)


# The module load_shared or keep last kept: (identity, FeatureVectorModule).
_shared = [None, None]

# What remember_shape was told: identity -> (height, width, output size D).
_shapes = {}


def identity(handle, default_image_size):
    """What names one module as load would load it, or None for a handle that is neither
    a local folder nor a TF Hub handle.

    A local folder by its content (as cache.module_key does), so a module rewritten in
    place is another; a TF Hub handle by itself: it names one published version.
    """
    if os.path.isdir(handle):
        try:
            return os.path.realpath(handle), cache_lib.module_fingerprint(handle), default_image_size
        except errors.SuiteError:  # unreadable files: load says what is wrong
            return None
    if "://" in handle or handle.startswith("@"):
        return handle, default_image_size
    return None


def shared_frozen(handle, default_image_size=DEFAULT_IMAGE_SIZE):
    """The FrozenForward of the module load_shared holds for handle: the one this
    process froze already (the bottlenecks' computation does), or frozen now. Raises
    ModuleError (too large to freeze, or not loadable), ValueError or
    tf.errors.OpError where the module cannot be frozen."""
    module = load_shared(handle, default_image_size)
    if module.frozen is None:
        freeze(module)
    return module.frozen


def keep(module, default_image_size=DEFAULT_IMAGE_SIZE):
    """Keep module (as load returned it, in a graph of its own) for load_shared."""
    name = identity(module.handle, default_image_size)
    _shared[:] = [name, module if name else None]


def remember_shape(handle, default_image_size, input_size, dimension):
    """Note that the module handle, at default_image_size, takes input_size (height, width)
    and gives dimension values (as checked or remembered by export.check_final_tensor_name),
    so that known_shape can answer without loading it."""
    key = identity(handle, default_image_size)
    if key is not None:
        _shapes[key] = (int(input_size[0]), int(input_size[1]), int(dimension))


def known_shape(handle, default_image_size=DEFAULT_IMAGE_SIZE):
    """(height, width, D) of the module as remember_shape noted it, or None. Lets a run
    whose every vector is cached skip loading the module at all."""
    key = identity(handle, default_image_size)
    return _shapes.get(key) if key is not None else None


def load_shared(handle, default_image_size=DEFAULT_IMAGE_SIZE):
    """The module in a graph of its own, loaded once per process. -> FeatureVectorModule.

    A run loads the module first to check the export graph's names
    (export.check_final_tensor_name keeps that load), then needs it again to
    freeze it and compute bottlenecks: loading it twice cost 1.0 and 1.2 s of a
    30 s run (MobileNet v1 0.25 on 2 cores), more for larger modules. Only the
    last module is kept, and only while its files are the same
    (cache.module_fingerprint: a module rewritten in place is loaded anew). Its
    graph may hold other ops (the check's): use it to read the module's
    weights or call it, never to build a graph whose op names matter.
    """
    name = identity(handle, default_image_size)
    if name is not None and _shared[0] == name:
        return _shared[1]
    with tf.Graph().as_default():
        module = load(handle, default_image_size)
    _shared[:] = [name, module if name else None]
    return module


def _load_error(handle, error):
    return ModuleError(
        f"Cannot load module {handle}: {errors.one_line(error).rstrip('.')}. {_fix_for(handle)}"
    )


def module_folder_problem(path):
    """Why the local module folder at path cannot be loaded safely, as a phrase, or None.

    The loader opens the folder's files blocking and reads each whole, so a
    FIFO, socket or device anywhere in it (saved_model.pb, a variables file,
    an asset) would hang it, and an oversized saved_model.pb would be read
    into memory only to be refused. Every entry is looked at with stat, which
    never opens it; a link is judged by what it points to, and a folder linked
    twice is walked once. A path that is not a local folder is left to the
    loader, which says what is wrong with it in its own words.
    """
    if "://" in path or not os.path.isdir(path):
        return None
    root = os.stat(path)  # the folder itself: a link back to it is walked no further
    seen, pending = {(root.st_dev, root.st_ino)}, [path]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            continue  # unreadable: the loader reports it when it needs what is inside
        for entry in entries:
            try:
                info = os.stat(entry.path)
            except OSError:
                continue  # a dangling link: the loader reports it if it needs the file
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    pending.append(entry.path)
            elif not stat.S_ISREG(info.st_mode):
                kind = image_files.special_file_kind(info.st_mode)
                return f"{entry.path} is {kind}, not a regular file"
            elif (entry.name == "saved_model.pb" and folder == path
                  and info.st_size > MAX_SAVED_MODEL_PB_BYTES):
                return (f"{entry.path} holds {info.st_size:,} bytes, more than the "
                        f"{MAX_SAVED_MODEL_PB_BYTES:,} a protocol buffer can hold")
    return None


def freeze(module, precision="float32"):
    """The module's forward pass with its weights as constants. -> FeatureVectorModule.

    module: as load returned it; its weights are read by a Session on the
    graph it was loaded into. Calling the result imports the frozen forward
    pass into the current default graph, which needs no initializers.
    precision is what the Session of session_config(precision) will rewrite
    the pass to compute in: the mixed-precision rewrite needs constant weights
    to pay off (applied to a module that reads variables it measured no
    faster than float32).

    The module's function calls are inlined (see inlining), so Grappler folds
    each batch normalization into its convolution. On the random Inception V3
    and a 2-core CPU, float32 batches of 32 then ran about 8% faster than the
    module as loaded (17.21 against 15.95 images/s, taking turns in one
    process); freezing took 1.5 s, the first batch no longer, and a Session's
    peak memory was 2.3 GB against 1.5 GB (3.6 GB when Grappler inlined the
    call itself).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if module.graph is None:
        raise ValueError(f"module {module.handle} is frozen already")
    weights = weight_bytes(module)
    if weights > MAX_FROZEN_BYTES:
        raise ModuleError(
            f"Module {module.handle} has {weights / 2**20:,.0f} MiB of weights; the suite "
            "freezes them into a GraphDef, which holds at most "
            f"{MAX_FROZEN_BYTES / 2**20:,.0f} MiB. Use a smaller module."
        )
    if module.frozen is not None:  # frozen before in this process (its weights as loaded)
        return FeatureVectorModule(module.handle, module.height, module.width, module.frozen,
                                   precision)
    # An absolute scope: the pass's op names (and the inlined ones under them) do not
    # depend on what else the graph holds (the names check's export graph), so the same
    # module freezes to the same bytes in every process.
    with module.graph.as_default(), tf.name_scope("frozen_forward/"):
        images = tf.compat.v1.placeholder(
            tf.float32, [None, module.height, module.width, 3], "freeze_images"
        )
        features = tf.identity(module(images), name="freeze_features")
        with tf.compat.v1.Session(graph=module.graph, config=session_config()) as sess:
            sess.run([
                tf.compat.v1.global_variables_initializer(),
                tf.compat.v1.tables_initializer(),
            ])
            graph_def = inlining.inline_function_calls(constant_graph_def(sess, [features.op.name]))

    frozen = FrozenForward(graph_def, images.name, features.name, module.height, module.width)
    module.frozen = frozen
    return FeatureVectorModule(module.handle, module.height, module.width, frozen, precision)


@dataclasses.dataclass(frozen=True)
class FrozenForward:
    """A module's forward pass as a GraphDef with its weights as constants (freeze's)."""

    graph_def: object  # tf.compat.v1.GraphDef, function calls inlined
    input_name: str  # its images, float32 [N, H, W, 3]
    output_name: str  # its features, float32 [N, D]
    height: int  # the images' size in pixels
    width: int

    def __call__(self, batch):
        """Import the pass into the current default graph on batch. -> features [N, D]."""
        (output,) = tf.compat.v1.import_graph_def(
            self.graph_def, input_map={self.input_name: batch},
            return_elements=[self.output_name], name="frozen_module",
        )
        return output


def weight_bytes(module):
    """Bytes of a (not frozen) module's weights: the variables its load made (not those of
    a final layer built later in the same graph, as the names check's export graph has)."""
    return sum(v.shape.num_elements() * v.dtype.base_dtype.size for v in module.weight_variables)


def constant_graph_def(sess, output_names):
    """The part of sess's graph that computes output_names, variables read as constants.

    -> tf.compat.v1.GraphDef without the library functions nothing calls (a
    loaded module's save and restore functions).
    """
    graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, sess.graph.as_graph_def(), output_names
    )
    inlining.drop_unused_functions(graph_def)
    return graph_def


def mixed_precision_type():
    """The type --mixed_precision computes in here: "float16" on a GPU, else "bfloat16".

    Raises ModuleError on a CPU without bfloat16 instructions, where the
    rewrite would emulate bfloat16 and be slower than float32.
    """
    if tf.config.list_physical_devices("GPU"):
        return "float16"
    if not cpu_flags() & set(BFLOAT16_CPU_FLAGS):
        raise ModuleError(
            "--mixed_precision needs a GPU or a CPU with bfloat16 instructions "
            f"({' or '.join(BFLOAT16_CPU_FLAGS)}), and this machine has neither; "
            "run without --mixed_precision."
        )
    return "bfloat16"


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The words of /proc/cpuinfo, among them the CPU's feature flags ("avx512_bf16", ...).

    Empty where the file cannot be read (not Linux).
    """
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            return set(f.read().split())
    except OSError:
        return set()


def _static_image_size(loaded):
    """(height, width) from the call signature, or None when not fixed there."""
    for concrete in getattr(loaded.__call__, "concrete_functions", None) or []:
        args, _ = concrete.structured_input_signature
        specs = [a for a in tf.nest.flatten(args) if isinstance(a, tf.TensorSpec)]
        if specs and specs[0].shape.rank == 4:
            height, width = specs[0].shape[1], specs[0].shape[2]
            if height is not None and width is not None:
                return int(height), int(width)
    return None



def describe_device():
    """Which device will run the module, as a phrase for the log."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU (no GPU found)"
    names = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return "GPU: " + ", ".join(names)


def use_gpu_memory_as_needed():
    """Let TensorFlow grow GPU memory as needed instead of taking it all at start."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # Already initialised: the setting is fixed by then.
            logging.debug("GPU memory growth could not be set for %s", gpu.name)


def session_config(precision="float32"):
    """ConfigProto for Sessions: GPU memory grows as needed.

    With precision "bfloat16" (oneDNN on CPU) or "float16" (GPU), Grappler's
    auto mixed precision pass rewrites the graph's convolutions, matrix
    products and friends to compute in that type; values that need the range
    (reductions, softmax, the outputs) stay float32.
    """
    config = tf.compat.v1.ConfigProto()
    config.gpu_options.allow_growth = True
    rewrites = config.graph_options.rewrite_options
    if precision == "bfloat16":
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
    elif precision == "float16":
        rewrites.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    elif precision != "float32":
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    return config
