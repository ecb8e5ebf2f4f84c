"""
End-to-end tests of who is really connecting: the PROXY protocol (from HAProxy itself,
from swaks and from raw sockets), Postfix's XCLIENT and XFORWARD, and reverse DNS with
twisted.names against a DNS server of the test's own.

Everything listens on 127.0.0.1 on ports the OS chooses (HAProxy, which cannot, gets
ports that were free a moment ago, and is retried if one was taken).  The deployment
example of C{docs/deployment.rst} (C{docs/examples/deploy_haproxy.cfg} and the
C{twist smtpsvc} line of C{docs/examples/deploy_smtpsvc@.service}) is what the HAProxy
test runs, so the page cannot drift from what works.  Helpers are in
L{tests.proxy_support} and L{tests.e2e_support}.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet.threads import deferToThread
from twisted.names import client as dnsclient
from twisted.names import dns
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from smtpsvc import ServerOptions, SMTPServer
from smtpsvc._core._proxy import V2_SIGNATURE, ProxyHeader, encodeVersion2
from smtpsvc.handlers import MaildirDelivery
from smtpsvc.tap import Options
from smtpsvc.testing import RecordingHandler, ServerReply

from .e2e_support import (
    CLIENT_NAME,
    EXAMPLES,
    LOCALHOST,
    SERVER_NAME,
    SOCKET_TIMEOUT,
    E2ETestCase,
    LoopbackSMTPSSL,
    RawClient,
    clientContext,
    haveSwaks,
    loadExample,
    runSwaks,
    startServer,
    startTwist,
    theReactor,
    workspace,
)
from .memorytls import authority, issue
from .proxy_support import (
    DEPLOY_HAPROXY,
    DEPLOY_UNIT,
    LogWatcher,
    WhoIsThere,
    Zone,
    a,
    deploymentHAProxyConfig,
    deploymentTwistArguments,
    finishResolverQueries,
    haproxyPath,
    listenOn,
    ptr,
    startDNS,
    startHAProxy,
    startTLSAfter,
    timedConnect,
)

SENDER = "a@example.org"
#: The deployment example receives mail for example.org only (--domain).
RECIPIENT = "b@example.org"
#: The name in the test certificates (and the documentation's examples).
MX = "mx.example.test"
DOCS_MX = "mx.example.org"
NO_SWAKS = "swaks is not installed (apt-get install swaks; `make test` installs it)"
NO_HAPROXY = "haproxy is not installed (apt-get install haproxy; `make test` installs it)"
#: A client address from the documentation range, as a proxy reports it.
CLIENT = "192.0.2.1"


def message(subject: str) -> bytes:
    """
    A small message whose subject tells the tests which one it is.
    """
    return f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def transaction(client: RawClient, subject: str) -> ServerReply:
    """
    Send one message on a client that has said EHLO; return the reply to the data.
    """
    for command in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "DATA"):
        reply = client.command(command)
        if reply.code >= 400:
            return reply
    client.send(message(subject) + b".\r\n")
    return client.readReply()


def forwardedSession(
    port: int, xforwards: Sequence[str], subjects: Sequence[str]
) -> list[ServerReply]:
    """
    Read the greeting, say EHLO, send each of the C{xforwards} commands, then send one
    message for each of C{subjects} (blocking: run it in a thread).

    @return: every reply, in order: greeting, EHLO, one for each XFORWARD, then the reply
        to each message's data.
    """
    with RawClient(port) as client:
        replies = [client.readReply(), client.command(f"EHLO {CLIENT_NAME}")]
        replies += [client.command(command) for command in xforwards]
        replies += [transaction(client, subject) for subject in subjects]
        return replies


def receivedHeaders(maildir: str) -> dict[str, list[str]]:
    """
    The C{Received:} header of each message in C{maildir}'s C{new/}, by subject, as its
    lines (folding whitespace kept).
    """
    found: dict[str, list[str]] = {}
    for path in sorted(Path(maildir, "new").iterdir()):
        head = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        lines = head.split("\r\n")
        subject = next(line[len("Subject: ") :] for line in lines if line.startswith("Subject: "))
        start = next(i for i, line in enumerate(lines) if line.startswith("Received: "))
        end = start + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t"):
            end += 1
        found[subject] = lines[start:end]
    return found


def proxyV2(source: str, sourcePort: int, destinationPort: int) -> bytes:
    """
    A v2 PROXY header for an IPv4 client connecting to 127.0.0.1.
    """
    return encodeVersion2(
        ProxyHeader(
            version=2,
            command="PROXY",
            family="TCP4",
            sourceAddress=source,
            sourcePort=sourcePort,
            destinationAddress=LOCALHOST,
            destinationPort=destinationPort,
        )
    )


def tlsFiles(directory: str, name: str) -> tuple[str, str]:
    """
    Write a test certificate for C{name} and its key into C{directory}.
    """
    pair = issue(name)
    cert, key = os.path.join(directory, f"{name}.crt"), os.path.join(directory, f"{name}.key")
    Path(cert).write_bytes(pair.cert)
    Path(key).write_bytes(pair.key)
    return cert, key


async def serve(testCase: E2ETestCase, *handlers: object, **options: Any) -> tuple[SMTPServer, int]:
    """
    An in-process server (see L{startServer}) that does no reverse DNS unless told to.
    """
    options.setdefault("disableReverseLookup", True)
    return await startServer(testCase, handlers, **options)


def maildirHandler(testCase: E2ETestCase) -> tuple[MaildirDelivery, str]:
    """
    Delivery into a new Maildir (which writes the C{Received:} header).
    """
    path = os.path.abspath(testCase.mktemp())
    return MaildirDelivery(path, reactor=theReactor(), serverName=SERVER_NAME), path


# -- HAProxy in front of twist smtpsvc ----------------------------------------------------


def sendThrough(port: int, source: str, subject: str, context: ssl.SSLContext | None) -> int:
    """
    Send one message to C{port} from the local address C{source}, in clear or (with
    C{context}) over implicit TLS; return the client's own port.
    """
    client: smtplib.SMTP
    if context is None:
        client = smtplib.SMTP(
            LOCALHOST,
            port,
            local_hostname=CLIENT_NAME,
            timeout=SOCKET_TIMEOUT,
            source_address=(source, 0),
        )
    else:
        client = LoopbackSMTPSSL(
            DOCS_MX,
            port,
            local_hostname=CLIENT_NAME,
            timeout=SOCKET_TIMEOUT,
            source_address=(source, 0),
            context=context,
        )
    with client:
        assert client.sock is not None
        sourcePort = int(client.sock.getsockname()[1])
        client.sendmail(SENDER, [RECIPIENT], message(subject))
        client.quit()
    return sourcePort


class HAProxyTests(E2ETestCase):
    """
    HAProxy itself, configured as the documentation shows, in front of C{twist smtpsvc}
    run with the documentation's command line.
    """

    async def test_deploymentExample(self) -> None:
        """
        Through HAProxy's v2 frontend (plain SMTP) and its v1 frontend (implicit TLS),
        smtpsvc sees the client's own address, not HAProxy's: in its log and in the
        C{Received:} header; HAProxy's SMTP health checks (v2 LOCAL) pass.
        """
        if haproxyPath() is None:
            raise SkipTest(NO_HAPROXY)
        directory = workspace(self)
        cert, key = tlsFiles(directory, DOCS_MX)
        maildir = os.path.join(directory, "maildir")
        arguments = deploymentTwistArguments(cert, key, maildir)
        self.assertEqual(arguments[arguments.index("--use-proxy") + 1], LOCALHOST)
        twist = await startTwist(self, arguments, directory)
        smtp, smtps = await twist.listeningPorts()
        haproxy, (mx, submissions) = await startHAProxy(
            self, lambda ports: deploymentHAProxyConfig(ports[0], ports[1], smtp, smtps), 2
        )
        # HAProxy's checks of the SMTP backend start with a v2 LOCAL header.
        await twist.waitForOutput(re.compile(rb"PROXY v2 LOCAL from 127\.0\.0\.1"), 10)

        # The clients connect from other loopback addresses than HAProxy's own 127.0.0.1.
        plainPort = await deferToThread(sendThrough, mx, "127.0.0.2", "plain", None)
        context = clientContext(authority().cert)
        tlsPort = await deferToThread(sendThrough, submissions, "127.0.0.3", "tls", context)

        await twist.waitForOutput(
            re.compile(rb"PROXY v2 PROXY from 127\.0\.0\.1: client 127\.0\.0\.2:%d\b" % plainPort)
        )
        await twist.waitForOutput(
            re.compile(rb"PROXY v1 PROXY from 127\.0\.0\.1: client 127\.0\.0\.3:%d\b" % tlsPort)
        )
        received = receivedHeaders(maildir)
        self.assertEqual(sorted(received), ["plain", "tls"])
        self.assertEqual(received["plain"][0], f"Received: from {CLIENT_NAME} ([127.0.0.2])")
        self.assertEqual(received["tls"][0], f"Received: from {CLIENT_NAME} ([127.0.0.3])")
        self.assertTrue(received["tls"][1].startswith("\t(using TLSv1."), received["tls"])
        self.assertNotIn("DOWN", haproxy.text)


class DocumentationTests(SynchronousTestCase):
    """
    The deployment page shows the files the tests run, and its flags parse.
    """

    def test_pageIncludesExamples(self) -> None:
        """
        Every C{deploy_*} example is included by the deployment page.
        """
        page = (EXAMPLES.parent / "deployment.rst").read_text(encoding="utf-8")
        examples = sorted(path.name for path in EXAMPLES.glob("deploy_*"))
        self.assertIn(DEPLOY_HAPROXY.name, examples)
        self.assertIn(DEPLOY_UNIT.name, examples)
        for name in examples:
            self.assertIn(f".. literalinclude:: examples/{name}", page)

    def test_trustListFlags(self) -> None:
        """
        C{--use-proxy}, C{--use-xclient} and C{--use-xforward} take C{*} for everyone or
        a comma-separated list of addresses and networks.
        """
        options = Options()
        options.parseOptions(
            [
                "--use-proxy",
                "127.0.0.1,10.0.0.0/8",
                "--use-xclient",
                "*",
                "--use-xforward",
                "::1",
                "--proxy-timeout",
                "2.5",
                "--disable-reverse-lookup",
            ]
        )
        built = ServerOptions.fromMapping(options.serverOptions())
        self.assertEqual(built.useProxy, ("127.0.0.1/32", "10.0.0.0/8"))
        self.assertIs(built.useXClient, True)
        self.assertEqual(built.useXForward, ("::1/128",))
        self.assertEqual(built.proxyTimeout, 2.5)
        self.assertIs(built.disableReverseLookup, True)


# -- PROXY from swaks ---------------------------------------------------------------------


class SwaksProxyTests(E2ETestCase):
    """
    swaks's C{--proxy*} options against an in-process server that reads PROXY headers.
    """

    def setUp(self) -> None:
        if not haveSwaks():
            raise SkipTest(NO_SWAKS)

    async def _send(
        self, *proxy: str
    ) -> tuple[WhoIsThere, RecordingHandler, int, subprocess.CompletedProcess[str]]:
        """
        Send a message with swaks and the given C{--proxy*} options (C{PORT} in them is
        the server's port) to a new server with C{useProxy=True}.
        """
        who, recorder = WhoIsThere(), RecordingHandler()
        _, port = await serve(self, who, recorder, useProxy=True)
        result = await runSwaks(
            port,
            "--from",
            SENDER,
            "--to",
            RECIPIENT,
            *[arg.replace("PORT", str(port)) for arg in proxy],
        )
        return who, recorder, port, result

    async def _assertNamesClient(
        self,
        version: int,
        family: str,
        source: str = CLIENT,
        destination: tuple[str, int] = ("192.0.2.25", 2525),
    ) -> None:
        """
        A header of C{version} for C{family} names the client: the session's address and
        port are the header's C{source} (port 40000), its local address and port the
        header's C{destination} (not the server's own), the client's name is its address
        literal, and the message is delivered as from it.
        """
        who, recorder, _, result = await self._send(
            "--proxy-version",
            str(version),
            "--proxy-family",
            family,
            "--proxy-source",
            source,
            "--proxy-source-port",
            "40000",
            "--proxy-dest",
            destination[0],
            "--proxy-dest-port",
            str(destination[1]),
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        [seen] = who.connects
        self.assertEqual((seen.remoteAddress, seen.remotePort), (source, 40000))
        self.assertEqual((seen.localAddress, seen.localPort), destination)
        self.assertEqual((seen.proxyVersion, seen.proxyCommand), (version, "PROXY"))
        self.assertEqual(seen.clientHostname, f"[{source}]")
        self.assertEqual([m.remoteAddress for m in recorder.messages], [source])

    async def test_versionOne(self) -> None:
        """
        A v1 header names the client: the session's address and port are the header's,
        and the message is delivered as from it.
        """
        await self._assertNamesClient(1, "TCP4")

    async def test_versionTwo(self) -> None:
        """
        A v2 header (AF_INET) names the client the same way.
        """
        await self._assertNamesClient(2, "AF_INET")

    async def test_versionTwoIPv6(self) -> None:
        """
        A v2 header (AF_INET6) names an IPv6 client, though the proxy reached the server
        over IPv4.
        """
        await self._assertNamesClient(2, "AF_INET6", "2001:db8::1", ("2001:db8::25", 25))

    async def test_malformed(self) -> None:
        """
        A malformed header (a leading zero in the address) closes the connection without
        a greeting or any reply; no handler hears of the client and nothing is delivered.
        """
        log = LogWatcher(self)
        who, recorder, _, result = await self._send("--proxy", "TCP4 01.2.3.4 127.0.0.1 1 2")
        output = result.stdout + result.stderr
        # Status 6: "Connection closed unexpectedly".
        self.assertEqual(result.returncode, 6, output)
        self.assertIn("-> PROXY TCP4 01.2.3.4 127.0.0.1 1 2", output)
        self.assertIn("Remote host closed connection unexpectedly", output)
        # swaks shows what the server sent on lines that start with "<-".
        self.assertIsNone(re.search(r"^ *<-", output, re.MULTILINE), output)
        self.assertEqual((who.connects, recorder.messages), ([], []))
        self.assertIsNotNone(log.search(r"Closing connection from 127\.0\.0\.1: bad PROXY header"))


# -- trust, timeout ----------------------------------------------------------------------


class TrustTests(E2ETestCase):
    """
    C{useProxy} with a list: only those proxies may (and must) send a header.
    """

    async def _server(self) -> tuple[WhoIsThere, int]:
        who = WhoIsThere()
        # A greeting delay, so that a header sent at once surely arrives before the
        # greeting (test_untrustedWithoutHeader sends one after it).
        _, port = await serve(self, who, useProxy=("10.0.0.0/8",), earlyTalkerDelay=1.0)
        return who, port

    async def test_untrustedHeaderCloses(self) -> None:
        """
        A PROXY header from an address outside the list closes the connection at once,
        without a greeting: a client cannot choose its own address.
        """
        log = LogWatcher(self)
        who, port = await self._server()

        def spoof() -> tuple[list[ServerReply], float]:
            with RawClient(port) as client:
                started = time.monotonic()
                client.send(f"PROXY TCP4 {CLIENT} {LOCALHOST} 40000 {port}\r\n".encode())
                return client.readUntilClosed(within=3), time.monotonic() - started

        replies, took = await deferToThread(spoof)
        self.assertEqual(replies, [])
        self.assertLess(took, 1.0, "closed only when the greeting was due")
        self.assertEqual(who.connects, [])
        self.assertIsNotNone(log.search(r"PROXY header from an address not trusted to send one"))

    async def test_untrustedWithoutHeader(self) -> None:
        """
        A client outside the list that sends no header is an ordinary client: it is
        greeted and keeps its own address.  A PROXY header it sends first thing after the
        greeting (as a proxy does when there is no early-talker delay) is refused as
        before it: the connection closes without a reply.
        """
        log = LogWatcher(self)
        who, port = await self._server()

        def plain() -> ServerReply:
            with RawClient(port) as client:
                client.readReply()
                return client.command(f"EHLO {CLIENT_NAME}")

        def late() -> tuple[ServerReply, list[ServerReply]]:
            with RawClient(port) as client:
                greeting = client.readReply()
                client.send(f"PROXY TCP4 {CLIENT} {LOCALHOST} 40000 {port}\r\n".encode())
                return greeting, client.readUntilClosed(within=3)

        ehlo = await deferToThread(plain)
        self.assertEqual(ehlo.lines[0], f"{SERVER_NAME} Nice to meet you, [{LOCALHOST}]")
        [seen] = who.connects
        self.assertEqual((seen.remoteAddress, seen.proxyVersion), (LOCALHOST, None))
        greeting, after = await deferToThread(late)
        self.assertEqual((greeting.code, after), (220, []))
        self.assertIsNotNone(log.search(r"PROXY header from an address not trusted to send one"))


class TimeoutTests(E2ETestCase):
    """
    C{proxyTimeout}: a proxy that does not send its header in time is cut off.
    """

    async def _timeOut(self, data: bytes) -> None:
        log = LogWatcher(self)
        who = WhoIsThere()
        _, port = await serve(self, who, useProxy=True, proxyTimeout=0.5)

        def wait() -> tuple[list[ServerReply], float]:
            with RawClient(port) as client:
                started = time.monotonic()
                if data:
                    client.send(data)
                return client.readUntilClosed(within=3), time.monotonic() - started

        replies, took = await deferToThread(wait)
        self.assertEqual(replies, [])
        self.assertTrue(0.4 <= took < 1.5, f"closed after {took:.2f} s")
        self.assertEqual(who.connects, [])
        self.assertIsNotNone(log.search(r"no PROXY header in time"))

    async def test_nothingSent(self) -> None:
        """
        A connection that sends nothing is closed after C{proxyTimeout}, without a reply.
        """
        await self._timeOut(b"")

    async def test_halfHeader(self) -> None:
        """
        So is one that sends half a header and stops.
        """
        await self._timeOut(b"PROXY TCP4 192.0.2")


# -- PROXY and TLS ------------------------------------------------------------------------


class TLSTests(E2ETestCase):
    """
    The header comes in clear before any TLS: before the handshake of implicit TLS, and
    before STARTTLS, whose upgrade keeps the address it gave.
    """

    async def _implicit(self) -> tuple[WhoIsThere, RecordingHandler, int]:
        pair = issue(MX)
        who, recorder = WhoIsThere(), RecordingHandler()
        _, port = await serve(
            self, who, recorder, useProxy=True, secure=True, cert=pair.cert, key=pair.key
        )
        return who, recorder, port

    def _converse(self, client: RawClient, subject: str) -> list[ServerReply]:
        replies = [client.readReply(), client.command(f"EHLO {CLIENT_NAME}")]
        replies.append(transaction(client, subject))
        replies.append(client.command("QUIT"))
        return replies

    async def test_implicitTLS(self) -> None:
        """
        A v2 header, then a TLS handshake: the greeting comes encrypted, and the session
        (already secure when the connect handlers run) has the header's client.
        """
        who, recorder, port = await self._implicit()

        def run() -> list[ServerReply]:
            with RawClient(port) as client:
                client.send(proxyV2(CLIENT, 40000, port))
                client.startTLS(clientContext(authority().cert), MX)
                return self._converse(client, "implicit")

        replies = await deferToThread(run)
        self.assertEqual([reply.code for reply in replies], [220, 250, 250, 221])
        [seen] = who.connects
        self.assertEqual((seen.remoteAddress, seen.remotePort, seen.secure), (CLIENT, 40000, True))
        self.assertEqual(seen.proxyVersion, 2)
        self.assertEqual([m.remoteAddress for m in recorder.messages], [CLIENT])

    async def test_headerAndHelloInOneSegment(self) -> None:
        """
        PP-14: the header and the ClientHello in one segment: nothing of the handshake is
        lost to the header's parser, for either version.
        """
        who, recorder, port = await self._implicit()
        headers = [
            proxyV2(CLIENT, 40000, port),
            f"PROXY TCP4 192.0.2.2 {LOCALHOST} 40002 {port}\r\n".encode(),
        ]

        def run(header: bytes) -> list[ServerReply]:
            with RawClient(port) as client:
                startTLSAfter(client, header, clientContext(authority().cert), MX)
                return self._converse(client, "one segment")

        for header in headers:
            replies = await deferToThread(run, header)
            self.assertEqual([reply.code for reply in replies], [220, 250, 250, 221])
        self.assertEqual(
            [(s.remoteAddress, s.remotePort, s.proxyVersion) for s in who.connects],
            [(CLIENT, 40000, 2), ("192.0.2.2", 40002, 1)],
        )
        self.assertEqual([m.remoteAddress for m in recorder.messages], [CLIENT, "192.0.2.2"])

    async def test_starttlsKeepsAddress(self) -> None:
        """
        On a STARTTLS listener the address from the header survives the upgrade: the
        message and its C{Received:} header name the header's client.
        """
        pair = issue(MX)
        who = WhoIsThere()
        delivery, maildir = maildirHandler(self)
        _, port = await serve(self, who, delivery, useProxy=True, cert=pair.cert, key=pair.key)

        def run() -> list[ServerReply]:
            with RawClient(port) as client:
                client.send(f"PROXY TCP4 192.0.2.7 {LOCALHOST} 40007 {port}\r\n".encode())
                replies = [client.readReply(), client.command(f"EHLO {CLIENT_NAME}")]
                replies.append(client.command("STARTTLS"))
                client.startTLS(clientContext(authority().cert), MX)
                replies.append(client.command(f"EHLO {CLIENT_NAME}"))
                replies.append(transaction(client, "starttls"))
                return replies

        replies = await deferToThread(run)
        self.assertEqual([reply.code for reply in replies], [220, 250, 220, 250, 250])
        self.assertIn("STARTTLS", replies[1].lines)
        [connected] = who.connects
        [sending] = who.senders
        self.assertEqual((connected.remoteAddress, connected.secure), ("192.0.2.7", False))
        self.assertEqual(
            (sending.remoteAddress, sending.remotePort, sending.secure), ("192.0.2.7", 40007, True)
        )
        received = receivedHeaders(maildir)["starttls"]
        self.assertEqual(received[0], f"Received: from {CLIENT_NAME} ([192.0.2.7])")
        self.assertTrue(received[1].startswith("\t(using TLSv1."), received)


# -- XCLIENT and XFORWARD -----------------------------------------------------------------


class XClientTests(E2ETestCase):
    """
    XCLIENT, as swaks sends it (and as Postfix's smtpd_proxy_filter does).
    """

    def setUp(self) -> None:
        if not haveSwaks():
            raise SkipTest(NO_SWAKS)

    async def test_swaks(self) -> None:
        """
        From a trusted address, XCLIENT makes the session the named client: the connect
        handlers run again for it, and the message and its C{Received:} header carry the
        new address and name.
        """
        who = WhoIsThere()
        delivery, maildir = maildirHandler(self)
        _, port = await serve(self, who, delivery, useXClient=(LOCALHOST,))
        result = await runSwaks(
            port,
            "--from",
            SENDER,
            "--to",
            RECIPIENT,
            "--header",
            "Subject: xclient",
            "--xclient-addr",
            CLIENT,
            "--xclient-name",
            "spike.example.org",
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn(f"-> XCLIENT ADDR={CLIENT} NAME=spike.example.org", result.stdout)
        self.assertEqual(
            [(s.remoteAddress, s.clientHostname) for s in who.connects],
            [(LOCALHOST, f"[{LOCALHOST}]"), (CLIENT, "spike.example.org")],
        )
        [sending] = who.senders
        self.assertEqual(
            (sending.remoteAddress, sending.clientHostname), (CLIENT, "spike.example.org")
        )
        self.assertEqual(sending.xClient, {"NAME": "spike.example.org", "ADDR": CLIENT})
        self.assertEqual(
            receivedHeaders(maildir)["xclient"][0],
            f"Received: from {CLIENT_NAME} (spike.example.org [{CLIENT}])",
        )

    async def test_notAllowed(self) -> None:
        """
        Without C{useXClient} XCLIENT is not advertised, so swaks does not even send it
        (it stops with status 33, "Host did not advertise XCLIENT"); sent anyway, it gets
        550 and changes nothing.
        """
        who = WhoIsThere()
        recorder = RecordingHandler()
        _, port = await serve(self, who, recorder)
        result = await runSwaks(
            port,
            "--to",
            RECIPIENT,
            "--xclient-addr",
            CLIENT,
            "--xclient-name",
            "spike.example.org",
        )
        self.assertEqual(result.returncode, 33, result.stdout + result.stderr)
        self.assertIn("Host did not advertise XCLIENT", result.stdout + result.stderr)
        self.assertEqual(recorder.messages, [])

        def raw() -> list[ServerReply]:
            with RawClient(port) as client:
                return [
                    client.readReply(),
                    client.command(f"EHLO {CLIENT_NAME}"),
                    client.command(f"XCLIENT NAME=spike.example.org ADDR={CLIENT}"),
                    client.command(f"EHLO {CLIENT_NAME}"),
                ]

        _, ehlo, xclient, again = await deferToThread(raw)
        self.assertFalse(any(line.startswith("XCLIENT") for line in ehlo.lines), ehlo)
        self.assertEqual(xclient.code, 550)
        self.assertEqual(again.lines[0], f"{SERVER_NAME} Nice to meet you, [{LOCALHOST}]")
        self.assertEqual([s.remoteAddress for s in who.connects], [LOCALHOST, LOCALHOST])


class XForwardTests(E2ETestCase):
    """
    XFORWARD, as a Postfix content filter's smtp client sends it: from a trusted address,
    for one transaction.
    """

    async def _server(self) -> tuple[WhoIsThere, str, int]:
        who = WhoIsThere()
        delivery, maildir = maildirHandler(self)
        _, port = await serve(self, who, delivery, useXForward=(LOCALHOST,))
        return who, maildir, port

    async def test_oneTransaction(self) -> None:
        """
        XFORWARD's client is the one of the next message only; the next transaction is
        the real client's again.
        """
        who, maildir, port = await self._server()
        _, ehlo, xforward, forwarded, direct = await deferToThread(
            forwardedSession,
            port,
            [f"XFORWARD NAME=spike.example.org ADDR={CLIENT} PROTO=ESMTP"],
            ["forwarded", "direct"],
        )
        self.assertIn("XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE", ehlo.lines)
        self.assertEqual((xforward.code, forwarded.code, direct.code), (250, 250, 250))
        first, second = who.senders
        self.assertEqual((first.remoteAddress, first.clientHostname), (CLIENT, "spike.example.org"))
        self.assertEqual(
            first.xForward, {"NAME": "spike.example.org", "ADDR": CLIENT, "PROTO": "ESMTP"}
        )
        self.assertEqual(
            (second.remoteAddress, second.clientHostname, second.xForward),
            (LOCALHOST, f"[{LOCALHOST}]", {}),
        )
        received = receivedHeaders(maildir)
        self.assertEqual(
            received["forwarded"][0],
            f"Received: from {CLIENT_NAME} (spike.example.org [{CLIENT}])",
        )
        self.assertEqual(received["direct"][0], f"Received: from {CLIENT_NAME} ([{LOCALHOST}])")

    async def test_postfixSendsTwoCommands(self) -> None:
        """
        Postfix's smtp client sends its attributes in two XFORWARD commands (NAME ADDR
        PORT, then PROTO HELO IDENT SOURCE); from a trusted proxy both are accepted.
        """
        who, maildir, port = await self._server()
        _, _, first, second, delivered = await deferToThread(
            forwardedSession,
            port,
            [
                f"XFORWARD NAME=spike.example.org ADDR={CLIENT} PORT=40000",
                "XFORWARD PROTO=ESMTP HELO=spike.example.org SOURCE=REMOTE",
            ],
            ["postfix"],
        )
        self.assertEqual(first.code, 250)
        self.assertEqual(
            (second.code, second.lines),
            (250, ("OK",)),
            "the second XFORWARD of a trusted proxy was refused",
        )
        self.assertEqual(delivered.code, 250)
        [sending] = who.senders
        self.assertEqual(
            (sending.remoteAddress, sending.remotePort, sending.clientHostname),
            (CLIENT, 40000, "spike.example.org"),
        )
        self.assertEqual(
            receivedHeaders(maildir)["postfix"][0],
            f"Received: from spike.example.org (spike.example.org [{CLIENT}])",
        )


class WhoisExampleTests(E2ETestCase):
    """
    The deployment page's C{deploy_whois.py}, behind a PROXY header as HAProxy sends it.
    """

    async def test_example(self) -> None:
        """
        The example's server judges and logs clients by the header's address, delivers
        their mail as theirs, and lets a v2 LOCAL health check through without a log line.
        """
        module = loadExample("deploy_whois")
        log = LogWatcher(self, "deploy_whois")
        maildir = os.path.abspath(self.mktemp())
        server = module.makeServer(
            theReactor(),
            maildir,
            balancers=[LOCALHOST],
            disableReverseLookup=True,
            earlyTalkerDelay=0,
            name=SERVER_NAME,
        )
        port = await listenOn(self, server)

        def run() -> tuple[list[ServerReply], list[ServerReply], list[ServerReply]]:
            with RawClient(port) as client:
                client.send(proxyV2(CLIENT, 40000, 25))
                relayed = [client.readReply(), client.command(f"EHLO {CLIENT_NAME}")]
                relayed.append(transaction(client, "relayed"))
            with RawClient(port) as client:
                client.send(proxyV2("198.51.100.7", 40001, 25))
                blocked = [client.readReply(), client.command("EHLO x"), client.command("QUIT")]
            with RawClient(port) as client:
                client.send(V2_SIGNATURE + b"\x20\x00\x00\x00")
                check = [client.readReply(), client.command("QUIT")]
            return relayed, blocked, check

        relayed, blocked, check = await deferToThread(run)
        self.assertEqual([reply.code for reply in relayed], [220, 250, 250])
        self.assertEqual([reply.code for reply in blocked], [554, 503, 221])
        self.assertEqual([reply.code for reply in check], [220, 221])
        self.assertEqual(
            receivedHeaders(maildir)["relayed"][0], f"Received: from {CLIENT_NAME} ([{CLIENT}])"
        )
        self.assertEqual(len(log.events), 1, log.messages)
        self.assertRegex(
            log.messages[0], r": \[192\.0\.2\.1\] \[192\.0\.2\.1\]:40000 via PROXY v2$"
        )


# -- reverse DNS --------------------------------------------------------------------------

#: The reverse lookup bound the DNS tests use, and the slack they allow over it.
LOOKUP_TIMEOUT = 0.5
SLACK = 1.0


class ReverseDNSTests(E2ETestCase):
    """
    Reverse DNS with twisted.names, against an authoritative server the test runs.
    """

    async def _serve(self, zone: Zone, *handlers: object, **options: Any) -> tuple[SMTPServer, int]:
        dnsPort = await startDNS(self, zone)
        # Longer than LOOKUP_TIMEOUT + SLACK, so that only smtpsvc's own bound can
        # explain a greeting in time when the DNS server is silent.
        resolver = dnsclient.Resolver(servers=[(LOCALHOST, dnsPort)], timeout=(5,))
        self.addCleanup(finishResolverQueries, resolver)
        return await serve(
            self,
            *handlers,
            disableReverseLookup=False,
            resolver=resolver,
            reverseLookupTimeout=LOOKUP_TIMEOUT,
            **options,
        )

    async def _ehlo(self, port: int) -> str:
        def ehlo() -> str:
            with smtplib.SMTP(
                LOCALHOST, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT
            ) as client:
                _, text = client.ehlo()
                client.quit()
            return text.decode().splitlines()[0]

        return str(await deferToThread(ehlo))

    async def _timedGreeting(self, port: int) -> tuple[float, str]:
        def connect() -> tuple[float, str]:
            took, client, line = timedConnect(port, LOOKUP_TIMEOUT + SLACK)
            if client is None:
                return took, line
            with client:
                client.sock.settimeout(SOCKET_TIMEOUT)
                return took, client.command(f"EHLO {CLIENT_NAME}").lines[0]

        took, line = await deferToThread(connect)
        return took, line

    async def test_nameFound(self) -> None:
        """
        The client's PTR name is its host name: in the EHLO reply and in the session.
        """
        zone = Zone([ptr(LOCALHOST, "client.example.test")])
        who = WhoIsThere()
        _, port = await self._serve(zone, who)
        line = await self._ehlo(port)
        self.assertEqual(line, f"{SERVER_NAME} Nice to meet you, client.example.test")
        self.assertEqual(who.connects[0].clientHostname, "client.example.test")
        self.assertEqual(zone.asked, [("1.0.0.127.in-addr.arpa", dns.PTR)])

    async def test_confirmed(self) -> None:
        """
        With C{confirmReverseLookup} the name is used when it resolves back to the client.
        """
        zone = Zone([ptr(LOCALHOST, "client.example.test"), a("client.example.test", LOCALHOST)])
        _, port = await self._serve(zone, confirmReverseLookup=True)
        line = await self._ehlo(port)
        self.assertEqual(line, f"{SERVER_NAME} Nice to meet you, client.example.test")
        self.assertIn(("client.example.test", dns.A), zone.asked)

    async def test_notConfirmed(self) -> None:
        """
        With C{confirmReverseLookup} a name whose address is another is not used.
        """
        zone = Zone([ptr(LOCALHOST, "client.example.test"), a("client.example.test", "192.0.2.99")])
        _, port = await self._serve(zone, confirmReverseLookup=True)
        line = await self._ehlo(port)
        self.assertEqual(line, f"{SERVER_NAME} Nice to meet you, [{LOCALHOST}]")

    async def test_proxiedClient(self) -> None:
        """
        Behind a proxy the name looked up is the one of the client the header names.
        """
        zone = Zone([ptr(CLIENT, "spike.example.org")])
        _, port = await self._serve(zone, useProxy=True)

        def run() -> ServerReply:
            with RawClient(port) as client:
                client.send(f"PROXY TCP4 {CLIENT} {LOCALHOST} 40000 {port}\r\n".encode())
                client.readReply()
                return client.command(f"EHLO {CLIENT_NAME}")

        reply = await deferToThread(run)
        self.assertEqual(reply.lines[0], f"{SERVER_NAME} Nice to meet you, spike.example.org")
        self.assertEqual(zone.asked, [("1.2.0.192.in-addr.arpa", dns.PTR)])

    async def test_silentServer(self) -> None:
        """
        When the DNS server never answers, the greeting still comes after
        C{reverseLookupTimeout}, and the client is known by its address.
        """
        zone = Zone([], silent=[dns.PTR])
        _, port = await self._serve(zone)
        took, line = await self._timedGreeting(port)
        self.assertEqual(line, f"{SERVER_NAME} Nice to meet you, [{LOCALHOST}]")
        self.assertGreaterEqual(took, LOOKUP_TIMEOUT - 0.1)
        self.assertEqual(zone.asked, [("1.0.0.127.in-addr.arpa", dns.PTR)])

    async def test_silentConfirmation(self) -> None:
        """
        With C{confirmReverseLookup}, when the PTR question is answered but the address
        question never is, the greeting still comes within C{reverseLookupTimeout}
        (the whole lookup is bounded, not its first half).
        """
        zone = Zone([ptr(LOCALHOST, "client.example.test")], silent=[dns.A])
        _, port = await self._serve(zone, confirmReverseLookup=True)
        took, line = await self._timedGreeting(port)
        self.assertIn(("client.example.test", dns.A), zone.asked)
        self.assertEqual(
            line,
            f"{SERVER_NAME} Nice to meet you, [{LOCALHOST}]",
            f"after {took:.2f} s with reverseLookupTimeout={LOOKUP_TIMEOUT}",
        )
