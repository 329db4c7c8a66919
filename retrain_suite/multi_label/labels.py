r"""Where a multi-label run's labels come from, and its dataset: one example per photo.

Two sources:

- `--labels_csv`: a UTF-8 CSV file (a leading byte-order mark is allowed) whose first
  row is the header `path,labels`, then one row per photo:

      path,labels
      beach/0001.jpg,beach;dog
      city/0002.jpg,city
      misc/0003.jpg,

  `path` is relative to --image_dir ('/' separated); `labels` holds the photo's labels
  separated by --labels_delimiter (';'), spaces around each trimmed, empty pieces
  ignored. An empty labels cell (or a row of the path alone) is a photo with none of
  the labels: a negative example, which teaches every label's "no". Only the photos
  the CSV names are used.
- without a CSV, the class folders of the single-label layout: a photo filed (as
  byte-identical copies) in several class folders has all their labels.

Either way photos are grouped by content (SHA-1 of the file): byte-identical copies are
one example with the union of their labels, split by that content, so a photo's copies
never fall in two sets.

Refused with one line: a CSV that is missing, not a regular file (a FIFO), larger than
MAX_CSV_BYTES, not UTF-8, without the header, empty of rows, with a row of more than two
columns, naming a path outside --image_dir (absolute, `..`, or a symlink leading out), a
file that does not exist or is not an image file, a photo twice, or a label that is
not a valid label name (see check_label_name); and fewer than two labels in all.
"""

import csv
import io
import os
import re
import stat

from absl import logging

from retrain_suite.dataset import scan
from retrain_suite.dataset import split as split_lib
from retrain_suite.dataset.model import Dataset, DatasetError, Image, check_enough_classes
from retrain_suite.images import files as image_files

HEADER = ("path", "labels")


MAX_CSV_BYTES = 64 * 2**20  # a million rows of photo names fit many times over


MAX_LABEL_CHARACTERS = 200


class LabelsFileError(DatasetError):
    """A --labels_csv file, or a row of it, that cannot be used."""


def check_label_name(label, where):
    """Raise LabelsFileError unless label is a usable label name: not empty, at most
    MAX_LABEL_CHARACTERS, no control or line-breaking characters (the labels file holds
    one label a line). where: the row, for the message."""
    if not label:
        raise LabelsFileError(f"{where}: an empty label.")
    if len(label) > MAX_LABEL_CHARACTERS:
        raise LabelsFileError(f"{where}: the label {label[:40]!r}... is longer than "
                              f"{MAX_LABEL_CHARACTERS} characters.")
    if scan.line_breaking_char(label) or not label.isprintable():
        raise LabelsFileError(f"{where}: the label {label!r} holds a control character or a "
                              "line break; a label must fit on one line of the labels file.")


def _csv_text(csv_path):
    """The CSV file's text; LabelsFileError if it cannot be read as UTF-8 text."""
    data, problem = image_files.read_regular_file(csv_path, MAX_CSV_BYTES)
    if problem == image_files.MISSING:
        raise LabelsFileError(f"--labels_csv {csv_path} does not exist.")
    if problem:
        raise LabelsFileError(f"--labels_csv {csv_path} cannot be used: {problem}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelsFileError(f"--labels_csv {csv_path} is not UTF-8 text (byte {e.start}); "
                              "save it as UTF-8.") from e
    return text[1:] if text.startswith("\ufeff") else text


def _relative_path(image_dir, path, where):
    """The row's path, normalised ('a/./b' -> 'a/b'); LabelsFileError if it leaves
    image_dir, is missing, or is not a regular image file."""
    if not path:
        raise LabelsFileError(f"{where}: the path is empty.")
    if path.startswith("/") or re.match(r"[A-Za-z]:[\\/]", path):
        raise LabelsFileError(f"{where}: {path!r} is not relative to --image_dir; "
                              "give paths like class/photo.jpg.")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise LabelsFileError(f"{where}: {path!r} leads outside --image_dir.")
    if os.path.splitext(parts[-1])[1].lower() not in scan.IMAGE_EXTENSIONS:
        raise LabelsFileError(f"{where}: {path!r} is not an image file name "
                              f"({', '.join(scan.IMAGE_EXTENSIONS)}).")
    full = os.path.join(image_dir, *parts)
    if "://" not in image_dir:
        real_dir = os.path.realpath(image_dir)
        if os.path.commonpath([real_dir, os.path.realpath(full)]) != real_dir:
            raise LabelsFileError(f"{where}: {path!r} is a link that leads outside --image_dir.")
        try:
            mode = os.stat(full).st_mode
        except FileNotFoundError:
            raise LabelsFileError(f"{where}: {path!r} does not exist in --image_dir.") from None
        except OSError as e:
            raise LabelsFileError(f"{where}: {path!r} cannot be read ({e.strerror}).") from None
        if not stat.S_ISREG(mode):
            raise LabelsFileError(f"{where}: {path!r} is not a regular file.")
    return "/".join(parts)


def read_labels_csv(image_dir, csv_path, delimiter):
    """The CSV's rows -> {relative path: sorted tuple of labels}, in file order."""
    reader = csv.reader(io.StringIO(_csv_text(csv_path), newline=""), strict=True)
    labelled, header_seen = {}, False
    try:
        for row in reader:
            where = f"--labels_csv {csv_path} line {reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if not header_seen:
                if tuple(cell.strip().lower() for cell in row) != HEADER:
                    raise LabelsFileError(f"{where}: the first row must be the header "
                                          f"'{','.join(HEADER)}', not {','.join(row)[:80]!r}.")
                header_seen = True
                continue
            if len(row) > 2:
                raise LabelsFileError(
                    f"{where}: {len(row)} columns; a row is a path and one labels cell, the "
                    f"labels separated by {delimiter!r} (quote a cell that holds a comma).")
            path = _relative_path(image_dir, row[0], where)
            if path in labelled:
                raise LabelsFileError(f"{where}: {path!r} is listed a second time; give each "
                                      "photo one row with all its labels.")
            cell = row[1] if len(row) > 1 else ""
            labels = {piece.strip() for piece in cell.split(delimiter)} - {""}
            for label in labels:
                check_label_name(label, where)
            labelled[path] = tuple(sorted(labels))
    except csv.Error as e:
        raise LabelsFileError(f"--labels_csv {csv_path} line {reader.line_num} is not valid "
                              f"CSV: {e}.") from e
    if not labelled:
        raise LabelsFileError(f"--labels_csv {csv_path} has no rows of photos"
                              + ("" if header_seen else " (not even the header 'path,labels')")
                              + ".")
    return labelled


def labels_from_folders(image_dir, exclude_dirs):
    """{relative path: (its folder's label,)} for every image of the class folders."""
    found = scan.find_images(image_dir, exclude_dirs)
    for label in found:
        scan.check_label(label)
    return {path: (label,) for label, paths in found.items() for path in paths}


def by_content(image_dir, labelled):
    """Group photos by content. -> {relative path: (labels, split key)}: one entry per
    distinct content, at its first path in sorted order, with the union of the copies'
    labels; the split key is the SHA-1 (the path for a file that cannot be read: it is
    reported, and skipped, when the bottlenecks are computed)."""
    groups = {}
    for path in sorted(labelled):
        sha1 = image_files.inspect_image_file(os.path.join(image_dir, *path.split("/"))).sha1
        groups.setdefault(sha1 or path, []).append(path)
    merged = {}
    for key, paths in groups.items():
        labels = tuple(sorted(set().union(*(labelled[p] for p in paths))))
        merged[paths[0]] = (labels, key)
    several = sum(1 for paths in groups.values() if len({labelled[p] for p in paths}) > 1)
    if several:
        logging.info("%d photos are filed with different labels (byte-identical copies): each "
                     "is one example with all of its copies' labels.", several)
    return merged


def build_multi_label_dataset(image_dir, percentages, labels_csv="", delimiter=";",
                              exclude_dirs=()):
    """The multi-label dataset of image_dir, split by content. -> dataset.Dataset whose
    label_sets gives each image's labels.

    percentages: (validation, testing). An image's `label` is its first label ('' for a
    photo with none, whose label_index is -1).
    """
    split_lib.check_percentages(*percentages)
    if not labels_csv:
        labelled = labels_from_folders(image_dir, exclude_dirs)
    elif not os.path.isdir(image_dir) and "://" not in image_dir:
        raise DatasetError(f"--image_dir {image_dir} is not a folder.")
    else:
        labelled = read_labels_csv(image_dir, labels_csv, delimiter)
    merged = by_content(image_dir, labelled)
    labels = sorted(set().union(*(labels for labels, _ in merged.values())))
    if labels_csv and len(labels) < 2:
        raise LabelsFileError(f"--labels_csv {labels_csv} names {len(labels)} label(s); a "
                              "multi-label classifier needs two or more.")
    check_enough_classes(labels, image_dir)
    index = {label: n for n, label in enumerate(labels)}
    images = []
    for path, (image_labels, key) in merged.items():
        first = image_labels[0] if image_labels else ""
        images.append(Image(path, first, index.get(first, -1),
                            split_lib.split_for(key, *percentages)))
    images.sort(key=lambda i: (i.label, i.path))
    return Dataset(image_dir, labels, images,
                   label_sets={path: image_labels for path, (image_labels, _) in merged.items()})
