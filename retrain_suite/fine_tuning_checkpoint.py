"""The fine-tuning checkpoint: <--checkpoint_path>.fine_tuning, what it holds and who may resume it.

Written at every fine-tuning evaluation: every variable of the graph (module,
layer, optimizer slots, step) and the best model so far, as one uncompressed
np.savez zip with a JSON meta (CHECKPOINT_META), written whole under a
temporary name and renamed. It is resumed only by a run whose fingerprint (the
flags that shape fine-tuning, the module, the classes, the training and
validation images by content, the starting layer) is the same; any other, or
one that cannot be read, is ignored with a warning.
"""

import dataclasses
import hashlib
import io
import json
import math
import zipfile

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files, errors, export
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.images import files as image_files

# Written next to --checkpoint_path, under its lock.
CHECKPOINT_SUFFIX = ".fine_tuning"


def checkpoint_file(checkpoint_path):
    return checkpoint_path + CHECKPOINT_SUFFIX


def fingerprint(config, run, start_layer):
    """A hex digest of everything the fine-tuning trajectory depends on.

    run: the run_data.PreparedRun (its classes, and the training and
    validation images with their contents); start_layer: {variable name:
    ndarray}, the layer the run starts from, so a checkpoint is resumed only
    from the same start.
    """
    settings = {
        section: dataclasses.asdict(getattr(config, section))
        for section in ("training", "fine_tuning", "distortions")
    }
    settings["module"] = cache_lib.module_key(
        config.module.tfhub_module, config.module.image_size, config.module.image_size
    )
    settings["max_image_pixels"] = config.data.max_image_pixels
    digest = hashlib.sha1(json.dumps(
        {"settings": settings, "labels": run.class_names,
         "images": {split: [(i.path, i.label_index, run.contents[i.path])
                            for i in run.split(split).images]
                    for split in ("training", "validation")}},
        sort_keys=True, default=str,
    ).encode("utf-8"))
    for name in sorted(start_layer):
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(start_layer[name]).tobytes())
    return digest.hexdigest()


@dataclasses.dataclass
class Best:
    """The best evaluation so far; values None while it is the start (step 0)."""

    step: int = 0
    accuracy: float = -1.0
    cross_entropy: float = math.inf
    values: dict = None
    evaluations_without_improvement: int = 0

    def better(self, accuracy, cross_entropy):
        return (accuracy, -cross_entropy) > (self.accuracy, -self.cross_entropy)


# What write puts in the checkpoint's meta, and the types read back.
CHECKPOINT_META = {"fingerprint": str, "step": int, "best_step": int,
                   "best_accuracy": (int, float), "best_cross_entropy": (int, float),
                   "evaluations_without_improvement": int, "start_score": list}


def read(path, fingerprint):
    """-> (step, current values {name: ndarray}, Best, start score) or None, logged.

    A checkpoint that cannot be read (not a regular file, not the zip
    write writes, its meta not the one CHECKPOINT_META describes)
    is ignored with a warning, like one of another run: fine-tuning starts
    from step 0 and writes its own in its place.
    """
    if not tf.io.gfile.exists(path):
        return None
    # Read like an image: a FIFO or device put there is refused, never waited on.
    data, problem = image_files.read_regular_file(path)
    try:
        if problem:
            raise ValueError(problem)
        _check_stored_uncompressed(data)
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = _checked_meta(json.loads(str(stored["meta"])))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, tf.errors.OpError) as e:
        logging.warning("Ignoring the fine-tuning checkpoint %s: it cannot be read (%s); "
                        "fine-tuning starts from step 0.", path, errors.one_line(e))
        return None
    if meta["fingerprint"] != fingerprint:
        logging.warning(
            "Ignoring the fine-tuning checkpoint %s: it was written by a run with other flags, "
            "data or starting layer; fine-tuning starts from step 0 and replaces it.", path)
        return None
    current = {n[len("current/"):]: v for n, v in arrays.items() if n.startswith("current/")}
    best_values = {n[len("best/"):]: v for n, v in arrays.items() if n.startswith("best/")}
    best = Best(meta["best_step"], meta["best_accuracy"], meta["best_cross_entropy"],
                 best_values or None, meta["evaluations_without_improvement"])
    logging.info("Resuming fine-tuning from step %d (checkpoint %s).", meta["step"], path)
    return meta["step"], current, best, tuple(meta["start_score"])


def _check_stored_uncompressed(data):
    """ValueError unless every member of the zip in data is stored uncompressed, as
    np.savez writes them: then no member holds more than the file's own bytes, while
    a compressed one could inflate a small file to gigabytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise ValueError(f"its member {info.filename[:60]!r} is compressed, which no "
                                 "run writes")


def _checked_meta(meta):
    """meta, if it is what write writes (CHECKPOINT_META); else ValueError."""
    if not isinstance(meta, dict):
        raise ValueError(f"its meta is a JSON {type(meta).__name__}, not an object")
    for key, kind in CHECKPOINT_META.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"its meta has no {key} of the right type")
    if min(meta["step"], meta["best_step"], meta["evaluations_without_improvement"]) < 0 or (
            len(meta["start_score"]) != 2 or not all(
                isinstance(x, (int, float)) for x in meta["start_score"])):
        raise ValueError("its meta holds values no run writes")
    return meta


def write(path, fingerprint, step, current, best, start_score):
    arrays = {f"current/{name}": value for name, value in current.items()}
    if best.values is not None:
        arrays.update({f"best/{name}": value for name, value in best.values.items()})
    meta = {"fingerprint": fingerprint, "step": step, "best_step": best.step,
            "best_accuracy": best.accuracy, "best_cross_entropy": best.cross_entropy,
            "evaluations_without_improvement": best.evaluations_without_improvement,
            "start_score": list(start_score)}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    # A full disk or a folder at path: one error naming it (the previous checkpoint stays).
    export.write_output("checkpoint_path", path,
                        lambda: atomic_files.write_bytes(path, buffer.getvalue()))
