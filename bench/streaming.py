r"""Benchmark rows of streaming training (issue 22): speed and memory against held vectors.

    python bench/streaming.py                       # about 3 minutes on 2 CPU cores
    python bench/streaming.py --rss_counts=100000,1000000 --dimension=256

Row S1: training steps/s streaming from a packed store against the same
training with the vectors in memory, same batch, same graph (the train_steps
loop, as retrain.py runs it), in interleaved rounds (the best round of each),
and what streaming costs per example (us) against memory.
Row S2: the peak RSS of a training run (training.train on a run whose
vectors are a StoreVectors) streaming --rss_counts[1] synthetic vectors
against one of --rss_counts[0]: each in a fresh Python, store written before.
Also prints the in-memory run of the large count, for scale.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLASSES = 10


def write_store(folder, count, dimension, seed=0):
    """A packed store of count synthetic vectors in CLASSES clusters. -> (store, labels)."""
    from retrain_suite.bottleneck import packed_store

    store = packed_store.PackedStore(folder, packed_store.StoreIdentity(
        "bench", "bench", 8, 8, "float32", dimension))
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, CLASSES, count).astype(np.int64)
    centres = rng.randn(CLASSES, dimension).astype(np.float32)
    per_shard = max(1, (64 << 20) // (4 * dimension + 24))
    if not store.list_names():
        for start in range(0, count, per_shard):
            part = labels[start:start + per_shard]
            vectors = centres[part] + rng.randn(len(part), dimension).astype(np.float32)
            store.write_shard([f"{n:040x}" for n in range(start, start + len(part))], vectors)
    return store, labels


def streamed_run(store, labels, validation=1000):
    """A run_data.PreparedRun over the store: the last `validation` vectors validate."""
    from retrain_suite import dataset as dataset_lib
    from retrain_suite import run_data
    from retrain_suite.bottleneck import packed_store

    index = store.index()
    positions = index.positions([f"{n:040x}" for n in range(len(labels))])
    vectors = packed_store.StoreVectors(index, positions)
    cut = len(labels) - validation

    def split(name, rows):
        return run_data.Split(name, (None,) * len(rows), labels[rows],
                              packed_store.StoreVectors(index, vectors.positions[rows]), rows)

    rows = np.arange(len(labels))
    return run_data.PreparedRun(
        dataset=dataset_lib.Dataset("", [f"c{c}" for c in range(CLASSES)], []), source=None,
        training=split("training", rows[:cut]), validation=split("validation", rows[cut:]),
        testing=split("testing", rows[:0]), contents={}, input_size=(8, 8),
        max_image_pixels=1)


def held(run):
    """The same run with every set's vectors read into memory."""
    def load(split):
        return dataclasses.replace(split, bottlenecks=np.asarray(split.bottlenecks))

    return dataclasses.replace(run, training=load(run.training),
                               validation=load(run.validation), testing=load(run.testing))


def train(run, folder, steps, batch):
    """training.train on run. -> steps/s of the training loop (from its log line)."""
    from retrain_suite import config as config_lib
    from retrain_suite import training

    settings = config_lib.TrainingConfig(how_many_training_steps=steps, train_batch_size=batch,
                                         learning_rate=0.01, random_seed=1)
    evaluation = config_lib.EvaluationConfig(eval_step_interval=max(1, steps // 4),
                                             validation_batch_size=100, test_batch_size=-1)
    outputs = config_lib.OutputConfig(summaries_dir=os.path.join(folder, "logs"),
                                      checkpoint_path=os.path.join(folder, "ckpt"))
    began = time.monotonic()
    result = training.train(run, settings, evaluation, outputs)
    return result, time.monotonic() - began


def steps_rate(run, steps, batch):
    """Steps/s of the final layer's training loop on run's training set (its train_steps
    op, in calls of 500 steps, as retrain.py runs the steps between evaluations), after
    100 warm-up steps."""
    import tensorflow as tf

    from retrain_suite import config as config_lib
    from retrain_suite import final_layer, streamed_batches

    vectors, labels = run.training.bottlenecks, run.training.labels
    stream = (streamed_batches.Source.of(vectors, labels)
              if streamed_batches.is_streamed(vectors) else None)
    settings = config_lib.TrainingConfig(train_batch_size=batch, random_seed=1)
    g = final_layer.build_training_graph(run.dimension, final_layer.LayerSpec(CLASSES),
                                         settings, None, None, stream)
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, g.iterator_feed if stream is not None
                 else {g.bottlenecks: vectors, g.labels: labels})
        sess.run(g.train_steps, {g.learning_rates: [0.01] * 100})
        began = time.monotonic()
        for start in range(0, steps, 500):
            sess.run(g.train_steps, {g.learning_rates: [0.01] * min(500, steps - start)})
        return steps / (time.monotonic() - began)


def speed_row(folder, count, dimension, steps, batch, rounds):
    """(streamed steps/s, in-memory steps/s): the best of `rounds` interleaved rounds."""
    store, labels = write_store(os.path.join(folder, f"store_{count}_{dimension}"), count,
                                dimension)
    streamed = streamed_run(store, labels)
    memory = held(streamed)
    best = {"streamed": 0.0, "memory": 0.0}
    for _ in range(rounds):
        for name, run in (("memory", memory), ("streamed", streamed)):
            best[name] = max(best[name], steps_rate(run, steps, batch))
    return best["streamed"], best["memory"]


def rss_child(folder, count, dimension, steps, mode):
    """In a fresh Python: train on count vectors (streamed or held); print the peak RSS."""
    store, labels = write_store(os.path.join(folder, f"store_{count}_{dimension}"), count,
                                dimension)
    run = streamed_run(store, labels)
    train(held(run) if mode == "memory" else run, os.path.join(folder, f"rss_{mode}_{count}"),
          steps, 100)
    # VmHWM, not getrusage's ru_maxrss: that one keeps the forking parent's RSS across exec.
    with open("/proc/self/status") as status:
        peak = [line.split()[1] for line in status if line.startswith("VmHWM:")][0]
    print(f"PEAK_RSS_KB {peak}")


def peak_rss_mib(folder, count, dimension, steps, mode):
    """Peak RSS (MiB) of rss_child, the store written beforehand in another process."""
    write = [sys.executable, __file__, "--write", folder, str(count), str(dimension)]
    subprocess.run(write, check=True, capture_output=True)
    child = [sys.executable, __file__, "--rss", folder, str(count), str(dimension), str(steps),
             mode]
    output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    return int(output.split("PEAK_RSS_KB")[-1].split()[0]) / 1024


def main(argv):
    if argv[:1] == ["--write"]:
        write_store(argv[1], int(argv[2]), int(argv[3]))
        return
    if argv[:1] == ["--rss"]:
        rss_child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5])
        return
    options = dict(a.lstrip("-").split("=", 1) for a in argv)
    counts = [int(c) for c in options.get("rss_counts", "100000,1000000").split(",")]
    dimension = int(options.get("dimension", 256))
    batch = int(options.get("train_batch", 100))
    folder = options.get("work_dir")
    if folder:
        rows(options, folder, counts, dimension, batch)
        return
    folder = tempfile.mkdtemp(prefix="bench_streaming_")
    try:  # its stores are 1.4 GB at the default sizes
        rows(options, folder, counts, dimension, batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def rows(options, folder, counts, dimension, batch):
    """Measure and print rows S1 and S2 with the stores in folder."""
    if options.get("skip_speed"):
        streamed = memory = float("nan")
    else:
        streamed, memory = speed_row(folder, int(options.get("speed_count", 100000)),
                                     int(options.get("speed_dimension", 2048)),
                                     int(options.get("steps", 2000)), batch,
                                     int(options.get("rounds", 3)))
    per_example = [1e6 / (rate * batch) for rate in (streamed, memory)]
    print(f"S1. training steps/s streaming vs in memory, batch {batch}: {streamed:.0f} vs "
          f"{memory:.0f} steps/s = {streamed / memory:.2f}x (target >= 0.5x, "
          f"{'met' if streamed / memory >= 0.5 else 'NOT met'}); per example "
          f"{per_example[0]:.1f} us streamed vs {per_example[1]:.1f} us in memory "
          f"(+{per_example[0] - per_example[1]:.1f} us)")
    steps = int(options.get("rss_steps", 500))
    peaks = {c: peak_rss_mib(folder, c, dimension, steps, "streamed") for c in counts}
    small, large = counts[0], counts[-1]
    ratio = peaks[large] / peaks[small]
    in_memory = peak_rss_mib(folder, large, dimension, steps, "memory")
    print(f"S2. peak RSS of training streaming {large} vs {small} {dimension}-d vectors: "
          f"{peaks[large]:.0f} vs {peaks[small]:.0f} MiB = {ratio:.2f}x (target <= 1.2x, "
          f"{'met' if ratio <= 1.2 else 'NOT met'}); held in memory, {large}: "
          f"{in_memory:.0f} MiB")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    from retrain_suite.cli import startup

    startup.quiet_tensorflow()
    main(sys.argv[1:])
