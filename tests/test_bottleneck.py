"""bottleneck: the cache format, module loading, batched computation and the CLI."""

import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_dataset, run_script, synthetic_image, write_image

from retrain_suite import dataset as dataset_lib
from retrain_suite import input_pipeline
from retrain_suite.bottleneck import batch_size as batch_size_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib


def sample_vector(dimension=64, seed=0):
    rng = np.random.RandomState(seed)
    vector = rng.normal(size=dimension).astype(np.float32) * 10
    vector[:3] = [0.0, -1e-30, 3.4e38]
    return vector


# --- cache ----------------------------------------------------------------------------------


def test_entry_encode_decode_round_trip_is_exact():
    vector = sample_vector()
    data = cache_lib.encode_entry(vector)
    assert isinstance(data, bytes)
    assert len(data) == 64 * 4 + 4
    decoded, damage = cache_lib.decode_entry(data)
    assert damage is None
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    # Little-endian float32 body, whatever the machine.
    np.testing.assert_array_equal(np.frombuffer(data[:-4], "<f4"), vector)


def test_cache_store_then_lookup_returns_the_vector(tmp_path):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    content = "ab" + "0" * 38
    assert cache.lookup(content, 64) is None
    cache.store(content, sample_vector())
    assert cache.path_for(content) == os.path.join(str(tmp_path), "key", "ab", content + ".f32")
    np.testing.assert_array_equal(cache.lookup(content, 64), sample_vector())
    np.testing.assert_array_equal(cache.lookup(content), sample_vector())
    assert not [name for name in os.listdir(os.path.dirname(cache.path_for(content)))
                if ".tmp-" in name]


def truncated_mid_value(entry):
    return entry[:-6]


def truncated_whole_values(entry):
    return entry[:-8]


def garbage(entry):
    return np.random.RandomState(1).bytes(len(entry))


def bit_flipped(entry):
    damaged = bytearray(entry)
    damaged[10] ^= 0x01
    return bytes(damaged)


def too_short(entry):
    return entry[:5]


def wrong_dimension(entry):
    del entry
    return cache_lib.encode_entry(sample_vector(32))


def with_nan(entry):
    del entry
    vector = sample_vector()
    vector[5] = np.nan
    return cache_lib.encode_entry(vector)


def with_inf(entry):
    del entry
    vector = sample_vector()
    vector[7] = -np.inf
    return cache_lib.encode_entry(vector)


@pytest.mark.parametrize(
    "damage",
    [truncated_mid_value, truncated_whole_values, garbage, bit_flipped, too_short,
     wrong_dimension, with_nan, with_inf],
)
def test_damaged_cache_entry_is_detected_and_logged(tmp_path, caplog, damage):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    content = "cd" + "1" * 38
    cache.store(content, sample_vector())
    path = cache.path_for(content)
    with open(path, "rb") as f:
        entry = f.read()
    with open(path, "wb") as f:
        f.write(damage(entry))
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup(content, 64) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Damaged cache entry" in warnings[0] and path in warnings[0]


def test_missing_cache_entry_is_not_reported_as_damaged(tmp_path, caplog):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup("ef" + "2" * 38, 64) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_module_key_differs_between_handles_and_input_sizes():
    keys = {
        cache_lib.module_key("/modules/a", 32, 32),
        cache_lib.module_key("/modules/b", 32, 32),
        # Same sanitised name, different handle: the digest tells them apart.
        cache_lib.module_key("/modules/a-b", 32, 32),
        cache_lib.module_key("/modules/a_b", 32, 32),
        cache_lib.module_key("/modules/a", 64, 64),
        cache_lib.module_key("/modules/a", 32, 64),
        cache_lib.module_key("/modules/a", 32, 32, "float16"),
    }
    assert len(keys) == 7
    assert cache_lib.module_key("/modules/a", 32, 32) == cache_lib.module_key("/modules/a", 32, 32)
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_]+", key), key


# --- module loading -------------------------------------------------------------------------


def test_load_reads_static_input_size_from_signature(tiny_module):
    with tf.Graph().as_default():
        module = module_lib.load(tiny_module, default_image_size=99)
        assert (module.height, module.width) == (32, 32)
        features = module(tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3]))
        assert features.shape.as_list() == [None, 64]


@pytest.fixture(scope="module")
def any_size_module(tmp_path_factory):
    """A module whose signature leaves height and width open: mean colour, [N, 3]."""

    class MeanColour(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2])

    path = str(tmp_path_factory.mktemp("modules") / "mean_colour")
    tf.saved_model.save(MeanColour(), path)
    return path


def test_load_uses_default_size_when_signature_leaves_it_open(any_size_module):
    with tf.Graph().as_default():
        module = module_lib.load(any_size_module, default_image_size=48)
        assert (module.height, module.width) == (48, 48)
        features = module(tf.fill([2, 48, 48, 3], 0.25))
        with tf.compat.v1.Session() as sess:
            values = sess.run(features)
    np.testing.assert_allclose(values, np.full((2, 3), 0.25), atol=1e-6)


def test_compute_bottlenecks_uses_default_size_for_open_signature(tmp_path, any_size_module):
    path = str(tmp_path / "img.png")
    write_image(path, np.full((20, 30, 3), (255, 0, 51), np.uint8), "PNG")
    result = compute.compute_bottlenecks(
        [path], any_size_module, str(tmp_path / "bn"), default_image_size=24
    )
    assert (result.height, result.width) == (24, 24)
    assert "_24x24_float32" in result.module_key
    np.testing.assert_allclose(result.vectors, [[1.0, 0.0, 0.2]], atol=1e-5)


def test_load_of_nonexistent_path_raises_module_error_naming_it(tmp_path):
    missing = str(tmp_path / "no_module_here")
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(missing)
    assert missing in str(raised.value)
    assert "\n" not in str(raised.value)


def test_load_of_savedmodel_that_is_not_callable_raises_module_error(tmp_path):
    class NotCallable(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable([1.0, 2.0])

    path = str(tmp_path / "not_callable")
    tf.saved_model.save(NotCallable(), path)
    with tf.Graph().as_default(), pytest.raises(module_lib.ModuleError) as raised:
        module_lib.load(path)
    assert path in str(raised.value)
    assert "cannot be called" in str(raised.value)


def test_frozen_forward_pass_matches_the_module_as_loaded_and_reads_no_variables(tiny_module):
    images = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
    with tf.Graph().as_default() as loaded_graph:
        module = module_lib.load(tiny_module)
        features = module(tf.constant(images))
        with tf.compat.v1.Session(graph=loaded_graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            expected = sess.run(features)
    frozen = module_lib.freeze(module)
    with tf.Graph().as_default() as graph:
        features = frozen(tf.constant(images))
        with tf.compat.v1.Session(graph=graph) as sess:  # No initializers: nothing to restore.
            values = sess.run(features)
        graph_def = graph.as_graph_def()
    ops = {n.op for n in graph_def.node}
    ops |= {n.op for f in graph_def.library.function for n in f.node_def}
    assert not ops & {"VarHandleOp", "ReadVariableOp", "VariableV2"}, ops
    assert (frozen.height, frozen.width, frozen.graph) == (32, 32, None)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected[0], expected[1])
    with pytest.raises(ValueError, match="frozen already"):
        module_lib.freeze(frozen)


def test_freeze_refuses_weights_too_large_for_a_graph_def(tiny_module, monkeypatch):
    monkeypatch.setattr(module_lib, "MAX_FROZEN_BYTES", 100)
    with tf.Graph().as_default():
        module = module_lib.load(tiny_module)
    with pytest.raises(module_lib.ModuleError) as raised:
        module_lib.freeze(module)
    assert tiny_module in str(raised.value) and "smaller module" in str(raised.value)


# --- computing bottlenecks ------------------------------------------------------------------


@pytest.fixture
def small_dataset(tmp_path):
    """12 images, 4 per class, mixed formats. -> list of full paths."""
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    dataset = dataset_lib.build_dataset(image_dir, 0, 0)
    return [dataset.full_path(image) for image in dataset.images]


def test_second_run_reuses_every_cached_bottleneck(tmp_path, tiny_module, small_dataset):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    first = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    assert (first.computed, first.reused, first.skipped) == (12, 0, {})
    assert first.vectors.shape == (12, 64) and first.vectors.dtype == np.float32
    assert np.all(np.abs(first.vectors).sum(axis=1) > 0)
    assert (first.height, first.width) == (32, 32)
    assert first.summary() == "bottlenecks: 12 images, 12 distinct: 12 computed, 0 reused, 0 skipped"
    entries = [name for _, _, files in os.walk(bottleneck_dir) for name in files]
    assert len(entries) == 12 and all(name.endswith(".f32") for name in entries)

    second = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    assert (second.computed, second.reused, second.skipped) == (0, 12, {})
    np.testing.assert_array_equal(second.vectors, first.vectors)
    assert second.module_key == first.module_key


def test_image_changed_in_place_is_recomputed(tmp_path, tiny_module, small_dataset):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    first = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    changed = 5
    assert small_dataset[changed].lower().endswith((".png", ".jpg", ".jpeg"))
    pixels = synthetic_image((250, 250, 0), "checker", 40, 40, np.random.RandomState(9))
    fmt = "PNG" if small_dataset[changed].lower().endswith(".png") else "JPEG"
    write_image(small_dataset[changed], pixels, fmt)

    second = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    assert (second.computed, second.reused, second.skipped) == (1, 11, {})
    others = [i for i in range(12) if i != changed]
    np.testing.assert_array_equal(second.vectors[others], first.vectors[others])
    assert not np.allclose(second.vectors[changed], first.vectors[changed])


def test_copies_and_moves_of_an_image_share_its_cache_entry(tmp_path, tiny_module, small_dataset):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    first = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    copy = str(tmp_path / "elsewhere" / "renamed_copy.bin.png")
    os.makedirs(os.path.dirname(copy))
    with open(small_dataset[0], "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    second = compute.compute_bottlenecks([copy, *small_dataset], tiny_module, bottleneck_dir)
    assert (second.computed, second.reused) == (0, 13)
    np.testing.assert_array_equal(second.vectors[0], first.vectors[0])


def test_identical_files_in_one_run_are_computed_once_and_both_filled(
    tmp_path, tiny_module, small_dataset, caplog
):
    copy = str(tmp_path / "copy_of_first.png")
    with open(small_dataset[0], "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    paths = [small_dataset[0], small_dataset[1], copy]
    bottleneck_dir = str(tmp_path / "bottlenecks")
    with caplog.at_level(logging.INFO, logger="absl"):
        result = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir)
    assert result.skipped == {} and result.computed + result.reused == 3
    assert "Computing 2 bottlenecks for 3 images (1 is a copy) in batches of" in caplog.text
    assert result.summary() == "bottlenecks: 3 images, 2 distinct: 3 computed, 0 reused, 0 skipped"
    np.testing.assert_array_equal(result.vectors[2], result.vectors[0])
    assert np.abs(result.vectors[2]).sum() > 0
    assert not np.allclose(result.vectors[0], result.vectors[1])
    entries = [name for _, _, files in os.walk(bottleneck_dir) for name in files]
    assert len(entries) == 2


def test_undecodable_and_unreadable_files_are_skipped_with_reasons(
    tmp_path, tiny_module, small_dataset, caplog
):
    text = str(tmp_path / "data" / "red" / "not_really.jpg")
    with open(text, "w") as f:
        f.write("plain text, not a JPEG\n")
    missing = str(tmp_path / "data" / "red" / "gone.png")
    paths = [*small_dataset[:3], text, *small_dataset[3:], missing]
    bottleneck_dir = str(tmp_path / "bottlenecks")

    with caplog.at_level(logging.WARNING, logger="absl"):
        result = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir)
    assert (result.computed, result.reused) == (12, 0)
    assert set(result.skipped) == {3, 13}
    assert result.skipped[3].startswith("not a decodable image")
    assert result.skipped[13].startswith("cannot be read")
    assert result.summary() == "bottlenecks: 14 images, 13 distinct: 12 computed, 0 reused, 2 skipped"
    np.testing.assert_array_equal(result.vectors[[3, 13]], 0)
    assert np.all(np.abs(np.delete(result.vectors, [3, 13], axis=0)).sum(axis=1) > 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(text in w for w in warnings) and any(missing in w for w in warnings)

    again = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir)
    assert (again.computed, again.reused, set(again.skipped)) == (0, 12, {3, 13})
    np.testing.assert_array_equal(again.vectors, result.vectors)


def test_graph_bottlenecks_equal_eager_module_call(tmp_path, tiny_module, small_dataset):
    result = compute.compute_bottlenecks(
        small_dataset, tiny_module, str(tmp_path / "bottlenecks"), batch_size=5
    )
    images = tf.stack([
        input_pipeline.decode_and_resize(tf.io.read_file(path), 32, 32)
        for path in small_dataset
    ])
    eager = tf.saved_model.load(tiny_module)(images).numpy()
    assert eager.shape == (12, 64)
    np.testing.assert_allclose(result.vectors, eager, rtol=1e-4, atol=1e-5)
    # Different images give different vectors: the comparison is not vacuous.
    assert not np.allclose(eager[0], eager[-1])


def test_compute_bottlenecks_raises_module_error_for_missing_module(tmp_path, small_dataset):
    with pytest.raises(module_lib.ModuleError):
        compute.compute_bottlenecks(
            small_dataset, str(tmp_path / "missing_module"), str(tmp_path / "bottlenecks")
        )
    assert not os.path.exists(tmp_path / "bottlenecks")


# --- python -m bottleneck -------------------------------------------------------------------


def test_cli_computes_then_reuses_all_bottlenecks(tmp_path, tiny_module, dataset_dir):
    args = ["-m", "bottleneck", f"--image_dir={dataset_dir}",
            f"--bottleneck_dir={tmp_path / 'bottlenecks'}", f"--tfhub_module={tiny_module}"]
    first = run_script(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"bottlenecks: 36 images, 36 distinct: 36 computed, 0 reused, 0 skipped\s*$",
                     first.stdout + first.stderr, re.MULTILINE), first.stderr[-3000:]
    second = run_script(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"bottlenecks: 36 images, 36 distinct: 0 computed, 36 reused, 0 skipped\s*$",
                     second.stdout + second.stderr, re.MULTILINE), second.stderr[-3000:]


# --- mixed precision ------------------------------------------------------------------------


def no_freezing(module, precision="float32"):
    raise AssertionError(f"the module was frozen for {precision}")


def test_mixed_precision_bottlenecks_have_their_own_key_and_match_float32(
    tmp_path, tiny_module, small_dataset, monkeypatch
):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    with monkeypatch.context() as patch:
        patch.setattr(module_lib, "freeze", no_freezing)  # float32 runs the module as loaded
        fp32 = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    bf16 = compute.compute_bottlenecks(
        small_dataset, tiny_module, bottleneck_dir, precision="bfloat16"
    )
    assert "_32x32_bfloat16_" in bf16.module_key and "_32x32_float32_" in fp32.module_key
    assert (bf16.computed, bf16.reused) == (12, 0)  # float32 entries are not reused
    assert sorted(os.listdir(bottleneck_dir)) == sorted([fp32.module_key, bf16.module_key])
    # bfloat16 keeps 8 bits of mantissa: within a few percent of the float32 vectors.
    scale = np.abs(fp32.vectors).max()
    assert np.abs(bf16.vectors - fp32.vectors).max() < 0.05 * scale
    # A rerun with every vector cached does not pay for freezing the module.
    monkeypatch.setattr(module_lib, "freeze", no_freezing)
    again = compute.compute_bottlenecks(
        small_dataset, tiny_module, bottleneck_dir, precision="bfloat16"
    )
    assert (again.computed, again.reused) == (0, 12)
    np.testing.assert_array_equal(again.vectors, bf16.vectors)


def test_session_config_turns_on_the_rewrite_for_mixed_precision_only():
    on = module_lib.rewriter_config_pb2.RewriterConfig.ON
    assert module_lib.session_config("bfloat16").graph_options.rewrite_options \
        .auto_mixed_precision_onednn_bfloat16 == on
    assert module_lib.session_config("float16").graph_options.rewrite_options \
        .auto_mixed_precision == on
    plain = module_lib.session_config().graph_options.rewrite_options
    assert plain.auto_mixed_precision != on and plain.auto_mixed_precision_onednn_bfloat16 != on
    with pytest.raises(ValueError):
        module_lib.session_config("int8")


# --- the batch size -------------------------------------------------------------------------


def small_candidates(monkeypatch):
    """Measure batch sizes 2, 3 and 4, so that 36 images are enough to measure."""
    monkeypatch.setattr(batch_size_lib, "CANDIDATES", (2, 3, 4))
    monkeypatch.setattr(batch_size_lib, "MIN_IMAGES_TO_MEASURE", 3 * 9 + 8)


def test_fastest_batch_size_has_the_fewest_seconds_per_image_the_larger_on_a_tie():
    assert batch_size_lib.fastest_batch_size({8: 0.2, 16: 0.1, 32: 0.15}) == 16
    assert batch_size_lib.fastest_batch_size({8: 0.1, 16: 0.1, 32: 0.15}) == 16
    assert batch_size_lib.fastest_batch_size({8: 0.05, 16: 0.1, 32: 0.15}) == 8


def test_measured_batch_size_is_the_fastest_by_the_clock_and_warm_ups_are_not_timed():
    count = batch_size_lib.MIN_IMAGES_TO_MEASURE + 20
    # Seconds of each measuring batch: a warm-up, then two timed, per size. The warm-ups
    # are slowest per image at 16, which must not count; timed, 16 is the fastest.
    durations = iter([8.0, 1.0, 1.6, 100.0, 1.2, 1.3, 8.0, 3.2, 3.3])
    now, calls = [0.0], [0]

    def clock():
        calls[0] += 1
        if calls[0] % 2 == 0:  # The end of a batch.
            now[0] += next(durations, 1.0)
        return now[0]

    def make_batches(positions, size):
        return tf.data.Dataset.from_tensor_slices(
            tf.constant(positions, tf.int64)
        ).batch(size).map(lambda p: (p, tf.zeros([tf.size(p), 1, 1, 3])))

    with tf.Graph().as_default():
        run = batch_size_lib.BatchedRun(make_batches, range(count))
        with tf.compat.v1.Session() as sess:
            seen = [p for p, _ in run.batches(sess, [run.images], clock)]
    sizes = [len(p) for p in seen]
    assert run.chosen == 16
    assert run.seconds_per_image == pytest.approx({8: 1.0 / 8, 16: 1.2 / 16, 32: 3.2 / 32})
    assert sizes[:9] == [8, 8, 8, 16, 16, 16, 32, 32, 32]
    assert set(sizes[9:-1]) == {16} and 0 < sizes[-1] <= 16
    assert sorted(np.concatenate(seen).tolist()) == list(range(count))


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
    process = run_script(
        "-m", "bottleneck", f"--image_dir={image_dir}", f"--tfhub_module={tiny_module}",
        f"--bottleneck_dir={tmp_path / 'cache'}", "--batch_size=5", check=True,
    )
    assert "Computing 36 bottlenecks in batches of 5..." in process.stderr
    assert "the fastest per image" not in process.stderr
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
