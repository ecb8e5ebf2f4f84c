"""
The PROXY protocol header (HAProxy's doc/proxy-protocol.txt), versions 1 and 2.

A load balancer puts the header before everything else on the connection to say who the
client really is.  L{ProxyHeaderParser} is fed the first bytes of a connection in chunks
of any size; it answers "need more", a L{ProxyHeader} and the bytes that followed it
(which belong to SMTP, or to a TLS ClientHello: nothing is over-read), or raises
L{ProxyError}.  It is strict, as the spec asks: a header that is not exactly right closes
the connection, never falls back to "no header".
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass, field
from typing import Final

from ._grammar import unmapped


class ProxyError(ValueError):
    """
    The bytes are not a valid PROXY header; the message says why, for logs.
    """


#: The twelve bytes that start a version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
# Version 1 lines are at most 107 bytes with the CRLF.
_V1_MAX: Final = 107
# Larger v2 headers (many TLVs) are refused rather than buffered.
V2_MAX_LENGTH: Final = 4096
_PORT: Final = re.compile(r"(0|[1-9][0-9]{0,4})\Z")
_V2_FAMILIES: Final = {
    0x00: ("UNSPEC", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX", 216),
}


@dataclass(frozen=True)
class ProxyHeader:
    """
    What the proxy said about the connection.

    @ivar version: 1 or 2.
    @ivar command: C{"PROXY"} for a relayed connection, C{"LOCAL"} for one the proxy
        made itself (health checks; v2 only).
    @ivar family: C{"TCP4"}, C{"TCP6"}, C{"UNKNOWN"} (v1), or the v2 family.
    @ivar sourceAddress: the client's address, or L{None} when not given.
    @ivar sourcePort: the client's port.
    @ivar destinationAddress: the address the client connected to.
    @ivar destinationPort: the port the client connected to.
    @ivar tlvs: the v2 type-length-value fields, by type (e.g. 0x02 authority: the SNI
        name the proxy saw).
    """

    version: int
    command: str
    family: str
    sourceAddress: str | None = None
    sourcePort: int | None = None
    destinationAddress: str | None = None
    destinationPort: int | None = None
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def relayed(self) -> bool:
        """
        Whether the header names a client (otherwise the real peer is used).
        """
        return self.command == "PROXY" and self.sourceAddress is not None


class ProxyHeaderParser:
    """
    Reads one PROXY header from the start of a connection.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """
        Add the next bytes.

        @return: L{None} while more bytes are needed; then the header and whatever
            bytes followed it.
        @raise ProxyError: when the bytes cannot be a valid header.
        """
        buffer = self._buffer + data
        self._buffer = buffer
        if not buffer:
            return None
        if buffer[:1] == b"P":
            return self._version1(buffer)
        if buffer[:1] == b"\r":
            return self._version2(buffer)
        raise ProxyError("not a PROXY header")

    def _version1(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        if not b"PROXY "[: len(buffer)] == buffer[:6]:
            raise ProxyError("not a PROXY header")
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) >= _V1_MAX or b"\n" in buffer or b"\r" in buffer[:-1]:
                # A lone LF or CR never ends the line; a line this long cannot be one.
                raise ProxyError("PROXY v1 line too long or not ended with CRLF")
            return None
        if end + 2 > _V1_MAX:
            raise ProxyError("PROXY v1 line too long")
        try:
            line = buffer[:end].decode("ascii")
        except UnicodeDecodeError as e:
            raise ProxyError("PROXY v1 line is not ASCII") from e
        if "\r" in line or "\n" in line:
            raise ProxyError("bare CR or LF in the PROXY v1 line")
        return parseVersion1(line), buffer[end + 2 :]

    def _version2(self, buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
        signature = V2_SIGNATURE[: len(buffer)]
        if buffer[: len(V2_SIGNATURE)] != signature:
            raise ProxyError("not a PROXY v2 signature")
        if len(buffer) < 16:
            return None
        versionCommand, familyByte, length = struct.unpack("!BBH", buffer[12:16])
        if versionCommand >> 4 != 2:
            raise ProxyError(f"PROXY v2 version {versionCommand >> 4}")
        command = versionCommand & 0x0F
        if command > 1:
            raise ProxyError(f"PROXY v2 command {command}")
        if familyByte not in _V2_FAMILIES:
            raise ProxyError(f"PROXY v2 family 0x{familyByte:02x}")
        if length > V2_MAX_LENGTH:
            raise ProxyError(f"PROXY v2 header of {length} bytes is too long")
        if len(buffer) < 16 + length:
            return None
        body = buffer[16 : 16 + length]
        return parseVersion2(command, familyByte, body), buffer[16 + length :]


def _address(text: str, version: int) -> str:
    # inet_pton's forms only: IPv4 without leading zeros ("01.2.3.4"), IPv6 in any of
    # its textual forms but without a zone index ("fe80::1%eth0").
    if "%" in text:
        raise ProxyError(f"bad IPv{version} address {text!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError as e:
        raise ProxyError(f"bad address {text!r}") from e
    if address.version != version or (version == 4 and str(address) != text):
        raise ProxyError(f"bad IPv{version} address {text!r}")
    return str(unmapped(address))


def _port(text: str) -> int:
    if not _PORT.match(text) or int(text) > 65535:
        raise ProxyError(f"bad port {text!r}")
    return int(text)


def parseVersion1(line: str) -> ProxyHeader:
    """
    Parse a v1 line without its CRLF: C{PROXY TCP4 192.0.2.1 198.51.100.1 40000 25}.
    """
    parts = line.split(" ")
    if parts[0] != "PROXY" or len(parts) < 2:
        raise ProxyError("not a PROXY v1 line")
    family = parts[1]
    if family == "UNKNOWN":
        # "PROXY UNKNOWN" and anything after it: use the real peer.
        return ProxyHeader(version=1, command="PROXY", family="UNKNOWN")
    if family not in ("TCP4", "TCP6") or len(parts) != 6:
        raise ProxyError(f"bad PROXY v1 line {line!r}")
    version = 4 if family == "TCP4" else 6
    return ProxyHeader(
        version=1,
        command="PROXY",
        family=family,
        sourceAddress=_address(parts[2], version),
        destinationAddress=_address(parts[3], version),
        sourcePort=_port(parts[4]),
        destinationPort=_port(parts[5]),
    )


def parseVersion2(command: int, familyByte: int, body: bytes) -> ProxyHeader:
    """
    Parse a v2 header's address block and TLVs (after the 16 fixed bytes).
    """
    family, size = _V2_FAMILIES[familyByte]
    commandName = "PROXY" if command == 1 else "LOCAL"
    if command == 0 or familyByte == 0x00:
        # LOCAL (health checks) or UNSPEC: the address block, if any, is ignored.
        return ProxyHeader(version=2, command=commandName, family=family)
    if len(body) < size:
        raise ProxyError("PROXY v2 address block too short")
    source = destination = None
    sourcePort = destinationPort = None
    if size == 12:
        source = str(ipaddress.IPv4Address(body[0:4]))
        destination = str(ipaddress.IPv4Address(body[4:8]))
        sourcePort, destinationPort = struct.unpack("!HH", body[8:12])
    elif size == 36:
        source = str(unmapped(ipaddress.IPv6Address(body[0:16])))
        destination = str(unmapped(ipaddress.IPv6Address(body[16:32])))
        sourcePort, destinationPort = struct.unpack("!HH", body[32:36])
    return ProxyHeader(
        version=2,
        command=commandName,
        family=family,
        sourceAddress=source,
        sourcePort=sourcePort,
        destinationAddress=destination,
        destinationPort=destinationPort,
        tlvs=_tlvs(body[size:]),
    )


def _tlvs(data: bytes) -> dict[int, bytes]:
    tlvs: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyError("truncated PROXY v2 TLV")
        kind, length = struct.unpack("!BH", data[offset : offset + 3])
        value = data[offset + 3 : offset + 3 + length]
        if len(value) != length:
            raise ProxyError("truncated PROXY v2 TLV")
        tlvs.setdefault(kind, value)
        offset += 3 + length
    return tlvs


def looksLikeProxyHeader(data: bytes) -> bool:
    """
    Whether the first bytes of a connection look like a PROXY header (to refuse one
    from a client that is not trusted to send it).
    """
    return data.startswith(b"PROXY ") or data.startswith(V2_SIGNATURE[:8])


def encodeVersion2(header: ProxyHeader) -> bytes:
    """
    The v2 bytes of a header (for tests and clients).
    """
    command = 0x21 if header.command == "PROXY" else 0x20
    if header.family == "TCP4" and header.sourceAddress and header.destinationAddress:
        family = 0x11
        body = (
            ipaddress.IPv4Address(header.sourceAddress).packed
            + ipaddress.IPv4Address(header.destinationAddress).packed
            + struct.pack("!HH", header.sourcePort or 0, header.destinationPort or 0)
        )
    elif header.family == "TCP6" and header.sourceAddress and header.destinationAddress:
        family = 0x21
        body = (
            ipaddress.IPv6Address(header.sourceAddress).packed
            + ipaddress.IPv6Address(header.destinationAddress).packed
            + struct.pack("!HH", header.sourcePort or 0, header.destinationPort or 0)
        )
    else:
        family, body = 0x00, b""
    for kind, value in header.tlvs.items():
        body += struct.pack("!BH", kind, len(value)) + value
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body
