"""
A policy for a small mail domain: which clients may talk, who may send, who receives.

L{Policy} is one object that provides four handler interfaces.  It is imported by
C{delivery.py}, which builds a server around it, and tested by C{test_policy.py}.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from smtpsvc import (
    Address,
    ICloseHandler,
    IConnectHandler,
    IMailFromHandler,
    IRcptToHandler,
    Session,
    SMTPError,
)

_log = Logger()


@implementer(IConnectHandler, IMailFromHandler, IRcptToHandler, ICloseHandler)
class Policy:
    """
    Accept mail for a fixed set of mailboxes, from clients and senders not blocked.

    @param reactor: the clock for the delay before refusing a recipient.
    @param mailboxes: the addresses that receive mail (compared without regard to case).
    @param blockedClients: IP addresses refused before the greeting.
    @param blockedSenders: sender addresses refused at MAIL FROM.
    @param refusalDelay: seconds to wait before refusing an unknown recipient.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        mailboxes: Iterable[str],
        blockedClients: Iterable[str] = (),
        blockedSenders: Iterable[str] = (),
        refusalDelay: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.mailboxes = {mailbox.lower() for mailbox in mailboxes}
        self.blockedClients = set(blockedClients)
        self.blockedSenders = {sender.lower() for sender in blockedSenders}
        self.refusalDelay = refusalDelay

    # IConnectHandler: a plain method that returns (accept) or raises (refuse).
    def onConnect(self, session: Session) -> None:
        if session.remoteAddress in self.blockedClients:
            raise SMTPError(554, "Go away")
        # Per-connection state belongs in session.data.
        session.data["refusedRecipients"] = 0

    # IMailFromHandler: a coroutine, so it can await a lookup.
    async def onMailFrom(self, address: Address, session: Session) -> None:
        if await self.senderBlocked(address.address):
            raise SMTPError(550, "5.7.1 Sender blocked")

    async def senderBlocked(self, sender: str) -> bool:
        """
        Whether C{sender} may not send: a stand-in for a database or DNS query, which
        would be awaited the same way.
        """
        return sender.lower() in self.blockedSenders

    # IRcptToHandler: refusing takes a moment, which slows down address guessing.  The
    # client's pipelined commands wait for this answer, so they are still answered in order.
    async def onRcptTo(self, address: Address, session: Session) -> None:
        if address.address.lower() in self.mailboxes:
            return
        session.data["refusedRecipients"] += 1
        await deferLater(self.reactor, self.refusalDelay, lambda: None)
        raise SMTPError(550, f"5.1.1 <{address.address}>: no such mailbox here")

    # ICloseHandler: told about every connection that ends; its answer is ignored.
    def onClose(self, session: Session) -> None:
        refused = session.data.get("refusedRecipients", 0)
        if refused:
            _log.info(
                "{client} was refused {refused} recipient(s)",
                client=session.remoteAddress,
                refused=refused,
            )
