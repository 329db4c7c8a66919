"""The whole-command rows: what a user waits for, against the work that cannot be avoided.

- Time to classifier: `retrain.py` from a photo folder to a checked `.tflite`
  (first run, cold cache, int8 export and the check of every exported file)
  against the serial limit measured in the same run: decoding and resizing
  every photo, the module's forward pass on all of them (pre-decoded, at its
  best batch size), and the training steps alone on in-memory vectors, one
  after the other.
- Warm rerun, nothing changed: the same `retrain.py` command again against
  start-up (a fresh Python importing the suite, `retrain.py --helpshort`) plus
  the training steps alone.
"""

import dataclasses
import json
import os
import time

import commands
import numpy as np
import tensorflow as tf
import yardsticks

from retrain_suite.images import pipelines as image_pipelines


@dataclasses.dataclass(frozen=True)
class SerialLimit:
    """Seconds of each part of the serial limit, measured in this process."""

    decode: float  # reading, decoding and resizing every photo
    forward: float  # the module on every pre-decoded photo, at its best batch size
    training: float  # the training steps alone

    def total(self):
        return self.decode + self.forward + self.training

    def words(self):
        return (f"{self.total():.1f} s (decode {self.decode:.1f} s + forward {self.forward:.1f} s "
                f"+ {self.training:.1f} s of training steps)")


@dataclasses.dataclass(frozen=True)
class Command:
    """One retrain.py command of these rows: its photos, module, steps and folders."""

    image_dir: str
    handle: str
    steps: int
    train_batch: int
    eval_interval: int
    work: str  # folder for its cache and outputs

    def args(self, name):
        out = os.path.join(self.work, name)
        return commands.retrain_command(
            self.image_dir, self.handle, os.path.join(self.work, "cache"), out, self.steps,
            f"--train_batch_size={self.train_batch}", f"--eval_step_interval={self.eval_interval}",
            f"--tflite_output_file={out}/model.tflite", "--tflite_quantization=int8",
            f"--eval_report={out}/report.json",
        )

    def run(self, name, what):
        """Run the command with outputs under work/name. -> (seconds, output, phases)."""
        seconds, output = commands.run_command(self.args(name), what)
        with open(os.path.join(self.work, name, "report.json"), encoding="utf-8") as f:
            phases = json.load(f).get("time", {}).get("phases", [])
        return seconds, output, {p["phase"]: p["seconds"] for p in phases}


# The benchmark's photos are of three classes (photos.CLASS_STYLES).
CLASS_COUNT = 3


def training_seconds(dimension, class_count, command, seed=0):
    """The training steps alone: command.steps steps of the final layer (batches of
    command.train_batch, evaluation every command.eval_interval) on random in-memory
    D-value vectors, as retrain.py runs them. -> seconds."""
    rng = np.random.RandomState(seed)
    vectors = rng.normal(size=(1000, dimension)).astype(np.float32)
    labels = (np.arange(1000) % class_count).astype(np.int64)
    rate = yardsticks.our_training_rate(vectors, labels, command.steps, command.train_batch,
                                        class_count, command.eval_interval, seed)
    return command.steps / rate


def serial_limit(paths, command, input_size, dimension, batch_sizes):
    """The serial limit of command on the photos at paths. -> SerialLimit.

    input_size: the module's (height, width); dimension: its output size D;
    batch_sizes: those tried for the forward pass (its best counts).
    """
    decode = decode_seconds(paths, *input_size)
    rate, _ = yardsticks.limit_rate(decoded(paths, *input_size), command.handle, batch_sizes)
    forward = len(paths) / rate
    return SerialLimit(decode, forward, training_seconds(dimension, CLASS_COUNT, command))


def _decoding(paths, height, width):
    """(graph, its images tensor): the photos read, decoded and resized by the shared
    pipeline, in batches of 64."""
    graph = tf.Graph()
    with graph.as_default():
        batches = image_pipelines.image_batches(paths, height, width, 64)
        _, _, images = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
    return graph, images


def decode_seconds(paths, height, width):
    """Seconds to read, decode and resize every photo with the shared pipeline, from its
    first run (building it is left out). Each batch is dropped once decoded: holding all
    of them (600 MB for 1,000 photos at 224x224) and joining them measured 10.0 s on this
    benchmark's photos, against 5.1 s for the decoding alone."""
    graph, images = _decoding(paths, height, width)
    with tf.compat.v1.Session(graph=graph) as sess:
        began = time.monotonic()
        for _ in image_pipelines.each_batch(sess, images):
            pass
        return time.monotonic() - began


def decoded(paths, height, width):
    """The photos decoded as decode_seconds does, untimed. -> float32 [N, H, W, 3]."""
    graph, images = _decoding(paths, height, width)
    with tf.compat.v1.Session(graph=graph) as sess:
        return np.concatenate(list(image_pipelines.each_batch(sess, images)))


def start_up_seconds():
    """A fresh Python importing the suite and parsing retrain.py's flags. -> seconds."""
    seconds, _ = commands.run_command(["retrain.py", "--helpshort"], "retrain.py --helpshort")
    return seconds


def phase_words(phases, count=3):
    """The largest phases of a run's phase table, for the row."""
    largest = sorted(phases.items(), key=lambda item: -item[1])[:count]
    return ", ".join(f"{name.split(' (')[0]} {seconds:.1f} s" for name, seconds in largest)
