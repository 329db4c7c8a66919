"""Distortions: bounds of each, and a distorted run end to end."""

import glob
import os

import helpers
import numpy as np
import pytest
import tensorflow as tf
from helpers import retrain_settings, synthetic_image, write_image

from retrain_suite import command_config, job, training
from retrain_suite import config as config_lib
from retrain_suite.cli import label_image as label_image_cli
from retrain_suite.images import distortions as image_distortions
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.images.distortions import Distortions
from retrain_suite.images.pipelines import ImageBatchSpec

SIZE = 24


def base_image(seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(0.1, 0.45, (SIZE, SIZE, 3)), tf.float32)


def variants(distortions, count=12, image=None):
    image = base_image() if image is None else image
    return [image_distortions.distort(image, SIZE, SIZE, distortions, tf.constant([7, n])).numpy()
            for n in range(count)]


def test_flip_is_exact_mirror_or_nothing_and_both_happen():
    image = base_image().numpy()
    kinds = set()
    for out in variants(Distortions(flip_left_right=True), 16):
        if np.array_equal(out, image):
            kinds.add("same")
        elif np.array_equal(out, image[:, ::-1]):
            kinds.add("mirrored")
        else:
            raise AssertionError("neither the image nor its mirror")
    assert kinds == {"same", "mirrored"}


@pytest.mark.parametrize("distortions", [
    Distortions(crop=20), Distortions(scale=30), Distortions(crop=10, scale=25),
    Distortions(rotation=30), Distortions(crop=10, scale=10, rotation=10, brightness=10,
                                          flip_left_right=True, hue=0.1, saturation=0.5),
])
def test_distorted_images_keep_the_module_input_size_and_range(distortions):
    image = base_image().numpy()
    outs = variants(distortions, 6)
    for out in outs:
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert not all(np.array_equal(out, image) for out in outs)


def test_crop_only_cuts_a_window_of_the_enlarged_image():
    image = base_image()
    enlarged = tf.image.resize(image, [int(np.ceil(SIZE * 1.25 - 1e-3))] * 2).numpy()
    for out in variants(Distortions(crop=25), 6, image):
        found = any(
            np.allclose(enlarged[y:y + SIZE, x:x + SIZE], out, atol=1e-6)
            for y in range(enlarged.shape[0] - SIZE + 1) for x in range(enlarged.shape[1] - SIZE + 1)
        )
        assert found


def test_brightness_scales_all_pixels_by_one_factor_within_the_percentage():
    image = base_image().numpy()
    factors = []
    for out in variants(Distortions(brightness=20), 20):
        ratio = out / image
        assert np.allclose(ratio, ratio.flat[0], atol=1e-5)
        factors.append(ratio.flat[0])
    assert 0.8 - 1e-5 <= min(factors) < 1.0 < max(factors) <= 1.2 + 1e-5


def test_rotation_by_half_a_turn_is_exact_and_small_angles_stay_within_bounds():
    image = base_image().numpy()
    turned = image_distortions.rotate(tf.constant(image), tf.constant(np.pi)).numpy()
    np.testing.assert_allclose(turned, np.rot90(image, 2), atol=1e-4)
    same = image_distortions.rotate(tf.constant(image), tf.constant(0.0)).numpy()
    np.testing.assert_array_equal(same, image)


def test_saturation_leaves_grey_grey_and_hue_moves_within_its_bound():
    grey = tf.fill([SIZE, SIZE, 3], 0.4)
    for out in variants(Distortions(saturation=0.8), 4, grey):
        np.testing.assert_allclose(out, 0.4, atol=1e-5)
    red = tf.concat([tf.fill([SIZE, SIZE, 1], 0.8), tf.fill([SIZE, SIZE, 2], 0.2)], axis=2)
    hues = [tf.image.rgb_to_hsv(out).numpy()[0, 0, 0] for out in variants(Distortions(hue=0.1), 12, red)]
    distances = [min(h, 1 - h) for h in hues]  # red sits at hue 0 on the circle
    assert max(distances) <= 0.1 + 1e-4 and max(distances) > 0.01


def test_same_seed_same_variant():
    d = Distortions(crop=10, scale=10, rotation=10, brightness=10, flip_left_right=True)
    a = image_distortions.distort(base_image(), SIZE, SIZE, d, tf.constant([3, 4])).numpy()
    b = image_distortions.distort(base_image(), SIZE, SIZE, d, tf.constant([3, 4])).numpy()
    c = image_distortions.distort(base_image(), SIZE, SIZE, d, tf.constant([3, 5])).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def training_graph_ops(summaries_dir):
    ops = set()
    for path in glob.glob(os.path.join(summaries_dir, "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if event.HasField("graph_def"):
                graph_def = tf.compat.v1.GraphDef.FromString(event.graph_def)
                ops |= {node.op for node in graph_def.node}
    return ops


def test_distorted_run_trains_exports_and_label_image_runs(dataset_dir, tiny_module, tmp_path,
                                                           caplog):
    caplog.set_level("INFO")
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, testing_percentage=30, how_many_training_steps=200,
        eval_step_interval=50, flip_left_right=True, random_crop=10, random_scale=10,
        random_brightness=10, random_rotation=10, random_hue=0.05, random_saturation=0.2,
        train_batch_size=16,
    )
    assert job.run_retraining(config_lib.from_flat(settings)) == 1.0
    assert "Distortions are on: every step decodes, distorts and runs the module on 16" in caplog.text
    assert "StatefulPartitionedCall" in training_graph_ops(settings["summaries_dir"])
    image = os.path.join(dataset_dir, "green", "img1.png")
    # What label_image.py classifies a frozen graph with, in this process.
    _, results, labels = label_image_cli.classify_with_graph(command_config.LabelImageConfig(
        image=(image,), graph=settings["output_graph"], labels=settings["output_labels"],
        top_k=1))
    assert [labels[c] for c in results[0].classes] == ["green"]


def test_without_distortions_training_reads_only_cached_bottlenecks(dataset_dir, tiny_module,
                                                                   tmp_path, caplog):
    caplog.set_level("INFO")
    settings = retrain_settings(tmp_path, dataset_dir, tiny_module, how_many_training_steps=20,
                                eval_step_interval=10)
    job.run_retraining(config_lib.from_flat(settings))
    ops = training_graph_ops(settings["summaries_dir"])
    assert "MatMul" in ops and "StatefulPartitionedCall" not in ops
    assert "Distortions are on" not in caplog.text


@pytest.mark.parametrize("override, message", [
    ({"random_rotation": 200}, "--random_rotation"),
    ({"random_hue": 0.7}, "--random_hue"),
    ({"random_saturation": 1.5}, "--random_saturation"),
    ({"random_brightness": 100}, "--random_brightness"),
    ({"random_crop": -1}, "--random_crop"),
    ({"flip_left_right": True, "sampling": "uniform"}, "--sampling=uniform"),
])
def test_unusable_distortion_flags_are_refused(dataset_dir, tiny_module, tmp_path, override,
                                               message):
    settings = retrain_settings(tmp_path, dataset_dir, tiny_module)
    settings.update(override)
    with pytest.raises(config_lib.UsageError, match=message):
        job.run_retraining(config_lib.from_flat(settings))


def three_images(folder):
    """Three small PNGs of different colours. -> image_pipelines.ImageFiles."""
    rng = np.random.RandomState(0)
    paths = []
    for n, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        paths.append(os.path.join(folder, f"img{n}.png"))
        write_image(paths[-1], synthetic_image(colour, "checker", 20, 26, rng), "PNG")
    return image_pipelines.ImageFiles(paths)


def variants_by_label(batches, count):
    """{label: [image, ...]} of the first count batches, in the order they came."""
    found = {}
    for images, labels in batches.take(count).as_numpy_iterator():
        for image, label in zip(images, labels):
            found.setdefault(int(label), []).append(image)
    return found


def assert_each_epoch_distorts_anew(found, epochs):
    """Each image came once per epoch, and no two of its variants are the same."""
    assert sorted(found) == [0, 1, 2]
    for label, images in found.items():
        assert len(images) == epochs, label
        for i in range(epochs):
            for j in range(i):
                same = np.array_equal(images[i], images[j])
                assert not same, f"image {label} got one distortion in epochs {j} and {i}"


DISTORTED = Distortions(crop=20, brightness=20)


def test_each_epoch_of_a_distorted_run_distorts_a_training_image_anew(tmp_path):
    # Each image has its own label, so the labels tell whose variant is whose.
    images = three_images(str(tmp_path))
    batches = image_pipelines.distorted_batches(
        images, [0, 1, 2], [0, 1, 2], ImageBatchSpec(SIZE, SIZE, 3, DISTORTED, seed=5))
    assert_each_epoch_distorts_anew(variants_by_label(batches, 4), 4)


def test_each_epoch_of_fine_tuning_distorts_a_training_image_anew(tmp_path):
    images = three_images(str(tmp_path))
    batches = image_pipelines.fine_tuning_batches(
        images, [0, 1, 2], [0, 1, 2], ImageBatchSpec(SIZE, SIZE, 3, DISTORTED, seed=5))
    assert_each_epoch_distorts_anew(variants_by_label(batches, 4), 4)


def test_training_on_distorted_images_sees_each_image_distorted_anew_each_epoch(
    tmp_path, tiny_module
):
    # The run's own wiring: job's batch source, and training's step loop,
    # which must not start the stream over (at an evaluation, say).
    images = three_images(str(tmp_path / "images"))
    settings = retrain_settings(
        tmp_path, str(tmp_path / "images"), tiny_module, random_crop=20, random_brightness=20,
        train_batch_size=3, how_many_training_steps=4, eval_step_interval=2,
    )
    config = config_lib.from_flat(settings)
    dimension = 64  # the tiny module's feature vector
    run = helpers.run_of_images(images, [0, 1, 2], ["a", "b", "c"], (32, 32), labels=[0, 1, 2])
    source = job.distorted_batch_source(config, run)
    seen = []

    def recording_source():
        features, labels, initializer = source()

        def record(features, labels):
            seen.append((features.copy(), labels.copy()))
            return features

        recorded = tf.numpy_function(record, [features, labels], tf.float32)
        recorded.set_shape(features.shape)
        return recorded, labels, initializer

    empty = (np.zeros([0, dimension], np.float32), np.zeros([0], np.int64), [])
    arrays = {"training": (np.zeros([3, dimension], np.float32), np.array([0, 1, 2]), []),
              "validation": empty, "testing": empty}
    training.train(helpers.prepared_run(arrays, 3), config.training, config.evaluation,
                   config.outputs, training.Hooks(batch_source=recording_source))
    found = {}
    for features, labels in seen:
        for vector, label in zip(features, labels):
            found.setdefault(int(label), []).append(vector)
    assert_each_epoch_distorts_anew(found, 4)
