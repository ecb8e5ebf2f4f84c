"""
An LMTP server in front of a mail store with quotas: after the message, each recipient
gets a reply of its own (RFC 2033), so one full mailbox does not bounce the others.

``python docs/examples/lmtp_store.py [ENDPOINT]`` (default ``tcp:2525:interface=127.0.0.1``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from zope.interface import implementer

from smtpsvc import (
    Address,
    IDataHandler,
    IMessageStream,
    IRcptToHandler,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)

DEFAULT_ENDPOINT = "tcp:2525:interface=127.0.0.1"


@implementer(IRcptToHandler, IDataHandler)
class MailStore:
    """
    Mailboxes kept in memory, each with a quota in bytes.

    @ivar mailboxes: the messages of each mailbox, by address.
    """

    def __init__(self, quotas: Mapping[str, int]) -> None:
        self.quotas = {address.lower(): quota for address, quota in quotas.items()}
        self.mailboxes: dict[str, list[bytes]] = {address: [] for address in self.quotas}

    def onRcptTo(self, address: Address, session: Session) -> None:
        if address.address.lower() not in self.mailboxes:
            raise SMTPError(550, "5.1.1 No such mailbox")

    async def onData(self, stream: IMessageStream, session: Session) -> list[SMTPError | None]:
        message = await readMessage(stream)
        results: list[SMTPError | None] = []
        delivered: set[str] = set()
        # One answer per accepted RCPT, in order.  A client that gave the same recipient
        # twice gets two replies, but the mailbox gets the message once.
        for recipient in session.envelope.rcptTo:
            name = recipient.address.lower()
            mailbox = self.mailboxes[name]
            if name in delivered:
                results.append(None)
            elif sum(map(len, mailbox)) + len(message) > self.quotas[name]:
                results.append(SMTPError(452, "4.2.2 Mailbox full"))
            else:
                mailbox.append(message)
                delivered.add(name)
                results.append(None)
        return results


def makeServer(reactor: Any, quotas: Mapping[str, int] | None = None) -> SMTPServer:
    """
    An LMTP server for the mailboxes in C{quotas} (two small ones if not given).
    """
    if quotas is None:
        quotas = {"alice@example.com": 1_000_000, "bob@example.com": 1_000}
    store = MailStore(quotas)
    return SMTPServer([store], reactor=reactor, lmtp=True, authOptional=True, size=1_000_000)


async def main(reactor: Any, *argv: str) -> None:
    """
    Listen on the endpoint given, or on port 2525 of the loopback interface, until stopped.
    """
    endpoint = argv[0] if argv else DEFAULT_ENDPOINT
    server = makeServer(reactor)
    port = await server.listen(endpoint)
    print(f"LMTP server listening on {port.getHost()}")
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    forever: Deferred[None] = Deferred()
    await forever


if __name__ == "__main__":
    react(main, sys.argv[1:])
