"""Which images exist, what class each belongs to, and which set it falls in.

Rooms:
  model.py    Image, Dataset (the image folder, its classes, every image), DatasetError
  scan.py     the scan of an image folder: find_images, the checks on names and labels,
              build_dataset (scan, then split)
  split.py    the hash split: split_for, check_percentages, SPLITS, SPLIT_BY,
              DEFAULT_PERCENTAGE
  counts.py   images per class and set: counts_by_class, the warnings about small
              classes, the count table (each bounded by MAX_CLASSES_LISTED)
  copies.py   the copies report: find_copies, format_copies

The names a run uses are importable from the package itself
(`from retrain_suite import dataset as dataset_lib; dataset_lib.build_dataset(...)`);
the rest from their rooms. pre_input.py's decode check and list writers are
retrain_suite.preparation.
"""

from retrain_suite.dataset.copies import Copies, find_copies, format_copies
from retrain_suite.dataset.counts import (
    MAX_CLASSES_LISTED,
    counts_by_class,
    format_count_table,
    warn_about_small_classes,
)
from retrain_suite.dataset.model import Dataset, DatasetError, Image
from retrain_suite.dataset.scan import build_dataset
from retrain_suite.dataset.split import SPLITS

__all__ = [
    "MAX_CLASSES_LISTED", "SPLITS", "Copies", "Dataset", "DatasetError", "Image",
    "build_dataset", "counts_by_class", "find_copies", "format_copies", "format_count_table",
    "warn_about_small_classes",
]
