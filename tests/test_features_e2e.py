"""
End-to-end tests of features that were tested only in memory: SIZE, SMTPUTF8, REQUIRETLS,
socketTimeout, the command limits, SNICallback, Unix socket listeners, C{twist smtpsvc
--lmtp}, C{--port}, the start-up check for a delivery that takes the messages, and the
ready-made configurations in C{tap-configs/} run as real services.

Each feature is driven over a real socket (TCP on 127.0.0.1 or a Unix socket in the test's
directory) by a real client: smtplib, a raw socket client, C{openssl s_client}.  Replies
are checked as the client sees them, enhanced status codes included.  C{--port} listens on
every address, so that service runs in a private network namespace (C{unshare}) whose only
interface is its own loopback; the client joins it with C{nsenter}.

Helpers come from L{tests.e2e_support} and L{tests.service_support}; the few this file
needs besides are below.  Every wait is bounded and every process started here is
stopped by its PID in the cleanups.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from smtpsvc import (
    Address,
    IDataHandler,
    IMessageStream,
    MessageAborted,
    SMTPError,
    SMTPServer,
    readMessage,
    tap,
)
from smtpsvc import Session as SMTPSession
from smtpsvc._config import tcpListening
from smtpsvc.cred import PortalAuthHandler, setPassword
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.testing import RecordingHandler, ServerReply

from .e2e_support import (
    CLIENT_NAME,
    LISTEN,
    LOCALHOST,
    ROOT,
    SERVER_NAME,
    SOCKET_TIMEOUT,
    START_TIMEOUT,
    TOOL_TIMEOUT,
    E2ETestCase,
    LogCapture,
    LoopbackSMTP,
    LoopbackSMTPSSL,
    RawClient,
    ServerClosedError,
    aliceChecker,
    assertTwistRefuses,
    clientContext,
    freePort,
    haveOpenSSL,
    listenAlso,
    startServer,
    theReactor,
    twistEnvironment,
    withoutTraceHeaders,
    workspace,
)
from .maildir_support import delivered, storedMessages
from .memorytls import authority, issue
from .proxy_support import LogWatcher
from .service_support import (
    QUICK,
    leftInTmp,
    message,
    relocate,
    sendOne,
    servedSubject,
    startService,
    traceHeaders,
    until,
    writeCertificate,
)

SENDER = "a@example.org"
RECIPIENT = "u@example.org"
MX = "mx.example.test"
B = "b.example.test"
NO_OPENSSL = "openssl is not installed (apt-get install openssl; `make test` installs it)"
#: The ready-made configurations.
CONFIGS = ROOT / "tap-configs"


# -- helpers ------------------------------------------------------------------------------------


def startLocal(
    testCase: E2ETestCase, handlers: Sequence[object], **options: Any
) -> Deferred[tuple[SMTPServer, int]]:
    """
    L{startServer} with enhanced status codes shown (so that the client sees them) and no
    reverse DNS (which would ask the system's name server, off the loopback interface),
    unless C{options} say otherwise.
    """
    options.setdefault("hideENHANCEDSTATUSCODES", False)
    options.setdefault("disableReverseLookup", True)
    return startServer(testCase, handlers, **options)


def shortDirectory(testCase: E2ETestCase) -> str:
    """
    A new directory, as an absolute path short enough for Unix socket names inside it
    (C{sun_path} holds 108 bytes): in trial's working directory if its path is short,
    else in the system's temporary directory.  A cleanup removes it.
    """
    base = os.path.abspath(".")
    if len(base) > 60:
        base = tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix="s", dir=base)
    testCase.addCleanup(shutil.rmtree, path, True)
    return path


#: Runs its arguments in a new user and network namespace whose only interface is its own
#: loopback, brought up first (the shell C{exec}s, so the PID is the command's).
PRIVATE_NETWORK = (
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "/bin/sh",
    "-c",
    'ip link set lo up && exec "$0" "$@"',
)


def privateNetworkProblem() -> str | None:
    """
    Why a private network namespace cannot be used here (no C{unshare}, C{nsenter} or
    C{ip}, or the kernel refuses unprivileged namespaces), or L{None} when it can.
    """
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        result = subprocess.run(
            [*PRIVATE_NETWORK, "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if result.returncode != 0:
        return f"cannot make a private network namespace: {result.stderr.strip()}"
    return None


def runInNamespaceOf(pid: int, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """
    Run C{argv} in the user and network namespaces of process C{pid} (blocking: run it in
    a thread), bounded by L{TOOL_TIMEOUT}.
    """
    return subprocess.run(
        ["nsenter", "--preserve-credentials", "--user", "--net", "--target", str(pid), *argv],
        env=twistEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )


def relocatedConfig(name: str, directory: str, moves: Mapping[str, str]) -> str:
    """
    Copy C{tap-configs/NAME} into C{directory} with each text in C{moves} replaced (each
    must occur exactly once, so that a changed file is noticed rather than half run).

    @return: the copy's path.
    """
    text = (CONFIGS / name).read_text()
    for old in moves:
        count = text.count(old)
        assert count == 1, f"{name}: {old!r} occurs {count} times"
    path = os.path.join(directory, name)
    Path(path).write_text("".join(relocate([text], moves)))
    return path


# -- SIZE -------------------------------------------------------------------------------------

LIMIT = 2000
TOO_BIG = (552, f"5.3.4 Error: message exceeds fixed maximum message size {LIMIT}".encode())


def closedAfter(
    port: int, commands: Sequence[str], last: str
) -> tuple[list[ServerReply], list[ServerReply]]:
    """
    Read the greeting, say EHLO and each of C{commands}, then send C{last} and read until
    the server closes: the replies before C{last}, and those after it.
    """
    with RawClient(port) as client:
        before = [client.readReply(), client.command(f"EHLO {CLIENT_NAME}")]
        before += [client.command(command) for command in commands]
        client.send(last.encode() + b"\r\n")
        return before, client.readUntilClosed()


class SizeTests(E2ETestCase):
    """
    RFC 1870: the server advertises its limit and holds messages to it.
    """

    async def test_sizeLimit(self) -> None:
        """
        EHLO advertises SIZE 2000; MAIL with SIZE=2001 gets 552 5.3.4 (SIZE=2000 is
        accepted); a message over the limit sent without SIZE= gets 552 5.3.4 after the
        final dot and is not delivered; the same connection then delivers a small
        message.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        delivery = MaildirDelivery(maildir, reactor=theReactor(), serverName=SERVER_NAME)
        _, port = await startLocal(self, [delivery], size=LIMIT)
        big, small = message("too big", size=2 * LIMIT), message("small enough")
        self.assertTrue(len(small) < LIMIT < len(big))

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                out["advertised"] = c.esmtp_features.get("size")
                out["declaredOver"] = c.mail(SENDER, [f"SIZE={LIMIT + 1}"])
                out["declaredAt"] = c.mail(SENDER, [f"SIZE={LIMIT}"])
                out["rset"] = c.rset()
                # No SIZE= this time: the server finds out while the message comes.
                out["mail"] = c.mail(SENDER)
                out["rcpt"] = c.rcpt(RECIPIENT)
                out["big"] = c.data(big)
                out["afterwards"] = (c.mail(SENDER), c.rcpt(RECIPIENT), c.data(small))
                out["quit"] = c.quit()
            return out

        out = await deferToThread(talk)
        self.assertEqual(out["advertised"], str(LIMIT))
        self.assertEqual(out["declaredOver"], TOO_BIG)
        self.assertEqual(out["declaredAt"], (250, b"2.1.0 Accepted"))
        self.assertEqual(out["rset"][0], 250)
        self.assertEqual((out["mail"][0], out["rcpt"][0]), (250, 250))
        self.assertEqual(out["big"], TOO_BIG)
        self.assertEqual([reply[0] for reply in out["afterwards"]], [250, 250, 250])
        self.assertEqual(out["quit"][0], 221)
        stored = [withoutTraceHeaders(m) for m in delivered(maildir).values()]
        self.assertEqual(stored, [small])
        self.assertEqual(leftInTmp(maildir), {})


# -- RFC 5321 limits -----------------------------------------------------------------------------


class TransactionLimitTests(E2ETestCase):
    """
    maxRecipients, maxReceivedHeaders and minDataRate, with smtplib and a raw socket.
    """

    async def test_recipientLimitAndMailLoop(self) -> None:
        """
        With maxRecipients=100, smtplib's 101st recipient gets 452 4.5.3 and the message
        goes to the other hundred; a message with maxReceivedHeaders (5) Received: fields
        is refused with 554 5.4.6 as a mail loop, and is not delivered.
        """
        recorder = RecordingHandler()
        _, port = await startLocal(self, [recorder], maxRecipients=100, maxReceivedHeaders=5)
        recipients = [f"r{n}@example.org" for n in range(101)]
        looped = b"".join(b"Received: from hop%d\r\n" % n for n in range(5)) + message("loop")

        def talk() -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                refused = c.sendmail(SENDER, recipients, message("many"))
                c.mail(SENDER)
                c.rcpt(RECIPIENT)
                loop = c.data(looped)
            return refused, loop

        refused, loop = await deferToThread(talk)
        self.assertEqual(refused, {recipients[-1]: (452, b"4.5.3 Error: too many recipients")})
        self.assertEqual(loop, (554, b"5.4.6 Error: too many hops, mail loop detected"))
        self.assertEqual([len(m.envelope.rcptTo) for m in recorder.messages], [100])

    async def test_serviceFlags(self) -> None:
        """
        C{twist smtpsvc}: with C{--maildir-min-free} more than any disk has, smtplib's MAIL
        FROM gets 452 and the refusal is logged; with the limit C{--max-received-headers
        off}, a message of 150 Received: fields is delivered; with C{--max-recipients
        none}, a message to 1001 recipients is.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        hops = b"".join(b"Received: from hop%d\r\n" % n for n in range(150))
        deliver = ("--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK)

        def mailFrom(port: int) -> tuple[int, bytes]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                return c.mail(SENDER)

        def send(port: int, recipients: Sequence[str], body: bytes) -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                return c.sendmail(SENDER, list(recipients), body)

        full = await startService(self, [*deliver, "--maildir-min-free", str(10**18)], tmpdir)
        assert full.port is not None
        self.assertEqual(
            await deferToThread(mailFrom, full.port),
            (452, b"Error: insufficient system storage"),
        )
        await full.waitForOutput(re.compile(rb"Refused a sender: \d+ bytes free in "))
        unlimited = await startService(self, [*deliver, "--max-received-headers", "off"], tmpdir)
        assert unlimited.port is not None
        sent = await deferToThread(send, unlimited.port, [RECIPIENT], hops + message("hops"))
        self.assertEqual(sent, {})
        [stored] = storedMessages(maildir)
        self.assertEqual(stored.count(b"Received: from hop"), 150)
        many = [f"r{n}@example.org" for n in range(1001)]
        anyNumber = await startService(self, [*deliver, "--max-recipients", "none"], tmpdir)
        assert anyNumber.port is not None
        self.assertEqual(await deferToThread(send, anyNumber.port, many, message("many")), {})
        self.assertEqual(len(storedMessages(maildir)), 2)

    async def test_reserveKeptWhileWriting(self) -> None:
        """
        C{twist smtpsvc} with C{--maildir-min-free} set to leave 4 MiB of the real file
        system's free space usable: smtplib's MAIL FROM (no SIZE) is accepted, and its
        message of 24 MiB gets 452 4.3.1 after its end of data; nothing is stored and
        nothing is left in C{tmp/}, and the refusal is logged.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        stats = os.statvfs(tmpdir)
        free = stats.f_bavail * stats.f_frsize
        if free < 64 * 1024 * 1024:
            raise SkipTest(f"{free} bytes free under {tmpdir}: too little for this test")
        reserve = free - 4 * 1024 * 1024
        args = ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK]
        args += ["--maildir-min-free", str(reserve), "--no-hide-enhancedstatuscodes"]
        process = await startService(self, args, tmpdir)
        assert process.port is not None
        port = process.port
        body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (24 * 1024)

        def send() -> tuple[int, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                self.assertFalse(c.has_extn("size"))
                code = c.mail(SENDER)[0]
                c.rcpt(RECIPIENT)
                return code, c.data(body)

        mail, end = await deferToThread(send)
        self.assertEqual(mail, 250)
        self.assertEqual(end, (452, b"4.3.1 Error: insufficient system storage"))
        self.assertEqual(storedMessages(maildir), [])
        self.assertEqual(os.listdir(os.path.join(maildir, "tmp")), [])
        await process.waitForOutput(re.compile(rb"Refused a message while writing it: \d+ bytes"))

    async def test_slowMessageCutOff(self) -> None:
        """
        With socketTimeout=1 and minDataRate=10, a client that sends its message a byte
        every half second (never idle for a second) gets 421 4.4.2 once it falls behind,
        and the connection closes; nothing is delivered.
        """
        recorder = RecordingHandler()
        _, port = await startLocal(self, [recorder], socketTimeout=1, minDataRate=10)

        def trickle() -> tuple[list[int], list[ServerReply], float]:
            with RawClient(port) as client:
                codes = [client.readReply().code, client.command(f"EHLO {CLIENT_NAME}").code]
                codes += [client.command(f"MAIL FROM:<{SENDER}>").code]
                codes += [client.command(f"RCPT TO:<{RECIPIENT}>").code]
                codes += [client.command("DATA").code]
                started = time.monotonic()
                try:
                    for _ in range(20):
                        client.send(b"x")
                        time.sleep(0.5)
                except OSError:
                    pass
                replies = client.readUntilClosed(within=SOCKET_TIMEOUT)
                return codes, replies, time.monotonic() - started

        codes, replies, waited = await deferToThread(trickle)
        self.assertEqual(codes, [220, 250, 250, 250, 354])
        self.assertEqual(replies, [ServerReply(421, ("4.4.2 Timeout - closing connection",))])
        self.assertLess(waited, 8.0)
        self.assertEqual(recorder.messages, [])


# -- SMTPUTF8 ---------------------------------------------------------------------------------

UTF8_SENDER = "jörg@bücher.example"
UTF8_RECIPIENT = "δοκιμή@παράδειγμα.example"


class SMTPUTF8Tests(E2ETestCase):
    """
    RFC 6531: UTF-8 addresses with SMTPUTF8, and refused without it.
    """

    async def test_utf8AddressesDelivered(self) -> None:
        """
        smtplib with mail_options=["SMTPUTF8"] sends from and to UTF-8 addresses: the
        server advertises SMTPUTF8, accepts both, and the message is delivered with both
        addresses intact, in the envelope and in the Maildir's trace headers.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        recorder = RecordingHandler()
        delivery = MaildirDelivery(maildir, reactor=theReactor(), serverName=SERVER_NAME)
        _, port = await startLocal(self, [recorder, delivery])
        body = f"From: {UTF8_SENDER}\r\nSubject: utf-8\r\n\r\nGrüße\r\n".encode()

        def send() -> tuple[bool, dict[str, tuple[int, bytes]]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                offered = c.has_extn("smtputf8")
                refused = c.sendmail(UTF8_SENDER, [UTF8_RECIPIENT], body, ["SMTPUTF8"])
                c.quit()
            return offered, refused

        offered, refused = await deferToThread(send)
        self.assertTrue(offered)
        self.assertEqual(refused, {})
        self.assertEqual(len(recorder.messages), 1)
        envelope = recorder.messages[0].envelope
        assert envelope.mailFrom is not None
        self.assertEqual(envelope.mailFrom.address, UTF8_SENDER)
        self.assertEqual([r.address for r in envelope.rcptTo], [UTF8_RECIPIENT])
        self.assertTrue(envelope.smtpUtf8)
        (stored,) = delivered(maildir).values()
        self.assertEqual(withoutTraceHeaders(stored), body)
        trace = traceHeaders(stored)
        self.assertTrue(trace.startswith(f"Return-Path: <{UTF8_SENDER}>\r\n".encode()), trace)
        self.assertIn(f"\tfor <{UTF8_RECIPIENT}>; ".encode(), trace)

    async def test_utf8WithoutSMTPUTF8Refused(self) -> None:
        """
        Without SMTPUTF8 on MAIL, a UTF-8 sender gets 550 5.6.7 and a UTF-8 recipient
        553 5.6.7; nothing is delivered.
        """
        recorder = RecordingHandler()
        _, port = await startLocal(self, [recorder])

        def talk() -> tuple[tuple[int, bytes], ...]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                # smtplib sends UTF-8 only when told SMTPUTF8; this sends it without.
                c.command_encoding = "utf-8"
                sender = c.mail(UTF8_SENDER)
                ascii = c.mail(SENDER)
                recipient = c.rcpt(UTF8_RECIPIENT)
                c.quit()
            return sender, ascii, recipient

        sender, ascii, recipient = await deferToThread(talk)
        self.assertEqual(sender, (550, b"5.6.7 Error: non-ASCII sender address requires SMTPUTF8"))
        self.assertEqual(ascii[0], 250)
        self.assertEqual(
            recipient, (553, b"5.6.7 Error: non-ASCII recipient address requires SMTPUTF8")
        )
        self.assertEqual((recorder.senders, recorder.recipients), ([SENDER], []))
        self.assertEqual(recorder.messages, [])


# -- REQUIRETLS -------------------------------------------------------------------------------


class RequireTLSTests(E2ETestCase):
    """
    RFC 8689: REQUIRETLS only on an encrypted connection.
    """

    async def test_plaintextRefusedThenAcceptedAfterSTARTTLS(self) -> None:
        """
        MAIL ... REQUIRETLS in plaintext gets 530 5.7.10 (and REQUIRETLS is not
        advertised); after STARTTLS, verified with the test CA, it is advertised and
        accepted, and the message is recorded as requiring TLS.
        """
        recorder = RecordingHandler()
        pair = issue(MX)
        _, port = await startLocal(
            self, [recorder], name=MX, key=pair.key, cert=pair.cert, hideREQUIRETLS=False
        )
        body = message("requiretls")

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with LoopbackSMTP(MX, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                out["plainOffered"] = c.has_extn("requiretls")
                out["plain"] = c.mail(SENDER, ["REQUIRETLS"])
                c.starttls(context=clientContext(authority().cert))
                c.ehlo()
                out["secureOffered"] = c.has_extn("requiretls")
                out["secure"] = c.mail(SENDER, ["REQUIRETLS"])
                out["rcpt"] = c.rcpt(RECIPIENT)
                out["data"] = c.data(body)
                c.quit()
            return out

        out = await deferToThread(talk)
        self.assertFalse(out["plainOffered"])
        self.assertEqual(
            out["plain"], (530, b"5.7.10 REQUIRETLS not permitted on non-TLS connections")
        )
        self.assertTrue(out["secureOffered"])
        self.assertEqual(out["secure"], (250, b"2.1.0 Accepted"))
        self.assertEqual((out["rcpt"][0], out["data"][0]), (250, 250))
        self.assertEqual(len(recorder.messages), 1)
        self.assertTrue(recorder.messages[0].envelope.requireTLS)
        self.assertEqual(recorder.messages[0].data, body)

    async def test_8689_05_tlsRequiredNoTagged(self) -> None:
        """
        smtplib sends, over STARTTLS, a message with a C{TLS-Required: No} header field:
        its envelope is tagged C{tlsRequiredNo}.  The same message with REQUIRETLS on MAIL
        FROM is not (the field is then ignored), nor is one without the field; the field
        is kept in every message.
        """
        recorder = RecordingHandler()
        pair = issue(MX)
        _, port = await startLocal(
            self, [recorder], name=MX, key=pair.key, cert=pair.cert, hideREQUIRETLS=False
        )
        optional = b"TLS-Required: No\r\n" + message("optional")

        def talk() -> list[dict[str, tuple[int, bytes]]]:
            with LoopbackSMTP(MX, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.starttls(context=clientContext(authority().cert))
                return [
                    c.sendmail(SENDER, [RECIPIENT], optional),
                    c.sendmail(SENDER, [RECIPIENT], optional, mail_options=["REQUIRETLS"]),
                    c.sendmail(SENDER, [RECIPIENT], message("plain")),
                ]

        self.assertEqual(await deferToThread(talk), [{}, {}, {}])
        envelopes = [m.envelope for m in recorder.messages]
        self.assertEqual([e.tlsRequiredNo for e in envelopes], [True, False, False])
        self.assertEqual([e.requireTLS for e in envelopes], [False, True, False])
        self.assertEqual([m.data for m in recorder.messages][:2], [optional, optional])


# -- socketTimeout ----------------------------------------------------------------------------


class SocketTimeoutTests(E2ETestCase):
    """
    A client that goes quiet is told and let go after socketTimeout seconds.
    """

    async def test_silentClientTimedOut(self) -> None:
        """
        With socketTimeout=1, a client silent after EHLO gets 421 4.4.2 Timeout - closing
        connection after about a second, and the connection closes.
        """
        _, port = await startLocal(self, [RecordingHandler()], socketTimeout=1)

        def silent() -> tuple[list[int], list[ServerReply], float]:
            with RawClient(port) as client:
                codes = [client.readReply().code, client.command(f"EHLO {CLIENT_NAME}").code]
                started = time.monotonic()
                replies = client.readUntilClosed(within=SOCKET_TIMEOUT)
                return codes, replies, time.monotonic() - started

        codes, replies, waited = await deferToThread(silent)
        self.assertEqual(codes, [220, 250])
        self.assertEqual(replies, [ServerReply(421, ("4.4.2 Timeout - closing connection",))])
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 4.0)


@implementer(IDataHandler)
class _ReadsThenHangs:
    """
    Reads each message, then answers only when the test fires C{gate}.
    """

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.messages: list[bytes] = []

    async def onData(self, stream: IMessageStream, session: SMTPSession) -> None:
        self.messages.append(await readMessage(stream))
        await self.gate


class HandlerTimeoutTests(E2ETestCase):
    """
    A client is not kept waiting for ever by a handler that does not answer.
    """

    async def test_hungDataHandler(self) -> None:
        """
        With handlerTimeout=1, smtplib's message, whose data handler never answers, gets
        421 4.3.0 after about a second instead of a 250, and the connection closes; the
        handler's answer, when it comes, changes nothing.
        """
        handler = _ReadsThenHangs()
        _, port = await startLocal(self, [handler], handlerTimeout=1, socketTimeout=0)

        def send() -> tuple[smtplib.SMTPDataError, float]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                started = time.monotonic()
                try:
                    c.sendmail(SENDER, [SENDER], b"Subject: x\r\n\r\nbody\r\n")
                except smtplib.SMTPDataError as e:
                    return e, time.monotonic() - started
                raise AssertionError("the message was accepted")

        error, waited = await deferToThread(send)
        handler.gate.callback(None)
        self.assertEqual(
            (error.smtp_code, error.smtp_error),
            (421, b"4.3.0 Handler timeout - closing connection"),
        )
        self.assertEqual(handler.messages, [b"Subject: x\r\n\r\nbody\r\n"])
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 4.0)


@implementer(IDataHandler)
class _WaitsThenReads:
    """
    Reads each message only once the test fires C{gate} (a handler busy with something
    else first), and keeps what reading it gave: the message, or the stream's error.
    """

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.called = False
        self.results: list[object] = []

    async def onData(self, stream: IMessageStream, session: SMTPSession) -> None:
        self.called = True
        await self.gate
        try:
            self.results.append(await readMessage(stream))
        except MessageAborted as e:
            self.results.append(e)
            raise


class ClientGoneTests(E2ETestCase):
    """
    A client that closes its side of the connection after its message, over a real
    socket: gone (its message aborted), or only done sending (it is answered).
    """

    def _sendMessage(self, port: int, after: bytes, then: str) -> Deferred[list[str]]:
        # A message and its final dot, then `after` in the same write; then the client
        # closes its socket ("close") or only its writing ("shutdown"), and reads what
        # is left to read.
        def talk() -> list[str]:
            client = RawClient(port)
            try:
                client.readReply()
                for line in (
                    "EHLO " + CLIENT_NAME,
                    f"MAIL FROM:<{SENDER}>",
                    f"RCPT TO:<{RECIPIENT}>",
                ):
                    client.command(line)
                assert client.command("DATA").code == 354
                client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n" + after)
                if then == "close":
                    return []
                client.sock.shutdown(socket.SHUT_WR)
                replies = []
                with contextlib.suppress(ServerClosedError):
                    while True:
                        reply = client.readReply()
                        replies.append(f"{reply.code} {reply.lines[0]}")
                return replies
            finally:
                client.close()

        return deferToThread(talk)

    async def _shutDownAfterTheDot(
        self, handlers: Sequence[object], release: Deferred[None]
    ) -> list[str]:
        # A server with `handlers`; a client that sends its message and shuts down its
        # writing after the final dot; once the server has seen that, `release` fires
        # (the handlers go on).  What the client read.
        _, port = await startLocal(self, handlers)
        logs = LogCapture(self)
        talking = self._sendMessage(port, b"", "shutdown")
        await until(
            lambda: logs.matching("without waiting for the reply to its message"),
            5,
            "the client's shutdown seen",
        )
        release.callback(None)
        return await talking

    async def test_goneAfterTheFinalDot(self) -> None:
        """
        A client that closes its connection after its final dot, without waiting for the
        reply (nor saying QUIT), is seen gone while its data handler has yet to take the
        message: the handler gets MessageAborted, not the message, which the client will
        send again (a handler that stored it would make a duplicate); the transaction is
        logged with the 451 that follows, and the connection closes.
        """
        handler = _WaitsThenReads()
        server, port = await startLocal(self, [handler])
        logs = LogCapture(self)
        await self._sendMessage(port, b"", "close")
        await until(
            lambda: logs.matching("without waiting for the reply to its message"),
            5,
            "the client's going seen",
        )
        handler.gate.callback(None)
        [result] = handler.results
        self.assertIsInstance(result, MessageAborted)
        [line] = [e for e in logs.events if e.get("event") == "transaction"]
        self.assertTrue(line["result"].startswith("451 "), line["result"])
        await until(lambda: server.connectionCount == 0, 5, "the connection closed")

    async def test_doneSendingAfterAStoredMessage(self) -> None:
        """
        A client that shuts down its writing after its final dot, without QUIT, and reads
        on, gets the 250 of a handler that had already taken the message (it is stored:
        a 451 would have the client send it twice), then the connection closes.
        """
        handler = _ReadsThenHangs()
        replies = await self._shutDownAfterTheDot([handler], handler.gate)
        self.assertEqual([r[:4] for r in replies], ["250 "], replies)
        self.assertEqual(handler.messages, [b"Subject: x\r\n\r\nbody\r\n"])

    async def test_doneSendingOnceOneHandlerHasTheMessage(self) -> None:
        """
        With two data handlers, of which the first has taken the message (stored it, say)
        and the second not yet, a client that shuts down its writing after its final dot
        is not taken for gone: aborting the second would leave the message with the first
        only, and the client's retry a duplicate there.  Both answer, the client gets the
        250, and the second has the message too.
        """
        first, second = _ReadsThenHangs(), _WaitsThenReads()
        first.gate.callback(None)
        replies = await self._shutDownAfterTheDot([first, second], second.gate)
        self.assertEqual([r[:4] for r in replies], ["250 "], replies)
        self.assertEqual(first.messages, [b"Subject: x\r\n\r\nbody\r\n"])
        self.assertEqual(second.results, first.messages)

    async def test_doneSendingAfterQuit(self) -> None:
        """
        A client that pipelines QUIT after its final dot and shuts down its writing (as
        ``nc -N`` does) still reads: once the handler has taken the message it gets the
        250 and the 221, and the connection closes.  So does one that shuts down after
        commands without QUIT.
        """
        handler = _WaitsThenReads()
        _, port = await startLocal(self, [handler])
        talking = self._sendMessage(port, b"QUIT\r\n", "shutdown")
        await until(lambda: handler.called, 5, "the data handler called")
        # Time for the server to read the client's shutdown, if it does.
        await deferLater(theReactor(), 0.3, lambda: None)
        handler.gate.callback(None)
        replies = await talking
        self.assertEqual([r[:4] for r in replies], ["250 ", "221 "], replies)
        self.assertEqual(handler.results, [b"Subject: x\r\n\r\nbody\r\n"])

        def noQuit() -> list[int]:
            with RawClient(port) as client:
                client.readReply()
                client.send(f"EHLO {CLIENT_NAME}\r\nNOOP\r\nNOOP".encode())
                client.sock.shutdown(socket.SHUT_WR)
                replies = client.readReplies(2)
                with self.assertRaises(ServerClosedError):
                    client.readReply()
                return [r.code for r in replies]

        self.assertEqual(await deferToThread(noQuit), [250, 250])


# -- command limits ---------------------------------------------------------------------------


class CommandLimitTests(E2ETestCase):
    """
    maxCommandLength, maxUnrecognizedCommands and maxAllowedUnauthenticatedCommands.
    """

    async def test_maxCommandLength(self) -> None:
        """
        With maxCommandLength=64, a 64-byte NOOP line is answered 250, a 65-byte one and
        a 100 kB one 500 5.5.2 Error: line too long, and the connection goes on.
        """
        limit = 64
        _, port = await startLocal(self, [RecordingHandler()], maxCommandLength=limit)

        def talk() -> list[tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                room = limit - len("NOOP ")
                replies = [
                    c.docmd("NOOP", "x" * room),
                    c.docmd("NOOP", "x" * (room + 1)),
                    c.docmd("NOOP", "y" * 100_000),
                    c.noop(),
                    c.mail(SENDER),
                    c.quit(),
                ]
            return replies

        replies = await deferToThread(talk)
        tooLong = (500, b"5.5.2 Error: line too long")
        self.assertEqual([r[0] for r in replies], [250, 500, 500, 250, 250, 221])
        self.assertEqual(replies[1:3], [tooLong, tooLong])

    async def test_maxLocalPartLength(self) -> None:
        """
        smtplib's message from an SRS return path (an 85-octet local part) to a 65-octet
        recipient: refused with 501 by default (RFC 5321's 64 octets), the reply saying
        why; delivered once maxLocalPartLength is unset (differential QA: smtp-server
        takes any address of up to 253 characters).
        """
        srs = (
            "SRS0=AbCd=XY=mail.sender.example=bounces+1234567-abcdef0123-recipient.name=example.com"
        )
        sender, recipient = f"{srs}@forwarder.example", f"{'r' * 65}@example.org"

        def send(port: int) -> dict[str, tuple[int, bytes]] | tuple[int, bytes]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                try:
                    return c.sendmail(sender, [recipient], message("srs"))
                except smtplib.SMTPSenderRefused as e:
                    return (e.smtp_code, e.smtp_error)

        strict = RecordingHandler()
        _, port = await startLocal(self, [strict])
        self.assertEqual(
            await deferToThread(send, port),
            (501, b"5.1.7 Error: sender address local part longer than 64 octets"),
        )
        lenient = RecordingHandler()
        _, port = await startLocal(self, [lenient], maxLocalPartLength=None)
        self.assertEqual(await deferToThread(send, port), {})
        self.assertEqual(
            [(m.envelope.mailFrom, m.envelope.rcptTo) for m in lenient.messages],
            [(Address(sender), (Address(recipient),))],
        )
        self.assertEqual(strict.messages, [])

    async def test_maxUnrecognizedCommands(self) -> None:
        """
        With maxUnrecognizedCommands=3, two unknown commands get 500 5.5.2 and the third
        421 4.7.0 Error: too many unrecognized commands, and the connection closes.
        """
        _, port = await startLocal(self, [RecordingHandler()], maxUnrecognizedCommands=3)

        before, closing = await deferToThread(closedAfter, port, ("FOO", "BAR"), "BAZ")
        self.assertEqual([r.code for r in before], [220, 250, 500, 500])
        self.assertEqual(
            before[2:], [ServerReply(500, ("5.5.2 Error: command not recognized",))] * 2
        )
        self.assertEqual(
            closing, [ServerReply(421, ("4.7.0 Error: too many unrecognized commands",))]
        )

    async def test_maxAllowedUnauthenticatedCommands(self) -> None:
        """
        With AUTH required and maxAllowedUnauthenticatedCommands=4, a client that does
        not authenticate gets 421 4.4.2 at its fourth command (EHLO, NOOP, NOOP, MAIL)
        and the connection closes; a client that authenticates sends more than four
        commands and delivers.
        """
        recorder = RecordingHandler()
        auth = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startLocal(
            self,
            [auth, recorder],
            authOptional=False,
            allowInsecureAuth=True,
            authMethods=("PLAIN",),
            maxAllowedUnauthenticatedCommands=4,
        )

        def alice() -> tuple[tuple[int, bytes], list[int], dict[str, tuple[int, bytes]]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                login = c.login("alice", "secret")
                noops = [c.noop()[0] for _ in range(5)]
                refused = c.sendmail(SENDER, [RECIPIENT], message("alice"))
                c.quit()
            return login, noops, refused

        before, closing = await deferToThread(
            closedAfter, port, ("NOOP", "NOOP"), "MAIL FROM:<a@example.org>"
        )
        self.assertEqual([r.code for r in before], [220, 250, 250, 250])
        self.assertEqual(
            closing, [ServerReply(421, ("4.4.2 Error: too many unauthenticated commands",))]
        )
        self.assertEqual(recorder.senders, [])
        login, noops, refused = await deferToThread(alice)
        self.assertEqual(login, (235, b"2.7.0 Authentication successful"))
        self.assertEqual((noops, refused), ([250] * 5, {}))
        self.assertEqual([m.user for m in recorder.messages], ["alice"])


# -- SNICallback ------------------------------------------------------------------------------


class SNICallbackTests(E2ETestCase):
    """
    The SNICallback option chooses the certificate of each handshake.
    """

    def setUp(self) -> None:
        if not haveOpenSSL():
            raise SkipTest(NO_OPENSSL)

    async def test_opensslServernameChoosesCertificate(self) -> None:
        """
        openssl s_client -servername B.Example.Test is served the certificate the
        callback returns for b.example.test (called with the name in lower case), after
        STARTTLS and with implicit TLS; a name the callback answers None for gets the
        default certificate.
        """
        mx, b = issue(MX), issue(B)
        asked: list[str] = []

        def certificateFor(name: str) -> dict[str, bytes] | None:
            asked.append(name)
            return {"key": b.key, "cert": b.cert} if name == B else None

        server, port = await startLocal(
            self,
            [RecordingHandler()],
            name=MX,
            key=mx.key,
            cert=mx.cert,
            SNICallback=certificateFor,
        )
        securePort = await listenAlso(self, server, secure=True)
        subjects = [
            await servedSubject(port, "B.Example.Test", starttls=True),
            await servedSubject(securePort, "B.Example.Test", starttls=False),
            await servedSubject(port, "other.example.test", starttls=True),
            await servedSubject(securePort, "other.example.test", starttls=False),
        ]
        self.assertEqual(subjects, [f"CN={B}", f"CN={B}", f"CN={MX}", f"CN={MX}"])
        self.assertEqual(asked, [B, B, "other.example.test", "other.example.test"])


# -- Unix socket listener ---------------------------------------------------------------------


@implementer(IDataHandler)
class _PerRecipient:
    """
    Answers each LMTP recipient of a message on its own: mailboxes whose name starts
    with C{full} are full (452 4.2.2), the others get their message.
    """

    async def onData(self, stream: IMessageStream, session: SMTPSession) -> list[object]:
        await readMessage(stream)
        return [
            SMTPError(452, f"{r.address}: mailbox full", "4.2.2")
            if r.address.startswith("full")
            else f"delivered to {r.address}"
            for r in session.envelope.rcptTo
        ]


def lmtpSend(
    target: str, port: int, recipients: Sequence[str], body: bytes
) -> tuple[tuple[int, bytes], list[tuple[int, bytes]], list[tuple[int, bytes]], tuple[int, bytes]]:
    """
    Send C{body} to C{recipients} with smtplib.LMTP (blocking: run it in a thread) to the
    Unix socket C{target} (an absolute path), or to C{target}:C{port}; read one reply
    after DATA per accepted recipient (smtplib reads the first itself).

    @return: the LHLO reply, the RCPT replies, the replies after DATA, QUIT's reply.
    """
    with smtplib.LMTP(target, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as c:
        lhlo = c.ehlo()
        c.mail(SENDER)
        rcpts = [c.rcpt(r) for r in recipients]
        accepted = sum(1 for code, _ in rcpts if code == 250)
        after = [c.data(body)]
        after += [c.getreply() for _ in range(accepted - 1)]
        # Any reply more than one per recipient would come before QUIT's.
        quit = c.quit()
    return lhlo, rcpts, after, quit


class UnixListenerTests(E2ETestCase):
    """
    An SMTPServer listening on a Unix socket, as an LMTP server for a local MTA.
    """

    async def test_lmtpOverUnixSocket(self) -> None:
        """
        smtplib.LMTP on the server's Unix socket sends one message to two recipients
        and gets one reply for each, in order (250 2.6.0 for one, 452 4.2.2 for the full
        mailbox), then 221.
        """
        path = os.path.join(shortDirectory(self), "lmtp.sock")
        recorder = RecordingHandler()
        log = LogWatcher(self)
        await startLocal(self, [_PerRecipient(), recorder], listen=f"unix:{path}", lmtp=True)
        self.assertIsNotNone(log.search(f"LMTP server listening on {re.escape(path)}$"))
        body = message("over a unix socket")
        recipients = ["one@example.net", "full@example.net"]
        lhlo, rcpts, after, quit = await deferToThread(lmtpSend, path, 0, recipients, body)
        self.assertEqual(lhlo[0], 250)
        self.assertEqual([code for code, _ in rcpts], [250, 250])
        self.assertEqual(
            after,
            [
                (250, b"2.6.0 delivered to one@example.net"),
                (452, b"4.2.2 full@example.net: mailbox full"),
            ],
        )
        self.assertEqual(quit[0], 221)
        self.assertEqual(len(recorder.messages), 1)
        self.assertEqual(recorder.messages[0].data, body)
        self.assertEqual([r.address for r in recorder.messages[0].envelope.rcptTo], recipients)
        # A client on a UNIX socket is local, as Postfix names one: localhost [127.0.0.1].
        self.assertEqual(recorder.messages[0].remoteAddress, "127.0.0.1")
        self.assertTrue(lhlo[1].startswith(b"mx.e2e.test Nice to meet you, localhost"), lhlo)


# -- twist smtpsvc --lmtp, --port, deliveries --------------------------------------------------


class LMTPServiceTests(E2ETestCase):
    """
    C{twist smtpsvc --lmtp}.
    """

    async def test_lmtpService(self) -> None:
        """
        twist smtpsvc --lmtp on 127.0.0.1 greets with LMTP; smtplib.LMTP sends to three
        recipients, the handler refuses bob at RCPT (550 5.1.1), and the message gets one
        250 2.6.0 per accepted recipient; the Maildir has the message for both.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = [
            *("--lmtp", "--listen", LISTEN),
            *("--deliver", "python:tests.service_support:makeHandler"),
            *("--deliver", f"maildir:{maildir}", *QUICK),
        ]
        process = await startService(self, args, tmpdir)
        assert process.port is not None
        body = message("lmtp service")
        recipients = ["alice@example.org", "bob@example.org", "carol@example.org"]
        lhlo, rcpts, after, quit = await deferToThread(
            lmtpSend, LOCALHOST, process.port, recipients, body
        )
        self.assertEqual(lhlo[0], 250)
        self.assertEqual(
            rcpts,
            [
                (250, b"2.1.5 Accepted"),
                (550, b"5.1.1 <bob@example.org>: no bobs here (makeHandler)"),
                (250, b"2.1.5 Accepted"),
            ],
        )
        self.assertEqual([code for code, _ in after], [250, 250])
        for _, text in after:
            self.assertTrue(text.startswith(b"2.6.0 "), text)
        self.assertEqual(quit[0], 221)
        self.assertIn("LMTP server listening on 127.0.0.1:", process.text)
        stored = list(delivered(maildir).values())
        self.assertEqual([withoutTraceHeaders(m) for m in stored], [body])
        self.assertIn(b" with LMTP", traceHeaders(stored[0]))

    async def test_2033_06_twistRefusesLmtpOnPort25(self) -> None:
        """
        twist smtpsvc --lmtp --listen tcp:25:... stops at start with one line naming RFC
        2033 and a non-zero status.  (In a private network namespace where one can be
        made, so that even a broken check listens on no real interface.)
        """
        tmpdir = workspace(self)
        problem = await deferToThread(privateNetworkProblem)
        wrapper = PRIVATE_NETWORK if problem is None else ()
        args = ["--lmtp", "--listen", f"tcp:25:interface={LOCALHOST}", "--deliver", "discard"]
        await assertTwistRefuses(
            self, args, "--lmtp must not listen on port 25 (RFC 2033)", cwd=tmpdir, wrapper=wrapper
        )


class PortFlagTests(E2ETestCase):
    """
    C{--port N}, short for C{--listen tcp:N}: every address.
    """

    def test_portIsListenOnEveryAddress(self) -> None:
        """
        --port N parses to the listener tcp:N, which Twisted binds to every address.
        """
        port = freePort()
        options = tap.Options()
        options.parseOptions(["--port", str(port), "--deliver", "discard"])
        self.assertEqual(options.config.listen, [f"tcp:{port}"])
        where = tcpListening(options.config.listen[0])
        self.assertEqual((where.interface, where.port) if where else None, ("", port))

    async def test_portServes(self) -> None:
        """
        twist smtpsvc --port N (N free on 127.0.0.1 a moment before), run in a private
        network namespace, listens on 0.0.0.0:N and delivers what smtplib sends to
        127.0.0.1:N from inside that namespace.
        """
        problem = await deferToThread(privateNetworkProblem)
        if problem is not None:
            raise SkipTest(f"--port listens on every address; no private network: {problem}")
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        port = freePort()
        args = ["--port", str(port), "--deliver", f"maildir:{maildir}", *QUICK]
        process = await startService(self, args, tmpdir, wrapper=PRIVATE_NETWORK, waitForPort=False)
        await process.waitForOutput(
            re.compile(rb"SMTP server listening on 0\.0\.0\.0:%d\b" % port), START_TIMEOUT
        )
        body = message("--port")
        client = (
            "import json, sys\n"
            "from tests.service_support import sendOne\n"
            "code, text = sendOne(int(sys.argv[1]), sys.argv[2].encode())\n"
            "print(json.dumps([code, text.decode()]))\n"
        )
        result = await deferToThread(
            runInNamespaceOf, process.pid, [sys.executable, "-c", client, str(port), body.decode()]
        )
        self.assertEqual(result.returncode, 0, f"{result}\n{process.text}")
        code, text = json.loads(result.stdout)
        self.assertEqual(code, 250, text)
        self.assertEqual([withoutTraceHeaders(m) for m in delivered(maildir).values()], [body])


class DeliveryCheckTests(E2ETestCase):
    """
    A service whose deliveries take no message is refused at start.
    """

    async def test_filterOnlyRefused(self) -> None:
        """
        --deliver python:... naming a handler without onData (a filter), and nothing
        else, stops at start with one line saying no target takes the messages, and a
        non-zero status; with discard beside it the service starts and answers 250.
        """
        tmpdir = workspace(self)
        deliver = ["--deliver", "python:tests.service_support:makeHandler"]
        await assertTwistRefuses(
            self,
            ["--listen", LISTEN, *deliver],
            "no --deliver target takes the messages",
            "add maildir:DIR, smtp:..., lmtp:... or, to drop them, discard",
            cwd=tmpdir,
        )
        process = await startService(
            self, ["--listen", LISTEN, *deliver, "--deliver", "discard", *QUICK], tmpdir
        )
        assert process.port is not None
        code, _ = await deferToThread(sendOne, process.port, message("discarded"))
        self.assertEqual(code, 250)


# -- tap-configs/ -------------------------------------------------------------------------------


class TapConfigTests(E2ETestCase):
    """
    The ready-made configurations of tap-configs/ run as C{twist smtpsvc --config FILE},
    their listeners and delivery targets moved into the test's reach (127.0.0.1 with ports
    the OS picks, Unix sockets in the test's directory) and no reverse DNS; everything
    else as the files say.
    """

    async def test_mx(self) -> None:
        """
        mx.toml: EHLO offers STARTTLS and SIZE 52428800 and no AUTH; after STARTTLS
        (the file's certificate, verified), mail to elsewhere gets 550 5.7.1 Relay
        access denied, and mail for example.org is handed over LMTP on a Unix socket (the
        Dovecot of the file) and answered 250.  A client that sends MAIL with EHLO,
        without waiting for its reply, gets 554 5.5.0 and is disconnected.
        """
        tmpdir = workspace(self)
        writeCertificate(tmpdir, "mx.example.org")
        store = os.path.join(shortDirectory(self), "lmtp")
        recorder = RecordingHandler()
        await startLocal(
            self, [recorder], listen=f"unix:{store}", lmtp=True, name="dovecot.example.org"
        )
        config = relocatedConfig(
            "mx.toml",
            tmpdir,
            {'"tcp:25"': f'"{LISTEN}"', "lmtp:unix:/run/dovecot/lmtp": f"lmtp:unix:{store}"},
        )
        process = await startService(self, ["--config", config, "--disable-reverse-lookup"], tmpdir)
        port = process.port
        assert port is not None
        body = message("to the mx")

        def talk() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with LoopbackSMTP("mx.example.org", port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                out["features"] = dict(c.esmtp_features)
                c.starttls(context=clientContext(authority().cert))
                c.ehlo()
                out["mail"] = c.mail("a@remote.example")
                out["relay"] = c.rcpt("u@elsewhere.example")
                out["local"] = c.rcpt(RECIPIENT)
                out["data"] = c.data(body)
                c.quit()
            return out

        def hasty() -> list[ServerReply]:
            # A client that does not wait for the reply to EHLO (one write).
            with RawClient(port) as client:
                client.readReply()
                client.send(f"EHLO {CLIENT_NAME}\r\nMAIL FROM:<a@remote.example>\r\n".encode())
                return client.readUntilClosed()

        out = await deferToThread(talk)
        unsynchronized = await deferToThread(hasty)
        self.assertEqual(
            [r.code for r in unsynchronized], [250, 554], f"{unsynchronized!r}\n{process.text}"
        )
        self.assertEqual(unsynchronized[-1].lines, ("5.5.0 Error: SMTP protocol synchronization",))
        self.assertIn("starttls", out["features"])
        self.assertEqual(out["features"].get("size"), "52428800")
        self.assertNotIn("auth", out["features"])
        self.assertEqual(out["mail"], (250, b"2.1.0 Accepted"))
        self.assertEqual(out["relay"], (550, b"5.7.1 Relay access denied"))
        self.assertEqual(out["local"], (250, b"2.1.5 Accepted"))
        self.assertEqual(out["data"][0], 250, f"{out['data']!r}\n{process.text}")
        self.assertEqual(len(recorder.messages), 1)
        forwarded = recorder.messages[0]
        assert forwarded.envelope.mailFrom is not None
        self.assertEqual(forwarded.envelope.mailFrom.address, "a@remote.example")
        self.assertEqual([r.address for r in forwarded.envelope.rcptTo], [RECIPIENT])
        self.assertEqual(withoutTraceHeaders(forwarded.data), body)

    async def test_submission(self) -> None:
        """
        submission.toml: on the STARTTLS port MAIL before STARTTLS gets 530 5.7.0; after
        STARTTLS alice logs in (the file's scrypt password file) and sends; on the
        implicit TLS port she logs in and sends too; both messages reach the local MTA of
        the file (an in-process server).
        """
        tmpdir = workspace(self)
        writeCertificate(tmpdir, "mail.example.org")
        setPassword(os.path.join(tmpdir, "passwd"), "alice", "secret")
        recorder = RecordingHandler()
        _, mta = await startLocal(self, [recorder])
        config = relocatedConfig(
            "submission.toml",
            tmpdir,
            {
                '"tcp:587"': f'"{LISTEN}"',
                '"tcp:465"': f'"{LISTEN}"',
                "smtp:tcp:host=127.0.0.1:port=10025": f"smtp:tcp:host={LOCALHOST}:port={mta}",
            },
        )
        process = await startService(self, ["--config", config, "--disable-reverse-lookup"], tmpdir)
        plain, secure = await process.listeningPorts()
        bodies = [message("submitted on 587"), message("submitted on 465")]
        context = clientContext(authority().cert)

        def onSubmission() -> dict[str, Any]:
            out: dict[str, Any] = {}
            with LoopbackSMTP("mail.example.org", plain, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                c.ehlo()
                out["beforeTLS"] = c.mail(SENDER)
                c.starttls(context=context)
                c.ehlo()
                out["mechanisms"] = c.esmtp_features.get("auth", "").split()
                out["login"] = c.login("alice", "secret")
                out["refused"] = c.sendmail(SENDER, ["b@example.net"], bodies[0])
                c.quit()
            return out

        def onImplicitTLS() -> tuple[tuple[int, bytes], dict[str, tuple[int, bytes]]]:
            with LoopbackSMTPSSL(
                "mail.example.org",
                secure,
                local_hostname=CLIENT_NAME,
                timeout=SOCKET_TIMEOUT,
                context=context,
            ) as c:
                c.ehlo()
                login = c.login("alice", "secret")
                refused = c.sendmail(SENDER, ["c@example.net"], bodies[1])
                c.quit()
            return login, refused

        out = await deferToThread(onSubmission)
        self.assertEqual(out["beforeTLS"], (530, b"5.7.0 Must issue a STARTTLS command first"))
        self.assertEqual(out["mechanisms"], ["PLAIN", "LOGIN"])
        self.assertEqual(out["login"], (235, b"2.7.0 Authentication successful"))
        self.assertEqual(out["refused"], {})
        login, refused = await deferToThread(onImplicitTLS)
        self.assertEqual((login, refused), ((235, b"2.7.0 Authentication successful"), {}))
        received = [(m.envelope.rcptTo[0].address, m.data) for m in recorder.messages]
        self.assertEqual(
            [(to, withoutTraceHeaders(data)) for to, data in received],
            [("b@example.net", bodies[0]), ("c@example.net", bodies[1])],
        )

    async def test_lmtpFront(self) -> None:
        """
        lmtp-front.toml: the service listens on its Unix socket (mode 660, as the file
        says); smtplib.LMTP sends to two recipients and gets one 250 2.6.0 each; the
        message is in the Maildir next to the file.
        """
        tmpdir = workspace(self)
        sock = os.path.join(shortDirectory(self), "lmtp.sock")
        config = relocatedConfig(
            "lmtp-front.toml", tmpdir, {"unix:/run/smtpsvc/lmtp.sock": f"unix:{sock}"}
        )
        process = await startService(self, ["--config", config], tmpdir, waitForPort=False)
        await process.waitForOutput(re.compile(rb"LMTP server listening on "), START_TIMEOUT)
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o660)
        body = message("through the lmtp front")
        recipients = ["one@example.org", "two@example.org"]
        lhlo, rcpts, after, quit = await deferToThread(lmtpSend, sock, 0, recipients, body)
        self.assertTrue(lhlo[1].startswith(b"store.example.org "), lhlo)
        self.assertEqual([code for code, _ in rcpts], [250, 250])
        self.assertEqual([code for code, _ in after], [250, 250], f"{after}\n{process.text}")
        for _, text in after:
            self.assertTrue(text.startswith(b"2.6.0 "), text)
        self.assertEqual(quit[0], 221)
        stored = delivered(os.path.join(tmpdir, "Maildir"))
        self.assertEqual([withoutTraceHeaders(m) for m in stored.values()], [body])
