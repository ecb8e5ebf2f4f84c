"""
Tests for TLS with real handshakes in memory on a fake clock: STARTTLS done right, SNI on
both paths, client certificates, rotation, and the development certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import ISecureHandler, Session, SMTPError, SMTPServer, _tls
from smtpsvc._tls import (
    ServerTLS,
    TLSConfigurationError,
    TLSProblem,
    certificateProblems,
    developmentCertificate,
    settingsProblems,
    standardCipherName,
    versionProblems,
)
from smtpsvc.testing import MemoryClient, RecordingHandler, parseReplies

from . import protocol_support
from .e2e_support import LogCapture, loadExample
from .memorytls import (
    ClientTLS,
    Connection,
    KeyPair,
    authority,
    certify,
    commonName,
    connectInClear,
    connectTLS,
    issue,
    saidHello,
    upgraded,
)
from .protocol_support import codes, wire

MX = "mx.example.test"


def makeServer(handlers: list[object] | None = None, **options: Any) -> SMTPServer:
    """
    A server for L{MX} (see L{protocol_support.makeServer}) that greets at once, with
    certificates for L{MX}, b.example.test and *.wild.example.test (by SNI).
    """
    mx = issue(MX)
    b = issue("b.example.test")
    wild = issue("*.wild.example.test")
    options.setdefault("name", MX)
    options.setdefault("earlyTalkerDelay", 0)
    options.setdefault("key", mx.key)
    options.setdefault("cert", mx.cert)
    options.setdefault(
        "sniOptions",
        {
            "B.Example.Test": {"key": b.key, "cert": b.cert},
            "*.wild.example.test": {"key": wild.key, "cert": wild.cert},
        },
    )
    return protocol_support.makeServer(handlers or [], **options)


class STARTTLSTests(SynchronousTestCase):
    """
    STARTTLS (RFC 3207; standards section 1.2 and 2.1).
    """

    def test_advertised(self) -> None:
        """
        STARTTLS is offered on a plaintext connection (standards 3207-01).
        """
        _, ehlo = saidHello(makeServer(), "EHLO x")
        self.assertIn("STARTTLS", ehlo.lines)

    def test_hidden(self) -> None:
        """
        hideSTARTTLS removes the keyword but STARTTLS still works.
        """
        connection, ehlo = saidHello(makeServer(hideSTARTTLS=True), "EHLO x")
        self.assertNotIn("STARTTLS", ehlo.lines)
        self.assertEqual(codes(connection.send("STARTTLS")), [220])

    def test_disabled(self) -> None:
        """
        A disabled STARTTLS is neither offered nor accepted.
        """
        connection, ehlo = saidHello(makeServer(disabledCommands=("STARTTLS",)), "EHLO x")
        self.assertNotIn("STARTTLS", ehlo.lines)
        self.assertEqual(codes(connection.send("STARTTLS")), [502])

    def test_upgrade(self) -> None:
        """
        STARTTLS gets 220 Ready to start TLS, the handshake follows, and the session is
        secure with the negotiated cipher and version (standards 3207-03).
        """
        connection = upgraded(makeServer(hideENHANCEDSTATUSCODES=False))
        session = connection.session
        self.assertTrue(session.secure)
        self.assertEqual(session.tlsOptions.version, "TLSv1.3")
        self.assertTrue(session.tlsOptions.name.startswith("TLS_"))
        self.assertEqual(codes(connection.send("NOOP")), [250])

    def test_closeDoesNotWaitForTheClientsCloseNotify(self) -> None:
        """
        A TLS connection the server closes (after QUIT, or at server.close()) ends two
        seconds later at most, though a client that does not read never answers the
        server's close_notify with its own: an idle TLS client does not hold
        server.close() for all of closeTimeout (RFC 8446 section 6.1).  A client that
        does answer ends it at once.
        """
        for how in ("QUIT", "close", "answering client"):
            server = makeServer(closeTimeout=30)
            clock = server.reactor
            assert isinstance(clock, Clock)
            connection = upgraded(server)
            self.assertEqual(codes(connection.send("EHLO client.example")), [250])
            tls = connection.clientTransport.tlsProtocol
            assert tls is not None
            if how != "answering client":
                # From now on the client reads nothing.
                tls.dataReceived = lambda data: None  # type: ignore[method-assign]
            if how == "close":
                closed = server.close()
            else:
                connection.client.transport.write(b"QUIT\r\n")  # type: ignore[union-attr]
            connection.pump.flush()
            if how == "answering client":
                self.assertTrue(connection.serverTransport.disconnected, how)
                continue
            clock.advance(1.9)
            connection.pump.flush()
            self.assertFalse(connection.serverTransport.disconnected, how)
            clock.advance(0.1)
            connection.pump.flush()
            self.assertTrue(connection.serverTransport.disconnected, how)
            if how == "close":
                self.assertIsNone(self.successResultOf(closed), how)

    def test_connectionLogLineNamesTLS(self) -> None:
        """
        The handshake writes no log line of its own; the connection's line at its end
        names the version, the cipher and the SNI name.
        """
        capture = LogCapture(self)
        connection = upgraded(makeServer(), servername=MX)
        session = connection.session
        tls = f"{session.tlsOptions.version} {session.tlsOptions.name}"
        self.assertEqual(codes(connection.send("QUIT")), [221])
        (closed,) = [e for e in capture.events if e.get("event") == "disconnect"]
        self.assertEqual((closed["tls"], closed["servername"]), (tls, MX))
        self.assertIn(f" s ({tls}); messages accepted 0, refused 0", closed["text"])
        self.assertEqual([e for e in capture.events if "event" not in e], [])

    def test_readyReplyHasEnhancedCode(self) -> None:
        """
        The 220 carries 2.0.0 when enhanced codes are shown.
        """
        connection, _ = saidHello(makeServer(hideENHANCEDSTATUSCODES=False), "EHLO x")
        reply = connection.send("STARTTLS")[0]
        self.assertEqual(reply.lines, ("2.0.0 Ready to start TLS",))

    def test_notOfferedAfterUpgrade(self) -> None:
        """
        After the handshake EHLO no longer offers STARTTLS (standards 3207-02).
        """
        connection = upgraded(makeServer())
        self.assertNotIn("STARTTLS", connection.send("EHLO x")[0].lines)

    def test_secondStarttls(self) -> None:
        """
        STARTTLS on an encrypted connection gets 503 (standards 3207-06).
        """
        connection = upgraded(makeServer())
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.send("STARTTLS")],
            ["503 Error: TLS already active"],
        )

    def test_argument(self) -> None:
        """
        STARTTLS with an argument gets 501 and the connection stays usable
        (standards 3207-04).
        """
        connection, _ = saidHello(makeServer(), "EHLO x")
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.send("STARTTLS FOO")],
            ["501 Error: syntax: STARTTLS"],
        )
        self.assertEqual(codes(connection.send("NOOP")), [250])

    def test_3207_08_pipelinedCommandIsNeverRun(self) -> None:
        """
        STARTTLS and NOOP in one write: only the 220; the NOOP is discarded, never
        answered inside TLS (standards 3207-08, CVE-2011-0411).
        """
        connection, _ = saidHello(makeServer(), "EHLO t")
        self.assertEqual(codes(connection.write(b"STARTTLS\r\nNOOP\r\n")), [220])
        connection.startTLS(ClientTLS())
        self.assertEqual(connection.client.replies(), [])
        self.assertNotIn("STARTTLS", connection.send("EHLO t")[0].lines)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_injectedTransactionForgotten(self) -> None:
        """
        A MAIL pipelined after STARTTLS does not open a transaction inside TLS
        (standards 2.1).
        """
        connection, _ = saidHello(makeServer(), "EHLO t")
        connection.write(b"STARTTLS\r\nMAIL FROM:<x@y.example>\r\n")
        connection.startTLS(ClientTLS())
        connection.send("EHLO t")
        self.assertEqual(codes(connection.send("RCPT TO:<a@b.example>")), [503])

    def test_partialLineDiscarded(self) -> None:
        """
        Half a command sent in clear after STARTTLS is not completed by the first
        encrypted bytes (the reference's residual hole, spec section 11.1).
        """
        connection, _ = saidHello(makeServer(), "EHLO t")
        self.assertEqual(codes(connection.write(b"STARTTLS\r\nNOO")), [220])
        connection.startTLS(ClientTLS())
        self.assertEqual(codes(connection.write(b"P\r\n")), [500])

    def test_3207_07_sessionForgotten(self) -> None:
        """
        After the handshake the hello is forgotten: MAIL without a new EHLO gets 503
        (standards 3207-07, RFC 3207 section 4.2).
        """
        connection = upgraded(makeServer())
        self.assertEqual(codes(connection.send("MAIL FROM:<a@b.example>")), [503])
        self.assertIsNone(connection.session.hostNameAppearsAs)
        self.assertEqual(
            codes(connection.send("EHLO again", "MAIL FROM:<a@b.example>")), [250, 250]
        )

    def test_refusedInsideTransaction(self) -> None:
        """
        STARTTLS in the middle of a transaction gets 503: the envelope would otherwise
        straddle the upgrade.
        """
        connection, _ = saidHello(makeServer(), "EHLO t")
        self.assertEqual(codes(connection.send("MAIL FROM:<a@b.example>")), [250])
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.send("STARTTLS")],
            ["503 Error: Mail transaction in progress"],
        )

    def test_transmissionType(self) -> None:
        """
        An encrypted EHLO session is ESMTPS.
        """
        connection = upgraded(makeServer())
        connection.send("EHLO again")
        self.assertEqual(connection.session.transmissionType, "ESMTPS")

    def test_messageOverTLS(self) -> None:
        """
        A message sent after STARTTLS arrives.
        """
        recorder = RecordingHandler()
        connection = upgraded(makeServer([recorder]))
        connection.send("EHLO again", "MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(codes(connection.write(b"hello\r\n.\r\n")), [250])
        self.assertEqual(recorder.messages[0].data, b"hello\r\n")

    def test_requireTls(self) -> None:
        """
        REQUIRETLS is accepted on an encrypted connection, and advertised there when
        shown (standards 8689-01, 8689-02).
        """
        connection = upgraded(makeServer(hideREQUIRETLS=False))
        self.assertIn("REQUIRETLS", connection.send("EHLO x")[0].lines)
        self.assertEqual(codes(connection.send("MAIL FROM:<a@b.example> REQUIRETLS")), [250])
        self.assertTrue(connection.session.envelope.requireTLS)
        _, ehlo = saidHello(makeServer(hideREQUIRETLS=False), "EHLO x")
        self.assertNotIn("REQUIRETLS", ehlo.lines)

    def test_requireTlsWithValue(self) -> None:
        """
        REQUIRETLS takes no value (standards 8689-03).
        """
        connection = upgraded(makeServer())
        connection.send("EHLO x")
        self.assertEqual(codes(connection.send("MAIL FROM:<a@b.example> REQUIRETLS=yes")), [501])


class NeedsUpgradeTests(SynchronousTestCase):
    """
    needsUpgrade: nothing is sent in clear.
    """

    def test_mailBeforeStarttls(self) -> None:
        """
        MAIL before STARTTLS gets 530 5.7.0 Must issue a STARTTLS command first.
        """
        connection, _ = saidHello(
            makeServer(needsUpgrade=True, hideENHANCEDSTATUSCODES=False), "EHLO x"
        )
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.send("MAIL FROM:<a@b.example>")],
            ["530 5.7.0 Must issue a STARTTLS command first"],
        )
        self.assertEqual(codes(connection.send("NOOP")), [250])

    def test_afterStarttls(self) -> None:
        """
        After STARTTLS the transaction goes ahead.
        """
        connection = upgraded(makeServer(needsUpgrade=True))
        self.assertEqual(codes(connection.send("EHLO x", "MAIL FROM:<a@b.example>")), [250, 250])

    def test_implicitTlsSatisfiesIt(self) -> None:
        """
        With implicit TLS the requirement is met from the start.
        """
        connection, _ = saidHello(makeServer(needsUpgrade=True, secure=True), "EHLO x")
        self.assertEqual(codes(connection.send("MAIL FROM:<a@b.example>")), [250])


class ImplicitTLSTests(SynchronousTestCase):
    """
    secure=True: TLS from the first byte (RFC 8314).
    """

    def test_greetingAfterHandshake(self) -> None:
        """
        Nothing is sent in clear; the greeting comes encrypted after the handshake
        (standards 8314-01).
        """
        server = makeServer(secure=True)
        connection = connectTLS(server)
        self.assertEqual(connection.client.replies()[0].lines, (f"{MX} ESMTP",))
        self.assertTrue(connection.session.secure)

    def test_noStarttls(self) -> None:
        """
        EHLO does not offer STARTTLS and STARTTLS gets 503 (standards 8314-03).
        """
        connection, ehlo = saidHello(makeServer(secure=True), "EHLO x")
        self.assertNotIn("STARTTLS", ehlo.lines)
        self.assertEqual(codes(connection.send("STARTTLS")), [503])

    def test_plaintextClientRefused(self) -> None:
        """
        A client that speaks SMTP in clear gets no SMTP reply; the connection closes
        (standards 8314-02).
        """
        log = LogCapture(self)
        client, serverTransport, pump = connectInClear(makeServer(secure=True))
        client.transport.write(b"EHLO x\r\n")  # type: ignore[union-attr]
        pump.flush()
        self.assertNotIn(b"250", client.data)
        self.assertNotIn(b"220", client.data)
        self.assertTrue(serverTransport.disconnecting)
        # The line says why in OpenSSL's words (not the repr of its error queue), and
        # names the client, as the connection's last line does.
        [line] = log.matching("TLS handshake failed")
        self.assertRegex(line, r"^TLS handshake failed: [a-z][a-z ]+ \(127\.0\.0\.1:0\)$")

    def test_stalledHandshake(self) -> None:
        """
        A client that never sends its ClientHello is cut off after socketTimeout; the
        server goes on serving others.
        """
        log = LogCapture(self)
        server = makeServer(secure=True, socketTimeout=10)
        _, serverTransport, pump = connectInClear(server)
        pump.flush()
        server.reactor.advance(11)
        pump.flush()
        self.assertTrue(serverTransport.disconnecting)
        other = connectTLS(server)
        self.assertEqual(codes(other.client.replies()), [220])
        # One line says why, naming the client; the abort that follows is ours, not a
        # handshake the client failed.  Nor is one cut off by the server's close.
        self.assertEqual(log.matching("TLS handshake"), ["TLS handshake timed out (127.0.0.1:0)"])
        _, serverTransport, pump = connectInClear(server)
        pump.flush()
        server.close()
        pump.flush()
        self.assertTrue(serverTransport.disconnecting)
        self.assertEqual(len(log.matching("TLS handshake")), 1)

    def test_perListenerOverride(self) -> None:
        """
        One server serves plaintext and implicit TLS listeners at once.
        """
        server = makeServer()
        plain = connectTLS(server)
        self.assertEqual(codes(plain.client.replies()), [220])
        self.assertFalse(plain.session.secure)
        secure = connectTLS(server, implicit=True)
        self.assertEqual(codes(secure.client.replies()), [220])
        self.assertTrue(secure.session.secure)


class SNITests(SynchronousTestCase):
    """
    The certificate is chosen by SNI, on both paths (spec section 14 #6 fixed).
    """

    def served(self, connection: Connection) -> str | None:
        return commonName(connection.clientTransport.servedCertificate())

    def test_DANE_03_certificateChosenBySNI(self) -> None:
        """
        Over STARTTLS the SNI name picks its certificate, in any case.
        """
        connection = upgraded(makeServer(), "b.example.test")
        self.assertEqual(self.served(connection), "b.example.test")
        self.assertEqual(connection.session.servername, "b.example.test")

    def test_implicitByName(self) -> None:
        """
        With implicit TLS the SNI name picks its certificate too.
        """
        connection = connectTLS(makeServer(secure=True), creator=ClientTLS("B.EXAMPLE.TEST"))
        self.assertEqual(self.served(connection), "b.example.test")

    def test_unknownName(self) -> None:
        """
        An unknown name gets the default certificate.
        """
        connection = upgraded(makeServer(), "unknown.example.test")
        self.assertEqual(self.served(connection), MX)
        self.assertEqual(connection.session.servername, "unknown.example.test")

    def test_nameNotASCII(self) -> None:
        """
        An SNI name that is not ASCII (UTF-8, as some clients send, where RFC 6066 asks
        for A-labels) is no name of ours: the default certificate, and no error.
        """
        connection = upgraded(makeServer(), "bücher.example".encode())
        self.assertEqual(self.served(connection), MX)
        self.assertTrue(connection.session.secure)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_DANE_03_defaultCertificateWithoutSNI(self) -> None:
        """
        A client that sends no SNI gets the default certificate.
        """
        connection = upgraded(makeServer())
        self.assertEqual(self.served(connection), MX)
        self.assertIsNone(connection.session.servername)

    def test_wildcard(self) -> None:
        """
        *.wild.example.test covers one label, not two.
        """
        self.assertEqual(
            self.served(upgraded(makeServer(), "a.wild.example.test")), "*.wild.example.test"
        )
        self.assertEqual(self.served(upgraded(makeServer(), "a.b.wild.example.test")), MX)

    def test_callback(self) -> None:
        """
        SNICallback chooses the certificate instead of sniOptions; None falls back.
        """
        c = issue("c.example.test")
        asked: list[str] = []

        def choose(name: str) -> dict[str, bytes] | None:
            asked.append(name)
            return {"key": c.key, "cert": c.cert} if name == "c.example.test" else None

        server = makeServer(SNICallback=choose)
        self.assertEqual(self.served(upgraded(server, "C.example.test")), "c.example.test")
        self.assertEqual(self.served(upgraded(server, "other.example.test")), MX)
        self.assertEqual(asked, ["c.example.test", "other.example.test"])

    def test_callbackFailure(self) -> None:
        """
        A callback that raises is logged and the default certificate serves.
        """

        def broken(name: str) -> None:
            raise RuntimeError("broken lookup")

        connection = upgraded(makeServer(SNICallback=broken), "b.example.test")
        self.assertEqual(self.served(connection), MX)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unicodeKey(self) -> None:
        """
        sniOptions keys may be Unicode host names; clients send A-labels.
        """
        b = issue("xn--bcher-kva.example")
        server = makeServer(sniOptions={"b\u00fccher.example": {"key": b.key, "cert": b.cert}})
        self.assertEqual(
            self.served(upgraded(server, "xn--bcher-kva.example")), "xn--bcher-kva.example"
        )


class RotationTests(SynchronousTestCase):
    """
    updateSecureContext swaps certificates for later handshakes.
    """

    def test_DANE_04_newConnectionsUseNewCertificates(self) -> None:
        """
        After the update the default certificate and the SNI map are the new ones.
        """
        server = makeServer()
        before = upgraded(server)
        renewed = issue("renewed.example.test")
        d = issue("d.example.test")
        server.updateSecureContext(
            key=renewed.key,
            cert=renewed.cert,
            sniOptions={"d.example.test": {"key": d.key, "cert": d.cert}},
        )
        self.assertEqual(
            commonName(upgraded(server).clientTransport.servedCertificate()), "renewed.example.test"
        )
        self.assertEqual(
            commonName(upgraded(server, "d.example.test").clientTransport.servedCertificate()),
            "d.example.test",
        )
        self.assertEqual(
            commonName(upgraded(server, "b.example.test").clientTransport.servedCertificate()),
            "renewed.example.test",
        )
        self.assertEqual(codes(before.send("NOOP")), [250])
        self.assertEqual(commonName(before.clientTransport.servedCertificate()), MX)

    def test_badUpdateKeepsOld(self) -> None:
        """
        An update with a key that does not match is refused and changes nothing.
        """
        server = makeServer()
        other = issue("other.example.test")
        with self.assertRaises(ValueError):
            server.updateSecureContext(key=other.key, cert=issue("renewed.example.test").cert)
        self.assertEqual(commonName(upgraded(server).clientTransport.servedCertificate()), MX)

    def test_onlyTlsOptions(self) -> None:
        """
        updateSecureContext takes only TLS options.
        """
        with self.assertRaises(TypeError):
            makeServer().updateSecureContext(size=5)


class ClientCertificateTests(SynchronousTestCase):
    """
    requestCert, ca and rejectUnauthorized.
    """

    def server(self, handlers: list[object] | None = None, **options: Any) -> SMTPServer:
        return makeServer(handlers, requestCert=True, ca=authority().cert, **options)

    def test_verified(self) -> None:
        """
        A client certificate from the CA is accepted and recorded as verified.
        """
        connection = upgraded(self.server(), certificate=issue("client.example.test", client=True))
        session = connection.session
        self.assertEqual(commonName(session.peerCertificate), "client.example.test")
        self.assertTrue(session.peerCertificateVerified)

    def test_missingRefused(self) -> None:
        """
        Without a certificate the handshake fails when rejectUnauthorized is set.
        """
        connection = upgraded(self.server())
        self.assertTrue(connection.closed)
        self.assertFalse(connection.session.secure)

    def test_strangerRefused(self) -> None:
        """
        A certificate from another CA fails the handshake when rejectUnauthorized is set.
        """
        stranger = issue("stranger.example.test", client=True, ca="other CA")
        connection = upgraded(self.server(), certificate=stranger)
        self.assertTrue(connection.closed)

    def test_strangerRecorded(self) -> None:
        """
        With rejectUnauthorized false a stranger is served, marked as not verified.
        """
        stranger = issue("stranger.example.test", client=True, ca="other CA")
        connection = upgraded(self.server(rejectUnauthorized=False), certificate=stranger)
        self.assertEqual(codes(connection.send("NOOP")), [250])
        self.assertEqual(commonName(connection.session.peerCertificate), "stranger.example.test")
        self.assertFalse(connection.session.peerCertificateVerified)

    def test_secureHandlerSeesCertificate(self) -> None:
        """
        ISecureHandler gets the session and the client's certificate, once per handshake.
        """
        seen: list[tuple[bool, str | None]] = []

        @implementer(ISecureHandler)
        class Auditor:
            def onSecure(self, session: Session, peerCertificate: Any) -> None:
                seen.append((session.secure, commonName(peerCertificate)))

        upgraded(self.server([Auditor()]), certificate=issue("client.example.test", client=True))
        self.assertEqual(seen, [(True, "client.example.test")])


class KnownRelaysExampleTests(SynchronousTestCase):
    """
    docs/examples/known_relays.py, as docs/tls.rst shows it.
    """

    def test_onlyKnownVerifiedRelays(self) -> None:
        """
        A relay with a verified certificate for a known name is served, and recorded in
        session.data; one without a certificate, or with one for another name, gets 554
        to every command but QUIT.
        """
        knownRelays = loadExample("known_relays").KnownRelays

        def server() -> SMTPServer:
            return makeServer(
                [knownRelays({"relay1.example.test"})],
                requestCert=True,
                ca=authority().cert,
                rejectUnauthorized=False,
                hideENHANCEDSTATUSCODES=False,
            )

        known = upgraded(server(), certificate=issue("relay1.example.test", client=True))
        self.assertEqual(codes(known.send("EHLO relay1.example.test")), [250])
        self.assertEqual(known.session.data["relay"], "relay1.example.test")
        for certificate, text in [
            (None, "554 5.7.1 Client certificate required"),
            (issue("other.example.test", client=True), "554 5.7.1 Unknown relay"),
        ]:
            connection = upgraded(server(), certificate=certificate)
            self.assertEqual([wire(r) for r in connection.send("EHLO x.example")], [text])
            self.assertEqual(codes(connection.send("QUIT")), [221])


class SecureHandlerTests(SynchronousTestCase):
    """
    ISecureHandler (spec section 14 #7 fixed: called once; a refusal gets a reply).
    """

    def test_refusesAfterStarttls(self) -> None:
        """
        After the handshake the client speaks first, so a refusal is the reply, encrypted,
        to every command but QUIT (RFC 3207 section 4.1; standards 3207-10); a 421 is
        sent at once and closes the connection.
        """

        @implementer(ISecureHandler)
        class Picky:
            def __init__(self, code: int) -> None:
                self.code = code

            def onSecure(self, session: Session, peerCertificate: Any) -> None:
                raise SMTPError(self.code, f"{self.code // 100}.7.1 Client certificate required")

        server = makeServer([Picky(554)], hideENHANCEDSTATUSCODES=False)
        connection = upgraded(server)
        self.assertEqual(connection.client.replies(), [])
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.send("EHLO x", "MAIL FROM:<a@b.c>")],
            ["554 5.7.1 Client certificate required"] * 2,
        )
        self.assertEqual(codes(connection.send("QUIT")), [221])
        self.assertTrue(connection.closed)
        busy = upgraded(makeServer([Picky(421)], hideENHANCEDSTATUSCODES=False))
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in busy.client.replies()],
            ["421 4.7.1 Client certificate required"],
        )
        self.assertTrue(busy.closed)

    def test_onceForImplicitTls(self) -> None:
        """
        With implicit TLS onSecure runs once, before the greeting, after onConnect.
        """
        calls: list[str] = []

        @implementer(ISecureHandler)
        class Counter:
            def onSecure(self, session: Session, peerCertificate: Any) -> None:
                calls.append("secure")

        recorder = RecordingHandler()
        connection = connectTLS(makeServer([recorder, Counter()], secure=True, needsUpgrade=True))
        self.assertEqual(codes(connection.client.replies()), [220])
        self.assertEqual(calls, ["secure"])
        self.assertEqual(len(recorder.sessions), 1)

    def test_refusesImplicit(self) -> None:
        """
        A refusal with implicit TLS replaces the greeting; as after any refused
        greeting, the client may still say QUIT (RFC 5321 section 3.1).
        """

        @implementer(ISecureHandler)
        class No:
            def onSecure(self, session: Session, peerCertificate: Any) -> None:
                raise SMTPError(554, "Go away")

        connection = connectTLS(makeServer([No()], secure=True))
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.client.replies()], ["554 Go away"]
        )
        self.assertFalse(connection.closed)
        self.assertEqual(codes(connection.send("QUIT")), [221])
        self.assertTrue(connection.closed)

    def test_implicitSecureHandlerBug(self) -> None:
        """
        With implicit TLS, a secure handler that fails unexpectedly is logged under its
        own hook's name (not onConnect's, which runs in the same chain), and, as a
        failed connect handler, leaves no service to give: 421 instead of the greeting,
        and the connection closes.  A refusal it returns instead of raising refuses.
        """
        log = LogCapture(self)

        @implementer(ISecureHandler)
        class Buggy:
            def onSecure(self, session: Session, peerCertificate: Any) -> None:
                raise KeyError("oops")

        connection = connectTLS(makeServer([RecordingHandler(), Buggy()], secure=True))
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.client.replies()],
            ["421 Local error in processing - closing connection"],
        )
        self.assertTrue(connection.closed)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(len(log.matching("Handler failed in onSecure for session")), 1)
        self.assertEqual(log.matching("Handler failed in onConnect"), [])

        @implementer(ISecureHandler)
        class Returns:
            def onSecure(self, session: Session, peerCertificate: Any) -> SMTPError:
                return SMTPError(554, "Go away")

        connection = connectTLS(makeServer([Returns()], secure=True))
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in connection.client.replies()], ["554 Go away"]
        )


class VersionTests(SynchronousTestCase):
    """
    Protocol versions and renegotiation (RFC 8997, standards 2.10).
    """

    def test_tls11Refused(self) -> None:
        """
        A TLS 1.1 client cannot complete a handshake (standards 8314-04).
        """
        connection = connectTLS(
            makeServer(secure=True), creator=ClientTLS(maxVersion=SSL.TLS1_1_VERSION)
        )
        self.assertEqual(connection.client.replies(), [])
        self.assertTrue(connection.closed)

    def test_tls12Accepted(self) -> None:
        """
        TLS 1.2 still works.
        """
        connection = connectTLS(
            makeServer(secure=True), creator=ClientTLS(maxVersion=SSL.TLS1_2_VERSION)
        )
        self.assertEqual(codes(connection.client.replies()), [220])
        self.assertEqual(connection.session.tlsOptions.version, "TLSv1.2")
        self.assertTrue(connection.session.tlsOptions.standardName.startswith("TLS_ECDHE_"))

    def test_maxVersion(self) -> None:
        """
        maxVersion caps the version offered.
        """
        connection = connectTLS(makeServer(secure=True, maxVersion="TLSv1.2"))
        self.assertEqual(connection.session.tlsOptions.version, "TLSv1.2")

    def test_renegotiationRefused(self) -> None:
        """
        A TLS 1.2 client asking to renegotiate is refused, and the post-handshake reset
        never runs twice.
        """
        server = makeServer(secure=True)
        connection, _ = saidHello(
            server, "EHLO x", creator=ClientTLS(maxVersion=SSL.TLS1_2_VERSION)
        )
        handle = connection.clientTransport.getHandle()
        handle.renegotiate()
        with contextlib.suppress(SSL.WantReadError):
            handle.do_handshake()
        connection.clientTransport.tlsProtocol._flushSendBIO()  # type: ignore[union-attr]
        connection.pump.flush()
        self.assertEqual(connection.protocol._handshakes, 1)
        self.assertEqual(connection.session.hostNameAppearsAs, "x")


def rsaPair(cn: str) -> KeyPair:
    """
    A self-signed certificate for C{cn} with an RSA key (the test authority's are ECDSA).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class ConfigurationTests(SynchronousTestCase):
    """
    Certificates given, missing or wrong.
    """

    def test_developmentCertificate(self) -> None:
        """
        Without key and cert the server makes a self-signed certificate for its name.
        """
        server = SMTPServer(
            reactor=Clock(), name="dev.example.test", authOptional=True, earlyTalkerDelay=0
        )
        connection = connectTLS(server, implicit=True)
        self.assertEqual(
            commonName(connection.clientTransport.servedCertificate()), "dev.example.test"
        )

    def test_developmentCertificateIsFresh(self) -> None:
        """
        Each development certificate has its own key: none is shipped.
        """
        self.assertNotEqual(developmentCertificate("a")[0], developmentCertificate("a")[0])

    def test_keyWithoutCertificate(self) -> None:
        """
        A key without a certificate is a configuration error.
        """
        with self.assertRaises(TLSConfigurationError):
            makeServer(cert=None)

    def test_mismatchedKey(self) -> None:
        """
        A key that does not belong to the certificate is refused at start.
        """
        with self.assertRaises(TLSConfigurationError) as caught:
            makeServer(key=issue("other.example.test").key)
        self.assertIn("does not match", str(caught.exception))

    def test_unreadableCertificate(self) -> None:
        """
        Garbage instead of a certificate is refused with a readable message.
        """
        with self.assertRaises(TLSConfigurationError) as caught:
            makeServer(cert=b"not a certificate")
        self.assertIn("certificate", str(caught.exception))

    def test_sniEntryNeedsKey(self) -> None:
        """
        An SNI entry without its key is refused.
        """
        with self.assertRaises(TLSConfigurationError):
            makeServer(sniOptions={"x.example.test": {"cert": issue("x.example.test").cert}})

    def test_sniNamesAreHostNames(self) -> None:
        """
        An SNI name that no client could send (not a host name, or a * that is not the
        whole first label before two others) is refused as the server is built, instead
        of never being chosen.
        """
        x = issue("x.example.test")
        for host in ("bad host!", "*.*.example.test", "*.test", "x.*.example.test", "a..b"):
            with self.assertRaises(TLSConfigurationError, msg=host) as caught:
                makeServer(sniOptions={host: {"key": x.key, "cert": x.cert}})
            self.assertIn(f"option sniOptions: {host!r} is not a host name", str(caught.exception))
        for host in ("x.example.test", "*.example.test", "X.Example.Test.", "b\u00fccher.example"):
            makeServer(sniOptions={host: {"key": x.key, "cert": x.cert}})

    def test_ciphersUnusableWithTheKey(self) -> None:
        """
        A cipher list that leaves no suite for the certificate's kind of key (RSA suites
        for an ECDSA key) at the versions allowed (up to TLS 1.2, where the list applies)
        is refused as the server is built, saying so, rather than failing every
        handshake with "no shared cipher"; the same list with TLS 1.3 allowed, or suites
        for the key, are served.
        """
        with self.assertRaises(TLSConfigurationError) as caught:
            makeServer(maxVersion="TLSv1.2", ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        self.assertEqual(
            str(caught.exception),
            "option ciphers 'ECDHE-RSA-AES128-GCM-SHA256' leaves no cipher suite for the "
            "certificate, whose key is ECDSA, at TLSv1.2 (no shared cipher): every "
            "handshake would fail",
        )
        connection = connectTLS(makeServer(secure=True, ciphers="ECDHE-RSA-AES128-GCM-SHA256"))
        self.assertEqual(connection.session.tlsOptions.version, "TLSv1.3")
        connection = connectTLS(
            makeServer(secure=True, maxVersion="TLSv1.2", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
        )
        self.assertEqual(
            connection.session.tlsOptions.standardName, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        )

    def test_ciphersUnusableWithAnSNICertificate(self) -> None:
        """
        Each SNI certificate is checked too, as the server is built and when certificates
        are updated (the old ones then stay).
        """
        rsa = rsaPair("rsa.example.test")
        ecdsaOnly: dict[str, Any] = {
            "maxVersion": "TLSv1.2",
            "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256",
        }
        with self.assertRaises(TLSConfigurationError) as caught:
            makeServer(
                sniOptions={"rsa.example.test": {"key": rsa.key, "cert": rsa.cert}}, **ecdsaOnly
            )
        self.assertIn(
            "SNI certificate for rsa.example.test: option ciphers "
            "'ECDHE-ECDSA-AES128-GCM-SHA256' leaves no cipher suite for the certificate, whose "
            "key is RSA, at TLSv1.2",
            str(caught.exception),
        )
        server = makeServer(**ecdsaOnly)
        with self.assertRaises(TLSConfigurationError):
            server.updateSecureContext(key=rsa.key, cert=rsa.cert)
        self.assertEqual(commonName(upgraded(server).clientTransport.servedCertificate()), MX)

    def test_ciphersUnusableWithACallbackCertificate(self) -> None:
        """
        A certificate from SNICallback meets the same check when it is first returned:
        one the cipher list leaves no suite for is said once in a warning, not a
        traceback, and the default certificate serves its name (a handshake, where the
        chosen one would fail them all).
        """
        capture = LogCapture(self)
        rsa = rsaPair("rsa.example.test")
        asked: list[str] = []

        def choose(name: str) -> dict[str, bytes]:
            asked.append(name)
            return {"key": rsa.key, "cert": rsa.cert}

        server = makeServer(
            maxVersion="TLSv1.2", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", SNICallback=choose
        )
        for _ in range(2):
            connection = upgraded(server, "rsa.example.test")
            self.assertTrue(connection.session.secure)
            self.assertEqual(commonName(connection.clientTransport.servedCertificate()), MX)
        self.assertEqual(asked, ["rsa.example.test"] * 2)
        (warning,) = capture.matching("SNICallback's certificate")
        self.assertIn(
            "SNICallback's certificate for rsa.example.test is unusable, the default "
            "certificate serves: option ciphers 'ECDHE-ECDSA-AES128-GCM-SHA256' leaves no "
            "cipher suite for the certificate, whose key is RSA, at TLSv1.2",
            warning,
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_callbackKeyMismatch(self) -> None:
        """
        A key that is not the certificate's, from SNICallback, is a warning too, and the
        default certificate serves.
        """
        capture = LogCapture(self)
        c, d = issue("c.example.test"), issue("d.example.test")
        server = makeServer(SNICallback=lambda name: {"key": d.key, "cert": c.cert})
        connection = upgraded(server, "c.example.test")
        self.assertTrue(connection.session.secure)
        self.assertEqual(commonName(connection.clientTransport.servedCertificate()), MX)
        (warning,) = capture.matching("SNICallback's certificate")
        self.assertIn("the private key does not match the certificate", warning)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_callbackReturnsWhatIsNoCertificate(self) -> None:
        """
        What SNICallback returns that is not a key and a certificate (no mapping, no
        cert, no PEM data) is a warning, once, not a traceback at each handshake (attack
        QA), and the default certificate serves; PEM text given as str may have
        non-ASCII text around its blocks.
        """
        c = issue("c.example.test")
        for returned in ("not a mapping", {"key": c.key}, {"key": 5, "cert": c.cert}):
            capture = LogCapture(self)
            server = makeServer(SNICallback=lambda name, r=returned: r)
            for _ in range(2):
                connection = upgraded(server, "c.example.test")
                self.assertEqual(
                    commonName(connection.clientTransport.servedCertificate()), MX, returned
                )
            self.assertEqual(len(capture.matching("SNICallback's certificate")), 1, returned)
            self.assertEqual(self.flushLoggedErrors(), [])
        text = {
            "key": c.key.decode("ascii"),
            "cert": "Subject: CN=M\u00fcller\n" + c.cert.decode("ascii"),
        }
        connection = upgraded(makeServer(SNICallback=lambda name: text), "c.example.test")
        self.assertEqual(
            commonName(connection.clientTransport.servedCertificate()), "c.example.test"
        )

    def test_callbackCertificateProblems(self) -> None:
        """
        A certificate from SNICallback gets, when it is first returned, the warnings an
        sniOptions one gets at start (QA: an expired one was served without a word): it
        is served all the same, and warned about once, however many handshakes it serves.
        A good certificate gets no warning.
        """
        capture = LogCapture(self)
        stale = certify("old.example.test", validDays=(-30, -1))
        current = issue("c.example.test")

        def choose(name: str) -> dict[str, bytes]:
            pair = stale if name == "old.example.test" else current
            return {"key": pair.key, "cert": pair.cert}

        server = makeServer(SNICallback=choose)
        for _ in range(2):
            for name in ("old.example.test", "c.example.test"):
                connection = upgraded(server, name)
                self.assertEqual(commonName(connection.clientTransport.servedCertificate()), name)
        (warning,) = capture.matching("expired")
        self.assertIn("The certificate for old.example.test expired on", warning)
        self.assertEqual(capture.matching("c.example.test"), [])
        # Returned for a name it does not cover, once built for one it does: that is
        # said too, once (attack QA: only the first name was checked).
        for _ in range(2):
            connection = upgraded(server, "d.example.test")
            self.assertEqual(
                commonName(connection.clientTransport.servedCertificate()), "c.example.test"
            )
        self.assertEqual(len(capture.matching("does not cover d.example.test")), 1)
        self.assertEqual(capture.matching("does not cover c.example.test"), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_callbackContextsBounded(self) -> None:
        """
        The contexts made from what SNICallback returned are bounded: a callback that
        returns new PEM data each time does not fill memory, and the oldest are dropped.
        """
        self.patch(_tls, "_CALLBACK_CONTEXTS", 2)
        pairs = [issue(f"{n}.example.test") for n in range(3)]
        server = makeServer(
            SNICallback=lambda name: {
                "key": pairs[int(name[0])].key,
                "cert": pairs[int(name[0])].cert,
            }
        )
        for n in range(3):
            connection = upgraded(server, f"{n}.example.test")
            self.assertEqual(
                commonName(connection.clientTransport.servedCertificate()), f"{n}.example.test"
            )
        assert server.tls is not None
        self.assertEqual(list(server.tls._callbackContexts), [(p.key, p.cert) for p in pairs[1:]])

    def test_standardCipherNames(self) -> None:
        """
        OpenSSL cipher names map to their IANA names.
        """
        self.assertEqual(
            standardCipherName("ECDHE-RSA-AES256-GCM-SHA384"),
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        )
        self.assertEqual(
            standardCipherName("ECDHE-ECDSA-CHACHA20-POLY1305"),
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        )
        self.assertEqual(standardCipherName("TLS_AES_128_GCM_SHA256"), "TLS_AES_128_GCM_SHA256")
        self.assertEqual(standardCipherName("WEIRD-CIPHER"), "WEIRD-CIPHER")


def kinds(problems: list[TLSProblem]) -> list[str]:
    """
    What kind each of C{problems} is.
    """
    return [p.problem for p in problems]


class CertificateProblemsTests(SynchronousTestCase):
    """
    STS-01: what MTA-STS and DANE senders would refuse in a certificate or in the TLS
    versions, found without a handshake.
    """

    def test_goodCertificate(self) -> None:
        """
        A current certificate whose subjectAltName has the name has no problems, given
        loaded or as PEM with its chain after it.
        """
        leaf = certify(MX)
        self.assertEqual(certificateProblems(leaf.certificate, MX), [])
        chain = leaf.cert + certify("smtpsvc test intermediate", authority=True).cert
        self.assertEqual(certificateProblems(chain, MX), [])
        self.assertEqual(certificateProblems(chain.decode("ascii"), MX), [])

    def test_nameComparedAsSNISendsIt(self) -> None:
        """
        Names are compared case-insensitively, without a trailing dot, international
        names as A-labels.
        """
        self.assertEqual(certificateProblems(certify(MX).certificate, "MX.Example.Test."), [])
        idn = certify("xn--bcher-kva.example.test").certificate
        self.assertEqual(certificateProblems(idn, "B\u00fccher.example.test"), [])

    def test_otherName(self) -> None:
        """
        A certificate for another name does not cover the name, and the problem says
        which names it has and what senders will do.
        """
        problems = certificateProblems(certify("other.example.test").certificate, MX)
        self.assertEqual(kinds(problems), ["name"])
        self.assertEqual(problems[0].name, MX)
        self.assertIn(f"does not cover {MX}", problems[0].text)
        self.assertIn("other.example.test", problems[0].text)
        self.assertIn("MTA-STS", problems[0].text)

    def test_commonNameDoesNotCount(self) -> None:
        """
        A name in the subject's CN only, without a subjectAltName, does not count.
        """
        problems = certificateProblems(certify(MX, names=()).certificate, MX)
        self.assertEqual(kinds(problems), ["name"])
        self.assertIn("no subjectAltName", problems[0].text)

    def test_wildcardCoversOneLeftmostLabel(self) -> None:
        """
        C{*.example.test} covers C{mx.example.test}, but neither C{a.mx.example.test}
        nor C{example.test}.
        """
        wildcard = certify("*.example.test").certificate
        self.assertEqual(certificateProblems(wildcard, MX), [])
        self.assertEqual(kinds(certificateProblems(wildcard, "a.mx.example.test")), ["name"])
        self.assertEqual(kinds(certificateProblems(wildcard, "example.test")), ["name"])

    def test_wildcardOnlyAsWholeLeftmostLabel(self) -> None:
        """
        A C{*} inside a label, below the leftmost label, or over a single label (a whole
        top-level domain) covers nothing.
        """
        for pattern, name in [
            ("m*.example.test", MX),
            ("mx.*.test", MX),
            ("*.test", "example.test"),
        ]:
            certificate = certify("x", names=[pattern]).certificate
            self.assertEqual(kinds(certificateProblems(certificate, name)), ["name"], pattern)

    def test_sniWildcardEntryNeedsTheWildcard(self) -> None:
        """
        Checked for an SNI wildcard entry's own name (C{*.example.test}), a certificate
        must have that wildcard: one for a single host under it does not serve the rest.
        """
        name = "*.example.test"
        self.assertEqual(certificateProblems(certify(name).certificate, name), [])
        self.assertEqual(kinds(certificateProblems(certify(MX).certificate, name)), ["name"])

    def test_addressDoesNotCoverName(self) -> None:
        """
        An IP address in the subjectAltName does not cover a host name; it covers that
        address.
        """
        byAddress = certify(MX, names=[ipaddress.ip_address("192.0.2.25")]).certificate
        problems = certificateProblems(byAddress, MX)
        self.assertEqual(kinds(problems), ["name"])
        self.assertIn("no subjectAltName DNS names", problems[0].text)
        self.assertEqual(certificateProblems(byAddress, "192.0.2.25"), [])

    def test_validity(self) -> None:
        """
        A certificate not valid yet, or expired, is a problem, checked at C{now}.
        """
        self.assertEqual(
            kinds(certificateProblems(certify(MX, validDays=(1, 30)).certificate, MX)),
            ["notYetValid"],
        )
        self.assertEqual(
            kinds(certificateProblems(certify(MX, validDays=(-30, -1)).certificate, MX)),
            ["expired"],
        )
        current = certify(MX).certificate
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=60)
        problems = certificateProblems(current, MX, now=later)
        self.assertEqual(kinds(problems), ["expired"])
        self.assertIn(f"{current.not_valid_after_utc:%Y-%m-%d}", problems[0].text)

    def test_versions(self) -> None:
        """
        A minimum below TLS 1.2, or a maximum below it, is a problem; TLS 1.2 and 1.3
        are not.
        """
        self.assertEqual(kinds(versionProblems(MX, "TLSv1", None)), ["minVersion"])
        self.assertEqual(kinds(versionProblems(MX, "TLSv1.1", None)), ["minVersion"])
        self.assertEqual(kinds(versionProblems(MX, "TLSv1.2", "TLSv1.1")), ["maxVersion"])
        self.assertEqual(versionProblems(MX, "TLSv1.2", None), [])
        self.assertEqual(versionProblems(MX, "TLSv1.3", "TLSv1.3"), [])

    def test_settings(self) -> None:
        """
        A server's settings are checked as a whole: the default certificate for the
        server's name (unless told not to), and each SNI certificate for its host.
        """
        self.assertEqual(settingsProblems(makeServer().tls.settings), [])
        other = makeServer(name="other.example.test").tls.settings
        problems = settingsProblems(other)
        self.assertEqual([(p.problem, p.name) for p in problems], [("name", "other.example.test")])
        self.assertEqual(settingsProblems(other, checkDefault=False), [])
        wrong = issue("wrong.example.test")
        sni = {"c.example.test": {"key": wrong.key, "cert": wrong.cert}}
        problems = settingsProblems(makeServer(sniOptions=sni).tls.settings)
        self.assertEqual([(p.problem, p.name) for p in problems], [("name", "c.example.test")])

    def test_libraryServerSilent(self) -> None:
        """
        C{SMTPServer} itself does not warn: the check is for C{twist smtpsvc}, or for
        whoever calls it.
        """
        capture = LogCapture(self)
        makeServer(name="other.example.test", minVersion="TLSv1")
        self.assertEqual([e for e in capture.events if e.get("log_level") == LogLevel.warn], [])


class FlakyTLS(ServerTLS):
    """
    The server's TLS, except that the next C{failures} connections cannot be made: each
    attempt raises C{error} instead (OpenSSL out of memory, say).

    @ivar made: how many connections were made.
    """

    def __init__(self, server: SMTPServer, error: Exception, failures: int = 1) -> None:
        super().__init__(server.tls.settings)
        self.error = error
        self.failures = failures
        self.made = 0

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.made += 1
        return super().serverConnectionForTLS(tlsProtocol)


class TLSUnavailableTests(SynchronousTestCase):
    """
    STARTTLS when TLS cannot start: 454 for a passing reason (standards 3207-05), and
    no STARTTLS at all where the transport cannot do TLS.
    """

    def flaky(self, error: Exception | None = None, **options: Any) -> SMTPServer:
        server = makeServer(**options)
        server.tls = FlakyTLS(server, error or SSL.Error("no memory for a connection"))
        return server

    def test_3207_05_454AndTheSessionGoesOnInClear(self) -> None:
        """
        STARTTLS gets 454 4.7.0 instead of 220 when the connection cannot be made; the
        session keeps its EHLO and mail goes ahead in clear.
        """
        connection, _ = saidHello(self.flaky(hideENHANCEDSTATUSCODES=False), "EHLO x")
        reply = connection.send("STARTTLS")
        self.assertEqual(
            [(r.code, r.lines) for r in reply],
            [(454, ("4.7.0 TLS not available due to temporary reason",))],
        )
        self.assertFalse(connection.session.secure)
        self.assertFalse(connection.closed)
        self.assertEqual(connection.session.openingCommand, "EHLO")
        self.assertEqual(
            codes(connection.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>")),
            [250, 250],
        )

    def test_unsynchronizedAfter454(self) -> None:
        """
        STARTTLS ends a pipelined group (RFC 3207 section 4): with
        C{forbidUnauthPipelining}, a MAIL sent with it is not run after the 454; the
        client gets 554 5.5.0 and is disconnected.
        """
        server = self.flaky(forbidUnauthPipelining=True, hideENHANCEDSTATUSCODES=False)
        connection, _ = saidHello(server, "EHLO x")
        replies = connection.send("STARTTLS", "MAIL FROM:<a@b.example>")
        self.assertEqual(codes(replies), [454, 554])
        self.assertIsNone(connection.session.envelope.mailFrom)
        self.assertTrue(connection.closed)

    def test_3207_05_loggedWithoutTraceback(self) -> None:
        """
        The reason is logged as a warning with the session's id; an OpenSSL error is a
        condition of the moment, not a bug, so no traceback.
        """
        capture = LogCapture(self)
        connection, _ = saidHello(self.flaky(), "EHLO x")
        connection.send("STARTTLS")
        events = [e for e in capture.events if e.get("log_format") == "Cannot start TLS: {reason}"]
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(events[0]["sessionId"], connection.session.id)
        self.assertIn("no memory for a connection", events[0]["reason"])
        self.assertNotIn("log_failure", events[0])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pipelinedCommandsStillAnswered(self) -> None:
        """
        What the client pipelined after a refused STARTTLS is read as usual: nothing
        was promised, so nothing is discarded.
        """
        connection, _ = saidHello(self.flaky(), "EHLO x")
        self.assertEqual(codes(connection.send("STARTTLS", "NOOP")), [454, 250])

    def test_laterStarttlsWorks(self) -> None:
        """
        The failure is temporary: a later STARTTLS gets 220 and the handshake.
        """
        server = self.flaky()
        connection, _ = saidHello(server, "EHLO x")
        self.assertEqual(codes(connection.send("STARTTLS")), [454])
        self.assertEqual(codes(connection.send("STARTTLS")), [220])
        connection.startTLS(ClientTLS())
        self.assertTrue(connection.session.secure)
        self.assertEqual(codes(connection.send("EHLO x")), [250])

    def test_oneConnectionPerStarttls(self) -> None:
        """
        Making the connection before the 220 costs nothing more: one connection per
        handshake, as before.
        """
        server = self.flaky()
        tls = server.tls
        assert isinstance(tls, FlakyTLS)
        tls.failures = 0
        upgraded(server)
        self.assertEqual(tls.made, 1)

    def test_unexpectedErrorLoggedWith454(self) -> None:
        """
        Anything else going wrong is a bug: logged with its traceback, and the client
        still gets 454 and a working session.
        """
        connection, _ = saidHello(self.flaky(RuntimeError("a bug")), "EHLO x")
        self.assertEqual(codes(connection.send("STARTTLS", "NOOP")), [454, 250])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_implicitTLSUnavailableCloses(self) -> None:
        """
        On an implicit TLS port nothing may be said in clear: the connection is closed
        without a reply.
        """
        server = self.flaky(secure=True)
        connection = connectTLS(server)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.client.data, b"")

    def test_transportWithoutTLS(self) -> None:
        """
        A transport that cannot start TLS (a pipe, a StringTransport) is not offered
        STARTTLS, and STARTTLS gets 502 there, as a command that is not available.
        """
        server = makeServer()
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
        protocol = server.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        transport.clear()
        protocol.dataReceived(b"EHLO x\r\n")
        ehlo = parseReplies(transport.value())
        self.assertEqual(codes(ehlo), [250])
        self.assertNotIn("STARTTLS", ehlo[0].lines)
        transport.clear()
        protocol.dataReceived(b"STARTTLS\r\nNOOP\r\n")
        self.assertEqual(codes(parseReplies(transport.value())), [502, 250])

    def test_memoryClientOffersStarttls(self) -> None:
        """
        L{MemoryClient} looks like a TCP client: STARTTLS is offered and gets 220; as it
        cannot do the handshake, writing afterwards raises.
        """
        client = MemoryClient(makeServer())
        self.assertIn("STARTTLS", client.send("EHLO x")[0].lines)
        self.assertEqual(codes(client.send("STARTTLS")), [220])
        self.assertRaises(RuntimeError, client.send, "EHLO x")
