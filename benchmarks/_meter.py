"""
The meter a workload's client holds: it marks when the load begins and ends, and reads the
server's CPU (per process), the client's own CPU, the kernel's listen-queue overflows and the
server's memory in between.
"""

from __future__ import annotations

import resource
import time

from benchmarks import _proc
from benchmarks._servers import RunningServer


def _selfCpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """
    Readings around one workload on one server.

    @ivar clientCpu: the client's CPU seconds between L{begin} and L{end}: this process's
        own, or what an external load generator reported (L{setClientCpu}).
    """

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self._t0 = self._t1 = 0.0
        self._cpu0: dict[int, float] = {}
        self._cpu1: dict[int, float] = {}
        self._self0 = self._self1 = 0.0
        self._overflows0 = self._overflows1 = 0
        self._busy0 = self._busy1 = 0.0
        self._external: float | None = None
        #: Under valgrind: the instructions the server executed from L{begin} to L{end}.
        self.instructions = 0

    def begin(self) -> None:
        """
        The load starts now.
        """
        self.server.refresh()
        if self.server.callgrind is not None:
            self.server.zeroInstructions()
        self._overflows0 = _proc.listenOverflows()
        self._cpu0 = self.server.cpu()
        self._self0 = _selfCpu()
        self._busy0 = _proc.machineBusy()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        """
        The last unit of load has been answered.
        """
        self._t1 = time.perf_counter()
        self._busy1 = _proc.machineBusy()
        self._self1 = _selfCpu()
        self._cpu1 = self.server.cpu()
        self._overflows1 = _proc.listenOverflows()
        if self.server.callgrind is not None:
            self.instructions = self.server.dumpInstructions()

    def setClientCpu(self, seconds: float) -> None:
        """
        The client ran in another process, which used this much CPU.
        """
        self._external = seconds

    def memory(self) -> _proc.Memory:
        """
        The server's memory now.
        """
        return self.server.memory()

    @property
    def wall(self) -> float:
        """
        Seconds from L{begin} to L{end}.
        """
        return self._t1 - self._t0

    @property
    def serverCpu(self) -> float:
        """
        CPU seconds every process of the server used from L{begin} to L{end}.
        """
        return sum(self.perProcessCpu().values())

    def perProcessCpu(self) -> dict[int, float]:
        """
        The same, per process (a master and its workers).
        """
        return {pid: used - self._cpu0.get(pid, 0.0) for pid, used in self._cpu1.items()}

    @property
    def clientCpu(self) -> float:
        """
        The client's CPU seconds from L{begin} to L{end}.
        """
        if self._external is not None:
            return self._external
        return self._self1 - self._self0

    @property
    def otherCpu(self) -> float:
        """
        CPU seconds the rest of the machine used from L{begin} to L{end}: other processes,
        and kernel work no process is charged for.  A noisy neighbour shows here.
        """
        return max(self._busy1 - self._busy0 - self.serverCpu - self.clientCpu, 0.0)

    @property
    def listenOverflows(self) -> int:
        """
        Connections the kernel dropped for a full listen queue meanwhile (all ports).
        """
        return self._overflows1 - self._overflows0
