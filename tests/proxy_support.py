"""
Helpers for the end-to-end tests of who is really connecting (L{tests.test_proxy_e2e}):
HAProxy as a child process, the deployment examples of C{docs/deployment.rst} turned into
a test configuration, a tiny authoritative DNS server, a TLS client that sends its
ClientHello in the same segment as a PROXY header, and a handler that notes who the
session says the client is.

Everything started here is stopped by the test case's cleanups, and every wait is
bounded.  The general machinery (servers, clients, C{twist}, swaks) is in
L{tests.e2e_support}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.names import common, dns, error, server
from twisted.trial.unittest import FailTest, TestCase
from zope.interface import implementer

from smtpsvc import Address, IConnectHandler, IMailFromHandler, Session, SMTPServer

from .e2e_support import (
    CLOSE_TIMEOUT,
    EXAMPLES,
    LISTEN,
    LOCALHOST,
    START_TIMEOUT,
    OutputProcess,
    RawClient,
    ServerClosedError,
    freePort,
    theReactor,
    workspace,
)
from .service_support import unitCommand

#: The documentation's deployment examples, which the tests run.
DEPLOY_HAPROXY = EXAMPLES / "deploy_haproxy.cfg"
DEPLOY_UNIT = EXAMPLES / "deploy_smtpsvc@.service"


# -- who the session says the client is -------------------------------------------------------


@dataclass(frozen=True)
class Sighting:
    """
    What a session said about its client at one moment.
    """

    remoteAddress: str
    remotePort: int
    clientHostname: str
    localAddress: str
    localPort: int
    secure: bool
    proxyVersion: int | None
    proxyCommand: str | None
    xClient: Mapping[str, str | None]
    xForward: Mapping[str, str | None]

    @classmethod
    def of(cls, session: Session) -> Sighting:
        """
        Note what C{session} says now.
        """
        proxy = session.proxy
        return cls(
            remoteAddress=session.remoteAddress,
            remotePort=session.remotePort,
            clientHostname=session.clientHostname,
            localAddress=session.localAddress,
            localPort=session.localPort,
            secure=session.secure,
            proxyVersion=getattr(proxy, "version", None),
            proxyCommand=getattr(proxy, "command", None),
            xClient=dict(session.xClient),
            xForward=dict(session.xForward),
        )


@implementer(IConnectHandler, IMailFromHandler)
class WhoIsThere:
    """
    Notes who the client is when the connect handlers run (at connection, and again
    after XCLIENT) and at each MAIL FROM; accepts everything.
    """

    def __init__(self) -> None:
        self.connects: list[Sighting] = []
        self.senders: list[Sighting] = []

    def onConnect(self, session: Session) -> None:
        self.connects.append(Sighting.of(session))

    def onMailFrom(self, address: Address, session: Session) -> None:
        self.senders.append(Sighting.of(session))


@implementer(ILogObserver)
class LogWatcher:
    """
    Keeps the log events of one namespace (smtpsvc's unless told) while a test runs.
    """

    def __init__(self, testCase: TestCase, namespace: str = "smtpsvc") -> None:
        self.events: list[LogEvent] = []
        self._namespace = namespace
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith(self._namespace):
            self.events.append(event)

    @property
    def messages(self) -> list[str]:
        """
        The events, formatted.
        """
        return [formatEvent(event) for event in self.events]

    def search(self, pattern: str) -> re.Match[str] | None:
        """
        The first formatted event that matches C{pattern}.
        """
        compiled = re.compile(pattern)
        for message in self.messages:
            found = compiled.search(message)
            if found is not None:
                return found
        return None


async def listenOn(testCase: TestCase, server: SMTPServer) -> int:
    """
    Make C{server} listen on an OS-chosen port of 127.0.0.1; cleanups close it and stop
    the port (as L{tests.e2e_support.startServer} does for the servers it builds).

    @return: the port.
    """
    port = await server.listen(LISTEN)
    reactor = theReactor()
    testCase.addCleanup(lambda: maybeDeferred(port.stopListening))
    testCase.addCleanup(lambda: server.close().addTimeout(CLOSE_TIMEOUT, reactor))
    return int(cast(Any, port.getHost()).port)


# -- ports -------------------------------------------------------------------------------------


def _connectable(ports: Sequence[int]) -> bool:
    for port in ports:
        try:
            socket.create_connection((LOCALHOST, port), timeout=1.0).close()
        except OSError:
            return False
    return True


# -- HAProxy -----------------------------------------------------------------------------------


def haproxyPath() -> str | None:
    """
    Where haproxy is (Debian puts it in /usr/sbin, which may not be on C{PATH}), or
    L{None}.
    """
    found = shutil.which("haproxy")
    if found is not None:
        return found
    for candidate in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class HAProxyProcess(OutputProcess):
    """
    A running C{haproxy -db}: its output and how it ended.  L{OutputProcess.stop} stops
    it: SIGTERM (HAProxy stops at once), then SIGKILL if it is still there; both are sent
    to its process ID.
    """

    async def _ready(self, ports: Sequence[int]) -> bool:
        # Ready when every frontend port accepts connections and HAProxy is still running
        # a moment later: a frontend that could not bind makes it exit at once, possibly
        # after an earlier one was bound.
        deadline = time.monotonic() + START_TIMEOUT
        reactor = theReactor()
        while time.monotonic() < deadline:
            if self.ended:
                return False
            if await deferToThread(_connectable, ports):
                await deferLater(reactor, 0.3, lambda: None)
                return not self.ended
            await deferLater(reactor, 0.05, lambda: None)
        raise FailTest(f"haproxy did not listen within {START_TIMEOUT} s:\n{self.text}")


def _stopLater(process: HAProxyProcess) -> Callable[[], Deferred[None]]:
    return lambda: Deferred.fromCoroutine(process.stop())


async def startHAProxy(
    testCase: TestCase, configuration: Callable[[Sequence[int]], str], frontends: int
) -> tuple[HAProxyProcess, list[int]]:
    """
    Run C{haproxy -db} (in the foreground) with the configuration
    C{configuration(ports)}, where C{ports} are C{frontends} free ports of 127.0.0.1 for
    its frontends to bind; try again with other ports if one was taken meanwhile.  A
    cleanup stops it.

    @return: the process and the ports its frontends listen on.
    """
    executable = haproxyPath()
    assert executable is not None, "haproxy is not installed"
    directory = workspace(testCase)
    for attempt in range(5):
        ports = [freePort() for _ in range(frontends)]
        if len(set(ports)) != frontends:
            continue
        path = os.path.join(directory, f"haproxy-{attempt}.cfg")
        with open(path, "w", encoding="utf-8") as f:
            f.write(configuration(ports))
        process = HAProxyProcess()
        reactor = cast(IReactorProcess, theReactor())
        argv = [executable, "-db", "-f", path]
        process.processTransport = reactor.spawnProcess(
            process, argv[0], argv, env=dict(os.environ), path=directory
        )
        testCase.addCleanup(_stopLater(process))
        if await process._ready(ports):
            return process, ports
        if b"cannot bind socket" not in process.output:
            raise FailTest(f"haproxy exited:\n{process.text}")
    raise FailTest("haproxy could not bind free ports in five attempts")


def _substitute(text: str, replacements: Iterable[tuple[str, str]], source: Path) -> str:
    for old, new in replacements:
        if old not in text:
            raise FailTest(
                f"{source.name} no longer contains {old!r}; update tests/proxy_support.py "
                "with the documentation"
            )
        text = text.replace(old, new)
    return text


def deploymentHAProxyConfig(
    mx: int, submissions: int, smtp: int, smtps: int, checkInterval: str = "300ms"
) -> str:
    """
    The documentation's C{deploy_haproxy.cfg}, its frontends moved to 127.0.0.1 ports
    C{mx} (instead of 25) and C{submissions} (instead of 465), both instances of each
    backend pointed at one test server (SMTP port C{smtp}, implicit TLS port C{smtps}),
    and health checks every C{checkInterval} so that the test sees them.
    """
    return _substitute(
        DEPLOY_HAPROXY.read_text(encoding="utf-8"),
        [
            ("bind :25\n", f"bind {LOCALHOST}:{mx}\n"),
            ("bind :465\n", f"bind {LOCALHOST}:{submissions}\n"),
            ("127.0.0.1:2525 ", f"{LOCALHOST}:{smtp} "),
            ("127.0.0.1:2526 ", f"{LOCALHOST}:{smtp} "),
            ("127.0.0.1:2465 ", f"{LOCALHOST}:{smtps} "),
            ("127.0.0.1:2466 ", f"{LOCALHOST}:{smtps} "),
            ("inter 10s", f"inter {checkInterval}"),
        ],
        DEPLOY_HAPROXY,
    )


def deploymentTwistArguments(cert: str, key: str, maildir: str) -> list[str]:
    """
    The arguments after C{twist smtpsvc} in the documentation's systemd unit
    (C{deploy_smtpsvc@.service}), with the listeners on OS-chosen ports of 127.0.0.1,
    the given certificate, key and Maildir, and no reverse DNS or greeting delay (the
    test machine's DNS is not part of the test).
    """
    arguments = unitCommand(DEPLOY_UNIT)
    values = {
        "--listen": LISTEN,
        "--listen-tls": LISTEN,
        "--cert": cert,
        "--key": key,
        "--deliver": f"maildir:{maildir}",
    }
    for flag, value in values.items():
        if arguments.count(flag) != 1:
            raise FailTest(f"{DEPLOY_UNIT.name} should give {flag} once: {arguments}")
        arguments[arguments.index(flag) + 1] = value
    return [*arguments, "--disable-reverse-lookup", "--early-talker-delay", "0"]


# -- TLS right after a PROXY header ----------------------------------------------------------


class _TLSThroughMemory:
    """
    The part of a socket that L{RawClient} uses, over an C{ssl.SSLObject}: what is sent
    is encrypted, what is received decrypted.
    """

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
    ) -> None:
        self._sock = sock
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._sock.sendall(data)

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    def recv(self, size: int) -> bytes:
        while True:
            try:
                data = self._tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self._sock.recv(65536)
                if not chunk:
                    return b""
                self._incoming.write(chunk)
                continue
            except ssl.SSLZeroReturnError:
                return b""
            self._flush()
            return data

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._sock.close()


def startTLSAfter(
    client: RawClient, prefix: bytes, context: ssl.SSLContext, serverHostname: str
) -> None:
    """
    Send C{prefix} (a PROXY header) and the TLS ClientHello in one C{sendall}, so that
    they reach the server in one segment, and complete the handshake; later sends and
    reads of C{client} go through TLS.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverHostname)
    sock = client.sock
    pending = prefix
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        pending += outgoing.read()
        if pending:
            sock.sendall(pending)
            pending = b""
        chunk = sock.recv(65536)
        if not chunk:
            raise ServerClosedError("the server closed the connection during the handshake")
        incoming.write(chunk)
    data = outgoing.read()
    if data:
        sock.sendall(data)
    # RawClient only sends, receives, sets timeouts and closes: this object does those.
    client.sock = cast(socket.socket, _TLSThroughMemory(sock, tls, incoming, outgoing))


# -- a tiny authoritative DNS server ----------------------------------------------------------


def ptr(address: str, name: str) -> dns.RRHeader:
    """
    The PTR record that names C{address}.
    """
    owner = ipaddress.ip_address(address).reverse_pointer
    return dns.RRHeader(
        name=owner.encode(), type=dns.PTR, ttl=60, payload=dns.Record_PTR(name=name.encode())
    )


def a(name: str, address: str) -> dns.RRHeader:
    """
    The A record of C{name}.
    """
    return dns.RRHeader(
        name=name.encode(), type=dns.A, ttl=60, payload=dns.Record_A(address=address)
    )


class Zone(common.ResolverBase):
    """
    The records a test's DNS server serves.  Questions of the types in C{silent} are never
    answered (a server that is down, or a firewall that drops them); other unknown names
    get NXDOMAIN.

    @ivar asked: every question, as C{(name, type)}, in order.
    """

    def __init__(self, records: Iterable[dns.RRHeader], silent: Iterable[int] = ()) -> None:
        super().__init__()
        self.records: dict[tuple[str, int], list[dns.RRHeader]] = {}
        for record in records:
            key = (record.name.name.decode("ascii").lower(), record.type)
            self.records.setdefault(key, []).append(record)
        self.silent = set(silent)
        self.asked: list[tuple[str, int]] = []

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: Any
    ) -> Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]:
        key = (name.decode("ascii").lower(), type)
        self.asked.append(key)
        if type in self.silent:
            return Deferred()
        answers = self.records.get(key)
        if not answers:
            return defer.fail(error.DomainError(name))
        return defer.succeed((answers, [], []))


async def startDNS(testCase: TestCase, zone: Zone) -> int:
    """
    Serve C{zone} over UDP on 127.0.0.1, port chosen by the OS; a cleanup stops it.

    @return: the port.
    """
    factory = server.DNSServerFactory(authorities=[zone])
    protocol = dns.DNSDatagramProtocol(controller=factory)
    port = theReactor().listenUDP(0, protocol, interface=LOCALHOST)
    testCase.addCleanup(lambda: maybeDeferred(port.stopListening))
    return int(port.getHost().port)


def finishResolverQueries(resolver: object) -> None:
    """
    Time out at once every query C{resolver} (a C{twisted.names.client.Resolver}) still
    waits for.

    twisted.names keeps a timer per query and does not cancel it when the lookup is
    cancelled (as smtpsvc's C{reverseLookupTimeout} does), nor can a query to a server
    that never answers be stopped otherwise; left running, those timers would make trial
    report a dirty reactor.  Their own timeout handler is run now instead, which also
    closes the query's UDP port.
    """
    for call in theReactor().getDelayedCalls():
        if not call.active():
            continue
        # cancel() forgets what the call would have called.
        func, args, kw = call.func, call.args, call.kw
        owner = getattr(func, "__self__", None)
        if isinstance(owner, dns.DNSDatagramProtocol) and owner.controller is resolver:
            call.cancel()
            func(*args, **kw)


def timedConnect(port: int, timeout: float) -> tuple[float, RawClient | None, str]:
    """
    Connect to C{port} and wait at most C{timeout} seconds for the greeting.

    @return: the seconds waited, the client (L{None} if no greeting came) and the
        greeting's first line or why there was none.
    """
    started = time.monotonic()
    client = RawClient(port, timeout=timeout)
    try:
        reply = client.readReply()
    except TimeoutError:
        client.close()
        return time.monotonic() - started, None, f"no greeting within {timeout} s"
    except (ServerClosedError, ConnectionResetError) as e:
        client.close()
        return time.monotonic() - started, None, f"closed: {e}"
    return time.monotonic() - started, client, f"{reply.code} {reply.lines[0]}"
