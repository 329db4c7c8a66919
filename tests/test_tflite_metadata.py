"""tflite_metadata.py: the Model Metadata and packed labels a .tflite file carries,
written and read back without the TFLite Support library. Damaged and hostile
metadata are test_bombs.py's."""

import io
import zipfile

import helpers

from retrain_suite import tflite_metadata


def test_packed_labels_are_read_back():
    assert tflite_metadata.packed_labels(helpers.model_with_labels(["a b", "ç"])) == ["a b", "ç"]


def test_a_model_without_metadata_has_no_metadata_and_no_labels():
    model = helpers.bare_model()
    assert tflite_metadata.metadata_buffer(model) is None
    assert tflite_metadata.packed_labels(model) is None


def test_the_metadata_is_a_model_metadata_flatbuffer_and_the_labels_a_stored_zip_member():
    model = helpers.model_with_labels(["b", "a"])  # not sorted: the order is the output's
    metadata = tflite_metadata.metadata_buffer(model)
    assert metadata[4:8] == tflite_metadata.METADATA_IDENTIFIER
    with zipfile.ZipFile(io.BytesIO(model)) as packed:
        (member,) = packed.infolist()
        assert member.filename == tflite_metadata.LABELS_FILE_NAME
        assert member.compress_type == zipfile.ZIP_STORED
        assert packed.read(member) == b"b\na\n"
