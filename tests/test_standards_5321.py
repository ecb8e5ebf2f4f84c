"""
The standards tests for RFC 5321 (checklist section 1.1) that are not covered elsewhere.

Each test is named after its row of the checklist (C{5321-03} becomes C{test_5321_03_...})
and drives the exchange over the wire in memory, through L{MemoryClient}; the rows whose
test lives in another module (L{tests.test_protocol}, L{tests.test_core_data} ...) are not
repeated here.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    Address,
    IConnectHandler,
    IDataHandler,
    IMessageStream,
    IRcptToHandler,
    Session,
    SMTPError,
    readMessage,
)
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply, stuff

from . import test_forward
from .auth_support import Alice, authPlain
from .maildir_support import runNow, storedMessages
from .protocol_support import (
    NAME,
    RECIPIENT,
    SENDER,
    FakeResolver,
    LateReader,
    codes,
    connect,
    hello,
    makeServer,
)

#: A message that has already travelled: two trace headers (one folded) before ours.
TRAVELLED = (
    b"Received: from a.example by b.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Received: from c.example (c.example [198.51.100.3])\r\n"
    b"\tby d.example; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"hello\r\n"
)


def enhanced(reply: ServerReply) -> str:
    """
    The enhanced status code that starts the reply's text.
    """
    return reply.lines[0].partition(" ")[0]


def hops(count: int) -> bytes:
    """
    C{count} trace headers, as a message that went through C{count} relays carries them.
    """
    return b"".join(
        b"Received: from hop%d.example by hop%d.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        % (i, i + 1)
        for i in range(count)
    )


@implementer(IConnectHandler)
class RefuseEveryone:
    """
    Refuses every client with 554, as a server that offers no SMTP service does.
    """

    def onConnect(self, session: Session) -> None:
        raise SMTPError(554, "No SMTP service here")


@implementer(IRcptToHandler, IDataHandler)
class Grumpy:
    """
    Refuses the recipients whose local part is C{nobody}, and every message.
    """

    def onRcptTo(self, address: Address, session: Session) -> None:
        if address.address.startswith("nobody@"):
            raise SMTPError(550, "No such user here")

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        await readMessage(stream)
        raise SMTPError(554, "Rejected content")


class GreetingTests(SynchronousTestCase):
    """
    The opening of the session (RFC 5321 section 3.1).
    """

    def test_5321_02_refusedGreetingWaitsForQuit(self) -> None:
        """
        A server that greets with 554 keeps the connection until the client says QUIT,
        answering every other command with 503 (RFC 5321 section 3.1).
        """
        client = connect(RefuseEveryone())
        self.assertEqual(client.greeting, ServerReply(554, ("No SMTP service here",)))
        self.assertFalse(client.closed)
        for command in (
            "EHLO client.example",
            "HELO client.example",
            f"MAIL FROM:<{SENDER}>",
            f"RCPT TO:<{RECIPIENT}>",
            "DATA",
            "RSET",
            "NOOP",
        ):
            self.assertEqual(codes(client.send(command)), [503], command)
            self.assertFalse(client.closed, command)
        self.assertEqual(codes(client.send("QUIT")), [221])
        self.assertTrue(client.closed)

    def test_5321_02_hangUpCodesClose(self) -> None:
        """
        A refusal with 421 (RFC 5321 section 3.8) or 521 (RFC 7504: no mail here) closes
        the connection at once: a refused client holds no connection slot.
        """
        for code in (421, 521):

            @implementer(IConnectHandler)
            class HangUp:
                def onConnect(self, session: Session, code: int = code) -> None:
                    raise SMTPError(code, "Go away")

            client = connect(HangUp())
            self.assertEqual(client.greeting, ServerReply(code, ("Go away",)))
            self.assertTrue(client.closed, code)


class HelloTests(SynchronousTestCase):
    """
    HELO and EHLO (RFC 5321 sections 4.1.1.1 and 4.1.4).
    """

    def test_5321_03_ehloReplyGrammar(self) -> None:
        """
        The EHLO reply, byte for byte: the code on every line, a hyphen after it on all
        but the last, the server's domain first, then one extension per line in the
        ehlo-line grammar, each line at most 512 octets.
        """
        client = connect(
            size=1000,
            hideENHANCEDSTATUSCODES=False,
            hideDSN=False,
            useXClient=True,
            useXForward=True,
        )
        client.protocol.dataReceived(b"EHLO client.example\r\n")
        raw = client.transport.value()
        self.assertTrue(raw.endswith(b"\r\n"), raw)
        lines = raw[:-2].split(b"\r\n")
        self.assertGreater(len(lines), 1)
        for index, line in enumerate(lines):
            self.assertEqual(line[:4], b"250 " if index == len(lines) - 1 else b"250-", line)
            self.assertLessEqual(len(line) + 2, 512, line)
        first, *keywords = (line[4:].decode("ascii") for line in lines)
        # "250-" Domain [ SP ehlo-greet ], ehlo-greet = 1*(%d0-9 / %d11-12 / %d14-127)
        self.assertRegex(first, rf"\A{re.escape(NAME)}( [\x00-\x09\x0b\x0c\x0e-\x7f]+)?\Z")
        for keyword in keywords:
            # ehlo-line = ehlo-keyword *( SP ehlo-param )
            self.assertRegex(keyword, r"\A[A-Za-z0-9][A-Za-z0-9-]*( [\x21-\x7e]+)*\Z")
        names = [keyword.split(" ")[0].upper() for keyword in keywords]
        self.assertEqual(len(names), len(set(names)), names)
        for name in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN", "SIZE"):
            self.assertIn(name, names)

    def test_5321_06_heloNameNeedNotMatchReverseDns(self) -> None:
        """
        A client whose HELO or EHLO name (or address literal) is not what reverse DNS
        says of it still gets 250, and its messages are accepted (RFC 5321 section 4.1.4).
        """
        recorder = RecordingHandler()
        resolver = FakeResolver({"1.2.0.192.in-addr.arpa": "real.example.test"}, {})
        client = connect(recorder, resolver=resolver)
        self.assertEqual(client.session.clientHostname, "real.example.test")
        for command in ("EHLO liar.example", "HELO liar.example", "EHLO [203.0.113.9]"):
            self.assertEqual(codes(client.send(command)), [250], command)
            replies = client.sendmail(SENDER, [RECIPIENT], b"Subject: hi\r\n\r\nhello\r\n")
            self.assertEqual(codes(replies), [250, 250, 354, 250], command)
        self.assertEqual(len(recorder.messages), 3)

    def test_5321_08_noExtensionParametersAfterHelo(self) -> None:
        """
        After HELO no extension was negotiated, so MAIL and RCPT parameters get 555
        (RFC 5321 sections 4.1.1.1 and 4.1.1.11); the same commands without them work.
        """
        client = connect(size=1000, hideDSN=False)
        hello(client, "HELO")
        for parameter in ("SIZE=100", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS"):
            self.assertEqual(
                codes(client.send(f"MAIL FROM:<{SENDER}> {parameter}")), [555], parameter
            )
            self.assertIsNone(client.session.envelope.mailFrom, parameter)
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}>")), [250])
        self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}> NOTIFY=SUCCESS")), [555])
        self.assertEqual(client.session.envelope.rcptTo, ())
        self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}>")), [250])


class CommandTests(SynchronousTestCase):
    """
    Commands smtpsvc does not carry out, or carries out only in part (RFC 5321 sections
    3.5, 4.1.1.8, 4.2.4 and 7.3).
    """

    def test_5321_13_unimplementedVerbsGet502(self) -> None:
        """
        Commands of RFC 5321 that smtpsvc knows but does not implement (TURN, SEND, SOML,
        SAML), and a command switched off with disabledCommands, get 502 5.5.1; a verb
        nobody knows still gets 500.
        """
        client = connect(
            hideENHANCEDSTATUSCODES=False, disabledCommands=("HELP",), maxUnrecognizedCommands=None
        )
        hello(client)
        for command in (
            "TURN",
            f"SEND FROM:<{SENDER}>",
            f"SOML FROM:<{SENDER}>",
            f"SAML FROM:<{SENDER}>",
            "HELP",
        ):
            reply = client.send(command)[0]
            self.assertEqual((reply.code, enhanced(reply)), (502, "5.5.1"), command)
        self.assertEqual(codes(client.send("FOO")), [500])

    def test_5321_35_vrfyNeverClaimsVerification(self) -> None:
        """
        VRFY answers 252 2.1.5, never 250, whatever the address, even one the handlers
        accept as a recipient; it leaves the transaction as it was.
        """
        client = connect(RecordingHandler(), hideENHANCEDSTATUSCODES=False)
        hello(client)
        self.assertEqual(
            codes(client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")), [250, 250]
        )
        for argument in ("c", RECIPIENT, f"<{RECIPIENT}>", '"c d"@d.example', "Postmaster"):
            reply = client.send(f"VRFY {argument}")[0]
            self.assertEqual((reply.code, enhanced(reply)), (252, "2.1.5"), argument)
        self.assertEqual(codes(client.send("DATA")), [354])
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])

    def test_5321_35_vrfyWithoutArgument(self) -> None:
        """
        VRFY takes an argument (vrfy = "VRFY" SP String CRLF): without one it is a syntax
        error, 501 5.5.4.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        for command in ("VRFY", "VRFY "):
            reply = client.send(command)[0]
            self.assertEqual((reply.code, enhanced(reply)), (501, "5.5.4"), repr(command))

    def test_5321_36_expnNeverExpands(self) -> None:
        """
        EXPN is refused as not implemented (502 5.5.1, as RFC 5321 section 3.5.3
        recommends), never with a list; the connection and the transaction carry on.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        for argument in ("staff", f"<{RECIPIENT}>"):
            reply = client.send(f"EXPN {argument}")[0]
            self.assertEqual((reply.code, enhanced(reply)), (502, "5.5.1"), argument)
        self.assertFalse(client.closed)
        self.assertEqual(codes(client.send("DATA")), [354])

    def test_5321_37_helpAnswers214(self) -> None:
        """
        HELP, with or without a topic, before the hello or inside a transaction, gets 214
        (2.0.0) and changes nothing.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(codes(client.send("HELP")), [214])
        hello(client)
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        for command in ("HELP", "HELP MAIL", "help rcpt"):
            reply = client.send(command)[0]
            self.assertEqual((reply.code, enhanced(reply)), (214, "2.0.0"), command)
        self.assertEqual(codes(client.send("DATA")), [354])


class ParameterTests(SynchronousTestCase):
    """
    MAIL and RCPT parameters (RFC 5321 section 4.1.1.11).
    """

    def test_5321_17_unknownParameterGets555(self) -> None:
        """
        A parameter no extension defines gets 555 5.5.4 on MAIL and on RCPT, and the
        command has no effect; the known parameters still work.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        reply = client.send(f"MAIL FROM:<{SENDER}> FOO=1")[0]
        self.assertEqual((reply.code, enhanced(reply)), (555, "5.5.4"))
        self.assertIsNone(client.session.envelope.mailFrom)
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}> BODY=8BITMIME")), [250])
        reply = client.send(f"RCPT TO:<{RECIPIENT}> FOO=1")[0]
        self.assertEqual((reply.code, enhanced(reply)), (555, "5.5.4"))
        self.assertEqual(client.session.envelope.rcptTo, ())
        self.assertEqual(codes(client.send(f"RCPT TO:<{RECIPIENT}>")), [250])


class RecipientLimitTests(SynchronousTestCase):
    """
    How many recipients one transaction may have (RFC 5321 section 4.5.3.1.10).
    """

    def test_5321_23_recipientLimitGets452(self) -> None:
        """
        The server takes at least 100 recipients and has a limit (at most 1000 here, as
        Postfix's): a recipient beyond it gets 452 4.5.3, not 552, and the transaction
        goes on with the recipients accepted.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        hello(client)
        client.send(f"MAIL FROM:<{SENDER}>")
        commands = [f"RCPT TO:<r{i}@d.example>" for i in range(1001)]
        replies: list[ServerReply] = []
        # Fewer than 100 lines a write, so that no write waits for the next reactor turn.
        for start in range(0, len(commands), 50):
            replies += client.send(*commands[start : start + 50])
        self.assertEqual(len(replies), 1001)
        accepted = codes(replies).count(250)
        self.assertGreaterEqual(accepted, 100)
        self.assertEqual(codes(replies[:accepted]), [250] * accepted)
        self.assertLess(accepted, 1001)
        for reply in replies[accepted:]:
            self.assertEqual((reply.code, enhanced(reply)), (452, "4.5.3"))
            self.assertIn("too many recipients", reply.text.lower())
        self.assertEqual(len(client.session.envelope.rcptTo), accepted)
        self.assertEqual(codes(client.send("DATA")), [354])
        self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [250])


class TraceTests(SynchronousTestCase):
    """
    The Received header of a final delivery (RFC 5321 section 4.4), as the built-in
    Maildir delivery writes it.
    """

    def deliver(
        self, hello: str, mail: str, *, authenticate: bool = False, **options: Any
    ) -> bytes:
        """
        Send L{TRAVELLED} to a new server with a Maildir delivery, after C{hello} (and
        AUTH if C{authenticate}), with C{mail} as MAIL command; return what was stored.
        """
        path = self.mktemp()
        delivery = MaildirDelivery(path, serverName=NAME, runInThread=runNow)
        client = connect(delivery, Alice(), allowInsecureAuth=True, **options)
        self.assertEqual(codes(client.send(hello)), [250])
        if authenticate:
            self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
        replies = client.send(mail, f"RCPT TO:<{RECIPIENT}>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        self.assertEqual(codes(client.write(stuff(TRAVELLED))), [250])
        [stored] = storedMessages(path)
        return stored

    def test_5321_29_receivedPrependedEarlierKept(self) -> None:
        """
        One Received header of ours goes on top (after the Return-Path of final
        delivery); the trace headers the message came with follow unchanged.
        """
        stored = self.deliver("EHLO client.example", f"MAIL FROM:<{SENDER}>")
        self.assertTrue(stored.endswith(TRAVELLED), stored)
        added = stored[: -len(TRAVELLED)].split(b"\r\n")
        self.assertEqual(added[0], f"Return-Path: <{SENDER}>".encode())
        self.assertTrue(added[1].startswith(b"Received: from client.example "), added)
        self.assertEqual(added[-1], b"")
        # The rest of what was added is the folded continuation of that one header.
        self.assertTrue(all(line.startswith(b"\t") for line in added[2:-1]), added)
        self.assertIn(f"by {NAME} ".encode(), stored[: -len(TRAVELLED)])
        traces = [line for line in stored.split(b"\r\n") if line.lower().startswith(b"received:")]
        self.assertEqual(len(traces), 3)

    def test_5321_29_receivedNamesTheProtocol(self) -> None:
        """
        The with clause names the protocol as RFC 3848 and RFC 6531 do: SMTP after HELO,
        ESMTP after EHLO, ESMTPA once authenticated, UTF8SMTP with SMTPUTF8, LMTP.
        """
        mail = f"MAIL FROM:<{SENDER}>"
        for helloCommand, command, options, protocol in (
            ("HELO client.example", mail, {}, "SMTP"),
            ("EHLO client.example", mail, {}, "ESMTP"),
            ("EHLO client.example", mail, {"authenticate": True}, "ESMTPA"),
            ("EHLO client.example", f"{mail} SMTPUTF8", {}, "UTF8SMTP"),
            ("LHLO client.example", mail, {"lmtp": True}, "LMTP"),
        ):
            stored = self.deliver(helloCommand, command, **options)
            header = stored[: -len(TRAVELLED)]
            self.assertIn(f" with {protocol} id ".encode(), header, protocol)

    def test_5321_29_bracketsOnlyAroundALiteral(self) -> None:
        """
        A hello name with brackets that are not one address literal (an unclosed
        C{[IPv6:...}, C{a]b[c}) has them neutralised in the from clause, so that they do
        not open a domain literal that swallows the TCP-info comment (IPv6 QA); an
        address literal stays as it is.
        """
        for command, clause in (
            ("EHLO [IPv6:2001:db8::1", b"Received: from ?ipv6:2001:db8::1 ([192.0.2.1])"),
            ("EHLO a]b[c", b"Received: from a?b?c ([192.0.2.1])"),
            ("EHLO [1.2.3.4", b"Received: from ?1.2.3.4 ([192.0.2.1])"),
            ("EHLO [192.0.2.9]", b"Received: from [192.0.2.9] ([192.0.2.1])"),
        ):
            stored = self.deliver(command, f"MAIL FROM:<{SENDER}>")
            self.assertIn(clause + b"\r\n", stored, command)


class RelayTraceTests(test_forward.ForwardTestCase):
    """
    What a relay adds to the message (RFC 5321 section 4.4), as the forwarding delivery
    relays it to a downstream server in memory.
    """

    def test_5321_30_relayAddsNoReturnPath(self) -> None:
        """
        A relay adds its Received header but no Return-Path, and passes on a message
        that already has one (or has none) as it is, without looking at it.
        """
        self.front(self.downstream)
        carrying = b"Return-Path: <earlier@elsewhere.example>\r\n" + TRAVELLED
        sent = [(SENDER, carrying), ("", TRAVELLED)]
        for sender, message in sent:
            replies = self.sendmail(sender, ["bob@example.net"], message)
            self.assertEqual(codes(replies), [250, 250, 354, 250], sender)
        self.assertEqual(len(self.recorder.messages), 2)
        for (_, message), received in zip(sent, self.recorder.messages, strict=True):
            data = received.data
            self.assertTrue(data.endswith(message), data)
            added = data[: -len(message)]
            self.assertTrue(added.startswith(b"Received: from client.example ("), added)
            self.assertNotIn(b"return-path", added.lower())
            self.assertEqual(data.count(b"Return-Path:"), message.count(b"Return-Path:"))


class LoopTests(SynchronousTestCase):
    """
    Mail loops (RFC 5321 section 6.3).
    """

    def test_5321_31_loopRejectedAtHundredReceived(self) -> None:
        """
        A message whose header has 100 Received fields is refused as a loop with
        554 5.4.6 and not delivered; 99 are fine, and Received lines in the body do not
        count.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        hello(client)
        body = b"Subject: looping\r\n\r\nhello\r\n"
        replies = client.sendmail(SENDER, [RECIPIENT], hops(99) + body)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        replies = client.sendmail(SENDER, [RECIPIENT], hops(100) + body)
        self.assertEqual(codes(replies[:3]), [250, 250, 354])
        self.assertEqual((replies[-1].code, enhanced(replies[-1])), (554, "5.4.6"))
        self.assertEqual(len(recorder.messages), 1)
        replies = client.sendmail(SENDER, [RECIPIENT], body + hops(150))
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(len(recorder.messages), 2)

    def test_5321_31_loopRefusedAfterBdatLast(self) -> None:
        """
        Sent in BDAT chunks, with a field cut between them, the 100th Received field
        makes the reply to C{BDAT n LAST} 554 5.4.6; nothing is delivered, and the next
        message is accepted.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        hello(client)
        first = hops(60) + b"Recei"
        last = b"ved: from x.example\r\n" + hops(39) + b"Subject: looping\r\n\r\nhello\r\n"
        replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        replies += client.write(b"BDAT %d\r\n" % len(first) + first)
        self.assertEqual(codes(replies), [250, 250, 250])
        [reply] = client.write(b"BDAT %d LAST\r\n" % len(last) + last)
        self.assertEqual((reply.code, enhanced(reply)), (554, "5.4.6"))
        self.assertEqual(recorder.messages, [])
        message = hops(99) + b"\r\nhello\r\n"
        replies = client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")
        replies += client.write(b"BDAT %d LAST\r\n" % len(message) + message)
        self.assertEqual(codes(replies), [250, 250, 250])
        self.assertEqual(len(recorder.messages), 1)

    def test_5321_31_lmtpLoopRefusedForEachRecipient(self) -> None:
        """
        In LMTP each recipient gets its own 554 5.4.6 for a looping message.
        """
        recorder = RecordingHandler()
        client = connect(recorder, lmtp=True, hideENHANCEDSTATUSCODES=False)
        hello(client, "LHLO")
        replies = client.sendmail(SENDER, [RECIPIENT, "e@d.example"], hops(100) + b"\r\nhi\r\n")
        self.assertEqual(codes(replies[:4]), [250, 250, 250, 354])
        self.assertEqual([(r.code, enhanced(r)) for r in replies[4:]], [(554, "5.4.6")] * 2)
        self.assertEqual(recorder.messages, [])

    def test_5321_31_limitIsAnOption(self) -> None:
        """
        C{maxReceivedHeaders} sets the number of Received fields that is a loop; unset,
        any number passes.
        """
        recorder = RecordingHandler()
        client = connect(recorder, maxReceivedHeaders=5)
        hello(client)
        self.assertEqual(codes(client.sendmail(SENDER, [RECIPIENT], hops(4))), [250, 250, 354, 250])
        self.assertEqual(codes(client.sendmail(SENDER, [RECIPIENT], hops(5))), [250, 250, 354, 554])
        client = connect(recorder, maxReceivedHeaders=None)
        hello(client)
        replies = client.sendmail(SENDER, [RECIPIENT], hops(300))
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(len(recorder.messages), 2)


class ConnectionTests(SynchronousTestCase):
    """
    When the server may close the connection (RFC 5321 sections 3.8 and 4.5.3.2.7).
    """

    def test_5321_38_errorsNeverCloseWithout421(self) -> None:
        """
        Syntax errors, sequence errors and refusals of senders, recipients and messages
        leave the connection open however many there are when maxErrors is off; only an
        error limit closes it, after a 421 4.7.0 (see also test_maxErrors).
        """
        client = connect(Grumpy(), hideENHANCEDSTATUSCODES=False, maxErrors=None)
        hello(client)
        for _ in range(10):
            replies = client.send(
                "MAIL FROM:<a@@b>",
                f"RCPT TO:<{RECIPIENT}>",
                "DATA",
                f"MAIL FROM:<{SENDER}>",
                f"MAIL FROM:<{SENDER}>",
                "RCPT TO:<nobody@d.example>",
                f"RCPT TO:<{RECIPIENT}>",
                "DATA",
            )
            self.assertEqual(codes(replies), [501, 503, 503, 250, 503, 550, 250, 354])
            self.assertEqual(codes(client.write(b"x\r\n.\r\n")), [554])
            self.assertEqual(codes(client.send("EHLO", "STARTTLS now")), [501, 501])
            self.assertFalse(client.closed)
        self.assertEqual(codes(client.send("NOOP")), [250])
        self.assertEqual(codes(client.send(*["FOO"] * 9)), [500] * 9)
        self.assertFalse(client.closed)
        [last] = client.send("FOO")
        self.assertEqual(last, ServerReply(421, ("4.7.0 Error: too many unrecognized commands",)))
        self.assertTrue(client.closed)

    def test_5321_40_tricklingCommandHitsDeadline(self) -> None:
        """
        With the timeout at five minutes an idle client is kept for just under five
        minutes between commands; but a client that trickles one byte of a command every
        20 seconds does not keep the connection for ever: it gets 421 within the timeout
        of starting the command.
        """
        client = connect(socketTimeout=300)
        hello(client)
        client.clock.advance(299)
        self.assertEqual(codes(client.send("NOOP")), [250])
        client.clock.advance(299)
        self.assertFalse(client.closed)
        start = client.clock.seconds()
        replies: list[ServerReply] = []
        for byte in b"MAIL FROM:<trickle@slow.example>":
            replies += client.write(bytes([byte]))
            if client.closed:
                break
            client.clock.advance(20)
            replies += client.received()
            if client.closed:
                break
        self.assertTrue(client.closed)
        self.assertEqual(codes(replies), [421])
        self.assertLessEqual(client.clock.seconds() - start, 300 + 20)

    def test_5321_40_tricklingMessageHitsDeadline(self) -> None:
        """
        A message sent one byte every 50 seconds after DATA (or inside a BDAT chunk),
        never idle for the minute of the timeout, still gets 421 4.4.2 once it falls
        behind C{minDataRate}: a minute plus a second per 500 bytes.  Its handlers see
        it aborted.
        """
        for start in (["DATA"], []):
            recorder = RecordingHandler()
            client = connect(recorder, socketTimeout=60, hideENHANCEDSTATUSCODES=False)
            hello(client)
            self.assertEqual(
                codes(client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", *start)),
                [250, 250, 354] if start else [250, 250],
                start,
            )
            if not start:
                self.assertEqual(client.write(b"BDAT 1000 LAST\r\n"), [])
            began = client.clock.seconds()
            replies: list[ServerReply] = []
            while not client.closed and client.clock.seconds() - began < 600:
                replies += client.write(b"x")
                client.clock.advance(50)
                replies += client.received()
            self.assertEqual(
                replies, [ServerReply(421, ("4.4.2 Timeout - closing connection",))], start
            )
            self.assertLessEqual(client.clock.seconds() - began, 60 + 50, start)
            self.assertEqual(recorder.messages, [], start)

    def test_5321_40_chunkedTrickleHitsDeadline(self) -> None:
        """
        Pauses the client causes (here, the server's own pause after every hundred
        commands read in one go) do not give it a fresh allowance: a client that sends a
        hundred one-byte BDAT chunks every 55 seconds is cut off once its message falls
        behind C{minDataRate}.
        """
        client = connect(socketTimeout=60, hideENHANCEDSTATUSCODES=False)
        hello(client)
        self.assertEqual(
            codes(client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>")), [250, 250]
        )
        began = client.clock.seconds()
        replies: list[ServerReply] = []
        while not client.closed and client.clock.seconds() - began < 600:
            replies += client.write(b"BDAT 1\r\nx" * 100)
            client.clock.advance(0)
            client.clock.advance(55)
            replies += client.received()
        self.assertTrue(client.closed)
        # Every chunk before the deadline was taken: the server did not cut the client
        # off at its own first pause.
        self.assertEqual(set(codes(replies[:-1])), {250})
        self.assertEqual(replies[-1], ServerReply(421, ("4.4.2 Timeout - closing connection",)))
        self.assertGreaterEqual(client.clock.seconds() - began, 60)
        self.assertLessEqual(client.clock.seconds() - began, 60 + 1 + 55)

    def test_5321_40_serverPausesNotCounted(self) -> None:
        """
        Time the server does not read (a data handler not keeping up) does not count
        against C{minDataRate}: the client cannot send faster than it is read.
        """
        handler = LateReader()
        client = connect(handler, socketTimeout=60, minDataRate=100_000)
        hello(client)
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        self.assertEqual(client.write(b"x" * 300_000 + b"\r\n"), [])
        self.assertTrue(client.protocol.paused)
        client.clock.advance(50)
        handler.gate.callback(None)
        for _ in range(3):
            self.assertEqual(client.write(b"y" * 1000 + b"\r\n"), [])
            client.clock.advance(10)
            self.assertFalse(client.closed)
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(len(handler.messages), 1)

    def test_5321_40_pauseUnderWayNotCounted(self) -> None:
        """
        Nor is the time of a pause still under way: a client that sent slowly, then
        waited on a data handler past the point where its message would have fallen
        behind C{minDataRate}, is not cut off while it waits, and its message is
        received once the handler reads it.
        """
        handler = LateReader()
        client = connect(handler, socketTimeout=60, minDataRate=100_000)
        hello(client)
        client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        for _ in range(5):
            # 300 kB in 40 seconds: a deadline of 63 seconds, and the handler reads none.
            self.assertEqual(client.write(b"x" * 59_998 + b"\r\n"), [])
            client.clock.advance(10)
        self.assertTrue(client.protocol.paused)
        client.clock.advance(30)
        self.assertFalse(client.closed)
        handler.gate.callback(None)
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(len(handler.messages[0]), 300_000)

    def test_5321_40_handlersAfterTheEndNotCounted(self) -> None:
        """
        Once the client has sent the whole message (the final dot, or the last BDAT
        chunk), the time its data handlers take is not held against C{minDataRate}: a
        message sent just inside its allowance gets the handler's 250, not 421, however
        long after the allowance the handler answers.
        """

        @implementer(IDataHandler)
        class SlowStore:
            def __init__(self) -> None:
                self.messages: list[bytes] = []

            async def onData(self, stream: IMessageStream, session: Session) -> None:
                self.messages.append(await readMessage(stream))
                await deferLater(client.clock, 5, lambda: None)

        message = b"Subject: x\r\n\r\nhello\r\n"
        for start, body in (
            (["DATA"], stuff(message)),
            ([], b"BDAT %d LAST\r\n" % len(message) + message),
        ):
            handler = SlowStore()
            client = connect(handler, socketTimeout=60, minDataRate=500)
            hello(client)
            client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", *start)
            # The allowance is 60 seconds and a little: the message comes at 58.
            client.clock.advance(58)
            self.assertEqual(client.write(body), [], start)
            replies: list[ServerReply] = []
            for _ in range(10):
                client.clock.advance(1)
                replies += client.received()
            self.assertEqual(codes(replies), [250], start)
            self.assertEqual(handler.messages, [message], start)

    def test_5321_40_steadyMessageKept(self) -> None:
        """
        A message that arrives at 1000 bytes a second, over three times the timeout, is
        received; with C{minDataRate} unset even a trickle is (each byte in time).
        """
        for rate, step in ((500, b"y" * 1000), (None, b"y")):
            recorder = RecordingHandler()
            client = connect(recorder, socketTimeout=60, minDataRate=rate)
            hello(client)
            client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
            for _ in range(200):
                self.assertEqual(client.write(step + b"\r\n"), [], rate)
                client.clock.advance(1 if rate else 50)
            self.assertEqual(codes(client.write(b".\r\n")), [250], rate)
            self.assertEqual(len(recorder.messages), 1)

    def test_5321_40_slowClientWithWholeCommandsKept(self) -> None:
        """
        A slow client that sends each whole command 50 seconds after the last reply,
        with the timeout at a minute, is served to the end however long that takes.
        """
        recorder = RecordingHandler()
        client = connect(recorder, socketTimeout=60)
        hello(client)
        steps: list[tuple[bytes, list[int]]] = [
            (b"MAIL FROM:<%s>\r\n" % SENDER.encode(), [250]),
            (b"RCPT TO:<%s>\r\n" % RECIPIENT.encode(), [250]),
            (b"DATA\r\n", [354]),
            (b"Subject: slow\r\n\r\nhello\r\n.\r\n", [250]),
            *[(b"NOOP\r\n", [250])] * 5,
            (b"QUIT\r\n", [221]),
        ]
        for data, expected in steps:
            client.clock.advance(50)
            self.assertFalse(client.closed)
            self.assertEqual(codes(client.write(data)), expected, data)
        self.assertEqual(len(recorder.messages), 1)

    def test_5321_40_commandDeadlineFromItsFirstByte(self) -> None:
        """
        A command sent in pieces is fine if it is complete within the timeout of its
        first byte, each time; one that is not gets 421 4.4.2 then, although its last
        byte came only half a timeout ago.
        """
        client = connect(socketTimeout=60, hideENHANCEDSTATUSCODES=False)
        hello(client)
        for _ in range(5):
            self.assertEqual(client.write(b"NO"), [])
            client.clock.advance(50)
            self.assertEqual(codes(client.write(b"OP\r\n")), [250])
            client.clock.advance(50)
        self.assertFalse(client.closed)
        client.write(b"N")
        client.clock.advance(30)
        client.write(b"O")
        client.clock.advance(29)
        self.assertEqual((client.received(), client.closed), ([], False))
        client.clock.advance(1)
        [reply] = client.received()
        self.assertEqual((reply.code, enhanced(reply)), (421, "4.4.2"))
        self.assertTrue(client.closed)

    def test_5321_41_shutdownAnswers421WithCode432(self) -> None:
        """
        When the server shuts down, an idle client is told 421 4.3.2 at once; a client
        in a transaction may finish its message, and its next command gets 421 4.3.2;
        each connection then closes.
        """
        recorder = RecordingHandler()
        server = makeServer([recorder], hideENHANCEDSTATUSCODES=False)
        idle, busy = MemoryClient(server), MemoryClient(server)
        hello(idle)
        hello(busy)
        replies = busy.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        closed = server.close()
        goodbye = ServerReply(421, ("4.3.2 Server shutting down",))
        self.assertEqual(idle.received(), [goodbye])
        self.assertTrue(idle.closed)
        self.assertEqual(busy.received(), [])
        self.assertEqual(codes(busy.write(b"x\r\n.\r\n")), [250])
        self.assertEqual(len(recorder.messages), 1)
        self.assertEqual(busy.send("NOOP"), [goodbye])
        self.assertTrue(busy.closed)
        self.successResultOf(closed)
