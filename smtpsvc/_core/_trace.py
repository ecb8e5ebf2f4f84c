"""
Trace headers for final delivery: ``Return-Path`` and ``Received`` (RFC 5321 section 4.4).

Everything that goes into them comes from validated tokens (the HELO name passed
L{isValidHeloName}, addresses passed the path grammar), and anything else is neutralised
here, so that no client input can start a new header line (standards section 2.8).
"""

from __future__ import annotations

import re
from typing import Final

from ._session import Session

_UNSAFE: Final = re.compile(r'[^\x21-\x7e]|[()<>\\";@]')


def _token(text: str) -> str:
    # Postfix's printable() and neuter(): anything that is not a harmless printable
    # character becomes "?".
    return _UNSAFE.sub("?", text) or "unknown"


def _heloToken(name: str) -> str:
    # A hello name as the Received field's "from" clause has it: a domain, or one address
    # literal.  Brackets anywhere else (EHLO "[IPv6:2001:db8::1", "a]b[c") would open a
    # domain literal that swallows the TCP-info comment after it (RFC 5321 section 4.4,
    # RFC 5322 section 3.4.1), and are neutralised.
    token = _token(name)
    if "[" in token or "]" in token:
        inner = token[1:-1]
        literal = token[0] == "[" and token[-1] == "]" and "[" not in inner and "]" not in inner
        if not literal:
            token = token.replace("[", "?").replace("]", "?")
    return token


def returnPath(session: Session) -> bytes:
    """
    C{Return-Path: <sender>} for the current transaction.
    """
    sender = session.envelope.mailFrom
    address = sender.address if sender is not None else ""
    return f"Return-Path: <{_address(address)}>\r\n".encode()


def _address(address: str) -> str:
    # Addresses passed the grammar; only CR, LF and NUL could hurt a header, and the
    # grammar already refused them, so this is belt and braces.
    return re.sub(r"[\x00-\x1f\x7f]", "?", address)


def receivedHeader(
    session: Session,
    *,
    serverName: str,
    date: str,
    recipient: str | None = None,
) -> bytes:
    """
    The C{Received:} header for a message of C{session}, folded over several lines.

    @param serverName: the name of this server (the C{by} clause).
    @param date: the RFC 5322 date-time to stamp.
    @param recipient: the C{for} clause, given when the message has one recipient.
    """
    helo = _heloToken(session.hostNameAppearsAs or "unknown")
    host = session.clientHostname
    address = session.remoteAddress
    literal = f"[IPv6:{address}]" if ":" in address else f"[{address}]"
    # (A host name from reverse DNS or XCLIENT's NAME: brackets have no place in it.)
    hostPart = _token(host).replace("[", "?").replace("]", "?") if host and host[0] != "[" else ""
    tcpInfo = f"{hostPart} {literal}" if hostPart else literal
    lines = [f"Received: from {helo} ({tcpInfo})"]
    tls = session.tlsOptions
    if tls is not None:
        # RFC 8314 section 4.3 wants the suite's registered (IANA) name, which OpenSSL's
        # differs from before TLS 1.3; where it is unknown the OpenSSL name stands in.
        cipher = _token(tls.standardName)
        lines.append(f"\t(using {_token(tls.version)} with cipher {cipher})")
    lines.append(
        f"\tby {_token(serverName)} (smtpsvc) with {session.transmissionType} id {session.id}"
        f".{session.transaction}"
    )
    if recipient is not None:
        lines.append(f"\tfor <{_address(recipient)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
