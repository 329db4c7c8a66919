r"""Reading a packed store by content key: StoreIndex and StoreVectors.

A StoreIndex (built by packed_store.PackedStore.index) maps each content key
to the (shard, record) of its first valid copy, holding keys and positions in
numpy (about 36 bytes per entry), never the vectors; its read() fetches
records by offset. StoreVectors is the (n, D) array-like over such positions
that a run holds instead of its vectors when they do not fit in memory.
"""

import numpy as np
import tensorflow as tf

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import content_keys
from retrain_suite.bottleneck import shard_format as fmt
from retrain_suite.bottleneck.shard_format import HEADER_BYTES, record_dtype


class StoreIndex:
    """Content key -> (shard number, record number) of the committed, valid records.

    shards: tuple of shard paths, in the order their copies are preferred.
    Keys are held sorted in numpy (28 bytes per entry), never the vectors.
    """

    def __init__(self, store, scanned):
        self.store = store
        self.scanned = tuple(scanned)  # what index(reuse=) takes over
        self.shards = tuple(s.path for s in scanned)
        self.counts = tuple(s.count for s in scanned)  # records per shard, valid or not
        keys = np.concatenate([s.keys for s in scanned]) if scanned else np.zeros(0, "S20")
        where = np.zeros([len(keys), 2], np.int64)
        if scanned:
            where[:, 0] = np.repeat(np.arange(len(scanned)), [len(s.keys) for s in scanned])
            where[:, 1] = np.concatenate([s.records for s in scanned])
        # First occurrences, in shard order: the preferred copy of each key.
        self._keys, first, _ = content_keys.unique(keys)
        self._where = where[first]
        self.total_records = len(keys)  # valid records, duplicates included
        # The entries in (shard, record) order, and where each shard's start there: what
        # read() checks the keys it reads against, at 8 bytes per entry.
        # Keys were concatenated in (shard, record) order: first's order is that order.
        self._order = np.argsort(first)  # (each index once: no tie to keep in order)
        self._shard_starts = np.searchsorted(self._where[self._order, 0],
                                             np.arange(len(self.shards) + 1))

    def __len__(self):
        return len(self._keys)

    def position(self, content):
        """(shard number, record number) of content (hex SHA-1), or None."""
        key = np.array([bytes.fromhex(content)], "S20")
        i = int(np.searchsorted(self._keys, key)[0])
        if i < len(self._keys) and self._keys[i] == key[0]:
            return int(self._where[i, 0]), int(self._where[i, 1])
        return None

    def positions(self, contents):
        """int64 [n, 2] positions of contents (hex SHA-1 or None); (-1, -1) where absent."""
        out = np.full([len(contents), 2], -1, np.int64)
        asked = [i for i, c in enumerate(contents) if c is not None]
        if asked:
            out[asked] = self.positions_of_keys(content_keys.from_hex([contents[i] for i in asked]))
        return out

    def positions_of_keys(self, keys):
        """int64 [n, 2] positions of keys (S20 [n], raw SHA-1s); (-1, -1) where absent."""
        out = np.full([len(keys), 2], -1, np.int64)
        at = content_keys.find(self._keys, keys)
        out[at >= 0] = self._where[at[at >= 0]]
        return out

    def entries(self):
        """(keys S20 [k], positions int64 [k, 2]) of every distinct key, in key order. A key
        taken out of the array loses its trailing zero bytes: contents() gives them as hex."""
        return self._keys, self._where

    def contents(self):
        """The hex SHA-1 of every distinct key, in key order (entries()'s): [str], each
        40 digits, trailing zero bytes included (shard_format.key_hex)."""
        return [fmt.key_hex(key) for key in self._keys]

    def read(self, positions):
        """float32 [n, D]: the vectors at positions ((shard, record) pairs); zeros for
        (-1, -1). Records are grouped by shard and read by offset, consecutive ones
        in one read, never the whole store. Raises cache.CacheError if a shard
        changed or vanished since it was indexed (a compaction ran meanwhile)."""
        positions = np.asarray(positions, np.int64).reshape(-1, 2)
        dimension = self.store.identity.dimension
        out = np.zeros([len(positions), dimension], np.float32)
        for shard in np.unique(positions[:, 0]):
            if shard < 0:
                continue
            rows = np.flatnonzero(positions[:, 0] == shard)
            out[rows] = self._read_records(int(shard), positions[rows, 1])
        return out

    def _read_records(self, shard, numbers):
        """float32 [len(numbers), D]: the records numbers (in that order) of one shard."""
        path, size = self.shards[shard], self.store.record_bytes
        dtype = record_dtype(self.store.identity.dimension)
        wanted = np.unique(numbers)
        runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1)
        parts = []
        try:
            with fmt.open_shard(path) as handle:
                for run in runs:
                    handle.seek(HEADER_BYTES + int(run[0]) * size)
                    data = handle.read(len(run) * size)
                    if len(data) != len(run) * size:
                        raise fmt.Refused("it is shorter than when it was indexed")
                    parts.append(np.frombuffer(data, dtype))
        except (fmt.Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
            raise cache_lib.CacheError(
                f"Cannot read bottleneck shard {path}: {errors.one_line(e)} (was the store "
                "compacted or changed during the run?). Run again."
            ) from e
        records = np.concatenate(parts)
        expected = self._keys_of(shard, wanted)
        if not (np.array_equal(records["key"], expected)
                and np.isfinite(records["vector"]).all()):
            raise cache_lib.CacheError(f"Bottleneck shard {path} changed since it was indexed. "
                                       "Run again.")
        return records["vector"][np.searchsorted(wanted, numbers)].astype(np.float32)

    def _keys_of(self, shard, numbers):
        """The indexed keys of the records numbers (sorted) of shard: S20 [n]."""
        mine = self._order[self._shard_starts[shard]:self._shard_starts[shard + 1]]
        at = np.searchsorted(self._where[mine, 1], numbers)
        return self._keys[mine[np.minimum(at, len(mine) - 1)]]


class StoreVectors:
    """An array-like (n, D) float32 over a store: row i is the record at positions[i].

    __getitem__ reads the rows asked for from the shards; nothing is held in
    memory but the positions. (-1, -1) rows are zeros (images skipped).
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, index, positions):
        self.index = index
        self.positions = np.asarray(positions, np.int64).reshape(-1, 2)
        self.shape = (len(self.positions), index.store.identity.dimension)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, tuple):  # vectors[rows, columns]
            return np.asarray(self[rows[0]])[(Ellipsis,) + rows[1:]]
        if isinstance(rows, (int, np.integer)):
            return self.index.read(self.positions[[int(rows)]])[0]
        return self.index.read(self.positions[rows])

    def take(self, rows):
        """The StoreVectors of rows (indices, a slice or a mask), nothing read."""
        return StoreVectors(self.index, self.positions[rows])

    def __array__(self, dtype=None, copy=None):
        values = self.index.read(self.positions)
        return values if dtype is None else values.astype(dtype)
