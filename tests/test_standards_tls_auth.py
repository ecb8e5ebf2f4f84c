"""
The standards tests for RFC 3207 (STARTTLS), RFC 3461 (DSN), RFC 4954 (AUTH), RFC 8314
(implicit TLS) and RFC 8689 (REQUIRETLS) that no other module covers.

Each test is named after its row of the standards checklist (C{3207-05} becomes
C{test_3207_05_...}) and drives the exchange over the wire in memory: through
L{MemoryClient}, or with real TLS handshakes through L{tests.memorytls}; the relaying rows
use the in-memory network of L{tests.test_forward}.  Rows whose test lives in another
module are not repeated here.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    AuthRequest,
    IAuthHandler,
    IDataHandler,
    IMessageStream,
    ISecureHandler,
    ServerOptions,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
    tap,
)
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.testing import MemoryClient, ServerReply, stuff

from . import protocol_support, test_forward
from .auth_support import Alice, authPlain, b64, cramResponse
from .maildir_support import receivedHeader, runNow, storedMessages, withClause
from .memorytls import ClientTLS, Connection, authority, connectTLS, issue, saidHello, upgraded
from .protocol_support import RECIPIENT, SENDER, clientOf, codes, wire

MX = "mx.example.test"
MESSAGE = b"Subject: hello\r\n\r\nHello.\r\n"
#: A message that asks to be delivered even where TLS policy would refuse (RFC 8689).
TLS_OPTIONAL = b"TLS-Required: No\r\nSubject: hello\r\n\r\nHello.\r\n"
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
LACK_OF_SECURITY = "554 Command refused due to lack of security"
NEEDS_REQUIRETLS = "550 5.7.30 Error: REQUIRETLS support required"


def makeServer(handlers: Sequence[object] = (), **options: Any) -> SMTPServer:
    """
    A server for L{MX} (see L{protocol_support.makeServer}) with a certificate for it: it
    greets at once and answers failed AUTH without delay, unless C{options} say otherwise.
    """
    pair = issue(MX)
    options.setdefault("name", MX)
    options.setdefault("earlyTalkerDelay", 0)
    options.setdefault("authFailureDelay", 0)
    options.setdefault("key", pair.key)
    options.setdefault("cert", pair.cert)
    return protocol_support.makeServer(handlers, **options)


def connect(*handlers: object, **options: Any) -> MemoryClient:
    """
    A plaintext client of a new server with C{handlers}; it said EHLO.
    """
    return clientOf(makeServer(handlers, **options), "client.example")


def cramMD5(client: MemoryClient, user: str, secret: str) -> list[str]:
    """
    Authenticate with C{AUTH CRAM-MD5} as C{user} with C{secret}: the replies to the
    response, as they were sent.
    """
    [challenge] = client.send("AUTH CRAM-MD5")
    return [wire(r) for r in client.send(cramResponse(challenge, user, secret))]


def transaction(peer: MemoryClient | Connection, message: bytes = MESSAGE) -> list[ServerReply]:
    """
    One mail transaction from L{SENDER} to L{RECIPIENT}; every reply, the final one last.
    """
    replies = peer.send(f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA")
    if replies and replies[-1].code == 354:
        replies += peer.write(stuff(message))
    return replies


@implementer(IAuthHandler)
class MechanismPolicy:
    """
    The policies of RFC 4954 section 6: alice has no CRAM-MD5 secret yet, so CRAM-MD5
    needs a password transition (432) until she logs in once with PLAIN; bob may not use
    PLAIN, which is too weak for him (534), only CRAM-MD5.

    @ivar withCodes: whether the refusals name their enhanced codes, or leave them to
        the server.
    """

    def __init__(self, withCodes: bool = True) -> None:
        self.withCodes = withCodes

    def onAuth(self, auth: AuthRequest, session: Session) -> str:
        if auth.method == "CRAM-MD5" and auth.username == "alice":
            raise SMTPError(432, self._text("4.7.12", "A password transition is needed"))
        if auth.method == "PLAIN" and auth.username == "bob":
            raise SMTPError(534, self._text("5.7.9", "Authentication mechanism is too weak"))
        if auth.method == "PLAIN" and auth.username == "alice" and auth.validatePassword("secret"):
            return "alice"
        if auth.method == "CRAM-MD5" and auth.username == "bob" and auth.validatePassword("pw"):
            return "bob"
        raise SMTPError(535, "5.7.8 Error: Authentication credentials invalid")

    def _text(self, code: str, text: str) -> str:
        return f"{code} {text}" if self.withCodes else text


def policyClient(withCodes: bool = True, **options: Any) -> MemoryClient:
    """
    A client that said EHLO to a server with a L{MechanismPolicy} (C{withCodes} as
    given) offering PLAIN and CRAM-MD5 in clear, enhanced status codes shown.
    """
    return connect(
        MechanismPolicy(withCodes),
        allowInsecureAuth=True,
        hideENHANCEDSTATUSCODES=False,
        authMethods=("PLAIN", "CRAM-MD5"),
        **options,
    )


@implementer(ISecureHandler)
class ClientCertificatePolicy:
    """
    Serves only clients whose certificate verified (RFC 3207 section 4.1's policy).
    """

    def onSecure(self, session: Session, peerCertificate: object) -> None:
        if not session.peerCertificateVerified:
            raise SMTPError(554, "Command refused due to lack of security")


@implementer(IDataHandler)
class TagReader:
    """
    Reads each message whole, then notes what its envelope says about TLS: REQUIRETLS,
    and the tag for a C{TLS-Required: No} header (C{tlsRequiredNo}).

    @ivar seen: for each message, (requireTLS, tlsRequiredNo, the bytes).
    """

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bytes]] = []

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        data = await readMessage(stream)
        envelope = session.envelope
        self.seen.append((envelope.requireTLS, envelope.tlsRequiredNo, data))


class STARTTLSStandardsTests(SynchronousTestCase):
    """
    STARTTLS (RFC 3207; standards section 1.2).
    """

    def test_3207_09_everyCommandButFourNeedsStarttls(self) -> None:
        """
        A server that requires TLS answers 530 5.7.0 Must issue a STARTTLS command first
        to every command but NOOP, EHLO, STARTTLS and QUIT; after the handshake mail
        goes ahead.
        """
        server = makeServer(needsUpgrade=True, hideENHANCEDSTATUSCODES=False)
        connection, _ = saidHello(server)
        # RSET and HELO are left out: docs/tls.rst lets RSET through on purpose, and
        # Postfix lets HELO through; neither reveals anything or starts a transaction.
        for command in (
            f"MAIL FROM:<{SENDER}>",
            f"RCPT TO:<{RECIPIENT}>",
            "DATA",
            authPlain("alice", "secret"),
            "VRFY postmaster",
            "HELP",
        ):
            self.assertEqual([wire(r) for r in connection.send(command)], [MUST_STARTTLS], command)
        self.assertEqual(
            [wire(r) for r in connection.write(b"BDAT 5 LAST\r\nhello")], [MUST_STARTTLS]
        )
        self.assertEqual(codes(connection.send("NOOP", "EHLO client.example")), [250, 250])
        self.assertEqual(codes(connection.send("STARTTLS")), [220])
        connection.startTLS(ClientTLS())
        self.assertEqual(
            codes(connection.send("EHLO client.example", f"MAIL FROM:<{SENDER}>")), [250, 250]
        )
        other, _ = saidHello(server)
        self.assertEqual(codes(other.send("QUIT")), [221])
        self.assertTrue(other.closed)

    def test_3207_10_insecureSessionRefusedUntilQuit(self) -> None:
        """
        When the handshake succeeded but the server's policy is not met (a client
        certificate that did not verify), every command but QUIT gets 554 Command refused
        due to lack of security; QUIT gets 221.  A client whose certificate verified is
        served.
        """
        server = makeServer(
            [ClientCertificatePolicy()],
            requestCert=True,
            ca=authority().cert,
            rejectUnauthorized=False,
        )
        connection = upgraded(server)
        self.assertTrue(connection.session.secure)
        for command in ("EHLO client.example", f"MAIL FROM:<{SENDER}>", "NOOP"):
            self.assertEqual(
                [wire(r) for r in connection.send(command)], [LACK_OF_SECURITY], command
            )
            self.assertFalse(connection.closed, command)
        self.assertEqual(codes(connection.send("QUIT")), [221])
        self.assertTrue(connection.closed)

        trusted = upgraded(server, certificate=issue("client.example.test", client=True))
        self.assertEqual(
            codes(trusted.send("EHLO client.example", f"MAIL FROM:<{SENDER}>")), [250, 250]
        )

    def test_3207_11_mxNeverRequiresStarttls(self) -> None:
        """
        STARTTLS is never required by default: a server built by C{twist smtpsvc} for port
        25 offers STARTTLS and takes mail for its domain in clear.
        """
        self.assertFalse(ServerOptions().needsUpgrade)
        options = tap.Options()
        options.parseOptions(
            ["--listen", "tcp:25", "--domain", "example.org", "--deliver", "discard"]
        )
        server = tap.buildServer(options, reactor=Clock())
        self.assertFalse(server.options.needsUpgrade)
        client = MemoryClient(server)
        [ehlo] = client.send("EHLO client.example")
        self.assertIn("STARTTLS", ehlo.lines)
        replies = client.sendmail(SENDER, ["postmaster@example.org"], MESSAGE)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertFalse(client.session.secure)

    def test_3207_12_noPlaintextReplyAfterReady(self) -> None:
        """
        A client that sends SMTP in clear after 220 Ready to start TLS, or whose
        handshake fails, gets no SMTP reply: the connection closes.
        """
        connection, _ = saidHello(makeServer())
        self.assertEqual(codes(connection.send("STARTTLS")), [220])
        connection.clientTransport.write(b"EHLO client.example\r\n")
        connection.pump.flush()
        self.assertNotRegex(connection.client.data, rb"(\A|\r\n)[2-5][0-9][0-9][ -]")
        self.assertTrue(connection.closed)
        self.assertFalse(connection.session.secure)

        failed, _ = saidHello(makeServer())
        self.assertEqual(codes(failed.send("STARTTLS")), [220])
        failed.startTLS(ClientTLS(maxVersion=SSL.TLS1_1_VERSION))
        self.assertEqual(failed.client.replies(), [])
        self.assertTrue(failed.closed)
        self.assertFalse(failed.session.secure)

    def test_3207_13_receivedSaysEsmtps(self) -> None:
        """
        A message received after STARTTLS is stamped C{with ESMTPS}, and C{with ESMTPSA}
        once the client also authenticated (RFC 3848).
        """
        path = self.mktemp()
        delivery = MaildirDelivery(path, serverName=MX, runInThread=runNow)
        connection = upgraded(makeServer([Alice(), delivery]))
        self.assertEqual(codes(connection.send("EHLO client.example")), [250])
        self.assertEqual(codes(transaction(connection)), [250, 250, 354, 250])
        self.assertEqual(codes(connection.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(transaction(connection)), [250, 250, 354, 250])
        self.assertEqual(
            sorted(withClause(receivedHeader(m)) for m in storedMessages(path)),
            ["ESMTPS", "ESMTPSA"],
        )


class AUTHStandardsTests(SynchronousTestCase):
    """
    AUTH (RFC 4954; standards section 1.3).
    """

    def test_4954_14_challengesAreBase64Only(self) -> None:
        """
        Every 334 challenge, of every mechanism and of the OAuth error rounds, is one
        line of base64 and nothing else, even with enhanced status codes shown.
        """
        client = connect(
            Alice(),
            allowInsecureAuth=True,
            hideENHANCEDSTATUSCODES=False,
            authMethods=("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"),
        )
        xoauth2 = b64("user=alice\x01auth=Bearer wrong\x01\x01")
        oauthBearer = b64("n,a=alice,\x01auth=Bearer wrong\x01\x01")
        challenges: list[ServerReply] = []
        for opening, answers in (
            ("AUTH PLAIN", ["*"]),
            ("AUTH LOGIN", [b64("alice"), "*"]),
            ("AUTH CRAM-MD5", ["*"]),
            ("AUTH XOAUTH2", ["*"]),
            (f"AUTH XOAUTH2 {xoauth2}", [""]),
            (f"AUTH OAUTHBEARER {oauthBearer}", ["AQ=="]),
        ):
            replies = client.send(opening)
            for answer in answers:
                challenges += replies
                replies = client.send(answer)
            self.assertNotEqual(codes(replies), [334], opening)
        self.assertEqual(codes(challenges), [334] * 7)
        for reply in challenges:
            self.assertEqual(len(reply.lines), 1, reply)
            [text] = reply.lines
            decoded = base64.b64decode(text, validate=True)
            self.assertEqual(base64.b64encode(decoded).decode("ascii"), text)

    def test_4954_17_policyRefusalsLeaveTheClientFreeToRetry(self) -> None:
        """
        A handler's 432 4.7.12 (password transition needed) and 534 5.7.9 (mechanism too
        weak) reach the client as they are; the client is not authenticated and may
        authenticate again with the mechanism the policy wants.
        """
        alice = policyClient(authOptional=False)
        self.assertEqual(
            cramMD5(alice, "alice", "whatever"), ["432 4.7.12 A password transition is needed"]
        )
        self.assertIsNone(alice.session.user)
        self.assertEqual(codes(alice.send(f"MAIL FROM:<{SENDER}>")), [530])
        self.assertEqual(
            [wire(r) for r in alice.send(authPlain("alice", "secret"))],
            ["235 2.7.0 Authentication successful"],
        )

        bob = policyClient(authOptional=False)
        self.assertEqual(
            [wire(r) for r in bob.send(authPlain("bob", "pw"))],
            ["534 5.7.9 Authentication mechanism is too weak"],
        )
        self.assertIsNone(bob.session.user)
        self.assertFalse(bob.closed)
        self.assertEqual(cramMD5(bob, "bob", "pw"), ["235 2.7.0 Authentication successful"])
        self.assertEqual(bob.session.user, "bob")

    def test_4954_17_policyRefusalsGetTheirEnhancedCodes(self) -> None:
        """
        A handler that refuses AUTH with a bare 432 or 534 has the server add the
        enhanced codes RFC 4954 section 6 gives them: 4.7.12 and 5.7.9.
        """
        alice = policyClient(withCodes=False)
        self.assertEqual(
            cramMD5(alice, "alice", "whatever"), ["432 4.7.12 A password transition is needed"]
        )
        self.assertEqual(
            [wire(r) for r in alice.send(authPlain("bob", "pw"))],
            ["534 5.7.9 Authentication mechanism is too weak"],
        )

    def test_4954_18_authParameterOfMail(self) -> None:
        """
        MAIL FROM with AUTH=<> gets 250 whether or not the client authenticated; the
        value is xtext; AUTH= given twice is refused.
        """
        client = connect(Alice(), allowInsecureAuth=True)
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}> AUTH=<>", "RSET")), [250, 250])
        self.assertEqual(
            codes(client.send(f"MAIL FROM:<{SENDER}> AUTH=<e+3Dmc2@b.example>")), [250]
        )
        mailFrom = client.session.envelope.mailFrom
        assert mailFrom is not None
        self.assertEqual(mailFrom.args["AUTH"], "<e=mc2@b.example>")
        self.assertEqual(codes(client.send("RSET")), [250])
        [twice] = client.send(f"MAIL FROM:<{SENDER}> AUTH=<> AUTH=<x@b.example>")
        self.assertEqual(wire(twice), "501 Error: duplicate AUTH parameter")
        self.assertIsNone(client.session.envelope.mailFrom)
        self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}> AUTH=<>")), [250])

    def test_4954_19_authEndsAPipelinedGroup(self) -> None:
        """
        AUTH is a synchronisation point: a command pipelined after an AUTH that wants a
        further round is not run as a command.  AUTH PLAIN with its initial response
        completes in one round trip, so the commands after it run.
        """
        client = connect(Alice(), allowInsecureAuth=True)
        replies = client.send("AUTH LOGIN", f"MAIL FROM:<{SENDER}>")
        # The MAIL line is read as the user name, which is no base64: had it run as a
        # command it would have got 250 and set the sender.
        self.assertEqual(
            [wire(r) for r in replies], ["334 VXNlcm5hbWU6", "501 Error: invalid base64 data"]
        )
        self.assertIsNone(client.session.envelope.mailFrom)
        self.assertIsNone(client.session.user)
        replies = client.send(
            authPlain("alice", "secret"), f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>"
        )
        self.assertEqual(codes(replies), [235, 250, 250])

    def test_4954_21_receivedSaysEsmtpaOrEsmtpsa(self) -> None:
        """
        A message from an authenticated client is stamped C{with ESMTPA} in clear and
        C{with ESMTPSA} over TLS (RFC 3848).
        """
        path = self.mktemp()
        delivery = MaildirDelivery(path, serverName=MX, runInThread=runNow)
        inClear = connect(Alice(), delivery, allowInsecureAuth=True)
        self.assertEqual(codes(inClear.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(transaction(inClear)), [250, 250, 354, 250])
        secure = upgraded(makeServer([Alice(), delivery]))
        self.assertEqual(codes(secure.send("EHLO client.example")), [250])
        self.assertEqual(codes(secure.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(transaction(secure)), [250, 250, 354, 250])
        self.assertEqual(
            sorted(withClause(receivedHeader(m)) for m in storedMessages(path)),
            ["ESMTPA", "ESMTPSA"],
        )

    def test_4954_22_unpreparableAuthzidFails(self) -> None:
        """
        An authorisation identity that SASLprep (RFC 4013) prohibits, or that it maps to
        nothing although the client sent one, fails the authentication, right password
        or not; a valid one does not.
        """
        client = connect(Alice(), allowInsecureAuth=True)
        for authzid in (
            "\u2028alice",  # LINE SEPARATOR: a non-ASCII control character (C.2.2)
            "\ue000alice",  # a private use character (C.3)
            "\u00ad",  # SOFT HYPHEN alone: mapped to nothing (B.1), leaving it empty
        ):
            replies = client.send(authPlain("alice", "secret", authzid))
            self.assertEqual(
                [wire(r) for r in replies], ["500 Error: invalid userdata"], repr(authzid)
            )
            self.assertIsNone(client.session.user, repr(authzid))
        self.assertEqual(codes(client.send(authPlain("alice", "secret", "alice"))), [235])


class ImplicitTLSStandardsTests(SynchronousTestCase):
    """
    Implicit TLS for submission (RFC 8314; standards section 1.16).
    """

    def test_8314_05_authPolicyAsOnSubmission(self) -> None:
        """
        On an implicit TLS connection AUTH works as on port 587 after STARTTLS: the same
        EHLO keywords, MAIL refused before AUTH, AUTH PLAIN accepted, then MAIL accepted.
        """
        server = makeServer([Alice()], authOptional=False)
        script = (
            "EHLO client.example",
            f"MAIL FROM:<{SENDER}>",
            authPlain("alice", "secret"),
            f"MAIL FROM:<{SENDER}>",
        )
        submission = upgraded(server)
        implicit = connectTLS(server, implicit=True)
        self.assertEqual(codes(implicit.client.replies()), [220])
        seen: list[list[ServerReply]] = []
        for connection in (submission, implicit):
            seen.append([reply for command in script for reply in connection.send(command)])
        self.assertEqual([codes(replies) for replies in seen], [[250, 530, 235, 250]] * 2)
        self.assertEqual(seen[0][0].lines[1:], seen[1][0].lines[1:])
        self.assertIn("AUTH LOGIN PLAIN", seen[1][0].lines)

    def test_8314_05_receivedRecordsCipherSuite(self) -> None:
        """
        A message submitted over implicit TLS with AUTH is stamped C{with ESMTPSA}, and
        its Received header names the TLS cipher suite by its registered (IANA) name.
        """
        path = self.mktemp()
        delivery = MaildirDelivery(path, serverName=MX, runInThread=runNow)
        server = makeServer([Alice(), delivery], secure=True, authOptional=False)
        connection, _ = saidHello(server, creator=ClientTLS(maxVersion=SSL.TLS1_2_VERSION))
        self.assertEqual(codes(connection.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(transaction(connection)), [250, 250, 354, 250])
        tls = connection.session.tlsOptions
        assert tls is not None
        # Over TLS 1.2 OpenSSL's name of the suite is not the registered one.
        self.assertNotEqual(tls.standardName, tls.name)
        [stored] = storedMessages(path)
        header = receivedHeader(stored)
        self.assertIn(b" with ESMTPSA id ", header)
        self.assertIn(tls.standardName.encode("ascii"), header)


class DSNStandardsTests(SynchronousTestCase):
    """
    Delivery status notifications (RFC 3461; standards section 1.6).
    """

    def test_3461_01_ehloAdvertisesDsn(self) -> None:
        """
        With DSN shown, the EHLO (and LHLO) reply lists the keyword DSN, alone.
        """
        for hello, lmtp in (("EHLO", False), ("LHLO", True)):
            client = MemoryClient(makeServer(hideDSN=False, lmtp=lmtp))
            [reply] = client.send(f"{hello} client.example")
            self.assertEqual(reply.code, 250, hello)
            self.assertEqual([k for k in reply.lines[1:] if k.split(" ")[0] == "DSN"], ["DSN"])

    def test_3461_05_badRecipientParametersRefused(self) -> None:
        """
        NOTIFY=NEVER with another value, an unknown NOTIFY value, ORCPT without its
        address type, and ORCPT over 500 characters get 501 5.5.4; no recipient is added.
        """
        client = connect(hideDSN=False, hideENHANCEDSTATUSCODES=False)
        self.assertEqual(codes(client.send(f"MAIL FROM:<{SENDER}>")), [250])
        never = "501 5.5.4 Error: NOTIFY=NEVER cannot be combined with other values"
        notify = "501 5.5.4 Error: NOTIFY parameter must be NEVER, SUCCESS, FAILURE, or DELAY"
        orcpt = "501 5.5.4 Error: ORCPT parameter must be addr-type;xtext of at most 500 characters"
        for parameter, expected in (
            ("NOTIFY=NEVER,SUCCESS", never),
            ("NOTIFY=BOGUS", notify),
            ("ORCPT=rfc822", orcpt),
            ("ORCPT=rfc822;" + "x" * 501, orcpt),
        ):
            replies = client.send(f"RCPT TO:<{RECIPIENT}> {parameter}")
            self.assertEqual([wire(r) for r in replies], [expected], parameter)
        self.assertEqual(client.session.envelope.rcptTo, ())
        longest = f"RCPT TO:<{RECIPIENT}> ORCPT=rfc822;" + "x" * 500
        self.assertEqual(codes(client.send(longest)), [250])

    def test_3461_05_utf8AddressTypeOfRfc6533(self) -> None:
        """
        ORCPT of address type utf-8 (RFC 6533 section 3) takes QCHARs and \\x{HEX}
        escapes, and after SMTPUTF8 UTF-8 itself (Postfix QA: ORCPT=utf-8;ü@c.test got a
        permanent 501); without SMTPUTF8 UTF-8 in it is refused, and so are "+", "=",
        a lone backslash and an escape that is no HEXPOINT in either form.
        """
        orcpt = "501 5.5.4 Error: ORCPT parameter must be addr-type;xtext of at most 500 characters"
        for smtpUtf8, value, accepted in [
            (True, "utf-8;\u00fc@c.example", True),
            (True, "UTF-8;\\x{FC}@c.example", True),
            (False, "utf-8;\\x{FC}@c.example", True),
            (False, "utf-8;\u00fc@c.example", False),
            (True, "utf-8;a+b@c.example", False),
            (True, "utf-8;a=b@c.example", False),
            (True, "utf-8;a\\b@c.example", False),
            (True, "utf-8;\\x{2B}\\x{10FFFF}@c.example", True),
            # No surrogate, nothing over 10FFFF, no leading zero, no ASCII letter
            # (attack QA: these were taken and passed on).
            (True, "utf-8;\\x{D800}@c.example", False),
            (True, "utf-8;\\x{110000}@c.example", False),
            (True, "utf-8;\\x{00FC}@c.example", False),
            (True, "utf-8;\\x{41}@c.example", False),
            (True, "utf-8;\\x{0}@c.example", False),
        ]:
            client = connect(hideDSN=False, hideENHANCEDSTATUSCODES=False)
            client.send(f"MAIL FROM:<{SENDER}>" + (" SMTPUTF8" if smtpUtf8 else ""))
            [reply] = client.send(f"RCPT TO:<{RECIPIENT}> NOTIFY=FAILURE ORCPT={value}")
            case = (smtpUtf8, value)
            if accepted:
                self.assertEqual(reply.code, 250, case)
                [address] = client.session.envelope.rcptTo
                assert address.dsn is not None
                self.assertEqual(address.dsn.orcpt, value, case)
            else:
                self.assertEqual(wire(reply), orcpt, case)

    def test_3461_07_longerDsnLinesAccepted(self) -> None:
        """
        A MAIL line longer than 512 octets by its ENVID, and a RCPT line longer by its
        NOTIFY and ORCPT, are accepted whole.
        """
        client = connect(hideDSN=False)
        # The longest mailbox a 256-octet path holds: 64 + 1 + 189 octets.
        mailbox = "l" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 61
        envid = "+2B" * 100
        mail = f"MAIL FROM:<{mailbox}> RET=HDRS ENVID={envid}"
        self.assertTrue(512 < len(mail) + 2 <= 512 + 100, len(mail))
        self.assertEqual(codes(client.send(mail)), [250])
        dsn = client.session.envelope.dsn
        assert dsn is not None
        self.assertEqual(dsn.envid, "+" * 100)
        original = "x" * 500
        rcpt = f"RCPT TO:<{mailbox}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{original}"
        self.assertTrue(512 < len(rcpt) + 2 <= 512 + 500, len(rcpt))
        self.assertEqual(codes(client.send(rcpt)), [250])
        recipientDSN = client.session.envelope.rcptTo[0].dsn
        assert recipientDSN is not None
        self.assertEqual(recipientDSN.orcpt, f"rfc822;{original}")


class REQUIRETLSStandardsTests(SynchronousTestCase):
    """
    REQUIRETLS, receiving side (RFC 8689; standards section 1.8).
    """

    def test_8689_05_tlsRequiredNoHeaderTagged(self) -> None:
        """
        A message without REQUIRETLS whose header has C{TLS-Required: No} is tagged so
        (the envelope's C{tlsRequiredNo} is true once the message is read); a message
        without the header is not.  The header itself is kept.
        """
        reader = TagReader()
        client = connect(reader)
        self.assertEqual(codes(transaction(client, TLS_OPTIONAL)), [250, 250, 354, 250])
        self.assertEqual(codes(transaction(client)), [250, 250, 354, 250])
        self.assertEqual(reader.seen, [(False, True, TLS_OPTIONAL), (False, False, MESSAGE)])

    def test_8689_05_headerIgnoredUnderRequireTls(self) -> None:
        """
        With REQUIRETLS on MAIL FROM the C{TLS-Required: No} header is ignored: the
        message stays tagged REQUIRETLS, is not tagged TLS-optional, and keeps the header
        for onward relay.
        """
        reader = TagReader()
        connection = upgraded(makeServer([reader], hideREQUIRETLS=False))
        self.assertEqual(codes(connection.send("EHLO client.example")), [250])
        replies = connection.send(
            f"MAIL FROM:<{SENDER}> REQUIRETLS", f"RCPT TO:<{RECIPIENT}>", "DATA"
        )
        replies += connection.write(stuff(TLS_OPTIONAL))
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        [(requireTLS, tag, data)] = reader.seen
        self.assertTrue(requireTLS)
        self.assertIs(tag, False)
        self.assertEqual(data, TLS_OPTIONAL)


class RelayStandardsTests(test_forward.ForwardTestCase):
    """
    What the forwarding delivery passes on, and refuses to pass on, to the downstream
    server (RFC 4954 section 5, RFC 8689 section 4.2.1).
    """

    def test_4954_18_untrustedAuthParameterNotRelayed(self) -> None:
        """
        The AUTH= identity an unauthenticated client claims is treated as AUTH=<>: it is
        not passed to the downstream, even one that offers AUTH.
        """
        factory = test_forward.ScriptedFactory(
            {"EHLO": b"250-scripted.example\r\n250 AUTH PLAIN\r\n"}
        )
        self.front(lambda: factory)
        replies = self.send(
            "MAIL FROM:<alice@example.org> AUTH=<ceo@example.org>", "RCPT TO:<bob@example.net>"
        )
        self.assertEqual(codes(replies), [250, 250])
        [downstream] = factory.built
        self.assertEqual(
            downstream.commands[1:], ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>"]
        )

    def test_8689_06_refusedWhenDownstreamLacksRequireTls(self) -> None:
        """
        A REQUIRETLS message cannot go to a downstream that does not offer REQUIRETLS:
        the sender gets 550 5.7.30 REQUIRETLS support required (its MTA bounces the
        message) and nothing is relayed; without REQUIRETLS the same sender goes on.
        """
        factory = test_forward.ScriptedFactory({})
        connection = self.frontOverTLS(test_forward.MemoryEndpoint(self.network, lambda: factory))
        replies = self.exchange(connection, f"MAIL FROM:<{SENDER}> REQUIRETLS")
        self.assertEqual([wire(r) for r in replies], [NEEDS_REQUIRETLS])
        [downstream] = factory.built
        self.assertEqual(downstream.commands, [f"EHLO {test_forward.FRONT}"])
        self.assertEqual(codes(self.exchange(connection, f"MAIL FROM:<{SENDER}>")), [250])

    def test_8689_06_plaintextDownstreamCannotCarryRequireTls(self) -> None:
        """
        A REQUIRETLS message is not relayed over a connection to the downstream that is
        not encrypted, even if the downstream lists REQUIRETLS: 550 5.7.30.
        """
        factory = test_forward.ScriptedFactory(
            {"EHLO": b"250-scripted.example\r\n250-ENHANCEDSTATUSCODES\r\n250 REQUIRETLS\r\n"}
        )
        connection = self.frontOverTLS(test_forward.MemoryEndpoint(self.network, lambda: factory))
        replies = self.exchange(connection, f"MAIL FROM:<{SENDER}> REQUIRETLS")
        self.assertEqual([wire(r) for r in replies], [NEEDS_REQUIRETLS])
        [downstream] = factory.built
        self.assertEqual(downstream.commands, [f"EHLO {test_forward.FRONT}"])
