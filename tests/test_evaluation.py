"""evaluation.py: metrics against a hand-computed confusion matrix, tables, pictures."""

import collections
import json
import tracemalloc

import helpers
import numpy as np
import pytest

from retrain_suite import evaluation

LABELS, TRUTH, PREDICTED = helpers.LABELS, helpers.TRUTH, helpers.PREDICTED



def test_confusion_matrix_counts_rows_true_columns_predicted():
    counts = evaluation.confusion_counts(TRUTH, PREDICTED, 4)
    # The non-zero cells only, row by row: (true, predicted, images).
    np.testing.assert_array_equal(
        counts, [[0, 0, 2], [0, 1, 1], [0, 2, 1], [1, 0, 1], [1, 1, 1], [2, 1, 1], [2, 2, 3]]
    )
    np.testing.assert_array_equal(
        evaluation.dense_matrix(counts, 4), [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    )


def test_json_report_matches_hand_computed_metrics(tmp_path):
    path = tmp_path / "report.json"
    evaluation.write_report(str(path), evaluation.evaluate(TRUTH, PREDICTED, LABELS))
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["count"] == 10
    assert report["accuracy"] == pytest.approx(6 / 10)
    assert report["confusion_matrix"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 1, 3, 0], [0, 0, 0, 0]]
    assert report["confusion_counts"] == [
        [0, 0, 2], [0, 1, 1], [0, 2, 1], [1, 0, 1], [1, 1, 1], [2, 1, 1], [2, 2, 3]
    ]
    a, b, c, d = report["classes"]
    assert [x["label"] for x in (a, b, c, d)] == LABELS
    # a: TP 2, predicted 3 times, 4 images.
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((2 / 3, 2 / 4, 4 / 7, 4))
    # b: TP 1, predicted 3 times, 2 images.
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5, 2))
    # c: TP 3, predicted 4 times, 4 images.
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((3 / 4, 3 / 4, 3 / 4, 4))
    # d: no images and never predicted: nothing to divide by.
    assert d == {"label": "d", "precision": None, "recall": None, "f1": None, "support": 0}
    assert report["macro_avg"]["precision"] == pytest.approx((2 / 3 + 1 / 3 + 3 / 4) / 3)
    assert report["macro_avg"]["f1"] == pytest.approx((4 / 7 + 2 / 5 + 3 / 4) / 3)


def test_class_never_predicted_has_no_precision_and_zero_recall():
    report = evaluation.evaluate([0, 1, 1], [0, 0, 0], ["x", "y"])
    y = report["classes"][1]
    assert y["precision"] is None and y["recall"] == 0.0 and y["f1"] == 0.0
    assert report["classes"][0]["precision"] == pytest.approx(1 / 3)


def test_log_tables_are_aligned_and_hold_the_numbers():
    report = evaluation.evaluate(TRUTH, PREDICTED, LABELS)
    text = evaluation.format_report("Test", report, LABELS)
    lines = text.splitlines()
    assert lines[0] == "Test accuracy 60.0% (N=10)"
    table = lines[1:8]
    assert table[0].split() == ["class", "precision", "recall", "F1", "support"]
    assert table[2].split() == ["a", "66.7%", "50.0%", "57.1%", "4"]
    assert table[5].split() == ["d", "-", "-", "-", "0"]
    # Right-aligned numbers: every row of the table ends in the same column.
    assert len({len(line) for line in table}) == 1
    matrix = lines[lines.index("Test confusion matrix (rows: true class, columns: predicted class):") + 1:]
    assert matrix[0].split() == ["true", "\\", "predicted", "a", "b", "c", "d"]
    assert matrix[3].split() == ["c", "0", "1", "3", "0"]
    assert len({len(line) for line in matrix}) == 1


def test_report_of_10000_classes_keeps_every_cell_without_a_dense_matrix():
    truth, predictions, labels = helpers.many_classes()
    tracemalloc.start()
    try:
        report = evaluation.evaluate(truth, predictions, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A dense [10000, 10000] int64 matrix alone is 800 MB.
    assert peak < 100 * 2**20, peak
    assert report["confusion_matrix"] is None
    cells = collections.Counter(zip(truth.tolist(), predictions.tolist()))
    assert report["confusion_counts"] == [[t, p, n] for (t, p), n in sorted(cells.items())]
    assert len(report["classes"]) == 10_000
    assert report["classes"][5]["support"] == 23
    assert report["accuracy"] == pytest.approx(np.mean(truth == predictions))


def test_log_tables_of_10000_classes_list_the_worst_and_say_how_many_more(ten_thousand_classes):
    _, _, labels, report = ten_thousand_classes
    lines = evaluation.format_report("Test", report, labels).splitlines()
    assert len(lines) < 2 * evaluation.MAX_CLASSES_LISTED + 20
    assert lines[1] == "The 30 classes with the lowest F1, of 10000:"
    rows = lines[4:4 + 30]
    f1 = {c["label"]: c["f1"] for c in report["classes"]}
    lowest = sorted(f1[label] for label in f1 if f1[label] is not None)[:30]
    assert [f1[row.split()[0]] for row in rows] == pytest.approx(lowest)
    assert lines[4 + 30].startswith("(macro average)")
    assert lines[4 + 31] == (
        "... and 9970 more classes (every class is in the --eval_report JSON).")
    start = next(n for n, line in enumerate(lines) if "most frequent confusions" in line)
    assert lines[start].startswith("Test: the 30 most frequent confusions, of ")
    confusions = lines[start + 3:]
    assert len(confusions) == 30
    assert confusions[0].split() == ["class_00005", "class_00009", "20", "87.0%"]
