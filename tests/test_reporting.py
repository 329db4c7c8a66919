"""retrain_suite.reporting: the accuracy gate and the final accuracy line."""

import pytest

from retrain_suite import reporting


def report(accuracy, count=20):
    return {"accuracy": accuracy, "count": count}


def test_accuracy_equal_to_the_gate_passes():
    # "at least": a classifier exactly at the threshold is good enough.
    reporting.check_accuracy({"testing": report(0.9)}, 0.9)
    reporting.check_accuracy({"testing": report(1.0)}, 1.0)
    reporting.check_accuracy({"testing": report(0.0)}, 0.0)


def test_accuracy_below_the_gate_fails_naming_the_set():
    with pytest.raises(reporting.AccuracyError, match=r"test accuracy 85\.0% \(N=20\)"):
        reporting.check_accuracy({"testing": report(0.85)}, 0.9)
    with pytest.raises(reporting.AccuracyError, match="validation accuracy"):
        reporting.check_accuracy({"validation": report(0.5)}, 0.9)
