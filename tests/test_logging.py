"""
Tests for the C{logLevel} option: the server does not make the events below it.
"""

from __future__ import annotations

import time
from typing import Any, cast

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, LogPublisher, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import IMailFromHandler, Session, SMTPServer, _protocol
from smtpsvc._core._session import Address
from smtpsvc._logging import LevelLogger, hostPort
from smtpsvc._options import LOG_LEVELS
from smtpsvc.testing import MemoryClient, RecordingHandler

from .e2e_support import LogCapture
from .protocol_support import codes, connect, hello, makeServer


def mailOnce(client: MemoryClient) -> None:
    """
    Send one message and QUIT: a transaction line and a connection line at info level.
    """
    hello(client)
    replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<r@d.example>", "DATA")
    assert codes(replies) == [250, 250, 354], replies
    assert codes(client.write(b"hi\r\n.\r\n")) == [250]
    client.send("QUIT")


def smtpsvcEvents(capture: LogCapture) -> list[LogEvent]:
    return [e for e in capture.events if e.get("log_namespace") == "smtpsvc"]


@implementer(IMailFromHandler)
class Broken:
    """
    A MAIL FROM handler with a bug.
    """

    def onMailFrom(self, address: Address, session: Session) -> None:
        raise ValueError("a bug in the handler")


class LevelLoggerTests(SynchronousTestCase):
    """
    L{LevelLogger} publishes the events at or above its level and no others.
    """

    def test_emit(self) -> None:
        events: list[LogEvent] = []
        log = LevelLogger("test", LogLevel.warn)
        log.observer = LogPublisher(cast(ILogObserver, events.append))
        log.info("not made")
        log.debug("not made")
        log.warn("made {n}", n=1)
        log.error("made {n}", n=2)
        log.line("not made either {}")
        self.assertEqual([e["n"] for e in events], [1, 2])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn, LogLevel.error])

    def _loggers(self) -> tuple[list[LogEvent], LevelLogger, Logger]:
        """
        A L{LevelLogger} at info level and a L{Logger} with the same namespace, source
        and observer, and the list that observer keeps their events in.
        """
        events: list[LogEvent] = []
        observer = LogPublisher(cast(ILogObserver, events.append))
        source = object()
        ours = LevelLogger("test", LogLevel.info)
        ours.source, ours.observer = source, observer
        return events, ours, Logger("test", source, observer)

    def assertSameEvents(self, events: list[LogEvent], ours: LevelLogger, theirs: Logger) -> None:
        """
        C{events} are one event of C{ours} and then one of C{theirs}, each naming its own
        logger, and equal but for the logger and the time.
        """
        made, reference = events
        self.assertIs(made["log_logger"], ours)
        self.assertIs(reference["log_logger"], theirs)
        for event in events:
            del event["log_logger"], event["log_time"]
        self.assertEqual(made, reference)

    def test_sameEvents(self) -> None:
        """
        Its events are those a L{Logger} makes: the same keys with the same values, but
        for the logger itself and the time (it makes them without L{Logger.emit}).
        """
        events, ours, theirs = self._loggers()
        for log in (ours, theirs):
            before = time.time()
            log.warn("made {n}", n=1)
            self.assertTrue(before <= events[-1]["log_time"] <= time.time())
        self.assertSameEvents(events, ours, theirs)

    def test_lineEvent(self) -> None:
        """
        L{LevelLogger.line} makes the event a L{Logger} makes for an info line whose format
        is the text with its braces doubled and whose fields are the given ones and the
        text: that format names no field, and a text observer shows the text as it is.
        """
        events, ours, theirs = self._loggers()
        text = "from <{a}> to ['b'] for {x!r}"
        before = time.time()
        ours.line(text, event="transaction", size=3)
        self.assertTrue(before <= events[-1]["log_time"] <= time.time())
        theirs.info("from <{{a}}> to ['b'] for {{x!r}}", event="transaction", size=3, text=text)
        self.assertSameEvents(events, ours, theirs)
        self.assertEqual(formatEvent(events[0]), text)

    def test_trace(self) -> None:
        """
        An event given a C{log_trace} list records the logger and its observer in it, as
        L{Logger.emit} does.
        """
        events: list[LogEvent] = []
        log = LevelLogger("test", LogLevel.info)
        log.observer = observer = LogPublisher(cast(ILogObserver, events.append))
        trace: list[object] = []
        log.info("traced", log_trace=trace)
        self.assertEqual(trace[0], (log, observer))
        self.assertEqual(len(events), 1)

    def test_wants(self) -> None:
        log = LevelLogger("test", LogLevel.info)
        self.assertFalse(log.wants(LogLevel.debug))
        self.assertTrue(log.wants(LogLevel.info))
        self.assertTrue(log.wants(LogLevel.critical))


class LogLevelOptionTests(SynchronousTestCase):
    """
    The C{logLevel} option of L{SMTPServer}.
    """

    def test_defaultInfo(self) -> None:
        """
        By default the server writes its line per message and per connection.
        """
        capture = LogCapture(self)
        mailOnce(connect(RecordingHandler()))
        kinds = [e.get("event") for e in smtpsvcEvents(capture)]
        self.assertEqual(kinds, ["transaction", "disconnect"])

    def test_warnMakesNoInfoLines(self) -> None:
        """
        At C{warn} the lines are neither published nor built: the session goes on as
        ever, and nothing of the lines' text is computed.
        """
        built: list[object] = []
        realTLSText = _protocol._tlsText

        def tlsText(session: Session) -> str | None:
            built.append(session)
            return realTLSText(session)

        self.patch(_protocol, "_tlsText", tlsText)
        capture = LogCapture(self)
        handler = RecordingHandler()
        mailOnce(connect(handler, logLevel="warn"))
        self.assertEqual(len(handler.messages), 1)
        self.assertEqual(smtpsvcEvents(capture), [])
        self.assertEqual(built, [])
        # The same session at info builds both lines' TLS text.
        mailOnce(connect(RecordingHandler(), logLevel="info"))
        self.assertEqual(len(built), 2)

    def test_errorDropsWarnings(self) -> None:
        """
        At C{error} a warning (a bad PROXY header) is not made; at C{warn} it is.
        """
        for level, expected in (("error", 0), ("warn", 1)):
            capture = LogCapture(self)
            client = MemoryClient(makeServer(useProxy=True, logLevel=level))
            client.write(b"PROXY WHAT\r\n")
            self.assertTrue(client.closed)
            warnings = [e for e in smtpsvcEvents(capture) if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), expected, level)

    def test_handlerFailuresAtEveryLevel(self) -> None:
        """
        A handler's failure is logged at C{critical}, as L{Logger.failure} logs: every
        level keeps it.  The client gets its 451.
        """
        client = connect(Broken(), logLevel="critical")
        hello(client)
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [451])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_levelsAreTwisteds(self) -> None:
        """
        The option's choices, written out in the pure L{smtpsvc._options} (which cannot
        import Twisted), are Twisted's levels by name, in order: each one the server takes
        is one C{twist --log-level} takes.
        """
        self.assertEqual(LOG_LEVELS, tuple(level.name for level in LogLevel.iterconstants()))

    def test_unknownLevel(self) -> None:
        """
        A level Twisted does not have is refused with the option's name and the choices.
        """
        with self.assertRaises(ValueError) as caught:
            SMTPServer(logLevel="loud")
        self.assertIn("logLevel", str(caught.exception))
        self.assertIn("debug, info, warn, error, critical", str(caught.exception))


class TransactionLineTests(SynchronousTestCase):
    """
    The line logged for each message.
    """

    def test_numberIsTheReceivedId(self) -> None:
        """
        The line's C{transaction} is the message's number in the session, the one the
        data handlers see in C{session.transaction} and the C{Received:} id ends with:
        1, then 2.
        """
        recorder = RecordingHandler()
        seen: list[int] = []

        class Numbers(RecordingHandler):
            async def onData(self, stream: Any, session: Session) -> None:
                seen.append(session.transaction)
                await recorder.onData(stream, session)

        capture = LogCapture(self)
        client = connect(Numbers(), clientName="c.example")
        for _ in range(2):
            replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<r@d.example>", "DATA")
            self.assertEqual(codes(replies + client.write(b"hi\r\n.\r\n")), [250, 250, 354, 250])
        lines = [e for e in smtpsvcEvents(capture) if e.get("event") == "transaction"]
        self.assertEqual([line["transaction"] for line in lines], [1, 2])
        self.assertEqual(seen, [1, 2])


class AddressAndPortTests(SynchronousTestCase):
    """
    An address and a port in a log line: an IPv6 address in brackets (RFC 5952 section
    6), since C{2001:db8::6:2222} would itself read as an address.
    """

    def test_hostPort(self) -> None:
        """
        IPv4 addresses and host names as they are; IPv6 addresses bracketed.
        """
        self.assertEqual(hostPort("192.0.2.1", 25), "192.0.2.1:25")
        self.assertEqual(hostPort("mx.example", 25), "mx.example:25")
        self.assertEqual(hostPort("2001:db8::6", 2222), "[2001:db8::6]:2222")

    def test_connectionClosedLine(self) -> None:
        """
        The line per connection of an IPv6 client (IPv6 QA: it was written
        C{2001:db8::6:2222}).
        """
        capture = LogCapture(self)
        client = MemoryClient(makeServer([]), peer=("2001:db8::6", 2222))
        client.send("QUIT")
        [line] = [e for e in smtpsvcEvents(capture) if e.get("event") == "disconnect"]
        self.assertTrue(line["text"].startswith("Connection closed: [2001:db8::6]:2222 after "))
        self.assertEqual((line["remoteAddress"], line["remotePort"]), ("2001:db8::6", 2222))
