"""
What handlers are told: the session, its envelope, and the addresses in it.

Field names are the reference's (behaviour spec section 9) so that code written for
nodemailer's ``smtp-server`` reads the same here; absent values are L{None} where the
reference uses ``false``.  Addresses and envelopes are frozen: the core builds a new
envelope at each step, so a handler can keep one without it changing under it, and
cannot corrupt the transaction by editing it.  The session itself is one object per
connection, reused across transactions; applications keep their own state in
C{session.data}.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

_EMPTY: Final[Mapping[str, str | bool]] = MappingProxyType({})
_BASE32_BY_BYTE: Final = bytes(b"0123456789abcdefghijklmnopqrstuv"[b & 31] for b in range(256))
# RFC 1870 section 6: size-value ::= 1*20DIGIT.
_SIZE_DIGITS: Final = 20


@dataclass(frozen=True, slots=True)
class RecipientDSN:
    """
    The RFC 3461 parameters of one recipient (only when DSN is advertised).

    @ivar notify: the NOTIFY keywords, upper case (C{("SUCCESS", "DELAY")}), or L{None}.
    @ivar orcpt: the original recipient, xtext-decoded (C{"rfc822;a@example.com"}).
    """

    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class EnvelopeDSN:
    """
    The RFC 3461 parameters of the transaction (only when DSN is advertised).

    @ivar ret: C{"FULL"}, C{"HDRS"} or L{None}.
    @ivar envid: the envelope identifier, xtext-decoded, or L{None}.
    """

    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """
    A sender or recipient as given in MAIL FROM or RCPT TO.

    @ivar address: the mailbox, C{""} for the null sender C{<>}.
    @ivar args: the ESMTP parameters, keyword in upper case to the xtext-decoded value,
        or C{True} for a keyword without a value (only those of the extensions offered:
        any other gets 555 before a handler sees it).
    @ivar dsn: for a recipient when DSN is advertised, its NOTIFY and ORCPT.
    """

    address: str
    args: Mapping[str, str | bool] = field(default_factory=lambda: _EMPTY)
    dsn: RecipientDSN | None = None

    @property
    def declaredSize(self) -> int | None:
        """
        The message size in bytes declared with C{SIZE=} (RFC 1870 section 6), or L{None}
        when there is none or it is not a number.  Its C{size-value} is DIGITs, which are
        ASCII (C{str.isdigit} alone would also take other scripts' digits).  A number of
        more than 20 digits, leading zeros aside, is larger than any C{size-value} (RFC
        1870 section 6): it counts as 10**20 (and C{int} never meets the thousands of
        digits a command line may hold).
        """
        size = self.args.get("SIZE")
        if isinstance(size, str) and size.isascii() and size.isdigit():
            digits = size.lstrip("0") or "0"
            return int(digits) if len(digits) <= _SIZE_DIGITS else 10**_SIZE_DIGITS
        return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """
    The current mail transaction.

    @ivar mailFrom: the sender once MAIL FROM is accepted, else L{None}.
    @ivar rcptTo: the accepted recipients, in order.  In SMTP a recipient given twice
        (compared without regard to case) appears once; in LMTP every accepted RCPT
        appears, because each gets its own reply after the message (RFC 2033).
    @ivar bodyType: C{"7bit"} or C{"8bitmime"} from the BODY parameter.
    @ivar smtpUtf8: whether MAIL FROM carried SMTPUTF8.
    @ivar requireTLS: whether MAIL FROM carried REQUIRETLS (RFC 8689).
    @ivar dsn: RET and ENVID when DSN is advertised, else L{None}.
    @ivar tlsRequiredNo: whether the message is tagged C{TLS-Required: No} (RFC 8689
        section 4.1): set while the message is read, once its header turns out to have
        that field, unless MAIL FROM carried REQUIRETLS (the field is then ignored).
    """

    mailFrom: Address | None = None
    rcptTo: tuple[Address, ...] = ()
    bodyType: str = "7bit"
    smtpUtf8: bool = False
    requireTLS: bool = False
    dsn: EnvelopeDSN | None = None
    tlsRequiredNo: bool = False

    # The two changes every transaction makes, spelled out rather than through
    # dataclasses.replace, which costs several times as much.

    def withSender(self, mailFrom: Address) -> Envelope:
        """
        This envelope with C{mailFrom} as its sender.
        """
        return Envelope(
            mailFrom, self.rcptTo, self.bodyType, self.smtpUtf8, self.requireTLS, self.dsn
        )

    def withRecipients(self, rcptTo: tuple[Address, ...]) -> Envelope:
        """
        This envelope with C{rcptTo} as its recipients.
        """
        return Envelope(
            self.mailFrom, rcptTo, self.bodyType, self.smtpUtf8, self.requireTLS, self.dsn
        )


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """
    What the TLS handshake settled.

    @ivar name: the cipher suite's OpenSSL name.
    @ivar standardName: the cipher suite's IANA name where known.
    @ivar version: the protocol version, e.g. C{"TLSv1.3"}.
    """

    name: str
    standardName: str
    version: str


def newSessionID() -> str:
    """
    A fresh session identifier: 80 random bits as 16 characters of C{[0-9a-v]}, the
    reference's format.
    """
    # Each random byte picks a character by its low five bits (256 is a multiple of 32,
    # so every character is equally likely): 16 x 5 = 80 bits, in one C call.
    return secrets.token_bytes(16).translate(_BASE32_BY_BYTE).decode("ascii")


@dataclass(eq=False, slots=True)
class Session:
    """
    One client connection, as handlers see it.

    @ivar id: a random identifier, also used in logs.
    @ivar localAddress: the server's address the client connected to.
    @ivar localPort: the server's port.
    @ivar remoteAddress: the client's address (after PROXY or XCLIENT, the real client).
    @ivar remotePort: the client's port.
    @ivar clientHostname: the client's host name from reverse DNS, or C{[address]}.
    @ivar secure: whether the connection is encrypted.
    @ivar servername: the SNI name the client asked for, if any.
    @ivar tlsOptions: the negotiated cipher and version once encrypted.
    @ivar peerCertificate: the client's certificate (a
        L{cryptography.x509.Certificate}) when C{requestCert} is set and it sent one.
    @ivar peerCertificateVerified: whether that certificate chains to the server's C{ca}.
    @ivar openingCommand: C{"HELO"}, C{"EHLO"} or C{"LHLO"} once the client said hello.
    @ivar hostNameAppearsAs: the HELO/EHLO/LHLO argument in lower case.
    @ivar envelope: the current transaction; a new one after RSET, HELO and each message.
    @ivar transaction: the number of the current transaction, from 1.
    @ivar user: what the authentication handler returned for the client, or L{None}.
    @ivar error: the last reply with a code of 400 or more sent on this connection.
    @ivar isWizard: whether the client proved itself a wizard (C{WIZ}).
    @ivar proxy: the PROXY protocol header the connection started with, if any (with
        its v2 TLVs).
    @ivar xClient: XCLIENT attributes received, by name.
    @ivar xForward: XFORWARD attributes received, by name.
    @ivar data: free for applications: keep per-connection state here.
    """

    localAddress: str
    localPort: int
    remoteAddress: str
    remotePort: int
    clientHostname: str = ""
    id: str = field(default_factory=newSessionID)
    lmtp: bool = False
    secure: bool = False
    servername: str | None = None
    tlsOptions: TLSInfo | None = None
    peerCertificate: Any = None
    peerCertificateVerified: bool = False
    openingCommand: str | None = None
    hostNameAppearsAs: str | None = None
    envelope: Envelope = field(default_factory=Envelope)
    transaction: int = 1
    user: Any = None
    error: str | None = None
    isWizard: bool = False
    proxy: Any = None
    xClient: dict[str, str | None] = field(default_factory=dict)
    xForward: dict[str, str | None] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.clientHostname:
            self.clientHostname = f"[{self.remoteAddress}]"

    @property
    def transmissionType(self) -> str:
        """
        The RFC 3848 protocol name for trace headers: C{SMTP} or C{LMTP}, prefixed with
        C{E} after EHLO (LMTP is always extended) and followed by C{S} when encrypted and
        C{A} when authenticated, e.g. C{ESMTPSA}.  With SMTPUTF8 in the transaction the
        RFC 6531 names are used (C{UTF8SMTPS}).
        """
        if self.lmtp:
            base = "LMTP"
        elif self.openingCommand == "EHLO":
            base = "ESMTP"
        else:
            base = "SMTP"
        if self.envelope.smtpUtf8:
            base = "UTF8" + base.removeprefix("E")
        return base + ("S" if self.secure else "") + ("A" if self.user is not None else "")
