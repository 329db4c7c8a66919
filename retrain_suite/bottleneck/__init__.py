"""Bottlenecks: a pretrained module's feature vector for each image, cached on disk.

- `module`: load a TF Hub image feature-vector module, read its input size, freeze it.
- `inlining`: function calls inlined into a frozen graph.
- `cache`: the on-disk store of one vector per image content.
- `packed_store`, `shard_scan`, `store_index`, `shard_format`: the packed store,
  many vectors per file in committed shards (writing and checking; every
  record checked in pieces on threads; reading by content key; the bytes);
  `content_keys`: content keys in numpy (decoded, sorted, found);
  `packed_compaction`: rewriting many small shards into few.
- `stores`: where a computation finds vectors (both stores) and puts new ones.
- `batch_size`: the batch size of the forward pass, measured when not given.
- `compute`: the batched forward pass that fills the cache; `progress`: its log lines.
- `make_module`: write random-weight modules for offline tests and benchmarks.

The command `python -m bottleneck` (retrain_suite.cli.bottleneck) fills the
cache without training.
"""
