"""Helpers for the dataset and pre_input tests: placeholder files, the split formula
written out independently, and a dataset with copies of each kind."""

import hashlib
import os
import shutil

from conftest import make_dataset

from retrain_suite.dataset import split as split_lib


def expected_split(relative_path, validation, testing):
    """The documented split formula, written out independently of pre_input.

    `_nohash_` and what follows it are cut from the file name only: a folder
    named `x_nohash_y` is part of every path under it.
    """
    folder, slash, file_name = relative_path.rpartition("/")
    cut = file_name.find("_nohash_")
    name = relative_path if cut < 0 else folder + slash + file_name[:cut]
    h = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    p = (h % 2**27) * (100.0 / (2**27 - 1))
    if p < validation:
        return "validation"
    if p < validation + testing:
        return "testing"
    return "training"


def touch(path, data=b"x"):
    """A placeholder file: scanning and splitting never decode images."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def splits_of(dataset):
    return {image.path: image.split for image in dataset.images}


def dataset_with_copies(root, validation=30, testing=30):
    """A 3-class dataset plus byte-identical copies: -> (image_dir, {kind: [(copy, original)]}).

    Copies are named so their path hash (30/30/40 split) puts them where each kind needs.
    """
    image_dir = make_dataset(root, per_class=6)

    def split(path):
        return split_lib.split_for(path, validation, testing)

    def copy_named(original, folder, wanted):
        """Copy `original` into `folder` under the first name whose split is `wanted`'s."""
        for n in range(1000):
            path = f"{folder}/copy{n}{os.path.splitext(original)[1]}"
            if wanted(split(path)) and not os.path.exists(os.path.join(image_dir, path)):
                os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
                shutil.copy(os.path.join(image_dir, original), os.path.join(image_dir, path))
                return path
        raise AssertionError("no name found")

    def first_in(label, wanted_split):
        return next(path for path in sorted(f"{label}/{n}" for n in os.listdir(os.path.join(
            image_dir, label))) if split(path) == wanted_split)

    made = {}
    original = first_in("red", "training")
    made["within"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    original = first_in("green", "training")
    made["across_sets"] = [(copy_named(original, "green/more", lambda s: s == "testing"), original)]
    original = first_in("blue", "training")
    made["across_classes"] = [(copy_named(original, "red", lambda s: s == "training"), original)]
    return image_dir, made
