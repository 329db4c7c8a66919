"""Bottlenecks: a pretrained module's feature vector for each image, cached on disk.

- `module`: load a TF Hub image feature-vector module, read its input size, freeze it.
- `inlining`: function calls inlined into a frozen graph.
- `cache`: the on-disk store of one vector per image content.
- `batch_size`: the batch size of the forward pass, measured when not given.
- `compute`: the batched forward pass that fills the cache, with progress.
- `make_module`: write random-weight modules for offline tests and benchmarks.

The command `python -m bottleneck` (retrain_suite.cli.bottleneck) fills the
cache without training.
"""
