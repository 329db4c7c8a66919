"""python -m bottleneck: filling the cache from the command line."""

import re

from helpers import run_command


def test_cli_computes_then_reuses_all_bottlenecks(tmp_path, tiny_module, dataset_dir):
    args = ["-m", "bottleneck", f"--image_dir={dataset_dir}",
            f"--bottleneck_dir={tmp_path / 'bottlenecks'}", f"--tfhub_module={tiny_module}"]
    first = run_command(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"Bottlenecks: 36 images, 36 distinct \(0 copies\): 36 computed, 0 from the cache, "
                     r"0 skipped \(unreadable or too large\)\s*$",
                     first.stdout + first.stderr, re.MULTILINE), first.stderr[-3000:]
    second = run_command(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"Bottlenecks: 36 images, 36 distinct \(0 copies\): 0 computed, 36 from the cache, "
                     r"0 skipped \(unreadable or too large\)\s*$",
                     second.stdout + second.stderr, re.MULTILINE), second.stderr[-3000:]
