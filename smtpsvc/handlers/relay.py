"""
The relay policy: mail for the server's own domains from anyone, mail for anywhere else
only from authenticated clients.  Open relaying is never a default (RFC 5321 section 3.6,
RFC 2505).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from zope.interface import implementer

from .._core._grammar import ipv6Text, isAddressLiteral
from .._core._session import Address, Session
from .._errors import SMTPError
from .._tls import checkedHostName, normalizeServerName
from ..interfaces import IRcptToHandler

# What makes a local part a route to somewhere else: the percent hack, UUCP's bang path,
# and an address inside the quotes.
_ROUTING = frozenset("@%!")


@implementer(IRcptToHandler)
class RelayPolicy:
    """
    An L{IRcptToHandler} that accepts recipients in C{domains} from any client and
    others only from authenticated ones (C{550 Relay access denied} [5.7.1]).

    A domain written C{.example.com} covers every subdomain of example.com (but not
    example.com itself).  Domains are compared in lower case, as A-labels, so
    C{bücher.example} and C{xn--bcher-kva.example} are the same.  The bare
    C{<Postmaster>} of RFC 5321 section 4.5.1 is always accepted.
    """

    def __init__(self, domains: Iterable[str]) -> None:
        """
        @raise ValueError: for a domain that no address can have (C{*.example.com},
            C{bad domain}, C{@example.com}): mail for it would be refused.
        """
        self.domains: set[str] = set()
        self.suffixes: tuple[str, ...] = ()
        suffixes = []
        for domain in domains:
            name = _checkedDomain(domain)
            if name.startswith("."):
                suffixes.append(name)
            else:
                self.domains.add(name)
        self.suffixes = tuple(suffixes)

    def isLocal(self, address: str) -> bool:
        """
        Whether mail for C{address} is for one of our domains.  An address that routes
        onwards from its local part (C{u%other.example@ours}, C{u!other.example@ours},
        C{"u@other.example"@ours}) is not, nor is one whose domain ends with a dot: a
        server we forward to may read them as mail for elsewhere (standards 2.7; as
        Postfix's C{allow_untrusted_routing = no}).
        """
        local, at, domain = address.rpartition("@")
        if not at:
            # <Postmaster> with no domain is always ours.
            return address.lower() == "postmaster"
        if _ROUTING.intersection(local) or domain.endswith("."):
            return False
        if domain.startswith("["):
            return _literal(domain) in self.domains
        try:
            name = normalizeServerName(domain)
        except UnicodeError:
            return False
        return name in self.domains or name.endswith(self.suffixes)

    def onRcptTo(self, address: Address, session: Session) -> None:
        if session.user is not None or self.isLocal(address.address):
            return
        raise SMTPError(550, "5.7.1 Relay access denied")


def _checkedDomain(domain: str) -> str:
    # A domain of the policy as isLocal compares it: a host name, .example.com for its
    # subdomains, or an address literal such as [192.0.2.1] (RFC 5321 section 4.1.3).
    text = domain.strip()
    if text.startswith("["):
        literal = _literal(text)
        if literal is None or not isAddressLiteral(text):
            # (One no recipient's address could have: RFC 5321's grammar is stricter
            # than ipaddress, which takes zone indices and a seventh group beside "::".)
            raise ValueError(f"{domain!r} is not a domain: not an address literal")
        return literal
    if text.startswith("*."):
        # The --sni syntax, which would match nothing here.
        raise ValueError(
            f"{domain!r} is not a domain: write {text[1:]} for the subdomains of {text[2:]}"
        )
    suffix = "." if text.startswith(".") else ""
    try:
        return suffix + checkedHostName(text.removeprefix(suffix))
    except ValueError as e:
        raise ValueError(f"{domain!r} is {e}") from None


def _literal(text: str) -> str | None:
    # An address literal (RFC 5321 section 4.1.3) as the policy compares it, whichever
    # way its address is written ([IPv6:2001:db8:0:0::1] is [ipv6:2001:db8::1]); None for
    # one that is not: no closing bracket, not an address, an IPv6 one without its tag.
    if not text.endswith("]"):
        return None
    inner = text[1:-1]
    tagged = inner[:5].lower() == "ipv6:"
    try:
        address = ipaddress.ip_address(inner[5:] if tagged else inner)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return f"[ipv6:{ipv6Text(address)}]" if tagged else None
    return None if tagged else f"[{address}]"
