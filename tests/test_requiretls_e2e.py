"""
End-to-end tests of REQUIRETLS (RFC 8689) through the forwarding delivery, over real TLS
on 127.0.0.1.

The relay is C{twist smtpsvc} run as a child process with C{--deliver smtp:ENDPOINT},
exactly as deployed; the downstream is an in-process L{SMTPServer} with a
L{RecordingHandler}, listening in clear and with implicit TLS, offering REQUIRETLS, with a
certificate from the test CA (L{tests.memorytls}).  The client is C{smtplib} in a thread:
STARTTLS to the relay (whose certificate it verifies), then C{MAIL FROM:<...> REQUIRETLS}.

The downstream's certified name, C{mx.downstream.test}, is not in DNS: the C{tls:} client
endpoint is given it as the name to verify, and, in C{endpoint=}, where to connect
(C{tcp:127.0.0.1:PORT}).  The memory tests of the same checks are in
L{tests.test_forward.RequireTLSTests}.  Every wait is bounded; the relay is stopped by its
PID and the downstream closed by the test case's cleanups.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.threads import deferToThread

from smtpsvc.testing import RecordingHandler

from .e2e_support import (
    CLIENT_NAME,
    LISTEN,
    LOCALHOST,
    SOCKET_TIMEOUT,
    E2ETestCase,
    LoopbackSMTP,
    TwistProcess,
    clientContext,
    listenAlso,
    startServer,
    startTwist,
    workspace,
)
from .memorytls import authority, issue
from .service_support import writeCertificate

#: The downstream's name: what its certificate is for and what the relay verifies.
DOWNSTREAM = "mx.downstream.test"
#: A name from the same test CA that is not the downstream's.
ATTACKER = "attacker.example"
#: The relay's name: its certificate is for it, and the client verifies it.
RELAY = "relay.e2e.test"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.net"
MESSAGE = (
    b"From: <alice@example.org>\r\n"
    b"To: <bob@example.net>\r\n"
    b"Subject: only over verified TLS\r\n"
    b"\r\n"
    b"Secret.\r\n"
)
#: What the client hears when the relay cannot keep the promise (enhanced status codes
#: shown: C{--no-hide-enhancedstatuscodes}).
NEEDS_REQUIRETLS = (550, b"5.7.30 Error: REQUIRETLS support required")
#: What the client hears when the downstream cannot be used at all.
UNAVAILABLE = (451, b"4.4.1 Error: downstream unavailable")
#: What the relay logs when the C{tls:} endpoint finds the certificate is not for the
#: downstream's name.
MISMATCH = re.compile(
    rb"Downstream tls:\S+ unavailable at \w+: connection lost: VerificationError\(.*DNSMismatch\("
    rb"mismatched_id=DNS_ID\(hostname=b'mx\.downstream\.test'\)"
)

#: What a client session saw: each reply, in order.
Replies = list[tuple[int, bytes]]


def sendREQUIRETLS(port: int, *, plainAfter: bool = False) -> Replies:
    """
    Connect to the relay on C{port} (blocking: run it in a thread), STARTTLS verifying
    its certificate for L{RELAY}, and send L{MESSAGE} with C{MAIL FROM:<...> REQUIRETLS};
    RCPT and DATA only if MAIL was accepted.

    @param plainAfter: then send it again in the same session without REQUIRETLS (after
        an C{RSET}), to show the downstream was usable.
    @return: the replies to MAIL, RCPT and the end of DATA (those sent), and with
        C{plainAfter} those of the second transaction.
    """
    with LoopbackSMTP(RELAY, port, CLIENT_NAME, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo()
        client.starttls(context=clientContext(authority().cert))
        client.ehlo()
        replies = transaction(client, ["REQUIRETLS"])
        if plainAfter:
            client.rset()
            replies += transaction(client, [])
        client.quit()
    return replies


def transaction(client: smtplib.SMTP, mailOptions: list[str]) -> Replies:
    """
    MAIL FROM with C{mailOptions}, then RCPT and the message as far as they are
    accepted.

    @return: the replies.
    """
    replies = [client.mail(SENDER, mailOptions)]
    if replies[-1][0] != 250:
        return replies
    replies.append(client.rcpt(RECIPIENT))
    if replies[-1][0] != 250:
        return replies
    replies.append(client.data(MESSAGE))
    return replies


class RequireTLSRelayTests(E2ETestCase):
    """
    A REQUIRETLS message goes onward only over TLS whose certificate was validated for
    the next hop's name (RFC 8689 section 4.2.1), over real sockets, with the endpoint
    string C{twist smtpsvc --deliver smtp:...} is given.
    """

    async def startDownstream(self, certifiedName: str = DOWNSTREAM) -> tuple[int, int]:
        """
        Start the downstream: it records what it receives in C{self.recorder}, offers
        REQUIRETLS under TLS, and serves a certificate for C{certifiedName} from the test
        CA.

        @return: its plaintext port and its implicit TLS port.
        """
        self.recorder = RecordingHandler()
        pair = issue(certifiedName)
        server, plain = await startServer(
            self,
            [self.recorder],
            name=DOWNSTREAM,
            cert=pair.cert,
            key=pair.key,
            hideREQUIRETLS=False,
            hideENHANCEDSTATUSCODES=False,
            disableReverseLookup=True,
        )
        secure = await listenAlso(self, server, secure=True)
        return plain, secure

    def trustRoots(self) -> str:
        """
        A directory holding the test CA certificate only (C{ca.pem}), for C{trustRoots=}
        and C{caCertsDir=}.
        """
        directory = workspace(self)
        Path(directory, "ca.pem").write_bytes(authority().cert)
        return directory

    async def startRelay(self, endpoint: str) -> TwistProcess:
        """
        Start C{twist smtpsvc} relaying mail for C{example.net} to C{endpoint}
        (C{--deliver smtp:ENDPOINT}), offering STARTTLS with a certificate for L{RELAY}.
        """
        directory = workspace(self)
        writeCertificate(directory, RELAY)
        args = [
            *("--name", RELAY, "--cert", str(Path(directory, "certs", f"{RELAY}.pem"))),
            *("--listen", LISTEN, "--domain", "example.net"),
            *("--deliver", f"smtp:{endpoint}"),
            *("--no-hide-enhancedstatuscodes", "--early-talker-delay", "0"),
            "--disable-reverse-lookup",
        ]
        return await startTwist(self, args, directory)

    def tlsEndpoint(self, port: int) -> str:
        """
        The C{tls:} client endpoint string to the downstream's implicit TLS C{port}: it
        verifies the certificate against the test CA and for L{DOWNSTREAM}, and connects
        to 127.0.0.1.
        """
        nested = quoteStringArgument(f"tcp:{LOCALHOST}:{port}")
        roots = quoteStringArgument(self.trustRoots())
        return f"tls:{DOWNSTREAM}:{port}:trustRoots={roots}:endpoint={nested}"

    async def assertRefusedThenPlain(self, relay: TwistProcess) -> None:
        """
        Through C{relay}, C{MAIL FROM ... REQUIRETLS} gets C{550 5.7.30}; the same session
        then sends the message without REQUIRETLS, which gets 250 for MAIL, RCPT and
        DATA and is the only one the downstream receives.
        """
        assert relay.port is not None
        replies = await deferToThread(sendREQUIRETLS, relay.port, plainAfter=True)
        self.assertEqual(replies[0], NEEDS_REQUIRETLS)
        self.assertEqual([code for code, _ in replies[1:]], [250, 250, 250], replies)
        [received] = self.recorder.messages
        self.assertTrue(received.data.endswith(MESSAGE), received.data)
        self.assertEqual(received.envelope.requireTLS, False)
        self.assertEqual(self.recorder.senders, [SENDER])

    async def test_8689_06_relayedOverVerifiedTLS(self) -> None:
        """
        Through C{tls:mx.downstream.test:...:trustRoots=DIR} to a downstream whose
        certificate is for that name: MAIL, RCPT and DATA each get 250, and the message
        arrives downstream intact, over TLS, after the relay's C{Received:} header, in a
        transaction that carried REQUIRETLS.
        """
        _, secure = await self.startDownstream()
        relay = await self.startRelay(self.tlsEndpoint(secure))
        assert relay.port is not None
        replies = await deferToThread(sendREQUIRETLS, relay.port)
        self.assertEqual([code for code, _ in replies], [250, 250, 250], replies)
        [received] = self.recorder.messages
        self.assertTrue(received.data.endswith(MESSAGE), received.data)
        self.assertTrue(received.data.startswith(b"Received: from " + CLIENT_NAME.encode()))
        self.assertIn(f"by {RELAY} (smtpsvc) with ESMTPS".encode(), received.data)
        self.assertTrue(received.envelope.requireTLS)
        sender = received.envelope.mailFrom
        self.assertEqual(sender.address if sender is not None else None, SENDER)
        self.assertEqual([r.address for r in received.envelope.rcptTo], [RECIPIENT])
        self.assertEqual(received.remoteAddress, LOCALHOST)
        [session] = self.recorder.sessions
        self.assertTrue(session.secure)
        self.assertEqual(session.servername, DOWNSTREAM)

    async def test_8689_06_certificateForAnotherHostRefused(self) -> None:
        """
        The downstream's certificate is from the trusted CA but for C{attacker.example}:
        the C{tls:} endpoint fails the handshake, so the downstream cannot be used at
        all: C{451 4.4.1} at MAIL (the client may try again later), the relay logs the
        name mismatch, and nothing reaches the downstream.
        """
        _, secure = await self.startDownstream(ATTACKER)
        relay = await self.startRelay(self.tlsEndpoint(secure))
        assert relay.port is not None
        replies = await deferToThread(sendREQUIRETLS, relay.port)
        self.assertEqual(replies, [UNAVAILABLE])
        self.assertEqual(self.recorder.senders, [])
        self.assertEqual(self.recorder.messages, [])
        # Refused for the name, not for some other reason the downstream was unusable.
        await relay.waitForOutput(MISMATCH, within=SOCKET_TIMEOUT)

    async def test_8689_06_certificateNotCheckedForHostRefused(self) -> None:
        """
        C{ssl:} with C{caCertsDir=} and no C{hostname=} checks the downstream's
        certificate against the CA only, so one for C{attacker.example} passes the
        handshake; but no name was verified: C{550 5.7.30} at MAIL, nothing relayed.  The
        same session then sends the message without REQUIRETLS over that link, and it
        arrives.
        """
        _, secure = await self.startDownstream(ATTACKER)
        roots = quoteStringArgument(self.trustRoots())
        relay = await self.startRelay(f"ssl:host={LOCALHOST}:port={secure}:caCertsDir={roots}")
        await self.assertRefusedThenPlain(relay)

    async def test_8689_06_plaintextDownstreamRefused(self) -> None:
        """
        Through C{tcp:127.0.0.1:PORT}, in clear: C{550 5.7.30} at MAIL, nothing relayed.
        The same session then sends the message without REQUIRETLS, and it arrives.
        """
        plain, _ = await self.startDownstream()
        relay = await self.startRelay(f"tcp:{LOCALHOST}:{plain}")
        await self.assertRefusedThenPlain(relay)
        [session] = self.recorder.sessions
        self.assertEqual(session.secure, False)
