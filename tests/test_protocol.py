"""
Tests for the conversation as a client sees it, reply by reply, over an in-memory
transport: the reference's replies (behaviour spec sections 4 to 10) and the glue's
ordering, pausing, timing and shutdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import eventAsJSON, eventFromJSON, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    Address,
    Envelope,
    ICloseHandler,
    IConnectHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
    MessageAborted,
    MessageDone,
    MessageRefused,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)
from smtpsvc._core._connection import _HELLOS
from smtpsvc._core._session import newSessionID
from smtpsvc._server import ABORT_DELAY, HANDLER_GRACE
from smtpsvc._stream import HIGH_WATER
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply, parseReplies

from . import smuggling
from .e2e_support import ROOT, LogCapture
from .protocol_support import (
    NAME,
    RECIPIENT,
    SENDER,
    DataGate,
    Later,
    LateReader,
    clientOf,
    codes,
    connect,
    first,
    hello,
    lines,
    makeServer,
    wire,
    wires,
)
from .service_support import NeverClosing


class GreetingTests(SynchronousTestCase):
    """
    What a client sees when it connects (spec section 4.1).
    """

    def test_5321_01_greetingNamesServer(self) -> None:
        """
        The greeting names the server and says ESMTP, without an enhanced code.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(client.greeting, ServerReply(220, (f"{NAME} ESMTP",)))

    def test_banner(self) -> None:
        """
        The banner follows ESMTP after one space.
        """
        client = connect(banner="Welcome, friend")
        self.assertEqual(client.greeting, ServerReply(220, (f"{NAME} ESMTP Welcome, friend",)))

    def test_lmtpGreeting(self) -> None:
        """
        An LMTP server says LMTP.
        """
        client = connect(lmtp=True)
        self.assertEqual(client.greeting, ServerReply(220, (f"{NAME} LMTP",)))

    def test_2920_07_earlyTalker(self) -> None:
        """
        A client that talks before the greeting gets 421 and is closed; no greeting is
        ever sent.
        """
        server = makeServer()
        clock = server.reactor
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
        protocol = server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO early\r\n")
        self.assertEqual(transport.value(), f"421 {NAME} You talk too soon\r\n".encode())
        self.assertTrue(transport.disconnecting)
        clock.advance(1)
        self.assertEqual(transport.value(), f"421 {NAME} You talk too soon\r\n".encode())

    def test_earlyTalkerDelayOff(self) -> None:
        """
        With the delay at 0 the greeting is sent at once.
        """
        server = makeServer(earlyTalkerDelay=0)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 1))
        server.buildProtocol(transport.getPeer()).makeConnection(transport)
        self.assertEqual(transport.value(), f"220 {NAME} ESMTP\r\n".encode())

    def test_connectHandlerRefuses(self) -> None:
        """
        An IConnectHandler's SMTPError is sent instead of the greeting, without an
        enhanced code; the connection stays open for QUIT (see standards 5321-02 in
        tests.test_standards_5321).
        """

        @implementer(IConnectHandler)
        class GoAway:
            def onConnect(self, session: Session) -> None:
                raise SMTPError(554, "Go away")

        client = connect(GoAway(), hideENHANCEDSTATUSCODES=False)
        self.assertEqual(client.greeting, ServerReply(554, ("Go away",)))
        self.assertFalse(client.closed)
        self.assertEqual(first(client.send("QUIT")), "221 2.0.0 Bye")
        self.assertTrue(client.closed)

    def test_connectHandlerBusy(self) -> None:
        """
        A temporary refusal (421) works the same way.
        """

        @implementer(IConnectHandler)
        class Busy:
            def onConnect(self, session: Session) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                d.errback(SMTPError(421, "Busy"))
                return d

        client = connect(Busy())
        self.assertEqual(client.greeting, ServerReply(421, ("Busy",)))
        self.assertTrue(client.closed)

    def test_connectHandlerBug(self) -> None:
        """
        A connect handler that fails unexpectedly leaves no service to give: the client
        gets 421 (a greeting may only be 220 or 554, RFC 5321 section 4.3.2) without an
        enhanced code, the connection closes, and the traceback is logged.  At once or
        later; after XCLIENT, whose reply is the new client's greeting, too.
        """
        for later in (False, True):

            @implementer(IConnectHandler)
            class Buggy:
                calls = 0
                answersLater = later

                def onConnect(self, session: Session) -> Deferred[None] | None:
                    self.calls += 1
                    if self.calls == 1 and not self.answersLater:
                        raise KeyError("oops")
                    d: Deferred[None] = Deferred()
                    if self.calls == 1:
                        d.errback(KeyError("oops"))
                    else:
                        d.callback(None)
                    return d

            client = connect(Buggy(), hideENHANCEDSTATUSCODES=False)
            self.assertEqual(
                wire(cast(ServerReply, client.greeting)),
                "421 Local error in processing - closing connection",
                later,
            )
            self.assertTrue(client.closed, later)
            self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1, later)

        @implementer(IConnectHandler)
        class BuggyForTheNewClient:
            def onConnect(self, session: Session) -> None:
                if session.remoteAddress == "198.51.100.7":
                    raise KeyError("oops")

        client = connect(BuggyForTheNewClient(), useXClient=("192.0.2.0/24",))
        client.send("EHLO proxy.example")
        self.assertEqual(
            wires(client.send("XCLIENT ADDR=198.51.100.7")),
            ["421 Local error in processing - closing connection"],
        )
        self.assertTrue(client.closed)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_returnedRefusal(self) -> None:
        """
        An SMTPError that a connect, MAIL or RCPT handler returns (at once, or as a
        Deferred's result) instead of raising refuses as a raised one does, and stops
        the chain: nothing after it accepts, and no message is delivered.
        """
        for later in (False, True):

            def answer(refusal: SMTPError, later: bool = later) -> object:
                return succeed(refusal) if later else refusal

            @implementer(IConnectHandler, IMailFromHandler, IRcptToHandler)
            class Returns:
                def onConnect(self, session: Session) -> object:
                    if session.remoteAddress == "203.0.113.9":
                        return answer(SMTPError(554, "Go away"))
                    return None

                def onMailFrom(self, address: Address, session: Session) -> object:
                    if address.address == "spam@b.example":
                        return answer(SMTPError(550, "5.7.1 Sender refused"))
                    return None

                def onRcptTo(self, address: Address, session: Session) -> object:
                    return answer(SMTPError(550, "5.1.1 No such user"))

            recorder = RecordingHandler()
            server = makeServer([Returns(), recorder], hideENHANCEDSTATUSCODES=False)
            refused = MemoryClient(server, peer=("203.0.113.9", 40000))
            self.assertEqual(wire(cast(ServerReply, refused.greeting)), "554 Go away", later)
            client = clientOf(server, "c.example")
            self.assertEqual(
                wires(client.send("MAIL FROM:<spam@b.example>")),
                ["550 5.7.1 Sender refused"],
                later,
            )
            replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
            self.assertEqual(
                wires(replies),
                [
                    "250 2.1.0 Accepted",
                    "550 5.1.1 No such user",
                    "503 5.5.1 Error: need RCPT command",
                ],
                later,
            )
            self.assertEqual(
                (recorder.senders, recorder.recipients),
                (["a@b.example"], []),
                later,
            )

    def test_connectHandlerPendingThenEarlyTalk(self) -> None:
        """
        While a connect handler is still deciding, the client must wait: talking gets 421.
        """

        @implementer(IConnectHandler)
        class Slow:
            def __init__(self) -> None:
                self.d: Deferred[None] = Deferred()

            def onConnect(self, session: Session) -> Deferred[None]:
                return self.d

        slow = Slow()
        client = connect(slow)
        self.assertIsNone(client.greeting)
        replies = client.send("EHLO x")
        self.assertEqual(first(replies), f"421 {NAME} You talk too soon")
        slow.d.callback(None)
        self.assertEqual(client.received(), [])

    def test_maxClients(self) -> None:
        """
        The connection over maxClients gets 421 and is closed; the others are served.
        """
        server = makeServer(maxClients=2)
        a, b = MemoryClient(server), MemoryClient(server)
        c = MemoryClient(server)
        self.assertEqual(codes([a.greeting, b.greeting]), [220, 220])  # type: ignore[list-item]
        self.assertEqual(
            c.greeting,
            ServerReply(421, (f"{NAME} Too many connected clients, try again in a moment",)),
        )
        self.assertTrue(c.closed)
        self.assertEqual(server.connectionCount, 2)
        d = MemoryClient(server)
        self.assertEqual(d.greeting.code if d.greeting else None, 421)
        a.send("QUIT")
        e = MemoryClient(server)
        self.assertEqual(e.greeting.code if e.greeting else None, 220)

    def test_maxClientsPerAddress(self) -> None:
        """
        A connection over maxClientsPerAddress from one address gets 421 naming it and is
        closed; other addresses are served; once one of the first leaves, the address
        may connect again, and a refused connection, once closed, holds no slot.
        """
        server = makeServer(maxClientsPerAddress=2)
        first = [MemoryClient(server, ("192.0.2.7", 4000 + n)) for n in range(2)]
        third = MemoryClient(server, ("192.0.2.7", 4002))
        self.assertEqual(codes([c.greeting for c in first]), [220, 220])  # type: ignore[misc]
        self.assertEqual(
            third.greeting,
            ServerReply(421, (f"{NAME} Error: too many connections from 192.0.2.7",)),
        )
        self.assertTrue(third.closed)
        other = MemoryClient(server, ("192.0.2.8", 4000))
        self.assertEqual(other.greeting.code if other.greeting else None, 220)
        first[0].send("QUIT")
        again = MemoryClient(server, ("192.0.2.7", 4003))
        self.assertEqual(again.greeting.code if again.greeting else None, 220)
        self.assertEqual(server._perAddress, {"192.0.2.7": 2, "192.0.2.8": 1})

    def test_maxClientsPerAddressAfterProxy(self) -> None:
        """
        Behind a PROXY header the real client's address is counted, not the proxy's;
        an IPv6 client's /64 network counts as one address.
        """
        server = makeServer(maxClientsPerAddress=1, useProxy=True, earlyTalkerDelay=0)

        def behindProxy(source: str, family: str = "TCP6") -> int:
            client = MemoryClient(server, ("10.0.0.1", 5000))
            to = "2001:db8::25" if family == "TCP6" else "10.0.0.25"
            [reply] = client.write(f"PROXY {family} {source} {to} 40000 25\r\n".encode())
            return reply.code

        sources = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"]
        self.assertEqual([behindProxy(source) for source in sources], [220, 421, 220])
        self.assertEqual(behindProxy("192.0.2.9", "TCP4"), 220)


def acceptOne(client: MemoryClient) -> None:
    """
    Send one message, which must be accepted.
    """
    replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
    assert codes(replies) == [250, 250, 354], replies
    assert codes(client.write(b"hi\r\n.\r\n")) == [250]


class CommandCheckTests(SynchronousTestCase):
    """
    The checks every command line goes through (spec section 4.2).
    """

    def test_unknownCommand(self) -> None:
        """
        An unknown verb gets 500 (standards 5321-12).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(first(client.send("FOO")), "500 5.5.2 Error: command not recognized")

    def test_notImplementedCommands(self) -> None:
        """
        EXPN, ETRN, TURN, SEND, SAML and SOML are known but not implemented: 502, where
        the reference answers 500 (RFC 5321 section 4.2.4; standards 5321-13).  They
        count as unrecognised commands.
        """
        client = connect(maxUnrecognizedCommands=None)
        for verb in ("EXPN x", "ETRN x", "TURN", "SEND", "SAML", "SOML"):
            self.assertEqual(first(client.send(verb)), "502 Error: command not implemented")
        self.assertEqual(first(client.send("XYZZY")), "500 Error: command not recognized")
        limited = connect(maxUnrecognizedCommands=2)
        self.assertEqual(codes(limited.send("TURN", "TURN")), [502, 421])
        self.assertTrue(limited.closed)

    def test_emptyLineAndLeadingSpace(self) -> None:
        """
        An empty line and a line with a leading space are unknown commands.
        """
        client = connect()
        self.assertEqual(codes(client.send("", " NOOP")), [500, 500])

    def test_verbsAreCaseInsensitive(self) -> None:
        """
        Verbs and keywords work in any case (standards 5321-10).
        """
        client = connect()
        replies = client.send("ehlo x", "mail from:<a@b.example>", "Rcpt To:<c@d.example>")
        self.assertEqual(codes(replies), [250, 250, 250])

    def test_trailingSpaces(self) -> None:
        """
        NOOP with trailing spaces is fine (standards 5321-11).
        """
        self.assertEqual(codes(connect().send("NOOP   ")), [250])

    def test_5321_11_trailingWhiteSpaceAfterAnyCommand(self) -> None:
        """
        Trailing white space, SP or HTAB (RFC 5321 section 4.1.1), is tolerated after
        every command, as by Postfix (Postfix QA: after BDAT it got 521 and the
        connection closed; a tab after any command, 500 or 501).
        """
        client = connect(RecordingHandler(), clientName="c.example")
        replies = client.send(
            "NOOP\t",
            "RSET \t",
            "MAIL FROM:<a@b.example> SIZE=10 \t",
            "RCPT TO:<c@d.example>\t",
            "DATA\t",
        )
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354])
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>")
        self.assertEqual(codes(client.write(b"BDAT 5 LAST \t\r\nhello")), [250])
        self.assertEqual(codes(client.send("QUIT\t")), [221])
        self.assertTrue(client.closed)

    def test_tooManyUnrecognized(self) -> None:
        """
        The tenth unrecognised command gets 421 and the connection closes.
        """
        client = connect()
        replies = client.send(*["FOO"] * 9)
        self.assertEqual(codes(replies), [500] * 9)
        self.assertFalse(client.closed)
        self.assertEqual(first(client.send("FOO")), "421 Error: too many unrecognized commands")
        self.assertTrue(client.closed)

    def test_every500Counts(self) -> None:
        """
        Every command answered 500 counts towards the limit: the reference's jokes (KILL,
        SHELL, WIZ without a password) and, in LMTP, HELO and EHLO, as well as unknown
        commands.
        """
        for lmtp, command in (
            (False, "KILL"),
            (False, "SHELL"),
            (False, "WIZ"),
            (True, "HELO x"),
            (True, "EHLO x"),
        ):
            client = connect(maxUnrecognizedCommands=3, lmtp=lmtp)
            self.assertEqual(codes(client.send(command, "FOO", command)), [500, 500, 421], command)
            self.assertTrue(client.closed, command)

    def test_unrecognizedLimitResetByMessage(self) -> None:
        """
        The count of unrecognised commands starts again after each message.
        """
        client = connect()
        hello(client)
        client.send(*["FOO"] * 9)
        self.assertEqual(client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")[-1].code, 250)
        self.assertEqual(codes(client.send(*["FOO"] * 9)), [500] * 9)
        self.assertFalse(client.closed)

    def test_unrecognizedLimitOff(self) -> None:
        """
        maxUnrecognizedCommands=None turns the limit off (maxErrors too: each 500 is an
        error).
        """
        client = connect(maxUnrecognizedCommands=None, maxErrors=None)
        self.assertEqual(codes(client.send(*["FOO"] * 30)), [500] * 30)
        self.assertFalse(client.closed)

    def test_maxErrors(self) -> None:
        """
        Error replies of every kind (syntax, a handler's refusal, an unknown command)
        count towards maxErrors; the one that reaches it is replaced by 421 4.7.0 and
        the connection closes (standards 5321-38).
        """
        client = connect(
            Policy(), hideENHANCEDSTATUSCODES=False, maxErrors=4, clientName="c.example"
        )
        replies = client.send("MAIL FROM:<a@@b>", "MAIL FROM:<blocked@b.example>", "FOO")
        self.assertEqual(codes(replies), [501, 550, 500])
        self.assertFalse(client.closed)
        self.assertEqual(lines(client.send("VRFY", "NOOP")), ["421 4.7.0 Error: too many errors"])
        self.assertTrue(client.closed)

    def test_maxErrorsCountsAgainAfterAMessage(self) -> None:
        """
        The error count starts again after a message accepted; a message refused (here
        over the size limit) counts as one error.
        """
        client = connect(RecordingHandler(), maxErrors=3, size=100, clientName="c.example")
        self.assertEqual(codes(client.send("MAIL FROM:<a@@b>", "VRFY")), [501, 501])
        acceptOne(client)
        replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        replies += client.write(b"x" * 200 + b"\r\n.\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 552])
        self.assertEqual(codes(client.send("VRFY")), [501])
        self.assertFalse(client.closed)
        self.assertEqual(codes(client.send("VRFY")), [421])

    def test_expectedErrorsAreJunk(self) -> None:
        """
        The 503s a pipelining client could not foresee (its RCPTs and DATA after a
        refused MAIL) are not errors but junk commands: many of them pass while under
        maxJunkCommands, and past it each counts as an error.
        """
        client = connect(Policy(), maxErrors=3, maxJunkCommands=12, clientName="c.example")
        batch = ["MAIL FROM:<blocked@b.example>", *["RCPT TO:<r@d.example>"] * 10, "DATA"]
        self.assertEqual(codes(client.send(*batch)), [550] + [503] * 11)
        self.assertFalse(client.closed)
        # A second refused MAIL is the second error; one more 503 is the 12th junk, the
        # next the 13th: an error, the third, which closes.
        replies = client.send("MAIL FROM:<blocked@b.example>", "DATA", "DATA")
        self.assertEqual(codes(replies), [550, 503, 421])

    def test_unforeseen503sAfterAcceptedMailAreErrors(self) -> None:
        """
        A 503 the client could have foreseen (RCPT before any MAIL, DATA before RCPT
        after an accepted MAIL) is an error.
        """
        client = connect(maxErrors=3, clientName="c.example")
        replies = client.send("RCPT TO:<r@d.example>", f"MAIL FROM:<{SENDER}>", "DATA", "DATA")
        self.assertEqual(codes(replies), [503, 250, 503, 421])

    def test_repeated503sAreErrors(self) -> None:
        """
        RCPT after RCPT with no MAIL at all: each 503 is the client's own error, however
        many there are (a 503 does not make the next one unforeseeable).
        """
        client = connect(maxErrors=3, clientName="c.example")
        self.assertEqual(codes(client.send(*["RCPT TO:<r@d.example>"] * 4)), [503, 503, 421])

    def test_noErrorLimitsInLMTP(self) -> None:
        """
        In LMTP the client is the MTA: a message to 30 recipients, 25 of them refused,
        with NOOPs past maxJunkCommands, meets no 421; the others get the message.
        """

        class Unknown(RecordingHandler):
            def onRcptTo(self, address: Any, session: Session) -> None:
                if address.address.startswith("unknown"):
                    raise SMTPError(550, "5.1.1 No such user")
                super().onRcptTo(address, session)

        recorder = Unknown()
        client = connect(recorder, lmtp=True, maxJunkCommands=2, clientName="c")
        recipients = [f"{'unknown' if n % 6 else 'ok'}{n}@d.example" for n in range(30)]
        replies = client.send(f"MAIL FROM:<{SENDER}>", *[f"RCPT TO:<{r}>" for r in recipients])
        self.assertEqual(codes(replies).count(550), 25)
        replies = client.send("DATA") + client.write(b"hi\r\n.\r\n")
        self.assertEqual(codes(replies), [354] + [250] * 5)
        self.assertEqual(codes(client.send(*["NOOP"] * 5)), [250] * 5)
        self.assertFalse(client.closed)
        self.assertEqual(len(recorder.messages[0].envelope.rcptTo), 5)

    def test_maxJunkCommands(self) -> None:
        """
        NOOP, RSET, VRFY and HELP pass up to maxJunkCommands; past it each counts as an
        error, so that a session of nothing else ends with 421 4.7.0 at maxErrors.  The
        count starts again after a message accepted.
        """
        client = connect(RecordingHandler(), maxJunkCommands=4, maxErrors=2, clientName="c.example")
        self.assertEqual(codes(client.send("NOOP", "RSET", "VRFY x", "HELP")), [250, 250, 252, 214])
        acceptOne(client)
        self.assertEqual(
            codes(client.send("NOOP", "RSET", "VRFY x", "HELP", "NOOP")),
            [250] * 2 + [252, 214, 250],
        )
        self.assertFalse(client.closed)
        self.assertEqual(lines(client.send("NOOP")), ["421 Error: too many errors"])
        self.assertTrue(client.closed)

    def test_junkAndErrorLimitsOff(self) -> None:
        """
        With maxJunkCommands and maxErrors unset, any number of either is answered.
        """
        client = connect(maxJunkCommands=None, maxErrors=None, clientName="c.example")
        for _ in range(6):
            self.assertEqual(codes(client.send(*["NOOP"] * 50)), [250] * 50)
        self.assertEqual(codes(client.send(*["MAIL FROM:<a@@b>"] * 50)), [501] * 50)
        self.assertFalse(client.closed)

    def test_disabledCommand(self) -> None:
        """
        A disabled command is answered as one not implemented (502; the reference says
        500).
        """
        client = connect(disabledCommands=("vrfy", "HELP"))
        self.assertEqual(codes(client.send("VRFY a", "HELP", "NOOP")), [502, 502, 250])

    def test_httpRequest(self) -> None:
        """
        An HTTP request line gets 421 and the connection closes.
        """
        client = connect()
        self.assertEqual(first(client.send("GET / HTTP/1.1")), "421 HTTP requests not allowed")
        self.assertTrue(client.closed)

    def test_httpLookalikeIsJustUnknown(self) -> None:
        """
        A line that merely starts with an HTTP verb is an unknown command.
        """
        client = connect()
        self.assertEqual(first(client.send("GET lost")), "500 Error: command not recognized")
        self.assertFalse(client.closed)

    def test_sendHeloFirst(self) -> None:
        """
        MAIL, RCPT and DATA before HELO get 503 (standards 5321-09).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        for command in ("MAIL FROM:<a@b.example>", "RCPT TO:<a@b.example>", "DATA"):
            self.assertEqual(first(client.send(command)), "503 5.5.1 Error: send HELO/EHLO first")

    def test_sendLhloFirst(self) -> None:
        """
        In LMTP the reply asks for LHLO.
        """
        client = connect(lmtp=True)
        self.assertEqual(
            first(client.send("MAIL FROM:<a@b.example>")), "503 5.5.1 Error: send LHLO first"
        )

    def test_nulInCommand(self) -> None:
        """
        A NUL in a command gets 501 (standards 2.12).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        for line in (b"EHLO a\x00b\r\n", b"MAIL FROM:<a\x00b@c.example>\r\n", b"NOOP \x00\r\n"):
            self.assertEqual(
                first(client.write(line)), "501 5.5.2 Error: invalid characters in command"
            )

    def test_bareLineFeedIsNotALineEnd(self) -> None:
        """
        A bare LF inside a command line is part of the line, which is then refused; it
        never splits the line in two.
        """
        client = connect()
        hello(client)
        replies = client.write(b"NOOP\nMAIL FROM:<a@b.example>\r\n")
        self.assertEqual(first(replies), "501 Error: invalid characters in command")
        self.assertEqual(len(replies), 1)
        self.assertEqual(client.session.envelope.mailFrom, None)

    def test_bareCarriageReturnIsNotALineEnd(self) -> None:
        """
        A bare CR inside a command line is refused (standards 2.8: EHLO a<CR>X-Injected).
        """
        client = connect()
        replies = client.write(b"EHLO a\rX-Injected: 1\r\n")
        self.assertEqual(codes(replies), [501])
        self.assertIsNone(client.session.hostNameAppearsAs)

    def test_bareLineFeedOnlyClientNeverGetsALine(self) -> None:
        """
        A client that ends lines with LF alone is not understood until CRLF comes.
        """
        client = connect()
        self.assertEqual(client.write(b"NOOP\n"), [])
        self.assertEqual(codes(client.write(b"\r\n")), [501])

    def test_invalidUtf8(self) -> None:
        """
        Bytes that are not UTF-8 in a command get 501 (standards 6531-05).
        """
        client = connect()
        hello(client)
        self.assertEqual(codes(client.write(b"MAIL FROM:<\xff@x.example> SMTPUTF8\r\n")), [501])
        self.assertEqual(codes(client.write(b"MAIL FROM:<\xc0\xae@x.example>\r\n")), [501])

    def test_nonAsciiVerb(self) -> None:
        """
        A verb with a non-ASCII letter is unknown (standards 2.13).
        """
        client = connect()
        self.assertEqual(
            first(client.write("EHL\u00d0 x\r\n".encode())), "500 Error: command not recognized"
        )

    def test_lineTooLong(self) -> None:
        """
        A command line over maxCommandLength gets 500, its bytes are dropped and the
        session goes on.
        """
        client = connect(maxCommandLength=100, hideENHANCEDSTATUSCODES=False)
        hello(client)
        replies = client.send("NOOP " + "x" * 200, "NOOP")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in replies],
            ["500 5.5.2 Error: line too long", "250 2.0.0 OK"],
        )

    def test_lineTooLongWithoutEnd(self) -> None:
        """
        An unterminated line is not buffered without limit: it is discarded as it comes,
        and answered once its CRLF arrives.
        """
        client = connect(maxCommandLength=100)
        hello(client)
        for _ in range(50):
            self.assertEqual(client.write(b"x" * 1000), [])
            self.assertLessEqual(len(client.protocol._buffer), 101)
        self.assertEqual(first(client.write(b"\r\nNOOP\r\n")), "500 Error: line too long")

    def test_lineOfExactlyTheLimit(self) -> None:
        """
        A line of exactly maxCommandLength bytes is accepted.
        """
        client = connect(maxCommandLength=100)
        self.assertEqual(codes(client.send("NOOP " + "x" * 95)), [250])
        self.assertEqual(codes(client.send("NOOP " + "x" * 96)), [500])

    def test_crlfSplitAcrossWrites(self) -> None:
        """
        CR and LF arriving in separate writes still end the line.
        """
        client = connect()
        self.assertEqual(client.write(b"NOOP\r"), [])
        self.assertEqual(codes(client.write(b"\n")), [250])


class SessionCommandTests(SynchronousTestCase):
    """
    HELO, EHLO, LHLO, RSET, NOOP, HELP, VRFY, QUIT and the jokes (spec sections 5.1, 6).
    """

    def test_helloRepliesForManyClients(self) -> None:
        """
        Each client's EHLO reply names that client, however many clients there were
        (the replies are kept for reuse, in a table of bounded size).
        """
        server = makeServer()
        for n in range(1100):
            address = f"198.51.{n // 256}.{n % 256}"
            client = MemoryClient(server, (address, 40000))
            reply = client.send("EHLO client.example")[0]
            self.assertEqual(reply.lines[0], f"{NAME} Nice to meet you, [{address}]")
        self.assertLessEqual(len(_HELLOS), 1024)

    def test_ehlo(self) -> None:
        """
        EHLO gets a multi-line 250 whose first line comes from heloResponse.
        """
        client = connect()
        reply = client.send("EHLO Client.Example")[0]
        self.assertEqual(
            reply,
            ServerReply(
                250,
                (
                    f"{NAME} Nice to meet you, [192.0.2.1]",
                    "PIPELINING",
                    "8BITMIME",
                    "SMTPUTF8",
                    "AUTH LOGIN PLAIN",
                    "STARTTLS",
                    "CHUNKING",
                ),
            ),
        )
        self.assertEqual(client.session.hostNameAppearsAs, "client.example")
        self.assertEqual(client.session.openingCommand, "EHLO")

    def test_ehloAllExtensions(self) -> None:
        """
        Extensions come in the reference's order, each only when shown.
        """
        client = connect(size=1000, hideENHANCEDSTATUSCODES=False, hideDSN=False)
        self.assertEqual(
            client.send("EHLO x")[0].lines[1:],
            (
                "PIPELINING",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
                "DSN",
                "AUTH LOGIN PLAIN",
                "STARTTLS",
                "SIZE 1000",
                "CHUNKING",
            ),
        )

    def test_ehloHiddenExtensions(self) -> None:
        """
        The hide options remove their keywords; hideSize keeps a bare SIZE.  Disabling
        AUTH or BDAT removes AUTH or CHUNKING.
        """
        client = connect(
            size=1000,
            hideSize=True,
            hidePIPELINING=True,
            hide8BITMIME=True,
            hideSMTPUTF8=True,
            hideSTARTTLS=True,
            disabledCommands=("AUTH", "BDAT"),
        )
        self.assertEqual(client.send("EHLO x")[0].lines[1:], ("SIZE",))

    def test_2034_02_notOnHelloReplies(self) -> None:
        """
        Replies to HELO and EHLO carry no enhanced code, even when they are advertised
        (RFC 2034 section 4).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(client.send("EHLO x")[0].lines[0], f"{NAME} Nice to meet you, [192.0.2.1]")
        self.assertEqual(first(client.send("HELO x")), f"250 {NAME} Nice to meet you, [192.0.2.1]")
        self.assertEqual(first(client.send("EHLO")), "501 Error: syntax: EHLO hostname")

    def test_ehloSyntax(self) -> None:
        """
        EHLO needs exactly one argument (standards 5321-05).
        """
        client = connect()
        for command in ("EHLO", "EHLO a b"):
            self.assertEqual(first(client.send(command)), "501 Error: syntax: EHLO hostname")

    def test_ehloAddressLiteral(self) -> None:
        """
        An address literal is a valid EHLO argument (standards 5321-04).
        """
        client = connect()
        self.assertEqual(
            codes(client.send("EHLO [192.0.2.1]", "EHLO [IPv6:2001:db8::1]")), [250, 250]
        )

    def test_ehloWithHeaderSpecials(self) -> None:
        """
        An EHLO name with characters that could break a trace header is refused.
        """
        client = connect()
        self.assertEqual(first(client.send("EHLO a<b>")), "501 Error: syntax: EHLO hostname")

    def test_5321_08_heloRepliesOneLine(self) -> None:
        """
        HELO gets a one-line 250.
        """
        client = connect()
        self.assertEqual(
            client.send("HELO x"), [ServerReply(250, (f"{NAME} Nice to meet you, [192.0.2.1]",))]
        )
        self.assertEqual(client.session.openingCommand, "HELO")

    def test_heloSyntax(self) -> None:
        """
        HELO's syntax error says "Syntax" with a capital S, as the reference does.
        """
        client = connect()
        self.assertEqual(first(client.send("HELO")), "501 Error: Syntax: HELO hostname")

    def test_heloResponseFormat(self) -> None:
        """
        Each %s of heloResponse is the server name, then the client's name, then nothing.
        """
        client = connect(heloResponse="Hi %s, you are %s (%s)")
        self.assertEqual(first(client.send("HELO x")), f"250 Hi {NAME}, you are [192.0.2.1] ()")

    def test_ehloResetsTransaction(self) -> None:
        """
        A second EHLO works and resets the transaction (standards 5321-07).
        """
        client = connect()
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(codes(client.send("EHLO b", "RCPT TO:<c@d.example>")), [250, 503])
        self.assertIsNone(client.session.envelope.mailFrom)

    def test_lmtpRefusesHeloAndEhlo(self) -> None:
        """
        An LMTP server refuses HELO and EHLO with 500 (standards 2033-02).
        """
        client = connect(lmtp=True)
        self.assertEqual(first(client.send("HELO x")), "500 Error: HELO not allowed in LMTP server")
        self.assertEqual(first(client.send("EHLO x")), "500 Error: EHLO not allowed in LMTP server")

    def test_2033_01_lhloLikeEhlo(self) -> None:
        """
        LHLO gets the EHLO reply; LMTP advertises enhanced status codes by default.
        """
        client = connect(lmtp=True)
        reply = client.send("LHLO x")[0]
        self.assertEqual(reply.code, 250)
        self.assertIn("ENHANCEDSTATUSCODES", reply.lines)
        self.assertIn("PIPELINING", reply.lines)
        self.assertEqual(first(client.send("LHLO")), "501 Error: syntax: LHLO hostname")

    def test_lhloOutsideLmtp(self) -> None:
        """
        LHLO is unknown to an SMTP server.
        """
        self.assertEqual(codes(connect().send("LHLO x")), [500])

    def test_lhloDisabledWithEhlo(self) -> None:
        """
        Disabling EHLO disables LHLO in LMTP mode: 502, as any command switched off; so
        does disabling LHLO by its own name.
        """
        for name in ("EHLO", "LHLO"):
            client = connect(lmtp=True, disabledCommands=(name,))
            self.assertEqual(codes(client.send("LHLO x")), [502], name)

    def test_rset(self) -> None:
        """
        RSET answers 250 Flushed any time, drops the transaction and keeps the hello
        (standards 5321-32).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(first(client.send("RSET")), "250 2.0.0 Flushed")
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(codes(client.send("RSET ignored", "RCPT TO:<c@d.example>")), [250, 503])
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])

    def test_5321_33_noopHelpVrfy(self) -> None:
        """
        NOOP, HELP and VRFY give the reference's texts, with enhanced codes when shown.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        replies = client.send("NOOP", "NOOP anything", "HELP", "VRFY someone")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in replies],
            [
                "250 2.0.0 OK",
                "250 2.0.0 OK",
                "214 2.0.0 See https://tools.ietf.org/html/rfc5321 for details",
                "252 2.1.5 Try to send something. No promises though",
            ],
        )

    def test_quit(self) -> None:
        """
        QUIT gets 221 Bye and the server closes (standards 5321-34).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(first(client.send("QUIT")), "221 2.0.0 Bye")
        self.assertTrue(client.closed)

    def test_nothingAfterQuit(self) -> None:
        """
        Commands pipelined after QUIT are not answered.
        """
        client = connect()
        self.assertEqual(codes(client.send("QUIT", "NOOP")), [221])

    def test_wizardry(self) -> None:
        """
        WIZ, SHELL and KILL answer as in sendmail's lore, and the reference.
        """
        client = connect()
        self.assertEqual(first(client.send("WIZ")), "500 You are no wizard!")
        self.assertEqual(
            first(client.send("SHELL")), "500 Mere mortals must not mutter that mantra"
        )
        self.assertEqual(first(client.send("WIZ please")), "200 Please pass, oh mighty wizard")
        self.assertTrue(client.session.isWizard)
        self.assertEqual(
            first(client.send("SHELL")),
            "500 Error: Invoking shell is not allowed. This incident will be reported.",
        )
        self.assertEqual(first(client.send("KILL")), "500 Can not kill Mom")


@implementer(IMailFromHandler, IRcptToHandler)
class Policy:
    """
    Refuses senders and recipients whose local part names an error.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, Envelope]] = []

    def onMailFrom(self, address: Address, session: Session) -> None:
        self.seen.append((address.address, session.envelope))
        _maybeRefuse(address)

    def onRcptTo(self, address: Address, session: Session) -> None:
        _maybeRefuse(address)


def _maybeRefuse(address: Address) -> None:
    local = address.address.partition("@")[0]
    if local == "blocked":
        raise SMTPError(550, "Sender blocked")
    if local == "later":
        raise SMTPError(451, "4.7.1 Try again later")
    if local == "boom":
        raise ValueError("a bug in the handler")


class MailTests(SynchronousTestCase):
    """
    MAIL FROM (spec section 5.4 and 7).
    """

    def setUp(self) -> None:
        self.policy = Policy()

    def client(self, **options: Any) -> MemoryClient:
        client = connect(self.policy, **options)
        hello(client)
        return client

    def test_accepted(self) -> None:
        """
        A good sender gets 250 Accepted (2.1.0 when enhanced codes are shown).
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(first(client.send("MAIL FROM:<a@b.example>")), "250 2.1.0 Accepted")
        self.assertEqual(client.session.envelope.mailFrom, Address("a@b.example"))

    def test_nullSender(self) -> None:
        """
        MAIL FROM:<> is accepted (standards 5321-14).
        """
        client = self.client()
        self.assertEqual(codes(client.send("MAIL FROM:<>")), [250])
        self.assertEqual(client.session.envelope.mailFrom, Address(""))

    def test_spaceAfterColon(self) -> None:
        """
        A space after the colon is tolerated (standards 5321-18).
        """
        self.assertEqual(codes(self.client().send("MAIL FROM: <a@b.example>")), [250])

    def test_badSyntax(self) -> None:
        """
        A bad address gets 501 with X.1.7 (standards 5321-16) and changes nothing.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        for command in (
            "MAIL FROM:<a@@b>",
            "MAIL FROM:a@b.example",
            "MAIL  FROM:<a@b.example>",
            "MAIL FROM:<a@b.example>x",
            "MAIL FROM:<a@b_c.example>",
        ):
            self.assertEqual(
                first(client.send(command)), "501 5.1.7 Error: Bad sender address syntax"
            )
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])

    def test_badParametersAreNotABadAddress(self) -> None:
        """
        A sender whose parameters do not parse gets a 501 that says so, with X.5.4, not
        one that blames its address (differential QA against smtp-server 3.21.6, which
        answers a repeated one the same way); the same for a recipient.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        for command, answer in (
            ("MAIL FROM:<a@b.example> BODY=8BITMIME BODY=7BIT", "duplicate BODY parameter"),
            ("MAIL FROM:<a@b.example> body=7bit BODY=7BIT", "duplicate BODY parameter"),
            ("MAIL FROM:<a@b.example> =8BITMIME", "Bad command parameter syntax"),
            ("MAIL FROM:<a@b.example> <x@y.example>", "Bad command parameter syntax"),
            ("MAIL FROM:<a@b.example> SIZE=1\x01", "Bad command parameter syntax"),
            ('MAIL FROM:<"q"@b.example> SIZE=1 SIZE=2', "duplicate SIZE parameter"),
        ):
            self.assertEqual(first(client.send(command)), f"501 5.5.4 Error: {answer}", command)
        self.assertIsNone(client.session.envelope.mailFrom)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example> FOO FOO")),
            "501 5.5.4 Error: duplicate FOO parameter",
        )
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example> NOTIFY=SUCCESS NOTIFY=FAILURE")),
            "501 5.5.4 Error: duplicate NOTIFY parameter",
        )
        self.assertEqual(client.session.envelope.rcptTo, ())

    def test_localPartTooLong(self) -> None:
        """
        A local part over RFC 5321's 64 octets is refused with a 501 that says so, for a
        sender and a recipient; 64 octets are fine.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send(f"MAIL FROM:<{'a' * 65}@b.example>")),
            "501 5.1.7 Error: sender address local part longer than 64 octets",
        )
        self.assertEqual(codes(client.send(f"MAIL FROM:<{'a' * 64}@b.example>")), [250])
        self.assertEqual(
            first(client.send(f"RCPT TO:<{'a' * 65}@d.example>")),
            "501 5.1.3 Error: recipient address local part longer than 64 octets",
        )
        self.assertEqual(codes(client.send(f"RCPT TO:<{'a' * 64}@d.example>")), [250])

    def test_maxLocalPartLength(self) -> None:
        """
        maxLocalPartLength sets the longest local part, and the reply says it; unset, any
        is taken within the address's 254 octets, by the common path and the general one
        (a quoted local part).
        """
        client = self.client(maxLocalPartLength=100)
        self.assertEqual(codes(client.send(f"MAIL FROM:<{'a' * 100}@b.example>")), [250])
        self.assertEqual(
            first(client.send(f"RCPT TO:<{'a' * 101}@d.example>")),
            "501 Error: recipient address local part longer than 100 octets",
        )
        client = self.client(maxLocalPartLength=None)
        for local in ("a" * 200, '"' + "q" * 200 + '"'):
            self.assertEqual(
                codes(client.send(f"MAIL FROM:<{local}@b.example>", "RSET")), [250, 250]
            )
        self.assertEqual(
            first(client.send(f"MAIL FROM:<{'a' * 250}@b.example>")),
            "501 Error: Bad sender address syntax",
        )

    def test_nested(self) -> None:
        """
        A second MAIL in a transaction gets 503 (standards 5321-15).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            first(client.send("MAIL FROM:<c@d.example>")), "503 Error: nested MAIL command"
        )

    def test_syntaxCheckedBeforeNesting(self) -> None:
        """
        As in the reference, a syntax error is reported even inside a transaction.
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(codes(client.send("MAIL FROM:<a@@b>")), [501])

    def test_sizeTooLarge(self) -> None:
        """
        SIZE over the limit gets 552 with 5.3.4 (standards 1870-03; the reference sends
        4.3.1).
        """
        client = self.client(size=1000, hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send("MAIL FROM:<a@b.example> SIZE=1001")),
            "552 5.3.4 Error: message exceeds fixed maximum message size 1000",
        )
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example> SIZE=1000")), [250])

    def test_sizeOverflow(self) -> None:
        """
        An absurd SIZE is just too large (standards 1870-06), even one of more digits
        than Python's int() takes (4300), which still fits in a MAIL line; leading zeros
        change nothing.
        """
        client = self.client(size=1000, maxCommandLength=8000)
        for digits in ("99999999999999999999999", "9" * 5000):
            self.assertEqual(codes(client.send(f"MAIL FROM:<a@b.example> SIZE={digits}")), [552])
        self.assertEqual(
            codes(client.send("MAIL FROM:<a@b.example> SIZE=" + "0" * 5000 + "1000")), [250]
        )

    def test_sizeSyntax(self) -> None:
        """
        SIZE without a number gets 501 (standards 1870-05; the reference lets SIZE=abc pass).
        """
        client = self.client(size=1000)
        for value in ("SIZE=abc", "SIZE=", "SIZE=-1", "SIZE"):
            self.assertEqual(codes(client.send(f"MAIL FROM:<a@b.example> {value}")), [501], value)

    def test_hideSizeSkipsCheck(self) -> None:
        """
        With hideSize the declared size is not compared with the limit.
        """
        client = self.client(size=1000, hideSize=True)
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example> SIZE=99999")), [250])

    def test_6152_03_badBodyValueRefused(self) -> None:
        """
        BODY=7BIT and BODY=8BITMIME (any case) set the body type; anything else, or no
        value at all, gets 501 (the reference crashes on the latter).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example> BODY=8bitmime")
        self.assertEqual(client.session.envelope.bodyType, "8bitmime")
        client.send("RSET")
        for value in ("BODY=FOO", "BODY=", "BODY"):
            self.assertEqual(
                first(client.send(f"MAIL FROM:<a@b.example> {value}")),
                "501 Invalid BODY parameter value. Must be 7BIT or 8BITMIME",
            )

    def test_smtputf8(self) -> None:
        """
        SMTPUTF8 takes no value; with it, UTF-8 addresses are accepted
        (standards 6531-02, 6531-03).
        """
        client = self.client()
        self.assertEqual(
            first(client.send("MAIL FROM:<a@b.example> SMTPUTF8=yes")),
            "501 Invalid SMTPUTF8 parameter. This flag does not accept a value",
        )
        # The examples of standards 6531-02, in Chinese and in Greek.
        replies = client.send(
            "MAIL FROM:<\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a> SMTPUTF8",
            "RCPT TO:<\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae@"
            "\u03c0\u03b1\u03c1\u03ac\u03b4\u03b5\u03b9\u03b3\u03bc\u03b1."
            "\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae>",
        )
        self.assertEqual(codes(replies), [250, 250])
        self.assertTrue(client.session.envelope.smtpUtf8)

    def test_utf8AddressNeedsSmtputf8(self) -> None:
        """
        A non-ASCII sender without SMTPUTF8 gets 550 5.6.7, a recipient 553 5.6.7
        (standards 6531-04).
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send("MAIL FROM:<t\u00e9st@example.com>")),
            "550 5.6.7 Error: non-ASCII sender address requires SMTPUTF8",
        )
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            first(client.send("RCPT TO:<t\u00e9st@example.com>")),
            "553 5.6.7 Error: non-ASCII recipient address requires SMTPUTF8",
        )

    def test_requireTlsOnPlaintext(self) -> None:
        """
        REQUIRETLS on a plaintext connection gets 530 (standards 8689-04).
        """
        client = self.client()
        for value in ("REQUIRETLS", "REQUIRETLS=yes"):
            self.assertEqual(
                first(client.send(f"MAIL FROM:<a@b.example> {value}")),
                "530 REQUIRETLS not permitted on non-TLS connections",
            )

    def test_dsnParameters(self) -> None:
        """
        With DSN shown, RET and ENVID are checked and kept on the envelope
        (standards 3461-02, 3461-03).
        """
        client = self.client(hideDSN=False)
        self.assertEqual(
            codes(client.send("MAIL FROM:<a@b.example> RET=hdrs ENVID=QQ314159")), [250]
        )
        dsn = client.session.envelope.dsn
        assert dsn is not None
        self.assertEqual((dsn.ret, dsn.envid), ("HDRS", "QQ314159"))
        client.send("RSET")
        for value in (
            "RET=BOGUS",
            "RET",
            "RET=FULL RET=HDRS",
            "ENVID",
            "ENVID=+zz",
            "ENVID=" + "x" * 101,
        ):
            self.assertEqual(codes(client.send(f"MAIL FROM:<a@b.example> {value}")), [501], value)

    def test_3461_06_dsnParametersUnknownWhenHidden(self) -> None:
        """
        With DSN hidden, its parameters are unknown ones: 555 (standards 3461-06), where
        the reference passes them on in args.
        """
        client = self.client()
        reply = first(client.send("MAIL FROM:<a@b.example> RET=FULL ENVID=x+2By"))
        self.assertEqual(reply, "555 Error: unsupported parameter")
        self.assertIsNone(client.session.envelope.mailFrom)
        client.send("MAIL FROM:<a@b.example>")
        reply = first(client.send("RCPT TO:<c@d.example> NOTIFY=NEVER"))
        self.assertEqual(reply, "555 Error: unsupported parameter")

    def test_argsKeepParameters(self) -> None:
        """
        The address keeps every parameter, flags as True (spec section 9's example,
        without its unknown X-FOO, which gets 555: see standards 5321-17).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.com> BODY=8BITMIME SMTPUTF8 SIZE=10")
        mailFrom = client.session.envelope.mailFrom
        assert mailFrom is not None
        self.assertEqual(dict(mailFrom.args), {"BODY": "8BITMIME", "SMTPUTF8": True, "SIZE": "10"})

    def test_handlerSeesParameters(self) -> None:
        """
        While the handler decides, the envelope already holds the transaction's
        parameters; a refusal leaves the previous envelope.
        """
        client = self.client()
        client.send("MAIL FROM:<blocked@b.example> BODY=8BITMIME SMTPUTF8")
        _, envelope = self.policy.seen[0]
        self.assertEqual((envelope.bodyType, envelope.smtpUtf8), ("8bitmime", True))
        self.assertEqual(client.session.envelope.bodyType, "7bit")
        self.assertIsNone(client.session.envelope.mailFrom)

    def test_handlerRefuses(self) -> None:
        """
        A handler's SMTPError is the reply; without an enhanced code it gets the one the
        reply code implies, with one it is not repeated.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send("MAIL FROM:<blocked@b.example>")), "550 5.1.1 Sender blocked"
        )
        self.assertEqual(
            first(client.send("MAIL FROM:<later@b.example>")), "451 4.7.1 Try again later"
        )
        self.assertEqual(client.session.error, "451 4.7.1 Try again later")

    def test_handlerRefusesWithoutEnhancedCodes(self) -> None:
        """
        With enhanced codes hidden, a code given in the handler's text is left out.
        """
        client = self.client()
        self.assertEqual(first(client.send("MAIL FROM:<later@b.example>")), "451 Try again later")

    def test_handlerBug(self) -> None:
        """
        An unexpected exception in a handler is a 451 and a logged traceback; the
        connection carries on.
        """
        client = self.client()
        self.assertEqual(
            first(client.send("MAIL FROM:<boom@b.example>")),
            "451 Requested action aborted: local error in processing",
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])


class RcptTests(SynchronousTestCase):
    """
    RCPT TO (spec section 5.4 and 7).
    """

    def client(self, **options: Any) -> MemoryClient:
        client = connect(Policy(), **options)
        hello(client)
        return client

    def test_accepted(self) -> None:
        """
        A good recipient gets 250 Accepted (2.1.5).
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(first(client.send("RCPT TO:<c@d.example>")), "250 2.1.5 Accepted")

    def test_beforeMail(self) -> None:
        """
        RCPT before MAIL gets 503 (standards 5321-19).
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example>")), "503 5.5.1 Error: need MAIL command"
        )

    def test_nullRecipient(self) -> None:
        """
        RCPT TO:<> gets 501, checked before the sequence as in the reference.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            first(client.send("RCPT TO:<>")), "501 5.1.3 Error: Bad recipient address syntax"
        )

    def test_postmaster(self) -> None:
        """
        RCPT TO:<Postmaster> without a domain is accepted (standards 5321-20).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            codes(client.send("RCPT TO:<Postmaster>", "RCPT TO:<postmaster@d.example>")), [250, 250]
        )

    def test_sourceRoute(self) -> None:
        """
        A source route is parsed and dropped (standards 5321-21).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(codes(client.send("RCPT TO:<@a.example,@b.example:u@c.example>")), [250])
        self.assertEqual(client.session.envelope.rcptTo[0].address, "u@c.example")

    def test_hundredRecipients(self) -> None:
        """
        At least 100 recipients are accepted (standards 5321-22).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        replies = client.send(*[f"RCPT TO:<r{i}@d.example>" for i in range(100)])
        self.assertEqual(codes(replies), [250] * 100)
        self.assertEqual(len(client.session.envelope.rcptTo), 100)

    def test_duplicatesCollapsedInSmtp(self) -> None:
        """
        In SMTP a recipient given twice (in any case) is kept once, in the later form.
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "RCPT TO:<x@d.example>")
        client.send("RCPT TO:<C@D.example>")
        self.assertEqual(
            [r.address for r in client.session.envelope.rcptTo], ["x@d.example", "C@D.example"]
        )

    def test_duplicatesKeptInLmtp(self) -> None:
        """
        In LMTP every accepted RCPT is kept, since each gets a reply after DATA.
        """
        client = connect(lmtp=True)
        hello(client, "LHLO")
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "RCPT TO:<C@d.example>")
        self.assertEqual(len(client.session.envelope.rcptTo), 2)

    def test_handlerRefuses(self) -> None:
        """
        A handler's refusal is the reply and the recipient is not added.
        """
        client = self.client(hideENHANCEDSTATUSCODES=False)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            first(client.send("RCPT TO:<blocked@d.example>")), "550 5.1.1 Sender blocked"
        )
        self.assertEqual(client.session.envelope.rcptTo, ())

    def test_dsn(self) -> None:
        """
        NOTIFY and ORCPT are checked and kept when DSN is shown (standards 3461-04/05).
        """
        client = self.client(hideDSN=False)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            codes(
                client.send("RCPT TO:<c@d.example> NOTIFY=success,FAILURE ORCPT=rfc822;c@d.example")
            ),
            [250],
        )
        dsn = client.session.envelope.rcptTo[0].dsn
        assert dsn is not None
        self.assertEqual((dsn.notify, dsn.orcpt), (("SUCCESS", "FAILURE"), "rfc822;c@d.example"))
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example> NOTIFY=BOGUS")),
            "501 Error: NOTIFY parameter must be NEVER, SUCCESS, FAILURE, or DELAY",
        )
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example> NOTIFY")),
            "501 Error: NOTIFY parameter must be NEVER, SUCCESS, FAILURE, or DELAY",
        )
        self.assertEqual(
            first(client.send("RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS")),
            "501 Error: NOTIFY=NEVER cannot be combined with other values",
        )
        for value in ("ORCPT=rfc822", "ORCPT", "ORCPT=rfc822;a+zz", "ORCPT=rfc822;" + "x" * 501):
            self.assertEqual(codes(client.send(f"RCPT TO:<c@d.example> {value}")), [501], value)
        self.assertEqual(
            codes(client.send("RCPT TO:<c@d.example> ORCPT=rfc822;a+00b")), [501], "NUL in ORCPT"
        )


@implementer(IDataHandler)
class Collector:
    """
    Reads every message whole and answers with a configurable result.
    """

    def __init__(self, result: object = None) -> None:
        self.result = result
        self.messages: list[bytes] = []
        self.failures: list[BaseException] = []

    async def onData(self, stream: IMessageStream, session: Session) -> object:
        try:
            self.messages.append(await readMessage(stream))
        except Exception as e:
            self.failures.append(e)
            raise
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class DataCommandTests(SynchronousTestCase):
    """
    IDataCommandHandler: DATA decided on before the 354.
    """

    def test_refused(self) -> None:
        """
        A refusal answers DATA in place of the 354: no data handler is called, the
        transaction stays open (DATA again, once let through, takes the message to the
        same recipients).
        """
        gate, recorder = DataGate(), RecordingHandler()
        gate.refusal = SMTPError(554, "5.7.1 Not from you")
        client = connect(gate, recorder, clientName="c.example", hideENHANCEDSTATUSCODES=False)
        replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        self.assertEqual(wires(replies)[2], "554 5.7.1 Not from you")
        self.assertEqual(recorder.messages, [])
        gate.refusal = None
        self.assertEqual(codes(client.send("DATA")), [354])
        self.assertEqual(codes(client.write(b"hi\r\n.\r\n")), [250])
        self.assertEqual([m.envelope.rcptTo[0].address for m in recorder.messages], [RECIPIENT])
        self.assertEqual(gate.calls, 2)

    def test_answerLater(self) -> None:
        """
        A handler that answers later holds the 354, and nothing the client sends is read
        meanwhile; its refusal then answers DATA, and RSET is served after it.
        """
        gate, recorder = DataGate(), RecordingHandler()
        gate.later = True
        client = connect(gate, recorder, clientName="c.example")
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(client.send("DATA", "RSET"), [])
        gate.pending.pop().errback(SMTPError(451, "4.3.0 Not now"))
        self.assertEqual(wires(client.received()), ["451 Not now", "250 Flushed"])
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(client.send("DATA"), [])
        gate.pending.pop().callback(None)
        self.assertEqual(codes(client.received()), [354])
        self.assertEqual(codes(client.write(b"hi\r\n.\r\n")), [250])
        self.assertEqual(len(recorder.messages), 1)

    def test_notForBDAT(self) -> None:
        """
        BDAT chunks come uninvited: the handler is not asked.
        """
        gate, recorder = DataGate(), RecordingHandler()
        gate.refusal = SMTPError(554, "5.7.1 Not from you")
        client = connect(gate, recorder, clientName="c.example")
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(codes(client.write(b"BDAT 4 LAST\r\nhi\r\n")), [250])
        self.assertEqual((gate.calls, len(recorder.messages)), (0, 1))


class DataTests(SynchronousTestCase):
    """
    DATA and the final reply (spec sections 5.4 and 10).
    """

    def transaction(self, client: MemoryClient, recipients: int = 1) -> None:
        hello(client, "LHLO" if client.server.options.lmtp else "EHLO")
        client.send("MAIL FROM:<a@b.example>")
        client.send(*[f"RCPT TO:<r{i}@d.example>" for i in range(recipients)])

    def test_lateReaderResumesTheConnection(self) -> None:
        """
        A data handler that starts reading only after the message filled its stream (it
        awaited something first) takes the queue, and the connection reads again: the
        rest of the message comes in and the client gets its 250.
        """

        handler = LateReader()
        client = connect(handler)
        self.transaction(client)
        self.assertEqual(codes(client.send("DATA")), [354])
        body = b"x" * 100 + b"\r\n"
        self.assertEqual(client.write(body * (2 * HIGH_WATER // len(body))), [])
        self.assertTrue(client.protocol.paused)
        handler.gate.callback(None)
        self.assertFalse(client.protocol.paused)
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(len(handler.messages[0]), len(body) * (2 * HIGH_WATER // len(body)))

    def test_answerWithItsOwnEnhancedCode(self) -> None:
        """
        A data handler's answer text that starts with an enhanced status code of class 2
        ("2.0.0 Ok: queued as X", as Postfix writes it) gives the reply that code in
        place of the default one, sent only where enhanced codes are: never two codes.
        Text that only looks like one keeps it as text.
        """

        @implementer(IDataHandler)
        class Queue:
            def __init__(self, text: str) -> None:
                self.text = text

            def onData(self, stream: IMessageStream, session: Session) -> str:
                return self.text

        cases: list[tuple[str, dict[str, Any], str]] = [
            ("2.0.0 Ok: queued as X", {}, "250 Ok: queued as X"),
            (
                "2.0.0 Ok: queued as X",
                {"hideENHANCEDSTATUSCODES": False},
                "250 2.0.0 Ok: queued as X",
            ),
            ("2.0.0 Ok: queued as X", {"lmtp": True}, "250 2.0.0 Ok: queued as X"),
            ("2.0.0", {"lmtp": True}, "250 2.0.0 "),
            ("Ok: queued as X", {"lmtp": True}, "250 2.6.0 Ok: queued as X"),
            ("2.0.0x queued", {"lmtp": True}, "250 2.6.0 2.0.0x queued"),
            ("5.1.1 odd", {"lmtp": True}, "250 2.6.0 5.1.1 odd"),
        ]
        for text, options, expected in cases:
            client = connect(Queue(text), clientName=None, **options)
            self.transaction(client)
            client.send("DATA")
            self.assertEqual(wires(client.write(b"x\r\n.\r\n")), [expected], (text, options))

    def test_returnedRefusal(self) -> None:
        """
        A data handler that returns an SMTPError instead of raising it refuses the message
        with it, as any other handler's returned refusal does; in LMTP for every
        recipient.
        """

        @implementer(IDataHandler)
        class Returns:
            def onData(self, stream: IMessageStream, session: Session) -> SMTPError:
                return SMTPError(554, "5.7.1 Refused by policy")

        for lmtp in (False, True):
            client = connect(Returns(), lmtp=lmtp, hideENHANCEDSTATUSCODES=not lmtp)
            self.transaction(client, recipients=2)
            client.send("DATA")
            self.assertEqual(
                wires(client.write(b"x\r\n.\r\n")),
                ["554 5.7.1 Refused by policy"] * 2 if lmtp else ["554 Refused by policy"],
                lmtp,
            )

    def test_logLinesKeepBraces(self) -> None:
        """
        The transaction's log line and the connection's show what the client sent as it
        was, braces included (a local part may have them): as text, and in the event
        C{twist --log-format json} writes, whose C{text} field is the line.
        """
        capture = LogCapture(self)
        sender = "{0}x}{text}{@b.example"
        client = connect(RecordingHandler())
        hello(client)
        self.assertEqual(
            codes(client.send(f"MAIL FROM:<{sender}>", "RCPT TO:<r@d.example>", "DATA")),
            [250, 250, 354],
        )
        self.assertEqual(codes(client.write(b"hi\r\n.\r\n")), [250])
        client.send("QUIT")
        events = [e for e in capture.events if e.get("event") in ("transaction", "disconnect")]
        self.assertEqual([e["event"] for e in events], ["transaction", "disconnect"])
        self.assertIn(f" message from <{sender}> to ['r@d.example'] (4 bytes) ", events[0]["text"])
        self.assertTrue(events[1]["text"].startswith("Connection closed: "), events[1])
        for event in events:
            self.assertEqual(formatEvent(event), event["text"])
            fromJSON = eventFromJSON(eventAsJSON(event))
            self.assertEqual(formatEvent(fromJSON), event["text"])
            self.assertEqual(fromJSON["text"], event["text"])

    def test_withoutRecipient(self) -> None:
        """
        DATA without an accepted recipient gets 503 (standards 5321-24).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        self.assertEqual(first(client.send("DATA")), "503 5.5.1 Error: need RCPT command")
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(first(client.send("DATA")), "503 5.5.1 Error: need RCPT command")

    def test_withArgument(self) -> None:
        """
        DATA takes no argument (standards 5321-25).
        """
        client = connect()
        self.transaction(client)
        self.assertEqual(codes(client.send("DATA x")), [501])

    def test_defaultReply(self) -> None:
        """
        Without data handlers the message is accepted with 250 OK: message queued (2.6.0)
        and 354 carries no enhanced code.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.transaction(client)
        self.assertEqual(first(client.send("DATA")), "354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(first(client.write(b"hello\r\n.\r\n")), "250 2.6.0 OK: message queued")

    def test_message(self) -> None:
        """
        The handler gets the message unstuffed, with its last CRLF and without the dot.
        """
        collector = Collector()
        client = connect(collector)
        self.transaction(client)
        client.send("DATA")
        client.write(b"..leading\r\n...two\r\n.x\r\nend\r\n.\r\n")
        self.assertEqual(collector.messages, [b".leading\r\n..two\r\nx\r\nend\r\n"])

    def test_emptyMessage(self) -> None:
        """
        DATA then a lone dot is an empty message (standards 5321-27).
        """
        collector = Collector()
        client = connect(collector)
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(collector.messages, [b""])

    def test_commandsAfterMessage(self) -> None:
        """
        Commands pipelined after the final dot are answered in order (spec section 10.1).
        """
        client = connect()
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in client.write(b"body\r\n.\r\nNOOP\r\nQUIT\r\n")],
            ["250 OK: message queued", "250 OK", "221 Bye"],
        )

    def test_customText(self) -> None:
        """
        A handler answering a string gets 250 with that text.
        """
        client = connect(Collector("queued as 12345"))
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(first(client.write(b"x\r\n.\r\n")), "250 queued as 12345")

    def test_handlerRefuses(self) -> None:
        """
        A data handler's SMTPError is the final reply; without a code in the text a 450
        gets 4.2.1 and a 554 gets 5.6.0 (spec section 8).
        """
        for error, expected in (
            (SMTPError(450, "Try later"), "450 4.2.1 Try later"),
            (SMTPError(554, "Rejected content"), "554 5.6.0 Rejected content"),
            (SMTPError(552, "Too big"), "552 5.2.2 Too big"),
        ):
            client = connect(Collector(error), hideENHANCEDSTATUSCODES=False)
            self.transaction(client)
            client.send("DATA")
            self.assertEqual(first(client.write(b"x\r\n.\r\n")), expected)

    def test_transactionEnds(self) -> None:
        """
        After the final reply a new transaction starts: the envelope is empty and the
        transaction counter moves on.
        """
        client = connect()
        self.transaction(client)
        client.send("DATA")
        client.write(b"x\r\n.\r\n")
        self.assertEqual(client.session.envelope.rcptTo, ())
        self.assertEqual(client.session.transaction, 2)
        self.assertEqual(
            codes(client.send("RCPT TO:<c@d.example>", "MAIL FROM:<a@b.example>")), [503, 250]
        )

    def test_tooLarge(self) -> None:
        """
        A message over size gets 552 after the final dot and the handler is told it
        failed (standards 1870-07, 2.11); the next transaction works.
        """
        collector = Collector()
        client = connect(collector, size=100, hideENHANCEDSTATUSCODES=False)
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(client.write(b"x" * 60 + b"\r\n"), [])
        self.assertEqual(client.write(b"y" * 60 + b"\r\n"), [])
        self.assertEqual(
            first(client.write(b"z\r\n.\r\n")),
            "552 5.3.4 Error: message exceeds fixed maximum message size 100",
        )
        self.assertEqual(collector.messages, [])
        self.assertEqual(len(collector.failures), 1)
        self.assertEqual(
            client.sendmail("a@b.example", ["c@d.example"], b"small\r\n")[-1].code, 250
        )
        self.assertEqual(collector.messages, [b"small\r\n"])

    def test_tooLargeWithoutHandlers(self) -> None:
        """
        The size limit holds without any data handler too.
        """
        client = connect(size=10)
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(codes(client.write(b"0123456789abc\r\n.\r\n")), [552])

    def test_bareLineFeedNormalized(self) -> None:
        """
        By default a bare LF or CR in the message becomes CRLF.
        """
        collector = Collector()
        client = connect(collector)
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(codes(client.write(b"a\nb\rc\r\n.\r\n")), [250])
        self.assertEqual(collector.messages, [b"a\r\nb\r\nc\r\n"])

    def test_bareLineFeedRejected(self) -> None:
        """
        With bareLineEndings=reject a message with a bare LF gets 550 and is not kept.
        """
        collector = Collector()
        client = connect(collector, bareLineEndings="reject", hideENHANCEDSTATUSCODES=False)
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(
            first(client.write(b"a\nb\r\n.\r\n")),
            "550 5.5.2 Error: bare <CR> or <LF> received in message data",
        )
        self.assertEqual(collector.messages, [])
        self.assertIsInstance(collector.failures[0], MessageRefused)

    def test_bareLineFeedPassed(self) -> None:
        """
        With bareLineEndings=pass the bytes are kept as sent.
        """
        collector = Collector()
        client = connect(collector, bareLineEndings="pass")
        self.transaction(client)
        client.send("DATA")
        client.write(b"a\nb\rc\r\n.\r\n")
        self.assertEqual(collector.messages, [b"a\nb\rc\r\n"])

    def test_5321_28_onlyCrlfDotCrlfEndsData(self) -> None:
        """
        A bare-LF end of data (or any other separator of the checklist) followed by
        commands stays one message (standards 2.2).
        """
        for separator in smuggling.SEPARATORS:
            collector = Collector()
            client = connect(collector)
            self.transaction(client)
            client.send("DATA")
            replies = client.write(smuggling.payload(separator))
            self.assertEqual(codes(replies), [250], separator)
            self.assertEqual(len(collector.messages), 1, separator)
            self.assertIn(b"MAIL FROM:<evil@x>", collector.messages[0])
            self.assertEqual(
                collector.messages[0], smuggling.received(separator, "normalize"), separator
            )

    def test_lmtpRepliesPerRecipient(self) -> None:
        """
        LMTP answers once per accepted recipient after the dot, in RCPT order, with
        duplicates counted (standards 2033-04).
        """
        client = connect(Policy(), lmtp=True)
        hello(client, "LHLO")
        replies = client.send(
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<one@d.example>",
            "RCPT TO:<blocked@d.example>",
            "RCPT TO:<ONE@d.example>",
            "DATA",
        )
        self.assertEqual(codes(replies), [250, 250, 550, 250, 354])
        final = client.write(b"x\r\n.\r\n")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in final],
            ["250 2.6.0 OK: message accepted", "250 2.6.0 OK: message accepted"],
        )

    def test_lmtpPerRecipientResults(self) -> None:
        """
        An LMTP data handler may answer per recipient.
        """
        result = [None, SMTPError(452, "4.2.2 Mailbox full"), "stored"]
        client = connect(Collector(result), lmtp=True)
        self.transaction(client, recipients=3)
        client.send("DATA")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in client.write(b"x\r\n.\r\n")],
            ["250 2.6.0 OK: message accepted", "452 4.2.2 Mailbox full", "250 2.6.0 stored"],
        )

    def test_lmtpWrongNumberOfResults(self) -> None:
        """
        A per-recipient answer of the wrong length is a handler bug: 451 for everyone.
        """
        client = connect(Collector([None]), lmtp=True)
        self.transaction(client, recipients=2)
        client.send("DATA")
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [451, 451])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_listInSmtpIsABug(self) -> None:
        """
        In SMTP a list answer is a handler bug (the reference sends several replies).
        """
        client = connect(Collector(["a", "b"]))
        self.transaction(client)
        client.send("DATA")
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [451])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_lmtpSizeRefusesEveryone(self) -> None:
        """
        In LMTP a message over size gets 552 once per recipient.
        """
        client = connect(lmtp=True, size=5)
        self.transaction(client, recipients=2)
        client.send("DATA")
        self.assertEqual(codes(client.write(b"0123456789\r\n.\r\n")), [552, 552])


@implementer(IDataHandler)
class Manual:
    """
    A data handler driven by the test: it reads with deliverBody and answers when told,
    or (C{answerAtEnd}) as soon as its reader sees the message end.  Its reader can have a
    bug: C{raiseIn} names the reader's method that raises.
    """

    def __init__(
        self, pauseAt: int | None = None, answerAtEnd: bool = False, raiseIn: str = ""
    ) -> None:
        self.chunks: list[bytes] = []
        self.ended: BaseException | None = None
        self.answer: Deferred[object] = Deferred()
        self.stream: Any = None
        self.pauseAt = pauseAt
        self.answerAtEnd = answerAtEnd
        self.raiseIn = raiseIn
        self.producer: Any = None

    def onData(self, stream: IMessageStream, session: Session) -> Deferred[object]:
        from twisted.internet.protocol import Protocol, connectionDone
        from twisted.python.failure import Failure

        handler = self
        self.stream = stream

        class Reader(Protocol):
            def connectionMade(self) -> None:
                handler.producer = self.transport
                if handler.pauseAt == 0:
                    self.transport.pauseProducing()  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                handler.chunks.append(data)
                if handler.raiseIn == "dataReceived":
                    raise ZeroDivisionError(data)

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                handler.ended = reason.value
                if handler.raiseIn == "connectionLost":
                    raise ZeroDivisionError(reason.value)
                if handler.answerAtEnd and reason.check(MessageDone):
                    handler.answer.callback(None)

        stream.deliverBody(Reader())
        return self.answer


class StreamingTests(SynchronousTestCase):
    """
    How data handlers receive the message: streaming, backpressure, chains, aborts.
    """

    def start(self, handlers: list[object], **options: Any) -> MemoryClient:
        client = connect(*handlers, **options)
        hello(client, "LHLO" if options.get("lmtp") else "EHLO")
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>")
        self.assertEqual(codes(client.send("DATA")), [354])
        return client

    def test_pushReaderToldWhenItsHandlerAnswersEarly(self) -> None:
        """
        A deliverBody protocol whose handler refuses from inside its dataReceived, before
        the message's end, gets its connectionLost (with MessageAborted) once that
        dataReceived has returned, so that it can release what it holds (API QA: it
        never got it); the client gets the refusal after its end of data.
        """
        from twisted.internet.protocol import Protocol, connectionDone
        from twisted.python.failure import Failure

        events: list[str] = []

        class Filter(Protocol):
            def __init__(self) -> None:
                self.verdict: Deferred[None] = Deferred()

            def dataReceived(self, data: bytes) -> None:
                events.append("data")
                if b"lottery" in data and not self.verdict.called:
                    self.verdict.errback(SMTPError(550, "Refused by content filter"))
                events.append("data done")

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                events.append(f"lost: {type(reason.value).__name__}")

        @implementer(IDataHandler)
        class PushFilter:
            def onData(self, stream: IMessageStream, session: Session) -> Deferred[None]:
                protocol = Filter()
                stream.deliverBody(protocol)
                return protocol.verdict

        client = self.start([PushFilter()])
        self.assertEqual(client.write(b"Subject: lottery\r\n\r\nYou won\r\n"), [])
        self.assertEqual(events, ["data", "data done", "lost: MessageAborted"])
        self.assertEqual(wires(client.write(b"more\r\n.\r\n")), ["550 Refused by content filter"])
        self.assertEqual(events, ["data", "data done", "lost: MessageAborted"])

    def test_chunksArriveAsSent(self) -> None:
        """
        The handler sees the message chunk by chunk as it arrives, before the end.
        """
        handler = Manual()
        client = self.start([handler])
        client.write(b"first line\r\n")
        client.write(b"second line\r\n")
        # The last CRLF is held back until it is known not to start the final dot.
        self.assertEqual(b"".join(handler.chunks), b"first line\r\nsecond line")
        self.assertIsNone(handler.ended)
        client.write(b".\r\n")
        self.assertEqual(b"".join(handler.chunks), b"first line\r\nsecond line\r\n")
        self.assertIsInstance(handler.ended, MessageDone)

    def test_replyWaitsForHandler(self) -> None:
        """
        The final reply goes out only when the handler answers, and commands pipelined
        after the dot wait for it.
        """
        handler = Manual()
        client = self.start([handler])
        self.assertEqual(client.write(b"x\r\n.\r\nNOOP\r\n"), [])
        handler.answer.callback("done")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in client.received()], ["250 done", "250 OK"]
        )

    def test_slowHandlerPausesClient(self) -> None:
        """
        While a handler leaves data unread, the server stops reading from the client,
        and reads again once the handler catches up (backpressure).
        """
        handler = Manual(pauseAt=0)
        client = self.start([handler])
        chunk = b"x" * 1000 + b"\r\n"
        for _ in range((HIGH_WATER // len(chunk)) + 2):
            client.write(chunk)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertLessEqual(handler.stream.backlog, HIGH_WATER + len(chunk))
        handler.producer.resumeProducing()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(handler.stream.backlog, 0)

    def test_asyncIterationBackpressure(self) -> None:
        """
        A handler reading with async for pulls chunk by chunk; unread data pauses the
        client.
        """
        received: list[bytes] = []
        gate: list[Deferred[None]] = []

        @implementer(IDataHandler)
        class Iterating:
            async def onData(self, stream: IMessageStream, session: Session) -> None:
                async for chunk in stream:
                    received.append(chunk)
                    waiter: Deferred[None] = Deferred()
                    gate.append(waiter)
                    await waiter

        client = self.start([Iterating()])
        chunk = b"y" * 4000 + b"\r\n"
        for _ in range(HIGH_WATER // len(chunk) + 2):
            client.write(chunk)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(len(received), 1)
        client.write(b".\r\n")
        while gate:
            gate.pop().callback(None)
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(codes(client.received()), [250])
        self.assertEqual(len(b"".join(received)), (HIGH_WATER // len(chunk) + 2) * len(chunk))

    def test_disconnectMidData(self) -> None:
        """
        If the client goes away mid-message the handler's stream fails with
        MessageAborted instead of leaving it waiting (spec section 14 #10).
        """
        handler = Manual()
        client = self.start([handler])
        client.write(b"partial\r\n")
        client.disconnect()
        self.assertIsInstance(handler.ended, MessageAborted)
        handler.answer.callback(None)

    def test_handlerAnswersEarly(self) -> None:
        """
        A handler that answers before the message ended gets no more of it; the reply
        still waits for the final dot.
        """
        handler = Manual()
        client = self.start([handler])
        client.write(b"one\r\n")
        handler.answer.callback("early")
        self.assertEqual(client.write(b"two\r\n"), [])
        self.assertEqual(handler.chunks, [b"one"])
        self.assertEqual(first(client.write(b".\r\n")), "250 early")

    def test_chainOrder(self) -> None:
        """
        With two data handlers, the second sees the message end only after the first
        accepted it.
        """
        first_, second = Manual(), Manual()
        client = self.start([first_, second])
        client.write(b"body\r\n.\r\n")
        self.assertEqual(second.chunks, [b"body\r\n"])
        self.assertEndsInTurn(client, [first_, second])

    def assertEndsInTurn(self, client: MemoryClient, handlers: list[Manual]) -> None:
        """
        Each of C{handlers}, whose message has come whole, sees its end only once the
        one before it accepted (each accepts when this says), and the last one's answer
        is the reply.
        """
        for index, handler in enumerate(handlers):
            self.assertIsInstance(handler.ended, MessageDone, index)
            self.assertEqual(
                [h.ended for h in handlers[index + 1 :]], [None] * (len(handlers) - index - 1)
            )
            self.assertEqual(client.received(), [])
            handler.answer.callback("stored" if handler is handlers[-1] else None)
        self.assertEqual(first(client.received()), "250 stored")

    def test_chainGoesOnAfterAnAnswerAtTheEnd(self) -> None:
        """
        A handler that answers as its stream ends (a reader that fires the handler's
        Deferred on MessageDone, as readMessage does) hands the end on to the next
        handler, and that one, once it accepted, to the one after it.
        """
        first_, second, third = Manual(answerAtEnd=True), Manual(), Manual()
        client = self.start([first_, second, third])
        client.write(b"body\r\n.\r\n")
        self.assertTrue(first_.answer.called)
        self.assertEndsInTurn(client, [second, third])

    def test_readerFailureIsHandlerFailure(self) -> None:
        """
        A handler whose reader raises (in dataReceived, or in connectionLost with the
        message's end) has failed: the error is logged, the client gets 451, the next
        handler never sees the end, and the session goes on.  The handler's own answer
        changes nothing, whether it comes before the message's end (its reader missed
        the rest) or after the reply.
        """
        for where in ("dataReceived", "connectionLost"):
            buggy, store = Manual(raiseIn=where), Manual()
            client = self.start([buggy, store])
            self.assertEqual(client.write(b"body\r\n"), [], where)
            if where == "dataReceived":
                buggy.answer.callback("stored")
            self.assertEqual(client.write(b"more\r\n.\r\n"), [], where)
            self.assertIsInstance(store.ended, MessageRefused, where)
            store.answer.callback(None)
            self.assertEqual(codes(client.received()), [451], where)
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1, where)
            if where == "connectionLost":
                buggy.answer.callback("stored")
            self.assertEqual(codes(client.send("NOOP")), [250], where)

    def test_readerFailureOnAbort(self) -> None:
        """
        A reader that raises when told the message was aborted (the client went away)
        leaves no connection behind: the connection ends, and its close handlers run,
        without waiting for the handler's answer.
        """
        buggy = Manual(raiseIn="connectionLost")
        closed: list[Session] = []

        @implementer(ICloseHandler)
        class Closer:
            def onClose(self, session: Session) -> None:
                closed.append(session)

        client = self.start([buggy, Closer()])
        client.write(b"partial\r\n")
        client.disconnect()
        self.assertIsInstance(buggy.ended, MessageAborted)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(closed), 1)
        self.assertEqual(client.server.connectionCount, 0)

    def test_firstRefusalStopsTheChain(self) -> None:
        """
        If the first data handler refuses, the second never sees the message end: its
        stream fails with MessageRefused, and the refusal is the reply.
        """
        filter_, store = Manual(), Manual()
        client = self.start([filter_, store])
        client.write(b"spam\r\n.\r\n")
        filter_.answer.errback(SMTPError(554, "Rejected content"))
        self.assertIsInstance(store.ended, MessageRefused)
        store.answer.callback(None)
        self.assertEqual(first(client.received()), "554 Rejected content")

    def test_refusalFromInsideTheCallStopsTheChain(self) -> None:
        """
        A data handler that refuses at once, from inside its call (before the handlers
        after it are called), stops the chain as well: the next one never sees the end,
        so a message the client was told is refused is not delivered.
        """

        @implementer(IDataHandler)
        class Blocklist:
            def onData(self, stream: IMessageStream, session: Session) -> None:
                raise SMTPError(554, "sender blocked by policy")

        store = Manual()
        client = self.start([Blocklist(), store])
        self.assertIsInstance(store.ended, MessageRefused)
        client.write(b"spam\r\n.\r\n")
        self.assertIsInstance(store.ended, MessageRefused)
        store.answer.callback(None)
        self.assertEqual(first(client.received()), "554 sender blocked by policy")

    def test_streamErrorFromHandlerIsNotABug(self) -> None:
        """
        A handler that lets its stream's failure through is not logged as a bug.
        """
        collector = Collector()
        client = connect(collector, size=5)
        hello(client)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(codes(client.write(b"0123456789\r\n.\r\n")), [552])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_streamSizeAttributes(self) -> None:
        """
        byteLength and sizeExceeded follow the message as it arrives.
        """
        handler = Manual()
        client = self.start([handler], size=10)
        client.write(b"12345\r\n")
        self.assertEqual((handler.stream.byteLength, handler.stream.sizeExceeded), (5, False))
        client.write(b"12345\r\n")
        self.assertEqual((handler.stream.byteLength, handler.stream.sizeExceeded), (12, True))
        client.write(b".\r\n")
        handler.answer.callback(None)


class PipeliningTests(SynchronousTestCase):
    """
    Replies come in command order whatever the handlers do (RFC 2920).
    """

    def test_orderWithPendingHandler(self) -> None:
        """
        While a handler's Deferred is pending nothing else is read; the replies come out
        in order once it fires (standards 2920-02).
        """
        pending: Deferred[None] = Deferred()

        @implementer(IMailFromHandler)
        class Slow:
            def onMailFrom(self, address: Address, session: Session) -> Deferred[None]:
                return pending

        client = connect(Slow())
        hello(client)
        replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "NOOP")
        self.assertEqual(replies, [])
        self.assertEqual(client.transport.producerState, "paused")
        pending.callback(None)
        self.assertEqual(codes(client.received()), [250, 250, 250])
        self.assertEqual(client.transport.producerState, "producing")

    def test_coroutineHandler(self) -> None:
        """
        A coroutine handler works like a Deferred one.
        """
        gate: Deferred[None] = Deferred()

        @implementer(IRcptToHandler)
        class Async:
            async def onRcptTo(self, address: Address, session: Session) -> None:
                await gate
                if address.address.startswith("no"):
                    raise SMTPError(550, "No such user")

        client = connect(Async())
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(client.send("RCPT TO:<no@d.example>", "RCPT TO:<yes@d.example>"), [])
        gate.callback(None)
        self.assertEqual(codes(client.received()), [550, 250])

    def test_2920_05_repliesInOneWrite(self) -> None:
        """
        Replies to a batch of pipelined commands leave in one write.
        """
        client = connect()
        writes: list[bytes] = []
        original = client.transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        client.transport.write = write  # type: ignore[method-assign]
        replies = client.send("EHLO x", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "NOOP")
        self.assertEqual(codes(replies), [250, 250, 250, 250])
        self.assertEqual(len(writes), 1)
        self.assertEqual(parseReplies(writes[0]), replies)

    def test_clientNotReading(self) -> None:
        """
        When the client stops reading our replies, we stop reading its commands.
        """
        client = connect()
        client.protocol.pauseProducing()
        self.assertEqual(client.send("NOOP"), [])
        client.protocol.resumeProducing()
        self.assertEqual(codes(client.received()), [250])

    def test_longBatchYields(self) -> None:
        """
        A very long batch of pipelined commands is answered in turns, letting other
        connections run in between.
        """
        client = connect(maxJunkCommands=None)
        replies = client.send(*["NOOP"] * 250)
        self.assertEqual(len(replies), 100)
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(len(client.clock.getDelayedCalls()), 2)  # the turn and the timeout
        client.clock.advance(0)
        self.assertEqual(len(client.received()), 150)
        self.assertEqual(client.transport.producerState, "producing")

    def test_handlersInOrder(self) -> None:
        """
        Several handlers run in registration order and the first refusal stops the chain.
        """
        calls: list[str] = []

        @implementer(IMailFromHandler)
        class Named:
            def __init__(self, name: str, refuse: bool = False) -> None:
                self.name, self.refuse = name, refuse

            def onMailFrom(self, address: Address, session: Session) -> Deferred[None]:
                calls.append(self.name)
                if self.refuse:
                    raise SMTPError(550, f"refused by {self.name}")
                return succeed(None)

        client = connect(Named("a"), Named("b", refuse=True), Named("c"))
        hello(client)
        self.assertEqual(first(client.send("MAIL FROM:<x@y.example>")), "550 refused by b")
        self.assertEqual(calls, ["a", "b"])


class TimeoutAndShutdownTests(SynchronousTestCase):
    """
    socketTimeout and SMTPServer.close (spec sections 2.3, 13.2).
    """

    def test_handlerHoldsTheMessageUpWithinHandlerTimeout(self) -> None:
        """
        A data handler that holds a message up (its stream full, the connection not
        reading) is the server's wait, not the client's: socketTimeout does not run
        meanwhile, and once the handler takes the message the client goes on and gets
        its reply.
        """
        handler = LateReader()
        client = connect(handler, socketTimeout=15, handlerTimeout=300, clientName="c.example")
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        line = b"x" * 98 + b"\r\n"
        self.assertEqual(client.write(line * (2 * HIGH_WATER // len(line))), [])
        self.assertTrue(client.protocol.paused)
        client.clock.advance(250)
        self.assertFalse(client.closed)
        # Between two of the idle checks, which come every socketTimeout seconds:
        client.clock.advance(1)
        handler.gate.callback(None)
        # The handlers' clock has stopped; the client's runs again, from now: the next
        # idle check, due in under socketTimeout, does not count the time it was held up.
        [idleCheck] = client.clock.getDelayedCalls()
        client.clock.advance(idleCheck.getTime() - client.clock.seconds())
        self.assertFalse(client.closed)
        self.assertEqual(codes(client.write(b".\r\n")), [250])

    def test_timeoutWhileHandlerHoldsTheMessage(self) -> None:
        """
        A client held up in the middle of a message by a data handler (its stream full,
        the connection not reading) for handlerTimeout seconds gets 421 and is let go,
        with a warning: socketTimeout, shorter, does not cut it off, since the client is
        not the one that is slow.  The handler sees the message aborted, and nothing the
        client sent after is read as a command, nor does the abort fail anywhere.
        """
        log = LogCapture(self)
        aborted: list[BaseException] = []

        @implementer(IDataHandler)
        class Stuck:
            def __init__(self) -> None:
                self.gate: Deferred[None] = Deferred()

            async def onData(self, stream: IMessageStream, session: Session) -> None:
                await self.gate
                try:
                    await readMessage(stream)
                except MessageAborted as e:
                    aborted.append(e)
                    raise

        handler = Stuck()
        client = connect(handler, socketTimeout=60, handlerTimeout=120)
        hello(client)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        line = b"NOOP\r\n"
        self.assertEqual(client.write(line * (2 * HIGH_WATER // len(line))), [])
        # More arrives while the connection is not reading: it waits in its buffer.
        self.assertEqual(client.write(line * 10), [])
        client.clock.advance(119)
        self.assertFalse(client.closed)
        client.clock.advance(1)
        self.assertEqual(first(client.received()), "421 Handler timeout - closing connection")
        self.assertTrue(client.closed)
        self.assertEqual(len(log.matching("took none of the message for 120 s")), 1)
        handler.gate.callback(None)
        self.assertEqual(len(aborted), 1)
        self.assertEqual(client.received(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_5321_40_idleTimeoutBetweenCommands(self) -> None:
        """
        After socketTimeout seconds without traffic the client gets 421 and is closed.
        """
        client = connect(socketTimeout=30)
        client.clock.advance(20)
        client.send("NOOP")
        client.clock.advance(20)
        self.assertFalse(client.closed)
        client.clock.advance(11)
        self.assertEqual(first(client.received()), "421 Timeout - closing connection")
        self.assertTrue(client.closed)

    def test_5321_40_noTimeoutWhileTheReplyIsOurs(self) -> None:
        """
        The idle timeout is for the server awaiting the client's next command (RFC 5321
        section 4.5.3.2.7): while a handler decides about a recipient, or about a message
        whose final dot has come, the client waits for us and is not timed out, however
        long that takes.  Once the reply is out, the client has a whole timeout again.
        """
        gates: list[Deferred[None]] = []

        def later() -> Deferred[None]:
            gate: Deferred[None] = Deferred()
            gates.append(gate)
            return gate

        @implementer(IRcptToHandler, IDataHandler)
        class Slow:
            async def onRcptTo(self, address: Address, session: Session) -> None:
                await later()

            async def onData(self, stream: IMessageStream, session: Session) -> None:
                await readMessage(stream)
                await later()

        client = connect(Slow(), socketTimeout=60)
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        # The RCPT's reply waits for its handler; so does the final dot's, after the 354.
        for data, atOnce in ((b"RCPT TO:<c@d.example>\r\n", []), (b"DATA\r\nx\r\n.\r\n", [354])):
            self.assertEqual(codes(client.write(data)), atOnce, data)
            client.clock.advance(90)
            self.assertEqual(client.received(), [], data)
            self.assertFalse(client.closed, data)
            gates.pop().callback(None)
            self.assertEqual(codes(client.received()), [250], data)
        client.clock.advance(59)
        self.assertFalse(client.closed)
        client.clock.advance(1)
        self.assertEqual(first(client.received()), "421 Timeout - closing connection")

    def test_handlerTimeoutOnCommand(self) -> None:
        """
        A handler that has not answered a command within handlerTimeout seconds gets its
        client C{421} and a closed connection, and a warning logged; its late
        answer is dropped, and nothing the client pipelined after is read.  An answer
        in time stops the clock: the next wait has a whole timeout again.
        """
        log = LogCapture(self)

        @implementer(IRcptToHandler)
        class Hung(Later[None]):
            def onRcptTo(self, address: Address, session: Session) -> Deferred[None]:
                return self.later()

        handler = Hung()
        client = connect(handler, socketTimeout=0, handlerTimeout=30)
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(client.send("RCPT TO:<c@d.example>"), [])
        client.clock.advance(29)
        handler.pending.pop().callback(None)
        self.assertEqual(codes(client.received()), [250])
        self.assertEqual(client.clock.getDelayedCalls(), [])
        self.assertEqual(client.send("RCPT TO:<e@f.example>", "NOOP"), [])
        client.clock.advance(29)
        self.assertFalse(client.closed)
        client.clock.advance(1)
        self.assertEqual(wires(client.received()), ["421 Handler timeout - closing connection"])
        self.assertTrue(client.closed)
        handler.pending.pop().callback(None)
        self.assertEqual(client.received(), [])
        self.assertEqual(len(log.matching("handlers did not answer within 30 s")), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_handlerTimeoutAfterFinalDot(self) -> None:
        """
        Data handlers that have not answered a message handlerTimeout seconds after its
        end (the final dot, or the last BDAT chunk): the client gets C{421} (not a 250,
        so it sends the message again) and is disconnected; the transaction is logged as
        timed out, and the handlers' late answer is dropped.  In LMTP too, with one
        reply for all the recipients.
        """
        for lmtp, message in ((False, b"DATA"), (True, b"DATA"), (False, b"BDAT")):
            log = LogCapture(self)

            @implementer(IDataHandler)
            class Hung(Later[None]):
                async def onData(self, stream: IMessageStream, session: Session) -> None:
                    await readMessage(stream)
                    await self.later()

            handler = Hung()
            client = connect(
                handler, socketTimeout=0, handlerTimeout=60, lmtp=lmtp, clientName="c.example"
            )
            client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "RCPT TO:<e@d.example>")
            if message == b"DATA":
                self.assertEqual(codes(client.send("DATA")), [354])
                self.assertEqual(client.write(b"x\r\n.\r\n"), [])
            else:
                self.assertEqual(client.write(b"BDAT 3 LAST\r\nx\r\n"), [])
            client.clock.advance(59)
            self.assertEqual(client.received(), [], message)
            client.clock.advance(1)
            self.assertEqual(
                wires(client.received()),
                [
                    "421 4.3.0 Handler timeout - closing connection"
                    if lmtp
                    else "421 Handler timeout - closing connection"
                ],
                (lmtp, message),
            )
            self.assertTrue(client.closed)
            handler.pending.pop().callback(None)
            self.assertEqual(client.received(), [])
            [line] = [e for e in log.events if e.get("event") == "transaction"]
            self.assertEqual(line["result"], "timed out")
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_handlerTimeoutAfterAFailedMessage(self) -> None:
        """
        A message that fails whatever its handlers say (too large, a bare line ending
        under the reject policy, a mail loop) whose handlers do not answer within
        handlerTimeout gets its own reply, say C{552} (which the client does not answer by
        sending the message again, as it would a 421), then C{421} and a closed
        connection; in LMTP one reply per recipient, and for a BDAT chunk before the
        last, one.  (A BDAT chunk over C{size} is refused before any handler sees it.)
        The transaction is logged with that reply; close handlers still wait for the
        hung handler.
        """
        body = b"Received: x\r\nReceived: y\r\n\r\nbody\nline\r\n" + b"z" * 200 + b"\r\n"
        cases: list[tuple[dict[str, Any], str, bool, bytes]] = [
            ({"size": 100}, "552 5.3.4", False, b"DATA"),
            ({"size": 100}, "552 5.3.4", True, b"DATA"),
            ({"bareLineEndings": "reject"}, "550 5.5.2", False, b"DATA"),
            ({"bareLineEndings": "reject"}, "550 5.5.2", False, b"BDAT"),
            ({"maxReceivedHeaders": 2}, "554 5.4.6", True, b"DATA"),
            ({"maxReceivedHeaders": 2}, "554 5.4.6", False, b"BDAT early"),
        ]
        for options, reply, lmtp, message in cases:
            log = LogCapture(self)

            @implementer(IDataHandler, ICloseHandler)
            class Hung(Later[None]):
                closed: list[Session] = []

                def onData(self, stream: IMessageStream, session: Session) -> Deferred[None]:
                    return self.later()

                def onClose(self, session: Session) -> None:
                    self.closed.append(session)

            handler = Hung()
            client = connect(
                handler,
                socketTimeout=0,
                handlerTimeout=60,
                lmtp=lmtp,
                clientName="c.example",
                hideENHANCEDSTATUSCODES=False,
                **options,
            )
            client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "RCPT TO:<e@d.example>")
            case = (options, lmtp, message)
            if message == b"DATA":
                self.assertEqual(codes(client.send("DATA")), [354], case)
                self.assertEqual(client.write(body + b".\r\n"), [], case)
            elif message == b"BDAT":
                self.assertEqual(client.write(b"BDAT %d LAST\r\n" % len(body) + body), [], case)
            else:
                self.assertEqual(client.write(b"BDAT %d\r\n" % len(body) + body), [], case)
            client.clock.advance(59)
            self.assertEqual(client.received(), [], case)
            client.clock.advance(1)
            replies = client.received()
            count = 2 if lmtp else 1
            self.assertEqual([r[:9] for r in wires(replies)], [reply] * count + ["421 4.3.0"], case)
            self.assertTrue(client.closed, case)
            self.assertEqual(handler.closed, [], case)
            handler.pending.pop().callback(None)
            self.assertEqual(client.received(), [], case)
            self.assertEqual(len(handler.closed), 1, case)
            [line] = [e for e in log.events if e.get("event") == "transaction"]
            self.assertTrue(line["result"].startswith(reply), (case, line["result"]))
            self.assertEqual(self.flushLoggedErrors(), [], case)

    def test_lateReaderOfAnAbortedMessageSeesItAborted(self) -> None:
        """
        A data handler that had not read its message to the end when the message was cut
        off after its final dot (its handlers timed out, or the client went away) gets
        MessageAborted, not the message: the client got no 250 and will send it again,
        so a handler that stored it would make a duplicate.
        """
        for cutOff in ("timeout", "disconnect"):

            @implementer(IDataHandler)
            class LateReader(Later[None]):
                results: list[object] = []

                async def onData(self, stream: IMessageStream, session: Session) -> None:
                    await self.later()
                    try:
                        self.results.append(await readMessage(stream))
                    except MessageAborted as e:
                        self.results.append(e)
                        raise

            handler = LateReader()
            client = connect(handler, socketTimeout=0, handlerTimeout=60, clientName="c.example")
            client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
            self.assertEqual(client.write(b"whole message\r\n.\r\n"), [])
            if cutOff == "timeout":
                client.clock.advance(60)
                self.assertEqual(codes(client.received()), [421])
            else:
                client.disconnect()
            handler.pending.pop().callback(None)
            [result] = handler.results
            self.assertIsInstance(result, MessageAborted, cutOff)
            self.assertEqual(self.flushLoggedErrors(), [])

    def test_handlerTimeoutBeforeGreeting(self) -> None:
        """
        Connect handlers that do not answer within handlerTimeout: 421 instead of the
        greeting, without an enhanced code even where replies carry them (RFC 2034
        section 4), as the greeting itself.
        """

        @implementer(IConnectHandler)
        class Hung(Later[None]):
            def onConnect(self, session: Session) -> Deferred[None]:
                return self.later()

        for options in ({}, {"lmtp": True}, {"hideENHANCEDSTATUSCODES": False}):
            handler = Hung()
            server = makeServer([handler], handlerTimeout=5, socketTimeout=0, **options)
            client = MemoryClient(server)
            self.assertEqual(client.received(), [])
            client.clock.advance(5)
            self.assertEqual(
                wires(client.received()), ["421 Handler timeout - closing connection"], options
            )
            self.assertTrue(client.closed)
            handler.pending.pop().callback(None)
            self.assertEqual(client.received(), [])

    def test_shutDownBeforeGreetingWithoutEnhancedCode(self) -> None:
        """
        A server that closes while a client waits for its greeting (in the early-talker
        delay) says goodbye without an enhanced code, even in LMTP; after the greeting,
        with one.
        """
        server = makeServer(lmtp=True, earlyTalkerDelay=5)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        protocol = server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        greeted = MemoryClient(makeServer(lmtp=True, closeTimeout=0))
        greeted.server.close()
        server.close()
        self.assertEqual(transport.value(), b"421 Server shutting down\r\n")
        self.assertEqual(wires(greeted.received()), ["421 4.3.2 Server shutting down"])

    def test_handlerTimeoutCostsNoTimerWhenAnsweredAtOnce(self) -> None:
        """
        Handlers that answer at once start no timer; with handlerTimeout 0, handlers may
        take as long as they like.
        """
        recorder = RecordingHandler()
        client = connect(recorder, socketTimeout=0, clientName="c.example")
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])
        self.assertEqual(client.clock.getDelayedCalls(), [])

        @implementer(IMailFromHandler)
        class Slow(Later[None]):
            def onMailFrom(self, address: Address, session: Session) -> Deferred[None]:
                return self.later()

        handler = Slow()
        client = connect(handler, socketTimeout=0, handlerTimeout=0, clientName="c.example")
        self.assertEqual(client.send("MAIL FROM:<a@b.example>"), [])
        client.clock.advance(86400)
        handler.pending.pop().callback(None)
        self.assertEqual(codes(client.received()), [250])

    def test_timeoutMidDataAbortsMessage(self) -> None:
        """
        A client that stalls mid-message times out and the handler is told.
        """
        handler = Manual()
        client = connect(handler, socketTimeout=10)
        hello(client)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        client.write(b"partial")
        client.clock.advance(11)
        self.assertEqual(first(client.received()), "421 Timeout - closing connection")
        self.assertIsInstance(handler.ended, MessageAborted)

    def _clingingClient(self, **options: Any) -> tuple[Clock, list[None]]:
        # A client that got the goodbye but never closes its end: the server's transport
        # stays open (disconnecting) until the server aborts it.
        server = makeServer(**options)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        aborts: list[None] = []
        transport.abortConnection = lambda: aborts.append(None)  # type: ignore[method-assign]
        protocol = server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        clock = cast(Clock, server.reactor)
        clock.advance(server.options.earlyTalkerDelay)
        protocol.dataReceived(b"QUIT\r\n")
        self.assertTrue(transport.value().endswith(b"221 Bye\r\n"), transport.value())
        self.assertTrue(transport.disconnecting)
        return clock, aborts

    def test_clingingClientAborted(self) -> None:
        """
        A client that does not let go of the connection after the server said goodbye is
        cut off once socketTimeout has passed.
        """
        clock, aborts = self._clingingClient(socketTimeout=10)
        clock.advance(9)
        self.assertEqual(aborts, [])
        clock.advance(1)
        self.assertEqual(aborts, [None])

    def test_clingingClientAbortedWithoutTimeout(self) -> None:
        """
        With socketTimeout=0 such a client is still cut off, after 30 seconds.
        """
        clock, aborts = self._clingingClient(socketTimeout=0)
        clock.advance(29)
        self.assertEqual(aborts, [])
        clock.advance(1)
        self.assertEqual(aborts, [None])

    def test_timeoutOff(self) -> None:
        """
        socketTimeout=0 never times out.
        """
        client = connect(socketTimeout=0)
        client.clock.advance(100000)
        self.assertFalse(client.closed)

    def test_closeIdleClients(self) -> None:
        """
        close() tells idle clients 421 at once and fires when they are gone.
        """
        server = makeServer()
        client = MemoryClient(server)
        hello(client)
        closed = server.close()
        self.assertEqual(first(client.received()), "421 Server shutting down")
        self.assertTrue(client.closed)
        self.successResultOf(closed)

    def test_closeLetsTransactionFinish(self) -> None:
        """
        A client in a transaction may finish its message, whether close() came in the
        middle of the message or of the envelope; its next command gets 421.
        """
        envelope = ["MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA"]
        for split in (3, 1):
            recorder = RecordingHandler()
            server = makeServer([recorder])
            client = MemoryClient(server)
            hello(client)
            client.send(*envelope[:split])
            closed = server.close()
            self.assertNoResult(closed)
            self.assertEqual(client.received(), [])
            self.assertEqual(codes(client.send(*envelope[split:])), [250, 354][split - 1 :])
            self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])
            self.assertEqual(len(recorder.messages), 1)
            self.assertEqual(
                first(client.send("MAIL FROM:<a@b.example>")), "421 Server shutting down"
            )
            self.successResultOf(closed)

    def test_closeForcesAfterTimeout(self) -> None:
        """
        After closeTimeout the remaining clients get 421 and are closed; once they are
        gone, nothing of the close is left pending.
        """
        server = makeServer(closeTimeout=5)
        client = MemoryClient(server)
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        closed = server.close()
        server.reactor.advance(4.9)
        self.assertEqual(client.received(), [])
        self.assertFalse(client.closed)
        self.assertNoResult(closed)
        server.reactor.advance(0.1)
        self.assertEqual(first(client.received()), "421 Server shutting down")
        self.successResultOf(closed)
        # The client went away at once: the step after (aborting clients that did not
        # read their 421) is called off, and no timer is left.
        self.assertEqual(server.reactor.getDelayedCalls(), [])

    def _closingWithMessageIn(
        self, closeTimeout: float
    ) -> tuple[Manual, SMTPServer, MemoryClient, Deferred[None]]:
        # A server closing while the data handler of a message it received whole has yet
        # to answer: the handler, the server, its client and what close() returned.
        handler = Manual()
        server = makeServer([handler], closeTimeout=closeTimeout)
        client = MemoryClient(server)
        hello(client)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(client.write(b"x\r\n.\r\n"), [])
        return handler, server, client, server.close()

    def test_closeWaitsForTheReplyToAReceivedMessage(self) -> None:
        """
        When the server closes a client at once (closeTimeout=0, or once closeTimeout has
        run out) while the handlers of a message it received whole are deciding, their
        reply goes out first and the 421 right after it: the client is not told to send
        again a message that was stored.
        """
        handler, _, client, closed = self._closingWithMessageIn(closeTimeout=0)
        self.assertEqual(client.received(), [])
        self.assertIsInstance(handler.ended, MessageDone)
        handler.answer.callback("stored")
        self.assertEqual(wires(client.received()), ["250 stored", "421 Server shutting down"])
        self.assertTrue(client.closed)
        self.successResultOf(closed)

    def test_closeTellsClientsWhoseReplyNeverCame(self) -> None:
        """
        A client whose message came whole, and whose handlers have not answered by the
        time close() stops waiting for clients (closeTimeout, then ABORT_DELAY), gets
        the 421 rather than a reset connection, and sends the message again; the
        handlers' late answer is dropped.
        """
        handler, server, client, closed = self._closingWithMessageIn(closeTimeout=5)
        server.reactor.advance(5)
        self.assertEqual(client.received(), [])
        self.assertFalse(client.closed)
        server.reactor.advance(ABORT_DELAY)
        self.assertEqual(wires(client.received()), ["421 Server shutting down"])
        self.assertTrue(client.closed)
        handler.answer.callback("stored")
        self.assertEqual(client.received(), [])
        server.reactor.advance(HANDLER_GRACE)
        self.successResultOf(closed)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_closeTimeoutZero(self) -> None:
        """
        closeTimeout=0 closes every client at once.
        """
        server = makeServer(closeTimeout=0)
        client = MemoryClient(server)
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        closed = server.close()
        self.assertEqual(first(client.received()), "421 Server shutting down")
        self.successResultOf(closed)

    def test_closeGivesUpOnHandlersThatNeverAnswer(self) -> None:
        """
        A close handler that never answers, or the data handler of a message cut off that
        never does, keeps close() waiting only until closeTimeout, the ABORT_DELAY given
        to clients that do not read, and HANDLER_GRACE have passed; a warning says so.
        """

        @implementer(IDataHandler)
        class NeverAnswering:
            def onData(self, stream: IMessageStream, session: Session) -> Deferred[None]:
                return Deferred()

        for handler, inMessage in ((NeverClosing(), False), (NeverAnswering(), True)):
            log = LogCapture(self)
            server = makeServer([handler], closeTimeout=5)
            client = MemoryClient(server)
            hello(client)
            if inMessage:
                client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
            closed = server.close()
            server.reactor.advance(5)
            self.assertEqual(first(client.received()), "421 Server shutting down")
            self.assertTrue(client.closed)
            server.reactor.advance(ABORT_DELAY + HANDLER_GRACE - 0.01)
            self.assertNoResult(closed)
            self.assertEqual(log.matching("without waiting"), [])
            server.reactor.advance(0.01)
            self.successResultOf(closed)
            self.assertEqual(
                log.matching("without waiting"),
                [
                    "Closing the server without waiting any longer for the handlers of 1 "
                    "connection(s)"
                ],
            )
            self.successResultOf(server.close())
            self.assertEqual(server.reactor.getDelayedCalls(), [])

    def test_giveUpDocumented(self) -> None:
        """
        The pages that tell how long close() waits for handlers give the bound the code
        has: closeTimeout plus ABORT_DELAY and HANDLER_GRACE.
        """
        bound = f"``closeTimeout`` plus {ABORT_DELAY + HANDLER_GRACE:g} seconds"
        for page in ("service.rst", "handlers.rst"):
            text = " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())
            self.assertIn(bound, text, page)
        docstring = " ".join((SMTPServer.close.__doc__ or "").split())
        self.assertIn(f"C{{closeTimeout}} plus {ABORT_DELAY + HANDLER_GRACE:g} seconds", docstring)

    def test_closeLeavesNoTimer(self) -> None:
        """
        A server that closed in time leaves no timer behind, whether it had clients or
        not.
        """
        for count in (0, 1):
            server = makeServer(closeTimeout=5)
            clients = [MemoryClient(server) for _ in range(count)]
            for client in clients:
                hello(client)
            closed = server.close()
            for client in clients:
                self.assertEqual(first(client.received()), "421 Server shutting down")
            self.successResultOf(closed)
            self.assertEqual(server.reactor.getDelayedCalls(), [])

    def test_closeTwice(self) -> None:
        """
        Every call to close() gets a Deferred that fires when the server is closed.
        """
        server = makeServer()
        client = MemoryClient(server)
        hello(client)
        client.send("MAIL FROM:<a@b.example>")
        one, two = server.close(), server.close()
        self.assertNoResult(one)
        client.send("QUIT")
        self.successResultOf(one)
        self.successResultOf(two)
        self.successResultOf(server.close())


class SessionFieldTests(SynchronousTestCase):
    """
    The session handlers see (spec section 9).
    """

    def test_sessionIdentifiers(self) -> None:
        """
        Session identifiers are 16 characters of C{[0-9a-v]}, every one of the 32 used,
        and do not repeat.
        """
        ids = [newSessionID() for _ in range(2000)]
        self.assertEqual(len(set(ids)), len(ids))
        for sessionId in ids:
            self.assertRegex(sessionId, r"^[0-9a-v]{16}\Z")
        self.assertEqual(set("".join(ids)), set("0123456789abcdefghijklmnopqrstuv"))

    def test_fields(self) -> None:
        """
        A fresh session has the reference's fields.
        """
        client = connect()
        session = client.session
        self.assertRegex(session.id, r"^[0-9a-v]{16}$")
        self.assertEqual(
            (session.localAddress, session.localPort, session.remoteAddress, session.remotePort),
            ("127.0.0.1", 25, "192.0.2.1", 40000),
        )
        self.assertEqual(session.clientHostname, "[192.0.2.1]")
        self.assertEqual(
            (session.secure, session.user, session.openingCommand), (False, None, None)
        )
        self.assertEqual(session.transaction, 1)

    def test_transmissionType(self) -> None:
        """
        transmissionType names the protocol as RFC 3848 does.
        """
        client = connect()
        client.send("HELO x")
        self.assertEqual(client.session.transmissionType, "SMTP")
        client.send("EHLO x")
        self.assertEqual(client.session.transmissionType, "ESMTP")
        client.send("MAIL FROM:<a@b.example> SMTPUTF8")
        self.assertEqual(client.session.transmissionType, "UTF8SMTP")
        lmtp = connect(lmtp=True)
        lmtp.send("LHLO x")
        self.assertEqual(lmtp.session.transmissionType, "LMTP")

    def test_errorIsLastFailure(self) -> None:
        """
        session.error keeps the last reply of 400 or more.
        """
        client = connect()
        client.send("FOO", "NOOP")
        self.assertEqual(client.session.error, "500 Error: command not recognized")

    def test_closeHandlersRun(self) -> None:
        """
        ICloseHandler runs once per connection, also for refused ones.
        """
        recorder = RecordingHandler()
        server = makeServer([recorder], maxClients=1)
        a = MemoryClient(server)
        b = MemoryClient(server)
        self.assertEqual(len(recorder.closed), 1)
        self.assertIs(recorder.closed[0], b.session)
        a.send("QUIT")
        self.assertEqual(len(recorder.closed), 2)


class ServerTests(SynchronousTestCase):
    """
    Building a server.
    """

    def test_misuseCaughtAtTheCall(self) -> None:
        """
        Mistakes in building a server or its handlers fail where they are made, with a
        sentence that says what is wrong, not later, deep inside a connection.
        """

        @implementer(IMailFromHandler)
        class NoMethod:  # type: ignore[misc]
            pass

        @implementer(IMailFromHandler)
        class Fine:
            def onMailFrom(self, address: Address, session: Session) -> None:
                pass

        mistakes: list[tuple[Callable[[], object], type[Exception], str]] = [
            (lambda: SMTPServer(reactor=Clock(), resolver=5), ValueError, "lookupPointer"),
            (lambda: SMTPServer(reactor=5), TypeError, "Twisted reactor"),
            (lambda: SMTPServer([NoMethod()], reactor=Clock()), TypeError, "no onMailFrom"),
            (lambda: SMTPServer([Fine], reactor=Clock()), TypeError, "an instance of it: Fine()"),
            (lambda: SMTPServer(Fine(), reactor=Clock()), TypeError, "a list of handlers"),  # type: ignore[arg-type]
            (lambda: SMTPServer(reactor=Clock()).listen(2525), TypeError, "'tcp:2525'"),  # type: ignore[arg-type]
            (lambda: SMTPError(550, b"No such user"), TypeError, "not bytes"),  # type: ignore[arg-type]
        ]
        for make, kind, words in mistakes:
            with self.assertRaises(kind) as caught:
                make()
            self.assertIn(words, str(caught.exception))

    def test_unknownOption(self) -> None:
        """
        An unknown option is a TypeError that names it.
        """
        with self.assertRaises(TypeError) as caught:
            SMTPServer(reactor=Clock(), maxclients=3)
        self.assertIn("'maxclients'", str(caught.exception))

    def test_badOptionValue(self) -> None:
        """
        A bad value is a ValueError that names the option.
        """
        with self.assertRaises(ValueError) as caught:
            SMTPServer(reactor=Clock(), bareLineEndings="maybe")
        self.assertIn("bareLineEndings", str(caught.exception))

    def test_handlerWithoutInterfaces(self) -> None:
        """
        A handler that declares none of the interfaces is refused with a hint.
        """

        class Forgetful:
            def onMailFrom(self, address: Address, session: Session) -> None:
                pass

        with self.assertRaises(TypeError) as caught:
            SMTPServer([Forgetful()], reactor=Clock())
        self.assertIn("implementer", str(caught.exception))


class HandlerAnswerTests(SynchronousTestCase):
    """
    What the server makes of handlers that answer in unexpected ways, and of handlers
    still deciding when the connection ends.
    """

    def test_pendingInAnotherForm(self) -> None:
        """
        An answer still to come in a form the server does not take (a generator: an
        @inlineCallbacks handler without its decorator; an awaitable that is neither a
        coroutine nor a Deferred) is a handler failure, logged, with 451, never taken as
        an acceptance (API QA: a refusing handler's sender got 250).
        """

        class Awaitable:
            def __await__(self) -> Any:
                raise SMTPError(550, "Sender blocked")
                yield  # pragma: no cover

        def generator() -> Any:
            raise SMTPError(550, "Sender blocked")
            yield  # pragma: no cover

        async def asyncGenerator() -> Any:
            yield None  # pragma: no cover

        async def notAwaited() -> Any:
            async def check() -> None:
                raise SMTPError(550, "Sender blocked")  # pragma: no cover

            return check()

        def deferredGenerator() -> Deferred[Any]:
            return succeed(generator())

        # Each answer, what is logged, and whether onClose gives it too (and is logged):
        # a close handler's coroutine or Deferred is waited for, its value ignored.
        for answer, why, atClose in [
            (generator, "a generator, not a Deferred or a coroutine (is @inlineCallbacks", True),
            (Awaitable, "an awaitable Awaitable, not a Deferred or a coroutine", True),
            (asyncGenerator, "an asynchronous generator, not a Deferred or a coroutine", True),
            # The value a coroutine or a Deferred gave (attack QA: these were accepted).
            (notAwaited, "a coroutine as the result of its Deferred or coroutine", False),
            (deferredGenerator, "a generator, not a Deferred or a coroutine", False),
        ]:

            @implementer(IMailFromHandler, ICloseHandler)
            class Odd:
                def __init__(self, answer: Callable[[], object], atClose: bool) -> None:
                    self.answer, self.atClose = answer, atClose

                def onMailFrom(self, address: Address, session: Session) -> object:
                    return self.answer()

                def onClose(self, session: Session) -> object:
                    return self.answer() if self.atClose else None

            client = connect(Odd(answer, atClose), clientName="c.example")
            self.assertEqual(
                first(client.send("MAIL FROM:<a@b.example>")),
                "451 Requested action aborted: local error in processing",
            )
            client.send("QUIT")
            errors = [str(e.value) for e in self.flushLoggedErrors(TypeError)]
            self.assertEqual(len(errors), 2 if atClose else 1, errors)
            self.assertTrue(errors[0].startswith(f"onMailFrom returned {why}"), errors)
            if atClose:
                self.assertTrue(errors[1].startswith(f"onClose returned {why}"), errors)

    def test_baseExceptionFromASynchronousHandler(self) -> None:
        """
        A synchronous handler that raises what is not an Exception (asyncio's
        CancelledError) gets 451, logged, as a coroutine raising it does, and the
        connection carries on (API QA: it escaped dataReceived and the connection was
        dropped without a reply).
        """
        import asyncio

        @implementer(IMailFromHandler)
        class Cancelled:
            def onMailFrom(self, address: Address, session: Session) -> None:
                raise asyncio.CancelledError()

        client = connect(Cancelled(), clientName="c.example")
        self.assertEqual(
            first(client.send("MAIL FROM:<a@b.example>")),
            "451 Requested action aborted: local error in processing",
        )
        self.assertEqual(len(self.flushLoggedErrors(asyncio.CancelledError)), 1)
        self.assertFalse(client.closed)
        self.assertEqual(codes(client.send("NOOP")), [250])

    def test_closeHandlersWaitForPendingHandlers(self) -> None:
        """
        A handler still deciding when the connection ends (the client left, the handler
        timeout passed, the server was closed) is left to end (not cancelled: its
        Deferred may be shared); the close handlers run once it has, and
        server.close() fires after them (API QA: onClose ran while an RCPT lookup was
        still to use what it released).  Its answer goes to no one.
        """
        for ending in ("client", "timeout", "close"):
            events: list[str] = []

            @implementer(IRcptToHandler, ICloseHandler)
            class Directory:
                def __init__(self, events: list[str]) -> None:
                    self.lookup: Deferred[None] = Deferred()
                    self.events = events

                async def onRcptTo(self, address: Address, session: Session) -> None:
                    await self.lookup
                    self.events.append(f"onRcptTo answers, db {session.data['db']}")
                    raise SMTPError(550, "No such user")

                def onClose(self, session: Session) -> None:
                    session.data["db"] = "released"
                    self.events.append("onClose")

                def serverClosed(self, result: None) -> None:
                    self.events.append("server closed")

            directory = Directory(events)
            server = makeServer([directory], handlerTimeout=30, closeTimeout=5)
            client = clientOf(server, "c.example")
            client.session.data["db"] = "open"
            clock = client.clock
            client.send("MAIL FROM:<a@b.example>")
            self.assertEqual(client.send("RCPT TO:<c@d.example>"), [])
            if ending == "client":
                client.disconnect()
            elif ending == "timeout":
                clock.advance(30)
                self.assertEqual(codes(client.received()), [421])
            else:
                server.close().addCallback(directory.serverClosed)
                # The 421 at closeTimeout, the cut-off a second later (the give-up
                # would be three more seconds on).
                for seconds in (5, 1):
                    clock.advance(seconds)
                    client.received()
            self.assertTrue(client.closed or ending == "client", ending)
            self.assertEqual(events, [], ending)
            directory.lookup.callback(None)
            expected = ["onRcptTo answers, db open", "onClose"]
            self.assertEqual(events, expected + ["server closed"] * (ending == "close"), ending)
            self.assertEqual(client.received(), [], ending)
            self.assertEqual(self.flushLoggedErrors(), [], ending)


class ReplyParsingTests(SynchronousTestCase):
    """
    L{parseReplies} and L{MemoryClient.received}, which tests read the server with.
    """

    def test_sendmailWithAnAnswerToCome(self) -> None:
        """
        L{MemoryClient.sendmail} with a RCPT handler that answers later on the clock has
        no 354 to send the message after: it says so, rather than return as though the
        transaction were done.  A data handler that answers later leaves the final reply
        for L{MemoryClient.received}.
        """

        @implementer(IRcptToHandler)
        class Slow(Later[None]):
            def onRcptTo(self, address: Address, session: Session) -> Deferred[None]:
                return self.later()

        client = connect(Slow(), clientName="c.example")
        with self.assertRaises(RuntimeError) as caught:
            client.sendmail("a@b.example", ["c@d.example"], b"Subject: x\r\n\r\nx\r\n")
        self.assertIn("1 of the 3 replies", str(caught.exception))

        @implementer(IDataHandler)
        class SlowData(Later[None]):
            def onData(self, stream: IMessageStream, session: Session) -> Deferred[None]:
                return self.later()

        handler = SlowData()
        client = connect(handler, clientName="c.example")
        replies = client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(codes(replies), [250, 250, 354])
        handler.pending.pop().callback(None)
        self.assertEqual(codes(client.received()), [250])

    def test_parseReplies(self) -> None:
        """
        Lines are gathered into replies, a multi-line reply into one; empty lines are
        skipped and an incomplete last line is left out.
        """
        self.assertEqual(
            parseReplies(b"\r\n250-mx.test\r\n\r\n250 SIZE\r\n221 Bye\r\n354 Sta"),
            [ServerReply(250, ("mx.test", "SIZE")), ServerReply(221, ("Bye",))],
        )
        self.assertEqual(parseReplies(b"250 OK"), [])

    def test_receivedKeepsIncompleteLine(self) -> None:
        """
        Bytes of a reply the server has not finished yet are read with the rest of it.
        """
        client = connect()
        client.transport.write(b"250 OK\r\n250 PA")
        self.assertEqual(client.received(), [ServerReply(250, ("OK",))])
        client.transport.write(b"RT\r\n")
        self.assertEqual(client.received(), [ServerReply(250, ("PART",))])
        self.assertEqual(client.received(), [])
