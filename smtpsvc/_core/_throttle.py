"""
The per-client-address budget of failed AUTH attempts.

Each client address may fail AUTH a number of times within a sliding window; past that,
AUTH is refused for it (``454 4.7.0``) until old failures leave the window.  Memory is
bounded: each address keeps at most C{limit} timestamps and at most C{maxAddresses}
addresses are tracked, the least recently failing forgotten first.  Time is passed in,
so this is pure and testable.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

from ._grammar import unmapped


class FailureBudget:
    """
    Counts failures per address over a sliding window.
    """

    def __init__(self, limit: int, window: float, maxAddresses: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.maxAddresses = maxAddresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def allowed(self, address: str, now: float) -> bool:
        """
        Whether C{address} may try AUTH now.
        """
        times = self._recent(address, now)
        return times is None or len(times) < self.limit

    def failed(self, address: str, now: float) -> None:
        """
        Record a failed AUTH from C{address}.
        """
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)
        self._failures.move_to_end(address)
        while len(self._failures) > self.maxAddresses:
            self._failures.popitem(last=False)


def clientNetwork(address: str) -> str:
    """
    What counts as one client for limits per address: an IPv4 address itself (an
    IPv4-mapped IPv6 one as IPv4), an IPv6 address's /64 network (one site's, RFC 6177:
    a client given one has all of it), anything else as it is.
    """
    try:
        ip = unmapped(ipaddress.ip_address(address))
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
