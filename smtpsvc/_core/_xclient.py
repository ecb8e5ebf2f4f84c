"""
The attributes of Postfix's XCLIENT and XFORWARD commands (XCLIENT_README,
XFORWARD_README): parsing and validation.

C{XCLIENT NAME=spike.example.org ADDR=192.0.2.1} and C{XFORWARD ...} carry
C{attribute=value} pairs whose values are xtext; C{[UNAVAILABLE]} (and for XCLIENT
C{[TEMPUNAVAIL]}) mean "not known".  Values end up in logs and trace headers, so control
characters, spaces and non-ASCII are refused after decoding (XFORWARD_README says so; it
is applied to XCLIENT too).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from ._grammar import GrammarError, decodeXtext, unmapped

XCLIENT_ATTRIBUTES: Final = (
    "NAME",
    "ADDR",
    "PORT",
    "PROTO",
    "HELO",
    "LOGIN",
    "DESTADDR",
    "DESTPORT",
)
XFORWARD_ATTRIBUTES: Final = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")

_PORT: Final = re.compile(r"[0-9]{1,5}\Z")


def isLoopback(address: str) -> bool:
    """
    Whether C{address} is an IP address of this host's loopback (C{127.0.0.0/8},
    C{::1}); L{False} for anything that is not an IP address.
    """
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def isTrusted(spec: bool | tuple[str, ...], address: str) -> bool:
    """
    Whether C{address} is allowed by an option such as C{useXClient}: true for
    everyone, or a tuple of networks.
    """
    if isinstance(spec, bool):
        return spec
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    ip = unmapped(ip)
    return any(ip in ipaddress.ip_network(network) for network in spec)


_SAFE: Final = re.compile(r"[\x21-\x7e]*\Z")


class BadAttribute(ValueError):
    """
    An attribute or value is not acceptable.  C{address} is set when the problem is
    the address (the reference words that reply differently).
    """

    def __init__(self, message: str, address: bool = False) -> None:
        super().__init__(message)
        self.address = address


def parseAttributes(
    argument: str, known: tuple[str, ...], unavailable: tuple[str, ...]
) -> dict[str, str | None]:
    """
    Parse C{NAME=value ADDR=value ...}: names upper-cased, values xtext-decoded and
    checked; L{None} for the "unavailable" values.  A repeated attribute keeps its first
    value (as the reference does).

    @raise BadAttribute: for anything malformed.
    """
    items = argument.split()
    if not items:
        raise BadAttribute("no attributes")
    values: dict[str, str | None] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        name = name.upper()
        if not eq or "=" in raw or name not in known:
            raise BadAttribute(f"bad attribute {item!r}")
        if name in values:
            continue
        try:
            value = decodeXtext(raw) if raw else ""
        except GrammarError as e:
            raise BadAttribute(f"bad xtext in {name}") from e
        if not _SAFE.match(value):
            raise BadAttribute(f"bad characters in {name}")
        if value.upper() in unavailable:
            values[name] = None
            continue
        values[name] = _check(name, value)
    return values


def _check(name: str, value: str) -> str:
    if name in ("ADDR", "DESTADDR"):
        # Postfix sends IPv6 addresses with an "IPV6:" prefix (any case); the reference
        # also takes them bare.  An IPv4 address with the prefix is a mistake.
        prefixed = value[:5].upper() == "IPV6:"
        if "%" in value:
            # Zone indices mean nothing to a remote server and do not belong in headers.
            raise BadAttribute(f"bad address {value!r}", address=True)
        try:
            address = ipaddress.ip_address(value[5:] if prefixed else value)
        except ValueError as e:
            raise BadAttribute(f"bad address {value!r}", address=True) from e
        if prefixed and address.version != 6:
            raise BadAttribute(f"bad address {value!r}", address=True)
        # As a PROXY header's or a dual-stack socket's: one client, one name.
        return str(unmapped(address))
    if name in ("PORT", "DESTPORT"):
        if not _PORT.match(value) or int(value) > 65535:
            raise BadAttribute(f"bad port {value!r}")
        return str(int(value))
    if name == "PROTO":
        if value.upper() not in ("SMTP", "ESMTP"):
            raise BadAttribute(f"bad PROTO {value!r}")
        return value.upper()
    if name == "SOURCE":
        if value.upper() not in ("LOCAL", "REMOTE"):
            raise BadAttribute(f"bad SOURCE {value!r}")
        return value.upper()
    # Every other attribute (NAME, HELO, LOGIN, IDENT) is at most 255 characters: a
    # domain name's limit, applied to the rest, which end up in the same logs.
    if len(value) > 255:
        raise BadAttribute(f"{name} too long")
    return value
