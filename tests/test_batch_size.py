"""retrain_suite.bottleneck.batch_size: the batch size measured, or given."""

import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset

from retrain_suite import command_config
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import compute
from retrain_suite.cli import bottleneck as bottleneck_cli


def small_candidates(monkeypatch):
    """Measure batch sizes 2, 3 and 4, so that 36 images are enough to measure."""
    monkeypatch.setattr(batch_size_lib, "CANDIDATES", (2, 3, 4))
    monkeypatch.setattr(batch_size_lib, "MIN_IMAGES_TO_MEASURE", 3 * 9 + 8)


def test_fastest_batch_size_has_the_fewest_seconds_per_image_the_larger_on_a_tie():
    assert batch_size_lib.fastest_batch_size({8: 0.2, 16: 0.1, 32: 0.15}) == 16
    assert batch_size_lib.fastest_batch_size({8: 0.1, 16: 0.1, 32: 0.15}) == 16
    assert batch_size_lib.fastest_batch_size({8: 0.05, 16: 0.1, 32: 0.15}) == 8


def test_measured_batch_size_is_the_fastest_by_the_clock_and_warm_ups_are_not_timed(
        monkeypatch):
    count = batch_size_lib.MIN_IMAGES_TO_MEASURE + 20
    events = []  # "take": a batch put together from the pipeline; "clock": a reading
    take = batch_size_lib._Blocks.take
    monkeypatch.setattr(batch_size_lib._Blocks, "take",
                        lambda self, size: events.append("take") or take(self, size))
    # Seconds of each measuring batch: a round of warm-ups (8, 16, 32), then two timed
    # rounds. The warm-ups are slowest per image at 16, which must not count; timed,
    # 16 is the fastest.
    durations = iter([8.0, 100.0, 8.0, 1.0, 1.2, 3.2, 1.6, 1.3, 3.3])
    now, calls = [0.0], [0]

    def clock():
        events.append("clock")
        calls[0] += 1
        if calls[0] % 2 == 0:  # The end of a batch.
            now[0] += next(durations, 1.0)
        return now[0]

    made = []

    def make_batches(positions, size):
        made.append((list(positions), size))
        return tf.data.Dataset.from_tensor_slices(
            tf.constant(positions, tf.int64)
        ).batch(size).map(lambda p: (p, tf.zeros([tf.size(p), 1, 1, 3])))

    with tf.Graph().as_default():
        run = batch_size_lib.BatchedRun(make_batches, range(count))
        with tf.compat.v1.Session() as sess:
            seen = [p for p, _ in run.batches(sess, [run.images], clock)]
    # One pipeline over every image, in blocks that make up any candidate: decoding is
    # never restarted between the measuring batches and the rest.
    assert made == [(list(range(count)), 8)] and batch_size_lib.block_size() == 8
    # Each measuring batch is timed once it is decoded: the clock reads around its run
    # alone, never around the wait for the pipeline.
    assert events[:27] == ["take", "clock", "clock"] * 9
    sizes = [len(p) for p in seen]
    assert run.chosen == 16
    assert run.seconds_per_image == pytest.approx({8: 1.0 / 8, 16: 1.2 / 16, 32: 3.2 / 32})
    assert sizes[:9] == [8, 16, 32] * 3
    assert set(sizes[9:-1]) == {16} and 0 < sizes[-1] <= 16
    assert sorted(np.concatenate(seen).tolist()) == list(range(count))


def test_images_dropped_while_measuring_cost_no_other_image():
    """A size whose images mostly fail to decode runs out of batches early: its
    turns are skipped, and every other image still comes out."""
    count = batch_size_lib.MIN_IMAGES_TO_MEASURE + 20
    with tf.Graph().as_default():
        probe = batch_size_lib.BatchedRun(lambda positions, size: make_plain_batches(positions, size),
                                          range(count))
        eights = [p for size, part in probe.segments if size == 8 for p in part]
    dropped = set(eights[:16])  # two of the three batches of 8: only one is left

    def make_batches(positions, size):
        kept = [p for p in positions if p not in dropped]
        return make_plain_batches(kept, size)

    with tf.Graph().as_default():
        run = batch_size_lib.BatchedRun(make_batches, range(count))
        with tf.compat.v1.Session() as sess:
            seen = [p for p, _ in run.batches(sess, [run.images])]
    assert sorted(np.concatenate(seen).tolist()) == sorted(set(range(count)) - dropped)
    assert run.chosen in batch_size_lib.CANDIDATES


def make_plain_batches(positions, size):
    return tf.data.Dataset.from_tensor_slices(
        tf.constant(positions, tf.int64)
    ).batch(size).map(lambda p: (p, tf.zeros([tf.size(p), 1, 1, 3])))


def test_measured_batch_size_is_logged_and_gives_the_vectors_of_a_given_size(
    tmp_path, tiny_module, caplog, monkeypatch
):
    small_candidates(monkeypatch)
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    dataset = dataset_lib.build_dataset(image_dir, 0, 0)
    paths = [dataset.full_path(image) for image in dataset.images]
    assert len(paths) == 36
    caplog.set_level(logging.INFO)
    measured = compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "measured"))
    match = re.search(
        r"Batch size ([234]): the fastest per image of 2: [\d.]+ ms, 3: [\d.]+ ms, "
        r"4: [\d.]+ ms; the other 9 images run in batches of (\d)", caplog.text
    )
    assert match and match.group(1) == match.group(2)
    given = compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "given"), batch_size=5)
    assert measured.computed == given.computed == 36
    np.testing.assert_allclose(measured.vectors, given.vectors, rtol=1e-5, atol=1e-6)
    assert measured.steady_rate > 0


def test_given_batch_size_is_used_without_measuring(tmp_path, tiny_module, caplog, monkeypatch):
    small_candidates(monkeypatch)
    monkeypatch.setattr(batch_size_lib, "fastest_batch_size", None)  # Fails if called.
    image_dir = make_dataset(tmp_path / "data", per_class=12)
    caplog.set_level(logging.INFO)
    # The bottleneck command's fill (python -m bottleneck --batch_size=5), in this process.
    bottleneck_cli.fill(command_config.BottleneckConfig(
        image_dir=image_dir, tfhub_module=tiny_module, bottleneck_dir=str(tmp_path / "cache"),
        batch_size=5), "float32")
    assert "Computing 36 bottlenecks..." in caplog.text
    assert "Batch size: 5, as given." in caplog.text
    assert "the fastest per image" not in caplog.text
    caplog.clear()
    seen = []
    batches = batch_size_lib.BatchedRun.batches

    def recording(self, *args, **kwargs):
        for values in batches(self, *args, **kwargs):
            seen.append(len(values[0]))
            yield values

    monkeypatch.setattr(batch_size_lib.BatchedRun, "batches", recording)
    result = compute.compute_bottlenecks(
        [os.path.join(root, name) for root, _, names in os.walk(image_dir) for name in names],
        tiny_module, str(tmp_path / "in_process"), batch_size=5,
    )
    assert result.computed == 36 and seen == [5] * 7 + [1]
    assert "the fastest per image" not in caplog.text


def counted_batches(decoded, fail_at=None):
    """make_batches whose images are counted in `decoded` (a list) as they are made;
    the one at position fail_at raises in the pipeline."""

    def make(positions, size):
        def count(position):
            if position == fail_at:
                raise ValueError("a pipeline that breaks")
            decoded.append(int(position))
            return np.zeros([1, 1, 3], np.float32)

        def load(position):
            image = tf.numpy_function(count, [position], tf.float32, stateful=True)
            image.set_shape([1, 1, 3])
            return position, image

        return tf.data.Dataset.from_tensor_slices(
            tf.constant(positions, tf.int64)).map(load).batch(size)

    return make


def wait_for(condition, seconds=30):
    import time
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_decoding_starts_before_the_batches_run_and_stops_at_the_bound_ahead():
    decoded = []
    count = 1000
    run = batch_size_lib.BatchedRun(counted_batches(decoded), range(count), batch_size=4)
    run.start()  # before any graph to run the batches through exists
    ahead = batch_size_lib.images_held(4, 12)  # images of 1x1x3 float32
    assert wait_for(lambda: len(decoded) >= batch_size_lib.AHEAD_IMAGES)
    time_to_overrun = wait_for(lambda: len(decoded) > ahead, seconds=1)
    assert not time_to_overrun, f"{len(decoded)} decoded ahead, more than {ahead}"
    with tf.Graph().as_default():
        images = tf.identity(run.images)
        with tf.compat.v1.Session() as sess:
            seen = [p for p, _ in run.batches(sess, [images])]
    assert sorted(np.concatenate(seen).tolist()) == list(range(count))


def test_large_images_are_decoded_ahead_up_to_a_number_of_bytes(monkeypatch):
    monkeypatch.setattr(batch_size_lib, "AHEAD_BYTES", 10 * 12)  # ten 1x1x3 float32 images
    decoded = []
    run = batch_size_lib.BatchedRun(counted_batches(decoded), range(1000), batch_size=4)
    run.start()
    held = batch_size_lib.images_held(4, 12)
    assert held == (2 + 2) * 4 + 2 * 4  # two blocks of 4 waiting, not 128 images
    assert wait_for(lambda: len(decoded) >= 8)
    assert not wait_for(lambda: len(decoded) > held, seconds=1), len(decoded)
    run.stop()


def test_decoding_stops_when_the_pass_ends_early():
    decoded = []
    run = batch_size_lib.BatchedRun(counted_batches(decoded), range(10000), batch_size=4)
    with tf.Graph().as_default():
        images = tf.identity(run.images)
        with tf.compat.v1.Session() as sess:
            batches = run.batches(sess, [images])
            next(batches)
            batches.close()  # the caller stops after one batch
    thread = run._decoder.thread
    assert not thread.is_alive()
    stopped_at = len(decoded)
    assert stopped_at <= batch_size_lib.images_held(4, 12) + 4
    wait_for(lambda: len(decoded) > stopped_at, seconds=0.5)
    assert len(decoded) == stopped_at


def test_a_run_stopped_before_its_batches_leaves_no_thread_decoding():
    decoded = []
    run = batch_size_lib.BatchedRun(counted_batches(decoded), range(10000), batch_size=4)
    run.start()
    assert wait_for(lambda: len(decoded) >= 4)
    run.stop()  # the module could not be frozen, say
    assert not run._decoder.thread.is_alive()


def raised_within(seconds, work):
    """What work() raised on a thread, None if nothing; fails if it is still running
    after `seconds` (a hang)."""
    import threading
    raised = []

    def call():
        try:
            work()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "still waiting for blocks: a hang"
    return raised[0] if raised else None


def test_a_second_pass_or_one_after_stop_is_refused_instead_of_hanging():
    run = batch_size_lib.BatchedRun(counted_batches([]), range(20), batch_size=4)
    with tf.Graph().as_default():
        images = tf.identity(run.images)
        with tf.compat.v1.Session() as sess:
            assert len(list(run.batches(sess, [images]))) == 5
            again = raised_within(30, lambda: list(run.batches(sess, [images])))
    assert isinstance(again, RuntimeError) and "runs once" in str(again)
    stopped = batch_size_lib.BatchedRun(counted_batches([]), range(5000), batch_size=4)
    stopped.start()
    stopped.stop()  # before its batches, and before decoding was done
    assert stopped._decoder.queue.empty()  # the blocks not taken are let go
    with tf.Graph().as_default():
        images = tf.identity(stopped.images)
        with tf.compat.v1.Session() as sess:
            late = raised_within(30, lambda: list(stopped.batches(sess, [images])))
    assert isinstance(late, RuntimeError)


def test_an_error_in_the_pipeline_is_raised_where_the_batches_are_taken():
    run = batch_size_lib.BatchedRun(counted_batches([], fail_at=37), range(100), batch_size=4)
    with tf.Graph().as_default():
        images = tf.identity(run.images)
        with tf.compat.v1.Session() as sess:
            with pytest.raises(tf.errors.OpError, match="a pipeline that breaks"):
                for _ in run.batches(sess, [images]):
                    pass
    assert not run._decoder.thread.is_alive()


def test_bottlenecks_start_decoding_before_the_module_is_frozen(tmp_path, tiny_module,
                                                                monkeypatch):
    """The module's load and freezing take a second or more of one core: decoding
    goes on meanwhile."""
    order = []
    start, freeze = batch_size_lib.BatchedRun.start, compute.frozen_forward
    monkeypatch.setattr(batch_size_lib.BatchedRun, "start",
                        lambda self: order.append("decoding") or start(self))
    monkeypatch.setattr(compute, "frozen_forward",
                        lambda *args: order.append("freezing") or freeze(*args))
    image_dir = make_dataset(tmp_path / "data", per_class=3)
    dataset = dataset_lib.build_dataset(image_dir, 0, 0)
    paths = [dataset.full_path(image) for image in dataset.images]
    result = compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "cache"))
    assert result.computed == len(paths)
    assert order == ["decoding", "freezing"]
