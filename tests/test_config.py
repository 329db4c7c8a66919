"""retrain_suite.config: the typed configuration, its defaults and its checks."""

import dataclasses
import subprocess
import sys

import pytest
from helpers import ROOT, make_dataset

from retrain_suite import config as config_lib
from retrain_suite import errors
from retrain_suite.dataset import split as split_lib


def valid(**flat):
    return config_lib.from_flat({"image_dir": "/photos", **flat})


def test_a_config_with_an_image_folder_and_defaults_is_valid():
    valid().validate()


def test_sections_are_frozen_and_field_names_are_flag_names():
    config = valid()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.learning_rate = 1.0
    assert config.data.image_dir == "/photos"
    names = config_lib.field_names()
    assert names["output_graph"] == "outputs" and names["random_crop"] == "distortions"
    with pytest.raises(KeyError):
        config_lib.from_flat({"no_such_flag": 1})


def test_with_seed_changes_only_the_seed():
    config = valid(learning_rate=0.5)
    seeded = config.with_seed(7)
    assert seeded.training.random_seed == 7 and config.training.random_seed is None
    assert dataclasses.replace(seeded.training, random_seed=None) == config.training


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"image_dir": ""}, "--image_dir is required"),
        ({"tfrecord_dir": "/records"}, "not both"),
        ({"how_many_training_steps": 0}, "--how_many_training_steps=0 must be positive"),
        ({"learning_rate": -1}, "--learning_rate=-1 must be positive"),
        ({"dropout": 1.0}, "--dropout=1.0 must be in [0, 1)"),
        ({"random_hue": 0.7}, "--random_hue=0.7 must be between 0 and 0.5"),
        ({"learning_rate_decay": 0.5}, "applies only to --learning_rate_schedule=exponential"),
        ({"assert_accuracy_at_least": 90}, "must be a fraction in [0, 1]"),
        ({"random_crop": 10, "sampling": "uniform"}, "--sampling=uniform"),
        ({"fine_tune_steps": -1}, "--fine_tune_steps=-1 must be 0 (off) or positive"),
        ({"fine_tune_learning_rate": 0.001}, "applies only to fine-tuning; set --fine_tune_steps"),
        ({"fine_tune_batch_norm": True}, "--fine_tune_batch_norm=True applies only to fine-tuning"),
        ({"fine_tune_steps": 10, "fine_tune_learning_rate": 0.0}, "must be positive"),
        ({"fine_tune_steps": 10, "fine_tune_learning_rate": float("nan")}, "must be a finite number"),
        ({"fine_tune_steps": 10, "fine_tune_batch_size": 0}, "--fine_tune_batch_size=0 must be positive"),
        ({"fine_tune_steps": 10, "fine_tune_eval_interval": -5}, "must be positive"),
        ({"fine_tune_steps": 2**64}, "too large"),
        ({"fine_tune_steps": 10, "fine_tune_optimizer": "rmsprop"}, "must be one of sgd"),
        ({"fine_tune_steps": 10, "sampling": "uniform"}, "fine-tuning trains from images"),
    ],
)
def test_values_that_cannot_work_are_one_line_usage_errors(flat, message):
    with pytest.raises(config_lib.UsageError) as error:
        valid(**flat).validate()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_split_percentages_are_refused_by_the_split_as_its_own_error():
    # Not relabelled: the commands catch SuiteError once, and the message says it all.
    with pytest.raises(split_lib.DatasetError, match="add up to 100") as error:
        valid(validation_percentage=60, testing_percentage=40).validate()
    assert isinstance(error.value, errors.SuiteError) and "\n" not in str(error.value)
    assert config_lib.DataConfig().testing_percentage == split_lib.DEFAULT_PERCENTAGE


@pytest.mark.parametrize(
    "section, message",
    [
        (config_lib.DataConfig(), "--image_dir is required"),
        (config_lib.ModuleConfig(image_size=0), "--image_size=0 must be positive"),
        (config_lib.TrainingConfig(dropout=1.0), "--dropout=1.0 must be in [0, 1)"),
        (config_lib.TrainingConfig(random_seed=-1), "--random_seed=-1 must be between"),
        (config_lib.FineTuningConfig(fine_tune_batch_size=8), "applies only to fine-tuning"),
        (config_lib.DistortionConfig(random_hue=0.7), "must be between 0 and 0.5"),
        (config_lib.EvaluationConfig(test_batch_size=0), "positive, or -1 for all"),
        (config_lib.OutputConfig(final_tensor_name="bad name!"), "not a TensorFlow op name"),
        (config_lib.OutputConfig(tflite_quantization="int8"), "needs --tflite_output_file"),
    ],
)
def test_each_section_validates_its_own_values(section, message):
    with pytest.raises(config_lib.UsageError) as error:
        section.validate()
    assert message in str(error.value)


def test_checks_between_sections_belong_to_the_whole_config():
    # Each section alone is fine; together they cannot work.
    uniform = config_lib.TrainingConfig(sampling="uniform")
    flipped = config_lib.DistortionConfig(flip_left_right=True)
    uniform.validate()
    flipped.validate()
    data = config_lib.DataConfig(image_dir="/photos")
    with pytest.raises(config_lib.UsageError, match="distortions train from images"):
        config_lib.RetrainConfig(data=data, training=uniform, distortions=flipped).validate()


def test_command_line_defaults_are_the_config_defaults():
    # Each flag takes its default from the dataclasses; parse no arguments and
    # the command line's config is RetrainConfig().
    code = (
        "import sys\n"
        "from absl import flags\n"
        "from retrain_suite import config\n"
        "from retrain_suite.cli import flags as shared, retrain\n"
        "shared.define_retrain_flags()\n"
        "flags.FLAGS(['retrain'])\n"
        "print(retrain.config_from_flags() == config.RetrainConfig())\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert process.stdout.strip() == "True", process.stderr[-2000:]


@pytest.mark.slow
def test_a_run_configured_from_python_needs_no_flags(tmp_path, tiny_module):
    image_dir = make_dataset(tmp_path / "data", per_class=8)
    code = f"""
from retrain_suite import config, job
run = config.RetrainConfig(
    data=config.DataConfig(image_dir={image_dir!r}),
    module=config.ModuleConfig(tfhub_module={tiny_module!r},
                               bottleneck_dir={str(tmp_path / "cache")!r}),
    training=config.TrainingConfig(how_many_training_steps=30, learning_rate=0.1,
                                   random_seed=2),
    outputs=config.OutputConfig(output_graph={str(tmp_path / "g.pb")!r},
                                output_labels={str(tmp_path / "l.txt")!r},
                                checkpoint_path={str(tmp_path / "ckpt")!r},
                                summaries_dir={str(tmp_path / "logs")!r}),
)
job.run_retraining(run)
"""
    process = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert (tmp_path / "g.pb").stat().st_size > 0
    assert (tmp_path / "l.txt").read_text() == "blue\ngreen\nred\n"


def test_fine_tune_learning_rate_defaults_to_a_fraction_of_the_learning_rate():
    assert config_lib.fine_tune_learning_rate(valid(learning_rate=0.5)) == 0.5 / 100
    assert config_lib.fine_tune_learning_rate(valid(fine_tune_learning_rate=0.02)) == 0.02
    valid(fine_tune_steps=10, fine_tune_learning_rate=0.02, fine_tune_batch_norm=True).validate()
    with pytest.raises(config_lib.UsageError, match="TFRecord"):
        config_lib.from_flat({"tfrecord_dir": "/records", "fine_tune_steps": 5}).validate()
