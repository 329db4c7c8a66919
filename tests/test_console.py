"""console.py: third parties' noise kept off the console, every other line kept, and all
of it shown at --logging_verbosity=DEBUG."""

import logging as std_logging
import os
import warnings

from absl import logging
from helpers import make_dataset, retrain_settings, run_script

from retrain_suite import console

# What a retrain run with a SavedModel and an int8 TFLite file printed before
# console.py, none of which a user can act on.
NOISE = ("Using new converter", "Statistics for quantized inputs were expected",
         "fully_quantize: 0", "Fingerprint not found", "path_and_singleprint",
         "Created TensorFlow Lite XNNPACK delegate")


def test_native_output_is_held_and_written_back_less_the_noise(capfd):
    with console.native_output_filtered():
        os.write(2, b"fully_quantize: 0, inference_type: 6, input_inference_type: UINT8\n")
        os.write(2, b"a real error from C++\n")
        with open(2, "w", closefd=False) as stderr:  # what sys.stderr is in a command
            stderr.write("Use '@tf.function' or '@defun' to decorate the function.\n")
        os.write(1, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(1, b"kept on stdout\n")
    out, err = capfd.readouterr()
    assert (out, err) == ("kept on stdout\n", "a real error from C++\n")


def test_native_output_goes_straight_through_at_debug(capfd):
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.DEBUG)
    try:
        with console.native_output_filtered():
            os.write(2, b"fully_quantize: 0, inference_type: 6\n")
    finally:
        logging.set_verbosity(verbosity)
    assert capfd.readouterr().err == "fully_quantize: 0, inference_type: 6\n"


def test_third_party_info_records_are_dropped_and_their_warnings_kept():
    keep = console.ThirdPartyInfo()

    def record(path, level):
        return std_logging.LogRecord("absl", level, path, 1, "m", None, None)

    inside = os.path.join(console.THIRD_PARTY_DIRS[0], "lite", "python", "lite.py")
    assert not keep.filter(record(inside, std_logging.INFO))
    assert keep.filter(record(inside, std_logging.WARNING))
    assert keep.filter(record(os.path.abspath(console.__file__), std_logging.INFO))


def test_python_warnings_from_tensorflow_are_ignored_and_others_kept():
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            console.quiet_third_parties()
            warnings.warn_explicit("inside", UserWarning, "convert.py", 1,
                                   module="tensorflow.lite.python.convert")
            warnings.warn_explicit("ours", UserWarning, "job.py", 1, module="retrain_suite.job")
    finally:  # the absl filter is the process's: leave the other tests' logs alone
        std_logging.getLogger("absl").removeFilter(console._FILTER)
    assert [str(w.message) for w in caught] == ["ours"]


def retrain_with_tflite_and_saved_model(tmp_path, module, *extra):
    image_dir = make_dataset(tmp_path / "data", per_class=8)
    settings = retrain_settings(
        tmp_path, image_dir, module, how_many_training_steps=20, eval_step_interval=10,
        saved_model_dir=str(tmp_path / "out" / "saved_model"),
        tflite_output_file=str(tmp_path / "out" / "model.tflite"), tflite_quantization="int8",
        report_dir=str(tmp_path / "report"),
    )
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    return run_script("retrain.py", *args, *extra, check=True)


def test_a_run_exporting_every_format_prints_no_third_party_noise(tmp_path, tiny_module):
    process = retrain_with_tflite_and_saved_model(tmp_path, tiny_module)
    output = process.stdout + process.stderr
    assert [noise for noise in NOISE if noise in output] == []
    # The suite's own lines about the same work are all there.
    assert "Wrote TFLite model" in output and "Exported files on the test set" in output


def test_debug_verbosity_shows_the_third_parties_lines(tmp_path, tiny_module):
    process = retrain_with_tflite_and_saved_model(tmp_path, tiny_module,
                                                  "--logging_verbosity=DEBUG")
    output = process.stdout + process.stderr
    assert "Using new converter" in output and "fully_quantize: 0" in output
