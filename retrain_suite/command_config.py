"""The typed configurations of pre_input.py, python -m bottleneck and label_image.py.

As config.RetrainConfig is retrain.py's: frozen dataclasses whose field names
are the command's flag names, from whose defaults the flags take theirs
(fields the commands share with retrain.py default to its sections' values).
`validate()` raises config.UsageError, with the fix in one line, for flag
values that cannot work, before any work is done; checks that need the files
(is the graph safe? is the output folder apart from the images?) run later.
"""

import dataclasses
import math
from typing import Optional

from retrain_suite import config as config_lib
from retrain_suite import onnx_model, tflite
from retrain_suite.dataset import split as split_lib

UsageError = config_lib.UsageError  # the one class of flag problems, every command's

_DATA = config_lib.DataConfig
_MODULE = config_lib.ModuleConfig


def default(config_class, name):
    """The default of config_class's field called name, for the command line's flag."""
    (field,) = [f for f in dataclasses.fields(config_class) if f.name == name]
    return field.default


@dataclasses.dataclass(frozen=True)
class PreInputConfig:
    """pre_input.py: check and split a dataset, writing the lists (and TFRecords)."""

    image_dir: Optional[str] = None  # required: one subfolder of images per class
    output_dir: Optional[str] = None  # required: where labels.txt and the lists go
    testing_percentage: float = _DATA.testing_percentage
    validation_percentage: float = _DATA.validation_percentage
    split_by: str = _DATA.split_by  # "path" or "content" (dataset.SPLIT_BY)
    max_image_pixels: int = _DATA.max_image_pixels  # width x height
    tfrecords: bool = False  # also write the images as TFRecord files
    images_per_shard: int = 1000  # with tfrecords: images per file before sharding

    def validate(self):
        """Raise UsageError, with the fix in one line, for flags that cannot work."""
        for name in ("image_dir", "output_dir"):
            if not getattr(self, name):
                raise UsageError(f"--{name} is required (see --help).")
        config_lib.check_positive(self, ("images_per_shard", "max_image_pixels"))


@dataclasses.dataclass(frozen=True)
class BottleneckConfig:
    """python -m bottleneck: fill the bottleneck cache for every image of a folder, and/or
    compact the module's packed store."""

    image_dir: Optional[str] = None  # required: one subfolder of images per class
    tfhub_module: str = _MODULE.tfhub_module  # TF Hub handle or local SavedModel folder
    image_size: int = _MODULE.image_size  # when the module does not fix it
    bottleneck_dir: str = _MODULE.bottleneck_dir
    mixed_precision: bool = _MODULE.mixed_precision  # bfloat16 (CPU) or float16 (GPU)
    batch_size: Optional[int] = None  # images per forward pass; None: measured
    max_image_pixels: int = _DATA.max_image_pixels  # width x height
    bottleneck_store: str = _MODULE.bottleneck_store  # "files" or "packed"
    compact: bool = False  # rewrite the module's small packed shards into few (after a fill)
    # Beam (bottleneck.beam_fill): a runner name runs the fill as a Beam pipeline.
    runner: Optional[str] = None
    shard_entries: Optional[int] = None  # with a runner: most entries per shard
    split_lists_dir: Optional[str] = None  # with a runner: write the split lists there
    # With split_lists_dir; None: _DATA's defaults.
    validation_percentage: Optional[float] = None
    testing_percentage: Optional[float] = None
    split_by: Optional[str] = None

    def validate(self):
        """Raise UsageError, with the fix in one line, for flags that cannot work."""
        if not self.image_dir and not self.compact:
            raise UsageError("--image_dir is required: the folder with one subfolder per class. "
                             "(--compact alone compacts the packed store without it.)")
        config_lib.check_positive(self, ("batch_size", "image_size", "max_image_pixels",
                                         "shard_entries"))
        config_lib.check_store(self.bottleneck_store)
        if self.runner == "":
            raise UsageError("--runner is empty; give a Beam runner's name (e.g. FnApiRunner).")
        if self.runner is not None and not self.image_dir:
            raise UsageError("--runner fills the cache from --image_dir: add it.")
        for name in ("shard_entries", "split_lists_dir"):
            if getattr(self, name) is not None and self.runner is None:
                raise UsageError(f"--{name} is for a Beam pipeline: add --runner (e.g. "
                                 "--runner=FnApiRunner).")
        for name in ("validation_percentage", "testing_percentage", "split_by"):
            if getattr(self, name) is not None and self.split_lists_dir is None:
                raise UsageError(f"--{name} sets the split lists: add --split_lists_dir.")
        if self.split_lists_dir is not None:
            split_lib.check_percentages(*self.split_percentages())
            split_lib.check_split_by(self.split_by or _DATA.split_by)

    def split_percentages(self):
        """(validation, testing) percentages of the split lists, the defaults filled in."""
        return (_DATA.validation_percentage if self.validation_percentage is None
                else self.validation_percentage,
                _DATA.testing_percentage if self.testing_percentage is None
                else self.testing_percentage)


@dataclasses.dataclass(frozen=True)
class LabelImageConfig:
    """label_image.py: classify images with a frozen graph, a TFLite or an ONNX model."""

    image: tuple = ()  # image files or folders (any iterable; held as a tuple)
    graph: Optional[str] = None  # frozen graph (.pb), TFLite or ONNX model
    labels: Optional[str] = None  # labels file; for a TFLite or ONNX model, default: its own
    input_layer: str = "Placeholder"  # the graph's image input
    output_layer: str = "final_result"  # the graph's probabilities
    input_height: Optional[int] = None  # pixels; None: from the graph
    input_width: Optional[int] = None  # pixels; None: from the graph
    input_mean: float = 0  # subtracted from 0-255 pixel values
    input_std: float = 255  # divides them after the mean
    top_k: int = 5  # labels printed per image
    batch_size: Optional[int] = None  # images per forward pass; None: measured
    output_format: str = "text"  # "text" or "json"
    max_image_pixels: int = _DATA.max_image_pixels  # width x height
    allow_unsafe_ops: bool = False  # run a graph holding ops off graph_checks.SAFE_OPS

    def __post_init__(self):
        object.__setattr__(self, "image", tuple(self.image))

    def validate(self):
        """Raise UsageError, with the fix in one line, for flags that cannot work.

        Reads the first bytes of the graph file, when images and labels
        alone do not settle it: a TFLite or ONNX model needs no labels file.
        """
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch_size={self.batch_size} must be positive (or left out to "
                             "measure the fastest).")
        for name in ("top_k", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name}={getattr(self, name)} must be at least 1.")
        for name in ("input_height", "input_width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name}={value} must be positive (or left out: from the graph).")
        for name in ("input_mean", "input_std"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"--{name}={getattr(self, name)} must be a finite number.")
        if self.input_std == 0:
            raise UsageError("--input_std=0 would divide every pixel by zero; retrain.py's "
                             "graphs use 255.")
        if not self.image or not self.graph or not (self.labels or self.has_labels_inside()):
            raise UsageError("give an image, a graph and a labels file, or an image and a "
                             "TFLite or ONNX model (see --help).")

    def is_tflite(self):
        """Whether graph names a TFLite model (by its content, not its name)."""
        return bool(self.graph) and tflite.is_tflite_file(self.graph)

    def is_onnx(self):
        """Whether graph names an ONNX model (by its content, not its name)."""
        return bool(self.graph) and onnx_model.is_onnx_file(self.graph)

    def has_labels_inside(self):
        """Whether graph names a model that can hold its labels (TFLite, ONNX)."""
        return self.is_tflite() or self.is_onnx()
