"""What a scanned dataset is: its images (path, class, set) and its error.

`Image` is one image file; `Dataset` is the image folder, its sorted class
names and every image. scan.build_dataset makes one from a folder,
tfrecords.read_tfrecords from record files.
"""

import dataclasses
import os
from typing import Optional

from retrain_suite import errors


class DatasetError(errors.SuiteError):
    """A problem with the user's image folder or split settings."""

    area = "dataset"


@dataclasses.dataclass(frozen=True)
class Image:
    path: str  # relative to the image folder, '/' separated
    label: str
    label_index: int
    split: str  # one of split.SPLITS


@dataclasses.dataclass
class Dataset:
    image_dir: str
    labels: list  # sorted class names; index = classifier output
    images: list  # of Image, sorted by (label, path)
    # Multi-label runs only: {relative path: sorted tuple of the image's labels} (an
    # image's `label` is then its first label, '' with label_index -1 for none).
    label_sets: Optional[dict] = None

    def labels_of(self, image):
        """The labels of one image: (its label,), or its label set in a multi-label run."""
        return (image.label,) if self.label_sets is None else self.label_sets[image.path]

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
        # Imported here: counts imports split, which imports this room.
        from retrain_suite.dataset import counts

        drop = set(paths)
        kept = [i for i in self.images if i.path not in drop]
        labels = sorted({label for i in kept for label in self.labels_of(i)})
        counts.warn_about_classes(
            [f"Class {label} has no usable images left; it is not a class."
             for label in sorted(set(self.labels) - set(labels))],
            "classes have no usable images left",
        )
        check_enough_classes(labels, self.image_dir)
        index = {label: n for n, label in enumerate(labels)}
        return Dataset(
            self.image_dir,
            labels,
            [dataclasses.replace(i, label_index=index.get(i.label, -1)) for i in kept],
            None if self.label_sets is None else {i.path: self.label_sets[i.path] for i in kept},
        )


def check_enough_classes(labels, image_dir):
    """Raise DatasetError unless labels (the classes with images) are two or more."""
    if len(labels) < 2:
        raise DatasetError(
            f"Found {len(labels)} class folder(s) with usable images in {image_dir}; "
            "at least two are needed. Put each class's images in its own "
            "subfolder (e.g. data/cats/*.jpg, data/dogs/*.jpg)."
        )
