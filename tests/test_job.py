"""retrain_suite.job: the whole run from a RetrainConfig, in process: its checks before
any work, the cache reused, the sets it reports on, its determinism and its outputs.
The command line around it is test_retrain.py's."""

import os
import shutil

import numpy as np
import pytest
from helpers import final_layer_constants, images_in_split, make_dataset, retrain_settings

from retrain_suite import config as config_lib
from retrain_suite import errors, job
from retrain_suite.dataset import split as split_lib


def trained_weights(graph_path):
    return final_layer_constants(graph_path)["final_retrain_ops/weights"]


def first_name_in_split(split, prefix, settings):
    for i in range(1000):
        name = f"{prefix}{i}.png"
        if split_lib.split_for(f"green/{name}", settings["validation_percentage"],
                               settings["testing_percentage"]) == split:
            return name
    raise AssertionError("no name found")


def test_second_run_computes_no_bottlenecks(trained, tiny_module, tmp_path, caplog):
    settings = dict(trained["settings"])
    settings.update(
        output_graph=str(tmp_path / "g.pb"), output_labels=str(tmp_path / "l.txt"),
        saved_model_dir="", summaries_dir=str(tmp_path / "logs"),
        checkpoint_path=str(tmp_path / "ckpt"), how_many_training_steps=20,
        eval_step_interval=10,
    )
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    assert ("Bottlenecks: 60 images, 60 distinct (0 copies): 0 computed, 60 from the cache, "
            "0 skipped") in caplog.text


def test_copies_across_sets_are_reported_and_split_by_content_keeps_them_together(
    trained, tmp_path, caplog
):
    image_dir = shutil.copytree(trained["image_dir"], tmp_path / "data")
    settings = dict(trained["settings"])
    settings.update(
        image_dir=str(image_dir), output_graph=str(tmp_path / "g.pb"),
        output_labels=str(tmp_path / "l.txt"), saved_model_dir="",
        summaries_dir=str(tmp_path / "logs"), checkpoint_path=str(tmp_path / "ckpt"),
        how_many_training_steps=20, eval_step_interval=10,
    )
    dataset, training = images_in_split(str(image_dir), "training", settings)
    original = next(i.path for i in training if i.label == "red")
    copy = next(f"red/copy{n}.png" for n in range(1000) if split_lib.split_for(
        f"red/copy{n}.png", settings["validation_percentage"], settings["testing_percentage"]
    ) == "testing")
    shutil.copy(image_dir / original, image_dir / copy)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    assert ("Bottlenecks: 61 images, 60 distinct (1 copy): 0 computed, 60 from the cache, "
            "0 skipped") in caplog.text
    report = next(r for r in caplog.records if r.getMessage().startswith("Copies:"))
    assert report.levelname == "WARNING"
    assert report.getMessage().splitlines()[0] == (
        "Copies: 61 images, 60 distinct (1 is a copy of another image)."
    )
    assert f"    testing {copy} is a copy of training {original}" in report.getMessage().splitlines()

    caplog.clear()
    job.run_retraining(config_lib.from_flat({**settings, "split_by": "content"}))
    report = next(r for r in caplog.records if r.getMessage().startswith("Copies:"))
    assert report.levelname == "INFO" and "across sets" not in report.getMessage()
    assert "1 within one class and set" in report.getMessage()


def test_same_seed_gives_same_weights_and_accuracy(dataset_dir, tiny_module, tmp_path):
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        settings = retrain_settings(
            tmp_path / name, dataset_dir, tiny_module, random_seed=seed,
            bottleneck_dir=str(tmp_path / "shared_cache"), how_many_training_steps=30,
            eval_step_interval=10,
        )
        accuracy = job.run_retraining(config_lib.from_flat(settings))
        runs.append((accuracy, trained_weights(settings["output_graph"])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_other_optimizers_train(dataset_dir, tiny_module, tmp_path, optimizer):
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, optimizer=optimizer, testing_percentage=30,
        how_many_training_steps=100,
    )
    assert job.run_retraining(config_lib.from_flat(settings)) == 1.0


def test_empty_validation_and_testing_sets_are_skipped_with_a_note(
    dataset_dir, tiny_module, tmp_path, caplog
):
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, validation_percentage=0, testing_percentage=0,
        how_many_training_steps=20, eval_step_interval=10,
    )
    caplog.set_level("INFO")
    assert job.run_retraining(config_lib.from_flat(settings)) is None
    assert "No validation images" in caplog.text
    assert "No testing images" in caplog.text
    assert os.path.exists(settings["output_graph"])


def test_misclassified_test_images_are_listed(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=16)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, print_misclassified_test_images=True,
        how_many_training_steps=150,
    )
    # A red image filed under green, in the testing set: it must come out wrong.
    name = first_name_in_split("testing", "mislabelled", settings)
    shutil.copy(os.path.join(image_dir, "red", "img1.png"), os.path.join(image_dir, "green", name))
    caplog.set_level("INFO")
    accuracy = job.run_retraining(config_lib.from_flat(settings))
    assert accuracy < 1.0
    assert f"green/{name}  true: green  predicted: red" in caplog.text


def test_intermediate_graphs_are_written(dataset_dir, tiny_module, tmp_path):
    settings = retrain_settings(
        tmp_path, dataset_dir, tiny_module, intermediate_store_frequency=50,
        how_many_training_steps=120,
    )
    job.run_retraining(config_lib.from_flat(settings))
    folder = settings["intermediate_output_graphs_dir"]
    assert sorted(os.listdir(folder)) == ["intermediate_100.pb", "intermediate_50.pb"]
    first = trained_weights(os.path.join(folder, "intermediate_50.pb"))
    assert not np.array_equal(first, trained_weights(settings["output_graph"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"how_many_training_steps": 0}, "--how_many_training_steps"),
        ({"train_batch_size": -5}, "--train_batch_size"),
        ({"eval_step_interval": 0}, "--eval_step_interval"),
        ({"validation_batch_size": 0}, "--validation_batch_size"),
        ({"test_batch_size": -2}, "--test_batch_size"),
        ({"validation_percentage": 120}, "validation_percentage"),
        ({"validation_percentage": 60, "testing_percentage": 40}, "add up to 100"),
        ({"learning_rate": 0}, "--learning_rate"),
        ({"image_dir": ""}, "--image_dir"),
    ],
)
def test_unusable_flags_are_refused_before_any_work(
    dataset_dir, tiny_module, tmp_path, override, message
):
    settings = retrain_settings(tmp_path, dataset_dir, tiny_module)
    settings.update(override)
    with pytest.raises(errors.SuiteError, match=message):
        job.run_retraining(config_lib.from_flat(settings))
    assert not os.path.exists(settings["bottleneck_dir"])
    assert not os.path.exists(settings["output_graph"])
