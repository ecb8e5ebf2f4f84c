"""
CHUNKING and BDAT (RFC 3030) end to end: C{twist smtpsvc} and in-process servers on
127.0.0.1, driven by smtplib (whose low-level C{send} and C{getreply} carry BDAT, which
it has no command for) and by C{openssl s_client} through STARTTLS.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from smtpsvc import (
    Address,
    ICloseHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    Session,
    readMessage,
)
from smtpsvc.testing import RecordingHandler

from .e2e_support import (
    CLIENT_NAME,
    LISTEN,
    LOCALHOST,
    SOCKET_TIMEOUT,
    E2ETestCase,
    haveOpenSSL,
    startServer,
    theReactor,
    withoutTraceHeaders,
    workspace,
)
from .maildir_support import delivered
from .service_support import QUICK, startService
from .test_tls_e2e import MX, sClient, startTLSServer

SENDER = "a@example.org"
RECIPIENT = "u@example.org"

# A message whose second chunk holds what would end the data and start a new transaction
# if anything read it as commands (the SMTP smuggling pattern, standards section 2.2).
HEAD = b"From: a@example.org\r\nTo: u@example.org\r\nSubject: chunked\r\n\r\n"
SMUGGLED = b"one\r\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"
TAIL = b"..two dots stay two\r\nlast line\r\n"


def sendChunks(
    port: int, chunks: list[bytes], recipients: list[str], lmtp: bool = False
) -> tuple[bool, list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """
    With smtplib (blocking: run it in a thread): EHLO (LHLO), MAIL, each RCPT, then each
    of C{chunks} as C{BDAT n}, the last as C{BDAT n LAST}, pipelined in one send; QUIT.

    @return: whether CHUNKING was offered, the reply to each chunk but the last, and the
        final replies (one per recipient in LMTP).
    """
    client = (smtplib.LMTP if lmtp else smtplib.SMTP)(
        LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT
    )
    with client as c:
        c.ehlo()
        offered = c.has_extn("chunking")
        assert c.mail(SENDER)[0] == 250
        for recipient in recipients:
            assert c.rcpt(recipient)[0] == 250
        last = len(chunks) - 1
        c.send(
            b"".join(
                b"BDAT %d%s\r\n%s" % (len(chunk), b" LAST" if i == last else b"", chunk)
                for i, chunk in enumerate(chunks)
            )
        )
        acknowledged = [c.getreply() for _ in range(last)]
        final = [c.getreply() for _ in range(len(recipients) if lmtp else 1)]
        assert c.noop()[0] == 250
    return offered, acknowledged, final


class ChunkingServiceTests(E2ETestCase):
    """
    C{twist smtpsvc} receiving BDAT chunks into a Maildir.
    """

    async def test_chunksDelivered(self) -> None:
        """
        smtplib sees CHUNKING, pipelines three chunks (one holding a DATA terminator and
        commands); each but the last gets 250, the last gets the final 250, and the
        Maildir holds the chunks exactly, nothing unstuffed, nothing run.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        process = await startService(
            self, ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK], tmpdir
        )
        assert process.port is not None
        offered, acknowledged, final = await deferToThread(
            sendChunks, process.port, [HEAD, SMUGGLED, TAIL], [RECIPIENT]
        )
        self.assertTrue(offered)
        self.assertEqual(
            acknowledged,
            [(250, b"OK: %d octets received" % len(c)) for c in (HEAD, SMUGGLED)],
        )
        self.assertEqual([code for code, _ in final], [250])
        stored = list(delivered(maildir).values())
        self.assertEqual([withoutTraceHeaders(m) for m in stored], [HEAD + SMUGGLED + TAIL])


@implementer(IMailFromHandler, IDataHandler)
class SlowToLetGo:
    """
    A data handler that answers 0.3 s after its message ended (however it ended), and
    a sender handler that notes whether every message's data handler had answered by then.
    """

    def __init__(self) -> None:
        self.pending = 0
        self.sendersSeen: list[tuple[str, int]] = []

    def onMailFrom(self, address: Address, session: Session) -> None:
        self.sendersSeen.append((address.address, self.pending))

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        self.pending += 1
        try:
            await readMessage(stream)
        finally:
            await deferLater(theReactor(), 0.3, lambda: None)
            self.pending -= 1


def abandonChunkedMessage(port: int) -> list[tuple[int, bytes]]:
    """
    With smtplib (blocking: run it in a thread): a transaction whose message's first
    chunk is followed by RSET, then MAIL FROM; every reply from MAIL on.
    """
    with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as c:
        c.ehlo()
        replies = [c.mail(SENDER), c.rcpt(RECIPIENT)]
        c.send(b"BDAT 5\r\nhello")
        replies.append(c.getreply())
        replies.append(c.rset())
        replies.append(c.mail(SENDER))
    return replies


@implementer(ICloseHandler)
class SlowToLetGoClosing(SlowToLetGo):
    """
    L{SlowToLetGo}, which also notes, when the connection's close handlers run, how many
    messages' data handlers had still to answer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pendingAtClose: list[int] = []
        self.closed: Deferred[None] = Deferred()

    def onClose(self, session: Session) -> None:
        self.pendingAtClose.append(self.pending)
        self.closed.callback(None)


def leaveInTheMiddle(port: int) -> int:
    """
    With smtplib (blocking: run it in a thread): a transaction whose client closes the
    connection after the first line of its message; the reply to DATA.
    """
    client = smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT)
    try:
        client.ehlo()
        client.mail(SENDER)
        client.rcpt(RECIPIENT)
        client.putcmd("DATA")
        code, _ = client.getreply()
        client.send(b"Subject: never finished\r\n")
    finally:
        client.close()
    return code


class CloseAfterDataHandlersTests(E2ETestCase):
    """
    The close handlers of a connection lost in the middle of a message, over a real
    connection.
    """

    async def test_closeHandlersWaitForTheDataHandler(self) -> None:
        """
        smtplib closes its connection in the middle of a message: the close handlers run
        once the message's data handler has answered, not before.
        """
        handler = SlowToLetGoClosing()
        _, port = await startServer(self, [handler])
        self.assertEqual(await deferToThread(leaveInTheMiddle, port), 354)
        await handler.closed
        self.assertEqual(handler.pendingAtClose, [0])


class ChunkingAbandonTests(E2ETestCase):
    """
    A message abandoned between chunks, over a real connection.
    """

    async def test_resetWaitsForTheDataHandler(self) -> None:
        """
        smtplib abandons a chunked message with RSET and starts another transaction: the
        RSET is answered only once the data handler has let go of the message, so the
        next MAIL FROM's handler runs after it.
        """
        handler = SlowToLetGo()
        _, port = await startServer(self, [handler])
        replies = await deferToThread(abandonChunkedMessage, port)
        self.assertEqual([code for code, _ in replies], [250] * 5)
        self.assertEqual(handler.sendersSeen, [(SENDER, 0), (SENDER, 0)])


class ChunkingLMTPTests(E2ETestCase):
    """
    BDAT to an LMTP server: one final reply per recipient (RFC 2033 section 4.2).
    """

    async def test_replyPerRecipient(self) -> None:
        """
        smtplib.LMTP sends a message in two chunks to two recipients and gets a final
        reply for each after BDAT LAST.
        """
        recorder = RecordingHandler()
        _, port = await startServer(self, [recorder], lmtp=True)
        recipients = [RECIPIENT, "w@example.org"]
        offered, acknowledged, final = await deferToThread(
            sendChunks, port, [HEAD, TAIL], recipients, True
        )
        self.assertTrue(offered)
        self.assertEqual([code for code, _ in acknowledged + final], [250, 250, 250])
        self.assertEqual([m.data for m in recorder.messages], [HEAD + TAIL])


class ChunkingTLSTests(E2ETestCase):
    """
    BDAT inside TLS, from openssl s_client.
    """

    async def test_afterSTARTTLS(self) -> None:
        """
        openssl s_client -starttls smtp sends EHLO, MAIL, RCPT and a chunk (C{-crlf}
        turns each LF into CRLF, so a chunk of two lines is 14 octets); the server
        acknowledges it, stores it, and says the session was secure.
        """
        if not haveOpenSSL():
            raise SkipTest("openssl is not installed (`make test` installs it)")
        recorder = RecordingHandler()
        _, port = await startTLSServer(self, [recorder])
        script = (
            f"EHLO {CLIENT_NAME}\nMAIL FROM:<{SENDER}>\nRCPT TO:<{RECIPIENT}>\n"
            "BDAT 14 LAST\nhello\nworld\nQUIT\n"
        )
        result = await sClient(port, "-starttls", "smtp", "-servername", MX, stdin=script.encode())
        self.assertEqual(result.returncode, 0, str(result))
        self.assertIn("250 CHUNKING", result.replies, str(result))
        self.assertEqual(
            result.replies[-3:],
            ["250 Accepted", "250 OK: message queued", "221 Bye"],
            str(result),
        )
        self.assertEqual([m.data for m in recorder.messages], [b"hello\r\nworld\r\n"])
        self.assertEqual([r.address for r in recorder.messages[0].envelope.rcptTo], [RECIPIENT])
        self.assertTrue(recorder.sessions[0].secure)
