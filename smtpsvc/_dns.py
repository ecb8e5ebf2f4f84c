"""
Reverse DNS for the client's host name, asynchronously with twisted.names, bounded in
time, optionally forward-confirmed.
"""

from __future__ import annotations

# twisted.names encodes names with the "idna" codec, which Python imports on first use.
# Import it now: a service that drops privileges (twistd --uid) may no longer be able to
# read the interpreter's library by the time the first client connects.
import encodings.idna  # noqa: F401
import ipaddress
from typing import Any, Final

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorUDP
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure

from ._core._grammar import isValidHeloName

_log = Logger(namespace="smtpsvc.dns")


def systemNameservers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """
    The name servers of the system's resolver configuration (localhost if none).
    """
    servers: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        ipaddress.ip_address(words[1].split("%")[0])
                    except ValueError:
                        continue
                    servers.append((words[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def defaultResolver(reactor: Any) -> Any:
    """
    A twisted.names resolver for the system's name servers, or L{None} when the reactor
    cannot send UDP (a test clock), in which case no lookup is made.
    """
    if not IReactorUDP.providedBy(reactor):
        return None
    from twisted.names.client import Resolver

    # Given the servers explicitly, the resolver does not keep re-reading resolv.conf on
    # a timer, which would outlive the server.
    return Resolver(servers=systemNameservers(), reactor=reactor)


def _names(result: Any, kind: int) -> list[str]:
    answers = result[0] if isinstance(result, tuple) else []
    out = []
    for record in answers:
        if record.type == kind and record.type == dns.PTR:
            out.append(record.payload.name.name.decode("ascii", "replace"))
        elif record.type == kind:
            out.append(record.payload.dottedQuad() if kind == dns.A else _ipv6(record.payload))
    return out


def _ipv6(payload: Any) -> str:
    return str(ipaddress.IPv6Address(payload.address))


def reverseLookup(
    resolver: Any, reactor: Any, address: str, timeout: float, confirm: bool
) -> Deferred[str | None]:
    """
    The host name of C{address}: its first PTR name, lower case, if it is a usable host
    name (and, with C{confirm}, resolves back to C{address}); L{None} otherwise, or when
    the lookup fails or takes longer than C{timeout} seconds.  Never fails.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return succeed(None)
    # A resolver that raises instead of failing its Deferred is still only a failed lookup.
    d: Deferred[Any] = maybeDeferred(resolver.lookupPointer, ip.reverse_pointer)

    def named(result: Any) -> Deferred[str | None] | str | None:
        for name in _names(result, dns.PTR):
            name = name.rstrip(".").lower()
            if name and isValidHeloName(name):
                return _confirm(resolver, name, ip) if confirm else name
        return None

    def failed(failure: Failure) -> None:
        _log.info(
            "Reverse lookup of {address} failed: {reason}",
            address=address,
            reason=_reason(failure),
        )
        return None

    # The bound covers the whole lookup, forward confirmation included.
    d.addCallback(named)
    d.addTimeout(timeout, reactor)
    return d.addErrback(failed)


def _confirm(resolver: Any, name: str, ip: Any) -> Deferred[str | None]:
    lookup = resolver.lookupAddress if ip.version == 4 else resolver.lookupIPV6Address
    kind = dns.A if ip.version == 4 else dns.AAAA

    def check(result: Any) -> str | None:
        confirmed = any(ipaddress.ip_address(a) == ip for a in _names(result, kind))
        return name if confirmed else None

    d: Deferred[str | None] = maybeDeferred(lookup, name).addCallback(check)
    return d


# Twisted's DNS errors carry the whole answer as their message: say what it means instead.
_DNS_ERRORS: Final = (
    (error.DNSNameError, "no such name (NXDOMAIN)"),
    (error.DNSServerError, "name server failure (SERVFAIL)"),
    (error.DNSQueryRefusedError, "query refused (REFUSED)"),
    (error.DNSFormatError, "format error (FORMERR)"),
    (error.DNSNotImplementedError, "not implemented (NOTIMP)"),
)


def _reason(failure: Failure) -> str:
    # Why a lookup failed, in words for the log.
    for kind, text in _DNS_ERRORS:
        if failure.check(kind):
            return text
    return failure.getErrorMessage() or repr(failure.value)
