"""
The rules of talking to a downstream server when relaying: reading its replies, what its
EHLO says it supports, and the MAIL and RCPT commands to send it.

The forwarding delivery (L{smtpsvc.handlers.forward}) does the I/O; everything here is pure.
A downstream's reply text comes from another program and ends up in our own replies, so it
is sanitised where it is read: only printable ASCII survives (RFC 5321 section 4.2's
textstring, and RFC 6531 section 3.7.4: no UTF-8 in reply text), and nothing it contains can
start a reply line of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .._errors import SMTPError, fresh
from ._grammar import ENHANCED_STATUS, KEYWORD
from ._session import Address, Envelope

# Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
# (RFC 5321 section 4.2); the code's first digit is 2 to 5 (section 4.2.1).
_REPLY_LINE: Final = re.compile(rb"([2-5][0-9][0-9])([ -]?)(.*)\Z", re.DOTALL)
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")
# xchar = %x21-2A / %x2C-3C / %x3E-7E (RFC 3461 section 4).
_XCHARS: Final = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"+", "="}

#: Lines one reply may have; a downstream that sends more is broken (or hostile).
MAX_REPLY_LINES: Final = 100


class ReplySyntaxError(ValueError):
    """
    The downstream sent something that is not an SMTP reply.
    """


@dataclass(frozen=True, slots=True)
class DownstreamReply:
    """
    One reply from the downstream server, sanitised.

    @ivar code: the reply code.
    @ivar lines: the text of each line, printable ASCII only, without the code and without
        the enhanced status code.
    @ivar enhanced: the RFC 3463 status code the reply started with (C{"5.1.1"}), if any.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None

    @property
    def text(self) -> str:
        """
        The text of every line, joined with spaces.
        """
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        """
        Whether the reply is a success (2xx).
        """
        return 200 <= self.code < 300

    @property
    def refusal(self) -> bool:
        """
        Whether the reply refuses: 4xx temporarily, 5xx permanently (RFC 5321 section
        4.2.1).  These are the replies L{error} can pass on as our own.
        """
        return 400 <= self.code < 600

    @property
    def demandsTLSOrAuth(self) -> bool:
        """
        Whether the reply refuses because its client (the relaying server) did not secure
        or authenticate its session: C{530} (RFC 3207 section 4, "Must issue a STARTTLS
        command first"; RFC 4954 section 6, "Authentication required"), C{538} or the
        enhanced code C{5.7.11} (RFC 4954: encryption required for the authentication
        mechanism).  That is a matter between the two servers, not a verdict on the mail.
        """
        return self.code in (530, 538) or self.enhanced == "5.7.11"

    def error(self) -> SMTPError:
        """
        The same refusal as our own reply: code, enhanced code and text.

        @raise ValueError: when the reply is not a refusal (4xx or 5xx).
        """
        return SMTPError(self.code, list(self.lines), self.enhanced)

    def __str__(self) -> str:
        enhanced = f"{self.enhanced} " if self.enhanced else ""
        return f"{self.code} {enhanced}{self.text}"


def sanitise(text: str) -> str:
    """
    C{text} with every character outside printable ASCII replaced by C{?} (a tab becomes a
    space), so that it is safe in a reply line of ours.
    """
    return _UNPRINTABLE.sub("?", text.replace("\t", " "))


class ReplyParser:
    """
    Collects the lines a downstream server sends into replies.

    Feed it each line without its CRLF; it returns a L{DownstreamReply} when a line ends
    one.  A multi-line reply (C{250-...}, ..., C{250 ...}) is one reply; every line must
    carry the same code.
    """

    def __init__(self, maxLines: int = MAX_REPLY_LINES) -> None:
        self._maxLines = maxLines
        self._code: bytes | None = None
        self._lines: list[bytes] = []

    @property
    def pending(self) -> bool:
        """
        Whether part of a multi-line reply has been read.
        """
        return bool(self._lines)

    def feed(self, line: bytes) -> DownstreamReply | None:
        """
        Read one line.

        @return: the reply this line completes, or L{None} while a multi-line reply goes on.
        @raise ReplySyntaxError: when the line is not part of a reply.
        """
        match = _REPLY_LINE.match(line)
        if match is None:
            raise ReplySyntaxError(f"not a reply line: {line[:40]!r}")
        code, separator, text = match.groups()
        if separator == b"" and text:
            raise ReplySyntaxError(f"no space after the reply code: {line[:40]!r}")
        if self._code is not None and code != self._code:
            raise ReplySyntaxError(f"reply code changed within a reply: {line[:40]!r}")
        if len(self._lines) >= self._maxLines:
            raise ReplySyntaxError(f"reply longer than {self._maxLines} lines")
        self._lines.append(text)
        if separator == b"-":
            self._code = code
            return None
        lines, self._lines, self._code = self._lines, [], None
        return makeReply(int(code), [raw.decode("utf-8", "replace") for raw in lines])


def makeReply(code: int, lines: Sequence[str]) -> DownstreamReply:
    """
    A L{DownstreamReply} from a code and the raw text of its lines: the text is sanitised
    and an enhanced status code at its start is taken out of every line (RFC 2034 section
    4 repeats it on each).
    """
    clean = [sanitise(line) for line in lines] or [""]
    enhanced = None
    # The status code's class must be the reply's (RFC 2034 section 4).
    match = ENHANCED_STATUS.match(clean[0])
    if code >= 200 and match is not None and match.group(1) == str(code)[0]:
        enhanced = match.group(0).strip()
        prefix = enhanced + " "
        clean = [
            line[len(prefix) :] if line.startswith(prefix) else ("" if line == enhanced else line)
            for line in clean
        ]
    return DownstreamReply(code, tuple(clean), enhanced)


def parseExtensions(reply: DownstreamReply) -> dict[str, str]:
    """
    The extensions an EHLO or LHLO reply advertises: keyword in upper case to its
    parameters (C{""} when it has none).  The first line is the server's name, not an
    extension; lines that are not C{ehlo-line}s are ignored.
    """
    extensions: dict[str, str] = {}
    # The enhanced-code stripping of makeReply never applies here: RFC 2034 puts no
    # enhanced code on EHLO replies, and a keyword cannot look like one.
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if KEYWORD.match(keyword):
            extensions[keyword.upper()] = params.strip()
    return extensions


def encodeXtext(value: str) -> str:
    """
    Encode C{value} as RFC 3461 xtext.  Characters outside C{xchar} become C{+XX}: the code
    point when it is below 256 (which is how smtpsvc decoded it), else each byte of its UTF-8
    form.
    """
    out = []
    for c in value:
        if c in _XCHARS:
            out.append(c)
        elif ord(c) < 256:
            out.append(f"+{ord(c):02X}")
        else:
            out.extend(f"+{b:02X}" for b in c.encode("utf-8"))
    return "".join(out)


def _path(mailbox: str) -> str:
    # The grammar already refused controls in addresses; a CR or LF here would let an
    # address add a command, so check again where the command is built.
    if re.search(r"[\x00-\x1f\x7f]", mailbox):
        raise ValueError(f"control character in address {mailbox!r}")
    return f"<{mailbox}>"


#: The refusals when an address needs SMTPUTF8 and the downstream lacks it (RFC 6531
#: section 3.5): 550 for the sender, 553 for a recipient, as the server's own for a client
#: that did not say SMTPUTF8.
SENDER_NEEDS_SMTPUTF8: Final = SMTPError(
    550, "Error: the downstream server does not support non-ASCII addresses", "5.6.7"
)
NEEDS_SMTPUTF8: Final = SMTPError(
    553, "Error: the downstream server does not support non-ASCII addresses", "5.6.7"
)
#: The refusal when the client asked for REQUIRETLS and the downstream cannot honour it.
NEEDS_REQUIRETLS: Final = SMTPError(550, "Error: REQUIRETLS support required", "5.7.30")


def mailCommand(
    address: Address,
    envelope: Envelope,
    extensions: Mapping[str, str],
    *,
    verifiedTLS: bool = False,
    finalDelivery: bool = False,
) -> str:
    """
    The MAIL command for C{address}, with the parameters of C{envelope} that the downstream
    advertised support for: BODY (8BITMIME), SMTPUTF8, SIZE, REQUIRETLS and RET/ENVID (DSN).

    @param verifiedTLS: whether the connection to the downstream is encrypted with TLS
        and its certificate was validated for the downstream's host name.
    @param finalDelivery: whether the downstream is the message store on this host (an
        LMTP server on a Unix socket or over loopback): handing it the message is final
        delivery, not a relay, so REQUIRETLS asks nothing of it and is not passed on.
    @raise SMTPError: L{SENDER_NEEDS_SMTPUTF8} when the sender is not ASCII and the
        downstream lacks SMTPUTF8; L{NEEDS_REQUIRETLS} when the client asked for REQUIRETLS and the
        downstream, a relay, cannot honour it (RFC 8689 section 4.2.1: relay only over TLS
        with a certificate validated for the next hop, to a server that offers REQUIRETLS
        there).
    """
    params: list[str] = []
    args = address.args
    if "BODY" in args and "8BITMIME" in extensions:
        params.append(f"BODY={envelope.bodyType.upper()}")
    if envelope.smtpUtf8:
        if "SMTPUTF8" in extensions:
            params.append("SMTPUTF8")
        elif not address.address.isascii():
            raise fresh(SENDER_NEEDS_SMTPUTF8)
    size = address.declaredSize
    if "SIZE" in extensions and size is not None:
        params.append(f"SIZE={size}")
    if envelope.requireTLS and not finalDelivery:
        # A REQUIRETLS keyword heard in clear proves nothing: anyone on the path could
        # have added it.
        if "REQUIRETLS" not in extensions or not verifiedTLS:
            raise fresh(NEEDS_REQUIRETLS)
        params.append("REQUIRETLS")
    dsn = envelope.dsn
    if dsn is not None and "DSN" in extensions:
        if dsn.ret is not None:
            params.append(f"RET={dsn.ret}")
        if dsn.envid is not None:
            params.append(f"ENVID={encodeXtext(dsn.envid)}")
    return " ".join([f"MAIL FROM:{_path(address.address)}", *params])


def rcptCommand(address: Address, envelope: Envelope, extensions: Mapping[str, str]) -> str:
    """
    The RCPT command for C{address}, with its NOTIFY and ORCPT when the downstream
    advertised DSN.

    @raise SMTPError: L{NEEDS_SMTPUTF8} when the recipient is not ASCII and the downstream
        lacks SMTPUTF8.
    """
    if not address.address.isascii() and "SMTPUTF8" not in extensions:
        raise fresh(NEEDS_SMTPUTF8)
    params: list[str] = []
    dsn = address.dsn
    if dsn is not None and "DSN" in extensions:
        if dsn.notify:
            params.append(f"NOTIFY={','.join(dsn.notify)}")
        if dsn.orcpt is not None:
            # ORCPT = addr-type ";" xtext; addr-type is an atom and stays as it is.
            addrType, _, original = dsn.orcpt.partition(";")
            if addrType.lower() == "utf-8":
                # RFC 6533 section 3: its non-ASCII characters as \x{HEX}, which any
                # downstream takes (utf-8-addr-xtext), SMTPUTF8 or not; it has no "+".
                original = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in original)
                params.append(f"ORCPT={addrType};{original}")
            else:
                params.append(f"ORCPT={addrType};{encodeXtext(original)}")
    return " ".join([f"RCPT TO:{_path(address.address)}", *params])


#: What an SMTP client hears when an LMTP downstream accepted the message for some
#: recipients and not for others: a retry may duplicate, but nothing is lost.
MIXED_RESULTS: Final = SMTPError(
    451, "Error: the downstream accepted the message for some recipients only", "4.3.0"
)


def combineReplies(replies: Sequence[DownstreamReply]) -> DownstreamReply | SMTPError:
    """
    One SMTP answer for the per-recipient replies of an LMTP downstream: the first reply
    when all are of one class (all successes, all temporary or all permanent refusals);
    the first temporary refusal when all are refusals of both kinds; L{MIXED_RESULTS} when
    some recipients got the message and some did not.
    """
    if not replies:
        raise ValueError("no replies to combine")
    classes = {reply.code // 100 for reply in replies}
    if len(classes) == 1:
        return replies[0]
    if 2 in classes:
        return MIXED_RESULTS
    return next((reply for reply in replies if reply.code // 100 == 4), MIXED_RESULTS)
