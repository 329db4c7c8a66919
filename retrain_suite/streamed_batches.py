r"""Training batches read from the packed store's shards, for runs whose vectors do not fit.

What vector_batches does from an array in memory, this does from the shards
(bottleneck.packed_store): only the positions of the training images are held
(24 bytes an image), never their vectors.

The pipeline, one tf.data graph whose elements are groups of blocks, chunks
and batches of rows, never one vector (a tf.data element per vector, through
unbatch, a shuffle buffer and batch, cost several us an example):

1. Blocks: each shard holding training records is cut into blocks of
   block_records(D) records (BLOCK_BYTES: 127 records of 2048-d); only blocks
   with a training record are read. The block list is shuffled whole every
   epoch (a new order each epoch, across every shard), then repeated
   without end, and taken BLOCKS_PER_READ blocks at a time.
2. Reads: `rows_of_blocks` (one tf.numpy_function call for BLOCKS_PER_READ
   blocks, PARALLEL_READS calls at once) reads each block in one piece, a
   seek and one read (`read_block`), and copies its kept records' vectors
   out. Not FixedLengthRecordDataset: it reaches header_bytes by reading the
   shard up to there, so a block near the end of a 64 MB shard cost about 4x
   one at its start (measured: 47 against 12 us of CPU a 2048-d record).
   Blocks go in groups: a call costs about 0.1 ms of CPU besides its reads.
3. Lookup, in the same call: each record's position (shard number, record
   number) is looked up among the training images' positions, held sorted
   in the Source (a binary search per record). A record of another set, a
   duplicate copy of a key that the index took from another shard, or a
   record the index refused (damaged) is not among them and is dropped; a
   record that serves several training images (copies of one image) is
   repeated for each, with each one's label.
4. Chunks: the blocks' rows, in block order, are cut into chunks of
   chunk_rows(D, N, B) rows (CHUNK_BYTES of vectors, a whole number of
   batches: 4,000 rows of 2048-d at B=100, the rows of about 32 blocks, more
   where blocks lose records to other sets). Each chunk's rows are put in a
   random order drawn from (seed, chunk number) and cut into batches; then
   prefetch. Chunks run on across epochs: the last rows of one epoch may
   share a chunk with the first of the next.

Mixing, against the element-wise shuffle buffer this replaced (8,192 vectors
of 2048-d, 256-record blocks): any row of a chunk is as likely as any other to
be in a given batch of it, so a batch mixes rows of nearly every block of its
chunk. Measured on a stand-in store with 2048-d proportions (60,000 records,
all training, batch 100): a batch held rows of about 31 blocks (at least 28),
at most about 7 rows of one block (11 at worst); the old buffer gave rows of
about 54 blocks (at least 41), at most about 6 of one (11 at worst). The old
buffer reached further: a row could wait in it while many blocks passed,
where here a row is drawn within its chunk of about 32 blocks. So where
shards were written in class order (a block: mostly one class), a batch now
mixes about 31 blocks' classes, not about 54. tests/test_streaming checks that
batches mix many blocks.

Memory: two chunks at most (one being filled, one being cut into batches),
64 MB, the bytes the old buffer held (without its tensor a vector), and the
blocks being read: held_rows(D, N, B) vectors, counted by memory_budget. The
positions and labels stay in the Source's arrays: the graph reads them there
(no copy fed into TensorFlow).

Copies of a vector on its way: from the page cache into a block's buffer
(the read), into the group's rows (the kept records; an array TensorFlow
takes without a copy, see aligned_empty), into a chunk, into a batch.

Deterministic for a given seed (ordered parallelism; a chunk's order is a
stateless draw from the seed and its number); the order differs from the
in-memory pipeline's, so a streamed run trains to the same accuracy within
noise, not to the same weights.
"""

import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from retrain_suite import errors
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import packed_store
from retrain_suite.bottleneck import shard_format as fmt

AUTOTUNE = tf.data.AUTOTUNE

BLOCK_BYTES = 1 << 20  # bytes a read (127 records of 2048-d); the unit of the epoch shuffle
BLOCKS_PER_READ = 4  # blocks a call of rows_of_blocks reads: a call costs ~0.1 ms besides
PARALLEL_READS = 2  # calls of rows_of_blocks at once
CHUNK_BYTES = 32 << 20  # vectors shuffled together: 4,000 of 2048-d at batch 100, 32 blocks
SHARD_BITS = 32  # a position as one int64: shard number << 32 | record number


def block_records(dimension):
    """Records in a block: BLOCK_BYTES of D-d records, at least one."""
    return max(1, BLOCK_BYTES // fmt.record_bytes(dimension))


def chunk_rows(dimension, count, batch_size):
    """Rows shuffled together: CHUNK_BYTES of D float32 (at most count), rounded down to
    a whole number of batches, at least one batch."""
    rows = max(1, min(count, CHUNK_BYTES // (4 * max(dimension, 1))))
    batch_size = max(1, batch_size)
    return int(max(batch_size, rows // batch_size * batch_size))


def held_rows(dimension, count, batch_size):
    """Vectors the pipeline holds at most: two chunks (one being filled, one being cut
    into batches) and the rows of the blocks being read, twice (read, and waiting)."""
    return (2 * chunk_rows(dimension, count, batch_size)
            + 2 * PARALLEL_READS * BLOCKS_PER_READ * block_records(dimension))


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
    dimension: int  # D
    blocks: np.ndarray  # int64 [K, 3]: (shard number, first record, end record) per block read
    keys: np.ndarray  # int64 [n]: the training images' positions as one int64, sorted
    rows: np.ndarray  # int64 [n]: the training row of each key, same order
    labels: np.ndarray  # [n, ...]: each training row's label (int64) or targets (float32 [C])
    # The cache.CacheErrors the pipeline's reads raised (see failures_raised).
    failures: list = dataclasses.field(default_factory=list, compare=False)

    @classmethod
    def of(cls, vectors, labels):
        """The Source of a training Split's StoreVectors and labels (aligned by row)."""
        positions = np.asarray(vectors.positions, np.int64).reshape(-1, 2)
        if len(positions) and positions.min() < 0:
            raise ValueError("a training row has no record in the store")
        keys = (positions[:, 0] << SHARD_BITS) | positions[:, 1]
        order = np.argsort(keys, kind="stable")
        counts = np.asarray(vectors.index.counts, np.int64)  # records a shard, valid or not
        records = block_records(int(vectors.shape[1]))
        block = np.unique((positions[:, 0] << SHARD_BITS) | (positions[:, 1] // records))
        shard, first = block >> SHARD_BITS, (block & ((1 << SHARD_BITS) - 1)) * records
        end = np.minimum(first + records, counts[shard])
        return cls(shards=tuple(vectors.index.shards), dimension=int(vectors.shape[1]),
                   blocks=np.stack([shard, first, end], axis=1).reshape(-1, 3),
                   keys=keys[order], rows=order.astype(np.int64), labels=np.asarray(labels))


def rows_of_blocks(source, blocks):
    """(float32 [m, D], labels [m, ...]): the training rows of blocks (int64 [G, 3], rows
    of source.blocks), block after block in record order. A record of no training
    image is dropped; one serving several (copies) is repeated, each with its label."""
    blocks = np.asarray(blocks, np.int64).reshape(-1, 3)
    sizes = blocks[:, 2] - blocks[:, 1]
    within_block = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    positions = (np.repeat((blocks[:, 0] << SHARD_BITS) + blocks[:, 1], sizes) + within_block)
    low = np.searchsorted(source.keys, positions, side="left")
    copies = np.searchsorted(source.keys, positions, side="right") - low
    within_copies = np.arange(copies.sum()) - np.repeat(np.cumsum(copies) - copies, copies)
    labels = source.labels[source.rows[np.repeat(low, copies) + within_copies]]
    vectors = aligned_empty([len(labels), source.dimension])
    kept = np.add.reduceat(copies, np.cumsum(sizes) - sizes) if len(sizes) else sizes
    records = np.repeat(within_block, copies)
    at = 0
    for (shard, first, end), count in zip(blocks, kept):
        if count:
            read_block(source.shards[shard], source.dimension, (int(first), int(end)),
                       records[at:at + count], vectors[at:at + count])
        at += count
    return vectors, labels


def read_block(path, dimension, span, records, out):
    """Read records span = (first, end) of the shard at path in one piece (a seek, one
    read) and copy the vectors of `records` (int64 [m], counted from first) into out
    (float32 [m, D]).

    Raises cache.CacheError if the shard is shorter than that or gone (compacted or
    changed during the run)."""
    first, end = span
    size = fmt.record_bytes(dimension)
    buffer = np.empty((end - first) * size // 4, np.float32)
    try:
        with fmt.open_shard(path) as handle:
            handle.seek(fmt.HEADER_BYTES + first * size)
            data = fmt.read_exactly(handle, memoryview(buffer).cast("B"), (end - first) * size)
    except (fmt.Refused, fmt.NotRegular, OSError, tf.errors.OpError) as e:
        raise cache_lib.CacheError(
            f"Cannot read bottleneck shard {path}: {errors.one_line(e)} (was the store "
            "compacted or changed during the run?). Run again.") from e
    # A record as float32 words: the key (5 words), the vector (D), the CRC (1).
    words = np.frombuffer(data, "<f4").reshape(end - first, size // 4)
    start = fmt.KEY_BYTES // 4
    # mode="clip": records are in range, and numpy buffers `out` in mode="raise" (a copy more).
    np.take(words[:, start:start + dimension], records, axis=0, out=out, mode="clip")


def aligned_empty(shape):
    """An uninitialised float32 array whose data starts on a 64-byte boundary: TensorFlow
    takes such an array from tf.numpy_function without copying it."""
    count = int(np.prod(shape))
    raw = np.empty(count + 16, np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip:skip + count].reshape(shape)


@contextlib.contextmanager
def failures_raised(source):
    """Within it, a TensorFlow error that a shard read by source's (a Source, or None)
    pipeline caused is raised as that cache.CacheError: one line naming the shard (a
    shard removed or cut short during the run), not TensorFlow's wrapper of it."""
    try:
        yield
    except tf.errors.OpError as e:
        if source is not None and source.failures:
            raise source.failures[0] from e
        raise


def training_batches(source, batch_size, seed):
    """Endless shuffled batches of a Source. -> (dataset, feed).

    dataset yields (float32 [B, D], labels [B, ...]); feed: {placeholder: array}
    to pass when initialising its iterator (the block list goes in through a
    placeholder, not as a constant copied into the graph; the positions and
    labels are read from the Source by `rows_of_blocks`, never copied).
    """
    blocks = tf.compat.v1.placeholder(tf.int64, [None, 3], "stream_blocks")
    feed = {blocks: source.blocks}
    chunk = chunk_rows(source.dimension, len(source.keys), batch_size)
    label_dtype, label_shape = tf.as_dtype(source.labels.dtype), source.labels.shape[1:]

    def rows_of(group):
        try:
            return rows_of_blocks(source, group)
        except cache_lib.CacheError as e:  # TensorFlow wraps it: kept for failures_raised
            source.failures.append(e)
            raise

    def read(group):
        vectors, labels = tf.numpy_function(rows_of, [group], [tf.float32, label_dtype],
                                            stateful=False, name="rows_of_blocks")
        return (tf.reshape(vectors, [-1, source.dimension]),
                tf.reshape(labels, [-1, *label_shape]))

    def shuffled_batches(number, rows_of_chunk):
        vectors, chunk_labels = rows_of_chunk
        order = tf.random.experimental.stateless_shuffle(
            tf.range(chunk), seed=tf.stack([tf.constant(seed, tf.int64), number]))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [-1, batch_size])).map(
            lambda picks: (tf.gather(vectors, picks), tf.gather(chunk_labels, picks)))

    dataset = tf.data.Dataset.from_tensor_slices(blocks).shuffle(
        tf.maximum(tf.shape(blocks, out_type=tf.int64)[0], 1), seed=seed,
        reshuffle_each_iteration=True).repeat().batch(BLOCKS_PER_READ)
    dataset = dataset.map(read, num_parallel_calls=PARALLEL_READS, deterministic=True)
    # Rows only, copied once into a chunk: no element per vector anywhere.
    dataset = dataset.rebatch(chunk, drop_remainder=True).enumerate()
    return dataset.flat_map(shuffled_batches).prefetch(AUTOTUNE), feed
