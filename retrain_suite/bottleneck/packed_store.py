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
Listing is one listdir of the folder; the manifests are read, and the shards'
records checked in pieces, on threads (shard_scan).

This room writes and checks shards (PackedStore, ShardWriter); reading by
content key is store_index's (StoreIndex, StoreVectors, named here too), the
bytes of a shard shard_format's.
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
from retrain_suite.bottleneck import shard_scan

# The format's sizes, named here too: every reader of the store imports this room.
from retrain_suite.bottleneck.shard_format import HEADER_BYTES, record_bytes, record_dtype  # noqa: F401
from retrain_suite.bottleneck.store_index import StoreIndex, StoreVectors  # noqa: F401 (the API)
from retrain_suite.images import files as image_files
from retrain_suite.images import preprocess as image_preprocess

FOLDER = "packed"
MAX_MANIFEST_BYTES = 64 * 1024  # a manifest is ~500 bytes; anything much larger is not one


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


class _Vanished(cache_lib.CacheError):
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
        except tf.errors.NotFoundError:  # no store yet (or a file in its place: refused on writing)
            return []
        except tf.errors.OpError as e:
            raise cache_lib.CacheError(f"Cannot list the bottleneck shards in {self.root}: "
                                       f"{errors.one_line(e)}.") from e

    def load(self, contents, out):
        """index(), and in the same pass over the shards, out[i] (float32 [N, D]) set to
        the vector of contents[i] (hex SHA-1, or None) wherever the store holds it: every
        shard is read once. -> the StoreIndex; its positions(contents) say which rows
        were set."""
        gather = shard_scan.Gather(contents, out)
        index = self.index(gather=gather)
        gather.fill_copies(index.positions_of_keys(gather.keys)[:, 0] >= 0)
        return index

    def index(self, prefer=None, reuse=None, gather=None):
        """The StoreIndex of every committed, valid record. Never raises for damage.

        prefer(shard path, its record count) -> bool: shards for which it is true come first, so
        their copy of a key is the one the index gives (compaction keeps them).
        reuse: an earlier StoreIndex of this store, whose shards are taken as
        it checked them; only shards committed since are read.
        gather: a shard_scan.Gather, handed every valid record read (load()).
        If a listed manifest or shard vanishes meanwhile (a compaction retired
        it after committing its replacement), the folder is listed again, so a
        concurrent compaction never hides an entry.
        """
        scanned = {} if reuse is None else {
            s.path.rsplit("/", 1)[-1][:-len(fmt.SHARD_SUFFIX)] + fmt.MANIFEST_SUFFIX: s
            for s in reuse.scanned}
        seen, vanished = None, set()
        for _ in range(5):
            manifests = {n for n in self.list_names() if n.endswith(fmt.MANIFEST_SUFFIX)}
            if seen is None:  # Reused shards that are still committed.
                scanned = {n: s for n, s in scanned.items() if n in manifests}
                seen = set(scanned)
            fresh = sorted(manifests - seen)
            seen.update(fresh)
            vanished = set()
            for name, result in self._scan_all(fresh, gather):
                if result is _Vanished:
                    vanished.add(name)
                elif result is not None:
                    scanned[name] = result
            if not vanished:
                break
            seen -= vanished
        for name in sorted(vanished):  # Still gone after relisting: not a compaction's doing.
            logging.warning("Ignoring bottleneck shard %s: its shard file is missing; its "
                            "images are recomputed.", fmt.join(self.root, name))
        shards = sorted(scanned.values(), key=lambda s: (prefer is not None and
                                                         not prefer(s.path, s.count), s.path))
        return StoreIndex(self, shards)

    def _scan_all(self, names, gather):
        """Check the committed shards of the manifests names: each opened (manifest, size,
        header), then its records checked in pieces on threads (shard_scan).
        -> [(name, _Scanned, None (refused, one warning) or _Vanished)]."""
        if not names:
            return []
        threads = shard_scan.threads_for(self.root)
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            opened = list(pool.map(self._open_quietly, names))
            work = [piece for result in opened if isinstance(result, list) for piece in result]
            checked = dict(zip(work, pool.map(lambda piece: self._check_quietly(piece, gather),
                                              work)))
        return [(name, self._combine(name, pieces, [checked[p] for p in pieces])
                 if isinstance(pieces, list) else pieces)
                for name, pieces in zip(names, opened)]

    def _open_quietly(self, manifest_name):
        """Open the shard of the manifest manifest_name and check its size and header.
        -> [shard_scan.Piece] of its records, None (refused, one warning) or _Vanished."""
        try:
            manifest = self.read_manifest(manifest_name)
            path = fmt.join(self.root, manifest["shard"])
            try:
                handle = fmt.open_shard(path)
            except (FileNotFoundError, tf.errors.NotFoundError):
                return _Vanished
            with handle:
                size = fmt.file_size(handle, path)
                if size != manifest["bytes"]:
                    raise fmt.Refused(f"it has {size} bytes, its manifest says "
                                      f"{manifest['bytes']}")
                if handle.read(HEADER_BYTES) != fmt.header(self.identity.dimension,
                                                           manifest["count"]):
                    raise fmt.Refused("its header does not match its manifest")
        except _Vanished:
            return _Vanished
        except (fmt.Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
            self._warn_refused(manifest_name, e)
            return None
        return shard_scan.pieces(path, size, manifest["count"], self.record_bytes)

    def _check_quietly(self, piece, gather):
        """shard_scan.check_piece: -> shard_scan.Checked, or the error that stopped it."""
        try:
            return shard_scan.check_piece(piece, self.identity.dimension, gather)
        except (fmt.Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
            return e

    def _combine(self, manifest_name, pieces, results):
        """One shard's _Scanned from its pieces and their results (in record order); None
        if a piece was refused (one warning), _Vanished if the file went away meanwhile."""
        failed = [r for r in results if not isinstance(r, shard_scan.Checked)]
        if any(isinstance(e, (FileNotFoundError, tf.errors.NotFoundError)) for e in failed):
            return _Vanished
        if failed:
            self._warn_refused(manifest_name, failed[0])
            return None
        path = fmt.join(self.root, manifest_name[:-len(fmt.MANIFEST_SUFFIX)] + fmt.SHARD_SUFFIX)
        damaged = sum(r.damaged for r in results)
        if damaged:
            logging.warning("Ignoring %d damaged record%s of bottleneck shard %s; their "
                            "images are recomputed.", damaged, "s" * (damaged > 1), path)
        return _Scanned(path, sum(p.count for p in pieces),
                        np.concatenate([r.keys for r in results] or [np.zeros(0, "S20")]),
                        np.concatenate([r.records for r in results] or [np.zeros(0, np.int64)]))

    def _warn_refused(self, manifest_name, error):
        logging.warning("Ignoring bottleneck shard %s: %s; its images are recomputed.",
                        fmt.join(self.root, manifest_name), errors.one_line(error))

    def read_manifest(self, manifest_name):
        """The checked manifest (dict) at manifest_name. Raises fmt.Refused, _Vanished."""
        path = fmt.join(self.root, manifest_name)
        data, problem = image_files.read_regular_file(path, max_bytes=MAX_MANIFEST_BYTES)
        if problem == image_files.MISSING:
            raise _Vanished()
        if problem:
            raise fmt.Refused(f"its manifest {image_files.as_clause(problem)}")
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise fmt.Refused("its manifest is not JSON") from None
        if not isinstance(manifest, dict):
            raise fmt.Refused("its manifest is not a JSON object")
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
                raise fmt.Refused(f"its manifest's {field} is {_shown(manifest.get(field))}, "
                               f"this run's is {_shown(value)}")
        count = manifest.get("count")
        if type(count) is not int or count < 0 or manifest.get("bytes") != (
                HEADER_BYTES + count * self.record_bytes):
            raise fmt.Refused("its manifest's count and bytes do not agree")
        return manifest


def _shown(value):
    return json.dumps(value)[:80]


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
