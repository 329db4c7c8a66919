"""pre_input.py's work beyond the scan: read every image once, write the split lists.

retrain_suite.cli.pre_input checks and splits a dataset ahead of training:
the scan and split are retrain_suite.dataset's; this room checks that every
image decodes (find_bad_images), hashes the files for the copies report
(content_hashes), and writes labels.txt and one list per set (write_lists)
into an --output_dir apart from the images (check_output_dir).
"""

import os

import tensorflow as tf

from retrain_suite import atomic_files, output_paths
from retrain_suite.dataset.split import SPLITS
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines


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
