r"""Checks that the outputs of a run can be written, and never land on its inputs.

Run by retrain.py, pre_input.py and `python -m bottleneck` before any work.
`outputs_of` is the one list of everything a retraining run writes;
`check_output_paths` holds a run's outputs to these rules:

- a path flag given as an empty string is refused (an empty folder name would
  otherwise mean the working directory);
- no output may be the same as, inside, or around an input (the image folder,
  the TFRecord folder, a local module folder, the bottleneck cache), nor the
  same as, inside or around another output. Paths are compared after making
  them absolute and resolving symlinks, so `data/../data/red` or a link to
  the image folder is seen for what it is;
- a file output that is an existing folder, and a name that would exceed the
  filesystem's limit once the temporary suffix of atomic_files is added, are
  refused; so is a folder output that holds anything this suite did not write;
- each output's folder must exist or be creatable, and be writable
  (`check_output_locations`, run once the dataset is known).

Each refusal is a PathError whose message is one line with the fix.
"""

import os

import tensorflow as tf

from retrain_suite import atomic_files, errors


class PathError(errors.SuiteError):
    """An output path that would be unsafe or cannot be written."""

    area = "outputs"


def is_local(path):
    return "://" not in path


def resolved(path):
    """Absolute, symlinks resolved (for the part that exists); a remote path as given."""
    return os.path.realpath(path) if is_local(path) else path.rstrip("/")


def relation(a, b):
    """How path a stands to path b: 'the same as', 'inside', 'around' or None."""
    a, b = resolved(a), resolved(b)
    if a == b:
        return "the same as"
    if a.startswith(b.rstrip("/") + "/"):
        return "inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "around"
    return None


def check_not_empty(named_paths):
    """named_paths: [(flag name, value)]. Raise PathError for a value that is ''."""
    for flag, value in named_paths:
        if value == "":
            raise PathError(
                f"--{flag} is empty; give a path (an empty one would mean the current folder)."
            )


def check_apart(outputs, inputs):
    """Raise PathError if an output is the same as, inside or around an input or another output.

    outputs, inputs: [(flag name, path)]; one flag may appear several times
    (a checkpoint is several files), and paths of one flag are not compared
    with each other.
    """
    for flag, path in outputs:
        for input_flag, input_path in inputs:
            where = relation(path, input_path)
            if where:
                raise PathError(
                    f"--{flag}={path} is {where} --{input_flag}={input_path}: an output "
                    "must not land on or around what the run reads; write it elsewhere."
                )
    for n, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[n + 1:]:
            where = relation(path, other) if other_flag != flag else None
            if where:
                raise PathError(
                    f"--{flag}={path} is {where} --{other_flag}={other}: each output "
                    "needs a place of its own; give them separate paths."
                )


def _name_max(path):
    """The filesystem's longest file name for the nearest existing folder of path."""
    folder = os.path.dirname(os.path.abspath(path)) or "/"
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_name_lengths(flag, path, longest_suffix=None):
    """Raise PathError if a name in path, or its last one plus longest_suffix, is too long.

    longest_suffix: bytes added to the last name while it is written; by
    default atomic_files' longest temporary suffix.
    """
    if longest_suffix is None:
        longest_suffix = atomic_files.LONGEST_TEMPORARY_SUFFIX
    if not is_local(path):
        return
    limit = _name_max(path)
    names = [n for n in os.path.abspath(path).split(os.sep) if n]
    for name in names[:-1]:
        if len(name.encode()) > limit:
            raise PathError(
                f"--{flag}={path}: the folder name {name[:40]}... is longer than this "
                f"filesystem allows ({limit} bytes); choose a shorter one."
            )
    size = len(names[-1].encode()) if names else 0
    if size + longest_suffix > limit:
        extra = (f"; it is first written under a temporary name {longest_suffix} bytes "
                 "longer" if longest_suffix else "")
        raise PathError(
            f"--{flag}={path}: the name {names[-1][:40]}... is {size} bytes and this "
            f"filesystem allows {limit}{extra}, so it must be at most "
            f"{limit - longest_suffix} bytes here. Choose a shorter name."
        )


def check_file_output(flag, path):
    """Raise PathError if the file output path cannot be written (see the module docstring)."""
    check_name_lengths(flag, path)
    if tf.io.gfile.isdir(path):
        raise PathError(
            f"--{flag}={path} is a folder; give the path of a file to write, e.g. "
            f"{os.path.join(path.rstrip('/'), 'name')}."
        )


def check_folder_output(flag, path, owned_entries=None):
    """Raise PathError if the folder output at path cannot be written.

    owned_entries: for an output that replaces the whole folder (a SavedModel),
    the names it writes; the folder must be absent, empty or hold only those.
    Otherwise the folder is written into, and must only not be a file.
    """
    # Only a replaced folder is first written under a temporary name.
    check_name_lengths(flag, path, 0 if owned_entries is None else None)
    if owned_entries is not None:
        try:
            atomic_files.check_replaceable(path, owned_entries)
        except FileExistsError as e:
            raise PathError(
                f"--{flag}={path} {e.strerror}: it is replaced as a whole, so only an "
                "empty folder or one written by this suite may be there. Give a new folder."
            ) from e
    elif tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
        raise PathError(f"--{flag}={path} is a file, not a folder; give a folder.")


def local_module_folder(handle):
    """handle if it is a module folder on this machine, else None (a TF Hub address)."""
    return handle if handle and is_local(handle) and os.path.exists(handle) else None


# Every file a checkpoint prefix stands for: TensorFlow's checkpoint, its index
# and data, the lock a run holds on it, and fine-tuning's checkpoint
# (fine_tuning_checkpoint.CHECKPOINT_SUFFIX, spelled out here so that this low room
# imports no stage; test_output_paths checks the two agree).
CHECKPOINT_SUFFIXES = ("", ".index", ".data-00000-of-00001", ".lock", ".fine_tuning")


# TensorFlow writes <prefix>.data-00000-of-00001 through a temporary name of
# its own (<prefix>.data-00000-of-00001.tempstate + up to 20 digits).
CHECKPOINT_SUFFIX_ROOM = len(".data-00000-of-00001.tempstate") + 20


# What report_page writes in --report_dir (spelled out here so that this low room
# imports no stage; test_report_page checks the two agree): a folder holding only
# these, or nothing, is one a run may replace.
REPORT_ENTRIES = frozenset({"report.html", "results.csv", "training_curves.png",
                            "fine_tuning_curves.png", "confusion_matrix.png",
                            "confusion_matrix_normalized.png"})


def outputs_of(outputs, eval_report):
    """[(flag, path)] of everything a retraining run writes: files, folders and a
    checkpoint's files. outputs: a config.OutputConfig; eval_report: its path, or ''."""
    named = [("output_graph", outputs.output_graph),
             ("output_labels", outputs.output_labels),
             ("summaries_dir", outputs.summaries_dir)]
    for flag, path in (("eval_report", eval_report),
                       ("saved_model_dir", outputs.saved_model_dir),
                       ("tflite_output_file", outputs.tflite_output_file),
                       ("onnx_output_file", outputs.onnx_output_file),
                       ("report_dir", outputs.report_dir)):
        if path:
            named.append((flag, path))
    if outputs.intermediate_store_frequency > 0:
        named.append(("intermediate_output_graphs_dir", outputs.intermediate_output_graphs_dir))
    named += [("checkpoint_path", outputs.checkpoint_path + suffix)
              for suffix in CHECKPOINT_SUFFIXES]
    return named


def check_output_paths(data, module, outputs, eval_report, labels_csv=""):
    """Raise PathError unless every output of a retraining run can be written without
    touching an input.

    data, module, outputs: the config.DataConfig, ModuleConfig and OutputConfig
    sections; eval_report: its path, or ''; labels_csv: --multi_label's labels file, or
    '' (an input too: no output may land on it). See the module docstring: no empty
    path flags; no output the same as, inside or around --image_dir,
    --tfrecord_dir, --bottleneck_dir, a local module folder or another output;
    file outputs that are not folders and whose names fit; a --saved_model_dir
    that is absent, empty or a SavedModel, and a --report_dir that is absent,
    empty or a report folder (REPORT_ENTRIES). The cache may be inside --image_dir
    or --tfrecord_dir (neither scan it), but not either folder itself nor around it.
    """
    cache = module.bottleneck_dir
    named = [("output_graph", outputs.output_graph), ("output_labels", outputs.output_labels),
             ("checkpoint_path", outputs.checkpoint_path), ("summaries_dir", outputs.summaries_dir),
             ("bottleneck_dir", cache), ("tfhub_module", module.tfhub_module)]
    if outputs.intermediate_store_frequency > 0:
        named.append(("intermediate_output_graphs_dir", outputs.intermediate_output_graphs_dir))
    check_not_empty(named)
    inputs = [(flag, path) for flag, path in (("image_dir", data.image_dir),
                                              ("tfrecord_dir", data.tfrecord_dir)) if path]
    module_folder = local_module_folder(module.tfhub_module)
    if module_folder:
        inputs.append(("tfhub_module", module_folder))
    for flag, path in inputs:
        where = relation(cache, path)
        if where and (flag == "tfhub_module" or where != "inside"):
            raise PathError(
                f"--bottleneck_dir={cache} is {where} --{flag}={path}: the cache needs a "
                "folder of its own (a subfolder of the image or TFRecord folder is fine)."
            )
    written = outputs_of(outputs, eval_report)
    read = [("labels_csv", labels_csv)] if labels_csv else []
    check_apart(written, inputs + read + [("bottleneck_dir", cache)])
    for flag, path in (("output_graph", outputs.output_graph),
                       ("output_labels", outputs.output_labels), ("eval_report", eval_report),
                       ("tflite_output_file", outputs.tflite_output_file),
                       ("onnx_output_file", outputs.onnx_output_file)):
        if path:
            check_file_output(flag, path)
    check_name_lengths("checkpoint_path", outputs.checkpoint_path, CHECKPOINT_SUFFIX_ROOM)
    for flag, path in written:  # The checkpoint's files, written late in the run.
        if flag == "checkpoint_path" and path != outputs.checkpoint_path and tf.io.gfile.isdir(path):
            raise PathError(
                f"--checkpoint_path={outputs.checkpoint_path} writes {path}, which is "
                "a folder; move it away or give another --checkpoint_path."
            )
    if outputs.saved_model_dir:
        check_folder_output("saved_model_dir", outputs.saved_model_dir,
                            atomic_files.SAVED_MODEL_ENTRIES)
    check_folder_output("summaries_dir", outputs.summaries_dir)
    if outputs.report_dir:
        check_folder_output("report_dir", outputs.report_dir, REPORT_ENTRIES)
    if outputs.intermediate_store_frequency > 0:
        check_folder_output("intermediate_output_graphs_dir",
                            outputs.intermediate_output_graphs_dir)


def check_output_locations(paths):
    """Raise PathError unless each path's folder exists or can be made, and is writable.

    Nothing is created here: the folders are made when the outputs are written.
    """
    for path in paths:
        folder = os.path.dirname(path.rstrip("/")) or "."
        existing = folder
        while not tf.io.gfile.exists(existing):
            parent = os.path.dirname(existing.rstrip("/"))
            if not parent or parent == existing:
                break
            existing = parent
        if tf.io.gfile.exists(existing) and not tf.io.gfile.isdir(existing):
            raise PathError(
                f"Cannot write {path}: {existing} is a file, not a folder. Choose another location."
            )
        if is_local(existing) and os.path.isdir(existing) and not os.access(existing, os.W_OK):
            raise PathError(
                f"Cannot write {path}: the folder {existing} is not writable. "
                "Choose a writable location."
            )
