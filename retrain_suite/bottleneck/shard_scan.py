r"""Checking committed shards record by record, and gathering the vectors a load wants.

PackedStore.index() opens each committed shard (manifest, size and header
checked), then hands its records here in pieces (Piece, about 8 MB each),
checked on as many threads as the process may use CPUs (an object store's
pieces on more: there a read waits on the network, not on a CPU). A piece is
read in chunks of about 1 MB into one buffer, viewed as records with no copy,
and every pass over a chunk (the CRCs, the finiteness check, the copy into
the caller's array) finds it still in the core's cache. zlib.crc32 releases
the GIL for each record, so the CRCs of two pieces run at once.

Gather is where PackedStore.load's vectors go as their records pass.
"""

import dataclasses
import os
import threading

import numpy as np

from retrain_suite.bottleneck import content_keys
from retrain_suite.bottleneck import shard_format as fmt
from retrain_suite.bottleneck.shard_format import HEADER_BYTES

PIECE_BYTES = 8 << 20  # records one thread checks in a row (a 64 MB shard: 8 pieces)
CHUNK_BYTES = 1 << 20  # records read and checked at once: well inside a core's L2 cache
REMOTE_THREADS = 16  # an object store is slow per request, not per byte


def threads_for(path):
    """How many threads check the pieces of the shards under path at once."""
    if "://" in path:
        return REMOTE_THREADS
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the CPUs this process may use
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Piece:
    """Records first .. first + count - 1 of the committed shard at path."""

    path: str
    size: int  # the shard's bytes, as its manifest and its header check said
    first: int
    count: int


def pieces(path, size, count, record_size):
    """[Piece]: the count records of the shard at path (size bytes) in pieces."""
    per_piece = max(1, PIECE_BYTES // record_size)
    return [Piece(path, size, first, min(per_piece, count - first))
            for first in range(0, count, per_piece)]


@dataclasses.dataclass(frozen=True)
class Checked:
    """A piece's valid records (CRC right, every value finite)."""

    keys: np.ndarray  # S20 [k]
    records: np.ndarray  # int64 [k]: their record numbers in the shard
    damaged: int  # records left out


def check_piece(piece, dimension, gather=None):
    """Read and check the records of piece (vectors of dimension values), handing them to
    gather (a Gather) if given. -> Checked.

    Raises fmt.Refused if the file changed size or ends early (it shrank while read),
    fmt.NotRegular, OSError (FileNotFoundError: it is gone), tf.errors.OpError.
    """
    size = fmt.record_bytes(dimension)
    remote = "://" in piece.path
    # gfile has no readinto: an object store's piece is one request.
    per_chunk = piece.count if remote else max(1, CHUNK_BYTES // size)
    dtype = fmt.record_dtype(dimension)
    keys, numbers, damaged = [], [], 0
    with fmt.open_shard(piece.path) as handle:
        if not remote and os.fstat(handle.fileno()).st_size != piece.size:
            raise fmt.Refused("it changed size while it was read")
        handle.seek(HEADER_BYTES + piece.first * size)
        # Read into, chunk after chunk (gfile reads return new bytes: no buffer there),
        # its records' CRC spans made once.
        buffer = np.empty(min(per_chunk, piece.count) * size, np.uint8) if not remote else None
        spans = fmt.checked_spans(buffer, size) if not remote else None
        end = piece.first + piece.count
        for first in range(piece.first, end, per_chunk):
            want = min(per_chunk, end - first)
            data = fmt.read_exactly(handle, buffer, want * size)
            records = np.frombuffer(data, dtype)
            good = fmt.span_crcs(spans[:want] if spans else fmt.checked_spans(data, size))
            good = good == records["crc"]
            good &= fmt.finite_rows(records["vector"])
            if not good.all():
                damaged += len(records) - int(good.sum())
                keys.append(records["key"][good])
                numbers.append(np.flatnonzero(good) + first)
            else:
                keys.append(records["key"].copy())  # the buffer is read into again
                numbers.append(np.arange(first, first + want))
            if gather is not None:
                gather.take(records, good)
    return Checked(np.concatenate(keys) if keys else np.zeros(0, "S20"),
                   np.concatenate(numbers) if numbers else np.zeros(0, np.int64), damaged)


class Gather:
    """Where PackedStore.load puts the vectors it meets while checking: out[row] for the
    first row of each wanted key (other rows of the same key are filled at the end).

    Pieces are checked on several threads at once, and a key may be in several
    shards: each key's row is written from the first valid record of it that a
    thread claims, never from two at once (no row mixes two copies).
    """

    def __init__(self, contents, out):
        """contents: hex SHA-1 or None per row of out (float32 [N, D])."""
        contents = list(contents)
        if None in contents:
            self.rows = np.array([i for i, c in enumerate(contents) if c is not None], np.int64)
            keys = content_keys.from_hex([contents[i] for i in self.rows])
        else:
            self.rows, keys = np.arange(len(contents)), content_keys.from_hex(contents)
        self.keys, self._first, self.inverse = content_keys.unique(keys)
        self.first_rows, self.out = self.rows[self._first], out
        self._row_keys = keys  # S20, in the order of self.rows
        self._claimed = np.zeros(len(self.keys), bool)
        self._lock = threading.Lock()

    def take(self, records, good):
        """Copy the wanted vectors among records (record_dtype [k]) where good ([k] bool)."""
        if not len(self.keys):
            return
        at = self._in_row_order(records["key"])
        if at is not None:
            hit = good.copy()
        else:
            at = content_keys.find(self.keys, records["key"])
            hit = good & (at >= 0)
        with self._lock:  # claimed here, then written by this thread alone
            hit &= ~self._claimed[at]
            self._claimed[at[hit]] = True
        rows = self.first_rows[at[hit]]
        if not len(rows):
            return
        if len(rows) == len(records) and rows[-1] - rows[0] == len(rows) - 1 and (
                len(rows) == 1 or (np.diff(rows) == 1).all()):
            # Every record wanted, rows in the shard's order (images computed in order):
            # one copy, no temporary.
            self.out[rows[0]:rows[-1] + 1] = records["vector"]
        else:
            self.out[rows] = records["vector"][hit]

    def _in_row_order(self, keys):
        """If keys (S20 [k]) are those of k consecutive rows (a shard written in the order
        the run lists its images): their indices in self.keys, found with one search
        instead of k. Else None."""
        i = min(int(np.searchsorted(self.keys, keys[:1])[0]), len(self.keys) - 1)
        start = int(self._first[i])
        window = slice(start, start + len(keys))
        if self.keys[i] != keys[0] or not np.array_equal(self._row_keys[window], keys):
            return None
        return self.inverse[window]

    def fill_copies(self, found):
        """Give every row of a key found (found: [K] bool, per key of self.keys) its
        first row's vector."""
        mine = found[self.inverse]
        rows, sources = self.rows[mine], self.first_rows[self.inverse[mine]]
        copies = rows != sources
        self.out[rows[copies]] = self.out[sources[copies]]
