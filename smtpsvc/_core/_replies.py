"""
Replies: the value type, its wire encoding, and the catalogue of every fixed reply.

The texts are the reference's (nodemailer ``smtp-server``) so that clients and operators
see what they know.  Each reply carries its RFC 3463 enhanced status code, written only
when the server advertises ENHANCEDSTATUSCODES; greetings, HELO/EHLO replies and 3xx
replies carry none (RFC 2034 section 4).  Where the reference picks a wrong code the
catalogue uses the RFC's and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .._errors import SMTPError

# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets including the CRLF.
_MAX_LINE: Final = 512


@dataclass(frozen=True, slots=True)
class Reply:
    """
    One reply: a code, one or more lines of text, and an optional enhanced code.  The
    text goes out in ASCII, each other character as C{?}, unless C{utf8} is set (RFC 6531
    section 3.7.4: a 551 naming a forward-path in UTF-8, to a client that asked for
    SMTPUTF8).

    Each wire form (with and without the enhanced code) is encoded the first time it is
    sent and kept, so that sending a catalogue reply again costs no formatting.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    utf8: bool = False
    _plain: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _withEnhanced: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")

    @property
    def text(self) -> str:
        """
        The reply text, lines joined with spaces (for logs and tests).
        """
        return " ".join(self.lines)

    @property
    def closes(self) -> bool:
        """
        Whether the connection closes after this reply: RFC 5321 section 3.8 lets a
        server close only after a 421 (or after QUIT's 221, which the core handles).
        """
        return self.code == 421

    def encode(self, enhanced: bool) -> bytes:
        """
        The reply as bytes on the wire, with or without the enhanced status code.
        """
        if enhanced and self.enhanced:
            wire = self._withEnhanced
            if wire is None:
                wire = _encode(self.code, self.lines, self.enhanced, self.utf8)
                object.__setattr__(self, "_withEnhanced", wire)
            return wire
        wire = self._plain
        if wire is None:
            wire = _encode(self.code, self.lines, None, self.utf8)
            object.__setattr__(self, "_plain", wire)
        return wire


def _encode(code: int, lines: tuple[str, ...], enhanced: str | None, utf8: bool) -> bytes:
    prefix = f"{code} {enhanced} " if enhanced else f"{code} "
    encoding = "utf-8" if utf8 else "ascii"
    # Long text is cut into several reply lines rather than sent as one over-long line.
    room = _MAX_LINE - len(prefix) - 2
    pieces: list[str] = []
    for line in lines or ("",):
        while len(encoded := line.encode(encoding, "replace")) > room:
            # The most characters whose octets fit (as many as octets, in ASCII).
            fits = len(encoded[:room].decode(encoding, "ignore")) if utf8 else room
            cut = line.rfind(" ", 0, fits)
            if cut <= 0:
                cut = fits
            pieces.append(line[:cut])
            line = line[cut:].lstrip(" ")
        pieces.append(line)
    out = []
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        # "334 " with nothing after the space is what RFC 4954 asks for an empty
        # challenge, so an empty last line keeps its space.
        sep = " " if i == last else "-"
        text = f"{code}{sep}{enhanced} {piece}" if enhanced else f"{code}{sep}{piece}"
        out.append(text.encode(encoding, "replace") + b"\r\n")
    return b"".join(out)


def reply(code: int, text: str | tuple[str, ...], enhanced: str | None = None) -> Reply:
    """
    Make a reply from a code, a line (or lines) of text and an enhanced code.
    """
    return Reply(code, (text,) if isinstance(text, str) else text, enhanced)


# RFC 3463 codes the reference derives from the reply code when nothing more specific
# is known (behaviour spec section 8); handlers' SMTPErrors without an enhanced code get
# theirs from here.
_BY_CODE: Final = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.1.5",
    420: "4.4.2",
    421: "4.4.2",
    # RFC 4954 section 6: a password transition is needed; mechanism too weak.
    432: "4.7.12",
    450: "4.2.1",
    451: "4.3.0",
    452: "4.2.2",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    521: "5.3.2",
    523: "5.3.4",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.0",
    550: "5.1.1",
    551: "5.1.6",
    552: "5.2.2",
    553: "5.1.3",
    554: "5.6.0",
    555: "5.5.4",
    556: "5.1.10",
    557: "5.7.1",
    558: "5.2.3",
}


def enhancedFor(code: int) -> str | None:
    """
    The enhanced status code the reference uses for a bare reply code.
    """
    if code < 200 or 300 <= code < 400:
        return None
    return _BY_CODE.get(code, f"{code // 100}.0.0")


def fromError(error: SMTPError) -> Reply:
    """
    The reply for a handler's L{SMTPError}.
    """
    return Reply(error.code, error.lines, error.enhancedCode or enhancedFor(error.code))


# -- the catalogue ----------------------------------------------------------------------
# Connection-level replies.
TOO_SOON_TEXT: Final = "{name} You talk too soon"
TOO_MANY_CLIENTS_TEXT: Final = "{name} Too many connected clients, try again in a moment"
HTTP_REFUSED: Final = reply(421, "HTTP requests not allowed", "4.4.2")
TOO_MANY_UNRECOGNIZED: Final = reply(421, "Error: too many unrecognized commands", "4.7.0")
TOO_MANY_UNAUTHENTICATED: Final = reply(421, "Error: too many unauthenticated commands", "4.4.2")
TOO_MANY_ERRORS: Final = reply(421, "Error: too many errors", "4.7.0")
TOO_MANY_FROM_ADDRESS_TEXT: Final = "{name} Error: too many connections from {address}"
TIMEOUT: Final = reply(421, "Timeout - closing connection", "4.4.2")
HANDLER_TIMEOUT: Final = reply(421, "Handler timeout - closing connection", "4.3.0")
# RFC 3463 4.3.2 "system not accepting network messages"; the reference says 4.4.2.
SHUTTING_DOWN: Final = reply(421, "Server shutting down", "4.3.2")

# Command-level replies.
UNRECOGNIZED: Final = reply(500, "Error: command not recognized", "5.5.2")
LINE_TOO_LONG: Final = reply(500, "Error: line too long", "5.5.2")
INVALID_CHARACTERS: Final = reply(501, "Error: invalid characters in command", "5.5.2")
HELO_NOT_IN_LMTP: Final = reply(500, "Error: HELO not allowed in LMTP server")
EHLO_NOT_IN_LMTP: Final = reply(500, "Error: EHLO not allowed in LMTP server")
SEND_HELO_FIRST: Final = reply(503, "Error: send HELO/EHLO first", "5.5.1")
SEND_LHLO_FIRST: Final = reply(503, "Error: send LHLO first", "5.5.1")
HELO_SYNTAX: Final = reply(501, "Error: Syntax: HELO hostname")
EHLO_SYNTAX: Final = reply(501, "Error: syntax: EHLO hostname")
LHLO_SYNTAX: Final = reply(501, "Error: syntax: LHLO hostname")
FLUSHED: Final = reply(250, "Flushed", "2.0.0")
OK: Final = reply(250, "OK", "2.0.0")
HELP: Final = reply(214, "See https://tools.ietf.org/html/rfc5321 for details", "2.0.0")
VRFY: Final = reply(252, "Try to send something. No promises though", "2.1.5")
BYE: Final = reply(221, "Bye", "2.0.0")
NO_WIZARD: Final = reply(500, "You are no wizard!", "5.5.2")
WIZARD: Final = reply(200, "Please pass, oh mighty wizard", "2.0.0")
SHELL_MORTAL: Final = reply(500, "Mere mortals must not mutter that mantra", "5.5.2")
SHELL_WIZARD: Final = reply(
    500, "Error: Invoking shell is not allowed. This incident will be reported.", "5.5.2"
)
KILL: Final = reply(500, "Can not kill Mom", "5.5.2")
TRANSACTION_IN_PROGRESS: Final = reply(503, "Error: Mail transaction in progress", "5.5.1")
# RFC 5321 section 4.2.4: 502 for a command known but not implemented (or switched
# off), 500 for one not known at all.
NOT_IMPLEMENTED: Final = reply(502, "Error: command not implemented", "5.5.1")
# RFC 2920 section 3.1, Postfix's wording: input where the client had to wait.
UNSYNCHRONIZED: Final = reply(554, "Error: SMTP protocol synchronization", "5.5.0")
VRFY_SYNTAX: Final = reply(501, "Error: syntax: VRFY address", "5.5.4")
# RFC 5321 section 3.1: after a 554 instead of the greeting, only QUIT is answered.
NO_SERVICE: Final = reply(503, "Error: no SMTP service here", "5.5.1")

# AUTH (RFC 4954); texts are the reference's.
AUTH_OK: Final = reply(235, "Authentication successful", "2.7.0")
AUTH_FAILED: Final = reply(535, "Error: Authentication credentials invalid", "5.7.8")
AUTH_NOT_IMPLEMENTED: Final = reply(535, "Authentication not implemented", "5.7.8")
# RFC 5248 5.7.11 "encryption required for requested authentication mechanism".
AUTH_NEEDS_TLS: Final = reply(538, "Error: Must issue a STARTTLS command first", "5.7.11")
NO_IDENTITY_CHANGES: Final = reply(503, "Error: No identity changes permitted", "5.5.1")
UNRECOGNIZED_AUTH_TYPE: Final = reply(504, "Error: Unrecognized authentication type", "5.5.4")
AUTH_LINE_TOO_LONG: Final = reply(500, "Error: SASL response too long", "5.5.6")
AUTH_THROTTLED: Final = reply(
    454, "Error: too many authentication failures, try again later", "4.7.0"
)
TOO_MANY_AUTH_FAILURES: Final = reply(421, "Error: too many authentication failures", "4.7.0")
AUTH_TEMPORARY_ERROR: Final = SMTPError(454, "Temporary authentication failure", "4.7.0")

# XCLIENT and XFORWARD (Postfix); texts are the reference's.
NOT_ALLOWED: Final = reply(550, "Error: Not allowed", "5.7.0")
BAD_PARAMETER_SYNTAX: Final = reply(501, "Error: Bad command parameter syntax", "5.5.4")
BAD_PARAMETER_ADDRESS: Final = reply(
    501, "Error: Bad command parameter syntax. Invalid address", "5.5.4"
)
XCLIENT_LOGIN_REFUSED: Final = reply(550, "Authentication credentials invalid", "5.7.0")

# STARTTLS (RFC 3207).
READY_FOR_TLS: Final = reply(220, "Ready to start TLS", "2.0.0")
# RFC 3207 section 4's own text, instead of the 220 when the handshake cannot begin.
TLS_UNAVAILABLE: Final = reply(454, "TLS not available due to temporary reason", "4.7.0")
STARTTLS_SYNTAX: Final = reply(501, "Error: syntax: STARTTLS", "5.5.4")
TLS_ALREADY_ACTIVE: Final = reply(503, "Error: TLS already active", "5.5.1")
MUST_STARTTLS: Final = reply(530, "Must issue a STARTTLS command first", "5.7.0")

# MAIL FROM.  RFC 3463 X.1.7 is "bad sender's mailbox address syntax"; the reference
# uses X.1.3, the recipient's code, for both.
MAIL_OK: Final = reply(250, "Accepted", "2.1.0")
BAD_SENDER: Final = reply(501, "Error: Bad sender address syntax", "5.1.7")
NESTED_MAIL: Final = reply(503, "Error: nested MAIL command", "5.5.1")
BAD_SIZE: Final = reply(501, "Invalid SIZE parameter value. Must be a number", "5.5.4")
BAD_BODY: Final = reply(501, "Invalid BODY parameter value. Must be 7BIT or 8BITMIME", "5.5.4")
BAD_SMTPUTF8: Final = reply(
    501, "Invalid SMTPUTF8 parameter. This flag does not accept a value", "5.5.4"
)
REQUIRETLS_PLAINTEXT: Final = reply(
    530, "REQUIRETLS not permitted on non-TLS connections", "5.7.10"
)
BAD_REQUIRETLS: Final = reply(
    501, "Invalid REQUIRETLS parameter. This flag does not accept a value", "5.5.4"
)
BAD_RET: Final = reply(501, "Invalid RET parameter value. Must be FULL or HDRS", "5.5.4")
BAD_ENVID: Final = reply(
    501, "Invalid ENVID parameter value. Must be xtext of at most 100 characters", "5.5.4"
)
# RFC 5321 section 4.1.1.11: a parameter the server does not know, or any parameter
# after HELO (which announces no extensions).
UNKNOWN_PARAMETER: Final = reply(555, "Error: unsupported parameter", "5.5.4")
SENDER_NEEDS_SMTPUTF8: Final = reply(
    550, "Error: non-ASCII sender address requires SMTPUTF8", "5.6.7"
)

# RCPT TO.
RCPT_OK: Final = reply(250, "Accepted", "2.1.5")
BAD_RECIPIENT: Final = reply(501, "Error: Bad recipient address syntax", "5.1.3")
NEED_MAIL: Final = reply(503, "Error: need MAIL command", "5.5.1")
TOO_MANY_RECIPIENTS: Final = reply(452, "Error: too many recipients", "4.5.3")
BAD_NOTIFY: Final = reply(
    501, "Error: NOTIFY parameter must be NEVER, SUCCESS, FAILURE, or DELAY", "5.5.4"
)
NOTIFY_NEVER_COMBINED: Final = reply(
    501, "Error: NOTIFY=NEVER cannot be combined with other values", "5.5.4"
)
BAD_ORCPT: Final = reply(
    501, "Error: ORCPT parameter must be addr-type;xtext of at most 500 characters", "5.5.4"
)
RECIPIENT_NEEDS_SMTPUTF8: Final = reply(
    553, "Error: non-ASCII recipient address requires SMTPUTF8", "5.6.7"
)

# DATA.
NEED_RCPT: Final = reply(503, "Error: need RCPT command", "5.5.1")
DATA_SYNTAX: Final = reply(501, "Error: syntax: DATA", "5.5.4")
START_DATA: Final = reply(354, "End data with <CR><LF>.<CR><LF>")
MESSAGE_QUEUED_TEXT: Final = "OK: message queued"
MESSAGE_ACCEPTED_TEXT: Final = "OK: message accepted"
DATA_ENHANCED: Final = "2.6.0"

# BDAT (RFC 3030).  After a BDAT line that cannot be read there is no telling where its
# chunk ends, so the connection closes after this reply (Postfix's code for it).
BDAT_SYNTAX: Final = reply(521, "Error: syntax: BDAT chunk-size [LAST]", "5.5.4")
NULL_CHUNK: Final = reply(501, "Error: BDAT 0 is only allowed with LAST", "5.5.4")


def chunkReceived(size: int) -> Reply:
    """
    The 250 for a BDAT chunk that is not the last (RFC 3030 section 2).
    """
    return reply(250, f"OK: {size} octets received", "2.0.0")


# RFC 3463 5.3.4 "message too big for system"; the reference sends 4.3.1 on this 552.
TOO_BIG_TEXT: Final = "Error: message exceeds fixed maximum message size {size}"
TOO_BIG_ENHANCED: Final = "5.3.4"


def localPartTooLong(sender: bool, limit: int) -> Reply:
    """
    The 501 for a sender's (or a recipient's) address whose local part is longer than
    C{limit} octets (maxLocalPartLength).
    """
    if sender:
        return reply(501, f"Error: sender address local part longer than {limit} octets", "5.1.7")
    return reply(501, f"Error: recipient address local part longer than {limit} octets", "5.1.3")


def repeatedParameter(keyword: str) -> Reply:
    """
    The 501 for a MAIL or RCPT parameter given twice (C{keyword}, an esmtp-keyword).
    """
    return reply(501, f"Error: duplicate {keyword} parameter", "5.5.4")


def tooBig(size: int) -> Reply:
    """
    The 552 for a message over C{size} octets, whether MAIL FROM declared it or DATA
    found it: both must tell the client the same limit.
    """
    return reply(552, TOO_BIG_TEXT.format(size=size), TOO_BIG_ENHANCED)


BARE_LINE_ENDING: Final = reply(550, "Error: bare <CR> or <LF> received in message data", "5.5.2")
# RFC 5321 section 6.3: a message that has passed this server too often is a loop.
MAIL_LOOP: Final = reply(554, "Error: too many hops, mail loop detected", "5.4.6")

# A handler failed in a way it did not mean to; the traceback goes to the log.
HANDLER_FAILED_ERROR: Final = SMTPError(
    451, "Requested action aborted: local error in processing", "4.3.0"
)
# The same when the client awaits its greeting, which cannot be 451 (RFC 5321 section
# 4.3.2): there is no service to give it.
CONNECT_HANDLER_FAILED: Final = SMTPError(
    421, "Local error in processing - closing connection", "4.3.0"
)
