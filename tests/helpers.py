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
    """A run_data.PreparedRun whose training set is `source`'s images at training_rows
    (labels int [n], class 0 if not given), with no validation or test images and no
    bottlenecks: for the stages that read images again (TFLite calibration, distortions)."""
    count = len(training_rows)
    labels = np.zeros(count, np.int64) if labels is None else np.asarray(labels, np.int64)
    empty = (np.zeros([0, 1], np.float32), np.zeros([0], np.int64), [])
    run = prepared_run({"training": (np.zeros([count, 1], np.float32), labels, []),
                        "validation": empty, "testing": empty},
                       len(class_names), source=source, input_size=input_size)
    training = run_data.Split("training", run.training.images, labels, run.training.bottlenecks,
                              np.asarray(training_rows, np.int64))
    dataset = dataset_lib.Dataset("", list(class_names), [])
    return dataclasses.replace(run, training=training, dataset=dataset)
