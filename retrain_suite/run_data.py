"""The run as named data: what every stage after the bottlenecks reads.

A run goes one way: scan (a dataset.Dataset and its image source) -> the
bottleneck vectors -> `prepare` -> a PreparedRun -> train -> export -> check ->
report. `prepare` is the one place where what the bottleneck pass learnt (an
image that cannot be decoded) is settled: the PreparedRun holds only usable
images, so no later stage looks back at the scan.

Shapes: n images in a set, D values in a bottleneck vector, C classes.
"""

import dataclasses
from typing import Optional

import numpy as np

from retrain_suite import dataset as dataset_lib
from retrain_suite import final_layer, streamed_batches


@dataclasses.dataclass(frozen=True)
class Split:
    """One set of the run (training, validation or testing), in a canonical order.

    The order is (class index, relative path), so the same images give the same
    arrays, and so the same training, whether they came from a folder or from
    TFRecords.
    """

    name: str  # one of dataset.SPLITS
    images: tuple  # dataset.Image each, in the canonical order
    labels: np.ndarray  # int64 [n]: each image's class index
    # float32 [n, D]: each image's bottleneck vector. In memory (an ndarray), or
    # streamed: a packed_store.StoreVectors, read row by row from the packed store
    # (streamed_batches.is_streamed tells which; streamed_batches.subset takes rows).
    bottlenecks: np.ndarray
    rows: np.ndarray  # int64 [n]: each image's index in the run's image source
    # Multi-label runs only: float32 [n, C], 1 where the image has the class, else 0.
    targets: Optional[np.ndarray] = None

    def __len__(self):
        return len(self.images)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """The kept model's answers on one set, or on a sample of it."""

    positions: np.ndarray  # int64 [m]: which of the set's images, as indices into Split.images
    classes: np.ndarray  # int64 [m]: the predicted class of each
    confidences: np.ndarray  # float32 [m]: the probability given to that predicted class

    def truth(self, split):
        """int64 [m]: the true class of each predicted image of `split`."""
        return split.labels[self.positions]


@dataclasses.dataclass(frozen=True)
class PreparedRun:
    """The images, their sets and bottlenecks, and how to read the images again.

    Built once by `prepare`, after the bottlenecks exist, with the images that
    could not be used already gone.
    """

    dataset: dataset_lib.Dataset  # the usable images only; labels are the class names
    source: object  # images.pipelines.ImageFiles or TFRecordImages: the run's images by row
    training: Split
    validation: Split
    testing: Split
    contents: dict  # relative path -> SHA-1 hex of the image's bytes
    input_size: tuple  # (height, width) in pixels: the module's input
    max_image_pixels: int  # images larger than this are refused when read again
    # {row: uint8 [height, width, 3]}: images decoded for display (evaluation_pictures.
    # load_display_images), kept so that TensorBoard's grid and the report page's
    # thumbnails of the same mistakes decode them once.
    displayed: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # {row: float32 [height, width, 3]}: images decoded by the bottleneck pass and kept for
    # a later stage (the exported files' check, int8 calibration: checked_images), which
    # then need not decode them again; emptied once those stages are done.
    decoded: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def class_names(self):
        return self.dataset.labels

    @property
    def class_count(self):
        return len(self.dataset.labels)

    @property
    def multi_label(self):
        """Whether images have label sets (Split.targets) instead of one class each."""
        return self.dataset.label_sets is not None

    @property
    def dimension(self):
        """D, the number of values in a bottleneck vector."""
        return int(self.training.bottlenecks.shape[1])

    def split(self, name):
        """The Split called `name` (one of dataset.SPLITS)."""
        return {"training": self.training, "validation": self.validation,
                "testing": self.testing}[name]

    def image_batches(self, rows, batch_size):
        """A tf.data pipeline of the source's images at `rows`, decoded and resized to
        the module's input: elements (index, SHA-1, float32 [B, height, width, 3])."""
        height, width = self.input_size
        return self.source.batches(rows, height, width, batch_size, self.max_image_pixels)


def prepare(dataset, source, bottlenecks, max_image_pixels):
    """The PreparedRun of a scanned dataset once its bottlenecks are computed.

    dataset: the scan, image i of it at row i of `source` and of `bottlenecks`
    (a compute.Bottlenecks, whose `skipped` images are dropped here: a class
    left without images is no longer a class).
    """
    row_of = {image.path: n for n, image in enumerate(dataset.images)}
    if bottlenecks.skipped:
        dataset = dataset.without(dataset.images[i].path for i in bottlenecks.skipped)
    splits = {}
    for name in dataset_lib.SPLITS:
        images, rows = split_rows(dataset, name, row_of)
        splits[name] = Split(
            name=name, images=images,
            labels=np.array([image.label_index for image in images], np.int64),
            bottlenecks=vectors_of(bottlenecks.vectors, rows),
            rows=rows, targets=multi_hot(dataset, images),
        )
    return PreparedRun(
        dataset=dataset, source=source, **splits,
        contents={image.path: bottlenecks.contents[row_of[image.path]] for image in dataset.images},
        input_size=(bottlenecks.height, bottlenecks.width), max_image_pixels=max_image_pixels,
        decoded=dict(bottlenecks.pixels),
    )


def split_rows(dataset, name, row_of=None):
    """The images of split `name` of dataset in a Split's order, and their rows. row_of:
    {relative path: row}; default: the image's index in dataset. -> (images, int64 [n])."""
    if row_of is None:
        row_of = {image.path: n for n, image in enumerate(dataset.images)}
    images = tuple(sorted(dataset.in_split(name), key=lambda i: (i.label_index, i.path)))
    return images, np.array([row_of[image.path] for image in images], np.int64)


def vectors_of(vectors, rows):
    """The rows (int64 [n]) of a compute.Bottlenecks' vectors: float32 [n, D] in memory,
    or, streamed, a StoreVectors over their positions (nothing read)."""
    if streamed_batches.is_streamed(vectors):
        return streamed_batches.subset(vectors, rows)
    return vectors[rows].reshape(len(rows), vectors.shape[1])


def multi_hot(dataset, images):
    """float32 [n, C] label sets of `images` in a multi-label dataset; None otherwise."""
    if dataset.label_sets is None:
        return None
    index = {label: n for n, label in enumerate(dataset.labels)}
    targets = np.zeros([len(images), len(dataset.labels)], np.float32)
    for row, image in enumerate(images):
        targets[row, [index[label] for label in dataset.label_sets[image.path]]] = 1.0
    return targets


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """What training settled: the classifier that is reported, exported and checked."""

    spec: final_layer.LayerSpec  # the new layer's shape
    # training.TrainingResult: the kept layer, the steps, and the predictions on
    # the validation and test sets. After fine-tuning, the kept whole model's
    # (measured on images: the cached bottlenecks no longer describe a tuned module).
    result: object
    tuned: object = None  # fine_tuning.FineTuningResult, or None without fine-tuning
    search: object = None  # tuning.TuningResult, or None without --tune_trials/--tune_seconds

    @property
    def module_values(self):
        """The fine-tuned module's values for export.frozen_graph, or None: the module as loaded."""
        return self.tuned.module_values if self.tuned is not None else None


def images_only(source, labels, class_names, input_size, max_image_pixels):
    """A PreparedRun whose training set is every image of `source` (labels: int [n], one
    per image), with no validation or test images and no bottlenecks (D=0): for what
    reads the images themselves (fine-tuning batches, calibration) outside a run."""
    labels = np.asarray(labels, np.int64)
    dataset = dataset_lib.Dataset("", list(class_names), [])

    def split(name, count):
        return Split(name, (None,) * count, labels[:count], np.zeros([count, 0], np.float32),
                     np.arange(count, dtype=np.int64))

    return PreparedRun(dataset=dataset, source=source, training=split("training", len(labels)),
                       validation=split("validation", 0), testing=split("testing", 0), contents={},
                       input_size=tuple(input_size), max_image_pixels=max_image_pixels)
