"""
The Twisted side of one connection: bytes in, core actions out, handlers called.

L{SMTPProtocol} is a L{LineReceiver}.  In line mode it cuts the input at CRLF (and only
there) and hands each line to the core; in raw mode, during DATA, it hands whole chunks to
the L{DataDecoder} (after BDAT, exactly the chunk's bytes to the L{ChunkDecoder}), so a
message costs no per-line Python work.  Everything the protocol does is one of: feed the
core, carry out the action it returns, call the handlers it asks for, write what it says.

Input is paused (L{pauseProducing}) for as long as any of these holds, each a separate
reason so that one ending does not lift another: a handler's answer is pending (so
pipelined commands are answered in order), the client is not reading our replies (we are
the transport's producer), a data handler has too much unread message, or the protocol is
letting other connections run after a long batch of pipelined commands.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from OpenSSL import SSL
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ._core._connection import (
    Action,
    CheckAuth,
    CheckMail,
    CheckRcpt,
    CheckXClient,
    Outcome,
    ReadChunk,
    Send,
    ServerConnection,
    StartData,
    StartTLS,
    normalizeDataResult,
)
from ._core._data import ChunkDecoder, DataDecoder
from ._core._proxy import ProxyError, ProxyHeaderParser, looksLikeProxyHeader
from ._core._replies import AUTH_TEMPORARY_ERROR, CONNECT_HANDLER_FAILED, HANDLER_FAILED_ERROR
from ._core._sasl import AuthRequest
from ._core._session import Address, Envelope, Session
from ._core._states import State
from ._core._throttle import clientNetwork
from ._core._xclient import isTrusted
from ._errors import SMTPError
from ._logging import hostPort
from ._stream import (
    MessageAborted,
    MessageDone,
    MessageRefused,
    MessageStream,
    MessageTooLarge,
    _FanOut,
)
from ._tls import connectionInfo

if TYPE_CHECKING:
    from ._server import SMTPServer

_log: Final = Logger(namespace="smtpsvc")
_T = TypeVar("_T")


# Lines handled in one go before letting the reactor serve other connections.
_LINES_PER_TURN: Final = 100
# The reasons to stop reading that are the server's own wait: the reply to the client's
# last command is ours to give, or ("stream") a data handler has not taken what came of
# the message yet.  While one holds, the client is waiting for us and the idle timeout
# does not run (see _checkIdle); handlerTimeout bounds the handlers' part.
_SERVER_WAITS: Final = frozenset({"handler", "delay", "data", "stream"})
# The pauses under which the connection reads on after a message's end (see
# _holdTransport): not while the client does not read our replies ("writer").
_AFTER_A_MESSAGE: Final = frozenset({"data", "stream"})
# How much a socket transport reads at a time while a large message comes in, once
# more of it than Twisted's default read of 64 KB has come (in one read or, over TLS,
# which hands on at most 32 KB at a time, in several): fewer turns of the reactor per MB.
# (Not for every message: each read allocates that much first, which where malloc maps
# such sizes afresh costs a small message more than its whole reading.)
_DATA_READ_SIZE: Final = 256 * 1024
_DEFAULT_READ_SIZE: Final = FileDescriptor.bufferSize
# How much of what a client sends after its message's end is read (and kept) while the
# reply to the message is awaited (see _holdTransport).
_READ_ON_LIMIT: Final = 16 * 1024
# How long a TLS connection we close waits for the client's close_notify.
_TLS_CLOSE_GRACE: Final = 2.0
# Stream errors a data handler may let through without it being a bug.
_MESSAGE_ENDINGS: Final = (MessageAborted, MessageTooLarge, MessageRefused)


# What a chain of handlers decided: the value the decisive one gave (callFirst's user), and
# the refusal, if one refused.
_Decision = tuple[object, SMTPError | None]


def _inTurn(
    calls: Sequence[Callable[[], object]],
    hooks: Sequence[str],
    session: Session,
    unexpected: SMTPError,
    decisive: bool,
) -> _Decision | Deferred[_Decision]:
    # Call each of `calls` (hooks[i] names calls[i]'s hook in the log) in order until
    # one refuses (an SMTPError, raised or returned) or, when `decisive`, one returns
    # anything but None.  A handler that fails otherwise is logged and the answer is
    # `unexpected`.  Synchronous while every handler is: no Deferred is made on that
    # path, the common one.
    for index, call in enumerate(calls):
        try:
            result = call()
        except SMTPError as e:
            return None, e
        except BaseException:
            # BaseException: asyncio's CancelledError is one, and a coroutine's gets 451
            # too (as a data handler's does).
            _logHandlerFailure(Failure(), hooks[index], session)
            return None, unexpected
        if isinstance(result, Deferred) or inspect.iscoroutine(result):
            return _afterPending(
                result, calls[index + 1 :], hooks[index:], session, unexpected, decisive
            )
        if result is not None and _misanswered(result, hooks[index], session):
            return None, unexpected
        decision = _decided(result, decisive)
        if decision is not None:
            return decision
    return None, None


def _decided(result: object, decisive: bool) -> _Decision | None:
    # What one handler's answer decides, or None to ask the next.  A returned SMTPError
    # refuses as a raised one does (an easy slip, as data handlers return theirs in
    # LMTP).  For a decisive chain (AUTH), anything but None decides: a user, or, for
    # False, 0 or an empty string (say a password check's answer), a refusal, as in the
    # reference, which takes any false user for "credentials invalid".
    if isinstance(result, SMTPError):
        return None, result
    if not decisive or result is None:
        return None
    try:
        # Any false user: an empty list included, which is what a database query that
        # found no one gives (API QA: it logged the client in).
        false = not result
    except Exception:
        # A user that cannot say whether it is one is none.
        false = True
    if false:
        return None, None
    return result, None


def _misanswered(result: object, hook: str, session: Session, pending: bool = True) -> bool:
    """
    Whether a handler's answer is one still to come in a form not taken (a generator, an
    asynchronous generator, an awaitable that is neither a coroutine nor a Deferred; or,
    unless C{pending}, any of those: the value a Deferred or a coroutine gave, which is
    not waited for again): such a handler's decision would never be known, so it is a
    handler failure, logged (the reply is the one for a failed handler), not an answer
    to take as given.
    """
    if isinstance(result, Deferred) or inspect.iscoroutine(result):
        if pending:
            return False
        why = (
            f"a {type(result).__name__} as the result of its Deferred or coroutine, "
            "which is not waited for (is an await missing?)"
        )
    elif inspect.isasyncgen(result):
        why = "an asynchronous generator, not a Deferred or a coroutine (is a yield there?)"
    elif inspect.isgenerator(result):
        why = "a generator, not a Deferred or a coroutine (is @inlineCallbacks missing?)"
    elif inspect.isawaitable(result):
        why = (
            f"an awaitable {type(result).__name__}, not a Deferred or a coroutine (wrap "
            "it: Deferred.fromFuture for an asyncio future, or an async def that awaits it)"
        )
    else:
        return False
    if inspect.iscoroutine(result) or inspect.isgenerator(result):
        # Never to run: closed, rather than left for a warning when collected (the log
        # says what is wrong).
        result.close()
    _logHandlerFailure(Failure(TypeError(f"{hook} returned {why}")), hook, session)
    return True


def _afterPending(
    pending: object,
    rest: Sequence[Callable[[], object]],
    hooks: Sequence[str],
    session: Session,
    unexpected: SMTPError,
    decisive: bool,
) -> Deferred[_Decision]:
    # One handler (hooks[0] names its hook) answered with a Deferred or a coroutine: the
    # chain goes on (or stops) once it fires.
    def answered(value: object) -> _Decision | Deferred[_Decision]:
        if value is not None and _misanswered(value, hooks[0], session, pending=False):
            return None, unexpected
        decision = _decided(value, decisive)
        if decision is not None:
            return decision
        return _inTurn(rest, hooks[1:], session, unexpected, decisive)

    def failed(failure: Failure) -> _Decision:
        if isinstance(failure.value, SMTPError):
            return None, failure.value
        _logHandlerFailure(failure, hooks[0], session)
        return None, unexpected

    chained: Deferred[_Decision] = _ensureDeferred(pending).addCallbacks(answered, failed)
    return chained


def _refusalOf(decision: _Decision) -> SMTPError | None:
    return decision[1]


def callChain(
    calls: Sequence[Callable[[], object]],
    hook: str | Sequence[str],
    session: Session,
    unexpected: SMTPError = HANDLER_FAILED_ERROR,
) -> SMTPError | Deferred[SMTPError | None] | None:
    """
    Call each of C{calls} in order until one refuses: raises an L{SMTPError}, or
    returns one.

    @param hook: the name of the hook the calls are of, for the log; or one name per
        call.
    @param unexpected: the refusal when a handler fails otherwise (which is logged).
    @return: the first refusal, or L{None} when all accepted; synchronously when every
        handler answered synchronously (no Deferred is made on that path), else a
        Deferred.
    """
    hooks = [hook] * len(calls) if isinstance(hook, str) else hook
    decision = _inTurn(calls, hooks, session, unexpected, decisive=False)
    if isinstance(decision, Deferred):
        return decision.addCallback(_refusalOf)
    return decision[1]


def callFirst(
    calls: Sequence[Callable[[], object]], session: Session
) -> _Decision | Deferred[_Decision]:
    """
    Ask authentication handlers in order: the first that returns a user (any object but
    L{None} that is not false) accepts; an L{SMTPError} (raised or returned) refuses, and
    so does any false value (credentials invalid); L{None} passes to the next.  A
    handler that fails unexpectedly is logged and the client gets a temporary 454 (RFC
    4954 section 6: the authentication backend is unavailable).

    @return: (user, refusal), synchronously when every handler answered synchronously;
        (L{None}, L{None}) when no handler accepted or refused.
    """
    return _inTurn(calls, ["onAuth"] * len(calls), session, AUTH_TEMPORARY_ERROR, decisive=True)


def _userName(user: object) -> str:
    # What the log shows for an authenticated user: its name if it has one.
    for attribute in ("username", "name", "avatarId"):
        value = getattr(user, attribute, None)
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, str):
            return value
    return user if isinstance(user, str) else type(user).__name__


def _callLogged(handler: Callable[[Session], object], session: Session) -> object:
    try:
        result = handler(session)
    except BaseException:
        _logHandlerFailure(Failure(), "onClose", session)
        return None
    if result is not None and _misanswered(result, "onClose", session):
        return None
    return result


def _ensureDeferred(result: object) -> Deferred[Any]:
    if isinstance(result, Deferred):
        return result
    assert isinstance(result, Coroutine)
    return Deferred.fromCoroutine(result)


def _handshakeFailure(reason: Failure) -> str:
    # Why a TLS handshake failed, in words: OpenSSL's reasons rather than the repr of its
    # error queue ("[('SSL routines', '', 'unsupported protocol')]").
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        texts = [
            str(item[-1] or item[0]) if isinstance(item, tuple) and item else str(item)
            for item in error.args[0]
        ]
        if texts:
            return "; ".join(texts)
    return reason.getErrorMessage()


def _resultText(send: Send) -> str:
    # A message's final reply (replies, in LMTP) as its log line gives it.
    return send.data.decode("ascii", "replace").rstrip("\r\n")


def _logHandlerFailure(failure: Failure, hook: str, session: Session) -> None:
    # At critical level, as Logger.failure logs: every logLevel keeps it.
    _log.failure(
        "Handler failed in {hook} for session {sessionId}",
        failure,
        hook=hook,
        sessionId=session.id,
    )


class _DataTransaction:
    """
    One message on its way in: the decoder, the handlers' streams, their answers, and the
    rule that handler N sees the message end only after handlers 0..N-1 accepted it.
    """

    def __init__(
        self, protocol: SMTPProtocol, decoder: DataDecoder | ChunkDecoder, slots: int
    ) -> None:
        self.protocol = protocol
        self.decoder = decoder
        self.slots = slots
        self.fanOut = _FanOut(pause=protocol._streamFull, resume=protocol._streamDrained)
        self.answers: list[tuple[Outcome, ...] | None] = []
        self.started = protocol._reactor.seconds()
        session = protocol._core.session
        # The transaction's number in the session, as its Received id has it (the core
        # counts on to the next one once the message has its final reply).
        self.number = session.transaction
        # Who sent it, for its log line: an XFORWARD client, which the final reply
        # forgets, as much as the connection's.
        self.client = (session.clientHostname, session.remoteAddress)
        self.ended = False
        self.early = False
        self.failure: BaseException | None = None
        self.aborted = False
        # Called once every handler has answered a message that was aborted.
        self._onSettled: list[Callable[[], None]] = []
        self._nextToEnd = 0
        # Whether a handler refused the message for every recipient.
        self._refused = False
        self._finished = False
        self._taggedTLSOptional = False
        # RFC 8689 section 4.1: a TLS-Required: No header field tags the message, unless
        # MAIL FROM carried REQUIRETLS, which makes the field be ignored.
        if not session.envelope.requireTLS:
            decoder.watchTLSRequired()

    def start(self, handlers: Sequence[Callable[[MessageStream, Session], object]]) -> None:
        session = self.protocol._core.session
        for index, onData in enumerate(handlers):
            stream = self.fanOut.newStream(partial(self._readerFailed, index))
            if self._refused:
                # An earlier handler refused already, from inside its call.
                stream.finish(MessageRefused("refused by an earlier handler"))
            self.answers.append(None)
            self._call(index, onData, stream, session)

    def _call(
        self,
        index: int,
        onData: Callable[[MessageStream, Session], object],
        stream: MessageStream,
        session: Session,
    ) -> None:
        try:
            result = onData(stream, session)
        except BaseException as e:
            self._answered(index, self._fromException(Failure(e)))
            return
        if isinstance(result, Deferred) or inspect.iscoroutine(result):
            _ensureDeferred(result).addCallbacks(
                lambda value: self._answered(index, self._fromValue(value)),
                lambda failure: self._answered(index, self._fromException(failure)),
            )
        else:
            self._answered(index, self._fromValue(result))

    def _fromValue(self, value: object) -> tuple[Outcome, ...]:
        protocol = self.protocol
        try:
            return normalizeDataResult(value, self.slots, protocol._options.lmtp)
        except ValueError:
            _logHandlerFailure(Failure(), "onData", protocol._core.session)
            return (HANDLER_FAILED_ERROR,) * self.slots

    def _fromException(self, failure: Failure) -> tuple[Outcome, ...]:
        if isinstance(failure.value, SMTPError):
            return (failure.value,) * self.slots
        if not isinstance(failure.value, _MESSAGE_ENDINGS):
            # A handler that lets its stream's ending through is not a bug.
            _logHandlerFailure(failure, "onData", self.protocol._core.session)
        return (HANDLER_FAILED_ERROR,) * self.slots

    def _readerFailed(self, index: int, failure: Failure) -> None:
        # The protocol handler index gave deliverBody raised: the handler failed, whatever
        # it answers later (if it ever does).
        self._answered(index, self._fromException(failure))

    def _answered(self, index: int, outcomes: tuple[Outcome, ...]) -> None:
        if self.answers[index] is not None:
            # A handler whose reader failed answered after all: too late.
            return
        self.answers[index] = outcomes
        streams = self.fanOut.streams
        streams[index].abandon()
        if self.failure is None and all(isinstance(o, SMTPError) for o in outcomes):
            # The first refusal stops the chain: later handlers never see the end, those
            # not yet called included (see start).  (A message that already failed has
            # told every handler why.)
            self._refused = True
            for later in streams[index + 1 :]:
                later.finish(MessageRefused("refused by an earlier handler"))
        self._advance()

    def write(self, chunk: bytes) -> None:
        decoder = self.decoder
        fanOut = self.fanOut
        fanOut.byteLength = decoder.byteLength
        if self.failure is not None:
            return
        if decoder.tlsRequiredNo and not self._taggedTLSOptional:
            # Before the bytes that completed the field reach the handlers.
            self._tagTLSOptional()
        if decoder.sizeExceeded:
            fanOut.sizeExceeded = True
            self.fail(MessageTooLarge(f"message exceeds {self.protocol._options.size} bytes"))
        elif decoder.rejected:
            self.fail(MessageRefused("bare CR or LF in message"))
        elif decoder.loop:
            self.fail(MessageRefused("mail loop: too many Received header fields"))
        elif chunk:
            fanOut.write(chunk)

    def fail(self, reason: BaseException) -> None:
        self.failure = reason
        self.fanOut.failAll(reason)

    def end(self, early: bool = False) -> None:
        """
        The client has sent all it will of the message; C{early} if that is a BDAT
        chunk before the last, on which the message failed.
        """
        self.ended = True
        self.early = early
        decoder = self.decoder
        if self.failure is None and not self._taggedTLSOptional:
            # A message that is all header: its last field ends with it.
            decoder.finishHeader()
            if decoder.tlsRequiredNo:
                self._tagTLSOptional()
        if self.failure is None and not early:
            # The client waits from now on, for every handler's answer.
            self.fanOut.ended()
        self._advance()

    def _tagTLSOptional(self) -> None:
        # The envelope is frozen: the session gets a tagged copy, which handlers see from
        # now on (at the latest when their stream ends).  The message is not changed.
        self._taggedTLSOptional = True
        session = self.protocol._core.session
        session.envelope = replace(session.envelope, tlsRequiredNo=True)

    def abort(self, why: str) -> None:
        self.aborted = True
        self.fail(MessageAborted(why))

    @property
    def settled(self) -> bool:
        """
        Whether every data handler of the message has answered.
        """
        return None not in self.answers

    def whenSettled(self, settled: Callable[[], None]) -> None:
        """
        Call C{settled} once every handler of this aborted message, which is not yet
        L{settled}, has answered (after the calls asked for before it).
        """
        self._onSettled.append(settled)

    def _advance(self) -> None:
        if self.aborted:
            if self._onSettled and self.settled:
                calls, self._onSettled = self._onSettled, []
                for settled in calls:
                    settled()
            return
        if self._finished:
            return
        if self.ended and self.failure is None:
            streams = self.fanOut.streams
            while self._nextToEnd < len(streams):
                index = self._nextToEnd
                if index > 0 and self.answers[index - 1] is None:
                    break
                # Counted before the stream ends: a handler may answer from inside
                # finish (a reader that fires the handler's Deferred on MessageDone), and
                # that answer runs this loop again, from the next stream on.
                self._nextToEnd = index + 1
                streams[index].finish(MessageDone())
        if self.ended and self.settled and not self._finished:
            self._finished = True
            self.protocol._dataFinished(self)


@implementer(IPushProducer, IHandshakeListener, IHalfCloseableProtocol)
class SMTPProtocol(LineReceiver):
    """
    One SMTP or LMTP connection.  Build it through L{smtpsvc.SMTPServer}, which is its
    factory.

    @ivar implicitTLS: whether the connection starts with a TLS handshake (port 465).
    """

    delimiter = b"\r\n"

    # Thousands of these may sit idle at once: slots keep each one small.  (Over 30
    # attributes, CPython gives an instance a dictionary of its own, 1.5 KB more.)  The
    # slots include the attributes Protocol and LineReceiver set on their instances, which
    # __init__ therefore sets first.
    __slots__ = (
        "_abortCall",
        "_accepted",
        "_buffer",
        "_busyReceiving",
        "_chain",
        "_chunk",
        "_chunkLeft",
        "_closeWhenFlushed",
        "_closed",
        "_connectedAt",
        "_core",
        "_countedAs",
        "_data",
        "_delayCall",
        "_discardHead",
        "_discardingLine",
        "_disconnected",
        "_goodbyeAfterReply",
        "_greetCall",
        "_greeted",
        "_handlerCall",
        "_handlerPending",
        "_handshakes",
        "_lastActivity",
        "_lineStarted",
        "_options",
        "_out",
        "_pausedAt",
        "_pauses",
        "_pos",
        "_proxyCall",
        "_proxyParser",
        "_proxyPeer",
        "_proxyWatch",
        "_rateStarted",
        "_reactor",
        "_readClosed",
        "_refused",
        "_replyAwaited",
        "_server",
        "_settling",
        "_socket",
        "_timeoutCall",
        "_tlsPending",
        "_transportPaused",
        "_turnCall",
        "connected",
        "factory",
        "implicitTLS",
        "line_mode",
        "paused",
        "transport",
    )

    def __init__(self, server: SMTPServer) -> None:
        self.transport = None
        self.connected = 0
        self.factory = None
        self.line_mode = 1
        self.paused = False
        self._busyReceiving = False
        self._server = server
        self._options = server.options
        self._reactor = server.reactor
        self._log = server._log
        self._core: ServerConnection
        self._buffer = b""
        self._pos = 0
        self._discardingLine = False
        self._discardHead = b""
        # The reasons input is paused (a list: there are few, and an empty set is large).
        self._pauses: list[str] = []
        self._transportPaused = False
        # Whether the client has closed its side (see readConnectionLost).
        self._readClosed = False
        self._socket: socket.socket | None = None
        self._out: list[bytes] = []
        self._data: _DataTransaction | None = None
        # The BDAT chunk being read, and how many of its bytes are still to come.
        self._chunk: ReadChunk | None = None
        self._chunkLeft = 0
        self._greeted = False
        # Set when the server must close while a received message's handlers decide: the
        # goodbye follows their reply (see shutDown).
        self._goodbyeAfterReply = False
        self._closed = False
        # The client as maxClientsPerAddress counts it, once counted.
        self._countedAs: str | None = None
        # Whether the connection closes once the replies waiting for the end of the turn
        # have gone (see _closeAfterWrite).
        self._closeWhenFlushed = False
        self._disconnected = False
        self._handlerPending = False
        # The handlers of a command (or of the connection) still deciding: see
        # _pendingHandlers.
        self._chain: Deferred[Any] | None = None
        # A message that was aborted while its data handlers had yet to answer, until
        # they have.
        self._settling: _DataTransaction | None = None
        # Whether the client must wait for a reply that a handler (or the AUTH failure
        # delay) holds back, under forbidUnauthPipelining.
        self._replyAwaited = False
        self._lastActivity = 0.0
        # When the first byte of a command line not yet complete was read (None: there is
        # no such line, or input is paused), for the deadline that stops trickling.
        self._lineStarted: float | None = None
        # When the message being received began, moved later by the time the server did
        # not read (None: no message), for minDataRate.
        self._rateStarted: float | None = None
        # When reading was last paused (see _pause).
        self._pausedAt = 0.0
        self._connectedAt = 0.0
        self._accepted = 0
        self._refused = 0
        self._timeoutCall: IDelayedCall | None = None
        self._greetCall: IDelayedCall | None = None
        self._turnCall: IDelayedCall | None = None
        self._abortCall: IDelayedCall | None = None
        self._delayCall: IDelayedCall | None = None
        # Due when the handlers the client waits for have had handlerTimeout seconds.
        self._handlerCall: IDelayedCall | None = None
        self._tlsPending = False
        self._handshakes = 0
        self._proxyParser: ProxyHeaderParser | None = None
        # Whether the client's first bytes are still to be looked at for a PROXY header
        # it is not trusted to send (see dataReceived).
        self._proxyWatch = False
        self._proxyPeer = ""
        self._proxyCall: IDelayedCall | None = None
        self.implicitTLS = server.options.secure

    @property
    def session(self) -> Session:
        """
        The session handlers see.
        """
        return self._core.session

    # -- connection life cycle -------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        peer, host = transport.getPeer(), transport.getHost()
        session = Session(
            localAddress=_host(host),
            localPort=getattr(host, "port", 0),
            remoteAddress=_host(peer),
            remotePort=getattr(peer, "port", 0),
            # A client on a UNIX socket (an LMTP front on this host) is local, named as
            # Postfix names one: localhost [127.0.0.1].
            clientHostname="" if isinstance(peer, (IPv4Address, IPv6Address)) else "localhost",
            # ServerConnection gives it its own at once.
            envelope=_PLACEHOLDER_ENVELOPE,
        )
        self._socket = _writableSocket(transport)
        self._core = ServerConnection(
            self._options,
            session,
            # STARTTLS is offered only where the transport can start TLS: a TCP
            # connection can, a pipe or a test's StringTransport cannot.
            # (A plain TCP transport is one: _writableSocket made sure of it.)
            tlsAvailable=self._socket is not None or ITLSTransport(transport, None) is not None,
            authHandlers=bool(self._server._handlersFor("onAuth")),
            throttle=self._server.authThrottle,
            now=self._reactor.seconds,
        )
        self._proxyPeer = session.remoteAddress
        self._server._connectionMade(self)
        self._consumer().registerProducer(self, True)
        self._lastActivity = self._connectedAt = self._reactor.seconds()
        if self._options.socketTimeout:
            self._timeoutCall = self._reactor.callLater(
                self._options.socketTimeout, self._checkIdle
            )
        # No log line yet: the connection's one line is written when it closes.

        if self._options.useProxy:
            if isTrusted(self._options.useProxy, session.remoteAddress):
                # The proxy's header comes first, in clear, even before a TLS handshake.
                self._proxyParser = ProxyHeaderParser()
                self._proxyCall = self._reactor.callLater(
                    self._options.proxyTimeout, self._proxyTimedOut
                )
                return
            self._proxyWatch = True
        self._afterProxy(b"")

    def _consumer(self) -> IConsumer:
        # A plain TCP transport is its own consumer (_writableSocket made sure of it):
        # no adaptation per connection to find that out again.
        transport = self.transport
        return cast(IConsumer, transport) if self._socket is not None else IConsumer(transport)

    def _afterProxy(self, rest: bytes) -> None:
        # The client's address is known now (the PROXY header's, or the peer's).
        perAddress = self._options.maxClientsPerAddress
        if perAddress is not None:
            address = self._core.session.remoteAddress
            self._countedAs = key = clientNetwork(address)
            if self._server._addressAdmitted(key) > perAddress:
                if self.implicitTLS:
                    # Counted before its handshake, which could hold a slot of maxClients
                    # until socketTimeout; and nothing can be said in clear here.
                    self._log.info(
                        "Closing connection from {remoteAddress}: too many connections "
                        "from its address",
                        sessionId=self._core.session.id,
                        remoteAddress=address,
                    )
                    self._closed = True
                    self.transport.abortConnection()  # type: ignore[union-attr]
                else:
                    self._perform(self._core.tooManyFromAddress(address))
                return
        if self.implicitTLS:
            # Implicit TLS: nothing is said in clear; the rest waits for the handshake.
            self._startTLS()
            if rest:
                # What followed the PROXY header is the start of the TLS handshake.
                self.transport.protocol.dataReceived(rest)  # type: ignore[union-attr]
            return
        self._admit()
        if rest:
            # An SMTP command sent along with the header talks before the greeting.
            self.dataReceived(rest)

    def _proxyReceived(self, data: bytes) -> None:
        parser = self._proxyParser
        assert parser is not None
        session = self._core.session
        try:
            result = parser.feed(data)
        except ProxyError as e:
            self._proxyFailed(f"bad PROXY header: {e}")
            return
        if result is None:
            return
        header, rest = result
        self._proxyParser = None
        if self._proxyCall is not None and self._proxyCall.active():
            self._proxyCall.cancel()
        self._proxyCall = None
        session.proxy = header
        if header.relayed:
            session.remoteAddress = header.sourceAddress or session.remoteAddress
            session.remotePort = header.sourcePort or 0
            session.clientHostname = f"[{session.remoteAddress}]"
            session.localAddress = header.destinationAddress or session.localAddress
            session.localPort = header.destinationPort or session.localPort
        self._log.info(
            "PROXY v{version} {command} from {proxy}: client {client}",
            sessionId=session.id,
            version=header.version,
            command=header.command,
            proxy=self._proxyPeer,
            client=hostPort(session.remoteAddress, session.remotePort),
            remoteAddress=session.remoteAddress,
            remotePort=session.remotePort,
        )
        self._afterProxy(rest)

    def _proxyTimedOut(self) -> None:
        self._proxyCall = None
        self._proxyFailed("no PROXY header in time")

    def _proxyFailed(self, why: str) -> None:
        # No SMTP reply: the peer is a load balancer that spoke wrongly, or a spoofer.
        self._log.warn(
            "Closing connection from {peer}: {why}",
            sessionId=self._core.session.id,
            peer=self._proxyPeer,
            why=why,
        )
        self._proxyParser = None
        self._closed = True
        assert self.transport is not None
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _admit(self) -> None:
        # The checks and the delay before the greeting, once any implicit TLS is up.
        limit = self._options.maxClients
        if limit is not None and self._server.connectionCount > limit:
            self._perform(self._core.tooManyClients())
            return
        if self._server.closing:
            self._perform(self._core.shutDown())
            return
        delay = self._options.earlyTalkerDelay
        if delay > 0:
            self._greetCall = self._reactor.callLater(delay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        self._greetCall = None
        if not self._options.disableReverseLookup:
            lookup = self._server.reverseLookup(self._core.session.remoteAddress)
            if lookup is not None:
                self._handlerPending = True
                lookup.addCallback(self._lookedUp)
                return
        self._connectHandlers()

    def _lookedUp(self, name: str | None) -> None:
        self._handlerPending = False
        if self._closed:
            return
        if name is not None:
            self._core.session.clientHostname = name
        self._connectHandlers()

    def _connectHandlers(self) -> None:
        calls = self._connectCalls()
        hooks = ["onConnect"] * len(calls)
        if self.implicitTLS:
            # As in the reference: onConnect, then onSecure, then the greeting.
            secure = self._secureCalls()
            calls += secure
            hooks += ["onSecure"] * len(secure)
        # A handler that fails unexpectedly leaves no service to give: 421, and the
        # connection closes (a greeting may only be 220 or 554, RFC 5321 section 4.3.2,
        # and 421 may come at any time).
        result = callChain(calls, hooks, self._core.session, CONNECT_HANDLER_FAILED)
        if isinstance(result, Deferred):
            self._pendingHandlers(result)
            self._handlerPending = True
            self._awaitHandlers()
            result.addCallback(self._greeting)
        else:
            self._greeting(result)

    def _greeting(self, error: SMTPError | None) -> None:
        self._handlerPending = False
        self._handlersAnswered()
        if self._closed:
            return
        if error is not None:
            self._perform(self._core.refuseConnection(error))
            if not self._closed:
                # Refused, but not with 421: the client may still say QUIT (RFC 5321
                # section 3.1), and gets 503 for anything else.
                self._greeted = True
                self._process()
            return
        if self._core.closing:
            # The server began to close while this client waited for its greeting.
            self._perform(self._core.shutDown())
            return
        self._greeted = True
        self._perform(self._core.greeting())
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disconnected = True
        self._closed = True
        for call in (
            self._timeoutCall,
            self._greetCall,
            self._turnCall,
            self._abortCall,
            self._delayCall,
            self._proxyCall,
            self._handlerCall,
        ):
            if call is not None and call.active():
                call.cancel()
        self._timeoutCall = self._greetCall = self._turnCall = None
        self._abortCall = self._delayCall = self._proxyCall = self._handlerCall = None
        self._abortData()
        session = self._core.session
        if self._tlsPending:
            # (Not when we cut the handshake off ourselves: see _cutHandshake.)
            self._log.info(
                "TLS handshake failed: {reason} ({client})",
                sessionId=session.id,
                reason=_handshakeFailure(reason),
                client=hostPort(session.remoteAddress, session.remotePort),
                remoteAddress=session.remoteAddress,
                remotePort=session.remotePort,
            )
        self._logDisconnect(session)
        if self._countedAs is not None:
            self._server._addressLeft(self._countedAs)
            self._countedAs = None
        self._server._connectionLost(self)
        chain, self._chain = self._chain, None
        if chain is not None:
            # Handlers still deciding about a command (or the connection): their answer
            # will go to no one, but the close handlers wait for it, as for a message's
            # data handlers (below), so that a close handler may release what they use.
            # They are not cancelled (see handlers.rst): a Deferred may be shared.
            chain.addBoth(lambda _: self._whenSettled())
        else:
            self._whenSettled()

    def _whenSettled(self) -> None:
        if self._settling is not None:
            # A message the connection was receiving still has data handlers to answer:
            # the close handlers wait for them (a relay's data handler is still using the
            # downstream connection its close handler ends), and so does server.close().
            self._settling.whenSettled(self._closeHandlers)
        else:
            self._closeHandlers()

    def _pendingHandlers(self, pending: Deferred[_T]) -> Deferred[_T]:
        # Handlers (of callChain or callFirst) whose answer is still to come; should the
        # connection end first, connectionLost waits for them.
        self._chain = pending

        def answered(result: _T) -> _T:
            if self._chain is pending:
                self._chain = None
            return result

        return pending.addBoth(answered)

    def _logDisconnect(self, session: Session) -> None:
        # The line per connection, like Postfix's "disconnect from"; not built when no one
        # would keep it (see _logTransaction).
        if not self._log.wants(LogLevel.info):
            return
        seconds = self._reactor.seconds() - self._connectedAt
        tlsText = _tlsText(session)
        self._log.line(
            f"Connection closed: {hostPort(session.remoteAddress, session.remotePort)} after "
            f"{seconds:.3f} s{f' ({tlsText})' if tlsText else ''}; messages accepted "
            f"{self._accepted}, refused {self._refused}",
            event="disconnect",
            sessionId=session.id,
            remoteAddress=session.remoteAddress,
            remotePort=session.remotePort,
            clientHostname=session.clientHostname,
            tls=tlsText,
            servername=session.servername,
            seconds=seconds,
            accepted=self._accepted,
            refused=self._refused,
        )

    def _closeHandlers(self) -> None:
        session = self._core.session
        # Every close handler runs, whatever the others do; their errors are logged.
        pending = [
            _ensureDeferred(result).addErrback(_logHandlerFailure, "onClose", session)
            for result in (_callLogged(h, session) for h in self._server._handlersFor("onClose"))
            if isinstance(result, Deferred) or inspect.iscoroutine(result)
        ]
        if pending:
            gatherResults(pending).addBoth(lambda _: self._server._connectionEnded())
        else:
            # No Deferred when every handler answered at once (or there is none).
            self._server._connectionEnded()

    def _checkIdle(self) -> None:
        # Rather than resetting a timer on every read and write, note the time of the
        # last activity and look again when the timer fires.
        self._timeoutCall = None
        if self._disconnected:
            return
        timeout = self._options.socketTimeout
        if not self._closed and (
            self._handlerPending or not _SERVER_WAITS.isdisjoint(self._pauses)
        ):
            # The timeout is for the server awaiting the client's next command (RFC 5321
            # section 4.5.3.2.7), and now the client awaits us: a data handler taking the
            # message slowly, a handler deciding (after the final dot the client waits ten
            # minutes, section 4.5.3.2.6), a failed AUTH's delay.  Look again a timeout
            # later; the reply, when it comes, starts the client's time afresh.
            self._timeoutCall = self._reactor.callLater(timeout, self._checkIdle)
            return
        now = self._reactor.seconds()
        left = timeout - (now - self._lastActivity)
        started = self._lineStarted
        if started is not None and not self._closed:
            # Each byte is activity, so a client that trickles a command a byte at a time
            # is never idle: the command must also be complete within the timeout of its
            # first byte (standards section 2.5).  That deadline is never later than the
            # idle one, so the timer, due no later than the idle deadline, finds it.
            left = min(left, timeout - (now - started))
        rate = self._options.minDataRate
        transaction = self._data
        slow = False
        if rate and transaction is not None and self._rateStarted is not None:
            # The same for a message: the time it may take grows with what arrived
            # (standards section 2.5 (d)); more bytes only move the deadline later.  A
            # pause under way does not count, as _resume will not count it: not the
            # handlers' time after the message's end either (see _pause("data")).
            sent = transaction.decoder.byteLength
            started = self._rateStarted
            if self.paused:
                started += now - self._pausedAt
            behind = started + timeout + sent / rate - now
            slow = behind <= 0
            left = min(left, behind)
        if left > 0:
            self._timeoutCall = self._reactor.callLater(left, self._checkIdle)
            return
        if self._closed:
            # We said goodbye a timeout ago and the client still has not let go.
            self._abortIfOpen()
            return
        if self._tlsPending:
            # No reply can be sent in the middle of a handshake.
            session = self._core.session
            self._log.info(
                "TLS handshake timed out ({client})",
                sessionId=session.id,
                client=hostPort(session.remoteAddress, session.remotePort),
                remoteAddress=session.remoteAddress,
                remotePort=session.remotePort,
            )
            self._cutHandshake()
            return
        if self._proxyParser is not None:
            # Nothing is said to a proxy before its header (and, on an implicit TLS
            # port, nothing in clear at all).
            self._proxyFailed("no PROXY header in time")
            return
        if slow:
            self._log.info("Message not received in time", sessionId=self._core.session.id)
        elif self._lineStarted is not None:
            self._log.info("Command not completed in time", sessionId=self._core.session.id)
        else:
            self._log.info("Connection timed out", sessionId=self._core.session.id)
        # The goodbye first: it closes the connection, so that nothing the client sent
        # is read when the aborted message's handlers let go of their streams.
        self._perform(self._core.timedOut())
        self._abortData()

    def shutDown(self, force: bool) -> None:
        """
        The server is closing: refuse further commands, and say goodbye now if the client
        has nothing in progress (or if C{force}).
        """
        if self._closed:
            return
        self._core.closing = True
        if self._tlsPending or self._proxyParser is not None:
            # In a handshake, or before a proxy's header: no reply can be sent (see
            # _checkIdle).
            self._closed = True
            self._cutHandshake()
            return
        if self._greetCall is not None:
            # Still in the early-talker delay: say goodbye instead of hello.
            self._greetCall.cancel()
            self._greetCall = None
            self._perform(self._core.shutDown())
            return
        idle = (
            self._greeted
            and self._core.idle
            and self._data is None
            and not self._handlerPending
            and self._pos >= len(self._buffer)
        )
        if force and self._data is not None and self._data.ended:
            # The whole message is in and its handlers are deciding; one may have
            # stored it already.  Their reply goes first, then the goodbye: a 421 now
            # could make the client send again a message that was delivered.
            self._goodbyeAfterReply = True
            return
        if force or idle:
            # The goodbye first, as in _checkIdle.
            self._perform(self._core.shutDown())
            self._abortData()

    def cutOff(self) -> None:
        """
        The server waits no longer (see L{SMTPServer.close}): a client still waiting for
        the handlers' reply to its message gets the goodbye without it (and sends the
        message again); the others, told already, that have not let go are cut off.
        """
        if self._goodbyeAfterReply and not self._closed:
            self._goodbyeAfterReply = False
            self._perform(self._core.shutDown())
            self._abortData("the server is closing", "aborted")
            return
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _abortData(
        self,
        why: str = "the connection was closed",
        result: str = "aborted",
        envelope: Envelope | None = None,
    ) -> None:
        # End the message being received without a reply: its handlers are told why.
        if self._data is not None:
            transaction, self._data = self._data, None
            self._rateStarted = None
            transaction.abort(why)
            self._logTransaction(transaction, envelope or self._core.session.envelope, result)
            if not transaction.settled:
                # Its data handlers are still to answer: see lineReceived and connectionLost.
                self._settling = transaction
                transaction.whenSettled(self._settled)

    def _settled(self) -> None:
        self._settling = None

    # -- input -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._lastActivity = self._reactor.seconds()
        if self._proxyParser is not None:
            self._proxyReceived(data)
            return
        if self._proxyWatch:
            # A header from an address not trusted to send one is refused, whether it
            # comes before the greeting or, with no early-talker delay, after it.
            self._proxyWatch = False
            if looksLikeProxyHeader(data):
                self._proxyFailed("PROXY header from an address not trusted to send one")
                return
        if not self._greeted:
            # RFC 5321 section 4.3.1: the client waits for the greeting.  One that does
            # not is most likely a spam engine that does not read replies.
            if self._greetCall is not None and self._greetCall.active():
                self._greetCall.cancel()
            self._greetCall = None
            self._perform(self._core.talkTooSoon())
            return
        self._buffer = self._buffer[self._pos :] + data if self._pos else self._buffer + data
        self._pos = 0
        self._process(reading=True)

    def _process(self, reading: bool = False) -> None:
        # Handle what is buffered.  The replies leave at the end of this turn of the
        # reactor if a read brought it (see _flushSoon), else at once: a reactor's timed
        # calls, which a handler's late answer may come from, run after its reading, so a
        # reply made for the end of their turn would wait past the next reading, which
        # may find the client gone (a half-close) and the reply with it.
        if self._busyReceiving:
            return
        self._busyReceiving = True
        try:
            lines = 0
            while not self.paused and not self._closed:
                buffer = self._buffer
                if self._pos >= len(buffer):
                    break
                if not self.line_mode:
                    data = buffer[self._pos :]
                    self._buffer, self._pos = b"", 0
                    self.rawDataReceived(data)
                    continue
                if not self._nextLine():
                    break
                lines += 1
                if lines >= _LINES_PER_TURN and not self.paused:
                    # Let other connections have the reactor before the next batch.
                    self._pause("turn")
                    self._turnCall = self._reactor.callLater(0, self._nextTurn)
        finally:
            self._busyReceiving = False
            if self._pos and self._pos >= len(self._buffer):
                self._buffer, self._pos = b"", 0
            if self._readClosed and not self.paused and not self._closed:
                # The client has closed its side and all it sent that can be answered has
                # been (what is left, if anything, is a line it never finished).
                self._closeAfterWrite()
            if self._out:
                if reading:
                    self._flushSoon()
                else:
                    self._flush()
            if self.paused:
                self._holdTransport()

    def _nextTurn(self) -> None:
        self._turnCall = None
        self._resume("turn")

    def _nextLine(self) -> bool:
        # Take one line (or the end of a discarded over-long one) from the buffer and
        # handle it; False when no complete line is there.
        buffer, pos = self._buffer, self._pos
        end = buffer.find(b"\r\n", pos)
        if self._discardingLine:
            if end < 0:
                # Keep nothing but a CR that may start the CRLF.
                self._buffer = b"\r" if buffer.endswith(b"\r") else b""
                self._pos = 0
                if self._lineStarted is None:
                    self._lineStarted = self._reactor.seconds()
                return False
            self._lineStarted = None
            self._pos = end + 2
            self._discardingLine = False
            self._perform(self._core.lineTooLong(self._discardHead))
            return True
        if end < 0:
            head = buffer[pos : pos + 5]
            if len(buffer) - pos > self._core.lineLimit(head) + 1:
                self._discardingLine = True
                self._discardHead = head
                self._buffer = b"\r" if buffer.endswith(b"\r") else b""
                self._pos = 0
                return True
            if self._lineStarted is None:
                self._lineStarted = self._reactor.seconds()
            return False
        self._lineStarted = None
        self._pos = end + 2
        if end - pos > self._core.minLineLimit:
            # Longer than some commands may be: is it longer than this one may?
            head = buffer[pos : pos + 5]
            if end - pos > self._core.lineLimit(head):
                self._perform(self._core.lineTooLong(head))
                return True
        line = buffer[pos:end]
        self.lineReceived(line)
        if (
            self._options.forbidUnauthPipelining
            and not self._closed
            and self._core.awaitsReply(line)
        ):
            if self._pos < len(self._buffer):
                self._unsynchronized()
            elif self._handlerPending or self._delayCall is not None:
                # The reply waits: what the client sends meanwhile is looked for when the
                # reply is made (see _resume).
                self._replyAwaited = True
        return True

    def _inputWaiting(self) -> bool:
        # Whether the client has sent anything not yet handled: in our buffer, or, on a
        # plain TCP connection, still in the kernel's (peeked at, not read), where it
        # waits while reading is paused.  (Under TLS the kernel's bytes are records,
        # which may be the TLS layer's own: there _holdTransport reads on while the reply
        # is held, so that what they carried for us is in our buffer.)
        if self._pos < len(self._buffer):
            return True
        sock = self._socket
        if sock is None:
            return False
        try:
            # Twisted's sockets do not block: nothing there raises BlockingIOError.
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            # Nothing there (EAGAIN), or an error that reading will find and report.
            return False

    def _unsynchronized(self) -> None:
        # The client sent more where it had to wait for our reply: a spam engine that
        # does not read replies, or a smuggling attempt.  Nothing more of it is read.
        session = self._core.session
        self._log.info(
            "Closing connection: {remoteAddress} did not wait for a reply",
            sessionId=session.id,
            remoteAddress=session.remoteAddress,
        )
        if self._data is not None:
            self._refused += 1
            self._abortData("the client did not wait for the reply to DATA", "refused")
        self.clearLineBuffer()
        self._perform(self._core.unsynchronized())

    def clearLineBuffer(self) -> bytes:
        """
        Discard and return whatever input is buffered (STARTTLS uses this: nothing the
        client sent in clear after it may be read inside TLS).
        """
        rest = self._buffer[self._pos :]
        self._buffer, self._pos = b"", 0
        self._lineStarted = None
        return rest

    def lineReceived(self, line: bytes) -> None:
        core = self._core
        if self._data is None:
            self._perform(core.receiveLine(line))
            return
        # Between BDAT chunks: RSET or a hello abandons the message.
        envelope = core.session.envelope
        action = core.receiveLine(line)
        if core.state is not State.CHUNKS:
            if type(action) is ReadChunk:
                # A refused chunk failed the transaction (see ServerConnection._bdat).
                self._refused += 1
                self._abortData("a BDAT chunk was refused", "refused", envelope)
            else:
                self._abortData("the client reset the transaction", "reset", envelope)
            # Its reply waits for the message's data handlers to let go of it: no handler
            # of the next transaction may run while one of this message's still does.
            if self._settling is not None:
                self._settling.whenSettled(partial(self._holdFor(self._perform), action))
                return
        self._perform(action)

    def rawDataReceived(self, data: bytes) -> None:
        if self._chunk is not None:
            self._chunkReceived(data)
            return
        transaction = self._data
        assert transaction is not None
        decoder = transaction.decoder
        assert isinstance(decoder, DataDecoder)
        body, rest = decoder.feed(data)
        transaction.write(body)
        if rest is None:
            if decoder.byteLength >= _DEFAULT_READ_SIZE:
                self._readSize(_DATA_READ_SIZE)
        else:
            # The final dot: back to commands, but none is read until the reply is out.
            self.line_mode = 1
            self._readSize(None)
            self._buffer, self._pos = rest, 0
            self._pause("data")
            transaction.end()
            if self._data is transaction:
                # Not answered at once: the client waits for the data handlers.
                self._awaitHandlers()

    # -- carrying out actions --------------------------------------------------------------

    def _perform(self, action: object) -> None:
        kind = type(action)
        if kind is Send:
            assert isinstance(action, Send)
            if action.delay > 0:
                self._sendLater(action)
                return
            self._write(action.data)
            if action.close:
                self._closeAfterWrite()
        elif kind is CheckAuth:
            assert isinstance(action, CheckAuth)
            self._authenticate(action.request)
        elif kind is CheckXClient:
            assert isinstance(action, CheckXClient)
            self._xclient(action.login)
        elif kind is CheckMail:
            assert isinstance(action, CheckMail)
            self._check("onMailFrom", action.address, self._core.mailChecked)
        elif kind is CheckRcpt:
            assert isinstance(action, CheckRcpt)
            self._check("onRcptTo", action.address, self._core.rcptChecked)
        elif kind is StartData:
            self._checkData()
        elif kind is ReadChunk:
            assert isinstance(action, ReadChunk)
            self._readChunk(action)
        elif kind is StartTLS:
            assert isinstance(action, StartTLS)
            # The server's side of TLS is made before the 220 promises a handshake: once
            # that is out, a failure could only be answered by closing the connection.
            creator = self._tlsCreator()
            if creator is None:
                # RFC 3207 section 4: 454, and the session goes on in clear as it was
                # (what the client pipelined after STARTTLS is read as usual).
                self._perform(self._core.tlsUnavailable())
                return
            self._write(action.data)
            self._flush()
            # RFC 3207 section 4.2 and CVE-2011-0411: nothing the client sent in clear
            # after STARTTLS may be read as if it came through TLS.
            discarded = self.clearLineBuffer()
            if discarded:
                self._log.warn(
                    "Discarded {count} bytes sent in clear after STARTTLS",
                    sessionId=self._core.session.id,
                    count=len(discarded),
                )
            self._startTLS(creator)
        else:
            raise TypeError(f"unknown action {action!r}")

    def _check(
        self,
        hook: str,
        address: Address,
        answer: Callable[[Address, SMTPError | None], Send],
    ) -> None:
        handlers = self._server._handlersFor(hook)
        if not handlers:
            self._perform(answer(address, None))
            return
        session = self._core.session
        calls = [partial(h, address, session) for h in handlers]
        result = callChain(calls, hook, session)
        if not isinstance(result, Deferred):
            self._perform(answer(address, result))
            return
        self._pendingHandlers(result)

        def answered(error: SMTPError | None) -> None:
            self._perform(answer(address, error))

        result.addCallback(self._holdFor(answered))

    def _holdFor(self, answered: Callable[[_T], object]) -> Callable[[_T], None]:
        """
        Read nothing more until a handler answers (the reply to a command waits for it,
        and no later command may be handled before it).

        @param answered: what to do with the answer, unless the connection has closed
            by then.
        @return: what to call with the answer: it calls C{answered}, then reads on.
        """
        self._handlerPending = True
        self._awaitHandlers()
        self._pause("handler")

        def resume(answer: _T) -> None:
            self._handlerPending = False
            self._handlersAnswered()
            if not self._closed:
                answered(answer)
            self._resume("handler")

        return resume

    def _awaitHandlers(self) -> None:
        # The client now waits for the handlers' answer: for handlerTimeout seconds at
        # most (only when the answer did not come at once, so that the common case costs
        # no timer).
        timeout = self._options.handlerTimeout
        if timeout and self._handlerCall is None and not self._closed:
            self._handlerCall = self._reactor.callLater(timeout, self._handlersTimedOut)

    def _handlersAnswered(self) -> None:
        call, self._handlerCall = self._handlerCall, None
        if call is not None and call.active():
            call.cancel()

    def _streamFull(self) -> None:
        # A data handler has not taken what came of the message: nothing more is read
        # until it has, and meanwhile the client waits for the handlers, as for their
        # answer (handlerTimeout), not the other way round (socketTimeout).
        self._pause("stream")
        self._awaitHandlers()

    def _streamDrained(self) -> None:
        transaction = self._data
        if transaction is not None and not transaction.ended:
            # (Once the message has ended, the clock runs on for the handlers' answer.)
            self._handlersAnswered()
        # The client's clock starts afresh: the time it was held up was ours, not idle
        # time of its own (as a reply starts it afresh after a handler's answer).
        self._lastActivity = self._reactor.seconds()
        self._resume("stream")

    def _handlersTimedOut(self) -> None:
        self._handlerCall = None
        if self._closed:
            return
        transaction = self._data
        self._log.warn(
            "Closing connection: data handlers took none of the message for {timeout} s"
            if transaction is not None and not transaction.ended
            else "Closing connection: handlers did not answer within {timeout} s",
            sessionId=self._core.session.id,
            timeout=self._options.handlerTimeout,
        )
        result = "timed out"
        envelope = self._core.session.envelope
        if transaction is not None and transaction.ended and transaction.decoder.failed:
            # The message failed whatever its handlers say (too large, bare line endings,
            # a mail loop), so its reply need not wait for them: the client gets it (say
            # 552, after which it does not send the message again, as it would after a
            # 421) before the goodbye.
            send = self._finalReply(transaction, [])
            result = _resultText(send)
            self._perform(send)
        # The goodbye first, as in _checkIdle; the handlers' late answer finds the
        # connection closed (and the message, if any, aborted) and is dropped.
        self._perform(self._core.handlersTimedOut())
        self._abortData("the handlers did not answer in time", result, envelope)

    def _sendLater(self, send: Send) -> None:
        # A failed AUTH's reply waits, and so does everything after it.
        self._pause("delay")

        def now() -> None:
            self._delayCall = None
            self._perform(replace(send, delay=0.0))
            self._resume("delay")

        self._delayCall = self._reactor.callLater(send.delay, now)

    # -- AUTH ------------------------------------------------------------------------------

    def _authenticate(self, request: AuthRequest) -> None:
        session = self._core.session
        calls = [partial(h, request, session) for h in self._server._handlersFor("onAuth")]
        result = callFirst(calls, session)
        if not isinstance(result, Deferred):
            self._authenticated(result)
            return
        self._pendingHandlers(result)
        result.addCallback(self._holdFor(self._authenticated))

    def _authenticated(self, outcome: tuple[object, SMTPError | None]) -> None:
        user, error = outcome
        session = self._core.session
        if error is None and user is not None:
            self._log.info("Authenticated as {user}", sessionId=session.id, user=_userName(user))
        else:
            self._log.info(
                "Authentication failed: {reason}",
                sessionId=session.id,
                reason=str(error) if error is not None else "credentials invalid",
            )
        self._perform(self._core.authChecked(user, error))

    # -- XCLIENT ----------------------------------------------------------------------------

    def _xclient(self, login: AuthRequest | None) -> None:
        # XCLIENT made this a new client: check its LOGIN, then ask the connect handlers
        # about it, as if it had just connected; nothing else is read meanwhile.
        # Its reply, sent (if the connection is still open) once the handlers have answered.
        done: Callable[[Action], None] = self._holdFor(self._perform)
        session = self._core.session
        self._log.info(
            "XCLIENT from {proxy}: client {client} ({clientHostname})",
            sessionId=session.id,
            proxy=self._proxyPeer,
            client=hostPort(session.remoteAddress, session.remotePort),
            remoteAddress=session.remoteAddress,
            remotePort=session.remotePort,
            clientHostname=session.clientHostname,
        )
        if login is None:
            self._xclientConnect(done)
            return
        calls = [partial(h, login, session) for h in self._server._handlersFor("onAuth")]
        result = callFirst(calls, session)
        if isinstance(result, Deferred):
            self._pendingHandlers(result).addCallback(self._xclientLoggedIn, done)
        else:
            self._xclientLoggedIn(result, done)

    def _xclientLoggedIn(
        self, outcome: tuple[object, SMTPError | None], done: Callable[[Action], None]
    ) -> None:
        if self._closed:
            return
        refusal = self._core.xclientLogin(*outcome)
        if refusal is not None:
            done(refusal)
            return
        self._xclientConnect(done)

    def _xclientConnect(self, done: Callable[[Action], None]) -> None:
        result = callChain(
            self._connectCalls(), "onConnect", self._core.session, CONNECT_HANDLER_FAILED
        )
        if isinstance(result, Deferred):
            self._pendingHandlers(result).addCallback(
                lambda error: done(self._core.xclientDone(error))
            )
        else:
            done(self._core.xclientDone(result))

    # -- TLS -------------------------------------------------------------------------------

    def _startTLS(self, creator: _PreparedTLS | None = None) -> None:
        # STARTTLS made its creator before the 220; implicit TLS makes it here.
        if creator is None:
            creator = self._tlsCreator()
            if creator is None:
                # Implicit TLS: nothing may be said in clear, so no reply; just close.
                self._closed = True
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
        self._tlsPending = True
        # From here on every byte goes through TLS.
        self._socket = None
        ITLSTransport(self.transport).startTLS(creator)

    def _tlsCreator(self) -> _PreparedTLS | None:
        """
        The server's side of a TLS connection, made now, before the handshake is
        promised; L{None}, logged, when TLS cannot start.
        """
        session = self._core.session
        if ITLSTransport(self.transport, None) is None:
            self._log.warn(
                "Cannot start TLS: {reason}",
                sessionId=session.id,
                reason="the transport cannot do TLS",
            )
            return None
        try:
            # The TLS layer that will hold the connection does not exist yet; ServerTLS
            # does not look at it.
            connection = self._server.tls.serverConnectionForTLS(None)
        except SSL.Error as e:
            # OpenSSL could not make the connection (memory, a context it refuses): a
            # condition of the moment, not a bug, so no traceback.
            self._log.warn("Cannot start TLS: {reason}", sessionId=session.id, reason=str(e))
            return None
        except Exception as e:
            self._log.failure("Cannot start TLS: {reason}", sessionId=session.id, reason=repr(e))
            return None
        return _PreparedTLS(connection)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake finished: record what it settled, forget what was said in
        clear, and ask the L{ISecureHandler}s.
        """
        self._handshakes += 1
        if self._handshakes > 1 or self._closed:
            # Renegotiation is refused by the contexts; never run the reset twice.
            return
        self._tlsPending = False
        connection = cast(Any, ISSLTransport(self.transport)).getHandle()
        info, servername, peer, verified = connectionInfo(connection)
        core = self._core
        # No log line of its own: the connection's line (see connectionLost) and each
        # transaction's name the version and cipher.
        core.tlsStarted(info, servername, peer, verified)
        if self.implicitTLS and not self._greeted:
            # onSecure runs with onConnect, before the greeting.
            self._admit()
            return
        result = callChain(self._secureCalls(), "onSecure", core.session)
        if not isinstance(result, Deferred):
            self._secured(result)
            return
        self._pendingHandlers(result).addCallback(self._holdFor(self._secured))

    def _connectCalls(self) -> list[Callable[[], object]]:
        session = self._core.session
        return [partial(h, session) for h in self._server._handlersFor("onConnect")]

    def _secureCalls(self) -> list[Callable[[], object]]:
        session = self._core.session
        return [
            partial(h, session, session.peerCertificate)
            for h in self._server._handlersFor("onSecure")
        ]

    def _secured(self, error: SMTPError | None) -> None:
        if error is not None:
            refusal = self._core.refuseSecure(error)
            if refusal is not None:
                self._perform(refusal)

    def _startMessage(self, decoderClass: type[DataDecoder] | type[ChunkDecoder]) -> None:
        # A message begins (DATA, or the first BDAT chunk): its decoder, its transaction,
        # and the data handlers told.
        options = self._options
        decoder = decoderClass(options.size, options.bareLineEndings, options.maxReceivedHeaders)
        transaction = self._data = _DataTransaction(self, decoder, self._core.replySlots)
        # The message's clock for minDataRate starts now (see _checkIdle).
        self._rateStarted = self._reactor.seconds()
        transaction.start(self._server._handlersFor("onData"))

    def _checkData(self) -> None:
        # DATA: its handlers (IDataCommandHandler) decide before the 354 invites the
        # message; while they do, nothing more is read.  (_check's steps for a hook
        # without an address: folding the two together cost MAIL and RCPT about 1.5% of
        # a message's instructions.)
        handlers = self._server._handlersFor("onDataCommand")
        if not handlers:
            self._startData()
            return
        session = self._core.session
        result = callChain([partial(h, session) for h in handlers], "onDataCommand", session)
        if not isinstance(result, Deferred):
            self._dataChecked(result)
            return
        self._pendingHandlers(result).addCallback(self._holdFor(self._dataChecked))

    def _dataChecked(self, error: SMTPError | None) -> None:
        if error is None:
            self._startData()
        else:
            self._perform(self._core.dataRefused(error))

    def _startData(self) -> None:
        self._startMessage(DataDecoder)
        self._perform(self._core.dataStarted())
        self.line_mode = 0

    def _readChunk(self, chunk: ReadChunk) -> None:
        # BDAT: the next chunk.size bytes are the chunk's, whatever they look like.
        if chunk.first:
            self._startMessage(ChunkDecoder)
        self._chunk = chunk
        self._chunkLeft = chunk.size
        if chunk.size == 0:
            self._chunkEnded()
            return
        self.line_mode = 0
        if chunk.size > _DEFAULT_READ_SIZE:
            self._readSize(_DATA_READ_SIZE)

    def _chunkReceived(self, data: bytes) -> None:
        left = self._chunkLeft
        rest = b""
        if len(data) > left:
            data, rest = data[:left], data[left:]
        self._chunkLeft = left - len(data)
        chunk = self._chunk
        assert chunk is not None
        if chunk.refusal is None:
            transaction = self._data
            assert transaction is not None
            decoder = transaction.decoder
            assert isinstance(decoder, ChunkDecoder)
            transaction.write(decoder.feed(data))
        if not self._chunkLeft:
            self._buffer, self._pos = rest, 0
            self._chunkEnded()

    def _chunkEnded(self) -> None:
        chunk = self._chunk
        assert chunk is not None
        self._chunk = None
        self.line_mode = 1
        if chunk.size > _DEFAULT_READ_SIZE:
            self._readSize(None)
        if chunk.refusal is not None:
            self._perform(chunk.refusal)
            return
        transaction = self._data
        assert transaction is not None
        if chunk.last or transaction.failure is not None:
            # The message is complete, or already failed (too large, or a bare line ending
            # refused): the reply to this chunk is the final one (RFC 3030 section 2).
            decoder = transaction.decoder
            assert isinstance(decoder, ChunkDecoder)
            transaction.write(decoder.end())
            self._pause("data")
            transaction.end(early=not chunk.last)
            if self._data is transaction:
                self._awaitHandlers()
        else:
            self._perform(self._core.chunkDone(chunk.size))

    def _readSize(self, size: int | None) -> None:
        # Set how much the transport reads at a time (None: its default), if it is one
        # of Twisted's socket transports, whose bufferSize says that.
        transport = self.transport
        if isinstance(transport, FileDescriptor):
            if size is None:
                vars(transport).pop("bufferSize", None)
            else:
                transport.bufferSize = size

    def _dataFinished(self, transaction: _DataTransaction) -> None:
        if transaction is not self._data:
            return
        self._data = None
        self._rateStarted = None
        self._handlersAnswered()
        answers = [answer for answer in transaction.answers if answer is not None]
        envelope = self._core.session.envelope
        send = self._finalReply(transaction, answers)
        self._logTransaction(transaction, envelope, _resultText(send))
        self._perform(send)
        if self._goodbyeAfterReply:
            self._perform(self._core.shutDown())
            return
        self._resume("data")

    def _finalReply(
        self, transaction: _DataTransaction, answers: Sequence[Sequence[Outcome]]
    ) -> Send:
        # The reply (in LMTP, one per recipient) that ends the message, and the start of
        # the next transaction.
        decoder = transaction.decoder
        send = self._core.dataFinished(
            answers,
            tooLarge=decoder.sizeExceeded,
            bareLineEndings=decoder.rejected,
            mailLoop=decoder.loop,
            early=transaction.early,
        )
        if send.data[:1] == b"2":
            self._accepted += 1
        else:
            self._refused += 1
        return send

    def _logTransaction(self, transaction: _DataTransaction, envelope: Any, result: str) -> None:
        # One line per transaction, with what an operator greps for; the fields are
        # structured, so `twist --log-format json` gives them to log processors as such.
        # Below the server's logLevel it is not even built: that is most of its cost.
        if not self._log.wants(LogLevel.info):
            return
        session = self._core.session
        clientHostname, remoteAddress = transaction.client
        mailFrom = envelope.mailFrom.address if envelope.mailFrom else ""
        rcptTo = [r.address for r in envelope.rcptTo]
        size = transaction.decoder.byteLength
        seconds = self._reactor.seconds() - transaction.started
        self._log.line(
            f"{session.id} message from <{mailFrom}> to {rcptTo} ({size} bytes) for "
            f"{clientHostname} [{remoteAddress}]: {result} in {seconds:.3f} s",
            event="transaction",
            sessionId=session.id,
            transaction=transaction.number,
            remoteAddress=remoteAddress,
            clientHostname=clientHostname,
            tls=_tlsText(session),
            user=_userName(session.user) if session.user is not None else None,
            mailFrom=mailFrom,
            rcptTo=rcptTo,
            size=size,
            result=result,
            seconds=seconds,
        )

    # -- output and flow control -----------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._closed:
            return
        self._lastActivity = self._reactor.seconds()
        if self._busyReceiving or self._out or self._replyAwaited:
            # Replies to pipelined commands leave in one write (RFC 2920 section 3.1);
            # a held reply that the client must wait for leaves once _resume has looked
            # for input sent before it.
            self._out.append(data)
        else:
            # Made outside the reading (a handler's late answer, a timer): at once, for
            # the reason _process gives.
            self._send(data)

    def _flushSoon(self) -> None:
        # The replies to what was read leave at the end of this turn of the reactor, with
        # the other connections' replies (see SMTPServer._sendSoon), when they can go
        # straight to the socket; else now, to a transport that holds them until then.
        if self._socket is not None:
            self._server._sendSoon(self)
        else:
            self._flush()

    def _flush(self) -> None:
        if self._out and not self._disconnected:
            out, self._out = self._out, []
            self._send(out[0] if len(out) == 1 else b"".join(out))
        if self._closeWhenFlushed:
            self._closeWhenFlushed = False
            if not self._disconnected:
                self._loseConnection()

    def _send(self, data: bytes) -> None:
        # Twisted's TCP transport holds every write until the reactor's next turn, which
        # costs two epoll_ctl calls and a wake-up per reply (Twisted issue #5303).  When
        # nothing is waiting in its buffer, send at once; what the socket does not take
        # (or an error, which the transport then finds and reports) goes the usual way.
        sock = self._idleSocket()
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        assert self.transport is not None
        self.transport.write(data)

    def _idleSocket(self) -> socket.socket | None:
        # The socket of a plain TCP transport that holds nothing to send (see
        # _writableSocket): what is written to it directly goes out in order.
        transport: Any = self.transport
        if self._socket is None or (
            transport.dataBuffer
            or transport._tempDataBuffer
            or transport.disconnecting
            or transport.TLS
        ):
            return None
        return self._socket

    def _closeAfterWrite(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self.transport
        assert transport is not None
        self._consumer().unregisterProducer()
        self._pauses.clear()
        self.paused = False
        if self._transportPaused:
            # Read again (dataReceived ignores it now): over TLS the close completes
            # only once the peer's close_notify or FIN has been read.
            self._transportPaused = False
            transport.resumeProducing()  # type: ignore[attr-defined]
        if self._socket is not None:
            # The last replies leave at the end of this turn, as the others do, and the
            # connection closes right after them (see _flush).
            self._closeWhenFlushed = True
            self._server._sendSoon(self)
            return
        self._flush()
        self._loseConnection()

    def _loseConnection(self) -> None:
        transport: Any = self.transport
        if self._idleSocket() is not None:
            # Everything went straight to the socket (see _send), so nothing is left for
            # the transport to write: close now, as the transport itself does when it has
            # no more to write, rather than have loseConnection wait for the reactor to
            # find the socket writable (two epoll_ctl calls, a turn and an empty send).
            transport.connectionLost(connectionDone)
            return
        transport.loseConnection()
        if self._core.session.secure:
            # Over TLS the close completes only once the client answers our close_notify
            # with its own (or closes), which a client that is not reading never does: an
            # idle client would hold server.close() for all of closeTimeout.  RFC 8446
            # section 6.1 does not ask the side that closes to wait for the answer, and
            # what we sent is with the kernel by then: close a moment later regardless.
            self._abortCall = self._reactor.callLater(_TLS_CLOSE_GRACE, self._abortIfOpen)
            return
        # A client that never reads would keep the socket open for ever: the idle timer,
        # if there is one, aborts it (see _checkIdle), else a timer of its own.
        if self._timeoutCall is not None:
            self._lastActivity = self._reactor.seconds()
        else:
            self._abortCall = self._reactor.callLater(30.0, self._abortIfOpen)

    def _cutHandshake(self) -> None:
        # End a connection in the middle of its TLS handshake (or before its PROXY
        # header) on our side's account: not a handshake the client failed, which
        # connectionLost would otherwise log.
        self._tlsPending = False
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _abortIfOpen(self) -> None:
        self._abortCall = None
        if not self._disconnected and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _pause(self, reason: str) -> None:
        if reason not in self._pauses:
            self._pauses.append(reason)
        if not self.paused:
            self._pausedAt = self._reactor.seconds()
        self.paused = True
        # A client cannot finish its command while we do not read: its deadline starts
        # again when we do (_nextLine notes the partial line anew).
        self._lineStarted = None
        if not self._busyReceiving:
            self._holdTransport()

    def _holdTransport(self) -> None:
        # Stop the transport reading only when control goes back to the reactor still
        # paused: a pause that a synchronous answer lifts at once costs no system call.
        transport = self.transport
        if self.paused and not self._transportPaused and not self._closed and transport is not None:
            if self._replyAwaited and self._socket is None and self._pos >= len(self._buffer):
                # A reply the client must wait for is held, and what waits in the kernel
                # cannot be peeked at here (over TLS it is records): read on, so that
                # whatever the client sends before the reply is in our buffer when
                # _resume looks.  The first byte of it settles that; then we stop.
                return
            if (
                "data" in self._pauses
                and self._socket is not None
                and _AFTER_A_MESSAGE.issuperset(self._pauses)
                and len(self._buffer) - self._pos < _READ_ON_LIMIT
            ):
                # The client awaits the reply to its message while the handlers decide,
                # and may go away meanwhile: read on (a little of what it pipelines is
                # kept), so that its going is seen (connectionLost, readConnectionLost)
                # before the handlers have committed to a message it will send again.
                # Not over TLS, whose layer takes a close_notify, or a FIN, for the end of
                # the whole connection: a client that pipelines QUIT and closes its side
                # would lose the replies it may still read.
                return
            self._transportPaused = True
            transport.pauseProducing()  # type: ignore[attr-defined]

    def _resume(self, reason: str) -> None:
        if self._replyAwaited and reason in ("handler", "delay") and self._delayCall is None:
            # The held reply is made now (a handler's refusal of AUTH is still to wait
            # for the failure delay), and kept back (see _write): whatever the client has
            # sent by now, it sent without waiting for it.
            self._replyAwaited = False
            if not self._closed and self._inputWaiting():
                self._unsynchronized()
            else:
                self._flush()
        if reason in self._pauses:
            self._pauses.remove(reason)
        if self._pauses or not self.paused or self._closed:
            # A closing connection reads nothing more; one still paused for another
            # reason stops reading now if it read on past a held reply.
            self._holdTransport()
            return
        self.paused = False
        if self._rateStarted is not None:
            # Nor can it send its message faster than we read: the time we did not read
            # is not counted against minDataRate (what it already owed still is).
            self._rateStarted += self._reactor.seconds() - self._pausedAt
        if self._transportPaused:
            self._transportPaused = False
            assert self.transport is not None
            if not self._readClosed:
                self.transport.resumeProducing()  # type: ignore[attr-defined]
        self._process()

    # IHalfCloseableProtocol: a TCP transport calls these instead of connectionLost when the
    # client closes its side (a FIN; a reset is connectionLost still).

    def readConnectionLost(self) -> None:
        """
        The client has closed its side of the connection: it will send nothing more.
        """
        transaction = self._data
        if self._pos < len(self._buffer) and not self._closed:
            # It left commands to answer (a pipelined QUIT after the final dot, say) and
            # shut down its writing only, as ``nc -N`` does: it reads on.  They are
            # answered, and the connection closes after (see _process), now if they have
            # been.
            self._readClosed = True
            self._process()
            return
        if self._closed or transaction is None or not transaction.ended:
            # Nothing is left to answer (or we said goodbye already): the connection ends
            # now, as for a protocol that is not half-closeable (a message cut short is
            # aborted; replies still to send go first, see stopProducing).
            self.transport.connectionLost(connectionDone)  # type: ignore[union-attr]
            return
        # Its message has come whole, and it closed its side without waiting for the reply
        # (nor saying QUIT): gone, most likely, and it will send the message again; or
        # only done sending.  While no data handler has taken the message, they are told
        # it is aborted, so that none keeps it.  Once one has (it is stored, say), aborting
        # the others would leave it with some and not others, and the retry a duplicate
        # at the first whatever the client is: they answer as they will, and the reply
        # goes out for a client that reads on.  Then the connection closes.
        session = self._core.session
        self._log.info(
            "{remoteAddress} closed its side of the connection without waiting for the "
            "reply to its message",
            sessionId=session.id,
            remoteAddress=session.remoteAddress,
        )
        self._readClosed = True
        if transaction.failure is None and not transaction.fanOut.anyDelivered:
            transaction.fail(MessageAborted("the client closed its side of the connection"))

    def writeConnectionLost(self) -> None:
        # Never asked for (loseWriteConnection is not used): nothing to do.
        pass

    # IPushProducer: the transport calls these when the client stops (and starts again)
    # reading our replies.

    def pauseProducing(self) -> None:
        self._pause("writer")

    def resumeProducing(self) -> None:
        self._resume("writer")

    def stopProducing(self) -> None:
        # The transport is going away: nothing more is read.  Replies still to send (a
        # reactor may read the client's half-close before the end of the turn that
        # sends them) go while the socket is open: a client that half-closed reads on.
        if self._out:
            self._flush()
        self._closed = True
        self._abortData()


def _writableSocket(transport: object) -> socket.socket | None:
    """
    The socket of a plain Twisted TCP server transport, which L{SMTPProtocol._send}
    writes to directly while the transport's own buffer is empty; L{None} for any other
    transport (TLS wrappers, test transports, a Twisted whose internals differ).
    """
    global _tcpServerKnown
    if type(transport) is not tcp.Server:
        return None
    if _tcpServerKnown is None:
        # Whether this Twisted's TCP transport has the attributes _send looks at: asked
        # of the first one only.
        # (connectionMade counts on it to provide ITLSTransport and IConsumer too.)
        needed = ("dataBuffer", "_tempDataBuffer", "disconnecting", "TLS", "socket")
        _tcpServerKnown = (
            all(hasattr(transport, name) for name in needed)
            and ITLSTransport.providedBy(transport)
            and IConsumer.providedBy(transport)
        )
    if not _tcpServerKnown:
        return None
    sock = cast(Any, transport).socket
    return sock if isinstance(sock, socket.socket) else None


_tcpServerKnown: bool | None = None
# The envelope a Session is made with before its ServerConnection gives it a fresh one.
_PLACEHOLDER_ENVELOPE: Final = Envelope()


@implementer(IOpenSSLServerConnectionCreator)
class _PreparedTLS:
    """
    Hands the transport's TLS layer the L{SSL.Connection} that L{SMTPProtocol} made
    before it promised a handshake, so that making it can fail while a reply in clear
    can still be sent.  It serves one handshake.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: SSL.Connection) -> None:
        self._connection: SSL.Connection | None = connection

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("a prepared TLS connection serves one handshake")
        return connection


def _tlsText(session: Session) -> str | None:
    # The TLS version and cipher, as the log lines show them.
    tls = session.tlsOptions
    return f"{tls.version} {tls.name}" if tls is not None else None


def _host(address: object) -> str:
    # The IP address of one end of a connection.
    if isinstance(address, (IPv4Address, IPv6Address)):
        # IPv4-mapped IPv6 addresses are IPv4 clients on a dual-stack socket.
        host = address.host
        return host.removeprefix("::ffff:") if "." in host else host
    # Not an IP connection (a UNIX socket, a pipe): this host, as Postfix has it.
    return "127.0.0.1"
