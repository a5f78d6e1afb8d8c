"""Resident memory of this process, from the kernel: current, and peak since a reset.

Peak RSS is what decides whether a job fits in a machine's RAM. Linux keeps it as VmHWM and lets
a process reset it (writing 5 to /proc/self/clear_refs), so one stage of a job can be measured
on its own; elsewhere the peak since process start (getrusage) is the best available.
"""

from __future__ import annotations

import resource
from pathlib import Path


def status_mb(field: str = "VmRSS") -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM, RssAnon, ...) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set in MiB since the last reset (VmHWM), else since process start."""
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
