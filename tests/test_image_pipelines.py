"""images.pipelines: batching image files, leaving out the ones that cannot be used."""

import numpy as np
import tensorflow as tf
from PIL import Image

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
