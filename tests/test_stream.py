"""
Tests for the message stream data handlers read: its three reading styles, its endings,
and that a large message passes in bounded memory.
"""

from __future__ import annotations

import tracemalloc
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from smtpsvc import (
    IDataHandler,
    IMessageStream,
    MessageAborted,
    MessageDone,
    MessageStream,
    Session,
    SMTPServer,
    readMessage,
)
from smtpsvc._stream import _FanOut
from smtpsvc.testing import MemoryClient


def newStream() -> tuple[MessageStream, list[str]]:
    events: list[str] = []
    fanOut = _FanOut(lambda: events.append("pause"), lambda: events.append("resume"))
    stream = fanOut.newStream(lambda failure: events.append(f"failed: {failure.value}"))
    return stream, events


def pausedWithBacklog(reader: Protocol, chunks: int) -> tuple[MessageStream, list[str]]:
    """
    A stream delivering to C{reader}, paused by it, with C{chunks} chunks of 100 kB
    written to it since.
    """
    stream, events = newStream()
    stream.deliverBody(reader)
    stream.pauseProducing()
    for _ in range(chunks):
        stream._fanOut.write(b"x" * 100_000)
    return stream, events


class Sink(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


class MessageStreamTests(SynchronousTestCase):
    """
    One handler's view of the message.
    """

    def test_interface(self) -> None:
        """
        MessageStream provides IMessageStream.
        """
        stream, _ = newStream()
        self.assertTrue(verifyObject(IMessageStream, stream))

    def test_deliverBodyAfterData(self) -> None:
        """
        Data written before deliverBody is delivered when it is called, then the end.
        """
        stream, _ = newStream()
        stream.write(b"a")
        stream.write(b"b")
        stream.finish(MessageDone())
        sink = Sink()
        stream.deliverBody(sink)
        self.assertEqual(sink.data, [b"a", b"b"])
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(MessageDone))

    def test_oneReaderOnly(self) -> None:
        """
        A stream has one reader.
        """
        stream, _ = newStream()
        stream.deliverBody(Sink())
        self.assertRaises(RuntimeError, stream.deliverBody, Sink())
        self.assertRaises(RuntimeError, stream.__aiter__)

    def test_failureDropsUnread(self) -> None:
        """
        An error ends the stream at once; unread data is dropped.
        """
        stream, _ = newStream()
        stream.write(b"unread")
        stream.finish(MessageAborted("gone"))
        sink = Sink()
        stream.deliverBody(sink)
        self.assertEqual(sink.data, [])
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(MessageAborted))

    def test_readMessage(self) -> None:
        """
        readMessage gives the whole message once it ends.
        """
        stream, _ = newStream()
        d = readMessage(stream)
        stream.write(b"hello ")
        self.assertNoResult(d)
        stream.write(b"world")
        stream.finish(MessageDone())
        self.assertEqual(self.successResultOf(d), b"hello world")

    def test_readMessageFails(self) -> None:
        """
        readMessage fails with the error that ended the message.
        """
        stream, _ = newStream()
        d = readMessage(stream)
        stream.finish(MessageAborted("gone"))
        self.failureResultOf(d, MessageAborted)

    def test_abortAfterTheEndNotTaken(self) -> None:
        """
        A message aborted after its end, before the reader took the end, is aborted for
        that reader: it was never accepted, and its client sends it again.
        """
        stream, _ = newStream()
        stream.write(b"whole message")
        stream.finish(MessageDone())
        stream.finish(MessageAborted("the handlers did not answer in time"))
        self.failureResultOf(readMessage(stream), MessageAborted)

    def test_abortAfterTheEndTaken(self) -> None:
        """
        Once the reader has the end, an abort changes nothing for it; nor does a second
        end, for one whose stream was aborted.
        """
        stream, _ = newStream()
        d = readMessage(stream)
        stream.write(b"whole message")
        stream.finish(MessageDone())
        stream.finish(MessageAborted("gone"))
        self.assertEqual(self.successResultOf(d), b"whole message")
        stream, _ = newStream()
        stream.finish(MessageAborted("gone"))
        stream.finish(MessageDone())
        self.failureResultOf(readMessage(stream), MessageAborted)

    def test_asyncIteration(self) -> None:
        """
        async for yields the chunks, then stops at the end.
        """
        stream, _ = newStream()
        seen: list[bytes] = []

        async def read() -> None:
            async for chunk in stream:
                seen.append(chunk)

        d = Deferred.fromCoroutine(read())
        stream.write(b"1")
        stream.write(b"2")
        self.assertEqual(seen, [b"1", b"2"])
        self.assertNoResult(d)
        stream.finish(MessageDone())
        self.successResultOf(d)

    def test_asyncIterationFails(self) -> None:
        """
        async for raises the error that ended the message.
        """
        stream, _ = newStream()

        async def read() -> None:
            async for _ in stream:
                pass

        d = Deferred.fromCoroutine(read())
        stream.finish(MessageAborted("gone"))
        self.failureResultOf(d, MessageAborted)

    def test_pauseAndResume(self) -> None:
        """
        A paused reader lets data pile up until the high-water mark, which pauses the
        connection; resuming delivers it and lets the connection go on.
        """
        sink = Sink()
        stream, events = pausedWithBacklog(sink, 5)
        self.assertEqual(events, ["pause"])
        self.assertEqual(sink.data, [])
        stream.resumeProducing()
        self.assertEqual(len(sink.data), 5)
        self.assertEqual(events, ["pause", "resume"])

    def test_readerFailure(self) -> None:
        """
        A reader that raises gets nothing more, its stream reports the failure, and the
        connection it paused reads again: the stream holds nothing for it.
        """

        class Broken(Sink):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError("division by zero")

        sink = Broken()
        stream, events = pausedWithBacklog(sink, 3)
        stream.resumeProducing()
        self.assertEqual(events, ["pause", "failed: division by zero", "resume"])
        self.assertEqual(stream.backlog, 0)
        stream._fanOut.write(b"more")
        stream.finish(MessageDone())
        self.assertIsNone(sink.reason)

    def test_notifyEndBeforeTheBacklog(self) -> None:
        """
        notifyEnd fires when the message ends, while its reader still has a backlog to
        take (the end reaches the reader after it); and at once once it has ended.
        """
        sink = Sink()
        stream, _ = pausedWithBacklog(sink, 3)
        ended = stream.notifyEnd()
        self.assertNoResult(ended)
        stream.finish(MessageDone())
        self.successResultOf(ended)
        self.assertIsNone(sink.reason)
        self.successResultOf(stream.notifyEnd())
        stream.resumeProducing()
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(MessageDone))

    def test_notifyEndAtTheClientsEnd(self) -> None:
        """
        notifyEnd fires for every handler's stream when the client has sent the whole
        message, before the message ends for the handler (which waits for the answers
        of the handlers before it), since the client waits for all from then on.
        """
        sink = Sink()
        stream, _ = newStream()
        stream.deliverBody(sink)
        ended = stream.notifyEnd()
        stream._fanOut.ended()
        self.successResultOf(ended)
        self.assertIsNone(sink.reason)
        stream.finish(MessageDone())
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(MessageDone))

    def test_notifyEndOfAFailure(self) -> None:
        """
        notifyEnd fires too when the message fails, and when its handler answers before
        the end, which fails the message for its readers.
        """
        stream, _ = newStream()
        ended = stream.notifyEnd()
        stream.finish(MessageAborted("gone"))
        self.successResultOf(ended)
        stream, _ = newStream()
        ended = stream.notifyEnd()
        stream.abandon()
        stream.finish(MessageDone())
        self.successResultOf(ended)

    def test_notifyAbortedAfterTheWholeMessage(self) -> None:
        """
        notifyAborted fires, with the error, when the message fails after its reader had
        it whole (its end included), which that reader is not told; never for a message
        that ends normally, nor for one that fails before the reader had its end (the
        reader's connectionLost tells it).
        """
        sink = Sink()
        stream, _ = newStream()
        stream.deliverBody(sink)
        aborted = stream.notifyAborted()
        stream.finish(MessageDone())
        self.assertNoResult(aborted)
        stream.finish(MessageAborted("gone"))
        self.assertEqual(str(self.successResultOf(aborted)), "gone")
        assert sink.reason is not None
        self.assertTrue(sink.reason.check(MessageDone))
        sink = Sink()
        stream, _ = pausedWithBacklog(sink, 3)
        aborted = stream.notifyAborted()
        stream.finish(MessageDone())
        stream.finish(MessageAborted("gone"))
        self.assertNoResult(aborted)

    def test_stopProducingDiscards(self) -> None:
        """
        A reader that stops producing gets nothing more and never blocks the connection;
        its connectionLost comes at once, with MessageAborted, as a transport's
        stopProducing ends its protocol's connection (API QA: it never came).
        """
        stream, events = newStream()
        sink = Sink()
        stream.deliverBody(sink)
        stream.stopProducing()
        assert sink.reason is not None
        self.assertEqual(
            str(sink.reason.value), "the handler's protocol stopped reading the message"
        )
        self.assertIsInstance(sink.reason.value, MessageAborted)
        for _ in range(5):
            stream._fanOut.write(b"x" * 100_000)
        stream.finish(MessageDone())
        self.assertEqual((sink.data, events), ([], []))
        self.assertIsInstance(sink.reason.value, MessageAborted)

    def test_abandonedIteratorGetsAnError(self) -> None:
        """
        An async for reader whose handler answered before the message's end (or before
        it took what was queued) gets MessageAborted, not the end of a message cut short
        that looks whole (attack QA); one that had taken it all ends normally.
        """

        async def read(stream: MessageStream) -> bytes:
            return b"".join([chunk async for chunk in stream])

        # Answered while the reader waits for more...
        stream, _ = newStream()
        reading = Deferred.fromCoroutine(read(stream))
        stream._fanOut.write(b"part")
        stream.abandon()
        stream.finish(MessageDone())
        self.failureResultOf(reading, MessageAborted)
        # ... and with the rest, and the end, queued for it.
        stream, _ = newStream()
        stream._fanOut.write(b"part")
        stream.finish(MessageDone())
        stream.abandon()
        self.failureResultOf(Deferred.fromCoroutine(read(stream)), MessageAborted)
        # A protocol given only after the handler answered is told too.
        stream, _ = newStream()
        stream._fanOut.write(b"part")
        stream.abandon()
        sink = Sink()
        stream.deliverBody(sink)
        assert sink.reason is not None
        self.assertIsInstance(sink.reason.value, MessageAborted)
        stream, _ = newStream()
        reading = Deferred.fromCoroutine(read(stream))
        stream._fanOut.write(b"all")
        stream.finish(MessageDone())
        stream.abandon()
        self.assertEqual(self.successResultOf(reading), b"all")
        self.assertTrue(stream.delivered)

    def test_stoppedInConnectionMade(self) -> None:
        """
        A protocol that stops producing in its connectionMade gets its connectionLost
        once connectionMade has returned.
        """
        calls: list[str] = []

        class Quitter(Sink):
            def connectionMade(self) -> None:
                calls.append("made in")
                cast(MessageStream, self.transport).stopProducing()
                calls.append("made out")

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                calls.append(f"lost: {type(reason.value).__name__}")

        stream, _ = newStream()
        stream.deliverBody(Quitter())
        stream._fanOut.write(b"x")
        self.assertEqual(calls, ["made in", "made out", "lost: MessageAborted"])

    def test_abandonedReaderIsToldOnce(self) -> None:
        """
        A reader whose handler answers before the message's end gets its connectionLost
        then, once, with MessageAborted; when that happens inside its own dataReceived,
        once dataReceived has returned.  One that had the whole message is not told
        again, nor one that failed.
        """
        calls: list[str] = []

        class Answering(Sink):
            def __init__(self, stream: MessageStream) -> None:
                super().__init__()
                self.stream = stream

            def dataReceived(self, data: bytes) -> None:
                calls.append("data in")
                self.stream.abandon()
                calls.append("data out")

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                calls.append(f"lost: {reason.value}")

        stream, _ = newStream()
        stream.deliverBody(Answering(stream))
        stream._fanOut.write(b"spam")
        stream._fanOut.write(b"more")
        stream.abandon()
        self.assertEqual(
            calls,
            ["data in", "data out", "lost: the handler answered before the message's end"],
        )
        whole, _ = newStream()
        sink = Sink()
        whole.deliverBody(sink)
        whole.finish(MessageDone())
        whole.abandon()
        assert sink.reason is not None
        self.assertIsInstance(sink.reason.value, MessageDone)
        failing, events = newStream()

        class Broken(Sink):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError("division by zero")

        broken = Broken()
        failing.deliverBody(broken)
        failing._fanOut.write(b"x")
        failing.abandon()
        self.assertIsNone(broken.reason)
        self.assertEqual(events, ["failed: division by zero"])


@implementer(IDataHandler)
class CountingHandler:
    """
    Counts the bytes of each message without keeping them.
    """

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        total = 0
        async for chunk in stream:
            total += len(chunk)
        self.sizes.append(total)


class LargeMessageTests(SynchronousTestCase):
    """
    A message much larger than memory allows passes in bounded memory.
    """

    def test_constantMemory(self) -> None:
        """
        32 MiB pass through the server with a peak of traced memory under 2 MiB: the
        message is streamed, never held whole.
        """
        handler = CountingHandler()
        client = MemoryClient(SMTPServer([handler], reactor=Clock(), authOptional=True))
        client.send("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        line = b"x" * 998 + b"\r\n"
        chunk = line * 64
        count = (32 * 1024 * 1024) // len(chunk)
        tracemalloc.start()
        try:
            for _ in range(count):
                client.protocol.dataReceived(chunk)
            client.protocol.dataReceived(b".\r\n")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(handler.sizes, [count * len(chunk)])
        self.assertLess(peak, 2 * 1024 * 1024)
        self.assertEqual(client.received()[-1].code, 250)
