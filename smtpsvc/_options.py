"""
The one declaration of the server's options.

Every option of :class:`smtpsvc.SMTPServer` is a field of :class:`ServerOptions`, with its
default and its documentation.  The documentation's options table, the ``twist smtpsvc``
command-line flags and their ``--help`` text are all generated from these fields, so they
cannot drift apart.  Names are the reference's (nodemailer ``smtp-server``), in camelCase;
times are in seconds.

This module is pure: standard library only.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Final

from ._core._grammar import aLabels
from ._core._states import COMMANDS, NOT_IMPLEMENTED

#: The ways the DATA decoder can treat a bare CR or a bare LF inside a message.
BARE_LINE_ENDING_POLICIES: Final = ("normalize", "reject", "pass")
#: The SASL mechanisms smtpsvc implements.
AUTH_MECHANISMS: Final = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER")
#: TLS versions by the names the reference (and Node) uses.
TLS_VERSIONS: Final = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: The names disabledCommands may list: the commands the state machine knows, and those it
#: never carries out (listing them changes nothing, but is no mistake either).
DISABLEABLE_COMMANDS: Final = COMMANDS | NOT_IMPLEMENTED
#: Twisted's log levels, by name, least severe first.
LOG_LEVELS: Final = ("debug", "info", "warn", "error", "critical")


def _option(
    default: Any = MISSING,
    doc: str = "",
    *,
    defaultFactory: Callable[[], Any] | None = None,
    defaultText: str | None = None,
    choices: tuple[str, ...] = (),
    cli: bool = True,
    cliForms: tuple[str, ...] = (),
    group: str = "protocol",
) -> Any:
    """
    Declare one option: its default, its documentation and how it is exposed.

    @param defaultText: how the docs and ``--help`` show a computed default.
    @param cli: whether ``twist smtpsvc`` gets a flag for it, named after it.
    @param cliForms: for an option without such a flag, the flags of ``twist smtpsvc``
        that set it another way (``--cert FILE``), as the documentation shows them.
    """
    metadata = {
        "doc": doc,
        "defaultText": defaultText,
        "choices": choices,
        "cli": cli,
        "cliForms": cliForms,
        "group": group,
    }
    if defaultFactory is not None:
        return field(default_factory=defaultFactory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerOptions:
    """
    The validated options of one server.  Build it with keyword arguments named as the
    reference names them; unknown names and bad values raise L{TypeError} or
    L{ValueError} with a sentence that names the option.
    """

    # -- identity and protocol ------------------------------------------------------------
    name: str = _option(
        doc="Server name used in the greeting, the HELO/EHLO reply and a few 421 replies.  An "
        "internationalised name is used as its A-labels (``xn--...``): the greeting and the "
        "EHLO reply must be ASCII (RFC 6531 section 3.7.1).",
        defaultFactory=socket.gethostname,
        defaultText="the machine's host name",
    )
    banner: str = _option("", "Text appended to the greeting after ``ESMTP``/``LMTP``.")
    heloResponse: str = _option(
        "%s Nice to meet you, %s",
        "Format of the HELO reply and of the first EHLO/LHLO line: the first ``%s`` is the "
        "server name, the second the client's host name, any further one is empty.",
    )
    lmtp: bool = _option(
        False,
        "Speak LMTP (RFC 2033): ``LHLO`` instead of HELO/EHLO and one reply per accepted "
        "recipient after DATA.  An LMTP server refuses to listen on TCP port 25.",
    )
    size: int = _option(
        0,
        "Largest message accepted, in bytes; 0 means no limit.  Advertised as ``SIZE``; a "
        "larger ``SIZE=`` on MAIL gets 552 and a larger message gets 552 after the final "
        "dot and is not delivered.",
        group="limits",
    )
    hideSize: bool = _option(
        False,
        "Advertise a bare ``SIZE`` without the limit, and skip the ``SIZE=`` check at MAIL "
        "(the message itself is still held to ``size``).",
    )
    hidePIPELINING: bool = _option(
        False,
        "Do not advertise PIPELINING (it still works, except for unauthenticated clients "
        "under ``forbidUnauthPipelining``).  Cannot be set with ``lmtp``.",
    )
    hide8BITMIME: bool = _option(False, "Do not advertise 8BITMIME (BODY= still works).")
    hideSMTPUTF8: bool = _option(False, "Do not advertise SMTPUTF8 (the parameter still works).")
    hideDSN: bool = _option(
        True,
        "Hide DSN (RFC 3461).  When shown, RET, ENVID, NOTIFY and ORCPT are validated and "
        "stored on the envelope and addresses; when hidden they are unknown parameters "
        "(``555``).",
    )
    hideENHANCEDSTATUSCODES: bool | None = _option(
        None,
        "Hide ENHANCEDSTATUSCODES (RFC 2034).  When shown, replies carry RFC 3463 codes.  "
        "The default hides them for SMTP, as the reference does, and shows them for LMTP, "
        "which RFC 2033 requires: setting it true with ``lmtp`` is an error.",
        defaultText="hidden for SMTP, shown for LMTP",
    )
    hideREQUIRETLS: bool = _option(
        True, "Hide REQUIRETLS (RFC 8689) on TLS connections.  The parameter is checked anyway."
    )
    disabledCommands: tuple[str, ...] = _option(
        (),
        "Commands answered as not implemented (``502``), e.g. ``AUTH`` or ``VRFY``.  In "
        "LMTP mode ``EHLO`` also disables ``LHLO`` (as ``LHLO`` does); ``BDAT`` also stops "
        "``CHUNKING`` being offered.  Commands the server never carries out, such as ``EXPN`` "
        "(always ``502``), may be named too; any other name is refused, so that a typo "
        "cannot leave the command meant enabled.",
    )
    lenientAddressParsing: bool = _option(
        False,
        "Accept any address with exactly one ``@`` and both sides non-empty (control "
        "characters are still refused), for devices that send addresses such as ``user.@host``.",
    )
    bareLineEndings: str = _option(
        "normalize",
        "What a bare CR or bare LF inside a message becomes: ``normalize`` turns it into "
        "CRLF, ``reject`` refuses the message with 550 after the final dot, ``pass`` keeps "
        "the bytes.  Only CRLF.CRLF ever ends a message, whatever the choice.",
        choices=BARE_LINE_ENDING_POLICIES,
    )

    # -- limits and timing ---------------------------------------------------------------
    maxCommandLength: int = _option(
        4096,
        "Longest command line accepted, in bytes without the CRLF; a longer one gets 500 "
        "and is discarded.  MAIL and RCPT lines may be longer by what the extensions "
        "offered add (MAIL: 26 with SIZE, 100 with DSN, 10 for SMTPUTF8, 500 with AUTH; "
        "RCPT: 500 with DSN), and AUTH lines and SASL responses may be 12288 bytes "
        "(RFC 4954 section 4).",
        group="limits",
    )
    maxLocalPartLength: int | None = _option(
        64,
        "Longest local part (before the ``@``) of a sender or recipient address, in octets: "
        "RFC 5321's limit (section 4.5.3.1.1).  A longer one gets ``501 Error: sender "
        "address local part longer than 64 octets`` (or recipient).  Return paths that "
        "forwarders rewrite (SRS) and VERP addresses can be longer; unset takes any, within "
        "the address's 254 octets.",
        group="limits",
    )
    maxClients: int | None = _option(
        None,
        "Most connections served at once; the next one gets ``421 ... Too many connected "
        "clients`` and is closed.  Unset means no limit.",
        group="limits",
    )
    maxClientsPerAddress: int | None = _option(
        None,
        "Most connections served at once from one client address (after a PROXY header, "
        "the real client's; an IPv6 client's /64 network counts as one address); the next "
        "one gets ``421 <name> Error: too many connections from <address>`` and is closed "
        "(on an implicit-TLS listener it is closed at once, before its handshake), as with "
        "Postfix's client connection count limit.  So that one client cannot take every "
        "slot of ``maxClients``.  Unset means no limit.",
        group="limits",
    )
    socketTimeout: float = _option(
        60.0,
        "Seconds without traffic either way before ``421 Timeout - closing connection``, "
        "not counting the time the client waits for the handlers (their answer, RFC 5321 "
        "section 4.5.3.2.7, or a data handler taking the message).  It also bounds a "
        "command line, from its first byte, and is the head start a message gets under "
        "``minDataRate``; 0 turns all three off.",
        group="limits",
    )
    handlerTimeout: float = _option(
        300.0,
        "Seconds the client may wait for the handlers' answer (to the connection, to a "
        "command they check, to a message whose end has come), or for a data handler to "
        "take more of a message, before it gets ``421 Handler timeout - closing "
        "connection`` and is disconnected, whatever the handlers answer later.  The "
        "message is not accepted, so the client sends it again, even if a handler stored "
        "it in the meantime.  Five minutes is RFC 5321's least wait of a "
        "client for a reply (section 4.5.3.2) and Postfix's ``milter_content_timeout``; 0 "
        "turns the limit off.",
        group="limits",
    )
    closeTimeout: float = _option(
        30.0,
        "Seconds :meth:`SMTPServer.close` waits for clients in a transaction before closing "
        "them with ``421 Server shutting down``; 0 closes them at once.",
        group="limits",
    )
    maxAllowedUnauthenticatedCommands: int | None = _option(
        10,
        "Commands an unauthenticated client may send while AUTH is required before it gets "
        "``421``; the count includes the one refused.  Unset turns the limit off.",
        group="limits",
    )
    maxUnrecognizedCommands: int | None = _option(
        10,
        "Unrecognised commands a client may send before it gets ``421 Error: too many "
        "unrecognized commands``: those answered 500 or 502, over-long or invalid lines, "
        "and every command after a refused greeting (or a refusal after STARTTLS).  The "
        "count starts again after each message.  Unset turns the limit off.",
        group="limits",
    )
    maxErrors: int | None = _option(
        20,
        "Error replies (4xx and 5xx, to commands) a client may get before ``421 4.7.0 "
        "Error: too many errors`` instead of the last one, and the connection closes, as "
        "with Postfix's ``smtpd_hard_error_limit``.  A refused message counts as one "
        "error, and the recipients over ``maxRecipients`` as none.  The count starts "
        "again after each message accepted.  It does not apply in LMTP mode, whose client "
        "is the MTA, trusted (its refused recipients are no attack).  Unset turns the "
        "limit off.",
        group="limits",
    )
    maxJunkCommands: int | None = _option(
        100,
        "NOOP, RSET, VRFY and HELP commands a client may send before each one more "
        "counts as an error towards ``maxErrors``, as with Postfix's "
        "``smtpd_junk_command_limit``: a session of nothing else would hold its "
        "connection for ever.  The count starts again after each message accepted.  It "
        "does not apply in LMTP mode.  Unset turns the limit off.",
        group="limits",
    )
    forbidUnauthPipelining: bool = _option(
        False,
        "Close, with ``554 5.5.0 Error: SMTP protocol synchronization``, the connection of "
        "an unauthenticated client that sends more before the reply to a command it must "
        "wait for (RFC 2920 section 3.1: EHLO, HELO, LHLO, DATA, NOOP, VRFY, EXPN, TURN, "
        "QUIT, STARTTLS, a step of AUTH; any command but BDAT while PIPELINING is not "
        "offered: before EHLO, after HELO, or hidden), as Postfix's "
        "``smtpd_forbid_unauth_pipelining`` does.  Spam engines that do not read replies "
        "are caught; clients that follow the RFC never are.",
        group="limits",
    )
    minDataRate: int | None = _option(
        500,
        "Bytes per second a message must keep up once sent (after DATA, and over its BDAT "
        "chunks): it may take ``socketTimeout`` seconds plus one second per this many "
        "bytes, or the client gets ``421 4.4.2`` and is disconnected, as with Postfix's "
        "``smtpd_min_data_rate``.  Against clients that trickle a message a byte at a time "
        "to hold a connection for ever.  Unset turns the check off.",
        group="limits",
    )
    maxRecipients: int | None = _option(
        1000,
        "Recipients one transaction may have; RCPT beyond them gets ``452 4.5.3 Error: too "
        "many recipients`` (RFC 5321 section 4.5.3.1.10), and the client sends the rest in "
        "another transaction.  At least 100 (section 4.5.3.1.8); unset turns the limit off.",
        group="limits",
    )
    maxReceivedHeaders: int | None = _option(
        100,
        "A message whose header has this many ``Received:`` fields is refused as a mail "
        "loop with ``554 5.4.6`` (RFC 5321 section 6.3).  Unset turns the check off.",
        group="limits",
    )
    earlyTalkerDelay: float = _option(
        0.1,
        "Seconds the greeting waits; a client that talks before it gets "
        "``421 <name> You talk too soon``.  0 sends the greeting at once.",
        group="limits",
    )
    logLevel: str = _option(
        "info",
        "The least severe level of the events the server and its connections log "
        "(namespace ``smtpsvc``): those below it are not made at all, which saves what "
        "building them costs as well as their output.  At ``warn`` that is the line per "
        "connection and per message.  ``twist smtpsvc`` takes it from ``twist --log-level``.",
        choices=LOG_LEVELS,
        cli=False,
        cliForms=("twist --log-level LEVEL",),
    )

    # -- TLS -----------------------------------------------------------------------------
    secure: bool = _option(
        False,
        "Implicit TLS (RFC 8314, port 465): the handshake starts with the first byte and "
        "the greeting comes after it.",
        group="tls",
    )
    needsUpgrade: bool = _option(
        False,
        "Refuse every command but EHLO, HELO, LHLO, STARTTLS, NOOP, RSET and QUIT with "
        "``530 5.7.0 Must issue a STARTTLS command first`` until the connection is "
        "encrypted (RFC 3207 section 4).",
        group="tls",
    )
    hideSTARTTLS: bool = _option(False, "Do not advertise STARTTLS (it still works).", group="tls")
    key: bytes | str | None = _option(
        None,
        "The server's private key, PEM.  Without ``key`` and ``cert`` a self-signed "
        "development certificate for ``name`` is made at start and a warning is logged.",
        cli=False,
        cliForms=("--key FILE",),
        group="tls",
    )
    cert: bytes | str | None = _option(
        None,
        "The server's certificate, PEM, followed by its intermediate certificates.",
        cli=False,
        cliForms=("--cert FILE",),
        group="tls",
    )
    ca: bytes | str | None = _option(
        None,
        "CA certificates, PEM, that client certificates must chain to (with ``requestCert``).",
        cli=False,
        cliForms=("--ca FILE",),
        group="tls",
    )
    requestCert: bool = _option(
        False, "Ask clients for a certificate during the handshake.", group="tls"
    )
    rejectUnauthorized: bool = _option(
        True,
        "With ``requestCert``: refuse a client whose certificate is missing or does not "
        "chain to ``ca``.  When false such clients are served and "
        "``session.peerCertificateVerified`` says whether theirs verified.",
        group="tls",
    )
    minVersion: str = _option(
        "TLSv1.2",
        "Oldest TLS version accepted (RFC 8996 retired TLS 1.0 and 1.1).",
        choices=TLS_VERSIONS,
        group="tls",
    )
    maxVersion: str | None = _option(
        None,
        "Newest TLS version accepted; unset means the newest OpenSSL supports.",
        choices=TLS_VERSIONS,
        group="tls",
    )
    ciphers: str | None = _option(
        None,
        "OpenSSL cipher list for TLS 1.2 and older; unset keeps OpenSSL's defaults.",
        group="tls",
    )
    honorCipherOrder: bool = _option(
        True, "Prefer the server's order of ciphers to the client's.", group="tls"
    )
    sniOptions: Mapping[str, Mapping[str, bytes | str]] = _option(
        doc='Certificates by host name for SNI: ``{"mail.example.com": {"key": ..., '
        '"cert": ...}}``; ``*.example.com`` covers one label.  Unknown or absent names '
        "get the default certificate.",
        defaultFactory=dict,
        defaultText="none",
        cli=False,
        cliForms=("--sni HOST=CERT[,KEY]", "--sni-dir DIR"),
        group="tls",
    )
    SNICallback: Callable[[str], Mapping[str, bytes | str] | None] | None = _option(
        None,
        "Called with the SNI name of each handshake (lower case) instead of looking in "
        '``sniOptions``; return a ``{"key": ..., "cert": ...}`` mapping, or None for the '
        "default certificate.  It runs inside the handshake, so it must answer at once.",
        cli=False,
        group="tls",
    )

    # -- who is connecting: proxies and DNS ------------------------------------------------
    useProxy: bool | tuple[str, ...] = _option(
        False,
        "Read a PROXY protocol header (v1 or v2, as HAProxy sends it) before anything else: "
        "true (``*`` on the command line) for every connection, or a list of the proxies' "
        "addresses and networks (``10.0.0.0/8``) that must send one.  A header that is "
        "malformed, too long or late closes the connection; so does one from an address not "
        "in the list.",
        group="proxy",
    )
    proxyTimeout: float = _option(
        5.0, "Seconds to wait for the PROXY header before closing.", group="proxy"
    )
    useXClient: bool | tuple[str, ...] = _option(
        False,
        "Accept Postfix's XCLIENT (NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT) from "
        "every client (true, or ``*``) or from the listed addresses and networks: for a Postfix "
        "front end.  Others get ``550``.",
        group="proxy",
    )
    useXForward: bool | tuple[str, ...] = _option(
        False,
        "Accept Postfix's XFORWARD (NAME ADDR PORT PROTO HELO IDENT SOURCE) from every "
        "client (true, or ``*``) or from the listed addresses and networks: for a Postfix content "
        "filter.  Its attributes last until the end of the transaction.",
        group="proxy",
    )
    disableReverseLookup: bool = _option(
        False,
        "Do not look up the client's host name: ``clientHostname`` is ``[address]``.",
        group="proxy",
    )
    reverseLookupTimeout: float = _option(
        1.5,
        "Seconds the reverse DNS lookup may take before the greeting goes on without it.",
        group="proxy",
    )
    confirmReverseLookup: bool = _option(
        False,
        "Use the reverse DNS name only if it resolves back to the client's address "
        "(forward-confirmed reverse DNS).",
        group="proxy",
    )
    resolver: object = _option(
        None,
        "The ``twisted.internet.interfaces.IResolver`` for reverse lookups; unset uses "
        "``twisted.names`` with the system's name servers, and does not look up loopback "
        "addresses.",
        cli=False,
        group="proxy",
    )

    # -- authentication ------------------------------------------------------------------
    authMethods: tuple[str, ...] = _option(
        ("LOGIN", "PLAIN"),
        "SASL mechanisms offered, in this order: any of PLAIN, LOGIN, CRAM-MD5, XOAUTH2 "
        "and OAUTHBEARER.",
        group="auth",
    )
    authOptional: bool = _option(
        False,
        "Let clients send mail without authenticating (AUTH is still offered).",
        group="auth",
    )
    allowInsecureAuth: bool = _option(
        False,
        "Allow AUTH on a connection that is not encrypted.",
        group="auth",
    )
    authRequiredMessage: str = _option(
        "Error: authentication Required",
        "Text of the 530 reply sent for MAIL, RCPT, DATA and BDAT before authentication.",
        group="auth",
    )
    maxAuthFailures: int | None = _option(
        3,
        "Failed AUTH attempts a connection may make; the next failure gets ``421`` and "
        "the connection closes (RFC 4954 section 9).  Unset turns this off.",
        group="auth",
    )
    authFailureDelay: float = _option(
        1.0,
        "Seconds the reply to a failed AUTH waits, times the number of failures so far on "
        "the connection, to slow password guessing.  0 turns it off.",
        group="auth",
    )
    authFailureLimit: int | None = _option(
        10,
        "Failed AUTH attempts one client address (an IPv6 client's /64) may make within "
        "``authFailureWindow``; past that its AUTH gets ``454 4.7.0`` until old failures "
        "age out.  Unset turns this off.",
        group="auth",
    )
    authFailureWindow: float = _option(
        600.0,
        "The window, in seconds, over which ``authFailureLimit`` counts failures.",
        group="auth",
    )

    def __post_init__(self) -> None:
        # Normalise lists the way the reference does: command and mechanism names in
        # upper case.  The dataclass is frozen, hence object.__setattr__.
        object.__setattr__(
            self, "disabledCommands", tuple(c.upper() for c in _strings(self, "disabledCommands"))
        )
        object.__setattr__(
            self, "authMethods", tuple(m.upper() for m in _strings(self, "authMethods"))
        )
        if isinstance(self.name, str) and not self.name.isascii():
            # The greeting and the EHLO reply carry the name before the client could know
            # whether SMTPUTF8 is offered, so an internationalised one goes as A-labels
            # (RFC 6531 section 3.7.1); the Received header and the certificates too.
            object.__setattr__(self, "name", _aLabels(self.name))
        for name in ("useProxy", "useXClient", "useXForward"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = _strings(self, name)
            if isinstance(value, (list, tuple, set, frozenset)):
                object.__setattr__(self, name, _networks(name, value))
        for spec in optionSpecs():
            spec.check(getattr(self, spec.name))
        if self.resolver is not None and not callable(
            getattr(self.resolver, "lookupPointer", None)
        ):
            # Found out otherwise only at the first connection, which would get no greeting.
            raise ValueError(
                f"option resolver must be a twisted.internet.interfaces.IResolver, and "
                f"{self.resolver!r} has no lookupPointer method"
            )
        if self.maxVersion is not None and TLS_VERSIONS.index(self.minVersion) > TLS_VERSIONS.index(
            self.maxVersion
        ):
            # OpenSSL would take both and fail every handshake: "no protocols available".
            raise ValueError(
                f"option minVersion {self.minVersion} is newer than option maxVersion "
                f"{self.maxVersion}, which leaves no TLS version to use"
            )
        strangers = [c for c in self.disabledCommands if c not in DISABLEABLE_COMMANDS]
        if strangers:
            # A typo (EXNP) would leave the command it meant enabled, without a word.
            raise ValueError(
                f"option disabledCommands has unknown command {strangers[0]!r}; known are "
                f"{', '.join(sorted(DISABLEABLE_COMMANDS))}"
            )
        unknown = [m for m in self.authMethods if m not in AUTH_MECHANISMS]
        if unknown:
            raise ValueError(
                f"option authMethods has unknown mechanism {unknown[0]!r}; known are "
                f"{', '.join(AUTH_MECHANISMS)}"
            )
        if self.lmtp:
            # RFC 2033 section 5: an LMTP server MUST implement both.
            for name in ("hidePIPELINING", "hideENHANCEDSTATUSCODES"):
                if getattr(self, name):
                    raise ValueError(
                        f"option {name} cannot be set with option lmtp (an LMTP server must "
                        f"offer {name.removeprefix('hide')}, RFC 2033 section 5)"
                    )

    @property
    def authOffered(self) -> bool:
        """
        Whether EHLO offers AUTH: it is not among C{disabledCommands} and some mechanism
        is left in C{authMethods}.
        """
        return "AUTH" not in self.disabledCommands and bool(self.authMethods)

    @property
    def authRequired(self) -> bool:
        """
        Whether a client must authenticate before mail: AUTH is offered and not
        C{authOptional}.
        """
        return self.authOffered and not self.authOptional

    @property
    def enhancedStatusCodes(self) -> bool:
        """
        Whether replies carry RFC 3463 codes, after resolving the LMTP-dependent default.
        """
        if self.hideENHANCEDSTATUSCODES is None:
            return self.lmtp
        return not self.hideENHANCEDSTATUSCODES

    @classmethod
    def fromMapping(cls, options: Mapping[str, object]) -> ServerOptions:
        """
        Build options from a mapping of option names, refusing unknown names with a
        sentence that lists the known ones.
        """
        known = {spec.name for spec in optionSpecs()}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; known options are: {', '.join(sorted(known))}"
            )
        return cls(**options)  # type: ignore[arg-type]


def _networks(name: str, value: Iterable[object]) -> bool | tuple[str, ...]:
    # A list of trusted addresses and networks; "*" in it means everyone, as in the
    # reference's useProxy.
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"option {name} must list addresses as strings, not {item!r}")
        if item.strip() == "*":
            return True
        try:
            network = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as e:
            raise ValueError(
                f"option {name} must list addresses and networks, and {item!r} is neither"
            ) from e
        out.append(str(_unmapped(network)))
    return tuple(out)


_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def _unmapped(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # IPv4-mapped networks (::ffff:127.0.0.1, ::ffff:0:0/96) as the IPv4 ones they map:
    # a client address is compared as IPv4 once unmapped (a dual-stack socket's
    # ::ffff:a.b.c.d), and would never be in them otherwise.
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        address = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((address, network.prefixlen - 96))
    return network


def _aLabels(name: str) -> str:
    # The name option, internationalised, as A-labels (xn--...).
    try:
        return aLabels(name)
    except UnicodeError as e:
        raise ValueError(
            f"option name must be a host name, and {name!r} has no A-label form (IDNA): {e}"
        ) from None


#: A label of a host name: letters, digits and hyphens, neither first nor last, at most 63
#: (RFC 1123 section 2.1; RFC 5321's sub-domain; A-labels are of this form too).  Also
#: underscores, which real host names (mail_1.example.com) have and clients send as SNI.
HOST_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _checkServerName(name: str) -> None:
    # The name option goes into the greeting, the EHLO reply, Received headers and the
    # development certificate: a host name, by the rule SNI names are checked with
    # (smtpsvc._tls.checkedHostName), or an address literal (RFC 5321 section 4.1.3).
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        try:
            if literal.startswith("IPv6:"):
                ipaddress.IPv6Address(literal[len("IPv6:") :])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            pass
        else:
            return
    try:
        normalized = aLabels(name.strip().rstrip(".").lower())
    except UnicodeError:
        normalized = ""
    if len(normalized) > 253 or not all(HOST_LABEL.match(x) for x in normalized.split(".")):
        raise ValueError(
            f"option name must be a host name or an address literal such as [192.0.2.1], "
            f"and {name!r} is not a host name (labels of letters, digits, hyphens and "
            "underscores, joined by dots)"
        )


def _strings(options: ServerOptions, name: str) -> tuple[str, ...]:
    value = getattr(options, name)
    if isinstance(value, str):
        # A lone string is almost certainly a mistake for a one-element list; accept the
        # comma-separated form the command line uses.
        value = tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, (tuple, list, frozenset, set)) or not all(
        isinstance(item, str) for item in value
    ):
        raise ValueError(f"option {name} must be a list of strings, not {value!r}")
    return tuple(value)


_KINDS: Final = {
    "str": (str,),
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "bool | None": (bool, type(None)),
    "str | None": (str, type(None)),
    "tuple[str, ...]": (tuple,),
    "bool | tuple[str, ...]": (bool, tuple),
    "object": (object,),
    "bytes | str | None": (bytes, str, type(None)),
    "Mapping[str, Mapping[str, bytes | str]]": (Mapping,),
    # Callables are checked with callable(): isinstance() cannot say what they take.
    "Callable[[str], Mapping[str, bytes | str] | None] | None": (type(None),),
}


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """
    What the documentation and the command line need to know about one option.
    """

    name: str
    kind: str
    default: object
    defaultText: str | None
    doc: str
    choices: tuple[str, ...]
    cli: bool
    cliForms: tuple[str, ...]
    group: str

    @property
    def isFlag(self) -> bool:
        """
        Whether the command line has an on/off flag pair for this option (rather than a
        flag that takes a value).
        """
        return self.kind in ("bool", "bool | None")

    @property
    def flag(self) -> str:
        """
        The command-line flag, without dashes: ``maxClients`` becomes ``max-clients``.
        """
        return _kebab(self.name)

    @property
    def shownDefault(self) -> str:
        """
        The default as the documentation shows it.
        """
        if self.defaultText is not None:
            return self.defaultText
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, tuple):
            return ", ".join(self.default) if self.default else "none"
        if isinstance(self.default, str):
            return repr(self.default) if self.default else "empty"
        return str(self.default)

    def check(self, value: object) -> None:
        """
        Raise L{ValueError} when C{value} is not acceptable for this option.
        """
        allowed = _KINDS[self.kind]
        if self.kind.startswith("Callable") and callable(value):
            return
        # bool is a subclass of int: refuse True where a number is meant.
        if isinstance(value, bool) and bool not in allowed:
            raise ValueError(f"option {self.name} must be {self.kind}, not {value!r}")
        if not isinstance(value, allowed):
            raise ValueError(f"option {self.name} must be {self.kind}, not {value!r}")
        if self.choices and value is not None and value not in self.choices:
            raise ValueError(
                f"option {self.name} must be one of {', '.join(self.choices)}, not {value!r}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            # float() reads nan, inf and 1e400 too: none of them is a time or a rate, and
            # a timer of nan seconds fails on every connection.
            raise ValueError(f"option {self.name} must be a finite number, not {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"option {self.name} must not be negative, not {value!r}")
        if (
            self.name
            in (
                "maxClients",
                "maxClientsPerAddress",
                "maxCommandLength",
                "maxLocalPartLength",
                "authFailureLimit",
                "maxReceivedHeaders",
                "maxErrors",
            )
            and isinstance(value, int)
            and value < 1
        ):
            raise ValueError(f"option {self.name} must be at least 1, not {value!r}")
        if self.name == "maxLocalPartLength" and isinstance(value, int) and value > 252:
            # An address is at most 254 octets (RFC 5321 section 4.5.3.1.3's path, less
            # its brackets), with an @ and a domain of at least one.
            raise ValueError(
                f"option maxLocalPartLength must be at most 252 (an address's length "
                f"leaves no more), not {value!r}; unset takes any"
            )
        if self.name == "maxRecipients" and isinstance(value, int) and value < 100:
            raise ValueError(
                f"option maxRecipients must be at least 100 (RFC 5321 section 4.5.3.1.8), "
                f"not {value!r}"
            )
        if self.name == "name" and isinstance(value, str):
            _checkServerName(value)
        if self.kind == "str" and any(c in str(value) for c in "\r\n\x00"):
            raise ValueError(f"option {self.name} must not contain CR, LF or NUL")


def _kebab(name: str) -> str:
    # Split before an upper-case letter or a digit that follows a lower-case letter, so
    # that runs of capitals stay whole: hide8BITMIME -> hide-8bitmime,
    # useXClient -> use-xclient, maxClients -> max-clients.
    return re.sub(r"(?<=[a-z])(?=[A-Z0-9])", "-", name).lower()


def _spec(f: Field[Any]) -> OptionSpec:
    default = f.default if f.default is not MISSING else None
    return OptionSpec(
        name=f.name,
        kind=str(f.type),
        default=default,
        defaultText=f.metadata["defaultText"],
        doc=f.metadata["doc"],
        choices=f.metadata["choices"],
        cli=f.metadata["cli"],
        cliForms=f.metadata["cliForms"],
        group=f.metadata["group"],
    )


_SPECS: Final = tuple(_spec(f) for f in fields(ServerOptions))


def optionSpecs() -> Iterator[OptionSpec]:
    """
    Every option, in declaration order.
    """
    return iter(_SPECS)
