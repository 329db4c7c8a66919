r"""Which images exist, what class each belongs to, and which set it falls in.

A dataset is a folder with one subfolder per class:

    data/daisy/photo1.jpg
    data/daisy/more/photo2.png      (nested folders belong to their class)
    data/roses/photo3.jpg

The label of a class is its folder name exactly as written. Classes are sorted,
and a label's position in that order is the index the classifier outputs.

Each image is put in the training, validation or testing set by a hash of its
path relative to the image folder, so the split never changes when the folder
moves, when the OS changes, or when other images are added or removed. A file
named `cat_nohash_2.jpg` hashes like `cat`, which keeps several shots of one
subject in the same set.

pre_input.py (retrain_suite.cli.pre_input) checks and splits a dataset ahead of
training with these functions and writes the split lists (`write_lists`).
"""

import collections
import dataclasses
import hashlib
import os
import posixpath
import re
import stat

import tensorflow as tf
from absl import logging

from retrain_suite import atomic_files, errors, output_paths
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


SPLITS = ("training", "validation", "testing")


SPLIT_BY = ("path", "content")  # what split_for hashes: the relative path, or the file's bytes


# Copies listed by name in the copies report, per kind; the rest are counted.
COPIES_NAMED = 5


MIN_IMAGES_PER_CLASS = 20


# What the log shows must stay readable at 10,000 classes: at most this many
# rows of a list of classes (the count table, warnings about classes, and
# evaluation's and training's per-class lines), then one line saying how many
# more and where every class's numbers are.
MAX_CLASSES_LISTED = 30


# The classic script's constant: the largest number of files one class could
# have before the split stopped being exact.
_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1


class DatasetError(errors.SuiteError):
    """A problem with the user's image folder or split settings."""

    area = "dataset"


@dataclasses.dataclass(frozen=True)
class Image:
    path: str  # relative to the image folder, '/' separated
    label: str
    label_index: int
    split: str  # one of SPLITS


@dataclasses.dataclass
class Dataset:
    image_dir: str
    labels: list  # sorted class names; index = classifier output
    images: list  # of Image, sorted by (label, path)

    def in_split(self, split):
        return [image for image in self.images if image.split == split]

    def full_path(self, image):
        return os.path.join(self.image_dir, *image.path.split("/"))

    def without(self, paths):
        """The dataset less the images whose relative path is in `paths`.

        A class left with no images is no longer a class, and the label
        indices are renumbered to match. Raises DatasetError if fewer than two
        classes are left.
        """
        drop = set(paths)
        kept = [i for i in self.images if i.path not in drop]
        labels = sorted({i.label for i in kept})
        warn_about_classes(
            [f"Class {label} has no usable images left; it is not a class."
             for label in sorted(set(self.labels) - set(labels))],
            "classes have no usable images left",
        )
        _check_enough_classes(labels, self.image_dir)
        index = {label: n for n, label in enumerate(labels)}
        return Dataset(
            self.image_dir,
            labels,
            [dataclasses.replace(i, label_index=index[i.label]) for i in kept],
        )


def split_for(relative_path, validation_percentage, testing_percentage):
    """'training', 'validation' or 'testing' for one image, from its path alone.

    relative_path: the image's path relative to the image folder, '/' separated.
    Anything from `_nohash_` on in the file name is ignored.
    """
    hash_name = re.sub(r"_nohash_[^/]*$", "", relative_path)
    digest = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage_hash = (int(digest, 16) % (_MAX_NUM_IMAGES_PER_CLASS + 1)) * (
        100.0 / _MAX_NUM_IMAGES_PER_CLASS
    )
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def check_percentages(validation_percentage, testing_percentage):
    for name, value in (
        ("validation_percentage", validation_percentage),
        ("testing_percentage", testing_percentage),
    ):
        if not 0 <= value <= 100:
            raise DatasetError(f"--{name}={value} is outside 0-100.")
    if validation_percentage + testing_percentage >= 100:
        raise DatasetError(
            f"--validation_percentage and --testing_percentage add up to "
            f"{validation_percentage + testing_percentage}; they must leave some "
            "images for training (sum below 100)."
        )


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
    if not tf.io.gfile.exists(image_dir):
        raise DatasetError(f"--image_dir {image_dir} does not exist.")
    if not tf.io.gfile.isdir(image_dir):
        raise DatasetError(
            f"--image_dir {image_dir} is a file; give the folder that holds one "
            "subfolder per class."
        )
    try:
        entries = folder_entries(image_dir)
    except (OSError, tf.errors.OpError) as e:
        raise DatasetError(
            f"--image_dir {image_dir} cannot be read ({_reason(e)}); check its permissions."
        ) from e
    found = {}
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
        found[name] = _images_under(class_dir, name, exclude_dirs)
    return found


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
    if split_by not in SPLIT_BY:
        raise DatasetError(f"--split_by={split_by} is not one of {', '.join(SPLIT_BY)}.")
    check_percentages(validation_percentage, testing_percentage)
    found = find_images(image_dir, exclude_dirs)
    for label in found:
        check_label(label)
    labels = sorted(label for label, paths in found.items() if paths)
    warn_about_classes(
        [f"Class folder {label} holds no images; it is not a class."
         for label in sorted(set(found) - set(labels))],
        "class folders hold no images",
    )
    _check_enough_classes(labels, image_dir)
    def split_key(path):
        if split_by == "content":
            content = image_files.inspect_image_file(os.path.join(image_dir, *path.split("/")))
            if content.sha1 is not None:
                return content.sha1
        return path

    images = [
        Image(path, label, index,
              split_for(split_key(path), validation_percentage, testing_percentage))
        for index, label in enumerate(labels)
        for path in found[label]
    ]
    return Dataset(image_dir, labels, images)


def _check_enough_classes(labels, image_dir):
    if len(labels) < 2:
        raise DatasetError(
            f"Found {len(labels)} class folder(s) with usable images in {image_dir}; "
            "at least two are needed. Put each class's images in its own "
            "subfolder (e.g. data/cats/*.jpg, data/dogs/*.jpg)."
        )


def counts_by_class(dataset):
    """{label: {split: count}} over every label and split, zeros included."""
    counts = {label: dict.fromkeys(SPLITS, 0) for label in dataset.labels}
    for image in dataset.images:
        counts[image.label][image.split] += 1
    return counts


def warn_about_classes(messages, more):
    """Log each message as a warning, at most MAX_CLASSES_LISTED of them, then
    one warning "... and N more <more>." for the rest."""
    for message in messages[:MAX_CLASSES_LISTED]:
        logging.warning("%s", message)
    if len(messages) > MAX_CLASSES_LISTED:
        logging.warning("... and %d more %s.", len(messages) - MAX_CLASSES_LISTED, more)


def fewest_images_first(counts):
    """The labels of counts ({label: {split: count}}), the fewest images first,
    ties in label order."""
    return sorted(counts, key=lambda label: sum(counts[label].values()))


def warn_about_small_classes(dataset, full_counts=None):
    """Log a warning for each class with few images or an empty set.

    A class with no validation or testing images does not stop training; the
    evaluation on that set just does not see the class. Past
    MAX_CLASSES_LISTED warnings, those of the classes with the fewest images
    are logged, then one line counting the rest and the classes of each kind;
    full_counts (text, or None) says there where every class's counts can be read.
    """
    counts = counts_by_class(dataset)
    messages, small, short_of = [], 0, 0
    for label in dataset.labels:
        by_split = counts[label]
        total = sum(by_split.values())
        if total < MIN_IMAGES_PER_CLASS:
            small += 1
            messages.append(
                (label, f"Class {label} has only {total} images; {MIN_IMAGES_PER_CLASS} or more "
                        "give a useful classifier.")
            )
        short = [s for s in SPLITS if by_split[s] == 0]
        if short:
            short_of += 1
            messages.append((label, f"Class {label} has no {' or '.join(short)} images."))
    if len(messages) > MAX_CLASSES_LISTED:
        rank = {label: n for n, label in enumerate(fewest_images_first(counts))}
        messages.sort(key=lambda m: rank[m[0]])  # stable: a class's own warnings stay in order
    warn_about_classes(
        [message for _, message in messages],
        f"warnings about classes: {small} of the {len(dataset.labels)} classes have fewer than "
        f"{MIN_IMAGES_PER_CLASS} images, {short_of} have a set without images"
        + (f" ({full_counts})" if full_counts else ""),
    )
    for split in SPLITS:
        if not any(by_split[split] for by_split in counts.values()):
            logging.warning("The %s set is empty.", split)


def format_count_table(dataset, skipped=(), full_counts=None):
    """A per-class table of image counts by set, with totals, as text.

    Past MAX_CLASSES_LISTED classes it lists the classes with the fewest
    images, then a line saying how many more there are; full_counts (text, or
    None) says there where every class's counts can be read. The TOTAL row
    counts every class.
    """
    counts = counts_by_class(dataset)
    skipped_by_label = collections.Counter(path.split("/")[0] for path, _ in skipped)
    header = ["class", *SPLITS, "total", "skipped"]

    def row(label):
        by_split = counts[label]
        return [label, *(by_split[s] for s in SPLITS), sum(by_split.values()),
                skipped_by_label[label]]

    rows = [row(label) for label in dataset.labels]
    totals = ["TOTAL", *(sum(r[i] for r in rows) for i in range(1, len(header)))]
    heading, note = [], []
    if len(rows) > MAX_CLASSES_LISTED:
        heading = [f"The {MAX_CLASSES_LISTED} classes with the fewest images, of {len(rows)}:"]
        rows = [row(label) for label in fewest_images_first(counts)[:MAX_CLASSES_LISTED]]
        note = [f"... and {len(dataset.labels) - MAX_CLASSES_LISTED} more classes"
                + (f" ({full_counts})." if full_counts else ".")]
    rows.append(totals)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        first = str(row[0]).ljust(widths[0])
        rest = (str(v).rjust(w) for v, w in zip(row[1:], widths[1:]))
        return "  ".join([first, *rest])

    return "\n".join([*heading, line(header), line(["-" * w for w in widths]), *map(line, rows),
                      *note])


@dataclasses.dataclass
class Copies:
    """Images whose files are byte-identical, grouped by content.

    Each group is a list of Image (two or more, sorted by label and path). A
    group may be in both across_sets and across_classes.
    """

    images: int  # images with a known content (readable files)
    distinct: int  # distinct contents among them
    within_set: list  # groups of one class, all in one set: wasted work only
    across_sets: list  # groups in more than one set: a copy is tested on what was trained
    across_classes: list  # groups filed under more than one class: label noise

    @property
    def copies(self):
        """Images that are a copy of an earlier one: images - distinct."""
        return self.images - self.distinct


def find_copies(images, contents):
    """Copies among `images` (Image), `contents[i]` the SHA-1 of image i's file (None: unread)."""
    groups = {}
    for image, content in zip(images, contents):
        if content is not None:
            groups.setdefault(content, []).append(image)
    within, across_sets, across_classes = [], [], []
    for group in groups.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda i: (i.label, i.path))
        crosses_sets = len({i.split for i in group}) > 1
        crosses_classes = len({i.label for i in group}) > 1
        if crosses_sets:
            across_sets.append(group)
        if crosses_classes:
            across_classes.append(group)
        if not crosses_sets and not crosses_classes:
            within.append(group)
    def in_order(kind):
        return sorted(kind, key=lambda g: (g[0].label, g[0].path))

    return Copies(sum(len(g) for g in groups.values()), len(groups),
                  in_order(within), in_order(across_sets), in_order(across_classes))


def _named(groups, describe):
    """Lines naming the first COPIES_NAMED groups, then a count of the rest."""
    lines = [f"    {describe(group)}" for group in groups[:COPIES_NAMED]]
    if len(groups) > COPIES_NAMED:
        lines.append(f"    ... and {len(groups) - COPIES_NAMED} more")
    return lines


def _sizes(group):
    """'' for a pair, else ' (41 images: 34 training, 2 validation, 5 testing)'."""
    if len(group) == 2:
        return ""
    by_split = collections.Counter(i.split for i in group)
    return f" ({len(group)} images: " + ", ".join(
        f"{by_split[split]} {split}" for split in SPLITS if by_split[split]
    ) + ")"


def _same_files(group):
    """'red/a.jpg = red/b.jpg', or the first two and the group's size."""
    return " = ".join(i.path for i in group[:2]) + _sizes(group)


def _evaluated_copy(group):
    """'testing red/a.jpg is a copy of training red/b.jpg': the evaluated copy first."""
    evaluated = [i for i in group if i.split != "training"]
    first = evaluated[0] if evaluated else group[0]
    other = next(i for i in group if i.split != first.split)
    return f"{first.split} {first.path} is a copy of {other.split} {other.path}" + _sizes(group)


def format_copies(copies):
    """The copies report: one line of counts, then the copies by kind, as text."""
    if not copies.copies:
        return f"Copies: none; {copies.images} images, all distinct."
    lines = [
        f"Copies: {copies.images} images, {copies.distinct} distinct "
        f"({copies.copies} {'is a copy' if copies.copies == 1 else 'are copies'} of another image)."
    ]
    if copies.within_set:
        lines.append(f"  {len(copies.within_set)} within one class and set (harmless, computed once):")
        lines += _named(copies.within_set, _same_files)
    if copies.across_sets:
        lines.append(
            f"  {len(copies.across_sets)} across sets: the evaluation sees photos trained on, "
            "which inflates the reported accuracy (--split_by=content keeps copies in one set):"
        )
        lines += _named(copies.across_sets, _evaluated_copy)
    if copies.across_classes:
        lines.append(
            f"  {len(copies.across_classes)} filed under more than one class: label noise; "
            "keep each photo in its one class:"
        )
        lines += _named(copies.across_classes, _same_files)
    return "\n".join(lines)


def content_hashes(dataset):
    """[SHA-1 hex of each image's file, or None where it cannot be read], in dataset.images order."""
    return [image_files.inspect_image_file(dataset.full_path(i)).sha1 for i in dataset.images]


def find_bad_images(dataset, max_pixels=image_files.DEFAULT_MAX_IMAGE_PIXELS, batch_size=64):
    """Read and decode every image once. -> [(relative path, reason)] for those unusable."""
    paths = [dataset.full_path(image) for image in dataset.images]
    decoded = set()
    graph = tf.Graph()
    with graph.as_default():
        # Decodability is all that is checked here; a small output size keeps it cheap.
        # The pipeline refuses unreadable, special and oversized files itself.
        batches = image_pipelines.image_batches(paths, 8, 8, batch_size, max_pixels)
        next_batch = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
        with tf.compat.v1.Session(graph=graph) as sess:
            for indices, _, _ in image_pipelines.each_batch(sess, next_batch):
                decoded.update(indices.tolist())
    return [
        (dataset.images[i].path, image_files.why_undecodable(paths[i], max_pixels))
        for i in range(len(paths)) if i not in decoded
    ]


def write_lists(dataset, output_dir):
    """Write labels.txt and one '<path>\\t<label>' file per split into output_dir."""
    tf.io.gfile.makedirs(output_dir)
    atomic_files.write_text(
        os.path.join(output_dir, "labels.txt"), "".join(f"{l}\n" for l in dataset.labels)
    )
    for split in SPLITS:
        lines = "".join(f"{i.path}\t{i.label}\n" for i in dataset.in_split(split))
        atomic_files.write_text(os.path.join(output_dir, f"{split}.txt"), lines)


def check_output_dir(output_dir, image_dir):
    """Raise output_paths.PathError unless output_dir is a folder (or can be one) apart
    from image_dir: not the same, not inside it, not around it."""
    output_paths.check_apart([("output_dir", output_dir)], [("image_dir", image_dir)])
    output_paths.check_folder_output("output_dir", output_dir)
