"""
The standards checklist's tests for RFC 1870 (SIZE), RFC 2033 (LMTP), RFC 2034
(ENHANCEDSTATUSCODES) and RFC 2920 (PIPELINING) that no other module covers, each named
after its checklist ID (C{test_NNNN_NN_...}) and driven over the wire in memory through
L{MemoryClient}.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    Address,
    AuthRequest,
    IAuthHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)
from smtpsvc._core import _replies, _sasl
from smtpsvc._core._replies import Reply, enhancedFor
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

from . import protocol_support
from .auth_support import Alice, authPlain, b64
from .e2e_support import LogCapture
from .protocol_support import NAME, RECIPIENT, SENDER, Later, codes, drain, lines

# RFC 3463 section 2: status-code = class "." subject "." detail, class 2, 4 or 5, subject
# and detail 1*3digit; RFC 2034 section 4 puts it right after the reply code and a space.
ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3} ")


#: A server (see L{protocol_support.makeServer}) that greets at once.
makeServer = partial(protocol_support.makeServer, earlyTalkerDelay=0)
#: A client that said EHLO (LHLO to an LMTP server) to a new server that greets at once.
connect = partial(protocol_support.connect, clientName="client.example", earlyTalkerDelay=0)


def withoutEnhancedCode(replies: list[ServerReply]) -> list[str]:
    """
    The lines of 2xx, 4xx and 5xx replies that lack an enhanced status code whose class
    is the reply's first digit, and the lines of 3xx replies that have one (RFC 2034
    section 4): a conforming conversation gives an empty list.
    """
    wrong = []
    for reply in replies:
        for line in reply.lines:
            match = ENHANCED.match(line)
            if 300 <= reply.code < 400:
                ok = match is None
            else:
                ok = match is not None and match.group(1) == str(reply.code)[0]
            if not ok:
                wrong.append(f"{reply.code} {line}")
    return wrong


def refuse(address: Address) -> None:
    """
    Refuse an address whose local part asks for it: C{blocked} (550), C{later} (451),
    C{cNNN} (reply code NNN).
    """
    local = address.address.partition("@")[0]
    if local == "blocked":
        raise SMTPError(550, "Blocked")
    if local == "later":
        raise SMTPError(451, "Try again later")
    if re.fullmatch(r"c[45][0-9][0-9]", local):
        raise SMTPError(int(local[1:]), f"Refused with {local[1:]}")


@implementer(IMailFromHandler, IRcptToHandler)
class Policy:
    """
    Refuses senders and recipients as L{refuse} says; keeps the parameters it saw.
    """

    def __init__(self) -> None:
        self.mailArgs: list[dict[str, str | bool]] = []

    def onMailFrom(self, address: Address, session: Session) -> None:
        self.mailArgs.append(dict(address.args))
        refuse(address)

    def onRcptTo(self, address: Address, session: Session) -> None:
        refuse(address)


@implementer(IMailFromHandler)
class StorageCheck:
    """
    Refuses, for now, a sender whose declared SIZE is more than the free space left.
    """

    def __init__(self, free: int) -> None:
        self.free = free

    def onMailFrom(self, address: Address, session: Session) -> None:
        declared = address.args.get("SIZE")
        if isinstance(declared, str) and int(declared) > self.free:
            raise SMTPError(452, "4.3.1 Insufficient system storage")


@implementer(IMailFromHandler)
class Slow:
    """
    Answers the first sender when the test fires C{answer}, the others at once.
    """

    def __init__(self) -> None:
        self.answer: Deferred[None] = Deferred()
        self.calls = 0

    def onMailFrom(self, address: Address, session: Session) -> Deferred[None] | None:
        self.calls += 1
        return self.answer if self.calls == 1 else None


@implementer(IDataHandler)
class Delivery:
    """
    Reads each message whole, then answers when the test fires its Deferred.
    """

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.answers: list[Deferred[object]] = []

    async def onData(self, stream: IMessageStream, session: Session) -> object:
        self.messages.append(await readMessage(stream))
        answer: Deferred[object] = Deferred()
        self.answers.append(answer)
        return await answer


@implementer(IAuthHandler)
class LaterAuth(Later[object]):
    """
    Answers each AUTH when the test fires the Deferred it left in C{pending}.
    """

    def onAuth(self, request: AuthRequest, session: Session) -> Deferred[object]:
        return self.later()


def paddedMail(length: int, size: int) -> bytes:
    """
    A well-formed C{MAIL FROM:<...> SIZE=size} line, CRLF included, of exactly C{length}
    octets, made long by a source route (which RFC 5321 says a server parses and drops).
    """
    tail = f":{SENDER}> SIZE={size}\r\n"
    need = length - len("MAIL FROM:<@r.example") - len(tail)
    # Each further hop is ",@" LABEL ".example", 11 to 73 octets (labels have 1 to 63
    # characters); what is left below 11 lengthens the first label.
    hops = []
    while need >= 11:
        hop = need if need <= 73 else 73 if need - 73 >= 11 else need - 11
        hops.append("r" * (hop - 10))
        need -= hop
    head = "MAIL FROM:<@" + "r" * (1 + need) + ".example"
    line = (head + "".join(f",@{label}.example" for label in hops) + tail).encode()
    assert len(line) == length, (len(line), length)
    return line


class SizeTests(SynchronousTestCase):
    """
    RFC 1870, the SIZE extension.
    """

    def test_1870_01_advertised(self) -> None:
        """
        EHLO and LHLO advertise C{SIZE <limit>}; with hideSize a bare C{SIZE}; without a
        limit at most a C{SIZE} that declares none (bare or 0), never a number.
        """
        for lmtp in (False, True):
            hello = MemoryClient(makeServer(size=35_000_000, lmtp=lmtp))
            keyword = "LHLO x" if lmtp else "EHLO x"
            offered = [k for k in hello.send(keyword)[0].lines if k.split()[0] == "SIZE"]
            self.assertEqual(offered, ["SIZE 35000000"], lmtp)
        hidden = MemoryClient(makeServer(size=1000, hideSize=True)).send("EHLO x")[0]
        self.assertEqual([k for k in hidden.lines if k.split()[0] == "SIZE"], ["SIZE"])
        unlimited = MemoryClient(makeServer()).send("EHLO x")[0]
        self.assertIn(
            [k for k in unlimited.lines[1:] if k.split()[0] == "SIZE"], ([], ["SIZE"], ["SIZE 0"])
        )

    def test_1870_02_declaredSizeWithinLimit(self) -> None:
        """
        A declared size up to the limit gets 250 2.1.0, the handlers see it, and the
        message of that size is then accepted.
        """
        policy = Policy()
        recorder = RecordingHandler()
        client = connect(policy, recorder, size=1000, hideENHANCEDSTATUSCODES=False)
        for declared in (0, 999, 1000):
            replies = client.send(f"MAIL FROM:<{SENDER}> SIZE={declared}", "RSET")
            self.assertEqual(lines(replies), ["250 2.1.0 Accepted", "250 2.0.0 Flushed"])
        message = b"x" * 998 + b"\r\n"
        replies = client.sendmail(SENDER, [RECIPIENT], message)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual([a.get("SIZE") for a in policy.mailArgs], ["0", "999", "1000", None])
        self.assertEqual([m.data for m in recorder.messages], [message])
        client.send("RSET")
        self.assertEqual(
            lines(client.send(f"MAIL FROM:<{SENDER}> SIZE=1000", f"RCPT TO:<{RECIPIENT}>")),
            ["250 2.1.0 Accepted", "250 2.1.5 Accepted"],
        )

    def test_1870_04_insufficientStorage(self) -> None:
        """
        A declared size within the limit but beyond the storage left gets the handler's
        452 4.3.1, opens no transaction, and a smaller declared size is then accepted.
        The protocol core knows nothing of storage: an L{IMailFromHandler} decides, with
        the declared size in C{address.args["SIZE"]} (the built-in Maildir delivery is
        one, tested in L{tests.test_maildir}).
        """
        client = connect(StorageCheck(free=5000), size=10_000, hideENHANCEDSTATUSCODES=False)
        replies = client.send(f"MAIL FROM:<{SENDER}> SIZE=6000", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(
            lines(replies),
            ["452 4.3.1 Insufficient system storage", "503 5.5.1 Error: need MAIL command"],
        )
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}> SIZE=4000")), [250])

    def test_1870_08_lineLimitRaisedForSize(self) -> None:
        """
        A MAIL line carrying SIZE may be 26 octets longer than the command line limit:
        538 octets with CRLF are accepted by default, and also when maxCommandLength is
        set to RFC 5321's 510 (512 with CRLF), while a longer plain line is refused.
        """
        line = paddedMail(512 + 26, 1000)
        client = connect(size=10_000)
        self.assertEqual(codes(client.write(line)), [250])
        client = connect(size=10_000, maxCommandLength=510)
        self.assertEqual(codes(client.send("NOOP " + "x" * 505)), [250])
        self.assertEqual(codes(client.send("NOOP " + "x" * 506)), [500])
        self.assertEqual(codes(client.write(line)), [250], "RFC 1870 section 3 (6)")

    def test_1870_08_eachExtensionAddsItsOctets(self) -> None:
        """
        The MAIL line limit grows by what each extension offered adds: SIZE 26, DSN 100,
        SMTPUTF8 10 and AUTH 500 (RFC 1870, 3461, 6531 and 4954 section 5); one octet
        more is refused.  Without AUTH, its 500 are not added.
        """
        base = 510
        for auth, room in ((True, 26 + 100 + 10 + 500), (False, 26 + 100 + 10)):
            disabled = () if auth else ("AUTH",)
            client = connect(
                size=10_000, maxCommandLength=base, hideDSN=False, disabledCommands=disabled
            )
            self.assertEqual(codes(client.write(paddedMail(base + room + 2, 1000))), [250], auth)
            client.send("RSET")
            self.assertEqual(codes(client.write(paddedMail(base + room + 3, 1000))), [500], auth)


class LMTPTests(SynchronousTestCase):
    """
    RFC 2033, LMTP.
    """

    def test_2033_01_requiredExtensionsAlwaysOffered(self) -> None:
        """
        LHLO lists PIPELINING and ENHANCEDSTATUSCODES, which an LMTP server MUST
        implement (RFC 2033 section 5), and 8BITMIME, which it SHOULD.  An option that
        would hide one of the two required ones is either refused or has no effect.
        """
        self.assertIn("8BITMIME", MemoryClient(makeServer(lmtp=True)).send("LHLO x")[0].lines)
        offered = MemoryClient(makeServer(lmtp=True)).send("LHLO x")[0].lines
        self.assertIn("PIPELINING", offered)
        self.assertIn("ENHANCEDSTATUSCODES", offered)
        for hide in ("hidePIPELINING", "hideENHANCEDSTATUSCODES"):
            hidden: dict[str, Any] = {hide: True}
            self.assertRaises(ValueError, makeServer, lmtp=True, **hidden)

    def test_2033_03_dataWithoutAcceptedRecipient(self) -> None:
        """
        When no RCPT succeeded, DATA gets 503 5.5.1, and so does BDAT (its chunk read and
        thrown away); once a recipient is accepted DATA gets 354.
        """
        recorder = RecordingHandler()
        client = connect(Policy(), recorder, lmtp=True)
        replies = client.send(f"MAIL FROM:<{SENDER}>", "RCPT TO:<blocked@d.example>", "DATA")
        self.assertEqual(
            lines(replies),
            ["250 2.1.0 Accepted", "550 5.1.1 Blocked", "503 5.5.1 Error: need RCPT command"],
        )
        replies = client.write(b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
        self.assertEqual(lines(replies), ["503 5.5.1 Error: need RCPT command", "250 2.0.0 OK"])
        self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}>", "DATA")), [250, 354])
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"x\r\n"])

    def test_2033_05_acceptedOnlyOnceDelivered(self) -> None:
        """
        A recipient's 250 after the final dot is sent only once every data handler has
        taken the message for that recipient: nothing is said while they work, a
        recipient one of them refuses gets the refusal, and when a handler fails every
        recipient gets 451, none 250.
        """
        first, second = Delivery(), Delivery()
        client = connect(first, second, lmtp=True)
        replies = client.send(
            f"MAIL FROM:<{SENDER}>", "RCPT TO:<one@d.example>", "RCPT TO:<two@d.example>", "DATA"
        )
        self.assertEqual(codes(replies), [250, 250, 250, 354])
        self.assertEqual(client.write(b"hello\r\n.\r\n"), [])
        self.assertEqual(first.messages, [b"hello\r\n"])
        first.answers[0].callback([None, None])
        self.assertEqual(client.received(), [])
        self.assertEqual(second.messages, [b"hello\r\n"])
        second.answers[0].callback([SMTPError(451, "4.3.0 Cannot store"), None])
        self.assertEqual(
            lines(client.received()),
            ["451 4.3.0 Cannot store", "250 2.6.0 OK: message accepted"],
        )
        delivery = Delivery()
        client = connect(delivery, lmtp=True)
        client.send(f"MAIL FROM:<{SENDER}>", "RCPT TO:<one@d.example>", "RCPT TO:<two@d.example>")
        client.send("DATA")
        self.assertEqual(client.write(b"hello\r\n.\r\n"), [])
        delivery.answers[0].errback(RuntimeError("the disk is on fire"))
        self.assertEqual(codes(client.received()), [451, 451])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_2033_06_lmtpListenerNotOnPort25(self) -> None:
        """
        L{SMTPServer.listen} refuses to put an LMTP server on TCP port 25 (RFC 2033
        section 5: LMTP MUST NOT be used on it) and listens nowhere; an SMTP server may
        listen there, and an LMTP server on any other port.
        """
        reactor = MemoryReactorClock()
        smtp = SMTPServer([], reactor=reactor, name=NAME)
        self.successResultOf(smtp.listen("tcp:25:interface=127.0.0.1"))
        lmtp = SMTPServer([], reactor=reactor, name=NAME, lmtp=True)
        self.successResultOf(lmtp.listen("tcp:2524:interface=127.0.0.1"))
        self.assertEqual([port for port, *_ in reactor.tcpServers], [25, 2524])
        self.assertRaises(ValueError, lmtp.listen, "tcp:25:interface=127.0.0.1")
        self.assertEqual([port for port, *_ in reactor.tcpServers], [25, 2524])

        # An endpoint object says where it listens only once it does: the port is closed
        # again before the Deferred fails.
        opened: list[object] = []
        stopped: list[object] = []
        listenTCP = reactor.listenTCP

        def recordingListenTCP(*args: Any, **kwargs: Any) -> object:
            port = listenTCP(*args, **kwargs)
            self.patch(port, "stopListening", lambda: stopped.append(port))
            opened.append(port)
            return port

        self.patch(reactor, "listenTCP", recordingListenTCP)
        self.successResultOf(smtp.listen(TCP4ServerEndpoint(reactor, 25)))
        self.successResultOf(lmtp.listen(TCP6ServerEndpoint(reactor, 2524, interface="::1")))
        self.assertEqual(stopped, [])
        for endpoint in (
            TCP4ServerEndpoint(reactor, 25),
            TCP6ServerEndpoint(reactor, 25, interface="::1"),
        ):
            failure = self.failureResultOf(lmtp.listen(endpoint), ValueError)
            self.assertIn("must not listen on TCP port 25", str(failure.value))
        self.assertEqual(stopped, opened[2:])
        self.assertEqual(len(stopped), 2)


class PipeliningTests(SynchronousTestCase):
    """
    RFC 2920, PIPELINING.
    """

    def test_2920_01_advertised(self) -> None:
        """
        EHLO lists PIPELINING, without parameters; hidePIPELINING removes it, and a
        group of commands is still answered in order then (as in the reference).
        """
        offered = MemoryClient(makeServer()).send("EHLO x")[0].lines
        self.assertEqual([k for k in offered if k.split()[0] == "PIPELINING"], ["PIPELINING"])
        client = MemoryClient(makeServer(hidePIPELINING=True))
        replies = client.send("EHLO x", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "NOOP")
        self.assertNotIn("PIPELINING", replies[0].lines)
        self.assertEqual(codes(replies), [250, 250, 250, 250])

    def test_2920_03_noInputLost(self) -> None:
        """
        Input is never dropped: commands that arrive in odd pieces while a handler is
        still deciding, a message, and a batch long enough for the server to let other
        connections run in between are all answered, each once and in order.
        """
        slow = Slow()
        recorder = RecordingHandler()
        client = connect(slow, recorder, maxJunkCommands=None)
        group = (
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n"
        ).encode()
        for piece in (group[:15], group[15:31], group[31:32], group[32:]):
            self.assertEqual(client.write(piece), [])
        slow.answer.callback(None)
        self.assertEqual(codes(client.received()), [250, 250, 250, 354])
        rest = b"Subject: x\r\n\r\nbody\r\n.\r\n" + b"NOOP\r\n" * 250 + b"RSET\r\nQUIT\r\n"
        for start in range(0, len(rest), 7):
            client.protocol.dataReceived(rest[start : start + 7])
        self.assertEqual(codes(drain(client)), [250] + [250] * 250 + [250, 221])
        self.assertEqual([m.data for m in recorder.messages], [b"Subject: x\r\n\r\nbody\r\n"])
        self.assertEqual(recorder.recipients, [RECIPIENT, "e@f.example"])

    def test_2920_04_repliesSentWhenInputRunsOut(self) -> None:
        """
        When the input read so far is used up, every reply made is sent at once: before
        waiting for the rest of a command, for more of a message after the 354, or for the
        rest of a BDAT chunk.
        """
        client = connect()
        self.assertEqual(codes(client.write(b"NOOP\r\nRSET\r\nMAIL FROM:<a@b.exa")), [250, 250])
        replies = client.write(b"mple>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n")
        self.assertEqual(codes(replies), [250, 250, 354])
        self.assertEqual(client.write(b"\r\nbody\r\n"), [])
        replies = client.write(
            b".\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 10\r\nhello"
        )
        self.assertEqual(codes(replies), [250, 250, 250])
        self.assertEqual(codes(client.write(b"world")), [250])
        self.assertEqual(codes(client.write(b"BDAT 0 LAST\r\n")), [250])

    def test_2920_06_groupEndersMidGroup(self) -> None:
        """
        A client that puts EHLO, NOOP, VRFY, EXPN or TURN inside a group rather than at
        its end still gets every command answered in order, EHLO's reset included; after
        QUIT nothing more is read.
        """
        client = connect()
        replies = client.send(
            f"MAIL FROM:<{SENDER}>",
            "NOOP",
            "VRFY c@d.example",
            "EHLO again.example",
            f"RCPT TO:<{RECIPIENT}>",
            f"MAIL FROM:<{SENDER}>",
            "EXPN list",
            "TURN",
            f"RCPT TO:<{RECIPIENT}>",
            "QUIT",
            "NOOP",
        )
        self.assertEqual(codes(replies[:6]), [250, 250, 252, 250, 503, 250])
        self.assertEqual(codes(replies[6:8]), [502, 502])
        self.assertEqual(codes(replies[8:]), [250, 221])
        self.assertTrue(client.closed)

    def test_2920_06_bytesAfterDataAreTheMessage(self) -> None:
        """
        DATA ends a group: what a client sends after it without waiting for the 354 is
        the message, never commands.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        inside = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\n"
        data = (
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
            + inside
            + b".\r\nNOOP\r\n"
        )
        self.assertEqual(codes(client.write(data)), [250, 250, 354, 250, 250])
        self.assertEqual([m.data for m in recorder.messages], [inside])
        self.assertEqual((recorder.senders, recorder.recipients), ([SENDER], [RECIPIENT]))

    def test_2920_07_unsynchronizedClientClosed(self) -> None:
        """
        With C{forbidUnauthPipelining}, a client that sends more after a command it must
        wait for (EHLO, NOOP, QUIT...) gets 554 5.5.0 after that command's reply, and
        the connection closes: nothing else it sent is read.
        """
        recorder = RecordingHandler()
        for first in ("EHLO client.example", "HELO client.example", "NOOP", "VRFY x"):
            client = MemoryClient(
                makeServer([recorder], forbidUnauthPipelining=True, hideENHANCEDSTATUSCODES=False)
            )
            replies = client.send(first, f"MAIL FROM:<{SENDER}>")
            self.assertEqual(
                lines(replies)[-1], "554 5.5.0 Error: SMTP protocol synchronization", first
            )
            self.assertEqual(len(replies), 2, first)
            self.assertTrue(client.closed, first)
        self.assertEqual(recorder.senders, [])

    def test_2920_07_dataBeforeThe354(self) -> None:
        """
        A client that sends its message with DATA, without waiting for the 354, gets 554
        5.5.0 after it; the message is aborted, never delivered, and the connection's log
        line counts it as refused.
        """
        capture = LogCapture(self)
        recorder = RecordingHandler()
        client = connect(recorder, forbidUnauthPipelining=True)
        data = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode()
        replies = client.write(data + b"Subject: spam\r\n\r\nbuy\r\n.\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 554])
        self.assertTrue(client.closed)
        self.assertEqual(recorder.messages, [])
        (closed,) = [e for e in capture.events if e.get("event") == "disconnect"]
        self.assertEqual((closed["accepted"], closed["refused"]), (0, 1))

    def test_2920_07_clientsThatWaitAreServed(self) -> None:
        """
        With C{forbidUnauthPipelining}, a client that pipelines only where RFC 2920 lets
        it (MAIL, RCPT and DATA in one group) and waits for the 354 is served; so is an
        authenticated client that pipelines anything.
        """
        recorder = RecordingHandler()
        client = connect(recorder, forbidUnauthPipelining=True)
        group = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        self.assertEqual(codes(group), [250, 250, 354])
        self.assertEqual(codes(client.write(b"hi\r\n.\r\n")), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"hi\r\n"])
        trusted = connect(Alice(), forbidUnauthPipelining=True, allowInsecureAuth=True)
        self.assertEqual(codes(trusted.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(trusted.send("NOOP", "NOOP", "RSET")), [250, 250, 250])
        self.assertFalse(trusted.closed)

    def test_2920_07_bdatChunkFollowsItsCommand(self) -> None:
        """
        A BDAT chunk comes right after its command (RFC 3030), so it is never
        unsynchronised, even while PIPELINING is hidden.
        """
        variants: tuple[dict[str, Any], ...] = ({}, {"hidePIPELINING": True})
        for options in variants:
            recorder = RecordingHandler()
            client = connect(recorder, forbidUnauthPipelining=True, **options)
            self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}>")), [250])
            self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}>")), [250])
            self.assertEqual(codes(client.write(b"BDAT 4 LAST\r\nhi\r\n")), [250], options)
            self.assertEqual([m.data for m in recorder.messages], [b"hi\r\n"], options)
            self.assertFalse(client.closed)

    def test_2920_07_noPipeliningAfterHelo(self) -> None:
        """
        PIPELINING is offered only in the reply to EHLO: after HELO, MAIL and RCPT in
        one write are unsynchronised (standards section 2.3).
        """
        client = MemoryClient(makeServer(forbidUnauthPipelining=True))
        self.assertEqual(codes(client.send("HELO client.example")), [250])
        replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(codes(replies), [250, 554])
        self.assertTrue(client.closed)

    def test_2920_07_authStepsAndHiddenPipelining(self) -> None:
        """
        A response sent before AUTH's 334 challenge, or a second command while
        PIPELINING is hidden, is unsynchronised too.
        """
        client = connect(Alice(), forbidUnauthPipelining=True, allowInsecureAuth=True)
        replies = client.send("AUTH LOGIN", b64("alice"))
        self.assertEqual(codes(replies), [334, 554])
        self.assertTrue(client.closed)
        hidden = connect(forbidUnauthPipelining=True, hidePIPELINING=True)
        replies = hidden.send("RSET", f"MAIL FROM:<{SENDER}>")
        self.assertEqual(codes(replies), [250, 554])
        self.assertTrue(hidden.closed)

    def test_2920_07_sentWhileAHandlerDecides(self) -> None:
        """
        A client that sends more while the reply it must wait for is held back by a
        handler gets 554 5.5.0 after that reply; one that sends nothing until the reply
        is served.
        """
        for early in (True, False):
            slow = Slow()
            recorder = RecordingHandler()
            client = MemoryClient(makeServer([slow, recorder], forbidUnauthPipelining=True))
            # After HELO, PIPELINING is not offered: the client must wait after MAIL.
            self.assertEqual(codes(client.send("HELO client.example")), [250])
            self.assertEqual(client.send(f"MAIL FROM:<{SENDER}>"), [])
            if early:
                self.assertEqual(client.send(f"RCPT TO:<{RECIPIENT}>"), [])
            slow.answer.callback(None)
            replies = client.received()
            if early:
                self.assertEqual(codes(replies), [250, 554], early)
                self.assertTrue(client.closed)
                self.assertEqual(recorder.recipients, [])
            else:
                self.assertEqual(codes(replies), [250], early)
                self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}>")), [250])
                self.assertFalse(client.closed)

    def test_2920_07_sentDuringTheAuthFailureDelay(self) -> None:
        """
        While PIPELINING is hidden, a client must wait for every reply, including a
        failed AUTH's, which comes only after C{authFailureDelay}: a command sent before
        it gets 554 5.5.0 after the 535, whether the handler refused at once or later.
        """
        for later in (False, True):
            handler = LaterAuth()
            client = connect(
                handler if later else Alice(),
                forbidUnauthPipelining=True,
                allowInsecureAuth=True,
                hidePIPELINING=True,
                authFailureDelay=1.0,
            )
            self.assertEqual(client.send(authPlain("alice", "wrong")), [])
            if later:
                handler.pending.pop().callback(None)
            self.assertEqual(client.send("NOOP"), [])
            client.clock.advance(1.0)
            self.assertEqual(codes(client.received()), [535, 554], later)
            self.assertTrue(client.closed)

    def test_2920_08_expectedErrorsNotCounted(self) -> None:
        """
        After a refused MAIL, the pipelined RCPTs each get 503 5.5.1 and DATA (or BDAT)
        503 5.5.1 too; none of these counts towards the unrecognised-command limit, and
        the connection goes on.
        """
        client = connect(Policy(), maxUnrecognizedCommands=2, hideENHANCEDSTATUSCODES=False)
        for _ in range(3):
            replies = client.send(
                "MAIL FROM:<blocked@b.example>",
                *[f"RCPT TO:<r{i}@d.example>" for i in range(10)],
                "DATA",
            )
            self.assertEqual(
                lines(replies),
                ["550 5.1.1 Blocked"]
                + ["503 5.5.1 Error: need MAIL command"] * 10
                + ["503 5.5.1 Error: need RCPT command"],
            )
            replies = client.write(b"MAIL FROM:<blocked@b.example>\r\nBDAT 4 LAST\r\nabcd")
            self.assertEqual(codes(replies), [550, 503])
        self.assertFalse(client.closed)
        self.assertEqual(lines(client.send("FOO")), ["500 5.5.2 Error: command not recognized"])
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}>")), [250])


class EnhancedStatusCodeTests(SynchronousTestCase):
    """
    RFC 2034, ENHANCEDSTATUSCODES (codes from RFC 3463 and RFC 5248).
    """

    def test_2034_01_advertised(self) -> None:
        """
        EHLO lists ENHANCEDSTATUSCODES exactly when replies carry the codes: when shown
        for SMTP, and by default for LMTP; SMTP hides them by default, as the reference
        does, and then no reply carries one.
        """
        cases: list[tuple[dict[str, Any], bool]] = [
            ({"hideENHANCEDSTATUSCODES": False}, True),
            ({}, False),
            ({"lmtp": True}, True),
        ]
        for options, shown in cases:
            client = MemoryClient(makeServer(**options))
            hello = client.send("LHLO x" if options.get("lmtp") else "EHLO x")[0]
            self.assertEqual("ENHANCEDSTATUSCODES" in hello.lines, shown, options)
            expected = ["250 2.0.0 OK"] if shown else ["250 OK"]
            self.assertEqual(lines(client.send("NOOP")), expected, options)

    def test_2034_02_everyReplyCarriesACode(self) -> None:
        """
        With the extension on, every 2xx, 4xx and 5xx reply line after EHLO carries an
        enhanced status code of its class, and 334 and 354 carry none: through a
        conversation with every command, refusals, AUTH, DATA, BDAT, the limits and
        LMTP's per-recipient replies.
        """
        client = MemoryClient(
            makeServer(
                [Policy(), Alice()],
                hideENHANCEDSTATUSCODES=False,
                size=1000,
                allowInsecureAuth=True,
                authMethods=("PLAIN", "CRAM-MD5"),
                authFailureDelay=0,
                # No message ends (the BDAT 0 fails its transaction), which would start
                # the counts of unrecognised commands and errors again.
                maxUnrecognizedCommands=10,
                maxErrors=100,
            )
        )
        seen = client.send("NOOP", f"MAIL FROM:<{SENDER}>", "RSET")
        hello = client.send("EHLO client.example")
        self.assertEqual(codes(hello), [250])
        seen += client.send(
            "HELP",
            "VRFY c@d.example",
            "FOO",
            "MAIL FROM:<a@@b>",
            f"MAIL FROM:<{SENDER}> SIZE=1001",
            f"MAIL FROM:<{SENDER}> SIZE=abc",
            "MAIL FROM:<blocked@b.example>",
            "DATA",
            "RCPT TO:<c@d.example>",
            f"MAIL FROM:<{SENDER}>",
            f"MAIL FROM:<{SENDER}>",
            "AUTH PLAIN",
            "RCPT TO:<>",
            "RCPT TO:<later@d.example>",
            "RCPT TO:<c550@d.example>",
            f"RCPT TO:<{RECIPIENT}>",
            "DATA x",
            "DATA",
        )
        seen += client.write(b"hello\r\n.\r\n")
        seen += client.write(b"NOOP " + b"x" * 5000 + b"\r\nNOOP \xff\r\n")
        seen += client.write(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\n".encode()
            + b"BDAT 3\r\nabcBDAT 0\r\nBDAT 2 LAST\r\nde"
        )
        seen += client.send("AUTH FOO", "AUTH PLAIN")
        seen += client.send("*", "AUTH CRAM-MD5 Zm9v")
        seen += client.send(authPlain("alice", "wrong"))
        seen += client.send(authPlain("alice", "secret"), authPlain("alice", "secret"))
        seen += client.send("STARTTLS x", "WIZ", "WIZ x", "SHELL", "KILL", "QUIT")
        self.assertIn(334, codes(seen))
        self.assertIn(354, codes(seen))
        self.assertEqual(len(seen), 42)
        self.assertEqual(withoutEnhancedCode(seen), [])

        limits = MemoryClient(
            makeServer(hideENHANCEDSTATUSCODES=False, maxUnrecognizedCommands=2, socketTimeout=10)
        )
        seen = limits.send("EHLO x", "FOO", "BAR")[1:]
        self.assertEqual(codes(seen), [500, 421])
        idle = MemoryClient(makeServer(hideENHANCEDSTATUSCODES=False, socketTimeout=10))
        idle.clock.advance(10)
        seen += idle.received()
        self.assertEqual(codes(seen), [500, 421, 421])
        lmtp = connect(Policy(), lmtp=True)
        seen += lmtp.send(
            f"MAIL FROM:<{SENDER}>",
            "RCPT TO:<one@d.example>",
            "RCPT TO:<blocked@d.example>",
            "RCPT TO:<two@d.example>",
            "DATA",
        )
        seen += lmtp.write(b"x\r\n.\r\n")
        self.assertEqual(codes(seen[3:]), [250, 250, 550, 250, 354, 250, 250])
        self.assertEqual(withoutEnhancedCode(seen), [])

    def test_2034_03_classIsTheFirstDigit(self) -> None:
        """
        Every enhanced code smtpsvc sends is C{class.subject.detail} with the reply's
        first digit as class: for whatever code a handler refuses with, from the codes
        the server picks for them, and throughout its catalogue of fixed replies.
        """
        replies: list[ServerReply] = []
        # (Every refusal is an error: no maxErrors, or the 20th would be a 421.)
        client = connect(Policy(), hideENHANCEDSTATUSCODES=False, maxErrors=None)
        for code in range(400, 600):
            if code == 421:
                # 421 closes the connection (RFC 5321 section 3.8): a client of its own.
                other = connect(Policy(), hideENHANCEDSTATUSCODES=False)
                replies += other.send("MAIL FROM:<c421@b.example>")
                continue
            replies += client.send(f"MAIL FROM:<c{code}@b.example>")
        self.assertEqual(codes(replies), list(range(400, 600)))
        self.assertEqual(withoutEnhancedCode(replies), [])
        for code in [*range(200, 300), *range(400, 600)]:
            enhanced = enhancedFor(code)
            assert enhanced is not None
            self.assertRegex(enhanced + " ", ENHANCED)
            self.assertEqual(enhanced[0], str(code)[0], code)
        catalogue = [
            (name, value)
            for module in (_replies, _sasl)
            for name, value in vars(module).items()
            if isinstance(value, Reply)
        ]
        self.assertGreater(len(catalogue), 50)
        for name, reply in catalogue:
            if reply.enhanced is not None:
                self.assertRegex(reply.enhanced + " ", ENHANCED, name)
                self.assertEqual(reply.enhanced[0], str(reply.code)[0], name)
        with self.assertRaises(ValueError):
            SMTPError(452, "Mailbox full", "5.2.2")

    def test_2034_04_sameCodeOnEveryLine(self) -> None:
        """
        A reply of several lines repeats its enhanced code on each: a handler's reply of
        two lines, and a long text cut into lines of at most 512 octets.
        """

        @implementer(IMailFromHandler)
        class Wordy:
            def onMailFrom(self, address: Address, session: Session) -> None:
                if address.address.startswith("two@"):
                    raise SMTPError(550, ["First line", "Second line"], "5.7.1")
                raise SMTPError(450, "word " * 200)

        client = connect(Wordy(), hideENHANCEDSTATUSCODES=False)
        client.protocol.dataReceived(b"MAIL FROM:<two@b.example>\r\n")
        self.assertEqual(
            client.transport.value(), b"550-5.7.1 First line\r\n550 5.7.1 Second line\r\n"
        )
        client.transport.clear()
        client.protocol.dataReceived(b"MAIL FROM:<long@b.example>\r\n")
        wire = client.transport.value().split(b"\r\n")[:-1]
        self.assertGreater(len(wire), 1)
        self.assertEqual([line[:10] for line in wire[:-1]], [b"450-4.2.1 "] * (len(wire) - 1))
        self.assertEqual(wire[-1][:10], b"450 4.2.1 ")
        self.assertTrue(all(len(line) + 2 <= 512 for line in wire))
        self.assertEqual(" ".join(line[10:].decode() for line in wire).split(), ["word"] * 200)

    def test_2034_04_codeGivenOnEveryLineNotDoubled(self) -> None:
        """
        A handler may write the enhanced code at the start of each of its lines, as
        Postfix's replies do: each line of the reply then carries it once, and with the
        extension hidden, on no line.
        """

        @implementer(IMailFromHandler)
        class EveryLine:
            def onMailFrom(self, address: Address, session: Session) -> None:
                raise SMTPError(550, ["5.7.1 Relaying denied", "5.7.1 Ask your postmaster"])

        for hidden, expected in (
            (False, ["550 5.7.1 Relaying denied", "550 5.7.1 Ask your postmaster"]),
            (True, ["550 Relaying denied", "550 Ask your postmaster"]),
        ):
            client = connect(EveryLine(), hideENHANCEDSTATUSCODES=hidden)
            self.assertEqual(lines(client.send(f"MAIL FROM:<{SENDER}>")), expected, hidden)
