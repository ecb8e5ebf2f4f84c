"""
End-to-end tests: real sockets on 127.0.0.1, real clients (smtplib, raw sockets, swaks) and
the real C{twist smtpsvc} command.

In-process servers run on trial's reactor; blocking clients run in threads
(C{deferToThread}) so that the reactor keeps serving them.  Helpers are in
L{tests.e2e_support}.
"""

from __future__ import annotations

import mailbox
import os
import signal
import smtplib
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from smtpsvc import (
    Address,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
    SMTPError,
    readMessage,
)
from smtpsvc import Session as SMTPSession
from smtpsvc.testing import RecordingHandler, ServerReply

from . import smuggling
from .e2e_support import (
    CLIENT_NAME,
    EXIT_TIMEOUT,
    LISTEN,
    LOCALHOST,
    SERVER_NAME,
    SOCKET_TIMEOUT,
    E2ETestCase,
    LogCapture,
    RawClient,
    assertTwistRefuses,
    connectionRefused,
    describeDifference,
    haveSwaks,
    maildirArgs,
    runSwaks,
    startServer,
    startTwist,
    theReactor,
    withoutTraceHeaders,
    workspace,
)

SENDER = "a@example.org"
RECIPIENTS = ["b@example.net", "c@example.net"]
NO_SWAKS = "swaks is not installed (apt-get install swaks; `make test` installs it)"


def simpleMessage(subject: str = "e2e") -> bytes:
    """
    A small message with CRLF line endings, including lines that smtplib must dot-stuff.
    """
    return (
        f"From: {SENDER}\r\nTo: {RECIPIENTS[0]}\r\nSubject: {subject}\r\n\r\n".encode()
        + b"line one\r\n.leading dot\r\n..two dots\r\n.\r\n\r\nlast line\r\n"
    )


def bigMessage() -> bytes:
    """
    A message of more than 1 MiB: 8-bit bytes on every line, lines of one to three leading
    dots, and lines that are only dots (each would end the message if left unstuffed).
    """
    eight = bytes(range(0x80, 0x100))
    lines = [b"From: a@example.org", b"Subject: big", b"", b".", b"..", b"..."]
    size = 0
    index = 0
    while size < 1 << 20:
        offset = index % 64
        line = b"." * (index % 4) + b"%07d " % index + eight[offset : offset + 64]
        if index % 1000 == 0:
            line = b"."
        lines.append(line)
        size += len(line) + 2
        index += 1
    return b"\r\n".join(lines) + b"\r\n"


def sendWithSmtplib(
    port: int,
    message: bytes,
    recipients: Sequence[str] = RECIPIENTS,
    mailOptions: Sequence[str] = (),
) -> dict[str, tuple[int, bytes]]:
    """
    Send C{message} with C{smtplib.SMTP.sendmail} (blocking: run it in a thread).

    @return: what sendmail returns, the refused recipients.
    """
    with smtplib.SMTP(LOCALHOST, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT) as c:
        refused = c.sendmail(SENDER, list(recipients), message, mail_options=list(mailOptions))
        c.quit()
    return refused


def codes(replies: Sequence[ServerReply]) -> list[int]:
    """
    The codes of C{replies}.
    """
    return [reply.code for reply in replies]


class SmtplibTests(E2ETestCase):
    """
    Python's smtplib, a real client, sends mail to an in-process server.
    """

    async def test_sendmailTwoRecipients(self) -> None:
        """
        A message smtplib sends to two recipients arrives byte for byte, envelope intact.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder])
        message = simpleMessage()
        refused = await deferToThread(sendWithSmtplib, port, message)
        self.assertEqual(refused, {})
        self.assertEqual(len(recorder.messages), 1)
        received = recorder.messages[0]
        self.assertEqual(received.data, message)
        envelope = received.envelope
        assert envelope.mailFrom is not None
        self.assertEqual(envelope.mailFrom.address, SENDER)
        self.assertEqual([r.address for r in envelope.rcptTo], RECIPIENTS)

    async def test_6152_05_eightBitStoredByteExact(self) -> None:
        """
        A 1 MiB message with 8-bit bytes and lines starting with dots arrives byte-exact.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder])
        message = bigMessage()
        self.assertGreaterEqual(len(message), 1 << 20)
        refused = await deferToThread(
            sendWithSmtplib, port, message, RECIPIENTS[:1], ["BODY=8BITMIME"]
        )
        self.assertEqual(refused, {})
        self.assertEqual(len(recorder.messages), 1)
        difference = describeDifference(recorder.messages[0].data, message)
        if difference is not None:
            self.fail(difference)
        self.assertEqual(recorder.messages[0].envelope.bodyType, "8bitmime")


class PipeliningTests(E2ETestCase):
    """
    RFC 2920: a client may send a group of commands in one write.
    """

    async def test_groupAnsweredInOrder(self) -> None:
        """
        MAIL, RCPT, RCPT, DATA in one write get 250, 250, 250, 354 in order (2920-02).
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder])

        def talk() -> tuple[ServerReply, list[ServerReply], ServerReply, ServerReply]:
            with RawClient(port) as client:
                self.assertEqual(client.readReply().code, 220)
                ehlo = client.command(f"EHLO {CLIENT_NAME}")
                client.send(
                    b"MAIL FROM:<a@b.example>\r\n"
                    b"RCPT TO:<c@d.example>\r\n"
                    b"RCPT TO:<e@f.example>\r\n"
                    b"DATA\r\n"
                )
                group = client.readReplies(4)
                client.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\n")
                final = client.readReply()
                quit = client.command("QUIT")
            return ehlo, group, final, quit

        ehlo, group, final, quit = await deferToThread(talk)
        self.assertEqual(ehlo.code, 250)
        self.assertIn("PIPELINING", ehlo.lines)
        self.assertEqual(codes(group), [250, 250, 250, 354])
        self.assertEqual(final.code, 250)
        self.assertEqual(quit.code, 221)
        self.assertEqual(len(recorder.messages), 1)
        self.assertEqual(recorder.messages[0].data, b"Subject: pipelined\r\n\r\nhello\r\n")
        envelope = recorder.messages[0].envelope
        assert envelope.mailFrom is not None
        self.assertEqual(envelope.mailFrom.address, "a@b.example")
        self.assertEqual([r.address for r in envelope.rcptTo], ["c@d.example", "e@f.example"])


@implementer(IMailFromHandler)
class _AnswersLater:
    """
    Accepts each sender a tenth of a second later, from a timer of the reactor.
    """

    def onMailFrom(self, address: Address, session: SMTPSession) -> Deferred[None]:
        return deferLater(theReactor(), 0.1, lambda: None)


class HalfCloseTests(E2ETestCase):
    """
    A client may shut down its side of the connection and still read the replies owed.
    """

    async def test_lateAnswerReachesHalfClosedClient(self) -> None:
        """
        The reply a handler makes from a timer is sent when it is made: it reaches a
        client that half-closed after its command, though the server reads that end of
        the input at its next turn.  So do the replies to commands pipelined after it,
        which are handled once the answer comes, outside any reading.
        """
        _, port = await startServer(self, [_AnswersLater()])

        def talk(hello: str, commands: bytes) -> list[ServerReply]:
            with RawClient(port) as client:
                self.assertEqual(client.readReply().code, 220)
                self.assertEqual(client.command(f"{hello} {CLIENT_NAME}").code, 250)
                client.send(commands)
                client.sock.shutdown(socket.SHUT_WR)
                return client.readUntilClosed()

        replies = await deferToThread(talk, "HELO", b"MAIL FROM:<a@b.example>\r\n")
        self.assertEqual(codes(replies), [250])
        pipelined = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n"
        replies = await deferToThread(talk, "EHLO", pipelined)
        self.assertEqual(codes(replies), [250, 250, 250])


class ListeningLogTests(E2ETestCase):
    """
    What the log says when the server starts listening.
    """

    async def test_noFactoryNoise(self) -> None:
        """
        The server logs each listener once, itself; Twisted's "Starting factory" lines
        (two per implicit TLS listener) are not there too, and Twisted's own line for a
        port names the server, not a private class.
        """
        logs = LogCapture(self)
        server, _ = await startServer(self, [])
        await server.listen(LISTEN, secure=True)
        self.assertEqual(logs.matching("Starting factory"), [])
        self.assertEqual(len(logs.matching("server listening on")), 2)
        self.assertEqual(len(logs.matching("SMTPServer starting on")), 2, logs.messages())


if TYPE_CHECKING:
    _SmugglingBase = E2ETestCase
else:
    _SmugglingBase = object


class _SmugglingTestsMixin(_SmugglingBase):
    """
    SMTP smuggling (standards section 2.2): a non-standard end of data inside a message
    must not end it, so the commands after it stay message text.  Subclasses set the
    bare line ending policy.
    """

    policy: str

    async def _smuggle(self, separator: bytes) -> None:
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder], bareLineEndings=self.policy)

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                self.assertEqual(client.readReply().code, 220)
                self.assertEqual(client.command(f"EHLO {CLIENT_NAME}").code, 250)
                self.assertEqual(client.command("MAIL FROM:<alice@example.org>").code, 250)
                self.assertEqual(client.command("RCPT TO:<bob@example.net>").code, 250)
                self.assertEqual(client.command("DATA").code, 354)
                client.send(smuggling.payload(separator))
                # QUIT after the payload: every reply the payload caused comes before 221.
                client.send(b"QUIT\r\n")
                return client.readUntilClosed()

        replies = await deferToThread(talk)
        final = 550 if self.policy == "reject" else 250
        self.assertEqual(
            codes(replies),
            [final, 221],
            f"separator {separator!r} under {self.policy!r}: replies {replies!r}",
        )
        if self.policy == "reject":
            self.assertEqual(recorder.messages, [])
        else:
            self.assertEqual(len(recorder.messages), 1)
            self.assertIn(b"MAIL FROM:<evil@x>", recorder.messages[0].data)
            self.assertTrue(recorder.messages[0].data.endswith(smuggling.SMUGGLED_END))
            self.assertEqual(recorder.messages[0].data, smuggling.received(separator, self.policy))

    async def test_lfDotLf(self) -> None:
        """
        LF . LF inside a message does not end it.
        """
        await self._smuggle(smuggling.LF_DOT_LF)

    async def test_lfDotCrlf(self) -> None:
        """
        LF . CRLF inside a message does not end it.
        """
        await self._smuggle(smuggling.LF_DOT_CRLF)

    async def test_crlfDotLf(self) -> None:
        """
        CRLF . LF inside a message does not end it.
        """
        await self._smuggle(smuggling.CRLF_DOT_LF)

    async def test_crDotCr(self) -> None:
        """
        CR . CR inside a message does not end it.
        """
        await self._smuggle(smuggling.CR_DOT_CR)

    async def test_crDotCrlf(self) -> None:
        """
        CR . CRLF inside a message does not end it.
        """
        await self._smuggle(smuggling.CR_DOT_CRLF)

    async def test_crlfDotCr(self) -> None:
        """
        CRLF . CR inside a message does not end it.
        """
        await self._smuggle(smuggling.CRLF_DOT_CR)

    async def test_crCrlfDotCrCrlf(self) -> None:
        """
        CR CRLF . CR CRLF inside a message does not end it.
        """
        await self._smuggle(smuggling.CR_CRLF_DOT_CR_CRLF)

    async def test_lfDotDotLf(self) -> None:
        """
        LF .. LF inside a message does not end it.
        """
        await self._smuggle(smuggling.LF_DOT_DOT_LF)


class SmugglingNormalizeTests(_SmugglingTestsMixin, E2ETestCase):
    """
    With the default policy (C{normalize}) a smuggling attempt is one message, accepted
    once, with the would-be commands inside it.
    """

    policy = "normalize"


class SmugglingRejectTests(_SmugglingTestsMixin, E2ETestCase):
    """
    With C{bareLineEndings="reject"} a smuggling attempt is one message, refused once with
    550, and nothing is delivered.
    """

    policy = "reject"


class GuardTests(E2ETestCase):
    """
    Clients that misbehave before or instead of SMTP are turned away.
    """

    async def test_earlyTalkerRefused(self) -> None:
        """
        A client talking before the greeting gets 421 and is cut off; a patient one is not.
        """
        _, port = await startServer(self, [RecordingHandler()], earlyTalkerDelay=0.5)

        def rude() -> list[ServerReply]:
            with RawClient(port) as client:
                client.send(b"EHLO x\r\n")
                return client.readUntilClosed()

        def patient() -> tuple[float, ServerReply, ServerReply]:
            with RawClient(port) as client:
                started = time.monotonic()
                greeting = client.readReply()
                waited = time.monotonic() - started
                return waited, greeting, client.command(f"EHLO {CLIENT_NAME}")

        replies = await deferToThread(rude)
        self.assertEqual(replies, [ServerReply(421, (f"{SERVER_NAME} You talk too soon",))])
        waited, greeting, ehlo = await deferToThread(patient)
        self.assertEqual(greeting.code, 220)
        self.assertGreaterEqual(waited, 0.4)
        self.assertEqual(ehlo.code, 250)

    async def test_maxClients(self) -> None:
        """
        With maxClients=2 a third client gets 421 and is cut off; the first two carry on.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder], maxClients=2)

        def talk() -> tuple[list[ServerReply], list[int], list[int]]:
            with RawClient(port) as first, RawClient(port) as second:
                self.assertEqual(first.readReply().code, 220)
                self.assertEqual(second.readReply().code, 220)
                with RawClient(port) as third:
                    refused = third.readUntilClosed()
                firstCodes = [
                    first.command(f"EHLO {CLIENT_NAME}").code,
                    first.command("MAIL FROM:<a@example.org>").code,
                    first.command("RCPT TO:<b@example.net>").code,
                    first.command("DATA").code,
                ]
                first.send(b"Subject: first\r\n\r\nstill served\r\n.\r\n")
                firstCodes.append(first.readReply().code)
                secondCodes = [second.command(f"EHLO {CLIENT_NAME}").code]
                secondCodes.append(second.command("QUIT").code)
                firstCodes.append(first.command("QUIT").code)
            return refused, firstCodes, secondCodes

        refused, firstCodes, secondCodes = await deferToThread(talk)
        self.assertEqual(
            refused,
            [
                ServerReply(
                    421, (f"{SERVER_NAME} Too many connected clients, try again in a moment",)
                )
            ],
        )
        self.assertEqual(firstCodes, [250, 250, 250, 354, 250, 221])
        self.assertEqual(secondCodes, [250, 221])
        self.assertEqual(len(recorder.messages), 1)

    async def test_httpRequestRefused(self) -> None:
        """
        A web browser's request line gets "421 HTTP requests not allowed" and is cut off.
        """
        _, port = await startServer(self, [RecordingHandler()])

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                self.assertEqual(client.readReply().code, 220)
                client.send(b"GET / HTTP/1.1\r\n")
                return client.readUntilClosed()

        replies = await deferToThread(talk)
        self.assertEqual(replies, [ServerReply(421, ("HTTP requests not allowed",))])

    async def test_maxClientsPerAddress(self) -> None:
        """
        With maxClientsPerAddress=2, a third connection from 127.0.0.1 gets 421 naming
        the address and is cut off, while the first two are served; once one of them
        has left, the address may connect again.
        """
        _, port = await startServer(self, [RecordingHandler()], maxClientsPerAddress=2)

        def talk() -> tuple[list[ServerReply], int, int]:
            with RawClient(port) as first, RawClient(port) as second:
                first.readReply()
                second.readReply()
                with RawClient(port) as third:
                    refused = third.readUntilClosed()
                served = first.command(f"EHLO {CLIENT_NAME}").code
                first.command("QUIT")
                first.readUntilClosed()
                # The server sees the close a moment later: bounded retries.
                for _ in range(50):
                    with RawClient(port) as again:
                        code = again.readReply().code
                    if code == 220:
                        break
                    time.sleep(0.05)
            return refused, served, code

        refused, served, again = await deferToThread(talk)
        self.assertEqual(
            refused,
            [ServerReply(421, (f"{SERVER_NAME} Error: too many connections from {LOCALHOST}",))],
        )
        self.assertEqual((served, again), (250, 220))

    async def test_maxErrors(self) -> None:
        """
        With maxErrors=3, a client whose commands keep failing gets 421 4.7.0 in place
        of its third error reply, and the connection closes.
        """
        _, port = await startServer(
            self, [RecordingHandler()], maxErrors=3, hideENHANCEDSTATUSCODES=False
        )

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                client.readReply()
                client.command(f"EHLO {CLIENT_NAME}")
                client.send(b"MAIL FROM:<a@@b>\r\nVRFY\r\nVRFY\r\nNOOP\r\n")
                return client.readUntilClosed()

        self.assertEqual(
            [(reply.code, reply.lines[0][:5]) for reply in await deferToThread(talk)],
            [(501, "5.1.7"), (501, "5.5.4"), (421, "4.7.0")],
        )

    async def test_maxJunkCommands(self) -> None:
        """
        With maxJunkCommands=2 and maxErrors=2, a client that sends only NOOPs gets two
        250s, a third (its first error), then 421 4.7.0, and the connection closes.
        """
        _, port = await startServer(self, [RecordingHandler()], maxJunkCommands=2, maxErrors=2)

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                client.readReply()
                client.send(b"NOOP\r\n" * 5)
                return client.readUntilClosed()

        self.assertEqual([reply.code for reply in await deferToThread(talk)], [250, 250, 250, 421])


NO_SUCH_USER = "nobody@example.net"


@implementer(IRcptToHandler, IDataHandler)
class _MailboxPolicy:
    """
    Refuses one address with 550 and, in LMTP, answers each recipient of a message with a
    text that names it, so that the order of the replies can be seen.
    """

    def onRcptTo(self, address: Address, session: SMTPSession) -> None:
        if address.address == NO_SUCH_USER:
            raise SMTPError(550, "No such user")

    async def onData(self, stream: IMessageStream, session: SMTPSession) -> list[str]:
        await readMessage(stream)
        return [f"delivered to {r.address}" for r in session.envelope.rcptTo]


class LMTPTests(E2ETestCase):
    """
    RFC 2033: an LMTP server answers a message once per accepted recipient.
    """

    async def test_oneReplyPerAcceptedRecipient(self) -> None:
        """
        An LMTP message gets one reply per accepted RCPT, in RCPT order (2033-04).
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [_MailboxPolicy(), recorder], lmtp=True)
        rcpts = ["one@example.net", NO_SUCH_USER, "two@example.net", "one@example.net"]

        def talk() -> tuple[ServerReply, list[ServerReply], list[ServerReply], ServerReply]:
            with RawClient(port) as client:
                greeting = client.readReply()
                before = [client.command(f"LHLO {CLIENT_NAME}")]
                before.append(client.command("MAIL FROM:<a@example.org>"))
                before += [client.command(f"RCPT TO:<{rcpt}>") for rcpt in rcpts]
                before.append(client.command("DATA"))
                client.send(b"Subject: lmtp\r\n\r\nhello\r\n.\r\n")
                after = client.readReplies(3)
                # Anything more the message caused would come before QUIT's 221.
                quit = client.command("QUIT")
            return greeting, before, after, quit

        greeting, before, after, quit = await deferToThread(talk)
        self.assertEqual(greeting.code, 220)
        self.assertIn("LMTP", greeting.text)
        self.assertEqual(codes(before), [250, 250, 250, 550, 250, 250, 354])
        self.assertIn("No such user", before[3].text)
        self.assertEqual(codes(after), [250, 250, 250])
        accepted = ["one@example.net", "two@example.net", "one@example.net"]
        for reply, address in zip(after, accepted, strict=True):
            self.assertTrue(
                reply.text.endswith(f"delivered to {address}"), f"{reply!r} for {address}"
            )
        self.assertEqual(quit.code, 221)
        self.assertEqual(len(recorder.messages), 1)
        self.assertEqual([r.address for r in recorder.messages[0].envelope.rcptTo], accepted)


class ShutdownTests(E2ETestCase):
    """
    Closing the server.
    """

    async def test_closeWithIdleClient(self) -> None:
        """
        Closing the server says 421 to an idle client, completes, and shuts the port.
        """
        server, port = await startServer(self, [RecordingHandler()])
        client = await deferToThread(RawClient, port)
        self.addCleanup(client.close)

        def hello() -> list[int]:
            return [client.readReply().code, client.command(f"EHLO {CLIENT_NAME}").code]

        self.assertEqual(await deferToThread(hello), [220, 250])
        closed = server.close()
        replies = await deferToThread(client.readUntilClosed)
        self.assertEqual(replies, [ServerReply(421, ("Server shutting down",))])
        await closed.addTimeout(SOCKET_TIMEOUT, server.reactor)
        self.assertTrue(await deferToThread(connectionRefused, port))

    async def test_closeBeforeGreeting(self) -> None:
        """
        Closing the server says 421 at once to a client still waiting for its greeting.
        """
        # closeTimeout bounds how long the cleanup waits if the client is not let go.
        server, port = await startServer(
            self, [RecordingHandler()], earlyTalkerDelay=0.5, closeTimeout=5
        )
        client = await deferToThread(RawClient, port)
        self.addCleanup(client.close)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while server.connectionCount == 0 and time.monotonic() < deadline:
            await deferLater(server.reactor, 0.01, lambda: None)
        self.assertEqual(server.connectionCount, 1)
        # The greeting is still 0.5 s away; the client has nothing in progress.
        server.close()
        replies = await deferToThread(client.readUntilClosed, 2.0)
        self.assertEqual(replies, [ServerReply(421, ("Server shutting down",))])


class SwaksTests(E2ETestCase):
    """
    swaks, the Swiss army knife for SMTP, as a client.
    """

    def setUp(self) -> None:
        if not haveSwaks():
            raise SkipTest(NO_SWAKS)

    async def test_pipelinedMessage(self) -> None:
        """
        swaks --pipeline delivers one message.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder])
        result = await runSwaks(
            port, "--from", "a@example.org", "--to", "b@example.net", "--pipeline"
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("PIPELINING", result.stdout)
        self.assertEqual(len(recorder.messages), 1)
        envelope = recorder.messages[0].envelope
        assert envelope.mailFrom is not None
        self.assertEqual(envelope.mailFrom.address, "a@example.org")
        self.assertEqual([r.address for r in envelope.rcptTo], ["b@example.net"])

    async def test_lmtpTwoRecipients(self) -> None:
        """
        swaks --protocol LMTP delivers one message to two recipients.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder], lmtp=True)
        result = await runSwaks(
            port,
            "--protocol",
            "LMTP",
            "--from",
            "a@example.org",
            "--to",
            "a@example.net,b@example.net",
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(recorder.messages), 1)
        self.assertEqual(
            [r.address for r in recorder.messages[0].envelope.rcptTo],
            ["a@example.net", "b@example.net"],
        )


class TwistTests(E2ETestCase):
    """
    The C{twist smtpsvc} command, run as a separate process.
    """

    async def test_deliverToMaildirThenStop(self) -> None:
        """
        twist smtpsvc stores smtplib's and swaks's mail in a Maildir and stops on SIGTERM.
        """
        if not haveSwaks():
            raise SkipTest(NO_SWAKS)
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        process = await startTwist(self, maildirArgs(maildir), tmpdir)
        assert process.port is not None
        message = simpleMessage("from smtplib")
        refused = await deferToThread(sendWithSmtplib, process.port, message, RECIPIENTS[:1])
        self.assertEqual(refused, {})

        box = mailbox.Maildir(maildir, factory=None, create=False)
        keys = box.keys()
        self.assertEqual(len(keys), 1, process.text)
        stored = box.get_bytes(keys[0])
        self.assertTrue(stored.startswith(f"Return-Path: <{SENDER}>\r\n".encode()), stored)
        self.assertIn(b"\r\nReceived: from ", stored[:200])
        self.assertEqual(withoutTraceHeaders(stored), message)

        result = await runSwaks(process.port, "--from", "c@example.org", "--to", "d@example.net")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(len(box.keys()), 2)

        started = time.monotonic()
        process.sendSignal("TERM")
        await process.waitForExit(EXIT_TIMEOUT)
        self.assertLess(time.monotonic() - started, EXIT_TIMEOUT)
        # The server closed gracefully before the process ended.
        self.assertIn("Server closed", process.text)
        # A clean stop is status 0, or the SIGTERM itself: twist (twisted.application.app's
        # _exitWithSignal) re-raises the signal that stopped the reactor once it has shut
        # down, which service managers such as systemd count as a clean exit.
        self.assertIn(
            (process.exitCode, process.signal), [(0, None), (None, signal.SIGTERM)], process.text
        )

    async def test_maxClientsZeroRefused(self) -> None:
        """
        twist smtpsvc --max-clients 0 exits non-zero with an error naming the option.
        """
        await assertTwistRefuses(
            self,
            ["--listen", LISTEN, "--deliver", "discard", "--max-clients", "0"],
            "--max-clients",
        )

    async def test_sizeNotANumberRefused(self) -> None:
        """
        twist smtpsvc --size abc exits non-zero with an error naming the option.
        """
        await assertTwistRefuses(
            self, ["--listen", LISTEN, "--deliver", "discard", "--size", "abc"], "--size"
        )
