r"""Compaction of a packed store: many small shards rewritten into few.

Incremental runs add a shard per run (or per ShardWriter flush), so a store
grows many small files, and an object store lists and opens each one slowly.
compact() rewrites the small shards' entries (each distinct key once, the
first valid copy) into full ones, then retires the old ones, in an order that
never loses an entry for a reader running meanwhile:

1. the new shards are written and committed (manifest last);
2. only then are the old manifests deleted (a reader may see an entry twice
   in between, never zero times: packed_store's index() lists again when a
   manifest it listed vanishes);
3. then the old shards.

Shards already full are kept as they are; their keys are not copied again.
Left-overs of killed writers (a shard without a manifest, a temporary file,
a manifest whose shard is gone) are deleted once older than an hour, so a
writer still at work is never robbed of its shard. Shards refused for another
module or dimension are left alone: they are not this module's to judge.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import packed_store
from retrain_suite.bottleneck import shard_format as fmt

ORPHAN_SECONDS = 3600  # a writer takes less than this between its shard and its manifest


@dataclasses.dataclass(frozen=True)
class Compaction:
    """What one compact() did."""

    shards_before: int  # committed, valid shards
    shards_after: int
    rewritten: int  # small shards whose entries went into new ones
    entries: int  # distinct entries copied
    dropped: int  # copies of a key left out (duplicates), and damaged records
    orphans: int  # left-overs of killed writers deleted

    def line(self):
        return (f"Compacted the packed store: {self.shards_before} shards -> "
                f"{self.shards_after} ({self.rewritten} rewritten into new ones, "
                f"{self.entries} entries copied, {self.dropped} duplicate or damaged records "
                f"dropped); {self.orphans} left-overs of killed writers deleted.")


def compact(store, entries_per_shard=None, orphan_seconds=ORPHAN_SECONDS):
    """Rewrite store's (packed_store.PackedStore) small shards into shards of
    entries_per_shard entries (None: ShardWriter's default). -> Compaction.

    Raises cache.CacheError when the store cannot be written or a shard
    cannot be read; what was committed before stays valid.
    """
    target = packed_store.ShardWriter(store, entries_per_shard).entries_per_shard
    # Full shards first, so a key they hold is never copied out of a small one.
    index = store.index(prefer=lambda path, count: count >= target)
    counts = dict(zip(index.shards, index.counts))
    small = {number for number, count in enumerate(index.counts) if count < target}
    keys, positions = index.entries()
    chosen = np.isin(positions[:, 0], sorted(small))  # each distinct key of a small shard
    in_small = sum(index.counts[number] for number in small)
    orphans = _delete_orphans(store, orphan_seconds)
    if len(small) < 2 and int(chosen.sum()) == in_small:  # nothing to merge or drop
        return Compaction(len(counts), len(counts), 0, 0, 0, orphans)
    writer = packed_store.ShardWriter(store, target)
    with writer:
        copied = np.flatnonzero(chosen)
        copied = copied[np.argsort(positions[copied, 0], kind="stable")]
        boundaries = np.flatnonzero(np.diff(positions[copied, 0])) + 1
        for rows in np.split(copied, boundaries) if len(copied) else []:
            vectors = index.read(positions[rows])  # one old shard at a time in memory
            for key, vector in zip(keys[rows], vectors):
                writer.add(fmt.key_hex(key), vector)
    # The new shards are committed: retire the old ones, manifests first.
    retired = [index.shards[number] for number in sorted(small)]
    for suffix in (fmt.MANIFEST_SUFFIX, fmt.SHARD_SUFFIX):
        for path in retired:
            _delete(path[:-len(fmt.SHARD_SUFFIX)] + suffix)
    dropped = in_small - int(chosen.sum())
    result = Compaction(len(counts), len(counts) - len(small) + len(writer.written),
                        len(small), writer.entries, dropped, orphans)
    logging.info("%s", result.line())
    return result


def _delete_orphans(store, orphan_seconds):
    """Delete killed writers' left-overs older than orphan_seconds. -> how many."""
    names = store.list_names()
    present = set(names)
    orphans = []
    for name in names:
        if ".tmp-" in name:
            orphans.append(name)
        elif name.endswith(fmt.SHARD_SUFFIX):
            if name[:-len(fmt.SHARD_SUFFIX)] + fmt.MANIFEST_SUFFIX not in present:
                orphans.append(name)
        elif name.endswith(fmt.MANIFEST_SUFFIX):
            if name[:-len(fmt.MANIFEST_SUFFIX)] + fmt.SHARD_SUFFIX not in present:
                orphans.append(name)
    deleted = 0
    now_ns = time.time_ns()
    for name in orphans:
        path = fmt.join(store.root, name)
        try:
            info = tf.io.gfile.stat(path)
        except tf.errors.NotFoundError:
            continue  # committed or removed meanwhile
        if info.is_directory or now_ns - info.mtime_nsec < orphan_seconds * 1e9:
            continue
        _delete(path)
        deleted += 1
    return deleted


def _delete(path):
    try:
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass  # another compaction retired it already
    except tf.errors.OpError as e:
        raise cache_lib.CacheError(
            f"Cannot delete {path} while compacting: {errors.one_line(e)}. The store is "
            "still valid (its entries are committed in the new shards); fix the permission "
            "and compact again."
        ) from e
