"""retrain_suite.bottleneck.cache: entries, checksums, damage."""

import logging
import os
import re

import numpy as np
import pytest
from helpers import unblocking_fifo

from retrain_suite.bottleneck import cache as cache_lib


def sample_vector(dimension=64, seed=0):
    rng = np.random.RandomState(seed)
    vector = rng.normal(size=dimension).astype(np.float32) * 10
    vector[:3] = [0.0, -1e-30, 3.4e38]
    return vector


CONTENT = "cd" + "1" * 38


def test_entry_encode_decode_round_trip_is_exact():
    vector = sample_vector()
    data = cache_lib.encode_entry(vector, CONTENT)
    assert isinstance(data, bytes)
    assert len(data) == 64 * 4 + 20 + 4
    decoded, damage = cache_lib.decode_entry(data, CONTENT)
    assert damage is None
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    # Little-endian float32 body, whatever the machine, then the key it was written for.
    np.testing.assert_array_equal(np.frombuffer(data[:64 * 4], "<f4"), vector)
    assert data[64 * 4:-4] == bytes.fromhex(CONTENT)


def test_cache_store_then_lookup_returns_the_vector(tmp_path):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    content = "ab" + "0" * 38
    assert cache.lookup(content, 64) is None
    cache.store(content, sample_vector())
    assert cache.path_for(content) == os.path.join(str(tmp_path), "key", "ab", content + ".f32")
    np.testing.assert_array_equal(cache.lookup(content, 64), sample_vector())
    np.testing.assert_array_equal(cache.lookup(content), sample_vector())
    assert not [name for name in os.listdir(os.path.dirname(cache.path_for(content)))
                if ".tmp-" in name]


def truncated_mid_value(entry):
    return entry[:-6]


def truncated_whole_values(entry):
    return entry[:-8]


def garbage(entry):
    return np.random.RandomState(1).bytes(len(entry))


def bit_flipped(entry):
    damaged = bytearray(entry)
    damaged[10] ^= 0x01
    return bytes(damaged)


def too_short(entry):
    return entry[:5]


def wrong_dimension(entry):
    del entry
    return cache_lib.encode_entry(sample_vector(32), CONTENT)


def with_nan(entry):
    del entry
    vector = sample_vector()
    vector[5] = np.nan
    return cache_lib.encode_entry(vector, CONTENT)


def with_inf(entry):
    del entry
    vector = sample_vector()
    vector[7] = -np.inf
    return cache_lib.encode_entry(vector, CONTENT)


def another_images_entry(entry):
    """A valid entry of another image, as a copy or rename over this one leaves it."""
    del entry
    return cache_lib.encode_entry(sample_vector(seed=1), "ab" + "0" * 38)


@pytest.mark.parametrize(
    "damage",
    [truncated_mid_value, truncated_whole_values, garbage, bit_flipped, too_short,
     wrong_dimension, with_nan, with_inf, another_images_entry],
)
def test_damaged_cache_entry_is_detected_and_logged(tmp_path, caplog, damage):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    content = CONTENT
    cache.store(content, sample_vector())
    path = cache.path_for(content)
    with open(path, "rb") as f:
        entry = f.read()
    with open(path, "wb") as f:
        f.write(damage(entry))
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup(content, 64) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Damaged cache entry" in warnings[0] and path in warnings[0]


def test_entry_linked_to_another_images_entry_is_not_served(tmp_path, caplog):
    """A file name never vouches for a vector: the entry must hold the key it is read for."""
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    other = "ab" + "0" * 38
    cache.store(other, sample_vector(seed=1))
    os.makedirs(os.path.dirname(cache.path_for(CONTENT)))
    os.symlink(cache.path_for(other), cache.path_for(CONTENT))
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup(CONTENT, 64) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"holds the vector of another image, {other}" in warnings[0]
    np.testing.assert_array_equal(cache.lookup(other, 64), sample_vector(seed=1))


def test_fifo_in_place_of_an_entry_is_recomputed_not_waited_on(tmp_path, caplog):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    os.makedirs(os.path.dirname(cache.path_for(CONTENT)))
    with unblocking_fifo(cache.path_for(CONTENT)), caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup(CONTENT, 64) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not a regular file (a FIFO)" in warnings[0], warnings


def test_module_key_names_the_entry_format_so_older_caches_are_not_read():
    """Entries of an older layout live in another folder: recomputed, not misread as damaged."""
    assert cache_lib.module_key("/modules/a", 32, 32).endswith(f"_e{cache_lib.ENTRY_FORMAT}")
    assert cache_lib.ENTRY_FORMAT >= 2  # 1: vector and CRC, no key


def test_missing_cache_entry_is_not_reported_as_damaged(tmp_path, caplog):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert cache.lookup("ef" + "2" * 38, 64) is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_module_key_differs_between_handles_and_input_sizes():
    keys = {
        cache_lib.module_key("/modules/a", 32, 32),
        cache_lib.module_key("/modules/b", 32, 32),
        # Same sanitised name, different handle: the digest tells them apart.
        cache_lib.module_key("/modules/a-b", 32, 32),
        cache_lib.module_key("/modules/a_b", 32, 32),
        cache_lib.module_key("/modules/a", 64, 64),
        cache_lib.module_key("/modules/a", 32, 64),
        cache_lib.module_key("/modules/a", 32, 32, "float16"),
    }
    assert len(keys) == 7
    assert cache_lib.module_key("/modules/a", 32, 32) == cache_lib.module_key("/modules/a", 32, 32)
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_]+", key), key


def test_a_huge_file_in_an_entrys_place_is_damage_not_read_whole(tmp_path, caplog):
    cache = cache_lib.BottleneckCache(str(tmp_path), "module")
    content = "ab" * 20
    cache.store(content, np.ones(16, np.float32))
    with open(cache.path_for(content), "r+b") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: costs no disk, but a whole read costs 64 MB
    caplog.set_level("WARNING")
    assert cache.lookup(content, dimension=16) is None
    assert "larger than the 88 bytes allowed for it" in caplog.text
