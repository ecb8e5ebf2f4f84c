"""
The servers under test, each started as its own process (in its own session, so that it
and its workers can be stopped together), on a free port of 127.0.0.1, waited for until it
answers 220, measured through ``/proc``, and stopped by its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import _proc
from benchmarks._peers import SCRIPTS, Tools
from smtpsvc._service import WORKER_SERVING

#: The name every server answers with.
NAME = "bench.example.test"
#: How many times longer a server takes to start under valgrind.
_VALGRIND_SLOWDOWN = 20


@dataclass(frozen=True)
class Launch:
    """
    What the suite needs to start one server: its files and tools.
    """

    tools: Tools
    cert: Path
    key: Path
    workdir: Path
    #: The listen backlog to give every server; None leaves each its own default
    #: (Twisted 50, asyncio 100, node 511; smtp-sink needs one: 511).
    backlog: int | None = None
    #: Where to write cProfile statistics of the servers that can be profiled (smtpsvc
    #: without workers), one file per measurement; None: no profiling.
    profileDir: Path | None = None
    #: Where callgrind writes its counts for the servers that are one process (all but
    #: the C{--workers} rows), which then run under valgrind; None: no counting.
    instructionsDir: Path | None = None


@dataclass(frozen=True)
class ServerSpec:
    """
    One server (or one configuration of smtpsvc) as a row of the report.

    @ivar label: the row's name, e.g. C{smtpsvc --workers 2}.
    @ivar peer: the peer it is, for the install check (C{smtpsvc}, C{aiosmtpd} ...).
    @ivar argv: the command line, from the launch and the port.
    @ivar tls: whether it can do STARTTLS (W5).
    @ivar workers: worker processes to wait for (0: the process itself serves).
    """

    label: str
    peer: str
    argv: Callable[[Launch, int, bool], list[str]]
    tls: bool = True
    workers: int = 0
    env: Callable[[Launch], dict[str, str]] = field(default=lambda launch: {})
    #: A remark for the table, by workload key.
    remarks: dict[str, str] = field(default_factory=dict)
    #: Whether C{--profile} runs it under cProfile (a Python command, one process).
    profilable: bool = False
    #: Whether C{--instructions} can count it under valgrind: not a server that gives up
    #: root for another user (valgrind's control channel stays root's).
    countable: bool = True

    def environment(self, launch: Launch) -> dict[str, str]:
        """
        The server's environment: this process's, its own additions, and the backlog for
        the peer scripts (C{BENCH_BACKLOG}).
        """
        env = {**os.environ, **self.env(launch)}
        env.pop("BENCH_BACKLOG", None)
        if launch.backlog is not None:
            env["BENCH_BACKLOG"] = str(launch.backlog)
        return env


def smtpsvc(
    *extra: str, twistOptions: tuple[str, ...] = ()
) -> Callable[[Launch, int, bool], list[str]]:
    """
    The C{twist smtpsvc} command line, with C{extra} flags after the plugin's own and
    C{twistOptions} (C{--log-level warn}, say) before it, for C{twist} itself.
    """

    def argv(launch: Launch, port: int, tls: bool) -> list[str]:
        command = [
            str(launch.tools.twist),
            *twistOptions,
            "smtpsvc",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1"
            + ("" if launch.backlog is None else f":backlog={launch.backlog}"),
            "--deliver",
            "discard",
            "--disable-reverse-lookup",
            "--max-clients",
            "100000",
            "--name",
            NAME,
            # Always a real certificate: otherwise twist makes a development one at start.
            "--cert",
            str(launch.cert),
            "--key",
            str(launch.key),
        ]
        return command + list(extra)

    return argv


def _twistedMail(launch: Launch, port: int, tls: bool) -> list[str]:
    script = SCRIPTS / "twisted_mail_server.py"
    tail = [str(launch.cert), str(launch.key)] if tls else []
    return [str(launch.tools.python), str(script), str(port), *tail]


def _twistedFloor(launch: Launch, port: int, tls: bool) -> list[str]:
    return [str(launch.tools.python), str(SCRIPTS / "twisted_floor.py"), str(port)]


def _aiosmtpd(launch: Launch, port: int, tls: bool) -> list[str]:
    script = SCRIPTS / "aiosmtpd_server.py"
    tail = [str(launch.cert), str(launch.key)] if tls else []
    return [str(launch.tools.aiosmtpdPython), str(script), str(port), *tail]


def _smtpServer(launch: Launch, port: int, tls: bool) -> list[str]:
    script = SCRIPTS / "smtp_server.js"
    tail = [str(launch.cert), str(launch.key)] if tls else []
    return [str(launch.tools.node), str(script), str(port), *tail]


def _smtpServerEnv(launch: Launch) -> dict[str, str]:
    return {"NODE_PATH": str(launch.tools.nodePath)}


def _smtpSink(launch: Launch, port: int, tls: bool) -> list[str]:
    # -u: it refuses to run as root otherwise; -m: connections served at once (the default
    # 256 would leave W4's clients queued, never greeted); the last argument is the backlog,
    # which it needs: node's default unless --backlog says otherwise.
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    return [
        str(launch.tools.smtpSink),
        *user,
        "-h",
        NAME,
        "-m",
        "20000",
        f"127.0.0.1:{port}",
        str(launch.backlog or 511),
    ]


SMTPSVC = ServerSpec("smtpsvc", "smtpsvc", smtpsvc("--early-talker-delay", "0"), profilable=True)
SMTPSVC_WORKERS = ServerSpec(
    "smtpsvc --workers 2",
    "smtpsvc",
    smtpsvc("--early-talker-delay", "0", "--workers", "2"),
    workers=2,
)
SMTPSVC_DELAY = ServerSpec("smtpsvc delay 0.1 s", "smtpsvc", smtpsvc(), profilable=True)
# Without its log line per message and per connection (info events are dropped), as
# smtp-server runs by default (logger: false): what the logging costs, like for like.
SMTPSVC_QUIET = ServerSpec(
    "smtpsvc log warn",
    "smtpsvc",
    smtpsvc("--early-talker-delay", "0", twistOptions=("--log-level", "warn")),
    profilable=True,
)
TWISTED_MAIL = ServerSpec("twisted.mail", "twisted.mail", _twistedMail)
# Not a peer: the least a server on Twisted can do per message (see its script), so that
# W1 shows how much of smtpsvc's cost is Twisted's own, measured in the same run.
TWISTED_FLOOR = ServerSpec("twisted floor", "twisted floor", _twistedFloor, tls=False)
AIOSMTPD = ServerSpec("aiosmtpd", "aiosmtpd", _aiosmtpd)
# smtp-server always waits 100 ms before its greeting (its early-talker check, not an
# option): sessions that wait for the greeting are paced as smtpsvc's "delay 0.1 s" row.
_GREETING_DELAY = "greets after a fixed 100 ms"
SMTP_SERVER = ServerSpec(
    "smtp-server",
    "smtp-server",
    _smtpServer,
    env=_smtpServerEnv,
    remarks={key: _GREETING_DELAY for key in ("W2", "W4", "W5")},
)
SMTP_SINK = ServerSpec("smtp-sink", "smtp-sink", _smtpSink, tls=False, countable=False)

# `twist` under cProfile, in the same process.  After SIGTERM has stopped the reactor, twist
# kills itself with the signal again (so that its exit status tells), which would lose the
# statistics: that last step is skipped.
_PROFILED_TWIST = """\
import cProfile, sys
import twisted.application.twist._twist as twist
twist._exitWithSignal = lambda signal: None
path, sys.argv = sys.argv[1], ["twist", *sys.argv[2:]]
cProfile.run("twist.Twist.main(sys.argv)", path)
"""


class ServerFailed(Exception):
    """
    The server did not start, or died; the message says why, with its log's tail.
    """


def freePort() -> int:
    """
    A port of 127.0.0.1 nobody listens on right now (another process may take it before
    the server does: L{RunningServer.start} retries).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _greeted(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            if not data.startswith(b"220"):
                return False
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(4096)
            return True
    except OSError:
        return False


class RunningServer:
    """
    A started server: its process, port, log, and what it costs.
    """

    def __init__(self, spec: ServerSpec, launch: Launch, tls: bool, logPath: Path) -> None:
        self.spec = spec
        self.launch = launch
        self.tls = tls
        self.logPath = logPath
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.argv: list[str] = []
        self.profile: Path | None = None
        if launch.profileDir is not None and spec.profilable:
            self.profile = launch.profileDir / f"{logPath.stem}.prof"
        #: The callgrind output of a server run under valgrind; its dumps are this
        #: name with C{.1}, C{.2} ... after it.
        self.callgrind: Path | None = None
        if launch.instructionsDir is not None and not spec.workers and spec.countable:
            self.callgrind = launch.instructionsDir / f"{logPath.stem}.callgrind"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """
        Start the server and wait until it answers 220 (and every worker is up).

        @raise ServerFailed: when it does not within C{timeout}, after C{attempts} ports.
        """
        reason = ""
        if self.callgrind is not None:
            timeout *= _VALGRIND_SLOWDOWN
        for _ in range(attempts):
            self.port = freePort()
            reason = self._startOnce(timeout)
            if not reason:
                return
            self.stop()
            if "in use" not in reason.lower():
                break
        raise ServerFailed(reason)

    def _startOnce(self, timeout: float) -> str:
        argv = self.argv = self.spec.argv(self.launch, self.port, self.tls)
        if self.profile is not None:
            argv = self.argv = [
                str(self.launch.tools.python),
                "-c",
                _PROFILED_TWIST,
                str(self.profile),
                *argv[1:],
            ]
        if self.callgrind is not None:
            argv = self.argv = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self.callgrind}",
                "--dump-instr=no",
                *argv,
            ]
        env = self.spec.environment(self.launch)
        with open(self.logPath, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.launch.workdir,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"exited with status {self.process.returncode}: {self.logTail()}"
            if _greeted(self.port, 2.0) and self._workersUp():
                self.pids = _proc.tree(self.process.pid)
                if not _proc.listens(self.pids, self.port):
                    return f"port {self.port} is in use by another process"
                return ""
            time.sleep(0.05)
        return f"no 220 on port {self.port} within {timeout:.0f} s: {self.logTail()}"

    def zeroInstructions(self) -> None:
        """
        Under valgrind: start counting the server's instructions afresh.
        """
        self._callgrindControl("--zero")

    def dumpInstructions(self) -> int:
        """
        Under valgrind: the instructions the server executed since L{zeroInstructions}.
        """
        assert self.callgrind is not None
        pattern = f"{self.callgrind.name}.*"
        before = set(self.callgrind.parent.glob(pattern))
        self._callgrindControl("--dump=measured")
        new = set(self.callgrind.parent.glob(pattern)) - before
        if len(new) != 1:
            raise RuntimeError(f"callgrind wrote {len(new)} dumps, not 1")
        for line in new.pop().read_text(errors="replace").splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
        raise RuntimeError("no summary line in callgrind's dump")

    def _callgrindControl(self, command: str) -> None:
        assert self.process is not None
        subprocess.run(
            ["callgrind_control", command, str(self.process.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def _workersUp(self) -> bool:
        if not self.spec.workers:
            return True
        # Each worker logs "SMTP worker PID serving HOST:PORT" once it accepts.
        text = self.logPath.read_text(errors="replace")
        return text.count(f'"{WORKER_SERVING}"') >= self.spec.workers

    def logTail(self, lines: int = 5) -> str:
        """
        The last lines of the server's output, on one line.
        """
        try:
            text = self.logPath.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line[:300] for line in text.strip().splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        """
        Whether the server process is still running.
        """
        return self.process is not None and self.process.poll() is None

    def refresh(self) -> None:
        """
        Find the processes again (a worker that died has been replaced).
        """
        if self.alive and self.process is not None:
            self.pids = _proc.tree(self.process.pid)

    def cpu(self) -> dict[int, float]:
        """
        CPU seconds used so far by each process of the server.
        """
        return {pid: _proc.cpuSeconds(pid) for pid in self.pids}

    def memory(self) -> _proc.Memory:
        """
        VmRSS and VmHWM summed over the server's processes.
        """
        return _proc.memory(self.pids)

    def stop(self, grace: float = 5.0) -> None:
        """
        SIGTERM the server's process group (the server and its workers), then SIGKILL it
        if anything in it is left after C{grace}.
        """
        process = self.process
        if process is None:
            return
        # start_new_session made the server the leader of its own group: the group's id
        # is the server's PID, and only the server and what it started are in it.
        group = process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _groupAlive(group, process) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _groupAlive(group, process):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
        self.process = None


def _groupAlive(group: int, process: subprocess.Popen[bytes]) -> bool:
    process.poll()  # reap the leader, or it stays in the group as a zombie
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
