"""Which set an image falls in: the hash split and its percentages.

Each image is put in the training, validation or testing set by a hash of its
path relative to the image folder, so the split never changes when the folder
moves, when the OS changes, or when other images are added or removed. A file
named `cat_nohash_2.jpg` hashes like `cat`, which keeps several shots of one
subject in the same set. With --split_by=content the hash is of the file's
bytes instead, which keeps byte-identical copies in one set.
"""

import hashlib
import re

from retrain_suite.dataset.model import DatasetError

SPLITS = ("training", "validation", "testing")


SPLIT_BY = ("path", "content")  # what split_for hashes: the relative path, or the file's bytes


# --validation_percentage and --testing_percentage when not given.
DEFAULT_PERCENTAGE = 10


# The classic script's constant: the largest number of files one class could
# have before the split stopped being exact.
_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1


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
    """Raise DatasetError unless both are in 0-100 and leave some images for training."""
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


def check_split_by(split_by):
    """Raise DatasetError unless split_by is one of SPLIT_BY."""
    if split_by not in SPLIT_BY:
        raise DatasetError(f"--split_by={split_by} is not one of {', '.join(SPLIT_BY)}.")
