"""Progress lines for long work: count, rate and time left, every few seconds.

Used by the bottleneck computation (compute.py), training and fine-tuning.
"""

import time

from absl import logging

PROGRESS_SECONDS = 10.0


class Progress:
    """Logs count, rate and time left every few seconds during long work.

    The time left comes only from the steady part of the work: not from
    batches marked not steady (those that measure the batch size run at other
    sizes, some slower), nor from the first steady batch, which also pays for
    set-up (graph optimisation, an input pipeline's restart). Until a steady
    batch after that first one has ended no time left is shown, so the
    estimate holds from the first line that gives one.
    """

    def __init__(self, total, what, interval=PROGRESS_SECONDS, clock=time.monotonic):
        self.total, self.what, self.interval, self.clock = total, what, interval, clock
        self.done = 0
        self.start = self.last = clock()
        self.steady_since = None  # when the first steady batch ended
        self.steady_done = 0  # images of the steady batches after the first one
        self.measuring = False  # the latest batch was marked not steady

    def restart(self):
        """Start the clock now, after set-up that is not part of the work timed."""
        self.start = self.last = self.clock()

    def update(self, count, steady=True):
        """count more images done, in one batch; steady=False for a batch that measures."""
        self.done += count
        now = self.clock()
        self.measuring = not steady
        if steady:
            if self.steady_since is None:
                self.steady_since = now
            else:
                self.steady_done += count
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            logging.info("%s", self.line(now))

    def seconds_left(self, now):
        """Seconds left at the steady rate, or None while there is no steady rate yet."""
        if not self.steady_done:
            return None
        return (self.total - self.done) * max(now - self.steady_since, 1e-9) / self.steady_done

    def line(self, now):
        rate = self.done / max(now - self.start, 1e-9)
        left = self.seconds_left(now)
        if self.done == self.total:
            ending = "done"
        elif left is not None:
            ending = f"{format_duration(left)} left"
        elif self.measuring:
            ending = "measuring the batch size (time left after it)"
        else:
            ending = "time left after the next batch"
        return (
            f"{self.what}: {self.done}/{self.total} ({100.0 * self.done / self.total:.0f}%), "
            f"{rate:.1f} images/s, {ending}"
        )


def format_duration(seconds):
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
