"""retrain_suite.classifier and the label_image command: what reaches the graph."""

import os

import numpy as np
import tensorflow as tf
from helpers import load_graph_def, run_command, synthetic_image, write_image

from retrain_suite import classifier
from retrain_suite.images import preprocess as image_preprocess


def test_input_mean_and_std_apply_to_0_255_pixel_values(trained, tmp_path):
    # The stock label_image's arithmetic: (pixel - mean) / std on 0-255 values.
    graph_def = load_graph_def(trained["settings"]["output_graph"])
    rng = np.random.RandomState(0)
    paths = []
    for i, colour in enumerate([(220, 40, 40), (40, 190, 60), (40, 60, 210)]):
        path = str(tmp_path / f"img{i}.png")
        write_image(path, synthetic_image(colour, "stripes", 32, 32, rng), "PNG")
        paths.append(path)
    mean, std = 127.5, 127.5
    found = classifier.classify(
        graph_def, paths, classifier.Preprocessing(height=32, width=32, input_mean=mean, input_std=std)
    )
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.stack([
            image_preprocess.decode_and_resize(tf.io.read_file(p), 32, 32) for p in paths
        ])
        (probabilities,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={"Placeholder:0": (pixels * 255.0 - mean) / std},
            return_elements=["final_result:0"], name="",
        )
        with tf.compat.v1.Session(graph=graph) as sess:
            expected = sess.run(probabilities)
    np.testing.assert_allclose(np.stack([found[i] for i in range(3)]), expected, atol=1e-5)
    # And the default (0, 255) feeds [0, 1] pixels unchanged: a different answer here.
    plain = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    assert np.abs(np.stack([plain[i] for i in range(3)]) - expected).max() > 1e-4


def test_an_image_over_the_pixel_limit_is_refused_not_classified(trained, tmp_path):
    # A 100x100 PNG decodes fine: only the pixel limit (from its header) stops it.
    rng = np.random.RandomState(0)
    good = str(tmp_path / "good.png")
    large = str(tmp_path / "large.png")
    write_image(good, synthetic_image((220, 40, 40), "solid", 32, 32, rng), "PNG")
    write_image(large, synthetic_image((220, 40, 40), "solid", 100, 100, rng), "PNG")
    settings = trained["settings"]
    process = run_command(
        "label_image.py", "--max_image_pixels=2000", "--image", good, "--image", large,
        "--graph", settings["output_graph"], "--labels", settings["output_labels"])
    assert process.returncode == 1, process.stderr[-2000:]
    assert f"error: cannot classify {large}:" in process.stderr
    assert "pixels" in process.stderr
    assert good in process.stdout.splitlines()
    assert large not in process.stdout
    assert os.path.exists(large)


def test_label_image_keeps_only_each_images_top_k_not_every_class(tmp_path):
    """label_image.py's results grow with the images times --top_k: a graph of
    20,000 classes must not leave a [20000] vector per image behind."""
    classes = 20_000
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3], name="Placeholder")
        weights = np.random.RandomState(0).randn(3, classes).astype(np.float32)
        tf.nn.softmax(tf.matmul(tf.reduce_mean(image, [1, 2]), weights), name="final_result")
    graph_def = graph.as_graph_def()
    rng = np.random.RandomState(1)
    paths = []
    for i, colour in enumerate([(220, 40, 40), (40, 190, 60), (40, 60, 210)]):
        paths.append(str(tmp_path / f"img{i}.png"))
        write_image(paths[-1], synthetic_image(colour, "stripes", 32, 32, rng), "PNG")
    whole = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32))
    kept = classifier.classify(graph_def, paths, classifier.Preprocessing(height=32, width=32),
                               keep=classifier.top_classes(3))
    for i in range(len(paths)):
        top = kept[i]
        assert top.classes.shape == top.scores.shape == (3,) and top.class_count == classes
        best = np.argsort(-whole[i], kind="stable")[:3]
        np.testing.assert_array_equal(top.classes, best)
        np.testing.assert_array_equal(top.scores, whole[i][best])
        assert top.scores.base is None or top.scores.base.size == 3  # not a view of [C]
