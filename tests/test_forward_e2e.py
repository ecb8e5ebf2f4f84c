"""
End-to-end tests of the forwarding delivery with Postfix's C{smtp-sink} as the downstream.

C{smtp-sink} (Debian package C{postfix}) is started on a free port of 127.0.0.1 and dumps
each message it receives into a file; an in-process L{SMTPServer} with L{ForwardDelivery}
relays to it, and C{smtplib} in a thread is the client.  Each test starts its own sink and
kills it by PID in its cleanup; every wait is bounded.  The last tests have a downstream of
their own in the process instead, one that reads slowly, over real sockets.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest

from smtpsvc.handlers.forward import ForwardDelivery
from smtpsvc.testing import stuff

from .e2e_support import (
    CLIENT_NAME,
    LOCALHOST,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    E2ETestCase,
    OutputProcess,
    freePort,
    startServer,
    theReactor,
)

#: Where smtp-sink is, if it is installed.
SMTP_SINK = shutil.which("smtp-sink") or next(
    (p for p in ("/usr/sbin/smtp-sink", "/usr/bin/smtp-sink") if os.access(p, os.X_OK)), None
)
#: The name our server gives downstream, in EHLO/LHLO and in its Received header.
FRONT = "relay.e2e.test"
MESSAGE = (
    b"From: <alice@example.org>\r\n"
    b"To: <bob@example.net>\r\n"
    b"Subject: through the sink\r\n"
    b"\r\n"
    b"A first line.\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b".one dot\r\n"
    b"\r\n"
    b"The end.\r\n"
)
SECOND = b"Subject: 2\r\n\r\nTwo\r\n"


class SinkProcess(OutputProcess):
    """
    A running smtp-sink: its output, and whether it ended.  L{OutputProcess.stop} stops
    it: SIGTERM, then SIGKILL if it is still there after
    L{tests.e2e_support.EXIT_TIMEOUT} seconds; both to its PID only.
    """


def stopSink(process: SinkProcess) -> Deferred[None]:
    """
    Stop C{process} (a cleanup).
    """
    return Deferred.fromCoroutine(process.stop())


def waitForListener(port: int, within: float) -> bool:
    """
    Whether something accepts connections on C{port} within C{within} seconds (blocking:
    run it in a thread).
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOCALHOST, port), timeout=SOCKET_TIMEOUT):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class ForwardE2ETestCase(E2ETestCase):
    """
    Starts smtp-sink and an smtpsvc front relaying to it.
    """

    def setUp(self) -> None:
        if SMTP_SINK is None:
            raise self.skipTest(
                "smtp-sink is not installed (Debian package postfix: "
                "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix)"
            )

    async def startSink(self, *options: str) -> tuple[SinkProcess, int, Path]:
        """
        Start smtp-sink with C{options}, dumping each message into a file of a new
        directory; retry on another port if the one picked was taken meanwhile.

        @return: the process, its port and the dump directory.
        """
        assert SMTP_SINK is not None
        dumps = Path(tempfile.mkdtemp(prefix="smtpsvc-sink-"))
        self.addCleanup(shutil.rmtree, dumps, True)
        # smtp-sink runs as nobody (-u), which must be able to write there.
        dumps.chmod(0o777)
        reactor = cast(IReactorProcess, theReactor())
        for _ in range(5):
            port = freePort()
            argv = [SMTP_SINK, "-u", "nobody", *options, "-d", f"{dumps}/%M."]
            argv += [f"{LOCALHOST}:{port}", "100"]
            process = SinkProcess()
            process.processTransport = reactor.spawnProcess(process, SMTP_SINK, argv, env={})
            self.addCleanup(stopSink, process)
            listening = await deferToThread(waitForListener, port, START_TIMEOUT)
            if listening and not process.ended:
                return process, port, dumps
            await stopSink(process)
        raise FailTest(f"smtp-sink did not start; its output: {process.output!r}")

    async def startFront(self, sinkPort: int, **options: Any) -> int:
        """
        An smtpsvc server on a port of its own, relaying to the sink.

        @return: its port.
        """
        lmtp = options.pop("downstreamLMTP", False)
        forward = ForwardDelivery(
            f"tcp:host={LOCALHOST}:port={sinkPort}",
            lmtp=lmtp,
            reactor=theReactor(),
            serverName=FRONT,
            timeout=10,
        )
        _, port = await startServer(
            self, [forward], authOptional=True, disableReverseLookup=True, **options
        )
        return port

    async def dumped(self, dumps: Path, count: int = 1) -> list[bytes]:
        """
        The messages the sink dumped, once there are C{count} complete ones (a dump ends
        with an empty line), within a bounded time.
        """
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while True:
            files = sorted(dumps.iterdir())
            contents = [f.read_bytes() for f in files]
            if len(contents) >= count and all(c.endswith(b"\n\n") for c in contents):
                return contents
            if time.monotonic() > deadline:
                raise FailTest(f"smtp-sink dumped {len(contents)} messages, not {count}")
            await deferLater(theReactor(), 0.05, lambda: None)

    def assertDumped(self, dump: bytes, message: bytes) -> dict[str, list[str]]:
        """
        The dump holds the message, with our Received header first: smtp-sink's records
        (C{X-...: value} lines and its own three-line Received header), then ours, then the
        message, all with LF line endings, then an empty line.

        @return: smtp-sink's records, by name.
        """
        lines = dump.split(b"\n")
        records: dict[str, list[str]] = {}
        index = 0
        while lines[index].startswith(b"X-"):
            name, _, value = lines[index].decode().partition(": ")
            records.setdefault(name, []).append(value)
            index += 1
        # smtp-sink's own Received header: three lines.
        self.assertTrue(lines[index].startswith(b"Received: from "), dump)
        self.assertIn(b"(smtp-sink)", lines[index + 1])
        rest = b"\n".join(lines[index + 3 :])
        self.assertTrue(rest.startswith(b"Received: from " + CLIENT_NAME.encode()), rest)
        expected = message.replace(b"\r\n", b"\n") + b"\n"
        self.assertTrue(rest.endswith(expected), rest)
        ours = rest[: len(rest) - len(expected)].split(b"\n")
        self.assertEqual(ours[-1], b"")
        self.assertTrue(all(line.startswith(b"\t") for line in ours[1:-1]), ours)
        self.assertIn(f"\tby {FRONT} (smtpsvc) with ".encode(), b"\n".join(ours))
        self.assertNotIn(b"Return-Path", rest)
        return records


class SinkTests(ForwardE2ETestCase):
    """
    Messages relayed to smtp-sink arrive intact, with our Received header.
    """

    async def test_smtp(self) -> None:
        """
        SMTP to SMTP: the message arrives intact, for both recipients, with the DSN and
        BODY parameters the sink supports, and the client's 250 is the sink's.
        """
        _, sinkPort, dumps = await self.startSink()
        port = await self.startFront(sinkPort, hideDSN=False)

        def send() -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                refused = client.sendmail(
                    "alice@example.org",
                    ["bob@example.net", "carol@example.net"],
                    MESSAGE,
                    mail_options=["BODY=8BITMIME", "RET=HDRS", "ENVID=env+2B1"],
                    rcpt_options=["NOTIFY=SUCCESS,FAILURE"],
                )
                return refused, client.noop()

        refused, _ = await deferToThread(send)
        self.assertEqual(refused, {})
        [dump] = await self.dumped(dumps)
        records = self.assertDumped(dump, MESSAGE)
        self.assertEqual(records["X-Client-Proto"], ["ESMTP"])
        self.assertEqual(records["X-Helo-Args"], [FRONT])
        self.assertEqual(
            records["X-Mail-Args"], ["<alice@example.org> BODY=8BITMIME RET=HDRS ENVID=env+2B1"]
        )
        self.assertEqual(
            records["X-Rcpt-Args"],
            [
                "<bob@example.net> NOTIFY=SUCCESS,FAILURE",
                "<carol@example.net> NOTIFY=SUCCESS,FAILURE",
            ],
        )

    async def test_twoMessagesOneSession(self) -> None:
        """
        Two messages in one client session both arrive.
        """
        _, sinkPort, dumps = await self.startSink()
        port = await self.startFront(sinkPort)

        def send() -> None:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                client.sendmail("a@example.org", ["b@example.net"], MESSAGE)
                client.sendmail("a@example.org", ["c@example.net"], SECOND)

        await deferToThread(send)
        first, second = sorted(await self.dumped(dumps, 2), key=lambda d: b"Subject: 2" in d)
        self.assertDumped(first, MESSAGE)
        self.assertDumped(second, SECOND)

    async def test_lmtp(self) -> None:
        """
        LMTP client, LMTP downstream: after the message one reply per recipient, the
        sink's; the message arrives intact.
        """
        _, sinkPort, dumps = await self.startSink("-L")
        port = await self.startFront(sinkPort, lmtp=True, downstreamLMTP=True)

        def send() -> list[tuple[int, bytes]]:
            client = smtplib.LMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT)
            try:
                replies = [client.ehlo(CLIENT_NAME)]
                replies.append(client.mail("alice@example.org"))
                replies.append(client.rcpt("bob@example.net"))
                replies.append(client.rcpt("carol@example.net"))
                client.putcmd("data")
                replies.append(client.getreply())
                client.send(stuff(MESSAGE))
                replies += [client.getreply(), client.getreply()]
                replies.append(client.quit())
                return replies
            finally:
                client.close()

        replies = await deferToThread(send)
        self.assertEqual([code for code, _ in replies], [250, 250, 250, 250, 354, 250, 250, 221])
        [dump] = await self.dumped(dumps)
        records = self.assertDumped(dump, MESSAGE)
        self.assertEqual(records["X-Client-Proto"], ["LMTP"])
        self.assertEqual(records["X-Rcpt-Args"], ["<bob@example.net>", "<carol@example.net>"])

    async def test_smtpToLMTP(self) -> None:
        """
        SMTP client, LMTP downstream that accepts for everyone: one 250.
        """
        _, sinkPort, dumps = await self.startSink("-L")
        port = await self.startFront(sinkPort, downstreamLMTP=True)

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                return client.sendmail("a@example.org", ["b@example.net", "c@example.net"], MESSAGE)

        self.assertEqual(await deferToThread(send), {})
        [dump] = await self.dumped(dumps)
        self.assertDumped(dump, MESSAGE)

    async def test_sinkStopped(self) -> None:
        """
        With the sink stopped the client gets 451 at MAIL, and can try again later.
        """
        sink, sinkPort, _ = await self.startSink()
        port = await self.startFront(sinkPort)
        await stopSink(sink)

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                client.ehlo()
                return client.mail("a@example.org")

        code, text = await deferToThread(send)
        self.assertEqual(code, 451)
        self.assertIn(b"downstream unavailable", text)

    async def test_dataRefusedBeforeTheMessage(self) -> None:
        """
        A sink that refuses DATA (smtp-sink -r DATA, 450): the client's DATA gets that
        refusal in place of 354, so smtplib never sends its message; after RSET the
        session goes on.
        """
        _, sinkPort, dumps = await self.startSink("-r", "DATA")
        port = await self.startFront(sinkPort, hideENHANCEDSTATUSCODES=False)

        def send() -> tuple[list[tuple[int, bytes]], int]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                client.ehlo()
                replies = [client.mail("a@example.org"), client.rcpt("b@example.net")]
                replies.append(client.docmd("DATA"))
                return replies, client.rset()[0]

        replies, reset = await deferToThread(send)
        self.assertEqual([code for code, _ in replies], [250, 250, 450])
        self.assertTrue(replies[-1][1].startswith(b"4."), replies[-1])
        self.assertEqual(reset, 250)
        # (smtp-sink writes a file for the envelope it was given, and removes it when the
        # transaction ends without a message, maybe between the listing and the reading;
        # no message is in it.)
        for dump in dumps.iterdir():
            try:
                content = dump.read_bytes()
            except FileNotFoundError:
                continue
            self.assertNotIn(f"by {FRONT} (smtpsvc)".encode(), content)

    async def test_sink421(self) -> None:
        """
        A sink that says 421 and hangs up after RCPT: the client gets 451 for that
        recipient, and its connection stays up.
        """
        _, sinkPort, dumps = await self.startSink("-Q", "RCPT")
        port = await self.startFront(sinkPort)

        def send() -> list[tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
                client.ehlo()
                return [client.mail("a@example.org"), client.rcpt("b@example.net"), client.noop()]

        replies = await deferToThread(send)
        self.assertEqual([code for code, _ in replies], [250, 451, 250])
        self.assertEqual(list(dumps.iterdir()), [])


class SlowReader(LineReceiver):
    """
    A downstream SMTP server that reads a message slowly but steadily: one read (Twisted's
    64 KiB at most) every L{PACE} seconds, from a small receive buffer; it answers at once.

    @ivar reads: when each read of the message came (C{reactor.seconds()}).
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 100_000
    PACE = 0.1

    def __init__(self, messages: list[int]) -> None:
        self.messages = messages
        self.reads: list[float] = []
        self.inData = False
        self.size = 0
        self._resume: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # What the kernel takes for this server beyond what it read stays small: the rest
        # of a message waits on the sender's side.
        self.transport.getHandle().setsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024
        )
        self.sendLine(b"220 slow.e2e.test ESMTP")

    def dataReceived(self, data: bytes) -> None:
        reading = self.inData
        super().dataReceived(data)
        if reading and self.inData and self.transport is not None:
            self.reads.append(theReactor().seconds())
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self._resume = theReactor().callLater(self.PACE, self._goOn)

    def _goOn(self) -> None:
        self._resume = None
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def lineReceived(self, line: bytes) -> None:
        if self.inData:
            if line == b".":
                self.inData = False
                self.messages.append(self.size)
                self.sendLine(b"250 2.0.0 Ok: queued")
            else:
                self.size += len(line) + 2
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-slow.e2e.test\r\n250 8BITMIME")
        elif verb == b"DATA":
            self.inData = True
            self.sendLine(b"354 Go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            assert self.transport is not None
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 2.0.0 Ok")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()


class HoardingReader(SlowReader):
    """
    A downstream that takes all that comes at once into buffers of its own, and reads it
    from there at L{SlowReader}'s pace: the sender's buffers are empty long before it
    has read the message (as with a receive buffer the kernel grew to megabytes).
    """

    def __init__(self, messages: list[int]) -> None:
        super().__init__(messages)
        self._backlog = bytearray()

    def connectionMade(self) -> None:
        self.sendLine(b"220 hoarding.e2e.test ESMTP")

    def dataReceived(self, data: bytes) -> None:
        self._backlog += data
        if self._resume is None:
            self._goOn()

    def _goOn(self) -> None:
        self._resume = None
        if not self._backlog:
            return
        piece = bytes(self._backlog[:65536])
        del self._backlog[:65536]
        reading = self.inData
        LineReceiver.dataReceived(self, piece)
        if reading:
            self.reads.append(theReactor().seconds())
        if self.transport is not None and (self._backlog or self.inData):
            self._resume = theReactor().callLater(self.PACE, self._goOn)


class SlowDownstreamTests(E2ETestCase):
    """
    A downstream that reads slowly but steadily, over real sockets.
    """

    async def relayThroughSlowReader(self, kind: type[SlowReader]) -> None:
        """
        Send a 2 MB message through a front with a timeout of 0.5 s to a downstream of
        C{kind}, check that it arrived whole and took the downstream more than two
        seconds to read, reading all the while.
        """
        messages: list[int] = []
        readers: list[SlowReader] = []

        def build() -> SlowReader:
            reader = kind(messages)
            readers.append(reader)
            return reader

        reactor = theReactor()
        port = reactor.listenTCP(0, Factory.forProtocol(build), interface=LOCALHOST)
        self.addCleanup(lambda: maybeDeferred(port.stopListening))
        forward = ForwardDelivery(
            f"tcp:host={LOCALHOST}:port={port.getHost().port}",
            reactor=reactor,
            serverName=FRONT,
            timeout=0.5,
        )
        _, frontPort = await startServer(self, [forward], disableReverseLookup=True)
        body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25_000

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, frontPort, CLIENT_NAME, timeout=30) as client:
                return client.sendmail("a@example.org", ["b@example.net"], body)

        self.assertEqual(await deferToThread(send), {})
        [reader] = readers
        self.assertEqual(len(messages), 1)
        self.assertGreater(messages[0], len(body))
        # It read all the while, and far longer than the timeout.
        self.assertGreater(reader.reads[-1] - reader.reads[0], 2.0)
        self.assertLess(max(b - a for a, b in pairwise(reader.reads)), 0.5)

    async def test_slowReaderGetsTheMessage(self) -> None:
        """
        The reply to the final dot is waited for once the message has gone out of this
        host's buffers (Twisted's and the kernel's), not from when the dot was handed to
        them: a downstream that needs about three seconds to read a 2 MB message, from a
        small receive buffer, with a timeout of 0.5 s, gets it and its 250 reaches the
        client.
        """
        await self.relayThroughSlowReader(SlowReader)

    async def test_hoardingReaderGetsTheMessage(self) -> None:
        """
        The first reply after the message has no shorter limit than the answer's: a
        downstream that has taken all of a 2 MB message into buffers of its own at once,
        which the sender cannot see, and needs about three seconds to read it from
        there, with a timeout of 0.5 s, gets it and its 250 reaches the client.
        """
        await self.relayThroughSlowReader(HoardingReader)
