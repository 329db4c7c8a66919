"""`python -m bottleneck` fills the bottleneck cache without training (see __main__.py).

The module, the cache and the batched computation live in
`retrain_suite.bottleneck`. This folder is a command of the checkout only and is
not installed: PyPI's `bottleneck` (the NumPy accelerator pandas uses) owns that
import name in an environment, and installing ours would overwrite its files.
"""
