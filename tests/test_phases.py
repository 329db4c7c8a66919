"""phases.py: a run's time by phase, in order, as a table and in the JSON report."""

import json
import os
import re
import threading
import time

import pytest
from helpers import make_dataset, retrain_settings

from retrain_suite import checked_images, job, phases, run_data
from retrain_suite import config as config_lib


def test_phases_are_kept_in_order_with_their_seconds_and_a_total_that_covers_them():
    timer = phases.PhaseTimer(start_up=2.0)
    with timer.phase("first"):
        time.sleep(0.05)
    with timer.phase("second"):
        pass
    names = [name for name, _ in timer.phases]
    assert names == ["start-up", "first", "second"]
    seconds = dict(timer.phases)
    assert seconds["first"] >= 0.05 and seconds["second"] < seconds["first"]
    assert timer.total() >= 2.0 + seconds["first"] + seconds["second"]
    report = timer.as_dict()
    assert [p["phase"] for p in report["phases"]] == names
    lines = timer.table().splitlines()
    assert lines[0].split() == ["phase", "seconds", "share"]
    assert lines[1].split() == ["start-up", "2.0", f"{100 * 2.0 / timer.total():.0f}%"]
    assert lines[-1].startswith("total (with what no phase covers)")


def test_a_phase_that_raises_is_still_timed():
    timer = phases.PhaseTimer()
    try:
        with timer.phase("failing"):
            raise ValueError("x")
    except ValueError:
        pass
    assert [name for name, _ in timer.phases] == ["failing"]


def test_this_process_has_an_age():
    age = phases.process_age()
    assert age is not None and 0 < age < 24 * 3600  # the tests run on Linux


def test_a_run_ends_with_its_phase_table_and_keeps_it_in_the_report(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=8)
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, how_many_training_steps=20, eval_step_interval=10,
        eval_report=str(tmp_path / "out" / "report.json"),
        tflite_output_file=str(tmp_path / "out" / "model.tflite"),
        report_dir=str(tmp_path / "report"),
    )
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    with open(settings["eval_report"]) as f:
        time_report = json.load(f)["time"]
    names = [p["phase"] for p in time_report["phases"]]
    assert names == ["start-up", "flag and path checks",
                     "scan and checks (the module loaded to check names, unless remembered)",
                     "bottlenecks (module load, cache, forward passes)", "training",
                     "report (tables, JSON)", "frozen graph and labels",
                     "TFLite (none)", "check of the exported files",
                     "TensorBoard's evaluation pictures", "report page (report.html, results.csv, pictures)"]
    assert all(p["seconds"] >= 0 for p in time_report["phases"])
    # Each figure is rounded to the millisecond: the sum may pass the total by that much.
    phases_sum = sum(p["seconds"] for p in time_report["phases"])
    assert time_report["total_seconds"] >= phases_sum - 0.001 * len(time_report["phases"])
    last = caplog.records[-1].getMessage()
    assert last.startswith("Time by phase:\nphase") and "check of the exported files" in last


@pytest.mark.parametrize("tflite, kept", [(False, True), (True, True), (True, False)])
def test_pictures_of_mistakes_reuse_the_images_the_check_decoded(
        tmp_path, tiny_module, monkeypatch, caplog, tflite, kept):
    """TensorBoard's grid and the report page's thumbnails show test images that the
    check of the exported files decodes anyway: no image is decoded twice. The
    bottleneck pass keeps the check's images and the int8 calibration images, so none
    is decoded again; when they are not kept (too many to hold), with an int8 TFLite
    file to convert the check's images are decoded meanwhile, on a thread, and the
    calibration images during training, on another."""
    if not kept:
        monkeypatch.setattr(checked_images, "wanted_rows", lambda *args: [])
    image_dir = make_dataset(tmp_path / "data", per_class=8)
    # One step at a tiny rate: a layer that is wrong on many test images.
    settings = retrain_settings(
        tmp_path, image_dir, tiny_module, how_many_training_steps=1, learning_rate=1e-6,
        eval_report=str(tmp_path / "out" / "report.json"), report_dir=str(tmp_path / "report"),
        **({"tflite_output_file": str(tmp_path / "out" / "model.tflite"),
            "tflite_quantization": "int8"} if tflite else {}),
    )
    decoded, threads = [], {}
    batches = run_data.PreparedRun.image_batches

    def recording(run, rows, batch_size):
        decoded.extend(list(rows))
        threads.update(dict.fromkeys(rows, threading.current_thread().name))
        return batches(run, rows, batch_size)

    monkeypatch.setattr(run_data.PreparedRun, "image_batches", recording)
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    with open(settings["eval_report"]) as f:
        mistakes = json.load(f)["testing"]["misclassified"]
    assert mistakes  # pictures were made of them ...
    assert os.listdir(tmp_path / "report")
    # ... and every image went through the decoding pipeline once at most: the
    # bottleneck pass's (not counted here) when it kept them.
    assert len(decoded) == len(set(decoded)), sorted(decoded)
    if kept:
        assert decoded == []
        # ... and the int8 file was calibrated, on images kept.
        assert len(re.findall(r"calibrated on \d+ training images", caplog.text)) == tflite
        return
    with open(settings["eval_report"]) as f:
        tested = json.load(f)["artifacts"]["files"][0]["count"]
    on_thread = [row for row, name in threads.items() if name == "decoded-ahead"]
    assert len(on_thread) == (tested if tflite else 0)
    # The int8 calibration's images, decoded during training on a thread of their own.
    calibrating = [row for row, name in threads.items() if name == "calibration-ahead"]
    calibrated = re.findall(r"calibrated on (\d+) training images", caplog.text)
    assert len(calibrating) == (int(calibrated[0]) if tflite else 0) and not calibrated[1:]
