"""retrain_suite.bottleneck.compute: what reaches the module, and what is skipped."""

import os

import numpy as np
import tensorflow as tf
from conftest import synthetic_image, write_image
from PIL import Image

from retrain_suite.bottleneck import compute, make_module

SIZE = 32


class _Pixels(tf.Module):
    """A feature vector that is the image itself, 8x8-averaged: orientation shows in it."""

    def __call__(self, images, training=False):
        del training
        return tf.reshape(tf.nn.avg_pool2d(images, 8, 8, "VALID"), [-1, (SIZE // 8) ** 2 * 3])


def pixel_module(path):
    module = make_module._FeatureVector(_Pixels(), SIZE, SIZE, False)
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def test_exif_orientation_reaches_the_module_when_computing_bottlenecks(tmp_path):
    # label_image turns photos upright; training must see the same pixels, or the
    # classifier meets rotated photos it was never trained on (train/serve skew).
    rng = np.random.RandomState(0)
    upright = synthetic_image((200, 40, 40), "stripes", SIZE, SIZE, rng)
    upright[: SIZE // 2] = 255  # top half white: a 90-degree turn is obvious
    stored = np.rot90(upright, 1)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    Image.fromarray(stored).save(tmp_path / "sideways.png", exif=exif)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    Image.fromarray(stored).save(tmp_path / "stored.png")
    module = pixel_module(str(tmp_path / "module"))
    paths = [str(tmp_path / n) for n in ("sideways.png", "upright.png", "stored.png")]
    result = compute.compute_bottlenecks(paths, module, str(tmp_path / "cache"))
    sideways, upright_vector, stored_vector = result.vectors
    np.testing.assert_allclose(sideways, upright_vector, atol=1e-5)
    assert np.abs(sideways - stored_vector).max() > 0.2


def test_every_copy_of_an_undecodable_file_is_skipped(tmp_path):
    # Copies share one content hash; each must be skipped, not only the first
    # (the others would train as zero vectors).
    rng = np.random.RandomState(0)
    folder = tmp_path / "images"
    good = [str(folder / f"good{i}.png") for i in range(2)]
    for path in good:
        write_image(path, synthetic_image((40, 190, 60), "solid", SIZE, SIZE, rng), "PNG")
    broken = b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10
    copies = []
    for i in range(3):
        path = folder / f"broken{i}.jpg"
        path.write_bytes(broken)
        copies.append(str(path))
    module = make_module.write_module("tiny", str(tmp_path / "tiny")) or str(tmp_path / "tiny")
    paths = good + copies
    result = compute.compute_bottlenecks(paths, module, str(tmp_path / "cache"))
    assert sorted(result.skipped) == [2, 3, 4]
    assert result.computed == 2
    assert np.all(np.isfinite(result.vectors[:2])) and np.abs(result.vectors[:2]).sum() > 0
    assert os.listdir(folder)  # photos untouched
