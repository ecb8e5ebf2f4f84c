"""
The reactor a library object uses, and how it runs blocking work.

Objects take the reactor as an argument; only when none is given do they fall back to
the global one, imported then and not when this package is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool

_T = TypeVar("_T")


def reactorOr(reactor: Any) -> Any:
    """
    C{reactor}, or the global reactor when it is L{None}.

    @raise TypeError: when C{reactor} has no C{callLater} and C{seconds}.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        return globalReactor
    if not (
        callable(getattr(reactor, "callLater", None))
        and callable(getattr(reactor, "seconds", None))
    ):
        # Found out otherwise only at the first timer or listener, far from the mistake.
        raise TypeError(
            f"reactor must be a Twisted reactor (or a twisted.internet.task.Clock), not {reactor!r}"
        )
    return reactor


def threadRunner(reactor: Any) -> Callable[[Callable[[], _T]], Deferred[_T]]:
    """
    How to run blocking work for C{reactor} (the global one if L{None}): in its thread
    pool, or at once for a reactor without threads (a test clock).
    """
    reactor = reactorOr(reactor)
    if not hasattr(reactor, "getThreadPool"):
        return _atOnce

    def inThread(f: Callable[[], _T]) -> Deferred[_T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    return inThread


def _atOnce(f: Callable[[], _T]) -> Deferred[_T]:
    try:
        return succeed(f())
    except Exception:
        return fail()
