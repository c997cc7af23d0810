"""What the kernel counts for a process (/proc/PID/stat), for tests and benchmarks alike:
counts that a loaded machine does not disturb the way it disturbs timings."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    # The fields after the command name, which is in parentheses and may hold spaces.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far. Per request, this is what the
    machine's other load disturbs least (throughput on a shared 2-core box swings widely)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """Minor page faults the process has taken so far: a freshly mapped buffer is faulted in
    page by page, in kernel time that instruction counts do not show."""
    return int(_stat(pid)[7])
