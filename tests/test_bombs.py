"""Bombs: small files that claim, or unpack to, far more than they hold.

A TFLite model's packed labels (a zip archive appended to the model) and an
image's frames are read with a cap taken from what is actually there, never
from what the file says about itself; each refusal is one line.
"""

import hashlib
import io
import struct
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.tools import flatbuffer_utils
from conftest import run_script

from retrain_suite import input_pipeline, tflite_metadata


def bare_model():
    """The smallest TFLite flatbuffer the metadata writer accepts (no graph: not runnable)."""
    model = tflite_schema.ModelT()
    model.version = 3
    model.buffers = [tflite_schema.BufferT()]
    model.subgraphs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def model_with_labels(labels=("cat", "dog")):
    metadata = tflite_metadata.image_classifier_metadata(
        "classifier", "test", 32, 32, len(labels), 0.0, 255.0)
    return tflite_metadata.with_metadata(bare_model(), metadata, labels)


def with_packed(model, members):
    """model with another zip archive appended: read from the end, it is the one found.

    members: [(ZipInfo or name, bytes, compression)]."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, data, compression in members:
            archive.writestr(name, data, compress_type=compression)
    return model + stream.getvalue()


def test_packed_labels_are_read_back():
    assert tflite_metadata.packed_labels(model_with_labels(["a b", "ç"])) == ["a b", "ç"]


def test_labels_claiming_more_than_the_cap_are_refused_unread():
    # ~65 KB on disk inflating to 64 MiB + 2 bytes: refused, never held whole.
    bomb = b"x\n" * (tflite_metadata.MAX_LABELS_BYTES // 2 + 1)
    model = with_packed(model_with_labels(), [("labels.txt", bomb, zipfile.ZIP_DEFLATED)])
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
        tflite_metadata.packed_labels(model_with_labels() + lying)


def test_damaged_deflate_stream_in_the_labels_is_one_metadata_error():
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("labels.txt", b"cat\ndog\n" * 100, compress_type=zipfile.ZIP_DEFLATED)
    archive_bytes = bytearray(stream.getvalue())
    data_start = 30 + len("labels.txt")  # local header, then the deflate stream
    archive_bytes[data_start:data_start + 4] = b"\xff\xff\xff\xff"  # an invalid block type
    with pytest.raises(tflite_metadata.MetadataError, match=r"^its packed labels file 'labels.txt' "
                       r"cannot be read \(Error -3 while decompressing data: invalid block type\)$"):
        tflite_metadata.packed_labels(model_with_labels() + bytes(archive_bytes))


def test_labels_that_are_not_utf8_are_reported_as_such():
    model = with_packed(model_with_labels(), [("labels.txt", b"caf\xe9\n", zipfile.ZIP_STORED)])
    with pytest.raises(tflite_metadata.MetadataError) as raised:
        tflite_metadata.packed_labels(model)
    assert str(raised.value) == "its packed labels file 'labels.txt' is not UTF-8 text"


def test_metadata_naming_a_file_that_is_not_packed_is_one_line():
    model = with_packed(model_with_labels(), [("other.txt", b"cat\n", zipfile.ZIP_STORED)])
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
    assert input_pipeline.image_size(hostile) == (20000, 20000)
    assert input_pipeline.inspect_image_bytes(hostile, 1000).problem == (
        "too large: 20000x20000 = 400 Mpx, over the limit of 0.001 Mpx "
        "(raise --max_image_pixels to allow it)")


def test_gif_that_ends_before_its_first_frame_has_no_size():
    whole = gif((16, 16), [(16, 16, lzw_sub_blocks(256))])
    assert input_pipeline.image_size(whole) == (16, 16)
    cut = whole[:len(whole) - 30]  # inside the frame's data
    assert input_pipeline.image_size(cut) is None
    assert input_pipeline.inspect_image_bytes(cut).problem.startswith("not a decodable image")


def test_only_the_first_frame_of_an_animation_reaches_the_decoder(tmp_path):
    first = lzw_sub_blocks(64)
    animation = gif((8, 8), [(8, 8, first)] * 300)
    path = tmp_path / "animation.gif"
    path.write_bytes(animation)
    decodable = input_pipeline.decodable_bytes(animation)
    assert decodable == gif((8, 8), [(8, 8, first)])  # header, first frame, trailer
    dataset = input_pipeline.ImageFiles([str(path)]).encoded_dataset([0])
    ((index, content, data, orientation),) = list(dataset.as_numpy_iterator())
    assert data == decodable
    assert content.decode() == hashlib.sha1(animation).hexdigest()  # the whole file's hash
    np.testing.assert_array_equal(
        input_pipeline.decode_and_resize(data, 8, 8).numpy(),
        input_pipeline.decode_and_resize(animation, 8, 8).numpy())


def test_only_the_first_frame_of_an_animation_in_a_tfrecord_reaches_the_decoder(tmp_path):
    first = lzw_sub_blocks(64)
    animation = gif((8, 8), [(8, 8, first)] * 300)
    path = str(tmp_path / "training.tfrecord")
    example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[animation]))}))
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    images = input_pipeline.TFRecordImages([path], ["animation"], lambda: iter([animation]))
    ((index, content, data, orientation),) = list(
        images.encoded_dataset([0]).as_numpy_iterator())
    assert data == input_pipeline.decodable_bytes(animation) == gif((8, 8), [(8, 8, first)])
    assert content.decode() == hashlib.sha1(animation).hexdigest()  # the whole record's hash


def test_label_image_refuses_a_gif_whose_frame_outgrows_its_screen(trained, tmp_path):
    hostile = tmp_path / "small.gif"
    hostile.write_bytes(gif((16, 16), [(20000, 20000, lzw_sub_blocks(8))]))
    settings = trained["settings"]
    process = run_script("label_image.py", "--max_image_pixels=1000", str(hostile),
                         settings["output_graph"], settings["output_labels"])
    assert process.returncode == 1 and "Traceback" not in process.stderr, process.stderr
    assert process.stderr.strip().splitlines()[-1] == (
        f"error: cannot classify {hostile}: too large: 20000x20000 = 400 Mpx, over the limit "
        "of 0.001 Mpx (raise --max_image_pixels to allow it)")
