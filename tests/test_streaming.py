"""Training that streams the bottleneck vectors from the packed store (issue 22):
streamed_batches' pipeline, the memory check that chooses it, and whole runs."""

import dataclasses
import json
import os
import re

import helpers
import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, retrain_settings, run_command

from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite import (
    errors,
    job,
    memory_budget,
    run_data,
    streamed_batches,
    training,
    vector_memory,
)
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import packed_store, shard_format

D = 8


def store_of(tmp_path, shards):
    """A packed store of D-d vectors; shards: [[(content, vector)]] one list per shard."""
    store = packed_store.PackedStore(str(tmp_path / "b"), packed_store.StoreIdentity(
        "key", "module", 8, 8, "float32", D))
    paths = [store.write_shard([c for c, _ in shard], np.stack([v for _, v in shard]))
             for shard in shards]
    return store, paths


def content(n):
    return f"{n:040x}"


def vector(n, mark=0.0):
    """A vector that says which image it is (value 0) and which copy (value 1)."""
    return np.array([n, mark] + [0.5] * (D - 2), np.float32)


def draw(source, batches, seed=3, batch_size=10):
    """`batches` batches of streamed_batches.training_batches. -> (vectors, labels)."""
    graph = tf.Graph()
    with graph.as_default():
        dataset, feed = streamed_batches.training_batches(source, batch_size, seed)
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        element = iterator.get_next()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(iterator.initializer, feed)
            drawn = [sess.run(element) for _ in range(batches)]
    return np.concatenate([v for v, _ in drawn]), np.concatenate([labels for _, labels in drawn])


def test_batches_hold_the_training_records_only_each_with_its_label(tmp_path):
    # Two shards; training takes every third image. Image 3 also has a copy in the
    # other shard (value 1 = 7), and images 30 and 31 are the same picture (one record
    # serving two training rows with their own labels). Image 5's record in shard 0 is
    # damaged: the index takes its copy from shard 1.
    first = [(content(n), vector(n)) for n in range(300)]
    second = [(content(n), vector(n, 7.0)) for n in (3, 5, *range(300, 700))]
    store, paths = store_of(tmp_path, [first, second])
    with open(paths[0], "r+b") as f:
        f.seek(shard_format.HEADER_BYTES + 5 * shard_format.record_bytes(D) + 30)
        f.write(b"\xff\xff")
    index = store.index()
    rows = list(range(0, 700, 3)) + [5]
    contents = [content(n) for n in rows] + [content(30)]
    vectors = packed_store.StoreVectors(index, index.positions(contents))
    labels = np.arange(len(contents)) + 1000
    source = streamed_batches.Source.of(vectors, labels)
    drawn, drawn_labels = draw(source, 3 * len(contents) // 10)
    # Each vector comes with its own row's label: image = contents[label - 1000].
    images = np.array([int(contents[label - 1000], 16) for label in drawn_labels])
    np.testing.assert_array_equal(drawn[:, 0], images)
    assert set(drawn_labels) == set(labels)  # every training row, nothing else
    where = dict(zip(drawn[:, 0].astype(int), drawn[:, 1]))
    assert where[5] == 7.0  # the valid copy, never the damaged record
    assert where[3] == index.read([index.position(content(3))])[0, 1]  # one copy of 3 only
    assert len({(v[0], v[1]) for v in drawn if v[0] == 3}) == 1
    counts = np.bincount(drawn_labels - 1000)
    assert counts.min() >= 1 and counts.max() <= 6  # shuffled across 3 epochs, no row favoured
    again, again_labels = draw(source, 3 * len(contents) // 10)
    other = draw(source, 3 * len(contents) // 10, seed=4)[1]
    np.testing.assert_array_equal(again_labels, drawn_labels)  # the seed fixes the order
    assert other.tolist() != drawn_labels.tolist()
    assert drawn_labels[:len(contents)].tolist() != sorted(drawn_labels[:len(contents)])


def test_a_batch_mixes_rows_of_many_blocks_and_only_the_blocks_are_read(tmp_path, monkeypatch):
    # Blocks of 16 records, chunks of 160 rows (10 blocks), batches of 20: a batch
    # takes its rows from across its chunk, not from the one or two blocks a run of
    # 20 rows comes from.
    monkeypatch.setattr(streamed_batches, "BLOCK_BYTES", 16 * shard_format.record_bytes(D))
    monkeypatch.setattr(streamed_batches, "CHUNK_BYTES", 160 * 4 * D)
    store, _ = store_of(tmp_path, [[(content(n), vector(n)) for n in range(s, s + 300)]
                                   for s in (0, 300)])
    index = store.index()
    # Records 60-99 of each 100 are of other sets: blocks such as records 64-79 are
    # never read.
    training_images = [n for n in range(600) if n % 100 < 60]
    vectors = packed_store.StoreVectors(index, index.positions(
        [content(n) for n in training_images]))
    source = streamed_batches.Source.of(vectors, np.arange(len(training_images)))
    reads = []
    open_shard = shard_format.open_shard
    monkeypatch.setattr(shard_format, "open_shard", lambda path: Recorded(
        open_shard(path), path, reads))
    drawn, _ = draw(source, 60, batch_size=20)
    images = drawn[:, 0].astype(int)
    blocks = [set((batch // 300) * 100 + (batch % 300) // 16) for batch in images.reshape(-1, 20)]
    assert min(len(b) for b in blocks) >= 6, sorted(len(b) for b in blocks)
    # Each read is one whole block of the source, at its offset, nothing before it.
    size = shard_format.record_bytes(D)
    spans = {(source.shards[shard], shard_format.HEADER_BYTES + first * size, (end - first) * size)
             for shard, first, end in source.blocks}
    assert set(reads) <= spans and {path for path, _, _ in reads} == set(source.shards)
    assert len(source.blocks) < 600 // 16


class Recorded:
    """A shard handle that notes (path, offset, bytes read from there) at each seek."""

    def __init__(self, handle, path, reads):
        self.handle, self.path, self.reads = handle, path, reads

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.note()
        self.handle.close()

    def note(self):
        if getattr(self, "offset", None) is not None:
            self.reads.append((self.path, self.offset, self.count))
        self.offset = None

    def seek(self, offset):
        self.note()
        self.offset, self.count = offset, 0
        return self.handle.seek(offset)

    def readinto(self, view):
        got = self.handle.readinto(view)
        self.count += got or 0
        return got


def test_evaluation_reads_the_store_in_chunks_and_agrees_with_memory(tmp_path, monkeypatch):
    store, _ = store_of(tmp_path, [[(content(n), vector(n)) for n in range(50)]])
    index = store.index()
    streamed = packed_store.StoreVectors(index, index.positions([content(n) for n in range(50)]))
    held = streamed[np.arange(50)] / 50
    streamed = packed_store.StoreVectors(index, streamed.positions)
    reads = []
    read = index.read
    monkeypatch.setattr(index, "read", lambda positions: reads.append(len(positions)) or read(
        positions))
    monkeypatch.setattr(training, "EVALUATION_CELLS", 4 * D)  # 4 vectors a call
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, D])
        y = tf.compat.v1.placeholder(tf.int64, [None])
        logits = tf.stack([x[:, 0] / 50, 0.5 * tf.ones_like(x[:, 0])], axis=1)
        probabilities = tf.nn.softmax(logits)
        g = type("G", (), dict(
            bottleneck_input=x, ground_truth=y, probabilities=probabilities,
            predictions=tf.argmax(probabilities, 1),
            accuracy=tf.reduce_mean(tf.cast(tf.equal(tf.argmax(probabilities, 1), y), tf.float32)),
            cross_entropy=tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=logits))))
        labels = (np.arange(50) > 20).astype(np.int64)
        with tf.compat.v1.Session(graph=graph) as sess:
            from_store = training.predict(sess, g, streamed_batches.subset(streamed, np.arange(50)))
            score = training.score(sess, g, streamed, labels)
            feed = {x: held * 50, y: labels}
            in_memory = sess.run([g.predictions, g.accuracy], feed)
    assert max(reads) <= 4 and sum(reads) == 100  # two passes of 50, in calls of 4
    np.testing.assert_array_equal(from_store[0], in_memory[0])
    assert score[0] == pytest.approx(in_memory[1])


def test_streamed_memory_does_not_grow_with_the_vectors():
    sizes = memory_budget.Sizes(image_count=10_000_000, input_size=(299, 299),
                                bottleneck_batch_size=32, dimension=2048, class_count=1000,
                                train_batch_size=100)
    held = memory_budget.estimate(sizes).needed
    streamed = memory_budget.estimate(dataclasses.replace(sizes, streamed=True)).needed
    assert held > 80e9 and streamed < 1.5e9  # 10M x 2048 float32 held; streamed: the index


@pytest.mark.parametrize("text, expected", [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20),
                                            ("1.5 gb", 1.5e9), ("123", 123)])
def test_memory_limit_sizes(text, expected):
    assert config_lib.ModuleConfig(memory_limit=text).memory_limit_bytes() == expected


@pytest.mark.parametrize("text", ["8XB", "-1", "0", "nan", "1e40", "<script>"])
def test_a_bad_memory_limit_is_one_error_line(tmp_path, text):
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    line = (f"error: --memory_limit={text} must be a size such as 8GB, 512MB or 16GiB (at least "
            "one byte).")
    # retrain.py's run in this process: its SuiteError is the command's `error:` line ...
    with pytest.raises(errors.SuiteError) as raised:
        job.run_retraining(config_lib.from_flat({
            "image_dir": image_dir, "memory_limit": text, "bottleneck_dir": f"{tmp_path}/b"}))
    assert f"error: {raised.value}" == line
    if text == "<script>":  # ... and the command itself prints it (one fresh Python)
        process = run_command("retrain.py", f"--image_dir={image_dir}", f"--memory_limit={text}",
                              f"--bottleneck_dir={tmp_path}/b")
        assert process.returncode == 1 and "Traceback" not in process.stderr
        assert process.stderr.strip().splitlines()[-1] == line


@pytest.mark.parametrize("flags, named", [({"tune_trials": 2}, "--tune_trials"),
                                          ({"sampling": "uniform"}, "--sampling=uniform")])
def test_what_needs_the_vectors_in_memory_is_refused_with_streaming(tmp_path, tiny_module,
                                                                      flags, named):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    forced = config_lib.from_flat(retrain_settings(tmp_path, image_dir, tiny_module,
                                                   stream_bottlenecks=True, **flags))
    with pytest.raises(config_lib.UsageError, match=f"--stream_bottlenecks cannot be used with "
                                                    f"{re.escape(named)}"):
        forced.validate()
    # Chosen by the memory check (a limit the vectors do not fit): refused, saying why.
    config = config_lib.from_flat(retrain_settings(tmp_path, image_dir, tiny_module, **flags))
    limit, _ = limits(config, dimension=2048, image_count=100_000)
    config = config_lib.from_flat(retrain_settings(tmp_path, image_dir, tiny_module,
                                                   memory_limit=str(limit), **flags))
    with pytest.raises(config_lib.UsageError, match=f"over --memory_limit=.*, and "
                                                    f"{re.escape(named)} needs them all"):
        vector_memory.choose(config, 2048, 2, 100_000, (32, 32))


def limits(config, dimension, image_count, input_size=(32, 32), kept_images=0):
    """(a limit between the run's memory streamed and held, the held estimate);
    kept_images: decoded images the run keeps for its check (job.kept_rows)."""
    sizes = vector_memory.sizes_of(config, dimension, 2, image_count, input_size, kept_images)
    held = memory_budget.estimate(sizes).needed
    streamed = memory_budget.estimate(dataclasses.replace(sizes, streamed=True)).needed
    assert streamed < held
    return (streamed + held) // 2, held


def accuracies(report_path):
    report = json.loads(open(report_path).read())
    return {name: report[name]["accuracy"] for name in ("testing", "validation")}


@pytest.mark.slow
def test_a_run_over_the_memory_limit_streams_to_the_in_memory_accuracy(
        tmp_path, tiny_module, caplog, monkeypatch):
    image_dir = make_dataset(tmp_path / "data", per_class=30)
    # Chunks of one batch (20 vectors), blocks of 2 records read 2 a call: streamed,
    # this run holds less than held in memory (with the real sizes only a run of more
    # than about 80 MB of vectors does).
    monkeypatch.setattr(streamed_batches, "CHUNK_BYTES", 8 * 4 * 64)
    monkeypatch.setattr(streamed_batches, "BLOCK_BYTES", 2 * shard_format.record_bytes(64))
    monkeypatch.setattr(streamed_batches, "BLOCKS_PER_READ", 2)
    results = {}
    for name in ("memory", "streamed"):
        out = tmp_path / name
        settings = retrain_settings(out, image_dir, tiny_module, eval_report=str(out / "r.json"),
                                    how_many_training_steps=300, train_batch_size=20,
                                    validation_batch_size=-1)
        if name == "streamed":
            config = config_lib.from_flat(settings)
            # The run keeps its test images' pixels for the check: counted too.
            tested = run_data.split_rows(dataset_lib.build_dataset(
                image_dir, config.data.validation_percentage, config.data.testing_percentage),
                "testing")[1]
            limit, held = limits(config, 64, 90, kept_images=len(tested))
            settings["memory_limit"] = str(limit)
        caplog.clear()
        caplog.set_level("INFO")
        job.run_retraining(config_lib.from_flat(settings))
        results[name] = (accuracies(out / "r.json"), caplog.text)
    (memory, memory_log), (streamed, streamed_log) = results["memory"], results["streamed"]
    assert "streaming them from the packed store" not in memory_log
    line = [s for s in streamed_log.splitlines() if "streaming them from the packed store" in s]
    assert len(line) == 1 and f"over --memory_limit={memory_budget.format_bytes(limit)}" in line[0]
    assert list((tmp_path / "streamed" / "bottlenecks").glob("*/packed/*.shard"))
    # Same seed, same data: the same split, and accuracy within noise of the in-memory run.
    split = re.compile(r"Images per class and set:\n(?:.*\n){4}")
    assert split.search(memory_log).group(0) == split.search(streamed_log).group(0)
    for name in ("testing", "validation"):
        assert abs(memory[name] - streamed[name]) <= 0.2, (memory, streamed)
    assert min(streamed.values()) >= 0.7
    # Export and its check ran on the streamed run too.
    assert (tmp_path / "streamed" / "out" / "output_graph.pb").exists()
    assert "Exported files on the test set" in streamed_log


def test_a_shard_gone_during_training_stops_it_with_one_line_naming_it(tmp_path):
    store, paths = store_of(tmp_path, [[(content(n), vector(n)) for n in range(60)]])
    index = store.index()
    contents = [content(n) for n in range(60)]
    arrays = {split: (np.zeros([6, D], np.float32), np.arange(6) % 2, [None] * 6)
              for split in ("training", "validation", "testing")}
    run = helpers.prepared_run(arrays, 2)
    streamed = packed_store.StoreVectors(index, index.positions(contents))
    run = dataclasses.replace(run, training=dataclasses.replace(
        run.training, labels=np.arange(60) % 2, bottlenecks=streamed, rows=np.arange(60)))
    settings = {n: config_lib.default(n) for n in config_lib.field_names()}
    settings.update(how_many_training_steps=5, random_seed=1, summaries_dir=str(tmp_path / "logs"),
                    checkpoint_path=str(tmp_path / "layer"))
    config = config_lib.from_flat(settings)
    os.remove(paths[0])  # compacted away, say, after the run listed the store
    with pytest.raises(cache_lib.CacheError, match="Cannot read bottleneck shard .*Run again"):
        training.train(run, config.training, config.evaluation, config.outputs)
