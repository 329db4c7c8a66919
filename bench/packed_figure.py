"""Row 11: the packed store's load rate against the per-file cache, entries/s.

N synthetic 2048-d vectors under N random content keys are written both ways
(one .f32 entry per key in the per-file cache; shards through ShardWriter,
about 64 MB each). Then, in --rounds rounds, each store is loaded one after the
other, the way compute_bottlenecks loads it: the per-file cache one lookup per
key, the packed store one StoreIndex (listing, manifests, every record's CRC)
built in the same pass as every key's vector is read (PackedStore.load). Each figure is its best round. The
file-system cache is warm for both (they were just written), so the figure
compares the stores' own costs: opening one file per entry against reading
few large files.
"""

import hashlib
import time

import numpy as np
from absl import logging

from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import packed_store

DIMENSION = 2048  # Inception V3's


def synthetic_entries(count, seed=0):
    """(hex SHA-1 keys [count], float32 [count, DIMENSION] vectors)."""
    rng = np.random.RandomState(seed)
    contents = [hashlib.sha1(f"entry {seed} {i}".encode()).hexdigest() for i in range(count)]
    return contents, rng.standard_normal([count, DIMENSION]).astype(np.float32)


def write_both(folder, contents, vectors):
    """-> (per-file cache, packed store), both holding every entry."""
    key = "bench_packed_load"
    cache = cache_lib.BottleneckCache(folder, key)
    for content, vector in zip(contents, vectors):
        cache.store(content, vector)
    identity = packed_store.StoreIdentity(key, "synthetic", 299, 299, "float32", DIMENSION)
    store = packed_store.PackedStore(folder, identity)
    with packed_store.ShardWriter(store) as writer:
        for content, vector in zip(contents, vectors):
            writer.add(content, vector)
    return cache, store


def load_files(cache, contents):
    """The per-file cache's load: float32 [n, D]."""
    return np.stack([cache.lookup(c, DIMENSION) for c in contents])


def load_packed(store, contents):
    """The packed store's load as compute_bottlenecks does it: the index built and the
    vectors read in one pass. float32 [n, D]."""
    vectors = np.zeros([len(contents), DIMENSION], np.float32)
    store.load(contents, vectors)
    return vectors


def measure(bench, count, rounds):
    """Add row 11 to bench (figures.Bench): count entries, best of rounds."""
    contents, vectors = synthetic_entries(count)
    logging.info("Writing %d synthetic %d-d entries both ways...", count, DIMENSION)
    cache, store = write_both(bench.folder("packed_load"), contents, vectors)
    shards = len(store.index().shards)
    files_rates, packed_rates = [], []
    for number in range(rounds):
        for load, where, rates in ((load_files, cache, files_rates),
                                   (load_packed, store, packed_rates)):
            start = time.monotonic()
            loaded = load(where, contents)
            rates.append(count / (time.monotonic() - start))
            np.testing.assert_array_equal(loaded, vectors)
        logging.info("Round %d of %d: per-file %.0f entries/s, packed %.0f entries/s",
                     number + 1, rounds, files_rates[-1], packed_rates[-1])
    ours, files = max(packed_rates), max(files_rates)
    bench.add(
        f"11. packed store load vs the per-file cache ({count} {DIMENSION}-d entries, "
        f"{shards} shards; best of {rounds} rounds, file-system cache warm)",
        f"{ours:,.0f} entries/s",
        f"{files:,.0f} entries/s (per-file cache)",
        ours / files,
        ">= 5x",
        ours / files >= 5,
    )
