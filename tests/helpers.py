"""Helpers shared by the test files: import them from here (pytest advises against
importing from conftest, which holds only fixtures and the session's set-up)."""

import dataclasses

import numpy as np

from retrain_suite import dataset as dataset_lib
from retrain_suite import run_data


def prepared_run(arrays, class_count, source=None, input_size=(8, 8), max_image_pixels=10**8):
    """A run_data.PreparedRun of in-memory sets, for the stages after the bottlenecks.

    arrays: {split: (vectors float32 [n, D], labels int64 [n], images)}, images a
    list of dataset.Image (or Nones, when nothing reads them). Rows number the
    images of the three sets one after the other, in SPLITS order: the order of
    `source`'s images, if one is given.
    """
    splits, first = {}, 0
    every = []
    for name in dataset_lib.SPLITS:
        vectors, labels, images = arrays[name]
        rows = np.arange(first, first + len(labels), dtype=np.int64)
        first += len(labels)
        images = tuple(images) if len(images) == len(labels) else (None,) * len(labels)
        every.extend(i for i in images if i is not None)
        splits[name] = run_data.Split(name, images, np.asarray(labels, np.int64),
                                      np.asarray(vectors, np.float32), rows)
    dataset = dataset_lib.Dataset("", [f"class_{n}" for n in range(class_count)], every)
    return run_data.PreparedRun(dataset=dataset, source=source, **splits, contents={},
                                input_size=input_size, max_image_pixels=max_image_pixels)


def run_of_images(source, training_rows, class_names, input_size, labels=None):
    """run_data.images_only over `source`'s images at training_rows (labels int [n],
    class 0 if not given)."""
    labels = np.zeros(len(training_rows), np.int64) if labels is None else labels
    run = run_data.images_only(source, labels, class_names, input_size, 10**8)
    training = dataclasses.replace(run.training, rows=np.asarray(training_rows, np.int64))
    return dataclasses.replace(run, training=training)


# An evaluation of four classes to check by hand (test_evaluation*.py).
LABELS = ["a", "b", "c", "d"]
# Ten images of a, b and c (none of d); rows true, columns predicted:
#        a  b  c  d
#   a  [ 2, 1, 1, 0 ]
#   b  [ 1, 1, 0, 0 ]
#   c  [ 0, 1, 3, 0 ]
#   d  [ 0, 0, 0, 0 ]
TRUTH = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTED = [0, 0, 1, 2, 1, 0, 2, 2, 2, 1]


def many_classes(class_count=10_000, per_class=3, seed=0):
    """Synthetic predictions: 70% right, the rest a random class; and class 5's extra
    20 images all taken for class 9. -> (truth, predictions, labels)."""
    rng = np.random.RandomState(seed)
    truth = np.repeat(np.arange(class_count), per_class)
    predictions = np.where(rng.rand(len(truth)) < 0.7, truth,
                           rng.randint(0, class_count, len(truth)))
    truth = np.concatenate([truth, np.full(20, 5)])
    predictions = np.concatenate([predictions, np.full(20, 9)])
    return truth, predictions, [f"class_{i:05d}" for i in range(class_count)]
