"""
The grammar of command arguments: paths, mailboxes, ESMTP parameters, xtext, HELO names.

Everything here is a pure function of its input that either returns a value or raises
L{GrammarError}; nothing here knows about replies or session state.  The rules quoted
beside the checks are RFC 5321 section 4.1.2 unless they say otherwise.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from typing import Final

import idna


class GrammarError(ValueError):
    """
    The text does not follow the grammar; the message says why, for logs.
    """


class ParameterError(GrammarError):
    """
    The parameters after a MAIL or RCPT path do not follow the grammar (the path may):
    the client's fault is its parameters, not its address.

    @ivar repeated: the keyword given twice, when that is the fault.
    """

    def __init__(self, message: str, repeated: str | None = None) -> None:
        super().__init__(message)
        self.repeated = repeated


class LocalPartTooLong(GrammarError):
    """
    An address whose local part is longer than the limit (RFC 5321's 64 octets, section
    4.5.3.1.1, unless maxLocalPartLength says otherwise), well formed otherwise as far as
    it was read.
    """


# Characters refused anywhere in an address, even in lenient mode: C0 and C1 controls,
# DEL, and the invisible characters that let one address pass for another (the
# reference refuses the same set).
_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\u200b\u2060\ufeff]")

# atext (RFC 5322 section 3.2.3).  RFC 6531 adds UTF8-non-ascii, checked separately.
_ATEXT: Final = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
#: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"), also the ehlo-keyword of a
#: downstream's EHLO reply (RFC 5321 section 4.1.1.1).
KEYWORD: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
#: An RFC 3463 status-code (class "." subject "." detail) at the start of reply text,
#: followed by a space or the end of the text.  Its digits are ASCII only: \d would also
#: take other scripts' digits, which go out on the wire as "?".
ENHANCED_STATUS: Final = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")
_LABEL: Final = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff]([A-Za-z0-9\u0080-\U0010ffff-]*[A-Za-z0-9\u0080-\U0010ffff])?\Z"
)
# The common shapes, checked in one regular expression before the general checks: an
# ASCII Dot-string local part, and a domain of ASCII labels none of which is punycode
# (labels of at most 63 characters, letters, digits and inner hyphens).
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ASCII_DOT_STRING: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_PLAIN_DOMAIN: Final = re.compile(
    r"(?!.*(?:^|\.)[Xx][Nn]--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)
# A path of those shapes, right after "MAIL FROM:" or "RCPT TO:", and what may follow it
# (a space, or the end of the line).  A label is not punycode: those are checked fully.
_LABEL_ASCII: Final = r"(?![Xx][Nn]--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_COMMON_PATH: Final = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*)@({_LABEL_ASCII}(?:\.{_LABEL_ASCII})*)>(?= |\Z)"
)
# Snum = 1*3DIGIT: ASCII digits only (a str pattern's \d would also match other scripts').
_IPV4: Final = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_XTEXT_HEX: Final = re.compile(r"\+([0-9A-Fa-f]{2})")

# RFC 5321 section 4.5.3.1: local part 64 octets, domain 255, path 256 with brackets.
MAX_LOCAL_PART: Final = 64
MAX_DOMAIN: Final = 255
MAX_MAILBOX: Final = 254


@dataclass(slots=True)
class PathCommand:
    """
    A MAIL or RCPT command split into its path and its parameters.

    @ivar path: the text between the angle brackets, unvalidated.
    @ivar params: keyword (upper case) to value; L{None} for a keyword with no C{=}.
        Values are xtext-decoded leniently.
    @ivar raw: the same values as sent, for parameters whose value must be strict xtext.
    """

    path: str
    params: dict[str, str | None]
    raw: dict[str, str | None]


def splitPathCommand(line: str, keyword: str) -> PathCommand:
    """
    Split C{MAIL FROM:<path> params} (or C{RCPT TO:...}) into path and parameters.

    The text before the first colon, trimmed, must be C{keyword} in any case: this
    accepts C{MAIL FROM: <a@b>} (a space after the colon is a common client habit that
    RFC 5321 forbids but Postfix and the reference accept) and refuses C{MAIL  FROM:}.

    @param keyword: C{"MAIL FROM"} or C{"RCPT TO"}.
    @raise GrammarError: when the line does not have that shape.
    """
    head, colon, rest = line.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise GrammarError(f"expected {keyword}:<path>")
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        raise GrammarError("path must be enclosed in angle brackets")
    end = _pathEnd(rest)
    path = rest[1:end]
    tail = rest[end + 1 :]
    if tail and not tail.startswith(" "):
        raise GrammarError("text after the path must be separated by a space")
    return _pathCommand(path, tail)


def _pathCommand(path: str, tail: str) -> PathCommand:
    # The command, from its path and what followed it (empty or starting with a space).
    if not tail:
        return PathCommand(path, {}, {})
    raw = parseParameters(tail)
    params = {}
    for key, value in raw.items():
        if value is not None:
            value = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
            if _FORBIDDEN.search(value):
                raise ParameterError(f"control character in parameter {key}")
        params[key] = value
    return PathCommand(path, params, raw)


def parsePathCommand(
    line: str,
    keyword: str,
    *,
    lenient: bool = False,
    allowPostmaster: bool = False,
    maxLocalPart: int | None = MAX_LOCAL_PART,
) -> tuple[str, PathCommand]:
    """
    L{splitPathCommand}, then L{parseMailbox} on the path: the mailbox and the command.

    The commonest lines (C{MAIL FROM:<user@example.com>}, perhaps with parameters) are
    recognised by one regular expression, with the same results; any other line goes
    through the general checks.

    @raise GrammarError: as either of them would.
    """
    start = len(keyword) + 1
    if line[: start - 1].upper() == keyword and line[start - 1 : start] == ":":
        match = _COMMON_PATH.match(line, start)
        if match is not None:
            local, domain = match.group(1, 2)
            if (
                len(local) <= (maxLocalPart or MAX_MAILBOX)
                and len(domain) <= MAX_DOMAIN
                and len(local) + len(domain) < MAX_MAILBOX
            ):
                path = line[start + 1 : match.end() - 1]
                return path, _pathCommand(path, line[match.end() :])
    command = splitPathCommand(line, keyword)
    mailbox = parseMailbox(
        command.path, lenient=lenient, allowPostmaster=allowPostmaster, maxLocalPart=maxLocalPart
    )
    return mailbox, command


def _pathEnd(text: str) -> int:
    # Find the ">" that closes the path, skipping over quoted strings, where ">" and
    # spaces are ordinary characters (RFC 5321 Quoted-string).
    end = text.find(">", 1)
    if end > 0:
        inner = text[1:end]
        if '"' not in inner and "<" not in inner and " " not in inner:
            # No quotes before the first ">": it is the end (the common case).
            return end
    return _scanPathEnd(text)


def _scanPathEnd(text: str) -> int:
    i = 1
    inQuotes = False
    while i < len(text):
        c = text[i]
        if inQuotes:
            if c == "\\":
                i += 1
            elif c == '"':
                inQuotes = False
        elif c == '"':
            inQuotes = True
        elif c == "<":
            raise GrammarError("unexpected < inside the path")
        elif c == ">":
            return i
        elif c == " ":
            raise GrammarError("space inside the path")
        i += 1
    raise GrammarError("path is not closed with >")


def parseParameters(text: str) -> dict[str, str | None]:
    """
    Parse C{ SIZE=100 BODY=8BITMIME SMTPUTF8} into a dictionary of raw values.

    Keywords are upper-cased and must follow esmtp-keyword; a repeated keyword is an
    error (RFC 3461 section 4 forbids repeating its parameters, and a repeat of any other
    is at best ambiguous).  A keyword without C{=} maps to L{None}.  L{splitPathCommand}
    decodes the values: only well-formed C{+XX} sequences, leniently, as the reference
    does; control characters after decoding are refused because they would end up in logs
    and trace headers.
    """
    params: dict[str, str | None] = {}
    # Only SP separates parameters: str.split() would also split on tabs, C0 separators
    # and Unicode spaces, letting control characters through as separators.
    for item in text.split(" "):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not KEYWORD.match(key):
            raise ParameterError(f"bad parameter keyword {key!r}")
        key = key.upper()
        if key in params:
            raise ParameterError(f"parameter {key} given twice", repeated=key)
        params[key] = value if eq else None
    return params


def decodeXtext(value: str) -> str:
    """
    Decode RFC 3461 section 4 xtext strictly: every C{+} must start C{+XX} with two hex
    digits, and the raw text must be printable ASCII other than C{=}.

    @raise GrammarError: when C{value} is not xtext.
    """
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or not all(h in string.hexdigits for h in pair):
                raise GrammarError("bad xtext escape")
            out.append(chr(int(pair, 16)))
            i += 3
            continue
        if not ("!" <= c <= "~") or c == "=":
            raise GrammarError("bad xtext character")
        out.append(c)
        i += 1
    return "".join(out)


def parseMailbox(
    path: str,
    *,
    lenient: bool = False,
    allowPostmaster: bool = False,
    maxLocalPart: int | None = MAX_LOCAL_PART,
) -> str:
    """
    Validate the text between the angle brackets of a path and return the mailbox.

    Returns C{""} for the null path C{<>}.  A source route (C{@a.example,@b.example:}) is
    parsed and dropped, as RFC 5321 section 4.1.1.3 says a server SHOULD.  IPv6 address
    literals come back in their compressed lower-case form.  Everything else comes back as
    sent: the local part keeps its case and its quotes, and punycode stays punycode.

    @param lenient: accept any text with one C{@} and both sides non-empty (controls
        still refused): the reference's C{lenientAddressParsing}.
    @param allowPostmaster: accept the bare C{<Postmaster>} that RFC 5321 section 4.5.1
        requires for RCPT.
    @param maxLocalPart: the longest local part accepted, in octets (L{LocalPartTooLong}
        beyond); L{None} for any, within the mailbox's 254 octets.
    @raise GrammarError: when the path is not valid.
    """
    if path == "":
        return ""
    # Printable ASCII holds none of the forbidden characters: skip the search then.
    if not (path.isascii() and path.isprintable()) and _FORBIDDEN.search(path):
        raise GrammarError("control or invisible character in address")
    if path.startswith("@"):
        route, colon, path = path.partition(":")
        if not colon:
            raise GrammarError("source route without a mailbox")
        if not lenient:
            for hop in route.split(","):
                if not hop.startswith("@"):
                    raise GrammarError("bad source route")
                _checkDomain(hop[1:])
    if allowPostmaster and path.lower() == "postmaster":
        return path
    if lenient:
        local, at, domain = path.rpartition("@")
        if not at or not local or not domain or ("@" in local and not local.startswith('"')):
            raise GrammarError("address must have one @ with text on both sides")
        return path
    local, domain = _splitMailbox(path)
    _checkLocalPart(local, maxLocalPart or MAX_MAILBOX)
    domain = _checkDomain(domain)
    mailbox = f"{local}@{domain}"
    if len(mailbox.encode("utf-8")) > MAX_MAILBOX:
        raise GrammarError("address too long")
    return mailbox


def _splitMailbox(path: str) -> tuple[str, str]:
    if path.startswith('"'):
        i = 1
        while i < len(path):
            c = path[i]
            if c == "\\":
                # quoted-pairSMTP = %d92 %d32-126
                if i + 1 >= len(path) or not (" " <= path[i + 1] <= "~"):
                    raise GrammarError("bad quoted pair")
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise GrammarError("unterminated quoted local part")
        local, rest = path[: i + 1], path[i + 1 :]
        if not rest.startswith("@"):
            raise GrammarError("quoted local part must be followed by @")
        return local, rest[1:]
    local, at, domain = path.partition("@")
    if not at:
        raise GrammarError("address has no @")
    return local, domain


def _checkLocalPart(local: str, limit: int = MAX_LOCAL_PART) -> None:
    if len(local) <= limit and _ASCII_DOT_STRING.match(local):
        return
    _checkLocalPartFully(local, limit)


def _checkLocalPartFully(local: str, limit: int = MAX_LOCAL_PART) -> None:
    if len(local.encode("utf-8")) > limit:
        raise LocalPartTooLong(f"local part longer than {limit} octets")
    if local.startswith('"'):
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii (RFC 6531);
        # the quoted pairs were checked when the quotes were found.
        body = local[1:-1]
        i = 0
        while i < len(body):
            c = body[i]
            if c == "\\":
                i += 2
                continue
            if c == '"' or (c < " ") or c == "\x7f":
                raise GrammarError("bad character in quoted local part")
            i += 1
        return
    # Dot-string = Atom *("." Atom): no empty atoms, so no leading, trailing or double dot.
    if not local:
        raise GrammarError("empty local part")
    for atom in local.split("."):
        if not atom:
            raise GrammarError("empty atom in local part")
        for c in atom:
            if c not in _ATEXT and c < "\x80":
                raise GrammarError(f"character {c!r} not allowed in local part")


def _checkDomain(domain: str) -> str:
    if not domain:
        raise GrammarError("empty domain")
    if domain.startswith("["):
        return _checkAddressLiteral(domain)
    if len(domain) <= MAX_DOMAIN and _PLAIN_DOMAIN.match(domain):
        return domain
    return _checkDomainFully(domain)


def _checkDomainFully(domain: str) -> str:
    if domain.startswith("["):
        return _checkAddressLiteral(domain)
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise GrammarError("domain longer than 255 octets")
    for label in domain.split("."):
        # sub-domain = Let-dig [Ldh-str]: letters, digits and inner hyphens; RFC 6531
        # adds U-labels.  Underscores are refused, as the reference refuses them.
        if not label or len(label) > 63 or not _LABEL.match(label):
            raise GrammarError(f"bad domain label {label!r}")
        if label[:4].lower() == "xn--":
            try:
                label[4:].encode("ascii").decode("punycode")
            except (UnicodeError, ValueError) as e:
                raise GrammarError(f"bad punycode label {label!r}") from e
    return domain


def unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """
    C{address}, or the IPv4 address an IPv4-mapped IPv6 one maps (C{::ffff:a.b.c.d}: how
    a dual-stack socket or proxy names an IPv4 client), so that one client has one
    address for every limit, list and header.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ipv6Text(address: ipaddress.IPv6Address) -> str:
    """
    An IPv6 address as RFC 5952 writes it: compressed, in lower case, and an IPv4-mapped
    one with its IPv4 part dotted (section 5: C{::ffff:192.0.2.1}), which Python before
    3.13 writes in hexadecimal.
    """
    mapped = address.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else address.compressed


def isAddressLiteral(text: str) -> bool:
    """
    Whether C{text} is an address literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}) that
    RFC 5321's grammar (section 4.1.3) accepts in an address.
    """
    if not text.startswith("["):
        return False
    try:
        _checkAddressLiteral(text)
    except GrammarError:
        return False
    return True


def _checkAddressLiteral(literal: str) -> str:
    if not literal.endswith("]"):
        raise GrammarError("address literal not closed")
    inner = literal[1:-1]
    match = _IPV4.match(inner)
    if match:
        if any(int(part) > 255 for part in match.groups()):
            raise GrammarError("bad IPv4 address literal")
        return literal
    tag, colon, value = inner.partition(":")
    if colon and tag.lower() == "ipv6":
        # ipaddress accepts zone indices ("%eth0") that RFC 5321's grammar does not.
        if "%" in value:
            raise GrammarError("bad IPv6 address literal")
        try:
            address = ipaddress.IPv6Address(value)
        except ValueError as e:
            raise GrammarError("bad IPv6 address literal") from e
        # RFC 5321's IPv6-comp and IPv6v4-comp allow at most 6 groups besides the "::"
        # (an IPv4 tail counts as 2), where ipaddress follows RFC 4291 and allows 7.
        if "::" in value:
            groups = [group for group in value.split(":") if group]
            if len(groups) + (1 if groups and "." in groups[-1] else 0) > 6:
                raise GrammarError("bad IPv6 address literal")
        return f"[IPv6:{ipv6Text(address)}]"
    # General-address-literal needs a tag registered with IANA; none is.
    raise GrammarError("unsupported address literal")


def isValidHeloName(name: str) -> bool:
    """
    Whether C{name} may be the argument of HELO, EHLO or LHLO.

    RFC 5321 asks for a Domain or an address literal, but real clients send names with
    underscores and other oddities, so this checks only what keeps trace headers and logs
    safe: printable ASCII (RFC 6531 section 3.7.1 keeps EHLO ASCII even with SMTPUTF8)
    without the characters that have meaning in a header (RFC 5322 specials other than
    the dot, the colon and the brackets of a literal), and no longer than a domain may be
    (255 octets, RFC 5321 section 4.5.3.1.2), so that the Received field it goes into
    stays within RFC 5322's line length.
    """
    return (
        0 < len(name) <= _HELO_MAX
        and name.isascii()
        and name.isprintable()
        and not _HELO_BAD.search(name)
    )


def aLabels(name: str) -> str:
    """
    A host name with each label that is not ASCII as its A-label (C{xn--...}): IDNA 2008
    (RFC 5891, with UTS 46's mapping, not its transitional processing), as registries
    and current resolvers have it.  Python's own C{"idna"} codec is IDNA 2003, which maps
    rather than encodes: C{faß.de} would become C{fass.de}, another domain.

    @raise UnicodeError: for a label that has no A-label form (C{idna.IDNAError}: a
        character IDNA 2008 does not allow, a joiner out of its context, too long).
    """
    if name.isascii():
        return name
    return ".".join(
        label if label.isascii() else idna.encode(label, uts46=True).decode("ascii")
        for label in name.split(".")
    )


def heloName(name: str) -> str | None:
    """
    The name a HELO, EHLO or LHLO argument gives the client, or L{None} when
    L{isValidHeloName} refuses it.  A name with U-labels is taken in its A-label form:
    RFC 6531 section 3.7.1 asks clients for ASCII, yet some send their machine's name as
    it is (standards 6531-10 allows either refusing or converting it); it is refused only
    when it has none.
    """
    if not name.isascii():
        try:
            name = aLabels(name)
        except UnicodeError:
            return None
    return name if isValidHeloName(name) else None


_HELO_BAD: Final = re.compile(r'[\s<>()"\\;,@]')
_HELO_MAX: Final = 255
