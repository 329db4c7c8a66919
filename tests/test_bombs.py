"""Bombs: small files that claim, or unpack to, far more than they hold.

A TFLite model's packed labels (a zip archive appended to the model) and an
image's frames are read with a cap taken from what is actually there, never
from what the file says about itself; each refusal is one line.
"""

import hashlib
import io
import struct
import zipfile

import helpers
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_command

from retrain_suite import tflite_metadata
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.images import preprocess as image_preprocess


def with_packed(model, members):
    """model with another zip archive appended: read from the end, it is the one found.

    members: [(ZipInfo or name, bytes, compression)]."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, data, compression in members:
            archive.writestr(name, data, compress_type=compression)
    return model + stream.getvalue()


def test_labels_claiming_more_than_the_cap_are_refused_unread():
    # ~65 KB on disk inflating to 64 MiB + 2 bytes: refused, never held whole.
    bomb = b"x\n" * (tflite_metadata.MAX_LABELS_BYTES // 2 + 1)
    model = with_packed(helpers.model_with_labels(), [("labels.txt", bomb, zipfile.ZIP_DEFLATED)])
    assert len(model) < 200_000
    with pytest.raises(tflite_metadata.MetadataError) as raised:
        tflite_metadata.packed_labels(model)
    assert str(raised.value) == (
        "its packed labels file 'labels.txt' holds 67,108,866 bytes, more than the "
        "67,108,864 allowed")


def test_labels_whose_header_understates_their_size_are_stopped_at_the_cap():
    """Inflating stops at the size the member's header claims: the lie ends in a CRC error."""
    bomb = b"x\n" * (tflite_metadata.MAX_LABELS_BYTES // 2 + 1)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("labels.txt", bomb, compress_type=zipfile.ZIP_DEFLATED)
    archive_bytes = stream.getvalue()
    # Both copies of the uncompressed size (local header, central directory) say 2 bytes.
    true_size = len(bomb).to_bytes(4, "little")
    assert archive_bytes.count(true_size) == 2
    lying = archive_bytes.replace(true_size, (2).to_bytes(4, "little"))
    with pytest.raises(tflite_metadata.MetadataError,
                       match=r"^its packed files are damaged \(Bad CRC-32 for file 'labels.txt'\)$"):
        tflite_metadata.packed_labels(helpers.model_with_labels() + lying)


def test_damaged_deflate_stream_in_the_labels_is_one_metadata_error():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("labels.txt", b"cat\ndog\n" * 100, compress_type=zipfile.ZIP_DEFLATED)
    archive_bytes = bytearray(stream.getvalue())
    data_start = 30 + len("labels.txt")  # local header, then the deflate stream
    archive_bytes[data_start:data_start + 4] = b"\xff\xff\xff\xff"  # an invalid block type
    with pytest.raises(tflite_metadata.MetadataError, match=r"^its packed labels file 'labels.txt' "
                       r"cannot be read \(Error -3 while decompressing data: invalid block type\)$"):
        tflite_metadata.packed_labels(helpers.model_with_labels() + bytes(archive_bytes))


def test_labels_that_are_not_utf8_are_reported_as_such():
    model = with_packed(helpers.model_with_labels(), [("labels.txt", b"caf\xe9\n", zipfile.ZIP_STORED)])
    with pytest.raises(tflite_metadata.MetadataError) as raised:
        tflite_metadata.packed_labels(model)
    assert str(raised.value) == "its packed labels file 'labels.txt' is not UTF-8 text"


def test_metadata_naming_a_file_that_is_not_packed_is_one_line():
    model = with_packed(helpers.model_with_labels(), [("other.txt", b"cat\n", zipfile.ZIP_STORED)])
    with pytest.raises(tflite_metadata.MetadataError, match="names the labels file 'labels.txt', "
                       "which is not packed in it"):
        tflite_metadata.packed_labels(model)


# --- Images whose frames say more than their header -------------------------------


def gif(screen, frames, colour_table=True):
    """A GIF with the given logical screen and frames [(width, height, data sub-blocks)].

    Built block by block, so a frame may be far larger than the screen: what a
    hostile file can say about itself.
    """
    flags = 0x80 if colour_table else 0  # a 2-entry global colour table
    out = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], flags, 0, 0)
    out += b"\x00\x00\x00\xff\xff\xff" if colour_table else b""
    for width, height, data in frames:
        out += b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # a graphic control extension (delay)
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02" + data
    return out + b"\x3b"


def lzw_sub_blocks(pixels):
    """Data sub-blocks coding `pixels` pixels of colour 0, minimum code size 2.

    Each pixel is a clear code then a 0 code (3 bits each), so the dictionary
    never grows: simple, valid, and small enough for the test's frames.
    """
    bits = "".join(format(code, "03b")[::-1] for _ in range(pixels) for code in (4, 0))
    bits += format(5, "03b")[::-1]  # end of information
    bits += "0" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                      for i in range(0, len(data), 255))
    return blocks + b"\x00"


def test_test_gif_builder_makes_gifs_tensorflow_decodes():
    frames = tf.io.decode_gif(gif((4, 3), [(4, 3, lzw_sub_blocks(12))] * 2)).numpy()
    assert frames.shape == (2, 3, 4, 3) and not frames.any()


def test_gif_frame_larger_than_its_screen_is_measured_by_the_frame():
    hostile = gif((16, 16), [(20000, 20000, lzw_sub_blocks(8))])
    assert len(hostile) < 100
    assert image_files.image_size(hostile) == (20000, 20000)
    assert image_files.inspect_image_bytes(hostile, 1000).problem == (
        "too large: 20000x20000 = 400 Mpx, over the limit of 0.001 Mpx "
        "(raise --max_image_pixels to allow it)")


def test_gif_that_ends_before_its_first_frame_has_no_size():
    whole = gif((16, 16), [(16, 16, lzw_sub_blocks(256))])
    assert image_files.image_size(whole) == (16, 16)
    cut = whole[:len(whole) - 30]  # inside the frame's data
    assert image_files.image_size(cut) is None
    assert image_files.inspect_image_bytes(cut).problem.startswith("not a decodable image")


def test_only_the_first_frame_of_an_animation_reaches_the_decoder(tmp_path):
    first = lzw_sub_blocks(64)
    animation = gif((8, 8), [(8, 8, first)] * 300)
    path = tmp_path / "animation.gif"
    path.write_bytes(animation)
    decodable = image_files.decodable_bytes(animation)
    assert decodable == gif((8, 8), [(8, 8, first)])  # header, first frame, trailer
    dataset = image_pipelines.ImageFiles([str(path)]).encoded_dataset([0])
    ((index, content, data, orientation),) = list(dataset.as_numpy_iterator())
    assert data == decodable
    assert content.decode() == hashlib.sha1(animation).hexdigest()  # the whole file's hash
    np.testing.assert_array_equal(
        image_preprocess.decode_and_resize(data, 8, 8).numpy(),
        image_preprocess.decode_and_resize(animation, 8, 8).numpy())


def test_only_the_first_frame_of_an_animation_in_a_tfrecord_reaches_the_decoder(tmp_path):
    first = lzw_sub_blocks(64)
    animation = gif((8, 8), [(8, 8, first)] * 300)
    path = str(tmp_path / "training.tfrecord")
    example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[animation]))}))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    images = image_pipelines.TFRecordImages([path], ["animation"], lambda: iter([animation]))
    ((index, content, data, orientation),) = list(
        images.encoded_dataset([0]).as_numpy_iterator())
    assert data == image_files.decodable_bytes(animation) == gif((8, 8), [(8, 8, first)])
    assert content.decode() == hashlib.sha1(animation).hexdigest()  # the whole record's hash


def test_label_image_refuses_a_gif_whose_frame_outgrows_its_screen(trained, tmp_path):
    hostile = tmp_path / "small.gif"
    hostile.write_bytes(gif((16, 16), [(20000, 20000, lzw_sub_blocks(8))]))
    settings = trained["settings"]
    process = run_command("label_image.py", "--max_image_pixels=1000", str(hostile),
                         settings["output_graph"], settings["output_labels"])
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: cannot classify {hostile}: too large: 20000x20000 = 400 Mpx, over the limit "
        "of 0.001 Mpx (raise --max_image_pixels to allow it)")


def test_a_packed_archive_listing_more_files_than_the_cap_is_refused_before_zipfile_parses_it():
    names = [f"{i}.txt" for i in range(tflite_metadata.MAX_PACKED_FILES)]
    model = with_packed(helpers.model_with_labels(), [("labels.txt", b"cat\ndog\n", zipfile.ZIP_STORED)]
                        + [(name, b"", zipfile.ZIP_STORED) for name in names])
    with pytest.raises(tflite_metadata.MetadataError) as raised:
        tflite_metadata.packed_labels(model)
    assert str(raised.value).startswith(
        "its packed files' directory lists 1,001 files in ")
    assert str(raised.value).endswith(" bytes, more than the 1,000 files or 1,048,576 bytes allowed")
    at_the_cap = with_packed(helpers.model_with_labels(),
                             [("labels.txt", b"cat\nmouse\n", zipfile.ZIP_STORED)]
                             + [(name, b"", zipfile.ZIP_STORED) for name in names[1:]])
    assert tflite_metadata.packed_labels(at_the_cap) == ["cat", "mouse"]


def test_a_packed_archive_whose_directory_is_larger_than_the_cap_is_refused():
    # Few files, each with a 60 KB comment in the central directory.
    members = []
    for i in range(20):
        info = zipfile.ZipInfo(f"{i}.txt")
        info.comment = b"c" * 60_000
        members.append((info, b"", zipfile.ZIP_STORED))
    model = with_packed(helpers.model_with_labels(), members + [("labels.txt", b"a\n", zipfile.ZIP_STORED)])
    with pytest.raises(tflite_metadata.MetadataError, match=r"^its packed files' directory lists "
                       r"21 files in 1,20\d,\d{3} bytes, more than the 1,000 files or 1,048,576 "
                       r"bytes allowed$"):
        tflite_metadata.packed_labels(model)


def test_a_zip64_archive_is_measured_by_its_zip64_record():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", allowZip64=True) as archive:
        archive.writestr("labels.txt", b"cat\ndog\n")
    archive_bytes = stream.getvalue()
    # Rewrite the end record as a zip64 writer does: sentinels, the counts in a zip64 record.
    end = archive_bytes.rfind(b"PK\x05\x06")
    entries, size, offset = struct.unpack_from("<2xHLL", archive_bytes, end + 8)
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0,
                        2_000_000, 2_000_000, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                             0xFFFFFFFF, 0)
    lying = archive_bytes[:end] + zip64 + locator + end_record
    with pytest.raises(tflite_metadata.MetadataError,
                       match=r"^its packed files' directory lists 2,000,000 files in "):
        tflite_metadata.packed_labels(helpers.model_with_labels() + lying)


def test_a_table_list_longer_than_the_metadata_is_one_metadata_error():
    metadata = bytearray(tflite_metadata.image_classifier_metadata(
        "classifier", "test", (32, 32), 2, (0.0, 255.0)))
    root = tflite_metadata._table(bytes(metadata), struct.unpack_from("<I", metadata, 0)[0])
    offset = root.Offset(tflite_metadata._slot(tflite_metadata._MODEL["subgraph_metadata"]))
    length_at = root.Vector(offset) - 4  # a vector's length is the word before its first item
    assert struct.unpack_from("<I", metadata, length_at)[0] == 1
    struct.pack_into("<I", metadata, length_at, 0x7FFFFFFF)  # 2 billion subgraphs, 8 GB of offsets
    model = tflite_metadata.with_metadata(helpers.bare_model(), bytes(metadata), ["cat", "dog"])
    with pytest.raises(tflite_metadata.MetadataError) as raised:
        tflite_metadata.packed_labels(model)
    assert str(raised.value) == "its metadata holds a table list longer than the metadata"


@pytest.mark.parametrize("value", [0xFF, 0x80])
def test_metadata_damaged_at_any_byte_is_read_or_one_metadata_error(value):
    metadata = tflite_metadata.image_classifier_metadata("c", "t", (32, 32), 2, (0.0, 255.0))
    # The model is built once: each damaged copy of the metadata replaces its bytes in place.
    model = tflite_metadata.with_metadata(helpers.bare_model(), metadata, ["cat", "dog"])
    at = model.index(metadata)
    outcomes = set()
    for i in range(8, len(metadata)):  # past the root offset and the "M001" identifier
        damaged = bytearray(model)
        damaged[at + i] = value
        try:
            outcomes.add(repr(tflite_metadata.packed_labels(bytes(damaged)))[:40])
        except tflite_metadata.MetadataError as e:
            assert "\n" not in str(e)
            outcomes.add("MetadataError")
    assert "MetadataError" in outcomes and "['cat', 'dog']" in outcomes
