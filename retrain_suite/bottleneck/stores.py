r"""Where compute_bottlenecks finds cached vectors and puts computed ones.

Two stores of one module (one module key) live side by side under
`<bottleneck_dir>/<module key>/`: the per-file cache (cache.py, one entry per
image content) and the packed store (packed_store.py, committed shards). Every
run reads both, the packed store first (one StoreIndex per run); computed
vectors go where StoreOptions.kind says. With hold_vectors=False the run's
vectors are not held in memory: every one of them ends up in shards (those
found only in the per-file cache are packed into one first), and the result is
a packed_store.StoreVectors reading them on demand.
"""

import dataclasses
import time
from typing import Optional

import numpy as np
from absl import logging

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import packed_store

KINDS = ("files", "packed")  # --bottleneck_store's values

# The longest computed vectors wait to be committed in a shard: a run killed without
# warning (SIGKILL, power) loses at most this much work. At Inception V3's 17 images/s
# on 2 cores a full 64 MB shard would take 8 minutes; the small shards this makes
# are what compaction is for.
COMMIT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How one compute_bottlenecks call stores vectors."""

    kind: str = "files"  # where computed vectors go: "files" (one per image) or "packed"
    # False: Bottlenecks.vectors is a packed_store.StoreVectors over the shards, not an
    # array in memory (whatever kind is, every vector is then put in shards too).
    hold_vectors: bool = True
    entries_per_shard: Optional[int] = None  # None: about 64 MB per shard

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"store kind {self.kind!r} is not one of {', '.join(KINDS)}")


class Stores:
    """The two stores of one module, for one compute_bottlenecks call.

    Use as `with Stores(...) as stores:`: leaving the block (even on an
    error) commits the vectors collected for shards, so a rerun computes
    only what is missing.
    """

    def __init__(self, bottleneck_dir, identity, options):
        self.options, self.dimension = options, identity.dimension
        self.cache = cache_lib.BottleneckCache(bottleneck_dir, identity.module_key)
        self.packed = packed_store.PackedStore(bottleneck_dir, identity)
        self.index = None  # built by lookup()
        wants_shards = options.kind == "packed" or not options.hold_vectors
        self.writer = (packed_store.ShardWriter(self.packed, options.entries_per_shard)
                       if wants_shards else None)
        self._committed_at = time.monotonic()

    def describe(self):
        """Where the vectors are, for the log."""
        return self.cache.root

    def lookup(self, contents, vectors):
        """Find the vectors of contents (hex SHA-1 per row, or None). -> set of rows found.

        vectors: float32 [N, D] whose found rows are filled, or None (not held:
        only whether each is found; those found only in the per-file cache are
        added to the shards).
        """
        if vectors is None:
            self.index = self.packed.index()
        else:  # the vectors are read in the same pass as the index is built
            self.index = self.packed.load(contents, vectors)
        found = set(np.flatnonzero(self.index.positions(contents)[:, 0] >= 0).tolist())
        for i, content in enumerate(contents):
            if content is None or i in found:
                continue
            vector = self.cache.lookup(content, self.dimension)
            if vector is None:
                continue
            found.add(i)
            if vectors is not None:
                vectors[i] = vector
            if not self.options.hold_vectors:
                self.writer.add(content, vector)
        return found

    def put(self, content, vector):
        """Store one computed vector (float32 [D]) of content (hex SHA-1)."""
        if self.options.kind == "files":
            self.cache.store(content, vector)
        if self.writer is not None:
            self.writer.add(content, vector)
            if time.monotonic() - self._committed_at >= COMMIT_SECONDS:
                self.writer.flush()
                self._committed_at = time.monotonic()

    def vectors_of(self, contents):
        """packed_store.StoreVectors, row i the vector of contents[i] (zeros where None),
        once every vector is in the shards (after the block ends)."""
        self.index = self.packed.index(reuse=self.index)
        positions = self.index.positions(contents)
        lost = [c for c, p in zip(contents, positions) if c is not None and p[0] < 0]
        if lost:  # a shard damaged or removed between writing and indexing it
            raise cache_lib.CacheError(
                f"{len(lost)} bottleneck vectors written to {self.packed.root} cannot be read "
                "back (see the warnings above). Run again.")
        return packed_store.StoreVectors(self.index, positions)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if self.writer is None:
            return False
        if error is None:
            self.writer.flush()
            return False
        try:  # Keep what was computed before the error; the error itself goes on.
            self.writer.flush()
        except errors.SuiteError as e:
            logging.warning("Could not write the last bottleneck shard: %s", errors.one_line(e))
        return False
