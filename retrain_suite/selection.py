r"""The selection rule: when a challenger replaces an incumbent classifier.

Tuning (is a searched setting better than the flags'?) and fine-tuning (is
the fine-tuned model better than the bottleneck-trained one?) both choose
between classifiers by their answers on the same images. On a small set the
best-looking of several is often just the luckiest draw: the flowers run of
issue 24 saw fine-tuning win on validation by 1.6 points and lose on test.
So a challenger must win by more than the noise:

    d_i = correct_challenger_i - correct_incumbent_i     (each in {-1, 0, 1}, n images)
    gain = mean(d)                                         (the accuracy difference)
    noise = std(d, ddof=1) / sqrt(n)                       (its standard error)
    the challenger replaces the incumbent  iff  gain > MARGIN_STANDARD_ERRORS * noise
                                                and gain > 0

The difference is paired, image by image: both classifiers answer the same
images, so the images both get right (or both wrong) carry no evidence
either way and the standard error is that of the disagreements only (the
McNemar view of two classifiers on one set). Two standard errors is a
one-sided test at about 2.3% for one comparison; with no disagreement at all
(noise 0) the gain is 0 too and the incumbent stays.
"""

import dataclasses
import math

import numpy as np

MARGIN_STANDARD_ERRORS = 2.0

RULE = (f"a challenger replaces the incumbent only when its accuracy gain on the same images, "
        f"gain = mean(d) with d_i = correct_challenger_i - correct_incumbent_i, exceeds "
        f"{MARGIN_STANDARD_ERRORS:g} standard errors of that paired difference "
        f"(std(d, ddof=1) / sqrt(n)); otherwise the incumbent stays")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A challenger against an incumbent on the same n images (fractions of images)."""

    gain: float  # challenger's accuracy minus the incumbent's, in [-1, 1]
    standard_error: float  # of the gain, >= 0
    images: int  # n

    @property
    def margin(self):
        """The gain the challenger must exceed."""
        return MARGIN_STANDARD_ERRORS * self.standard_error

    @property
    def wins(self):
        """Whether the challenger replaces the incumbent (the rule above)."""
        return self.gain > 0 and self.gain > self.margin

    def describe(self):
        """e.g. '+3.1 points (margin 2.0: 2 x 1.0 standard error, 412 images)'."""
        return (f"{100 * self.gain:+.1f} points (margin {100 * self.margin:.1f}: "
                f"{MARGIN_STANDARD_ERRORS:g} x {100 * self.standard_error:.1f} standard error, "
                f"{self.images} images)")


def compare(challenger_correct, incumbent_correct):
    """Compare two classifiers' per-image correctness (bool [n] each, same images, same
    order). -> Comparison."""
    challenger = np.asarray(challenger_correct, np.float64)
    incumbent = np.asarray(incumbent_correct, np.float64)
    if challenger.shape != incumbent.shape or challenger.ndim != 1:
        raise ValueError(f"correctness of the same images expected, got shapes "
                         f"{challenger.shape} and {incumbent.shape}")
    n = len(challenger)
    if n == 0:
        return Comparison(0.0, 0.0, 0)
    d = challenger - incumbent
    error = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Comparison(float(np.mean(d)), error, n)
