"""
Tests for L{smtpsvc._core._proxy}, the PROXY protocol header parser, and for the XCLIENT
and XFORWARD attribute rules of L{smtpsvc._core._xclient}.

Each PP-* case of the standards checklist (section 1.15) that the parser decides is a test
named after it; PP-11 (timeout), PP-12 (untrusted sender) and PP-13 (listener without
PROXY) are decided by the protocol and tested end to end in L{tests.test_proxy_e2e}.
Headers are written out byte by byte here rather than made with L{encodeVersion2}, so that
the encoder is tested against them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import ssl
import struct
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc._core._proxy import (
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    ProxyHeaderParser,
    encodeVersion2,
    looksLikeProxyHeader,
    parseVersion1,
)
from smtpsvc._core._xclient import (
    XCLIENT_ATTRIBUTES,
    XFORWARD_ATTRIBUTES,
    BadAttribute,
    isTrusted,
    parseAttributes,
)
from smtpsvc._options import ServerOptions

from .protocol_support import proxied

_FAST = settings(max_examples=200, deadline=None)
_XCLIENT_UNAVAILABLE = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
_XFORWARD_UNAVAILABLE = ("[UNAVAILABLE]",)
# The v2 family bytes the spec defines; every other value must close the connection.
_V2_FAMILIES = {0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32}


def parse(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    """
    Feed C{data} to a new parser in one chunk.
    """
    return ProxyHeaderParser().feed(data)


def parseChunks(chunks: Sequence[bytes]) -> tuple[ProxyHeader, bytes] | None:
    """
    Feed C{chunks} one by one, as a connection delivers them, until the parser has a
    header; the rest is what followed the header in that chunk and every later chunk.
    """
    parser = ProxyHeaderParser()
    for index, chunk in enumerate(chunks):
        result = parser.feed(chunk)
        if result is not None:
            header, rest = result
            return header, rest + b"".join(chunks[index + 1 :])
    return None


def v2(command: int, family: int, body: bytes, length: int | None = None) -> bytes:
    """
    A v2 header: the signature, the version/command and family bytes, the length (of
    C{body} unless given) and C{body}.
    """
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", size) + body


def addressBlock(
    addressClass: type[IPv4Address | IPv6Address],
    source: str,
    destination: str,
    sourcePort: int,
    destinationPort: int,
) -> bytes:
    """
    The address block of a v2 header, built by hand: the two addresses packed by
    C{addressClass} (12 bytes in all for TCP4 with L{ipaddress.IPv4Address}, 36 for TCP6
    with L{ipaddress.IPv6Address}), then the two ports.
    """
    return (
        addressClass(source).packed
        + addressClass(destination).packed
        + struct.pack("!HH", sourcePort, destinationPort)
    )


def tlv(kind: int, value: bytes) -> bytes:
    """
    One v2 type-length-value field.
    """
    return struct.pack("!BH", kind, len(value)) + value


def clientHello() -> bytes:
    """
    The first bytes a TLS client sends: a real ClientHello, made in memory.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(
        incoming, outgoing, server_hostname="mx.example.test"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


TCP4_LINE = b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25\r\n"
TCP4_HEADER = proxied(1, "TCP4", ("192.0.2.1", 40000), ("198.51.100.1", 25))


class VersionOneTests(SynchronousTestCase):
    """
    Version 1, the text line: exactly one form is accepted, everything else closes.
    """

    def assertRefused(self, data: bytes) -> None:
        """
        C{data} makes the parser raise L{ProxyError}, whether it arrives at once or one
        byte at a time.
        """
        self.assertRaises(ProxyError, parse, data)
        self.assertRaises(ProxyError, parseChunks, [data[i : i + 1] for i in range(len(data))])

    def assertAccepted(self, data: bytes) -> ProxyHeader:
        """
        C{data} is a complete header with nothing after it; return the header.
        """
        try:
            result = parse(data)
        except ProxyError as e:
            self.fail(f"{data!r} refused: {e}")
        if result is None:
            self.fail(f"{data!r} is not a complete header")
        self.assertEqual(result[1], b"")
        return result[0]

    def test_PP01_tcp4(self) -> None:
        """
        PP-01: a TCP4 line names the client and the address it connected to.
        """
        self.assertEqual(parse(TCP4_LINE), (TCP4_HEADER, b""))
        self.assertTrue(TCP4_HEADER.relayed)

    def test_PP01_portBounds(self) -> None:
        """
        Ports 0 and 65535 are ports.
        """
        result = parse(b"PROXY TCP4 192.0.2.1 198.51.100.1 0 65535\r\n")
        assert result is not None
        self.assertEqual((result[0].sourcePort, result[0].destinationPort), (0, 65535))

    def test_PP02_tcp6(self) -> None:
        """
        PP-02: a TCP6 line names an IPv6 client.
        """
        result = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 25\r\n")
        self.assertEqual(
            result, (proxied(1, "TCP6", ("2001:db8::1", 40000), ("2001:db8::2", 25)), b"")
        )

    def test_PP02_tcp6UpperCase(self) -> None:
        """
        IPv6 hexadecimal digits may be upper case ("upper or lower case", says the spec);
        the session gets the usual lower-case form.
        """
        header = self.assertAccepted(b"PROXY TCP6 2001:DB8::A 2001:db8::2 40000 25\r\n")
        self.assertEqual(header.sourceAddress, "2001:db8::a")

    def test_PP02_tcp6FullForm(self) -> None:
        """
        The spec describes IPv6 addresses as "series of 4 hexadecimal digits", so the
        uncompressed form with leading zeros in each group is valid (inet_pton takes it).
        """
        header = self.assertAccepted(
            b"PROXY TCP6 2001:0db8:0000:0000:0000:0000:0000:0001 2001:db8::2 40000 25\r\n"
        )
        self.assertEqual(header.sourceAddress, "2001:db8::1")

    def test_PP02_tcp6MappedIPv4(self) -> None:
        """
        An IPv4 client seen by a dual-stack (IPv6) frontend is an IPv4-mapped IPv6
        address; inet_ntop, and so HAProxy, writes it as C{::ffff:192.0.2.1}, and
        inet_pton accepts that form.
        """
        header = self.assertAccepted(
            b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:198.51.100.1 40000 25\r\n"
        )
        # Kept as the IPv6 address or given as the IPv4 one: either names the client.
        source = ipaddress.ip_address(header.sourceAddress or "")
        if isinstance(source, ipaddress.IPv6Address) and source.ipv4_mapped is not None:
            source = source.ipv4_mapped
        self.assertEqual(source, ipaddress.IPv4Address("192.0.2.1"))

    def test_PP03_unknown(self) -> None:
        """
        PP-03: C{PROXY UNKNOWN}, with or without anything after it, is accepted and names
        no client, so the real peer is used.
        """
        for line in (
            b"PROXY UNKNOWN\r\n",
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ):
            result = parse(line)
            self.assertEqual(
                result, (ProxyHeader(version=1, command="PROXY", family="UNKNOWN"), b"")
            )
            assert result is not None
            self.assertFalse(result[0].relayed)

    def test_PP04_bareLF(self) -> None:
        """
        PP-04: a line ended by LF alone is refused (only CRLF ends it), even when more
        bytes follow.
        """
        self.assertRefused(TCP4_LINE[:-2] + b"\n")
        self.assertRefused(TCP4_LINE[:-2] + b"\nEHLO x\r\n")

    def test_PP04_bareCR(self) -> None:
        """
        PP-04: a CR not followed by LF is refused, as soon as the byte after it arrives.
        """
        self.assertRefused(TCP4_LINE[:-2] + b"\rEHLO x\r\n")
        self.assertRefused(b"PROXY TCP4\r 192.0.2.1 198.51.100.1 40000 25\r\n")
        # A CR at the very end may still be followed by its LF.
        self.assertIsNone(parse(TCP4_LINE[:-1]))

    def test_PP05_longest(self) -> None:
        """
        PP-05: a line of 107 bytes with its CRLF, the longest the spec allows, is accepted.
        """
        line = b"PROXY UNKNOWN " + b"x" * (105 - len("PROXY UNKNOWN ")) + b"\r\n"
        self.assertEqual(len(line), 107)
        result = parse(line)
        assert result is not None
        self.assertEqual(result[0].family, "UNKNOWN")

    def test_PP05_tooLong(self) -> None:
        """
        PP-05: 108 bytes with the CRLF, or 107 bytes without one, cannot be a header.
        """
        line = b"PROXY UNKNOWN " + b"x" * (106 - len("PROXY UNKNOWN ")) + b"\r\n"
        self.assertEqual(len(line), 108)
        self.assertRefused(line)
        self.assertRefused(b"PROXY UNKNOWN " + b"x" * 93)
        self.assertRefused(b"PROXY UNKNOWN " + b"x" * 2000)

    def test_PP06_leadingZeros(self) -> None:
        """
        PP-06: leading zeros in an IPv4 address or in a port (octal confusion) are refused.
        """
        self.assertRefused(b"PROXY TCP4 01.2.3.4 198.51.100.1 40000 25\r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1 198.51.100.010 40000 25\r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 025\r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1 198.51.100.1 040000 25\r\n")

    def test_PP06_badPorts(self) -> None:
        """
        PP-06: port 65536 and ports that are not plain decimal numbers are refused.
        """
        for port in (b"65536", b"99999", b"-1", b"+25", b"2 5", b"", b"0x19", b"\xd9\xa2"):
            self.assertRefused(b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 " + port + b"\r\n")

    def test_PP06_spaces(self) -> None:
        """
        PP-06: fields are separated by exactly one space, with none before the CRLF.
        """
        self.assertRefused(b"PROXY TCP4 192.0.2.1  198.51.100.1 40000 25\r\n")
        self.assertRefused(b"PROXY  TCP4 192.0.2.1 198.51.100.1 40000 25\r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25 \r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1\t198.51.100.1 40000 25\r\n")

    def test_PP06_familyMismatch(self) -> None:
        """
        PP-06: addresses of the other family than the one announced are refused.
        """
        self.assertRefused(b"PROXY TCP4 2001:db8::1 198.51.100.1 40000 25\r\n")
        self.assertRefused(b"PROXY TCP4 192.0.2.1 2001:db8::2 40000 25\r\n")
        self.assertRefused(b"PROXY TCP6 192.0.2.1 198.51.100.1 40000 25\r\n")

    def test_PP06_zoneIndex(self) -> None:
        """
        PP-06: an IPv6 zone index (C{%eth0}) is not part of an address on the wire.
        """
        self.assertRefused(b"PROXY TCP6 fe80::1%eth0 fe80::2 40000 25\r\n")

    def test_PP06_otherMalformations(self) -> None:
        """
        PP-06: anything else that is not the exact form is refused: a lower-case
        keyword, an unknown protocol, missing or extra fields, non-ASCII, NUL.
        """
        for line in (
            b"proxy TCP4 192.0.2.1 198.51.100.1 40000 25\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.1 40000 25\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.1 40000 25\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.1 40000 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 40000\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25 26\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 25\x00\r\n",
            b"PROXY TCP4 192.0.2.\xb9 198.51.100.1 40000 25\r\n",
            b"PROXY TCP4 999.0.2.1 198.51.100.1 40000 25\r\n",
            b"PROXY TCP4 localhost 198.51.100.1 40000 25\r\n",
            b"PROXY\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4\r\n",
            b"EHLO x\r\n",
            b"GET / HTTP/1.0\r\n",
        ):
            self.assertRefused(line)

    def test_parseVersion1Directly(self) -> None:
        """
        L{parseVersion1} takes the line without its CRLF.
        """
        self.assertEqual(parseVersion1(TCP4_LINE[:-2].decode()), TCP4_HEADER)
        self.assertRaises(ProxyError, parseVersion1, "PROXY")

    def test_partialLine(self) -> None:
        """
        A line that may still become a header asks for more bytes.
        """
        parser = ProxyHeaderParser()
        self.assertIsNone(parser.feed(b""))
        self.assertIsNone(parser.feed(b"P"))
        self.assertIsNone(parser.feed(b"ROXY TCP4 192.0.2.1"))
        self.assertEqual(parser.feed(b" 198.51.100.1 40000 25\r\n"), (TCP4_HEADER, b""))


class VersionTwoTests(SynchronousTestCase):
    """
    Version 2, the binary header: the fixed 16 bytes say how many follow, and exactly
    that many are consumed.
    """

    def test_PP07_tcp4(self) -> None:
        """
        PP-07: a PROXY command with a TCP4 block names the client.
        """
        data = v2(0x21, 0x11, addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25))
        self.assertEqual(data[12:16], b"\x21\x11\x00\x0c")
        result = parse(data)
        self.assertEqual(
            result, (proxied(2, "TCP4", ("192.0.2.1", 40000), ("198.51.100.1", 25)), b"")
        )
        assert result is not None
        self.assertTrue(result[0].relayed)

    def test_PP07_tcp6(self) -> None:
        """
        PP-07: a TCP6 block names an IPv6 client.
        """
        block = addressBlock(IPv6Address, "2001:db8::1", "2001:db8::2", 40000, 25)
        result = parse(v2(0x21, 0x21, block))
        assert result is not None
        header = result[0]
        self.assertEqual(
            (header.family, header.sourceAddress, header.sourcePort),
            ("TCP6", "2001:db8::1", 40000),
        )
        self.assertEqual((header.destinationAddress, header.destinationPort), ("2001:db8::2", 25))

    def test_PP08_local(self) -> None:
        """
        PP-08: a LOCAL command (HAProxy's health checks) is accepted and names no client.
        """
        result = parse(v2(0x20, 0x00, b""))
        self.assertEqual(result, (ProxyHeader(version=2, command="LOCAL", family="UNSPEC"), b""))
        assert result is not None
        self.assertFalse(result[0].relayed)

    def test_PP08_localWithAddresses(self) -> None:
        """
        PP-08: a LOCAL command that carries an address block anyway is still LOCAL: the
        addresses are skipped, not used.
        """
        body = addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25) + tlv(0x04, b"")
        result = parse(v2(0x20, 0x11, body) + b"EHLO x\r\n")
        assert result is not None
        header, rest = result
        self.assertEqual(
            (header.command, header.relayed, header.sourceAddress), ("LOCAL", False, None)
        )
        self.assertEqual(rest, b"EHLO x\r\n")

    def test_PP08_unspec(self) -> None:
        """
        A PROXY command for an unspecified family names no client either.
        """
        result = parse(v2(0x21, 0x00, b""))
        self.assertEqual(result, (ProxyHeader(version=2, command="PROXY", family="UNSPEC"), b""))
        assert result is not None
        self.assertFalse(result[0].relayed)

    def test_PP09_badVersion(self) -> None:
        """
        PP-09: any version nibble other than 2 is refused.
        """
        body = addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25)
        for version in (0x0, 0x1, 0x3, 0xF):
            self.assertRaises(ProxyError, parse, v2(version << 4 | 0x1, 0x11, body))

    def test_PP09_badCommand(self) -> None:
        """
        PP-09: commands other than LOCAL (0) and PROXY (1) are refused.
        """
        body = addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25)
        for command in range(2, 16):
            self.assertRaises(ProxyError, parse, v2(0x20 | command, 0x11, body))

    def test_PP09_badFamily(self) -> None:
        """
        PP-09: every family/protocol byte outside {00, 11, 12, 21, 22, 31, 32} is refused.
        """
        for family in range(256):
            data = v2(0x21, family, b"\x00" * 216)
            if family in _V2_FAMILIES:
                self.assertIsNotNone(parse(data), hex(family))
            else:
                self.assertRaises(ProxyError, parse, data)

    def test_PP09_badSignature(self) -> None:
        """
        A header that starts like the signature and then differs is refused at once.
        """
        self.assertRaises(ProxyError, parse, V2_SIGNATURE[:5] + b"X")
        self.assertRaises(ProxyError, parse, b"\r\nQUIT\r\n")

    def test_PP10_lengthCap(self) -> None:
        """
        PP-10: a length above L{V2_MAX_LENGTH} is refused as soon as the 16 fixed bytes
        are in, without waiting for (or buffering) the body.
        """
        self.assertRaises(ProxyError, parse, v2(0x21, 0x11, b"", length=V2_MAX_LENGTH + 1))
        self.assertRaises(ProxyError, parse, v2(0x21, 0x11, b"", length=0xFFFF))

    def test_PP10_longestAccepted(self) -> None:
        """
        PP-10: a header exactly at the cap is read whole, and the bytes after it are left.
        """
        block = addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25)
        padding = tlv(0xEE, b"p" * (V2_MAX_LENGTH - len(block) - 3))
        body = block + padding
        self.assertEqual(len(body), V2_MAX_LENGTH)
        result = parse(v2(0x21, 0x11, body) + b"EHLO x\r\n")
        assert result is not None
        self.assertEqual(result[1], b"EHLO x\r\n")
        self.assertEqual(len(result[0].tlvs[0xEE]), V2_MAX_LENGTH - len(block) - 3)

    def test_PP10_exactLength(self) -> None:
        """
        PP-10: the parser waits for exactly 16 + length bytes, then stops there.
        """
        data = v2(0x21, 0x11, addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25))
        parser = ProxyHeaderParser()
        for i in range(len(data) - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]), i)
        result = parser.feed(data[-1:] + b"\x16\x03\x01")
        assert result is not None
        self.assertEqual(result[1], b"\x16\x03\x01")

    def test_PP10_tlvsKept(self) -> None:
        """
        PP-10: type-length-value fields after the addresses are kept by type, unknown
        types included; a repeated type keeps its first value.
        """
        body = (
            addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25)
            + tlv(0x02, b"mx.example.org")
            + tlv(0xE0, b"\x00\x01")
            + tlv(0x04, b"")
            + tlv(0x02, b"second.example.org")
        )
        result = parse(v2(0x21, 0x11, body))
        assert result is not None
        self.assertEqual(result[0].tlvs, {0x02: b"mx.example.org", 0xE0: b"\x00\x01", 0x04: b""})

    def test_PP10_truncatedTLV(self) -> None:
        """
        PP-10: a TLV that runs past the length the header announced is refused, as is a
        stray byte or two that cannot even hold a TLV's type and length.
        """
        block = addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 25)
        for tail in (tlv(0x02, b"mx.example.org")[:-1], b"\x02", b"\x02\x00"):
            self.assertRaises(ProxyError, parse, v2(0x21, 0x11, block + tail))

    def test_PP10_shortAddressBlock(self) -> None:
        """
        PP-10: a length too small for the family's addresses is refused.
        """
        self.assertRaises(ProxyError, parse, v2(0x21, 0x11, b"\x00" * 11))
        self.assertRaises(ProxyError, parse, v2(0x21, 0x21, b"\x00" * 35))

    def test_PP14_restVersionOne(self) -> None:
        """
        PP-14: an SMTP command sent in the same segment as a v1 header is returned
        exactly, for the SMTP layer.
        """
        self.assertEqual(parse(TCP4_LINE + b"EHLO x\r\n"), (TCP4_HEADER, b"EHLO x\r\n"))
        self.assertEqual(parse(TCP4_LINE + b"\r\n"), (TCP4_HEADER, b"\r\n"))

    def test_PP14_restTLS(self) -> None:
        """
        PP-14: a TLS ClientHello that follows a v2 header in the same segment is returned
        byte for byte, for the TLS layer (implicit TLS behind a proxy).
        """
        hello = clientHello()
        self.assertEqual(hello[:1], b"\x16")
        data = v2(0x21, 0x11, addressBlock(IPv4Address, "192.0.2.1", "198.51.100.1", 40000, 465))
        result = parse(data + hello)
        assert result is not None
        self.assertEqual(result[1], hello)
        # And after a v1 header too.
        result = parse(TCP4_LINE + hello)
        assert result is not None
        self.assertEqual(result[1], hello)

    def test_looksLikeProxyHeader(self) -> None:
        """
        Either version's opening bytes look like a header; SMTP and TLS do not.
        """
        self.assertTrue(looksLikeProxyHeader(TCP4_LINE))
        self.assertTrue(looksLikeProxyHeader(V2_SIGNATURE))
        self.assertFalse(looksLikeProxyHeader(b"EHLO x\r\n"))
        self.assertFalse(looksLikeProxyHeader(clientHello()))


# -- properties ----------------------------------------------------------------------------

_PORTS = st.integers(0, 65535)
_IPV4 = st.ip_addresses(v=4).map(str)
_IPV6 = st.ip_addresses(v=6).map(str)
_TLVS = st.dictionaries(st.integers(0, 255), st.binary(max_size=40), max_size=4)


@st.composite
def _relayed(draw: st.DrawFn, family: str) -> ProxyHeader:
    addresses = _IPV4 if family == "TCP4" else _IPV6
    # Drawn in the order of the header's fields.
    source = (draw(addresses), draw(_PORTS))
    destination = (draw(addresses), draw(_PORTS))
    return proxied(2, family, source, destination, draw(_TLVS))


_V2_HEADERS = st.one_of(_relayed("TCP4"), _relayed("TCP6"))


@st.composite
def _validHeaders(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """
    The bytes of a valid header of either version, and the header they say.
    """
    kind = draw(st.sampled_from(["v1", "v1-unknown", "v2", "v2-local"]))
    if kind == "v1":
        family = draw(st.sampled_from(["TCP4", "TCP6"]))
        header = draw(_relayed(family))
        # Python's own spelling of IPv6 addresses is one inet_pton takes in every version.
        header = dataclasses.replace(header, version=1, tlvs={})
        line = (
            f"PROXY {family} {header.sourceAddress} {header.destinationAddress} "
            f"{header.sourcePort} {header.destinationPort}\r\n"
        )
        return line.encode(), header
    if kind == "v1-unknown":
        tail = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60))
        unknown = b"PROXY UNKNOWN" + (b" " + tail.encode() if tail else b"") + b"\r\n"
        return unknown, ProxyHeader(version=1, command="PROXY", family="UNKNOWN")
    if kind == "v2":
        header = draw(_V2_HEADERS)
        return encodeVersion2(header), header
    return (
        v2(0x20, 0x00, draw(st.binary(max_size=40))),
        ProxyHeader(version=2, command="LOCAL", family="UNSPEC"),
    )


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(edges)]


# Arbitrary input, and input that starts like a header so that the parser gets past its
# first byte often.
_NOISE = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"PROXY " + b),
    st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b),
    st.lists(
        st.sampled_from(
            [
                *(b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"192.0.2.1 ", b"::1 ", b"25 "),
                *(
                    b"\r\n",
                    b"\r",
                    b"\n",
                    b" ",
                    V2_SIGNATURE,
                    b"\x21\x11\x00\x0c",
                    b"\x20\x00\x00\x00",
                ),
            ]
        ),
        max_size=12,
    ).map(b"".join),
)


def _plain(header: ProxyHeader) -> ProxyHeader:
    """
    The header as the parser gives it: IPv4-mapped IPv6 addresses named as IPv4.
    """

    def plain(address: str | None) -> str | None:
        if address is None or ":" not in address:
            return address
        mapped = ipaddress.IPv6Address(address).ipv4_mapped
        return str(mapped) if mapped is not None else address

    return dataclasses.replace(
        header,
        sourceAddress=plain(header.sourceAddress),
        destinationAddress=plain(header.destinationAddress),
    )


class PropertyTests(SynchronousTestCase):
    """
    Properties that hold for every input, as hypothesis explores them.
    """

    @_FAST
    @given(_validHeaders(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=8))
    def test_anySplit(
        self, valid: tuple[bytes, ProxyHeader], trailing: bytes, cuts: list[int]
    ) -> None:
        """
        However a valid header and the bytes after it are cut into chunks, the parser
        gives the same header and exactly the bytes that followed it.
        """
        data, header = valid
        chunks = _split(data + trailing, cuts)
        expected = _plain(header)
        self.assertEqual(parseChunks(chunks), (expected, trailing))
        self.assertEqual(parse(data + trailing), (expected, trailing))

    @_FAST
    @given(_NOISE, st.lists(st.integers(0, 400), max_size=6))
    def test_onlyProxyError(self, data: bytes, cuts: list[int]) -> None:
        """
        Arbitrary bytes either need more, give a header whose rest is a suffix of the
        input, or raise L{ProxyError}; nothing else is ever raised.
        """
        for chunks in ([data], _split(data, cuts)):
            try:
                result = parseChunks(chunks)
            except ProxyError:
                continue
            if result is not None:
                header, rest = result
                self.assertIsInstance(header, ProxyHeader)
                self.assertTrue(data.endswith(rest))
                self.assertLess(len(rest), len(data))

    @_FAST
    @given(_V2_HEADERS, st.binary(max_size=32))
    def test_encodeRoundTrip(self, header: ProxyHeader, trailing: bytes) -> None:
        """
        What L{encodeVersion2} writes parses back to the same header, TLVs included.
        """
        self.assertEqual(parse(encodeVersion2(header) + trailing), (_plain(header), trailing))


# -- XCLIENT and XFORWARD attributes -------------------------------------------------------


def xclient(argument: str) -> dict[str, str | None]:
    """
    Parse XCLIENT attributes.
    """
    return parseAttributes(argument, XCLIENT_ATTRIBUTES, _XCLIENT_UNAVAILABLE)


def xforward(argument: str) -> dict[str, str | None]:
    """
    Parse XFORWARD attributes.
    """
    return parseAttributes(argument, XFORWARD_ATTRIBUTES, _XFORWARD_UNAVAILABLE)


class AttributeTests(SynchronousTestCase):
    """
    The attributes of XCLIENT and XFORWARD (standards sections 1.13 and 1.14).
    """

    def test_postfixXClient(self) -> None:
        """
        What Postfix's smtpd_proxy_filter sends is understood, values decoded.
        """
        self.assertEqual(
            xclient(
                "NAME=spike.example.org ADDR=192.0.2.1 PORT=40000 PROTO=ESMTP "
                "HELO=spike.example.org LOGIN=alice DESTADDR=198.51.100.1 DESTPORT=25"
            ),
            {
                "NAME": "spike.example.org",
                "ADDR": "192.0.2.1",
                "PORT": "40000",
                "PROTO": "ESMTP",
                "HELO": "spike.example.org",
                "LOGIN": "alice",
                "DESTADDR": "198.51.100.1",
                "DESTPORT": "25",
            },
        )

    def test_postfixXForward(self) -> None:
        """
        What Postfix's smtp client sends to a content filter is understood.
        """
        self.assertEqual(
            xforward("NAME=spike.example.org ADDR=192.0.2.1 PORT=40000 PROTO=ESMTP")
            | xforward("HELO=spike.example.org IDENT=4Fx1Yk0b2Mz9 SOURCE=REMOTE"),
            {
                "NAME": "spike.example.org",
                "ADDR": "192.0.2.1",
                "PORT": "40000",
                "PROTO": "ESMTP",
                "HELO": "spike.example.org",
                "IDENT": "4Fx1Yk0b2Mz9",
                "SOURCE": "REMOTE",
            },
        )

    def test_XCL05_refused(self) -> None:
        """
        XCL-05: an unknown attribute, one without a value, a bad address or port, bad
        xtext, and a value that decodes to control characters are refused.
        """
        for argument in (
            "",
            "FOO=1",
            "ADDR",
            "ADDR=999.1.1.1",
            "ADDR=[192.0.2.1]",
            "ADDR=IPV6:192.0.2.1",
            "ADDR=2001:db8::1::2",
            "PORT=70000",
            "PORT=-1",
            "PORT=2a",
            "NAME=a+ZZ",
            "NAME=a+4",
            "NAME=a=b",
            "HELO=x+0D+0AX-Injected:+20y",
            "HELO=x+00y",
            "NAME=" + "a" * 256,
            "PROTO=HTTP",
            "IDENT=x",
        ):
            self.assertRaises(BadAttribute, xclient, argument)

    def test_XCL05_addressErrors(self) -> None:
        """
        A bad address is flagged as such (it gets the reference's address wording).
        """
        for argument in ("ADDR=999.1.1.1", "ADDR=IPV6:192.0.2.1", "DESTADDR=x"):
            with self.assertRaises(BadAttribute) as caught:
                xclient(argument)
            self.assertTrue(caught.exception.address, argument)
        with self.assertRaises(BadAttribute) as caught:
            xclient("PORT=70000")
        self.assertFalse(caught.exception.address)

    def test_XCL05_zoneIndex(self) -> None:
        """
        XCL-05: an IPv6 address with a zone index is not an address of the client
        (Postfix sends none); it would end up in the Received header's address literal.
        """
        self.assertRaises(BadAttribute, xclient, "ADDR=IPV6:fe80::1+25eth0")

    def test_XCL09_unavailable(self) -> None:
        """
        XCL-09: C{[UNAVAILABLE]} and C{[TEMPUNAVAIL]}, in any case, mean "not known".
        """
        for value in ("[UNAVAILABLE]", "[unavailable]", "[Unavailable]", "[TEMPUNAVAIL]"):
            self.assertEqual(xclient(f"NAME={value} ADDR={value}"), {"NAME": None, "ADDR": None})
        self.assertEqual(xforward("ADDR=[unavailable]"), {"ADDR": None})

    def test_XCL09_ipv6Prefix(self) -> None:
        """
        XCL-09: IPv6 addresses come with an C{IPV6:} prefix in any case (Postfix's
        form), or bare; the session gets the usual lower-case form.
        """
        for value in ("IPV6:2001:DB8::1", "ipv6:2001:db8::1", "IPv6:2001:db8:0:0:0:0:0:1"):
            self.assertEqual(xclient(f"ADDR={value}"), {"ADDR": "2001:db8::1"})
            self.assertEqual(xforward(f"ADDR={value}"), {"ADDR": "2001:db8::1"})
        self.assertEqual(xclient("ADDR=2001:db8::1"), {"ADDR": "2001:db8::1"})

    def test_namesAnyCase(self) -> None:
        """
        Attribute names are case-insensitive; a repeated one keeps its first value.
        """
        self.assertEqual(
            xclient("addr=192.0.2.1 Name=a.example ADDR=192.0.2.2"),
            {"ADDR": "192.0.2.1", "NAME": "a.example"},
        )

    def test_xtextDecoded(self) -> None:
        """
        Values are xtext: C{+XX} is a byte.
        """
        self.assertEqual(xclient("LOGIN=al+2Bice"), {"LOGIN": "al+ice"})

    def test_xforwardOwnAttributes(self) -> None:
        """
        XFORWARD knows IDENT and SOURCE but not LOGIN; SOURCE is LOCAL or REMOTE.
        """
        self.assertEqual(xforward("SOURCE=local"), {"SOURCE": "LOCAL"})
        self.assertRaises(BadAttribute, xforward, "SOURCE=elsewhere")
        self.assertRaises(BadAttribute, xforward, "LOGIN=alice")


class TrustTests(SynchronousTestCase):
    """
    Who may send PROXY, XCLIENT and XFORWARD: L{isTrusted} over the option values.
    """

    def test_everyoneOrNoOne(self) -> None:
        """
        True trusts every peer, False none.
        """
        self.assertTrue(isTrusted(True, "203.0.113.9"))
        self.assertFalse(isTrusted(False, "127.0.0.1"))

    def test_networks(self) -> None:
        """
        A tuple of networks trusts the addresses inside them, IPv4 and IPv6.
        """
        spec = ServerOptions(useXClient=("10.0.0.0/8", "127.0.0.1", "2001:db8::/32")).useXClient
        assert isinstance(spec, tuple)
        for address in ("10.0.0.1", "10.255.255.255", "127.0.0.1", "2001:db8::25"):
            self.assertTrue(isTrusted(spec, address), address)
        for address in ("11.0.0.1", "127.0.0.2", "2001:db9::1", "::1", "", "not an address"):
            self.assertFalse(isTrusted(spec, address), address)

    def test_ipv4MappedPeer(self) -> None:
        """
        A peer on a dual-stack socket shows as an IPv4-mapped IPv6 address; it is judged
        as the IPv4 address it is.
        """
        spec = ServerOptions(useProxy=("10.0.0.0/8", "127.0.0.1")).useProxy
        assert isinstance(spec, tuple)
        self.assertTrue(isTrusted(spec, "::ffff:10.1.2.3"))
        self.assertTrue(isTrusted(spec, "::ffff:127.0.0.1"))
        self.assertFalse(isTrusted(spec, "::ffff:192.0.2.1"))

    def test_optionForms(self) -> None:
        """
        The options take networks with host bits set (normalised), a comma-separated
        string (as the command line gives it), and C{*} for everyone; anything else is
        refused with the option's name.
        """
        options = ServerOptions.fromMapping(
            {"useProxy": "127.0.0.1, 10.1.2.3/8", "useXClient": ("*",), "useXForward": ("::1",)}
        )
        self.assertEqual(options.useProxy, ("127.0.0.1/32", "10.0.0.0/8"))
        self.assertIs(options.useXClient, True)
        self.assertEqual(options.useXForward, ("::1/128",))
        with self.assertRaises(ValueError) as caught:
            ServerOptions(useXForward=("proxy.example.org",))
        self.assertIn("useXForward", str(caught.exception))
