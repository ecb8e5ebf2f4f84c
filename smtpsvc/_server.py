"""
The server object applications build: options, handlers, listening, shutting down.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel

from ._config import listeningPort
from ._core._throttle import FailureBudget
from ._core._xclient import isLoopback
from ._dns import defaultResolver, reverseLookup
from ._logging import LevelLogger, hostPort
from ._options import ServerOptions
from ._protocol import SMTPProtocol
from ._reactor import reactorOr
from ._tls import TLS_SETTING_NAMES, ServerTLS, settingsFrom
from .interfaces import (
    IAuthHandler,
    ICloseHandler,
    IConnectHandler,
    IDataCommandHandler,
    IDataHandler,
    IMailFromHandler,
    IRcptToHandler,
    ISecureHandler,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamServerEndpoint

#: How long close() lets clients it has told 421 after closeTimeout read it before it cuts
#: off those that do not read.
ABORT_DELAY: Final = 1.0
#: How long close() waits for handlers still answering once it has cut off the last clients
#: (closeTimeout, then ABORT_DELAY): close handlers, and the data handlers of messages cut
#: off.  It then gives up on them, so that a handler that never answers cannot keep the
#: server from closing (a --workers master kills a worker only a second after that).
HANDLER_GRACE: Final = 3.0
_UNSET: Any = object()


# Each hook, the interface that provides it.  The order is the order of a conversation.
HOOKS: dict[str, Any] = {
    "onConnect": IConnectHandler,
    "onSecure": ISecureHandler,
    "onAuth": IAuthHandler,
    "onMailFrom": IMailFromHandler,
    "onRcptTo": IRcptToHandler,
    "onDataCommand": IDataCommandHandler,
    "onData": IDataHandler,
    "onClose": ICloseHandler,
}


def listenerKind(options: ServerOptions, secure: bool | None) -> str:
    """
    How the log names a listener: C{SMTP} or C{LMTP}, and C{(implicit TLS)} when TLS
    starts at once on it (C{secure}, or the C{secure} option when that is L{None}).
    """
    kind = "LMTP" if options.lmtp else "SMTP"
    return f"{kind} (implicit TLS)" if (options.secure if secure is None else secure) else kind


class _InheritedUNIXPort(unix.Port):
    """
    A listening UNIX socket inherited from the process that bound it, which owns its
    file (the C{--workers} master).  Twisted's port for an adopted socket would, as it
    starts, set the file's mode to its own (0666 unless told otherwise), undoing the
    owner's C{mode=} (and failing with EPERM in a worker that runs as another user, under
    C{twistd --uid}), and would remove the file as it stops, while the owner and the other
    workers still serve on it.  This one leaves the file alone.  Nor does it shut the
    socket down as it stops: C{shutdown()} acts on the socket every process shares (and
    on Linux a listening UNIX socket shut down accepts no more, whoever listens again),
    where closing this process's descriptor is all a worker should do.
    """

    _shouldShutdown = False

    def startListening(self) -> None:
        # unix.Port.startListening for a socket it did not bind, without the chmod.
        port: Any = self
        tcp._reservedFD.reserve()
        port.factory.doStart()
        socketObject, port._preexistingSocket = port._preexistingSocket, None
        socketObject.listen(port.backlog)
        port.connected = True
        port.socket = socketObject
        port.fileno = socketObject.fileno
        port.numberAccepts = 100
        port.startReading()

    def connectionLost(self, reason: object) -> None:
        # unix.Port.connectionLost without removing the file.
        tcp.Port.connectionLost(self, reason)


class SMTPServer(Factory):
    """
    An SMTP or LMTP server.

    Build one with the handlers that decide what it accepts and the options (named as in
    nodemailer's C{smtp-server}; see the options table in the documentation), then
    L{listen}::

        server = SMTPServer([MyHandler()], reactor=reactor, authOptional=True, size=10_000_000)
        await server.listen("tcp:2525:interface=127.0.0.1")

    It is a Twisted protocol factory, so C{endpoint.listen(server)} and
    C{StreamServerEndpointService(endpoint, server)} work too; but stopping such a
    service only stops listening, and the clients stay connected: in an application,
    return L{close}'s Deferred from a service's C{stopService}, which ends them
    gracefully and fires once they are gone.

    @ivar options: the validated L{ServerOptions}.
    @ivar reactor: the reactor the server's timers and listeners use.
    """

    protocol = SMTPProtocol
    # It logs its listeners itself (see listen): not Twisted's "Starting factory" too.
    noisy = False

    def __init__(
        self, handlers: Iterable[object] = (), *, reactor: Any = None, **options: Any
    ) -> None:
        """
        @param handlers: objects providing one or more of the interfaces in
            L{smtpsvc.interfaces}; called in this order.
        @param reactor: the reactor to use (the global one if not given).
        @param options: the server's options; an unknown name raises L{TypeError}, a bad
            value L{ValueError}.
        """
        self.options = ServerOptions.fromMapping(options)
        #: The server's and its connections' events (see the C{logLevel} option).
        self._log = LevelLogger("smtpsvc", LogLevel.levelWithName(self.options.logLevel))
        #: Makes the TLS side of each connection; see L{updateSecureContext}.
        self.tls = ServerTLS(settingsFrom(self.options))
        #: Failed AUTH attempts per client address, shared by every connection.
        self.authThrottle = (
            FailureBudget(self.options.authFailureLimit, self.options.authFailureWindow)
            if self.options.authFailureLimit is not None
            else None
        )
        self.reactor = reactor = reactorOr(reactor)
        self._handlers: list[object] = []
        self._byHook: dict[str, list[Callable[..., object]]] = {hook: [] for hook in HOOKS}
        if any(i.providedBy(handlers) for i in HOOKS.values()):
            raise TypeError(
                f"handlers must be a list of handlers: [{handlers!r}], not {handlers!r}"
            )
        for handler in handlers:
            self.addHandler(handler)
        self._connections: set[SMTPProtocol] = set()
        #: Connections admitted per client address (see clientNetwork), while
        #: maxClientsPerAddress is set.
        self._perAddress: dict[str, int] = {}
        self._resolver: Any = _UNSET
        self._ending = 0
        self._ports: list[IListeningPort] = []
        self._portsStopped = False
        self.closing = False
        self._closeWaiters: list[Deferred[None]] = []
        self._closedAlready = False
        self._forceCall: IDelayedCall | None = None
        self._giveUpCall: IDelayedCall | None = None
        # Connections whose replies leave at the end of this turn of the reactor (an
        # ordered set), and the call that sends them.
        self._unsent: dict[SMTPProtocol, None] = {}
        self._sendCall: IDelayedCall | None = None

    # -- handlers --------------------------------------------------------------------------

    @property
    def handlers(self) -> tuple[object, ...]:
        """
        The registered handlers, in order.
        """
        return tuple(self._handlers)

    def addHandler(self, handler: object) -> None:
        """
        Register one more handler, after the others.

        @raise TypeError: when C{handler} provides none of smtpsvc's interfaces (declare
            them with C{@implementer}).
        """
        hooks = [hook for hook, iface in HOOKS.items() if iface.providedBy(handler)]
        if not hooks:
            if isinstance(handler, type) and any(i.implementedBy(handler) for i in HOOKS.values()):
                raise TypeError(
                    f"{handler!r} is a handler class; register an instance of it: "
                    f"{handler.__name__}()"
                )
            raise TypeError(
                f"{handler!r} provides none of smtpsvc's handler interfaces; declare the ones "
                "it implements with @zope.interface.implementer(IMailFromHandler, ...)"
            )
        methods = []
        for hook in hooks:
            method = getattr(handler, hook, None)
            if not callable(method):
                raise TypeError(
                    f"{handler!r} declares {HOOKS[hook].__name__} but has no {hook} method"
                )
            methods.append((hook, method))
        self._handlers.append(handler)
        for hook, method in methods:
            self._byHook[hook].append(method)

    def _handlersFor(self, hook: str) -> list[Callable[..., object]]:
        return self._byHook[hook]

    # -- connections -----------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> SMTPProtocol:
        protocol = SMTPProtocol(self)
        protocol.factory = self
        return protocol

    @property
    def connectionCount(self) -> int:
        """
        How many clients are connected now.
        """
        return len(self._connections)

    @property
    def connections(self) -> frozenset[SMTPProtocol]:
        """
        The open connections; each has a C{session}.
        """
        return frozenset(self._connections)

    def _sendSoon(self, protocol: SMTPProtocol) -> None:
        # Send what the protocol wrote once the reactor has read from every connection
        # that was ready this turn.  A client that opens many connections (a relay, a
        # load tester) then gets its replies in one burst: waking it up once rather than
        # once per reply is what costs the kernel, and so this server, least.
        self._unsent[protocol] = None
        if self._sendCall is None:
            self._sendCall = self.reactor.callLater(0, self._sendAll)

    def _sendAll(self) -> None:
        self._sendCall = None
        unsent, self._unsent = self._unsent, {}
        for protocol in unsent:
            try:
                protocol._flush()
            except Exception:
                # A bug, but one connection's: the others' replies still go.
                self._log.failure("Sending replies failed", sessionId=protocol.session.id)

    def _connectionMade(self, protocol: SMTPProtocol) -> None:
        self._connections.add(protocol)

    def _addressAdmitted(self, key: str) -> int:
        # One more connection from the client key names; how many it has now.
        count = self._perAddress.get(key, 0) + 1
        self._perAddress[key] = count
        return count

    def _addressLeft(self, key: str) -> None:
        count = self._perAddress.pop(key, 0) - 1
        if count > 0:
            self._perAddress[key] = count

    def _connectionLost(self, protocol: SMTPProtocol) -> None:
        # Its close handlers are yet to run: close() waits for them (_connectionEnded).
        self._connections.discard(protocol)
        self._ending += 1

    def _connectionEnded(self) -> None:
        self._ending -= 1
        self._checkClosed()

    # -- reverse DNS -------------------------------------------------------------------------

    def reverseLookup(self, address: str) -> Deferred[str | None] | None:
        """
        Look up the host name of C{address} (see the C{resolver}, C{reverseLookupTimeout}
        and C{confirmReverseLookup} options).

        A loopback address is not looked up unless the C{resolver} option was given: the
        system's name servers know nothing of C{127.0.0.0/8} or C{::1} (RFC 6303 has them
        answer "no such name"), so the query would only cost a round trip per connection.

        @return: a Deferred of the name or L{None}; or L{None} when no lookup is made (a
            loopback address with the system's resolver, or a reactor without UDP, such
            as a test clock).
        """
        if self.options.resolver is None and isLoopback(address):
            return None
        if self._resolver is _UNSET:
            self._resolver = self.options.resolver or defaultResolver(self.reactor)
        if self._resolver is None:
            return None
        return reverseLookup(
            self._resolver,
            self.reactor,
            address,
            self.options.reverseLookupTimeout,
            self.options.confirmReverseLookup,
        )

    # -- TLS -------------------------------------------------------------------------------

    def updateSecureContext(self, **tlsOptions: Any) -> None:
        """
        Replace certificates and other TLS options, e.g. after a renewal::

            server.updateSecureContext(key=newKey, cert=newCert, sniOptions=newMap)

        The default certificate and the SNI map change together; every handshake after
        this call uses the new ones, connections already open keep theirs.

        @param tlsOptions: any of C{key}, C{cert}, C{ca}, C{sniOptions}, C{SNICallback},
            C{ciphers}, C{minVersion}, C{maxVersion}, C{honorCipherOrder},
            C{requestCert}, C{rejectUnauthorized}.
        @raise TypeError: for another option.
        @raise ValueError: when the new certificates or options cannot be used; the old
            ones then stay in use.
        """
        unknown = set(tlsOptions) - TLS_OPTIONS
        if unknown:
            raise TypeError(f"not a TLS option: {', '.join(sorted(unknown))}")
        options = dataclasses.replace(self.options, **tlsOptions)
        self.tls.update(settingsFrom(options))
        self.options = options
        self._log.info("TLS certificates updated")

    # -- listening and closing -------------------------------------------------------------

    def listen(
        self, endpoint: str | IStreamServerEndpoint, *, secure: bool | None = None
    ) -> Deferred[IListeningPort]:
        """
        Start listening on C{endpoint}, a Twisted endpoint or an endpoint string such as
        C{"tcp:25"}, C{"tcp:2525:interface=127.0.0.1"} or C{"systemd:domain=INET:index=0"}.

        @param secure: whether connections on this endpoint start with TLS (port 465),
            overriding the C{secure} option, so one server can serve 587 and 465.
        @return: a Deferred that fires with the listening port.  For an LMTP server on
            TCP port 25 given as an endpoint object, it fails with L{ValueError} once the
            port has stopped listening again.
        @raise ValueError: for an LMTP server on TCP port 25 (RFC 2033 section 5) given
            as an endpoint string.
        """
        if self.closing:
            raise RuntimeError("the server is closing")
        if not (isinstance(endpoint, str) or callable(getattr(endpoint, "listen", None))):
            raise TypeError(
                "endpoint must be an endpoint string such as 'tcp:2525' or an "
                f"IStreamServerEndpoint, not {endpoint!r}"
            )
        if isinstance(endpoint, str):
            self._checkPort(listeningPort(endpoint))
        target: IStreamServerEndpoint = (
            serverFromString(self.reactor, endpoint) if isinstance(endpoint, str) else endpoint
        )
        d = target.listen(self.factoryFor(secure))

        def listening(port: IListeningPort) -> IListeningPort | Deferred[IListeningPort]:
            # An endpoint object tells where it listens only once it does.
            address = port.getHost()
            tcp = isinstance(address, (IPv4Address, IPv6Address)) and address.type == "TCP"
            try:
                self._checkPort(getattr(address, "port", None) if tcp else None)
            except ValueError as e:
                refused = e

                def refuse(ignored: object) -> IListeningPort:
                    raise refused

                # Fail only once the port is closed, so nothing is left listening.
                stopping = maybeDeferred(port.stopListening)
                stopping.addErrback(
                    lambda f: self._log.failure("Cannot stop the refused LMTP listener", f)
                )
                return stopping.addCallback(refuse)
            self._ports.append(port)
            kind = listenerKind(self.options, secure)
            if isinstance(address, UNIXAddress):
                self._log.info(
                    "{kind} server listening on {path}",
                    kind=kind,
                    path=os.fsdecode(address.name or b""),
                )
            else:
                host, number = getattr(address, "host", address), getattr(address, "port", "")
                self._log.info(
                    "{kind} server listening on {address}",
                    kind=kind,
                    address=hostPort(host, number),
                    host=host,
                    port=number,
                )
            return port

        return d.addCallback(listening)

    def adopt(self, fd: int, *, secure: bool | None = None) -> IListeningPort:
        """
        Serve on the listening socket C{fd} (inherited from another process, such as the
        master of C{twist smtpsvc --workers}); L{close} stops listening on it as on the
        endpoints of L{listen}.

        @param secure: as for L{listen}.
        @raise ValueError: as for L{listen}.
        """
        if self.closing:
            raise RuntimeError("the server is closing")
        with socket.socket(fileno=os.dup(fd)) as probe:
            family = probe.family
            if family in (socket.AF_INET, socket.AF_INET6):
                self._checkPort(probe.getsockname()[1])
        # Twisted requires it, and a blocking socket would stall the reactor on the first
        # read that finds nothing (a TLS handshake makes such reads).
        os.set_blocking(fd, False)
        factory = self.factoryFor(secure)
        port: IListeningPort
        if family == socket.AF_UNIX:
            port = _InheritedUNIXPort._fromListeningDescriptor(  # type: ignore[no-untyped-call]
                self.reactor, fd, factory
            )
            port.startListening()
        else:
            port = self.reactor.adoptStreamPort(fd, family, factory)
        self._ports.append(port)
        return port

    def _checkPort(self, port: int | None) -> None:
        if self.options.lmtp and port == 25:
            # RFC 2033 section 5: LMTP MUST NOT be offered on the SMTP port.
            raise ValueError("an LMTP server must not listen on TCP port 25 (RFC 2033)")

    def factoryFor(self, secure: bool | None) -> Factory:
        """
        The protocol factory for a listener: the server itself, or, when C{secure}
        differs from the C{secure} option, one that sets the TLS mode of its connections.
        """
        if secure is None or secure == self.options.secure:
            return self
        return _Listener(self, secure)

    def close(self) -> Deferred[None]:
        """
        Stop listening and end every connection.

        Clients with nothing in progress get C{421 Server shutting down} at once; clients
        in a transaction may finish it, and get the 421 at their next command.  After
        C{closeTimeout} seconds the remaining ones get the 421 and are closed whatever
        they are doing (a message not yet answered is not lost: the client has no 250),
        except that a message received whole gets its handlers' reply before the 421, if
        they answer within a second.

        @return: a Deferred that fires once no connection is left and every close handler
            has run (and every data handler of a message cut off has answered), or, should
            a handler not answer, at most C{closeTimeout} plus 4 seconds after the call,
            with a warning.  Calling it again returns a Deferred for the same moment.
        """
        waiter: Deferred[None] = Deferred()
        if self._closedAlready:
            waiter.callback(None)
            return waiter
        self._closeWaiters.append(waiter)
        if self.closing:
            return waiter
        self.closing = True
        self._log.info(
            "Server closing with {count} connection(s), waiting {timeout} seconds",
            count=len(self._connections),
            timeout=self.options.closeTimeout,
        )
        stops = [maybeDeferred(port.stopListening) for port in self._ports]

        def stopped(_: object) -> None:
            self._portsStopped = True
            self._checkClosed()

        gatherResults(stops).addBoth(stopped)
        force = self.options.closeTimeout == 0
        for protocol in list(self._connections):
            protocol.shutDown(force=force)
        if self._connections and not force:
            self._forceCall = self.reactor.callLater(self.options.closeTimeout, self._force)
        if not self._closedAlready:
            self._giveUpCall = self.reactor.callLater(
                self.options.closeTimeout + ABORT_DELAY + HANDLER_GRACE, self._giveUp
            )
        return waiter

    def _force(self) -> None:
        self._forceCall = None
        for protocol in list(self._connections):
            protocol.shutDown(force=True)
        # Clients that do not read cannot be told; give them a moment, then cut them off
        # (unless all are gone by then: _closed cancels this next step).
        self._forceCall = self.reactor.callLater(ABORT_DELAY, self._abortRemaining)

    def _abortRemaining(self) -> None:
        self._forceCall = None
        for protocol in list(self._connections):
            protocol.cutOff()

    def _giveUp(self) -> None:
        self._giveUpCall = None
        self._log.warn(
            "Closing the server without waiting any longer for the handlers of {count} "
            "connection(s)",
            count=self._ending + len(self._connections),
        )
        self._closed()

    def _checkClosed(self) -> None:
        if (
            self.closing
            and not self._closedAlready
            and self._portsStopped
            and not self._connections
            and not self._ending
        ):
            self._log.info("Server closed")
            self._closed()

    def _closed(self) -> None:
        for call in (self._forceCall, self._giveUpCall):
            if call is not None and call.active():
                call.cancel()
        self._forceCall = self._giveUpCall = None
        self._closedAlready = True
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)


# The options updateSecureContext may change: the TLS settings, but not the name, which
# the rest of the server uses too.
TLS_OPTIONS = frozenset(TLS_SETTING_NAMES) - {"name"}


class _Listener(Factory):
    """
    The server's factory for one listener whose TLS mode differs from the option.
    """

    # The server logs its listeners itself (see SMTPServer.listen).
    noisy = False

    def __init__(self, server: SMTPServer, secure: bool) -> None:
        self._server = server
        self._secure = secure

    def logPrefix(self) -> str:
        # Twisted's own line for a port that starts listening is named after this.
        return type(self._server).__name__

    def buildProtocol(self, addr: IAddress | None) -> SMTPProtocol:
        protocol = self._server.buildProtocol(addr)
        protocol.implicitTLS = self._secure
        return protocol
