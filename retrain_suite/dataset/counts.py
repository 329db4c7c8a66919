"""How many images each class has in each set, and the warnings and table about it.

Every list of classes shown in the log is bounded (MAX_CLASSES_LISTED rows,
then one line counting the rest), so the log stays readable at 10,000 classes.
"""

import collections

from absl import logging

from retrain_suite.dataset.split import SPLITS

MIN_IMAGES_PER_CLASS = 20


# What the log shows must stay readable at 10,000 classes: at most this many
# rows of a list of classes (the count table, warnings about classes, and
# evaluation's and training's per-class lines), then one line saying how many
# more and where every class's numbers are.
MAX_CLASSES_LISTED = 30


def counts_by_class(dataset):
    """{label: {split: count}} over every label and split, zeros included."""
    counts = {label: dict.fromkeys(SPLITS, 0) for label in dataset.labels}
    for image in dataset.images:
        for label in dataset.labels_of(image):  # every label of a multi-label image
            counts[label][image.split] += 1
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
