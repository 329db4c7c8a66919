"""Where a run's time goes: named phases, timed one after the other, shown as one table
at the end of the run and kept in the --eval_report JSON.

Seconds are wall-clock (time.monotonic). The first phase, start-up, is the time
from the process's start to the run's (Python and TensorFlow imports, flag
parsing), read from Linux's /proc; where that cannot be read it is left out.
"""

import contextlib
import os
import time


def process_age():
    """Seconds since this process started, or None where /proc does not say (not Linux)."""
    try:
        with open("/proc/self/stat") as f:
            # The command name (field 2) may hold spaces; the fields after it do not.
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in ticks
    return max(0.0, uptime - started)


class PhaseTimer:
    """The phases of one run, in order: [(name, seconds)]."""

    def __init__(self, start_up=None):
        """start_up: seconds before the run began (process_age()), or None: not known."""
        self.began = time.monotonic()
        self.phases = [] if start_up is None else [("start-up", start_up)]

    @contextlib.contextmanager
    def phase(self, name):
        """Time the block as phase `name` (also when it raises)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - began))

    def total(self):
        """Seconds from the start (start-up included) to now."""
        start_up = sum(seconds for name, seconds in self.phases if name == "start-up")
        return start_up + time.monotonic() - self.began

    def as_dict(self):
        """{"phases": [{"phase": name, "seconds": s}], "total_seconds": t}, for the JSON report."""
        return {"phases": [{"phase": name, "seconds": round(seconds, 3)}
                           for name, seconds in self.phases],
                "total_seconds": round(self.total(), 3)}

    def table(self):
        """The phases as an aligned text table: name, seconds, share of the total."""
        total = self.total()
        rows = [("phase", "seconds", "share")]
        rows += [(name, f"{seconds:.1f}", f"{100 * seconds / max(total, 1e-9):.0f}%")
                 for name, seconds in self.phases]
        rows.append(("total (with what no phase covers)", f"{total:.1f}", "100%"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join([row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2])])
            for row in rows)
