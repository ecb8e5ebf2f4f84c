"""
What a server process costs, read from ``/proc``: CPU seconds from ``/proc/PID/stat``
(utime + stime), resident memory from ``/proc/PID/status`` (VmRSS now, VmHWM the peak), for a
process and every process below it (the workers of ``--workers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    # Field N of proc(5) is at index N - 3 of what follows.
    return text[text.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """
    C{pid} and every live process descending from it, C{pid} first.
    """
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found = [pid]
    for parent in found:  # grows while walking: breadth first
        found.extend(children.get(parent, []))
    return found


def cpuSeconds(pid: int) -> float:
    """
    The user and system CPU seconds a process has used so far (0 when it is gone).
    """
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True)
class Memory:
    """
    Resident memory of a group of processes, in KiB, summed over them.
    """

    rssKiB: int
    peakKiB: int


def memory(pids: list[int]) -> Memory:
    """
    VmRSS and VmHWM summed over C{pids} (a process that is gone counts 0).
    """
    rss = peak = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except OSError:
            continue
    return Memory(rss, peak)


def listens(pids: list[int], port: int) -> bool:
    """
    Whether one of C{pids} holds the socket listening on 127.0.0.1:C{port}: the server that
    answered there is ours, not another process that took the port first.
    """
    inodes = set()
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                # local address as hex "0100007F:PPPP", state 0A: LISTEN
                if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    except OSError:
        return False
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:
                continue
    return False


def resetPeak(pids: list[int]) -> bool:
    """
    Make VmHWM start again from VmRSS (C{/proc/PID/clear_refs}, Linux 4.0), so that the
    peak read later is the peak of the workload, not of start-up.  False if refused.
    """
    done = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            done = False
    return done


def machineBusy() -> float:
    """
    CPU seconds every CPU of the machine has spent busy since boot (neither idle nor
    waiting for I/O), from the first line of C{/proc/stat}.
    """
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / _TICKS


def listenOverflows() -> int:
    """
    The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows): a sign that a server's backlog, not its speed, was the limit.
    """
    try:
        with open("/proc/net/netstat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0
