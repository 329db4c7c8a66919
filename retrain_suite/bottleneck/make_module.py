r"""Write random-weight image feature-vector modules, for working offline.

    python -m bottleneck.make_module --kind=inception_v3 --output_dir=/tmp/incv3
    python -m bottleneck.make_module --kind=tiny --output_dir=/tmp/tiny
    python -m bottleneck.make_module --kind=mobilenet_v1_025 --output_dir=/tmp/mobilenet

All three follow TF Hub's image feature-vector convention (a TF2 SavedModel called
on float32 [N, H, W, 3] in [0, 1], returning float32 [N, D]) and its Reusable
SavedModel API (`__call__(images, training=...)`, `variables`,
`trainable_variables`, `regularization_losses`), and load with `hub.load`
exactly like a downloaded module, so tests and benchmarks exercise the real
loading and fine-tuning paths without network:

- `inception_v3`: the real Inception V3 architecture (299x299 in, 2048-d out),
  randomly initialised, with batch-norm statistics measured on one batch of
  random images so that features have a usable scale. As slow as the real
  one; the features carry no ImageNet knowledge.
- `mobilenet_v1_025`: MobileNet v1 with width multiplier 0.25 (224x224 in,
  256-d out, about 0.2 M weights), randomly initialised and calibrated like
  `inception_v3`: a forward pass of about the real MobileNet v1 0.25's cost,
  so that a benchmark on it shows the suite's fixed costs instead of hiding
  them behind a slow module.
- `tiny`: two small convolutions and global pooling (32x32 in, 64-d out), for
  fast tests. Its random features still separate plain colours and patterns.
  Its one regularization loss is a tiny weight decay on the convolutions.
"""

import tensorflow as tf

from retrain_suite import atomic_files

KINDS = ("inception_v3", "mobilenet_v1_025", "tiny")


TINY_SIZE = 32


class _FeatureVector(tf.train.Checkpoint):
    """A float32 [N, H, W, 3] -> [N, D] network as a Reusable SavedModel (TF Hub's API).

    `__call__(images, training=False)` is traced for training True and False;
    `variables`, `trainable_variables` and `regularization_losses` (functions
    of no arguments returning scalar losses) are saved beside it, so the
    loaded module can be fine-tuned. A tf.train.Checkpoint rather than a
    tf.Module: tf.Module computes `variables` as a property, which is not
    saved.
    """

    def __init__(self, network, height, width, scale_to_minus_one_one, regularization_losses=()):
        super().__init__()
        self.network = network
        self._scale = scale_to_minus_one_one
        self.__call__ = tf.function(self._features)
        self.images_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
        for training in (False, True):
            self.__call__.get_concrete_function(self.images_spec, training=training)
        self.variables = list(network.variables)
        self.trainable_variables = list(network.trainable_variables)
        self.regularization_losses = [
            tf.function(loss, input_signature=[]) for loss in regularization_losses
        ]

    def _features(self, images, training=False):
        if self._scale:
            images = images * 2.0 - 1.0
        return self.network(images, training=training)

    def serving_signature(self):
        """The inference call as the SavedModel's serving_default signature."""
        return self.__call__.get_concrete_function(self.images_spec, training=False)


class _TinyNetwork(tf.Module):
    def __init__(self, seed):
        super().__init__()
        init = tf.random.stateless_normal
        self.conv1 = tf.Variable(init([3, 3, 3, 16], seed=[seed, 1]) * 0.6, name="conv1")
        self.bias1 = tf.Variable(tf.zeros([16]), name="bias1")
        self.conv2 = tf.Variable(init([3, 3, 16, 32], seed=[seed, 2]) * 0.15, name="conv2")
        self.bias2 = tf.Variable(tf.zeros([32]), name="bias2")

    # Small enough not to change what a few hundred fine-tuning steps learn; there
    # so that the module's regularization_losses have something to carry.
    WEIGHT_DECAY = 1e-5

    def weight_decay(self):
        return self.WEIGHT_DECAY * (tf.reduce_sum(self.conv1**2) + tf.reduce_sum(self.conv2**2))

    def __call__(self, images, training=False):
        del training  # No layer behaves differently in training.
        x = tf.nn.relu(tf.nn.conv2d(images, self.conv1, 1, "SAME") + self.bias1)
        x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        x = tf.nn.relu(tf.nn.conv2d(x, self.conv2, 1, "SAME") + self.bias2)
        return tf.concat([tf.reduce_mean(x, [1, 2]), tf.reduce_max(x, [1, 2])], axis=1)


def build(kind, seed=0):
    """A tf.Module following the feature-vector convention."""
    if kind == "tiny":
        network = _TinyNetwork(seed)
        return _FeatureVector(network, TINY_SIZE, TINY_SIZE, False, [network.weight_decay])
    if kind == "inception_v3":
        tf.keras.utils.set_random_seed(seed)
        network = tf.keras.applications.InceptionV3(
            weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3)
        )
        _calibrate_batch_norm(network, seed, 299)
        # Inception V3 expects [-1, 1]; TF Hub modules take [0, 1] and scale inside.
        return _FeatureVector(network, 299, 299, True)
    if kind == "mobilenet_v1_025":
        tf.keras.utils.set_random_seed(seed)
        network = tf.keras.applications.MobileNet(
            alpha=0.25, weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
        )
        _calibrate_batch_norm(network, seed, 224)
        # MobileNet expects [-1, 1] too.
        return _FeatureVector(network, 224, 224, True)
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _calibrate_batch_norm(network, seed, size, count=16):
    """Set every batch-norm layer's statistics from one batch of smooth random images.

    Freshly initialised, the layers normalise nothing (mean 0, variance 1), and
    the signal shrinks layer by layer until (in Inception V3) the 2048 features
    differ between images by ~1e-4: too little for a final layer to learn from. With
    statistics measured on real-looking input, features have unit scale and
    separate images as random features should.
    """
    small = tf.random.stateless_uniform([count, 8, 8, 3], seed=[seed, 3])
    images = tf.image.resize(small, [size, size]) * 2.0 - 1.0
    layers = [layer for layer in network.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in layers:
        layer.momentum = 0.0  # Moving statistics := this batch's statistics.
    network(images, training=True)
    for layer in layers:
        layer.momentum = 0.99


def save(module, folder):
    """Write a _FeatureVector to folder as a SavedModel (serving_default: inference)."""
    tf.saved_model.save(module, folder, signatures={"serving_default": module.serving_signature()})


def write_module(kind, output_dir, seed=0):
    """Write a random-weight module of `kind` as a SavedModel folder at output_dir."""
    module = build(kind, seed)

    atomic_files.replace_dir(
        output_dir, lambda folder: save(module, folder), atomic_files.SAVED_MODEL_ENTRIES
    )
