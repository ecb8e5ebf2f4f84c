"""
A small SMTP/LMTP client protocol: the forwarding delivery's side of a downstream connection.

It sends one command at a time (no pipelining) and gives back a Deferred of the reply; it
streams a message from an L{IMessageStream} after DATA, dot-stuffed, with backpressure both
ways.  The rules (reply grammar, stuffing) are the pure ones of L{smtpsvc._core._relay} and
L{smtpsvc._core._data.DotStuffer}; this module only does the I/O.

Anything that makes the connection unusable (it closes, a reply does not come within the
timeout, the server sends something that is not a reply, a reply nobody asked for, or a
C{421}) fails whatever is waiting with L{DownstreamError} and drops the connection.

The wait for the replies after a message starts once the message has gone out, not when
its final dot is handed to the transport: Twisted's buffer and the kernel's (megabytes on
loopback) may hold much of it still, and a slow server takes it while the timer would
run.  Twisted's buffer is watched through the registered producer, the kernel's (where
the system tells, Linux's C{SIOCOUTQ}) by asking how much of it is still unsent.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, ISystemHandle
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ._core._data import DotStuffer
from ._core._relay import DownstreamReply, ReplyParser, ReplySyntaxError
from ._stream import MessageDone

# What sendData takes the reply to a DATA sent before it (invited) to have been.
_INVITED: Final = DownstreamReply(354, ("",))
# Seconds between looks at how much of a message the kernel still holds after its final
# dot (at most: a quarter of the timeout when that is shorter).
_DRAIN_POLL: Final = 1.0

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall

    from .interfaces import IMessageStream

_log = Logger(namespace="smtpsvc.forward")


class DownstreamError(Exception):
    """
    The downstream server cannot be used: it could not be reached, it closed the connection,
    it did not answer in time, it said C{421}, or it broke the protocol.

    @ivar reply: the reply that ended the connection, when one did: a C{421}, or a refusal
        sent before the end of the message (which some servers send and then hang up).
    @ivar replies: the final replies the server gave after the message before it could no
        longer be used: in LMTP, those of its first recipients, in order.  Empty when it
        failed before any of them (and always in SMTP, which has one).
    """

    def __init__(
        self,
        why: str,
        reply: DownstreamReply | None = None,
        replies: tuple[DownstreamReply, ...] = (),
    ) -> None:
        super().__init__(why)
        self.reply = reply
        self.replies = replies


class DownstreamClient(LineReceiver):
    """
    One connection to a downstream SMTP or LMTP server.

    @ivar greeting: a Deferred of the server's greeting (its first reply).
    @ivar usable: whether the connection is up and commands may be sent.
    @ivar step: what the connection is at, for log lines: C{"greeting"}, the verb of the
        last command (C{"EHLO"}, C{"MAIL"}, C{"DATA"}, ...), C{"message"} while a message
        goes, and C{"end of data"} after its final dot.
    """

    delimiter = b"\r\n"
    # RFC 5321 section 4.5.3.1.5 says 512 octets; real servers send longer lines, but a
    # reply line of more than this is not a reply.
    MAX_LENGTH = 8192

    def __init__(self, reactor: Any, timeout: float) -> None:
        """
        @param reactor: for the timers.
        @param timeout: seconds to wait for each reply, and for a server that takes none
            of a message held up by its connection's full buffer.
        """
        self._reactor = reactor
        self._timeout = timeout
        self._parser = ReplyParser()
        self._waiting: deque[Deferred[DownstreamReply]] = deque()
        self._timer: IDelayedCall | None = None
        self._sending: _MessageSender | None = None
        # The sender of a message whose final dot is written but has not gone out yet:
        # the replies' timer waits for it (see _MessageSender._checkDrained).
        self._draining: _MessageSender | None = None
        self.usable = False
        self.step = "greeting"
        self._aborted = False
        self._lostWhy = "not connected"
        self.closed: Deferred[None] = Deferred()
        self.greeting: Deferred[DownstreamReply] = Deferred()
        self._waiting.append(self.greeting)

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.usable = True
        self._restartTimer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.usable:
            self._lostWhy = f"connection lost: {reason.getErrorMessage()}"
        self.usable = False
        self._cancelTimer()
        self._failAll(DownstreamError(self._lostWhy))
        if not self.closed.called:
            self.closed.callback(None)

    def abort(self, why: str, reply: DownstreamReply | None = None) -> None:
        """
        Drop the connection at once (nothing more is sent) and fail whatever waits.
        """
        if self.usable:
            self._lostWhy = why
            self.usable = False
        self._cancelTimer()
        self._failAll(DownstreamError(why, reply))
        if self.transport is not None and not self._aborted and not self.closed.called:
            self._aborted = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def quit(self) -> Deferred[None]:
        """
        Say QUIT, wait (within the timeout) for the reply, and close the connection; a
        connection in the middle of a command or a message is dropped at once instead.

        @return: a Deferred that fires once the connection is closed.
        """
        if self.usable and not self._waiting and self._sending is None:
            self.command("QUIT").addBoth(lambda _: self._close())
        elif self.transport is not None and not self.closed.called:
            self.abort("closed while busy")
        return self.closed

    def _close(self) -> None:
        if self.transport is None or self.closed.called:
            return
        self.usable = False
        self._lostWhy = "closed"
        self.transport.loseConnection()
        # A server that does not read would keep the connection open for ever.
        self._timer = self._reactor.callLater(self._timeout, self._abortIfOpen)

    def _abortIfOpen(self) -> None:
        self._timer = None
        if not self.closed.called and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- commands -------------------------------------------------------------------------

    def command(self, line: str) -> Deferred[DownstreamReply]:
        """
        Send one command line (CRLF is added) and wait for its reply.

        @return: a Deferred of the reply, or failing with L{DownstreamError}.
        """
        if not self.usable or self.transport is None:
            return fail(DownstreamError(self._lostWhy))
        if self._waiting or self._sending is not None:
            raise RuntimeError("a command is already in progress")
        self.step = line.split(" ", 1)[0].split(":", 1)[0].upper()
        self.transport.write(line.encode("utf-8") + b"\r\n")
        return self._expect()

    def sendData(
        self,
        stream: IMessageStream,
        header: bytes = b"",
        recipients: int | None = None,
        invited: bool = False,
        untimedEnd: bool = False,
    ) -> Deferred[DownstreamReply | list[DownstreamReply]]:
        """
        Send DATA and, once the server invites it with 354, the message: C{header} (for
        example a C{Received:} line, already CRLF-terminated) and then the message as
        C{stream} gives it, dot-stuffed, then the final dot.  The stream is read only as
        fast as the connection can send it.

        @param recipients: L{None} for SMTP, where one reply follows the message; for LMTP
            the number of accepted recipients, each of which gets a reply.
        @return: a Deferred of the reply to DATA when it is not 354 (the transaction is
            then still open), else of the list of final replies: one in SMTP, one per
            recipient in LMTP.  It fails with the stream's error when the message fails
            (the connection is then dropped: half a message cannot be taken back), or with
            L{DownstreamError}; in LMTP, one that failed after the replies for some
            recipients came carries them (L{DownstreamError.replies}), since each is that
            recipient's final answer.
        @param invited: whether DATA was sent already (with L{command}) and answered
            354: the message then goes at once.
        @param untimedEnd: whether the first reply after the message, once the message
            has gone out, is waited for without a limit of this connection's (the caller
            has one): the server may still be reading the message from buffers of its own,
            which this side cannot see.  Later replies (LMTP) have the timeout each.
        """
        return Deferred.fromCoroutine(
            self._sendData(stream, header, recipients, invited, untimedEnd)
        )

    async def _sendData(
        self,
        stream: IMessageStream,
        header: bytes,
        recipients: int | None,
        invited: bool,
        untimedEnd: bool,
    ) -> DownstreamReply | list[DownstreamReply]:
        answer = succeed(_INVITED) if invited else self.command("DATA")
        # The stream is taken now but held until the server invites the message: a
        # message that fails meanwhile (its client went away or abandoned it) drops the
        # connection at once, not once the server has answered DATA.
        sender = self._sending = _MessageSender(
            self, header, recipients if recipients is not None else 1, untimedEnd
        )
        try:
            stream.deliverBody(sender)
            try:
                reply = await answer
            except DownstreamError:
                # The sender fails too, with this error or the stream's: told here.
                sender.done.addErrback(lambda _: None)
                if sender.failure is not None:
                    raise sender.failure from None
                raise
            if reply.code != 354:
                sender.cancel()
                if not reply.refusal:
                    self.abort(f"unexpected reply to DATA: {reply}")
                    raise DownstreamError(f"unexpected reply to DATA: {reply}")
                return reply
            sender.start()
            waiters = await sender.done
        finally:
            self._sending = None
        replies: list[DownstreamReply] = []
        try:
            for waiter in waiters:
                try:
                    final = await waiter
                except DownstreamError as e:
                    if not replies:
                        raise
                    # In LMTP each reply is final for its recipient (RFC 2033 section
                    # 4.2): those that came stand, even though the others never will.
                    raise DownstreamError(str(e), e.reply, tuple(replies)) from None
                if not (final.positive or final.refusal):
                    why = f"unexpected reply after the message: {final}"
                    self.abort(why)
                    raise DownstreamError(why, replies=tuple(replies))
                replies.append(final)
        finally:
            # When one fails the rest fail too, with the same error: already told.
            for waiter in waiters:
                waiter.addErrback(lambda _: None)
        return replies

    # -- replies --------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = self._parser.feed(line)
        except ReplySyntaxError as e:
            self.abort(f"protocol error: {e}")
            return
        if reply is None:
            return
        if not self._waiting:
            # Only a 421 may come unasked (RFC 5321 section 3.8), but some servers refuse
            # a message before its end and hang up; either way the connection is finished.
            self.abort(f"unexpected reply {reply}", reply)
            return
        # A reply after a message: the server has all of it.
        self._stopDraining()
        waiter = self._waiting.popleft()
        if self._waiting:
            self._restartTimer()
        else:
            self._cancelTimer()
        if reply.code == 421:
            # The server is closing the connection (RFC 5321 section 3.8).
            self._lostWhy = f"downstream closing: {reply}"
            waiter.errback(DownstreamError(self._lostWhy, reply))
            self.abort(self._lostWhy, reply)
            return
        waiter.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.abort("protocol error: reply line too long")

    def _expect(self, timed: bool = True) -> Deferred[DownstreamReply]:
        # Not timed: the timer starts later (see _drained).
        waiter: Deferred[DownstreamReply] = Deferred()
        if not self.usable:
            waiter.errback(DownstreamError(self._lostWhy))
            return waiter
        self._waiting.append(waiter)
        if timed:
            self._restartTimer()
        return waiter

    def _failAll(self, error: Exception) -> None:
        self._stopDraining()
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.called:
                waiter.errback(error)
        sending = self._sending
        if sending is not None:
            sending.downstreamLost(error)

    # -- the timer ------------------------------------------------------------------------

    def _restartTimer(self) -> None:
        self._cancelTimer()
        self._timer = self._reactor.callLater(self._timeout, self._timedOut)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _timedOut(self) -> None:
        self._timer = None
        self.abort(f"no reply within {self._timeout} s")

    # -- used by the message sender -------------------------------------------------------

    def _pausedTooLong(self) -> None:
        self.abort(f"the server did not read the message for {self._timeout} s")

    def _drained(self, timed: bool) -> None:
        # The message has gone out: now the server has timeout seconds for each reply
        # (unless the first is not timed: see sendData's untimedEnd).
        self._draining = None
        if timed and self._waiting and self._timer is None and self.usable:
            self._restartTimer()

    def _stopDraining(self) -> None:
        sender, self._draining = self._draining, None
        if sender is not None:
            sender.stopDraining()


@implementer(IPushProducer)
class _MessageSender(Protocol):
    """
    Reads the message from the stream (L{IMessageStream.deliverBody}) and writes it to the
    downstream connection, dot-stuffed.  It takes the stream as DATA is sent and holds it
    paused until L{start} (the server's 354), so that a message that fails before then
    drops the connection at once.  It is also the push producer registered with that
    connection's transport: when the transport's buffer is full it pauses the stream, which
    in turn stops reading from the client once its own buffer is full.
    """

    def __init__(
        self, client: DownstreamClient, header: bytes, replies: int, untimedEnd: bool = False
    ) -> None:
        self._client = client
        self._header = header
        self._replies = replies
        self._untimedEnd = untimedEnd
        self._stuffer = DotStuffer()
        self._producer: IPushProducer | None = None
        # While the transport holds this producer paused: the next look at how much of
        # what was written is still on this host, that count, and when it last went down.
        self._stall: IDelayedCall | None = None
        self._pending: int | None = None
        self._pendingSince = 0.0
        self._registered = False
        # Whether the transport paused this producer (its buffer is full).
        self._held = False
        self._started = False
        # After the final dot, while what was written has not all gone out: the last
        # count of bytes the kernel held, when it last went down, and the next look.
        self._draining = False
        self._unsent: int | None = None
        self._progressAt = 0.0
        self._drainCall: IDelayedCall | None = None
        # The message ended (all of it, which is none) before start.
        self._endedEarly = False
        self._finished = False
        #: The error that ended the message, if it failed.
        self.failure: BaseException | None = None
        #: Fires once the message is sent with a Deferred for each final reply.
        self.done: Deferred[list[Deferred[DownstreamReply]]] = Deferred()

    def makeConnection(self, transport: Any) -> None:
        # The stream is this protocol's transport, and a push producer.
        self._producer = IPushProducer(transport)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def connectionMade(self) -> None:
        # Nothing is read until start: the server has not invited the message yet.  (The
        # stream still tells of a failure at once.)
        assert self._producer is not None
        self._producer.pauseProducing()

    def start(self) -> None:
        """
        The server invited the message (354): send it.
        """
        clientTransport = self._client.transport
        if self._finished or clientTransport is None:
            return
        self._started = True
        self._client.step = "message"
        IConsumer(clientTransport).registerProducer(self, True)
        self._registered = True
        if self._header:
            self._write(self._stuffer.feed(self._header))
        if self._endedEarly:
            self.connectionLost(Failure(MessageDone()))
            return
        assert self._producer is not None
        self._producer.resumeProducing()

    def cancel(self) -> None:
        """
        The server did not invite the message: none of it is sent, and the stream is
        left as it is (whoever answers for the message lets go of it).
        """
        self._finished = True

    def dataReceived(self, data: bytes) -> None:
        self._write(self._stuffer.feed(data))

    def _write(self, data: bytes) -> None:
        transport = self._client.transport
        if data and transport is not None and self._client.usable and not self._finished:
            transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished:
            return
        if not self._started and reason.check(MessageDone):
            # The stream tells its end even while paused, once it holds nothing more: an
            # empty message.  Its end goes once the server has invited it.
            self._endedEarly = True
            return
        self._finished = True
        if reason.check(MessageDone):
            client = self._client
            transport = client.transport
            if client.usable and transport is not None:
                # Wait for the replies before the last bytes leave, so that no reply can
                # arrive before it is expected; but time them only once the message
                # has gone out (drain).
                waiters = [client._expect(timed=False) for _ in range(self._replies)]
                client.step = "end of data"
                self._draining = True
                client._draining = self
                transport.write(self._stuffer.end())
                self.done.callback(waiters)
                self._checkDrained()
            else:
                self._unregister()
                self.done.errback(DownstreamError(self._client._lostWhy))
            return
        self._unregister()
        # The message failed here: the downstream may have part of it and must not keep
        # it.
        self.failure = reason.value
        self._client.abort(f"message failed: {reason.getErrorMessage()}")
        self.done.errback(reason)

    def downstreamLost(self, error: Exception) -> None:
        """
        The downstream connection is gone: stop reading the message, and fail.
        """
        if self._finished:
            return
        self._finished = True
        self._unregister()
        if self._producer is not None:
            self._producer.stopProducing()
        self.done.errback(error)

    def _checkDrained(self) -> None:
        """
        After the final dot: whether all that was written has gone out, which starts the
        replies' timer.  While Twisted's buffer is full the transport keeps this producer
        paused, and resumes it once the buffer has gone to the kernel (the stall watch
        runs meanwhile, as during the message: see L{_watchStall}); then the kernel's
        count of unsent bytes is looked at until it is none, and a server that takes
        none of them for the timeout is dropped, as one that stops reading the message
        is.
        """
        self._cancelDrainCall()
        client = self._client
        if not self._draining or self._held:
            return
        unsent = _unsentBytes(client.transport) if client.usable else None
        if not unsent:
            self.stopDraining()
            client._drained(not self._untimedEnd)
            return
        now = client._reactor.seconds()
        if self._unsent is None or unsent < self._unsent:
            self._progressAt = now
        elif now - self._progressAt >= client._timeout:
            client._pausedTooLong()
            return
        self._unsent = unsent
        delay = min(_DRAIN_POLL, client._timeout / 4)
        self._drainCall = client._reactor.callLater(delay, self._checkDrained)

    def stopDraining(self) -> None:
        """
        No more need to watch the message go out: it has, a reply came, or the
        connection is lost.
        """
        if not self._draining:
            return
        self._draining = False
        self._cancelDrainCall()
        self._unregister()

    def _cancelDrainCall(self) -> None:
        call, self._drainCall = self._drainCall, None
        if call is not None and call.active():
            call.cancel()

    def _unregister(self) -> None:
        self._cancelStall()
        if self._registered:
            self._registered = False
            transport = self._client.transport
            if transport is not None:
                IConsumer(transport).unregisterProducer()

    def _cancelStall(self) -> None:
        stall, self._stall = self._stall, None
        if stall is not None and stall.active():
            stall.cancel()

    # IPushProducer, for the downstream transport.

    def pauseProducing(self) -> None:
        if self._finished and not self._draining:
            return
        self._held = True
        if not self._finished and self._producer is not None:
            self._producer.pauseProducing()
        if self._stall is None:
            client = self._client
            self._pending = _pendingBytes(client.transport)
            self._pendingSince = client._reactor.seconds()
            self._watchStall()

    def _watchStall(self) -> None:
        """
        While the transport's buffer is full: a server that takes none of what this host
        still holds of the message (Twisted's buffer and, where the system tells, the
        kernel's) for the timeout is dropped.  Any progress counts, however small: the
        transport resumes this producer only once its whole buffer (a chunk of the
        stream, up to a few hundred kilobytes) has gone to the kernel, which a slow but
        steady server may take longer than the timeout to allow.
        """
        client = self._client
        now = client._reactor.seconds()
        pending = _pendingBytes(client.transport)
        if pending is not None and (self._pending is None or pending < self._pending):
            self._pendingSince = now
        self._pending = pending
        left = self._pendingSince + client._timeout - now
        if left <= 0:
            self._stall = None
            client._pausedTooLong()
            return
        self._stall = client._reactor.callLater(
            min(left, _DRAIN_POLL, client._timeout / 4), self._watchStall
        )

    def resumeProducing(self) -> None:
        self._held = False
        self._cancelStall()
        if self._draining:
            self._checkDrained()
            return
        if self._finished or self._producer is None:
            return
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        if not self._finished:
            self.downstreamLost(DownstreamError("the downstream connection stopped"))


def _unsentBytes(transport: object) -> int | None:
    """
    How many of the bytes written to the socket under C{transport} (under its TLS layer,
    if any) the kernel still holds, not yet taken by the peer: L{None} where the system
    does not tell, or the transport is no socket's.
    """
    for _ in range(3):
        if transport is None:
            return None
        if ISystemHandle.providedBy(transport):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket):
                return _outQueue(handle)
        # Twisted's TLS layer is a protocol wrapper over the socket's transport.
        transport = getattr(transport, "transport", None)
    return None


def _pendingBytes(transport: object) -> int | None:
    """
    How many of the bytes written to C{transport} are still on this host: in Twisted's
    buffer of the socket's transport (under the TLS layer, if any) and, where the system
    tells, the kernel's (L{_unsentBytes}); L{None} when neither can be known.
    """
    unsent = _unsentBytes(transport)
    buffered: int | None = None
    for _ in range(3):
        if transport is None:
            break
        # A FileDescriptor's write buffer: what is left of dataBuffer from offset on,
        # and what was written since.
        dataBuffer = getattr(transport, "dataBuffer", None)
        offset = getattr(transport, "offset", None)
        tempLength = getattr(transport, "_tempDataLen", None)
        if isinstance(dataBuffer, bytes) and isinstance(offset, int):
            buffered = len(dataBuffer) - offset + (tempLength if isinstance(tempLength, int) else 0)
            break
        transport = getattr(transport, "transport", None)
    if buffered is None and unsent is None:
        return None
    return (buffered or 0) + (unsent or 0)


def _outQueue(sock: socket.socket) -> int | None:
    # SIOCOUTQ (TIOCOUTQ's number): for TCP the bytes sent and not yet acknowledged by
    # the peer, or not yet sent; for a Unix socket those its peer has not read yet.
    # Other systems' ioctls of that number mean other things, or nothing, for a socket.
    if sys.platform != "linux":
        return None
    import fcntl
    import termios

    try:
        answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    unsent: int = struct.unpack("i", answer)[0]
    return unsent


class DownstreamFactory(Factory):
    """
    Makes L{DownstreamClient}s for an endpoint's C{connect}.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def buildProtocol(self, addr: IAddress | None) -> DownstreamClient:
        protocol = DownstreamClient(self._reactor, self._timeout)
        protocol.factory = self
        return protocol
