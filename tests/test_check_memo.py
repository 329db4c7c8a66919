"""retrain_suite.check_memo: a file's predictions remembered under its bytes, its runtime
and its test set; anything else runs the file again."""

import os

from retrain_suite import check_memo
from retrain_suite import memo as memo_lib


def test_the_digest_follows_every_byte_of_a_file_and_every_file_of_a_folder(tmp_path):
    graph = tmp_path / "graph.pb"
    graph.write_bytes(b"graph bytes")
    first = memo_lib.file_digest(str(graph))
    graph.write_bytes(b"graph bytez")
    assert memo_lib.file_digest(str(graph)) != first
    folder = tmp_path / "model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"pb")
    (folder / "variables" / "variables.index").write_bytes(b"index")
    before = memo_lib.file_digest(str(folder))
    (folder / "variables" / "variables.index").write_bytes(b"indey")
    assert memo_lib.file_digest(str(folder)) != before
    # A file moved to another name is another folder.
    (folder / "variables" / "variables.index").write_bytes(b"index")
    os.rename(folder / "saved_model.pb", folder / "saved_model.pbtxt")
    assert memo_lib.file_digest(str(folder)) != before


def test_a_fifo_where_the_file_was_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "graph.pb"
    os.mkfifo(fifo)
    try:
        memo_lib.file_digest(str(fifo))
    except OSError as e:
        assert "graph.pb" in str(e)
    else:
        raise AssertionError("a FIFO was hashed")


def test_the_test_set_key_follows_contents_order_size_and_labels():
    a, b = "aa" * 20, "bb" * 20
    key = check_memo.test_set_key([a, b], (32, 32), ["cat", "dog"])
    assert key == check_memo.test_set_key([a, b], (32, 32), ["cat", "dog"])
    assert key != check_memo.test_set_key([b, a], (32, 32), ["cat", "dog"])
    assert key != check_memo.test_set_key([a, b], (32, 48), ["cat", "dog"])
    assert key != check_memo.test_set_key([a, b], (32, 32), ["dog", "cat"])
    assert key != check_memo.test_set_key([a], (32, 32), ["cat", "dog"])


def test_an_entry_is_found_only_under_its_own_key_and_count(tmp_path):
    memo = check_memo.CheckMemo(str(tmp_path))
    key = memo.key("f" * 64, "frozen graph|tensorflow 2.21.0", "t" * 64)
    assert key != memo.key("f" * 64, "frozen graph|tensorflow 2.22.0", "t" * 64)
    assert memo.lookup(key, 3) is None
    memo.store(key, [0, 2, 1], 4.5, 32)
    assert memo.lookup(key, 3) == ([0, 2, 1], 4.5, 32)
    assert memo.lookup(key, 4) is None  # another test set size: run again
    assert check_memo.CheckMemo(None).lookup(key, 3) is None


def test_a_damaged_or_hostile_entry_is_ignored(tmp_path, caplog):
    memo = check_memo.CheckMemo(str(tmp_path))
    key = "k" * 64
    path = tmp_path / "checks" / (key + ".json")
    path.parent.mkdir()
    for text in ("{not json", '{"predicted": [0, 1]}', b"\xff\xfe",
                 '{"predicted": [0, 1], "latency_ms": NaN, "images_per_call": 1}',
                 '{"predicted": ["x", 1], "latency_ms": 1, "images_per_call": 1}'):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert memo.lookup(key, 2) is None, text
    path.unlink()
    os.mkfifo(path)
    assert memo.lookup(key, 2) is None  # not waited on
    path.unlink()
    path.write_bytes(b"[" + b"0," * (memo_lib.MAX_ENTRY_BYTES // 2) + b"0]")
    assert memo.lookup(key, 2) is None  # over the size cap, not read whole
