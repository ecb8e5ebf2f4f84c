"""
Helpers for the end-to-end tests: real servers on 127.0.0.1, blocking clients for threads.

L{startServer} runs an in-process L{SMTPServer} on an OS-chosen port of the real reactor
(L{listenAlso} adds listeners to it); L{startTwist} runs C{twist smtpsvc} as a child
process (a L{TwistProcess}, one kind of L{OutputProcess}), and L{assertTwistRefuses} checks
that it turns a command line down; L{RawClient} is a byte-exact blocking client to use with
C{deferToThread}; L{LoopbackSMTP} and L{LoopbackSMTPSSL} are smtplib clients that verify a
server's certificate for a host name while connecting to 127.0.0.1; L{runSwaks} and
L{runOpenSSL} run those tools in a thread.  L{LogCapture} keeps what this process logs;
L{loadExample}, L{ExampleReactor} and L{startExample} run the documentation's examples.
Every wait is bounded and everything started here is stopped by the test case's cleanups.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from smtpsvc import SMTPServer
from smtpsvc.testing import ServerReply, parseReplies

#: The repository root: the directory that holds C{smtpsvc/} and C{twisted/plugins/}.
ROOT = Path(__file__).resolve().parent.parent
#: The only address the tests use.
LOCALHOST = "127.0.0.1"
#: Where in-process servers listen: a port the OS picks, on the loopback interface only.
LISTEN = f"tcp:0:interface={LOCALHOST}"
#: The server name in-process servers get, so that replies that carry it can be compared.
SERVER_NAME = "mx.e2e.test"
#: The HELO/EHLO name clients use (so that no client looks up the machine's own name).
CLIENT_NAME = "client.e2e.test"
#: Seconds a blocking socket operation may take.
SOCKET_TIMEOUT = 5.0
#: Seconds a server may take to close, a child process to start or to exit after SIGTERM.
CLOSE_TIMEOUT = 10.0
START_TIMEOUT = 20.0
EXIT_TIMEOUT = 10.0
#: Seconds a command-line tool (swaks, a failing twist) may run.
TOOL_TIMEOUT = 30.0

_LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
# The two kinds of listener the server logs: "SMTP server listening on ..." and
# "SMTP (implicit TLS) server listening on ..." (LMTP alike).
_PLAIN_LISTENING = re.compile(rb"[SL]MTP server listening on 127\.0\.0\.1:(\d+)")
_TLS_LISTENING = re.compile(rb"[SL]MTP \(implicit TLS\) server listening on 127\.0\.0\.1:(\d+)")
# `python -m twisted.application.twist` does not work (the package has no __main__), so the
# child runs what the `twist` console script runs.
_TWIST_MAIN = (
    "import sys; from twisted.application.twist._twist import Twist; "
    "sys.argv[0] = 'twist'; sys.exit(Twist.main())"
)


def theReactor() -> Any:
    """
    The global reactor (the one trial runs), typed loosely for the calls made on it.
    """
    from twisted.internet import reactor

    return reactor


class E2ETestCase(TestCase):
    """
    The base of the end-to-end test cases: a bound on every test, and types for the
    assertions the tests use (trial's own are not annotated).
    """

    timeout = 60

    if TYPE_CHECKING:

        def assertEqual(self, first: object, second: object, msg: object = None) -> None: ...

        def assertNotEqual(self, first: object, second: object, msg: object = None) -> None: ...

        def assertIn(self, containee: object, container: object, msg: object = None) -> None: ...

        def assertTrue(self, condition: object, msg: object = None) -> None: ...

        def mktemp(self) -> str: ...


# -- in-process servers ----------------------------------------------------------------------


def startServer(
    testCase: TestCase, handlers: Iterable[object], *, listen: str = LISTEN, **options: Any
) -> Deferred[tuple[SMTPServer, int]]:
    """
    Build an L{SMTPServer} on the real reactor and listen on 127.0.0.1, port chosen by the OS.

    Unless C{options} say otherwise the server is named L{SERVER_NAME}, lets clients send
    without AUTH (C{authOptional}) and greets at once (C{earlyTalkerDelay=0}).  A cleanup
    closes the server (bounded by L{CLOSE_TIMEOUT}) and stops the port.

    @param listen: the endpoint to listen on instead (C{unix:PATH} for a Unix socket).
    @return: a Deferred firing with the server and its port number (0 for a listener
        that has none, such as a Unix socket).
    """
    options.setdefault("name", SERVER_NAME)
    options.setdefault("authOptional", True)
    options.setdefault("earlyTalkerDelay", 0)
    reactor = theReactor()
    server = SMTPServer(handlers, reactor=reactor, **options)

    def listening(port: Any) -> tuple[SMTPServer, int]:
        # Cleanups run last-in first-out: close the server, then make sure the port is shut
        # even if close() went wrong.
        testCase.addCleanup(lambda: maybeDeferred(port.stopListening))
        testCase.addCleanup(lambda: server.close().addTimeout(CLOSE_TIMEOUT, reactor))
        return server, int(getattr(port.getHost(), "port", 0))

    return server.listen(listen).addCallback(listening)


def listenAlso(testCase: TestCase, server: SMTPServer, secure: bool | None = None) -> Deferred[int]:
    """
    Make C{server} (from L{startServer}) listen on one more OS-chosen port of 127.0.0.1,
    with C{server.listen(..., secure=secure)}; a cleanup stops the port.

    @return: a Deferred firing with the port number.
    """

    def listening(port: Any) -> int:
        testCase.addCleanup(lambda: maybeDeferred(port.stopListening))
        return int(port.getHost().port)

    return server.listen(LISTEN, secure=secure).addCallback(listening)


def freePort() -> int:
    """
    A TCP port of 127.0.0.1 that was free a moment ago (bound with port 0, then closed),
    for programs that cannot listen on port 0 and say which port they got.  Someone else
    may take it before they bind it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def aliceChecker() -> InMemoryUsernamePasswordDatabaseDontUse:
    """
    A cred checker that knows alice, password secret (cred compares bytes).
    """
    return InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")


def workspace(testCase: SynchronousTestCase) -> str:
    """
    A fresh directory for one test, as an absolute path.
    """
    path = os.path.abspath(str(testCase.mktemp()))
    os.makedirs(path)
    return path


# -- blocking clients (run them with deferToThread) ------------------------------------------


class ServerClosedError(Exception):
    """
    The server closed the connection before a complete reply arrived.
    """


class RawClient:
    """
    A blocking client that writes exactly the bytes it is given and reads replies.

    Every operation is bounded by the socket timeout; use it from a thread, never from
    the reactor thread.
    """

    def __init__(self, port: int, timeout: float = SOCKET_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()

    def send(self, data: bytes) -> None:
        """
        Send C{data} in one C{sendall}.
        """
        self.sock.sendall(data)

    def _readLine(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ServerClosedError(f"connection closed; unfinished input {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def readReply(self) -> ServerReply:
        """
        Read one complete (possibly multi-line) reply.
        """
        lines: list[str] = []
        while True:
            line = self._readLine().decode("utf-8", "replace")
            lines.append(line[4:])
            if line[3:4] != "-":
                return ServerReply(int(line[:3]), tuple(lines))

    def readReplies(self, count: int) -> list[ServerReply]:
        """
        Read C{count} replies.
        """
        return [self.readReply() for _ in range(count)]

    def command(self, line: str) -> ServerReply:
        """
        Send one command line (CRLF added) and read its reply.
        """
        self.send(line.encode("utf-8") + b"\r\n")
        return self.readReply()

    def readUntilClosed(self, within: float = CLOSE_TIMEOUT) -> list[ServerReply]:
        """
        Read until the server closes the connection and return every reply read.

        @raise FailTest: when the connection is still open after C{within} seconds.
        """
        deadline = time.monotonic() + within
        data = self._buffer
        self._buffer = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FailTest(
                    f"the server did not close the connection within {within} s; received {data!r}"
                )
            self.sock.settimeout(min(left, self.timeout))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return parseReplies(data)

    def readAvailable(self, within: float) -> bytes:
        """
        Whatever arrives within C{within} seconds (and whatever was already buffered), for
        checking that nothing does; stops early if the server closes the connection.
        """
        data, self._buffer = self._buffer, b""
        deadline = time.monotonic() + within
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            self.sock.settimeout(self.timeout)
        return data

    def startTLS(
        self, context: ssl.SSLContext, serverHostname: str, session: ssl.SSLSession | None = None
    ) -> None:
        """
        Do a TLS handshake on the connection (at once for implicit TLS, after the server's
        C{220} for STARTTLS), as C{context} says, asking for and verifying
        C{serverHostname}, offering to resume C{session} if given; later sends and reads go
        through TLS.

        @raise FailTest: when plaintext bytes the server sent are still unread: they would
            be lost, or a test would miss them.
        """
        if self._buffer:
            raise FailTest(f"plaintext received before the handshake: {self._buffer!r}")
        self.sock = context.wrap_socket(self.sock, server_hostname=serverHostname, session=session)


class LoopbackSMTP(smtplib.SMTP):
    """
    C{smtplib.SMTP} that connects to 127.0.0.1 whatever host it is given, so that
    C{LoopbackSMTP("mx.example.test", port).starttls(context=ctx)} verifies the server's
    certificate for that name (smtplib checks the host it was asked to connect to).
    """

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((LOCALHOST, port), timeout, self.source_address)


class LoopbackSMTPSSL(smtplib.SMTP_SSL):
    """
    C{smtplib.SMTP_SSL} (implicit TLS) that connects to 127.0.0.1 whatever host it is
    given, and verifies the server's certificate for that host.
    """

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((LOCALHOST, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=host)


def clientContext(
    caPEM: bytes, certFile: str | None = None, keyFile: str | None = None
) -> ssl.SSLContext:
    """
    An C{ssl} client context that trusts only the CA certificates C{caPEM} and checks the
    server's host name, presenting the client certificate in C{certFile} (its key in
    C{keyFile}) if given.
    """
    context = ssl.create_default_context(cadata=caPEM.decode("ascii"))
    if certFile is not None:
        context.load_cert_chain(certFile, keyFile)
    return context


def connectionRefused(port: int) -> bool:
    """
    Whether a connection to C{port} on 127.0.0.1 is refused.
    """
    try:
        sock = socket.create_connection((LOCALHOST, port), timeout=SOCKET_TIMEOUT)
    except ConnectionRefusedError:
        return True
    sock.close()
    return False


def describeDifference(actual: bytes, expected: bytes) -> str | None:
    """
    L{None} when the two are equal, else a short account of where they first differ (so
    that a megabyte message does not flood the test output).
    """
    if actual == expected:
        return None
    at = next(
        (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
        min(len(actual), len(expected)),
    )
    start = max(0, at - 30)
    return (
        f"got {len(actual)} bytes, expected {len(expected)}; first difference at byte {at}: "
        f"got {actual[start : at + 30]!r}, expected {expected[start : at + 30]!r}"
    )


# -- swaks -------------------------------------------------------------------------------------


def swaksPath() -> str | None:
    """
    Where swaks is, or L{None}.
    """
    return shutil.which("swaks")


def haveSwaks() -> bool:
    """
    Whether swaks can be run.
    """
    return swaksPath() is not None


def runSwaks(port: int, *args: str) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run swaks against 127.0.0.1:C{port} in a thread, bounded by L{TOOL_TIMEOUT}.
    """
    swaks = swaksPath()
    assert swaks is not None, "swaks is not installed"
    argv = [
        swaks,
        "--server",
        LOCALHOST,
        "--port",
        str(port),
        "--helo",
        CLIENT_NAME,
        "--timeout",
        "10",
        *args,
    ]
    return deferToThread(
        subprocess.run,
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TOOL_TIMEOUT,
    )


# -- openssl ----------------------------------------------------------------------------------


def haveOpenSSL() -> bool:
    """
    Whether the openssl command can be run.
    """
    return shutil.which("openssl") is not None


def runOpenSSL(
    args: Sequence[str], stdin: bytes = b"", afterReply: bool = False
) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run C{openssl ARGS} in a thread with C{stdin} as its input, bounded by
    L{TOOL_TIMEOUT} (then it is killed).

    @param afterReply: hold C{stdin} back until the command printed a complete reply line
        (C{"220 ..."}), as an SMTP client waits for the greeting; C{openssl s_client}
        sends its input as soon as TLS is up, which makes it an early talker with
        implicit TLS.
    """
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not installed"
    return deferToThread(_runTool, [openssl, *args], stdin, afterReply)


_REPLY_LINE = re.compile(r"\d{3} ")


def _runTool(argv: list[str], stdin: bytes, afterReply: bool) -> subprocess.CompletedProcess[str]:
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
        ) as child,
    ):
        killer = threading.Timer(TOOL_TIMEOUT, child.kill)
        killer.start()
        try:
            assert child.stdin is not None and child.stdout is not None
            before = b""
            if afterReply:
                for line in child.stdout:
                    before += line
                    if _REPLY_LINE.match(line.decode("ascii", "replace")):
                        break
            try:
                child.stdin.write(stdin)
                child.stdin.close()
            except BrokenPipeError:
                pass
            output = before + child.stdout.read()
            child.wait()
        finally:
            killer.cancel()
        errors.seek(0)
        return subprocess.CompletedProcess(
            argv,
            child.returncode,
            output.decode("utf-8", "replace"),
            errors.read().decode("utf-8", "replace"),
        )


# -- twist smtpsvc as a child process ----------------------------------------------------------


def twistCommand(args: Sequence[str]) -> list[str]:
    """
    The command line that runs C{twist --log-format text smtpsvc ARGS} with this Python.
    """
    return [sys.executable, "-c", _TWIST_MAIN, "--log-format", "text", "smtpsvc", *args]


def twistEnvironment() -> dict[str, str]:
    """
    The environment for the child: this one, with the repository root first on
    C{PYTHONPATH} so that C{twisted/plugins/smtpsvc_plugin.py} is found.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def maildirArgs(maildir: str) -> list[str]:
    """
    The arguments of a C{twist smtpsvc} that listens on an OS-chosen port of 127.0.0.1,
    stores what it accepts in the Maildir C{maildir} and greets at once.
    """
    return ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", "--early-talker-delay", "0"]


def runTwist(
    args: Sequence[str], cwd: str, wrapper: Sequence[str] = ()
) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run C{twist smtpsvc ARGS} to completion in a thread (for commands that should fail at
    once), bounded by L{TOOL_TIMEOUT}; stdout and stderr together in C{stdout}.

    @param wrapper: a command that runs it (C{unshare ...}), if any.
    """
    return runCommand([*wrapper, *twistCommand(args)], cwd, twistEnvironment())


def runCommand(
    argv: Sequence[str], cwd: str, env: Mapping[str, str] | None = None
) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run C{argv} in C{cwd} to completion in a thread, with nothing on its input, bounded
    by L{TOOL_TIMEOUT}; stdout and stderr together in C{stdout}.

    @param env: its whole environment; this process's when L{None}.
    """
    return deferToThread(
        subprocess.run,
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=TOOL_TIMEOUT,
    )


async def assertTwistRefuses(
    testCase: TestCase,
    args: Sequence[str],
    *expected: str,
    cwd: str | None = None,
    wrapper: Sequence[str] = (),
) -> str:
    """
    Run C{twist smtpsvc ARGS} (L{runTwist}, through C{wrapper}) in C{cwd}, or in a new
    directory, and check
    that it refuses them as a configuration error should be refused (docs/service.rst):
    exit status 1 and one line of output, C{twist smtpsvc: ...}, which contains each of
    C{expected}; no traceback, no usage text.

    @return: that line.
    @raise FailTest: when it is not so.
    """
    if cwd is None:
        cwd = workspace(testCase)
    result = await runTwist(args, cwd, wrapper)
    output = result.stdout
    if result.returncode != 1:
        raise FailTest(
            f"twist smtpsvc {list(args)} exited with status {result.returncode}:\n{output}"
        )
    lines = output.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("twist smtpsvc: "):
        raise FailTest(f"twist smtpsvc {list(args)}: not one error line:\n{output}")
    missing = [text for text in expected if text not in lines[0]]
    if missing:
        raise FailTest(f"twist smtpsvc {list(args)}: {missing} not in {lines[0]!r}")
    return lines[0]


class OutputProcess(ProcessProtocol):
    """
    A child process: what it wrote to stdout and stderr, and how it ended.  The tests'
    processes (C{twist smtpsvc}, HAProxy, smtp-sink) are all of this kind.

    @ivar output: everything it wrote to stdout and stderr so far.
    @ivar ended: whether it ended.
    @ivar exitCode: its exit status once it ended (L{None} if killed by a signal).
    @ivar signal: the signal that killed it, if one did.
    @ivar processTransport: its transport, set by whoever spawned it.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended = False
        self.exitCode: int | None = None
        self.signal: int | None = None
        self.processTransport: IProcessTransport | None = None
        self._exitWaiters: list[Deferred[None]] = []

    @property
    def text(self) -> str:
        """
        The output so far, as text.
        """
        return self.output.decode("utf-8", "replace")

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.exitCode = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        waiters, self._exitWaiters = self._exitWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def waitForExit(self, within: float) -> Deferred[None]:
        """
        A Deferred that fires when the process has ended, or fails with L{defer.TimeoutError}
        after C{within} seconds.
        """
        waiter: Deferred[None] = Deferred()
        if self.ended:
            waiter.callback(None)
            return waiter
        self._exitWaiters.append(waiter)
        return waiter.addTimeout(within, theReactor())

    def sendSignal(self, name: str) -> None:
        """
        Send signal C{name} (C{"TERM"}, C{"KILL"}) to its process ID, unless it already
        ended.
        """
        if not self.ended and self.processTransport is not None:
            # It may have ended without our hearing of it yet.
            with contextlib.suppress(ProcessExitedAlready):
                self.processTransport.signalProcess(name)

    async def stop(self) -> None:
        """
        SIGTERM, then SIGKILL if it is still there after L{EXIT_TIMEOUT} seconds.

        @raise defer.TimeoutError: when it is still there L{EXIT_TIMEOUT} seconds after
            the SIGKILL.
        """
        if self.ended:
            return
        self.sendSignal("TERM")
        try:
            await self.waitForExit(EXIT_TIMEOUT)
        except defer.TimeoutError:
            self.sendSignal("KILL")
            await self.waitForExit(EXIT_TIMEOUT)


class TwistProcess(OutputProcess):
    """
    A running C{twist smtpsvc}: its output, its port, and how it ended.

    @ivar port: the port it logged it is listening on, once known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.port: int | None = None
        self._listening: Deferred[int] = Deferred()
        self._outputWaiters: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        super().childDataReceived(childFD, data)
        if self.port is None:
            match = _LISTENING.search(self.output)
            if match is not None:
                self.port = int(match.group(1))
                self._listening.callback(self.port)
        if self._outputWaiters:
            waiting, self._outputWaiters = self._outputWaiters, []
            for pattern, waiter in waiting:
                found = pattern.search(self.output)
                if found is None:
                    self._outputWaiters.append((pattern, waiter))
                elif not waiter.called:  # not already timed out
                    waiter.callback(found)

    @property
    def plainPorts(self) -> list[int]:
        """
        Every port it logged a plaintext (or STARTTLS) listener on, in order.
        """
        return [int(m.group(1)) for m in _PLAIN_LISTENING.finditer(self.output)]

    @property
    def tlsPorts(self) -> list[int]:
        """
        Every port it logged an implicit TLS listener on, in order.
        """
        return [int(m.group(1)) for m in _TLS_LISTENING.finditer(self.output)]

    async def waitForOutput(
        self, pattern: re.Pattern[bytes], within: float = START_TIMEOUT
    ) -> re.Match[bytes]:
        """
        Wait until the output matches C{pattern}.

        @raise FailTest: when the process ends first, or after C{within} seconds.
        """
        found = pattern.search(self.output)
        if found is not None:
            return found
        if self.ended:
            raise FailTest(f"twist ended without printing {pattern.pattern!r}:\n{self.text}")
        waiter: Deferred[re.Match[bytes]] = Deferred()
        self._outputWaiters.append((pattern, waiter))
        try:
            return await waiter.addTimeout(within, theReactor())
        except defer.TimeoutError:
            raise FailTest(
                f"twist did not print {pattern.pattern!r} within {within} s; output:\n{self.text}"
            ) from None

    async def listeningPorts(self, within: float = START_TIMEOUT) -> tuple[int, int]:
        """
        Wait until it logged both a plaintext and an implicit TLS listener (C{--listen} and
        C{--listen-tls}), and return their ports, plaintext first.
        """
        plain = await self.waitForOutput(_PLAIN_LISTENING, within)
        secure = await self.waitForOutput(_TLS_LISTENING, within)
        return int(plain.group(1)), int(secure.group(1))

    def processEnded(self, reason: Failure) -> None:
        super().processEnded(reason)
        if not self._listening.called:
            self._listening.errback(
                FailTest(f"twist exited (status {self.exitCode}) before listening")
            )
        outputWaiters, self._outputWaiters = self._outputWaiters, []
        for pattern, outputWaiter in outputWaiters:
            if not outputWaiter.called:
                outputWaiter.errback(
                    FailTest(f"twist ended without printing {pattern.pattern!r}:\n{self.text}")
                )

    async def _started(self) -> TwistProcess:
        try:
            await self._listening.addTimeout(START_TIMEOUT, theReactor())
        except defer.TimeoutError:
            raise FailTest(
                f"twist did not log 'listening on' within {START_TIMEOUT} s; output:\n{self.text}"
            ) from None
        except FailTest as e:
            raise FailTest(f"{e}; output:\n{self.text}") from None
        return self


def startTwist(testCase: TestCase, args: Sequence[str], tmpdir: str) -> Deferred[TwistProcess]:
    """
    Start C{twist --log-format text smtpsvc ARGS} in C{tmpdir} and wait (at most
    L{START_TIMEOUT} seconds) until it logs the port it listens on.  A cleanup stops it
    (SIGTERM, then SIGKILL).

    @return: a Deferred firing with the L{TwistProcess}, its C{port} set.
    """
    process = TwistProcess()
    reactor = cast(IReactorProcess, theReactor())
    argv = twistCommand(args)
    process.processTransport = reactor.spawnProcess(
        process, argv[0], argv, env=twistEnvironment(), path=tmpdir
    )
    testCase.addCleanup(lambda: Deferred.fromCoroutine(process.stop()))
    return Deferred.fromCoroutine(process._started())


def withoutTraceHeaders(stored: bytes) -> bytes:
    """
    A delivered message without the C{Return-Path:} and C{Received:} lines (continuation
    lines included) the server put in front of it.
    """
    lines = stored.split(b"\r\n")
    index = 0
    while index < len(lines) and (
        lines[index].startswith((b"Return-Path:", b"Received:"))
        or (index > 0 and lines[index].startswith((b" ", b"\t")))
    ):
        index += 1
    return b"\r\n".join(lines[index:])


# -- the log of this process --------------------------------------------------------------------


@implementer(ILogObserver)
class LogCapture:
    """
    Every log event from its creation to the end of the test (a cleanup removes it), as
    it was logged.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        # Each event as its text followed by all its fields, made when it was logged.
        self._texts: list[str] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)
        self._texts.append(f"{formatEvent(event)} {event!r}")

    def messages(self) -> list[str]:
        """
        The events as text.
        """
        return [formatEvent(event) for event in self.events]

    def matching(self, text: str) -> list[str]:
        """
        The messages that contain C{text}.
        """
        return [message for message in self.messages() if text in message]

    def mentioning(self, text: str) -> list[str]:
        """
        The events in which C{text} appears, in their text or in any of their fields (as
        they were when logged), each as its text followed by all its fields: for
        checking what never gets logged.
        """
        return [event for event in self._texts if text in event]


# -- the documentation's examples -------------------------------------------------------------

#: The documentation's examples (C{docs/examples}).
EXAMPLES = ROOT / "docs" / "examples"


def loadExample(name: str) -> ModuleType:
    """
    Import C{docs/examples/NAME.py} as running it would: with its directory first on
    C{sys.path}, so that examples can import one another (C{from policy import Policy}).

    @raise ImportError: when C{NAME} is found somewhere else.
    """
    directory = str(EXAMPLES)
    sys.path.insert(0, directory)
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(directory)
    where = Path(module.__file__ or "").resolve().parent
    if where != EXAMPLES:
        raise ImportError(f"module {name!r} came from {where}, not from {EXAMPLES}")
    return module


class ExampleReactor:
    """
    Trial's reactor as an example's C{main} sees it in a test: the ports it listens on
    are noted, and its shutdown triggers are kept here (for the test to run) instead of
    on the reactor trial runs.

    @ivar ports: the ports it listened on, in order.
    @ivar triggers: the system event triggers added and not removed, by their key.
    """

    def __init__(self) -> None:
        self._reactor = theReactor()
        self.ports: list[Any] = []
        self.triggers: dict[int, Callable[[], object]] = {}
        self._nextKey = 1

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        port = self._reactor.listenTCP(*args, **kwargs)
        self.ports.append(port)
        return port

    def addSystemEventTrigger(
        self, phase: str, eventType: str, f: Callable[..., object], *args: Any, **kwargs: Any
    ) -> int:
        key, self._nextKey = self._nextKey, self._nextKey + 1
        self.triggers[key] = partial(f, *args, **kwargs)
        return key

    def removeSystemEventTrigger(self, key: int) -> None:
        del self.triggers[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def startExample(
    testCase: TestCase, module: ModuleType, *argv: str
) -> tuple[ExampleReactor, Deferred[object]]:
    """
    Start C{module.main(reactor, *argv)} on an L{ExampleReactor}.  A cleanup does what
    Ctrl-C would (the shutdown triggers, which close the server) and then cancels C{main},
    which otherwise serves for ever.

    @return: the reactor (whose C{ports} and C{triggers} the test may look at) and the
        Deferred of C{main}.
    """
    reactor = ExampleReactor()
    running: Deferred[object] = Deferred.fromCoroutine(module.main(reactor, *argv))

    async def stop() -> None:
        for trigger in list(reactor.triggers.values()):
            await maybeDeferred(trigger)
        running.cancel()
        with contextlib.suppress(CancelledError):
            await running

    testCase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return reactor, running
