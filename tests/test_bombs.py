"""Bombs: small files that claim, or unpack to, far more than they hold.

A TFLite model's packed labels (a zip archive appended to the model) and an
image's frames are read with a cap taken from what is actually there, never
from what the file says about itself; each refusal is one line.
"""

import io
import zipfile

import pytest
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.tools import flatbuffer_utils

from retrain_suite import tflite_metadata


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
