"""
The running service behind ``twist smtpsvc``: the server built from a L{ServiceConfig},
its listeners, certificate reloading on SIGHUP, graceful shutdown, and ``--workers``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._config import ConfigurationError, ServiceConfig, withFlags
from ._server import HOOKS, SMTPServer
from .cred import PortalAuthHandler

_log = Logger(namespace="smtpsvc.service")


def _bytesUsers(checker: Any) -> Any:
    # cred compares user names and passwords as bytes, but the checker that strcred's
    # "memory:" makes stores the command line's str: make it bytes like the others.
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (
                v.encode("utf-8") if isinstance(v, str) else v
            )
            for k, v in checker.users.items()
        }
    return checker


def checkersFor(descriptions: Sequence[str]) -> list[Any]:
    """
    The cred checkers for C{--auth} descriptions (C{memory:alice:secret},
    C{scrypt:/etc/smtpsvc/passwd} ...).
    """
    checkers = []
    for description in descriptions:
        try:
            checkers.append(_bytesUsers(strcred.makeChecker(description)))
        except (strcred.StrcredException, OSError, ValueError) as e:
            raise ConfigurationError(f"--auth {description}: {e}") from e
    return checkers


def loadHandler(spec: str) -> object:
    """
    The handler named by C{package.module:name}: the object itself if it provides one of
    smtpsvc's interfaces, or what calling it with no arguments returns.
    """
    module, colon, name = spec.rpartition(":")
    if not colon or not module or not name:
        raise ConfigurationError(f"--deliver python:{spec}: expected python:MODULE:NAME")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ConfigurationError(f"--deliver python:{spec}: cannot import {module}: {e}") from e
    except AttributeError as e:
        raise ConfigurationError(f"--deliver python:{spec}: {module} has no {name}") from e

    def provides(candidate: object) -> bool:
        return any(iface.providedBy(candidate) for iface in HOOKS.values())

    if not provides(found) and callable(found):
        found = found()
    if not provides(found):
        raise ConfigurationError(
            f"--deliver python:{spec}: the object provides none of smtpsvc's interfaces"
        )
    return found


def buildServer(
    config: ServiceConfig, reactor: Any = None, checkers: Sequence[Any] = ()
) -> SMTPServer:
    """
    The server a service configuration describes.

    @param checkers: cred checkers already made (from C{--auth} on the command line);
        the file's C{auth} descriptions are added to them.
    """
    from .handlers.maildir import MaildirDelivery
    from .handlers.relay import RelayPolicy

    serverOptions = dict(config.serverOptions)
    serverOptions.update(config.tls.load())
    allCheckers = [_bytesUsers(c) for c in checkers] + checkersFor(config.auth)
    authentication: PortalAuthHandler | None = None
    if allCheckers:
        # AUTH is offered, and required unless --auth-optional, with the mechanisms
        # the credential sources can check (unless --auth-methods says otherwise).
        authentication = PortalAuthHandler.fromCheckers(allCheckers)
        serverOptions.setdefault("authMethods", authentication.mechanisms())
    else:
        # Without a credential source the service neither offers nor demands AUTH, so
        # that mail is accepted (the library's own default follows the reference).
        disabled = tuple(serverOptions.get("disabledCommands", ()))
        if "AUTH" not in (c.upper() for c in disabled):
            serverOptions["disabledCommands"] = (*disabled, "AUTH")
    relaying = any(target.startswith("smtp:") for target in config.deliver)
    authRequired = authentication is not None and not serverOptions.get("authOptional")
    if relaying and not config.domains and not authRequired:
        raise ConfigurationError(
            "--deliver smtp: forwards mail onwards: give --domain (the domains this server "
            "receives mail for) or require --auth, or it would be an open relay"
        )
    try:
        server = SMTPServer((), reactor=reactor, **serverOptions)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(withFlags(str(e))) from e
    if config.domains:
        try:
            server.addHandler(RelayPolicy(config.domains))
        except ValueError as e:
            raise ConfigurationError(f"--domain: {e}") from e
    if authentication is not None:
        server.addHandler(authentication)
    for target in config.deliver:
        kind, _, argument = target.partition(":")
        if kind == "maildir":
            handler: object = MaildirDelivery(
                argument, reactor=server.reactor, serverName=server.options.name
            )
        elif kind in ("smtp", "lmtp"):
            from .handlers.forward import ForwardDelivery

            handler = ForwardDelivery(
                argument,
                lmtp=kind == "lmtp",
                reactor=server.reactor,
                serverName=server.options.name,
            )
        elif kind == "python":
            handler = loadHandler(argument)
        else:
            continue
        server.addHandler(handler)
    if not server._handlersFor("onData") and "discard" not in config.deliver:
        # Mail would be answered 250 and dropped: say so, unless that is what was asked.
        raise ConfigurationError(
            "no --deliver target takes the messages (a python: handler without onData "
            "only filters); add maildir:DIR, smtp:..., lmtp:... or, to drop them, discard"
        )
    return server


def prepareDeliveries(server: SMTPServer) -> None:
    """
    Make what deliveries need on disk, as the user the service runs as.
    """
    from .handlers.maildir import MaildirDelivery

    for handler in server.handlers:
        if isinstance(handler, MaildirDelivery):
            try:
                handler.prepare()
            except OSError as e:
                raise ConfigurationError(f"--deliver maildir:{handler.path}: {e.strerror}") from e


class SMTPService(Service):
    """
    Listens on each endpoint; reloads certificates on SIGHUP; when stopped, closes the
    server gracefully (within C{closeTimeout}).
    """

    def __init__(self, server: SMTPServer, config: ServiceConfig) -> None:
        self.server = server
        self.config = config
        self.ports: list[IListeningPort] = []
        self._listening = False
        self._previousHangup: Any = None

    def privilegedStartService(self) -> None:
        # twistd calls this before dropping privileges, so port 25 works; twist calls
        # only startService.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # Under twistd --uid this runs after privileges are dropped.
        prepareDeliveries(self.server)
        self._listen()
        self._previousHangup = installHangup(self.reload)

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        listeners: list[tuple[str, bool | None]] = [(e, None) for e in self.config.listen]
        listeners += [(e, True) for e in self.config.listenTLS]
        if self.config.inherited:
            listeners = []
            for fd, inheritedSecure in self.config.inherited:
                self.ports.append(adopt(self.server, fd, inheritedSecure))
        for description, secure in listeners:
            try:
                endpoint = serverFromString(self.server.reactor, description)
            except (ValueError, TypeError) as e:
                raise ConfigurationError(f"--listen {description}: {e}") from e
            result = self.server.listen(endpoint, secure=secure)
            port = _now(result)
            if isinstance(port, Failure):
                raise ConfigurationError(
                    f"cannot listen on {description}: {port.getErrorMessage()}"
                )
            if port is None:
                result.addCallbacks(
                    self.ports.append, self._listenFailed, errbackArgs=(description,)
                )
            else:
                self.ports.append(port)

    def _listenFailed(self, failure: Failure, description: str) -> None:
        _log.critical(
            "Cannot listen on {endpoint}: {reason}; stopping",
            endpoint=description,
            reason=failure.getErrorMessage(),
        )
        self.server.reactor.stop()

    def reload(self) -> None:
        """
        Read the certificate files again and use them for new connections (SIGHUP).
        Connections already open keep theirs; a failure keeps the old certificates.
        """
        try:
            self.server.updateSecureContext(**self.config.tls.load())
        except (ConfigurationError, ValueError, TypeError) as e:
            message = e.message if isinstance(e, ConfigurationError) else str(e)
            _log.error("Certificates not reloaded: {reason}", reason=message)
            return
        _log.info("Certificates reloaded")

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        restoreHangup(self._previousHangup)
        return self.server.close()


def _now(d: Deferred[Any]) -> Any:
    # The result of a Deferred that has already fired (endpoints that listen at once),
    # else None.
    box: list[Any] = []

    def keep(result: Any) -> Any:
        box.append(result)
        return result

    d.addBoth(keep)
    if not box:
        return None
    result = box[0]
    if isinstance(result, Failure):
        d.addErrback(lambda f: None)
    return result


def adopt(server: SMTPServer, fd: int, secure: bool) -> IListeningPort:
    """
    Serve on a listening socket inherited from a --workers parent.
    """
    probe = socket.socket(fileno=os.dup(fd))
    family = probe.family
    probe.close()
    factory = server.factoryFor(secure)
    port: IListeningPort = server.reactor.adoptStreamPort(fd, family, factory)
    address = port.getHost()
    _log.info(
        "{kind} worker {pid} serving {host}:{port}",
        kind="LMTP" if server.options.lmtp else "SMTP",
        pid=os.getpid(),
        host=getattr(address, "host", ""),
        port=getattr(address, "port", ""),
    )
    return port


def installHangup(reload: Callable[[], None]) -> Any:
    """
    Call C{reload} in the reactor on SIGHUP; return the previous handler.
    """
    from twisted.internet import reactor as globalReactor

    def hangup(signum: int, frame: Any) -> None:
        globalReactor.callFromThread(reload)  # type: ignore[attr-defined]

    try:
        return signal.signal(signal.SIGHUP, hangup)
    except ValueError:
        # Not the main thread (tests); no signals there.
        return None


def restoreHangup(previous: Any) -> None:
    if previous is not None:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGHUP, previous)


class _Worker(ProcessProtocol):
    def __init__(self, master: WorkerMaster, number: int) -> None:
        self.master = master
        self.number = number
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.master._workerEnded(self, reason)


class WorkerMaster(Service):
    """
    C{--workers N}: listen, then run N worker processes that share the listening
    sockets (the kernel spreads connections over them), restart any that dies, pass
    SIGHUP on, and stop them gracefully with SIGTERM.
    """

    def __init__(
        self,
        config: ServiceConfig,
        pluginArgs: Sequence[str],
        reactor: Any = None,
        temporaryFiles: Sequence[str] = (),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        self.reactor = reactor
        self.config = config
        self.pluginArgs = list(pluginArgs)
        # Files made for the workers (the development certificate), removed at stop.
        self.temporaryFiles = list(temporaryFiles)
        self.ports: list[tuple[IListeningPort, bool]] = []
        self.workers: dict[int, Any] = {}
        self._stopping = False
        self._previousHangup: Any = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        listeners = [(e, False) for e in self.config.listen]
        listeners += [(e, True) for e in self.config.listenTLS]
        for description, secure in listeners:
            endpoint = serverFromString(self.reactor, description)
            port = _now(endpoint.listen(Factory()))
            if isinstance(port, Failure) or port is None or not hasattr(port, "fileno"):
                why = port.getErrorMessage() if isinstance(port, Failure) else "not a socket"
                raise ConfigurationError(f"cannot listen on {description}: {why}")
            # The workers accept; this process only holds the sockets.
            port.stopReading()
            self.ports.append((port, secure))
            address = port.getHost()
            _log.info(
                "SMTP server listening on {host}:{port} with {workers} workers",
                host=getattr(address, "host", ""),
                port=getattr(address, "port", ""),
                workers=self.config.workers,
            )
        for number in range(self.config.workers):
            self._spawn(number)
        self._previousHangup = installHangup(self._hangup)

    def _spawn(self, number: int) -> None:
        childFDs: dict[int, Any] = {0: 0, 1: 1, 2: 2}
        args = [
            sys.executable,
            "-c",
            "from twisted.application.twist._twist import Twist; Twist.main()",
        ]
        args += twistArguments()
        args += ["smtpsvc", *self.pluginArgs]
        for index, (port, secure) in enumerate(self.ports):
            childFDs[3 + index] = port.fileno()  # type: ignore[attr-defined]
            args += ["--inherit", f"{3 + index}:{'tls' if secure else 'plain'}"]
        worker = _Worker(self, number)
        transport = self.reactor.spawnProcess(
            worker, sys.executable, args, env=os.environ, childFDs=childFDs
        )
        self.workers[number] = (worker, transport)

    def _workerEnded(self, worker: _Worker, reason: Failure) -> None:
        self.workers.pop(worker.number, None)
        if self._stopping:
            return
        _log.error(
            "Worker {number} ended ({reason}); starting another",
            number=worker.number,
            reason=reason.getErrorMessage(),
        )
        self.reactor.callLater(1.0, self._spawn, worker.number)

    def _signal(self, signum: int) -> None:
        for _, transport in list(self.workers.values()):
            # A worker that has just ended cannot be signalled; that is fine.
            with contextlib.suppress(Exception):
                transport.signalProcess(signum)

    def _hangup(self) -> None:
        self._signal(signal.SIGHUP)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        restoreHangup(self._previousHangup)
        ended = [worker.ended for worker, _ in self.workers.values()]
        self._signal(signal.SIGTERM)
        # Workers close gracefully within closeTimeout; then they are killed.
        limit = float(self.config.serverOptions.get("closeTimeout", 30.0)) + 5.0
        killer = self.reactor.callLater(limit, self._signal, signal.SIGKILL)

        def done(_: object) -> Deferred[None]:
            if killer.active():
                killer.cancel()
            for path in self.temporaryFiles:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            closing = [p.stopListening() for p, _ in self.ports]
            return DeferredList([d for d in closing if d is not None]).addCallback(lambda _: None)

        if not ended:
            return done(None)
        return DeferredList(ended).addCallback(done)


def twistArguments() -> list[str]:
    """
    The options given to C{twist} itself (before the plugin name), for the workers.
    """
    argv = sys.argv
    if "smtpsvc" in argv:
        return list(argv[1 : argv.index("smtpsvc")])
    return []
