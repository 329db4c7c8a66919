"""Tuning (--tune_trials, --tune_seconds): a search over the final layer's settings by
cross-validation on cached bottlenecks, chosen by the margin rule of selection.py."""

import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import make_dataset, prepared_run, retrain_settings
from tensorboard.plugins.hparams import metadata as hparams_metadata

from retrain_suite import config as config_lib
from retrain_suite import job, selection, training, tuning, tuning_space, tuning_summaries


def synthetic_run(seed=0, classes=3, dim=16, sizes=(60, 30, 60), noise=1.0):
    """A run_data.PreparedRun of Gaussian clusters (one per class) in `dim` values: the
    bottlenecks of an easy task, made in memory."""
    rng = np.random.RandomState(seed)
    means = rng.normal(0, 1.0, (classes, dim))
    arrays = {}
    for name, count in zip(("training", "validation", "testing"), sizes):
        labels = np.arange(count) % classes
        vectors = means[labels] + rng.normal(0, noise, (count, dim))
        arrays[name] = (vectors.astype(np.float32), labels, [])
    return prepared_run(arrays, classes)


# The flags of a run whose learning rate is far off: 100 steps at 1e-6 learn nothing.
FAR_OFF = config_lib.TrainingConfig(learning_rate=1e-6, how_many_training_steps=100,
                                    train_batch_size=32, random_seed=1)


@pytest.fixture(scope="module")
def far_off():
    """The synthetic run tuned from FAR_OFF: 5 trials, 3 folds."""
    run = synthetic_run()
    return run, tuning.tune(run, FAR_OFF, config_lib.TuningConfig(tune_trials=5, tune_folds=3))


def trained_test_accuracy(run, setting, folder):
    """Train `setting` as a normal run (training.train); -> its accuracy on every test image."""
    outputs = config_lib.OutputConfig(checkpoint_path=str(folder / "checkpoint"),
                                      summaries_dir=str(folder / "logs"))
    result = training.train(run, setting, config_lib.EvaluationConfig(), outputs)
    tested = result.predictions["testing"]
    return float(np.mean(tested.classes == tested.truth(run.testing)))


def test_tuning_finds_a_setting_the_far_off_default_misses(far_off, tmp_path):
    run, result = far_off
    assert result.chosen != 0
    assert result.trials[0].accuracy < 0.5  # three classes: the default learnt nothing
    assert result.trials[result.chosen].accuracy > 0.9
    assert result.chosen_training == tuning_space.training_config(
        FAR_OFF, result.trials[result.chosen].settings)
    default = trained_test_accuracy(run, FAR_OFF, tmp_path / "default")
    tuned = trained_test_accuracy(run, result.chosen_training, tmp_path / "tuned")
    assert tuned > 0.9 and tuned > default + 0.4, (default, tuned)


def test_the_test_set_takes_no_part_in_the_choice(far_off):
    run, result = far_off
    # Another test set, every label wrong: the same trials, the same scores, the same choice.
    wrong = dataclasses.replace(run.testing, labels=(run.testing.labels + 1) % run.class_count,
                                bottlenecks=-run.testing.bottlenecks)
    again = tuning.tune(dataclasses.replace(run, testing=wrong), FAR_OFF,
                        config_lib.TuningConfig(tune_trials=2, tune_folds=3))
    assert again.images == len(run.training) + len(run.validation)
    for first, second in zip(result.trials, again.trials):
        np.testing.assert_array_equal(first.correct, second.correct)


def test_the_same_seed_gives_the_same_trials_and_choice(far_off):
    run, result = far_off
    again = tuning.tune(run, FAR_OFF, config_lib.TuningConfig(tune_trials=5, tune_folds=3))
    assert [t.settings for t in again.trials] == [t.settings for t in result.trials]
    assert again.chosen == result.chosen
    for first, second in zip(result.trials, again.trials):
        np.testing.assert_array_equal(first.correct, second.correct)
    other = tuning_space.trial_settings(2, FAR_OFF, 5)
    assert other[0] == result.trials[0].settings  # trial 0 is the flags' whatever the seed
    assert other[1:] != [t.settings for t in result.trials[1:]]


def test_trial_0_is_the_flags_setting_and_trials_respect_the_count(far_off):
    _, result = far_off
    assert len(result.trials) == 5 and result.stopped is None
    assert result.trials[0].settings == tuning_space.settings_of(FAR_OFF)
    assert tuning_space.trial_settings(1, FAR_OFF, 3) == tuning_space.trial_settings(1, FAR_OFF, 9)[:3]


def test_folds_are_stratified_and_stable():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    keys = [f"class_{label}/img{n}.jpg".encode() for n, label in enumerate(labels)]
    folds = tuning_space.stratified_folds(keys, labels, 4)
    for label in range(3):  # each class spread over the folds, at most one apart
        counts = np.bincount(folds[labels == label], minlength=4)
        assert counts.max() - counts.min() <= 1, counts
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    # An image's fold depends on its name, not on where it is listed.
    order = np.random.RandomState(0).permutation(len(labels))
    shuffled = tuning_space.stratified_folds([keys[i] for i in order], labels[order], 4)
    np.testing.assert_array_equal(shuffled, folds[order])


class FakeCost:
    """A clock, and a fold_answers that costs `per_step` fake seconds per training step
    (`hidden_factor` times more with a hidden layer) and answers every other image right.
    calls: the trials started (their first fold)."""

    def __init__(self, per_step, hidden_factor=1.0):
        self.now, self.per_step, self.calls = 100.0, per_step, 0
        self.hidden_factor = hidden_factor

    def clock(self):
        return self.now

    def fold_seconds(self, setting):
        factor = self.hidden_factor if setting.hidden_units else 1.0
        return self.per_step * setting.how_many_training_steps * factor

    def fold_answers(self, pool, setting, fold):
        self.calls += fold == 0
        self.now += self.fold_seconds(setting)
        held = int(np.sum(pool.folds == fold))
        return np.arange(held) % 2 == 0, np.ones(held)


def test_a_seconds_budget_stops_before_the_trial_that_would_pass_it(monkeypatch, caplog):
    cost = FakeCost(per_step=0.01)
    monkeypatch.setattr(tuning, "fold_answers", cost.fold_answers)
    budget = tuning.Budget(trials=50, seconds=40.0, clock=cost.clock)
    caplog.set_level("INFO")
    result = tuning.tune(synthetic_run(), FAR_OFF,
                         config_lib.TuningConfig(tune_seconds=40.0, tune_folds=3), budget)
    planned = tuning_space.trial_settings(1, FAR_OFF, 50)
    seconds = [0.01 * 3 * s["how_many_training_steps"] for s in planned]
    ran = len(result.trials)
    assert 1 < ran < 50 and cost.calls == ran
    assert sum(seconds[:ran]) <= 40.0 < sum(seconds[:ran + 1])
    assert result.seconds == pytest.approx(sum(seconds[:ran]))
    assert result.stopped.startswith(f"stopped at the time budget: {ran} of 50 trials run")
    assert "Tuning plan: up to 50 trials" in caplog.text
    assert "fits about" in caplog.text


def test_a_trial_slower_than_estimated_is_dropped_at_the_budget(monkeypatch):
    # A hidden layer makes a step 20 times dearer than trial 0's: the first such trial
    # is estimated at trial 0's speed, and the budget runs out inside it.
    cost = FakeCost(per_step=0.01, hidden_factor=20.0)
    monkeypatch.setattr(tuning, "fold_answers", cost.fold_answers)
    budget = tuning.Budget(trials=50, seconds=20.0, clock=cost.clock)
    result = tuning.tune(synthetic_run(), FAR_OFF,
                         config_lib.TuningConfig(tune_seconds=20.0, tune_folds=3), budget)
    planned = tuning_space.trial_settings(1, FAR_OFF, 50)
    dearest_fold = max(cost.fold_seconds(tuning_space.training_config(FAR_OFF, s))
                       for s in planned)
    assert cost.now - 100.0 <= 20.0 + dearest_fold
    assert "was dropped after" in result.stopped
    assert cost.calls == len(result.trials) + 1  # the dropped trial is not in the table
    assert all(not t.settings["hidden_units"] for t in result.trials)


def test_trial_0_runs_even_past_the_budget(monkeypatch):
    cost = FakeCost(per_step=1.0)
    monkeypatch.setattr(tuning, "fold_answers", cost.fold_answers)
    result = tuning.tune(synthetic_run(), FAR_OFF,
                         config_lib.TuningConfig(tune_seconds=1.0, tune_folds=3),
                         tuning.Budget(trials=10, seconds=1.0, clock=cost.clock))
    assert len(result.trials) == 1 and result.chosen == 0 and result.stopped
    assert cost.now - 100.0 == pytest.approx(3 * FAR_OFF.how_many_training_steps)


def trial(index, correct, entropy=1.0):
    correct = np.asarray(correct, bool)
    return tuning.Trial(index, {}, correct, entropy, 0.0, selection.Comparison(0, 0, 0))


def test_a_challenger_within_the_margin_leaves_the_default():
    n = 100
    default = np.arange(n) < 70
    # Two more right of 100 (72% vs 70%): the gain is under two standard errors.
    blip = default.copy()
    blip[70:72] = True
    close = selection.compare(blip, default)
    assert close.gain == pytest.approx(0.02) and close.margin > 0.02 and not close.wins
    # Ten more right: far past the noise.
    clear = default.copy()
    clear[70:80] = True
    assert selection.compare(clear, default).wins
    trials = [trial(0, default)]
    trials.append(dataclasses.replace(trial(1, blip), versus_default=close))
    assert tuning.choose(trials).index == 0
    trials.append(dataclasses.replace(trial(2, clear), versus_default=selection.compare(clear, default)))
    assert tuning.choose(trials).index == 2


def test_no_disagreement_keeps_the_incumbent():
    same = np.arange(20) < 15
    comparison = selection.compare(same, same)
    assert (comparison.gain, comparison.standard_error, comparison.wins) == (0, 0, False)
    assert not selection.compare([True], [False]).wins  # one image is no evidence


def test_the_log_table_lists_every_trial_and_marks_the_chosen(far_off, caplog):
    _, result = far_off
    lines = tuning.format_table(result).splitlines()
    assert len(lines) == 1 + len(result.trials)
    assert lines[0].split()[0] == "trial"
    marked = [line for line in lines[1:] if "*" in line]
    assert len(marked) == 1 and marked[0].split()[0] == str(result.chosen)
    report = result.as_dict()
    assert report["rule"] == selection.RULE and report["chosen"] == result.chosen
    assert [t["trial"] for t in report["trials"]] == list(range(len(result.trials)))
    json.dumps(report, allow_nan=False)


def events(folder):
    """Every summary value of the event files directly in folder."""
    values = []
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            values.extend(event.summary.value)
    return values


def test_hparams_dashboard_gets_the_experiment_and_one_session_per_trial(far_off, tmp_path):
    _, result = far_off
    tuning_summaries.write_trials(str(tmp_path), result)
    root = tmp_path / tuning_summaries.TENSORBOARD_RUN
    experiment = [v for v in events(str(root)) if v.tag == hparams_metadata.EXPERIMENT_TAG]
    assert len(experiment) == 1
    parsed = hparams_metadata.parse_experiment_plugin_data(
        experiment[0].metadata.plugin_data.content)
    assert sorted(h.name for h in parsed.hparam_infos) == sorted(tuning_space.SEARCHED)
    sessions = sorted(os.listdir(root))
    sessions.remove(next(n for n in sessions if n.startswith("events.")))
    assert sessions == [tuning_summaries.trial_run(t.index) for t in result.trials]
    for t in result.trials:
        values = events(str(root / tuning_summaries.trial_run(t.index)))
        start = [v for v in values if v.tag == hparams_metadata.SESSION_START_INFO_TAG]
        assert len(start) == 1, [v.tag for v in values]
        info = hparams_metadata.parse_session_start_info_plugin_data(
            start[0].metadata.plugin_data.content)
        assert info.hparams["optimizer"].string_value == t.settings["optimizer"]
        assert info.hparams["learning_rate"].number_value == pytest.approx(
            t.settings["learning_rate"])
        scalars = {v.tag: v.simple_value for v in values if v.HasField("simple_value")}
        assert scalars["tuning/accuracy"] == pytest.approx(t.accuracy)
        assert scalars["tuning/chosen"] == float(t.index == result.chosen)
        assert any(v.tag == hparams_metadata.SESSION_END_INFO_TAG for v in values)


@pytest.mark.parametrize("flat, message", [
    ({"tune_seconds": 0.0}, "--tune_seconds=0.0 must be a positive number of seconds"),
    ({"tune_seconds": -5.0}, "--tune_seconds=-5.0 must be a positive number of seconds"),
    ({"tune_trials": 1001}, "--tune_trials=1001 must be 0 (no tuning) or 2 to 1000"),
    ({"tune_trials": -1}, "--tune_trials=-1 must be 0 (no tuning) or 2 to 1000"),
    ({"tune_trials": 1}, "one trial compares nothing"),
    ({"tune_folds": 3}, "--tune_folds=3 applies only to tuning"),
    ({"tune_trials": 4, "tune_folds": 1}, "--tune_folds=1 must be between 2 and 20"),
    ({"tune_trials": 4, "how_many_training_steps": 0}, "--how_many_training_steps=0 must be positive"),
    ({"tune_trials": 4, "flip_left_right": True}, "compare settings on cached bottlenecks"),
    ({"tune_seconds": float("nan")}, "--tune_seconds=nan must be a finite number"),
])
def test_unusable_tuning_flags_are_refused_in_one_line(flat, message):
    config = config_lib.from_flat({"image_dir": "photos", **flat})
    with pytest.raises(config_lib.UsageError) as raised:
        config.validate()
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_too_few_images_for_the_folds_are_refused():
    run = synthetic_run(sizes=(5, 2, 3))
    with pytest.raises(config_lib.UsageError, match="--tune_folds=5 needs at least 10"):
        tuning.tune(run, FAR_OFF, config_lib.TuningConfig(tune_trials=2))


def test_a_tuned_run_logs_reports_and_trains_the_chosen_setting(tmp_path, tiny_module, caplog):
    image_dir = make_dataset(tmp_path / "data", per_class=8)
    settings = retrain_settings(tmp_path, image_dir, tiny_module, tune_trials=3, tune_folds=2,
                                how_many_training_steps=40, learning_rate=1e-6,
                                eval_report=str(tmp_path / "out" / "report.json"),
                                report_dir=str(tmp_path / "report"))
    caplog.set_level("INFO")
    job.run_retraining(config_lib.from_flat(settings))
    with open(settings["eval_report"]) as f:
        report = json.load(f)
    tuned = report["tuning"]
    assert len(tuned["trials"]) == 3 and tuned["folds"] == 2 and tuned["rule"] == selection.RULE
    chosen = tuned["trials"][tuned["chosen"]]["settings"]
    # The layer trained is the chosen setting's: its steps, its learning rate in TensorBoard.
    assert report["steps_trained"] == chosen["how_many_training_steps"]
    assert "Tuning plan: up to 3 trials" in caplog.text
    assert f"Trained {chosen['how_many_training_steps']} steps" in caplog.text
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h2>Tuning</h2>" in page and page.count("<tr>") > 3
    root = os.path.join(settings["summaries_dir"], tuning_summaries.TENSORBOARD_RUN)
    assert sorted(n for n in os.listdir(root) if n.startswith("trial_")) == [
        "trial_000", "trial_001", "trial_002"]
