"""checked_images: the images the stages after training need, kept from the bottleneck
pass or decoded ahead, handed over in the stage's order."""

import os

import numpy as np
import pytest
from helpers import make_dataset, run_of_images

from retrain_suite import checked_images, run_data
from retrain_suite import dataset as dataset_lib
from retrain_suite.images import pipelines as image_pipelines


@pytest.fixture
def run(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=5)
    paths = sorted(os.path.join(folder, name)
                   for folder, _, names in os.walk(image_dir) for name in names)
    return run_of_images(image_pipelines.ImageFiles(paths), list(range(len(paths))),
                         ["blue", "green", "red"], (32, 32))


def decoded_rows(monkeypatch):
    """-> the list of rows run.image_batches is asked to decode, filled as it is."""
    asked = []
    batches = run_data.PreparedRun.image_batches

    def recording(self, rows, batch_size):
        asked.extend(list(rows))
        return batches(self, rows, batch_size)

    monkeypatch.setattr(run_data.PreparedRun, "image_batches", recording)
    return asked


def every_image(run, rows):
    return {int(i): image for indices, _, images in
            run.image_batches(rows, 4).as_numpy_iterator() for i, image in zip(indices, images)}


def test_kept_images_are_not_decoded_again_and_the_batches_keep_the_stages_order(
        run, monkeypatch):
    rows = [9, 2, 14, 5, 0, 11, 7]  # the order the stage takes them in
    expected = every_image(run, rows)
    run.decoded.update({row: expected[row] for row in (2, 5, 11)})
    asked = decoded_rows(monkeypatch)
    ahead = checked_images.DecodedAhead(run, rows, 3)
    ahead.start()
    batches = list(ahead.batches())
    assert sorted(asked) == [0, 7, 9, 14]  # only those not kept
    assert [b[0].tolist() for b in batches] == [[9, 2, 14], [5, 0, 11], [7]]
    for indices, pixels in batches:
        for row, image in zip(indices.tolist(), pixels):
            np.testing.assert_array_equal(image, expected[row])


def test_every_image_kept_starts_no_thread_and_kept_only_decodes_nothing_else(run, monkeypatch):
    rows = [1, 4, 6]
    expected = every_image(run, rows)
    run.decoded.update(expected)
    asked = decoded_rows(monkeypatch)
    ahead = checked_images.DecodedAhead(run, rows, 2)
    ahead.start(kept_only=True)
    assert ahead._thread is None
    assert [b[0].tolist() for b in ahead.batches()] == [[1, 4], [6]] and asked == []
    # One row not kept: kept_only leaves the stage to decode them as it goes.
    partly = checked_images.DecodedAhead(run, [1, 4, 8], 2)
    partly.start(kept_only=True)
    assert partly.batches() is None and asked == []


def test_wanted_rows_are_the_test_images_and_the_calibration_sample_when_they_fit(
        tmp_path, monkeypatch):
    image_dir = make_dataset(tmp_path / "data", per_class=40)
    dataset = dataset_lib.build_dataset(image_dir, 10, 10)
    _, testing = run_data.split_rows(dataset, "testing")
    _, training = run_data.split_rows(dataset, "training")
    assert len(testing) and len(training) > 100
    wanted = checked_images.wanted_rows(dataset, (32, 32), 7, calibrated=False)
    assert wanted == sorted(testing.tolist())
    calibrated = checked_images.wanted_rows(dataset, (32, 32), 7, calibrated=True)
    sample = set(calibrated) - set(testing.tolist())
    assert len(sample) == 100 and sample <= set(training.tolist())
    # The rows tflite chooses for calibration once the run is prepared.
    from retrain_suite import tflite
    assert sample == set(tflite.calibration_rows_of(training, 7))
    monkeypatch.setattr(checked_images, "MAX_BYTES", (len(calibrated) - 1) * 32 * 32 * 3 * 4)
    assert checked_images.wanted_rows(dataset, (32, 32), 7, calibrated=True) == []


def test_a_run_keeps_the_pixels_of_its_checked_images_but_not_when_fine_tuning(
        tmp_path, tiny_module, monkeypatch):
    from helpers import retrain_settings

    from retrain_suite import config as config_lib
    from retrain_suite import job
    from retrain_suite.bottleneck import module as module_lib

    image_dir = make_dataset(tmp_path / "data", per_class=10)
    dataset = dataset_lib.build_dataset(image_dir, 10, 20)
    _, testing = run_data.split_rows(dataset, "testing")
    settings = retrain_settings(tmp_path, image_dir, tiny_module, testing_percentage=20)
    config = config_lib.from_flat(settings)
    monkeypatch.setattr(module_lib, "_shapes", {})  # none remembered by earlier tests
    assert job.kept_rows(config, dataset) == ()  # the module's input size not known yet
    module_lib.remember_shape(tiny_module, config.module.image_size, (32, 32), 64)
    assert job.kept_rows(config, dataset) == sorted(testing.tolist())
    tuned = config_lib.from_flat(dict(settings, fine_tune_steps=5))
    assert job.kept_rows(tuned, dataset) == ()
    # The memory check counts them.
    from retrain_suite import vector_memory
    counted = []
    monkeypatch.setattr(vector_memory, "choose", lambda *args: counted.append(args[-1]))
    job.scan_and_check(config)
    assert counted == [len(testing)]
