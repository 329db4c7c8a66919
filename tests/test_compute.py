"""retrain_suite.bottleneck.compute: what reaches the module, and what is skipped."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, synthetic_image, write_image
from PIL import Image

from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import compute, make_module
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import preprocess as image_preprocess


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
    assert first.summary() == (
        "Bottlenecks: 12 images, 12 distinct (0 copies): 12 computed, 0 from the cache, "
        "0 skipped (unreadable or too large)")
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
    assert "Computing 2 bottlenecks for 3 images (1 is a copy)..." in caplog.text
    assert result.summary() == (
        "Bottlenecks: 3 images, 2 distinct (1 copy): 2 computed, 0 from the cache, "
        "0 skipped (unreadable or too large)")
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
    assert result.summary() == (
        "Bottlenecks: 14 images, 14 distinct (0 copies): 12 computed, 0 from the cache, "
        "2 skipped (unreadable or too large)")
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
        image_preprocess.decode_and_resize(tf.io.read_file(path), 32, 32)
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


def no_freezing(module, precision="float32"):
    raise AssertionError(f"the module was frozen for {precision}")


def spy_on_freezing(patch):
    """Make module.freeze record each precision it freezes for. -> that list."""
    frozen_for, freeze = [], module_lib.freeze

    def spy(module, precision="float32"):
        frozen_for.append(precision)
        return freeze(module, precision)

    patch.setattr(module_lib, "freeze", spy)
    return frozen_for


def test_float32_bottlenecks_are_computed_frozen_and_a_cached_rerun_does_not_freeze(
    tmp_path, tiny_module, small_dataset, monkeypatch, caplog
):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="absl"):
        frozen_for = spy_on_freezing(patch)
        first = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    assert frozen_for == ["float32"] and first.computed == 12
    assert "Froze the module's weights into the graph in" in caplog.text
    monkeypatch.setattr(module_lib, "freeze", no_freezing)
    again = compute.compute_bottlenecks(small_dataset, tiny_module, bottleneck_dir)
    assert (again.computed, again.reused) == (0, 12)


def test_float32_runs_the_module_as_loaded_when_it_cannot_be_frozen(
    tmp_path, tiny_module, small_dataset, monkeypatch, caplog
):
    frozen = compute.compute_bottlenecks(small_dataset, tiny_module, str(tmp_path / "frozen"))
    monkeypatch.setattr(module_lib, "MAX_FROZEN_BYTES", 100)
    with caplog.at_level(logging.WARNING, logger="absl"):
        loaded = compute.compute_bottlenecks(small_dataset, tiny_module, str(tmp_path / "loaded"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not be frozen" in warnings[0], warnings
    assert "MiB of weights" in warnings[0] and "\n" not in warnings[0]
    assert loaded.computed == 12
    np.testing.assert_allclose(loaded.vectors, frozen.vectors, rtol=1e-5, atol=1e-5)
    # Mixed precision has no way on without frozen weights: the error stops it.
    with pytest.raises(module_lib.ModuleError, match="MiB of weights"):
        compute.compute_bottlenecks(
            small_dataset, tiny_module, str(tmp_path / "mixed"), precision="bfloat16"
        )


def test_float32_runs_the_module_as_loaded_where_freezing_would_take_too_much_memory(
    tmp_path, tiny_module, small_dataset, monkeypatch, caplog
):
    with tf.Graph().as_default():
        weights = module_lib.weight_bytes(module_lib.load(tiny_module))
    extra = compute.FROZEN_MEMORY_PER_WEIGHT_BYTE * weights
    frozen_for = spy_on_freezing(monkeypatch)
    # Just enough memory: frozen.
    monkeypatch.setattr(compute.memory_budget, "physical_memory", lambda: 4 * extra)
    compute.compute_bottlenecks(small_dataset, tiny_module, str(tmp_path / "enough"))
    assert frozen_for == ["float32"]
    # A byte less: as loaded, and the log says why.
    monkeypatch.setattr(compute.memory_budget, "physical_memory", lambda: 4 * extra - 1)
    with caplog.at_level(logging.INFO, logger="absl"):
        loaded = compute.compute_bottlenecks(small_dataset, tiny_module, str(tmp_path / "short"))
    assert frozen_for == ["float32"] and loaded.computed == 12
    assert "freezing them into the graph would take about" in caplog.text
    # Mixed precision needs frozen weights, whatever the memory.
    compute.compute_bottlenecks(
        small_dataset, tiny_module, str(tmp_path / "mixed"), precision="bfloat16"
    )
    assert frozen_for == ["float32", "bfloat16"]


def test_mixed_precision_bottlenecks_have_their_own_key_and_match_float32(
    tmp_path, tiny_module, small_dataset, monkeypatch
):
    bottleneck_dir = str(tmp_path / "bottlenecks")
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


SIZE = 32


class _Pixels(tf.Module):
    """A feature vector that is the image itself, 8x8-averaged: orientation shows in it."""

    def __call__(self, images, training=False):
        del training
        return tf.reshape(tf.nn.avg_pool2d(images, 8, 8, "VALID"), [-1, (SIZE // 8) ** 2 * 3])


def pixel_module(path):
    make_module.save(make_module._FeatureVector(_Pixels(), SIZE, SIZE, False), path)
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


def test_counts_line_counts_copies_cached_and_unreadable_images_once_each(
    tmp_path, tiny_module, small_dataset, caplog
):
    bottleneck_dir = str(tmp_path / "bottlenecks")
    compute.compute_bottlenecks(small_dataset[:4], tiny_module, bottleneck_dir)  # 4 cached
    copy = str(tmp_path / "copy_of_fifth.img")
    with open(small_dataset[4], "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    cached_copy = str(tmp_path / "copy_of_first.img")
    with open(small_dataset[0], "rb") as src, open(cached_copy, "wb") as dst:
        dst.write(src.read())
    text = str(tmp_path / "not_really.jpg")
    with open(text, "w") as f:
        f.write("plain text, not a JPEG\n")
    missing = str(tmp_path / "gone.png")
    paths = [*small_dataset, copy, cached_copy, text, missing]
    with caplog.at_level(logging.INFO, logger="absl"):
        result = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir)
    # 16 images: 12 distinct photos, two copies, two that cannot be used; 4 photos cached.
    assert result.counts == compute.Counts(images=16, distinct=14, computed=8, cached=4, skipped=2)
    line = ("Bottlenecks: 16 images, 14 distinct (2 copies): 8 computed, 4 from the cache, "
            "2 skipped (unreadable or too large)")
    assert result.summary() == line
    assert caplog.records[-1].getMessage() == line  # the line that ends the phase
    assert "Computing 8 bottlenecks for 9 images (1 is a copy)..." in caplog.text
    assert (result.computed, result.reused) == (9, 5)  # images, as before


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_gives_no_time_left_from_the_batches_that_measure(caplog):
    clock = FakeClock()
    progress = compute.Progress(1000, "Bottlenecks", interval=0.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="absl"):
        # Measuring batches: slow sizes among them (4 s for 40 images).
        for _ in range(4):
            clock.now += 1.0
            progress.update(10, steady=False)
        assert "measuring the batch size (time left after it)" in caplog.records[-1].getMessage()
        assert progress.seconds_left(clock.now) is None
        # The first batch at the chosen size pays for the pipeline's restart: 3 s.
        clock.now += 3.0
        progress.update(100)
        assert progress.seconds_left(clock.now) is None
        assert caplog.records[-1].getMessage().endswith("time left after the next batch")
        # Then 100 images a second: 760 left after the next batch, 7.6 s.
        clock.now += 1.0
        progress.update(100)
    assert progress.seconds_left(clock.now) == pytest.approx(7.6)
    assert caplog.records[-1].getMessage() == "Bottlenecks: 240/1000 (24%), 30.0 images/s, 8s left"
    for _ in range(7):
        clock.now += 1.0
        progress.update(100)
    clock.now += 0.6
    progress.update(60)
    assert caplog.records[-1].getMessage().endswith("1000/1000 (100%), 64.1 images/s, done")


def test_progress_of_steps_leaves_out_the_first_one_which_pays_for_set_up():
    clock = FakeClock()
    progress = compute.Progress(100 * 8, "Fine-tuning", interval=1e9, clock=clock)
    clock.now += 20.0  # graph optimisation in the first step
    progress.update(8)
    for _ in range(9):
        clock.now += 0.5
        progress.update(8)
    # 90 steps left at 0.5 s each, not at the 2.4 s a step of the average so far.
    assert progress.seconds_left(clock.now) == pytest.approx(45.0)


def test_the_pixels_asked_for_are_kept_as_decoded_copies_included_and_none_from_the_cache(
        tmp_path, tiny_module, small_dataset):
    from retrain_suite.images import pipelines as image_pipelines

    copy = str(tmp_path / "copy_of_first.png")
    with open(small_dataset[0], "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    paths = [*small_dataset, copy]  # the copy (row 12) is not decoded: row 0's image is
    wanted = {0, 3, 7, 12}
    bottleneck_dir = str(tmp_path / "bottlenecks")
    result = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir,
                                         keep_pixels=wanted)
    assert sorted(result.pixels) == sorted(wanted)
    decoded = image_pipelines.image_batches(paths, 32, 32, 4)
    expected = {int(i): image for indices, _, images in decoded.as_numpy_iterator()
                for i, image in zip(indices, images)}
    for row in wanted:
        assert result.pixels[row].shape == (32, 32, 3)
        np.testing.assert_array_equal(result.pixels[row], expected[row])
    assert result.pixels[12] is result.pixels[0]  # one array for the copies
    # Each is its own array, not a view holding its whole batch.
    assert all(image.base is None for image in result.pixels.values())
    again = compute.compute_bottlenecks(paths, tiny_module, bottleneck_dir, keep_pixels=wanted)
    assert again.reused == 13 and again.pixels == {}
