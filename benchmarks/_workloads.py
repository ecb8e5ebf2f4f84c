"""
The workloads of issue 7 (W1-W5), their sizes in quick and full mode, and how one run of one
workload on one server is measured: a fresh server each time, a short unmeasured warm-up run,
its memory then as the baseline, the load between the meter's marks, its peak memory (VmHWM)
after.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import _clients, _proc
from benchmarks._clients import ClientResult
from benchmarks._meter import Meter
from benchmarks._peers import Tools
from benchmarks._servers import (
    AIOSMTPD,
    SMTP_SERVER,
    SMTP_SINK,
    SMTPSVC,
    SMTPSVC_DELAY,
    SMTPSVC_QUIET,
    SMTPSVC_WORKERS,
    TWISTED_FLOOR,
    TWISTED_MAIL,
    Launch,
    RunningServer,
    ServerFailed,
    ServerSpec,
)

MB = 1_000_000


@dataclass(frozen=True)
class Sizes:
    """
    How much each workload does; every count is also bounded by C{timeout} seconds.
    """

    w1Messages: int
    w2Sessions: int
    w5Sessions: int
    w1Connections: int = 50
    w1Size: int = 4096
    w2Concurrency: int = 100
    w3Large: int = 100 * MB
    w3Medium: int = 20 * MB
    w3MediumCount: int = 8
    #: W3's messages are sent this many times in a row per measurement.
    w3Rounds: int = 1
    w4Connections: int = 5000
    w4Concurrency: int = 100
    w4Settle: float = 1.0
    w5Concurrency: int = 20
    w5Size: int = 2048
    timeout: float = 120.0
    warmUpTimeout: float = 60.0


#: The warm-up run before each measurement: enough for node's JIT to compile the hot paths
#: (smtp-server's W1 CPU per message halves between a cold run and a warm one).
WARM_UP: dict[str, Any] = {
    "w1Messages": 2000,
    "w2Sessions": 1000,
    "w3Large": MB,
    "w3Medium": MB,
    "w3MediumCount": 2,
    "w3Rounds": 1,
    "w4Connections": 500,
    "w5Sessions": 200,
}

QUICK = Sizes(w1Messages=5000, w2Sessions=3000, w5Sessions=500, timeout=60.0)
FULL = Sizes(w1Messages=30000, w2Sessions=10000, w5Sessions=2000, w3Rounds=3)


@dataclass(frozen=True)
class Context:
    """
    What every workload gets besides the server: sizes, tools, and messages built once.
    """

    sizes: Sizes
    tools: Tools
    bodies: dict[int, bytes] = field(default_factory=dict)
    #: Whether each server gets a short, unmeasured run of the workload first.
    warmUp: bool = True

    def body(self, size: int) -> bytes:
        """
        A message of C{size} bytes, built on first use (not on the clock).
        """
        if size not in self.bodies:
            self.bodies[size] = _clients.message(size)
        return self.bodies[size]

    def warmUpContext(self) -> Context:
        """
        The same, with the small sizes of the warm-up run.
        """
        sizes = replace(
            self.sizes, **WARM_UP, timeout=min(self.sizes.timeout, self.sizes.warmUpTimeout)
        )
        return Context(sizes, self.tools, self.bodies, warmUp=False)


Drive = Callable[[RunningServer, Meter, Context], ClientResult]


@dataclass(frozen=True)
class Workload:
    """
    One workload: its key (C{W1}), its description, the unit its throughput counts, the
    servers it runs on (smtpsvc first: the ratios are to it), and its client.

    @ivar scale: units per counted unit (W3 counts bytes and reports MB).
    """

    key: str
    title: Callable[[Sizes], str]
    unit: str
    servers: tuple[ServerSpec, ...]
    drive: Drive
    tls: bool = False
    scale: float = 1.0
    prepare: Callable[[Context], object] = lambda context: None


def _w1(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    if context.tools.smtpSource is not None:
        return _clients.smtpSource(
            context.tools.smtpSource,
            server.port,
            meter,
            s.w1Messages,
            s.w1Connections,
            s.w1Size,
            s.timeout,
        )
    return _clients.pythonSource(
        server.port, meter, s.w1Messages, s.w1Connections, s.w1Size, s.timeout
    )


def _w2(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    return _clients.ehloQuit(server.port, meter, s.w2Sessions, s.w2Concurrency, s.timeout)


def _w3a(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    body = context.body(s.w3Large)
    return _clients.largeMessages(server.port, meter, body, 1, s.w3Rounds, s.timeout)


def _w3b(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    body = context.body(s.w3Medium)
    return _clients.largeMessages(server.port, meter, body, s.w3MediumCount, s.w3Rounds, s.timeout)


def _w4(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    return _clients.idleConnections(
        server.port, meter, s.w4Connections, s.w4Concurrency, s.w4Settle, s.timeout
    )


def _w5(server: RunningServer, meter: Meter, context: Context) -> ClientResult:
    s = context.sizes
    return _clients.starttlsSessions(
        server.port, meter, s.w5Sessions, s.w5Concurrency, s.w5Size, s.timeout
    )


def _rounds(s: Sizes) -> str:
    return f", {s.w3Rounds} times in a row" if s.w3Rounds > 1 else ""


_PEERS = (TWISTED_MAIL, AIOSMTPD, SMTP_SERVER, SMTP_SINK)

WORKLOADS = (
    Workload(
        "W1",
        lambda s: (
            f"throughput: {s.w1Messages} messages of {s.w1Size} bytes over "
            f"{s.w1Connections} connections, one after another on each"
        ),
        "msg",
        (SMTPSVC, SMTPSVC_QUIET, SMTPSVC_WORKERS, *_PEERS, TWISTED_FLOOR),
        _w1,
    ),
    Workload(
        "W2",
        lambda s: (
            f"connection rate: {s.w2Sessions} sessions of connect, EHLO, QUIT, "
            f"{s.w2Concurrency} at a time (smtpsvc's early-talker delay off, and 0.1 s)"
        ),
        "session",
        (SMTPSVC, SMTPSVC_QUIET, SMTPSVC_DELAY, *_PEERS),
        _w2,
    ),
    Workload(
        "W3a",
        lambda s: f"large message: one message of {s.w3Large // MB} MB" + _rounds(s),
        "MB",
        (SMTPSVC, *_PEERS),
        _w3a,
        scale=MB,
        prepare=lambda context: context.body(context.sizes.w3Large),
    ),
    Workload(
        "W3b",
        lambda s: (
            f"large messages: {s.w3MediumCount} messages of {s.w3Medium // MB} MB at once"
            + _rounds(s)
        ),
        "MB",
        (SMTPSVC, *_PEERS),
        _w3b,
        scale=MB,
        prepare=lambda context: context.body(context.sizes.w3Medium),
    ),
    Workload(
        "W4",
        lambda s: (
            f"idle connections: {s.w4Connections} open at once ({s.w4Concurrency} "
            "connecting at a time), each greeted"
        ),
        "conn",
        (SMTPSVC, *_PEERS),
        _w4,
    ),
    Workload(
        "W5",
        lambda s: (
            f"STARTTLS: {s.w5Sessions} sessions of EHLO, STARTTLS, EHLO, one "
            f"{s.w5Size}-byte message, QUIT, {s.w5Concurrency} at a time (RSA-2048)"
        ),
        "session",
        (SMTPSVC, TWISTED_MAIL, AIOSMTPD, SMTP_SERVER, SMTP_SINK),
        _w5,
        tls=True,
    ),
)


@dataclass
class Measurement:
    """
    One run of one workload on one server.  Memory is in KiB, CPU in seconds; C{error} is
    empty when the run completed.
    """

    workload: str
    server: str
    run: int
    error: str = ""
    command: str = ""
    units: float = 0.0
    wall: float = 0.0
    throughput: float = 0.0
    cpu: float = 0.0
    cpuPer1000: float = 0.0
    cores: float = 0.0
    clientCpu: float = 0.0
    otherCpu: float = 0.0
    baselineKiB: int = 0
    peakKiB: int = 0
    finalKiB: int = 0
    growthKiB: int = 0
    listenOverflows: int = 0
    errors: int = 0
    #: Under valgrind (C{--instructions}): the server's instructions in the run, and per
    #: unit; 0 otherwise.
    instructions: int = 0
    instructionsPerUnit: float = 0.0
    perProcessCpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """
        Whether the run completed without errors.
        """
        return not self.error

    def asJSON(self) -> dict[str, Any]:
        """
        The measurement as JSON data.
        """
        return asdict(self)


def measure(
    workload: Workload,
    spec: ServerSpec,
    run: int,
    launch: Launch,
    context: Context,
    logDir: Path,
) -> Measurement:
    """
    Start C{spec} fresh, drive it with C{workload} once, stop it.
    """
    result = Measurement(workload.key, spec.label, run)
    if workload.tls and not spec.tls:
        result.error = "n/a: no STARTTLS"
        return result
    # Build what the client sends before the server starts: not on the clock.
    workload.prepare(context)
    name = f"{workload.key}-{spec.label.replace(' ', '_').replace('/', '_')}-{run}.log"
    server = RunningServer(spec, launch, workload.tls, logDir / name)
    starting = time.monotonic()
    try:
        server.start()
    except ServerFailed as e:
        result.error = f"did not start: {e}"
        return result
    finally:
        result.command = shlex.join(server.argv)
    result.extra["startSeconds"] = round(time.monotonic() - starting, 2)
    try:
        time.sleep(0.3)  # let start-up work (imports, the first allocation) finish
        if context.warmUp:
            warm = context.warmUpContext()
            workload.prepare(warm)
            try:
                outcome = workload.drive(server, Meter(server), warm)
            except Exception as e:  # a bug of the suite's: keep the other measurements
                result.error = f"the client failed in the warm-up: {e!r}"
                return result
            if outcome.errors or outcome.timedOut:
                result.error = f"the warm-up failed: {outcome.errors} errors, first: "
                result.error += outcome.firstError or "timed out"
                return result
            time.sleep(0.2)
        # The baseline: after start-up (and warm-up); the peak is counted from here.
        result.baselineKiB = server.memory().rssKiB
        if not _proc.resetPeak(server.pids):
            result.extra["peakSince"] = "start"
        meter = Meter(server)
        try:
            outcome = workload.drive(server, meter, context)
        except Exception as e:  # a bug of the suite's: keep the other measurements
            result.error = f"the client failed: {e!r}"
            return result
        memory = server.memory()
        processes = set(server.pids)
        server.refresh()
        alive = server.alive and set(server.pids) == processes
        tail = "" if alive else server.logTail()
    finally:
        server.stop()
    result.units = outcome.units / workload.scale
    result.wall = meter.wall
    result.throughput = result.units / meter.wall if meter.wall > 0 else 0.0
    result.cpu = meter.serverCpu
    result.cpuPer1000 = 1000 * result.cpu / result.units if result.units else 0.0
    result.instructions = meter.instructions
    result.instructionsPerUnit = meter.instructions / result.units if result.units else 0.0
    result.cores = result.cpu / meter.wall if meter.wall > 0 else 0.0
    result.clientCpu = meter.clientCpu
    result.otherCpu = meter.otherCpu
    result.perProcessCpu = sorted(meter.perProcessCpu().values(), reverse=True)
    result.peakKiB = memory.peakKiB
    result.finalKiB = memory.rssKiB
    result.growthKiB = memory.peakKiB - result.baselineKiB
    result.listenOverflows = meter.listenOverflows
    result.errors = outcome.errors
    result.extra.update(outcome.extra)
    if workload.key == "W4":
        greeted = int(outcome.extra.get("greeted", 0))
        openKiB = int(outcome.extra.get("openRssKiB", 0))
        if greeted:
            result.extra["rssPerConnectionKiB"] = (openKiB - result.baselineKiB) / greeted
    if not alive:
        result.error = f"the server (or one of its workers) died during the run: {tail}"
    elif outcome.timedOut:
        result.error = (
            f"timed out after {context.sizes.timeout:.0f} s with {result.units:g} "
            f"{workload.unit} done; {outcome.errors} errors, first: {outcome.firstError}"
        )
    elif outcome.errors:
        result.error = f"{outcome.errors} errors, first: {outcome.firstError}"
    return result
