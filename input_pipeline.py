"""The image pipelines and the one image preprocessing function, for a checkout.

The code lives in the package `retrain_suite.images` (installed with the
suite), one room per role: `files` (reading image files and their headers),
`preprocess` (`decode_and_resize` and PREPROCESSING_VERSION), `distortions`
and `pipelines` (image sources and tf.data pipelines); the batches of cached
vectors the final layer trains on are in `retrain_suite.vector_batches`. This
file keeps `import input_pipeline` working from a checkout with the names it
always offered. `decode_and_resize` is the single place where an encoded image
becomes the float32 `[H, W, 3]` tensor in [0, 1] that the module sees, in
training and in label_image.py alike.
"""

from retrain_suite.images.distortions import Distortions, decoded_distorted, distort, rotate  # noqa: F401
from retrain_suite.images.files import (  # noqa: F401
    DEFAULT_MAX_IMAGE_PIXELS,
    MISSING,
    ImageFile,
    as_clause,
    decodable_bytes,
    image_size,
    inspect_image_bytes,
    inspect_image_file,
    read_file_start,
    read_regular_file,
    special_file_kind,
    why_bytes_undecodable,
    why_undecodable,
)
from retrain_suite.images.pipelines import (  # noqa: F401
    PARALLEL_DECODES,
    TFRECORD_FEATURES,
    ImageBatchSpec,
    ImageFiles,
    TFRecordImages,
    distorted_batches,
    each_batch,
    fine_tuning_batches,
    image_batches,
)
from retrain_suite.images.preprocess import (  # noqa: F401
    JPEG_DECODE_RATIOS,
    PREPROCESSING_VERSION,
    decode_and_resize,
    jpeg_decode_ratio,
    orient,
)
from retrain_suite.vector_batches import AUTOTUNE, class_uniform_batches, training_batches  # noqa: F401
