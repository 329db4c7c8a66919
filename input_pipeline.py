"""Every tf.data pipeline of the suite, and the one image preprocessing function.

The code lives in `retrain_suite.input_pipeline` (installed with the suite);
this file keeps `import input_pipeline` working from a checkout. See that
module's docstring: `decode_and_resize` is the single place where an encoded
image becomes the float32 `[H, W, 3]` tensor in [0, 1] that the module sees,
in training and in label_image.py alike.
"""

from retrain_suite.input_pipeline import *  # noqa: F401,F403
from retrain_suite.input_pipeline import PREPROCESSING_VERSION, decode_and_resize  # noqa: F401
