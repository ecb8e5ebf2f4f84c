"""
The server side of one SMTP or LMTP conversation, without any I/O.

L{ServerConnection} takes complete command lines (bytes, without the CRLF) and returns
what to do next: an action.  An action is either a reply to send (L{Send}) or a question
for the application's handlers (L{CheckMail}, L{CheckRcpt}, L{StartData}); the glue asks
the handlers and gives their answer back (L{ServerConnection.mailChecked} and its kin),
which returns the reply.  The glue never decides what is legal or what a reply says; this
module never touches a socket, a clock or a Deferred.

Every received line goes through the same checks, in the reference's order (behaviour
spec section 4.2) where it has one: shutdown; a SASL exchange in progress takes the line;
characters (UTF-8, no bare CR or LF, no NUL); the HTTP guard; LMTP's HELO/EHLO refusal;
unknown or disabled commands (with the unrecognised-command limit); the
unauthenticated-command limit; "send HELO first"; C{needsUpgrade}; "authentication
required"; and only then the command itself.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final, TypeAlias

from .._errors import SMTPError
from .._options import ServerOptions
from . import _replies as R
from ._grammar import (
    ENHANCED_STATUS,
    GrammarError,
    LocalPartTooLong,
    ParameterError,
    decodeXtext,
    heloName,
    parsePathCommand,
)
from ._replies import Reply
from ._sasl import (
    ABORTED,
    BAD_BASE64,
    AuthRequest,
    Challenge,
    Mechanism,
    MechanismFactory,
    Refusal,
    Step,
    oauthErrorDetail,
)
from ._session import Address, Envelope, EnvelopeDSN, RecipientDSN, Session, TLSInfo
from ._states import COMMANDS, NOT_IMPLEMENTED, State, needsHello, transition
from ._throttle import FailureBudget, clientNetwork
from ._xclient import (
    XCLIENT_ATTRIBUTES,
    XFORWARD_ATTRIBUTES,
    BadAttribute,
    isTrusted,
    parseAttributes,
)

# The actions are made several times per message and live only until the protocol has
# carried them out, so they are plain slotted classes: a frozen dataclass costs three
# times as much to make.


@dataclass(slots=True)
class Send:
    """
    Write C{data}, after C{delay} seconds if it is not 0 (reading nothing meanwhile);
    then close the connection if C{close}.
    """

    data: bytes
    close: bool = False
    delay: float = 0.0


@dataclass(slots=True)
class CheckAuth:
    """
    Ask the L{IAuthHandler}s about C{request}, then call L{ServerConnection.authChecked}.
    """

    request: AuthRequest


@dataclass(slots=True)
class CheckMail:
    """
    Ask the L{IMailFromHandler}s about C{address}, then call
    L{ServerConnection.mailChecked}.  C{session.envelope} already holds the transaction's
    parameters (BODY, SMTPUTF8 ...) while they decide.
    """

    address: Address


@dataclass(slots=True)
class CheckRcpt:
    """
    Ask the L{IRcptToHandler}s about C{address}, then call L{ServerConnection.rcptChecked}.
    """

    address: Address


@dataclass(slots=True)
class StartTLS:
    """
    Write C{data} (the 220), discard every byte the client sent after STARTTLS, start
    the TLS handshake, and call L{ServerConnection.tlsStarted} when it completes.
    """

    data: bytes


@dataclass(slots=True)
class CheckXClient:
    """
    XCLIENT changed who the client is: if C{login} is given ask the L{IAuthHandler}s
    about it and call L{ServerConnection.xclientLogin}; then run the L{IConnectHandler}s
    again for the new client and call L{ServerConnection.xclientDone} for the reply.
    """

    login: AuthRequest | None


@dataclass(slots=True)
class StartData:
    """
    Start the L{IDataHandler}s, then call L{ServerConnection.dataStarted} for the 354 and
    feed the following bytes to a L{DataDecoder} until the final dot.
    """


@dataclass(slots=True)
class ReadChunk:
    """
    Read the next C{size} bytes as a BDAT chunk (RFC 3030), whatever they hold: none of
    them is a command.

    With C{refusal} set, the BDAT was refused: discard the bytes, then carry out
    C{refusal}.  Otherwise they are the message's: if C{first}, start the L{IDataHandler}s
    first (BDAT has no 354); after the chunk, end the message if C{last} (then call
    L{ServerConnection.dataFinished}), else call L{ServerConnection.chunkDone}.
    """

    size: int
    last: bool = False
    first: bool = False
    refusal: Send | None = None


Action: TypeAlias = (
    Send | CheckMail | CheckRcpt | StartData | ReadChunk | StartTLS | CheckAuth | CheckXClient
)

#: What one handler may answer for a message (or for one LMTP recipient): L{None} for
#: the default acceptance, a string for acceptance with that text, or a refusal.
Outcome: TypeAlias = str | SMTPError | None

_HTTP: Final = re.compile(
    r"(OPTIONS|GET|HEAD|POST|PUT|DELETE|TRACE|CONNECT) /.* HTTP/\d\.\d\Z", re.IGNORECASE
)
_HTTP_VERBS: Final = frozenset(
    ("OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT")
)
_START_DATA: Final = StartData()
# What needsUpgrade lets through in clear: RFC 3207 section 4 names NOOP, EHLO, STARTTLS
# and QUIT; HELO, LHLO and RSET reveal nothing and start nothing either.
_BEFORE_TLS: Final = frozenset(("EHLO", "HELO", "LHLO", "STARTTLS", "NOOP", "RSET", "QUIT"))
# Commands refused before AUTH when authentication is required.
_NEED_AUTH: Final = frozenset(("MAIL", "RCPT", "DATA", "BDAT"))
#: RFC 4954 section 4: AUTH lines of at least 12288 octets must be accepted.
SASL_LINE_LIMIT: Final = 12288
_NOTIFY_VALUES: Final = frozenset(("NEVER", "SUCCESS", "FAILURE", "DELAY"))
# Refusals after which the server closes at once: 421 (RFC 5321 section 3.8) and 521
# (RFC 7504: this host does not accept mail).  After any other, it waits for QUIT.
_HANG_UP: Final = frozenset((421, 521))
# The commands that end a pipelined group (RFC 2920 section 3.1, and LMTP's LHLO).
_GROUP_ENDS: Final = frozenset(
    (b"EHLO", b"HELO", b"LHLO", b"DATA", b"NOOP", b"VRFY", b"EXPN", b"TURN", b"QUIT", b"STARTTLS")
)
_ORCPT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;.+\Z", re.DOTALL)
# RFC 6533 section 3: utf-8-addr-xtext is QCHARs (printable ASCII but "+", "=" and "\")
# and EmbeddedUnicodeChars (\x{HEXPOINT}); utf-8-addr-unitext, after SMTPUTF8, adds any
# non-ASCII character (QUCHAR).
_QCHAR: Final = r"[!-*,-<>-\[\]-~]|\\x\{[0-9A-Fa-f]{1,6}\}"
_UTF8_ADDRESS_ASCII: Final = re.compile(f"(?:{_QCHAR})+")
_UTF8_ADDRESS: Final = re.compile(f"(?:{_QCHAR}|[^\x00-\x7f])+")
_EMBEDDED: Final = re.compile(r"\\x\{([0-9A-Fa-f]+)\}")
# The ASCII characters HEXPOINT's two-digit forms may name: 01-09, 11-19, 10, 20, 2B, 3D,
# 5C and 7F.
_HEXPOINT_ASCII: Final = frozenset(
    [*range(0x01, 0x0A), *range(0x11, 0x1A), 0x10, 0x20, 0x2B, 0x3D, 0x5C, 0x7F]
)
# bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ], chunk-size = 1*DIGIT (RFC 3030).
_BDAT: Final = re.compile(r"([0-9]+)(?: (LAST))?\Z", re.IGNORECASE)
#: A refused chunk, or one over the size limit, is read and thrown away (its bytes must
#: not be taken for commands) if it is at most this long, or at most the size limit when
#: that is larger; after a longer one the connection closes instead.
CHUNK_SKIP_LIMIT: Final = 64 * 1024 * 1024
# Chunk sizes of more digits are beyond any limit (and int() of them costs).
_CHUNK_DIGITS: Final = 18


class ServerConnection:
    """
    The protocol state of one connection.

    @ivar session: the L{Session} handlers see; this object keeps it current.
    @ivar state: where the conversation is (see L{smtpsvc._core._states}).
    @ivar closing: set when the server shuts down: every further command outside a mail
        transaction gets 421 (one in a transaction may finish it first).
    @ivar minLineLimit: the least L{lineLimit} there is: no line this long or shorter is
        ever too long.
    """

    __slots__ = (
        "_authDemanded",
        "_authFailures",
        "_authHandlers",
        "_authOn",
        "_enhanced",
        "_errorLimit",
        "_errors",
        "_expected",
        "_finalReplies",
        "_greeted",
        "_junk",
        "_junkLimit",
        "_lineLimits",
        "_mechanisms",
        "_now",
        "_options",
        "_peerAddress",
        "_pendingEnvelope",
        "_refusedWith",
        "_sasl",
        "_saslWaiting",
        "_throttle",
        "_tlsAvailable",
        "_unauthenticated",
        "_unrecognized",
        "_verb",
        "_xclientAddressSet",
        "_xforwardBase",
        "closing",
        "minLineLimit",
        "session",
        "state",
    )

    def __init__(
        self,
        options: ServerOptions,
        session: Session,
        *,
        tlsAvailable: bool = False,
        authHandlers: bool = True,
        throttle: FailureBudget | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """
        @param tlsAvailable: whether STARTTLS can be offered (the server has contexts).
        @param authHandlers: whether any authentication handler is registered; without
            one every AUTH gets C{535 Authentication not implemented}, as in the reference.
        @param throttle: the server-wide budget of AUTH failures per client address.
        @param now: the clock, in seconds (the reactor's, so tests can move it).
        """
        self._options = options
        self._tlsAvailable = tlsAvailable
        self._authHandlers = authHandlers
        self._throttle = throttle
        self._now = now
        # Made at the first AUTH: most connections never authenticate.
        self._mechanisms: MechanismFactory | None = None
        # The SASL exchange in progress (a 334 was sent), and the one whose request the
        # handlers are deciding on.
        self._sasl: Mechanism | None = None
        self._saslWaiting: Mechanism | None = None
        self._authFailures = 0
        # The client's own address before XCLIENT changed it, for trust decisions, and
        # what XFORWARD temporarily replaced.
        self._peerAddress: str | None = None
        self._xclientAddressSet = False
        self._xforwardBase: tuple[str, int, str, str | None] | None = None
        self._enhanced = options.enhancedStatusCodes
        # Whether the greeting has been sent: what is sent instead of it carries no
        # enhanced code (RFC 2034 section 4), as the greeting itself does not.
        self._greeted = False
        self.minLineLimit = options.maxCommandLength
        # Whether AUTH is offered, and whether it must succeed before mail: fixed for the
        # connection, and asked about on every line.
        self._authOn = options.authOffered
        self._authDemanded = options.authRequired
        self.session = session
        session.lmtp = options.lmtp
        session.envelope = self._freshEnvelope()
        self.state = State.GREETED
        self.closing = False
        self._unrecognized = 0
        self._unauthenticated = 0
        # Error replies (maxErrors) and junk commands (maxJunkCommands) since the last
        # message accepted; a message's final replies are not counted one by one (see
        # dataFinished).
        self._errors = 0
        self._junk = 0
        self._finalReplies = False
        # Not in LMTP: its client is the MTA, trusted, whose refused recipients (a
        # message to many, of whom some are unknown) are no attack.
        self._errorLimit = None if options.lmtp else options.maxErrors
        self._junkLimit = None if options.lmtp else options.maxJunkCommands
        # The verb of the command being answered, and whether the client's last MAIL or
        # RCPT was refused: a pipelining client's RCPTs and DATA after a refused MAIL (or
        # DATA after its RCPTs were all refused) get 503s it could not foresee, which
        # are not its errors (standards 2920-08); they count as junk commands instead.
        self._verb = ""
        self._expected = False
        # The reply to every command but QUIT once the client was refused.
        self._refusedWith: Reply | None = None
        # The longest command lines by their first five bytes: the extensions offered
        # raise the limit for MAIL (RFC 1870 SIZE +26, RFC 3461 DSN +100, RFC 6531
        # SMTPUTF8 +10, RFC 4954 AUTH= +500) and for RCPT (DSN +500); AUTH may always be
        # longer (RFC 4954 section 4).
        self._lineLimits = _lineLimits(
            options.maxCommandLength, bool(options.size), not options.hideDSN, self._authOn
        )
        # The envelope to restore if MAIL FROM's handlers refuse the sender.
        self._pendingEnvelope: Envelope | None = None

    # -- replies ---------------------------------------------------------------------------

    def _send(self, reply: Reply, close: bool = False) -> Send:
        if reply.code >= 400:
            if not (close or reply.closes or self._finalReplies) and reply is not (
                R.TOO_MANY_RECIPIENTS
            ):
                # (The recipients over maxRecipients are not the client's error: it
                # sends them in another transaction, RFC 5321 section 4.5.3.1.10.)
                if reply.code == 503 and self._expected:
                    reply = self._countJunk(reply)
                else:
                    reply = self._countError(reply)
                if reply.code != 503 and self._verb in ("MAIL", "RCPT"):
                    # Refused, not out of sequence (a RCPT before any MAIL is the
                    # client's own error, and so are the ones after it).
                    self._expected = True
            if reply.enhanced and self._enhanced:
                self.session.error = f"{reply.code} {reply.enhanced} {reply.text}"
            else:
                self.session.error = f"{reply.code} {reply.text}"
        elif reply is R.MAIL_OK:
            self._expected = False
        return Send(reply.encode(self._enhanced), close or reply.closes)

    def _countError(self, reply: Reply) -> Reply:
        # One more error (an error reply, or a junk command over maxJunkCommands):
        # C{reply}, or the 421 that ends the connection once they reach maxErrors, as
        # Postfix's smtpd_hard_error_limit does.
        self._errors += 1
        limit = self._errorLimit
        if limit is not None and self._errors >= limit:
            return R.TOO_MANY_ERRORS
        return reply

    def _countJunk(self, reply: Reply) -> Reply:
        # One more junk command: NOOP, RSET, VRFY, HELP, or a 503 the client could not
        # foresee.  Harmless alone, but a session of nothing else holds a connection for
        # ever: past maxJunkCommands each counts as an error too, as with Postfix's
        # smtpd_junk_command_limit.
        self._junk += 1
        limit = self._junkLimit
        if limit is not None and self._junk > limit:
            return self._countError(reply)
        return reply

    def _junkCommand(self, reply: Reply) -> Send:
        return self._send(self._countJunk(reply))

    def _sendAll(self, replies: Sequence[Reply]) -> Send:
        # Several replies in one write (LMTP's per-recipient replies after DATA), up to
        # the first that closes the connection (a 421): nothing may follow it.
        sends = []
        for reply in replies:
            sends.append(self._send(reply))
            if sends[-1].close:
                break
        return Send(b"".join(s.data for s in sends), sends[-1].close)

    def greeting(self) -> Send:
        """
        The greeting: C{220 <name> ESMTP[ <banner>]} (C{LMTP} in LMTP mode).  RFC 2034
        section 4 keeps enhanced codes off the greeting.
        """
        text = self._greetingText()
        greeting = _GREETINGS.get(text)
        if greeting is None:
            greeting = Reply(220, (text,))
            if len(_GREETINGS) < 16:
                _GREETINGS[text] = greeting
        self._greeted = True
        return self._send(greeting)

    def _sendInsteadOfGreeting(self, reply: Reply) -> Send:
        # A reply that may come before the greeting: without its enhanced code then.
        return self._send(reply if self._greeted else Reply(reply.code, reply.lines))

    def _greetingText(self) -> str:
        o = self._options
        text = f"{o.name} {'LMTP' if o.lmtp else 'ESMTP'}"
        return f"{text} {o.banner}" if o.banner else text

    def refuseConnection(self, error: SMTPError) -> Send:
        """
        The reply to a connection an L{IConnectHandler} refused, instead of the greeting;
        the connection closes after a C{421} or a C{521}.  After any other code (RFC 5321
        section 3.1 names 554) the client may still say QUIT, and every other command gets
        C{503}.
        """
        if error.code in _HANG_UP:
            return self._send(Reply(error.code, error.lines), close=True)
        self._refusedWith = R.NO_SERVICE
        return self._send(Reply(error.code, error.lines))

    def tooManyClients(self) -> Send:
        """
        The reply to a connection over C{maxClients}.
        """
        text = R.TOO_MANY_CLIENTS_TEXT.format(name=self._options.name)
        return self._send(Reply(421, (text,)))

    def tooManyFromAddress(self, address: str) -> Send:
        """
        The reply to a connection over C{maxClientsPerAddress} from C{address}.
        """
        text = R.TOO_MANY_FROM_ADDRESS_TEXT.format(name=self._options.name, address=address)
        return self._send(Reply(421, (text,)))

    def talkTooSoon(self) -> Send:
        """
        The reply to a client that sent something before the greeting.
        """
        return self._send(Reply(421, (R.TOO_SOON_TEXT.format(name=self._options.name),)))

    def awaitsReply(self, line: bytes) -> bool:
        """
        Whether the client, having sent C{line} (just handled), had to wait for the reply
        before sending more (RFC 2920 section 3.1): after EHLO, HELO, LHLO, DATA, NOOP,
        VRFY, EXPN, TURN, QUIT and STARTTLS, while an AUTH exchange waits for the client's
        next response, and after any command but BDAT while PIPELINING is not offered
        (before EHLO, after HELO, or hidden).  Authenticated clients are trusted to
        pipeline as they like.
        """
        if self.session.user is not None:
            return False
        if self._sasl is not None:
            return True
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"BDAT":
            # Its chunk follows it at once (RFC 3030 section 2).
            return False
        if verb in _GROUP_ENDS:
            return True
        # PIPELINING is offered only in the reply to EHLO (or LHLO), unless hidden.
        hello = self.session.openingCommand
        return self._options.hidePIPELINING or hello not in ("EHLO", "LHLO")

    def unsynchronized(self) -> Send:
        """
        The reply to a client that did not wait for a reply it had to (see L{awaitsReply});
        the connection closes after it.
        """
        return self._send(R.UNSYNCHRONIZED, close=True)

    def timedOut(self) -> Send:
        """
        The reply when nothing moved for C{socketTimeout} seconds.
        """
        return self._sendInsteadOfGreeting(R.TIMEOUT)

    def handlersTimedOut(self) -> Send:
        """
        The reply when the handlers have not answered within C{handlerTimeout} seconds;
        the connection closes after it.
        """
        return self._sendInsteadOfGreeting(R.HANDLER_TIMEOUT)

    def shutDown(self) -> Send:
        """
        The reply sent when the server closes a connection on shutdown.
        """
        return self._sendInsteadOfGreeting(R.SHUTTING_DOWN)

    @property
    def idle(self) -> bool:
        """
        Whether no mail transaction is open, so shutting the connection down loses
        nothing the client has not been told about.
        """
        return self.state in (State.GREETED, State.READY)

    # -- command lines ---------------------------------------------------------------------

    def lineLimit(self, head: bytes = b"") -> int:
        """
        The longest line, in bytes without CRLF, accepted now for a line that starts
        with C{head} (its first bytes): AUTH lines and SASL responses may always be
        12288 bytes long (RFC 4954 section 4).
        """
        if self._sasl is not None:
            return max(self._options.maxCommandLength, SASL_LINE_LIMIT)
        return self._lineLimits.get(head[:5].upper(), self._options.maxCommandLength)

    def lineTooLong(self, head: bytes = b"") -> Send:
        """
        The reply to a line longer than L{lineLimit}, whose bytes were discarded.  It
        counts as an unrecognised command; in an AUTH exchange it ends the exchange.
        """
        if self._isSaslLine(head):
            self._sasl = None
            return self._send(R.AUTH_LINE_TOO_LONG)
        return self._unrecognizedCommand(R.LINE_TOO_LONG)

    def _isSaslLine(self, head: bytes) -> bool:
        # A line starting with head belongs to AUTH: a response in an exchange under
        # way, or the AUTH command itself (which may carry an initial response).
        return self._sasl is not None or head[:5].upper() == b"AUTH "

    def receiveLine(self, raw: bytes) -> Action:
        """
        Handle one command line (without its CRLF) and say what to do.
        """
        if self.closing and self.idle:
            # A client in a transaction may finish it (see SMTPServer.close); the next
            # command after it gets the 421.
            return self._send(R.SHUTTING_DOWN)
        if self._sasl is not None:
            return self._saslContinue(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return self._unrecognizedCommand(R.INVALID_CHARACTERS)
        # CRLF is the only line end (RFC 5321 section 2.3.8): a bare CR or LF inside the
        # line is not a second line, and a NUL has no business in a command.
        if "\r" in line or "\n" in line or "\x00" in line:
            return self._unrecognizedCommand(R.INVALID_CHARACTERS)
        if line[-1:] in (" ", "\t"):
            # Servers SHOULD tolerate trailing white space (RFC 5321 section 4.1.1): SP
            # or HTAB, after any command (Postfix QA: BDAT ... LAST with one got 521).
            line = line.rstrip(" \t")
        verb, _, argument = line.partition(" ")
        self._verb = verb = verb.upper()
        if verb in _HTTP_VERBS and _HTTP.match(line):
            return self._send(R.HTTP_REFUSED)
        options = self._options
        if options.lmtp and verb in ("HELO", "EHLO"):
            return self._unrecognizedCommand(
                R.HELO_NOT_IN_LMTP if verb == "HELO" else R.EHLO_NOT_IN_LMTP
            )
        if self._refusedWith is not None:
            # The client was refused (see refuseConnection and refuseSecure): only QUIT
            # is served; the rest count as unrecognised, so that they end in a 421.
            if verb == "QUIT":
                return self._send(R.BYE, close=True)
            return self._unrecognizedCommand(self._refusedWith)
        unavailable = self._unavailable(verb)
        if unavailable is not None:
            return self._unrecognizedCommand(unavailable)
        if verb != "AUTH" and self._authRequired and self._countUnauthenticated():
            return self._send(R.TOO_MANY_UNAUTHENTICATED)
        if verb == "BDAT":
            # A refused BDAT must still account for its chunk: it makes these checks
            # itself.
            return self._bdat(verb, argument, line)
        refusal = self._refusal(verb)
        if refusal is not None:
            return self._send(refusal)
        return self._COMMANDS[verb](self, verb, argument, line)

    def _refusal(self, verb: str) -> Reply | None:
        # The checks every command meets before its own: a hello first, STARTTLS first
        # (needsUpgrade), authentication first.
        options = self._options
        if self.state is State.GREETED and needsHello(verb):
            return R.SEND_LHLO_FIRST if options.lmtp else R.SEND_HELO_FIRST
        if options.needsUpgrade and not self.session.secure and verb not in _BEFORE_TLS:
            return R.MUST_STARTTLS
        if verb in _NEED_AUTH and self._authRequired:
            return R.reply(530, options.authRequiredMessage, "5.7.0")
        return None

    def _unavailable(self, verb: str) -> Reply | None:
        # The reply to a command that is not carried out here (RFC 5321 section 4.2.4):
        # 502 for one known but not implemented, switched off or impossible on this
        # connection, 500 for one not known at all (LHLO outside LMTP included); None
        # for a command with a method.  COMMANDS is also the set of keys of _COMMANDS (a
        # test holds them equal).
        options = self._options
        if verb not in COMMANDS or (verb == "LHLO" and not options.lmtp):
            return R.NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED else R.UNRECOGNIZED
        # LMTP's LHLO is EHLO for the purpose of disabling it (as in the reference), and
        # disabling it by its own name does the same.
        disabled = options.disabledCommands
        if (
            verb in disabled
            or (verb == "LHLO" and "EHLO" in disabled)
            or (verb == "STARTTLS" and not self._tlsAvailable)
        ):
            return R.NOT_IMPLEMENTED
        return None

    @property
    def _authRequired(self) -> bool:
        return self._authDemanded and self.session.user is None

    def _countUnauthenticated(self) -> bool:
        # One more line from a client that must authenticate first (the caller has
        # checked _authRequired); whether that reaches the limit.
        self._unauthenticated += 1
        limit = self._options.maxAllowedUnauthenticatedCommands
        return limit is not None and self._unauthenticated >= limit

    def _unrecognizedCommand(self, reply: Reply) -> Send:
        self._unrecognized += 1
        limit = self._options.maxUnrecognizedCommands
        if limit is not None and self._unrecognized >= limit:
            return self._send(R.TOO_MANY_UNRECOGNIZED)
        return self._send(reply)

    def _sequence(self, verb: str) -> State | Send:
        after = transition(self.state, verb)
        if isinstance(after, Reply):
            return self._send(after)
        return after

    # -- session commands ------------------------------------------------------------------

    def _hello(self, verb: str, argument: str, line: str) -> Send:
        args = argument.split()
        name = heloName(args[0]) if len(args) == 1 else None
        if name is None:
            syntax = {"HELO": R.HELO_SYNTAX, "EHLO": R.EHLO_SYNTAX}.get(verb, R.LHLO_SYNTAX)
            return self._send(syntax)
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        session = self.session
        session.openingCommand = verb
        session.hostNameAppearsAs = name.lower()
        self._resetTransaction()
        self.state = after
        lines = (self._heloText(),) if verb == "HELO" else (self._heloText(), *self.extensions())
        reply = _HELLOS.get(lines)
        if reply is None:
            reply = Reply(250, lines)
            if len(_HELLOS) >= _MAX_HELLOS:
                _HELLOS.clear()
            _HELLOS[lines] = reply
        return self._send(reply)

    def _heloText(self) -> str:
        # Each %s in order: the server name, the client's host name, then nothing.
        pieces = self._options.heloResponse.split("%s")
        values = [self._options.name, self.session.clientHostname]
        out = [pieces[0]]
        for i, piece in enumerate(pieces[1:]):
            out.append(values[i] if i < len(values) else "")
            out.append(piece)
        return "".join(out)

    def extensions(self) -> list[str]:
        """
        The EHLO keywords for this session, in the reference's order.
        """
        o = self._options
        session = self.session
        out = []
        if not o.hidePIPELINING:
            out.append("PIPELINING")
        if not o.hide8BITMIME:
            out.append("8BITMIME")
        if not o.hideSMTPUTF8:
            out.append("SMTPUTF8")
        if self._enhanced:
            out.append("ENHANCEDSTATUSCODES")
        if not o.hideDSN:
            out.append("DSN")
        if self._authOn and session.user is None:
            out.append("AUTH " + " ".join(o.authMethods))
        if self._starttlsOffered and not session.secure:
            out.append("STARTTLS")
        if session.secure and not o.hideREQUIRETLS:
            out.append("REQUIRETLS")
        if o.size:
            out.append("SIZE" if o.hideSize else f"SIZE {o.size}")
        if "BDAT" not in o.disabledCommands:
            out.append("CHUNKING")
        if not self._xclientAddressSet:
            if self._trusted(o.useXClient, "XCLIENT"):
                out.append("XCLIENT " + " ".join(XCLIENT_ATTRIBUTES))
            if self._trusted(o.useXForward, "XFORWARD"):
                out.append("XFORWARD " + " ".join(XFORWARD_ATTRIBUTES))
        return out

    def _rset(self, verb: str, argument: str, line: str) -> Send:
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        self._expected = False
        self._resetTransaction()
        self.state = after
        return self._junkCommand(R.FLUSHED)

    def _noop(self, verb: str, argument: str, line: str) -> Send:
        return self._junkCommand(R.OK)

    def _help(self, verb: str, argument: str, line: str) -> Send:
        return self._junkCommand(R.HELP)

    def _vrfy(self, verb: str, argument: str, line: str) -> Send:
        if not argument.strip():
            return self._send(R.VRFY_SYNTAX)
        return self._junkCommand(R.VRFY)

    def _quit(self, verb: str, argument: str, line: str) -> Send:
        return self._send(R.BYE, close=True)

    # The reference's jokes.  Their 500s count as unrecognised commands, as every 500 does:
    # a client cannot send them for ever.

    def _wiz(self, verb: str, argument: str, line: str) -> Send:
        if not argument.strip():
            return self._unrecognizedCommand(R.NO_WIZARD)
        self.session.isWizard = True
        return self._send(R.WIZARD)

    def _shell(self, verb: str, argument: str, line: str) -> Send:
        return self._unrecognizedCommand(
            R.SHELL_WIZARD if self.session.isWizard else R.SHELL_MORTAL
        )

    def _kill(self, verb: str, argument: str, line: str) -> Send:
        return self._unrecognizedCommand(R.KILL)

    # -- AUTH ------------------------------------------------------------------------------

    def _challenge(self) -> str:
        # RFC 2195: a unique message-id with a random part, a timestamp and the host;
        # the random part comes from the system's CSPRNG.
        return f"<{secrets.token_hex(16)}.{int(self._now())}@{self._options.name}>"

    def _auth(self, verb: str, argument: str, line: str) -> Action:
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        options = self._options
        session = self.session
        if not session.secure and not options.allowInsecureAuth and self._starttlsOffered:
            return self._send(R.AUTH_NEEDS_TLS)
        if session.user is not None:
            return self._send(R.NO_IDENTITY_CHANGES)
        args = argument.split()
        name = args[0].upper() if args else ""
        if name not in options.authMethods:
            return self._send(R.UNRECOGNIZED_AUTH_TYPE)
        if len(args) > 2:
            return self._send(R.reply(501, f"Error: syntax: AUTH {name} [response]", "5.5.4"))
        if self._throttle is not None and not self._throttle.allowed(
            clientNetwork(session.remoteAddress), self._now()
        ):
            return self._send(R.AUTH_THROTTLED)
        if self._mechanisms is None:
            self._mechanisms = MechanismFactory(self._challenge)
        mechanism = self._mechanisms.make(name)
        assert mechanism is not None
        initial = args[1] if len(args) == 2 else None
        if initial is not None and not mechanism.takesInitialResponse:
            # RFC 4954 section 4: an initial response to a server-first mechanism.
            return self._send(R.reply(501, f"Error: syntax: AUTH {name}", "5.7.0"))
        return self._saslStep(mechanism, mechanism.start(initial))

    @property
    def _starttlsOffered(self) -> bool:
        o = self._options
        return self._tlsAvailable and not o.hideSTARTTLS and "STARTTLS" not in o.disabledCommands

    def _saslContinue(self, raw: bytes) -> Action:
        mechanism = self._sasl
        assert mechanism is not None
        # The reference counts SASL lines as unauthenticated commands too.
        if self._authRequired and self._countUnauthenticated():
            self._sasl = None
            return self._send(R.TOO_MANY_UNAUTHENTICATED)
        # Spaces and tabs around a response are left out, as they are around the AUTH
        # command's initial response, which str.split() separates (base64 has none).
        raw = raw.strip(b" \t")
        if raw == b"*":
            self._sasl = None
            return self._send(ABORTED)
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self._sasl = None
            return self._send(BAD_BASE64)
        return self._saslStep(mechanism, mechanism.respond(line))

    def _saslStep(self, mechanism: Mechanism, step: Step) -> Action:
        if isinstance(step, Challenge):
            self._sasl = mechanism
            return self._send(Reply(334, (step.text,)))
        self._sasl = None
        if isinstance(step, Refusal):
            return self._send(step.reply)
        if not self._authHandlers:
            return self._send(R.AUTH_NOT_IMPLEMENTED)
        self._saslWaiting = mechanism
        return CheckAuth(step)

    def authChecked(self, user: object, error: SMTPError | None) -> Send:
        """
        The handlers' answer to the last L{CheckAuth}: C{user} (not L{None}) accepts;
        otherwise the client is refused with C{error} (or C{535} when the handlers did not
        know it).  A refusal of 5xx counts against the connection and the client's
        address; temporary ones (4xx) do not.
        """
        mechanism, self._saslWaiting = self._saslWaiting, None
        session = self.session
        if error is None and user is not None:
            session.user = user
            self._unauthenticated = 0
            return self._send(R.AUTH_OK)
        reply = R.fromError(error) if error is not None else R.AUTH_FAILED
        if reply.code < 500:
            return self._send(reply)
        options = self._options
        self._authFailures += 1
        if self._throttle is not None:
            # Per client as maxClientsPerAddress counts them: an IPv6 client's /64 is one,
            # or each address of its network would have a budget of its own.
            self._throttle.failed(clientNetwork(session.remoteAddress), self._now())
        if options.maxAuthFailures is not None and self._authFailures > options.maxAuthFailures:
            return self._send(R.TOO_MANY_AUTH_FAILURES)
        delay = options.authFailureDelay * self._authFailures
        if mechanism is not None and mechanism.errorRound:
            # OAuth: the error is a 334 JSON challenge; the client answers it and then
            # gets the refusal (RFC 7628 section 3.2.2).
            challenge = mechanism.refused(oauthErrorDetail(mechanism.name))
            self._sasl = mechanism
            if challenge is not None:
                return replace(self._send(Reply(334, (challenge.text,))), delay=delay)
        return replace(self._send(reply), delay=delay)

    # -- XCLIENT and XFORWARD ----------------------------------------------------------------

    def _trusted(self, spec: bool | tuple[str, ...], verb: str) -> bool:
        if verb in self._options.disabledCommands:
            return False
        return isTrusted(spec, self._peerAddress or self.session.remoteAddress)

    def _attributes(
        self, verb: str, argument: str, names: tuple[str, ...], unavailable: tuple[str, ...]
    ) -> tuple[State, dict[str, str | None]] | Send:
        # What XCLIENT or XFORWARD (once allowed) may do here: the state after it and its
        # attributes, or the refusal.  Trust stays with the real client, whatever either
        # says it speaks for (Postfix sends two XFORWARD commands in a row).
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        try:
            attributes = parseAttributes(argument, names, unavailable)
        except BadAttribute as e:
            return self._send(R.BAD_PARAMETER_ADDRESS if e.address else R.BAD_PARAMETER_SYNTAX)
        if self._peerAddress is None:
            self._peerAddress = self.session.remoteAddress
        return after, attributes

    def _nameAndPort(self, attributes: dict[str, str | None]) -> None:
        # NAME and PORT, which XCLIENT and XFORWARD both carry, once ADDR is in place.
        session = self.session
        if "NAME" in attributes:
            name = attributes["NAME"]
            session.clientHostname = name.lower() if name else f"[{session.remoteAddress}]"
        if attributes.get("PORT") is not None:
            session.remotePort = int(attributes["PORT"] or 0)

    def _xclient(self, verb: str, argument: str, line: str) -> Action:
        if self._xclientAddressSet or not self._trusted(self._options.useXClient, verb):
            return self._send(R.NOT_ALLOWED)
        allowed = self._attributes(
            verb, argument, XCLIENT_ATTRIBUTES, ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
        )
        if isinstance(allowed, Send):
            return allowed
        after, attributes = allowed
        session = self.session
        # The session starts again as if the new client had just connected: an XFORWARD
        # before is forgotten first, so that it cannot restore its own values over these.
        self._resetTransaction()
        session.xClient.update(attributes)
        address = attributes.get("ADDR")
        if "ADDR" in attributes:
            self._xclientAddressSet = True
            if address is not None:
                session.remoteAddress = address
                session.clientHostname = f"[{address}]"
        self._nameAndPort(attributes)
        if attributes.get("DESTADDR") is not None:
            session.localAddress = attributes["DESTADDR"] or session.localAddress
        if attributes.get("DESTPORT") is not None:
            session.localPort = int(attributes["DESTPORT"] or 0)
        session.openingCommand = None
        session.hostNameAppearsAs = None
        self.state = after
        login: AuthRequest | None = None
        if "LOGIN" in attributes:
            user = attributes["LOGIN"]
            if user:
                login = AuthRequest(method="XCLIENT", username=user)
            else:
                session.user = None
        return CheckXClient(login)

    def xclientLogin(self, user: object, error: SMTPError | None) -> Send | None:
        """
        The handlers' answer about XCLIENT's LOGIN: L{None} when accepted, else the
        refusal to send (the connection closes after it, as in the reference).
        """
        if error is None and user is not None:
            self.session.user = user
            return None
        reply = R.XCLIENT_LOGIN_REFUSED
        if error is not None:
            reply = Reply(550, error.lines, "5.7.0")
        return self._send(reply, close=True)

    def xclientDone(self, error: SMTPError | None) -> Send:
        """
        The reply to XCLIENT once the connect handlers have judged the new client: the
        greeting again, or their refusal.
        """
        if error is not None:
            return self.refuseConnection(error)
        # The reference gives this second greeting an enhanced code, unlike the first.
        return self._send(Reply(220, (self._greetingText(),), "2.0.0"))

    def _xforward(self, verb: str, argument: str, line: str) -> Action:
        # Once XCLIENT has given the client's address the session is the client's, which
        # is not trusted to say where mail comes from (as a second XCLIENT).
        if self._xclientAddressSet or not self._trusted(self._options.useXForward, verb):
            return self._send(R.NOT_ALLOWED)
        allowed = self._attributes(verb, argument, XFORWARD_ATTRIBUTES, ("[UNAVAILABLE]",))
        if isinstance(allowed, Send):
            return allowed
        after, attributes = allowed
        session = self.session
        if self._xforwardBase is None:
            self._xforwardBase = (
                session.remoteAddress,
                session.remotePort,
                session.clientHostname,
                session.hostNameAppearsAs,
            )
        session.xForward.update(attributes)
        address = attributes.get("ADDR")
        if address is not None:
            # The proxy's own host name does not name the client (NAME, if given, will).
            session.remoteAddress = address
            session.clientHostname = f"[{address}]"
        self._nameAndPort(attributes)
        if attributes.get("HELO") is not None:
            session.hostNameAppearsAs = (attributes["HELO"] or "").lower()
        self.state = after
        return self._send(R.OK)

    # -- TLS -------------------------------------------------------------------------------

    def _starttls(self, verb: str, argument: str, line: str) -> Action:
        if argument.strip():
            return self._send(R.STARTTLS_SYNTAX)
        if self.session.secure:
            return self._send(R.TLS_ALREADY_ACTIVE)
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        return StartTLS(self._send(R.READY_FOR_TLS).data)

    def tlsStarted(
        self,
        info: TLSInfo,
        servername: str | None,
        peerCertificate: object = None,
        peerCertificateVerified: bool = False,
    ) -> None:
        """
        The TLS handshake completed (after STARTTLS, or at once for implicit TLS).

        RFC 3207 section 4.2: the server "MUST discard any knowledge obtained from the
        client" before TLS, so the hello, the authentication and any transaction are
        forgotten; only facts about the connection remain.
        """
        session = self.session
        session.secure = True
        session.tlsOptions = info
        session.servername = servername
        session.peerCertificate = peerCertificate
        session.peerCertificateVerified = peerCertificateVerified
        session.openingCommand = None
        session.hostNameAppearsAs = None
        session.user = None
        self._resetTransaction()
        self.state = State.GREETED

    def refuseSecure(self, error: SMTPError) -> Send | None:
        """
        An L{ISecureHandler} refused the connection after STARTTLS.  A C{421} or C{521} is
        sent at once and the connection closes; any other refusal becomes the reply to
        every command but QUIT (RFC 3207 section 4.1: "554 Command refused due to lack of
        security"), since after the handshake the client speaks first.
        """
        reply = R.fromError(error)
        if reply.code in _HANG_UP:
            return self._send(reply, close=True)
        self._refusedWith = reply
        return None

    def tlsUnavailable(self) -> Send:
        """
        The reply, instead of STARTTLS's C{220}, when the handshake cannot begin for now:
        C{454 TLS not available due to temporary reason} (RFC 3207 section 4).  Nothing
        else changes: the session goes on in clear as it was, and the client may carry on
        without TLS, try again later, or QUIT.
        """
        return self._send(R.TLS_UNAVAILABLE)

    # -- the mail transaction --------------------------------------------------------------

    def _freshEnvelope(self) -> Envelope:
        return _EMPTY_ENVELOPE if self._options.hideDSN else _EMPTY_DSN_ENVELOPE

    def _resetTransaction(self) -> None:
        self.session.envelope = self._freshEnvelope()
        self._pendingEnvelope = None
        if self._xforwardBase is not None:
            # XFORWARD's attributes last one transaction (XFORWARD_README).
            session = self.session
            (
                session.remoteAddress,
                session.remotePort,
                session.clientHostname,
                session.hostNameAppearsAs,
            ) = self._xforwardBase
            self._xforwardBase = None
            session.xForward.clear()

    def _mail(self, verb: str, argument: str, line: str) -> Action:
        o = self._options
        try:
            mailbox, command = parsePathCommand(
                line,
                "MAIL FROM",
                lenient=o.lenientAddressParsing,
                maxLocalPart=o.maxLocalPartLength,
            )
        except GrammarError as e:
            return self._send(_pathRefusal(e, R.BAD_SENDER, o.maxLocalPartLength, sender=True))
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        params = command.params
        if params and not self._knownParameters(params, "MAIL"):
            return self._send(R.UNKNOWN_PARAMETER)
        bodyType = "7bit"
        smtpUtf8 = requireTLS = False
        dsn = None
        address = Address(mailbox, _args(params))
        if "SIZE" in params:
            size = address.declaredSize
            if size is None:
                return self._send(R.BAD_SIZE)
            if o.size and not o.hideSize and size > o.size:
                return self._send(R.tooBig(o.size))
        if "BODY" in params:
            body = (params["BODY"] or "").upper()
            if body == "BINARYMIME":
                # A value of an extension not offered (RFC 3030 section 3).
                return self._send(R.UNKNOWN_PARAMETER)
            if body not in ("7BIT", "8BITMIME"):
                return self._send(R.BAD_BODY)
            bodyType = body.lower()
        if "SMTPUTF8" in params:
            if params["SMTPUTF8"] is not None:
                return self._send(R.BAD_SMTPUTF8)
            smtpUtf8 = True
        if not smtpUtf8 and not mailbox.isascii():
            return self._send(R.SENDER_NEEDS_SMTPUTF8)
        if "REQUIRETLS" in params:
            if not self.session.secure:
                return self._send(R.REQUIRETLS_PLAINTEXT)
            if params["REQUIRETLS"] is not None:
                return self._send(R.BAD_REQUIRETLS)
            requireTLS = True
        if not o.hideDSN:
            ret = params.get("RET", "")
            if "RET" in params and (ret is None or ret.upper() not in ("FULL", "HDRS")):
                return self._send(R.BAD_RET)
            envid = params.get("ENVID", "")
            if "ENVID" in params and not _strictXtext(command.raw["ENVID"], 100):
                return self._send(R.BAD_ENVID)
            dsn = (
                EnvelopeDSN(ret=ret.upper() if ret else None, envid=envid if envid else None)
                if ret or envid
                else _NO_DSN
            )
        self._pendingEnvelope = self.session.envelope
        self.session.envelope = Envelope(
            bodyType=bodyType, smtpUtf8=smtpUtf8, requireTLS=requireTLS, dsn=dsn
        )
        return CheckMail(address)

    def _knownParameters(self, params: dict[str, str | None], verb: str) -> bool:
        # RFC 5321 section 4.1.1.11: only the parameters of the extensions offered are
        # known (after HELO, none is offered).
        if self.session.openingCommand == "HELO":
            return False
        return params.keys() <= _parameters(verb, not self._options.hideDSN, self._authOn)

    def _repeated(self, mailbox: str) -> bool:
        # In SMTP a repeated recipient replaces the earlier one, so it takes no new place.
        if self._options.lmtp:
            return False
        folded = mailbox.casefold()
        return any(r.address.casefold() == folded for r in self.session.envelope.rcptTo)

    def mailChecked(self, address: Address, error: SMTPError | None) -> Send:
        """
        The handlers' answer about the sender of the last L{CheckMail}: accept it when
        C{error} is L{None}, else refuse it with that error.
        """
        if error is not None:
            if self._pendingEnvelope is not None:
                self.session.envelope = self._pendingEnvelope
            self._pendingEnvelope = None
            return self._send(R.fromError(error))
        self._pendingEnvelope = None
        self.session.envelope = self.session.envelope.withSender(address)
        self.state = State.MAIL
        return self._send(R.MAIL_OK)

    def _rcpt(self, verb: str, argument: str, line: str) -> Action:
        o = self._options
        try:
            mailbox, command = parsePathCommand(
                line,
                "RCPT TO",
                lenient=o.lenientAddressParsing,
                allowPostmaster=True,
                maxLocalPart=o.maxLocalPartLength,
            )
        except GrammarError as e:
            return self._send(_pathRefusal(e, R.BAD_RECIPIENT, o.maxLocalPartLength, sender=False))
        if not mailbox:
            return self._send(R.BAD_RECIPIENT)
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        if not mailbox.isascii() and not self.session.envelope.smtpUtf8:
            return self._send(R.RECIPIENT_NEEDS_SMTPUTF8)
        params = command.params
        if params and not self._knownParameters(params, "RCPT"):
            return self._send(R.UNKNOWN_PARAMETER)
        limit = o.maxRecipients
        recipients = self.session.envelope.rcptTo
        if limit is not None and len(recipients) >= limit and not self._repeated(mailbox):
            # RFC 5321 section 4.5.3.1.10: 452, and the client sends the rest later.
            return self._send(R.TOO_MANY_RECIPIENTS)
        dsn = None
        if not o.hideDSN and ("NOTIFY" in params or "ORCPT" in params):
            notify: tuple[str, ...] | None = None
            if "NOTIFY" in params:
                value = params["NOTIFY"]
                notify = tuple(v.strip().upper() for v in (value or "").split(","))
                if value is None or not set(notify) <= _NOTIFY_VALUES or "" in notify:
                    return self._send(R.BAD_NOTIFY)
                if "NEVER" in notify and len(notify) > 1:
                    return self._send(R.NOTIFY_NEVER_COMBINED)
            orcpt = params.get("ORCPT")
            smtpUtf8 = self.session.envelope.smtpUtf8
            if "ORCPT" in params and not _validOrcpt(command.raw["ORCPT"], smtpUtf8):
                return self._send(R.BAD_ORCPT)
            dsn = RecipientDSN(notify=notify, orcpt=orcpt)
        return CheckRcpt(Address(mailbox, _args(params), dsn))

    def rcptChecked(self, address: Address, error: SMTPError | None) -> Send:
        """
        The handlers' answer about the recipient of the last L{CheckRcpt}.
        """
        if error is not None:
            reply = R.fromError(error)
            # RFC 6531 section 3.7.4: a forward-path in UTF-8 is for a client that asked
            # for SMTPUTF8, in UTF-8; without it, 551 becomes 550 (and ASCII).
            utf8 = not all(line.isascii() for line in reply.lines)
            if reply.code == 551 and utf8:
                if self.session.envelope.smtpUtf8:
                    reply = replace(reply, utf8=True)
                else:
                    reply = replace(reply, code=550)
            return self._send(reply)
        envelope = self.session.envelope
        recipients = envelope.rcptTo
        if not self._options.lmtp:
            # In SMTP a repeated recipient replaces the earlier one (the reference's
            # behaviour); LMTP keeps every one, since each gets its own final reply.
            folded = address.address.casefold()
            recipients = tuple(r for r in recipients if r.address.casefold() != folded)
        self.session.envelope = envelope.withRecipients((*recipients, address))
        self.state = State.RCPT
        return self._send(R.RCPT_OK)

    def _data(self, verb: str, argument: str, line: str) -> Action:
        after = self._sequence(verb)
        if isinstance(after, Send):
            return after
        if argument.strip():
            return self._send(R.DATA_SYNTAX)
        self.state = after
        return _START_DATA

    def _bdat(self, verb: str, argument: str, line: str) -> Action:
        match = _BDAT.match(argument)
        if match is None:
            return self._send(R.BDAT_SYNTAX, close=True)
        # Leading zeros are allowed (1*DIGIT) and change nothing.
        digits, last = match.group(1).lstrip("0") or "0", match.group(2) is not None
        size = int(digits) if len(digits) <= _CHUNK_DIGITS else 10**_CHUNK_DIGITS
        limit = self._options.size
        # Not worth reading only to throw it away, whatever is wrong with it.
        unskippable = size > max(limit, CHUNK_SKIP_LIMIT)
        if limit and unskippable:
            # More than a whole message may be, by far: not worth reading to throw away
            # (standards 3030-10).  A smaller chunk over the limit is read, and the
            # message fails with 552 as one that grows over it in several chunks does:
            # RFC 3030 section 2 wants its octets read (3030-04), and a client still
            # sending it would not see a 552 sent before the connection closes.
            return self._send(R.tooBig(limit), close=True)
        refusal = self._chunkRefusal(size, last)
        if refusal is not None:
            if unskippable:
                return self._send(refusal, close=True)
            if refusal is R.NULL_CHUNK:
                # A chunk refused fails the transaction (RFC 3030 section 2): the client
                # takes it so, and sends MAIL again, not the chunks it has not pipelined
                # yet; those it has get 503s it could not foresee, as after a failed
                # message (the message under way, if any, is abandoned: see lineReceived).
                self._resetTransaction()
                self.state = State.READY
                send = self._send(refusal)
                self._expected = True
                return ReadChunk(size, refusal=send)
            return ReadChunk(size, refusal=self._send(refusal))
        first = self.state is State.RCPT
        self.state = State.CHUNKS
        return ReadChunk(size, last, first)

    def _chunkRefusal(self, size: int, last: bool) -> Reply | None:
        # The checks every command meets, then BDAT's own rules.
        refusal = self._refusal("BDAT")
        if refusal is not None:
            return refusal
        after = transition(self.state, "BDAT")
        if isinstance(after, Reply):
            return after
        if size == 0 and not last:
            # RFC 3030 allows it, but it does nothing, and a client could repeat it for
            # ever (standards 3030-09).
            return R.NULL_CHUNK
        return None

    def chunkDone(self, size: int) -> Send:
        """
        The 250 after a BDAT chunk of C{size} bytes that was not the last; the
        transaction goes on.
        """
        return self._send(R.chunkReceived(size))

    @property
    def replySlots(self) -> int:
        """
        How many final replies the message in this transaction gets: one per recipient
        in LMTP (RFC 2033 section 4.2), one in SMTP.
        """
        return len(self.session.envelope.rcptTo) if self._options.lmtp else 1

    def dataRefused(self, error: SMTPError) -> Send:
        """
        The reply to DATA when an L{IDataCommandHandler} refused it: its error.  The
        transaction stays open, with its recipients: the client may say DATA again.
        """
        self.state = State.RCPT
        return self._send(R.fromError(error))

    def dataStarted(self) -> Send:
        """
        The 354 that invites the message, once the data handlers have been started.
        """
        return self._send(R.START_DATA)

    def dataFinished(
        self,
        outcomes: Sequence[Sequence[Outcome]],
        *,
        tooLarge: bool = False,
        bareLineEndings: bool = False,
        mailLoop: bool = False,
        early: bool = False,
    ) -> Send:
        """
        The final reply (in LMTP, one per recipient) once the message has ended and every
        data handler has answered, and the start of a new transaction.

        @param outcomes: for each data handler in registration order, its answer for each
            recipient (a single answer in SMTP), as L{normalizeDataResult} makes them.
            For each recipient the first refusal wins; otherwise the last custom text, or
            the default text.
        @param tooLarge: the message went over C{size}: 552 whatever the handlers said.
        @param bareLineEndings: the message had a bare CR or LF under the C{reject} policy.
        @param mailLoop: the message's header had C{maxReceivedHeaders} C{Received}
            fields: 554 5.4.6 (RFC 5321 section 6.3).
        @param early: the message failed on a BDAT chunk before the last, whose reply
            this is: a single one, in LMTP too (the client waits for one per BDAT; the
            replies per recipient answer only the end of the message).
        """
        lmtp = self._options.lmtp
        count = 1 if early else self.replySlots
        if tooLarge:
            replies = [R.tooBig(self._options.size)] * count
        elif bareLineEndings:
            replies = [R.BARE_LINE_ENDING] * count
        elif mailLoop:
            replies = [R.MAIL_LOOP] * count
        else:
            default = R.MESSAGE_ACCEPTED_TEXT if lmtp else R.MESSAGE_QUEUED_TEXT
            replies = [_combine(outcomes, i, default) for i in range(count)]
        # The final replies are not counted as errors one by one (in LMTP there is one per
        # recipient, and none may become a 421): a message refused is one error, and a
        # message accepted (for any recipient) starts the counts again.
        if count == 1 and replies[0].code < 400:
            # (The usual case, first: a message accepted.)
            send = self._send(replies[0])
            self._errors = self._junk = 0
            self._expected = False
        else:
            self._finalReplies = True
            try:
                send = self._send(replies[0]) if count == 1 else self._sendAll(replies)
            finally:
                self._finalReplies = False
            accepted = any(reply.code < 400 for reply in replies)
            if accepted:
                self._errors = self._junk = 0
            else:
                self._errors += 1
            # After a message refused, the BDAT chunks a client pipelined after the one
            # that failed get 503s it could not foresee.
            self._expected = not accepted
        self.session.transaction += 1
        self._unrecognized = 0
        self._resetTransaction()
        self.state = State.READY
        return send

    _COMMANDS: Final[dict[str, Callable[[ServerConnection, str, str, str], Action]]] = {
        "HELO": _hello,
        "EHLO": _hello,
        "LHLO": _hello,
        "MAIL": _mail,
        "RCPT": _rcpt,
        "DATA": _data,
        "BDAT": _bdat,
        "RSET": _rset,
        "NOOP": _noop,
        "HELP": _help,
        "VRFY": _vrfy,
        "QUIT": _quit,
        "WIZ": _wiz,
        "SHELL": _shell,
        "KILL": _kill,
        "STARTTLS": _starttls,
        "AUTH": _auth,
        "XCLIENT": _xclient,
        "XFORWARD": _xforward,
    }


# Replies made once: the greetings of the servers in this process (a handful at most,
# kept up to a bound), the replies to HELO and EHLO last made (their first line names the
# client, so there are many: the table starts again when full), and the final replies to
# a message no handler gave a text for.
_GREETINGS: dict[str, Reply] = {}
_HELLOS: dict[tuple[str, ...], Reply] = {}
_MAX_HELLOS: Final = 1024
_DEFAULT_DATA_REPLIES: Final = {
    text: Reply(250, (text,), R.DATA_ENHANCED)
    for text in (R.MESSAGE_QUEUED_TEXT, R.MESSAGE_ACCEPTED_TEXT)
}

# Envelopes, DSN parameters and argument maps are immutable, so the empty ones are shared.
_NO_DSN: Final = EnvelopeDSN()
_EMPTY_ENVELOPE: Final = Envelope()
_EMPTY_DSN_ENVELOPE: Final = Envelope(dsn=_NO_DSN)
_NO_ARGS: Final[MappingProxyType[str, str | bool]] = MappingProxyType({})


@functools.cache
def _lineLimits(base: int, size: bool, dsn: bool, auth: bool) -> dict[bytes, int]:
    # Shared by every connection with these options (a dict each would cost memory).
    return {
        b"AUTH ": max(base, SASL_LINE_LIMIT),
        b"MAIL ": base + (26 if size else 0) + (100 if dsn else 0) + 10 + (500 if auth else 0),
        b"RCPT ": base + (500 if dsn else 0),
    }


@functools.cache
def _parameters(verb: str, dsn: bool, auth: bool) -> frozenset[str]:
    # The MAIL or RCPT parameters known with DSN (RFC 3461) and AUTH (RFC 4954 section
    # 5) offered or not; SIZE, BODY, SMTPUTF8 and REQUIRETLS work even when hidden.
    if verb == "RCPT":
        return frozenset(("NOTIFY", "ORCPT") if dsn else ())
    names = {"SIZE", "BODY", "SMTPUTF8", "REQUIRETLS"}
    if dsn:
        names |= {"RET", "ENVID"}
    if auth:
        names.add("AUTH")
    return frozenset(names)


def _pathRefusal(error: GrammarError, badPath: Reply, limit: int | None, sender: bool) -> Reply:
    # The reply to a MAIL or RCPT line that does not parse: what is wrong with it, so
    # that the client's operator looks at the right part (its parameters are not its
    # address).
    if isinstance(error, ParameterError):
        if error.repeated is not None:
            return R.repeatedParameter(error.repeated)
        return R.BAD_PARAMETER_SYNTAX
    if isinstance(error, LocalPartTooLong) and limit is not None:
        return R.localPartTooLong(sender, limit)
    return badPath


def _args(params: dict[str, str | None]) -> MappingProxyType[str, str | bool]:
    if not params:
        return _NO_ARGS
    return MappingProxyType({k: True if v is None else v for k, v in params.items()})


def _strictXtext(raw: str | None, limit: int) -> bool:
    # RFC 3461 section 4: ENVID and ORCPT's address are xtext, checked strictly here
    # although other parameters are decoded leniently.
    if not raw:
        return False
    try:
        decoded = decodeXtext(raw)
    except GrammarError:
        return False
    return len(decoded) <= limit


def _validOrcpt(raw: str | None, smtpUtf8: bool) -> bool:
    # ORCPT = addr-type ";" xtext, at most 500 characters (RFC 3461 section 4.2); for
    # addr-type utf-8, QCHARs and \x{HEX} escapes, and after SMTPUTF8 UTF-8 itself too
    # (RFC 6533 section 3: utf-8-addr-xtext, utf-8-addr-unitext).
    if raw is None or not _ORCPT.match(raw):
        return False
    addressType, _, address = raw.partition(";")
    if addressType.lower() == "utf-8":
        valid = _UTF8_ADDRESS if smtpUtf8 else _UTF8_ADDRESS_ASCII
        return (
            len(address) <= 500
            and valid.fullmatch(address) is not None
            and all(_hexpoint(digits) for digits in _EMBEDDED.findall(address))
        )
    return _strictXtext(address, 500)


def _hexpoint(digits: str) -> bool:
    # RFC 6533 section 3's HEXPOINT: a Unicode scalar value (no surrogate, none over
    # 10FFFF) in the fewest digits, at least two; below 80, only the characters xtext
    # must escape ("\", "+", "=", space, controls but 0A-0F and 1A-1F, DEL).
    value = int(digits, 16)
    if len(digits) != max(2, len(f"{value:X}")) or value > 0x10FFFF:
        return False
    if 0xD800 <= value <= 0xDFFF:
        return False
    return value >= 0x80 or value in _HEXPOINT_ASCII


def _combine(outcomes: Sequence[Sequence[Outcome]], index: int, default: str) -> Reply:
    text = None
    for perRecipient in outcomes:
        outcome = perRecipient[index]
        if isinstance(outcome, SMTPError):
            return R.fromError(outcome)
        if outcome is not None:
            text = outcome
    if text is None:
        return _DEFAULT_DATA_REPLIES[default]
    match = ENHANCED_STATUS.match(text)
    if match is not None and match.group(1) == "2":
        # The text gives its own enhanced code ("2.0.0 Ok: queued as X", as Postfix
        # writes it), as an SMTPError's may: sent in its place, not after the default.
        return Reply(250, (text[match.end() :],), match.group(0).strip())
    return Reply(250, (text,), R.DATA_ENHANCED)


def normalizeDataResult(result: object, recipients: int, lmtp: bool) -> tuple[Outcome, ...]:
    """
    Turn what one data handler answered into one outcome per reply slot: one slot in
    SMTP, one per recipient in LMTP.

    A handler answers L{None}, a string, or (LMTP only) a sequence with one such answer or
    L{SMTPError} per recipient.  Refusals are raised; one returned refuses just the same
    (for every recipient, in LMTP), as for the other handlers.

    @raise ValueError: for any other answer, which the glue treats as a handler failure.
    """
    slots = recipients if lmtp else 1
    if result is None or isinstance(result, str):
        _checkText(result)
        return (result,) * slots
    if isinstance(result, SMTPError):
        return (result,) * slots
    if isinstance(result, (list, tuple)):
        if not lmtp:
            raise ValueError("a list of results is only meaningful in LMTP mode")
        if len(result) != recipients:
            raise ValueError(
                f"the data handler gave {len(result)} results for {recipients} recipients"
            )
        out: list[Outcome] = []
        for item in result:
            if not (item is None or isinstance(item, (str, SMTPError))):
                raise ValueError(f"unexpected per-recipient result {item!r}")
            if isinstance(item, str):
                _checkText(item)
            out.append(item)
        return tuple(out)
    raise ValueError(f"unexpected data handler result {result!r}")


def _checkText(text: str | None) -> None:
    if text is not None and ("\r" in text or "\n" in text):
        raise ValueError("reply text must not contain CR or LF")
