"""images.pipelines: batching image files, leaving out the ones that cannot be used."""

import dataclasses

import numpy as np
import tensorflow as tf
from PIL import Image

from retrain_suite.images import distortions as image_distortions
from retrain_suite.images import pipelines as image_pipelines


def test_image_batches_yields_indices_and_skips_undecodable_files(tmp_path):
    colours = [(250, 0, 0), None, (0, 250, 0), "missing", (0, 0, 250), None, (250, 250, 0)]
    paths = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"{i}.png"
        if colour is None:
            path.write_bytes(b"definitely not an image")
        elif colour != "missing":
            Image.fromarray(np.full((9, 13, 3), colour, np.uint8)).save(path, "PNG")
        paths.append(str(path))

    indices, images = [], []
    for batch_indices, _, batch_images in image_pipelines.image_batches(paths, 5, 7, 2):
        assert batch_indices.dtype == tf.int64
        assert batch_images.dtype == tf.float32
        assert batch_images.shape[1:] == (5, 7, 3)
        assert len(batch_indices) <= 2
        indices.extend(batch_indices.numpy().tolist())
        images.extend(batch_images.numpy())

    assert indices == [0, 2, 4, 6]
    for index, image in zip(indices, images):
        np.testing.assert_allclose(image, np.broadcast_to(colours[index], (5, 7, 3)) / 255.0,
                                   atol=1e-5)


def test_image_pipelines_leave_tf_data_autotuning_off(tmp_path):
    """Their parallelism and buffers are fixed; autotuning's thread made a Session's close
    wait seconds for its sleep to end."""
    path = tmp_path / "a.png"
    Image.fromarray(np.full((9, 13, 3), 40, np.uint8)).save(path, "PNG")
    files = image_pipelines.ImageFiles([str(path)])
    spec = image_pipelines.ImageBatchSpec(5, 7, 2, image_distortions.Distortions(), seed=1)
    flipped = dataclasses.replace(spec, distortions=image_distortions.Distortions(
        flip_left_right=True))
    pipelines = {
        "image_batches": image_pipelines.image_batches([str(path)], 5, 7, 2),
        "distorted_batches": image_pipelines.distorted_batches(files, [0], [0], flipped),
        "fine_tuning_batches": image_pipelines.fine_tuning_batches(files, [0], [0], spec),
    }
    for name, dataset in pipelines.items():
        assert dataset.options().autotune.enabled is False, name
    assert tf.data.Dataset.range(1).options().autotune.enabled is not False  # the default
