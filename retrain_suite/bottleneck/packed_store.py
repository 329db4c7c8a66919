r"""The packed bottleneck store: many vectors per file, in committed shards.

Layout: `<bottleneck_dir>/<module key>/packed/`, beside the per-file cache's
2-hex folders (cache.py). Each shard is two files:

- `<name>.shard`, `<name>` = `shard-<UTC YYYYmmddTHHMMSS>-<16 random hex>`,
  unique per writer, so two writers never write the same file. Its bytes: a
  32-byte header (b"RSBSHARD", format version uint32 LE, dimension D uint32
  LE, count n uint64 LE, 8 zero bytes), then n records of R = 20 + 4*D + 4
  bytes: the content key (the 20 raw bytes of the SHA-1 of the image file's
  bytes), the vector as D little-endian float32, the CRC-32 (zlib) of the key
  and vector bytes as uint32 LE. The file is exactly 32 + n*R bytes.
- `<name>.manifest.json`, written after the shard is whole at its final name:
  a shard is committed when its manifest exists. A shard without one (a
  killed writer) is never read.

Readers take only what checks out: a manifest of another module, input size,
precision, preprocessing version or dimension is refused (one warning), so is
a shard whose size is not the manifest's; a record whose CRC fails or whose
vector is not finite is left out alone. The images behind what was refused
are recomputed. A key may be in several shards (two writers, a rerun): the
first valid copy serves.

Local disks: each file is written under a temporary name and renamed. Object
stores (`gs://`, where a rename is a copy): straight to the final name, where
an object appears whole when its upload ends; the manifest still comes last.
Listing is one listdir of the folder, and the manifests are read in threads.
"""

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import uuid

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import shard_format as fmt

# The format's sizes, named here too: every reader of the store imports this room.
from retrain_suite.bottleneck.shard_format import HEADER_BYTES, record_bytes, record_dtype
from retrain_suite.images import files as image_files
from retrain_suite.images import preprocess as image_preprocess

FOLDER = "packed"
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is ~500 bytes; anything much larger is not one
SCAN_BYTES = 16 << 20  # bytes of records checked at a time while indexing a shard
READ_THREADS = 16  # manifests and shards read at once: listing and reading an object
                   # store is slow per request, not per byte


@dataclasses.dataclass(frozen=True)
class StoreIdentity:
    """What a store's vectors depend on; a manifest must match all of it."""

    module_key: str  # cache.module_key(handle, height, width, precision)
    handle: str
    height: int
    width: int
    precision: str
    dimension: int


@dataclasses.dataclass(frozen=True)
class _Scanned:
    """One committed shard as indexed: its valid records' keys and record numbers."""

    path: str
    count: int  # records in the shard, valid or not
    keys: np.ndarray  # S20 [k]
    records: np.ndarray  # int64 [k]


class _Vanished(Exception):
    """A listed manifest or shard is gone (a compaction replaced it meanwhile)."""


class PackedStore:
    """The shards of one module (identity) under bottleneck_dir."""

    def __init__(self, bottleneck_dir, identity):
        self.identity = identity
        self.root = fmt.join(bottleneck_dir, identity.module_key, FOLDER)
        self.record_bytes = record_bytes(identity.dimension)

    def manifest_for(self, contents, data, name):
        """The manifest (dict) of a shard named name holding data (its bytes)."""
        ident = self.identity
        return {
            "format": fmt.FORMAT_NAME, "version": fmt.VERSION, "shard": name + fmt.SHARD_SUFFIX,
            "module_key": ident.module_key, "module": ident.handle,
            "input_size": [ident.height, ident.width], "precision": ident.precision,
            "preprocessing_version": image_preprocess.PREPROCESSING_VERSION,
            "dimension": ident.dimension, "dtype": "<f4", "count": len(contents),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def write_shard(self, contents, vectors):
        """Write and commit one shard of contents (hex SHA-1s) and vectors (float32 [n, D]).

        -> the shard's path, committed (manifest written) on return. Raises
        cache.CacheError when the store cannot be written.
        """
        vectors = np.asarray(vectors, np.float32).reshape(len(contents), self.identity.dimension)
        data = fmt.encode_shard(contents, vectors)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        name = f"shard-{stamp}-{uuid.uuid4().hex[:16]}"
        path = fmt.join(self.root, name + fmt.SHARD_SUFFIX)
        manifest = json.dumps(self.manifest_for(contents, data, name), indent=1).encode()
        try:
            tf.io.gfile.makedirs(self.root)
            # The shard first, whole at its final name; then its manifest commits it.
            fmt.write_whole(path, data)
            fmt.write_whole(fmt.join(self.root, name + fmt.MANIFEST_SUFFIX), manifest)
        except (tf.errors.OpError, OSError) as e:
            raise cache_lib.CacheError(
                f"Cannot write bottleneck shard {path}: {errors.one_line(e)}. "
                "Free some space or pass a writable --bottleneck_dir."
            ) from e
        return path

    def list_names(self):
        """The folder's file names (one listing); [] when it does not exist."""
        try:
            return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(self.root))
        except tf.errors.NotFoundError:
            return []

    def index(self, prefer=None, reuse=None):
        """The StoreIndex of every committed, valid record. Never raises for damage.

        prefer(shard path) -> bool: shards for which it is true come first, so
        their copy of a key is the one the index gives (compaction keeps them).
        reuse: an earlier StoreIndex of this store, whose shards are taken as
        it checked them; only shards committed since are read.
        If a listed manifest or shard vanishes meanwhile (a compaction retired
        it after committing its replacement), the folder is listed again, so a
        concurrent compaction never hides an entry.
        """
        scanned = {} if reuse is None else {
            s.path.rsplit("/", 1)[-1][:-len(fmt.SHARD_SUFFIX)] + fmt.MANIFEST_SUFFIX: s
            for s in reuse.scanned}
        seen = set(scanned)
        for _ in range(5):
            manifests = [n for n in self.list_names() if n.endswith(fmt.MANIFEST_SUFFIX)]
            fresh = [n for n in manifests if n not in seen]
            if not fresh:
                break
            seen.update(fresh)
            vanished = False
            with concurrent.futures.ThreadPoolExecutor(min(READ_THREADS, len(fresh))) as pool:
                for name, result in zip(fresh, pool.map(self._scan_quietly, fresh)):
                    if result is _Vanished:
                        vanished = True
                        seen.discard(name)
                    elif result is not None:
                        scanned[name] = result
            if not vanished:
                break
        shards = sorted(scanned.values(), key=lambda s: (prefer is not None and
                                                         not prefer(s.path), s.path))
        return StoreIndex(self, shards)

    def _scan_quietly(self, manifest_name):
        """_scan, with damage logged as one warning: -> _Scanned, None (refused) or _Vanished."""
        try:
            return self._scan(manifest_name)
        except _Vanished:
            return _Vanished
        except (_Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
            logging.warning("Ignoring bottleneck shard %s: %s; its images are recomputed.",
                            fmt.join(self.root, manifest_name), errors.one_line(e))
            return None

    def read_manifest(self, manifest_name):
        """The checked manifest (dict) at manifest_name. Raises _Refused, _Vanished."""
        path = fmt.join(self.root, manifest_name)
        data, problem = image_files.read_regular_file(path, max_bytes=MAX_MANIFEST_BYTES)
        if problem == image_files.MISSING:
            raise _Vanished()
        if problem:
            raise _Refused(f"its manifest {image_files.as_clause(problem)}")
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Refused("its manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise _Refused("its manifest is not a JSON object")
        ident = self.identity
        expected = {
            "format": fmt.FORMAT_NAME, "version": fmt.VERSION, "module_key": ident.module_key,
            "input_size": [ident.height, ident.width], "precision": ident.precision,
            "preprocessing_version": image_preprocess.PREPROCESSING_VERSION,
            "dimension": ident.dimension, "dtype": "<f4",
            "shard": manifest_name[:-len(fmt.MANIFEST_SUFFIX)] + fmt.SHARD_SUFFIX,
        }
        for field, value in expected.items():
            if manifest.get(field) != value or type(manifest.get(field)) is not type(value):
                raise _Refused(f"its manifest's {field} is {_shown(manifest.get(field))}, "
                               f"this run's is {_shown(value)}")
        count = manifest.get("count")
        if type(count) is not int or count < 0 or manifest.get("bytes") != (
                HEADER_BYTES + count * self.record_bytes):
            raise _Refused("its manifest's count and bytes do not agree")
        return manifest

    def _scan(self, manifest_name):
        """Check one committed shard and index its valid records. -> _Scanned."""
        manifest = self.read_manifest(manifest_name)
        path = fmt.join(self.root, manifest["shard"])
        try:
            handle = fmt.open_shard(path)
        except (FileNotFoundError, tf.errors.NotFoundError):
            raise _Vanished() from None
        with handle:
            size = fmt.file_size(handle, path)
            if size != manifest["bytes"]:
                raise _Refused(f"it has {size} bytes, its manifest says {manifest['bytes']}")
            header = handle.read(HEADER_BYTES)
            if header != fmt.header(self.identity.dimension, manifest["count"]):
                raise _Refused("its header does not match its manifest")
            keys, numbers, first = [], [], 0
            per_chunk = max(1, SCAN_BYTES // self.record_bytes)
            dtype = record_dtype(self.identity.dimension)
            while first < manifest["count"]:
                want = min(per_chunk, manifest["count"] - first)
                data = handle.read(want * self.record_bytes)
                if len(data) != want * self.record_bytes:
                    raise _Refused("it is shorter than it was a moment ago")
                records = np.frombuffer(data, dtype)
                good = (fmt.crcs(records) == records["crc"]) & np.isfinite(
                    records["vector"]).all(axis=1)
                bad = len(records) - int(good.sum())
                if bad:
                    logging.warning("Ignoring %d damaged record%s of bottleneck shard %s; "
                                    "their images are recomputed.", bad, "s" * (bad > 1), path)
                keys.append(records["key"][good])
                numbers.append(np.flatnonzero(good) + first)
                first += want
        return _Scanned(path, manifest["count"],
                        np.concatenate(keys) if keys else np.zeros(0, "S20"),
                        np.concatenate(numbers) if numbers else np.zeros(0, np.int64))


class _Refused(Exception):
    """A shard or manifest this run cannot use; the message says why."""


def _shown(value):
    return json.dumps(value)[:80]


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
        self._keys, first = np.unique(keys, return_index=True)
        self._where = where[first]
        self.total_records = len(keys)  # valid records, duplicates included
        # The entries in (shard, record) order, and where each shard's start there: what
        # read() checks the keys it reads against, at 8 bytes per entry.
        self._order = np.lexsort((self._where[:, 1], self._where[:, 0]))
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
        if not asked or not len(self._keys):
            return out
        keys = np.array([bytes.fromhex(contents[i]) for i in asked], "S20")
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[at] == keys
        out[np.array(asked)[found]] = self._where[at[found]]
        return out

    def entries(self):
        """(keys S20 [k], positions int64 [k, 2]) of every distinct key, in key order."""
        return self._keys, self._where

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
                        raise _Refused("it is shorter than when it was indexed")
                    parts.append(np.frombuffer(data, dtype))
        except (_Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
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


class ShardWriter:
    """Collects (content, vector) pairs and writes a shard every entries_per_shard.

    flush() writes what is collected; close() (or leaving a `with` block,
    even on an error) flushes. A killed run loses only the unflushed entries.
    """

    def __init__(self, store, entries_per_shard=None):
        if entries_per_shard is None:  # About 64 MB per shard.
            entries_per_shard = max(1, (64 << 20) // store.record_bytes)
        self.store, self.entries_per_shard = store, int(entries_per_shard)
        self._pending = {}  # content -> float32 [D]
        self.written = []  # the shard paths written
        self.entries = 0  # entries written

    def add(self, content, vector):
        self._pending[content] = np.asarray(vector, np.float32)
        if len(self._pending) >= self.entries_per_shard:
            self.flush()

    def flush(self):
        if not self._pending:
            return
        contents = list(self._pending)
        vectors = np.stack([self._pending[c] for c in contents])
        self.written.append(self.store.write_shard(contents, vectors))
        self.entries += len(contents)
        self._pending = {}

    def close(self):
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.flush()
        return False
