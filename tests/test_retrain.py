"""End to end, the command line: retrain.py -> frozen graph, labels, SavedModel, TensorBoard
logs, label_image.py on them. The run in process is test_job.py's."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    images_in_split,
    load_graph_def,
    make_dataset,
    probabilities_from_bottlenecks,
    retrain_settings,
    run_command,
)

from retrain_suite import classifier, errors, job
from retrain_suite import config as config_lib
from retrain_suite.bottleneck import compute


def test_command_line_run_trains_to_full_accuracy_and_reports(trained):
    log = trained["process"].stderr
    assert "Bottlenecks: 60 images, 60 distinct (0 copies): 60 computed, 0 from the cache, 0 skipped" in log
    assert "Copies: none; 60 images, all distinct." in log
    assert "Final test accuracy = 100.0% (N=" in log
    assert "validation accuracy" in log and "cross entropy" in log
    settings = trained["settings"]
    with open(settings["output_labels"], encoding="utf-8") as f:
        assert f.read() == "blue\ngreen\nred\n"
    assert os.path.getsize(settings["output_graph"]) > 0
    assert not glob.glob(os.path.join(os.path.dirname(settings["output_graph"]), "*.tmp-*"))


def test_label_image_classifies_held_out_test_images(trained):
    settings = trained["settings"]
    dataset, testing = images_in_split(trained["image_dir"], "testing", settings)
    assert len(testing) >= 3
    paths = [dataset.full_path(image) for image in testing]
    process = run_command(
        "label_image.py", *paths, settings["output_graph"], settings["output_labels"],
        "--output_format=json", "--top_k=2", check=True,
    )
    results = json.loads(process.stdout)
    assert [r["image"] for r in results] == paths
    for result, image in zip(results, testing):
        assert len(result["predictions"]) == 2
        assert result["predictions"][0]["label"] == image.label
        assert result["predictions"][0]["score"] >= result["predictions"][1]["score"]


def test_label_image_text_output_for_one_image(trained):
    settings = trained["settings"]
    dataset, testing = images_in_split(trained["image_dir"], "testing", settings)
    process = run_command(
        "label_image.py", dataset.full_path(testing[0]), settings["output_graph"],
        settings["output_labels"], check=True,
    )
    lines = process.stdout.split("\n")
    assert lines[0].split()[0] == testing[0].label
    scores = [float(line.split()[1]) for line in lines if line]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1) < 1e-4


def stock_label_image_probabilities(graph_path, image_path, height, width):
    """The recipe of TensorFlow's stock label_image example, done with TF1 ops.

    decode -> cast to float -> resize_bilinear -> (x - 0) / 255, graph imported
    under "import/", fed at Placeholder, read at final_result.
    """
    with tf.Graph().as_default():
        encoded = tf.io.read_file(image_path)
        if image_path.lower().endswith(".png"):
            decoded = tf.image.decode_png(encoded, channels=3)
        else:
            decoded = tf.image.decode_jpeg(encoded, channels=3)
        batch = tf.expand_dims(tf.cast(decoded, tf.float32), 0)
        resized = tf.compat.v1.image.resize_bilinear(batch, [height, width])
        normalized = tf.divide(tf.subtract(resized, [0.0]), [255.0])
        with tf.compat.v1.Session() as sess:
            image = sess.run(normalized)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(load_graph_def(graph_path))
        with tf.compat.v1.Session(graph=graph) as sess:
            return sess.run(
                graph.get_operation_by_name("import/final_result").outputs[0],
                {graph.get_operation_by_name("import/Placeholder").outputs[0]: image},
            )[0]


def test_stock_label_image_recipe_agrees_with_label_image(trained):
    settings = trained["settings"]
    dataset, testing = images_in_split(trained["image_dir"], "testing", settings)
    graph_def = load_graph_def(settings["output_graph"])
    for image in testing[:4]:
        path = dataset.full_path(image)
        ours = classifier.classify(graph_def, [path], classifier.Preprocessing(height=32, width=32))[0]
        stock = stock_label_image_probabilities(settings["output_graph"], path, 32, 32)
        assert np.argmax(stock) == np.argmax(ours) == image.label_index
        # Only the resize's pixel-centre convention differs between the two.
        np.testing.assert_allclose(stock, ours, atol=0.05)


def test_training_image_gets_same_probabilities_as_its_cached_bottleneck(trained, tiny_module):
    settings = trained["settings"]
    dataset, training = images_in_split(trained["image_dir"], "training", settings)
    paths = [dataset.full_path(image) for image in training[:5]]
    cached = compute.compute_bottlenecks(paths, tiny_module, settings["bottleneck_dir"])
    assert cached.reused == len(paths) and cached.computed == 0
    graph_def = load_graph_def(settings["output_graph"])
    through_label_image = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    through_cache = probabilities_from_bottlenecks(graph_def, cached.vectors)
    for i in range(len(paths)):
        np.testing.assert_allclose(through_label_image[i], through_cache[i], atol=1e-5)


def event_contents(folder):
    tags, has_graph = set(), False
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            has_graph |= event.HasField("graph_def")
            tags.update(value.tag for value in event.summary.value)
    return tags, has_graph


def test_tensorboard_logs_hold_scalars_histograms_and_graph(trained):
    logs = trained["settings"]["summaries_dir"]
    train_tags, train_graph = event_contents(os.path.join(logs, "train"))
    validation_tags, _ = event_contents(os.path.join(logs, "validation"))
    expected = {
        "accuracy", "cross_entropy", "final_layer/weights", "final_layer/biases",
        "final_layer/logits",
    }
    assert expected <= train_tags
    assert {"accuracy", "cross_entropy"} <= validation_tags
    assert train_graph


def test_command_line_errors_are_one_line_without_traceback(dataset_dir, tmp_path):
    process = run_command(
        "retrain.py", f"--image_dir={dataset_dir}", "--random_crop=150",
        f"--output_graph={tmp_path}/g.pb",
    )
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --random_crop=150 must be between 0 and 100")
    # A module that cannot be loaded, in the same command's run in this process: its
    # SuiteError of one line is the command's `error:` line, as above.
    with pytest.raises(errors.SuiteError) as raised:
        job.run_retraining(config_lib.from_flat({
            "image_dir": dataset_dir, "tfhub_module": f"{tmp_path}/no_module",
            "bottleneck_dir": f"{tmp_path}/b", "output_graph": f"{tmp_path}/g.pb",
            "output_labels": f"{tmp_path}/l.txt", "checkpoint_path": f"{tmp_path}/c"}))
    last = f"error: {raised.value}"
    assert "\n" not in last
    assert last.startswith(f"error: Cannot load module {tmp_path}/no_module")
    assert not os.path.exists(tmp_path / "g.pb")


def test_module_without_network_names_handle_and_fix(dataset_dir, tmp_path):
    settings = retrain_settings(
        tmp_path, dataset_dir, "https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5"
    )
    env_blocked = {"TFHUB_CACHE_DIR": str(tmp_path / "empty_cache")}
    old = {k: os.environ.get(k) for k in env_blocked}
    os.environ.update(env_blocked)
    try:
        with pytest.raises(Exception) as raised:
            job.run_retraining(config_lib.from_flat(settings))
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    message = str(raised.value)
    assert type(raised.value).__name__ == "ModuleError"
    assert "inception_v3/feature_vector/5" in message and "TFHUB_CACHE_DIR" in message


@pytest.mark.slow
def test_full_inception_v3_module_end_to_end(tmp_path, inception_module):
    image_dir = make_dataset(tmp_path / "data", per_class=16)
    settings = retrain_settings(
        tmp_path, image_dir, inception_module, how_many_training_steps=200,
        eval_step_interval=50, testing_percentage=25, learning_rate=0.01,
    )
    # Random weights, but calibrated features: plain colours still separate.
    assert job.run_retraining(config_lib.from_flat(settings)) == 1.0
    graph_def = load_graph_def(settings["output_graph"])
    shape = [d.size for n in graph_def.node if n.name == "Placeholder"
             for d in n.attr["shape"].shape.dim]
    assert shape == [-1, 299, 299, 3]
    path = os.path.join(image_dir, "red", "img0.jpg")
    probabilities = classifier.classify(graph_def, [path], classifier.Preprocessing(height=299, width=299))[0]
    assert probabilities.shape == (3,) and np.argmax(probabilities) == 2  # red
    assert abs(float(np.sum(probabilities)) - 1.0) < 1e-4
