r"""How good a multi-label classifier is: the numbers and their log table.

From the scores (float [n, C] in [0, 1]), the true label sets (targets [n, C], 1: has
the label) and the thresholds (float [C]; a label is predicted when its score >= its
threshold), `evaluate` makes a report (dict, JSON-ready):

- per class: precision, recall and F1 at the threshold; average precision (AP: the
  mean, over the images that have the label, of the precision among the images scored
  at least as high; ties in score count as one step), the threshold, support (images
  with the label) and predicted (images given it);
- mean_average_precision (mAP): the mean AP over the classes that occur in the set;
- exact_match: the fraction of images whose predicted label set is exactly the true
  one (an image with no labels is right when none is predicted);
- macro_avg (unweighted means over the classes where each is defined) and micro_avg
  (every image-label decision pooled).

A ratio whose denominator is zero is None (null in JSON, "-" in the tables), as in
evaluation.py.
"""

import numpy as np

from retrain_suite.dataset import MAX_CLASSES_LISTED


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else None


def average_precision(scores, truth):
    """AP of one class. scores float [n]; truth bool [n]. -> float, None without positives."""
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(truth, bool)
    positives = int(truth.sum())
    if not positives:
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order]
    # The last image of each group of equal scores: a threshold takes the group whole.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    true_positives = np.cumsum(hits)[ends]
    precision = true_positives / (ends + 1)
    recall_steps = np.diff(np.concatenate([[0], true_positives])) / positives
    return float(np.sum(recall_steps * precision))


def predicted_sets(scores, thresholds):
    """bool [n, C]: the labels predicted for each image (score >= its class's threshold)."""
    return np.asarray(scores) >= np.asarray(thresholds, np.float32)[None, :]


def evaluate(scores, targets, thresholds, labels, predicted=None):
    """The report of one set (see the module docstring). scores float [n, C]; targets
    [n, C]; thresholds float [C]; labels [C] names; predicted: bool [n, C], the label sets
    predicted, when a model gave them itself (default: predicted_sets)."""
    scores = np.asarray(scores, np.float32).reshape(-1, len(labels))
    truth = np.asarray(targets).reshape(-1, len(labels)) > 0.5
    predicted = (predicted_sets(scores, thresholds) if predicted is None
                 else np.asarray(predicted, bool).reshape(truth.shape))
    hit = predicted & truth
    classes = []
    for c, label in enumerate(labels):
        tp, said, has = int(hit[:, c].sum()), int(predicted[:, c].sum()), int(truth[:, c].sum())
        classes.append({
            "label": label, "threshold": float(thresholds[c]),
            "precision": _ratio(tp, said), "recall": _ratio(tp, has),
            "f1": _ratio(2 * tp, said + has),
            "average_precision": average_precision(scores[:, c], truth[:, c]),
            "support": has, "predicted": said,
        })
    macro = {}
    for name in ("precision", "recall", "f1", "average_precision"):
        defined = [c[name] for c in classes if c[name] is not None]
        macro[name] = float(np.mean(defined)) if defined else None
    tp, said, has = int(hit.sum()), int(predicted.sum()), int(truth.sum())
    count = len(scores)
    return {
        "count": count,
        "mean_average_precision": macro["average_precision"],
        "exact_match": _ratio(int(np.all(predicted == truth, axis=1).sum()), count),
        "classes": classes,
        "macro_avg": {k: macro[k] for k in ("precision", "recall", "f1")},
        "micro_avg": {"precision": _ratio(tp, said), "recall": _ratio(tp, has),
                      "f1": _ratio(2 * tp, said + has)},
    }


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _aligned(rows):
    """Rows of cells -> lines, the first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def format_report(name, report):
    """A set's report as text: the mAP and exact-match line, then the per-class table
    (past MAX_CLASSES_LISTED classes, those of the lowest F1, then a count of the rest)."""
    classes = report["classes"]
    shown = list(range(len(classes)))
    note = []
    if len(classes) > MAX_CLASSES_LISTED:
        shown = sorted(shown, key=lambda i: (classes[i]["f1"] is None, classes[i]["f1"] or 0.0,
                                             i))[:MAX_CLASSES_LISTED]
        note = [f"... and {len(classes) - len(shown)} more classes (every class is in the "
                "--eval_report JSON)."]
    rows = [["class", "threshold", "precision", "recall", "F1", "AP", "support", "predicted"]]
    rows.append(["-" * len(cell) for cell in rows[0]])
    for i in shown:
        c = classes[i]
        rows.append([c["label"], f"{c['threshold']:.3f}", _percent(c["precision"]),
                     _percent(c["recall"]), _percent(c["f1"]), _percent(c["average_precision"]),
                     c["support"], c["predicted"]])
    macro, micro = report["macro_avg"], report["micro_avg"]
    rows.append(["(macro average)", "", _percent(macro["precision"]), _percent(macro["recall"]),
                 _percent(macro["f1"]), _percent(report["mean_average_precision"]), "", ""])
    rows.append(["(micro average)", "", _percent(micro["precision"]), _percent(micro["recall"]),
                 _percent(micro["f1"]), "", "", ""])
    return "\n".join([
        f"{name}: mean average precision {_percent(report['mean_average_precision'])}, "
        f"exact match {_percent(report['exact_match'])} (N={report['count']})",
        *_aligned(rows), *note,
    ])
