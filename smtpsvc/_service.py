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
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from twisted.application.service import Service
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet import fdesc, tcp
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger, eventFromJSON
from twisted.python.failure import Failure
from zope.interface import implementer

from ._config import (
    ConfigurationError,
    ServiceConfig,
    TCPListening,
    certificatesAsBytes,
    checkUsable,
    clientEndpoint,
    listenEndpoint,
    tcpListening,
    withFlags,
    withListenBacklog,
)
from ._logging import hostPort
from ._options import ServerOptions
from ._reactor import reactorOr
from ._server import ABORT_DELAY, HANDLER_GRACE, HOOKS, SMTPServer, listenerKind
from ._tls import ServerTLS, settingsFrom, warnTLSProblems
from .cred import IBearerToken, PortalAuthHandler

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


#: What the service's checkers may verify: passwords (PLAIN, LOGIN), CRAM-MD5, bearer
#: tokens (XOAUTH2, OAUTHBEARER).
AUTH_INTERFACES: Final = (IUsernamePassword, IUsernameHashedPassword, IBearerToken)


def checkersFor(descriptions: Sequence[str], source: str = "--auth") -> list[Any]:
    """
    The cred checkers for C{--auth} descriptions (C{memory:alice:secret},
    C{scrypt:/etc/smtpsvc/passwd} ...).

    @param source: how to name them in an error (C{--auth}, or the file's key).
    @raise ConfigurationError: for a description cred cannot make a checker of, or one
        that nobody could ever log in with: a password file that cannot be read (cred's
        C{file:} only prints a warning), C{memory} without users, a checker of neither
        passwords nor bearer tokens (C{anonymous}).
    """
    checkers = []
    for description in descriptions:
        named = f"{source} {description}"
        kind, _, argument = description.partition(":")
        if kind in ("file", "scrypt"):
            if not argument:
                raise ConfigurationError(f"{named}: expected {kind}:FILE, a password file")
            try:
                with open(argument, "rb"):
                    pass
            except OSError as e:
                raise ConfigurationError(f"{named}: cannot read {argument}: {e.strerror}") from e
        try:
            checker = _bytesUsers(strcred.makeChecker(description))
        except strcred.InvalidAuthType as e:
            raise ConfigurationError(
                f"{named}: unknown source {kind!r} (twist smtpsvc --help-auth lists them)"
            ) from e
        except (strcred.StrcredException, OSError, ValueError) as e:
            raise ConfigurationError(f"{named}: {e}") from e
        if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse) and not checker.users:
            raise ConfigurationError(
                f"{named}: no users, so nobody could log in; expected "
                "memory:USER:PASSWORD[:USER:PASSWORD...]"
            )
        if not set(checker.credentialInterfaces) & set(AUTH_INTERFACES):
            raise ConfigurationError(
                f"{named}: its checker verifies neither passwords nor bearer tokens"
            )
        checkers.append(checker)
    return checkers


def loadHandler(spec: str, named: str) -> object:
    """
    The handler named by C{package.module:name}: the object itself if it provides one of
    smtpsvc's interfaces, or what calling it with no arguments returns.

    @param named: how to name it in an error (C{--deliver python:SPEC}).
    @raise ConfigurationError: when the module cannot be imported (whatever its code
        raises while it is), has no such name, calling the name fails, or what is found
        is no handler: one line naming C{named} and the error, never a traceback.
    """
    module, colon, name = spec.rpartition(":")
    if not colon or not module or not name:
        raise ConfigurationError(f"{named}: expected python:MODULE:NAME")
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        raise ConfigurationError(f"{named}: cannot import {module}: {e}") from e
    except Exception as e:
        # The module's own code failed as it ran (or it does not compile): the user's
        # mistake, to be told in one line like the others.
        raise ConfigurationError(
            f"{named}: importing {module} failed: {type(e).__name__}: {e}"
        ) from e
    try:
        found = getattr(imported, name)
    except AttributeError as e:
        raise ConfigurationError(f"{named}: {module} has no {name}") from e

    def provides(candidate: object) -> bool:
        return any(iface.providedBy(candidate) for iface in HOOKS.values())

    if not provides(found) and callable(found):
        try:
            found = found()
        except Exception as e:
            raise ConfigurationError(
                f"{named}: calling {name}() failed: {type(e).__name__}: {e}"
            ) from e
    if not provides(found):
        raise ConfigurationError(f"{named}: the object provides none of smtpsvc's interfaces")
    return found


# The flags the relay refusal names.
_RELAY_FLAGS: Final = ("--domain", "--auth")

#: How long forwarding waits for each reply of the downstream, unless handlerTimeout is
#: shorter (see forwardTimeout).
FORWARD_TIMEOUT: Final = 60.0


def forwardTimeout(handlerTimeout: float) -> float:
    """
    How long forwarding waits for each reply of the downstream: a minute, or, when
    C{handlerTimeout} is shorter, four fifths of it.  So a downstream that does not answer
    is given up with its own C{451 4.4.1} (and its connection dropped) before the client
    is cut off with C{421 Handler timeout}, which would leave the downstream connection
    for its own timeout to end.
    """
    if handlerTimeout and handlerTimeout < FORWARD_TIMEOUT:
        return handlerTimeout * 0.8
    return FORWARD_TIMEOUT


def buildServer(config: ServiceConfig, reactor: Any = None) -> SMTPServer:
    """
    The server a service configuration describes.
    """
    from .handlers.maildir import MaildirDelivery
    from .handlers.relay import RelayPolicy

    serverOptions = config.resolvedServerOptions()
    allCheckers = checkersFor(config.auth, config.origin("auth"))
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
    try:
        server = SMTPServer((), reactor=reactor, **serverOptions)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(withFlags(str(e), config.sources)) from e
    checkUsable(server.options, config)
    if authentication is not None:
        checkAuthUsable(server.options, config, authentication.mechanisms())
    relaying = [target for target in config.deliver if target.startswith("smtp:")]
    # Required as the server will require it: --auth-optional counts.
    authRequired = authentication is not None and server.options.authRequired
    if relaying and not config.domains and not authRequired:
        # Named as the file names them when the target came from it.
        domain, auth = ("domain", "auth") if "deliver" in config.sources else _RELAY_FLAGS
        raise ConfigurationError(
            f"{config.entry('deliver', relaying[0])}: forwards mail onwards: give {domain} "
            f"(the domains this server receives mail for) or require {auth}, or it would be "
            "an open relay"
        )
    if config.domains:
        try:
            server.addHandler(RelayPolicy(config.domains))
        except ValueError as e:
            raise ConfigurationError(f"{config.origin('domain')}: {e}") from e
    if authentication is not None:
        server.addHandler(authentication)
    for target in config.deliver:
        kind, _, argument = target.partition(":")
        if kind == "maildir":
            handler: object = MaildirDelivery(
                argument,
                reactor=server.reactor,
                serverName=server.options.name,
                minFree=config.maildirMinFree,
            )
        elif kind in ("smtp", "lmtp"):
            from .handlers.forward import ForwardDelivery

            handler = ForwardDelivery(
                clientEndpoint(server.reactor, argument, config.entry("deliver", target)),
                lmtp=kind == "lmtp",
                reactor=server.reactor,
                serverName=server.options.name,
                timeout=forwardTimeout(server.options.handlerTimeout),
                handlerTimeout=server.options.handlerTimeout,
                description=argument,
            )
        elif kind == "python":
            handler = loadHandler(argument, config.entry("deliver", target))
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


def checkAuthUsable(
    options: ServerOptions, config: ServiceConfig, checkable: Sequence[str]
) -> None:
    """
    Refuse C{--auth} where nobody could log in: AUTH turned off, no mechanism offered, or
    one offered that the credential sources cannot check (a client that picks it fails
    every time, and is locked out for it).

    @param options: the options of the server as built.
    @param checkable: the mechanisms every source of C{--auth} can check
        (L{PortalAuthHandler.mechanisms}).
    @raise ConfigurationError: saying which options contradict each other.
    """
    auth, methods = config.origin("auth"), config.origin("authMethods")
    if "AUTH" in options.disabledCommands:
        raise ConfigurationError(
            f"{auth} with AUTH in {config.origin('disabledCommands')}: AUTH is never "
            "offered, so nobody could log in; drop one or the other"
        )
    if not options.authMethods:
        raise ConfigurationError(
            f"{auth} with an empty {methods}: no mechanism is offered, so nobody could log in"
        )
    uncheckable = [m for m in options.authMethods if m not in checkable]
    if uncheckable:
        raise ConfigurationError(
            f"{methods} offers {', '.join(uncheckable)}, which the {auth} sources cannot "
            f"all check (they can: {', '.join(checkable) or 'none'}): a login with it "
            "would always fail"
        )


def prepareDeliveries(server: SMTPServer, config: ServiceConfig) -> None:
    """
    Make what deliveries need on disk, as the user the service runs as.
    """
    from .handlers.maildir import MaildirDelivery

    for handler in server.handlers:
        if isinstance(handler, MaildirDelivery):
            try:
                handler.prepare()
            except OSError as e:
                where = config.entry("deliver", f"maildir:{handler.path}")
                raise ConfigurationError(f"{where}: {e.strerror}") from e


class SMTPService(Service):
    """
    Listens on each endpoint; reloads certificates on SIGHUP; when stopped, closes the
    server gracefully (within C{closeTimeout}).
    """

    def __init__(
        self, server: SMTPServer, config: ServiceConfig, pipes: WorkerPipes | None = None
    ) -> None:
        """
        @param pipes: a worker's pipes to its C{--workers} master (L{WorkerPipes.claim}).
        """
        self.server = server
        self.config = config
        self._pipes = pipes or WorkerPipes(None, None)
        self.ports: list[IListeningPort] = []
        self._listening = False
        self._signals: SignalHandlers | None = None
        self._master: MasterPipe | None = None

    def privilegedStartService(self) -> None:
        # twistd calls this before dropping privileges, so port 25 works; twist calls
        # only startService.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        # Under twistd --uid this runs after privileges are dropped.
        prepareDeliveries(self.server, self.config)
        self._listen()
        self._signals = SignalHandlers(self.server.reactor, self.reload)
        self._signals.install()
        self._master = MasterPipe.watch(self.server.reactor, self._pipes.master, self._masterGone)
        tellReady(self._pipes.ready)

    def _masterGone(self, master: int) -> None:
        # As on SIGTERM: stop accepting, let the transactions under way finish.
        _log.error(
            "The --workers master (PID {master}) has gone; worker {pid} is closing",
            master=master,
            pid=os.getpid(),
        )
        assert self._signals is not None
        self._signals.stopNow()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        # A worker of --workers has no endpoints of its own, only inherited sockets.
        for fd, inheritedSecure in self.config.inherited:
            self.ports.append(adopt(self.server, fd, inheritedSecure))
        for description, secure in self.config.listeners():
            endpoint = listenEndpoint(
                self.server.reactor, description, self.config.listener(description, secure)
            )
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
        With no certificate file named, there is nothing to read: that is said instead.
        """
        if not self.config.tls.namesFiles:
            _log.info(
                "Certificates not reloaded: no certificate files were given (the "
                "development certificate is kept)"
            )
            return
        try:
            self.server.updateSecureContext(**self.config.tls.reread())
        except (ConfigurationError, ValueError, TypeError) as e:
            message = e.message if isinstance(e, ConfigurationError) else str(e)
            _log.error("Certificates not reloaded: {reason}", reason=message)
            return
        _log.info("Certificates reloaded")
        if not self.config.inherited:
            # A worker of --workers leaves the warnings to its parent, which says them once.
            warnTLSProblems(self.server.tls.settings, checkDefault=self.config.tls.cert is not None)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._master is not None:
            # Closing already: the master's end no longer matters.
            self._master.stop()
            self._master = None
        return _closing(self._signals, self.server.close)


def _closing(signals: SignalHandlers | None, close: Callable[[], Deferred[None]]) -> Deferred[None]:
    # A service that closes ignores further stop signals until it has closed (see
    # SignalHandlers.stopping), then puts back the handlers it replaced.
    if signals is None:
        return close()
    signals.stopping()

    def restore(result: object) -> object:
        signals.restore()
        return result

    return close().addBoth(restore)


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


#: The format of the line each worker logs once it serves (the benchmarks wait for it).
WORKER_SERVING: Final = "{kind} worker {pid} serving {address}"


def adopt(server: SMTPServer, fd: int, secure: bool | None) -> IListeningPort:
    """
    Serve on a listening socket inherited from a --workers parent, which this process
    owns: the descriptor is closed once the port has its own (Twisted adopts a copy), so
    that stopping the port closes the socket, and new connections are refused rather
    than left queued for nobody while the server closes.
    """
    port = server.adopt(fd, secure=secure)
    os.close(fd)
    address = port.getHost()
    kind = "LMTP" if server.options.lmtp else "SMTP"
    if isinstance(address, UNIXAddress):
        path = os.fsdecode(address.name or b"")
        _log.info(WORKER_SERVING, kind=kind, pid=os.getpid(), address=path, path=path)
        return port
    _log.info(
        WORKER_SERVING,
        kind=kind,
        pid=os.getpid(),
        address=hostPort(getattr(address, "host", ""), getattr(address, "port", "")),
        host=getattr(address, "host", ""),
        port=getattr(address, "port", ""),
    )
    return port


#: The environment variable in which a C{--workers} master names the worker's descriptor
#: of the pipe it holds (L{MasterPipe}).
MASTER_PIPE: Final = "SMTPSVC_MASTER_PIPE"
#: The variable naming the pipe on which a worker tells its master it handles SIGHUP.
READY_PIPE: Final = "SMTPSVC_READY_PIPE"


@dataclass(frozen=True)
class WorkerPipes:
    """
    The two pipes a C{--workers} master gives a worker, named by L{MASTER_PIPE} and
    L{READY_PIPE}: the one it watches for the master's end (L{MasterPipe}), and the one
    on which it says it handles SIGHUP (L{tellReady}).

    @ivar master: the descriptor of the first, or L{None}.
    @ivar ready: the descriptor of the second, or L{None}.
    """

    master: int | None
    ready: int | None

    @classmethod
    def claim(cls) -> WorkerPipes:
        """
        Take the pipes the environment names, before anything else is built: the
        variables are removed and the descriptors kept from the processes this one
        starts (a C{python:} handler's factory may start some as it is built), which
        would take themselves for workers, or hold the pipes open and keep the master
        from seeing this process end.  A variable that names no open descriptor is
        taken as no pipe.
        """
        return cls(_claimed(MASTER_PIPE), _claimed(READY_PIPE))


def _claimed(variable: str) -> int | None:
    value = os.environ.pop(variable, "")
    if not value.isdigit():
        return None
    fd = int(value)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd


def tellReady(fd: int | None) -> None:
    """
    Tell the C{--workers} master that started this process, on the pipe C{fd} (L{None}
    when no master did), that its SIGHUP handler is in place: until then the master keeps
    SIGHUP from it, which would meet the default handler and kill it.  The pipe is closed.
    """
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, b"\n")
    with contextlib.suppress(OSError):
        os.close(fd)


@implementer(IReadDescriptor)
class MasterPipe:
    """
    A worker's end of a pipe whose other end only its C{--workers} master holds, and never
    writes to: it reads end-of-file once the master is gone, however it went.

    The kernel closes a dead process's descriptors whatever killed it (SIGKILL, the OOM
    killer, a crash), so the end-of-file is as sure as Linux's C{PR_SET_PDEATHSIG}, and
    better suited: it works on every POSIX system; it arrives in the reactor as any
    other event, so the worker closes as on SIGTERM (it stops accepting and lets the
    transactions under way finish) rather than dying wherever a signal lands; and it
    follows the master process, where the death signal follows the thread that started
    the worker, and must be asked for between fork and exec, where C{spawnProcess} has
    no hook, or after the exec, too late for a master that died in between.  Twisted's
    own C{trial -j} workers end the same way, at the end of their pipe from trial.
    """

    def __init__(self, reactor: Any, fd: int, master: int, gone: Callable[[int], None]) -> None:
        """
        @param fd: the worker's end of the pipe.
        @param master: the master's process ID, for the log.
        @param gone: called with it once the master is gone.
        """
        self._reactor = reactor
        self._fd = fd
        self._master = master
        self._gone = gone

    @classmethod
    def watch(cls, reactor: Any, fd: int | None, gone: Callable[[int], None]) -> MasterPipe | None:
        """
        Watch the pipe C{fd} (from L{WorkerPipes.claim}); L{None} when there is none
        (this process was not started by a C{--workers} master) or it cannot be watched.

        @param gone: called with the master's process ID once it is gone.
        """
        if fd is None:
            return None
        try:
            fdesc.setNonBlocking(fd)
        except OSError:
            return None
        pipe = cls(reactor, fd, os.getppid(), gone)
        reactor.addReader(pipe)
        return pipe

    def stop(self) -> None:
        """
        Stop watching, and close the pipe.
        """
        if self._fd < 0:
            return
        self._reactor.removeReader(self)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "MasterPipe"

    def doRead(self) -> Failure | None:
        # Nothing is ever written: whatever comes is ignored until the end, which this
        # returns as the reactor wants it (ConnectionDone, or ConnectionLost on an error).
        ended: Failure | None = fdesc.readFromFD(self._fd, lambda data: None)
        return ended

    def connectionLost(self, reason: Failure) -> None:
        self.stop()
        self._gone(self._master)


class SignalHandlers:
    """
    The service's signal handling: C{reload} in the reactor on SIGHUP; and the handlers
    of SIGTERM and SIGINT that the reactor installs as it starts run in its loop rather
    than wherever the signal interrupts it.

    Those handlers log before they stop the reactor.  Run as a signal handler, between
    two bytecodes of the main thread, that logging can deadlock: under C{twistd} the log
    file's lock (once a thread pool has run, as the Maildir delivery's fsyncs do) is a
    pure-Python C{RLock}, and a signal that arrives while the thread is inside its
    C{acquire} or C{release} finds the inner lock held by a thread that is not yet (or
    no longer) its owner, and waits for ever: the service would ignore SIGTERM.  From
    the loop nothing is half-taken.

    Only the first stop signal reaches them.  Each asks the reactor to stop, and a
    reactor asked twice raises C{ReactorNotRunning}, which Twisted logs as critical with
    its traceback; yet a second one is common: Ctrl-C sends SIGINT to a C{--workers}
    master and its workers alike, and the master then sends each worker SIGTERM.  Later
    ones are logged and ignored until L{restore}.
    """

    #: The signals whose handlers (the reactor's) are run from its loop.
    DEFERRED: Final = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, reactor: Any, reload: Callable[[], None]) -> None:
        self._reactor = reactor
        self._reload = reload
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._stopping = False

    def install(self) -> None:
        """
        Handle SIGHUP now, and wrap the reactor's handlers once it runs (C{twistd} starts
        the service before the reactor installs them; C{twist}, after).
        """
        if not self._replace(signal.SIGHUP, self._hangup):
            # Not the main thread (tests): no signals there.
            return
        self._installed = True
        self._reactor.callWhenRunning(self._wrapReactors)

    def stopping(self) -> None:
        """
        The service is stopping: from now until L{restore} log and ignore SIGTERM and
        SIGINT (the reactor is stopping already), and SIGHUP too.  (SIGHUP's own handler
        put back now would be the default one, which kills the process: the clients
        still finishing their messages would be cut off without their 421.)
        """
        self._stopping = True

    def restore(self) -> None:
        """
        Put back the handlers replaced.
        """
        self._installed = False
        previous, self._previous = self._previous, {}
        for number, handler in previous.items():
            self._put(number, handler)

    def _put(self, number: int, handler: Any) -> None:
        if handler is not None:
            with contextlib.suppress(ValueError):
                signal.signal(number, handler)

    def _replace(self, number: int, handler: Callable[[int, Any], None]) -> bool:
        try:
            self._previous[number] = signal.signal(number, handler)
        except ValueError:
            return False
        return True

    def _hangup(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reloadUnlessStopping)

    def _reloadUnlessStopping(self) -> None:
        if self._stopping:
            _log.info("Received SIGHUP, already shutting down.")
            return
        self._reload()

    def _wrapReactors(self) -> None:
        if not self._installed:
            return
        for number in self.DEFERRED:
            handler = signal.getsignal(number)
            if callable(handler):
                self._replace(number, self._inLoop(handler))

    def _inLoop(self, handler: Callable[[int, Any], object]) -> Callable[[int, Any], None]:
        def later(number: int, frame: Any) -> None:
            self._reactor.callFromThread(self._stop, handler, number)

        return later

    def stopNow(self) -> None:
        """
        Stop the reactor for a reason of the service's own (a worker's master has gone),
        as a first stop signal would: unless a stop signal got there first, and so that
        any that comes later is only logged.
        """
        if not self._stopping:
            self._stopping = True
            self._reactor.stop()

    def _stop(self, handler: Callable[[int, Any], object], number: int) -> None:
        # Decided in the loop, in the order the signals came: of two at once (SIGINT from
        # the terminal, SIGTERM from the master) the second finds the first's mark.  The
        # reactor's own state would not tell: its handlers only queue their stop, so both
        # would find it running.
        if self._stopping:
            _log.info(
                "Received {signal}, already shutting down.", signal=signal.Signals(number).name
            )
            return
        self._stopping = True
        handler(number, None)


def canSpreadConnections() -> bool:
    """
    Whether the kernel spreads the connections to one address over several listening
    sockets bound to it with C{SO_REUSEPORT}: Linux does (since 3.9); the BSDs and macOS
    accept the option but hand every connection to one socket.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        # Kernels before 3.9, and some sandboxes, refuse it.
        return False
    return True


class _ReusePortListener(tcp.Port):
    # A TCP port whose socket has SO_REUSEPORT set before it is bound, so that sockets of
    # the same user may listen on the same address and port beside it.
    def createInternetSocket(self) -> socket.socket:
        skt: socket.socket = super().createInternetSocket()  # type: ignore[no-untyped-call]
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return skt


def _closesItsCopyOnly(port: IListeningPort) -> IListeningPort:
    """
    C{port}, a listening socket of a C{--workers} master that its workers share, made to
    close only this process's descriptor when it stops listening.

    Twisted shuts a socket down before closing it, and C{shutdown()} acts on the socket
    that every process shares, not on one descriptor: each worker's C{accept()} would
    fail at once (C{EINVAL}, logged as an unhandled error) while it still serves.
    """
    if isinstance(port, tcp.Port):  # UNIX ports too
        port._shouldShutdown = False
    return port


def _refuseTakenPort(where: TCPListening) -> None:
    # Sockets of the same user that all set SO_REUSEPORT share a port: a second --workers
    # master on the port (or an old one still running) would silently take half of the
    # connections.  A socket without the option cannot bind beside a listening one, so
    # binding one first keeps the plain "Address already in use" (a master that starts
    # in the instant between the two is not caught).
    if where.port == 0:
        return
    family = socket.AF_INET6 if isIPv6Address(where.interface) else socket.AF_INET
    try:
        address = socket.getaddrinfo(
            where.interface or None, where.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0][4]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        raise CannotListenError(where.interface, where.port, e) from e


def listenPerWorker(reactor: Any, where: TCPListening, count: int) -> list[IListeningPort]:
    """
    C{count} listening sockets bound to the same address and port with
    C{SO_REUSEPORT}, so that the kernel spreads the connections over them; port 0 binds
    the first to a port the kernel picks and the others to the same.  They do not accept:
    each is for one worker.

    @raise CannotListenError: if one cannot be bound (the others are closed).
    """
    _refuseTakenPort(where)
    # No factory ever builds a protocol here; one that does not log starting and stopping
    # for each of the sockets.
    factory = Factory()
    factory.noisy = False
    ports: list[IListeningPort] = []
    portNumber = where.port
    try:
        for _ in range(count):
            port: tcp.Port = _ReusePortListener(
                portNumber, factory, where.backlog, where.interface, reactor
            )
            port.startListening()
            port.stopReading()
            ports.append(port)
            portNumber = port.getHost().port
    except CannotListenError:
        for bound in ports:
            bound.stopListening()
        raise
    return ports


#: The longest line of a worker's output kept whole; a longer one is cut.
_MAX_RELAYED_LINE = 1 << 20
#: How much of a line of a worker's output that is not a log event is logged.
_MAX_LOGGED_OUTPUT = 4096
#: How long after a worker's close() has given up on its handlers, at the latest, the
#: master kills a worker that has not exited.
_KILL_MARGIN: Final = 1.0
#: A worker that ends sooner than this after it was started, other than by SIGKILL, could
#: not start (its configuration, files or handlers fail as it loads them): it is started
#: again later and later, up to L{_MAX_RESTART_DELAY}, not every second.
_START_WINDOW: Final = 10.0
#: How long the master waits before it starts a worker again after one that ran ended.
_RESTART_DELAY: Final = 1.0
#: The longest it waits before it tries again to start a worker that could not start.
_MAX_RESTART_DELAY: Final = 60.0


class _Worker(ProcessProtocol):
    """
    One worker process.  When C{relay} is set its output is a pipe: it writes its log
    as JSON events on standard output, which this process logs as its own, and anything
    on standard error is logged as an error.
    """

    def __init__(
        self, master: WorkerMaster, number: int, relay: bool = False, readyFD: int | None = None
    ) -> None:
        """
        @param readyFD: the worker's descriptor of the pipe on which it says that it
            handles SIGHUP (see L{tellReady}).
        """
        self.master = master
        self.number = number
        self.relay = relay
        self.readyFD = readyFD
        #: Whether it handles SIGHUP yet; and whether one came for it before it did.
        self.ready = False
        self.hangupPending = False
        self.ended: Deferred[None] = Deferred()
        #: When it was started (the reactor's time; the master sets it).
        self.started = 0.0
        self._pending = {1: b"", 2: b""}
        # The end of what it wrote on standard error: why it ended, if it could not start.
        self._errorTail = b""

    @property
    def lastError(self) -> str:
        """
        The last line it wrote on standard error (C{twist smtpsvc: ...} when it could not
        start), or C{""}.
        """
        lines = self._errorTail.decode("utf-8", "replace").splitlines()
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == self.readyFD:
            self._becameReady()
            return
        if childFD == 2:
            self._errorTail = (self._errorTail + data)[-_MAX_LOGGED_OUTPUT:]
            if not self.relay:
                # Under twist its standard error is this process's, as it wrote it: the
                # master only reads it on the way, to say why a worker could not start.
                _writeAll(2, data)
                return
        if childFD not in self._pending:
            return
        lines = (self._pending[childFD] + data).split(b"\n")
        self._pending[childFD] = lines.pop()
        if len(self._pending[childFD]) > _MAX_RELAYED_LINE:
            lines.append(self._pending[childFD])
            self._pending[childFD] = b""
        for line in lines:
            self._relayLine(childFD, line)

    def _becameReady(self) -> None:
        if self.ready:
            return
        self.ready = True
        if self.hangupPending:
            # It started with the certificates handed over before that SIGHUP: it now
            # reads the files, as the others did then.
            self.hangupPending = False
            self.master._signalWorker(self, signal.SIGHUP)

    def _relayLine(self, childFD: int, line: bytes) -> None:
        # RFC 7464: each JSON event starts with a record separator.
        text = line.removeprefix(b"\x1e").decode("utf-8", "replace").strip()
        if not text:
            return
        if childFD == 1:
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
            if isinstance(event, dict) and "log_level" in event:
                event["worker"] = self.number
                _log.observer(event)
                return
        if len(text) > _MAX_LOGGED_OUTPUT:
            text = f"{text[:_MAX_LOGGED_OUTPUT]}... ({len(text)} characters)"
        _log.error("Worker {number}: {line}", number=self.number, line=text)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._pending.items():
            self._relayLine(childFD, rest)
        self._pending = {}
        self.ended.callback(None)
        self.master._workerEnded(self, reason)


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while view:
            view = view[os.write(fd, view) :]


class WorkerMaster(Service):
    """
    C{--workers N}: listen, then run N worker processes that serve the listening
    sockets, restart any that dies, pass SIGHUP on, and stop them gracefully with
    SIGTERM.

    A C{tcp:} or C{tcp6:} listener gets one socket per worker, all bound to its address
    and port with C{SO_REUSEPORT}, where the kernel spreads connections over such sockets
    (L{canSpreadConnections}); worker I{i} always serves socket I{i}.  Other listeners, and
    every listener elsewhere, have one socket the workers share, and whichever worker
    accepts first takes the connections waiting.

    @ivar ports: for each listener, its sockets (one, or one per worker) and whether
        TLS starts at once on it.
    @ivar socketPerWorker: whether TCP listeners get one socket per worker.
    """

    def __init__(
        self,
        config: ServiceConfig,
        pluginArgs: Sequence[str],
        reactor: Any = None,
        development: tuple[bytes, bytes] | None = None,
        certificates: Mapping[str, Any] | None = None,
    ) -> None:
        """
        @param pluginArgs: the plugin's command line, which each worker gets too.
        @param development: the development key and certificate (PEM) this process
            made, which the workers must serve as well.
        @param certificates: the certificates this process loaded (what
            L{TLSSources.load} gave): each worker serves them from its start, and after
            each SIGHUP whose files this process can load, the new ones.  A worker
            started again thus serves what the others serve, even once the files have
            become unusable (a renewal caught half-way, a key whose permissions changed),
            which it would otherwise read at start and fail on, again and again.
        """
        self.reactor = reactorOr(reactor)
        self.config = config
        self.pluginArgs = list(pluginArgs)
        self.development = development
        self.certificates = None if certificates is None else dict(certificates)
        # The development certificate handed to the workers: a file in memory, closed at
        # stop; or where there are none, a temporary file, removed at stop.
        self.certificateFile: int | None = None
        self.temporaryFiles: list[str] = []
        # The same for the certificates handed over: a file in memory, replaced by
        # another as they change (a worker holds its own descriptor from its start);
        # or a temporary file, replaced in one rename.
        self.handedOverFile: int | None = None
        self.handedOverPath: str | None = None
        self.ports: list[tuple[list[IListeningPort], bool]] = []
        self.socketPerWorker = canSpreadConnections()
        self.workers: dict[int, Any] = {}
        # For each worker that could not start: how many times in a row, and when it is
        # tried again.
        self._failedStarts: dict[int, int] = {}
        self._later: dict[int, Any] = {}
        # The workers whose own sockets (socketPerWorker) are paused while none serves them.
        self._paused: set[int] = set()
        self._listening = False
        self._stopping = False
        self._signals: SignalHandlers | None = None

    def privilegedStartService(self) -> None:
        # twistd calls this before dropping privileges, so port 25 works; twist calls
        # only startService.  The workers start in startService, without them.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listenAll()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listenAll()
        handedOver = self.certificateFile is not None or self.temporaryFiles
        if self.development is not None and not handedOver:
            self._handOver(self.development[1] + self.development[0])
        handedOverCertificates = self.handedOverFile is not None or self.handedOverPath
        if self.certificates is not None and not handedOverCertificates:
            self._handOverCertificates(self.certificates)
        for number in range(self.config.workers):
            try:
                self._spawn(number)
            except OSError as e:
                raise ConfigurationError(f"cannot start worker {number}: {e}") from e
        self._signals = SignalHandlers(self.reactor, self._hangup)
        self._signals.install()

    def _handOver(self, certificate: bytes) -> None:
        # Written now, after twistd --uid has dropped privileges, so that the workers,
        # which run as the same user, can read it; nobody else can.
        self.certificateFile = inMemory(certificate)
        if self.certificateFile is not None:
            return
        fd, path = tempfile.mkstemp(prefix="smtpsvc-development-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(certificate)
        self.temporaryFiles.append(path)
        self.pluginArgs += ["--cert", path]

    def _handOverCertificates(self, certificates: Mapping[str, Any]) -> None:
        # Written after twistd --uid has dropped privileges, as the development
        # certificate is (see _handOver).
        contents = certificatesAsBytes(certificates)
        self.certificates = dict(certificates)
        fd = inMemory(contents, "smtpsvc-certificates")
        if fd is not None:
            if self.handedOverFile is not None:
                os.close(self.handedOverFile)
            self.handedOverFile = fd
            return
        # A worker starting now opens either the old file or the new one, whole.
        descriptor, path = tempfile.mkstemp(prefix="smtpsvc-certificates-", suffix=".json")
        with os.fdopen(descriptor, "wb") as f:
            f.write(contents)
        if self.handedOverPath is None:
            self.handedOverPath = path
            self.temporaryFiles.append(path)
        else:
            os.replace(path, self.handedOverPath)

    def _listenAll(self) -> None:
        if self._listening:
            return
        self._listening = True
        options = ServerOptions.fromMapping(self.config.serverOptions)
        for description, secure in self.config.listeners():
            ports = self._listen(description, self.config.listener(description, secure))
            self.ports.append((ports, bool(secure)))
            address = ports[0].getHost()
            kind, workers = listenerKind(options, secure), self.config.workers
            if isinstance(address, UNIXAddress):
                _log.info(
                    "{kind} server listening on {path} with {workers} workers",
                    kind=kind,
                    path=os.fsdecode(address.name or b""),
                    workers=workers,
                )
            else:
                _log.info(
                    "{kind} server listening on {address} with {workers} workers",
                    kind=kind,
                    address=hostPort(getattr(address, "host", ""), getattr(address, "port", "")),
                    host=getattr(address, "host", ""),
                    port=getattr(address, "port", ""),
                    workers=workers,
                )

    def _listen(self, description: str, source: str) -> list[IListeningPort]:
        # The listener's sockets: one per worker, or one for all.  The workers accept;
        # this process only holds the sockets (it may bind port 25 as root).
        endpoint = listenEndpoint(self.reactor, description, source)
        where = None
        if self.socketPerWorker and self.config.workers > 1:
            where = tcpListening(withListenBacklog(description))
        if where is not None:
            try:
                ports = listenPerWorker(self.reactor, where, self.config.workers)
            except CannotListenError as e:
                raise ConfigurationError(f"cannot listen on {description}: {e}") from e
            return [_closesItsCopyOnly(port) for port in ports]
        port = _now(endpoint.listen(Factory()))
        if isinstance(port, Failure) or port is None or not hasattr(port, "fileno"):
            why = port.getErrorMessage() if isinstance(port, Failure) else "not a socket"
            raise ConfigurationError(f"cannot listen on {description}: {why}")
        port.stopReading()
        return [_closesItsCopyOnly(port)]

    def _spawn(self, number: int) -> None:
        options, relay = workerTwistOptions(sys.argv, self.reactor)
        childFDs: dict[int, Any] = {0: 0, 1: "r", 2: "r"} if relay else {0: 0, 1: 1, 2: 2}
        args = [
            sys.executable,
            "-c",
            "from twisted.application.twist._twist import Twist; Twist.main()",
        ]
        args += options
        args += ["smtpsvc", *self.pluginArgs]
        for index, (ports, secure) in enumerate(self.ports):
            # Worker N serves socket N of a listener with one per worker, also when it
            # is started again, so no socket waits longer than a restart for a worker.
            port = ports[number % len(ports)]
            childFDs[3 + index] = port.fileno()  # type: ignore[attr-defined]
            args += ["--inherit", f"{3 + index}:{'tls' if secure else 'plain'}"]
        # A pipe that ends when this process does, however it ends: the worker closes
        # then (MasterPipe), and does not serve on for nobody behind an init process.
        pipe = 3 + len(self.ports)
        childFDs[pipe] = "w"
        # And one on which it says that it handles SIGHUP (see _signal).
        ready = pipe + 1
        childFDs[ready] = "r"
        environment = {**os.environ, MASTER_PIPE: str(pipe), READY_PIPE: str(ready)}
        nextFD = ready + 1
        if self.certificateFile is not None:
            childFDs[nextFD] = self.certificateFile
            args += ["--cert", f"/dev/fd/{nextFD}"]
            nextFD += 1
        if self.handedOverFile is not None:
            childFDs[nextFD] = self.handedOverFile
            args += ["--inherit-certificates", f"/dev/fd/{nextFD}"]
        elif self.handedOverPath is not None:
            args += ["--inherit-certificates", self.handedOverPath]
        # Its standard error is read (and under twist passed on), to say why it ended.
        childFDs[2] = "r"
        worker = _Worker(self, number, relay, readyFD=ready)
        worker.started = self.reactor.seconds()
        transport = self.reactor.spawnProcess(
            worker, sys.executable, args, env=environment, childFDs=childFDs
        )
        self.workers[number] = (worker, transport)
        if number in self._failedStarts:
            self._later[number] = self.reactor.callLater(_START_WINDOW, self._startedAgain, worker)

    def _workerEnded(self, worker: _Worker, reason: Failure) -> None:
        number = worker.number
        self.workers.pop(number, None)
        if self._stopping:
            return
        later = self._later.pop(number, None)
        if later is not None and later.active():
            later.cancel()
        killed = getattr(reason.value, "signal", None) == signal.SIGKILL
        if killed or self.reactor.seconds() - worker.started >= _START_WINDOW:
            # It ran, or was killed from outside (the OOM killer, kill -9) however soon:
            # another starts at once, on its socket.
            self._failedStarts.pop(number, None)
            _log.error(
                "Worker {number} ended ({reason}); starting another",
                number=number,
                reason=reason.getErrorMessage(),
            )
            self._later[number] = self.reactor.callLater(_RESTART_DELAY, self._respawn, number)
            return
        # It could not start, and one started at once with the same configuration would
        # most likely fail the same way: try later and later, and meanwhile leave no
        # socket of its own listening for nobody (its clients would wait for ever).
        failures = self._failedStarts.get(number, 0) + 1
        self._failedStarts[number] = failures
        delay = min(_RESTART_DELAY * 2**failures, _MAX_RESTART_DELAY)
        self._pause(number)
        why = reason.getErrorMessage()
        if worker.lastError:
            why = f"{worker.lastError} ({why})"
        if failures == 1:
            _log.critical(
                "Worker {number} could not start: {why}; until one can, new connections "
                "go to the other workers; trying again in {delay:g} s, then less and less "
                "often",
                number=number,
                why=why,
                delay=delay,
            )
        else:
            _log.error(
                "Worker {number} could not start again: {why}; trying again in {delay:g} s",
                number=number,
                why=why,
                delay=delay,
            )
        self._later[number] = self.reactor.callLater(delay, self._respawn, number)

    def _startedAgain(self, worker: _Worker) -> None:
        self._later.pop(worker.number, None)
        if self.workers.get(worker.number, (None,))[0] is worker:
            self._failedStarts.pop(worker.number, None)
            _log.info("Worker {number} started again and serves", number=worker.number)

    def _respawn(self, number: int) -> None:
        self._later.pop(number, None)
        if self._stopping:
            return
        self._resume(number)
        try:
            self._spawn(number)
        except OSError as e:
            self._pause(number)
            _log.critical(
                "Cannot start worker {number}: {reason}; trying again", number=number, reason=e
            )
            self._later[number] = self.reactor.callLater(5.0, self._respawn, number)

    def _ownSockets(self, number: int) -> list[socket.socket]:
        # The sockets only worker `number` accepts on: its own of each listener that has
        # one per worker.  A shared socket the other workers still serve.
        return [ports[number].socket for ports, _ in self.ports if len(ports) > 1]  # type: ignore[attr-defined]

    def _pause(self, number: int) -> None:
        # On Linux a listening socket shut down for reading stops listening, yet stays
        # bound: the kernel hands its share of new connections to the other sockets of
        # the port, refuses the connections that waited on it (they were never going to
        # be accepted), and a listen() later takes it back into the group.
        if number in self._paused or not self._ownSockets(number):
            return
        self._paused.add(number)
        for sock in self._ownSockets(number):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

    def _resume(self, number: int) -> None:
        if number not in self._paused:
            return
        self._paused.discard(number)
        for ports, _ in self.ports:
            if len(ports) > 1:
                port = ports[number]
                with contextlib.suppress(OSError):
                    port.socket.listen(port.backlog)  # type: ignore[attr-defined]

    def _signal(self, signum: int) -> None:
        for worker, _ in list(self.workers.values()):
            if signum == signal.SIGHUP and not worker.ready:
                # Still starting, it has no handler for SIGHUP yet, and the default one
                # would kill it: it gets this one once it says it has (_becameReady).
                worker.hangupPending = True
                continue
            self._signalWorker(worker, signum)

    def _signalWorker(self, worker: _Worker, signum: int) -> None:
        entry = self.workers.get(worker.number)
        if entry is None or entry[0] is not worker:
            return
        # A worker that has just ended cannot be signalled; that is fine.
        with contextlib.suppress(Exception):
            entry[1].signalProcess(signum)

    def _hangup(self) -> None:
        # Read before the workers are told, so that one started from now on gets what
        # they are about to load.  Loaded as a worker loads them (every context built):
        # certificates a worker would refuse are never handed over.
        try:
            certificates = self.config.tls.reread()
            settings = settingsFrom(
                ServerOptions.fromMapping({**self.config.serverOptions, **certificates})
            )
            ServerTLS(settings)
        except (ConfigurationError, ValueError, TypeError):
            # The workers say why, each, and keep the certificates they have: a worker
            # started again gets those too.
            settings = None
        else:
            if self.certificates is not None:
                self._handOverCertificates(certificates)
        self._signal(signal.SIGHUP)
        if settings is not None:
            # What MTA-STS senders would refuse in the new certificates is said here, once
            # rather than once per worker.
            warnTLSProblems(settings, checkDefault=self.config.tls.cert is not None)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        for later in self._later.values():
            if later.active():
                later.cancel()
        self._later.clear()
        return _closing(self._signals, self._stopWorkers)

    def _stopWorkers(self) -> Deferred[None]:
        # This process's copies of the listening sockets close now, as the workers close
        # theirs, so that new connections are refused, as by a single process, instead of
        # waiting on sockets that nobody accepts on any more until the workers are done.
        closing = [p.stopListening() for ports, _ in self.ports for p in ports]
        ended = [worker.ended for worker, _ in self.workers.values()]
        self._signal(signal.SIGTERM)
        # Workers close gracefully within closeTimeout, and at the latest give up on their
        # handlers ABORT_DELAY and HANDLER_GRACE later (see SMTPServer.close); a second
        # after that, they are killed.
        closeTimeout = float(self.config.serverOptions.get("closeTimeout", 30.0))
        limit = closeTimeout + ABORT_DELAY + HANDLER_GRACE + _KILL_MARGIN
        killer = self.reactor.callLater(limit, self._signal, signal.SIGKILL)

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()
            if self.certificateFile is not None:
                os.close(self.certificateFile)
                self.certificateFile = None
            if self.handedOverFile is not None:
                os.close(self.handedOverFile)
                self.handedOverFile = None
            for path in self.temporaryFiles:
                with contextlib.suppress(OSError):
                    os.unlink(path)

        waits = ended + [d for d in closing if d is not None]
        return DeferredList(waits).addCallback(done)


def inMemory(contents: bytes, name: str = "smtpsvc-development.pem") -> int | None:
    """
    A file in memory that holds C{contents}, for worker processes to read as
    C{/dev/fd/N} from their copy of the descriptor, as often as they like (on SIGHUP
    too).  It has no name: no process, however it ends, can leave it behind.

    @param name: its name in C{/proc/PID/fd} (it has no other).
    @return: its descriptor; or L{None} where that cannot be: without C{memfd_create}
        (Linux only), or where opening C{/dev/fd/N} copies the descriptor instead of
        opening the file afresh (the BSDs), so that its readers would share one offset
        and all but the first read nothing.
    """
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    try:
        fd: int = create(name)
    except OSError:
        # A kernel older than 3.17, or a sandbox that forbids it.
        return None
    try:
        view = memoryview(contents)
        while view:
            view = view[os.write(fd, view) :]
        # Read back as a worker will, twice: here the offset is at the end, which a
        # mere copy of the descriptor would start from.
        for _ in range(2):
            with open(f"/dev/fd/{fd}", "rb") as f:
                if f.read() != contents:
                    raise OSError(f"/dev/fd/{fd} does not open the file afresh")
    except OSError:
        os.close(fd)
        return None
    return fd


def workerTwistOptions(argv: Sequence[str], reactor: Any) -> tuple[list[str], bool]:
    """
    The options of C{twist} for the workers of a master started with the command line
    C{argv}, and whether the master relays their log.

    Under C{twist} the workers get its options (log file, format, level, reactor) and log
    as it does.  C{twistd}'s options mean nothing to C{twist}, and its log (a file it
    rotates, syslog) is best written by one process: there the workers use the master's
    reactor and write JSON events to a pipe, which the master logs as its own.
    """
    before = list(argv[1 : list(argv).index("smtpsvc")]) if "smtpsvc" in argv else []
    if not os.path.basename(argv[0] if argv else "").startswith("twistd"):
        return before, False
    return ["--log-format", "json", "--log-file", "-", *_reactorOption(reactor)], True


def _reactorOption(reactor: Any) -> list[str]:
    # The --reactor choice that names the reactor this process runs, if one does.
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for kind in getReactorTypes():
        if getattr(kind, "moduleName", None) == module:
            return ["--reactor", kind.shortName]
    return []
