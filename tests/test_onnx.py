"""ONNX export (--onnx_output_file): the frozen graph's probabilities from onnxruntime, the
labels and facts in the metadata, its row in the exported-files check, label_image on a
.onnx, the refusal without the [onnx] extra, and hostile paths, files and modules."""

import json
import os

import helpers
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
import tf2onnx
from absl import logging
from helpers import load_graph_def, make_dataset, retrain_settings, run_command, run_script

from retrain_suite import artifact_check, classifier, job, onnx_export, onnx_model, output_paths
from retrain_suite import config as config_lib
from retrain_suite.bottleneck import make_module
from retrain_suite.images import pipelines as image_pipelines

REFUSAL = "error: --onnx_output_file needs tf2onnx and onnxruntime: pip install -e '.[onnx]'"


@pytest.fixture(scope="module")
def onnx_run(tmp_path_factory, tiny_module):
    """One `retrain.py` command-line run with the tiny module writing an ONNX file and the
    JSON report, at --logging_verbosity=INFO (its console is what a user sees)."""
    root = tmp_path_factory.mktemp("onnx")
    image_dir = make_dataset(root / "data", per_class=20)
    settings = retrain_settings(
        root, image_dir, tiny_module, validation_percentage=15, testing_percentage=25,
        onnx_output_file=str(root / "out" / "model.onnx"),
        eval_report=str(root / "out" / "report.json"),
    )
    args = [f"--{name}={value}" for name, value in settings.items()
            if value is not None and value != ""]
    process = run_script("retrain.py", *args, "--logging_verbosity=INFO", check=True)
    with open(settings["eval_report"]) as f:
        report = json.load(f)
    return {"settings": settings, "root": root, "image_dir": image_dir, "process": process,
            "report": report}


def image_paths(run):
    return sorted(os.path.join(folder, name)
                  for folder, _, names in os.walk(run["image_dir"]) for name in names)


def decoded_images(run):
    """float32 [N, 32, 32, 3] in [0, 1]: every image of the run's folder, decoded as in training."""
    batches = image_pipelines.image_batches(image_paths(run), 32, 32, 64)
    return np.concatenate([images for _, _, images in batches.as_numpy_iterator()])


def session(path):
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def rewritten(run, tmp_path, change, name="changed.onnx"):
    """A copy of the run's ONNX file, parsed, changed by change(onnx.ModelProto) and
    written to tmp_path/name. -> its path."""
    model = onnx.load(run["settings"]["onnx_output_file"])
    change(model)
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_onnx_file_gives_the_frozen_graphs_probabilities_on_the_same_images(onnx_run):
    images = decoded_images(onnx_run)
    model = session(onnx_run["settings"]["onnx_output_file"])
    (given,), (taken,) = model.get_inputs(), model.get_outputs()
    assert (given.name, given.type, given.shape) == ("Placeholder", "tensor(float)", ["N", 32, 32, 3])
    assert (taken.name, taken.type, taken.shape) == ("final_result", "tensor(float)", ["N", 3])
    expected = helpers.graph_probabilities(onnx_run["settings"]["output_graph"], images)
    assert len(images) == 60
    for part in (slice(None), slice(0, 1), slice(5, 12)):  # the batch size is free
        (found,) = model.run(None, {"Placeholder": images[part]})
        np.testing.assert_allclose(found, expected[part], atol=1e-5)


def test_the_labels_and_the_input_contract_are_in_the_metadata(onnx_run):
    settings = onnx_run["settings"]
    model = session(settings["onnx_output_file"]).get_modelmeta()
    found = model.custom_metadata_map
    assert set(found) == set(onnx_export.METADATA_KEYS)
    with open(settings["output_labels"]) as f:
        assert json.loads(found["labels"]) == f.read().splitlines() == ["blue", "green", "red"]
    assert json.loads(found["input_size"]) == [32, 32]
    assert json.loads(found["input_range"]) == [0, 1]
    assert (found["input_name"], found["final_tensor_name"]) == ("Placeholder", "final_result")
    assert found["module"] == "tiny"  # the folder's name, not where it was on this machine
    assert found["producer"].startswith("retrain_suite")
    assert model.producer_name == "tf2onnx" and "3 classes retrained on tiny" in model.description
    opsets = {o.domain: o.version for o in onnx.load(settings["onnx_output_file"]).opset_import}
    assert opsets[""] == onnx_export.OPSET


def test_the_run_logs_one_line_for_the_onnx_file_and_nothing_of_tf2onnx(onnx_run):
    log = onnx_run["process"].stderr
    assert f"Wrote ONNX model {onnx_run['settings']['onnx_output_file']}" in log
    for noise in ("tf2onnx", "Using tensorflow=", "Using opset", "deprecated", "onnxruntime"):
        assert noise not in log
    phases = log[log.index("Time by phase:"):]
    assert "\nONNX " in phases


def test_the_exported_files_check_runs_the_onnx_file_on_every_test_image(onnx_run):
    files = {row["format"]: row for row in onnx_run["report"]["artifacts"]["files"]}
    assert set(files) == {"frozen graph", "ONNX"}
    row, graph = files["ONNX"], files["frozen graph"]
    path = onnx_run["settings"]["onnx_output_file"]
    assert row["path"] == path and row["size_bytes"] == os.path.getsize(path)
    assert row["count"] == graph["count"] == onnx_run["report"]["testing"]["count"]
    assert row["accuracy"] == graph["accuracy"] and row["agreement"] == 1.0
    assert row["images_per_call"] == artifact_check.BATCH_SIZE and row["latency_ms"] > 0
    assert "ONNX " in onnx_run["process"].stderr.split("Exported files on the test set:")[1]


def test_the_exported_files_check_refuses_an_onnx_file_with_other_labels(onnx_run):
    path = onnx_run["settings"]["onnx_output_file"]
    artifact_check.ONNXRunner(path, ["blue", "green", "red"]).close()
    with pytest.raises(classifier.LabelError, match="3 other labels in its metadata, not this run's 3"):
        artifact_check.ONNXRunner(path, ["blue", "red", "green"])


def label_image_json(*args):
    process = run_command("label_image.py", *args, "--output_format=json", check=True)
    assert process.stderr == ""
    return {entry["image"]: {p["label"]: p["score"] for p in entry["predictions"]}
            for entry in json.loads(process.stdout)}


def test_label_image_on_the_onnx_file_prints_what_the_frozen_graph_prints(onnx_run):
    settings = onnx_run["settings"]
    images = image_paths(onnx_run)[::7]
    on_graph = label_image_json(*images, settings["output_graph"], settings["output_labels"])
    from_metadata = label_image_json(*images, settings["onnx_output_file"])
    with_file = label_image_json("--graph", settings["onnx_output_file"],
                                 "--labels", settings["output_labels"], *images)
    assert len(on_graph) == len(images) == 9
    for found in (from_metadata, with_file):
        assert found.keys() == on_graph.keys()
        for image, scores in on_graph.items():
            assert found[image].keys() == scores.keys()
            np.testing.assert_allclose([found[image][k] for k in scores], list(scores.values()),
                                       atol=1e-5)


# `python -c BLOCKER PACKAGE SCRIPT ARG...`: SCRIPT run as a user would, where PACKAGE
# cannot be imported, as if the [onnx] extra were not installed.
BLOCKER = """
import runpy, sys
blocked = sys.argv[1]
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == blocked:
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("blocked", ["tf2onnx", "onnxruntime"])
def test_without_the_extra_the_flag_is_refused_before_any_work(tmp_path, tiny_module, blocked):
    settings = retrain_settings(tmp_path, str(tmp_path / "data"), tiny_module,
                                onnx_output_file=str(tmp_path / "out" / "model.onnx"))
    os.makedirs(tmp_path / "data")  # empty: scanning it would be another error
    args = [f"--{name}={value}" for name, value in settings.items()
            if value is not None and value != ""]
    process = run_script("-c", BLOCKER, blocked, "retrain.py", *args)
    assert process.returncode == 1
    assert process.stderr.strip() == REFUSAL
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no cache, no outputs, no logs


def test_label_image_without_onnxruntime_names_the_extra(onnx_run):
    image = image_paths(onnx_run)[0]
    model = onnx_run["settings"]["onnx_output_file"]
    process = run_script("-c", BLOCKER, "onnxruntime", "label_image.py", image, model)
    assert process.returncode == 1
    assert process.stderr.strip() == (
        f"error: {model} is an ONNX model; running it needs onnxruntime: pip install -e '.[onnx]'")


def path_error(tmp_path, tiny_module, **outputs):
    """The PathError a run with these outputs gets before any work, as a string."""
    image_dir = make_dataset(tmp_path / "data", per_class=2)
    config = config_lib.from_flat(retrain_settings(tmp_path, image_dir, tiny_module, **outputs))
    with pytest.raises(output_paths.PathError) as error:
        job.run_retraining(config)
    assert not os.path.exists(tmp_path / "bottlenecks")
    return str(error.value)


def test_the_onnx_file_may_not_be_another_output(tmp_path, tiny_module):
    graph = str(tmp_path / "out" / "output_graph.pb")
    assert f"--output_graph={graph} is the same as --onnx_output_file={graph}" in path_error(
        tmp_path, tiny_module, onnx_output_file=graph)


def test_the_onnx_file_may_not_be_inside_the_images(tmp_path, tiny_module):
    inside = str(tmp_path / "data" / "red" / "model.onnx")
    assert f"--onnx_output_file={inside} is inside --image_dir=" in path_error(
        tmp_path, tiny_module, onnx_output_file=inside)
    assert not os.path.exists(inside)


def test_the_onnx_file_may_not_be_an_existing_folder(tmp_path, tiny_module):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    assert f"--onnx_output_file={folder} is a folder" in path_error(
        tmp_path, tiny_module, onnx_output_file=str(folder))
    assert os.listdir(folder) == []


def test_a_damaged_onnx_file_is_one_error_line_in_label_image(onnx_run, tmp_path):
    with open(onnx_run["settings"]["onnx_output_file"], "rb") as f:
        data = f.read()
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(data[: len(data) // 2])
    process = run_command("label_image.py", image_paths(onnx_run)[0], str(damaged))
    assert process.returncode == 1
    # protobuf 7 adds ": Wire format was corrupt" to the parser's message; 6 (beside
    # apache-beam) does not.
    line = process.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        f"error: {damaged} is not an image classifier this command can run (not an ONNX "
        "model: Error parsing message with type 'onnx.ModelProto'"), line


def test_an_onnx_model_onnxruntime_refuses_is_one_error_line(onnx_run, tmp_path):
    path = rewritten(onnx_run, tmp_path, lambda m: m.graph.node[0].input.append("nowhere"))
    with pytest.raises(classifier.LabelError, match="onnxruntime cannot load it: ") as error:
        classifier.load_onnx(path)
    assert "\n" not in str(error.value)


def test_an_onnx_model_keeping_weights_in_another_file_is_refused_unopened(onnx_run, tmp_path):
    def weights_elsewhere(model):
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="weights.bin")

    path = rewritten(onnx_run, tmp_path, weights_elsewhere)
    (tmp_path / "weights.bin").mkdir()  # were it opened, a folder would fail differently
    with pytest.raises(classifier.LabelError, match="keeps its data in another file"):
        classifier.load_onnx(path)


def labels_value(model):
    (prop,) = [p for p in model.metadata_props if p.key == "labels"]
    return prop


def test_metadata_labels_that_are_not_utf8_are_refused(onnx_run, tmp_path):
    with open(onnx_run["settings"]["onnx_output_file"], "rb") as f:
        data = f.read()
    assert data.count(b'"green"') == 1
    path = tmp_path / "latin1.onnx"
    path.write_bytes(data.replace(b'"green"', b'"gr\xfcn!"'))  # same length, Latin-1
    with pytest.raises(classifier.LabelError,
                       match=f"Cannot read the labels inside {path}: its metadata 'labels' is not UTF-8"):
        classifier.load_onnx(str(path))


def test_metadata_labels_are_read_up_to_their_bound_and_refused_past_it(onnx_run, monkeypatch):
    path = onnx_run["settings"]["onnx_output_file"]
    size = len(labels_value(onnx.load(path)).value.encode())
    monkeypatch.setattr(onnx_model, "MAX_LABELS_BYTES", size)
    assert classifier.load_onnx(path)[1] == ["blue", "green", "red"]
    monkeypatch.setattr(onnx_model, "MAX_LABELS_BYTES", size - 1)
    with pytest.raises(classifier.LabelError, match=f"is {size:,} bytes, more than the {size - 1:,}"):
        classifier.load_onnx(path)


def test_metadata_labels_that_are_not_a_list_of_names_are_refused(onnx_run, tmp_path):
    path = rewritten(onnx_run, tmp_path, lambda m: setattr(labels_value(m), "value", '{"a": 1}'))
    with pytest.raises(classifier.LabelError, match="not a JSON array of strings"):
        classifier.load_onnx(path)


def test_label_image_on_an_onnx_file_without_labels_asks_for_the_labels_file(onnx_run, tmp_path):
    path = rewritten(onnx_run, tmp_path, lambda m: m.ClearField("metadata_props"), "bare.onnx")
    image = image_paths(onnx_run)[0]
    refused = run_command("label_image.py", image, path)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: {path} holds no labels in its metadata; pass its labels file.")


def test_an_onnx_file_over_the_size_cap_is_refused_unread(onnx_run, monkeypatch):
    path = onnx_run["settings"]["onnx_output_file"]
    size = os.path.getsize(path)
    monkeypatch.setattr(onnx_model, "MAX_ONNX_BYTES", size)
    classifier.load_onnx(path)
    monkeypatch.setattr(onnx_model, "MAX_ONNX_BYTES", size - 1)
    with pytest.raises(classifier.LabelError, match=f"larger than the {size - 1:,} bytes allowed"):
        classifier.load_onnx(path)


def test_a_model_over_the_size_cap_is_not_written(onnx_run, tmp_path, monkeypatch):
    settings = onnx_run["settings"]
    outputs = config_lib.from_flat(dict(settings, onnx_output_file=str(tmp_path / "m.onnx"))).outputs
    graph_def = load_graph_def(settings["output_graph"])

    def export(labels):
        run = helpers.run_of_images(image_pipelines.ImageFiles([]), [], labels, (32, 32))
        onnx_export.export_for_run(outputs, graph_def, run, settings["tfhub_module"])

    # The tiny classifier is about 25 kB. (tf2onnx numbers the names it makes across a
    # process, so the same model is not always the same number of bytes.)
    monkeypatch.setattr(onnx_model, "MAX_ONNX_BYTES", 20_000)
    with pytest.raises(onnx_export.ONNXError, match=r"would be 2\d,\d{3} bytes, more than the 20,000"):
        export(["blue", "green", "red"])
    monkeypatch.setattr(onnx_model, "MAX_ONNX_BYTES", 30_000)
    # The model fits; with 2,000 names of 20 bytes in its metadata it does not.
    with pytest.raises(onnx_export.ONNXError, match=r"would be \d\d,\d{3} bytes, more than the 30,000"):
        export([f"class {n:014d}" for n in range(2000)])
    assert os.listdir(tmp_path) == []
    export(["blue", "green", "red"])
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_onnx_is_told_from_a_frozen_graph_and_a_tflite_file_by_its_first_bytes(onnx_run):
    settings = onnx_run["settings"]
    with open(settings["onnx_output_file"], "rb") as f:
        assert onnx_model.is_onnx(f.read(onnx_model.START_BYTES))
    with open(settings["output_graph"], "rb") as f:
        assert not onnx_model.is_onnx(f.read(onnx_model.START_BYTES))
    assert not onnx_model.is_onnx(b"\x1c\x00\x00\x00TFL3") and not onnx_model.is_onnx(b"\x08")
    # Each byte matters: a node field (a GraphDef), a zero ir_version, a field no model has.
    assert onnx_model.is_onnx(b"\x08\x08\x12")
    for start in (b"\x0a\x08\x12", b"\x08\x00\x12", b"\x08\x08\x10"):
        assert not onnx_model.is_onnx(start)


class _LogGamma(tf.Module):
    """Features tf2onnx has no ONNX form for: Lgamma of the 8x8-averaged image."""

    def __call__(self, images, training=False):
        del training
        pooled = tf.nn.avg_pool2d(images, 8, 8, "VALID")
        return tf.math.lgamma(tf.reshape(pooled, [-1, 4 * 4 * 3]) + 1.0)


def test_a_module_tf2onnx_cannot_convert_is_one_error_naming_its_op_and_nothing_half_written(
        tmp_path):
    module = str(tmp_path / "lgamma")
    make_module.save(make_module._FeatureVector(_LogGamma(), 32, 32, False), module)
    image_dir = make_dataset(tmp_path / "data", per_class=6)
    settings = retrain_settings(tmp_path, image_dir, module, how_many_training_steps=10,
                                onnx_output_file=str(tmp_path / "out" / "model.onnx"))
    with pytest.raises(onnx_export.ONNXError) as error:
        job.run_retraining(config_lib.from_flat(settings))
    message = str(error.value)
    assert "\n" not in message
    assert "tf2onnx has no ONNX form for the TensorFlow op Lgamma in the module" in message
    assert "Drop --onnx_output_file" in message
    # The graph and labels were written; of the ONNX file, not a byte, not a temporary.
    written = os.listdir(tmp_path / "out")
    assert {"output_graph.pb", "output_labels.txt"} <= set(written)
    assert [name for name in written if name.startswith("model.onnx")] == []


def test_tf2onnx_speaks_only_at_debug_verbosity(onnx_run, caplog):
    graph_def = load_graph_def(onnx_run["settings"]["output_graph"])
    tf2onnx_dir = os.path.dirname(tf2onnx.__file__)

    def records_from_tf2onnx():
        caplog.clear()
        onnx_export.convert(graph_def, "final_result")
        return [r for r in caplog.records if r.pathname.startswith(tf2onnx_dir)]

    caplog.set_level("DEBUG")
    assert records_from_tf2onnx() == []
    logging.set_verbosity(logging.DEBUG)
    try:
        assert records_from_tf2onnx()
    finally:
        logging.set_verbosity(logging.INFO)


def test_importing_the_converter_leaves_the_environment_as_it_was():
    # tf2onnx.convert sets TF_CPP_MIN_LOG_LEVEL=3 on import; a process started after a
    # conversion would inherit it, and a command then shows TensorFlow's start-up log.
    for before in (None, "1"):
        code = (
            "import os\n"
            f"if {before!r} is None: os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)\n"
            f"else: os.environ['TF_CPP_MIN_LOG_LEVEL'] = {before!r}\n"
            "from retrain_suite import onnx_export\n"
            "onnx_export.tf2onnx_converter()\n"
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
        )
        assert run_script("-c", code, check=True).stdout.strip() == str(before)
