r"""Content keys in numpy: the 20-byte SHA-1s of image files, as S20 arrays.

Decoded from hex, sorted and looked up for the packed store's index and load.
numpy sorts and searches S20 strings byte by byte; SHA-1s are random, so
their first 8 bytes, read as one big-endian uint64 (which orders as the bytes
do), tell them apart almost always, and numpy sorts and searches uint64 with
vector instructions. Where two first-8-byte prefixes are equal (the same key
twice, or a rare true tie), the functions fall back to the S20 way, so their
results are always exact.
"""

import numpy as np

KEY_BYTES = 20
DTYPE = f"S{KEY_BYTES}"


def from_hex(contents):
    """S20 [n]: the raw keys of contents (hex SHA-1s). Raises ValueError for a string
    that is not hex."""
    if set(map(len, contents)) <= {2 * KEY_BYTES}:  # one fromhex call for them all
        data = bytes.fromhex("".join(contents))
        if len(data) == KEY_BYTES * len(contents):  # (fromhex skips spaces: none here)
            return np.frombuffer(data, DTYPE)
    return np.array([bytes.fromhex(c) for c in contents], DTYPE)


def prefixes(keys):
    """uint64 [n]: the first 8 bytes of each key (S20 [n]) as a big-endian number, so
    that prefixes order as the keys do (equal keys, equal prefixes)."""
    raw = np.ascontiguousarray(keys, DTYPE).view(np.uint8).reshape(-1, KEY_BYTES)
    return np.ascontiguousarray(raw[:, :8]).view(">u8").ravel().astype(np.uint64)


def unique(keys):
    """np.unique(keys, return_index=True, return_inverse=True) for S20 keys: (the
    distinct keys sorted, the index of each one's first occurrence, the index in
    them of each key)."""
    first_bytes = prefixes(keys)
    order = np.argsort(first_bytes)
    ordered_bytes = first_bytes[order]
    if not (ordered_bytes[1:] != ordered_bytes[:-1]).all():  # a key twice, or a tie
        order = np.argsort(keys, kind="stable")  # first occurrences first
    ordered = keys[order]
    starts = np.ones(len(keys), bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    inverse = np.empty(len(keys), np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], order[starts], inverse


def find(ordered, keys):
    """int64 [n]: the index in ordered (S20, sorted, each key once) of each of keys,
    or -1 where it is not there."""
    if not len(ordered) or not len(keys):
        return np.full(len(keys), -1, np.int64)
    known = prefixes(ordered)
    if (known[1:] != known[:-1]).all():
        at = np.searchsorted(known, prefixes(keys))
    else:  # two of ordered share their first 8 bytes
        at = np.searchsorted(ordered, keys)
    at = np.minimum(at, len(ordered) - 1)
    return np.where(ordered[at] == keys, at, -1)
