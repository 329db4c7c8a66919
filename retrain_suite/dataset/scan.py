r"""Which images exist and what class each belongs to: the scan of an image folder.

A dataset is a folder with one subfolder per class:

    data/daisy/photo1.jpg
    data/daisy/more/photo2.png      (nested folders belong to their class)
    data/roses/photo3.jpg

The label of a class is its folder name exactly as written. Classes are sorted,
and a label's position in that order is the index the classifier outputs.
build_dataset scans a folder and splits it (split.py) into a model.Dataset.
"""

import os
import posixpath
import stat

import tensorflow as tf
from absl import logging

from retrain_suite import errors
from retrain_suite.dataset import split as split_lib
from retrain_suite.dataset.counts import warn_about_classes
from retrain_suite.dataset.model import Dataset, DatasetError, Image, check_enough_classes
from retrain_suite.images import files as image_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def _is_hidden_dir(name):
    return name.startswith(".")


def _same_dir(a, b):
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def folder_entries(folder):
    """[(name, kind)] of a folder's entries, sorted by name; kind is 'dir', 'file'
    (a regular file, or a link that cannot be followed: reading it says why),
    or a phrase naming a special file ('a FIFO', ...).

    Only stat is used, so a FIFO or device is never opened. Local names that
    are not valid UTF-8 come back with surrogate escapes (see name_is_utf8).
    Raises OSError or tf.errors.OpError when the folder cannot be listed.
    """
    if "://" in folder:
        return [
            (name.rstrip("/"),
             "dir" if tf.io.gfile.isdir(os.path.join(folder, name.rstrip("/"))) else "file")
            for name in sorted(tf.io.gfile.listdir(folder))
        ]
    entries = []
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                mode = os.stat(entry.path).st_mode  # Follows links, as reading would.
            except OSError:
                kind = "file"
            else:
                kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode)
                        else image_files.special_file_kind(mode))
            entries.append((entry.name, kind))
    return sorted(entries)


def name_is_utf8(name):
    """False for a file name holding bytes that are not UTF-8 (surrogate-escaped by Python)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path):
    """A path for messages, with bytes that are not UTF-8 escaped (\\xff)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _reason(error):
    return getattr(error, "strerror", None) or errors.one_line(error)


def find_images(image_dir, exclude_dirs=()):
    """{label: [relative path, ...]} for every image file under image_dir.

    Subfolders of image_dir are classes; files directly inside image_dir are
    not images of any class. Hidden files and folders (starting with '.') are
    skipped, and so is any folder in exclude_dirs (a cache kept inside the
    image folder, say). Special files named like images (FIFOs, sockets,
    devices), names that are not valid UTF-8 and folders that cannot be read
    are skipped with a warning. Paths are sorted and '/' separated.
    """
    check_image_dir(image_dir)
    found = {}
    for name, class_dir in class_folders(image_dir, exclude_dirs):
        found[name] = _images_under(class_dir, name, exclude_dirs)
    return found


def check_image_dir(image_dir):
    """Raise DatasetError unless image_dir is an existing folder."""
    if not tf.io.gfile.exists(image_dir):
        raise DatasetError(f"--image_dir {image_dir} does not exist.")
    if not tf.io.gfile.isdir(image_dir):
        raise DatasetError(
            f"--image_dir {image_dir} is a file; give the folder that holds one "
            "subfolder per class."
        )


def class_folders(image_dir, exclude_dirs=()):
    """[(class name, folder)] of image_dir's class folders, sorted: its subfolders less
    the hidden and excluded ones. Raises DatasetError for a folder that cannot be listed
    or a class folder whose name is not UTF-8 (find_images' rules for the top level)."""
    try:
        entries = folder_entries(image_dir)
    except (OSError, tf.errors.OpError) as e:
        raise DatasetError(
            f"--image_dir {image_dir} cannot be read ({_reason(e)}); check its permissions."
        ) from e
    folders = []
    for name, kind in entries:
        class_dir = os.path.join(image_dir, name)
        if _is_hidden_dir(name) or kind != "dir":
            continue
        if any(_same_dir(class_dir, d) for d in exclude_dirs):
            continue
        if not name_is_utf8(name):
            raise DatasetError(
                f"Class folder {shown(class_dir)} has a name that is not valid UTF-8, "
                "and a label must be; rename the folder."
            )
        folders.append((name, class_dir))
    return folders


def listed_image(image_dir, path, exclude_dirs=(), kind="file"):
    """find_images' verdict on one file found under a class folder by another lister
    (Beam's file matching, which does not walk as _images_under does).

    path: the file's full path under image_dir; kind: as folder_entries gives it. ->
    (relative path '/' separated, None) for an image; (None, None) for a file that is
    no image and is passed over silently (hidden, excluded, another extension); or
    (None, reason) for one skipped with a warning, the reason as _images_under logs it.
    """
    relative = os.path.relpath(path, image_dir) if "://" not in path else (
        path[len(image_dir.rstrip("/")) + 1:])
    parts = relative.replace(os.sep, "/").split("/")
    if len(parts) < 2 or any(part.startswith(".") for part in parts):
        return None, None
    folder = image_dir
    for part in parts[:-1]:
        folder = os.path.join(folder, part)
        if any(_same_dir(folder, e) for e in exclude_dirs):
            return None, None
    if os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS:
        return None, None
    for part in parts[1:-1]:
        if not name_is_utf8(part):
            return None, "a folder on its path has a name that is not valid UTF-8"
        if line_breaking_char(part):
            return None, f"a folder on its path: {ONE_LINE_PROBLEM}"
    if not name_is_utf8(parts[-1]):
        return None, "its name is not valid UTF-8; rename it to include it"
    if line_breaking_char(parts[-1]):
        return None, f"{ONE_LINE_PROBLEM}; rename it to include it"
    if kind != "file":
        return None, f"not a regular file ({kind})"
    return "/".join(parts), None


def _real(path):
    return path if "://" in path else os.path.realpath(path)


def _images_under(class_dir, label, exclude_dirs):
    paths = []
    # A folder symlinked into itself would be walked forever and its images
    # counted many times: each real folder is walked once.
    seen = {_real(class_dir)}
    pending = [(class_dir, [label])]
    while pending:
        folder, parts = pending.pop()
        try:
            entries = folder_entries(folder)
        except (OSError, tf.errors.OpError) as e:
            logging.warning("Skipping folder %s: it cannot be read (%s).", shown(folder), _reason(e))
            continue
        for name, kind in entries:
            full = os.path.join(folder, name)
            if name.startswith("."):
                continue
            if kind == "dir":
                if any(_same_dir(full, e) for e in exclude_dirs):
                    continue
                if _real(full) in seen:
                    logging.warning("Skipping %s: it leads back to a folder already scanned.",
                                    shown(full))
                    continue
                seen.add(_real(full))
                if not name_is_utf8(name):
                    logging.warning("Skipping folder %s: its name is not valid UTF-8; rename it "
                                    "to include its images.", shown(full))
                    continue
                if line_breaking_char(name):
                    logging.warning("Skipping folder %s: %s; rename it to include its images.",
                                    shown(full), ONE_LINE_PROBLEM)
                    continue
                pending.append((full, [*parts, name]))
                continue
            if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if not name_is_utf8(name):
                logging.warning("Skipping %s: its name is not valid UTF-8; rename it to include "
                                "it.", shown(full))
            elif line_breaking_char(name):
                logging.warning("Skipping %s: %s; rename it to include it.", shown(full),
                                ONE_LINE_PROBLEM)
            elif kind != "file":
                logging.warning("Skipping %s: not a regular file (%s).", shown(full), kind)
            else:
                paths.append(posixpath.join(*parts, name))
    return sorted(paths)


# Why a file or folder whose name line_breaking_char finds is left out of the scan.
ONE_LINE_PROBLEM = ("its name holds a tab or a line break, which the split lists of "
                    "pre_input.py ('<path>\\t<label>' a line) cannot hold")


def line_breaking_char(name):
    """The first tab or line break in name, or None.

    Readers split the labels file and the split lists with str.splitlines,
    which breaks lines at \\n and \\r but also at \\v, \\f, \\x1c-\\x1e, \\x85,
    U+2028 and U+2029; the split lists are tab separated.
    """
    for char in name:
        if char == "\t" or len(f"a{char}a".splitlines()) > 1:
            return char
    return None


def check_label(label):
    """Raise DatasetError for a class name the labels file cannot hold on one line."""
    char = line_breaking_char(label)
    if char:
        raise DatasetError(
            f"Class folder {label!r} has a tab or a line break ({char!r}) in its name, "
            "which the labels file cannot hold on one line; rename the folder."
        )


def build_dataset(image_dir, validation_percentage, testing_percentage, exclude_dirs=(),
                  split_by="path"):
    """Scan image_dir and split it. Raises DatasetError for a folder unfit to train on.

    split_by: "path" hashes each image's relative path (the classic split);
    "content" hashes its bytes (SHA-1), which reads every file once more. A
    file that cannot be read is split by its path; it is reported later.
    """
    split_lib.check_split_by(split_by)
    split_lib.check_percentages(validation_percentage, testing_percentage)
    found = find_images(image_dir, exclude_dirs)
    for label in found:
        check_label(label)
    labels = sorted(label for label, paths in found.items() if paths)
    warn_about_classes(
        [f"Class folder {label} holds no images; it is not a class."
         for label in sorted(set(found) - set(labels))],
        "class folders hold no images",
    )
    check_enough_classes(labels, image_dir)
    def split_key(path):
        if split_by == "content":
            content = image_files.inspect_image_file(os.path.join(image_dir, *path.split("/")))
            if content.sha1 is not None:
                return content.sha1
        return path

    images = [
        Image(path, label, index,
              split_lib.split_for(split_key(path), validation_percentage, testing_percentage))
        for index, label in enumerate(labels)
        for path in found[label]
    ]
    return Dataset(image_dir, labels, images)
