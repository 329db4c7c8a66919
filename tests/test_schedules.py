"""retrain_suite.schedules: the learning rate of every step, as pure functions."""

import math

import pytest

from retrain_suite import schedules


def test_constant_is_the_base_rate_at_every_step():
    assert {schedules.learning_rate_at("constant", s, 0.3, 100) for s in (0, 50, 99)} == {0.3}


def test_exponential_falls_smoothly_to_the_decay_times_the_rate_over_the_run():
    rate = [schedules.learning_rate_at("exponential", s, 0.1, 100, decay=0.1) for s in range(101)]
    assert rate[0] == pytest.approx(0.1)
    assert rate[50] == pytest.approx(0.1 * 0.1 ** 0.5)  # smooth, not in stairs
    assert rate[100] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(rate, rate[1:]))


def test_exponential_decay_steps_sets_the_period():
    assert schedules.learning_rate_at("exponential", 20, 1.0, 100, 0.5, 10) == pytest.approx(0.25)
    assert schedules.default_decay_steps(0) == 1  # never a division by zero


def test_exponential_with_decay_one_keeps_the_base_rate():
    # --learning_rate_decay is documented in (0, 1]: at 1 nothing is taken off.
    assert {schedules.learning_rate_at("exponential", s, 0.1, 100, decay=1) for s in (0, 37, 100)} == {0.1}


def test_cosine_goes_from_the_full_rate_to_zero_after_the_last_step():
    assert schedules.learning_rate_at("cosine", 0, 0.2, 40) == pytest.approx(0.2)
    assert schedules.learning_rate_at("cosine", 20, 0.2, 40) == pytest.approx(0.1)
    assert schedules.learning_rate_at("cosine", 40, 0.2, 40) == pytest.approx(0.0, abs=1e-12)
    assert schedules.learning_rate_at("cosine", 45, 0.2, 40) == pytest.approx(0.0, abs=1e-12)
    assert schedules.learning_rate_at("cosine", 10, 0.2, 40) == pytest.approx(
        0.2 * (1 + math.cos(math.pi / 4)) / 2
    )


def test_an_unknown_schedule_is_a_value_error():
    with pytest.raises(ValueError, match="linear"):
        schedules.learning_rate_at("linear", 0, 0.1, 10)
