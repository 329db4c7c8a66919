"""bench/run.py runs end to end and prints every row; timings are never asserted."""

import re

import pytest
from conftest import run_script

ROWS = ("1a.", "1b.", "2a.", "2b.", "3.", "4.", "5a.", "5b.", "6.", "7.", "8.")


@pytest.mark.slow
def test_benchmark_prints_a_table_with_every_figure(tmp_path):
    process = run_script(
        "bench/run.py", "--module=tiny", "--images=16", "--batch_size=4",
        "--limit_batch_sizes=4,8", "--steps=50", "--classic_steps=5", "--warm_images=60",
        "--label_images=8", "--rss_counts=8,16", f"--work_dir={tmp_path}", check=True,
    )
    lines = process.stdout.splitlines()
    assert "| figure | ours | yardstick | ratio | target | met? |" in lines
    table = [line for line in lines if line.startswith("| ")]
    for row in ROWS:
        assert any(line.startswith(f"| {row}") for line in table), row
    assert len(table) == 1 + len(ROWS)  # the header, then one row per figure
    # The classic method's row says where its time goes.
    classic = next(line for line in table if line.startswith("| 1b."))
    assert re.search(r"per image: decode \d+ ms, module \d+ ms, text \d+ ms", classic), classic
    assert any(line.startswith("Machine: ") and "TensorFlow" in line for line in lines)


def test_benchmark_rejects_an_unknown_figure_in_one_line():
    process = run_script("bench/run.py", "--figures=bottlenecks,speed")
    assert process.returncode != 0
    assert "--figures: unknown speed" in process.stderr
