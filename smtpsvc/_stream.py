"""
The message as data handlers receive it: a stream with backpressure.

Each data handler gets its own L{MessageStream}.  The connection writes the decoded
message into all of them; a stream holds at most about L{HIGH_WATER} bytes its handler has
not taken yet before it asks the connection to stop reading from the client, and lets it
read again below L{LOW_WATER}.  So memory per connection stays bounded whatever the size
of the message, and a slow handler slows its client down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IMessageStream

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocol

_T = TypeVar("_T")

#: Unread bytes a stream holds before the connection stops reading from the client.
HIGH_WATER = 256 * 1024
#: Unread bytes below which a paused connection reads again.
LOW_WATER = 64 * 1024


class MessageDone(Exception):
    """
    The message ended normally: every byte has been delivered.
    """


class MessageAborted(Exception):
    """
    The message will not complete: the client disconnected (or reset the transaction
    between BDAT chunks), or the server shut down; or, for a handler that had not read
    it to its end, it was cut off after its end without a reply (the handlers took
    longer than C{handlerTimeout}, or the client went away).
    """


class MessageTooLarge(Exception):
    """
    The message went over the server's C{size} limit; the client gets 552.
    """


class MessageRefused(Exception):
    """
    The message is refused before it reached this handler: a handler registered earlier
    refused it, or it broke the bare line ending policy.
    """


@implementer(IMessageStream, IPushProducer)
class MessageStream:
    """
    One data handler's view of the message.  See L{IMessageStream}.
    """

    def __init__(self, fanOut: _FanOut, readerFailed: Callable[[Failure], None]) -> None:
        self._fanOut = fanOut
        self._readerFailed = readerFailed
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._end: BaseException | None = None
        self._consumer: IProtocol | None = None
        self._iterating = False
        self._paused = False
        self._discarding = False
        self._waiter: Deferred[None] | None = None
        # Whether the consumer has had its connectionLost (or failed, and gets nothing
        # more); how deep in its methods the stream is now; and why the stream was
        # dropped while it was, for the connectionLost it gets once out.
        self._told = False
        self._inReader = 0
        self._droppedWhy: str | None = None
        self._endWaiters: list[Deferred[None]] | None = []
        self._abortWaiters: list[Deferred[BaseException]] | None = []

    @property
    def byteLength(self) -> int:
        """
        Bytes of message received so far.
        """
        return self._fanOut.byteLength

    @property
    def sizeExceeded(self) -> bool:
        """
        Whether the message went over the size limit.
        """
        return self._fanOut.sizeExceeded

    @property
    def backlog(self) -> int:
        """
        Bytes received for this handler that it has not taken yet.
        """
        return self._queued

    # -- the handler's side ---------------------------------------------------------------

    def deliverBody(self, protocol: IProtocol) -> None:
        """
        Deliver the message to C{protocol}: C{dataReceived} for each chunk, then
        C{connectionLost} with L{MessageDone} or the error that ended it.  The protocol's
        transport is this stream, a push producer it may pause.
        """
        if self._consumer is not None or self._iterating:
            raise RuntimeError("the message stream already has a reader")
        self._consumer = protocol
        # As in its other methods, a connectionLost it causes comes once it has returned.
        self._inReader += 1
        try:
            protocol.makeConnection(self)  # type: ignore[arg-type]
        finally:
            self._inReader -= 1
        if self._tellHeldBack():
            return
        self._flush()
        # What was queued is taken: the connection may read again (a reader that came
        # late, after the queue had filled, would otherwise wait for ever).
        self._fanOut.drained()

    def notifyEnd(self) -> Deferred[None]:
        """
        A Deferred that fires once the client has sent the whole message (even while the
        handlers before this one have not accepted it yet, so that this handler has not
        seen its end), or the message failed for this handler: from then on its client
        waits for the answer, and the time it will wait, C{handlerTimeout}, counts for
        every handler from that moment.  It fires at once, even while part of the
        message is still waiting to be taken, unlike the reader's C{connectionLost},
        which comes after that part and after the earlier handlers' answers.  (Not part
        of L{IMessageStream}: the built-in forwarding times the downstream's answer
        from it.)
        """
        if self._endWaiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._endWaiters.append(waiter)
        return waiter

    def notifyAborted(self) -> Deferred[BaseException]:
        """
        A Deferred that fires, with the error, if the message fails after this stream's
        reader had it whole, L{MessageDone} included (the client went away, or the
        server stopped, before it was answered): the reader is told nothing more, but
        its handler's answer will reach no one, so whatever it handed on whole should
        be taken back if it can be.  It never fires for a message that ends otherwise.
        (Not part of L{IMessageStream}: the built-in forwarding drops the downstream
        connection on it, before the downstream has answered.)
        """
        waiter: Deferred[BaseException] = Deferred()
        if self._abortWaiters is not None:
            self._abortWaiters.append(waiter)
        return waiter

    def __aiter__(self) -> MessageStream:
        if self._consumer is not None:
            raise RuntimeError("the message stream already has a reader")
        self._iterating = True
        return self

    async def __anext__(self) -> bytes:
        while not self._queue:
            if self._end is not None:
                if isinstance(self._end, MessageDone):
                    # Taken whole (see delivered).
                    self._end = _DELIVERED
                    raise StopAsyncIteration
                raise self._end
            self._waiter = Deferred()
            await self._waiter
        chunk = self._queue.popleft()
        self._queued -= len(chunk)
        self._fanOut.drained()
        return chunk

    # IPushProducer, for deliverBody's protocol.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()
        self._fanOut.drained()

    def stopProducing(self) -> None:
        self._discard("the handler's protocol stopped reading the message")

    # -- the connection's side -------------------------------------------------------------

    @property
    def full(self) -> bool:
        """
        Whether this stream wants the connection to stop reading.
        """
        return self._queued >= HIGH_WATER

    @property
    def hungry(self) -> bool:
        """
        Whether this stream has room again.
        """
        return self._queued <= LOW_WATER

    @property
    def delivered(self) -> bool:
        """
        Whether its reader has had the whole message, L{MessageDone} included: a
        handler that may have stored it.
        """
        return self._end is _DELIVERED

    def write(self, chunk: bytes) -> None:
        if self._discarding or self._end is not None or not chunk:
            return
        if self._consumer is not None and not self._paused and not self._queue:
            self._toReader(self._consumer.dataReceived, chunk)
            return
        self._queue.append(chunk)
        self._queued += len(chunk)
        self._wake()

    def finish(self, reason: BaseException) -> None:
        """
        End the stream: L{MessageDone} after the queued data, or an error.  An error
        drops whatever was not taken yet, and replaces a L{MessageDone} the reader has
        not taken yet either: a message aborted after its end (the client went away, or
        the handlers took too long to answer) was never accepted, so its client sends it
        again, and a handler that had not read it to its end should not store it.
        """
        end = self._end
        if end is _DELIVERED and not isinstance(reason, MessageDone):
            # Too late for the reader, which has had the message's end already.
            abortWaiters, self._abortWaiters = self._abortWaiters, None
            for abortWaiter in abortWaiters or ():
                abortWaiter.callback(reason)
            return
        if end is not None and (
            end is _DELIVERED or not isinstance(end, MessageDone) or isinstance(reason, MessageDone)
        ):
            return
        if not isinstance(reason, MessageDone):
            self._queue.clear()
            self._queued = 0
        self._end = reason
        self._tellEnd()
        self._flush()
        self._wake()

    def clientEnded(self) -> None:
        """
        The client has sent the whole message (see L{notifyEnd}).
        """
        self._tellEnd()

    def _tellEnd(self) -> None:
        endWaiters, self._endWaiters = self._endWaiters, None
        for waiter in endWaiters or ():
            waiter.callback(None)

    def abandon(self) -> None:
        """
        The handler has answered: whatever it has not taken is dropped.
        """
        self._discard("the handler answered before the message's end")

    def _discard(self, why: str | None = None) -> None:
        # Drop what is queued, and take no more.  A deliverBody protocol that has not
        # had its connectionLost gets it now, with MessageAborted(why) (once out of the
        # method it is in, if it is in one): a protocol releases what it holds there.
        # An async for reader that would now miss part of the message gets that error
        # instead of the message's end, not a message cut short that looks whole.
        dropped = bool(self._queue)
        self._discarding = True
        self._queue.clear()
        self._queued = 0
        self._fanOut.drained()
        if why is None:
            return
        end = self._end
        if end is None or (dropped and end is not _DELIVERED and isinstance(end, MessageDone)):
            # What reads from now on (async for, or a protocol given later) gets it.
            self._end = MessageAborted(why)
            self._tellEnd()
            self._wake()
        consumer = self._consumer
        if consumer is None or self._told:
            return
        if self._inReader:
            self._droppedWhy = why
            return
        self._told = True
        self._toReader(consumer.connectionLost, Failure(MessageAborted(why)))

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _flush(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        while self._queue and not self._paused:
            chunk = self._queue.popleft()
            self._queued -= len(chunk)
            self._toReader(consumer.dataReceived, chunk)
        if not self._queue and self._end is not None and not self._told and not self._inReader:
            # (Inside one of the reader's methods, the end waits until it has returned.)
            end = self._end
            if isinstance(end, MessageDone):
                self._end = _DELIVERED
            self._discarding = self._told = True
            self._toReader(consumer.connectionLost, Failure(end))

    def _toReader(self, method: Callable[[_T], object], argument: _T) -> None:
        # A reader that raises has a bug: it gets nothing more, and its handler is
        # answered as failed (logged, and 451 for the message) without waiting for an
        # answer that the bug may have lost.
        self._inReader += 1
        try:
            method(argument)
        except Exception:
            self._told = True
            self._readerFailed(Failure())
            self._discard()
        finally:
            self._inReader -= 1
        self._tellHeldBack()

    def _tellHeldBack(self) -> bool:
        # Out of the reader's methods: the connectionLost held back while it was in one
        # (see _discard) comes now.  Whether there was one.
        if self._inReader:
            return False
        why, self._droppedWhy = self._droppedWhy, None
        if why is None:
            return False
        self._discard(why)
        return True


# Marks a stream whose end has been handed to its consumer.
_DELIVERED = MessageDone()


class _FanOut:
    """
    Writes the message into every handler's stream and tells the connection when to
    stop and start reading.
    """

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self._paused = False
        self.streams: list[MessageStream] = []
        self.byteLength = 0
        self.sizeExceeded = False

    def newStream(self, readerFailed: Callable[[Failure], None]) -> MessageStream:
        """
        A stream for one more handler; C{readerFailed} is called with the failure if the
        protocol it delivers the message to raises.
        """
        stream = MessageStream(self, readerFailed)
        self.streams.append(stream)
        return stream

    def write(self, chunk: bytes) -> None:
        for stream in self.streams:
            stream.write(chunk)
        if not self._paused and any(stream.full for stream in self.streams):
            self._paused = True
            self._pause()

    def ended(self) -> None:
        """
        The client has sent the whole message: each stream's L{MessageStream.notifyEnd}
        fires, before the handlers' answers let the message end for each in turn.
        """
        for stream in self.streams:
            stream.clientEnded()

    def drained(self) -> None:
        if self._paused and all(stream.hungry for stream in self.streams):
            self._paused = False
            self._resume()

    @property
    def anyDelivered(self) -> bool:
        """
        Whether any handler's reader has had the whole message.
        """
        return any(stream.delivered for stream in self.streams)

    def failAll(self, reason: BaseException) -> None:
        for stream in self.streams:
            stream.finish(reason)
        self.drained()


class _Collector(Protocol):
    def __init__(self, done: Deferred[bytes]) -> None:
        self._chunks: list[bytes] = []
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(MessageDone):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


def readMessage(stream: IMessageStream) -> Deferred[bytes]:
    """
    The whole message as bytes, once it has ended (like Twisted's C{readBody}).  It fails
    with the error that ended the message if it did not end normally.

    This holds the whole message in memory: use it for messages you know to be small,
    or when C{size} bounds them.
    """
    done: Deferred[bytes] = Deferred()
    stream.deliverBody(_Collector(done))
    return done
