r"""Fill the bottleneck cache without training.

    python -m bottleneck --image_dir data/ --bottleneck_dir /tmp/bottleneck \
        --tfhub_module https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5

Computes the vector of every image not cached yet for that module, exactly as
retrain.py would, and ends with the counts line
`Bottlenecks: N images, D distinct (...): C computed, R from the cache, K skipped (...)`.
A later retrain.py with the same module and --bottleneck_dir reuses them all.
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.bottleneck()
