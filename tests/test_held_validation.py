"""retrain_suite.held_validation: the validation set held in the training graph and
evaluated in the evaluation step's own call gives what the fed path gives."""

import re

import helpers
import numpy as np
import pytest
import tensorflow as tf
from test_final_layer import synthetic_arrays

from retrain_suite import config as config_lib
from retrain_suite import held_validation, training


def validation_events(folder, run="validation"):
    """[(step, tag, value)] of a run's event files (TensorBoard's validation run unless
    told): scalars as floats, histograms as their (min, max, num, sum, sum of squares,
    bucket limits, buckets)."""
    events = []
    for path in sorted(tf.io.gfile.glob(f"{folder}/{run}/events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("histo"):
                    h = value.histo
                    shown = (h.min, h.max, h.num, h.sum, h.sum_squares, tuple(h.bucket_limit),
                             tuple(h.bucket))
                else:
                    shown = value.simple_value
                events.append((event.step, value.tag, shown))
    return events


def trained(tmp_path, name, monkeypatch, caplog, options, held):
    """Train on synthetic arrays with the validation set held in the graph (held) or
    fed per evaluation. -> (layer values, history, log lines, validation events, calls)."""
    if not held:
        monkeypatch.setattr(held_validation, "HELD_BYTES", 0)
    settings = {n: config_lib.default(n) for n in config_lib.field_names()}
    settings.update(how_many_training_steps=47, eval_step_interval=10, train_batch_size=8,
                    learning_rate=0.5, random_seed=3, summaries_dir=str(tmp_path / name / "logs"),
                    checkpoint_path=str(tmp_path / name / "layer"), **options)
    config = config_lib.from_flat(settings)
    calls = []
    run = tf.compat.v1.Session.run

    def counting_run(self, *args, **kwargs):
        calls.append(1)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(tf.compat.v1.Session, "run", counting_run)
    caplog.clear()
    result = training.train(helpers.prepared_run(synthetic_arrays(dimension=16), 3),
                            config.training, config.evaluation, config.outputs,
                            # A call per step: the count of calls does not depend on timing.
                            training.Hooks(in_graph_loop=False))
    monkeypatch.undo()
    logs = [re.sub(r"in [\d.]+s \(\d+ steps/s\)", "", r.getMessage()) for r in caplog.records]
    return (result.layer, (result.steps, result.kept_step, result.history), logs,
            validation_events(settings["summaries_dir"]), len(calls),
            {tag for _, tag, _ in validation_events(settings["summaries_dir"], "train")})


@pytest.mark.parametrize("options", [
    {"validation_batch_size": 5, "keep_best": True},
    {"validation_batch_size": -1, "keep_best": False, "early_stopping_patience": 2,
     "hidden_units": 8, "dropout": 0.3, "l2_regularization": 0.01, "label_smoothing": 0.1},
])
def test_the_held_validation_set_gives_the_fed_numbers_summaries_and_kept_layer(
        tmp_path, monkeypatch, caplog, options):
    caplog.set_level("DEBUG")
    held = trained(tmp_path, "held", monkeypatch, caplog, options, held=True)
    fed = trained(tmp_path, "fed", monkeypatch, caplog, options, held=False)
    for name in fed[0]:  # the kept layer, bit for bit
        np.testing.assert_array_equal(held[0][name], fed[0][name], err_msg=name)
    assert held[1] == fed[1]  # steps, the kept step, every evaluation's numbers
    assert held[2] == fed[2]  # every log line
    assert [e[:2] for e in held[3]] == [e[:2] for e in fed[3]]
    assert held[3] == fed[3]  # the validation run's scalars and histograms
    tags = {tag for _, tag, _ in held[3]}
    # The weights' histograms are the training run's only.
    assert tags == {"accuracy", "cross_entropy", "loss", "learning_rate", "final_layer/logits"}
    hidden = {"final_layer/hidden_weights", "final_layer/hidden_biases"}
    assert held[5] == fed[5] == tags | {"final_layer/weights", "final_layer/biases"} | (
        hidden if options.get("hidden_units") else set())
    # One call fewer per evaluation (five evaluations: steps 10, 20, 30, 40, 47), and
    # one call that copies the set into the graph.
    evaluations = len(held[1][2])
    assert evaluations == 5 and held[4] == fed[4] - evaluations + 1


def test_a_large_or_streamed_validation_set_is_not_held():
    assert held_validation.fits(np.zeros([4, 8], np.float32))
    assert not held_validation.fits(np.zeros([0, 8], np.float32))
    big = held_validation.HELD_BYTES // 4 // 8 + 1
    assert not held_validation.fits(np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), (big, 8), (0, 0)))
    assert not held_validation.fits(object())  # e.g. packed_store.StoreVectors
