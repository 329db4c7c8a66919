"""retrain_suite.command_config: the typed flags of pre_input, bottleneck and label_image."""

import dataclasses
import subprocess
import sys

import pytest
from helpers import ROOT

from retrain_suite import command_config, config, tflite

PreInput, Bottleneck, LabelImage = (
    command_config.PreInputConfig, command_config.BottleneckConfig, command_config.LabelImageConfig
)


def refused(settings, message):
    """Assert settings.validate() raises one UsageError line starting with message."""
    with pytest.raises(config.UsageError) as raised:
        settings.validate()
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value)


COMMANDS = {"pre_input": "PreInputConfig", "bottleneck": "BottleneckConfig",
            "label_image": "LabelImageConfig"}


@pytest.fixture(scope="module")
def parsed_defaults():
    """{command: whether its command line, parsed with no arguments, is its config class's
    defaults}, from one fresh Python (a TensorFlow import, not one per command): each
    command's flags are defined, parsed and compared, then removed before the next's."""
    code = (
        "from absl import flags\n"
        "from retrain_suite import command_config\n"
        "from retrain_suite.cli import flags as shared\n"
        "import importlib\n"
        "before = set(flags.FLAGS)\n"
        f"for command, config_class in {COMMANDS!r}.items():\n"
        "    importlib.import_module('retrain_suite.cli.' + command).define_flags()\n"
        "    flags.FLAGS(['command'])\n"
        "    config_class = getattr(command_config, config_class)\n"
        "    print(command, shared.config_from_flags(config_class) == config_class())\n"
        "    for name in set(flags.FLAGS) - before:\n"
        "        delattr(flags.FLAGS, name)\n"
        "    assert set(flags.FLAGS) == before\n"
    )
    process = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    return dict(line.split() for line in process.stdout.splitlines())


@pytest.mark.parametrize("command", COMMANDS)
def test_command_line_defaults_are_the_config_defaults(parsed_defaults, command):
    # Parse no arguments: the command line's config is the dataclass's defaults.
    assert parsed_defaults[command] == "True", parsed_defaults


def test_shared_fields_default_to_retrains():
    data, module = config.DataConfig(), config.ModuleConfig()
    for settings in (PreInput(), Bottleneck(), LabelImage()):
        assert settings.max_image_pixels == data.max_image_pixels
    assert (PreInput().testing_percentage, PreInput().split_by) == (data.testing_percentage, data.split_by)
    assert (Bottleneck().tfhub_module, Bottleneck().bottleneck_dir, Bottleneck().image_size) == (
        module.tfhub_module, module.bottleneck_dir, module.image_size)


def test_configs_are_frozen_and_images_are_held_as_a_tuple():
    settings = LabelImage(image=["a.jpg", "b.jpg"])
    assert settings.image == ("a.jpg", "b.jpg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        PreInput().output_dir = "out"


def test_pre_input_needs_both_folders_and_positive_counts():
    valid = PreInput(image_dir="photos", output_dir="prepared")
    valid.validate()
    refused(PreInput(output_dir="prepared"), "--image_dir is required (see --help).")
    refused(PreInput(image_dir="photos"), "--output_dir is required (see --help).")
    refused(dataclasses.replace(valid, output_dir=""), "--output_dir is required")
    refused(dataclasses.replace(valid, images_per_shard=0), "--images_per_shard=0 must be positive.")
    refused(dataclasses.replace(valid, max_image_pixels=-1), "--max_image_pixels=-1 must be positive.")


def test_bottleneck_needs_an_image_folder_and_positive_sizes():
    valid = Bottleneck(image_dir="photos")
    valid.validate()  # batch_size None: measured
    refused(Bottleneck(), "--image_dir is required: the folder with one subfolder per class.")
    for name in ("batch_size", "image_size", "max_image_pixels"):
        refused(dataclasses.replace(valid, **{name: 0}), f"--{name}=0 must be positive.")
    dataclasses.replace(valid, batch_size=1, image_size=1, max_image_pixels=1).validate()


@pytest.mark.parametrize("flag, value, message", [
    ("batch_size", 0, "must be positive (or left out to measure the fastest)"),
    ("batch_size", -3, "must be positive"),
    ("input_height", -5, "must be positive (or left out: from the graph)"),
    ("input_width", 0, "must be positive"),
    ("top_k", 0, "must be at least 1"),
    ("max_image_pixels", 0, "must be at least 1"),
    ("input_std", 0, "would divide every pixel by zero; retrain.py's graphs use 255."),
    ("input_std", float("nan"), "must be a finite number"),
    ("input_mean", float("inf"), "must be a finite number"),
])
def test_unusable_numeric_flags_are_named(flag, value, message):
    settings = LabelImage(image=("x.jpg",), graph="g.pb", labels="l.txt", **{flag: value})
    refused(settings, f"--{flag}={value}")
    refused(settings, f"--{flag}={value} {message}")


def test_label_image_needs_images_a_graph_and_labels_unless_the_graph_is_tflite(tmp_path):
    missing = "give an image, a graph and a labels file, or an image and a TFLite or ONNX model (see --help)."
    LabelImage(image=("x.jpg",), graph="g.pb", labels="l.txt").validate()
    refused(LabelImage(graph="g.pb", labels="l.txt"), missing)
    refused(LabelImage(image=("x.jpg",), labels="l.txt"), missing)
    graph = tmp_path / "g.pb"
    graph.write_bytes(b"\x00" * 64)
    refused(LabelImage(image=("x.jpg",), graph=str(graph)), missing)
    model = tmp_path / "model.bin"  # a TFLite model by its content, whatever its name
    model.write_bytes(b"\x00" * 4 + tflite.TFLITE_IDENTIFIER + b"\x00" * 56)
    settings = LabelImage(image=("x.jpg",), graph=str(model))
    assert settings.is_tflite() and not LabelImage(image=("x.jpg",), graph=str(graph)).is_tflite()
    settings.validate()
    refused(LabelImage(graph=str(model)), missing)
