"""retrain_suite.bottleneck.cache: entries, checksums, damage."""

import logging
import os
import re

import numpy as np
import pytest

from retrain_suite.bottleneck import cache as cache_lib


def sample_vector(dimension=64, seed=0):
    rng = np.random.RandomState(seed)
    vector = rng.normal(size=dimension).astype(np.float32) * 10
    vector[:3] = [0.0, -1e-30, 3.4e38]
    return vector


def test_entry_encode_decode_round_trip_is_exact():
    vector = sample_vector()
    data = cache_lib.encode_entry(vector)
    assert isinstance(data, bytes)
    assert len(data) == 64 * 4 + 4
    decoded, damage = cache_lib.decode_entry(data)
    assert damage is None
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    # Little-endian float32 body, whatever the machine.
    np.testing.assert_array_equal(np.frombuffer(data[:-4], "<f4"), vector)


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
    return cache_lib.encode_entry(sample_vector(32))


def with_nan(entry):
    del entry
    vector = sample_vector()
    vector[5] = np.nan
    return cache_lib.encode_entry(vector)


def with_inf(entry):
    del entry
    vector = sample_vector()
    vector[7] = -np.inf
    return cache_lib.encode_entry(vector)


@pytest.mark.parametrize(
    "damage",
    [truncated_mid_value, truncated_whole_values, garbage, bit_flipped, too_short,
     wrong_dimension, with_nan, with_inf],
)
def test_damaged_cache_entry_is_detected_and_logged(tmp_path, caplog, damage):
    cache = cache_lib.BottleneckCache(str(tmp_path), "key")
    content = "cd" + "1" * 38
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
