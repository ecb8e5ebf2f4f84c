"""
Tests for who the client really is, in memory: the PROXY header before the conversation,
XCLIENT and XFORWARD from trusted front ends, and reverse DNS.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    AuthRequest,
    IAuthHandler,
    IConnectHandler,
    Session,
    SMTPError,
    _server,
)
from smtpsvc._core._proxy import ProxyHeader, encodeVersion2
from smtpsvc.testing import MemoryClient, RecordingHandler

from . import protocol_support
from .e2e_support import LogCapture
from .memorytls import ClientTLS, connectTLS, issue
from .protocol_support import FakeResolver, codes, proxied, wires

V1 = b"PROXY TCP4 198.51.100.7 192.0.2.25 40001 25\r\n"


#: A server (see L{protocol_support.makeServer}) that greets at once.
makeServer = partial(protocol_support.makeServer, earlyTalkerDelay=0)


class ProxyHeaderTests(SynchronousTestCase):
    """
    useProxy: the header comes first and names the client.
    """

    def test_v1(self) -> None:
        """
        A v1 header sets the client's and the server's address, then the greeting comes
        (standards PP-01).
        """
        recorder = RecordingHandler()
        client = MemoryClient(makeServer([recorder], useProxy=True))
        self.assertIsNone(client.greeting)
        self.assertEqual([r.code for r in client.write(V1)], [220])
        session = client.session
        self.assertEqual(
            (session.remoteAddress, session.remotePort, session.localAddress, session.localPort),
            ("198.51.100.7", 40001, "192.0.2.25", 25),
        )
        self.assertEqual(session.clientHostname, "[198.51.100.7]")
        self.assertEqual(session.proxy.version, 1)
        self.assertEqual(recorder.sessions[0].remoteAddress, "198.51.100.7")

    def test_v2WithTlvs(self) -> None:
        """
        A v2 header works the same and its TLVs are kept (standards PP-07).
        """
        header = proxied(
            2, "TCP6", ("2001:db8::7", 40002), ("2001:db8::25", 587), {0x02: b"mx.example.test"}
        )
        client = MemoryClient(makeServer(useProxy=True))
        self.assertEqual([r.code for r in client.write(encodeVersion2(header))], [220])
        self.assertEqual(client.session.remoteAddress, "2001:db8::7")
        self.assertEqual(client.session.proxy.tlvs, {0x02: b"mx.example.test"})

    def test_splitHeader(self) -> None:
        """
        A header that arrives byte by byte is read all the same.
        """
        client = MemoryClient(makeServer(useProxy=True))
        for byte in V1[:-1]:
            self.assertEqual(client.write(bytes([byte])), [])
        self.assertEqual([r.code for r in client.write(V1[-1:])], [220])

    def test_localUsesRealPeer(self) -> None:
        """
        A v2 LOCAL header (a health check) keeps the real peer (standards PP-08).
        """
        client = MemoryClient(makeServer(useProxy=True))
        local = encodeVersion2(ProxyHeader(version=2, command="LOCAL", family="UNSPEC"))
        self.assertEqual([r.code for r in client.write(local)], [220])
        self.assertEqual(client.session.remoteAddress, "192.0.2.1")

    def test_unknownUsesRealPeer(self) -> None:
        """
        PROXY UNKNOWN keeps the real peer (standards PP-03).
        """
        client = MemoryClient(makeServer(useProxy=True))
        self.assertEqual([r.code for r in client.write(b"PROXY UNKNOWN whatever\r\n")], [220])
        self.assertEqual(client.session.remoteAddress, "192.0.2.1")

    def test_malformedCloses(self) -> None:
        """
        A malformed header closes the connection, with no SMTP reply (standards PP-06).
        """
        for bad in (
            b"PROXY TCP4 01.2.3.4 192.0.2.25 1 2\r\n",
            b"PROXY TCP4 198.51.100.7 192.0.2.25 40001 65536\r\n",
            b"PROXY TCP4 198.51.100.7 192.0.2.25 40001 25\n",
            b"EHLO x\r\n",
        ):
            client = MemoryClient(makeServer(useProxy=True))
            self.assertEqual(client.write(bad), [], bad)
            self.assertTrue(client.closed, bad)

    def test_timeout(self) -> None:
        """
        No header within proxyTimeout closes the connection (standards PP-11).
        """
        client = MemoryClient(makeServer(useProxy=True, proxyTimeout=3))
        client.clock.advance(2.9)
        self.assertFalse(client.closed)
        client.clock.advance(0.2)
        self.assertTrue(client.closed)

    def test_nothingSaidBeforeHeader(self) -> None:
        """
        Before the header, nothing is said even when the server closes the connection
        for its own reasons: its shutdown, or an idle timeout shorter than proxyTimeout
        (standards PP-06).  On an implicit TLS port a reply in clear would be wrong too.
        """
        for secure in (False, True):
            client = MemoryClient(makeServer(useProxy=True, secure=secure))
            client.protocol.shutDown(True)
            self.assertEqual((client.transport.value(), client.closed), (b"", True), secure)
            client = MemoryClient(makeServer(useProxy=True, secure=secure, socketTimeout=1))
            client.clock.advance(1.5)
            self.assertEqual((client.transport.value(), client.closed), (b"", True), secure)

    def test_untrustedPeerNeedsNoHeader(self) -> None:
        """
        With a list, a client not on it is served directly...
        """
        client = MemoryClient(makeServer(useProxy=("10.0.0.0/8",)))
        self.assertEqual(client.greeting.code if client.greeting else None, 220)

    def test_untrustedHeaderRefused(self) -> None:
        """
        ...and a PROXY header from it, version 1 or 2, closes the connection without a
        reply (standards PP-12, 2.9): before the greeting, and also after it, as it comes
        when there is no early-talker delay.
        """
        v2 = encodeVersion2(proxied(2, "TCP4", ("198.51.100.7", 40001), ("192.0.2.25", 25)))
        for delay in (0.5, 0.0):
            for header in (V1, v2):
                transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1))
                server = makeServer(useProxy=("10.0.0.0/8",), earlyTalkerDelay=delay)
                protocol = server.buildProtocol(transport.getPeer())
                protocol.makeConnection(transport)
                greeting = transport.value()
                self.assertEqual(greeting[:4], b"220 " if delay == 0 else b"", delay)
                protocol.dataReceived(header)
                self.assertEqual(transport.value(), greeting, (delay, header))
                self.assertTrue(transport.disconnecting, (delay, header))

    def test_trustedPeer(self) -> None:
        """
        A client in the list must send the header.
        """
        client = MemoryClient(makeServer(useProxy=("192.0.2.0/24",)))
        self.assertIsNone(client.greeting)
        self.assertEqual([r.code for r in client.write(V1)], [220])

    def test_secondHeaderIsACommand(self) -> None:
        """
        A second header after the greeting is just an unknown command, never re-parsed.
        """
        client = MemoryClient(makeServer(useProxy=True))
        client.write(V1)
        self.assertEqual([r.code for r in client.write(V1)], [500])
        self.assertEqual(client.session.remoteAddress, "198.51.100.7")

    def test_earlyCommandWithHeader(self) -> None:
        """
        A command sent along with the header is early talk (as in the reference).
        """
        client = MemoryClient(makeServer(useProxy=True, earlyTalkerDelay=0.1))
        self.assertEqual([r.code for r in client.write(V1 + b"EHLO x\r\n")], [421])

    def test_beforeImplicitTls(self) -> None:
        """
        The header comes in clear before the TLS handshake, which may follow in the same
        write (standards 8314-06, PP-14).
        """
        from twisted.internet.address import IPv4Address
        from twisted.test.iosim import connect

        from .memorytls import SMTPClient, TLSMemoryTransport

        mx = issue("mx.example.test")
        server = makeServer(useProxy=True, secure=True, key=mx.key, cert=mx.cert)
        protocol = server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
        client = SMTPClient()
        serverTransport = TLSMemoryTransport(
            protocol, isServer=True, peerAddress=IPv4Address("TCP", "192.0.2.1", 1)
        )
        clientTransport = TLSMemoryTransport(client, isServer=False)
        serverTransport.clock = clientTransport.clock = server.reactor
        pump = connect(
            protocol, serverTransport, client, clientTransport, greet=False, clock=server.reactor
        )
        # The load balancer writes the header; the client's ClientHello follows at once,
        # so both arrive in one segment.
        clientTransport.stream.append(V1)
        clientTransport.startTLS(ClientTLS())
        pump.flush()
        self.assertEqual([r.code for r in client.replies()], [220])
        self.assertTrue(protocol.session.secure)
        self.assertEqual(protocol.session.remoteAddress, "198.51.100.7")

    def test_survivesStarttls(self) -> None:
        """
        The client's address from the header stays after STARTTLS.
        """
        mx = issue("mx.example.test")
        server = makeServer(useProxy=True, key=mx.key, cert=mx.cert)
        connection = connectTLS(server)
        connection.write(V1)
        connection.send("EHLO x", "STARTTLS")
        connection.startTLS(ClientTLS())
        self.assertTrue(connection.session.secure)
        self.assertEqual(connection.session.remoteAddress, "198.51.100.7")


@implementer(IConnectHandler)
class Gate:
    """
    Records each client it judges, and refuses 203.0.113.0/24.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def onConnect(self, session: Session) -> None:
        self.seen.append((session.remoteAddress, session.clientHostname))
        if session.remoteAddress.startswith("203.0.113."):
            raise SMTPError(554, "Go away")


@implementer(IAuthHandler)
class Logins:
    def onAuth(self, auth: AuthRequest, session: Session) -> str | None:
        if auth.method == "XCLIENT" and auth.username == "alice":
            return "alice"
        return None


class XClientTests(SynchronousTestCase):
    """
    XCLIENT from a trusted front end (Postfix's XCLIENT_README, standards 1.13).
    """

    def client(self, handlers: Sequence[object] = (), **options: Any) -> MemoryClient:
        options.setdefault("useXClient", ("192.0.2.0/24",))
        client = MemoryClient(makeServer(handlers, **options))
        client.send("EHLO proxy.example")
        return client

    def test_advertised(self) -> None:
        """
        EHLO offers XCLIENT to a trusted client only (standards XCL-01).
        """
        client = self.client()
        self.assertIn(
            "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT",
            client.send("EHLO x")[0].lines,
        )
        other = MemoryClient(makeServer(useXClient=("10.0.0.0/8",)))
        self.assertFalse(any(line.startswith("XCLIENT") for line in other.send("EHLO x")[0].lines))

    def test_untrusted(self) -> None:
        """
        An untrusted client gets 550 (standards XCL-02).
        """
        client = self.client(useXClient=("10.0.0.0/8",), hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send("XCLIENT ADDR=198.51.100.7")), ["550 5.7.0 Error: Not allowed"]
        )

    def test_changesClient(self) -> None:
        """
        XCLIENT changes the client, re-runs the connect handlers and greets again; the
        client must say EHLO again (standards XCL-03).
        """
        gate = Gate()
        client = self.client([gate], hideENHANCEDSTATUSCODES=False)
        replies = client.send("XCLIENT ADDR=198.51.100.7 NAME=Spike.Example.org PORT=40001")
        self.assertEqual(wires(replies), ["220 2.0.0 mx.test ESMTP"])
        session = client.session
        self.assertEqual(
            (session.remoteAddress, session.remotePort, session.clientHostname),
            ("198.51.100.7", 40001, "spike.example.org"),
        )
        self.assertEqual(gate.seen[-1], ("198.51.100.7", "spike.example.org"))
        self.assertEqual([r.code for r in client.send("MAIL FROM:<a@b.example>")], [503])
        self.assertFalse(any(line.startswith("XCLIENT") for line in client.send("EHLO x")[0].lines))

    def test_refusedNewClient(self) -> None:
        """
        If the connect handlers refuse the new client, that is the reply; as after a
        refused greeting, only QUIT is then answered other than with 503 (RFC 5321
        section 3.1).
        """
        client = self.client([Gate()])
        self.assertEqual(wires(client.send("XCLIENT ADDR=203.0.113.9")), ["554 Go away"])
        self.assertEqual([r.code for r in client.send("MAIL FROM:<a@b.example>")], [503])
        self.assertEqual([r.code for r in client.send("QUIT")], [221])
        self.assertTrue(client.closed)

    def test_onlyOnce(self) -> None:
        """
        After an XCLIENT with ADDR, XCLIENT is no longer allowed (standards XCL-06).
        """
        client = self.client()
        client.send("XCLIENT ADDR=198.51.100.7")
        self.assertEqual([r.code for r in client.send("XCLIENT ADDR=192.0.2.8")], [550])

    def test_inTransaction(self) -> None:
        """
        XCLIENT inside a transaction gets 503 (standards XCL-04).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(
            wires(client.send("XCLIENT ADDR=198.51.100.7")),
            ["503 Error: Mail transaction in progress"],
        )

    def test_badAttributes(self) -> None:
        """
        Unknown attributes, bad values and injected line breaks get 501 (standards XCL-05).
        """
        client = self.client()
        for argument, text in (
            ("FOO=1", "Error: Bad command parameter syntax"),
            ("ADDR", "Error: Bad command parameter syntax"),
            ("", "Error: Bad command parameter syntax"),
            ("ADDR=999.1.1.1", "Error: Bad command parameter syntax. Invalid address"),
            ("PORT=70000", "Error: Bad command parameter syntax"),
            ("NAME=a+ZZ", "Error: Bad command parameter syntax"),
            ("HELO=x+0D+0AX-Injected:+20y", "Error: Bad command parameter syntax"),
        ):
            self.assertEqual(
                wires(client.send(f"XCLIENT {argument}".strip())), [f"501 {text}"], argument
            )

    def test_unavailableAndIpv6(self) -> None:
        """
        [UNAVAILABLE] in any case means unknown; IPv6 comes with an IPV6: prefix
        (standards XCL-09).
        """
        client = self.client()
        client.send("XCLIENT NAME=[unavailable] ADDR=ipv6:2001:DB8::7")
        self.assertEqual(client.session.remoteAddress, "2001:db8::7")
        self.assertEqual(client.session.clientHostname, "[2001:db8::7]")

    def test_trustedInIPv4MappedForm(self) -> None:
        """
        A front end trusted by its IPv4-mapped address (as a dual-stack socket names it)
        is trusted when it connects over IPv4 (IPv6 QA: it got 550).
        """
        client = self.client(useXClient=("::ffff:192.0.2.0/120",))
        self.assertEqual(codes(client.send("XCLIENT ADDR=198.51.100.7")), [220])

    def test_ipv4MappedAddressIsIPv4(self) -> None:
        """
        An IPv4-mapped ADDR is the IPv4 address it maps, as in a PROXY header or on a
        dual-stack socket (IPv6 QA: it was kept as ::ffff:c000:201, in the Received
        field and as a client of its own for the AUTH budget).
        """
        client = self.client()
        client.send("XCLIENT ADDR=IPV6:::ffff:192.0.2.1")
        self.assertEqual(client.session.remoteAddress, "192.0.2.1")
        self.assertEqual(client.session.clientHostname, "[192.0.2.1]")

    def test_login(self) -> None:
        """
        LOGIN marks the client authenticated, through the authentication handlers
        (standards XCL-08).
        """
        client = self.client([Logins()], authOptional=False)
        self.assertEqual([r.code for r in client.send("XCLIENT LOGIN=alice")], [220])
        self.assertEqual(client.session.user, "alice")
        self.assertEqual(
            [r.code for r in client.send("EHLO x", "MAIL FROM:<a@b.example>")], [250, 250]
        )

    def test_loginWithoutHandler(self) -> None:
        """
        LOGIN with no authentication handler gets a clean refusal (the reference crashes;
        spec section 14 #2).
        """
        client = self.client()
        self.assertEqual(
            wires(client.send("XCLIENT LOGIN=alice")), ["550 Authentication credentials invalid"]
        )
        self.assertTrue(client.closed)

    def test_emptyLoginLogsOut(self) -> None:
        """
        LOGIN= with nothing clears the authentication.
        """
        client = self.client([Logins()])
        client.send("XCLIENT LOGIN=alice")
        client.send("XCLIENT LOGIN=")
        self.assertIsNone(client.session.user)

    def test_keepsTls(self) -> None:
        """
        XCLIENT does not undo TLS (standards XCL-07).
        """
        mx = issue("mx.example.test")
        server = makeServer(useXClient=True, key=mx.key, cert=mx.cert)
        connection = connectTLS(server)
        connection.send("EHLO x", "STARTTLS")
        connection.startTLS(ClientTLS())
        connection.send("EHLO x")
        self.assertEqual([r.code for r in connection.send("XCLIENT ADDR=198.51.100.7")], [220])
        self.assertTrue(connection.session.secure)
        self.assertNotIn("STARTTLS", connection.send("EHLO x")[0].lines)


class XForwardTests(SynchronousTestCase):
    """
    XFORWARD from a trusted content filter (XFORWARD_README, standards 1.14).
    """

    def client(self, handlers: Sequence[object] = (), **options: Any) -> MemoryClient:
        options.setdefault("useXForward", True)
        client = MemoryClient(makeServer(handlers, **options))
        client.send("EHLO filter.example")
        return client

    def test_forwards(self) -> None:
        """
        XFORWARD gets 250 and the message carries the forwarded client (standards XFW-01).
        """
        recorder = RecordingHandler()
        client = self.client([recorder], hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send("XFORWARD NAME=spike.example.org ADDR=198.51.100.7 PROTO=ESMTP")),
            ["250 2.0.0 OK"],
        )
        self.assertEqual(client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")[-1].code, 250)
        self.assertEqual(recorder.messages[0].remoteAddress, "198.51.100.7")
        self.assertEqual(client.session.xForward, {})
        self.assertEqual(client.session.remoteAddress, "192.0.2.1")

    def test_addressWithoutName(self) -> None:
        """
        ADDR without NAME leaves no host name of the filter's on the forwarded client:
        it is named by its address, as after XCLIENT; and the message's log line names
        the forwarded client, as its Received field does, though the final reply ends
        what XFORWARD said (IPv6 QA: the line named the filter).
        """
        log = LogCapture(self)
        recorder = RecordingHandler()
        client = self.client([recorder])
        client.send("XFORWARD ADDR=IPV6:2001:db8::5")
        self.assertEqual(
            (client.session.remoteAddress, client.session.clientHostname),
            ("2001:db8::5", "[2001:db8::5]"),
        )
        self.assertEqual(client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")[-1].code, 250)
        self.assertEqual(client.session.remoteAddress, "192.0.2.1")
        (line,) = [e for e in log.events if e.get("event") == "transaction"]
        self.assertEqual(
            (line["remoteAddress"], line["clientHostname"]), ("2001:db8::5", "[2001:db8::5]")
        )
        self.assertIn(" for [2001:db8::5] [2001:db8::5]: ", line["text"])

    def test_untrusted(self) -> None:
        """
        An untrusted client gets 550 (standards XFW-02).
        """
        client = self.client(useXForward=("10.0.0.0/8",))
        self.assertEqual([r.code for r in client.send("XFORWARD ADDR=198.51.100.7")], [550])

    def test_inTransaction(self) -> None:
        """
        XFORWARD inside a transaction gets 503 (standards XFW-03).
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual([r.code for r in client.send("XFORWARD ADDR=198.51.100.7")], [503])

    def test_badValue(self) -> None:
        """
        A bad attribute or value gets 501 (standards XFW-04).
        """
        client = self.client()
        self.assertEqual(
            [r.code for r in client.send("XFORWARD SOURCE=elsewhere", "XFORWARD WHO=x")], [501, 501]
        )

    def test_rsetEndsIt(self) -> None:
        """
        RSET ends what XFORWARD said (standards XFW-05).
        """
        client = self.client()
        client.send("XFORWARD ADDR=198.51.100.7 HELO=Spike")
        self.assertEqual(client.session.hostNameAppearsAs, "spike")
        client.send("RSET")
        self.assertEqual(
            (client.session.remoteAddress, client.session.hostNameAppearsAs),
            ("192.0.2.1", "filter.example"),
        )

    def test_withXClient(self) -> None:
        """
        From a front end trusted with both: XCLIENT after XFORWARD gives the client it
        names (XFORWARD's values are forgotten first, not put back over it), and once
        XCLIENT has given an address, the session is the client's, which may not
        XFORWARD (550, as a second XCLIENT gets).
        """
        client = self.client(useXClient=True)
        client.send("XFORWARD ADDR=198.51.100.7 PORT=4444 NAME=fwd.example")
        self.assertEqual(
            codes(client.send("XCLIENT ADDR=203.0.113.9 PORT=5555 NAME=spike.example")), [220]
        )
        session = client.session
        self.assertEqual(
            (session.remoteAddress, session.remotePort, session.clientHostname),
            ("203.0.113.9", 5555, "spike.example"),
        )
        self.assertEqual(session.xForward, {})
        client.send("EHLO spike.example")
        self.assertEqual(codes(client.send("XFORWARD ADDR=192.0.2.77 NAME=trusted.example")), [550])
        self.assertEqual(session.remoteAddress, "203.0.113.9")


class ReverseDNSTests(SynchronousTestCase):
    """
    The client's host name from reverse DNS (spec section 2.3).
    """

    REVERSE = "1.2.0.192.in-addr.arpa"

    def test_name(self) -> None:
        """
        The PTR name becomes clientHostname before the connect handlers run.
        """
        gate = Gate()
        resolver = FakeResolver({self.REVERSE: "Client.Example.test."}, {})
        client = MemoryClient(makeServer([gate], resolver=resolver))
        self.assertEqual(client.session.clientHostname, "client.example.test")
        self.assertEqual(gate.seen, [("192.0.2.1", "client.example.test")])
        self.assertIn("client.example.test", client.send("EHLO x")[0].lines[0])

    def test_noName(self) -> None:
        """
        Without a PTR record the name is [address].
        """
        client = MemoryClient(makeServer(resolver=FakeResolver({}, {})))
        self.assertEqual(client.session.clientHostname, "[192.0.2.1]")

    def test_failureLoggedInWords(self) -> None:
        """
        A failed lookup leaves the name [address], and the log says why in words (no
        such name, a name server failure), not with the DNS answer Twisted's errors hold.
        """
        for kind, words in (
            (DNSNameError, "no such name (NXDOMAIN)"),
            (DNSServerError, "name server failure (SERVFAIL)"),
        ):
            resolver = FakeResolver({}, {})
            failure = Failure(kind(dns.Message(rCode=dns.ENAME)))
            resolver.lookupPointer = partial(lambda f, *a, **k: fail(f), failure)  # type: ignore[method-assign]
            log = LogCapture(self)
            client = MemoryClient(makeServer(resolver=resolver))
            self.assertEqual(client.session.clientHostname, "[192.0.2.1]")
            self.assertEqual(
                log.matching("Reverse lookup"), [f"Reverse lookup of 192.0.2.1 failed: {words}"]
            )

    def test_loopbackNotLookedUp(self) -> None:
        """
        With the system's resolver (no C{resolver} option) a loopback client is not looked
        up, and its name is [address]; other clients are looked up.
        """
        fallback = FakeResolver({self.REVERSE: "client.example.test"}, {})
        self.patch(_server, "defaultResolver", lambda reactor: fallback)
        for address in ("127.0.0.1", "127.3.2.1"):
            client = MemoryClient(makeServer(), peer=(address, 40000))
            self.assertEqual(client.session.clientHostname, f"[{address}]")
        self.assertEqual(fallback.asked, [])
        self.assertIsNone(makeServer().reverseLookup("::1"))
        client = MemoryClient(makeServer())
        self.assertEqual(client.session.clientHostname, "client.example.test")
        self.assertEqual(fallback.asked, [self.REVERSE])

    def test_loopbackWithGivenResolver(self) -> None:
        """
        A resolver given in the options is asked about loopback clients too.
        """
        resolver = FakeResolver({"1.0.0.127.in-addr.arpa": "localhost"}, {})
        client = MemoryClient(makeServer(resolver=resolver), peer=("127.0.0.1", 40000))
        self.assertEqual(client.session.clientHostname, "localhost")

    def test_timeout(self) -> None:
        """
        A lookup that does not answer within reverseLookupTimeout is given up.
        """
        server = makeServer(resolver=FakeResolver({}, {}, silent=True), reverseLookupTimeout=1.5)
        client = MemoryClient(server)
        self.assertIsNone(client.greeting)
        server.reactor.advance(1.5)
        self.assertEqual([r.code for r in client.received()], [220])
        self.assertEqual(client.session.clientHostname, "[192.0.2.1]")

    def test_resolverRaises(self) -> None:
        """
        A resolver that raises instead of answering (as twisted.names does when it cannot
        load the idna codec after a privilege drop) is a failed lookup: the client is
        greeted and named by its address.
        """

        class Raising(FakeResolver):
            def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
                raise LookupError("unknown encoding: idna")

        client = MemoryClient(makeServer(resolver=Raising({}, {})))
        self.assertEqual(client.greeting.code if client.greeting else None, 220)
        self.assertEqual(client.session.clientHostname, "[192.0.2.1]")
        self.assertEqual(client.send("NOOP")[0].code, 250)

    def test_idnaCodecLoadedAtImport(self) -> None:
        """
        The idna codec twisted.names needs is loaded when the server's code is, not at the
        first lookup, which may come after the service dropped the privileges to read it.
        """
        code = "import sys, smtpsvc._server; print('encodings.idna' in sys.modules)"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        self.assertEqual(out.stdout.strip(), "True", out.stderr)

    def test_resolverRaisesConfirming(self) -> None:
        """
        The same when it is the forward confirmation that raises.
        """

        class Raising(FakeResolver):
            def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
                raise LookupError("unknown encoding: idna")

        resolver = Raising({self.REVERSE: "client.example.test"}, {})
        client = MemoryClient(makeServer(resolver=resolver, confirmReverseLookup=True))
        self.assertEqual(client.session.clientHostname, "[192.0.2.1]")
        self.assertEqual(client.send("NOOP")[0].code, 250)

    def test_disabled(self) -> None:
        """
        disableReverseLookup skips the lookup.
        """
        resolver = FakeResolver({self.REVERSE: "client.example.test"}, {})
        client = MemoryClient(makeServer(resolver=resolver, disableReverseLookup=True))
        self.assertEqual((client.session.clientHostname, resolver.asked), ("[192.0.2.1]", []))

    def test_forwardConfirmed(self) -> None:
        """
        With confirmReverseLookup the name is used only if it resolves back.
        """
        good = FakeResolver(
            {self.REVERSE: "client.example.test"}, {"client.example.test": "192.0.2.1"}
        )
        bad = FakeResolver(
            {self.REVERSE: "liar.example.test"}, {"liar.example.test": "203.0.113.9"}
        )
        self.assertEqual(
            MemoryClient(
                makeServer(resolver=good, confirmReverseLookup=True)
            ).session.clientHostname,
            "client.example.test",
        )
        self.assertEqual(
            MemoryClient(
                makeServer(resolver=bad, confirmReverseLookup=True)
            ).session.clientHostname,
            "[192.0.2.1]",
        )

    def test_unsafeNameIgnored(self) -> None:
        """
        A PTR name that could break a trace header is not used.
        """
        resolver = FakeResolver({self.REVERSE: "evil(name)"}, {})
        self.assertEqual(
            MemoryClient(makeServer(resolver=resolver)).session.clientHostname, "[192.0.2.1]"
        )

    def test_proxiedClientLookedUp(self) -> None:
        """
        Behind a proxy, the real client's address is looked up.
        """
        resolver = FakeResolver({"7.100.51.198.in-addr.arpa": "real.example.test"}, {})
        client = MemoryClient(makeServer(resolver=resolver, useProxy=True))
        client.write(V1)
        self.assertEqual(client.session.clientHostname, "real.example.test")
