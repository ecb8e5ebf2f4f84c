"""
Helpers for tests that deliver into a Maildir: run L{MaildirDelivery}'s blocking work at
once instead of in a thread, talk to an in-memory server that delivers into one, and read
back what it stored.
"""

from __future__ import annotations

import mailbox
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from smtpsvc import SMTPServer
from smtpsvc.handlers.maildir import DEFAULT_MIN_FREE, MaildirDelivery
from smtpsvc.testing import MemoryClient


def runNow(work: Callable[[], Any]) -> Deferred[Any]:
    """
    Run a Maildir's blocking work at once, in this thread (its C{runInThread}); its
    exception is a failed Deferred, as from a thread.
    """
    try:
        return succeed(work())
    except Exception:
        return fail()


def maildirClient(
    path: str,
    *,
    runInThread: Callable[[Callable[[], Any]], Deferred[Any]] = runNow,
    minFree: int = DEFAULT_MIN_FREE,
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    **options: Any,
) -> MemoryClient:
    """
    A client that has said EHLO to an in-memory server named C{mx.test} (on a L{Clock},
    AUTH optional, with C{options}) that delivers into the Maildir at C{path} with a
    L{MaildirDelivery} named C{mx.test} too.

    @param runInThread: how the delivery runs its blocking work (at once by default).
    @param minFree: the delivery's reserve of free space.
    @param statvfs: how the delivery looks up the free space.
    """
    delivery = MaildirDelivery(
        path, serverName="mx.test", runInThread=runInThread, minFree=minFree, statvfs=statvfs
    )
    server = SMTPServer([delivery], reactor=Clock(), name="mx.test", authOptional=True, **options)
    client = MemoryClient(server)
    client.send("EHLO client.example")
    return client


def delivered(path: str) -> dict[str, bytes]:
    """
    The messages in the Maildir at C{path}, by file name, as C{mailbox.Maildir} reads them.
    """
    box = mailbox.Maildir(path, factory=None, create=False)
    return {name: box.get_bytes(name) for name in box.iterkeys()}


def storedMessages(path: str) -> list[bytes]:
    """
    The messages in the Maildir at C{path}, in the order of their file names.
    """
    return [message for _, message in sorted(delivered(path).items())]


def receivedHeader(stored: bytes) -> bytes:
    """
    The C{Received:} header at the top of a delivered message, unfolded.
    """
    match = re.search(rb"^Received: .*?(?=\r\n[^ \t])", stored, re.MULTILINE | re.DOTALL)
    assert match is not None, stored
    return re.sub(rb"\r\n[ \t]+", b" ", match.group(0))


def withClause(header: bytes) -> str:
    """
    The protocol that an unfolded C{Received:} header (L{receivedHeader}) names in its
    C{with} clause (RFC 3848): C{ESMTPS}, C{UTF8SMTPA}...
    """
    match = re.search(rb" with (\S+) id ", header)
    assert match is not None, header
    return match.group(1).decode("ascii")
