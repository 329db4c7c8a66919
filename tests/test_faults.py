"""Bad files, bad arguments, kills, damage and untrusted graphs: the run goes on, nothing is lost."""

import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    ROOT,
    final_layer_constants,
    make_dataset,
    retrain_settings,
    run_command,
    synthetic_image,
    write_image,
)
from PIL import Image, ImageOps

from retrain_suite import atomic_files, command_config, job, output_paths
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute
from retrain_suite.cli import label_image as label_image_cli
from retrain_suite.images import files as image_files
from retrain_suite.images import preprocess as image_preprocess

GOOD_PER_CLASS = 12


def jpeg_bytes(pixels, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def png_header_only(width, height):
    """A PNG whose header claims width x height, with no real pixel data."""

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# File name -> why it must be skipped (a substring of the reason logged).
BAD_FILES = {
    "zero.jpg": "empty file",
    "truncated.jpg": "not a decodable image",
    "page.jpg": "not a decodable image",
    "corrupt.png": "not a decodable image",
    "huge.png": "too large: 20000x20000",
    "loop.jpg": "cannot be read",
    "dangling.jpg": "cannot be read",
}
# Unusual but good: these must be used.
ODD_GOOD_FILES = [
    "png_named.jpg", "sixteen_bit.png", "animated.gif", "cmyk.jpg", "rotated_exif.jpg",
    "name with spaces 'quoted' \"double\" café 猫.jpg", "palette.png", "alpha.png",
]


def make_messy_dataset(root):
    """Two good classes, one full of odd-but-good and bad files, one all bad."""
    image_dir = make_dataset(root, per_class=GOOD_PER_CLASS, classes={
        "red": ((220, 40, 40), "solid"), "blue": ((40, 60, 210), "checker"),
    })
    red = os.path.join(image_dir, "red")
    rng = np.random.RandomState(3)
    pixels = synthetic_image((220, 40, 40), "solid", 40, 50, rng)
    good_jpeg = jpeg_bytes(pixels)
    with open(os.path.join(red, "zero.jpg"), "wb"):
        pass
    with open(os.path.join(red, "truncated.jpg"), "wb") as f:
        f.write(good_jpeg[: len(good_jpeg) // 2])
    with open(os.path.join(red, "page.jpg"), "w") as f:
        f.write("<html><body>Not found</body></html>")
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    with open(os.path.join(red, "corrupt.png"), "wb") as f:
        f.write(png.getvalue()[:60] + b"\x00garbage" * 20)
    with open(os.path.join(red, "huge.png"), "wb") as f:
        f.write(png_header_only(20000, 20000))
    os.symlink(os.path.join(red, "loop.jpg"), os.path.join(red, "loop.jpg"))
    os.symlink(os.path.join(red, "missing-target.jpg"), os.path.join(red, "dangling.jpg"))

    with open(os.path.join(red, "png_named.jpg"), "wb") as f:
        f.write(png.getvalue())
    Image.fromarray((pixels.astype(np.uint16) * 257)[..., 0]).save(
        os.path.join(red, "sixteen_bit.png"))
    frames = [Image.fromarray(pixels), Image.fromarray(pixels[::-1])]
    frames[0].save(os.path.join(red, "animated.gif"), save_all=True, append_images=frames[1:])
    Image.fromarray(pixels).convert("CMYK").save(os.path.join(red, "cmyk.jpg"), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(pixels, 1).copy()).save(
        os.path.join(red, "rotated_exif.jpg"), "JPEG", exif=exif)
    with open(os.path.join(red, ODD_GOOD_FILES[5]), "wb") as f:
        f.write(good_jpeg)
    Image.fromarray(pixels).convert("P").save(os.path.join(red, "palette.png"))
    Image.fromarray(pixels).convert("RGBA").save(os.path.join(red, "alpha.png"))

    # Hidden things that are neither classes nor images.
    with open(os.path.join(red, ".DS_Store"), "wb") as f:
        f.write(b"\x00\x00\x00\x01Bud1")
    write_image(os.path.join(image_dir, ".ipynb_checkpoints", "x.jpg"), pixels, "JPEG")
    write_image(os.path.join(red, ".hidden", "y.jpg"), pixels, "JPEG")
    # A class whose every file is bad is no class at all.
    os.makedirs(os.path.join(image_dir, "broken"))
    with open(os.path.join(image_dir, "broken", "a.jpg"), "w") as f:
        f.write("nope")
    with open(os.path.join(image_dir, "broken", "b.png"), "wb"):
        pass
    return image_dir


def snapshot(folder):
    """{path: (sha1, mtime)} of every file, to prove nothing was changed."""
    state = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not os.path.exists(path):
                state[path] = ("link", os.readlink(path))
                continue
            try:
                with open(path, "rb") as f:
                    state[path] = (hashlib.sha1(f.read()).hexdigest(), os.stat(path).st_mtime_ns)
            except OSError:
                state[path] = ("unreadable", os.readlink(path) if os.path.islink(path) else None)
    return state


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_dataset(str(tmp_path_factory.mktemp("messy") / "data"))


def test_bad_files_are_skipped_counted_and_reported_while_the_run_goes_on(
    messy, tiny_module, tmp_path, caplog
):
    before = snapshot(messy)
    caplog.set_level("INFO")
    settings = retrain_settings(tmp_path, messy, tiny_module, testing_percentage=25)
    job.run_retraining(config_lib.from_flat(settings))
    log = caplog.text
    for name, reason in BAD_FILES.items():
        lines = [line for line in log.splitlines() if f"red/{name}:" in line and "Skipping" in line]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    usable = 2 * GOOD_PER_CLASS + len(ODD_GOOD_FILES)
    skipped = len(BAD_FILES) + 2  # and the two files of the all-bad class
    # Counted by distinct content: some bad files may hold the same bytes.
    counts = re.search(rf"Bottlenecks: {usable + skipped} images, (\d+) distinct \(\d+ cop(?:y|ies)\): "
                       r"(\d+) computed, 0 from the cache, (\d+) skipped", log)
    distinct, computed, skipped_contents = map(int, counts.groups())
    assert computed == usable and computed + skipped_contents == distinct
    assert "Class broken has no usable images left" in log
    with open(settings["output_labels"], encoding="utf-8") as f:
        assert f.read() == "blue\nred\n"
    assert snapshot(messy) == before


def test_pre_input_lists_the_same_bad_files(messy, tmp_path):
    process = run_command(
        "pre_input.py", f"--image_dir={messy}", f"--output_dir={tmp_path}/prepared", check=True
    )
    for name, reason in BAD_FILES.items():
        assert any(f"red/{name}: " in line and reason in line
                   for line in process.stderr.splitlines()), name
    listed = "".join(
        open(os.path.join(tmp_path, "prepared", f"{s}.txt"), encoding="utf-8").read()
        for s in dataset_lib.SPLITS
    )
    for name in ODD_GOOD_FILES:
        assert f"red/{name}\tred\n" in listed
    for name in BAD_FILES:
        assert f"red/{name}\t" not in listed
    assert "broken" not in open(os.path.join(tmp_path, "prepared", "labels.txt")).read()
    assert ".ipynb_checkpoints" not in listed and ".hidden" not in listed


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_photo_viewer(tmp_path, orientation):
    rng = np.random.RandomState(orientation)
    pixels = rng.randint(0, 255, (12, 20, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / "photo.png")
    Image.fromarray(pixels).save(path, exif=exif)
    info = image_files.inspect_image_file(path)
    assert info.orientation == orientation and info.problem is None
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    ours = image_preprocess.decode_and_resize(
        tf.io.read_file(path), upright.shape[0], upright.shape[1], info.orientation
    ).numpy()
    np.testing.assert_allclose(ours * 255.0, upright, atol=1e-3)


def test_label_image_sees_an_exif_rotated_photo_upright(trained, tmp_path):
    source = os.path.join(trained["image_dir"], "red", "img1.png")
    pixels = np.asarray(Image.open(source).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned clockwise; the viewer turns it back
    Image.fromarray(pixels).save(tmp_path / "upright.png")
    Image.fromarray(np.rot90(pixels, -1).copy()).save(tmp_path / "stored_turned.png", exif=exif)
    settings = trained["settings"]
    # What label_image.py classifies a frozen graph with, in this process.
    _, results, _ = label_image_cli.classify_with_graph(command_config.LabelImageConfig(
        image=(str(tmp_path / "upright.png"), str(tmp_path / "stored_turned.png")),
        graph=settings["output_graph"], labels=settings["output_labels"]))
    upright, turned = results[0], results[1]
    np.testing.assert_array_equal(upright.classes, turned.classes)
    np.testing.assert_array_equal(upright.scores, turned.scores)


def test_bottleneck_dir_inside_image_dir_is_not_a_class(dataset_dir, tiny_module, tmp_path):
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, bottleneck_dir=os.path.join(dataset_dir, "cache"),
        how_many_training_steps=20, eval_step_interval=10,
    )
    job.run_retraining(config_lib.from_flat(settings))
    assert os.listdir(os.path.join(dataset_dir, "cache"))
    job.run_retraining(config_lib.from_flat(settings))  # The cache now holds files: still not a class.
    with open(settings["output_labels"]) as f:
        assert f.read() == "blue\ngreen\nred\n"


def test_output_location_that_cannot_be_written_is_refused_before_any_work(
    dataset_dir, tiny_module, tmp_path
):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, output_graph=str(blocker / "sub" / "graph.pb")
    )
    with pytest.raises(output_paths.PathError, match="a_file is a file, not a folder"):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["bottleneck_dir"])
    assert not os.path.exists(os.path.dirname(settings["output_labels"]))


@pytest.mark.parametrize("bad_name", ["tab\there", "new\nline"])
def test_label_with_tab_or_newline_is_refused(tmp_path, tiny_module, bad_name):
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    os.rename(os.path.join(image_dir, "red"), os.path.join(image_dir, bad_name))
    settings = retrain_settings(tmp_path, image_dir, tiny_module)
    with pytest.raises(dataset_lib.DatasetError, match="tab or a line break"):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["bottleneck_dir"])


def test_cache_write_error_names_the_path_and_leaves_no_partial_entry(
    dataset_dir, tiny_module, tmp_path, monkeypatch
):
    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files, "write_bytes", disk_full)
    paths = [os.path.join(dataset_dir, "red", "img0.jpg")]
    with pytest.raises(cache_lib.CacheError, match="No space left on device") as raised:
        compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "cache"))
    assert str(tmp_path / "cache") in str(raised.value)
    entries = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
    assert entries == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "output_graph.pb"
    target.write_bytes(b"old, complete")

    class Broken:
        def __init__(self, *args):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def write(self, data):
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(tf.io.gfile, "GFile", Broken)
    with pytest.raises(OSError):
        atomic_files.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old, complete"
    assert os.listdir(tmp_path) == ["output_graph.pb"]


def test_two_runs_sharing_a_cache_do_not_corrupt_it(dataset_dir, tiny_module, tmp_path):
    cache_dir = str(tmp_path / "shared")
    command = [sys.executable, "-m", "bottleneck", f"--image_dir={dataset_dir}",
               f"--bottleneck_dir={cache_dir}", f"--tfhub_module={tiny_module}", "--batch_size=1"]
    runs = [subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
    # A third fill, in this process, finds every vector.
    dataset = dataset_lib.build_dataset(dataset_dir, 0, 0)
    third = compute.compute_bottlenecks([dataset.full_path(i) for i in dataset.images],
                                        tiny_module, cache_dir, batch_size=1)
    assert third.counts.line().startswith(
        "Bottlenecks: 36 images, 36 distinct (0 copies): 0 computed, 36 from the cache, 0 skipped")
    files = [os.path.join(d, f) for d, _, names in os.walk(cache_dir) for f in names]
    memos = [f for f in files if os.path.basename(os.path.dirname(f)) == "photos"]
    assert all(f.endswith(".json") for f in memos)  # the photos read, remembered (photo_memo)
    entries = sorted(set(files) - set(memos))
    assert len(entries) == 36  # No temporary files left behind by either run.
    for path in entries:
        with open(path, "rb") as f:
            content = os.path.basename(path)[:-len(cache_lib.ENTRY_SUFFIX)]
            assert cache_lib.decode_entry(f.read(), content)[1] is None


# --- Killed runs ----------------------------------------------------------------------


def write_slow_module(path):
    """A feature-vector module slow enough (~10 ms an image) to be killed mid-way."""

    class Slow(tf.Module):
        def __init__(self):
            super().__init__()
            self.project = tf.Variable(tf.random.stateless_normal([3, 256], [1, 2]) * 0.5)
            self.mix = tf.Variable(tf.random.stateless_normal([256, 256], [3, 4]) * 0.06)

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            x = tf.reshape(images, [-1, 3]) @ self.project  # [N*1024, 256]
            for _ in range(6):
                x = tf.tanh(x @ self.mix)
            return tf.reduce_mean(tf.reshape(x, [-1, 1024, 256]), axis=1)

    module = Slow()
    tf.saved_model.save(module, path)
    return path


@pytest.fixture(scope="module")
def slow_module(tmp_path_factory):
    return write_slow_module(str(tmp_path_factory.mktemp("slow") / "module"))


def kill_when(args, condition, timeout=120):
    """Start retrain.py, SIGKILL it once condition(stderr so far) holds. -> stderr."""
    process = subprocess.Popen(
        [sys.executable, "retrain.py", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(process.stderr.readline, "")))
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if condition("".join(seen)):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return "".join(seen)
            if process.poll() is not None:
                raise AssertionError("finished before it was killed:\n" + "".join(seen)[-3000:])
            time.sleep(0.005)
        raise AssertionError("the moment to kill never came:\n" + "".join(seen)[-3000:])
    finally:
        process.kill()
        reader.join()


def cache_entries(cache_dir):
    return [f for _, _, files in os.walk(cache_dir) for f in files if f.endswith(".f32")]


def args_for(settings):
    names = ["image_dir", "tfhub_module", "bottleneck_dir", "output_graph", "output_labels",
             "summaries_dir", "checkpoint_path", "how_many_training_steps",
             "eval_step_interval", "random_seed", "learning_rate", "saved_model_dir",
             "testing_percentage", "bottleneck_batch_size"]
    return [f"--{n}={settings[n]}" for n in names]


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, slow_module):
    root = tmp_path_factory.mktemp("kills")
    image_dir = make_dataset(root / "data", per_class=40)
    reference = retrain_settings(
        root / "reference", image_dir, slow_module, how_many_training_steps=3000,
        eval_step_interval=100, testing_percentage=25, bottleneck_batch_size=1,
        saved_model_dir=str(root / "reference" / "saved_model"),
    )
    log = run_command("retrain.py", *args_for(reference), check=True).stderr
    accuracy = [line for line in log.splitlines() if "Final test accuracy" in line][0]
    return root, image_dir, reference, accuracy.split("Final test accuracy")[1]


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["caching", "training", "export"])
def test_killed_run_is_finished_by_the_next_one_with_the_same_result(kill_setup, phase):
    root, image_dir, reference, _ = kill_setup
    settings = dict(reference)
    for key in ("bottleneck_dir", "output_graph", "output_labels", "summaries_dir",
                "checkpoint_path", "saved_model_dir"):
        settings[key] = reference[key].replace(str(root / "reference"), str(root / phase))
    cache_dir = settings["bottleneck_dir"]
    conditions = {
        "caching": lambda log: len(cache_entries(cache_dir)) >= 5,
        "training": lambda log: "Step 300/3000" in log,
        "export": lambda log: "Final test accuracy" in log,
    }
    kill_when(args_for(settings), conditions[phase])
    cached_when_killed = len(cache_entries(cache_dir))
    if phase == "caching":
        assert 5 <= cached_when_killed < 120
    if os.path.exists(settings["output_graph"]):  # Only ever a whole graph.
        assert final_layer_constants(settings["output_graph"])
    finished = run_command("retrain.py", *args_for(settings), check=True).stderr
    computed, reused = 120 - cached_when_killed, cached_when_killed
    assert (f"Bottlenecks: 120 images, 120 distinct (0 copies): {computed} computed, {reused} "
            "from the cache, 0 skipped") in finished
    accuracy = [line for line in finished.splitlines() if "Final test accuracy" in line]
    assert len(accuracy) == 1 and accuracy[0].endswith(kill_setup[3])
    expected = final_layer_constants(reference["output_graph"])
    got = final_layer_constants(settings["output_graph"])
    assert sorted(expected) == ["final_retrain_ops/biases", "final_retrain_ops/weights"]
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(expected[name], got[name])
    serve = tf.saved_model.load(settings["saved_model_dir"]).signatures["serving_default"]
    assert serve(image=tf.zeros([1, 32, 32, 3]))["prediction"].shape == (1, 3)


def test_unreadable_file_is_skipped_with_the_reason(tmp_path, monkeypatch):
    # Tests run as root here, for whom chmod 000 does not stop reading: the
    # permission error is raised by hand, at the same place the OS would
    # (tests/test_hostile_inputs.py drops root's bypass with setpriv instead).
    path = tmp_path / "secret.jpg"
    path.write_bytes(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    real_open = os.open

    def no_permission(name, *args, **kwargs):
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_permission)
    info = image_files.inspect_image_file(str(path))
    assert info.problem == f"cannot be read: {path}; Permission denied"
