"""
A handler for ``twist smtpsvc --deliver python:service_handler:makeHandler``: it accepts
only the recipients listed in a file, one address per line, so that an MX refuses mail
for unknown users at RCPT time instead of bouncing it later.

The file is named by the environment variable ``SMTPSVC_RECIPIENTS`` (by default
``/etc/smtpsvc/recipients``) and read again whenever it changes; lines starting with ``#``
are comments.  While it cannot be read, recipients get a temporary ``451 4.3.0`` and the
log says why, one line for each.
"""

from __future__ import annotations

import os

from twisted.logger import Logger
from zope.interface import implementer

from smtpsvc import Address, IRcptToHandler, Session, SMTPError

_log = Logger()


@implementer(IRcptToHandler)
class KnownRecipients:
    """
    Refuses, with C{550 5.1.1}, every recipient not listed in the file at C{path}.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: float | None = None
        self._known: frozenset[str] = frozenset()

    def _recipients(self) -> frozenset[str]:
        stamp = os.stat(self.path).st_mtime
        if stamp != self._stamp:
            with open(self.path, encoding="utf-8") as f:
                lines = [line.strip().lower() for line in f]
            self._known = frozenset(x for x in lines if x and not x.startswith("#"))
            self._stamp = stamp
        return self._known

    def onRcptTo(self, address: Address, session: Session) -> None:
        try:
            known = self._recipients()
        except OSError as e:
            # The operator's to mend: the sender tries again later, and no mail is lost.
            _log.error(
                "Cannot read the recipients file {path}: {reason}",
                path=self.path,
                reason=e.strerror or e,
            )
            raise SMTPError(451, "4.3.0 Recipients unavailable, try again later") from e
        if address.address.lower() not in known:
            raise SMTPError(550, "5.1.1 No such user here")


def makeHandler() -> KnownRecipients:
    """
    What ``--deliver python:service_handler:makeHandler`` calls, once, at start.
    """
    return KnownRecipients(os.environ.get("SMTPSVC_RECIPIENTS", "/etc/smtpsvc/recipients"))
