"""retrain_suite.output_paths: where a run may write, and the one list of its outputs.

The hostile cases run end to end (outputs on the photos, full disks, Ctrl-C)
are in test_hostile_outputs.py; these are the policy's own rules.
"""

import os

import pytest
from helpers import retrain_settings

from retrain_suite import config as config_lib
from retrain_suite import errors, fine_tuning_checkpoint, output_paths, preparation
from retrain_suite.cli import bottleneck as bottleneck_command


def sections(settings):
    config = config_lib.from_flat(settings)
    return config.data, config.module, config.outputs, config.evaluation.eval_report


def test_outputs_beside_an_input_whose_name_they_start_with_are_accepted(tmp_path, tiny_module):
    # data_out/ is not inside data/, nor model_cache/ inside model/: a check of
    # string prefixes would say they are.
    image_dir = str(tmp_path / "data")
    os.mkdir(image_dir)
    out = str(tmp_path / "data_out")
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module,
        bottleneck_dir=tiny_module + "_cache",
        output_graph=os.path.join(out, "graph.pb"),
        output_labels=os.path.join(out, "labels.txt"),
        checkpoint_path=os.path.join(out, "checkpoint"),
        eval_report=os.path.join(out, "report.json"),
        summaries_dir=image_dir + "_logs",
        saved_model_dir=out + "_model",  # and beside another output named like it
        tflite_output_file=tiny_module + "_out.tflite",
    )
    config = config_lib.from_flat(settings)
    output_paths.check_output_paths(config.data, config.module, config.outputs,
                                    config.evaluation.eval_report)
    preparation.check_output_dir(out, image_dir)  # pre_input.py --output_dir
    bottleneck_command.check_cache_location(image_dir + "_cache", image_dir, tiny_module)
    assert output_paths.relation(os.path.join(out, "graph.pb"), image_dir) is None
    assert output_paths.relation(image_dir, out) is None
    # Still refused one level down.
    assert output_paths.relation(os.path.join(image_dir, "out"), image_dir) == "inside"
    assert output_paths.relation(image_dir, os.path.join(image_dir, "out")) == "around"
    with pytest.raises(output_paths.PathError, match="is inside --image_dir"):
        preparation.check_output_dir(os.path.join(image_dir, "out"), image_dir)
    assert sorted(os.listdir(tmp_path)) == ["data"]  # checking wrote nothing


def test_every_output_is_listed_once_by_its_flag_with_the_checkpoints_files():
    outputs = config_lib.OutputConfig(
        output_graph="/o/g.pb", output_labels="/o/l.txt", summaries_dir="/o/logs",
        saved_model_dir="/o/model", tflite_output_file="", checkpoint_path="/o/ckpt",
        intermediate_output_graphs_dir="/o/steps", intermediate_store_frequency=5,
        report_dir="/o/page",
    )
    listed = output_paths.outputs_of(outputs, "/o/report.json")
    assert listed == [
        ("output_graph", "/o/g.pb"), ("output_labels", "/o/l.txt"),
        ("summaries_dir", "/o/logs"), ("eval_report", "/o/report.json"),
        ("saved_model_dir", "/o/model"), ("report_dir", "/o/page"),
        ("intermediate_output_graphs_dir", "/o/steps"),
        ("checkpoint_path", "/o/ckpt"), ("checkpoint_path", "/o/ckpt.index"),
        ("checkpoint_path", "/o/ckpt.data-00000-of-00001"), ("checkpoint_path", "/o/ckpt.lock"),
        ("checkpoint_path", "/o/ckpt.fine_tuning"),
    ]
    # Outputs that are off are not outputs.
    quiet = output_paths.outputs_of(config_lib.OutputConfig(report_dir=""), "")
    assert {flag for flag, _ in quiet} == {"output_graph", "output_labels", "summaries_dir",
                                          "checkpoint_path"}


def test_the_listed_checkpoint_files_include_fine_tunings_own():
    prefix = "/o/ckpt"
    assert ("checkpoint_path", fine_tuning_checkpoint.checkpoint_file(prefix)) in output_paths.outputs_of(
        config_lib.OutputConfig(checkpoint_path=prefix), "")


def test_an_output_whose_folder_is_a_file_or_read_only_is_a_path_error_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    with pytest.raises(output_paths.PathError, match="a_file is a file, not a folder") as raised:
        output_paths.check_output_locations([str(tmp_path / "ok.pb"),
                                             str(blocker / "sub" / "graph.pb")])
    assert "\n" not in str(raised.value)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere
            with pytest.raises(output_paths.PathError, match="is not writable"):
                output_paths.check_output_locations([str(locked / "new" / "graph.pb")])
    finally:
        locked.chmod(0o700)
    output_paths.check_output_locations([str(tmp_path / "new" / "deeper" / "graph.pb")])
    assert sorted(os.listdir(tmp_path)) == ["a_file", "locked"]  # nothing was created


def test_a_path_refusal_reaches_the_command_as_it_was_raised(tmp_path):
    # The commands catch SuiteError once; a PathError is not relabelled on the way.
    image_dir = str(tmp_path / "data")
    os.mkdir(image_dir)
    settings = retrain_settings(tmp_path, image_dir, "https://tfhub.dev/some/module",
                                output_graph=os.path.join(image_dir, "g.pb"))
    with pytest.raises(output_paths.PathError, match="is inside --image_dir") as raised:
        output_paths.check_output_paths(*sections(settings))
    assert isinstance(raised.value, errors.SuiteError) and raised.value.area == "outputs"
