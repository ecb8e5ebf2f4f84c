"""
``twisted.mail``'s ESMTP server as a benchmark peer: receives on 127.0.0.1 and discards.

Usage: ``python twisted_mail_server.py PORT [CERT KEY]``.  With a certificate it offers
STARTTLS; ``BENCH_BACKLOG`` in the environment sets the listen backlog.  It logs as ``twist``
does when its output is not a terminal (JSON lines on stdout), so that its per-message log
line costs what smtpsvc's does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor, ssl
from twisted.logger import globalLogBeginner, jsonFileLogObserver
from twisted.mail import smtp
from zope.interface import implementer


@implementer(smtp.IMessage)
class DiscardedMessage:
    """
    A message whose lines go nowhere.
    """

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class DiscardDelivery:
    """
    Accepts every sender and recipient; adds no Received header.
    """

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        return None

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        return origin

    def validateTo(self, user: Any) -> Any:
        return DiscardedMessage


class DiscardFactory(smtp.SMTPFactory):
    """
    Builds C{ESMTP} protocols (Twisted has no ESMTP factory) that deliver to
    L{DiscardDelivery} and offer STARTTLS when given a context factory.
    """

    def __init__(self, contextFactory: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.contextFactory = contextFactory
        self.delivery = DiscardDelivery()

    def buildProtocol(self, addr: Any) -> smtp.ESMTP:
        protocol = smtp.ESMTP(contextFactory=self.contextFactory)
        protocol.factory = self
        protocol.host = b"bench.example.test"
        protocol.delivery = self.delivery
        return protocol


def main() -> None:
    port = int(sys.argv[1])
    contextFactory = None
    if len(sys.argv) > 3:
        with open(sys.argv[2], "rb") as c, open(sys.argv[3], "rb") as k:
            pem = c.read() + k.read()
        contextFactory = ssl.PrivateCertificate.loadPEM(pem).options()
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)])
    backlog = int(os.environ.get("BENCH_BACKLOG", "50"))  # 50: listenTCP's default
    reactor.listenTCP(port, DiscardFactory(contextFactory), backlog=backlog, interface="127.0.0.1")
    print(f"twisted.mail listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
