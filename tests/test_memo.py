"""retrain_suite.memo and export_memo: what a rerun keeps instead of doing again, and
that it never keeps what changed."""

import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, retrain_settings

from retrain_suite import atomic_files, export_memo, final_layer, job, run_exports
from retrain_suite import config as config_lib
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import files as image_files


def test_an_entry_comes_back_only_whole_and_under_its_own_key(tmp_path, caplog):
    memo = memo_lib.Memo(str(tmp_path), "exports")
    key = memo_lib.key_of("a", "b")
    assert key != memo_lib.key_of("ab") and key != memo_lib.key_of("a", "b", "")
    assert memo.get(key) is None
    memo.put(key, {"digest": "d", "result": 3})
    assert memo.get(key) == {"digest": "d", "result": 3}
    assert memo_lib.Memo(None, "exports").get(key) is None
    assert memo_lib.Memo.of_cache("gs://bucket/cache", "exports").folder is None
    path = tmp_path / "exports" / (key + ".json")
    for text in (b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'):
        path.write_bytes(text)
        assert memo.get(key) is None, text
    path.unlink()
    os.mkfifo(path)
    assert memo.get(key) is None  # not waited on
    with pytest.raises(ValueError):
        memo_lib.Memo(str(tmp_path), "elsewhere")


def test_a_value_that_json_cannot_hold_is_not_remembered(tmp_path, caplog):
    memo = memo_lib.Memo(str(tmp_path), "exports")
    memo.put("k", {"result": float("nan")})
    assert memo.get("k") is None
    assert "Could not remember" in caplog.text


def test_data_digest_is_the_file_digest_of_a_file_holding_the_data(tmp_path):
    path = tmp_path / "graph.pb"
    path.write_bytes(b"some graph")
    assert memo_lib.data_digest(b"some graph") == memo_lib.file_digest(str(path))
    assert memo_lib.data_digest(b"some grapH") != memo_lib.file_digest(str(path))


def test_a_file_is_hashed_chunk_by_chunk_to_the_same_digest(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    data = bytes(range(256)) * 41 + b"tail"  # not a whole number of chunks
    path.write_bytes(data)
    monkeypatch.setattr(memo_lib, "CHUNK_BYTES", 1000)
    assert memo_lib.file_digest(str(path)) == memo_lib.data_digest(data)
    read_sizes = []
    real = image_files.sha256_of_regular_file
    monkeypatch.setattr(image_files, "sha256_of_regular_file",
                        lambda p, size: read_sizes.append(size) or real(p, size))
    monkeypatch.setattr(memo_lib, "_digests", {})  # not from this process's earlier hash
    memo_lib.file_digest(str(path))
    assert read_sizes == [1000]


def test_the_layer_digest_follows_every_value_name_dtype_and_shape():
    layer = {"w": np.ones([2, 3], np.float32), "b": np.zeros([3], np.float32)}
    digest = export_memo.values_digest(layer)
    assert digest == export_memo.values_digest(dict(reversed(list(layer.items()))))
    for other in ({**layer, "w": layer["w"] * 2},
                  {**layer, "w": layer["w"].reshape(3, 2)},
                  {**layer, "w": layer["w"].astype(np.float64)},
                  {"v": layer["w"], "b": layer["b"]}):
        assert export_memo.values_digest(other) != digest


def forget_loaded_modules():
    """What a new process starts with: no module loaded, no sizes known."""
    module_lib._shared[:] = [None, None]
    module_lib._shapes.clear()


def test_a_rerun_keeps_its_exports_without_loading_the_module_and_rewrites_what_changed(
        tmp_path, tiny_module, monkeypatch, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=6)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, how_many_training_steps=20, report_dir="",
        tflite_output_file=str(tmp_path / "out" / "model.tflite"),
    )
    job.run_retraining(config_lib.from_flat(settings))
    graph, tflite = settings["output_graph"], settings["tflite_output_file"]
    first = {path: open(path, "rb").read() for path in (graph, tflite)}

    # A new process with the same command: nothing to compute, export or load.
    forget_loaded_modules()
    loads = []
    real_load = module_lib.load
    monkeypatch.setattr(module_lib, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    caplog.set_level(logging.INFO)
    job.run_retraining(config_lib.from_flat(settings))
    assert loads == []
    assert f"{graph} is already the file this run writes" in caplog.text
    assert f"{tflite} is already the file this run writes" in caplog.text

    # Another file where the graph was: written anew, the same bytes as the first run's.
    with open(graph, "wb") as f:
        f.write(b"not the graph")
    forget_loaded_modules()
    caplog.clear()
    job.run_retraining(config_lib.from_flat(settings))
    assert f"{graph} is already" not in caplog.text
    assert f"{tflite} is already the file this run writes" in caplog.text
    assert {path: open(path, "rb").read() for path in (graph, tflite)} == first
    assert len(loads) == 1  # for the graph only

    # Another seed trains another layer: both files are made again.
    caplog.clear()
    job.run_retraining(config_lib.from_flat({**settings, "random_seed": 2}))
    assert "is already the file this run writes" not in caplog.text
    assert open(graph, "rb").read() != first[graph]


def test_the_frozen_graph_key_follows_the_layer_the_tuned_weights_and_the_thresholds(
        tiny_module):
    layer = {"w": np.ones([4, 2], np.float32)}
    spec = final_layer.LayerSpec(2, multi_label=True)
    exported = run_exports.ExportedLayer(spec, layer, thresholds=[0.5, 0.5])
    key = export_memo.frozen_graph_key(tiny_module, 32, exported)
    assert key == export_memo.frozen_graph_key(tiny_module, 32, exported)
    for other in (dataclasses.replace(exported, thresholds=[0.5, 0.6]),
                  dataclasses.replace(exported, thresholds=None),
                  dataclasses.replace(exported, module_values=[np.zeros([3], np.float32)]),
                  dataclasses.replace(exported, layer={"w": layer["w"] + 1}),
                  dataclasses.replace(exported, spec=final_layer.LayerSpec(2))):
        assert export_memo.frozen_graph_key(tiny_module, 32, other) != key
    assert export_memo.frozen_graph_key(tiny_module, 48, exported) != key
    assert export_memo.frozen_graph_key("not/a/module", 32, exported) is None


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "graph.pb"
    path.write_bytes(b"first")
    reads = []
    real = image_files.sha256_of_regular_file
    monkeypatch.setattr(image_files, "sha256_of_regular_file",
                        lambda p, size: reads.append(p) or real(p, size))
    first = memo_lib.file_digest(str(path))
    assert memo_lib.file_digest(str(path)) == first and len(reads) == 1
    modified = os.stat(path).st_mtime_ns
    path.write_bytes(b"other")  # the same size, rewritten in place
    os.utime(path, ns=(modified, modified))  # its modification time put back: ctime moved
    assert memo_lib.file_digest(str(path)) == memo_lib.data_digest(b"other")
    replaced = tmp_path / "new.pb"
    replaced.write_bytes(b"third")
    os.replace(replaced, path)
    assert memo_lib.file_digest(str(path)) == memo_lib.data_digest(b"third")
    assert len(reads) == 3


def test_a_kept_export_is_not_read_again_by_a_later_run_until_it_changes(tmp_path, monkeypatch):
    memo = export_memo.ExportMemo(memo_lib.Memo(str(tmp_path / "cache"), "exports"))
    path = str(tmp_path / "graph.pb")
    reads = []
    real = image_files.sha256_of_regular_file
    monkeypatch.setattr(image_files, "sha256_of_regular_file",
                        lambda p, size: reads.append(p) or real(p, size))

    def later_run(data):  # a new process: nothing hashed in this one yet
        monkeypatch.setattr(memo_lib, "_digests", {})
        return memo.write("output_graph", path, "k" * 64,
                          lambda: open(path, "wb").write(data) and None)

    assert not later_run(b"graph").kept and len(reads) == 1  # written, hashed once
    kept = later_run(b"graph")
    assert kept.kept and kept.digest == memo_lib.data_digest(b"graph") and len(reads) == 1
    modified = os.stat(path).st_mtime_ns
    with open(path, "r+b") as f:  # changed in place, same size, modification time put back
        f.write(b"GRAPH")
    os.utime(path, ns=(modified, modified))
    rewritten = later_run(b"graph")
    assert not rewritten.kept and len(reads) == 3  # read, found changed, written and hashed
    with open(path, "rb") as f:
        assert f.read() == b"graph"
    damaged = memo.memo.get("k" * 64)
    memo.memo.put("k" * 64, {**damaged, "file": {"signature": damaged["file"]["signature"],
                                                 "sha256": "00" * 32}})
    assert not later_run(b"graph").kept  # a record that does not match is not trusted


def test_a_memo_nested_too_deeply_for_json_is_ignored_with_a_warning(tmp_path, caplog):
    memo = memo_lib.Memo(str(tmp_path), "photos")
    memo.put("k", {"photos": {}})
    (tmp_path / "photos" / "k.json").write_text("[" * 100_000 + "]" * 100_000)
    assert memo.get("k") is None
    assert "Ignoring the damaged memo" in caplog.text


def test_a_memo_that_cannot_be_written_only_warns_whatever_the_file_system_raises(
        tmp_path, caplog, monkeypatch):
    memo = memo_lib.Memo(str(tmp_path), "photos")
    for error in (tf.errors.PermissionDeniedError(None, None, "denied"),
                  tf.errors.ResourceExhaustedError(None, None, "disk full"), OSError(28, "full")):
        def failing(path, text, error=error):
            raise error
        monkeypatch.setattr(atomic_files, "write_text", failing)
        memo.put("k", {"photos": {}})
        assert "Could not remember photos" in caplog.text
        caplog.clear()


def test_an_entry_larger_than_get_reads_is_not_written(tmp_path, monkeypatch):
    memo = memo_lib.Memo(str(tmp_path), "photos")
    monkeypatch.setattr(memo_lib, "MAX_ENTRY_BYTES", 100)
    memo.put("small", {"photos": {"a": "b"}})
    memo.put("large", {"photos": {"a": "b" * 100}})
    assert memo.get("small") == {"photos": {"a": "b"}}
    assert not (tmp_path / "photos" / "large.json").exists()
