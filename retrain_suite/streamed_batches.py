r"""Training batches read from the packed store's shards, for runs whose vectors do not fit.

What vector_batches does from an array in memory, this does from the shards
(bottleneck.packed_store): only the positions of the training images are held
(24 bytes an image), never their vectors.

The pipeline, one tf.data graph:

1. Blocks: each shard holding training records is cut into blocks of
   BLOCK_RECORDS records; only blocks with a training record are read. The
   block list is shuffled whole every epoch (a new order each epoch, across
   every shard), then repeated without end.
2. Reads: `interleave` reads READ_CYCLE blocks at once, in parallel, each
   with a `FixedLengthRecordDataset` over its byte range of the shard
   (header_bytes and footer_bytes select it: no whole-shard read).
3. Lookup: each record's position (shard number, record number) is looked up
   among the training images' positions, held sorted (a binary search
   per record). A record of another set, a duplicate copy of a key that
   the index took from another shard, or a record the index refused
   (damaged) is not among them and is dropped; a record that serves several
   training images (copies of one image) is repeated for each, with each
   one's label.
4. Then vectors one by one through a shuffle buffer of shuffle_rows(D)
   vectors (SHUFFLE_BUFFER_BYTES), batches, prefetch.

Deterministic for a given seed (ordered parallelism); the order differs from
the in-memory pipeline's, so a streamed run trains to the same accuracy
within noise, not to the same weights.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from retrain_suite.bottleneck import packed_store, shard_format

AUTOTUNE = tf.data.AUTOTUNE

BLOCK_RECORDS = 256  # records per read: 2 MB of 2048-d vectors; the unit of the epoch shuffle
READ_CYCLE = 8  # blocks read at once (interleaved)
SHUFFLE_BUFFER_BYTES = 64 << 20  # vectors held for the element shuffle: 8,192 of 2048-d
SHARD_BITS = 32  # a position as one int64: shard number << 32 | record number


def shuffle_rows(dimension, count):
    """Vectors in the shuffle buffer: SHUFFLE_BUFFER_BYTES of D float32, at most count, >= 1."""
    return int(max(1, min(count, SHUFFLE_BUFFER_BYTES // (4 * max(dimension, 1)))))


def is_streamed(vectors):
    """Whether a Split's bottlenecks are read from the store (not an array in memory)."""
    return isinstance(vectors, packed_store.StoreVectors)


def subset(vectors, rows):
    """The rows (int [m]) of a Split's bottlenecks, without reading them when streamed:
    an ndarray for an ndarray, a StoreVectors over those positions for a StoreVectors."""
    if is_streamed(vectors):
        return packed_store.StoreVectors(vectors.index, vectors.positions[rows])
    return vectors[rows]


@dataclasses.dataclass(frozen=True)
class Source:
    """The training set as positions in the store, ready for `training_batches`."""

    shards: tuple  # shard paths, by shard number
    counts: tuple  # records in each shard (valid or not)
    dimension: int  # D
    blocks: np.ndarray  # int64 [K, 3]: (shard number, first record, end record) per block read
    keys: np.ndarray  # int64 [n]: the training images' positions as one int64, sorted
    rows: np.ndarray  # int64 [n]: the training row of each key, same order
    labels: np.ndarray  # [n, ...]: each training row's label (int64) or targets (float32 [C])

    @classmethod
    def of(cls, vectors, labels):
        """The Source of a training Split's StoreVectors and labels (aligned by row)."""
        positions = np.asarray(vectors.positions, np.int64).reshape(-1, 2)
        if len(positions) and positions.min() < 0:
            raise ValueError("a training row has no record in the store")
        keys = (positions[:, 0] << SHARD_BITS) | positions[:, 1]
        order = np.argsort(keys, kind="stable")
        counts = tuple(int(c) for c in vectors.index.counts)
        block = np.unique((positions[:, 0] << SHARD_BITS) | (positions[:, 1] // BLOCK_RECORDS))
        shard, first = block >> SHARD_BITS, (block & ((1 << SHARD_BITS) - 1)) * BLOCK_RECORDS
        end = np.minimum(first + BLOCK_RECORDS, np.asarray(counts, np.int64)[shard])
        return cls(shards=tuple(vectors.index.shards), counts=counts,
                   dimension=int(vectors.shape[1]),
                   blocks=np.stack([shard, first, end], axis=1).reshape(-1, 3),
                   keys=keys[order], rows=order.astype(np.int64), labels=np.asarray(labels))


def training_batches(source, batch_size, seed):
    """Endless shuffled batches of a Source. -> (dataset, feed).

    dataset yields (float32 [B, D], labels [B, ...]); feed: {placeholder: array}
    to pass when initialising its iterator (the positions and labels go in
    through placeholders, not as constants copied into the graph).
    """
    blocks = tf.compat.v1.placeholder(tf.int64, [None, 3], "stream_blocks")
    keys = tf.compat.v1.placeholder(tf.int64, [None], "stream_keys")
    rows = tf.compat.v1.placeholder(tf.int64, [None], "stream_rows")
    labels = tf.compat.v1.placeholder(tf.as_dtype(source.labels.dtype),
                                      [None, *source.labels.shape[1:]], "stream_labels")
    feed = {blocks: source.blocks, keys: source.keys, rows: source.rows, labels: source.labels}
    size = shard_format.record_bytes(source.dimension)
    paths = tf.constant(list(source.shards) or [""], tf.string)
    counts = tf.constant(list(source.counts) or [0], tf.int64)

    def read(block):
        shard, first, end = block[0], block[1], block[2]
        records = tf.data.FixedLengthRecordDataset(
            tf.gather(paths, shard), size,
            header_bytes=shard_format.HEADER_BYTES + first * size,
            footer_bytes=(tf.gather(counts, shard) - end) * size,
            buffer_size=BLOCK_RECORDS * size,
        )
        return records.batch(BLOCK_RECORDS).map(
            lambda data: (shard * 2**SHARD_BITS + first + tf.range(tf.size(data, tf.int64)), data))

    def parse(positions, data):
        low = tf.searchsorted(keys, positions, side="left", out_type=tf.int64)
        high = tf.searchsorted(keys, positions, side="right", out_type=tf.int64)
        copies = high - low  # 0: not a training record; >1: copies of one image
        firsts = tf.repeat(low, copies)
        within = tf.range(tf.size(firsts, tf.int64)) - tf.repeat(
            tf.cumsum(copies, exclusive=True), copies)
        # A record as float32 words: the key (5 words), the vector (D), the CRC (1).
        words = tf.reshape(tf.io.decode_raw(data, tf.float32, little_endian=True),
                           [-1, size // 4])
        start = shard_format.KEY_BYTES // 4
        vectors = tf.repeat(words[:, start:start + source.dimension], copies, axis=0)
        return vectors, tf.gather(labels, tf.gather(rows, firsts + within))

    dataset = tf.data.Dataset.from_tensor_slices(blocks).shuffle(
        tf.maximum(tf.shape(blocks, out_type=tf.int64)[0], 1), seed=seed,
        reshuffle_each_iteration=True).repeat()
    dataset = dataset.interleave(read, cycle_length=READ_CYCLE, block_length=1,
                                 num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = dataset.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
    dataset = dataset.shuffle(shuffle_rows(source.dimension, len(source.keys)), seed=seed + 1,
                              reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE), feed
