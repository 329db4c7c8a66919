"""python -m bottleneck --runner: the cache fill as a Beam pipeline (bottleneck/beam_fill.py).

Offline: only the in-process runner and the multi-process direct runner run here;
Dataflow options are parsed and validated without running.
"""

import glob
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from helpers import ROOT, dataset_with_copies, make_dataset, run_command, run_script

from retrain_suite import command_config, config, preparation
from retrain_suite import dataset as dataset_lib
from retrain_suite.bottleneck import beam_fill, beam_lists, compute, packed_store
from retrain_suite.cli import bottleneck as bottleneck_cli

COUNTS_LINE = re.compile(r"Bottlenecks: \d+ images.*$", re.MULTILINE)


def image_paths(image_dir):
    dataset = dataset_lib.build_dataset(image_dir, 0, 0)
    return [dataset.full_path(image) for image in dataset.images]


def zero_ended(data):
    """data with bytes after the image's end (which decoders ignore) that make its SHA-1
    end in a zero byte: numpy's S20 keys drop it (see shard_format.key_hex)."""
    tail = next(b"\0tail %d" % n for n in range(100_000)
                if hashlib.sha1(data + b"\0tail %d" % n).digest()[-1] == 0)
    return data + tail


def with_copy_and_damage(root):
    """A 3-class dataset (24 images), plus a copy, a damaged JPEG, an empty file and a
    variant of a JPEG whose SHA-1 ends in a zero byte."""
    image_dir = make_dataset(root, per_class=8)
    with open(os.path.join(image_dir, "red", "img0.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(image_dir, "green", "zero_ended.jpg"), "wb") as f:
        f.write(zero_ended(data))
    with open(os.path.join(image_dir, "blue", "copy.jpg"), "wb") as f:
        f.write(data)
    with open(os.path.join(image_dir, "green", "cut.jpg"), "wb") as f:
        f.write(data[:len(data) // 2])  # a valid header, half the scan: decoding fails
    open(os.path.join(image_dir, "green", "empty.png"), "wb").close()
    return image_dir


def stored(bottleneck_dir, identity):
    """{content: vector} of the store, and its count of records (duplicates included)."""
    index = packed_store.PackedStore(bottleneck_dir, identity).index()
    _, positions = index.entries()
    return dict(zip(index.contents(), index.read(positions))), index.total_records


def reference(paths, module, bottleneck_dir, batch_size):
    """compute_bottlenecks' {content: vector} and counts line for paths."""
    result = compute.compute_bottlenecks(paths, module, bottleneck_dir, batch_size=batch_size)
    vectors = {c: v for i, (c, v) in enumerate(zip(result.contents, result.vectors))
               if c is not None and i not in result.skipped}
    return vectors, result.counts.line()


def fill(image_dir, module, bottleneck_dir, batch_size, split_lists=None, args=()):
    runner, options = beam_fill.runner_and_options("FnApiRunner", list(args))
    spec = beam_fill.Fill(image_dir, module, bottleneck_dir, batch_size=batch_size,
                          split_lists=split_lists)
    return beam_fill.fill_store(spec, runner, options), beam_fill.store_identity(spec)


def test_in_process_runner_stores_the_vectors_compute_bottlenecks_computes(tmp_path, tiny_module):
    image_dir = with_copy_and_damage(tmp_path / "data")
    want, line = reference(image_paths(image_dir), tiny_module, str(tmp_path / "ref"), 4)
    bottleneck_dir = str(tmp_path / "store")
    counts, identity = fill(image_dir, tiny_module, bottleneck_dir, 4)
    assert counts.line() == line  # 28 images, 27 distinct (1 copy): 25 computed, 2 skipped
    assert counts.images == 28 and counts.computed == 25 and counts.skipped == 2
    got, records = stored(bottleneck_dir, identity)
    assert records == 25 and set(got) == set(want)
    assert any(content.endswith("00") for content in want)  # the zero-ended one
    for content, vector in want.items():
        assert np.array_equal(got[content], vector), content  # bit-identical
    again, _ = fill(image_dir, tiny_module, bottleneck_dir, 4)
    assert (again.computed, again.cached, again.skipped) == (0, 25, 2)
    assert stored(bottleneck_dir, identity)[1] == 25  # nothing written twice
    # The in-process fill finds every vector the Beam fill stored, the zero-ended one too.
    reread = compute.compute_bottlenecks(image_paths(image_dir), tiny_module, bottleneck_dir)
    assert (reread.computed, reread.reused) == (0, 26)


@pytest.mark.parametrize("split_by", ["path", "content"])
def test_split_lists_and_copies_report_equal_the_in_process_ones(tmp_path, tiny_module, split_by):
    image_dir, _ = dataset_with_copies(tmp_path / "data", 30, 30)
    lists = beam_lists.SplitLists(str(tmp_path / "lists"), 30, 30, split_by)
    fill(image_dir, tiny_module, str(tmp_path / "store"), 8, lists)
    lines = []
    for path in glob.glob(str(tmp_path / "lists" / "split-*-of-*.tsv")):
        with open(path, encoding="utf-8") as f:
            lines += f.read().splitlines()
    dataset = dataset_lib.build_dataset(image_dir, 30, 30, split_by=split_by)
    assert sorted(lines) == sorted(f"{i.split}\t{i.label}\t{i.path}" for i in dataset.images)
    with open(tmp_path / "lists" / "copies.txt", encoding="utf-8") as f:
        report = f.read().rstrip("\n")
    copies = dataset_lib.find_copies(dataset.images, preparation.content_hashes(dataset))
    assert report == dataset_lib.format_copies(copies)
    assert "more than one class" in report
    assert ("across sets" in report) == (split_by == "path")  # by content: one set
    with pytest.raises(beam_lists.output_paths.PathError, match="earlier run"):
        beam_lists.check_folder(lists.folder)


def test_copies_report_names_the_same_groups_when_there_are_many(tmp_path):
    images = [dataset_lib.Image(f"{label}/{n}.jpg", label, 0, "training")
              for n in range(8) for label in ("a", "b")]
    groups = [tuple(sorted(images[2 * n:2 * n + 2], key=lambda i: (i.label, i.path)))
              for n in range(8)] + [(dataset_lib.Image("c/x.jpg", "c", 0, "testing"),)]
    combine = beam_lists.CopiesReport()
    halves = [combine.create_accumulator(), combine.create_accumulator()]
    for n, group in enumerate(reversed(groups)):
        halves[n % 2] = combine.add_input(halves[n % 2], group)
    report = combine.extract_output(combine.merge_accumulators(halves))
    contents = [str(n // 2) for n in range(16)] + ["single"]
    every = [i for group in groups for i in group]
    assert report == dataset_lib.format_copies(dataset_lib.find_copies(every, contents))
    assert "... and 3 more" in report


@pytest.mark.slow
def test_multi_process_runner_with_two_workers_stores_the_same_vectors(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    want, line = reference(image_paths(image_dir), tiny_module, str(tmp_path / "ref"), 4)
    bottleneck_dir = str(tmp_path / "store")
    process = run_script(
        "-m", "bottleneck", f"--image_dir={image_dir}", f"--bottleneck_dir={bottleneck_dir}",
        f"--tfhub_module={tiny_module}", "--batch_size", "4", "--runner=DirectRunner",
        "--direct_running_mode=multi_processing", "--direct_num_workers", "2")
    assert process.returncode == 0, process.stderr[-3000:]
    assert COUNTS_LINE.search(process.stderr).group(0).strip() == line
    workers = set(re.findall(r"Worker process (\d+): module ready", process.stderr))
    assert len(workers) == 2, process.stderr[-3000:]
    assert len(manifests(bottleneck_dir)) >= 2  # each worker wrote its own shards
    spec = beam_fill.Fill(image_dir, tiny_module, bottleneck_dir)
    got, records = stored(bottleneck_dir, beam_fill.store_identity(spec))
    assert records == 30 and set(got) == set(want)
    assert all(np.array_equal(got[c], v) for c, v in want.items())


def manifests(bottleneck_dir):
    return glob.glob(os.path.join(bottleneck_dir, "*", "packed", "*.manifest.json"))


@pytest.mark.slow
def test_a_fill_killed_halfway_and_run_again_computes_only_what_is_missing(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=40)  # 120 images, ~2 s of shards
    bottleneck_dir = str(tmp_path / "store")
    args = [sys.executable, "-m", "bottleneck", f"--image_dir={image_dir}",
            f"--bottleneck_dir={bottleneck_dir}", f"--tfhub_module={tiny_module}",
            "--batch_size=1", "--shard_entries=1", "--runner=FnApiRunner"]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(manifests(bottleneck_dir)) < 10 and process.poll() is None:
            assert time.monotonic() < deadline, "no shard was committed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    spec = beam_fill.Fill(image_dir, tiny_module, bottleneck_dir)
    identity = beam_fill.store_identity(spec)
    before, _ = stored(bottleneck_dir, identity)
    assert 10 <= len(before) < 120, "the kill was not halfway"
    rerun = run_command(*args[1:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (f"120 images, 120 distinct (0 copies): {120 - len(before)} computed, "
            f"{len(before)} from the cache, 0 skipped") in rerun.stderr
    after, records = stored(bottleneck_dir, identity)
    assert records == 120 and set(before) <= set(after)  # nothing lost or doubled
    assert all(np.array_equal(after[c], v) for c, v in before.items())


@pytest.mark.slow
def test_two_fills_at_once_leave_every_vector_once_readable(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=10)
    want, _ = reference(image_paths(image_dir), tiny_module, str(tmp_path / "ref"), 4)
    bottleneck_dir = str(tmp_path / "store")
    args = [sys.executable, "-m", "bottleneck", f"--image_dir={image_dir}",
            f"--bottleneck_dir={bottleneck_dir}", f"--tfhub_module={tiny_module}",
            "--batch_size=4", "--shard_entries=3", "--runner=FnApiRunner"]
    both = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in both]
    for process, (_, stderr) in zip(both, outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert "Bottlenecks: 30 images, 30 distinct" in stderr
    spec = beam_fill.Fill(image_dir, tiny_module, bottleneck_dir)
    got, records = stored(bottleneck_dir, beam_fill.store_identity(spec))
    assert set(got) == set(want) and 30 <= records <= 60  # a key twice is harmless
    assert all(np.array_equal(got[c], v) for c, v in want.items())


def test_dataflow_options_are_validated_without_running():
    good = ["--project=my-project-123", "--region=us-central1",
            "--temp_location=gs://my-bucket/tmp", "--num_workers", "4",
            "--setup_file=./setup.py", "--job_name=fill-bottlenecks"]
    runner, options = beam_fill.runner_and_options("DataflowRunner", good)
    assert type(runner).__name__ == "DataflowRunner"
    assert options.get_all_options()["project"] == "my-project-123"
    assert options.get_all_options()["num_workers"] == 4
    with pytest.raises(beam_fill.PipelineError, match="Missing required option: project"):
        beam_fill.runner_and_options("DataflowRunner", good[1:])
    with pytest.raises(beam_fill.PipelineError, match="unknown option --bogus=1"):
        beam_fill.runner_and_options("FnApiRunner", ["--bogus=1"])
    with pytest.raises(beam_fill.PipelineError, match="bad pipeline option.*num_workers"):
        beam_fill.runner_and_options("FnApiRunner", ["--num_workers=many"])
    with pytest.raises(beam_fill.PipelineError, match="--runner=Nope is not a Beam runner"):
        beam_fill.runner_and_options("Nope", [])


def test_the_command_line_is_split_between_the_command_and_beam():
    values = flags.FlagValues()
    flags.DEFINE_string("image_dir", None, "", flag_values=values)
    flags.DEFINE_integer("batch_size", None, "", flag_values=values)
    flags.DEFINE_bool("mixed_precision", False, "", flag_values=values)
    flags.DEFINE_string("runner", None, "", flag_values=values)
    ours, beams = bottleneck_cli.pipeline_args_of(
        ["--image_dir", "d", "--project", "p", "--nomixed_precision", "--runner=DataflowRunner",
         "--batch_size", "8", "--save_main_session", "--num_workers=3"], values)
    assert ours == ["--image_dir", "d", "--nomixed_precision", "--runner=DataflowRunner",
                    "--batch_size", "8"]
    assert beams == ["--project", "p", "--save_main_session", "--num_workers=3"]
    assert bottleneck_cli.runner_asked(["--image_dir=d", "--runner", "FnApiRunner"])
    assert not bottleneck_cli.runner_asked(["--image_dir=d", "--", "--runner=x"])


@pytest.mark.parametrize("flag, message", [
    ("shard_entries", "add --runner"), ("split_lists_dir", "add --runner"),
])
def test_beam_flags_without_a_runner_are_refused(flag, message):
    settings = command_config.BottleneckConfig(image_dir="d", **{flag: 4 if flag == "shard_entries" else "x"})
    with pytest.raises(config.UsageError, match=message):
        settings.validate()
    orphan = command_config.BottleneckConfig(image_dir="d", runner="FnApiRunner",
                                             testing_percentage=20)
    with pytest.raises(config.UsageError, match="add --split_lists_dir"):
        orphan.validate()


def test_bad_runner_is_one_error_line(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    process = run_command("-m", "bottleneck", f"--image_dir={image_dir}",
                          f"--bottleneck_dir={tmp_path / 'store'}", f"--tfhub_module={tiny_module}",
                          "--runner=NoSuchRunner", "--project", "p")
    assert process.returncode == 1
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --runner=NoSuchRunner is not a Beam runner"), process.stderr
    assert "Traceback" not in process.stderr


def test_without_beam_the_runner_flag_says_how_to_install_it(tmp_path, tiny_module):
    shim = tmp_path / "shim"
    shim.mkdir()
    # Hides apache_beam as a core install (without the [beam] extra) would lack it.
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoBeam:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'apache_beam':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoBeam())\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), ROOT]))
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    process = run_script("-m", "bottleneck", f"--image_dir={image_dir}",
                         f"--bottleneck_dir={tmp_path / 'store'}", f"--tfhub_module={tiny_module}",
                         "--runner=FnApiRunner", env=env)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == bottleneck_cli.BEAM_MISSING
    assert "Traceback" not in process.stderr
