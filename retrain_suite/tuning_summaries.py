r"""Tuning's trials for TensorBoard's HParams dashboard.

Written with the hparams plugin's summary protos (tensorboard.plugins.hparams),
through tf.compat.v1.summary.FileWriter:

    <summaries_dir>/tuning/          the experiment: the searched settings and the metrics
    <summaries_dir>/tuning/trial_NNN one session per trial: its settings (session start),
                                     its metrics as scalars, and its end

The dashboard then lists every trial with its settings, its out-of-fold
accuracy and cross entropy, its gain over trial 0 and its seconds, and
whether it was chosen.
"""

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_summary

TENSORBOARD_RUN = "tuning"

# (tag, what the dashboard shows) of each trial's metrics.
METRICS = (("tuning/accuracy", "out-of-fold accuracy"),
           ("tuning/cross_entropy", "out-of-fold cross entropy"),
           ("tuning/gain_over_trial_0", "accuracy gain over trial 0"),
           ("tuning/chosen", "chosen (1) or not (0)"),
           ("tuning/seconds", "seconds"))


def _hparam_value(value):
    """A trial setting as the dashboard's value: strings stay strings, numbers float."""
    return value if isinstance(value, str) else float(value)


def trial_run(index):
    return f"trial_{index:03d}"


def _write(path, summaries):
    """Write serialized Summary protos to a fresh event file in path."""
    with tf.Graph().as_default():  # FileWriter refuses to run eagerly.
        writer = tf.compat.v1.summary.FileWriter(path, filename_suffix=".tuning")
        for summary in summaries:
            writer.add_summary(summary.SerializeToString(), 0)
        writer.close()


def write_trials(summaries_dir, result):
    """Write a tuning.TuningResult for the HParams dashboard under summaries_dir."""
    first = result.trials[0].settings
    infos = [api_pb2.HParamInfo(
        name=name, type=api_pb2.DATA_TYPE_STRING if isinstance(value, str)
        else api_pb2.DATA_TYPE_FLOAT64) for name, value in first.items()]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=shown)
               for tag, shown in METRICS]
    root = os.path.join(summaries_dir, TENSORBOARD_RUN)
    _write(root, [hparams_summary.experiment_pb(hparam_infos=infos, metric_infos=metrics)])
    for trial in result.trials:
        values = {"tuning/accuracy": trial.accuracy, "tuning/cross_entropy": trial.cross_entropy,
                  "tuning/gain_over_trial_0": trial.versus_default.gain,
                  "tuning/chosen": float(trial.index == result.chosen),
                  "tuning/seconds": trial.seconds}
        scalars = tf.compat.v1.Summary(value=[
            tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()])
        _write(os.path.join(root, trial_run(trial.index)), [
            hparams_summary.session_start_pb(
                {name: _hparam_value(value) for name, value in trial.settings.items()},
                group_name=trial_run(trial.index)),
            scalars,
            hparams_summary.session_end_pb(api_pb2.STATUS_SUCCESS),
        ])
