"""retrain_suite.run_data: the PreparedRun is built once, after the bottlenecks, with
the images that could not be used already gone, its sets in one canonical order."""

import numpy as np

from retrain_suite import dataset as dataset_lib
from retrain_suite import run_data
from retrain_suite.bottleneck import compute


def scanned(tmp_path):
    """A dataset of 3 classes in a made-up order (the scan's), and its bottlenecks:
    image i's vector is [i, i] and its content 'c<i>'."""
    # Folder names that sort the other way round from their classes (as TFRecords'
    # paths may): the order is by class first.
    specs = [("x/2.jpg", "b", 1, "training"), ("y/1.jpg", "a", 0, "testing"),
             ("y/0.jpg", "a", 0, "training"), ("w/5.jpg", "c", 2, "validation"),
             ("w/4.jpg", "c", 2, "training"), ("x/3.jpg", "b", 1, "validation")]
    images = [dataset_lib.Image(path, label, index, split) for path, label, index, split in specs]
    dataset = dataset_lib.Dataset(str(tmp_path), ["a", "b", "c"], images)
    vectors = np.repeat(np.arange(len(images), dtype=np.float32)[:, None], 2, axis=1)
    bottlenecks = compute.Bottlenecks(
        vectors=vectors, skipped={}, computed=len(images), reused=0, height=8, width=6,
        module_key="k", contents=[f"c{i}" for i in range(len(images))])
    return dataset, bottlenecks


def test_each_split_holds_its_images_in_class_then_path_order_with_their_rows(tmp_path):
    dataset, bottlenecks = scanned(tmp_path)
    run = run_data.prepare(dataset, "source", bottlenecks, 1000)
    training = run.split("training")
    assert [i.path for i in training.images] == ["y/0.jpg", "x/2.jpg", "w/4.jpg"]
    np.testing.assert_array_equal(training.labels, [0, 1, 2])
    np.testing.assert_array_equal(training.rows, [2, 0, 4])
    # The vectors are the rows' vectors: the store is read through the rows.
    np.testing.assert_array_equal(training.bottlenecks[:, 0], [2, 0, 4])
    assert training.bottlenecks.dtype == np.float32 and run.dimension == 2
    assert [len(run.split(s)) for s in dataset_lib.SPLITS] == [3, 2, 1]
    assert run.input_size == (8, 6) and run.class_names == ["a", "b", "c"] and run.class_count == 3
    assert run.contents["w/5.jpg"] == "c3"


def test_images_that_could_not_be_used_are_gone_and_an_emptied_class_with_them(tmp_path):
    dataset, bottlenecks = scanned(tmp_path)
    # Both of class b's images could not be decoded: b is no longer a class, and c,
    # the last class, becomes class 1.
    skipped = dict(bottlenecks.__dict__, skipped={0: "not an image", 5: "not an image"})
    run = run_data.prepare(dataset, "source", compute.Bottlenecks(**skipped), 1000)
    assert run.class_names == ["a", "c"]
    assert [i.path for i in run.training.images] == ["y/0.jpg", "w/4.jpg"]
    np.testing.assert_array_equal(run.training.labels, [0, 1])
    np.testing.assert_array_equal(run.training.rows, [2, 4])
    assert [i.path for i in run.validation.images] == ["w/5.jpg"]
    assert "x/2.jpg" not in run.contents and len(run.dataset.images) == 4


def test_predictions_read_their_truth_through_positions():
    split = run_data.Split("testing", (None,) * 4, np.array([0, 1, 1, 2]),
                           np.zeros([4, 1], np.float32), np.arange(4))
    predicted = run_data.Predictions(np.array([3, 1]), np.array([2, 0]),
                                     np.array([0.9, 0.6], np.float32))
    np.testing.assert_array_equal(predicted.truth(split), [2, 1])


def test_image_batches_read_the_source_at_the_modules_size_and_the_runs_pixel_limit(tmp_path):
    calls = []

    class Source:
        def batches(self, *args):
            calls.append(args)
            return "pipeline"

    dataset, bottlenecks = scanned(tmp_path)
    run = run_data.prepare(dataset, Source(), bottlenecks, 1234)
    assert run.image_batches([4, 2], 16) == "pipeline"
    assert calls == [([4, 2], 8, 6, 16, 1234)]
