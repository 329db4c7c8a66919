r"""Fill the bottleneck cache without training.

    python -m bottleneck --image_dir data/ --bottleneck_dir /tmp/bottleneck \
        --tfhub_module https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5

Computes the vector of every image not cached yet for that module, exactly as
retrain.py would, and ends with
`bottlenecks: N images, D distinct: C computed, R reused, K skipped`. A later
retrain.py with the same module and --bottleneck_dir reuses them all.
"""

import sys

import command_startup

command_startup.quiet_tensorflow()  # before anything imports TensorFlow

import tensorflow as tf
from absl import flags, logging

import input_pipeline
import pre_input
from bottleneck import cache as cache_lib
from bottleneck import compute
from bottleneck import module as module_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("image_dir", None, "Folder with one subfolder of images per class.")
flags.DEFINE_string("bottleneck_dir", "/tmp/bottleneck", "Where bottleneck vectors are cached.")
flags.DEFINE_string(
    "tfhub_module", module_lib.DEFAULT_MODULE,
    "TF Hub handle or local SavedModel folder of an image feature-vector module.",
)
flags.DEFINE_integer(
    "image_size", module_lib.DEFAULT_IMAGE_SIZE,
    "Input height and width for modules whose signature does not fix them.",
)
flags.DEFINE_integer("batch_size", compute.DEFAULT_BATCH_SIZE, "Images per forward pass.")
flags.DEFINE_integer(
    "max_image_pixels", input_pipeline.DEFAULT_MAX_IMAGE_PIXELS,
    "Images with more pixels (width x height) are skipped instead of decoded.",
)
flags.DEFINE_bool(
    "mixed_precision", False,
    "Compute in bfloat16 (CPUs with bfloat16 instructions) or float16 (GPU); "
    "cached under their own key, used by retrain.py --mixed_precision.",
)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}; every option is a --flag.")
    tf.get_logger().setLevel("ERROR")
    if not FLAGS.image_dir:
        sys.exit("error: --image_dir is required: the folder with one subfolder per class.")
    for name in ("batch_size", "image_size", "max_image_pixels"):
        if FLAGS[name].value <= 0:
            sys.exit(f"error: --{name}={FLAGS[name].value} must be positive.")
    try:
        # The split does not matter here; any valid percentages will do.
        dataset = pre_input.build_dataset(
            FLAGS.image_dir, 0, 0, exclude_dirs=[FLAGS.bottleneck_dir]
        )
        logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
        precision = module_lib.mixed_precision_type() if FLAGS.mixed_precision else "float32"
        compute.compute_bottlenecks(
            [dataset.full_path(image) for image in dataset.images], FLAGS.tfhub_module,
            FLAGS.bottleneck_dir, FLAGS.image_size, FLAGS.batch_size, FLAGS.max_image_pixels,
            precision=precision,
        )
    except (pre_input.DatasetError, module_lib.ModuleError, cache_lib.CacheError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    command_startup.run(main)
