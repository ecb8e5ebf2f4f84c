"""
End-to-end TLS tests: real clients (smtplib with C{ssl}, C{openssl s_client}, raw sockets)
against servers on 127.0.0.1, over real sockets.

STARTTLS, implicit TLS, SNI on both paths, client certificates, protocol versions,
certificate rotation and the STARTTLS injection defence are each shown once here with the
tools people use; the finer points are tested in memory in L{tests.test_tls}.  The
C{twist smtpsvc} TLS flags and the documentation's C{docs/examples/tls_server.py} run for
real too.  Certificates come from L{tests.memorytls}: every server certificate is for a
C{*.example.test} name, signed by the test CA, and clients verify it.
"""

from __future__ import annotations

import mailbox
import os
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from smtpsvc import ISecureHandler, Session, SMTPServer
from smtpsvc.testing import RecordingHandler, ServerReply

from .e2e_support import (
    CLIENT_NAME,
    LISTEN,
    LOCALHOST,
    SOCKET_TIMEOUT,
    E2ETestCase,
    LogCapture,
    LoopbackSMTP,
    LoopbackSMTPSSL,
    RawClient,
    ServerClosedError,
    assertTwistRefuses,
    clientContext,
    connectionRefused,
    haveOpenSSL,
    listenAlso,
    loadExample,
    runOpenSSL,
    startServer,
    startTwist,
    theReactor,
    workspace,
)
from .memorytls import KeyPair, authority, commonName, issue

MX = "mx.example.test"
B = "b.example.test"
C = "c.example.test"
SENDER = "a@example.org"
RECIPIENT = "b@example.net"
MESSAGE = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: tls\r\n\r\nover TLS\r\n"
NO_OPENSSL = "the openssl command is not installed (apt-get install openssl)"
# What s_client sends once TLS is up (it adds the CR of each line: -crlf).
EHLO_QUIT = f"EHLO {CLIENT_NAME}\nQUIT\n".encode()


# -- certificates and servers ------------------------------------------------------------------


def writePEMs(testCase: E2ETestCase) -> dict[str, str]:
    """
    Write the test certificates and keys into a new directory, for the command-line tools.

    @return: the paths by name: C{ca} (the test CA); C{mx.crt}, C{mx.key}, C{b.crt},
        C{b.key} (server certificates); C{client.crt}, C{client.key} (a client certificate
        from the CA); C{stranger.crt}, C{stranger.key} (a client certificate from another
        CA); C{c.pem} (certificate and key in one file for c.example.test).
    """
    directory = workspace(testCase)
    pairs: dict[str, KeyPair] = {
        "mx": issue(MX),
        "b": issue(B),
        "client": issue("client.example.test", client=True),
        "stranger": issue("stranger.example.test", client=True, ca="other CA"),
    }
    contents: dict[str, bytes] = {"ca": authority().cert, "c.pem": issue(C).cert + issue(C).key}
    for name, pair in pairs.items():
        contents[f"{name}.crt"] = pair.cert
        contents[f"{name}.key"] = pair.key
    paths: dict[str, str] = {}
    for name, content in contents.items():
        paths[name] = os.path.join(directory, name if "." in name else f"{name}.pem")
        Path(paths[name]).write_bytes(content)
    return paths


def startTLSServer(
    testCase: E2ETestCase, handlers: list[object], **options: Any
) -> Deferred[tuple[SMTPServer, int]]:
    """
    L{startServer} with TLS: named and certified as mx.example.test, with an SNI
    certificate for b.example.test, unless C{options} say otherwise.
    """
    mx, b = issue(MX), issue(B)
    options.setdefault("name", MX)
    options.setdefault("key", mx.key)
    options.setdefault("cert", mx.cert)
    options.setdefault("sniOptions", {B: {"key": b.key, "cert": b.cert}})
    return startServer(testCase, handlers, **options)


def trustingContext() -> ssl.SSLContext:
    """
    A client context that trusts the test CA (only) and checks host names.
    """
    return clientContext(authority().cert)


def peerCommonName(sock: object) -> str | None:
    """
    The CN of the certificate the server presented on C{sock}, an C{ssl.SSLSocket}.
    """
    assert isinstance(sock, ssl.SSLSocket), f"not a TLS socket: {sock!r}"
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return commonName(x509.load_der_x509_certificate(der))


@dataclass(frozen=True)
class Handshake:
    """
    What an L{ISecureHandler} was told about one handshake.
    """

    peerName: str | None
    verified: bool
    version: str | None
    servername: str | None


@implementer(ISecureHandler)
class SecureRecorder:
    """
    Records every handshake it is told about.
    """

    def __init__(self) -> None:
        self.handshakes: list[Handshake] = []

    def onSecure(self, session: Session, peerCertificate: object) -> None:
        certificate = peerCertificate if isinstance(peerCertificate, x509.Certificate) else None
        version = session.tlsOptions.version if session.tlsOptions else None
        self.handshakes.append(
            Handshake(
                commonName(certificate),
                session.peerCertificateVerified,
                version,
                session.servername,
            )
        )


# -- openssl s_client -------------------------------------------------------------------------


@dataclass(frozen=True)
class SClient:
    """
    What one C{openssl s_client -brief} run printed: on stderr its account of the
    handshake, on stdout only what it received through TLS.
    """

    returncode: int
    stdout: str
    stderr: str

    @property
    def subject(self) -> str | None:
        """
        The served certificate's subject as C{CN=...}, if the handshake got that far.
        """
        match = re.search(r"^Peer certificate: (.*)$", self.stderr, re.MULTILINE)
        return match.group(1).replace(" ", "") if match else None

    @property
    def replies(self) -> list[str]:
        """
        The SMTP reply lines received through TLS.
        """
        return self.stdout.splitlines()

    def __str__(self) -> str:
        return f"status {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


async def sClient(port: int, *args: str, stdin: bytes = EHLO_QUIT) -> SClient:
    """
    Run C{openssl s_client -brief} against 127.0.0.1:C{port} with C{args}, sending
    C{stdin} once TLS is up and the greeting came (C{-crlf} makes each LF a CRLF), and
    reading until the server closes the connection (C{-ign_eof}; it also keeps s_client
    from taking a line that starts with Q or R as a command of its own).
    """
    result = await runOpenSSL(
        ["s_client", "-connect", f"{LOCALHOST}:{port}", "-brief", "-crlf", "-ign_eof", *args],
        stdin,
        # With STARTTLS s_client reads the greeting itself; with implicit TLS it would
        # send at once, before the greeting.
        afterReply="-starttls" not in args,
    )
    return SClient(result.returncode, result.stdout, result.stderr)


class _OpenSSLTestCase(E2ETestCase):
    """
    Skips its tests when the openssl command is missing.
    """

    def setUp(self) -> None:
        if not haveOpenSSL():
            raise SkipTest(NO_OPENSSL)


# -- the tests ----------------------------------------------------------------------------------


class STARTTLSTests(_OpenSSLTestCase):
    """
    STARTTLS (RFC 3207) with smtplib, openssl and a raw socket.
    """

    async def test_smtplibDelivers(self) -> None:
        """
        smtplib upgrades with STARTTLS, verifying mx.example.test against the test CA, and
        delivers; the server's session records the version and cipher the client sees.
        """
        recorder = RecordingHandler()
        _, port = await startTLSServer(self, [recorder])

        def talk() -> tuple[bool, str | None, str | None, str, dict[str, tuple[int, bytes]]]:
            with LoopbackSMTP(MX, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT) as c:
                c.ehlo()
                offered = c.has_extn("starttls")
                c.starttls(context=trustingContext())
                sock = c.sock
                assert isinstance(sock, ssl.SSLSocket)
                served, version, cipher = peerCommonName(sock), sock.version(), sock.cipher()
                assert cipher is not None
                refused = c.sendmail(SENDER, [RECIPIENT], MESSAGE)
                c.quit()
            return offered, served, version, cipher[0], refused

        offered, served, version, cipher, refused = await deferToThread(talk)
        self.assertTrue(offered)
        self.assertEqual(served, MX)
        self.assertEqual(refused, {})
        self.assertEqual([m.data for m in recorder.messages], [MESSAGE])
        session = recorder.sessions[0]
        self.assertTrue(session.secure)
        assert session.tlsOptions is not None
        self.assertEqual(session.tlsOptions.version, version)
        self.assertEqual(session.tlsOptions.version, "TLSv1.3")
        self.assertEqual(session.tlsOptions.name, cipher)
        self.assertEqual(session.servername, MX)
        self.assertEqual(session.transmissionType, "ESMTPS")

    async def _starttlsSClient(self, *servername: str) -> tuple[SClient, RecordingHandler]:
        """
        Run C{openssl s_client -starttls smtp}, sending C{-servername} with the name if
        one is given, verifying the server against the test CA, with EHLO and QUIT once
        TLS is up, against a new TLS server; the handshake verifies and QUIT is answered.

        @return: what s_client printed, and the server's recorder.
        """
        recorder = RecordingHandler()
        _, port = await startTLSServer(self, [recorder])
        paths = writePEMs(self)
        sni = [arg for name in servername for arg in ("-servername", name)]
        result = await sClient(
            port,
            *("-starttls", "smtp", "-name", CLIENT_NAME, *sni),
            *("-CAfile", paths["ca"], "-verify_return_error"),
        )
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("221 Bye", result.replies, result)
        return result, recorder

    async def test_opensslSNI(self) -> None:
        """
        openssl s_client -starttls smtp -servername b.example.test is served b's
        certificate, which verifies; after the upgrade EHLO offers no STARTTLS.
        """
        result, recorder = await self._starttlsSClient(B)
        self.assertEqual(result.subject, f"CN={B}", result)
        self.assertTrue(result.replies[0].startswith(f"250-{MX} Nice to meet you"), result)
        self.assertNotIn("STARTTLS", " ".join(result.replies), result)
        self.assertEqual(recorder.sessions[0].servername, B)

    async def test_opensslUnknownName(self) -> None:
        """
        An SNI name the server has no certificate for gets the default certificate.
        """
        result, recorder = await self._starttlsSClient("unknown.example.test")
        self.assertEqual(result.subject, f"CN={MX}", result)
        self.assertEqual(recorder.sessions[0].servername, "unknown.example.test")

    async def test_opensslNoName(self) -> None:
        """
        A client that sends no SNI (s_client to an IP address, without -servername) gets
        the default certificate.
        """
        result, recorder = await self._starttlsSClient()
        self.assertEqual(result.subject, f"CN={MX}", result)
        self.assertIsNone(recorder.sessions[0].servername)

    async def test_pipelinedPlaintextDiscarded(self) -> None:
        """
        STARTTLS and NOOP in one write get exactly the 220; the NOOP is never answered,
        neither in clear nor inside TLS, and EHLO inside TLS offers no STARTTLS
        (standards 2.1, CVE-2011-0411).
        """
        _, port = await startTLSServer(self, [])
        logs = LogCapture(self)

        def talk() -> tuple[ServerReply, bytes, bytes, ServerReply, ServerReply]:
            with RawClient(port) as client:
                self.assertEqual(client.readReply().code, 220)
                self.assertEqual(client.command("EHLO t").code, 250)
                client.send(b"STARTTLS\r\nNOOP\r\n")
                ready = client.readReply()
                inClear = client.readAvailable(0.3)
                client.startTLS(trustingContext(), MX)
                inTLS = client.readAvailable(1.0)
                ehlo = client.command("EHLO t")
                noop = client.command("NOOP")
            return ready, inClear, inTLS, ehlo, noop

        ready, inClear, inTLS, ehlo, noop = await deferToThread(talk)
        self.assertEqual(ready.code, 220)
        self.assertEqual(inClear, b"")
        self.assertEqual(inTLS, b"", "the NOOP sent in clear was answered inside TLS")
        self.assertEqual(ehlo.code, 250)
        self.assertNotIn("STARTTLS", ehlo.lines)
        self.assertEqual(noop.code, 250)
        self.assertEqual(
            len(logs.matching("Discarded 6 bytes sent in clear after STARTTLS")), 1, logs.messages()
        )

    async def test_closeNotifyDuringBDATThenClear(self) -> None:
        """
        Exim's "Dead.Letter" (CVE-2026-45185, standards 2.14): over STARTTLS, C{BDAT 100}
        with 10 of its bytes, then the client's close_notify, then one byte in clear.  The
        server closes the TCP connection without a reply in clear, nothing is delivered,
        and it goes on serving.
        """
        recorder = RecordingHandler()
        _, port = await startTLSServer(self, [recorder])

        def talk() -> tuple[bytes, bytes]:
            with RawClient(port) as client:
                client.readReply()
                client.command("EHLO t")
                self.assertEqual(client.command("STARTTLS").code, 220)
                client.startTLS(trustingContext(), MX)
                client.command("EHLO t")
                self.assertEqual(client.command("MAIL FROM:<a@example.org>").code, 250)
                self.assertEqual(client.command("RCPT TO:<u@example.org>").code, 250)
                client.send(b"BDAT 100\r\n0123456789")
                tlsSocket = client.sock
                assert isinstance(tlsSocket, ssl.SSLSocket)
                try:
                    # Sends close_notify; Python then waits for the server's.
                    client.sock = tlsSocket.unwrap()
                except (OSError, ValueError):
                    # The server closed the connection at once: that is a pass too.
                    return b"", b""
                try:
                    client.send(b"X")
                except OSError:
                    return b"", b""
                tail = client.readAvailable(3.0)
                # The connection is closed: a read gives end of file (or a reset).
                try:
                    client.sock.settimeout(1.0)
                    after = client.sock.recv(100)
                except ConnectionResetError:
                    after = b""
                return tail, after

        tail, after = await deferToThread(talk)
        self.assertEqual(tail, b"", "the server answered in clear after close_notify")
        self.assertEqual(after, b"", "the connection is still open")
        self.assertEqual(recorder.messages, [])

        def another() -> int:
            with RawClient(port) as client:
                return client.readReply().code

        self.assertEqual(await deferToThread(another), 220)


class ImplicitTLSTests(_OpenSSLTestCase):
    """
    Implicit TLS (RFC 8314, port 465 style): secure=True, or listen(..., secure=True).
    """

    async def test_maxClientsPerAddressBeforeTheHandshake(self) -> None:
        """
        A connection is counted against maxClientsPerAddress as it opens, before its
        handshake: with a limit of 1, a second connection while the first has sent no
        ClientHello is closed at once, without a handshake and without a word; once the
        first has gone, the address gets a TLS session and its greeting.
        """
        _, port = await startTLSServer(self, [], secure=True, maxClientsPerAddress=1)

        def talk() -> tuple[list[ServerReply], int]:
            with RawClient(port) as silent:
                with RawClient(port) as second:
                    refused = second.readUntilClosed(within=5)
                self.assertEqual(silent.readAvailable(0.2), b"")
            for _ in range(50):
                # The server sees the first close a moment later: bounded retries.
                with RawClient(port) as third:
                    try:
                        third.startTLS(trustingContext(), MX)
                        return refused, third.readReply().code
                    except (OSError, ServerClosedError):
                        time.sleep(0.05)
            raise AssertionError("no TLS session after the first connection closed")

        refused, greeting = await deferToThread(talk)
        self.assertEqual((refused, greeting), ([], 220))

    def _sendSSL(self, port: int) -> tuple[str, bool, str | None, dict[str, tuple[int, bytes]]]:
        # smtplib.SMTP_SSL: greeting, EHLO, one message.  Blocking: run it in a thread.
        with LoopbackSMTPSSL(
            local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT, context=trustingContext()
        ) as c:
            code, text = c.connect(MX, port)
            greeting = f"{code} {text.decode()}"
            self.assertEqual(c.ehlo()[0], 250)
            offered = c.has_extn("starttls")
            served = peerCommonName(c.sock)
            refused = c.sendmail(SENDER, [RECIPIENT], MESSAGE)
            c.quit()
        return greeting, offered, served, refused

    async def test_smtplibSSL(self) -> None:
        """
        smtplib.SMTP_SSL against a secure=True server: greeted, no STARTTLS, delivered.
        """
        recorder = RecordingHandler()
        _, port = await startTLSServer(self, [recorder], secure=True)
        greeting, offered, served, refused = await deferToThread(self._sendSSL, port)
        self.assertEqual((greeting, offered, served, refused), (f"220 {MX} ESMTP", False, MX, {}))
        self.assertEqual([m.data for m in recorder.messages], [MESSAGE])
        self.assertTrue(recorder.sessions[0].secure)

    async def test_listenerBesidePlaintext(self) -> None:
        """
        One server (secure=False) with listen(..., secure=True) beside its plaintext
        listener: the plaintext port offers STARTTLS, the TLS port serves SMTP_SSL.
        """
        recorder = RecordingHandler()
        server, plainPort = await startTLSServer(self, [recorder])
        tlsPort = await listenAlso(self, server, secure=True)

        def plain() -> tuple[bool, bool]:
            with LoopbackSMTP(MX, plainPort, local_hostname=CLIENT_NAME, timeout=5) as c:
                c.ehlo()
                offered = c.has_extn("starttls")
                secure = isinstance(c.sock, ssl.SSLSocket)
                c.quit()
            return offered, secure

        self.assertEqual(await deferToThread(plain), (True, False))
        greeting, offered, served, refused = await deferToThread(self._sendSSL, tlsPort)
        self.assertEqual((greeting, offered, served, refused), (f"220 {MX} ESMTP", False, MX, {}))
        self.assertEqual([m.data for m in recorder.messages], [MESSAGE])
        self.assertEqual([s.secure for s in recorder.sessions], [False, True])
        self.assertEqual([s.localPort for s in recorder.sessions], [plainPort, tlsPort])

    async def test_opensslSNI(self) -> None:
        """
        openssl s_client -servername b.example.test to an implicit TLS port is served b's
        certificate, and the greeting comes only after the handshake: nothing is sent in
        clear (standards 8314-01).
        """
        _, port = await startTLSServer(self, [], secure=True)
        paths = writePEMs(self)

        def silentInClear() -> bytes:
            with RawClient(port) as client:
                return client.readAvailable(0.5)

        self.assertEqual(await deferToThread(silentInClear), b"")
        result = await sClient(
            port, "-servername", B, "-CAfile", paths["ca"], "-verify_return_error"
        )
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.subject, f"CN={B}", result)
        self.assertEqual(result.replies[0], f"220 {MX} ESMTP", result)
        self.assertIn("221 Bye", result.replies, result)
        self.assertIn("Verification: OK", result.stderr)

    async def test_tls11Refused(self) -> None:
        """
        A TLS 1.1 client (allowed by its own side: @SECLEVEL=0) gets a protocol version
        alert from the server and no greeting; the server logs the failure and goes on
        serving (RFC 8997, standards 8314-04).
        """
        _, port = await startTLSServer(self, [], secure=True)
        logs = LogCapture(self)
        result = await sClient(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", MX)
        self.assertNotEqual(result.returncode, 0, result)
        self.assertEqual(result.replies, [], result)
        # The alert the server sent, as the client reports it.
        self.assertIn("alert protocol version", result.stderr, result)
        self.assertTrue(logs.matching("TLS handshake failed"), logs.messages())
        self.assertIn("unsupported protocol", " ".join(logs.matching("TLS handshake failed")))
        greeting, _, _, refused = await deferToThread(self._sendSSL, port)
        self.assertEqual((greeting, refused), (f"220 {MX} ESMTP", {}))


class ClientCertificateTests(_OpenSSLTestCase):
    """
    requestCert, ca and rejectUnauthorized with real clients; an L{ISecureHandler} sees the
    client's certificate.
    """

    def _server(self, recorder: SecureRecorder, **options: Any) -> Deferred[tuple[SMTPServer, int]]:
        # Implicit TLS: the greeting shows whether the client was let in.
        return startTLSServer(
            self, [recorder], secure=True, requestCert=True, ca=authority().cert, **options
        )

    async def test_verifiedCertificate(self) -> None:
        """
        openssl s_client with a certificate from the CA is served; the handler gets its CN
        and session.peerCertificateVerified is true.
        """
        recorder = SecureRecorder()
        _, port = await self._server(recorder)
        paths = writePEMs(self)
        result = await sClient(
            port,
            *("-servername", MX, "-CAfile", paths["ca"], "-verify_return_error"),
            *("-cert", paths["client.crt"], "-key", paths["client.key"]),
        )
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual(result.replies[0], f"220 {MX} ESMTP", result)
        self.assertEqual(
            recorder.handshakes, [Handshake("client.example.test", True, "TLSv1.3", MX)]
        )

    async def test_missingCertificateRefused(self) -> None:
        """
        Without a client certificate the handshake fails (rejectUnauthorized defaults to
        true): no greeting, the handler is never called.
        """
        recorder = SecureRecorder()
        _, port = await self._server(recorder)
        paths = writePEMs(self)
        result = await sClient(
            port, "-servername", MX, "-CAfile", paths["ca"], "-verify_return_error"
        )
        self.assertEqual(result.replies, [], result)
        # TLS 1.3: the client learns it from the server's alert, after its own handshake.
        self.assertIn("alert certificate required", result.stderr, result)
        self.assertEqual(recorder.handshakes, [])

    async def test_strangerServedUnverified(self) -> None:
        """
        A certificate from another CA (Python's ssl, load_cert_chain) is served but marked
        as not verified when rejectUnauthorized=False, and refused with the default.
        """
        lenient, strict = SecureRecorder(), SecureRecorder()
        _, lenientPort = await self._server(lenient, rejectUnauthorized=False)
        _, strictPort = await self._server(strict)
        paths = writePEMs(self)
        context = clientContext(authority().cert, paths["stranger.crt"], paths["stranger.key"])

        def greeting(port: int) -> str:
            try:
                with RawClient(port) as client:
                    client.startTLS(context, MX)
                    reply = client.readReply()
                    client.command("QUIT")
                return f"{reply.code} {reply.text}"
            except (OSError, ServerClosedError) as e:  # ssl.SSLError is an OSError
                return f"refused: {e!r}"

        self.assertEqual(await deferToThread(greeting, lenientPort), f"220 {MX} ESMTP")
        self.assertEqual(
            lenient.handshakes, [Handshake("stranger.example.test", False, "TLSv1.3", MX)]
        )
        refused = await deferToThread(greeting, strictPort)
        self.assertTrue(refused.startswith("refused: "), refused)
        self.assertEqual(strict.handshakes, [])

    async def test_resumedSessionKeepsVerdict(self) -> None:
        """
        A client whose certificate did not verify (rejectUnauthorized=False) is still not
        verified when it offers to resume its TLS session on a new connection.
        """
        recorder = SecureRecorder()
        _, port = await self._server(recorder, rejectUnauthorized=False)
        paths = writePEMs(self)
        context = clientContext(authority().cert, paths["stranger.crt"], paths["stranger.key"])

        def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
            with RawClient(port) as client:
                client.startTLS(context, MX, session)
                self.assertEqual(client.readReply().code, 220)
                self.assertEqual(client.command("QUIT").code, 221)
                sock = client.sock
                assert isinstance(sock, ssl.SSLSocket)
                return sock.session, bool(sock.session_reused)

        first, _ = await deferToThread(connect, None)
        self.assertIsNotNone(first)
        # OpenSSL verifies no certificate when it resumes a session (it restores the
        # certificate from the session), so the server must either refuse to resume or
        # keep the first handshake's verdict.
        _, reused = await deferToThread(connect, first)
        self.assertEqual(
            [(h.peerName, h.verified) for h in recorder.handshakes],
            [("stranger.example.test", False), ("stranger.example.test", False)],
            f"session resumed: {reused}",
        )


class RotationTests(E2ETestCase):
    """
    updateSecureContext: new certificates for new handshakes, old connections untouched.
    """

    async def test_nextConnectionSeesNewCertificate(self) -> None:
        """
        After updateSecureContext with a certificate for renewed.example.test the next
        client is served it (SNI entries still apply); a client connected before the
        update keeps its session, and can still send mail.
        """
        recorder = RecordingHandler()
        server, port = await startTLSServer(self, [recorder])

        def upgraded(hostname: str) -> LoopbackSMTP:
            c = LoopbackSMTP(hostname, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT)
            try:
                c.ehlo()
                c.starttls(context=trustingContext())
                c.ehlo()
            except BaseException:
                c.close()
                raise
            return c

        def servedThenQuit(hostname: str) -> str | None:
            with upgraded(hostname) as c:
                served = peerCommonName(c.sock)
                c.quit()
            return served

        before = await deferToThread(upgraded, MX)
        self.addCleanup(before.close)
        self.assertEqual(peerCommonName(before.sock), MX)
        renewed = issue("renewed.example.test")
        server.updateSecureContext(key=renewed.key, cert=renewed.cert)
        self.assertEqual(
            await deferToThread(servedThenQuit, "renewed.example.test"), "renewed.example.test"
        )
        self.assertEqual(await deferToThread(servedThenQuit, B), B)

        def stillServed() -> tuple[int, dict[str, tuple[int, bytes]], str | None]:
            code = before.noop()[0]
            refused = before.sendmail(SENDER, [RECIPIENT], MESSAGE)
            served = peerCommonName(before.sock)
            before.quit()
            return code, refused, served

        self.assertEqual(await deferToThread(stillServed), (250, {}, MX))
        self.assertEqual([m.data for m in recorder.messages], [MESSAGE])

    async def test_idleClientDoesNotHoldClose(self) -> None:
        """
        A TLS client that sits idle, reading nothing (so never answering the server's
        close_notify), does not hold server.close() for all of closeTimeout: it gets its
        421, and its connection ends two seconds later at most.
        """
        server, port = await startTLSServer(self, [RecordingHandler()], closeTimeout=30)

        def upgraded() -> LoopbackSMTP:
            c = LoopbackSMTP(MX, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT)
            c.ehlo()
            c.starttls(context=trustingContext())
            c.ehlo()
            return c

        idle = await deferToThread(upgraded)
        self.addCleanup(idle.close)
        started = time.monotonic()
        await server.close()
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(server.connectionCount, 0)


class TwistTLSTests(_OpenSSLTestCase):
    """
    The TLS flags of C{twist smtpsvc}, run as a separate process.
    """

    async def test_starttlsSNIAndImplicitTLS(self) -> None:
        """
        With --cert/--key, --sni, --sni-dir, --listen and --listen-tls the service logs one
        listener of each kind; STARTTLS on the first serves the SNI certificates (from
        --sni and from a combined PEM in --sni-dir) and smtplib.SMTP_SSL on the second
        delivers into the Maildir, recorded as ESMTPS.
        """
        paths = writePEMs(self)
        tmpdir = workspace(self)
        sniDir = os.path.join(tmpdir, "sni")
        os.makedirs(sniDir)
        Path(sniDir, f"{C}.pem").write_bytes(Path(paths["c.pem"]).read_bytes())
        maildir = os.path.join(tmpdir, "md")
        args = [
            *("--name", MX, "--cert", paths["mx.crt"], "--key", paths["mx.key"]),
            *("--sni", f"{B}={paths['b.crt']},{paths['b.key']}", "--sni-dir", sniDir),
            *("--listen", LISTEN, "--listen-tls", LISTEN),
            *("--deliver", f"maildir:{maildir}", "--early-talker-delay", "0"),
        ]
        process = await startTwist(self, args, tmpdir)
        plain, secure = await process.listeningPorts()
        self.assertEqual((process.plainPorts, process.tlsPorts), ([plain], [secure]), process.text)

        starttls = ("-starttls", "smtp", "-name", CLIENT_NAME)
        verify = ("-CAfile", paths["ca"], "-verify_return_error")
        for name in (B, C, MX):
            result = await sClient(plain, *starttls, "-servername", name, *verify)
            self.assertEqual(result.returncode, 0, result)
            self.assertEqual(result.subject, f"CN={name}", result)
            self.assertIn("221 Bye", result.replies, result)

        def send() -> dict[str, tuple[int, bytes]]:
            with LoopbackSMTPSSL(
                MX, secure, local_hostname=CLIENT_NAME, timeout=5, context=trustingContext()
            ) as c:
                refused = c.sendmail(SENDER, [RECIPIENT], MESSAGE)
                c.quit()
            return refused

        self.assertEqual(await deferToThread(send), {})
        box = mailbox.Maildir(maildir, factory=None, create=False)
        keys = box.keys()
        stored = [box.get_bytes(key) for key in keys]
        self.assertEqual(len(stored), 1, process.text)
        self.assertTrue(stored[0].endswith(MESSAGE), stored[0])
        self.assertIn(b"(using TLSv1.3 with cipher TLS_", stored[0])
        self.assertIn(b" with ESMTPS id ", stored[0])

    async def _developmentService(self) -> Any:
        tmpdir = workspace(self)
        args = [
            *("--name", "dev.example.test", "--listen", LISTEN, "--listen-tls", LISTEN),
            *("--deliver", "discard", "--early-talker-delay", "0"),
        ]
        process = await startTwist(self, args, tmpdir)
        await process.listeningPorts()
        return process

    async def test_developmentCertificate(self) -> None:
        """
        Without --cert the service serves a fresh self-signed certificate for its --name,
        and logs a warning saying so.
        """
        process = await self._developmentService()
        _, secure = await process.listeningPorts()

        def served() -> x509.Certificate:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with RawClient(secure) as client:
                client.startTLS(context, "dev.example.test")
                self.assertEqual(client.readReply().code, 220)
                sock = client.sock
                assert isinstance(sock, ssl.SSLSocket)
                der = sock.getpeercert(binary_form=True)
                client.command("QUIT")
            assert der is not None
            return x509.load_der_x509_certificate(der)

        certificate = await deferToThread(served)
        self.assertEqual(commonName(certificate), "dev.example.test")
        self.assertEqual(certificate.issuer, certificate.subject)
        self.assertIn(
            "No certificate given: using a self-signed development certificate for "
            "dev.example.test",
            process.text,
        )

    async def test_developmentCertificateWarnedOnce(self) -> None:
        """
        One server, one development certificate, one warning.
        """
        # The options are checked before the reactor runs by building the TLS contexts,
        # which must not make (and announce) a development certificate of their own.
        process = await self._developmentService()
        warnings = [line for line in process.text.splitlines() if "development certificate" in line]
        self.assertEqual(len(warnings), 1, "\n".join(warnings))

    async def _refused(self, args: list[str], problem: str) -> None:
        # Listening and delivering as a working service would, with ARGS added.
        listen = ["--listen", LISTEN, "--deliver", "discard"]
        await assertTwistRefuses(self, [*listen, *args], problem, cwd=workspace(self))

    async def test_missingCertificateFile(self) -> None:
        """
        --cert naming a file that does not exist: one error line naming the flag and file.
        """
        missing = os.path.join(workspace(self), "missing.pem")
        await self._refused(["--cert", missing], f"--cert: cannot read {missing}")

    async def test_keyDoesNotMatch(self) -> None:
        """
        A --key that is not the --cert's key: one error line saying so.
        """
        paths = writePEMs(self)
        await self._refused(
            ["--cert", paths["mx.crt"], "--key", paths["b.key"]],
            "the private key does not match the certificate",
        )


class DocumentationExampleTests(E2ETestCase):
    """
    C{docs/examples/tls_server.py}, the main example of the TLS page, run for real.
    """

    async def test_tlsServer(self) -> None:
        """
        Its main, on port-0 endpoints with the test certificate: STARTTLS on the first
        port (MAIL before it is refused), implicit TLS on the second, both delivered into
        the Maildir; cancelling main closes the server.
        """
        example = loadExample("tls_server")
        paths = writePEMs(self)
        maildir = os.path.join(os.path.dirname(paths["ca"]), "md")
        logs = LogCapture(self)
        reactor = theReactor()
        running = Deferred.fromCoroutine(
            example.main(reactor, paths["mx.crt"], paths["mx.key"], maildir, LISTEN, LISTEN)
        )

        def stop() -> Deferred[None]:
            if not running.called:
                running.cancel()
            return running.addTimeout(SOCKET_TIMEOUT, reactor)

        self.addCleanup(stop)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while len(listening := self._ports(logs)) < 2 and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        (submissionKind, submission), (smtpsKind, smtps) = listening
        self.assertEqual((submissionKind, smtpsKind), ("SMTP", "SMTP (implicit TLS)"))

        def viaStarttls() -> tuple[int, bool, int, dict[str, tuple[int, bytes]]]:
            with LoopbackSMTP(MX, submission, local_hostname=CLIENT_NAME, timeout=5) as c:
                c.ehlo()
                offered = c.has_extn("starttls")
                early = c.mail(SENDER)[0]
                c.rset()
                code = c.starttls(context=trustingContext())[0]
                refused = c.sendmail(SENDER, [RECIPIENT], MESSAGE)
                c.quit()
            return code, offered, early, refused

        def viaSSL() -> tuple[bool, dict[str, tuple[int, bytes]]]:
            with LoopbackSMTPSSL(
                MX, smtps, local_hostname=CLIENT_NAME, timeout=5, context=trustingContext()
            ) as c:
                c.ehlo()
                offered = c.has_extn("starttls")
                refused = c.sendmail(SENDER, [RECIPIENT], MESSAGE)
                c.quit()
            return offered, refused

        self.assertEqual(await deferToThread(viaStarttls), (220, True, 530, {}))
        self.assertEqual(await deferToThread(viaSSL), (False, {}))
        box = mailbox.Maildir(maildir, factory=None, create=False)
        keys = box.keys()
        stored = [box.get_bytes(key) for key in keys]
        self.assertEqual(len(stored), 2)
        for message in stored:
            self.assertTrue(message.endswith(MESSAGE), message)
            self.assertIn(b" with ESMTPS id ", message)
        self.assertEqual(len(logs.matching(": TLSv1.3 with TLS_")), 2, logs.messages())

        running.cancel()
        await running.addTimeout(SOCKET_TIMEOUT, reactor)
        self.assertTrue(await deferToThread(connectionRefused, submission))
        self.assertTrue(await deferToThread(connectionRefused, smtps))

    def _ports(self, logs: LogCapture) -> list[tuple[str, int]]:
        # The "... server listening on 127.0.0.1:PORT" events, in order.
        return [
            (event["kind"], event["port"])
            for event in logs.events
            if event.get("log_format") == "{kind} server listening on {address}"
        ]
