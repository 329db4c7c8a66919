"""The copies report: which images are byte-identical, and whether that matters.

A copy within one class and set is wasted work; a copy across sets means the
evaluation sees photos trained on; a copy filed under two classes is label
noise. find_copies groups images by the SHA-1 of their files, format_copies
says so in a few lines.
"""

import collections
import dataclasses

from retrain_suite.dataset.split import SPLITS

# Copies listed by name in the copies report, per kind; the rest are counted.
COPIES_NAMED = 5


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


KINDS = ("within_set", "across_sets", "across_classes")  # Copies' lists, in report order


def kinds_of(group):
    """The kinds (names in KINDS) of one group of byte-identical images (Image, two or
    more): within_set alone, or across_sets and/or across_classes."""
    crosses_sets = len({i.split for i in group}) > 1
    crosses_classes = len({i.label for i in group}) > 1
    if not crosses_sets and not crosses_classes:
        return ("within_set",)
    return tuple(kind for kind, crosses in (("across_sets", crosses_sets),
                                            ("across_classes", crosses_classes)) if crosses)


def group_order(group):
    """Sort key of a group (sorted by label and path) in the report: its first image."""
    return (group[0].label, group[0].path)


def find_copies(images, contents):
    """Copies among `images` (Image), `contents[i]` the SHA-1 of image i's file (None: unread)."""
    groups = {}
    for image, content in zip(images, contents):
        if content is not None:
            groups.setdefault(content, []).append(image)
    kinds = {kind: [] for kind in KINDS}
    for group in groups.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda i: (i.label, i.path))
        for kind in kinds_of(group):
            kinds[kind].append(group)
    return Copies(sum(len(g) for g in groups.values()), len(groups),
                  *(sorted(kinds[kind], key=group_order) for kind in KINDS))


def _named(count, groups, describe):
    """Lines naming the first COPIES_NAMED groups (of count), then a count of the rest."""
    lines = [f"    {describe(group)}" for group in groups[:COPIES_NAMED]]
    if count > COPIES_NAMED:
        lines.append(f"    ... and {count - COPIES_NAMED} more")
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
    return format_copy_counts(copies.images, copies.distinct, {
        kind: (len(getattr(copies, kind)), getattr(copies, kind)[:COPIES_NAMED])
        for kind in KINDS
    })


def format_copy_counts(images, distinct, kinds):
    """format_copies from counts alone, for a report computed where the groups are too many
    to hold (the Beam pipeline): images and distinct as in Copies; kinds: {kind in KINDS:
    (number of groups, the first COPIES_NAMED of them in group_order)}."""
    copies = images - distinct
    if not copies:
        return f"Copies: none; {images} images, all distinct."
    lines = [
        f"Copies: {images} images, {distinct} distinct "
        f"({copies} {'is a copy' if copies == 1 else 'are copies'} of another image)."
    ]
    count, named = kinds["within_set"]
    if count:
        lines.append(f"  {count} within one class and set (harmless, computed once):")
        lines += _named(count, named, _same_files)
    count, named = kinds["across_sets"]
    if count:
        lines.append(
            f"  {count} across sets: the evaluation sees photos trained on, "
            "which inflates the reported accuracy (--split_by=content keeps copies in one set):"
        )
        lines += _named(count, named, _evaluated_copy)
    count, named = kinds["across_classes"]
    if count:
        lines.append(
            f"  {count} filed under more than one class: label noise; "
            "keep each photo in its one class:"
        )
        lines += _named(count, named, _same_files)
    return "\n".join(lines)
