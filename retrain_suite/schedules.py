r"""Learning-rate schedules of the final layer's training, as pure functions.

The training loop asks `learning_rate_at` for the rate of every step and feeds
it to the graph, so the numbers TensorBoard and the tests see are exactly the
ones computed here; there is no second copy of the formula in graph ops.

`step` counts the training steps already taken: the first step trains at
`learning_rate_at(..., step=0, ...)`, the full base rate, whatever the schedule.
"""

import math

SCHEDULES = ("constant", "exponential", "cosine")


DEFAULT_DECAY = 0.1


def default_decay_steps(total_steps):
    """Steps over which the exponential schedule multiplies the rate by the decay once.

    The whole run, so that --learning_rate_decay reads as "the fraction of the
    rate left at the end" (0.1: the last step trains at a tenth of the start).
    """
    return max(1, int(total_steps))


def learning_rate_at(schedule, step, base_rate, total_steps, decay=DEFAULT_DECAY, decay_steps=0):
    """The learning rate (a float, same unit as base_rate) for the step after `step` steps.

    constant:    base_rate.
    exponential: base_rate * decay ** (step / decay_steps), smoothly (not in
                 stairs); decay_steps 0 means default_decay_steps(total_steps).
    cosine:      base_rate * (1 + cos(pi * step / total_steps)) / 2, from
                 base_rate at the start to 0 after the last step.
    """
    if schedule == "constant":
        return float(base_rate)
    if schedule == "exponential":
        period = decay_steps or default_decay_steps(total_steps)
        return float(base_rate * decay ** (step / period))
    if schedule == "cosine":
        progress = min(step, total_steps) / max(1, total_steps)
        return float(base_rate * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"learning rate schedule must be one of {SCHEDULES}, not {schedule!r}")
