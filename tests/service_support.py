"""
Helpers for the end-to-end tests of the C{twist smtpsvc} service (L{tests.test_service_e2e}).

L{startService} runs C{twist smtpsvc} (or C{twistd smtpsvc}) as a child process with the
C{twist} options, environment and inherited sockets a test chooses, in either log format;
L{ServiceProcess} finds its port in text or JSON logs.  The rest reads what the service
left behind (Maildirs, log lines, the certificate C{openssl s_client} saw) and holds the
handler C{--deliver python:tests.service_support:makeHandler} loads.  Every wait is bounded
and every process started here is stopped by the test case's cleanups, by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import signal
import smtplib
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.task import deferLater
from twisted.trial.unittest import FailTest, TestCase
from zope.interface import implementer

from smtpsvc import Address, ICloseHandler, IRcptToHandler, Session, SMTPError

from .e2e_support import (
    CLIENT_NAME,
    LOCALHOST,
    SOCKET_TIMEOUT,
    TwistProcess,
    runOpenSSL,
    theReactor,
    twistCommand,
    twistEnvironment,
    withoutTraceHeaders,
)
from .memorytls import issue

#: The service options that make a test quick: no greeting delay, no reverse DNS (the
#: test machine's DNS is not part of the tests).
QUICK = ("--early-talker-delay", "0", "--disable-reverse-lookup")
#: The options given to C{twist} itself by default.
TEXT_LOGS = ("--log-format", "text")
JSON_LOGS = ("--log-format", "json")

# "SMTP server listening on 127.0.0.1:PORT" as a JSON event: its format and its fields.
_JSON_LISTENING = re.compile(rb'"log_format": "\{kind\} server listening on \{address\}"')
_WORKER = re.compile(rb"[SL]MTP worker (\d+) serving (?:127\.0\.0\.1:\d+|/)")
_QUEUED_PID = re.compile(r"queued as M\d+P(\d+)Q")
_MAILDIR_PID = re.compile(r"^\d+\.M\d+P(\d+)Q")


class ServiceProcess(TwistProcess):
    """
    A running C{twist smtpsvc}, as L{TwistProcess}, whose listening port is also found in
    C{--log-format json} output.
    """

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        super().childDataReceived(childFD, data)
        if self.port is None and _JSON_LISTENING.search(self.output):
            for event in self.events():
                if "server listening on" in str(event.get("log_format", "")):
                    self.port = int(event["port"])
                    self._listening.callback(self.port)
                    break

    def events(self) -> list[dict[str, Any]]:
        """
        Every complete event of JSON output, decoded (C{--log-format json} writes RFC 7464
        JSON text sequences: each event is a record separator, a JSON object, a newline).
        """
        events = []
        for line in self.output.split(b"\n")[:-1]:
            with contextlib.suppress(ValueError):
                event = json.loads(line.removeprefix(b"\x1e"))
                if isinstance(event, dict):
                    events.append(event)
        return events

    def lines(self, text: str) -> list[str]:
        """
        The lines of output that contain C{text}.
        """
        return [line for line in self.text.splitlines() if text in line]

    @property
    def pid(self) -> int:
        """
        The process ID of the child.
        """
        assert self.processTransport is not None
        pid = self.processTransport.pid
        assert pid is not None
        return int(pid)

    @property
    def workerPIDs(self) -> list[int]:
        """
        The process IDs of the C{--workers} processes it logged, in order of start.
        """
        return [int(m.group(1)) for m in _WORKER.finditer(self.output)]


def serviceCommand(
    args: Sequence[str], twistOptions: Sequence[str] = TEXT_LOGS, program: str = "twist"
) -> list[str]:
    """
    The command line that runs C{twist TWISTOPTIONS smtpsvc ARGS} with this Python, or
    C{twistd TWISTOPTIONS smtpsvc ARGS} when C{program} is C{"twistd"}.
    """
    if program == "twistd":
        main = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        return [sys.executable, "-c", main, *twistOptions, "smtpsvc", *args]
    # The interpreter and the code that runs twist, as the other end-to-end tests run it.
    return [*twistCommand([])[:3], *twistOptions, "smtpsvc", *args]


def startService(
    testCase: TestCase,
    args: Sequence[str],
    tmpdir: str,
    *,
    twistOptions: Sequence[str] = TEXT_LOGS,
    environment: Mapping[str, str] | None = None,
    childFDs: Mapping[int, int] | None = None,
    wrapper: Sequence[str] = (),
    program: str = "twist",
    waitForPort: bool = True,
) -> Deferred[ServiceProcess]:
    """
    Start C{twist TWISTOPTIONS smtpsvc ARGS} (or C{twistd ...} when C{program} says so) in
    C{tmpdir} and wait (bounded) until it logs the port it listens on.  A cleanup stops it
    (SIGTERM, then SIGKILL) and kills, by PID, any C{--workers} process it logged that is
    still there.

    @param environment: variables to add to the child's environment.
    @param childFDs: descriptors of this process to pass as the child's (C{{3: fd}}).
    @param wrapper: a command to run the child through (it must C{exec} it).
    @param waitForPort: when false, do not wait for a port on 127.0.0.1 (for services that
        listen elsewhere: a Unix socket, every address of a private network namespace);
        the test waits with C{waitForOutput}.
    """
    process = ServiceProcess()
    if not waitForPort:
        # It never logs a port on 127.0.0.1: the wait for one fails when it ends, unheard.
        process._listening.addErrback(lambda _: None)
    reactor = cast(IReactorProcess, theReactor())
    argv = [*wrapper, *serviceCommand(args, twistOptions, program)]
    env = dict(twistEnvironment(), **(environment or {}))
    fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
    fds.update(childFDs or {})
    # Cleanups run last-in first-out: the master first, then any worker it left behind.
    testCase.addCleanup(killWorkers, process)
    process.processTransport = reactor.spawnProcess(
        process, argv[0], argv, env=env, path=tmpdir, childFDs=fds
    )
    testCase.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
    if not waitForPort:
        return succeed(process)
    return Deferred.fromCoroutine(process._started()).addCallback(lambda _: process)


def killWorkers(process: ServiceProcess) -> None:
    """
    SIGKILL every worker C{process} logged that still runs (a master killed with SIGKILL
    leaves them behind).
    """
    for pid in process.workerPIDs:
        if isServiceProcess(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def isServiceProcess(pid: int) -> bool:
    """
    Whether C{pid} is a live (not zombie) C{smtpsvc} process; a PID that was reused by
    another program is not one.
    """
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = status.rpartition(")")[2].split()[0]
    return state != "Z" and b"smtpsvc" in command


def occurrences(text: bytes, count: int) -> re.Pattern[bytes]:
    """
    A pattern that matches output holding C{text} at least C{count} times.
    """
    return re.compile(b"(?:" + re.escape(text) + rb"[\s\S]*?){%d}" % count)


async def until(check: Callable[[], object], within: float, what: str) -> None:
    """
    Wait until C{check()} is true, looking every 50 ms.

    @raise FailTest: after C{within} seconds, naming C{what} was awaited.
    """
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise FailTest(f"{what}: not within {within} s")
        await deferLater(theReactor(), 0.05, lambda: None)


def childProcesses(parent: int) -> list[int]:
    """
    The IDs of the processes whose parent is C{parent} (from C{/proc}).
    """
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: the fields follow its end.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[0] != "Z"


# -- messages and Maildirs ---------------------------------------------------------------------


def message(subject: str, size: int = 0) -> bytes:
    """
    A message with CRLF line endings, lines smtplib must dot-stuff, and about C{size} more
    bytes of body.
    """
    head = f"From: a@example.org\r\nTo: u@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    body = b"first line\r\n.leading dot\r\n..two dots\r\n"
    line = b"0123456789" * 7 + b"\r\n"
    return head + body + line * (size // len(line)) + b"last line\r\n"


def traceHeaders(stored: bytes) -> bytes:
    """
    The C{Return-Path:} and C{Received:} lines in front of a delivered message.
    """
    body = withoutTraceHeaders(stored)
    return stored[: len(stored) - len(body)]


def leftInTmp(path: str) -> dict[str, bytes]:
    """
    The files in the Maildir's C{tmp/}, by name.
    """
    tmp = Path(path, "tmp")
    return {entry.name: entry.read_bytes() for entry in tmp.iterdir()}


def maildirPIDs(path: str) -> set[int]:
    """
    The process IDs in the names of the Maildir's files (C{TIME.M...P<pid>Q...}).
    """
    names = os.listdir(os.path.join(path, "new"))
    return {int(m.group(1)) for name in names if (m := _MAILDIR_PID.match(name))}


def queuedPID(reply: bytes | str) -> int | None:
    """
    The process ID in a Maildir delivery's C{250 ... queued as M...P<pid>Q...}.
    """
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    match = _QUEUED_PID.search(text)
    return int(match.group(1)) if match else None


def sendOne(port: int, body: bytes, recipient: str = "u@example.org") -> tuple[int, bytes]:
    """
    Send C{body} with smtplib from a@example.org (blocking: run it in a thread) and return
    the reply to the end of the data.
    """
    with smtplib.SMTP(LOCALHOST, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT) as c:
        c.ehlo()
        code, text = c.mail("a@example.org")
        if code == 250:
            code, text = c.rcpt(recipient)
        if code == 250:
            code, text = c.data(body)
        c.quit()
    return code, text


# -- which worker serves a connection ---------------------------------------------------------


def servingProcesses(pids: Iterable[int], port: int) -> dict[int, int]:
    """
    Which of the processes C{pids} holds the server end of each established IPv4 TCP
    connection to C{port}, by the client's port: the sockets each process holds (in
    C{/proc/PID/fd}) matched by inode with the connections in C{/proc/net/tcp}.
    """
    owners: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and target.endswith("]"):
                        owners[int(target[len("socket:[") : -1])] = pid
    served: dict[int, int] = {}
    # sl local_address rem_address st ... inode: addresses as HEXIP:HEXPORT, 01 is ESTABLISHED.
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.rpartition(":")[2], 16) == port and inode in owners:
            served[int(remote.rpartition(":")[2], 16)] = owners[inode]
    return served


class Burst:
    """
    Many SMTP connections to the service on 127.0.0.1, opened at once and held open.  The
    methods block: run them in a thread.
    """

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.clients: list[socket.socket] = []
        self.greetings: dict[socket.socket, bytes] = {}

    def open(self) -> None:
        """
        Connect C{count} times, one connection after the other without waiting for
        greetings.
        """
        for _ in range(self.count):
            self.clients.append(
                socket.create_connection((LOCALHOST, self.port), timeout=SOCKET_TIMEOUT)
            )

    def awaitGreetings(self, quiet: float, within: float = SOCKET_TIMEOUT) -> int:
        """
        Read greetings until every connection has one, no other comes for C{quiet} seconds,
        or C{within} seconds have passed; the number of connections greeted.
        """
        deadline = time.monotonic() + within
        buffers: dict[socket.socket, bytes] = {}
        while len(self.greetings) < len(self.clients):
            timeout = min(quiet, deadline - time.monotonic())
            waiting = [c for c in self.clients if c not in self.greetings]
            readable = select.select(waiting, [], [], timeout)[0] if timeout > 0 else []
            if not readable:
                break
            for client in readable:
                data = client.recv(4096)
                if not data:
                    raise FailTest(f"connection {client.getsockname()} closed before a greeting")
                buffers[client] = buffers.get(client, b"") + data
                if buffers[client].endswith(b"\r\n"):
                    self.greetings[client] = buffers.pop(client)
        return len(self.greetings)

    def servedBy(self, pids: Sequence[int]) -> dict[int, int]:
        """
        How many of the connections each of the processes C{pids} serves (the ones none
        of them serves are not counted).
        """
        byClientPort = servingProcesses(pids, self.port)
        counts = {pid: 0 for pid in pids}
        for client in self.clients:
            pid = byClientPort.get(client.getsockname()[1])
            if pid is not None:
                counts[pid] += 1
        return counts

    def quit(self) -> list[bytes]:
        """
        Send C{QUIT} on every connection; the first line of each reply.
        """
        replies = []
        for client in self.clients:
            client.sendall(b"QUIT\r\n")
            with client.makefile("rb") as reader:
                replies.append(reader.readline())
        return replies

    def close(self) -> None:
        """
        Close every connection.
        """
        for client in self.clients:
            client.close()


# -- openssl ----------------------------------------------------------------------------------


async def _peerCertificate(port: int, serverName: str, starttls: bool) -> str | None:
    """
    What C{openssl s_client -servername NAME -brief} says of the certificate it is served
    on C{port} (after STARTTLS, or at once for implicit TLS), bounded by the tool timeout:
    the rest of its C{Peer certificate:} line, or L{None}.
    """
    args = ["s_client", "-connect", f"{LOCALHOST}:{port}", "-servername", serverName]
    args += ["-brief", "-crlf", "-ign_eof"]
    if starttls:
        args += ["-starttls", "smtp", "-name", CLIENT_NAME]
    result = await runOpenSSL(args, b"QUIT\n", afterReply=not starttls)
    match = re.search(r"^Peer certificate: (.*)$", result.stderr, re.MULTILINE)
    return match.group(1) if match else None


async def servedCommonName(port: int, serverName: str) -> str | None:
    """
    The common name of the certificate C{openssl s_client -servername NAME} is served on
    the implicit TLS port C{port} (bounded by the tool timeout), or L{None}.
    """
    subject = await _peerCertificate(port, serverName, starttls=False)
    match = re.search(r"CN\s*=\s*([^,/\n]+)", subject or "")
    return match.group(1).strip() if match else None


async def servedSubject(port: int, serverName: str, starttls: bool) -> str | None:
    """
    The subject of the certificate C{openssl s_client -servername NAME} is served on
    C{port} (after STARTTLS, or at once for implicit TLS), as C{CN=...} without spaces,
    or L{None}.
    """
    subject = await _peerCertificate(port, serverName, starttls)
    return subject.replace(" ", "") if subject is not None else None


# -- listening sockets a test hands over ---------------------------------------------------------


def listeningSocket() -> socket.socket:
    """
    A TCP socket listening on 127.0.0.1, on a port the OS picks.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOCALHOST, 0))
    sock.listen(50)
    return sock


#: Runs its arguments as a command whose C{LISTEN_PID} is its own process ID, as systemd
#: starts a socket-activated service (the shell C{exec}s, so the PID stays the same).
SYSTEMD_WRAPPER = ("/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"')


def socketActivation(
    sockets: Sequence[socket.socket], name: str
) -> tuple[dict[str, str], dict[int, int]]:
    """
    The environment and descriptors systemd gives a service activated by one socket unit
    C{name} with C{sockets}: C{LISTEN_FDS}, C{LISTEN_FDNAMES} and descriptors 3, 4, ...
    (C{LISTEN_PID} is set by L{SYSTEMD_WRAPPER}).
    """
    environment = {
        "LISTEN_FDS": str(len(sockets)),
        "LISTEN_FDNAMES": ":".join([name] * len(sockets)),
    }
    return environment, {3 + i: sock.fileno() for i, sock in enumerate(sockets)}


# -- example files ------------------------------------------------------------------------------


def unitCommand(unit: Path) -> list[str]:
    """
    The arguments after C{twist smtpsvc} in the C{ExecStart=} of a systemd unit file.
    """
    words = unitExecStart(unit)
    return words[words.index("smtpsvc") + 1 :]


def unitTwistOptions(unit: Path) -> list[str]:
    """
    The options of C{twist} itself, before C{smtpsvc}, in the C{ExecStart=} of a
    systemd unit file.
    """
    words = unitExecStart(unit)
    return words[1 : words.index("smtpsvc")]


def unitExecStart(unit: Path) -> list[str]:
    """
    The words of the C{ExecStart=} of a systemd unit file, checked to run
    C{twist ... smtpsvc}.
    """
    logical: list[str] = []
    pending = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")) and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    starts = [line for line in logical if line.startswith("ExecStart=")]
    assert len(starts) == 1, f"{unit}: {starts}"
    words = shlex.split(starts[0][len("ExecStart=") :])
    assert Path(words[0]).name == "twist" and "smtpsvc" in words, words
    return words


def unitSetting(unit: Path, key: str) -> list[str]:
    """
    The values of C{KEY=} lines in a systemd unit file.
    """
    prefix = key + "="
    return [
        line.strip()[len(prefix) :]
        for line in unit.read_text().splitlines()
        if line.strip().startswith(prefix)
    ]


def writeCertificate(directory: str, host: str) -> None:
    """
    Write C{certs/HOST.pem} (certificate and key from the test CA), as the ready-made
    configurations of C{tap-configs/} name them, under C{directory}.
    """
    Path(directory, "certs").mkdir(exist_ok=True)
    pair = issue(host)
    Path(directory, "certs", f"{host}.pem").write_bytes(pair.cert + pair.key)


def relocate(words: Sequence[str], moves: Mapping[str, str]) -> list[str]:
    """
    C{words} with each path prefix in C{moves} replaced, e.g. C{/etc/smtpsvc} by a test's
    directory.
    """
    out = []
    for word in words:
        for old, new in moves.items():
            word = word.replace(old, new)
        out.append(word)
    return out


# -- the handler for --deliver python:tests.service_support:makeHandler --------------------------


@implementer(IRcptToHandler)
class NoBobs:
    """
    Refuses every recipient whose local part starts with C{bob}.
    """

    def onRcptTo(self, address: Address, session: Session) -> None:
        if address.address.lower().startswith("bob"):
            raise SMTPError(550, f"5.1.1 <{address.address}>: no bobs here (makeHandler)")


def makeHandler() -> NoBobs:
    """
    The handler C{--deliver python:tests.service_support:makeHandler} loads.
    """
    return NoBobs()


@implementer(ICloseHandler)
class NeverClosing:
    """
    A close handler that never answers.
    """

    def onClose(self, session: Session) -> Deferred[None]:
        return Deferred()


def makeNeverClosing() -> NeverClosing:
    """
    The handler C{--deliver python:tests.service_support:makeNeverClosing} loads.
    """
    return NeverClosing()
