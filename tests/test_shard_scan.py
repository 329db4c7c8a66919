"""retrain_suite.bottleneck.shard_scan: a shard checked in pieces and chunks, on threads."""

import hashlib
import logging
import os

import numpy as np
import pytest

from retrain_suite.bottleneck import content_keys, packed_compaction, packed_store, shard_format, shard_scan

DIMENSION = 8
RECORD = shard_format.record_bytes(DIMENSION)


def identity():
    return packed_store.StoreIdentity("tiny_0123_8x8_float32_p3_e2", "/modules/tiny", 8, 8,
                                      "float32", DIMENSION)


def content_of(i):
    return hashlib.sha1(f"image {i}".encode()).hexdigest()


def vector_of(i):
    return np.random.RandomState(i).normal(size=DIMENSION).astype(np.float32)


def write(store, numbers):
    return store.write_shard([content_of(i) for i in numbers],
                             np.stack([vector_of(i) for i in numbers]))


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 5 records, read 2 records at a time: a small shard goes through every
    seam (piece after piece, chunk after chunk, a last short chunk)."""
    monkeypatch.setattr(shard_scan, "PIECE_BYTES", 5 * RECORD)
    monkeypatch.setattr(shard_scan, "CHUNK_BYTES", 2 * RECORD)


def test_a_shard_in_pieces_and_chunks_is_indexed_and_loaded_whole(
        tmp_path, small_pieces, caplog):
    store = packed_store.PackedStore(str(tmp_path), identity())
    path = write(store, range(23))  # 5 pieces: 5, 5, 5, 5, 3 records
    with open(path, "r+b") as f:  # damage records 7 and 21 (second and fifth pieces)
        for record in (7, 21):
            f.seek(shard_format.HEADER_BYTES + record * RECORD + 20 + 4)
            f.write(b"\x7f\x7f\x7f\x7f")
    assert [p.count for p in shard_scan.pieces(path, os.path.getsize(path), 23, RECORD)] == [
        5, 5, 5, 5, 3]
    asked = [22, 0, 7, 4, 5, 21, 6, 19, 22, 8, 20]
    out = np.full([len(asked), DIMENSION], -1, np.float32)
    with caplog.at_level(logging.WARNING, logger="absl"):
        index = store.load([content_of(i) for i in asked], out)
    assert len(index) == 21 and index.counts == (23,)
    assert warnings_of(caplog) == [
        f"Ignoring 2 damaged records of bottleneck shard {path}; their images are recomputed."]
    for row, i in enumerate(asked):
        if i in (7, 21):
            assert index.position(content_of(i)) is None and (out[row] == -1).all()
        else:  # the record number counts from the shard's start, not the piece's
            assert index.position(content_of(i)) == (0, i)
            np.testing.assert_array_equal(out[row], vector_of(i))


def test_a_shard_shrinking_while_read_is_refused(tmp_path, small_pieces, monkeypatch, caplog):
    store = packed_store.PackedStore(str(tmp_path), identity())
    write(store, range(3))
    victim = write(store, range(10, 14))  # one piece, read 2 records at a time
    read_exactly, shrunk = shard_format.read_exactly, []

    def shrink_once_opened(handle, buffer, count):
        if not shrunk and os.fstat(handle.fileno()).st_ino == os.stat(victim).st_ino:
            shrunk.append(True)  # opened and its size checked: now cut to 3 of its 4 records
            os.truncate(victim, shard_format.HEADER_BYTES + 3 * RECORD)
        return read_exactly(handle, buffer, count)

    monkeypatch.setattr(shard_format, "read_exactly", shrink_once_opened)
    with caplog.at_level(logging.WARNING, logger="absl"):
        index = store.index()
    assert len(index) == 3 and all(index.position(content_of(i)) is None
                                   for i in range(10, 14))
    assert any("shorter than it was a moment ago" in w for w in warnings_of(caplog)), (
        warnings_of(caplog))


def test_finite_rows_takes_huge_finite_values_and_refuses_nan_and_infinities():
    vectors = np.ones([5, 4], np.float32)
    vectors[1] = 3e38  # finite, but their sum overflows
    vectors[2, 1] = np.nan
    vectors[3, 0] = np.inf
    vectors[4, :2] = [np.inf, -np.inf]  # the sum is NaN
    assert shard_format.finite_rows(vectors).tolist() == [True, True, False, False, False]
    records = np.zeros(5, shard_format.record_dtype(4))
    records["vector"] = vectors  # strided rows, as read from a shard
    assert shard_format.finite_rows(records["vector"]).tolist() == [
        True, True, False, False, False]


def test_a_key_in_two_shards_is_written_from_one_record_only():
    contents = [content_of(1), content_of(2)]
    out = np.zeros([2, DIMENSION], np.float32)
    gather = shard_scan.Gather(contents, out)

    def records_of(vectors):
        records = np.zeros(2, shard_format.record_dtype(DIMENSION))
        records["key"] = [bytes.fromhex(c) for c in contents]
        records["vector"] = vectors
        return records

    first = np.stack([vector_of(1), vector_of(2)])
    gather.take(records_of(first), np.array([True, False]))  # record 2 damaged here
    gather.take(records_of(first + 1), np.array([True, True]))  # another shard's copies
    np.testing.assert_array_equal(out, [vector_of(1), vector_of(2) + 1])


def test_a_shard_vanishing_between_its_opening_and_its_pieces_is_listed_again(
        tmp_path, monkeypatch):
    compactor = packed_store.PackedStore(str(tmp_path), identity())
    for start in range(0, 12, 3):
        write(compactor, range(start, start + 3))
    reader = packed_store.PackedStore(str(tmp_path), identity())
    check_piece, compacted = shard_scan.check_piece, []

    def compact_then_check(piece, dimension, gather=None):
        if not compacted:  # the compaction retires the shards the reader just opened
            compacted.append("started")  # (its own index() comes here too)
            packed_compaction.compact(compactor, entries_per_shard=100)
        return check_piece(piece, dimension, gather)

    monkeypatch.setattr(shard_scan, "check_piece", compact_then_check)
    contents = [content_of(i) for i in range(12)]
    out = np.zeros([12, DIMENSION], np.float32)
    index = reader.load(contents, out)
    assert compacted and len(index) == 12
    np.testing.assert_array_equal(out, [vector_of(i) for i in range(12)])


def test_keys_from_hex_decode_as_fromhex_does():
    contents = [content_of(1), "00" * 20, "AB" * 20]
    np.testing.assert_array_equal(content_keys.from_hex(contents),
                                  np.array([bytes.fromhex(c) for c in contents], "S20"))
    # Spaces (which fromhex skips) or another length: decoded one by one, never shifted.
    for odd in ([content_of(2)[:36] + " 7f ", content_of(3)], [content_of(4)[:38], "ab" * 21]):
        np.testing.assert_array_equal(content_keys.from_hex(odd),
                                      np.array([bytes.fromhex(c) for c in odd], "S20"))
    assert len(content_keys.from_hex([])) == 0
    with pytest.raises(ValueError):
        content_keys.from_hex([content_of(1), "zz" * 20])


def tied_keys():
    """S20 keys: random ones, a key twice, two keys sharing their first 8 bytes (one
    ending in zero bytes, which S20 holds but bytes() drops), in no order."""
    keys = [hashlib.sha1(f"{i}".encode()).digest() for i in range(50)]
    keys += [keys[7], keys[3][:8] + bytes(12), keys[3][:8] + b"\xff" * 12, keys[40]]
    return np.array(keys[::-1][:30] + keys[::-1][30:], "S20")


@pytest.mark.parametrize("kind", ["distinct", "tied"])
def test_unique_keys_are_numpys(kind):
    keys = tied_keys() if kind == "tied" else tied_keys()[4:]
    expected = np.unique(keys, return_index=True, return_inverse=True)
    for got, want in zip(content_keys.unique(keys), expected):
        np.testing.assert_array_equal(got, want)
    assert [len(a) for a in content_keys.unique(keys[:0])] == [0, 0, 0]


@pytest.mark.parametrize("kind", ["distinct", "tied"])
def test_find_gives_each_keys_index_or_minus_one(kind):
    keys = tied_keys() if kind == "tied" else tied_keys()[4:]
    ordered = np.unique(keys)
    asked = np.concatenate([keys, np.array([bytes(20), b"\xff" * 20, keys[0][:8] + bytes(12)],
                                           "S20")])
    expected = [int(np.flatnonzero(ordered == k)[0]) if k in ordered else -1 for k in asked]
    assert content_keys.find(ordered, asked).tolist() == expected
    assert content_keys.find(ordered[:0], asked).tolist() == [-1] * len(asked)


def test_threads_follow_the_cpus_this_process_may_use():
    assert shard_scan.threads_for("/local/store") == len(os.sched_getaffinity(0))
    assert shard_scan.threads_for("gs://bucket/store") == shard_scan.REMOTE_THREADS
