"""bench/run.py runs end to end and prints every row; timings are never asserted."""

import importlib
import os
import re

import numpy as np
import pytest
from helpers import ROOT, run_script

from retrain_suite.bottleneck import module as module_lib
from retrain_suite.bottleneck import packed_store


def expected_rows():
    """The rows this machine's run prints: figure 2 has two rows only where mixed precision runs."""
    try:
        module_lib.mixed_precision_type()
        mixed = ("2a.", "2b.")
    except module_lib.ModuleError:
        mixed = ("2.",)
    return ("1a.", "1b.", *mixed, "3.", "4.", "4b.", "5a.", "5b.", "6.", "7.", "8.", "9.", "10.",
            "11.", "12a.", "12b.")


@pytest.mark.slow
def test_benchmark_prints_a_table_with_every_figure(tmp_path):
    process = run_script(
        "bench/run.py", "--module=tiny", "--images=16", "--batch_size=4",
        "--limit_batch_sizes=4,8", "--steps=50", "--classic_steps=5", "--warm_images=60",
        "--label_images=8", "--rss_counts=8,16", "--fine_tune_steps=2", "--fine_tune_batch=4",
        "--classifier_module=tiny", "--packed_entries=50", "--beam_rounds=1",
        f"--work_dir={tmp_path}", check=True,
    )
    lines = process.stdout.splitlines()
    assert "| figure | ours | yardstick | ratio | target | met? |" in lines
    table = [line for line in lines if line.startswith("| ")]
    rows = expected_rows()
    for row in rows:
        assert any(line.startswith(f"| {row} ") for line in table), row
    assert len(table) == 1 + len(rows)  # the header, then one row per figure
    # The classic method's row says where its time goes.
    classic = next(line for line in table if line.startswith("| 1b."))
    assert re.search(r"per image: decode \d+ ms, module \d+ ms, text \d+ ms", classic), classic
    # Rows 1a and 1b are each figure's best of three rounds (the default).
    assert "best of 3 rounds" in classic
    assert "Round 3 of 3: limit " in process.stderr
    assert any(line.startswith("Machine: ") and "TensorFlow" in line for line in lines)
    # The whole-command rows give the serial limit's parts and the largest phases.
    classifier = next(line for line in table if line.startswith("| 10."))
    assert re.search(r"\| [\d.]+ s \(largest phases: [^|]+ s\) \| [\d.]+ s \(decode "
                     r"[\d.]+ s \+ forward [\d.]+ s \+ [\d.]+ s of training steps\) \| [\d.]+x \| "
                     r"<= 1.50x \|", classifier), classifier
    rerun = next(line for line in table if line.startswith("| 4b."))
    assert re.search(r"\(start-up [\d.]+ s \+ training [\d.]+ s\) \| [\d.]+x \| <= 1.50x", rerun), rerun


def test_benchmark_rejects_an_unknown_figure_in_one_line():
    process = run_script("bench/run.py", "--figures=bottlenecks,speed")
    assert process.returncode != 0
    assert "--figures: unknown speed" in process.stderr


# Runs bench/run.py as a script with mixed_precision_type answering as it does on
# a CPU without bfloat16 instructions.
WITHOUT_BFLOAT16 = """
import runpy, sys
sys.path[:0] = [{root!r} + "/bench", {root!r}]  # as `python bench/run.py` has them
from retrain_suite.bottleneck import module

def no_bfloat16():
    raise module.ModuleError("--mixed_precision needs a GPU or a CPU with bfloat16 (faked)")

module.mixed_precision_type = no_bfloat16
sys.argv = ["bench/run.py", *{args!r}]
runpy.run_path("bench/run.py", run_name="__main__")
"""


def test_benchmark_without_bfloat16_prints_one_not_available_row(tmp_path):
    args = ["--figures=mixed_precision", "--module=tiny", "--images=8", "--batch_size=4",
            f"--work_dir={tmp_path}"]
    process = run_script("-c", WITHOUT_BFLOAT16.format(root=ROOT, args=args), check=True)
    table = [line for line in process.stdout.splitlines() if line.startswith("| ")]
    assert table[1:] == [
        "| 2. --mixed_precision | not available: --mixed_precision needs a GPU or a CPU with "
        "bfloat16 (faked) |  |  | >= 1.50x | n/a |"
    ]


def test_mixed_precision_type_follows_the_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(module_lib.tf.config, "list_physical_devices", lambda kind=None: [])
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert "avx512f" in module_lib.cpu_flags(str(cpuinfo))
    read_flags = module_lib.cpu_flags
    monkeypatch.setattr(module_lib, "cpu_flags", lambda: read_flags(str(cpuinfo)))
    with pytest.raises(module_lib.ModuleError, match="run without --mixed_precision"):
        module_lib.mixed_precision_type()
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert module_lib.mixed_precision_type() == "bfloat16"
    monkeypatch.setattr(module_lib.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert module_lib.mixed_precision_type() == "float16"


def test_beam_figure_compares_a_store_whose_key_ends_in_a_zero_byte_as_identical(
        tmp_path, monkeypatch):
    # One of the 160 photos of rows 12a and 12b has a SHA-1 ending in a zero byte; read back
    # with key.hex() from numpy's S20 keys it lost that byte, and the rows said "differ".
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    beam_figure = importlib.import_module("beam_figure")
    identity = packed_store.StoreIdentity("tiny_0123_8x8_float32_p3_e2", "/modules/tiny", 8, 8,
                                          "float32", 4)
    contents = ["12" * 20, "ab" * 19 + "00", "cd" * 18 + "0000"]
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    packed_store.PackedStore(str(tmp_path), identity).write_shard(contents, vectors)
    reference = dict(zip(contents, vectors))
    got = beam_figure.stored(str(tmp_path), identity)
    assert beam_figure.compare(got, reference) == (
        True, "identical: 3 vectors, 0 missing [], 0 extra [], 0 differ [], largest difference 0")
    reference["12" * 20] = np.nextafter(vectors[0], np.float32(9))  # one last bit
    same, line = beam_figure.compare(got, {**reference, "ef" * 20: vectors[0]})
    assert not same and line.startswith(f"DIFFER: 4 vectors, 1 missing ['{'ef' * 20}'], 0 extra")
    assert f"1 differ ['{'12' * 20}'], largest difference 2.98e-08" in line


@pytest.mark.slow
def test_streaming_benchmark_prints_both_rows_and_leaves_no_store_behind(tmp_path):
    """bench/streaming.py without --work_dir writes its stores (1.4 GB at the default
    sizes) in a temporary folder, removed at the end."""
    process = run_script(
        "bench/streaming.py", "--speed_count=3000", "--speed_dimension=64", "--steps=50",
        "--rounds=1", "--rss_steps=20", "--rss_counts=2000,3000", check=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert re.search(r"^S1\. training steps/s streaming vs in memory", process.stdout, re.M)
    assert re.search(r"^S2\. peak RSS of training streaming 3000 vs 2000", process.stdout, re.M)
    assert os.listdir(tmp_path) == []


def test_benchmark_photos_written_before_are_reused_only_while_unchanged(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    photos = importlib.import_module("photos")
    folder = str(tmp_path / "photos")
    assert photos.written_photos(folder, 5) is None  # nothing written yet
    paths = photos.write_photos(folder, 5)
    assert photos.written_photos(folder, 5) == paths
    assert photos.written_photos(folder, 6) is None and photos.written_photos(folder, 5, 1) is None
    with open(paths[2], "ab") as f:  # one photo changed since
        f.write(b"\0")
    assert photos.written_photos(folder, 5) is None
    os.remove(paths[2])
    assert photos.written_photos(folder, 5) is None
    # Fewer photos written where more were: the extra ones would be trained on too, so
    # the folder is not reused ...
    photos.write_photos(folder, 6)
    assert len(photos.write_photos(folder, 3)) == 3
    assert photos.written_photos(folder, 3) is None
    # ... and the benchmark clears what it wrote (as its manifest lists) before writing.
    photos.clear_written(str(tmp_path / "other"))  # nothing there: nothing to do
    six = str(tmp_path / "six")
    photos.write_photos(six, 6)
    photos.clear_written(six)
    assert not [n for _, _, names in os.walk(six) for n in names]
    three = photos.write_photos(six, 3)
    assert photos.written_photos(six, 3) == three
    # A file it did not write is never removed: it refuses instead.
    mine = os.path.join(six, "class0", "my_photo.jpg")
    with open(mine, "wb") as f:
        f.write(b"mine")
    with pytest.raises(RuntimeError, match="did not write"):
        photos.clear_written(six)
    with open(mine, "rb") as f:
        assert f.read() == b"mine"
    # A manifest that is a FIFO, or not the JSON written, is no manifest (and not waited on).
    fifo = str(tmp_path / "fifo")
    photos.write_photos(fifo, 2)
    os.remove(os.path.join(fifo, photos.MANIFEST))
    os.mkfifo(os.path.join(fifo, photos.MANIFEST))
    assert photos.written_photos(fifo, 2) is None
    with pytest.raises(RuntimeError):  # the photos are not known as its own: left alone
        photos.clear_written(fifo)
    with open(os.path.join(six, photos.MANIFEST), "w") as f:
        f.write('["not", "a", "manifest"]')
    assert photos.written_photos(six, 3) is None
