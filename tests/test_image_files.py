"""images/files.py: reading a file whole or refusing it in one phrase, and what an
image's header says before any decoding. Hostile files (bombs, FIFOs, files
replaced while read) are test_hostile_inputs.py's and test_bombs.py's."""

import os

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
