"""The configuration of a retraining run: frozen dataclasses, and the checks on them.

`RetrainConfig` holds one section per concern (data, module, training,
fine-tuning, distortions, evaluation, outputs, multi-label: its section is
multi_label.options'). Field names are the command-line flag
names, and the command line takes its defaults from here, so a run started
from Python:

    from retrain_suite import config, job
    job.run_retraining(config.RetrainConfig(data=config.DataConfig(image_dir="photos/")))

does what `retrain.py --image_dir photos/` does. Each section's `validate()`
raises a SuiteError (`UsageError`, or `DatasetError` for the split
percentages) with a one-line fix for a value of its own that cannot work;
`RetrainConfig.validate()` runs them all, then the checks that span sections,
before any work is done. Where the outputs may go is output_paths'; checks that
need the dataset (are there validation images?) run once it is scanned
(`job.check_sets`).
"""

import dataclasses
import math
import re
from typing import Optional

from retrain_suite import (
    errors,
    final_layer,
    memory_budget,
    onnx_export,
    onnx_model,
    schedules,
    tflite,
)
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.bottleneck import stores as stores_lib
from retrain_suite.dataset import split as split_lib
from retrain_suite.images import distortions as image_distortions
from retrain_suite.images import files as image_files
from retrain_suite.multi_label import options as multi_label_options


class UsageError(errors.SuiteError):
    """A flag value the run cannot work with."""

    area = "flags"


# Seeds go to numpy (below 2**32) and TensorFlow; the drawn ones are below 2**31.
MAX_RANDOM_SEED = 2**31 - 1


# Integers TensorFlow takes as int64 (steps, sizes); larger config cannot be held.
MAX_INTEGER = 2**63 - 1


# What TensorFlow accepts as an op name (tensorflow/python/framework/ops.py).
VALID_OP_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\\-/>]*$")


def check_numbers(section):
    """Raise UsageError for a numeric field of section that is NaN, infinite or out of
    its type's range."""
    for field in sorted(dataclasses.fields(section), key=lambda f: f.name):
        value = getattr(section, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{field.name}={value} must be a finite number.")
        if isinstance(value, int) and abs(value) > MAX_INTEGER:
            raise UsageError(f"--{field.name}={value} is too large (the limit is 2**63 - 1).")


def check_store(kind):
    """Raise UsageError unless kind is a --bottleneck_store value."""
    if kind not in stores_lib.KINDS:
        raise UsageError(f"--bottleneck_store={kind} must be one of {', '.join(stores_lib.KINDS)}.")


def check_positive(section, names):
    """Raise UsageError for a field of section named in names that is set and not above 0."""
    for name in names:
        value = getattr(section, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name}={value} must be positive.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split."""

    image_dir: str = ""  # one subfolder of images per class
    tfrecord_dir: str = ""  # instead of image_dir: a folder of pre_input.py --tfrecords
    testing_percentage: float = split_lib.DEFAULT_PERCENTAGE
    validation_percentage: float = split_lib.DEFAULT_PERCENTAGE
    split_by: str = "path"  # what the split hashes: one of dataset.split.SPLIT_BY
    max_image_pixels: int = image_files.DEFAULT_MAX_IMAGE_PIXELS  # width x height

    def validate(self):
        """Raise UsageError (DatasetError for the percentages) for values that cannot work."""
        check_numbers(self)
        if self.image_dir and self.tfrecord_dir:
            raise UsageError("Give --image_dir or --tfrecord_dir, not both.")
        if self.tfrecord_dir and self.split_by != "path":
            raise UsageError(
                "With --tfrecord_dir the split is the one in the files; to split by content, "
                "run pre_input.py --tfrecords --split_by=content again."
            )
        if not self.image_dir and not self.tfrecord_dir:
            raise UsageError("--image_dir is required: the folder with one subfolder per class "
                             "(or --tfrecord_dir, a folder written by pre_input.py --tfrecords).")
        percentages = (self.validation_percentage, self.testing_percentage)
        default = split_lib.DEFAULT_PERCENTAGE
        if self.tfrecord_dir and percentages != (default, default):
            raise UsageError(
                "With --tfrecord_dir the split is the one in the files; to change it, run "
                "pre_input.py --tfrecords again with the percentages you want."
            )
        check_positive(self, ("max_image_pixels",))
        split_lib.check_percentages(self.validation_percentage, self.testing_percentage)


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """The feature-vector module and its bottleneck cache."""

    tfhub_module: str = module_lib.DEFAULT_MODULE  # TF Hub handle or local SavedModel folder
    image_size: int = module_lib.DEFAULT_IMAGE_SIZE  # when the module does not fix it
    bottleneck_dir: str = "/tmp/bottleneck"
    bottleneck_batch_size: Optional[int] = None  # images per forward pass; None: measured
    mixed_precision: bool = False  # bfloat16 (CPU) or float16 (GPU) bottlenecks
    # Where computed vectors go: one of bottleneck.stores.KINDS ("files": one per image,
    # "packed": shards); both are always read.
    bottleneck_store: str = "files"
    # The memory the run may use, e.g. "8GB" (memory_budget.parse_bytes); "": this
    # machine's. Past it the bottleneck vectors are streamed from the packed store.
    memory_limit: str = ""
    stream_bottlenecks: bool = False  # stream them even when they would fit

    def validate(self):
        """Raise UsageError for values that cannot work."""
        check_numbers(self)
        check_positive(self, ("bottleneck_batch_size", "image_size"))
        check_store(self.bottleneck_store)
        self.memory_limit_bytes()

    def memory_limit_bytes(self):
        """--memory_limit in bytes, or None for this machine's memory. Raises UsageError."""
        if not self.memory_limit:
            return None
        try:
            return memory_budget.parse_bytes(self.memory_limit)
        except ValueError:
            raise UsageError(
                f"--memory_limit={self.memory_limit} must be a size such as 8GB, 512MB or "
                "16GiB (at least one byte).") from None


def needs_vectors_in_memory(config):
    """The flag of config that needs every bottleneck vector in memory, or None: what
    streaming them from the packed store cannot do."""
    if config.tuning.on:
        return "--tune_trials" if config.tuning.tune_trials else "--tune_seconds"
    if config.multi_label.multi_label:
        return "--multi_label"
    if config.training.sampling == "uniform":
        return "--sampling=uniform"
    return None


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

    def validate(self):
        """Raise UsageError for values that cannot work."""
        check_numbers(self)
        seed = self.random_seed
        if seed is not None and not 0 <= seed <= MAX_RANDOM_SEED:
            raise UsageError(
                f"--random_seed={seed} must be between 0 and {MAX_RANDOM_SEED} (2**31 - 1)."
            )
        check_positive(self, ("how_many_training_steps", "train_batch_size", "learning_rate"))
        for name in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{name}={getattr(self, name)} must be in [0, 1).")
        for name in ("hidden_units", "early_stopping_patience", "decay_steps", "l2_regularization"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name}={getattr(self, name)} must be 0 or positive.")
        if not 0 < self.learning_rate_decay <= 1:
            raise UsageError(f"--learning_rate_decay={self.learning_rate_decay} must be in (0, 1].")
        if self.learning_rate_schedule != "exponential":
            for name, default in (("learning_rate_decay", schedules.DEFAULT_DECAY),
                                  ("decay_steps", 0)):
                if getattr(self, name) != default:
                    raise UsageError(
                        f"--{name} applies only to --learning_rate_schedule=exponential, not "
                        f"{self.learning_rate_schedule}; drop it or change the schedule."
                    )


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

    def validate(self):
        """Raise UsageError for values that cannot work, and for --fine_tune_* flags
        given without --fine_tune_steps."""
        check_numbers(self)
        if self.fine_tune_steps < 0:
            raise UsageError(f"--fine_tune_steps={self.fine_tune_steps} must be 0 (off) or positive.")
        if not self.fine_tune_steps:
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if field.name != "fine_tune_steps" and value != field.default:
                    raise UsageError(
                        f"--{field.name}={value} applies only to fine-tuning; "
                        "set --fine_tune_steps to fine-tune, or drop it."
                    )
            return
        check_positive(self, ("fine_tune_batch_size", "fine_tune_eval_interval"))
        if self.fine_tune_learning_rate is not None and self.fine_tune_learning_rate <= 0:
            raise UsageError(
                f"--fine_tune_learning_rate={self.fine_tune_learning_rate} must be positive "
                "(or unset: --learning_rate / 100)."
            )
        if self.fine_tune_optimizer not in final_layer.OPTIMIZERS:
            raise UsageError(
                f"--fine_tune_optimizer={self.fine_tune_optimizer} must be one of "
                f"{', '.join(final_layer.OPTIMIZERS)}."
            )


MAX_TUNE_TRIALS = 1000  # more trials than this is a typo, not a plan
MAX_TUNE_FOLDS = 20


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The search over the final layer's settings before training (retrain_suite.tuning)."""

    tune_trials: int = 0  # trials, the flags' own setting (trial 0) included; 0: no tuning
    tune_seconds: Optional[float] = None  # budget for the whole search; None: no time limit
    tune_folds: int = 5  # cross-validation folds over training + validation images

    @property
    def on(self):
        return bool(self.tune_trials) or self.tune_seconds is not None

    def validate(self):
        """Raise UsageError for a budget that cannot work, and for --tune_folds without tuning."""
        check_numbers(self)
        if not 0 <= self.tune_trials <= MAX_TUNE_TRIALS or self.tune_trials == 1:
            raise UsageError(f"--tune_trials={self.tune_trials} must be 0 (no tuning) or 2 to "
                             f"{MAX_TUNE_TRIALS}: trial 0 is the flags' own setting, so one trial "
                             "compares nothing.")
        if self.tune_seconds is not None and self.tune_seconds <= 0:
            raise UsageError(f"--tune_seconds={self.tune_seconds} must be a positive number of "
                             "seconds (or left out: no time limit).")
        if not self.on and self.tune_folds != TuningConfig.tune_folds:
            raise UsageError(f"--tune_folds={self.tune_folds} applies only to tuning; set "
                             "--tune_trials or --tune_seconds, or drop it.")
        if not 2 <= self.tune_folds <= MAX_TUNE_FOLDS:
            raise UsageError(f"--tune_folds={self.tune_folds} must be between 2 and {MAX_TUNE_FOLDS}.")


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

    def validate(self):
        """Raise UsageError for a distortion outside its range."""
        check_numbers(self)
        for name, low, high in (("random_crop", 0, 100), ("random_scale", 0, 100),
                                ("random_brightness", 0, 99), ("random_rotation", 0, 180),
                                ("random_hue", 0, 0.5), ("random_saturation", 0, 1)):
            if not low <= getattr(self, name) <= high:
                raise UsageError(f"--{name}={getattr(self, name)} must be between {low} and {high}.")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """What is measured during and after training."""

    eval_step_interval: int = 10  # steps between evaluations
    validation_batch_size: int = 100  # sampled per evaluation; -1: all
    test_batch_size: int = -1  # sampled for the final test accuracy; -1: all
    print_misclassified_test_images: bool = False
    eval_report: str = ""  # JSON report path; "": none
    assert_accuracy_at_least: Optional[float] = None  # fraction in [0, 1]

    def validate(self):
        """Raise UsageError for values that cannot work."""
        check_numbers(self)
        check_positive(self, ("eval_step_interval",))
        for name in ("validation_batch_size", "test_batch_size"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                raise UsageError(f"--{name}={getattr(self, name)} must be positive, or -1 for all.")
        threshold = self.assert_accuracy_at_least
        if threshold is not None and not 0 <= threshold <= 1:
            raise UsageError(
                f"--assert_accuracy_at_least={threshold} must be a fraction in [0, 1] (0.9 for 90%)."
            )


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What the run writes (where it may write them: output_paths)."""

    output_graph: str = "/tmp/output_graph.pb"
    output_labels: str = "/tmp/output_labels.txt"
    final_tensor_name: str = "final_result"
    saved_model_dir: str = ""  # "": no SavedModel
    tflite_output_file: str = ""  # "": no TFLite model
    tflite_quantization: str = "none"  # one of tflite.QUANTIZATIONS
    onnx_output_file: str = ""  # "": no ONNX model (needs the [onnx] extra)
    intermediate_output_graphs_dir: str = "/tmp/intermediate_graph/"
    intermediate_store_frequency: int = 0  # steps; 0: off
    checkpoint_path: str = "/tmp/_retrain_checkpoint"
    summaries_dir: str = "/tmp/retrain_logs"
    # The report page's folder (report.html, results.csv, pictures); "": no report page.
    report_dir: str = "/tmp/retrain_report"

    def validate(self):
        """Raise UsageError for values that cannot work (whether the final tensor's name is
        free in the graphs is checked later, by job.check_names_in_graphs)."""
        check_numbers(self)
        if self.report_dir.rstrip("/").lower().endswith((".html", ".htm")):
            # A folder called report.html holding report.html is never what was meant.
            raise UsageError(
                f"--report_dir={self.report_dir} names the report's folder, not the page: the "
                "page is written as report.html inside it; e.g. --report_dir=/tmp/retrain_report."
            )
        if not VALID_OP_NAME.match(self.final_tensor_name):
            raise UsageError(
                f"--final_tensor_name={self.final_tensor_name!r} is not a TensorFlow op name: "
                "letters, digits and _ . - / \\ >, starting with a letter, digit or '.'; "
                "e.g. final_result."
            )
        if self.intermediate_store_frequency < 0:
            raise UsageError("--intermediate_store_frequency must be 0 (off) or positive.")
        quantization = self.tflite_quantization
        if quantization not in tflite.QUANTIZATIONS:
            raise UsageError(
                f"--tflite_quantization={quantization} must be one of "
                f"{', '.join(tflite.QUANTIZATIONS)}."
            )
        if quantization != "none" and not self.tflite_output_file:
            raise UsageError(
                f"--tflite_quantization={quantization} needs --tflite_output_file (where to write it)."
            )
        if self.onnx_output_file and onnx_model.missing(onnx_export.EXTRA):
            raise UsageError("--onnx_output_file needs tf2onnx and onnxruntime: "
                             f"{onnx_export.INSTALL_HINT}")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """Everything a retraining run needs, one section per concern."""

    data: DataConfig = DataConfig()
    module: ModuleConfig = ModuleConfig()
    training: TrainingConfig = TrainingConfig()
    fine_tuning: FineTuningConfig = FineTuningConfig()
    tuning: TuningConfig = TuningConfig()
    distortions: DistortionConfig = DistortionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    outputs: OutputConfig = OutputConfig()
    multi_label: multi_label_options.MultiLabelConfig = multi_label_options.MultiLabelConfig()

    def validate(self):
        """Raise a SuiteError, with the fix in one line, for config that cannot work:
        each section's own checks, then those between sections."""
        for field in dataclasses.fields(self):
            getattr(self, field.name).validate()
        if self.multi_label.multi_label:
            multi_label_options.check_with_other_flags(self)
        sampling = self.training.sampling
        if distortions_from(self).any() and sampling == "uniform":
            raise UsageError(
                "--sampling=uniform works on cached bottlenecks, and distortions train from "
                "images; use --class_weighting=balanced for small classes instead."
            )
        if self.fine_tuning.fine_tune_steps and sampling == "uniform":
            raise UsageError(
                "--sampling=uniform works on cached bottlenecks, and fine-tuning trains from "
                "images; use --class_weighting=balanced for small classes instead."
            )
        if self.tuning.on and distortions_from(self).any():
            raise UsageError(
                "--tune_trials and --tune_seconds compare settings on cached bottlenecks, and "
                "distortions train from images; tune without distortions, or drop the tuning flags."
            )
        needing = needs_vectors_in_memory(self)
        if self.module.stream_bottlenecks and needing:
            raise UsageError(
                f"--stream_bottlenecks cannot be used with {needing}, which needs every "
                "bottleneck vector in memory; drop one of them.")
        if self.fine_tuning.fine_tune_steps and self.data.tfrecord_dir:
            raise UsageError(
                "--fine_tune_steps reads training images by position, which TFRecord files do "
                "not allow; fine-tune from --image_dir instead."
            )

    def with_seed(self, seed):
        """A copy with training.random_seed set."""
        return dataclasses.replace(
            self, training=dataclasses.replace(self.training, random_seed=seed)
        )


_SECTION_CLASSES = {field.name: type(field.default) for field in dataclasses.fields(RetrainConfig)}


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
