"""retrain_suite.bottleneck.packed_store: the shard format, commits, damage, concurrency."""

import hashlib
import json
import logging
import multiprocessing
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, unblocking_fifo

from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute, packed_compaction, packed_store, shard_format, stores

DIMENSION = 8


def identity(dimension=DIMENSION, key="tiny_0123_8x8_float32_p3_e2"):
    return packed_store.StoreIdentity(key, "/modules/tiny", 8, 8, "float32", dimension)


def content_of(i):
    return hashlib.sha1(f"image {i}".encode()).hexdigest()


def vector_of(content, dimension=DIMENSION):
    """A vector that follows from its key, so a mixed-up entry shows."""
    seed = int(content[:8], 16)
    return np.random.RandomState(seed).normal(size=dimension).astype(np.float32)


def write(store, numbers):
    contents = [content_of(i) for i in numbers]
    return store.write_shard(contents, np.stack([vector_of(c) for c in contents]))


def assert_holds(index, numbers):
    contents = [content_of(i) for i in numbers]
    positions = index.positions(contents)
    assert (positions >= 0).all()
    np.testing.assert_array_equal(index.read(positions), [vector_of(c) for c in contents])


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_round_trip_and_the_bytes_are_as_documented(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    assert store.root == f"{tmp_path}/{identity().module_key}/packed"
    path = write(store, range(5))
    name = os.path.basename(path)[:-len(".shard")]
    assert shard_format.SHARD_NAME.fullmatch(name)
    R = packed_store.record_bytes(DIMENSION)
    assert R == 20 + 4 * DIMENSION + 4
    data = open(path, "rb").read()
    assert len(data) == packed_store.HEADER_BYTES + 5 * R
    assert data[:8] == b"RSBSHARD"
    assert np.frombuffer(data[8:16], "<u4").tolist() == [1, DIMENSION]
    assert np.frombuffer(data[16:24], "<u8").tolist() == [5] and data[24:32] == bytes(8)
    records = np.frombuffer(data, packed_store.record_dtype(DIMENSION), offset=32)
    assert records["key"][2] == bytes.fromhex(content_of(2))
    np.testing.assert_array_equal(records["vector"][2], vector_of(content_of(2)))
    import zlib
    assert records["crc"][2] == zlib.crc32(data[32 + 2 * R:32 + 3 * R - 4])
    manifest = json.loads(open(path[:-len(".shard")] + ".manifest.json", encoding="utf-8").read())
    assert manifest["format"] == "retrain_suite packed bottlenecks" and manifest["version"] == 1
    assert manifest["shard"] == name + ".shard" and manifest["count"] == 5
    assert manifest["bytes"] == len(data) and manifest["dimension"] == DIMENSION
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["input_size"] == [8, 8] and manifest["dtype"] == "<f4"
    # tf.data reads it as fixed-length records after the header.
    read = list(tf.data.FixedLengthRecordDataset(path, R, header_bytes=32).as_numpy_iterator())
    assert read[3] == data[32 + 3 * R:32 + 4 * R]

    index = store.index()
    assert len(index) == 5 and index.shards == (path,)
    assert index.position(content_of(3)) == (0, 3)
    assert index.position(content_of(99)) is None
    assert_holds(index, [4, 0, 2])
    vectors = packed_store.StoreVectors(index, index.positions(
        [content_of(1), None, content_of(4)]))
    assert vectors.shape == (3, DIMENSION) and len(vectors) == 3
    np.testing.assert_array_equal(vectors[0], vector_of(content_of(1)))
    np.testing.assert_array_equal(vectors[1], np.zeros(DIMENSION))  # no position: zeros
    np.testing.assert_array_equal(vectors[[2, 0]][0], vector_of(content_of(4)))
    np.testing.assert_array_equal(vectors[1:, :2][1], vector_of(content_of(4))[:2])
    assert np.asarray(vectors).shape == (3, DIMENSION)
    assert not [n for n in os.listdir(store.root) if ".tmp-" in n]


def test_contents_give_every_key_whole_even_one_ending_in_zero_bytes(tmp_path):
    # numpy's S20 drops a key's trailing zero bytes (one SHA-1 in 256 ends in one): the
    # benchmark's key.hex() read such a Beam-filled vector as missing, and another as extra.
    store = packed_store.PackedStore(str(tmp_path), identity())
    contents = [content_of(1), "ab" * 19 + "00", "cd" * 18 + "0000", "00" * 20]
    store.write_shard(contents, np.stack([vector_of(c) for c in contents]))
    index = store.index()
    keys, positions = index.entries()
    assert sorted(index.contents()) == sorted(contents)
    for content, vector in zip(index.contents(), index.read(positions)):
        np.testing.assert_array_equal(vector, vector_of(content))
    assert [shard_format.key_hex(k) for k in keys] == index.contents()


def test_load_reads_the_index_and_the_vectors_in_one_pass(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    write(store, range(6))
    flipped = write(store, range(6, 9))
    with open(flipped, "r+b") as f:
        f.seek(32 + 20)  # record 0's first value: 6 is damaged
        f.write(b"\xff\xff\xff\xff")
    # In shard order (one copy), out of order, copies of one content, absent and None rows.
    asked = [0, 1, 2, 5, 3, 3, 7, 6, 99, None, 0]
    contents = [None if i is None else content_of(i) for i in asked]
    out = np.full([len(asked), DIMENSION], -7, np.float32)
    index = store.load(contents, out)
    found = index.positions(contents)[:, 0] >= 0
    assert found.tolist() == [i not in (6, 99, None) for i in asked]
    for row, i in enumerate(asked):
        if found[row]:
            np.testing.assert_array_equal(out[row], vector_of(content_of(i)))
        else:
            assert (out[row] == -7).all()  # rows not found are left alone
    in_order = np.zeros([6, DIMENSION], np.float32)  # rows in the shard's order: one copy
    store.load([content_of(i) for i in range(6)], in_order)
    np.testing.assert_array_equal(in_order, [vector_of(content_of(i)) for i in range(6)])


def test_shard_writer_writes_every_n_and_on_leaving_even_on_error(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    with pytest.raises(RuntimeError):
        with packed_store.ShardWriter(store, entries_per_shard=4) as writer:
            for i in range(10):
                writer.add(content_of(i), vector_of(content_of(i)))
            assert len(writer.written) == 2
            raise RuntimeError("the run failed")
    assert len(writer.written) == 3 and writer.entries == 10
    assert_holds(store.index(), range(10))


def test_a_shard_without_manifest_is_ignored(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    write(store, range(3))
    killed = write(store, range(3, 6))
    os.remove(killed[:-len(".shard")] + ".manifest.json")  # killed before its commit
    open(os.path.join(store.root, "shard-x.shard.tmp-1-abcdef01"), "wb").write(b"half")
    index = store.index()
    assert index.shards != () and killed not in index.shards
    assert len(index) == 3 and index.position(content_of(4)) is None


def test_truncated_shard_is_ignored_and_a_flipped_byte_loses_only_its_record(tmp_path, caplog):
    store = packed_store.PackedStore(str(tmp_path), identity())
    truncated = write(store, range(4))
    flipped = write(store, range(4, 8))
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 3)
    R = packed_store.record_bytes(DIMENSION)
    with open(flipped, "r+b") as f:
        f.seek(32 + 2 * R + 30)  # inside record 2's vector
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    with caplog.at_level(logging.WARNING, logger="absl"):
        index = store.index()
    assert len(index) == 3
    assert index.position(content_of(6)) is None
    assert_holds(index, [4, 5, 7])
    assert all(index.position(content_of(i)) is None for i in range(4))
    assert len(warnings_of(caplog)) == 2


def test_a_non_finite_vector_is_ignored(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    vectors = np.ones([2, DIMENSION], np.float32)
    vectors[1, 3] = np.nan
    store.write_shard([content_of(0), content_of(1)], vectors)
    index = store.index()
    assert index.position(content_of(0)) == (0, 0) and index.position(content_of(1)) is None


@pytest.mark.parametrize("other", [
    identity(dimension=4),
    packed_store.StoreIdentity(identity().module_key, "/modules/tiny", 8, 16, "float32",
                               DIMENSION),
    packed_store.StoreIdentity(identity().module_key, "/modules/tiny", 8, 8, "float16",
                               DIMENSION),
])
def test_a_manifest_of_another_module_or_dimension_is_refused_with_one_warning(
        tmp_path, caplog, other):
    mine = packed_store.PackedStore(str(tmp_path), identity())
    write(mine, range(2))
    theirs = packed_store.PackedStore(str(tmp_path), other)
    theirs.write_shard([content_of(5)], np.ones([1, other.dimension], np.float32))
    with caplog.at_level(logging.WARNING, logger="absl"):
        index = mine.index()
    assert len(index) == 2 and index.position(content_of(5)) is None
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "manifest" in warnings[0]


# None: a manifest naming a file outside the store.
@pytest.mark.parametrize("manifest", [b"\xff\xfe not json", b"[1, 2]", b"{" * 100_000, None])
def test_hostile_manifests_are_refused(tmp_path, caplog, manifest):
    store = packed_store.PackedStore(str(tmp_path), identity())
    path = write(store, range(2))
    manifest_path = path[:-len(".shard")] + ".manifest.json"
    if manifest is None:  # a manifest naming a file outside the store
        content = json.loads(open(manifest_path, encoding="utf-8").read())
        content["shard"] = "../../../etc/passwd"
        manifest = json.dumps(content).encode()
    open(manifest_path, "wb").write(manifest)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert len(store.index()) == 0
    assert len(warnings_of(caplog)) == 1


def fill(bottleneck_dir, numbers):
    """One writer: a shard every 7 entries."""
    store = packed_store.PackedStore(bottleneck_dir, identity())
    with packed_store.ShardWriter(store, entries_per_shard=7) as writer:
        for i in numbers:
            writer.add(content_of(i), vector_of(content_of(i)))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_two_writers_at_once_lose_and_mix_nothing(tmp_path, kind):
    halves = [range(0, 60), range(40, 100)]  # overlapping: 40..59 written by both
    if kind == "threads":
        workers = [threading.Thread(target=fill, args=(str(tmp_path), h)) for h in halves]
    else:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=fill, args=(str(tmp_path), h)) for h in halves]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert getattr(worker, "exitcode", 0) == 0
    index = packed_store.PackedStore(str(tmp_path), identity()).index()
    assert len(index) == 100 and index.total_records == 120
    assert_holds(index, range(100))


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_in_a_shards_place_is_never_waited_on(tmp_path, caplog, kind):
    store = packed_store.PackedStore(str(tmp_path), identity())
    write(store, range(2))
    victim = write(store, range(2, 4))
    os.remove(victim)
    with caplog.at_level(logging.WARNING, logger="absl"):
        if kind == "fifo":
            with unblocking_fifo(victim):
                index = store.index()
        else:
            os.mkdir(victim)
            index = store.index()
    assert len(index) == 2 and index.position(content_of(3)) is None
    kind_words = {"fifo": "is a FIFO, not a shard", "folder": "is a folder, not a shard"}[kind]
    assert any(kind_words in w for w in warnings_of(caplog)), warnings_of(caplog)


def test_a_fifo_in_a_manifests_place_is_never_waited_on(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    path = write(store, range(2))
    manifest = path[:-len(".shard")] + ".manifest.json"
    os.remove(manifest)
    with unblocking_fifo(manifest):
        assert len(store.index()) == 0


def test_reading_a_shard_removed_after_indexing_is_a_cache_error(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    path = write(store, range(2))
    index = store.index()
    os.remove(path)
    with pytest.raises(cache_lib.CacheError, match="Run again"):
        index.read([index.position(content_of(0))])


def test_an_unwritable_store_is_a_cache_error(tmp_path):
    (tmp_path / identity().module_key).mkdir()
    (tmp_path / identity().module_key / "packed").write_text("a file, not a folder")
    store = packed_store.PackedStore(str(tmp_path), identity())
    with pytest.raises(cache_lib.CacheError, match="Cannot write bottleneck shard"):
        write(store, range(1))


def test_an_absent_store_is_empty(tmp_path):
    index = packed_store.PackedStore(str(tmp_path / "nothing"), identity()).index()
    assert len(index) == 0 and index.shards == ()
    assert (index.positions([content_of(1), None]) == -1).all()


def test_an_object_store_path_is_written_and_read_through_gfile():
    """ram:// stands for gs:// (a gfile file system that is not local): no rename, no os."""
    store = packed_store.PackedStore("ram://packed-test", identity())
    path = write(store, range(3))
    assert path.startswith("ram://packed-test/") and not [
        n for n in tf.io.gfile.listdir(store.root) if ".tmp-" in n]
    assert_holds(store.index(), range(3))


# compute_bottlenecks with the packed store.

@pytest.fixture
def photos(tmp_path):
    """12 images, 4 per class. -> list of full paths."""
    image_dir = make_dataset(tmp_path / "data", per_class=4)
    dataset = dataset_lib.build_dataset(image_dir, 0, 0)
    return [dataset.full_path(image) for image in dataset.images]


def entry_files(folder):
    return [n for _, _, names in os.walk(folder) for n in names if n.endswith(".f32")]


def test_compute_writes_shards_and_a_rerun_computes_nothing(tmp_path, tiny_module, photos):
    folder = str(tmp_path / "bottlenecks")
    packed = stores.StoreOptions(kind="packed", entries_per_shard=5)
    first = compute.compute_bottlenecks(photos, tiny_module, folder, store=packed)
    assert first.summary().startswith("Bottlenecks: 12 images, 12 distinct (0 copies): "
                                      "12 computed, 0 from the cache")
    assert entry_files(folder) == []  # no per-file entries
    shards = [n for n in os.listdir(os.path.join(folder, first.module_key, "packed"))
              if n.endswith(".shard")]
    assert len(shards) == 3  # 5 + 5 + 2
    # Read by either kind: the packed store is always read.
    for kind in ("packed", "files"):
        again = compute.compute_bottlenecks(photos, tiny_module, folder,
                                            store=stores.StoreOptions(kind=kind))
        assert (again.computed, again.reused) == (0, 12)
        np.testing.assert_array_equal(again.vectors, first.vectors)
    assert entry_files(folder) == []


def test_vectors_not_held_come_from_the_shards(tmp_path, tiny_module, photos):
    folder = str(tmp_path / "bottlenecks")
    held = compute.compute_bottlenecks(photos[:6], tiny_module, folder)  # per-file entries
    assert len(entry_files(folder)) == 6
    streamed = compute.compute_bottlenecks(
        photos + ["/no/such/photo.jpg"], tiny_module, folder,
        store=stores.StoreOptions(hold_vectors=False))
    assert isinstance(streamed.vectors, packed_store.StoreVectors)
    assert streamed.vectors.shape == (13, 64)
    assert (streamed.computed, streamed.reused, len(streamed.skipped)) == (6, 6, 1)
    np.testing.assert_array_equal(streamed.vectors[:6], held.vectors)
    np.testing.assert_array_equal(streamed.vectors[12], np.zeros(64))  # skipped: zeros
    # Every vector is in the shards, those of the per-file cache included ...
    index = packed_store.PackedStore(folder, streamed.vectors.index.store.identity).index()
    assert len(index) == 12
    # ... and kind "files" still wrote the computed ones as entries too.
    assert len(entry_files(folder)) == 12
    full = compute.compute_bottlenecks(photos, tiny_module, str(tmp_path / "elsewhere"))
    np.testing.assert_array_equal(np.asarray(streamed.vectors)[:12], full.vectors)


def test_a_long_run_commits_its_vectors_every_so_often(tmp_path, tiny_module, photos,
                                                        monkeypatch):
    monkeypatch.setattr(stores, "COMMIT_SECONDS", 0.0)  # every vector as it comes
    folder = str(tmp_path / "bottlenecks")
    result = compute.compute_bottlenecks(photos, tiny_module, folder, batch_size=4,
                                         store=stores.StoreOptions(kind="packed"))
    shards = os.listdir(os.path.join(folder, result.module_key, "packed"))
    assert len([n for n in shards if n.endswith(".shard")]) == 12


def test_a_failed_run_commits_what_it_computed(tmp_path, tiny_module, photos, monkeypatch):
    folder = str(tmp_path / "bottlenecks")
    packed = stores.StoreOptions(kind="packed", entries_per_shard=100)
    put, count = stores.Stores.put, [0]

    def failing_put(self, content, vector):
        count[0] += 1
        if count[0] == 6:
            raise RuntimeError("disk on fire")
        put(self, content, vector)

    monkeypatch.setattr(stores.Stores, "put", failing_put)
    with pytest.raises(RuntimeError):
        compute.compute_bottlenecks(photos, tiny_module, folder, batch_size=4, store=packed)
    monkeypatch.setattr(stores.Stores, "put", put)
    rerun = compute.compute_bottlenecks(photos, tiny_module, folder, store=packed)
    assert (rerun.computed, rerun.reused) == (7, 5)


# Compaction.

def test_compaction_merges_small_shards_dedupes_and_keeps_full_ones(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    full = write(store, range(0, 8))
    for start in range(4, 24, 4):  # 5 small shards, the first overlapping the full one
        write(store, range(start, start + 4))
    write(store, range(20, 22))  # a copy of entries of the last small shard
    zero_ended = "ab" * 19 + "00"  # numpy's S20 drops trailing zero bytes: they must come back
    store.write_shard([zero_ended], vector_of(zero_ended)[None])
    result = packed_compaction.compact(store, entries_per_shard=8)
    assert (result.shards_before, result.rewritten) == (8, 7)
    assert result.entries == 17 and result.dropped == 4 + 2  # 4..7 are in the full shard
    index = store.index()
    assert full in index.shards and len(index.shards) == 1 + 3 == result.shards_after
    assert len(index) == 25 and index.total_records == 25  # no duplicates left
    assert_holds(index, range(24))
    np.testing.assert_array_equal(index.read([index.position(zero_ended)])[0],
                                  vector_of(zero_ended))
    assert sorted(n.split(".", 1)[1] for n in os.listdir(store.root)) == [
        "manifest.json"] * 4 + ["shard"] * 4
    again = packed_compaction.compact(store, entries_per_shard=8)  # one small shard: kept
    assert again.rewritten == 0 and again.shards_after == 4


def test_compaction_deletes_only_old_left_overs_and_leaves_foreign_shards(tmp_path):
    store = packed_store.PackedStore(str(tmp_path), identity())
    write(store, range(2))
    old, young = write(store, range(2, 4)), write(store, range(4, 6))
    for path in (old, young):
        os.remove(path[:-len(".shard")] + ".manifest.json")  # killed writers
    temporary = os.path.join(store.root, "shard-x.shard.tmp-7-0123abcd")
    open(temporary, "wb").write(b"half")
    for path in (old, temporary):
        os.utime(path, (1e9, 1e9))  # 2001
    other = packed_store.PackedStore(str(tmp_path), identity(dimension=4))
    foreign = other.write_shard([content_of(9)], np.ones([1, 4], np.float32))
    result = packed_compaction.compact(store, entries_per_shard=8)
    assert result.orphans == 2 and not os.path.exists(old) and not os.path.exists(temporary)
    assert os.path.exists(young) and os.path.exists(foreign)
    assert_holds(store.index(), range(2))


def test_a_reader_during_compaction_never_loses_an_entry(tmp_path, monkeypatch):
    compactor = packed_store.PackedStore(str(tmp_path), identity())
    for start in range(0, 12, 3):
        write(compactor, range(start, start + 3))
    reader = packed_store.PackedStore(str(tmp_path), identity())
    listings = []

    def list_then_compact():
        names = packed_store.PackedStore.list_names(reader)
        if not listings:  # the compaction runs between the reader's listing and its reads
            packed_compaction.compact(compactor, entries_per_shard=100)
        listings.append(names)
        return names

    monkeypatch.setattr(reader, "list_names", list_then_compact)
    index = reader.index()
    assert len(listings) == 2  # listed again when the listed manifests vanished
    assert len(index) == 12
    assert_holds(index, range(12))
