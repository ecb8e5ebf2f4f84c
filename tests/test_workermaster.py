"""
Tests for the listening sockets of C{--workers} (L{smtpsvc._service.WorkerMaster}): one
C{SO_REUSEPORT} socket per worker for a TCP listener, each worker handed its own, and one
shared socket for the other kinds of listener.

The sockets are real (on 127.0.0.1 and in this test's directory); the worker processes are
not: a reactor that records C{spawnProcess} stands in for starting them.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.task import Clock, deferLater
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    eventAsJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyClass

from smtpsvc import _service, tap
from smtpsvc._config import (
    LISTEN_BACKLOG,
    ConfigurationError,
    ServiceConfig,
    TCPListening,
    certificatesFromBytes,
    tcpListening,
)
from smtpsvc._server import ABORT_DELAY, HANDLER_GRACE
from smtpsvc._service import (
    _MAX_RELAYED_LINE,
    MASTER_PIPE,
    READY_PIPE,
    MasterPipe,
    SMTPService,
    WorkerMaster,
    WorkerPipes,
    _Worker,
    canSpreadConnections,
    inMemory,
    listenPerWorker,
    tellReady,
    workerTwistOptions,
)
from smtpsvc.testing import RecordingHandler

from .e2e_support import LOCALHOST, LogCapture, theReactor, workspace
from .memorytls import issue

NO_REUSEPORT = "the kernel does not spread connections over SO_REUSEPORT sockets (not Linux)"


class _Spawned:
    """
    A worker process that was not started: what the master asked for, and the signals
    sent to it.  SIGTERM ends it at once, unless C{endsOnTerm} is false.
    """

    def __init__(
        self,
        protocol: Any,
        args: Sequence[str],
        childFDs: Mapping[int, Any],
        env: Mapping[str, str],
    ) -> None:
        self.protocol = protocol
        self.args = list(args)
        self.childFDs = dict(childFDs)
        self.env = dict(env)
        self.signals: list[int] = []
        self.endsOnTerm = True

    def signalProcess(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGTERM and self.endsOnTerm:
            self.protocol.processEnded(Failure(ProcessTerminated(signal=signum)))


class _SpawnRecordingReactor:
    """
    The real reactor for sockets, a L{Clock} for timers, and a record of the processes
    the master would start.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.spawned: list[_Spawned] = []

    def spawnProcess(
        self, protocol: Any, executable: str, args: Sequence[str], **kwargs: Any
    ) -> _Spawned:
        spawned = _Spawned(protocol, args, kwargs["childFDs"], kwargs["env"])
        self.spawned.append(spawned)
        return spawned

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(theReactor(), name)


def descriptor(port: IListeningPort) -> int:
    """
    The file descriptor of a listening socket.
    """
    return int(cast(Any, port).fileno())


@contextmanager
def viewOf(port: IListeningPort) -> Iterator[socket.socket]:
    """
    The listening socket of C{port}, seen through a descriptor of its own.
    """
    sock = socket.socket(fileno=os.dup(descriptor(port)))
    try:
        yield sock
    finally:
        sock.close()


#: The descriptor on which a worker of one listener says it handles SIGHUP.
READY_FD = 5


def sayReady(spawned: _Spawned) -> None:
    """
    What the master hears when a worker's SIGHUP handler is in place.
    """
    spawned.protocol.childDataReceived(int(spawned.env[READY_PIPE]), b"\n")


def inherited(spawned: _Spawned) -> list[str]:
    """
    The C{--inherit FD:KIND} arguments a worker was started with.
    """
    return [spawned.args[i + 1] for i, arg in enumerate(spawned.args) if arg == "--inherit"]


class WorkerSocketsTests(TestCase):
    """
    The master binds one C{SO_REUSEPORT} socket per worker for each TCP listener, all on
    the same port, and hands worker I{i} socket I{i}; a Unix socket listener has one socket
    for all the workers.
    """

    def _start(
        self, listen: Sequence[str], workers: int, perWorker: bool = True, tls: bool = False
    ) -> tuple[WorkerMaster, _SpawnRecordingReactor]:
        reactor = _SpawnRecordingReactor()
        config = ServiceConfig(workers=workers)
        if tls:
            config.listenTLS = list(listen)
        else:
            config.listen = list(listen)
        master = WorkerMaster(config, ["--deliver", "discard"], reactor=reactor)
        master.socketPerWorker = perWorker
        master.startService()
        self._stopLater(master, reactor)
        return master, reactor

    def _stopLater(self, master: WorkerMaster, reactor: _SpawnRecordingReactor) -> None:
        def stop() -> Deferred[None]:
            stopped = master.stopService()
            # The ports close in the next turn of the reactor, which is the clock here.
            reactor.clock.advance(0)
            return stopped

        self.addCleanup(stop)

    def _unixListen(self) -> tuple[str, str]:
        # A path short enough for a Unix socket address (108 bytes), relative to the
        # directory trial runs in.
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.relpath(os.path.join(directory, "s"))
        return f"unix:{path}", path

    def test_socketPerWorkerForTCP(self) -> None:
        """
        With three workers a C{tcp:0} listener gets three listening sockets, all with
        C{SO_REUSEADDR} and C{SO_REUSEPORT} and bound to the one port the kernel picked,
        with the backlog the service asks for; a C{unix:} listener gets one.
        """
        if not canSpreadConnections():
            raise SkipTest(NO_REUSEPORT)
        unix, path = self._unixListen()
        log = LogCapture(self)
        master, _ = self._start([f"tcp:0:interface={LOCALHOST}", unix], 3)
        # The Unix socket is named by its path in the log.
        self.assertIn(f"SMTP server listening on {path} with 3 workers", log.messages())
        (tcpPorts, tcpSecure), (unixPorts, unixSecure) = master.ports
        self.assertEqual((tcpSecure, unixSecure), (False, False))

        self.assertEqual(len(tcpPorts), 3)
        self.assertEqual(len({descriptor(port) for port in tcpPorts}), 3)
        addresses = set()
        for port in tcpPorts:
            with viewOf(port) as sock:
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1)
                addresses.add(sock.getsockname())
            self.assertEqual(cast(Any, port).backlog, LISTEN_BACKLOG)
        [(host, portNumber)] = addresses
        self.assertEqual(host, LOCALHOST)
        self.assertNotEqual(portNumber, 0)

        [unixPort] = unixPorts
        with viewOf(unixPort) as sock:
            self.assertEqual(sock.family, socket.AF_UNIX)
            self.assertEqual(sock.getsockname(), path)

    def test_workerGetsItsOwnSocket(self) -> None:
        """
        Worker I{i} is handed socket I{i} of the TCP listener, and the Unix socket
        listener's one socket; a worker started again after its predecessor died is handed
        the same socket.
        """
        if not canSpreadConnections():
            raise SkipTest(NO_REUSEPORT)
        unix, _ = self._unixListen()
        master, reactor = self._start([f"tcp:0:interface={LOCALHOST}", unix], 3)
        (tcpPorts, _), ([unixPort], _) = master.ports
        self.assertEqual(len(reactor.spawned), 3)
        for number, spawned in enumerate(reactor.spawned):
            self.assertEqual(inherited(spawned), ["3:plain", "4:plain"])
            self.assertEqual(spawned.childFDs[3], descriptor(tcpPorts[number]))
            self.assertEqual(spawned.childFDs[4], descriptor(unixPort))

        dead = reactor.spawned[1]
        dead.protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        reactor.clock.advance(1.0)
        self.assertEqual(len(reactor.spawned), 4)
        self.assertEqual(reactor.spawned[3].childFDs, dead.childFDs)

    def test_pipeToEachWorker(self) -> None:
        """
        Each worker is handed, after its sockets, the read end of a pipe from the master,
        which it is told of in its environment: the pipe ends when the master does.  Then
        the write end of one to the master, on which it says it handles SIGHUP.
        """
        unix, _ = self._unixListen()
        _, reactor = self._start([f"tcp:0:interface={LOCALHOST}", unix], 2)
        self.assertEqual(len(reactor.spawned), 2)
        for spawned in reactor.spawned:
            self.assertEqual(spawned.childFDs[5], "w")
            self.assertEqual(spawned.env[MASTER_PIPE], "5")
            self.assertEqual(spawned.childFDs[6], "r")
            self.assertEqual(spawned.env[READY_PIPE], "6")
            self.assertEqual(max(spawned.childFDs), 6)

    def test_sharedSocketWithoutReusePort(self) -> None:
        """
        Where the kernel would not spread connections over C{SO_REUSEPORT} sockets, a TCP
        listener has one socket, handed to every worker.
        """
        master, reactor = self._start([f"tcp:0:interface={LOCALHOST}"], 3, perWorker=False)
        [([port], _)] = master.ports
        if hasattr(socket, "SO_REUSEPORT"):
            with viewOf(port) as sock:
                self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 0)
        self.assertEqual(
            [spawned.childFDs[3] for spawned in reactor.spawned],
            [descriptor(port)] * 3,
        )

    async def test_workersAcceptAfterTheMasterClosed(self) -> None:
        """
        The master's closing of its copies of the listening sockets leaves the workers'
        copies able to accept (a socket shut down rather than closed would fail every
        worker's accept() with EINVAL while it still serves): for one socket per worker,
        one socket for all, and a Unix socket.
        """
        unix, _ = self._unixListen()
        for listen, perWorker in (
            (f"tcp:0:interface={LOCALHOST}", True),
            (f"tcp:0:interface={LOCALHOST}", False),
            (unix, False),
        ):
            master, reactor = self._start([listen], 2, perWorker=perWorker)
            # A worker's copy of the socket handed to the first worker.
            worker = socket.socket(fileno=os.dup(reactor.spawned[0].childFDs[3]))
            self.addCleanup(worker.close)
            master.stopService()
            # The ports close in the next turn of their reactor: the clock, or (for those
            # an endpoint made) the real one.
            reactor.clock.advance(0)
            await deferLater(theReactor(), 0, lambda: None)
            ports = [port for ports, _ in master.ports for port in ports]
            self.assertEqual([cast(Any, p).connected for p in ports], [False] * len(ports))
            # Still listening: nothing to accept yet, rather than EINVAL.
            worker.setblocking(False)
            self.assertRaises(BlockingIOError, worker.accept)
            if listen == unix:
                # (The master's port removed the socket's file: only the worker's open
                # socket is left, which new clients cannot find.)
                continue
            worker.settimeout(5)
            with socket.create_connection(worker.getsockname(), timeout=5):
                accepted, _ = worker.accept()
                accepted.close()

    def test_tlsListenerToo(self) -> None:
        """
        A C{--listen-tls} TCP listener gets one socket per worker as well, handed over as
        a TLS one.
        """
        if not canSpreadConnections():
            raise SkipTest(NO_REUSEPORT)
        master, reactor = self._start([f"tcp:0:interface={LOCALHOST}"], 2, tls=True)
        [(ports, secure)] = master.ports
        self.assertEqual((len(ports), secure), (2, True))
        self.assertEqual([inherited(spawned) for spawned in reactor.spawned], [["3:tls"]] * 2)

    def test_boundBeforePrivilegesDropped(self) -> None:
        """
        Under twistd the sockets are bound in C{privilegedStartService} (as root, before
        C{--uid} takes effect) and the workers start only in C{startService}, on the same
        sockets.
        """
        reactor = _SpawnRecordingReactor()
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        master = WorkerMaster(config, [], reactor=reactor)
        master.privilegedStartService()
        [(bound, _)] = master.ports
        self.assertEqual(len(bound), 2 if master.socketPerWorker else 1)
        self.assertEqual(reactor.spawned, [])
        master.startService()
        self._stopLater(master, reactor)
        # The same port objects, not a second set bound again.
        [(served, _)] = master.ports
        self.assertEqual(len(served), len(bound))
        self.assertTrue(all(a is b for a, b in zip(served, bound, strict=True)))
        self.assertEqual([inherited(s) for s in reactor.spawned], [["3:plain"]] * 2)


class _FailingSpawnReactor(_SpawnRecordingReactor):
    """
    A reactor that cannot start processes until told it can.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def spawnProcess(
        self, protocol: Any, executable: str, args: Sequence[str], **kwargs: Any
    ) -> _Spawned:
        if self.failing:
            raise PermissionError(13, "Permission denied", executable)
        return super().spawnProcess(protocol, executable, args, **kwargs)


class WorkerStartTests(TestCase):
    """
    Starting the workers: what they are handed, and what happens when they cannot start.
    """

    def _master(
        self,
        reactor: _SpawnRecordingReactor,
        development: tuple[bytes, bytes] | None = None,
        config: ServiceConfig | None = None,
    ) -> WorkerMaster:
        if config is None:
            config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        master = WorkerMaster(config, ["--deliver", "discard"], reactor, development)

        self.addCleanup(lambda: self._stop(master, reactor) if master.running else None)
        return master

    def _stop(self, master: WorkerMaster, reactor: _SpawnRecordingReactor) -> None:
        stopped = master.stopService()
        # The ports close in the next turn of the reactor, which is the clock here.
        reactor.clock.advance(0)
        self.successResultOf(stopped)

    def test_developmentCertificateInMemory(self) -> None:
        """
        Where the system has files in memory (Linux), the development certificate goes
        into one, nothing goes into the temporary directory, and each worker reads it as
        C{/dev/fd/N}, N a copy of it handed after the master's pipes, as often as it likes.
        It is made only in startService: under twistd that runs after --uid has taken
        effect, so the file belongs to the user the workers run as.  It is closed when the
        service stops.
        """
        if inMemory(b"probe") is None:
            raise SkipTest("no files in memory that /dev/fd/N opens afresh (Linux only)")
        directory = workspace(self)
        self.patch(tempfile, "tempdir", directory)
        reactor = _SpawnRecordingReactor()
        master = self._master(reactor, (b"KEY\n", b"CERT\n"))
        master.privilegedStartService()
        self.assertIsNone(master.certificateFile)
        master.startService()
        self.assertEqual(os.listdir(directory), [])
        self.assertEqual(len(reactor.spawned), 2)
        for spawned in reactor.spawned:
            self.assertEqual(spawned.args[spawned.args.index("--cert") + 1], "/dev/fd/6")
            self.assertEqual(spawned.childFDs[4], "w")
            self.assertEqual(spawned.childFDs[5], "r")
            self.assertEqual(spawned.childFDs[6], master.certificateFile)
        for _ in range(2):
            self.assertEqual(Path(f"/dev/fd/{master.certificateFile}").read_bytes(), b"CERT\nKEY\n")
        certificateFile = master.certificateFile
        assert certificateFile is not None
        self._stop(master, reactor)
        self.assertIsNone(master.certificateFile)
        self.assertRaises(OSError, os.fstat, certificateFile)

    def test_developmentCertificateWrittenAtStart(self) -> None:
        """
        Elsewhere the development certificate goes into a file of this user's, private to
        it, only in startService.  Each worker is told its path; it is removed when the
        service stops.
        """
        self.patch(_service, "inMemory", lambda contents: None)
        directory = workspace(self)
        self.patch(tempfile, "tempdir", directory)
        reactor = _SpawnRecordingReactor()
        master = self._master(reactor, (b"KEY\n", b"CERT\n"))
        master.privilegedStartService()
        self.assertEqual(os.listdir(directory), [])
        master.startService()
        [name] = os.listdir(directory)
        path = os.path.join(directory, name)
        self.assertEqual(Path(path).read_bytes(), b"CERT\nKEY\n")
        status = os.stat(path)
        self.assertEqual((status.st_uid, status.st_mode & 0o777), (os.getuid(), 0o600))
        self.assertEqual(len(reactor.spawned), 2)
        for spawned in reactor.spawned:
            self.assertEqual(spawned.args[spawned.args.index("--cert") + 1], path)
            self.assertEqual(max(spawned.childFDs), 5)
        self._stop(master, reactor)
        self.assertEqual(os.listdir(directory), [])

    def test_badEndpoint(self) -> None:
        """
        An endpoint string Twisted cannot read stops the master with one clear line, as
        it stops a single process.
        """
        config = ServiceConfig(listen=["bogus:1"], workers=2)
        master = WorkerMaster(config, [], _SpawnRecordingReactor())
        with self.assertRaises(ConfigurationError) as caught:
            master.privilegedStartService()
        self.assertIn("--listen bogus:1: ", str(caught.exception))

    def test_listeningLine(self) -> None:
        """
        The master's line for each listener names LMTP and implicit TLS as a single
        process's does.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        reactor = _SpawnRecordingReactor()
        config = ServiceConfig(
            serverOptions={"lmtp": True},
            listen=[f"tcp:0:interface={LOCALHOST}"],
            listenTLS=[f"tcp:0:interface={LOCALHOST}"],
            workers=2,
        )
        master = self._master(reactor, config=config)
        master.startService()
        lines = [formatEvent(e) for e in events if "with 2 workers" in formatEvent(e)]
        self.assertEqual(
            [line.partition(" server listening on ")[0] for line in lines],
            ["LMTP", "LMTP (implicit TLS)"],
        )

    def test_killedOnlyOnceCloseHasGivenUp(self) -> None:
        """
        A worker still running after SIGTERM is killed, but only a second after its
        server's close() has given up waiting for handlers (closeTimeout, ABORT_DELAY and
        HANDLER_GRACE): never while that close() may still end it cleanly.
        """
        reactor = _SpawnRecordingReactor()
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        config.serverOptions["closeTimeout"] = 2.0
        master = self._master(reactor, config=config)
        master.startService()
        for worker in reactor.spawned:
            worker.endsOnTerm = False
        stopped = master.stopService()
        reactor.clock.advance(2.0 + ABORT_DELAY + HANDLER_GRACE)
        self.assertEqual([w.signals for w in reactor.spawned], [[signal.SIGTERM]] * 2)
        reactor.clock.advance(1.0)
        self.assertEqual(
            [w.signals for w in reactor.spawned], [[signal.SIGTERM, signal.SIGKILL]] * 2
        )
        for worker in reactor.spawned:
            worker.protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGKILL)))
        reactor.clock.advance(0)
        self.successResultOf(stopped)

    def test_stopsListeningAtOnce(self) -> None:
        """
        On stop the master closes its copies of the listening sockets at once, not once
        the workers have ended, so that new connections are refused meanwhile.
        """
        reactor = _SpawnRecordingReactor()
        master = self._master(reactor)
        master.startService()
        for worker in reactor.spawned:
            worker.endsOnTerm = False
        stopped = master.stopService()
        reactor.clock.advance(0)
        ports = [port for ports, _ in master.ports for port in ports]
        self.assertEqual([cast(Any, port).connected for port in ports], [False] * len(ports))
        self.assertNoResult(stopped)
        for worker in reactor.spawned:
            worker.protocol.processEnded(Failure(ProcessTerminated(signal=signal.SIGTERM)))
        self.successResultOf(stopped)

    def test_cannotStart(self) -> None:
        """
        Workers that cannot be started stop the service with one clear line.
        """
        master = self._master(_FailingSpawnReactor())
        with self.assertRaises(ConfigurationError) as caught:
            master.startService()
        self.assertIn("cannot start worker 0: [Errno 13] Permission denied", str(caught.exception))

    def test_cannotRestart(self) -> None:
        """
        A worker that ended and cannot be started again is logged, and tried again later.
        """
        reactor = _FailingSpawnReactor()
        reactor.failing = False
        master = self._master(reactor)
        master.startService()
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        reactor.failing = True
        # It ran for a minute first: this is not a worker that could not start.
        reactor.clock.advance(60.0)
        reactor.spawned[0].protocol.processEnded(Failure(ProcessTerminated(1)))
        reactor.clock.advance(1.0)
        critical = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1, critical)
        self.assertIn("Cannot start worker 0: [Errno 13] Permission denied", critical[0])
        reactor.failing = False
        reactor.clock.advance(5.0)
        self.assertEqual(len(reactor.spawned), 3)


def handedOver(spawned: _Spawned) -> dict[str, Any]:
    """
    The certificates a worker was handed with C{--inherit-certificates /dev/fd/N}.
    """
    path = spawned.args[spawned.args.index("--inherit-certificates") + 1]
    fd = int(path.removeprefix("/dev/fd/"))
    return certificatesFromBytes(Path(f"/dev/fd/{spawned.childFDs[fd]}").read_bytes(), path)


def listening(port: IListeningPort) -> bool:
    """
    Whether a socket listens (and the kernel gives it connections).
    """
    with viewOf(port) as sock:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


class WorkerRestartTests(TestCase):
    """
    A worker started again serves the certificates the others serve; one that cannot
    start is tried again less and less often, and its own socket does not wait for it.
    """

    def _master(
        self, config: ServiceConfig, certificates: dict[str, Any] | None = None
    ) -> tuple[WorkerMaster, _SpawnRecordingReactor]:
        reactor = _SpawnRecordingReactor()
        master = WorkerMaster(config, ["--deliver", "discard"], reactor, certificates=certificates)
        master.startService()

        def stop() -> None:
            stopped = master.stopService()
            reactor.clock.advance(0)
            self.successResultOf(stopped)

        self.addCleanup(stop)
        return master, reactor

    def test_certificatesLoadedLastHandedOver(self) -> None:
        """
        Each worker is handed the certificates the master loaded, and after a SIGHUP
        whose files load, the new ones: a worker started after the files have become
        unusable (and SIGHUP kept the certificates in use) serves those in use, instead
        of failing on the files.
        """
        if inMemory(b"probe") is None:
            raise SkipTest("no files in memory that /dev/fd/N opens afresh (Linux only)")
        directory = workspace(self)
        first, renewed = issue("first.example.test"), issue("renewed.example.test")
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        config.tls.cert, config.tls.key = str(cert), str(key)
        master, reactor = self._master(config, {"cert": first.cert, "key": first.key})
        self.assertEqual(
            [handedOver(w) for w in reactor.spawned],
            [{"cert": first.cert, "key": first.key}] * 2,
        )
        for spawned in reactor.spawned:
            sayReady(spawned)

        cert.write_bytes(renewed.cert)
        key.write_bytes(renewed.key)
        master._hangup()
        # Not one's key: the workers keep what they have, and so do new ones.
        key.write_bytes(first.key)
        master._hangup()
        self.assertEqual([w.signals for w in reactor.spawned], [[signal.SIGHUP] * 2] * 2)
        reactor.spawned[0].protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        reactor.clock.advance(1.0)
        self.assertEqual(len(reactor.spawned), 3)
        self.assertEqual(handedOver(reactor.spawned[2]), {"cert": renewed.cert, "key": renewed.key})

    def test_hangupWaitsUntilTheWorkerHandlesIt(self) -> None:
        """
        A worker still starting has no handler for SIGHUP, and the default one would kill
        it (QA: a certificate renewal's SIGHUP while a worker killed with -9 was being
        started again): the master keeps the signal from it until the worker says, on its
        pipe, that it handles SIGHUP, then sends one, however many came meanwhile, so
        that it reads the files the others read.  SIGTERM is not held back.
        """
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        master, reactor = self._master(config)
        first, second = reactor.spawned
        sayReady(first)
        master._hangup()
        master._hangup()
        self.assertEqual((first.signals, second.signals), ([signal.SIGHUP] * 2, []))
        sayReady(second)
        self.assertEqual(second.signals, [signal.SIGHUP])
        # Saying so again changes nothing; a later SIGHUP goes at once.
        sayReady(second)
        master._hangup()
        self.assertEqual(second.signals, [signal.SIGHUP] * 2)
        # One started again is held back as well, and one that ends before it is ready
        # is not signalled.
        first.protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        reactor.clock.advance(1.0)
        third = reactor.spawned[2]
        master._hangup()
        self.assertEqual(third.signals, [])
        third.protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        third.protocol.childDataReceived(READY_FD, b"\n")
        self.assertEqual(third.signals, [])
        reactor.clock.advance(1.0)
        fourth = reactor.spawned[3]
        master._signal(signal.SIGTERM)
        self.assertEqual(fourth.signals, [signal.SIGTERM])

    def test_certificatesInTemporaryFile(self) -> None:
        """
        Without files in memory the certificates are handed over in a file private to
        this user, replaced whole when a SIGHUP loads new ones, and removed at stop.
        """
        self.patch(_service, "inMemory", lambda contents, name="": None)
        directory = workspace(self)
        self.patch(tempfile, "tempdir", directory)
        first, renewed = issue("first.example.test"), issue("renewed.example.test")
        Path(directory, "cert.pem").write_bytes(renewed.cert + renewed.key)
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        config.tls.cert = str(Path(directory, "cert.pem"))
        reactor = _SpawnRecordingReactor()
        master = WorkerMaster(config, [], reactor, certificates={"cert": first.cert})
        master.startService()
        [name] = [n for n in os.listdir(directory) if n.startswith("smtpsvc-certificates-")]
        path = os.path.join(directory, name)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        for spawned in reactor.spawned:
            self.assertEqual(spawned.args[spawned.args.index("--inherit-certificates") + 1], path)
        master._hangup()
        self.assertEqual(
            certificatesFromBytes(Path(path).read_bytes(), path),
            {"cert": renewed.cert + renewed.key, "key": renewed.cert + renewed.key},
        )
        stopped = master.stopService()
        reactor.clock.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(sorted(os.listdir(directory)), ["cert.pem"])

    def test_couldNotStart(self) -> None:
        """
        A worker that ends on its own soon after its start could not start: one critical
        line says why (its last line on standard error) and its own socket stops
        listening, so that the kernel gives its share of new connections to the other
        workers rather than to a socket nobody accepts on; it is tried again after 2 s,
        then 4, 8 ... up to a minute, its socket listening again for each try, and once
        one has run for a while, the next is started after a second, as usual.
        """
        if not canSpreadConnections():
            raise SkipTest(NO_REUSEPORT)
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        # Under twist a worker's standard error is the master's, passed on as it comes.
        passedOn: list[tuple[int, bytes]] = []
        self.patch(_service, "_writeAll", lambda fd, data: passedOn.append((fd, data)))
        config = ServiceConfig(listen=[f"tcp:0:interface={LOCALHOST}"], workers=2)
        master, reactor = self._master(config)
        [(ports, _)] = master.ports

        def fails() -> None:
            worker = reactor.spawned[-1]
            self.assertTrue(listening(ports[0]))
            worker.protocol.childDataReceived(2, b"twist smtpsvc: --key: k.pem: no good\n")
            worker.protocol.processEnded(Failure(ProcessTerminated(1)))
            self.assertFalse(listening(ports[0]))
            self.assertTrue(listening(ports[1]))

        reactor.clock.advance(60.0)
        reactor.spawned[0].protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        reactor.clock.advance(1.0)
        self.assertEqual(len(reactor.spawned), 3)
        fails()
        [critical] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.critical]
        self.assertIn(
            "Worker 0 could not start: twist smtpsvc: --key: k.pem: no good (A process has "
            "ended with a probable error condition: process ended with exit code 1.)",
            critical,
        )
        self.assertIn("trying again in 2 s", critical)
        self.assertEqual(passedOn, [(2, b"twist smtpsvc: --key: k.pem: no good\n")])
        for delay in [2, 4, 8, 16, 32, 60, 60]:
            reactor.clock.advance(delay - 0.5)
            spawned = len(reactor.spawned)
            reactor.clock.advance(0.5)
            self.assertEqual(len(reactor.spawned), spawned + 1, delay)
            fails()
        self.assertEqual(
            len([e for e in events if e["log_level"] == LogLevel.critical]), 1, "one critical"
        )
        reactor.clock.advance(60.0)
        self.assertTrue(listening(ports[0]))
        reactor.clock.advance(10.0)
        self.assertIn("Worker 0 started again and serves", [formatEvent(e) for e in events][-1])
        spawned = len(reactor.spawned)
        reactor.spawned[-1].protocol.processEnded(Failure(ProcessTerminated(1)))
        reactor.clock.advance(1.0)
        self.assertEqual(len(reactor.spawned), spawned + 1)
        self.assertTrue(listening(ports[0]))


class WorkerPipesTests(SynchronousTestCase):
    """
    A worker takes the two pipes its master's environment names before anything else is
    built.
    """

    def test_claimed(self) -> None:
        """
        Both variables are taken out of the environment and both descriptors out of what
        the processes the worker starts inherit: they are not workers, and must not hold
        the pipes open.
        """
        fds = os.pipe() + os.pipe()
        for fd in fds:
            self.addCleanup(os.close, fd)
            os.set_inheritable(fd, True)
        self.patch(os, "environ", {**os.environ, MASTER_PIPE: str(fds[0]), READY_PIPE: str(fds[3])})
        self.assertEqual(WorkerPipes.claim(), WorkerPipes(fds[0], fds[3]))
        self.assertNotIn(MASTER_PIPE, os.environ)
        self.assertNotIn(READY_PIPE, os.environ)
        self.assertEqual([os.get_inheritable(fd) for fd in fds], [False, True, True, False])

    def test_noMaster(self) -> None:
        """
        Without the variables, or with ones that name no open descriptor, there are no
        pipes; the variables are gone either way.
        """
        for value in (None, "", "x", "987654"):
            environ = {k: v for k, v in os.environ.items() if k not in (MASTER_PIPE, READY_PIPE)}
            if value is not None:
                environ[MASTER_PIPE] = environ[READY_PIPE] = value
            self.patch(os, "environ", environ)
            self.assertEqual(WorkerPipes.claim(), WorkerPipes(None, None), value)
            self.assertNotIn(MASTER_PIPE, os.environ)
            self.assertNotIn(READY_PIPE, os.environ)

    def test_claimedBeforeHandlersAreBuilt(self) -> None:
        """
        makeService takes them before it builds the handlers: a C{python:} delivery's
        factory that starts a process sees neither variable, and the process inherits
        neither pipe (QA: both were there until the service started).
        """
        fds = os.pipe() + os.pipe()
        for fd in fds:
            self.addCleanup(os.close, fd)
            os.set_inheritable(fd, True)
        self.patch(os, "environ", {**os.environ, MASTER_PIPE: str(fds[0]), READY_PIPE: str(fds[3])})
        seen.clear()
        listener = socket.socket()
        self.addCleanup(listener.close)
        options = tap.Options()
        options.parseOptions(
            [
                "--inherit",
                f"{listener.fileno()}:plain",
                "--deliver",
                "python:tests.test_workermaster:environmentSeeingHandler",
                "--deliver",
                "discard",
            ]
        )
        service = tap.makeService(options)
        self.assertEqual(seen, [(False, False, False, False)])
        assert isinstance(service, SMTPService)
        self.assertEqual(service._pipes, WorkerPipes(fds[0], fds[3]))


#: What environmentSeeingHandler saw when it was built.
seen: list[tuple[bool, bool, bool, bool]] = []


def environmentSeeingHandler() -> RecordingHandler:
    """
    A python: delivery factory that looks at what a process it started would get: the
    worker's variables, and whether the pipes in them would be inherited.
    """
    master, ready = (int(os.environ.get(v, "-1")) for v in (MASTER_PIPE, READY_PIPE))
    seen.append(
        (
            MASTER_PIPE in os.environ,
            READY_PIPE in os.environ,
            master >= 0 and os.get_inheritable(master),
            ready >= 0 and os.get_inheritable(ready),
        )
    )
    return RecordingHandler()


class MasterPipeTests(TestCase):
    """
    A worker watches the pipe from its master, and hears when the master is gone: the
    pipe's end.
    """

    def _pipe(self) -> tuple[int, list[int]]:
        # A pipe as the master hands it; the other end is closed at the end of the test
        # unless the test closed it (popped it) first.
        read, write = os.pipe()
        writeEnd = [write]

        def closeWriteEnd() -> None:
            for fd in writeEnd:
                os.close(fd)

        self.addCleanup(closeWriteEnd)
        return read, writeEnd

    async def test_goneAtTheEnd(self) -> None:
        """
        When the last holder of the pipe's other end closes it (the master dies), the
        worker is told, with the master's process ID, and its end is closed.
        """
        read, writeEnd = self._pipe()
        told: Deferred[int] = Deferred()
        pipe = MasterPipe.watch(theReactor(), read, told.callback)
        assert pipe is not None
        self.addCleanup(pipe.stop)
        os.write(writeEnd[0], b"ignored")
        os.close(writeEnd.pop())
        self.assertEqual(await told, os.getppid())
        self.assertEqual(pipe.fileno(), -1)

    def test_readDescriptor(self) -> None:
        """
        The pipe is a reader the reactor can watch.
        """
        self.assertTrue(verifyClass(IReadDescriptor, MasterPipe))

    def test_stopped(self) -> None:
        """
        Once stopped (the worker is closing anyway), the pipe is closed and no longer
        watched.
        """
        read, _ = self._pipe()
        reactor = theReactor()
        pipe = MasterPipe.watch(reactor, read, lambda master: self.fail("told"))
        assert pipe is not None
        self.assertIn(pipe, reactor.getReaders())
        pipe.stop()
        self.assertRaises(OSError, os.fstat, read)
        self.assertNotIn(pipe, reactor.getReaders())
        pipe.stop()

    def test_noMaster(self) -> None:
        """
        Without a pipe, or with one that is not open, there is nothing to watch.
        """
        for fd in (None, 987654):
            self.assertIsNone(MasterPipe.watch(theReactor(), fd, lambda master: None))


class TellReadyTests(SynchronousTestCase):
    """
    A worker says on its pipe to the master that it handles SIGHUP.
    """

    def test_told(self) -> None:
        """
        One line, then the worker's end is closed.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        tellReady(write)
        self.assertEqual(os.read(read, 10), b"\n")
        self.assertEqual(os.read(read, 10), b"")
        self.assertRaises(OSError, os.fstat, write)

    def test_noMaster(self) -> None:
        """
        Without a pipe, or with one that is not open, nothing raises.
        """
        tellReady(None)
        tellReady(987654)


class ListenPerWorkerTests(SynchronousTestCase):
    """
    L{listenPerWorker} binds a group of C{SO_REUSEPORT} sockets, and refuses a port that
    is already taken, by such a group too.
    """

    def setUp(self) -> None:
        if not canSpreadConnections():
            raise SkipTest(NO_REUSEPORT)
        self.reactor = _SpawnRecordingReactor()

    def _close(self, ports: Sequence[IListeningPort]) -> None:
        for port in ports:
            port.stopListening()
        self.reactor.clock.advance(0)

    def test_portTakenByAnotherGroup(self) -> None:
        """
        A second group on the port of a first is refused as "Address already in use"
        rather than sharing the connections with it.
        """
        first = listenPerWorker(self.reactor, TCPListening(LOCALHOST, 0, 50), 2)
        self.addCleanup(self._close, first)
        with viewOf(first[0]) as sock:
            portNumber = sock.getsockname()[1]
        error = self.assertRaises(
            CannotListenError,
            listenPerWorker,
            self.reactor,
            TCPListening(LOCALHOST, portNumber, 50),
            2,
        )
        self.assertIn("Address already in use", str(error))

    def test_portTakenByPlainSocket(self) -> None:
        """
        A port a socket without C{SO_REUSEPORT} listens on is refused.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.bind((LOCALHOST, 0))
        sock.listen(5)
        where = TCPListening(LOCALHOST, sock.getsockname()[1], 50)
        self.assertRaises(CannotListenError, listenPerWorker, self.reactor, where, 2)

    def test_ipv6(self) -> None:
        """
        An IPv6 interface makes IPv6 sockets.
        """
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback address") from None
        ports = listenPerWorker(self.reactor, TCPListening("::1", 0, 50), 2)
        self.addCleanup(self._close, ports)
        addresses = set()
        for port in ports:
            with viewOf(port) as sock:
                self.assertEqual(sock.family, socket.AF_INET6)
                addresses.add(sock.getsockname()[:2])
        [(host, portNumber)] = addresses
        self.assertEqual(host, "::1")
        self.assertNotEqual(portNumber, 0)


class TCPListeningTests(SynchronousTestCase):
    """
    L{tcpListening} reads the interface, port and backlog of a TCP endpoint string the
    way Twisted parses it.
    """

    def test_tcp(self) -> None:
        """
        C{tcp:} strings, positional or named.
        """
        self.assertEqual(
            tcpListening("tcp:25:interface=127.0.0.1:backlog=7"),
            TCPListening("127.0.0.1", 25, 7),
        )
        self.assertEqual(tcpListening("tcp:port=2525"), TCPListening("", 2525, 50))

    def test_tcp6(self) -> None:
        """
        C{tcp6:} strings, with an escaped IPv6 interface or Twisted's default C{::}.
        """
        self.assertEqual(
            tcpListening("tcp6:0:interface=\\:\\:1:backlog=511"), TCPListening("::1", 0, 511)
        )
        self.assertEqual(tcpListening("tcp6:587"), TCPListening("::", 587, 50))

    def test_otherKinds(self) -> None:
        """
        Other kinds of endpoint have none.
        """
        self.assertIsNone(tcpListening("unix:/run/smtpsvc.sock"))


class WorkerOptionsTests(SynchronousTestCase):
    """
    L{workerTwistOptions}: what C{twist} options the workers get, and whether the master
    relays their log.
    """

    def test_twist(self) -> None:
        """
        Under twist the workers get twist's own options and log as it does.
        """
        argv = ["/venv/bin/twist", "--log-format", "json", "smtpsvc", "--workers", "2"]
        self.assertEqual(workerTwistOptions(argv, object()), (["--log-format", "json"], False))

    def test_twistd(self) -> None:
        """
        Under twistd, whose options twist does not take, the workers write JSON events to
        the master and use the master's reactor.
        """

        class SelectLike:
            pass

        SelectLike.__module__ = "twisted.internet.selectreactor"
        argv = ["/venv/bin/twistd", "-n", "--uid", "1", "-l", "x.log", "smtpsvc", "--workers", "2"]
        self.assertEqual(
            workerTwistOptions(argv, SelectLike()),
            (["--log-format", "json", "--log-file", "-", "--reactor", "select"], True),
        )

    def test_unknownReactor(self) -> None:
        """
        A reactor twist cannot name is left to twist's default.
        """
        argv = ["twistd", "smtpsvc"]
        self.assertEqual(
            workerTwistOptions(argv, object()), (["--log-format", "json", "--log-file", "-"], True)
        )


class _EndedRecorder:
    def __init__(self) -> None:
        self.ended: list[int] = []

    def _workerEnded(self, worker: _Worker, reason: Failure) -> None:
        self.ended.append(worker.number)


class WorkerLogRelayTests(SynchronousTestCase):
    """
    A relaying master logs its workers' JSON events as its own, and their other output
    as errors.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.master = _EndedRecorder()
        self.worker = _Worker(cast(Any, self.master), 3, relay=True)

    def _event(self, text: str) -> bytes:
        event = {
            "log_format": "worker says {what}",
            "what": text,
            "log_level": LogLevel.warn,
            "log_namespace": "smtpsvc",
            "log_time": 1795000000.0,
        }
        return b"\x1e" + eventAsJSON(event).encode("utf-8") + b"\n"

    def test_eventsRelayed(self) -> None:
        """
        Each JSON event is published with its level, namespace and text, marked with the
        worker's number, however the output was cut into chunks.
        """
        data = self._event("one") + self._event("two")
        for offset in range(0, len(data), 7):
            self.worker.childDataReceived(1, data[offset : offset + 7])
        relayed = [e for e in self.events if e.get("worker") == 3]
        self.assertEqual([formatEvent(e) for e in relayed], ["worker says one", "worker says two"])
        self.assertEqual({e["log_level"] for e in relayed}, {LogLevel.warn})
        self.assertEqual({e["log_namespace"] for e in relayed}, {"smtpsvc"})

    def test_otherOutputIsAnError(self) -> None:
        """
        Standard error, and standard output that is not a log event, are logged as
        errors naming the worker; a last line without its newline is not lost.
        """
        self.worker.childDataReceived(2, b"Traceback (most recent call last):\n")
        self.worker.childDataReceived(1, b"not json\n")
        self.worker.childDataReceived(2, b"unfinished")
        self.worker.processEnded(Failure(ProcessTerminated(1)))
        errors = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(
            errors,
            [
                "Worker 3: Traceback (most recent call last):",
                "Worker 3: not json",
                "Worker 3: unfinished",
            ],
        )
        self.assertEqual(self.master.ended, [3])

    def test_longLineCut(self) -> None:
        """
        Output with no line end is not held without bound.
        """
        self.worker.childDataReceived(2, b"x" * (_MAX_RELAYED_LINE + 10))
        self.assertEqual(len(self.worker._pending[2]), 0)
        [logged] = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]
        self.assertEqual(logged, f"Worker 3: {'x' * 4096}... ({_MAX_RELAYED_LINE + 10} characters)")
