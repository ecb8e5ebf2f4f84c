"""
Helpers for tests that deliver into a Maildir: run L{MaildirDelivery}'s blocking work at
once instead of in a thread, and read back what it stored.
"""

from __future__ import annotations

import mailbox
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed


def runNow(work: Callable[[], Any]) -> Deferred[Any]:
    """
    Run a Maildir's blocking work at once, in this thread (its C{runInThread}).
    """
    return succeed(work())


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
