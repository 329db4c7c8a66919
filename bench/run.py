r"""The speed benchmark: every figure of the suite beside its yardstick, in one run.

    python bench/run.py                                  # 8-12 minutes on 2 CPU cores
    python bench/run.py --images=400 --limit_batch_sizes=1,8,16,32,64
    python bench/run.py --figures=training,cache --module=tiny

It writes its own synthetic photos (sizes from 200x150 to 2592x1944, mostly
JPEG) and its own random-weight Inception V3 module (bottleneck.make_module),
measures each figure and its yardstick one after the other in the same run,
and prints a Markdown table (figure, ours, yardstick, ratio, target, met?)
and a line describing the machine. Timings are what this run saw on this
machine; other work on the machine shows up in them (the load average is
printed with the table).

Yardsticks, written here from the classic script's description:
(a) the classic method: one image at a time, a session run to decode and
    resize, another for the module on a batch of one, the vector written as a
    comma-separated text file.
(b) the classic training loop: every step re-reads and parses
    train_batch_size random text files, then one session run.
(c) the limit: the module's own forward pass on pre-decoded in-memory batches
    at its best batch size (of --limit_batch_sizes).

Rates of bottleneck computation are steady-state: the first batch (or image)
also pays for graph optimisation and is left out, for ours and the
yardsticks alike. With our batch size measured (the default), ours is the
rate of the images after the measuring batches, at the size chosen. Our
training rate runs steps as retrain.py does: those between two evaluations
(every --eval_interval) in one call. The label_image and warm-rerun figures time whole command
lines (a fresh Python each), start-up included.
"""

import dataclasses
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

startup.quiet_tensorflow()  # before anything imports TensorFlow

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

from retrain_suite import dataset as dataset_lib
from retrain_suite import export, final_layer, input_pipeline
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute, make_module
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.cli import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FIGURES = ("bottlenecks", "mixed_precision", "training", "warm_rerun", "cache", "memory",
           "label_image", "gpu")

FLAGS = flags.FLAGS
flags.DEFINE_list("figures", list(FIGURES), f"Figures to measure, any of {', '.join(FIGURES)}.")
flags.DEFINE_string(
    "module", "inception_v3",
    "Module to measure: a kind of bottleneck.make_module (inception_v3, tiny) written "
    "fresh, or the folder of a SavedModel feature-vector module.",
)
flags.DEFINE_integer(
    "images", 264,
    "Photos for the bottleneck and mixed-precision figures (enough for our batch size to be "
    "measured and then run on 32).",
)
flags.DEFINE_integer(
    "batch_size", None,
    "Our bottleneck batch size. Default: measured, as retrain.py does (at least "
    f"{batch_size_lib.MIN_IMAGES_TO_MEASURE} --images).",
)
flags.DEFINE_list("limit_batch_sizes", ["8", "16", "32"], "Batch sizes tried for the limit (c).")
flags.DEFINE_integer("steps", 4000, "Training steps (training, warm-rerun and accuracy figures).")
flags.DEFINE_integer("classic_steps", 200, "Steps of the classic training loop (b) timed.")
flags.DEFINE_integer("train_batch", 100, "Bottlenecks per training step.")
flags.DEFINE_integer(
    "eval_interval", 10,
    "Steps from one evaluation to the next in our training loop (retrain.py's "
    "--eval_step_interval default).",
)
flags.DEFINE_integer("warm_images", 4000, "Images of the warm-rerun and cache figures.")
flags.DEFINE_integer("label_images", 100, "Images of the label_image figure.")
flags.DEFINE_list("rss_counts", ["200", "2000"], "Image counts of the memory figure.")
flags.DEFINE_string(
    "rss_module", "tiny",
    "Module of the memory figure (a make_module kind or a folder): the figure is about "
    "images streaming, and the tiny module keeps it quick.",
)
flags.DEFINE_string("work_dir", None, "Folder for photos, modules and caches (default: a temporary one).")
flags.DEFINE_bool("keep_work_dir", False, "Keep the work folder at the end.")

PHOTO_SIZES = ((200, 150), (333, 250), (640, 480), (1024, 768), (1600, 1200), (2592, 1944))
CLASS_STYLES = (((200, 60, 50), "solid"), ((50, 170, 70), "stripes"), ((60, 80, 200), "checker"))


@dataclasses.dataclass
class Row:
    figure: str
    ours: str
    yardstick: str
    ratio: float = None  # ours / yardstick, in the direction where bigger is better
    target: str = ""
    met: bool = None  # None: not applicable

    def cells(self):
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        met = {True: "yes", False: "**no**", None: "n/a"}[self.met]
        return [self.figure, self.ours, self.yardstick, ratio, self.target, met]


def markdown_table(rows):
    lines = ["| figure | ours | yardstick | ratio | target | met? |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def machine_line():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        model = names[0].strip() if names else model
    except OSError:
        pass
    gpus = [
        tf.config.experimental.get_device_details(g).get("device_name", g.name)
        for g in tf.config.list_physical_devices("GPU")
    ]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Machine: {model}, {os.cpu_count()} cores, GPU: {', '.join(gpus) or 'none'}, "
        f"TensorFlow {tf.__version__}, load average {load}"
    )


# --- synthetic photos -----------------------------------------------------------------------


def photo_pixels(size, style, rng):
    """uint8 [h, w, 3]: a smooth colour field with a class pattern and sensor-like noise."""
    width, height = size
    colour, pattern = style
    small_h, small_w = max(height // 8, 4), max(width // 8, 4)
    y, x = np.mgrid[0:small_h, 0:small_w]
    if pattern == "stripes":
        mask = (x // 2) % 2 == 0
    elif pattern == "checker":
        mask = ((x // 3) + (y // 3)) % 2 == 0
    else:
        mask = np.ones((small_h, small_w), bool)
    shade = 0.6 + 0.4 * rng.rand() * (x + y) / (small_h + small_w)
    base = np.where(mask[..., None], np.array(colour), np.array(colour) // 3) * shade[..., None]
    base = np.clip(base + rng.randint(-25, 26, base.shape), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR))
    noise = rng.randint(-6, 7, (height, width, 1))
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode(pixels, fmt):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_photos(folder, count, seed=0, distinct=None):
    """Write `count` photos in class subfolders (3 classes); -> sorted paths.

    Sizes cycle through PHOTO_SIZES; one in eight is a PNG. With distinct=k,
    only k photos are drawn and the rest are byte-wise variants of them
    (unique bytes after the end of the image, which decoders ignore): a
    different file and cache entry each, quick to write by the thousand.
    """
    rng = np.random.RandomState(seed)
    distinct = count if distinct is None else min(distinct, count)
    drawn = []
    for i in range(distinct):
        fmt = "PNG" if i % 8 == 7 else "JPEG"
        style = CLASS_STYLES[i % len(CLASS_STYLES)]
        size = PHOTO_SIZES[(i // len(CLASS_STYLES)) % len(PHOTO_SIZES)]
        drawn.append((encode(photo_pixels(size, style, rng), fmt), fmt))
    paths = []
    for i in range(count):
        data, fmt = drawn[i % distinct]
        if i >= distinct:
            data += b"\0variant %d" % i
        label = f"class{(i % distinct) % len(CLASS_STYLES)}"
        path = os.path.join(folder, label, f"photo{i:05d}.{'png' if fmt == 'PNG' else 'jpg'}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return sorted(paths)


def module_path(kind_or_path, work_dir):
    if kind_or_path in make_module.KINDS:
        path = os.path.join(work_dir, "modules", kind_or_path)
        if not os.path.isdir(path):
            logging.info("Writing the random-weight %s module...", kind_or_path)
            make_module.write_module(kind_or_path, path)
        return path
    if not os.path.isdir(kind_or_path):
        raise app.UsageError(
            f"--module {kind_or_path} is neither {' nor '.join(make_module.KINDS)} nor a folder."
        )
    return kind_or_path


# --- yardsticks -----------------------------------------------------------------------------


def classic_bottlenecks(paths, handle, text_dir):
    """Yardstick (a). -> (steady images/s, {part: mean seconds per image}).

    The parts are where each image's time goes: the decode-and-resize session
    run (reading the file included), the module's run on a batch of one, and
    writing the text file; all three after the first image.
    """
    graph = tf.Graph()
    with graph.as_default():
        module = module_lib.load(handle)
        encoded = tf.compat.v1.placeholder(tf.string, [])
        decoded = tf.image.convert_image_dtype(
            tf.io.decode_image(encoded, channels=3, expand_animations=False), tf.float32
        )
        resized = tf.compat.v1.image.resize_bilinear(
            decoded[tf.newaxis], [module.height, module.width]
        )
        image_input = tf.compat.v1.placeholder(tf.float32, [1, module.height, module.width, 3])
        features = module(image_input)
        parts = dict.fromkeys(("decode", "module", "text"), 0.0)
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            start = None
            for path in paths:
                began = time.monotonic()
                data = tf.io.gfile.GFile(path, "rb").read()
                pixels = sess.run(resized, {encoded: data})
                decoded_at = time.monotonic()
                vector = sess.run(features, {image_input: pixels})[0]
                computed_at = time.monotonic()
                text_path = os.path.join(text_dir, os.path.basename(path) + ".txt")
                with tf.io.gfile.GFile(text_path, "w") as f:
                    f.write(",".join(str(x) for x in vector))
                if start is None:
                    start = time.monotonic()
                    continue
                parts["decode"] += decoded_at - began
                parts["module"] += computed_at - decoded_at
                parts["text"] += time.monotonic() - computed_at
    count = len(paths) - 1
    return count / (time.monotonic() - start), {k: v / count for k, v in parts.items()}


def limit_rate(images, handle, batch_sizes):
    """Yardstick (c): float32 [N, H, W, 3] in memory -> (best images/s, its batch size)."""
    graph = tf.Graph()
    best = (0.0, None)
    with graph.as_default():
        module = module_lib.load(handle)
        image_input = tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])
        features = module(image_input)
        with tf.compat.v1.Session(graph=graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for batch_size in batch_sizes:
                batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
                batches = [b for b in batches if len(b) == batch_size]
                if len(batches) < 2:
                    logging.warning("Too few images for a limit at batch size %d.", batch_size)
                    continue
                sess.run(features, {image_input: batches[0]})  # Warm-up at this shape.
                start = time.monotonic()
                for batch in batches:
                    sess.run(features, {image_input: batch})
                rate = len(batches) * batch_size / (time.monotonic() - start)
                logging.info("Limit at batch size %d: %.2f images/s", batch_size, rate)
                best = max(best, (rate, batch_size))
    return best


def decoded_in_memory(paths, height, width):
    """The photos decoded and resized by the shared pipeline. -> float32 [N, H, W, 3]."""
    graph = tf.Graph()
    with graph.as_default():
        batches = input_pipeline.image_batches(paths, height, width, 64)
        _, _, images = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
        out = []
        with tf.compat.v1.Session(graph=graph) as sess:
            while True:
                try:
                    out.append(sess.run(images))
                except tf.errors.OutOfRangeError:
                    return np.concatenate(out)


def read_classic_text(path):
    """A classic text bottleneck -> float32 [D], parsed as the classic script did."""
    with tf.io.gfile.GFile(path, "r") as f:
        return np.array([float(x) for x in f.read().split(",")], np.float32)


def classic_training_rate(text_paths, labels, steps, batch_size, class_count, seed=0):
    """Yardstick (b). -> steps/s."""
    rng = np.random.RandomState(seed)
    dimension = read_classic_text(text_paths[0]).shape[0]
    g = final_layer.build_training_graph(dimension, class_count, "final_result", "sgd", 0.01,
                                         batch_size, seed)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        start = time.monotonic()
        for _ in range(steps):
            rows = rng.randint(len(text_paths), size=batch_size)
            batch = np.stack([read_classic_text(text_paths[r]) for r in rows])
            sess.run(g.train_step, {g.bottleneck_input: batch, g.ground_truth: labels[rows]})
        return steps / (time.monotonic() - start)


def our_training_rate(vectors, labels, steps, batch_size, class_count, interval, seed=0):
    """Our hot loop (retrain.train): in-memory vectors through tf.data, the steps
    between two evaluations (every `interval` steps) in one call, the evaluation's
    step in a call of its own (its metrics left out, as the classic loop's are). -> steps/s."""
    g = final_layer.build_training_graph(vectors.shape[1], class_count, "final_result", "sgd",
                                         0.01, batch_size, seed)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: vectors, g.labels: labels})
        start = time.monotonic()
        step = 0
        while step < steps:
            # Rates fed as retrain.train feeds them.
            looped = min(interval, steps - step) - 1
            if looped:
                sess.run(g.train_steps, {g.learning_rates: [0.01] * looped})
            sess.run(g.train_step, {g.learning_rate: 0.01})
            step += looped + 1
        return steps / (time.monotonic() - start)


def classic_warm_rerun(handle, text_paths, labels, splits, steps, batch_size, class_count, out):
    """The classic script's warm rerun: every vector re-read from text, training
    re-reading a batch of files per step (and 100 validation files every 10
    steps), the test set read, then the same export as ours. -> seconds."""
    start = time.monotonic()
    graph = tf.Graph()
    with graph.as_default():
        module_lib.load(handle)  # The classic script builds the module graph first.
    for path in text_paths:  # Its cache pass opens and parses every bottleneck.
        read_classic_text(path)
    rng = np.random.RandomState(0)
    train = np.flatnonzero(splits == "training")
    validation = np.flatnonzero(splits == "validation")
    test = np.flatnonzero(splits == "testing")
    dimension = read_classic_text(text_paths[0]).shape[0]
    g = final_layer.build_training_graph(dimension, class_count, "final_result", "sgd", 0.01,
                                         batch_size, 0)

    def batch_of(rows):
        return np.stack([read_classic_text(text_paths[r]) for r in rows])

    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for step in range(1, steps + 1):
            rows = train[rng.randint(len(train), size=batch_size)]
            sess.run(g.train_step, {g.bottleneck_input: batch_of(rows), g.ground_truth: labels[rows]})
            if step % 10 == 0 or step == steps:
                rows = validation[rng.randint(len(validation), size=100)]
                sess.run(g.accuracy, {g.bottleneck_input: batch_of(rows), g.ground_truth: labels[rows]})
        sess.run(g.accuracy, {g.bottleneck_input: batch_of(test), g.ground_truth: labels[test]})
        checkpoint = os.path.join(out, "classic_checkpoint")
        final_layer.save_checkpoint(g.saver, sess, checkpoint)
        layer = g.named_layer_values(sess)
    graph_def = export.frozen_graph(handle, module_lib.DEFAULT_IMAGE_SIZE, class_count, layer,
                                    "final_result")
    export.write_frozen_graph(graph_def, os.path.join(out, "classic_graph.pb"))
    return time.monotonic() - start


# --- running our command lines --------------------------------------------------------------


def run_command(args, what):
    """Run a script of the suite in a fresh Python. -> (seconds, output)."""
    start = time.monotonic()
    process = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    output = process.stdout.decode("utf-8", "replace")
    if process.returncode:
        raise RuntimeError(f"{what} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, output


# A child's ru_maxrss (getrusage, wait4) starts from its parent's peak RSS at the
# fork, which here is this whole benchmark's. The kernel's VmHWM of the child's
# own address space, read as it exits, is the child's own peak.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as f:
        peak = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
    print("peak_rss_kib", peak, file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def peak_rss_of_module(module, args, what):
    """Run `python -m module args` in a fresh Python. -> its peak RSS in MiB."""
    _, output = run_command(["-c", PEAK_RSS_WRAPPER, module, *args], what)
    match = re.search(r"peak_rss_kib (\d+)", output)
    if not match:
        raise RuntimeError(f"{what} reported no peak RSS:\n{output[-2000:]}")
    return int(match.group(1)) / 1024.0


def retrain_command(image_dir, handle, bottleneck_dir, out, steps, *extra):
    return [
        "retrain.py", f"--image_dir={image_dir}", f"--tfhub_module={handle}",
        f"--bottleneck_dir={bottleneck_dir}", f"--how_many_training_steps={steps}",
        f"--output_graph={out}/graph.pb", f"--output_labels={out}/labels.txt",
        f"--summaries_dir={out}/logs", f"--checkpoint_path={out}/checkpoint",
        "--random_seed=1", *extra,
    ]


def test_accuracy(output):
    match = re.search(r"Final test accuracy = ([0-9.]+)% \(N=(\d+)\)", output)
    if not match:
        raise RuntimeError("retrain.py printed no final test accuracy:\n" + output[-2000:])
    return float(match.group(1)), int(match.group(2))


# --- figures --------------------------------------------------------------------------------


class Bench:
    def __init__(self, work_dir, handle):
        self.work, self.handle = work_dir, handle
        self.rows = []
        self.fp32_rate = None
        self._photos = None

    def folder(self, *names):
        path = os.path.join(self.work, *names)
        os.makedirs(path, exist_ok=True)
        return path

    def photos(self):
        if self._photos is None:
            logging.info("Writing %d photos...", FLAGS.images)
            self._photos = write_photos(self.folder("photos"), FLAGS.images)
        return self._photos

    def add(self, *args, **kwargs):
        row = Row(*args, **kwargs)
        logging.info("%s", " | ".join(row.cells()))
        self.rows.append(row)

    def ours_fp32(self):
        if self.fp32_rate is None:
            result = compute.compute_bottlenecks(
                self.photos(), self.handle, self.folder("cache"), batch_size=FLAGS.batch_size
            )
            self.fp32_rate, self.fp32_batch = result.steady_rate, result.batch_size
        return self.fp32_rate

    def batch_words(self):
        how = "given" if FLAGS.batch_size else "measured"
        return f"batch {self.fp32_batch}, {how}"

    def bottlenecks(self):
        paths = self.photos()
        graph = tf.Graph()
        with graph.as_default():
            module = module_lib.load(self.handle)
        images = decoded_in_memory(paths, module.height, module.width)
        sizes = [int(b) for b in FLAGS.limit_batch_sizes]
        limit, best_batch = limit_rate(images, self.handle, sizes)
        del images
        ours = self.ours_fp32()
        classic, parts = classic_bottlenecks(paths, self.handle, self.folder("classic_text"))
        self.limit = (limit, best_batch)
        self.add(
            "1a. bottlenecks (`python -m bottleneck`) vs the limit (c)",
            f"{ours:.2f} img/s ({self.batch_words()})",
            f"{limit:.2f} img/s (batch {best_batch})", ours / limit, ">= 0.90x", ours / limit >= 0.9,
        )
        self.add(
            "1b. bottlenecks vs the classic method (a)", f"{ours:.2f} img/s",
            f"{classic:.2f} img/s (per image: "
            + ", ".join(f"{part} {1000 * seconds:.0f} ms" for part, seconds in parts.items()) + ")",
            ours / classic, ">= 1.30x", ours / classic >= 1.3,
        )

    def mixed_precision(self):
        try:
            precision = module_lib.mixed_precision_type()
        except module_lib.ModuleError as e:
            self.add("2. --mixed_precision", f"not available: {e}", "", None, ">= 1.50x", None)
            return
        fp32 = self.ours_fp32()
        mixed = compute.compute_bottlenecks(
            self.photos(), self.handle, self.folder("cache"), batch_size=FLAGS.batch_size,
            precision=precision,
        ).steady_rate
        self.add(
            f"2a. bottlenecks in {precision} (`--mixed_precision`) vs float32",
            f"{mixed:.2f} img/s", f"{fp32:.2f} img/s", mixed / fp32, ">= 1.50x", mixed / fp32 >= 1.5,
        )
        accuracies = {}
        for name, extra in (("float32", []), (precision, ["--mixed_precision"])):
            _, output = run_command(
                retrain_command(self.folder("photos"), self.handle, self.folder("cache"),
                                self.folder("retrain_" + name), FLAGS.steps,
                                "--testing_percentage=30", *extra),
                f"retrain.py ({name})",
            )
            accuracies[name] = test_accuracy(output)
        (ours, n), (base, _) = accuracies[precision], accuracies["float32"]
        self.add(
            f"2b. final test accuracy, {precision} vs float32 bottlenecks (seed 1, {FLAGS.steps} steps)",
            f"{ours:.1f}% (N={n})", f"{base:.1f}%", None, "within 1 point",
            abs(ours - base) <= 1.0,
        )

    def warm_data(self):
        """Warm-rerun photos with our cache and classic text files filled. -> dict."""
        if getattr(self, "_warm", None):
            return self._warm
        count = FLAGS.warm_images
        logging.info("Writing %d small photos with cached bottlenecks...", count)
        folder = self.folder("warm_photos")
        rng = np.random.RandomState(1)
        cache_dir = self.folder("warm_cache")
        graph = tf.Graph()
        with graph.as_default():
            module = module_lib.load(self.handle)
            dimension = int(module(tf.compat.v1.placeholder(
                tf.float32, [None, module.height, module.width, 3])).shape[-1])
        means = rng.normal(size=(len(CLASS_STYLES), dimension)).astype(np.float32)
        cache = cache_lib.BottleneckCache(
            cache_dir, cache_lib.module_key(self.handle, module.height, module.width)
        )
        text_dir = self.folder("warm_text")
        paths, labels, splits, texts, contents = [], [], [], [], []
        for i in range(count):
            label = i % len(CLASS_STYLES)
            pixels = rng.randint(0, 256, (24, 32, 3)).astype(np.uint8)
            path = os.path.join(folder, f"class{label}", f"img{i:05d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(encode(pixels, "JPEG"))
            vector = means[label] + rng.normal(size=dimension).astype(np.float32)
            content = input_pipeline.inspect_image_file(path).sha1
            cache.store(content, vector)
            text = os.path.join(text_dir, f"img{i:05d}.txt")
            with open(text, "w") as f:
                f.write(",".join(str(x) for x in vector))
            paths.append(path)
            labels.append(label)
            splits.append(dataset_lib.split_for(f"class{label}/img{i:05d}.jpg", 10, 10))
            texts.append(text)
            contents.append(content)
        self._warm = dict(folder=folder, cache_dir=cache_dir, cache=cache, paths=paths,
                          labels=np.array(labels, np.int64), splits=np.array(splits),
                          texts=texts, contents=contents, dimension=dimension)
        return self._warm

    def training(self):
        warm = self.warm_data()
        vectors = np.stack([warm["cache"].lookup(c) for c in warm["contents"]])
        classes = len(CLASS_STYLES)
        ours = our_training_rate(vectors, warm["labels"], FLAGS.steps, FLAGS.train_batch, classes,
                                 FLAGS.eval_interval)
        classic = classic_training_rate(warm["texts"], warm["labels"], FLAGS.classic_steps,
                                        FLAGS.train_batch, classes)
        self.add(
            f"3. training steps/s, batch {FLAGS.train_batch}, warm cache",
            f"{ours:.0f} steps/s ({FLAGS.steps} steps, evaluation every {FLAGS.eval_interval})",
            f"{classic:.1f} steps/s (b) ({FLAGS.classic_steps} steps)", ours / classic,
            ">= 50x", ours / classic >= 50,
        )

    def warm_rerun(self):
        warm = self.warm_data()
        out = self.folder("warm_out")
        ours, output = run_command(
            retrain_command(warm["folder"], self.handle, warm["cache_dir"], out, FLAGS.steps),
            "retrain.py (warm rerun)",
        )
        if "0 computed" not in output:
            raise RuntimeError("The warm rerun computed bottlenecks:\n" + output[-2000:])
        classic = classic_warm_rerun(self.handle, warm["texts"], warm["labels"], warm["splits"],
                                     FLAGS.steps, FLAGS.train_batch, len(CLASS_STYLES), out)
        self.add(
            f"4. warm rerun end to end ({FLAGS.warm_images} images, {FLAGS.steps} steps, export)",
            f"{ours:.1f} s", f"{classic:.1f} s (classic, in-process)", classic / ours, ">= 10x",
            classic / ours >= 10,
        )

    def cache(self):
        warm = self.warm_data()
        entry = os.path.getsize(warm["cache"].path_for(warm["contents"][0]))
        text = np.mean([os.path.getsize(t) for t in warm["texts"]])
        blocks = os.stat(warm["cache"].path_for(warm["contents"][0])).st_blocks * 512
        self.add(
            f"5a. cache bytes per {warm['dimension']}-d bottleneck",
            f"{entry:,} B ({blocks:,} B allocated)", f"{text:,.0f} B (classic text)",
            text / entry, "<= 8,500 B", entry <= 8500,
        )
        cache = warm["cache"]
        start = time.monotonic()
        loaded = [cache.lookup(c, warm["dimension"]) for c in warm["contents"]]
        ours = len(loaded) / (time.monotonic() - start)
        assert all(v is not None for v in loaded)
        start = time.monotonic()
        for t in warm["texts"]:
            read_classic_text(t)
        classic = len(warm["texts"]) / (time.monotonic() - start)
        self.add(
            f"5b. cache load ({len(loaded)} entries, file-system cache warm)",
            f"{ours:,.0f} entries/s", f"{classic:,.0f} entries/s (classic text)", ours / classic,
            ">= 10,000/s", ours >= 10000,
        )

    def memory(self):
        handle = module_path(FLAGS.rss_module, self.work)
        peaks = {}
        counts = [int(c) for c in FLAGS.rss_counts]
        for count in counts:
            folder = self.folder(f"rss_{count}")
            write_photos(folder, count, seed=2, distinct=36)
            peaks[count] = peak_rss_of_module(
                "bottleneck",
                [f"--image_dir={folder}", f"--tfhub_module={handle}",
                 f"--bottleneck_dir={self.folder(f'rss_cache_{count}')}"],
                f"python -m bottleneck ({count} images)",
            )
            shutil.rmtree(folder)
        small, large = counts[0], counts[-1]
        ratio = peaks[large] / peaks[small]
        self.add(
            f"6. peak RSS computing bottlenecks, {large} vs {small} images ({os.path.basename(handle)})",
            f"{peaks[large]:.0f} MiB", f"{peaks[small]:.0f} MiB", None, "<= 1.10x of the small run",
            ratio <= 1.10,
        )
        self.rows[-1].ratio = ratio

    def label_image(self):
        count = FLAGS.label_images
        folder = self.folder("label_photos")
        paths = write_photos(folder, count, seed=3, distinct=min(count, 36))
        graph = os.path.join(self.work, "retrain_float32", "graph.pb")
        if not os.path.exists(graph):
            run_command(
                retrain_command(self.folder("photos") if self._photos else folder, self.handle,
                                self.folder("cache"), self.folder("retrain_float32"), 100),
                "retrain.py (graph for label_image)",
            )
        classes = sorted({os.path.dirname(p) for p in paths})
        seconds, output = run_command(
            ["label_image.py", *[f"--image={c}" for c in classes], f"--graph={graph}",
             f"--labels={os.path.join(os.path.dirname(graph), 'labels.txt')}", "--top_k=1"],
            "label_image.py",
        )
        ours = count / seconds
        seconds, _ = run_command(
            ["-m", "bottleneck", f"--image_dir={folder}", f"--tfhub_module={self.handle}",
             f"--bottleneck_dir={self.folder('label_cache')}"],
            "python -m bottleneck (label_image yardstick)",
        )
        bottlenecks = count / seconds
        self.add(
            f"7. `label_image.py` on {count} images vs `python -m bottleneck` on them (whole commands)",
            f"{ours:.2f} img/s", f"{bottlenecks:.2f} img/s", ours / bottlenecks, ">= 0.80x",
            ours / bottlenecks >= 0.8,
        )

    def gpu(self):
        if not tf.config.list_physical_devices("GPU"):
            self.add("8. GPU: bottlenecks vs the limit (c) on the GPU",
                     "no GPU was available on this machine", "", None, ">= 0.70x", None)
            return
        if not hasattr(self, "limit"):
            self.bottlenecks()
        limit, batch = self.limit
        ours = self.ours_fp32()
        self.add(
            f"8. GPU ({module_lib.describe_device()}): bottlenecks vs the limit (c)",
            f"{ours:.2f} img/s", f"{limit:.2f} img/s (batch {batch})", ours / limit, ">= 0.70x",
            ours / limit >= 0.7,
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    unknown = sorted(set(FLAGS.figures) - set(FIGURES))
    if unknown:
        raise app.UsageError(f"--figures: unknown {', '.join(unknown)}; choose from {', '.join(FIGURES)}.")
    for name in ("images", "batch_size", "steps", "classic_steps", "train_batch", "warm_images",
                 "label_images", "eval_interval"):
        if FLAGS[name].value is not None and FLAGS[name].value <= 0:
            raise app.UsageError(f"--{name}={FLAGS[name].value} must be positive.")
    if FLAGS.batch_size and FLAGS.images < 2 * FLAGS.batch_size:
        raise app.UsageError(
            f"--images={FLAGS.images} must be at least twice --batch_size={FLAGS.batch_size}: "
            "rates leave out the first batch."
        )
    if not FLAGS.batch_size and FLAGS.images < batch_size_lib.MIN_IMAGES_TO_MEASURE:
        raise app.UsageError(
            f"--images={FLAGS.images} is too few to measure our batch size (at least "
            f"{batch_size_lib.MIN_IMAGES_TO_MEASURE}); give more, or a --batch_size."
        )
    tf.get_logger().setLevel("ERROR")
    logging.set_verbosity(logging.INFO)
    start = time.monotonic()
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="retrain_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        before = machine_line()
        bench = Bench(work, module_path(FLAGS.module, work))
        for figure in FIGURES:
            if figure in FLAGS.figures:
                logging.info("=== %s ===", figure)
                getattr(bench, figure)()
        print()
        print(markdown_table(bench.rows))
        print()
        print(before)
        print(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"benchmark took {time.monotonic() - start:.0f} s.")
        print("Command: python bench/run.py " + " ".join(sys.argv[1:]))
    finally:
        if not FLAGS.keep_work_dir and not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    startup.run(main)
