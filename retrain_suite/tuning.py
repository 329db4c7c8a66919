r"""Tuning: choose the final layer's settings by cross-validation on the cached bottlenecks.

With --tune_trials and/or --tune_seconds, before the final layer is trained,
`tune` tries settings of it (tuning_space: learning rate, optimizer,
schedule, L2, label smoothing, hidden units, dropout, steps), trial 0 being
the flags' own. Each trial is scored by k-fold cross-validation over the
training and validation images (tuning_space.stratified_folds): k layers,
each trained on k - 1 folds for the trial's steps and asked about the fold
it did not see, give one out-of-fold answer per image. No choice is made
inside a fold (its last step's layer answers), so no image both chooses and
scores. Test images take no part.

The choice (selection.py): a trial replaces trial 0 only when its
out-of-fold accuracy beats trial 0's on the same images by more than two
standard errors of the paired per-image difference; among the trials that
do, the most accurate (then the lower cross entropy, then the earlier
trial). Otherwise trial 0, the flags' setting, is kept: tuning never picks a
setting it did not compare with the flags'.

The budget: --tune_trials trials at most; with --tune_seconds, no trial is
started whose estimated time (the measured seconds per fold step so far
times its steps and folds) would end past the budget. Trial 0 always runs;
its time is the estimate's first measure, and the plan line that follows
it says how many trials there will be and how long they should take. The
same seed and data give the same trials and the same choice; a time budget
can only make the list shorter.

The chosen setting is then trained as a normal run (training.train) and
tested once, as without tuning.
"""

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import config as config_lib
from retrain_suite import final_layer, schedules, selection, training, tuning_space
from retrain_suite.bottleneck import compute


@dataclasses.dataclass(frozen=True)
class Trial:
    """One setting and its cross-validation scores."""

    index: int  # 0: the flags' setting
    settings: dict  # {tuning_space.SEARCHED field: value}
    correct: np.ndarray  # bool [n]: each pooled image answered right by the layer that did not see it
    cross_entropy: float  # mean over the n images (nats); a diverged answer counts as DIVERGED_LOSS
    seconds: float
    versus_default: selection.Comparison  # against trial 0 on the same images

    @property
    def accuracy(self):
        return float(np.mean(self.correct)) if len(self.correct) else 0.0


@dataclasses.dataclass(frozen=True)
class TuningResult:
    trials: tuple  # (Trial, ...) in the order run
    chosen: int  # index of the chosen trial
    chosen_training: config_lib.TrainingConfig
    folds: int
    images: int  # n: training + validation images
    stopped: Optional[str]  # why fewer trials ran than asked, or None
    seconds: float

    def as_dict(self):
        """The --eval_report JSON's "tuning" entry: every trial, the rule and the choice."""
        return {
            "rule": selection.RULE,
            "folds": self.folds, "images": self.images, "chosen": self.chosen,
            "chosen_settings": dict(self.trials[self.chosen].settings),
            "stopped": self.stopped, "seconds": round(self.seconds, 3),
            "trials": [{
                "trial": t.index, "settings": dict(t.settings), "accuracy": t.accuracy,
                "cross_entropy": t.cross_entropy, "gain_over_trial_0": t.versus_default.gain,
                "standard_error": t.versus_default.standard_error,
                "margin": t.versus_default.margin, "beats_trial_0": t.versus_default.wins,
                "seconds": round(t.seconds, 3)} for t in self.trials],
        }


DIVERGED_LOSS = -math.log(1e-30)  # the cross entropy of an answer that is not a number


@dataclasses.dataclass(frozen=True)
class Pool:
    """The images tuning scores on: training then validation, with their folds."""

    bottlenecks: np.ndarray  # float32 [n, D]
    labels: np.ndarray  # int64 [n]
    folds: np.ndarray  # int64 [n]: each image's fold, in [0, k)
    class_count: int


def pool_of(run, folds):
    """The Pool of a run_data.PreparedRun's training and validation images in `folds` folds.
    Raises UsageError when a fold would have no images or nothing to train on."""
    sets = (run.training, run.validation)
    labels = np.concatenate([s.labels for s in sets]).astype(np.int64)
    vectors = np.concatenate([s.bottlenecks for s in sets]).astype(np.float32)
    keys = [tuning_space.fold_key(image, vector)
            for s in sets for image, vector in zip(s.images, s.bottlenecks)]
    fold_of = tuning_space.stratified_folds(keys, labels, folds)
    if len(labels) < 2 * folds:
        raise config_lib.UsageError(
            f"--tune_folds={folds} needs at least {2 * folds} training and validation images "
            f"(there are {len(labels)}); lower --tune_folds or add images.")
    return Pool(vectors, labels, fold_of, run.class_count)


def _loss_settings(setting, labels, class_count):
    weights = None
    if setting.class_weighting == "balanced":
        weights = final_layer.balanced_class_weights(labels, class_count)
    return final_layer.LossSettings(class_weights=weights, label_smoothing=setting.label_smoothing,
                                    l2_regularization=setting.l2_regularization)


def fold_answers(pool, setting, fold):
    """Train a layer of `setting` (a config.TrainingConfig) on every fold but `fold` for its
    steps; ask it about `fold`. -> (correct bool [m], cross entropy float64 [m]) of the
    fold's m images, in pool order."""
    held = pool.folds == fold
    x, y = pool.bottlenecks[~held], pool.labels[~held]
    spec = final_layer.LayerSpec(pool.class_count, "final_result", setting.hidden_units)
    g = final_layer.build_training_graph(pool.bottlenecks.shape[1], spec, setting,
                                         _loss_settings(setting, y, pool.class_count))
    steps = setting.how_many_training_steps
    rates = [schedules.learning_rate_at(setting.learning_rate_schedule, s, setting.learning_rate,
                                        steps, setting.learning_rate_decay, setting.decay_steps)
             for s in range(steps)]
    with tf.compat.v1.Session(graph=g.graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(g.iterator_init, {g.bottlenecks: x, g.labels: y})
        chunks, step = training.StepsPerCall(), 0
        while step < steps:  # calls short enough for Ctrl-C, as training's loop
            step += training.run_steps(sess, g, chunks, rates[step:steps], setting.dropout)
        held_x, held_y = pool.bottlenecks[held], pool.labels[held]
        probabilities = np.concatenate([
            sess.run(g.probabilities, {g.bottleneck_input: held_x[rows]})
            for rows in _row_slices(len(held_y), pool.class_count)] or [np.zeros([0, 1])])
    finite = np.all(np.isfinite(probabilities), axis=1)
    correct = finite & (np.argmax(np.nan_to_num(probabilities, nan=-1.0), axis=1) == held_y)
    chosen = probabilities[np.arange(len(held_y)), held_y] if len(held_y) else np.zeros([0])
    entropy = np.where(finite, -np.log(np.maximum(np.nan_to_num(chosen), 1e-30)), DIVERGED_LOSS)
    return correct, entropy


def _row_slices(count, class_count):
    step = training.rows_per_call(class_count)
    return [slice(start, start + step) for start in range(0, count, step)]


def cross_validate(pool, setting, folds, stop=lambda: False):
    """Out-of-fold answers of `setting` for every pooled image. -> (correct bool [n],
    mean cross entropy), or None when stop() said so before a fold after the first."""
    correct = np.zeros(len(pool.labels), bool)
    entropy = np.zeros(len(pool.labels), np.float64)
    for fold in range(folds):
        if fold and stop():
            return None
        held = pool.folds == fold
        if np.any(held):
            correct[held], entropy[held] = fold_answers(pool, setting, fold)
    return correct, float(np.mean(entropy))


def estimated_seconds(measured, settings, folds):
    """A trial's seconds: its fold steps times the slowest seconds per fold step measured
    ([(seconds, fold steps, hidden units)] of the trials so far) with its hidden units,
    or, with none measured yet, of any: a hidden layer is what changes a step's cost."""
    same = [(s, n) for s, n, hidden in measured if hidden == settings["hidden_units"]]
    per_step = max(s / max(n, 1) for s, n in (same or [(s, n) for s, n, _ in measured]))
    return per_step * settings["how_many_training_steps"] * folds


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much tuning may do. clock: seconds (time.monotonic; a test's own)."""

    trials: int  # at most this many trials, trial 0 included
    seconds: Optional[float]  # None: no time limit
    clock: Callable = time.monotonic


def budget_of(tuning_config, clock=time.monotonic):
    """The Budget of a config.TuningConfig: --tune_trials, or without it the cap."""
    return Budget(tuning_config.tune_trials or config_lib.MAX_TUNE_TRIALS,
                  tuning_config.tune_seconds, clock)


def tune(run, base, tuning_config, budget=None):
    """Search the final layer's settings on run's cached bottlenecks. -> TuningResult.

    run: the run_data.PreparedRun; base: the flags' config.TrainingConfig (its seed
    set); tuning_config: the config.TuningConfig; budget: a Budget (default:
    budget_of(tuning_config)).
    """
    budget = budget or budget_of(tuning_config)
    folds = tuning_config.tune_folds
    pool = pool_of(run, folds)
    planned = tuning_space.trial_settings(base.random_seed, base, budget.trials)
    start = budget.clock()
    measured = []  # (seconds, fold steps) of each trial run
    results, stopped = [], None
    for index, settings in enumerate(planned):
        setting = tuning_space.training_config(base, settings)
        fold_steps = setting.how_many_training_steps * folds
        if index and budget.seconds is not None:
            estimate = estimated_seconds(measured, settings, folds)
            spent = budget.clock() - start
            if spent + estimate > budget.seconds:
                stopped = (f"stopped at the time budget: {index} of {len(planned)} trials run in "
                           f"{spent:.1f} s; trial {index} would take about {estimate:.1f} s more "
                           f"(--tune_seconds={budget.seconds:g})")
                logging.info("Tuning %s.", stopped)
                break
        began = budget.clock()
        # A trial slower than its estimate is dropped between folds once the budget
        # is spent (never trial 0: the baseline).
        stop = (lambda: past(budget, start)) if index else (lambda: False)
        answers = cross_validate(pool, setting, folds, stop)
        seconds = budget.clock() - began
        if answers is None:
            stopped = (f"stopped at the time budget: trial {index} was dropped after "
                       f"{seconds:.1f} s, past --tune_seconds={budget.seconds:g}; {index} of "
                       f"{len(planned)} trials run")
            logging.info("Tuning %s.", stopped)
            break
        correct, entropy = answers
        measured.append((seconds, fold_steps, settings["hidden_units"]))
        versus = selection.compare(correct, results[0].correct if results else correct)
        results.append(Trial(index, settings, correct, entropy, seconds, versus))
        if index == 0:
            logging.info("%s", plan_line(pool, planned, folds, budget, seconds))
        logging.info("Tuning trial %d (of up to %d) %s", index, len(planned), format_row(results[-1]))
    chosen = choose(results)
    result = TuningResult(tuple(results), chosen.index,
                          tuning_space.training_config(base, chosen.settings), folds,
                          len(pool.labels), stopped, budget.clock() - start)
    logging.info("Tuning trials (%d-fold cross-validation over %d training and validation "
                 "images; the rule: %s):\n%s", folds, len(pool.labels), selection.RULE,
                 format_table(result))
    logging.info("%s", choice_line(result))
    return result


def past(budget, start):
    """Whether the budget's seconds are spent, `start` being the search's start."""
    return budget.seconds is not None and budget.clock() - start >= budget.seconds


def plan_line(pool, planned, folds, budget, first_seconds):
    """The plan, once trial 0 has measured the time a fold step takes."""
    steps = planned[0]["how_many_training_steps"] * folds
    per_step = first_seconds / steps
    total = per_step * folds * sum(s["how_many_training_steps"] for s in planned)
    limit = ""
    if budget.seconds is not None:
        ends = np.cumsum([per_step * folds * s["how_many_training_steps"] for s in planned])
        limit = (f"; the budget of {budget.seconds:g} s fits about "
                 f"{max(1, int(np.sum(ends <= budget.seconds)))} of them")
    return (f"Tuning plan: up to {len(planned)} trials (trial 0: the flags' settings), each "
            f"{folds}-fold cross-validation over {len(pool.labels)} training and validation "
            f"images; trial 0 took {first_seconds:.1f} s ({steps / max(first_seconds, 1e-9):.0f} "
            f"steps/s), so all {len(planned)} would take about "
            f"{compute.format_duration(total)} at that speed (longer with a hidden layer)"
            f"{limit}.")


def choose(trials):
    """The chosen Trial: the most accurate of those beating trial 0 by the margin (ties:
    lower cross entropy, then the earlier), else trial 0."""
    winners = [t for t in trials[1:] if t.versus_default.wins]
    if not winners:
        return trials[0]
    return max(winners, key=lambda t: (t.accuracy, -t.cross_entropy, -t.index))


COLUMNS = ("trial", "learning rate", "optimizer", "schedule", "L2", "smoothing", "hidden",
           "dropout", "steps", "accuracy", "vs trial 0", "seconds")


def table_rows(result):
    """The trials as rows of text cells (COLUMNS), the chosen one marked."""
    rows = []
    for t in result.trials:
        s, versus = t.settings, t.versus_default
        gain = ("-" if t.index == 0 else
                f"{100 * versus.gain:+.1f} +- {100 * versus.standard_error:.1f}")
        rows.append((f"{t.index}{' *' if t.index == result.chosen else ''}",
                     f"{s['learning_rate']:.3g}", s["optimizer"], s["learning_rate_schedule"],
                     f"{s['l2_regularization']:.2g}", f"{s['label_smoothing']:g}",
                     str(s["hidden_units"]), f"{s['dropout']:g}",
                     str(s["how_many_training_steps"]), f"{100 * t.accuracy:.1f}%", gain,
                     f"{t.seconds:.1f}"))
    return rows


def format_row(trial):
    versus = "" if trial.index == 0 else f", {trial.versus_default.describe()} over trial 0"
    return (f"{describe(trial.settings)}: out-of-fold accuracy {100 * trial.accuracy:.1f}%"
            f"{versus}, {trial.seconds:.1f} s")


def format_table(result):
    """The trials table of the log: one line per trial, * marking the chosen."""
    rows = [COLUMNS, *table_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths))
                     for row in rows)


def describe(settings):
    """A trial's settings as flags, e.g. '--learning_rate=0.05 --optimizer=adam ...'."""
    return " ".join(f"--{name}={value:.3g}" if isinstance(value, float) else f"--{name}={value}"
                    for name, value in settings.items())


def choice_line(result):
    chosen = result.trials[result.chosen]
    ending = f" ({result.stopped})" if result.stopped else ""
    if result.chosen == 0:
        best = max(result.trials, key=lambda t: (t.accuracy, -t.index))
        closest = ("" if best.index == 0 else
                   f"; the most accurate, trial {best.index}, was "
                   f"{best.versus_default.describe()}, within the margin")
        return (f"Tuning keeps trial 0, the flags' settings: no trial beat it by more than "
                f"{selection.MARGIN_STANDARD_ERRORS:g} standard errors{closest}; "
                f"{len(result.trials)} trials in {result.seconds:.1f} s{ending}.")
    return (f"Tuning chose trial {chosen.index} ({describe(chosen.settings)}): "
            f"{chosen.versus_default.describe()} over trial 0's "
            f"{100 * result.trials[0].accuracy:.1f}%; {len(result.trials)} trials in "
            f"{result.seconds:.1f} s{ending}. Training it on the training images now.")
