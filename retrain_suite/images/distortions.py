r"""Random distortions of training images (data augmentation).

`Distortions` names the changes (all off by default); `distort` draws one
variant of a decoded image from a seed, with stateless random ops, so a run is
repeatable; `decoded_distorted` goes from encoded bytes to a distorted image
through the one preprocessing function.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from retrain_suite.images import preprocess as image_preprocess


@dataclasses.dataclass(frozen=True)
class Distortions:
    """Random changes to training images (data augmentation); all off by default.

    crop: margin in percent (the image is enlarged by it, then a window of the
    input size is cut at random); scale: extra random enlargement, 0 to this
    percent; brightness: pixel values multiplied by a factor within +-percent;
    rotation: degrees, either way; hue: shift in [0, 0.5]; saturation: factor
    within 1 +- this amount.
    """

    flip_left_right: bool = False
    crop: float = 0.0
    scale: float = 0.0
    brightness: float = 0.0
    rotation: float = 0.0
    hue: float = 0.0
    saturation: float = 0.0

    def any(self):
        return self != Distortions()


def distort(image, height, width, distortions, seed):
    """Float image [h, w, 3] in [0, 1] -> a random variant, float32 [height, width, 3] in [0, 1].

    seed: int32 [2]; the same seed gives the same variant (stateless random ops),
    so a run is repeatable however the pipeline's parallel calls interleave.
    """
    seeds = tf.random.experimental.stateless_split(seed, 7)
    enlarge = tf.constant(1.0 + distortions.crop / 100.0)
    if distortions.scale:
        enlarge *= tf.random.stateless_uniform([], seeds[0], 1.0, 1.0 + distortions.scale / 100.0)
    # The small epsilon keeps 1.1 * 30 = 33.000000000000004 from becoming 34.
    size = tf.cast(tf.math.ceil(enlarge * tf.constant([height, width], tf.float32) - 1e-3), tf.int32)
    image = tf.image.resize(image, size, method="bilinear")
    image = tf.image.stateless_random_crop(image, [height, width, 3], seeds[1])
    if distortions.rotation:
        radians = distortions.rotation * np.pi / 180.0
        angle = tf.random.stateless_uniform([], seeds[2], -radians, radians)
        image = rotate(image, angle)
    if distortions.flip_left_right:
        image = tf.image.stateless_random_flip_left_right(image, seeds[3])
    if distortions.brightness:
        factor = tf.random.stateless_uniform(
            [], seeds[4], 1.0 - distortions.brightness / 100.0, 1.0 + distortions.brightness / 100.0
        )
        image = image * factor
    if distortions.hue:
        image = tf.image.stateless_random_hue(tf.clip_by_value(image, 0, 1), distortions.hue, seeds[5])
    if distortions.saturation:
        image = tf.image.stateless_random_saturation(
            tf.clip_by_value(image, 0, 1), 1.0 - distortions.saturation,
            1.0 + distortions.saturation, seeds[6],
        )
    return tf.clip_by_value(image, 0.0, 1.0)


def rotate(image, angle):
    """Rotate [h, w, c] about its centre by angle (radians, anticlockwise); edges reflect."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_centre, y_centre = (w - 1) / 2, (h - 1) / 2
    # Maps each output pixel to the input pixel it samples: input = R (output - c) + c.
    transform = tf.stack([
        cos, -sin, x_centre - cos * x_centre + sin * y_centre,
        sin, cos, y_centre - sin * x_centre - cos * y_centre,
        0.0, 0.0,
    ])[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform, output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
    return rotated[0]


def decoded_distorted(data, orientation, spec, element):
    """Encoded bytes -> float32 [spec.height, spec.width, 3], distorted by
    spec.distortions with a variant drawn from (spec.seed, element), a scalar
    int64: the same element gets the same distortion.

    spec: an image_pipelines.ImageBatchSpec (only its height, width,
    distortions and seed are read). Decodes straight to the largest size
    distort() can ask for: the full-size image is never held as floats, and
    the shared function turns it upright.
    """
    height, width, distortions = spec.height, spec.width, spec.distortions
    largest = (1.0 + distortions.crop / 100.0) * (1.0 + distortions.scale / 100.0)
    work_height, work_width = (int(np.ceil(n * largest - 1e-3)) for n in (height, width))
    upright = image_preprocess.decode_and_resize(data, work_height, work_width, orientation)
    element_seed = tf.cast(tf.stack([tf.cast(spec.seed, tf.int64), element]), tf.int32)
    return distort(upright, height, width, distortions, element_seed)
