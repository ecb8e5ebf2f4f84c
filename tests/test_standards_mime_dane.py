"""
The standards tests for RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), DANE (RFC 7672) and
MTA-STS (RFC 8461) that no other module covers: each test is named after its row in the
standards checklist (sections 1.9, 1.10 and 1.17).

The protocol rows are driven over the wire in memory (L{MemoryClient}, or real TLS through
L{tests.memorytls}); the start-up check of STS-01 goes through the C{twist smtpsvc}
command line in this process; STS-02 runs C{posttls-finger} against C{twist smtpsvc} on
127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    Address,
    IDataHandler,
    IMessageStream,
    IRcptToHandler,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
    tap,
)
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.testing import MemoryClient, RecordingHandler, stuff

from . import protocol_support
from .auth_support import Alice, authPlain
from .e2e_support import (
    CLIENT_NAME,
    LISTEN,
    LOCALHOST,
    E2ETestCase,
    LogCapture,
    runCommand,
    startTwist,
    workspace,
)
from .maildir_support import receivedHeader, runNow, storedMessages, withClause
from .memorytls import ClientTLS, Connection, KeyPair, certify, connectTLS, upgraded
from .protocol_support import NAME, RECIPIENT, SENDER, codes, wire

MX = "mx.example.test"
#: The examples of standards 6531-02: a Chinese sender and a Greek recipient.
UTF8_SENDER = "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a"
UTF8_RECIPIENT = (
    "\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae@"
    "\u03c0\u03b1\u03c1\u03ac\u03b4\u03b5\u03b9\u03b3\u03bc\u03b1."
    "\u03b4\u03bf\u03ba\u03b9\u03bc\u03ae"
)
#: Every octet with the high bit set.
EIGHT_BIT = bytes(range(0x80, 0x100))


#: A server (see L{protocol_support.makeServer}) that greets at once.
makeServer = partial(protocol_support.makeServer, earlyTalkerDelay=0)
#: A client that said EHLO (LHLO in LMTP) to a new server that greets at once.
connect = partial(protocol_support.connect, clientName="client.example", earlyTalkerDelay=0)


def domainOf(length: int) -> str:
    """
    A valid domain name of exactly C{length} octets (labels of at most 63).
    """
    labels = []
    while length > 63:
        labels.append("d" * 62)
        length -= 63
    labels.append("e" * length)
    return ".".join(labels)


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """
    A root CA, an intermediate CA it signed, and a server certificate for L{MX} that the
    intermediate signed: the shape of a WebPKI chain, and of a DANE-TA(2) deployment.
    """

    root: KeyPair
    intermediate: KeyPair
    leaf: KeyPair


def hierarchy(name: str = MX) -> Hierarchy:
    """
    A new root, intermediate and server certificate for C{name}.
    """
    root = certify("smtpsvc standards root", authority=True)
    intermediate = certify("smtpsvc standards intermediate", root, authority=True)
    return Hierarchy(root, intermediate, certify(name, intermediate))


def servedChain(connection: Connection) -> list[x509.Certificate]:
    """
    The certificates the server sent in its handshake, leaf first (client side).
    """
    chain = connection.clientTransport.getHandle().get_peer_cert_chain(as_cryptography=True)
    assert chain is not None
    return list(chain)


def upgrade(server: SMTPServer, servername: str | None = None) -> Connection:
    """
    A connection to C{server} that did STARTTLS with C{servername} as SNI (see
    L{upgraded}) and said EHLO again inside TLS.
    """
    connection = upgraded(server, servername)
    assert connection.session.secure
    hello = connection.send("EHLO client.example")
    assert codes(hello) == [250], hello
    return connection


# -- handlers -------------------------------------------------------------------------------


@implementer(IRcptToHandler)
class Moved:
    """
    Refuses every recipient with C{551 User not local; please try <forward>}.
    """

    def __init__(self, forward: str) -> None:
        self.forward = forward

    def onRcptTo(self, address: Address, session: Session) -> None:
        raise SMTPError(551, f"User not local; please try <{self.forward}>", "5.1.6")


@implementer(IRcptToHandler)
class Refuses:
    """
    Refuses every recipient with a 550 whose text is not ASCII.
    """

    def onRcptTo(self, address: Address, session: Session) -> None:
        raise SMTPError(550, f"Empf\u00e4nger {address.address} unbekannt", "5.1.1")


@implementer(IDataHandler)
class AcceptsInGreek:
    """
    Reads each message and accepts it with a text that is not ASCII.
    """

    async def onData(self, stream: IMessageStream, session: Session) -> str:
        await readMessage(stream)
        return f"OK: \u03b5\u03bb\u03ae\u03c6\u03b8\u03b7 \u03b3\u03b9\u03b1 {UTF8_RECIPIENT}"


# -- RFC 6152 (8BITMIME) --------------------------------------------------------------------


class EightBitMimeTests(SynchronousTestCase):
    """
    RFC 6152: 8BITMIME is offered, BODY is checked, and 8-bit content arrives untouched
    (standards section 1.9).
    """

    def test_6152_01_ehloAndLhloAdvertise8bitmime(self) -> None:
        """
        EHLO and LHLO list 8BITMIME on a line of its own; hide8BITMIME takes it off the
        list, and BODY=8BITMIME is still accepted then (the reference's hide8BITMIME).
        """
        for lmtp, hello in ((False, b"EHLO x\r\n"), (True, b"LHLO x\r\n")):
            client = MemoryClient(makeServer(lmtp=lmtp))
            client.protocol.dataReceived(hello)
            self.assertIn(b"\r\n250-8BITMIME\r\n", client.transport.value())
        hidden = connect(hide8BITMIME=True, hideENHANCEDSTATUSCODES=False)
        self.assertNotIn("8BITMIME", hidden.send("EHLO x")[0].lines)
        self.assertEqual(
            wire(hidden.send(f"MAIL FROM:<{SENDER}> BODY=8BITMIME")[0]), "250 2.1.0 Accepted"
        )
        self.assertEqual(hidden.session.envelope.bodyType, "8bitmime")

    def test_6152_02_bodyValuesAcceptedInAnyCase(self) -> None:
        """
        BODY=8BITMIME and BODY=7BIT, in any case, get 250 and set the envelope's body type.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        for value, bodyType in (
            ("8BITMIME", "8bitmime"),
            ("8bitmime", "8bitmime"),
            ("8BitMime", "8bitmime"),
            ("7BIT", "7bit"),
            ("7bit", "7bit"),
            ("7Bit", "7bit"),
        ):
            reply = client.send(f"MAIL FROM:<{SENDER}> BODY={value}")[0]
            self.assertEqual(wire(reply), "250 2.1.0 Accepted", value)
            self.assertEqual(client.session.envelope.bodyType, bodyType, value)
            self.assertEqual(codes(client.send("RSET")), [250])

    def test_6152_04_binaryMimeRefusedWith555(self) -> None:
        """
        BODY=BINARYMIME, which smtpsvc does not offer, is a parameter value it cannot
        implement: 555 5.5.4 (RFC 5321 section 4.1.1.11), and no transaction starts.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        for value in ("BINARYMIME", "binarymime"):
            reply = client.send(f"MAIL FROM:<{SENDER}> BODY={value}")[0]
            self.assertEqual((reply.code, reply.lines[0][:6]), (555, "5.5.4 "), value)
            self.assertEqual(wire(client.send(f"RCPT TO:<{RECIPIENT}>")[0])[:3], "503")

    def test_6152_05_crlfAndLineLengthRulesStillApply(self) -> None:
        """
        BODY=8BITMIME relaxes nothing but the high bit: a bare LF is still refused under
        the reject policy (and made CRLF under normalize), and a line over 998 octets is
        streamed as it is, the same as without BODY (no folding, no re-encoding).
        """
        refusing = RecordingHandler()
        client = connect(refusing, bareLineEndings="reject", hideENHANCEDSTATUSCODES=False)
        client.send(f"MAIL FROM:<{SENDER}> BODY=8BITMIME", f"RCPT TO:<{RECIPIENT}>")
        self.assertEqual(codes(client.send("DATA")), [354])
        final = client.write(stuff(EIGHT_BIT + b"\nbare LF\r\n"))
        self.assertEqual(
            [wire(r) for r in final],
            ["550 5.5.2 Error: bare <CR> or <LF> received in message data"],
        )
        self.assertEqual(refusing.messages, [])

        recorder = RecordingHandler()
        client = connect(recorder)
        longLine = EIGHT_BIT * 16
        self.assertGreater(len(longLine), 998)
        client.send(f"MAIL FROM:<{SENDER}> BODY=8BITMIME", f"RCPT TO:<{RECIPIENT}>")
        client.send("DATA")
        final = client.write(stuff(longLine + b"\r\n" + EIGHT_BIT + b"\nend\r\n"))
        self.assertEqual(codes(final), [250])
        self.assertEqual(recorder.messages[0].data, longLine + b"\r\n" + EIGHT_BIT + b"\r\nend\r\n")
        self.assertEqual(recorder.messages[0].envelope.bodyType, "8bitmime")

    def test_6152_06_eightBitWithoutBodyParameterPreserved(self) -> None:
        """
        8-bit content sent without BODY=8BITMIME is accepted and kept byte for byte, not
        stripped; the envelope says what was declared: 7bit.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        message = b"Subject: caf\xc3\xa9\r\n\r\n" + EIGHT_BIT + b"\r\n\xff\xfe\r\n"
        replies = client.sendmail(SENDER, [RECIPIENT], message)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(recorder.messages[0].data, message)
        self.assertEqual(recorder.messages[0].envelope.bodyType, "7bit")


# -- RFC 6531 (SMTPUTF8) --------------------------------------------------------------------


class SMTPUTF8Tests(SynchronousTestCase):
    """
    RFC 6531: SMTPUTF8 offered, ASCII replies, trace stamps, line length, EHLO names
    (standards section 1.10).
    """

    def test_6531_01_advertisedWithoutParameter(self) -> None:
        """
        EHLO and LHLO list SMTPUTF8 alone on its line, with 8BITMIME also listed;
        hideSMTPUTF8 takes it off the list and the parameter is still accepted.
        """
        for lmtp, hello in ((False, b"EHLO x\r\n"), (True, b"LHLO x\r\n")):
            client = MemoryClient(makeServer(lmtp=lmtp))
            client.protocol.dataReceived(hello)
            sent = client.transport.value()
            self.assertIn(b"\r\n250-SMTPUTF8\r\n", sent)
            self.assertIn(b"\r\n250-8BITMIME\r\n", sent)
        hidden = connect(hideSMTPUTF8=True)
        self.assertNotIn("SMTPUTF8", hidden.send("EHLO x")[0].lines)
        self.assertEqual(codes(hidden.send(f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8")), [250])

    def test_6531_06_repliesNeverCarryUtf8(self) -> None:
        """
        Reply text a handler gives in UTF-8, refusing a recipient or accepting a message,
        goes out as ASCII, with or without SMTPUTF8 on MAIL.
        """
        for mail, recipient in (
            (f"MAIL FROM:<{SENDER}>", RECIPIENT),
            (f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8", UTF8_RECIPIENT),
        ):
            refusing = connect(Refuses(), hideENHANCEDSTATUSCODES=False)
            self.assertEqual(codes(refusing.send(mail)), [250])
            refusing.protocol.dataReceived(f"RCPT TO:<{recipient}>\r\n".encode())
            sent = refusing.transport.value()
            self.assertTrue(sent.startswith(b"550 5.1.1 Empf"), sent)
            self.assertTrue(sent.isascii(), sent)

            accepting = connect(AcceptsInGreek())
            replies = accepting.send(mail, f"RCPT TO:<{recipient}>", "DATA")
            self.assertEqual(codes(replies), [250, 250, 354])
            accepting.protocol.dataReceived(b"x\r\n.\r\n")
            sent = accepting.transport.value()
            self.assertTrue(sent.startswith(b"250 OK: "), sent)
            self.assertTrue(sent.isascii(), sent)

    def test_6531_06_userNotLocalBecomes550WithoutSmtputf8(self) -> None:
        """
        Without SMTPUTF8 on MAIL, a handler's 551 naming a UTF-8 forward-path goes out
        as 550 (RFC 6531 section 3.7.4), with 5.1.6 (mailbox moved, no forwarding
        address) or 5.6.8 (a UTF-8 reply is needed but not allowed); a 551 with an ASCII
        forward-path, or after SMTPUTF8, stays 551, and after SMTPUTF8 names the
        forward-path in UTF-8 (LMTP QA: it went out with ? for each non-ASCII
        character).  Any other reply stays ASCII after SMTPUTF8 too.
        """
        client = connect(Moved(UTF8_RECIPIENT), hideENHANCEDSTATUSCODES=False)
        client.send(f"MAIL FROM:<{SENDER}>")
        reply = client.send(f"RCPT TO:<{RECIPIENT}>")[0]
        self.assertEqual(reply.code, 550)
        self.assertIn(reply.lines[0][:6], ("5.1.6 ", "5.6.8 "))
        self.assertTrue(client.transport.value().isascii())
        client.send("RSET", f"MAIL FROM:<{SENDER}> SMTPUTF8")
        client.transport.clear()
        client.protocol.dataReceived(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
        self.assertEqual(
            client.transport.value(),
            f"551 5.1.6 User not local; please try <{UTF8_RECIPIENT}>\r\n".encode(),
        )

        @implementer(IRcptToHandler)
        class Unknown:
            def onRcptTo(self, address: Address, session: Session) -> None:
                raise SMTPError(550, f"No {UTF8_RECIPIENT} here")

        other = connect(Unknown())
        other.send(f"MAIL FROM:<{SENDER}> SMTPUTF8")
        other.transport.clear()
        other.protocol.dataReceived(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
        sent = other.transport.value()
        self.assertTrue(sent.startswith(b"550 No ") and sent.isascii(), sent)
        self.assertIn(b"?", sent)
        asciiPath = connect(Moved("c@new.example"))
        asciiPath.send(f"MAIL FROM:<{SENDER}>")
        self.assertEqual(
            wire(asciiPath.send(f"RCPT TO:<{RECIPIENT}>")[0]),
            "551 User not local; please try <c@new.example>",
        )

    def test_6531_06_longUtf8ReplyCutByOctets(self) -> None:
        """
        A long 551 in UTF-8 is cut into reply lines of at most 512 octets, CRLF included
        (RFC 5321 section 4.5.3.1.5), counted in octets, not characters (attack QA: lines
        reached 894 octets), and none splits a character.
        """
        words = " ".join(["\u00fc\u00e9\u20ac" * 20] * 12)
        client = connect(Moved(f"{UTF8_RECIPIENT}> ({words})"), hideENHANCEDSTATUSCODES=False)
        client.send(f"MAIL FROM:<{SENDER}> SMTPUTF8")
        client.transport.clear()
        client.protocol.dataReceived(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
        lines = client.transport.value().split(b"\r\n")[:-1]
        self.assertGreater(len(lines), 2)
        self.assertTrue(all(len(line) + 2 <= 512 for line in lines), [len(x) for x in lines])
        text = " ".join(line[10:].decode("utf-8") for line in lines)
        self.assertEqual(
            text.split(), f"User not local; please try <{UTF8_RECIPIENT}> ({words})>".split()
        )

    def test_6531_07_vrfyAnswersAscii252(self) -> None:
        """
        VRFY of a UTF-8 name gets the reference's 252 in ASCII, with the SMTPUTF8
        parameter or without it (so no UTF-8 answer is ever needed).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        for command in (f"VRFY {UTF8_SENDER.split('@')[0]} SMTPUTF8", f"VRFY {UTF8_SENDER}"):
            client.transport.clear()
            client.protocol.dataReceived(command.encode("utf-8") + b"\r\n")
            self.assertEqual(
                client.transport.value(),
                b"252 2.1.5 Try to send something. No promises though\r\n",
            )

    def delivered(self, connect: Callable[[MaildirDelivery], Any], mail: str, rcpt: str) -> bytes:
        """
        The C{Received:} header (unfolded) of a message sent with C{mail} and C{rcpt} on
        the connection C{connect} makes for a server delivering into a new Maildir.
        """
        path = self.mktemp()
        connection = connect(MaildirDelivery(path, serverName=NAME, runInThread=runNow))
        replies = connection.send(mail, f"RCPT TO:<{rcpt}>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        self.assertEqual(codes(connection.write(b"Subject: x\r\n\r\nbody\r\n.\r\n")), [250])
        [stored] = storedMessages(path)
        return receivedHeader(stored)

    def test_6531_08_receivedStampsUtf8Smtp(self) -> None:
        """
        A message accepted with SMTPUTF8 is stamped C{with UTF8SMTP}, the recipient in
        the for clause in UTF-8; without SMTPUTF8 it is C{with ESMTP}.
        """
        utf8 = self.delivered(connect, f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8", UTF8_RECIPIENT)
        self.assertIn(f" by {NAME} (smtpsvc) with UTF8SMTP id ".encode(), utf8)
        self.assertIn(f" for <{UTF8_RECIPIENT}>; ".encode(), utf8)
        plain = self.delivered(connect, f"MAIL FROM:<{SENDER}>", RECIPIENT)
        self.assertIn(f" by {NAME} (smtpsvc) with ESMTP id ".encode(), plain)

    def test_6531_08_receivedStampsSecureAndAuthenticated(self) -> None:
        """
        After STARTTLS the stamp is C{UTF8SMTPS}; after AUTH C{UTF8SMTPA}; after both
        C{UTF8SMTPSA}.
        """

        def secure(delivery: MaildirDelivery) -> Connection:
            return upgrade(makeServer([delivery]))

        def authenticated(delivery: MaildirDelivery) -> MemoryClient:
            client = connect(Alice(), delivery, allowInsecureAuth=True)
            self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
            return client

        def both(delivery: MaildirDelivery) -> Connection:
            connection = upgrade(makeServer([Alice(), delivery]))
            self.assertEqual(codes(connection.send(authPlain("alice", "secret"))), [235])
            return connection

        mail = f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8"
        stamps = [
            withClause(self.delivered(how, mail, UTF8_RECIPIENT))
            for how in (secure, authenticated, both)
        ]
        self.assertEqual(stamps, ["UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA"])

    def test_6531_08_receivedStampsUtf8Lmtp(self) -> None:
        """
        An LMTP server stamps a message accepted with SMTPUTF8 C{with UTF8LMTP}.
        """

        def lmtp(delivery: MaildirDelivery) -> MemoryClient:
            return connect(delivery, lmtp=True)

        mail = f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8"
        self.assertIn(b" with UTF8LMTP id ", self.delivered(lmtp, mail, UTF8_RECIPIENT))

    def test_6531_09_mailLineTenOctetsLonger(self) -> None:
        """
        A MAIL line 10 octets over RFC 5321's 512 with SMTPUTF8 (UTF-8 counted in octets),
        made only of parameters smtpsvc offers, is accepted with the default options.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        # The longest path (256 octets with its brackets), then SIZE, BODY and AUTH=,
        # whose mailbox fills the line up to 520 octets before the CRLF.
        path = "\u00e9" * 32 + "@" + domainOf(189)
        head = f"MAIL FROM:<{path}> SMTPUTF8 SIZE=100 BODY=8BITMIME AUTH="
        submitter = f"{'a' * 64}@{domainOf(512 + 10 - 2 - len(head.encode()) - 65)}"
        line = head + submitter
        self.assertEqual((len(path.encode()) + 2, len(line.encode()) + 2), (256, 522))
        self.assertEqual(wire(client.send(line)[0]), "250 2.1.0 Accepted")
        envelope = client.session.envelope
        assert envelope.mailFrom is not None
        self.assertEqual(envelope.mailFrom.address, path)
        self.assertTrue(envelope.smtpUtf8)

    def test_6531_10_utf8EhloNameTakenAsALabels(self) -> None:
        """
        EHLO, HELO and LHLO with a U-label name (a machine's name as it is) are answered
        250, and the client is known by the A-label form, which is what trace headers and
        logs carry (differential QA: smtp-server takes the name as it is; refusing it, as
        before, left such a client unable to send at all).  A name with no A-label form,
        or one with the characters a header gives meaning to, still gets 501, without an
        enhanced code (RFC 2034 section 4 keeps them off hello replies), and the
        connection goes on.
        """
        for lmtp, verb in ((False, "EHLO"), (False, "HELO"), (True, "LHLO")):
            client = MemoryClient(makeServer(hideENHANCEDSTATUSCODES=False, lmtp=lmtp))
            self.assertEqual(
                codes(client.send(f"{verb} M\u00dcller-PC.b\u00fccher.example")), [250]
            )
            self.assertEqual(
                client.session.hostNameAppearsAs, "xn--mller-pc-65a.xn--bcher-kva.example"
            )
            for bad in ("\u00fc" * 64 + ".example", "m\u00fcller<pc>.example", "\u00fc@example"):
                reply = client.send(f"{verb} {bad}")[0]
                self.assertEqual(
                    wire(reply),
                    f"501 Error: {'Syntax' if verb == 'HELO' else 'syntax'}: {verb} hostname",
                    bad,
                )
                self.assertFalse(client.closed)
            self.assertEqual(
                client.session.hostNameAppearsAs, "xn--mller-pc-65a.xn--bcher-kva.example"
            )

    def test_utf8AddressWithoutSmtputf8LeavesNoTransaction(self) -> None:
        """
        Postfix's 2026 fix (standards 2.14): a UTF-8 address without SMTPUTF8 in VRFY,
        MAIL and RCPT leaves no half-made transaction behind, so DATA and its data get
        503 and nothing reaches the data handler; the connection goes on as if nothing
        had been sent, and a plain transaction after it is delivered.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        replies = client.send(
            f"VRFY <{UTF8_SENDER}>",
            f"MAIL FROM:<{UTF8_SENDER}>",
            f"RCPT TO:<{UTF8_RECIPIENT}>",
            "DATA",
            "Subject: crafted",
            ".",
        )
        self.assertEqual(codes(replies)[0], 252)
        self.assertEqual(wire(replies[1])[:9], "550 5.6.7")
        self.assertEqual([wire(reply)[:9] for reply in replies[2:4]], ["503 5.5.1"] * 2)
        # What would have been the message: read as two unknown commands.
        self.assertEqual([code // 100 for code in codes(replies[4:])], [5, 5])
        self.assertEqual(recorder.senders, [])
        self.assertEqual(recorder.messages, [])
        self.assertFalse(client.closed)
        self.assertEqual(
            codes(client.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")),
            [250, 250, 354],
        )
        self.assertEqual(codes(client.write(b"Subject: plain\r\n\r\nbody\r\n.\r\n")), [250])
        self.assertEqual(len(recorder.messages), 1)


# -- DANE (RFC 7672) ------------------------------------------------------------------------


class DANETests(SynchronousTestCase):
    """
    What a receiving server owes DANE senders (standards section 1.17).
    """

    def test_DANE_01_starttlsOfferedUnderLoad(self) -> None:
        """
        With every connection slot but one taken by clients at every stage of a
        transaction, the last client is still offered STARTTLS and completes it; the
        server sheds load by refusing connections with 421, never by dropping STARTTLS.
        """
        leaf = certify(MX)
        server = makeServer(maxClients=40, key=leaf.key, cert=leaf.cert)
        for n in range(39):
            client = MemoryClient(server, (f"198.51.100.{n}", 40000))
            ehlo = client.send("EHLO busy.example")[0]
            self.assertIn("STARTTLS", ehlo.lines, n)
            stage = n % 4
            if stage >= 1:
                client.send(f"MAIL FROM:<{SENDER}>")
            if stage >= 2:
                client.send(f"RCPT TO:<{RECIPIENT}>")
            if stage == 3:
                self.assertEqual(codes(client.send("DATA")), [354])
                client.write(b"a message in progress\r\n")
        self.assertEqual(server.connectionCount, 39)
        last = upgrade(server, MX)
        self.assertEqual(last.session.servername, MX)
        self.assertEqual(codes(last.send("NOOP")), [250])
        refused = MemoryClient(server, ("203.0.113.9", 40000))
        assert refused.greeting is not None
        self.assertEqual(refused.greeting.code, 421)
        self.assertTrue(refused.closed)

    def test_DANE_02_fullChainServed(self) -> None:
        """
        The certificate option's whole chain is sent in the handshake, in order: the
        intermediate after the server certificate, and the root too when it is included
        (as DANE-TA(2) with a digest of the root requires), for the default certificate,
        for an SNI certificate, and after the certificates are replaced.
        """
        ca = hierarchy()
        other = certify("b.example.test", ca.intermediate)
        server = makeServer(
            key=ca.leaf.key,
            cert=ca.leaf.cert + ca.intermediate.cert,
            sniOptions={
                "b.example.test": {
                    "key": other.key,
                    "cert": other.cert + ca.intermediate.cert + ca.root.cert,
                }
            },
        )
        self.assertEqual(
            servedChain(upgrade(server, MX)), [ca.leaf.certificate, ca.intermediate.certificate]
        )
        self.assertEqual(
            servedChain(upgrade(server, "b.example.test")),
            [other.certificate, ca.intermediate.certificate, ca.root.certificate],
        )
        renewed = certify(MX, ca.intermediate)
        server.updateSecureContext(
            key=renewed.key, cert=renewed.cert + ca.intermediate.cert + ca.root.cert
        )
        self.assertEqual(
            servedChain(upgrade(server)),
            [renewed.certificate, ca.intermediate.certificate, ca.root.certificate],
        )
        implicit = connectTLS(
            makeServer(secure=True, key=ca.leaf.key, cert=ca.leaf.cert + ca.intermediate.cert),
            creator=ClientTLS(MX),
        )
        self.assertEqual(servedChain(implicit), [ca.leaf.certificate, ca.intermediate.certificate])


# -- MTA-STS (RFC 8461) ---------------------------------------------------------------------


class MTASTSStartupCheckTests(SynchronousTestCase):
    """
    STS-01: C{twist smtpsvc} warns at start-up, and when it reloads its certificates,
    about a certificate MTA-STS senders would refuse: one that does not cover the server's
    name (or its SNI name) by a subjectAltName DNS-ID (a wildcard covering the leftmost
    label only), one that has expired or is not valid yet, or a TLS floor below 1.2.
    """

    def write(self, certificate: KeyPair, path: str | None = None) -> str:
        """
        Write C{certificate} and its key into one PEM file, a new one without C{path}.

        @return: the file's path.
        """
        if path is None:
            directory = self.mktemp()
            os.makedirs(directory)
            path = os.path.join(directory, "mx.pem")
        with open(path, "wb") as f:
            f.write(certificate.cert + certificate.key)
        return path

    def warned(self, capture: LogCapture) -> list[str]:
        """
        The warnings (and worse) C{capture} has seen, as text.
        """
        return [
            formatEvent(event)
            for event in capture.events
            if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]

    def options(self, name: str, path: str, *flags: str) -> tap.Options:
        """
        The parsed command line C{twist smtpsvc --name NAME --cert PATH FLAGS}.
        """
        options = tap.Options()
        options.parseOptions(["--name", name, "--cert", path, "--deliver", "discard", *flags])
        return options

    def warnings(self, certificate: KeyPair, name: str, *flags: str) -> list[str]:
        """
        The warnings logged while C{twist smtpsvc --name NAME --cert FILE FLAGS} parses
        its options and builds its service.
        """
        path = self.write(certificate)
        capture = LogCapture(self)
        tap.makeService(self.options(name, path, *flags))
        return self.warned(capture)

    def assertWarned(self, warnings: list[str], *fragments: str) -> None:
        """
        One of C{warnings} contains every one of C{fragments}.
        """
        if not any(all(f in w for f in fragments) for w in warnings):
            self.fail(f"no start-up warning with {fragments!r}; warnings: {warnings!r}")

    def assertNotWarned(self, warnings: list[str], fragment: str) -> None:
        """
        None of C{warnings} contains C{fragment}.
        """
        self.assertEqual([w for w in warnings if fragment in w], [])

    def test_STS_01_certificateNotCoveringNameWarned(self) -> None:
        """
        A certificate for another name is warned about, naming the server's name; one
        whose subjectAltName has the name is not.  A name only in the subject's CN does
        not count.
        """
        self.assertWarned(self.warnings(certify("other.example.test"), MX), MX, "does not cover")
        self.assertWarned(self.warnings(certify(MX, names=()), MX), MX, "does not cover")
        self.assertNotWarned(self.warnings(certify(MX), MX), "does not cover")

    def test_STS_01_wildcardCoversLeftmostLabelOnly(self) -> None:
        """
        C{*.example.test} covers C{mx.example.test} but not C{a.mx.example.test}.
        """
        wildcard = certify("*.example.test")
        self.assertNotWarned(self.warnings(wildcard, MX), "does not cover")
        self.assertWarned(
            self.warnings(wildcard, "a.mx.example.test"), "a.mx.example.test", "does not cover"
        )

    def test_STS_01_expiredCertificateWarned(self) -> None:
        """
        An expired certificate, and one not valid yet, are warned about; a current one
        is not.
        """
        self.assertWarned(self.warnings(certify(MX, validDays=(-30, -1)), MX), MX, "expired")
        self.assertWarned(self.warnings(certify(MX, validDays=(1, 30)), MX), MX, "not valid yet")
        current = self.warnings(certify(MX), MX)
        self.assertNotWarned(current, "expired")
        self.assertNotWarned(current, "not valid yet")

    def test_STS_01_tlsFloorBelow12Warned(self) -> None:
        """
        A minimum TLS version below 1.2 is warned about; the default (TLSv1.2) is not.
        """
        for version in ("TLSv1", "TLSv1.1"):
            self.assertWarned(
                self.warnings(certify(MX), MX, "--min-version", version), version, "TLSv1.2"
            )
        self.assertNotWarned(self.warnings(certify(MX), MX), "TLSv1.2")

    def test_STS_01_sniCertificatesChecked(self) -> None:
        """
        Each C{--sni} certificate is checked for its own host name; a wildcard entry
        needs the wildcard itself.
        """
        other = self.write(certify("other.example.test"))
        wildcard = self.write(certify("*.example.test"))
        warnings = self.warnings(
            certify(MX),
            MX,
            *("--sni", f"b.example.test={other}"),
            *("--sni", f"*.example.test={wildcard}"),
        )
        self.assertWarned(warnings, "b.example.test", "does not cover")
        self.assertNotWarned(warnings, f"does not cover {MX}")
        self.assertNotWarned(warnings, "does not cover *.example.test")

    def test_STS_01_reloadWarned(self) -> None:
        """
        Certificates read again on SIGHUP are checked too; an expired one is warned
        about, and served all the same.
        """
        path = self.write(certify(MX))
        capture = LogCapture(self)
        service: Any = tap.makeService(self.options(MX, path))
        self.assertEqual(self.warned(capture), [])
        expired = certify(MX, validDays=(-30, -1))
        self.write(expired, path)
        service.reload()
        self.assertWarned(self.warned(capture), MX, "expired")
        self.assertEqual(service.server.options.cert, expired.cert + expired.key)

    def test_STS_01_workersWarnOnce(self) -> None:
        """
        With C{--workers}, the parent warns, at start and on SIGHUP; the workers, which
        would say the same again each, do not.
        """
        path = self.write(certify("other.example.test"))
        capture = LogCapture(self)
        master: Any = tap.makeService(self.options(MX, path, "--workers", "2"))
        self.assertEqual(len(self.warned(capture)), 1)
        master._hangup()
        self.assertEqual(len(self.warned(capture)), 2)
        self.assertWarned(self.warned(capture)[1:], MX, "does not cover")
        inherited = socket.socket()
        self.addCleanup(inherited.close)
        worker: Any = tap.makeService(
            self.options(MX, path, "--inherit", f"{inherited.fileno()}:plain")
        )
        worker.reload()
        self.assertEqual(len(self.warned(capture)), 2)


class PosttlsFingerTests(E2ETestCase):
    """
    STS-02: Postfix's C{posttls-finger} verifies C{twist smtpsvc} at the levels MTA-STS
    and DANE senders use, over STARTTLS on 127.0.0.1.
    """

    async def finger(self, *args: str) -> str:
        """
        Serve L{MX}'s certificate and its chain from C{twist smtpsvc}, run
        C{posttls-finger ARGS} against it (C{%PORT%} in ARGS is replaced by the port),
        and return what it printed.
        """
        finger = shutil.which("posttls-finger") or (
            "/usr/sbin/posttls-finger" if os.access("/usr/sbin/posttls-finger", os.X_OK) else None
        )
        self.assertTrue(
            finger, "posttls-finger is not installed (apt-get install postfix; make test does)"
        )
        assert finger is not None
        tmpdir = workspace(self)
        ca = self.ca
        chain = Path(tmpdir, "mx.pem")
        chain.write_bytes(ca.leaf.cert + ca.intermediate.cert + ca.leaf.key)
        Path(tmpdir, "root.pem").write_bytes(ca.root.cert)
        Path(tmpdir, "intermediate.pem").write_bytes(ca.intermediate.cert)
        # posttls-finger reads main.cf; Postfix is not configured here, so give it one.
        config = Path(tmpdir, "postfix")
        config.mkdir()
        Path(config, "main.cf").write_text("")
        process = await startTwist(
            self,
            [
                *("--name", MX, "--cert", str(chain), "--listen", LISTEN),
                *("--deliver", "discard", "--early-talker-delay", "0"),
                "--disable-reverse-lookup",
            ],
            tmpdir,
        )
        argv = [
            finger,
            *("-c", "-o", f"myhostname={CLIENT_NAME}"),
            *(a.replace("%PORT%", str(process.port)) for a in args),
        ]
        result = await runCommand(argv, tmpdir, dict(os.environ, MAIL_CONFIG=str(config)))
        return result.stdout

    def setUp(self) -> None:
        self.ca = hierarchy()

    def assertVerified(self, output: str) -> None:
        """
        posttls-finger established a verified TLS connection, with TLS 1.2 or later.
        """
        peer = re.escape(f"{LOCALHOST}[{LOCALHOST}]")
        match = re.search(
            rf"Verified TLS connection established to {peer}:\d+: TLSv1\.[23] ", output
        )
        self.assertTrue(match, output)

    async def test_STS_02_secureLevel(self) -> None:
        """
        C{-l secure} trusting only the root (so the intermediate must come from the
        server) and matching the MX name verifies: what an MTA-STS sender checks.
        """
        output = await self.finger(
            *("-l", "secure", "-F", "root.pem", "-s", MX, f"[{LOCALHOST}]:%PORT%", MX)
        )
        self.assertIn(f"matched peername: {MX}", output)
        self.assertVerified(output)

    async def test_STS_02_daneLevel(self) -> None:
        """
        C{-l dane} verifies (with no TLSA records for an address literal it falls back to
        secure); matching the key against a C{3 1 1} digest, and the chain against the
        intermediate as trust anchor (DANE-TA), verifies too.
        """
        output = await self.finger(
            *("-l", "dane", "-F", "root.pem", "-s", MX, f"[{LOCALHOST}]:%PORT%", MX)
        )
        self.assertIn(f"matched peername: {MX}", output)
        self.assertVerified(output)
        digest = ":".join(re.findall("..", self.ca.leaf.spkiSha256.upper()))
        output = await self.finger(
            *("-l", "fingerprint", "-d", "sha256", "-s", MX, f"[{LOCALHOST}]:%PORT%", digest)
        )
        self.assertIn(f"Matched fingerprint: {digest.replace(':', '')}", output)
        self.assertVerified(output)
        output = await self.finger(
            *("-l", "secure", "-A", "intermediate.pem", "-s", MX, f"[{LOCALHOST}]:%PORT%", MX)
        )
        self.assertIn("Matched trust anchor at depth 1", output)
        self.assertVerified(output)
