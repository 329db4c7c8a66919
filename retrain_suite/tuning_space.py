r"""What tuning searches, and the folds it scores on: pure functions of a seed and the data.

The search space (`draw_setting`): each trial after trial 0 is a
config.TrainingConfig equal to the flags' except for the SEARCHED fields,
drawn at random from a numpy RandomState of --random_seed:

    optimizer               sgd, momentum or adam (uniformly)
    learning_rate           log-uniform in LEARNING_RATES[optimizer]
    learning_rate_schedule  constant, exponential or cosine (uniformly)
    l2_regularization       0 (half the trials) or log-uniform in [1e-5, 1e-2]
    label_smoothing         one of 0, 0.05, 0.1, 0.2
    hidden_units            one of 0 (half the trials), 128, 512
    dropout                 one of 0, 0.1, 0.25, 0.5
    how_many_training_steps the flags' steps times 1/2, 1 or 2

Trial 0 is the flags' setting unchanged. The flags' values are where the
search starts, not limits on it: tuning compares every trial with trial 0
and keeps trial 0 unless a trial beats it by the margin (selection.py).

The folds (`stratified_folds`): every image of the training and validation
sets goes to one of k folds, class by class, in the order of a SHA-1 of its
relative path (of its bottleneck's bytes when the run has no image names):
stable across runs and machines, independent of the seed, and balanced
within each class. Test images are never in a fold.
"""

import dataclasses
import hashlib

import numpy as np

from retrain_suite import final_layer, schedules

# Fields of config.TrainingConfig the search draws; every other field is the flags'.
SEARCHED = ("learning_rate", "optimizer", "learning_rate_schedule", "l2_regularization",
            "label_smoothing", "hidden_units", "dropout", "how_many_training_steps")

# (low, high) of the log-uniform learning rate of each optimizer: adaptive and
# momentum steps are larger for the same rate, so their useful range is lower.
LEARNING_RATES = {"sgd": (1e-3, 1.0), "momentum": (1e-4, 0.3), "adam": (1e-5, 3e-2)}
L2_RANGE = (1e-5, 1e-2)
LABEL_SMOOTHINGS = (0.0, 0.05, 0.1, 0.2)
HIDDEN_UNITS = (0, 0, 128, 512)
DROPOUTS = (0.0, 0.1, 0.25, 0.5)
STEP_FACTORS = (0.5, 1.0, 2.0)


def _log_uniform(rng, low, high):
    return float(10 ** rng.uniform(np.log10(low), np.log10(high)))


def draw_setting(rng, base):
    """One trial's setting: {SEARCHED field: value} drawn from rng (a numpy RandomState);
    base (the flags' config.TrainingConfig) gives the steps it scales."""
    optimizer = str(rng.choice(final_layer.OPTIMIZERS))
    schedule = str(rng.choice(schedules.SCHEDULES))
    l2 = _log_uniform(rng, *L2_RANGE) if rng.rand() < 0.5 else 0.0
    return {
        "learning_rate": _log_uniform(rng, *LEARNING_RATES[optimizer]),
        "optimizer": optimizer,
        "learning_rate_schedule": schedule,
        "l2_regularization": l2,
        "label_smoothing": float(rng.choice(LABEL_SMOOTHINGS)),
        "hidden_units": int(rng.choice(HIDDEN_UNITS)),
        "dropout": float(rng.choice(DROPOUTS)),
        "how_many_training_steps": max(1, int(round(base.how_many_training_steps
                                                    * float(rng.choice(STEP_FACTORS))))),
    }


def settings_of(training):
    """{SEARCHED field: value} of a config.TrainingConfig."""
    return {name: getattr(training, name) for name in SEARCHED}


def trial_settings(seed, base, count):
    """The settings of trials 0..count-1: trial 0 base's own, the rest drawn from
    RandomState(seed). The first m of count trials are those of m trials, so a
    budget that stops early ran a prefix of the same list. -> [dict]."""
    rng = np.random.RandomState(seed)
    return [settings_of(base)] + [draw_setting(rng, base) for _ in range(count - 1)]


def training_config(base, settings):
    """base (a config.TrainingConfig) with a trial's settings. An exponential schedule's
    --learning_rate_decay and --decay_steps are kept for trials of that schedule and
    reset for the others (they apply to it only)."""
    changed = dataclasses.replace(base, **settings)
    if changed.learning_rate_schedule != "exponential":
        changed = dataclasses.replace(changed, learning_rate_decay=schedules.DEFAULT_DECAY,
                                      decay_steps=0)
    return changed


def fold_key(image, vector):
    """The bytes an image's fold is drawn from: its relative path, or its bottleneck."""
    if image is not None:
        return image.path.encode("utf-8", "surrogatepass")
    return np.ascontiguousarray(vector, np.float32).tobytes()


def stratified_folds(keys, labels, folds):
    """Fold of each image (int64 [n]) from keys ([bytes], one per image) and labels
    (int [n]): within each class, images in SHA-1 order of their keys are dealt to the
    folds in turn, each class starting where the previous one stopped, so every
    fold gets about n / folds images and each class's share."""
    labels = np.asarray(labels, np.int64)
    digests = [hashlib.sha1(key).hexdigest() for key in keys]
    fold_of = np.zeros(len(labels), np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: digests[i])
        for position, i in enumerate(members):
            fold_of[i] = (dealt + position) % folds
        dealt += len(members)
    return fold_of
