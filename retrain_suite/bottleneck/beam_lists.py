r"""The split lists and the copies report, computed in the Beam fill (beam_fill.py).

Both are functions of each image's path or content hash, so they need no scan on one
machine: each image's set is dataset.split.split_for of its relative path (or, with
split_by "content", of its SHA-1), found where the image is read; the copies are the
pipeline's groups by content. Written under the folder given:

- `split-SSSSS-of-NNNNN.tsv`: sharded text, one line per image:
  `<set>\t<class>\t<path relative to the image folder, '/' separated>`, in no order.
  The same sets as the in-process split (dataset.build_dataset) for the same
  percentages; file names holding a tab or a line break are left out by the scan.
- `copies.txt`: dataset.copies.format_copy_counts' report, as pre_input.py logs it,
  from counts and the first groups of each kind only, so its size does not grow with
  the data.

Beam's text sink writes the files under temporary names and renames them when the
pipeline ends: a killed run leaves no list.
"""

import dataclasses
import heapq

import apache_beam as beam
import tensorflow as tf

from retrain_suite import output_paths
from retrain_suite.dataset import copies as copies_lib
from retrain_suite.dataset.model import Image

SPLIT_LISTS_PREFIX, SPLIT_LISTS_SUFFIX = "split", ".tsv"
COPIES_FILE = "copies.txt"


@dataclasses.dataclass(frozen=True)
class SplitLists:
    """Where and how the fill writes the split lists and the copies report."""

    folder: str  # local or gs://; must hold no lists yet
    validation_percentage: float
    testing_percentage: float
    split_by: str = "path"  # one of dataset.split.SPLIT_BY


def check_folder(folder):
    """Raise output_paths.PathError unless folder can take the lists: not a file, and
    holding no split lists or copies report yet (those of a finished run are never
    mixed with or overwritten by another's shards)."""
    output_paths.check_folder_output("split_lists_dir", folder)
    if not tf.io.gfile.isdir(folder):
        return
    earlier = [name for name in tf.io.gfile.listdir(folder)
               if name == COPIES_FILE or (name.startswith(SPLIT_LISTS_PREFIX + "-")
                                          and name.endswith(SPLIT_LISTS_SUFFIX))]
    if earlier:
        raise output_paths.PathError(
            f"--split_lists_dir={folder} holds the lists of an earlier run ({sorted(earlier)[0]}"
            "...); give a new or empty folder."
        )


def split_line(listed):
    """beam_fill.Listed -> '<set>\\t<class>\\t<path>'."""
    return f"{listed.split}\t{listed.label}\t{listed.path}"


def write_lists(listed, groups, lists):
    """Add the lists' writing to the pipeline. listed: PCollection of beam_fill.Listed;
    groups: of (content key, [Listed]); lists: SplitLists."""
    _ = (listed
         | "Split lines" >> beam.Map(split_line)
         | "Write split lists" >> beam.io.WriteToText(
             f"{lists.folder.rstrip('/')}/{SPLIT_LISTS_PREFIX}",
             file_name_suffix=SPLIT_LISTS_SUFFIX))
    _ = (groups
         | "Readable groups" >> beam.FlatMap(readable_group)
         | "Copies" >> beam.CombineGlobally(CopiesReport())
         | "Write copies report" >> beam.io.WriteToText(
             f"{lists.folder.rstrip('/')}/{COPIES_FILE}", num_shards=1,
             shard_name_template=""))


def readable_group(group):
    """(content key, [Listed]) -> the group as dataset Images sorted by class and path,
    when its content was read (find_copies leaves unreadable files out)."""
    _, listed = group
    listed = list(listed)
    if listed[0].content is None:
        return
    # label_index is not part of the report: -1, as for an image of no class.
    yield tuple(sorted((Image(i.path, i.label, -1, i.split) for i in listed),
                       key=lambda i: (i.label, i.path)))


class CopiesReport(beam.CombineFn):
    """Groups of byte-identical Images -> copies.format_copy_counts' text.

    The accumulator is (images, distinct, {kind: (count, first groups)}), holding at
    most COPIES_NAMED groups per kind: what the report names.
    """

    def create_accumulator(self):
        return 0, 0, {kind: (0, []) for kind in copies_lib.KINDS}

    def add_input(self, accumulator, group):
        images, distinct, kinds = accumulator
        kinds = dict(kinds)
        if len(group) > 1:
            for kind in copies_lib.kinds_of(group):
                count, named = kinds[kind]
                kinds[kind] = (count + 1, self._first([*named, group]))
        return images + len(group), distinct + 1, kinds

    def merge_accumulators(self, accumulators):
        images, distinct, kinds = self.create_accumulator()
        for more_images, more_distinct, more_kinds in accumulators:
            images, distinct = images + more_images, distinct + more_distinct
            kinds = {kind: (kinds[kind][0] + more_kinds[kind][0],
                            self._first(kinds[kind][1] + more_kinds[kind][1]))
                     for kind in copies_lib.KINDS}
        return images, distinct, kinds

    def extract_output(self, accumulator):
        return copies_lib.format_copy_counts(*accumulator)

    @staticmethod
    def _first(groups):
        return heapq.nsmallest(copies_lib.COPIES_NAMED, groups, key=copies_lib.group_order)
