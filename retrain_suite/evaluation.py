r"""What a trained classifier gets right and wrong, in numbers and tables.

From the true and predicted class of each evaluated image this module makes:

- `evaluate`: a report (dict, JSON-ready) with the overall accuracy, per-class
  precision, recall, F1 and support, and the confusion matrix;
- `format_report`: the same as aligned text tables for the log.

The pictures of the same report (TensorBoard's) are `evaluation_pictures`'.

Conventions: the confusion matrix has rows the true class and columns the
predicted class, both in label order; it is kept as its non-zero cells
(`confusion_counts`), whose number grows with the images, not with the square
of the classes. Everything shown (tables, pictures, scalars) is bounded at any
number of classes; the report holds every class. A ratio whose denominator is
zero (precision of a class never predicted, recall of a class with no images)
is None in the report (null in JSON) and "-" in the tables, not a made-up 0.
"""

import json

import numpy as np

from retrain_suite import atomic_files
from retrain_suite.dataset import MAX_CLASSES_LISTED

# What is shown must stay readable at 10,000 classes; the --eval_report JSON
# holds every class whatever the count. MAX_CLASSES_LISTED (the dataset's, one
# policy for every list of classes): rows of the log's per-class table, and
# per-class TensorBoard scalars.


MAX_MATRIX_TABLE_CLASSES = 20  # the log's confusion matrix table; past it, a list of
# the most frequent confusions (MAX_CLASSES_LISTED of them)


MAX_DENSE_CLASSES = 100  # the report's dense confusion_matrix (10,000 cells)


def confusion_counts(truth, predictions, class_count):
    """truth, predictions int [N] class indices -> int64 [K, 3], the non-zero cells of
    the confusion matrix as (true class, predicted class, images), row by row.

    K is at most N and at most C * C: memory and time grow with the images, not
    with the square of the classes (a dense [C, C] int64 matrix of 10,000
    classes is 800 MB).
    """
    truth = np.asarray(truth, np.int64)
    predictions = np.asarray(predictions, np.int64)
    cells, images = np.unique(truth * class_count + predictions, return_counts=True)
    return np.stack([cells // class_count, cells % class_count, images], axis=1).reshape(-1, 3)


def dense_matrix(counts, class_count):
    """confusion_counts' cells -> int64 [C, C], rows true, columns predicted."""
    counts = np.asarray(counts, np.int64).reshape(-1, 3)
    matrix = np.zeros([class_count, class_count], np.int64)
    matrix[counts[:, 0], counts[:, 1]] = counts[:, 2]
    return matrix


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else None


def evaluate(truth, predictions, labels):
    """The report of one set: {'count', 'accuracy', 'classes', 'macro_avg',
    'confusion_counts', 'confusion_matrix'}.

    truth, predictions: int [N] class indices; labels: [C] class names.
    classes: one {'label', 'precision', 'recall', 'f1', 'support'} per label, in
    label order; support is the number of images of that class. F1 is
    2 TP / (2 TP + FP + FN), defined whenever the class occurs at all.
    macro_avg: the unweighted mean of each ratio over the classes where it is
    defined. accuracy is None for an empty set. confusion_counts: the non-zero
    cells, [[true index, predicted index, images], ...] row by row, at any
    number of classes; confusion_matrix: the same as a dense [C][C] list up to
    MAX_DENSE_CLASSES classes, None past it (its size grows as C squared).
    """
    truth = np.asarray(truth, np.int64)
    predictions = np.asarray(predictions, np.int64)
    class_count = len(labels)
    support = np.bincount(truth, minlength=class_count)
    predicted = np.bincount(predictions, minlength=class_count)
    true_positives = np.bincount(truth[truth == predictions], minlength=class_count)
    classes = []
    for c, label in enumerate(labels):
        tp, fp, fn = true_positives[c], predicted[c] - true_positives[c], support[c] - true_positives[c]
        classes.append({
            "label": label,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "support": int(support[c]),
        })
    macro = {}
    for name in ("precision", "recall", "f1"):
        defined = [c[name] for c in classes if c[name] is not None]
        macro[name] = float(np.mean(defined)) if defined else None
    count = len(truth)
    counts = confusion_counts(truth, predictions, class_count)
    return {
        "count": count,
        "accuracy": _ratio(true_positives.sum(), count),
        "classes": classes,
        "macro_avg": macro,
        "confusion_counts": counts.tolist(),
        "confusion_matrix": (dense_matrix(counts, class_count).tolist()
                             if class_count <= MAX_DENSE_CLASSES else None),
    }


def write_report(path, report):
    """Write a report dict as UTF-8 JSON, atomically (whole or not at all)."""
    atomic_files.write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _aligned(rows, left_columns=1):
    """Rows of cells -> lines, the first left_columns left-aligned, the rest right-aligned.

    A row None becomes a line of dashes under each column.
    """
    cells = [row for row in rows if row is not None]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(
            str(cell).ljust(w) if i < left_columns else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row or ["-" * w for w in widths], widths))
        ).rstrip()
        for row in rows
    ]


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def worst_first(values):
    """Indices of values (floats or None) from the lowest up, None last, ties by index."""
    return sorted(range(len(values)), key=lambda i: (values[i] is None, values[i] or 0.0, i))


def _class_table(report):
    """The per-class rows of the table: every class in label order, or, past
    MAX_CLASSES_LISTED classes, the lowest F1 first. -> (heading or None, rows, note)."""
    classes = report["classes"]

    def row(c):
        return [c["label"], _percent(c["precision"]), _percent(c["recall"]), _percent(c["f1"]),
                c["support"]]

    if len(classes) <= MAX_CLASSES_LISTED:
        return None, [row(c) for c in classes], None
    shown = worst_first([c["f1"] for c in classes])[:MAX_CLASSES_LISTED]
    return (
        f"The {len(shown)} classes with the lowest F1, of {len(classes)}:",
        [row(classes[i]) for i in shown],
        f"... and {len(classes) - len(shown)} more classes (every class is in the "
        "--eval_report JSON).",
    )


def most_frequent_confusions(report, count=MAX_CLASSES_LISTED):
    """The off-diagonal cells with the most images, at most count. -> [(true index,
    predicted index, images)], the most images first, then the largest share of
    the true class's images, then in label order."""
    support = [c["support"] for c in report["classes"]]
    wrong = [(t, p, n) for t, p, n in report["confusion_counts"] if t != p]
    return sorted(wrong, key=lambda cell: (-cell[2], -cell[2] / support[cell[0]], cell[0], cell[1]))[
        :count]


def _confusion_lines(name, report, labels):
    """The confusion matrix for the log: a table up to MAX_MATRIX_TABLE_CLASSES
    classes, else the most frequent confusions."""
    if len(labels) <= MAX_MATRIX_TABLE_CLASSES:
        matrix_rows = [["true \\ predicted", *labels]]
        for label, counts in zip(labels, dense_matrix(report["confusion_counts"], len(labels))):
            matrix_rows.append([label, *counts.tolist()])
        return [f"{name} confusion matrix (rows: true class, columns: predicted class):",
                *_aligned(matrix_rows)]
    wrong = sum(1 for t, p, _ in report["confusion_counts"] if t != p)
    if not wrong:
        return [f"{name}: no image of the {len(labels)} classes was taken for another class."]
    shown = most_frequent_confusions(report)
    support = [c["support"] for c in report["classes"]]
    rows = [["true class", "predicted class", "images", "of its class"], None]
    rows += [[labels[t], labels[p], n, _percent(n / support[t])] for t, p, n in shown]
    return [f"{name}: the {len(shown)} most frequent confusions, of {wrong} pairs of classes "
            f"confused (the whole matrix of the {len(labels)} classes is in the --eval_report "
            "JSON):",
            *_aligned(rows, left_columns=2)]


def format_report(name, report, labels):
    """A set's report as text: accuracy line, per-class table, confusion matrix table.

    Bounded whatever the number of classes: past MAX_CLASSES_LISTED classes the
    table lists the classes with the lowest F1 and says how many more there are;
    past MAX_MATRIX_TABLE_CLASSES the confusion matrix becomes a list of the
    most frequent confusions.
    """
    heading, class_rows, note = _class_table(report)
    header = ["class", "precision", "recall", "F1", "support"]
    macro = report["macro_avg"]
    rows = [header, None, *class_rows,
            ["(macro average)", _percent(macro["precision"]), _percent(macro["recall"]),
             _percent(macro["f1"]), report["count"]]]
    return "\n".join([
        f"{name} accuracy {_percent(report['accuracy'])} (N={report['count']})",
        *([heading] if heading else []),
        *_aligned(rows),
        *([note] if note else []),
        "",
        *_confusion_lines(name, report, labels),
    ])
