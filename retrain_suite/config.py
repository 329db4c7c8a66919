"""The configuration of a retraining run: frozen dataclasses, and the checks on them.

`RetrainConfig` holds one section per concern (data, module, training,
fine-tuning, distortions, evaluation, outputs). Field names are the command-line flag
names, and the command line takes its defaults from here, so a run started
from Python:

    from retrain_suite import config, job
    job.run_retraining(config.RetrainConfig(data=config.DataConfig(image_dir="photos/")))

does what `retrain.py --image_dir photos/` does. `validate()` raises
`UsageError` with a one-line fix for any value that cannot work, before any
work is done; checks that need the dataset (are there validation images?) run
once it is scanned (`job.check_sets`).
"""

import dataclasses
import math
import os
import re
from typing import Optional

import tensorflow as tf

from retrain_suite import atomic_files, errors, final_layer, output_paths, schedules, tflite
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import distortions as image_distortions
from retrain_suite.images import files as image_files

DEFAULT_PERCENTAGE = 10


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split."""

    image_dir: str = ""  # one subfolder of images per class
    tfrecord_dir: str = ""  # instead of image_dir: a folder of pre_input.py --tfrecords
    testing_percentage: float = DEFAULT_PERCENTAGE
    validation_percentage: float = DEFAULT_PERCENTAGE
    split_by: str = "path"  # what the split hashes: "path" or "content" (dataset.SPLIT_BY)
    max_image_pixels: int = image_files.DEFAULT_MAX_IMAGE_PIXELS  # width x height


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """The feature-vector module and its bottleneck cache."""

    tfhub_module: str = module_lib.DEFAULT_MODULE  # TF Hub handle or local SavedModel folder
    image_size: int = module_lib.DEFAULT_IMAGE_SIZE  # when the module does not fix it
    bottleneck_dir: str = "/tmp/bottleneck"
    bottleneck_batch_size: Optional[int] = None  # images per forward pass; None: measured
    mixed_precision: bool = False  # bfloat16 (CPU) or float16 (GPU) bottlenecks


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The final layer and how it is trained."""

    how_many_training_steps: int = 4000
    learning_rate: float = 0.01
    optimizer: str = "sgd"  # one of final_layer.OPTIMIZERS
    train_batch_size: int = 100  # bottlenecks per step
    learning_rate_schedule: str = "constant"  # one of schedules.SCHEDULES
    learning_rate_decay: float = schedules.DEFAULT_DECAY  # exponential schedule only
    decay_steps: int = 0  # exponential schedule only; 0: how_many_training_steps
    hidden_units: int = 0  # ReLU hidden layer width; 0: none
    dropout: float = 0.0  # in [0, 1)
    l2_regularization: float = 0.0
    label_smoothing: float = 0.0  # in [0, 1)
    class_weighting: str = "none"  # one of final_layer.CLASS_WEIGHTINGS
    sampling: str = "proportional"  # one of final_layer.SAMPLINGS
    early_stopping_patience: int = 0  # evaluations without improvement; 0: never stop
    keep_best: bool = True
    random_seed: Optional[int] = None  # None: a fresh seed, drawn and logged by the run


# Unset, --fine_tune_learning_rate is --learning_rate divided by this: the
# module's weights already work, and large steps would throw that away.
FINE_TUNE_LEARNING_RATE_DIVISOR = 100


@dataclasses.dataclass(frozen=True)
class FineTuningConfig:
    """Training the module's own weights with the final layer, after the layer has trained."""

    fine_tune_steps: int = 0  # 0: off
    fine_tune_learning_rate: Optional[float] = None  # None: learning_rate / FINE_TUNE_LEARNING_RATE_DIVISOR
    fine_tune_batch_size: int = 32  # images per step
    fine_tune_optimizer: str = "momentum"  # one of final_layer.OPTIMIZERS
    fine_tune_eval_interval: int = 100  # steps between whole-model validations (and checkpoints)
    fine_tune_batch_norm: bool = False  # call the module with training=True (batch statistics)


@dataclasses.dataclass(frozen=True)
class DistortionConfig:
    """Random changes to training images (each trains from images, not the cache)."""

    flip_left_right: bool = False
    random_crop: int = 0  # percent margin
    random_scale: int = 0  # percent
    random_brightness: int = 0  # percent
    random_rotation: float = 0  # degrees
    random_hue: float = 0  # 0 to 0.5
    random_saturation: float = 0  # 0 to 1


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What is measured during and after training."""

    eval_step_interval: int = 10  # steps between evaluations
    validation_batch_size: int = 100  # sampled per evaluation; -1: all
    test_batch_size: int = -1  # sampled for the final test accuracy; -1: all
    print_misclassified_test_images: bool = False
    eval_report: str = ""  # JSON report path; "": none
    assert_accuracy_at_least: Optional[float] = None  # fraction in [0, 1]


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What the run writes."""

    output_graph: str = "/tmp/output_graph.pb"
    output_labels: str = "/tmp/output_labels.txt"
    final_tensor_name: str = "final_result"
    saved_model_dir: str = ""  # "": no SavedModel
    tflite_output_file: str = ""  # "": no TFLite model
    tflite_quantization: str = "none"  # one of tflite.QUANTIZATIONS
    intermediate_output_graphs_dir: str = "/tmp/intermediate_graph/"
    intermediate_store_frequency: int = 0  # steps; 0: off
    checkpoint_path: str = "/tmp/_retrain_checkpoint"
    summaries_dir: str = "/tmp/retrain_logs"


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Everything a retraining run needs, one section per concern."""

    data: "DataConfig" = DataConfig()
    module: "ModuleConfig" = ModuleConfig()
    training: "TrainingConfig" = TrainingConfig()
    fine_tuning: "FineTuningConfig" = FineTuningConfig()
    distortions: "DistortionConfig" = DistortionConfig()
    evaluation: "EvaluationConfig" = EvaluationConfig()
    outputs: "OutputConfig" = OutputConfig()

    def validate(self):
        """Raise UsageError, with the fix in one line, for config that cannot work."""
        check_flags(self)

    def with_seed(self, seed):
        """A copy with training.random_seed set."""
        return dataclasses.replace(
            self, training=dataclasses.replace(self.training, random_seed=seed)
        )


SECTIONS = {field.name: field.type.strip('"') for field in dataclasses.fields(RetrainConfig)}
_SECTION_CLASSES = {
    "data": DataConfig, "module": ModuleConfig, "training": TrainingConfig,
    "fine_tuning": FineTuningConfig, "distortions": DistortionConfig,
    "evaluation": EvaluationConfig, "outputs": OutputConfig,
}


def field_names():
    """{field name: section name} over every section (field names are unique)."""
    return {
        field.name: section
        for section, cls in _SECTION_CLASSES.items() for field in dataclasses.fields(cls)
    }


def from_flat(flat):
    """A RetrainConfig from {field name: value} (as absl's flags or a test give them).

    Names missing from flat keep their defaults; an unknown name is a
    programming error (KeyError).
    """
    sections = {section: {} for section in _SECTION_CLASSES}
    where = field_names()
    for name, value in flat.items():
        sections[where[name]][name] = value
    return RetrainConfig(**{
        section: cls(**sections[section]) for section, cls in _SECTION_CLASSES.items()
    })


def default(name):
    """The default value of the field called name, for the command line's flags."""
    section = field_names()[name]
    return getattr(getattr(RetrainConfig(), section), name)


def value_of(config, name):
    """The value of the field called name (a flag name), wherever its section is."""
    return getattr(getattr(config, field_names()[name]), name)


def flat_values(config):
    """{field name: value} over every section: the flags' view of a config."""
    return {name: value_of(config, name) for name in field_names()}


DEFAULT_PERCENTAGE = 10


def fine_tune_learning_rate(config):
    """--fine_tune_learning_rate, or unset, --learning_rate / FINE_TUNE_LEARNING_RATE_DIVISOR."""
    rate = config.fine_tuning.fine_tune_learning_rate
    return rate if rate is not None else config.training.learning_rate / FINE_TUNE_LEARNING_RATE_DIVISOR


def distortions_from(config):
    """The distortion flags as an image_distortions.Distortions."""
    return image_distortions.Distortions(
        flip_left_right=config.distortions.flip_left_right, crop=config.distortions.random_crop,
        scale=config.distortions.random_scale, brightness=config.distortions.random_brightness,
        rotation=config.distortions.random_rotation, hue=config.distortions.random_hue,
        saturation=config.distortions.random_saturation,
    )


class UsageError(errors.SuiteError):
    """A flag value or output location the run cannot work with."""

    area = "flags"


# Seeds go to numpy (below 2**32) and TensorFlow; the drawn ones are below 2**31.
MAX_RANDOM_SEED = 2**31 - 1


# Integers TensorFlow takes as int64 (steps, sizes); larger config cannot be held.
MAX_INTEGER = 2**63 - 1


def check_numbers(config):
    """Raise UsageError for a numeric flag that is NaN, infinite or out of its type's range."""
    for name, value in sorted(flat_values(config).items()):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name}={value} must be a finite number.")
        if isinstance(value, int) and abs(value) > MAX_INTEGER:
            raise UsageError(f"--{name}={value} is too large (the limit is 2**63 - 1).")
    seed = config.training.random_seed
    if seed is not None and not 0 <= seed <= MAX_RANDOM_SEED:
        raise UsageError(
            f"--random_seed={seed} must be between 0 and {MAX_RANDOM_SEED} (2**31 - 1)."
        )


def check_flags(config):
    """Raise UsageError for flag config that cannot work, before any work is done."""
    check_numbers(config)
    check_final_tensor_name(config.outputs.final_tensor_name)
    for name, low, high in (("random_crop", 0, 100), ("random_scale", 0, 100),
                            ("random_brightness", 0, 99), ("random_rotation", 0, 180),
                            ("random_hue", 0, 0.5), ("random_saturation", 0, 1)):
        if not low <= value_of(config, name) <= high:
            raise UsageError(f"--{name}={value_of(config, name)} must be between {low} and {high}.")
    if distortions_from(config).any() and config.training.sampling == "uniform":
        raise UsageError(
            "--sampling=uniform works on cached bottlenecks, and distortions train from "
            "images; use --class_weighting=balanced for small classes instead."
        )
    if config.data.image_dir and config.data.tfrecord_dir:
        raise UsageError("Give --image_dir or --tfrecord_dir, not both.")
    if config.data.tfrecord_dir and config.data.split_by != "path":
        raise UsageError(
            "With --tfrecord_dir the split is the one in the files; to split by content, run "
            "pre_input.py --tfrecords --split_by=content again."
        )
    if not config.data.image_dir and not config.data.tfrecord_dir:
        raise UsageError("--image_dir is required: the folder with one subfolder per class "
                         "(or --tfrecord_dir, a folder written by pre_input.py --tfrecords).")
    percentages = (config.data.validation_percentage, config.data.testing_percentage)
    if config.data.tfrecord_dir and percentages != (DEFAULT_PERCENTAGE, DEFAULT_PERCENTAGE):
        raise UsageError(
            "With --tfrecord_dir the split is the one in the files; to change it, run "
            "pre_input.py --tfrecords again with the percentages you want."
        )
    for name in ("how_many_training_steps", "train_batch_size", "eval_step_interval",
                 "bottleneck_batch_size", "image_size", "max_image_pixels"):
        if value_of(config, name) is not None and value_of(config, name) <= 0:
            raise UsageError(f"--{name}={value_of(config, name)} must be positive.")
    for name in ("validation_batch_size", "test_batch_size"):
        if value_of(config, name) == 0 or value_of(config, name) < -1:
            raise UsageError(f"--{name}={value_of(config, name)} must be positive, or -1 for all.")
    if config.outputs.intermediate_store_frequency < 0:
        raise UsageError("--intermediate_store_frequency must be 0 (off) or positive.")
    if config.training.learning_rate <= 0:
        raise UsageError(f"--learning_rate={config.training.learning_rate} must be positive.")
    check_training_flags(config)
    check_fine_tuning_flags(config)
    check_tflite_flags(config)
    try:
        dataset_lib.check_percentages(
            config.data.validation_percentage, config.data.testing_percentage
        )
    except dataset_lib.DatasetError as e:
        raise UsageError(str(e)) from e


def check_training_flags(config):
    """The part of check_flags about the final layer's training and its evaluation."""
    for name in ("dropout", "label_smoothing"):
        if not 0 <= value_of(config, name) < 1:
            raise UsageError(f"--{name}={value_of(config, name)} must be in [0, 1).")
    for name in ("hidden_units", "early_stopping_patience", "decay_steps"):
        if value_of(config, name) < 0:
            raise UsageError(f"--{name}={value_of(config, name)} must be 0 or positive.")
    if config.training.l2_regularization < 0:
        raise UsageError(f"--l2_regularization={config.training.l2_regularization} must be 0 or positive.")
    if not 0 < config.training.learning_rate_decay <= 1:
        raise UsageError(f"--learning_rate_decay={config.training.learning_rate_decay} must be in (0, 1].")
    if config.training.learning_rate_schedule != "exponential":
        for name, default in (("learning_rate_decay", schedules.DEFAULT_DECAY), ("decay_steps", 0)):
            if value_of(config, name) != default:
                raise UsageError(
                    f"--{name} applies only to --learning_rate_schedule=exponential, not "
                    f"{config.training.learning_rate_schedule}; drop it or change the schedule."
                )
    threshold = config.evaluation.assert_accuracy_at_least
    if threshold is not None and not 0 <= threshold <= 1:
        raise UsageError(
            f"--assert_accuracy_at_least={threshold} must be a fraction in [0, 1] (0.9 for 90%)."
        )


def check_fine_tuning_flags(config):
    """The part of check_flags about --fine_tune_*."""
    tuning = config.fine_tuning
    if tuning.fine_tune_steps < 0:
        raise UsageError(f"--fine_tune_steps={tuning.fine_tune_steps} must be 0 (off) or positive.")
    if not tuning.fine_tune_steps:
        for field in dataclasses.fields(FineTuningConfig):
            if field.name != "fine_tune_steps" and value_of(config, field.name) != field.default:
                raise UsageError(
                    f"--{field.name}={value_of(config, field.name)} applies only to fine-tuning; "
                    "set --fine_tune_steps to fine-tune, or drop it."
                )
        return
    for name in ("fine_tune_batch_size", "fine_tune_eval_interval"):
        if value_of(config, name) <= 0:
            raise UsageError(f"--{name}={value_of(config, name)} must be positive.")
    if tuning.fine_tune_learning_rate is not None and tuning.fine_tune_learning_rate <= 0:
        raise UsageError(
            f"--fine_tune_learning_rate={tuning.fine_tune_learning_rate} must be positive "
            "(or unset: --learning_rate / 100)."
        )
    if tuning.fine_tune_optimizer not in final_layer.OPTIMIZERS:
        raise UsageError(
            f"--fine_tune_optimizer={tuning.fine_tune_optimizer} must be one of "
            f"{', '.join(final_layer.OPTIMIZERS)}."
        )
    if config.training.sampling == "uniform":
        raise UsageError(
            "--sampling=uniform works on cached bottlenecks, and fine-tuning trains from "
            "images; use --class_weighting=balanced for small classes instead."
        )
    if config.data.tfrecord_dir:
        raise UsageError(
            "--fine_tune_steps reads training images by position, which TFRecord files do "
            "not allow; fine-tune from --image_dir instead."
        )


def check_tflite_flags(config):
    """The part of check_flags about --tflite_output_file and --tflite_quantization."""
    quantization = config.outputs.tflite_quantization
    if quantization not in tflite.QUANTIZATIONS:
        raise UsageError(
            f"--tflite_quantization={quantization} must be one of {', '.join(tflite.QUANTIZATIONS)}."
        )
    if quantization != "none" and not config.outputs.tflite_output_file:
        raise UsageError(
            f"--tflite_quantization={quantization} needs --tflite_output_file (where to write it)."
        )


def check_output_locations(paths):
    """Raise UsageError unless each output's folder exists or can be made, and is writable.

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
            raise UsageError(
                f"Cannot write {path}: {existing} is a file, not a folder. Choose another location."
            )
        if "://" not in existing and os.path.isdir(existing) and not os.access(existing, os.W_OK):
            raise UsageError(
                f"Cannot write {path}: the folder {existing} is not writable. "
                "Choose a writable location."
            )


# What TensorFlow accepts as an op name (tensorflow/python/framework/ops.py).
VALID_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\\-/>]*$")


def output_paths_of(config):
    """[(flag, path)] of everything the run writes: files, folders and a checkpoint's files."""
    outputs = [("output_graph", config.outputs.output_graph),
               ("output_labels", config.outputs.output_labels),
               ("summaries_dir", config.outputs.summaries_dir)]
    for name in ("eval_report", "saved_model_dir", "tflite_output_file"):
        if value_of(config, name):
            outputs.append((name, value_of(config, name)))
    if config.outputs.intermediate_store_frequency > 0:
        outputs.append(("intermediate_output_graphs_dir", config.outputs.intermediate_output_graphs_dir))
    prefix = config.outputs.checkpoint_path
    # ".fine_tuning": fine_tuning_checkpoint.CHECKPOINT_SUFFIX (that module imports this one).
    outputs += [("checkpoint_path", prefix + suffix)
                for suffix in ("", ".index", ".data-00000-of-00001", ".lock", ".fine_tuning")]
    return outputs


def check_output_paths(config):
    """Raise UsageError unless every output can be written without touching an input.

    See output_paths: no empty path flags; no output the same as, inside or
    around --image_dir, --tfrecord_dir, --bottleneck_dir, a local module folder
    or another output; file outputs that are not folders and whose names fit;
    a --saved_model_dir that is absent, empty or a SavedModel. The cache may
    be inside --image_dir or --tfrecord_dir (neither scan it), but not either
    folder itself nor around it.
    """
    named = ["output_graph", "output_labels", "checkpoint_path", "summaries_dir",
             "bottleneck_dir", "tfhub_module"]
    if config.outputs.intermediate_store_frequency > 0:
        named.append("intermediate_output_graphs_dir")
    try:
        output_paths.check_not_empty((name, value_of(config, name)) for name in named)
        inputs = [(name, value_of(config, name)) for name in ("image_dir", "tfrecord_dir")
                  if value_of(config, name)]
        module = output_paths.local_module_folder(config.module.tfhub_module)
        if module:
            inputs.append(("tfhub_module", module))
        cache = config.module.bottleneck_dir
        for name, path in inputs:
            where = output_paths.relation(cache, path)
            if where and (name == "tfhub_module" or where != "inside"):
                raise output_paths.PathError(
                    f"--bottleneck_dir={cache} is {where} --{name}={path}: the cache needs a "
                    "folder of its own (a subfolder of the image or TFRecord folder is fine)."
                )
        outputs = output_paths_of(config)
        output_paths.check_apart(outputs, inputs + [("bottleneck_dir", cache)])
        for name in ("output_graph", "output_labels", "eval_report", "tflite_output_file"):
            if value_of(config, name):
                output_paths.check_file_output(name, value_of(config, name))
        output_paths.check_name_lengths(
            "checkpoint_path", config.outputs.checkpoint_path, CHECKPOINT_SUFFIX_ROOM
        )
        for flag, path in outputs:  # The checkpoint's files, written late in the run.
            if flag == "checkpoint_path" and path != config.outputs.checkpoint_path and (
                    tf.io.gfile.isdir(path)):
                raise output_paths.PathError(
                    f"--checkpoint_path={config.outputs.checkpoint_path} writes {path}, which is "
                    "a folder; move it away or give another --checkpoint_path."
                )
        if config.outputs.saved_model_dir:
            output_paths.check_folder_output(
                "saved_model_dir", config.outputs.saved_model_dir, atomic_files.SAVED_MODEL_ENTRIES
            )
        output_paths.check_folder_output("summaries_dir", config.outputs.summaries_dir)
        if config.outputs.intermediate_store_frequency > 0:
            output_paths.check_folder_output(
                "intermediate_output_graphs_dir", config.outputs.intermediate_output_graphs_dir
            )
    except output_paths.PathError as e:
        raise UsageError(str(e)) from e


# TensorFlow writes <prefix>.data-00000-of-00001 through a temporary name of
# its own (<prefix>.data-00000-of-00001.tempstate + up to 20 digits).
CHECKPOINT_SUFFIX_ROOM = len(".data-00000-of-00001.tempstate") + 20


def check_final_tensor_name(name):
    """Raise UsageError unless name is a valid op name (whether it is free is checked later)."""
    if not VALID_OP_NAME.match(name):
        raise UsageError(
            f"--final_tensor_name={name!r} is not a TensorFlow op name: letters, digits and "
            "_ . - / \\ >, starting with a letter, digit or '.'; e.g. final_result."
        )
