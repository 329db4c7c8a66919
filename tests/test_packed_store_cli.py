"""--bottleneck_store=packed and --compact from the command lines (python -m bottleneck,
retrain.py)."""

import json
import os
import re
import shutil

import numpy as np
from helpers import make_dataset, run_command

from retrain_suite import command_config
from retrain_suite.cli import bottleneck as bottleneck_cli

COUNTS = re.compile(r"Bottlenecks: (\d+) images, (\d+) distinct \(\d+ cop(?:y|ies)\): (\d+) computed, "
                    r"(\d+) from the cache, (\d+) skipped \(unreadable or too large\)\s*$",
                    re.MULTILINE)


def counts(process):
    """(images, computed, from the cache) of the run's counts line."""
    assert process.returncode == 0, process.stderr[-3000:]
    found = COUNTS.findall(process.stdout + process.stderr)
    assert len(found) == 1, process.stderr[-3000:]
    images, _, computed, cached, _ = map(int, found[0])
    return images, computed, cached


def filled_here(caplog, image_dir, bottleneck_dir, module, store="packed"):
    """(images, computed, from the cache) of the bottleneck command's fill run in this
    process (a fresh Python per run would add a TensorFlow import; the command itself
    runs in the tests below), and the log it wrote."""
    caplog.clear()
    bottleneck_cli.fill(command_config.BottleneckConfig(
        image_dir=str(image_dir), bottleneck_dir=str(bottleneck_dir), tfhub_module=module,
        bottleneck_store=store), "float32")
    found = COUNTS.findall(caplog.text)
    assert len(found) == 1, caplog.text[-3000:]
    images, _, computed, cached, _ = map(int, found[0])
    return (images, computed, cached), caplog.text


def packed_folder(bottleneck_dir):
    (key,) = [n for n in os.listdir(bottleneck_dir) if n not in ("modules", "checks", "exports")]
    return os.path.join(bottleneck_dir, key, "packed")


def shards(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".shard"))


def vectors_by_key(folder):
    """{key bytes: vector bytes} of every record of every committed shard, read with
    nothing but the documented format (what another tool would do)."""
    held = {}
    for name in os.listdir(folder):
        if not name.endswith(".manifest.json"):
            continue
        manifest = json.load(open(os.path.join(folder, name), encoding="utf-8"))
        if not os.path.exists(os.path.join(folder, manifest["shard"])):
            continue  # its shard was lost
        data = open(os.path.join(folder, manifest["shard"]), "rb").read()
        assert len(data) == manifest["bytes"]
        dimension = manifest["dimension"]
        records = np.frombuffer(data, [("key", "V20"), ("vector", "<f4", (dimension,)),
                                       ("crc", "<u4")], offset=32)
        for record in records:
            held[bytes(record["key"])] = record["vector"].tobytes()
    return held


def test_bottleneck_command_packed_reruns_compute_only_what_is_missing_and_compacts(
        tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=4)  # 3 classes, 12 images
    part = tmp_path / "part"
    shutil.copytree(image_dir, part)
    shutil.rmtree(part / sorted(os.listdir(part))[0])  # 8 of the 12
    bottleneck_dir = tmp_path / "bottlenecks"
    common = ["-m", "bottleneck", f"--bottleneck_dir={bottleneck_dir}",
              f"--tfhub_module={tiny_module}", "--bottleneck_store=packed"]
    assert counts(run_command(*common, f"--image_dir={part}")) == (8, 8, 0)
    folder = packed_folder(bottleneck_dir)
    (first,) = shards(folder)
    # The reruns are the command's fill in this process.
    assert filled_here(caplog, image_dir, bottleneck_dir, tiny_module)[0] == (12, 4, 8)
    assert len(shards(folder)) == 2
    assert filled_here(caplog, image_dir, bottleneck_dir, tiny_module)[0] == (12, 0, 12)
    assert not [n for _, _, names in os.walk(bottleneck_dir) for n in names if n.endswith(".f32")]
    held = vectors_by_key(folder)
    assert len(held) == 12

    os.remove(os.path.join(folder, first))  # a lost shard: only its images are recomputed
    rerun, log = filled_here(caplog, image_dir, bottleneck_dir, tiny_module)
    assert rerun == (12, 8, 4)
    assert "its shard file is missing" in log
    assert len(shards(folder)) == 2  # the 4 kept, the 8 again

    # Compaction needs no --image_dir; it keeps every vector, bit for bit.
    compacted = run_command(*common, "--compact")
    assert compacted.returncode == 0, compacted.stderr[-3000:]
    assert "Compacted the packed store: 2 shards -> 1" in compacted.stderr
    assert len(shards(folder)) == 1
    assert vectors_by_key(folder) == held
    assert filled_here(caplog, image_dir, bottleneck_dir, tiny_module)[0] == (12, 0, 12)


def test_bottleneck_command_refuses_a_bad_store_and_a_missing_image_dir(tmp_path, tiny_module):
    bad = run_command("-m", "bottleneck", f"--image_dir={tmp_path}", "--bottleneck_store=zip")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: flag --bottleneck_store=zip: value should be one of <files|packed>")
    alone = run_command("-m", "bottleneck", f"--bottleneck_dir={tmp_path / 'b'}")
    assert alone.returncode != 0
    assert alone.stderr.strip().splitlines()[-1].startswith(
        "error: --image_dir is required") and "--compact" in alone.stderr


def test_retrain_writes_the_packed_store_and_the_fill_reads_it(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=6)
    bottleneck_dir = tmp_path / "bottlenecks"
    trained = run_command(
        "retrain.py", f"--image_dir={image_dir}", f"--bottleneck_dir={bottleneck_dir}",
        f"--tfhub_module={tiny_module}", "--bottleneck_store=packed",
        "--how_many_training_steps=20", "--learning_rate=0.1", "--random_seed=1",
        f"--output_graph={tmp_path / 'out' / 'g.pb'}",
        f"--output_labels={tmp_path / 'out' / 'l.txt'}",
        f"--checkpoint_path={tmp_path / 'out' / 'ckpt'}",
        f"--summaries_dir={tmp_path / 'logs'}", "--report_dir=",
        f"--intermediate_output_graphs_dir={tmp_path / 'intermediate'}",
    )
    assert counts(trained) == (18, 18, 0)
    assert os.path.exists(tmp_path / "out" / "g.pb")
    assert len(vectors_by_key(packed_folder(bottleneck_dir))) == 18
    assert not [n for _, _, names in os.walk(bottleneck_dir) for n in names if n.endswith(".f32")]
    # The bottleneck command's fill (in this process) with the files store reads both.
    assert filled_here(caplog, image_dir, bottleneck_dir, tiny_module, "files")[0] == (18, 0, 18)
