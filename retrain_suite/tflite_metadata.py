r"""TFLite Model Metadata for an image classifier: written by hand, read back for label_image.

The TFLite Task Library, MediaPipe Tasks' ImageClassifier and Android
Studio's ML binding find a classifier's labels and input normalization in the
model file itself, in two places:

- a `ModelMetadata` flatbuffer (schema `metadata_schema.fbs` of
  tensorflow/tflite-support, file identifier "M001") stored as one of the
  model's buffers and named "TFLITE_METADATA" in the model's `metadata` list;
- the files it names (here the labels, one per line in output order; for a
  multi-label model also THRESHOLDS_FILE_NAME, one threshold per line in the
  same order, listed beside the labels among the output's associated files
  with type DESCRIPTIONS: the schema has no per-class thresholds) packed
  uncompressed in a zip archive appended to the model file. A flatbuffer is
  read from its start and a zip from its end, so the one file is both.

The packages that write this (`tflite-support`, `mediapipe`) cannot be
installed beside TensorFlow 2.21 (their protobuf pins conflict), so the
tables are built here with the `flatbuffers` runtime from the published
schema. Only fields of schema version 1.0.0 are used, so
`min_parser_version` is "1.0.0". Field numbers below are the order of the
fields in the schema's tables; a union field takes two numbers (its type,
then its value).
"""

import io
import struct
import zipfile
import zlib

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.tools import flatbuffer_utils

from retrain_suite import errors

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry that holds ModelMetadata
METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE_NAME = "labels.txt"
THRESHOLDS_FILE_NAME = "thresholds.txt"  # a multi-label model's, packed beside the labels

# Enum values and union member numbers from metadata_schema.fbs.
DESCRIPTIONS, TENSOR_AXIS_LABELS = 1, 2  # AssociatedFileType
RGB = 1  # ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions

# Field numbers of the tables used here.
_MODEL = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3,
          "min_parser_version": 7}
_SUBGRAPH = {"name": 0, "description": 1, "input_tensor_metadata": 2, "output_tensor_metadata": 3}
_TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5,
           "associated_files": 6}
_CONTENT = {"content_properties_type": 0, "content_properties": 1}
_IMAGE_PROPERTIES = {"color_space": 0}
_PROCESS_UNIT = {"options_type": 0, "options": 1}
_NORMALIZATION = {"mean": 0, "std": 1}
_STATS = {"max": 0, "min": 1}
_ASSOCIATED_FILE = {"name": 0, "description": 1, "type": 2}


# The most bytes a labels file may hold when read back (packed in a TFLite model,
# given to label_image.py, or beside TFRecords): room for a million
# classes of 60-byte names, far from the gigabytes a small zip member can inflate to.
MAX_LABELS_BYTES = 64 * 1024 * 1024


# The most files, and central-directory bytes, a model's packed archive may list
# when read back. zipfile parses the whole directory into one object per entry
# before anything can be looked up, so a 100 MB model could list two million
# entries; a model packs a few files (its labels, a vocabulary).
MAX_PACKED_FILES = 1000
MAX_CENTRAL_DIRECTORY_BYTES = 1024 * 1024


class MetadataError(errors.SuiteError):
    """A TFLite file whose metadata or packed labels cannot be read."""

    area = "tflite"


def _slot(field_number):
    """The vtable offset of a field: flatbuffers' layout, 4 bytes of header then 2 per field."""
    return 4 + 2 * field_number


class _Writer:
    """Thin helpers over flatbuffers.Builder for tables of strings, vectors and offsets."""

    def __init__(self):
        self.builder = flatbuffers.Builder(1024)

    def table(self, fields, values):
        """values: {field name: ("offset" | "byte", value)} -> the table's offset."""
        b = self.builder
        b.StartObject(max(fields.values()) + 1)
        for name, (kind, value) in values.items():
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(fields[name], value, 0)
            else:
                b.PrependInt8Slot(fields[name], value, 0)
        return b.EndObject()

    def string(self, text):
        return ("offset", self.builder.CreateString(text))

    def floats(self, values):
        return ("offset", self.builder.CreateNumpyVector(np.asarray(values, np.float32)))

    def tables(self, offsets):
        b = self.builder
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return ("offset", b.EndVector())


def image_classifier_metadata(name, description, input_size, class_count, normalization,
                              multi_label=False):
    """The ModelMetadata flatbuffer (bytes) of a one-input, one-output image classifier.

    multi_label: the output is independent scores, one per class, each compared
    with its threshold in the packed THRESHOLDS_FILE_NAME (named among the
    output's associated files).

    Input: RGB image [1, height, width, 3], input_size (height, width); the
    model takes (pixel - mean) / std of 0-255 pixel values, normalization
    (mean, std) (quantized models: that value quantized with the input
    tensor's own parameters). Output: class_count probabilities, labelled by
    the packed LABELS_FILE_NAME.
    """
    (height, width), (mean, std) = input_size, normalization
    w = _Writer()
    labels_file = w.table(_ASSOCIATED_FILE, {
        "name": w.string(LABELS_FILE_NAME),
        "description": w.string("Class names, one per line, in the order of the output."),
        "type": ("byte", TENSOR_AXIS_LABELS),
    })
    image_properties = w.table(_IMAGE_PROPERTIES, {"color_space": ("byte", RGB)})
    normalization = w.table(_NORMALIZATION, {"mean": w.floats([mean]), "std": w.floats([std])})
    process_unit = w.table(_PROCESS_UNIT, {
        "options_type": ("byte", NORMALIZATION_OPTIONS), "options": ("offset", normalization),
    })
    input_stats = w.table(_STATS, {
        "max": w.floats([(255.0 - mean) / std]), "min": w.floats([(0.0 - mean) / std]),
    })
    input_content = w.table(_CONTENT, {
        "content_properties_type": ("byte", IMAGE_PROPERTIES),
        "content_properties": ("offset", image_properties),
    })
    input_tensor = w.table(_TENSOR, {
        "name": w.string("image"),
        "description": w.string(
            f"RGB image, {height}x{width} pixels, resized without keeping the aspect ratio."
        ),
        "content": ("offset", input_content),
        "process_units": w.tables([process_unit]),
        "stats": ("offset", input_stats),
    })
    feature_properties = _empty_table(w.builder)  # FeatureProperties has no fields
    output_content = w.table(_CONTENT, {
        "content_properties_type": ("byte", FEATURE_PROPERTIES),
        "content_properties": ("offset", feature_properties),
    })
    output_stats = w.table(_STATS, {"max": w.floats([1.0]), "min": w.floats([0.0])})
    files = [labels_file]
    output_text = f"Probabilities of the {class_count} classes."
    if multi_label:
        files.append(w.table(_ASSOCIATED_FILE, {
            "name": w.string(THRESHOLDS_FILE_NAME),
            "description": w.string("Thresholds, one per line in the order of the labels: a "
                                    "label is predicted when its score is >= its threshold."),
            "type": ("byte", DESCRIPTIONS),
        }))
        output_text = (f"Independent scores (sigmoid) of the {class_count} labels, each in [0, 1]: "
                       f"a photo has every label whose score is >= its threshold in "
                       f"{THRESHOLDS_FILE_NAME}.")
    output_tensor = w.table(_TENSOR, {
        "name": w.string("score" if multi_label else "probability"),
        "description": w.string(output_text),
        "content": ("offset", output_content),
        "stats": ("offset", output_stats),
        "associated_files": w.tables(files),
    })
    subgraph = w.table(_SUBGRAPH, {
        "name": w.string("image_classifier"),
        "input_tensor_metadata": w.tables([input_tensor]),
        "output_tensor_metadata": w.tables([output_tensor]),
    })
    model = w.table(_MODEL, {
        "name": w.string(name),
        "description": w.string(description),
        "subgraph_metadata": w.tables([subgraph]),
        "min_parser_version": w.string(MIN_PARSER_VERSION),
    })
    w.builder.Finish(model, file_identifier=METADATA_IDENTIFIER)
    return bytes(w.builder.Output())


def _empty_table(builder):
    builder.StartObject(0)
    return builder.EndObject()


def with_metadata(model, metadata, labels, thresholds=None):
    """A TFLite model (bytes) with metadata (bytes) and the labels file packed in (and a
    multi-label model's thresholds, float [C], as THRESHOLDS_FILE_NAME). -> bytes.

    An existing "TFLITE_METADATA" entry is replaced. The model is repacked
    through LiteRT's object API, as TensorFlow's converter does when it adds
    its own conversion metadata; the labels are appended as a zip archive,
    stored uncompressed so that a runtime can read them in place.
    """
    model_object = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    buffer = tflite_schema.BufferT()
    buffer.data = np.frombuffer(metadata, np.uint8)
    entries = [m for m in (model_object.metadata or []) if _text(m.name) != METADATA_NAME]
    model_object.buffers.append(buffer)
    entry = tflite_schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model_object.buffers) - 1
    model_object.metadata = entries + [entry]
    stream = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(model_object)))
    stream.seek(0, io.SEEK_END)
    with zipfile.ZipFile(stream, "a", zipfile.ZIP_STORED) as archive:
        # A fixed date: the same model and labels give the same bytes.
        info = zipfile.ZipInfo(LABELS_FILE_NAME, date_time=(1980, 1, 1, 0, 0, 0))
        archive.writestr(info, "".join(f"{label}\n" for label in labels).encode("utf-8"))
        if thresholds is not None:
            info = zipfile.ZipInfo(THRESHOLDS_FILE_NAME, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, "".join(f"{float(t)!r}\n" for t in thresholds).encode())
    return stream.getvalue()


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def metadata_buffer(model):
    """The ModelMetadata flatbuffer (bytes) stored in a TFLite model, or None when it has none."""
    try:
        root = tflite_schema.Model.GetRootAs(model, 0)
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if _text(entry.Name()) == METADATA_NAME:
                return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    except Exception as e:  # flatbuffers raises whatever a bad offset leads to
        raise MetadataError(f"the model's flatbuffer cannot be read ({e})") from e
    return None


def _table(buf, position):
    return flatbuffers.table.Table(buf, position)


def _field_table(table, field_number):
    """The sub-table in a field, or None."""
    offset = table.Offset(_slot(field_number))
    return _table(table.Bytes, table.Indirect(offset + table.Pos)) if offset else None


def _field_tables(table, field_number):
    """The tables of a vector-of-tables field ([] when absent)."""
    offset = table.Offset(_slot(field_number))
    if not offset:
        return []
    start, count = table.Vector(offset), table.VectorLen(offset)
    if start + 4 * count > len(table.Bytes):  # A length that says more than the buffer holds.
        raise MetadataError("its metadata holds a table list longer than the metadata")
    return [_table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(count)]


def _field_string(table, field_number):
    offset = table.Offset(_slot(field_number))
    return table.String(offset + table.Pos).decode("utf-8") if offset else None


def _field_byte(table, field_number):
    offset = table.Offset(_slot(field_number))
    return table.Get(flatbuffers.number_types.Int8Flags, offset + table.Pos) if offset else 0


def packed_labels(model):
    """The labels (list of str) of the first output, from a model's metadata and packed files.

    -> None when the model has no metadata or no labels file for its output.
    Raises MetadataError, with one line saying why, when the metadata cannot
    be read, names a labels file that is not packed, or the packed file is
    damaged, larger than MAX_LABELS_BYTES or not UTF-8 text.
    """
    metadata = metadata_buffer(model)
    if metadata is None:
        return None
    if metadata[4:8] != METADATA_IDENTIFIER:
        raise MetadataError("its TFLITE_METADATA is not a ModelMetadata flatbuffer")
    try:
        name = _labels_file_name(metadata)
    # Offsets pointing outside the buffer: flatbuffers raises IndexError or
    # struct.error on reading there, TypeError on an offset past 32 bits.
    except (IndexError, struct.error, ValueError, TypeError) as e:
        raise MetadataError(f"its metadata flatbuffer is damaged ({type(e).__name__})") from e
    if name is None:
        return None
    text = _packed_file(model, name)
    try:
        text = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MetadataError(f"its packed labels file {_shown(name)} is not UTF-8 text") from e
    return text.splitlines()


def packed_thresholds(model):
    """A multi-label model's thresholds (float32 [C]) from its packed THRESHOLDS_FILE_NAME,
    or None when its output's metadata names no such file. MetadataError when it cannot
    be read or is not one number inside (0, 1) per line."""
    metadata = metadata_buffer(model)
    if metadata is None or metadata[4:8] != METADATA_IDENTIFIER:
        return None
    try:
        if THRESHOLDS_FILE_NAME not in _output_file_names(metadata):
            return None
    except (IndexError, struct.error, ValueError, TypeError) as e:
        raise MetadataError(f"its metadata flatbuffer is damaged ({type(e).__name__})") from e
    try:
        values = np.array([float(line) for line in
                           _packed_file(model, THRESHOLDS_FILE_NAME).decode().split()], np.float32)
    except (UnicodeDecodeError, ValueError) as e:
        raise MetadataError(f"its packed {THRESHOLDS_FILE_NAME} is not one number a line") from e
    if not np.all((values > 0) & (values < 1)):
        raise MetadataError(f"its packed {THRESHOLDS_FILE_NAME} holds thresholds outside (0, 1)")
    return values


def _output_file_names(metadata):
    """The names of the first output's associated files in ModelMetadata (bytes)."""
    root = _table(metadata, flatbuffers.encode.Get(flatbuffers.packer.uoffset, metadata, 0))
    return [_field_string(associated, _ASSOCIATED_FILE["name"])
            for subgraph in _field_tables(root, _MODEL["subgraph_metadata"])[:1]
            for tensor in _field_tables(subgraph, _SUBGRAPH["output_tensor_metadata"])[:1]
            for associated in _field_tables(tensor, _TENSOR["associated_files"])]


def _labels_file_name(metadata):
    """The name of the first output's labels file in ModelMetadata (bytes), or None."""
    root = _table(metadata, flatbuffers.encode.Get(flatbuffers.packer.uoffset, metadata, 0))
    for subgraph in _field_tables(root, _MODEL["subgraph_metadata"])[:1]:
        for tensor in _field_tables(subgraph, _SUBGRAPH["output_tensor_metadata"])[:1]:
            for associated in _field_tables(tensor, _TENSOR["associated_files"]):
                if _field_byte(associated, _ASSOCIATED_FILE["type"]) == TENSOR_AXIS_LABELS:
                    return _field_string(associated, _ASSOCIATED_FILE["name"])
    return None


def _packed_file(model, name):
    """The bytes of the file packed in the model's zip archive under name, read with a cap.

    A member is inflated from a stream, so a 2 MB archive can claim, and
    inflate to, gigabytes. One claiming more than MAX_LABELS_BYTES is refused
    unread; zipfile stops inflating at the size a member claims (and then
    checks its CRC), so one whose header understates its size is stopped
    there. Any damage is one MetadataError line.
    """
    shown = _shown(name)
    entries, directory_bytes = _central_directory_size(model)
    if entries > MAX_PACKED_FILES or directory_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
        raise MetadataError(
            f"its packed files' directory lists {entries:,} files in {directory_bytes:,} bytes, "
            f"more than the {MAX_PACKED_FILES:,} files or {MAX_CENTRAL_DIRECTORY_BYTES:,} bytes "
            "allowed")
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            info = archive.getinfo(name)
            if info.file_size > MAX_LABELS_BYTES:
                raise MetadataError(f"its packed labels file {shown} holds {info.file_size:,} "
                                    f"bytes, more than the {MAX_LABELS_BYTES:,} allowed")
            return archive.read(info)
    except KeyError as e:
        raise MetadataError(
            f"its metadata names the labels file {shown}, which is not packed in it") from e
    except zipfile.BadZipFile as e:
        if "File is not a zip file" in str(e):
            raise MetadataError(
                f"its metadata names the labels file {shown}, which is not packed in it") from e
        raise MetadataError(f"its packed files are damaged ({e})") from e
    except (zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError,
            struct.error) as e:  # a damaged stream, encryption, an unknown compression
        raise MetadataError(f"its packed labels file {shown} cannot be read ({e})") from e


# The zip format's end records (APPNOTE.TXT 4.3.14 to 4.3.16): the end of central
# directory record, within the last 64 KiB + 22 bytes, and before it, for
# archives too large for its fields, the zip64 locator and zip64 record.
_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, size, ...
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR_SIGNATURE, _ZIP64_LOCATOR_BYTES = b"PK\x06\x07", 20
_ZIP64_RECORD = struct.Struct("<4sQ2H2L4Q")  # signature, size, versions, disks, entries x2, size
_ZIP64_SIGNATURE = b"PK\x06\x06"


def _central_directory_size(data):
    """(entries, bytes) of the central directory of the zip archive data ends with.

    Read from the end records as zipfile finds them (the last end record in
    the file's last 64 KiB + 22 bytes, its zip64 record when its fields say
    so), before zipfile parses the directory. (0, 0) when there is no end
    record: zipfile then says the archive is missing.
    """
    tail_start = max(0, len(data) - _END_RECORD.size - 0xFFFF)
    at = data.rfind(_END_SIGNATURE, tail_start)
    if at < 0 or at + _END_RECORD.size > len(data):
        return 0, 0
    _, _, _, _, entries, size, _, _ = _END_RECORD.unpack_from(data, at)
    locator = at - _ZIP64_LOCATOR_BYTES
    record = locator - _ZIP64_RECORD.size
    if (record >= 0 and data[locator:locator + 4] == _ZIP64_LOCATOR_SIGNATURE
            and data[record:record + 4] == _ZIP64_SIGNATURE):
        fields = _ZIP64_RECORD.unpack_from(data, record)
        entries, size = fields[7], fields[8]  # what zipfile then reads, as it does
    return entries, size


def _shown(name):
    """A file name from the metadata, as one short line for a message."""
    return repr(name if len(name) <= 60 else name[:60] + "...")
