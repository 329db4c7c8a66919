r"""The speed benchmark: every figure of the suite beside its yardstick, in one run.

    python bench/run.py                                  # about 20 minutes on 2 CPU cores
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

Rows 1a and 1b run in rounds (--rounds): each round measures the limit,
ours and the classic method one after the other, and each figure is its
best round, so that a slow spell of the machine during one measurement does
not decide a ratio. Rates of bottleneck computation are steady-state: the first batch (or image)
also pays for graph optimisation and is left out, for ours and the
yardsticks alike. With our batch size measured (the default), ours is the
rate of the images after the measuring batches and the first batch at the
size chosen (the first run of the module at that size). Our
training rate runs steps as retrain.py does: those between two evaluations
(every --eval_interval) in one call. The label_image and warm-rerun figures time whole command
lines (a fresh Python each), start-up included.
"""

import dataclasses
import os
import platform
import re
import shutil
import sys
import tempfile
import time

from retrain_suite.cli import startup

startup.quiet_tensorflow()  # before anything imports TensorFlow

import figures
import photos
import tensorflow as tf
from absl import app, flags, logging

from retrain_suite.bottleneck import batch_size as batch_size_lib

FIGURES = (
    "bottlenecks",
    "mixed_precision",
    "training",
    "warm_rerun",
    "cache",
    "memory",
    "label_image",
    "gpu",
    "fine_tuning",
    "time_to_classifier",
    "packed_store",
    "beam",
)


FLAGS = flags.FLAGS


flags.DEFINE_list("figures", list(FIGURES), f"Figures to measure, any of {', '.join(FIGURES)}.")


flags.DEFINE_string(
    "module",
    "inception_v3",
    "Module to measure: a kind of bottleneck.make_module (inception_v3, tiny) written "
    "fresh, or the folder of a SavedModel feature-vector module.",
)


flags.DEFINE_integer(
    "images",
    360,
    "Photos for the bottleneck and mixed-precision figures: enough for our batch size to be "
    "measured and then run on several batches of 32, the first of which (set-up at that "
    "size) is left out of the rate.",
)


flags.DEFINE_integer(
    "batch_size",
    None,
    "Our bottleneck batch size. Default: measured, as retrain.py does (at least "
    f"{batch_size_lib.MIN_IMAGES_TO_MEASURE} --images).",
)


flags.DEFINE_list("limit_batch_sizes", ["8", "16", "32"], "Batch sizes tried for the limit (c).")


flags.DEFINE_integer(
    "beam_rounds", 2,
    "Rounds of rows 12a and 12b: each runs the in-process fill and both Beam runners one "
    "after the other, and each figure is its best round.",
)


flags.DEFINE_integer(
    "rounds",
    3,
    "Rounds of the bottleneck rows: each measures the limit (c), ours and the classic "
    "method (a) one after the other, and each figure is its best round (for 2a, ours in "
    "float32 and in mixed precision alike).",
)


flags.DEFINE_string(
    "classifier_module",
    "mobilenet_v1_025",
    "Module of the time-to-classifier rows (a make_module kind or a folder): MobileNet-sized, "
    "so that the suite's fixed costs are not hidden behind a slow forward pass.",
)


flags.DEFINE_integer("steps", 4000, "Training steps (training, warm-rerun and accuracy figures).")


flags.DEFINE_integer("classic_steps", 200, "Steps of the classic training loop (b) timed.")


flags.DEFINE_integer("train_batch", 100, "Bottlenecks per training step.")


flags.DEFINE_integer(
    "eval_interval",
    10,
    "Steps from one evaluation to the next in our training loop (retrain.py's --eval_step_interval default).",
)


flags.DEFINE_integer(
    "fine_tune_steps", 6, "Fine-tuning steps timed (ours and the limit (d)), after 2 untimed."
)


flags.DEFINE_integer("fine_tune_batch", 8, "Images per fine-tuning step.")


flags.DEFINE_integer("warm_images", 4000, "Images of the warm-rerun and cache figures.")


flags.DEFINE_integer("label_images", 100, "Images of the label_image figure.")


flags.DEFINE_integer(
    "packed_entries", 20000,
    "Synthetic 2048-d entries of the packed-store figure, written both ways (about 165 MB each).",
)


flags.DEFINE_list("rss_counts", ["200", "2000"], "Image counts of the memory figure.")


flags.DEFINE_string(
    "rss_module",
    "tiny",
    "Module of the memory figure (a make_module kind or a folder): the figure is about "
    "images streaming, and the tiny module keeps it quick.",
)


flags.DEFINE_string(
    "work_dir", None,
    "Folder for photos, modules and caches (default: a temporary one). Photos the benchmark "
    "wrote there before are reused while unchanged; it never removes files it did not write.")


flags.DEFINE_bool("keep_work_dir", False, "Keep the work folder at the end.")


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    unknown = sorted(set(FLAGS.figures) - set(FIGURES))
    if unknown:
        raise app.UsageError(f"--figures: unknown {', '.join(unknown)}; choose from {', '.join(FIGURES)}.")
    for name in (
        "images",
        "batch_size",
        "steps",
        "classic_steps",
        "train_batch",
        "warm_images",
        "label_images",
        "packed_entries",
        "beam_rounds",
        "eval_interval",
        "fine_tune_steps",
        "fine_tune_batch",
        "rounds",
    ):
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
        fields = dataclasses.fields(figures.Settings)
        settings = figures.Settings(**{f.name: FLAGS[f.name].value for f in fields})
        bench = figures.Bench(work, photos.module_path(FLAGS.module, work), settings)
        for figure in FIGURES:
            if figure in FLAGS.figures:
                logging.info("=== %s ===", figure)
                getattr(bench, figure)()
        print()
        print(figures.markdown_table(bench.rows))
        print()
        print(before)
        print(
            f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"benchmark took {time.monotonic() - start:.0f} s."
        )
        print("Command: python bench/run.py " + " ".join(sys.argv[1:]))
    finally:
        if not FLAGS.keep_work_dir and not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    startup.run(main)
