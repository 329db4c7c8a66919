r"""The threshold of each class: above it, a multi-label classifier says "yes".

The rule, per class, on the validation set's scores (sigmoid outputs in [0, 1]):

1. A threshold t says yes to every image whose score is >= t. Between two
   neighbouring distinct scores (with 0 and 1 as the outer ends) every t says yes to
   the same images, so F1 = 2 TP / (2 TP + FP + FN) is constant on each such interval.
2. Keep the intervals of the highest F1. Neighbouring kept intervals join into one
   range (different images, the same F1), and the widest range wins (ties: the lower
   one): the widest is the choice least moved by a few images more or less.
3. The threshold is the middle of that range: as far as the validation set allows
   from the scores that would change the answer.
4. A class with no validation images that have it gets DEFAULT_THRESHOLD (0.5): no F1
   can be measured.

Every threshold so chosen is inside (0, 1). F1 rather than accuracy: with few images
of a class, "never" is accurate and useless.
"""

import numpy as np

DEFAULT_THRESHOLD = 0.5


def choose_threshold(scores, truth):
    """The rule above for one class. scores float [n] in [0, 1]; truth bool [n]. -> float."""
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(truth, bool)
    positives = int(truth.sum())
    if not positives:
        return DEFAULT_THRESHOLD
    # Interval k is (ends[k - 1], ends[k]]: a t in it says yes to scores >= ends[k].
    ends = np.unique(np.concatenate([[0.0], scores, [1.0]]))
    ordered = np.sort(scores)
    ordered_positive = np.sort(scores[truth])
    said_yes = len(ordered) - np.searchsorted(ordered, ends[1:], "left")
    true_positives = len(ordered_positive) - np.searchsorted(ordered_positive, ends[1:], "left")
    f1 = 2.0 * true_positives / (said_yes + positives)
    best = f1 == f1.max()
    runs, start = [], None
    for k, kept in enumerate(best):
        if kept and start is None:
            start = k
        if not kept and start is not None:
            runs.append((start, k - 1))
            start = None
    if start is not None:
        runs.append((start, len(best) - 1))
    # Interval k of f1 (0-based) spans ends[k] to ends[k + 1].
    low, high = max(runs, key=lambda run: (ends[run[1] + 1] - ends[run[0]], -run[0]))
    return float((ends[low] + ends[high + 1]) / 2.0)


def choose_thresholds(scores, targets):
    """Every class's threshold. scores float [n, C]; targets [n, C] (1: has the class).
    -> float32 [C]."""
    scores = np.asarray(scores)
    targets = np.asarray(targets) > 0.5
    return np.array([choose_threshold(scores[:, c], targets[:, c]) for c in range(scores.shape[1])],
                    np.float32)


def check_thresholds(thresholds):
    """Raise ValueError unless every threshold is a number inside (0, 1)."""
    thresholds = np.asarray(thresholds, np.float64)
    if not np.all((thresholds > 0) & (thresholds < 1)):
        bad = thresholds[~((thresholds > 0) & (thresholds < 1))][0]
        raise ValueError(f"threshold {bad} is outside (0, 1)")
