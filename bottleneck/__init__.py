"""Bottlenecks: a pretrained module's feature vector for each image, cached on disk.

- `module`: load a TF Hub image feature-vector module and read its input size.
- `cache`: the on-disk store of one vector per image content.
- `compute`: the batched forward pass that fills the cache, with progress.
- `batch_size`: the batch size of a forward pass, measured when not given
  (label_image.py uses it too).
- `make_module`: write random-weight modules for offline tests and benchmarks.

`python -m bottleneck --image_dir ... --bottleneck_dir ... --tfhub_module ...`
fills the cache without training.
"""
