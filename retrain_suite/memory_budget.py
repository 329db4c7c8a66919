r"""Up-front memory estimates, checked against this machine's RAM.

A size flag that cannot fit (a batch of a hundred million, a billion hidden
units) is refused before any work, with the memory it would need, instead of
growing until the machine swaps or the process is killed.
"""

import os

from retrain_suite import errors


class TooBig(errors.SuiteError):
    """A size flag needs more memory than this machine has."""

    area = "memory"


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def format_bytes(count):
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000:
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def shortfall(needed):
    """None if `needed` bytes fit in RAM (or RAM is unknown), else a text like
    'about 51.2 GB of memory; this machine has 24.6 GB'."""
    available = physical_memory()
    if available is None or needed <= available:
        return None
    return (f"about {format_bytes(needed)} of memory; this machine has "
            f"{format_bytes(available)}")
