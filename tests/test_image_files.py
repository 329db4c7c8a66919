"""images/files.py: reading a file whole or refusing it in one phrase, and what an
image's header says before any decoding. Hostile files (bombs, FIFOs, files
replaced while read) are test_hostile_inputs.py's and test_bombs.py's."""

import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import synthetic_image, write_image

from retrain_suite.images import files as image_files


def test_a_regular_file_is_read_whole_and_anything_else_is_a_phrase(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"0123456789")
    assert image_files.read_regular_file(str(path)) == (b"0123456789", None)
    assert image_files.read_file_start(str(path), 4) == (b"0123", None)
    assert image_files.read_regular_file(str(tmp_path / "none")) == (None, image_files.MISSING)
    _, problem = image_files.read_regular_file(str(tmp_path))
    assert problem == "not a regular file (a folder)"
    _, problem = image_files.read_regular_file(str(path), max_bytes=9)
    assert problem.startswith("larger than the 9 bytes allowed")
    os.symlink(path, tmp_path / "link")
    assert image_files.read_regular_file(str(tmp_path / "link"))[0] == b"0123456789"


def test_a_reason_reads_as_a_clause_after_a_files_name():
    assert image_files.as_clause("not a regular file (a FIFO)") == "is not a regular file (a FIFO)"
    assert image_files.as_clause(image_files.MISSING) == image_files.MISSING
    assert image_files.as_clause("larger than 9 bytes") == "larger than 9 bytes"


@pytest.mark.parametrize("data", [
    b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00\x2f\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dtEXt",
], ids=["webp", "jpeg_without_frame_header", "png_without_ihdr_first"])
def test_image_whose_size_cannot_be_read_from_its_header_is_refused(data):
    assert image_files.image_size(data) is None
    assert image_files.inspect_image_bytes(data).problem.startswith("not a decodable image")


def test_header_sizes_agree_with_what_tensorflow_decodes(tmp_path):
    pixels = synthetic_image((10, 120, 240), "checker", 37, 53, np.random.RandomState(2))
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        path = str(tmp_path / f"x.{fmt.lower()}")
        write_image(path, pixels, fmt)
        data = open(path, "rb").read()
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
        assert image_files.image_size(data) == (decoded.shape[1], decoded.shape[0]), fmt


def test_files_inspected_on_threads_come_back_in_order_as_one_by_one(tmp_path):
    paths = []
    for i in range(23):
        path = tmp_path / f"{i}.png"
        write_image(str(path), synthetic_image((200, 40, 40), "stripes", 8 + i, 9,
                                               np.random.RandomState(i)))
        paths.append(str(path))
    (tmp_path / "empty.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.jpg")  # refused, never waited on
    paths[5:5] = [str(tmp_path / "empty.jpg"), str(tmp_path / "fifo.jpg"),
                  str(tmp_path / "missing.jpg"), str(tmp_path)]
    one_by_one = [image_files.inspect_image_file(path, 150) for path in paths]
    assert sum(f.problem is not None for f in one_by_one) > 4  # the four, and "too large"
    for threads in (None, 1, 3):
        assert image_files.inspect_image_files(paths, 150, threads) == one_by_one


def test_files_inspected_on_threads_use_them_all_with_few_in_flight(monkeypatch):
    lock, state = threading.Lock(), {"ahead": 0, "threads": set()}
    barrier = threading.Barrier(3, timeout=10)
    taken = []  # the paths taken from the iterable so far

    def inspect(path, max_pixels):
        with lock:
            # Paths taken beyond this one: never more than the files in flight.
            state["ahead"] = max(state["ahead"], len(taken) - 1 - path)
            state["threads"].add(threading.current_thread().name)
        if path < 3:
            barrier.wait()  # the first three meet: three threads at once
        return path

    monkeypatch.setattr(image_files, "inspect_image_file", inspect)
    paths = (taken.append(i) or i for i in range(1000))
    assert image_files.inspect_image_files(paths, 0, threads=3) == list(range(1000))
    assert len(state["threads"]) == 3
    assert 0 < state["ahead"] <= 3 * image_files.FILES_IN_FLIGHT_PER_THREAD

    def failing(path, max_pixels):
        if path == 2:
            raise OSError("disk gone")
        return path

    monkeypatch.setattr(image_files, "inspect_image_file", failing)
    given = []
    with pytest.raises(OSError, match="disk gone"):
        image_files.inspect_image_files((given.append(i) or i for i in range(1000)), 0, threads=2)
    assert len(given) <= 2 + 2 * image_files.FILES_IN_FLIGHT_PER_THREAD
