"""Hostile inputs (issue 10): what a photo folder, a module or a graph can do to a run.

Each test guards one promise of README "What happens when...": the bytes
cached are the bytes decoded, a module is known by its content, special
files and odd names never hang or crash a run, the pixel limit holds when
PIL cannot read a header, and label_image refuses what it cannot run.
Hangs and tracebacks are proven absent in subprocesses with a timeout.
"""

import hashlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, make_dataset, retrain_settings, run_command, synthetic_image, write_image

from retrain_suite import (
    artifact_check,
    classifier,
    command_config,
    errors,
    job,
    preparation,
    tflite_metadata,
)
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute, make_module
from retrain_suite.cli import bottleneck as bottleneck_cli
from retrain_suite.images import files as image_files

TIMEOUT = 300  # A hang is the failure; a healthy run takes seconds.


def run(*args, privileged=True):
    """A command in a process of its own (helpers.run_command), ended after a while if it
    hangs; unprivileged, a fresh Python under setpriv. -> CompletedProcess (text)."""
    if privileged:
        return run_command(*args)
    # Root without its permission bypass: chmod 000 really stops reading.
    command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def no_traceback(process):
    assert "Traceback" not in process.stderr, process.stderr[-3000:]


def png_bytes(colour, size=(20, 24)):
    path_free = synthetic_image(colour, "solid", size[0], size[1], np.random.RandomState(0))
    return tf.io.encode_png(path_free).numpy()


def sha1(data):
    return hashlib.sha1(data).hexdigest()


# --- 2. The bytes hashed are the bytes decoded -------------------------------------


def test_photo_replaced_between_inspection_and_decoding_is_cached_under_its_new_content(
    tmp_path, tiny_module, monkeypatch
):
    old, new = png_bytes((200, 30, 30)), png_bytes((30, 30, 200))
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name, data in (("a.png", old), ("b.png", png_bytes((30, 200, 30))), ("copy_of_a.png", old)):
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    real_inspect = compute._inspect

    def inspect_then_replace(*args):
        # After every file was inspected and before any is decoded. (Not the module's
        # load: the photos' decoding starts before it.)
        files = real_inspect(*args)
        (folder / "a.png").write_bytes(new)
        return files

    monkeypatch.setattr(compute, "_inspect", inspect_then_replace)
    result = compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "cache"), batch_size=2)
    monkeypatch.undo()

    def vector_of(data, name):
        (tmp_path / name).write_bytes(data)
        return compute.compute_bottlenecks(
            [str(tmp_path / name)], tiny_module, str(tmp_path / f"fresh_{name}")
        ).vectors[0]

    new_vector, old_vector = vector_of(new, "new.png"), vector_of(old, "old.png")
    assert not np.allclose(new_vector, old_vector)
    cache = cache_lib.BottleneckCache(str(tmp_path / "cache"), result.module_key)
    np.testing.assert_allclose(cache.lookup(sha1(new)), new_vector, atol=1e-5)
    # The old content's key holds the old content's vector (from its copy), never the new one.
    np.testing.assert_allclose(cache.lookup(sha1(old)), old_vector, atol=1e-5)
    np.testing.assert_allclose(result.vectors[0], new_vector, atol=1e-5)
    np.testing.assert_allclose(result.vectors[2], old_vector, atol=1e-5)
    assert result.computed == 3 and not result.skipped


def test_photo_replaced_by_a_huge_image_after_inspection_is_refused_not_decoded(
    tmp_path, tiny_module, monkeypatch
):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name, colour in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30))):
        (folder / name).write_bytes(png_bytes(colour))
        paths.append(str(folder / name))
    real_inspect = compute._inspect

    def inspect_then_replace(*args):
        files = real_inspect(*args)
        (folder / "a.png").write_bytes(png_with_bad_text_chunk(20000, 20000))
        return files

    monkeypatch.setattr(compute, "_inspect", inspect_then_replace)
    result = compute.compute_bottlenecks(paths, tiny_module, str(tmp_path / "cache"))
    assert result.skipped[0].startswith("too large: 20000x20000")
    assert result.computed == 1


# --- 3. The cache key knows the module's content -----------------------------------


def test_module_rewritten_in_place_is_not_served_old_vectors(tmp_path):
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    paths = [str(p) for p in sorted((tmp_path / "data").rglob("*")) if p.is_file()]
    module = str(tmp_path / "module")
    make_module.write_module("tiny", module, seed=0)
    first = compute.compute_bottlenecks(paths, module, str(tmp_path / "cache"))
    make_module.write_module("tiny", module, seed=1)  # Same path, same output size.
    second = compute.compute_bottlenecks(paths, module, str(tmp_path / "cache"))
    assert (second.computed, second.reused) == (len(paths), 0)
    assert second.module_key != first.module_key
    assert not np.allclose(first.vectors, second.vectors)
    assert image_dir


def test_module_key_follows_content_not_path(tmp_path):
    module = str(tmp_path / "module")
    make_module.write_module("tiny", module, seed=0)
    shutil.copytree(module, tmp_path / "copy")
    key = cache_lib.module_key(module, 32, 32)
    assert cache_lib.module_key(str(tmp_path / "copy"), 32, 32).split("_", 1)[1] == key.split("_", 1)[1]
    with open(os.path.join(module, "variables", "variables.index"), "ab") as f:
        f.write(b"\0")  # Any change to the weights' index is a new module.
    assert cache_lib.module_key(module, 32, 32) != key


# --- 5. Special files and names ----------------------------------------------------


@pytest.fixture
def hostile_dir(tmp_path):
    """A dataset with a FIFO, a folder named x.jpg, and non-UTF-8 file and folder names."""
    root = make_dataset(tmp_path / "data", per_class=4)
    os.mkfifo(os.path.join(root, "red", "fifo.jpg"))
    os.mkdir(os.path.join(root, "red", "folder.jpg"))
    write_image(os.path.join(root, "red", "folder.jpg", "inside.png"),
                synthetic_image((220, 40, 40), "solid", 30, 40, np.random.RandomState(1)), "PNG")
    good = open(os.path.join(root, "green", "img1.png"), "rb").read()
    byte_root = os.fsencode(root)
    fd = os.open(os.path.join(byte_root, b"green", b"\xff\xfe.png"), os.O_CREAT | os.O_WRONLY)
    os.write(fd, good)
    os.close(fd)
    os.mkdir(os.path.join(byte_root, b"blue", b"sub\xff"))
    fd = os.open(os.path.join(byte_root, b"blue", b"sub\xff", b"x.png"), os.O_CREAT | os.O_WRONLY)
    os.write(fd, good)
    os.close(fd)
    return root


def test_fifo_and_undecodable_names_are_skipped_by_pre_input_without_hanging(hostile_dir, tmp_path):
    out = str(tmp_path / "prepared")
    process = run("pre_input.py", f"--image_dir={hostile_dir}", f"--output_dir={out}")
    no_traceback(process)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "red/fifo.jpg: not a regular file (a FIFO)" in process.stderr
    assert "\\xff\\xfe.png: its name is not valid UTF-8" in process.stderr
    assert "sub\\xff: its name is not valid UTF-8" in process.stderr
    listed = open(os.path.join(out, "training.txt")).read() + open(
        os.path.join(out, "validation.txt")).read() + open(os.path.join(out, "testing.txt")).read()
    assert "fifo" not in listed
    assert "red/folder.jpg/inside.png" in listed  # A folder named x.jpg is a folder.


def test_fifo_in_a_class_folder_does_not_hang_bottleneck_computation(tmp_path, tiny_module):
    root = make_dataset(tmp_path / "data", per_class=2)
    os.mkfifo(os.path.join(root, "red", "fifo.jpg"))
    process = run("-m", "bottleneck", f"--image_dir={root}", f"--tfhub_module={tiny_module}",
                  f"--bottleneck_dir={tmp_path / 'cache'}")
    no_traceback(process)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "red/fifo.jpg: not a regular file (a FIFO)" in process.stderr
    assert "6 computed, 0 from the cache, 0 skipped" in process.stderr


def test_file_replaced_by_a_fifo_after_inspection_is_refused_without_blocking(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes((1, 2, 3)))
    assert image_files.inspect_image_file(str(path)).problem is None
    path.unlink()
    os.mkfifo(path)
    # Opened non-blocking and checked with fstat: returns at once, nothing read.
    assert image_files.read_regular_file(str(path)) == (None, "not a regular file (a FIFO)")
    assert image_files.why_undecodable(str(path)) == "not a regular file (a FIFO)"


def test_class_folder_name_that_is_not_utf8_is_one_error_line(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=2)
    os.mkdir(os.path.join(os.fsencode(root), b"caf\xe9"))
    shutil.copy(os.path.join(root, "red", "img0.jpg"),
                os.path.join(os.fsencode(root), b"caf\xe9", b"x.jpg"))
    with pytest.raises(dataset_lib.DatasetError, match=r"caf\\xe9 has a name that is not valid UTF-8"):
        dataset_lib.build_dataset(root, 10, 10)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85"])
def test_class_name_with_any_line_break_is_refused(tmp_path, char):
    root = make_dataset(tmp_path / "data", per_class=2)
    os.rename(os.path.join(root, "red"), os.path.join(root, f"re{char}d"))
    with pytest.raises(dataset_lib.DatasetError, match="a tab or a line break"):
        dataset_lib.build_dataset(root, 10, 10)


def test_unreadable_folders_and_files_under_real_permission_loss(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=4)
    os.mkdir(os.path.join(root, "red", "locked"))
    shutil.copy(os.path.join(root, "red", "img0.jpg"), os.path.join(root, "red", "locked", "x.jpg"))
    os.chmod(os.path.join(root, "red", "locked"), 0)
    os.chmod(os.path.join(root, "green", "img1.png"), 0)
    out = str(tmp_path / "prepared")
    process = run("pre_input.py", f"--image_dir={root}", f"--output_dir={out}", privileged=False)
    no_traceback(process)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "red/locked: it cannot be read (Permission denied)" in process.stderr
    assert "green/img1.png: cannot be read" in process.stderr

    os.chmod(root, 0)
    process = run("pre_input.py", f"--image_dir={root}", f"--output_dir={out}", privileged=False)
    no_traceback(process)
    assert process.returncode != 0
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: --image_dir {root} cannot be read (Permission denied); check its permissions."
    )
    os.chmod(root, 0o755)


def cache_entry(cache_dir, tiny_module, path):
    key = cache_lib.module_key(tiny_module, 32, 32)
    content = sha1(open(path, "rb").read())
    return cache_lib.BottleneckCache(str(cache_dir), key).path_for(content)


def filled_cache(tmp_path, tiny_module):
    """Six images, their bottlenecks cached by what `python -m bottleneck` runs (its
    fill, in this process: a fresh Python would only add a TensorFlow import).
    -> (image folder, cache folder, the command's arguments to run it again)."""
    root = make_dataset(tmp_path / "data", per_class=2)
    cache_dir = tmp_path / "cache"
    bottleneck_cli.fill(command_config.BottleneckConfig(
        image_dir=root, tfhub_module=tiny_module, bottleneck_dir=str(cache_dir)), "float32")
    args = ("-m", "bottleneck", f"--image_dir={root}", f"--tfhub_module={tiny_module}",
            f"--bottleneck_dir={cache_dir}")
    return root, cache_dir, args


def test_unreadable_cache_entry_is_recomputed_under_real_permission_loss(
    tmp_path, tiny_module
):
    root, cache_dir, args = filled_cache(tmp_path, tiny_module)
    entry = cache_entry(cache_dir, tiny_module, os.path.join(root, "red", "img0.jpg"))
    os.chmod(entry, 0)
    process = run(*args, privileged=False)
    no_traceback(process)
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"Cannot read cache entry {entry}" in process.stderr
    assert "1 computed, 5 from the cache, 0 skipped" in process.stderr
    assert stat.S_IMODE(os.stat(entry).st_mode) != 0  # Replaced by a fresh, readable entry.


def test_cache_entry_that_is_a_folder_is_one_error_line(tmp_path, tiny_module):
    root = make_dataset(tmp_path / "data", per_class=2)
    cache_dir = tmp_path / "cache"
    entry = cache_entry(cache_dir, tiny_module, os.path.join(root, "red", "img0.jpg"))
    os.makedirs(entry)
    process = run("-m", "bottleneck", f"--image_dir={root}", f"--tfhub_module={tiny_module}",
                  f"--bottleneck_dir={cache_dir}")
    no_traceback(process)
    assert process.returncode != 0
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Cannot write bottleneck cache entry {entry}"), last
    assert os.path.isdir(entry)  # Not ours to remove.


# --- 6. The pixel limit holds when PIL cannot read the header ----------------------


def png_with_bad_text_chunk(width, height):
    """A tiny PNG whose IHDR says width x height, with a tEXt chunk whose CRC is wrong."""

    def chunk(kind, data, crc=None):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"tEXt", b"Comment\0hello", crc=0xDEADBEEF)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_png_whose_header_pil_cannot_read_is_still_held_to_the_pixel_limit(tmp_path):
    data = png_with_bad_text_chunk(20000, 20000)
    assert len(data) < 200
    info = image_files.inspect_image_bytes(data)
    assert info.problem.startswith("too large: 20000x20000 = 400 Mpx")
    root = make_dataset(tmp_path / "data", per_class=2)
    (tmp_path / "data" / "red" / "bomb.png").write_bytes(data)
    dataset = dataset_lib.build_dataset(root, 10, 10)
    bad = dict(preparation.find_bad_images(dataset))
    assert bad == {"red/bomb.png": info.problem}


# --- 10. label_image ---------------------------------------------------------------


def test_input_std_zero_is_one_error_line(tmp_path):
    process = run("label_image.py", "--input_std=0", "x.jpg", "g.pb", "l.txt")
    no_traceback(process)
    assert process.returncode != 0
    assert process.stderr.strip().splitlines()[-1].startswith("error: --input_std=0 ")


def test_labels_file_with_a_byte_order_mark_is_read_without_it(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffdaisy\nroses\n".encode("utf-8"))
    assert classifier.load_labels(str(path)) == ["daisy", "roses"]


def test_labels_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("daisy\nrosé\n".encode("latin-1"))
    with pytest.raises(classifier.LabelError, match=f"Labels file {path} is not UTF-8 text"):
        classifier.load_labels(str(path))


@pytest.mark.parametrize("url", ["http://example.com/cat.jpg", "https://example.com/cat.jpg",
                                 "gs://bucket/cat.jpg"])
def test_image_given_as_a_url_is_refused_as_such(url):
    with pytest.raises(classifier.LabelError, match="is a URL"):
        classifier.list_images([url])


def test_folder_named_like_an_image_and_fifo_are_not_images(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.png").write_bytes(png_bytes((1, 2, 3)))
    (folder / "folder.jpg").mkdir()
    os.mkfifo(folder / "pipe.jpg")
    assert classifier.list_images([str(folder)]) == [str(folder / "good.png")]
    assert "pipe.jpg: not a regular file (a FIFO)" in capsys.readouterr().err


def test_fifo_given_to_label_image_does_not_hang(trained, tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    good = os.path.join(trained["image_dir"], "red", "img1.png")
    settings = trained["settings"]
    process = run("label_image.py", str(fifo), good, settings["output_graph"],
                  settings["output_labels"])
    no_traceback(process)
    assert process.returncode == 1
    assert f"error: cannot classify {fifo}: not a regular file (a FIFO)" in process.stderr
    assert process.stdout.splitlines()[0] == good  # The others are still classified.


# --- Trust, third round: the cache's own files ---------------------------------------


def test_cache_entry_linked_to_another_images_entry_is_recomputed_not_served(
    tmp_path, tiny_module
):
    root, cache_dir, args = filled_cache(tmp_path, tiny_module)
    entry = cache_entry(cache_dir, tiny_module, os.path.join(root, "red", "img0.jpg"))
    other = cache_entry(cache_dir, tiny_module, os.path.join(root, "blue", "img1.png"))
    os.remove(entry)
    os.symlink(other, entry)  # A valid entry, of another image, under this image's name.
    process = run(*args)
    no_traceback(process)
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"Damaged cache entry {entry} (it holds the vector of another image" in process.stderr
    assert "1 computed, 5 from the cache, 0 skipped" in process.stderr


def test_fifo_in_place_of_a_cache_entry_does_not_hang_the_run(tmp_path, tiny_module):
    root, cache_dir, args = filled_cache(tmp_path, tiny_module)
    entry = cache_entry(cache_dir, tiny_module, os.path.join(root, "red", "img0.jpg"))
    os.remove(entry)
    os.mkfifo(entry)
    process = run(*args)  # A blocking read of the FIFO would wait until TIMEOUT.
    no_traceback(process)
    assert f"Cannot read cache entry {entry} (not a regular file (a FIFO))" in process.stderr


@pytest.mark.parametrize("replaced, how, message", [
    ("output_graph", "fifo", "Graph file {path} cannot be used: not a regular file (a FIFO)."),
    ("saved_model_dir", "fifo",
     "SavedModel {folder} cannot be used: {path} is a FIFO, not a regular file."),
    ("tflite_output_file", "garbage", "{path} is not an image classifier this command can run"),
])
def test_an_exported_file_replaced_before_the_check_is_one_error_line(
        tmp_path, tiny_module, monkeypatch, replaced, how, message):
    """A run (retrain.py's, in this process) with one exported file replaced, between
    export and the check that loads it again, by what a user or another process could
    put there, ends in the one-line error retrain.py prints as `error: ...`. A FIFO
    comes with a writer process that lets a blocking reader go (at EOF), so a loader
    that opens it fails instead of hanging the test."""
    settings = retrain_settings(
        tmp_path, make_dataset(tmp_path / "data", per_class=4), tiny_module,
        how_many_training_steps=2, eval_step_interval=1, testing_percentage=25,
        saved_model_dir=str(tmp_path / "out" / "saved_model"),
        tflite_output_file=str(tmp_path / "out" / "model.tflite"))
    folder = settings[replaced]
    path = os.path.join(folder, "saved_model.pb") if replaced == "saved_model_dir" else folder
    check_run, writers = artifact_check.check_run, []

    def replaced_first(*args, **kwargs):
        os.remove(path)
        if how == "fifo":
            os.mkfifo(path)
            writers.append(subprocess.Popen(
                ["sh", "-c", 'while [ -p "$0" ]; do : > "$0"; done', path]))
        else:
            with open(path, "wb") as f:
                f.write(b"not a model at all" * 10)
        return check_run(*args, **kwargs)

    monkeypatch.setattr(artifact_check, "check_run", replaced_first)
    try:
        with pytest.raises(errors.SuiteError) as raised:
            job.run_retraining(config_lib.from_flat(settings))
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(message.format(path=path, folder=folder))


def test_labels_file_larger_than_any_labels_is_refused_unread(tmp_path):
    path = tmp_path / "labels.txt"
    with open(path, "wb") as f:
        f.truncate(tflite_metadata.MAX_LABELS_BYTES + 1)  # sparse: a whole read would cost it
    with pytest.raises(classifier.LabelError,
                       match=f"Labels file {path} cannot be used: larger than the 67,108,864"):
        classifier.load_labels(str(path))
