"""retrain_suite.errors: one base for every error a user can cause, and one line for any error."""

import importlib
import inspect
import pkgutil

import pytest
import tensorflow as tf

import retrain_suite
from retrain_suite import errors


def test_every_error_class_of_the_library_is_a_suite_error_naming_its_area():
    found = []
    for info in pkgutil.walk_packages(retrain_suite.__path__, "retrain_suite."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, Exception)
                    and value.__module__ == info.name):
                found.append(value)
    assert len(found) >= 12
    for error in found:
        assert issubclass(error, errors.SuiteError), error
        assert error.area != errors.SuiteError.area or error is errors.SuiteError, error


def test_a_sessions_op_error_is_its_reason_without_the_op_context():
    message = ("Graph execution error:\n\nDetected at node 'ReadFile' defined at (most recent "
               "call last):\n  File \"x.py\", line 1\nNode: 'ReadFile'\n"
               "/tmp/x; No such file or directory\n\t [[{{node ReadFile}}]]")
    error = tf.errors.NotFoundError(None, None, message)
    assert errors.one_line(error) == "/tmp/x; No such file or directory"


@pytest.mark.parametrize("error, line", [
    (ValueError("first\nsecond"), "first"),
    (ValueError(""), "ValueError"),
    (ValueError("x" * 1000), "x" * (errors.MAX_LINE - 3) + "..."),
])
def test_any_error_is_its_first_line_cut_to_a_bounded_length(error, line):
    assert errors.one_line(error) == line
