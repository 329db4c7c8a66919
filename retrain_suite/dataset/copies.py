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
