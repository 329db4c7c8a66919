"""fine_tuning_checkpoint.py: what a fine-tuning checkpoint holds comes back as written,
and only for the run it was written for. Damaged checkpoints are test_damaged_inputs.py's."""

import numpy as np

from retrain_suite import fine_tuning_checkpoint as checkpoint


def test_a_checkpoint_reads_back_its_step_values_best_model_and_start_score(tmp_path):
    path = checkpoint.checkpoint_file(str(tmp_path / "ckpt"))
    assert path == str(tmp_path / "ckpt") + checkpoint.CHECKPOINT_SUFFIX
    current = {"module/w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int64(7)}
    best = checkpoint.Best(4, 0.75, 0.5, {"module/w": np.ones([2, 3], np.float32)}, 1)
    checkpoint.write(path, "abc", 7, current, best, (0.5, 0.9))
    step, values, read_best, start = checkpoint.read(path, "abc")
    assert (step, start) == (7, (0.5, 0.9))
    assert sorted(values) == sorted(current)
    np.testing.assert_array_equal(values["module/w"], current["module/w"])
    assert (read_best.step, read_best.accuracy, read_best.cross_entropy,
            read_best.evaluations_without_improvement) == (4, 0.75, 0.5, 1)
    np.testing.assert_array_equal(read_best.values["module/w"], np.ones([2, 3]))


def test_a_checkpoint_of_another_run_is_ignored_with_a_warning(tmp_path, caplog):
    path = str(tmp_path / "ckpt.fine_tuning")
    checkpoint.write(path, "abc", 3, {"w": np.zeros(2, np.float32)}, checkpoint.Best(), (0.1, 2.0))
    caplog.set_level("WARNING")
    assert checkpoint.read(path, "other") is None
    assert "written by a run with other flags, data or starting layer" in caplog.text
    assert checkpoint.read(str(tmp_path / "none"), "abc") is None


def test_better_is_higher_accuracy_then_lower_cross_entropy():
    best = checkpoint.Best(2, 0.8, 0.4)
    assert best.better(0.9, 9.0) and best.better(0.8, 0.3)
    assert not best.better(0.8, 0.4) and not best.better(0.7, 0.0)
