"""Running the suite's own command lines in a fresh Python, timed, with their peak memory."""

import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(args, what):
    """Run a script of the suite in a fresh Python. -> (seconds, output).

    What the benchmark wrote before (photos, caches: hundreds of MB) is flushed to disk
    first: the kernel's write-back would otherwise run beside the command and be
    counted as its time (a 1,000-photo first run measured 26.8 s right after its photos
    were written, against 19.8 s on the same photos written long before)."""
    os.sync()
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    seconds = time.monotonic() - start
    output = process.stdout.decode("utf-8", "replace")
    if process.returncode:
        raise RuntimeError(f"{what} failed ({process.returncode}):\n{output[-3000:]}")
    return seconds, output


# A child's ru_maxrss (getrusage, wait4) starts from its parent's peak RSS at the
# fork, which here is this whole benchmark's. The kernel's VmHWM of the child's
# own address space, read as it exits, is the child's own peak.
PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as f:
        peak = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
    print("peak_rss_kib", peak, file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def peak_rss_of_module(module, args, what):
    """Run `python -m module args` in a fresh Python. -> its peak RSS in MiB."""
    _, output = run_command(["-c", PEAK_RSS_WRAPPER, module, *args], what)
    match = re.search(r"peak_rss_kib (\d+)", output)
    if not match:
        raise RuntimeError(f"{what} reported no peak RSS:\n{output[-2000:]}")
    return int(match.group(1)) / 1024.0


def retrain_command(image_dir, handle, bottleneck_dir, out, steps, *extra):
    return [
        "retrain.py",
        f"--image_dir={image_dir}",
        f"--tfhub_module={handle}",
        f"--bottleneck_dir={bottleneck_dir}",
        f"--how_many_training_steps={steps}",
        f"--output_graph={out}/graph.pb",
        f"--output_labels={out}/labels.txt",
        f"--summaries_dir={out}/logs",
        f"--checkpoint_path={out}/checkpoint",
        f"--report_dir={out}/report",
        "--random_seed=1",
        *extra,
    ]


def computed_none(output):
    """Whether a run's bottleneck counts line says nothing was computed."""
    counts = re.findall(r"Bottlenecks: \d+ images, .*: (\d+) computed, ", output)
    if not counts:
        raise RuntimeError("The run printed no bottleneck counts line:\n" + output[-2000:])
    return all(count == "0" for count in counts)


def test_accuracy(output):
    match = re.search(r"Final test accuracy = ([0-9.]+)% \(N=(\d+)\)", output)
    if not match:
        raise RuntimeError("retrain.py printed no final test accuracy:\n" + output[-2000:])
    return float(match.group(1)), int(match.group(2))
