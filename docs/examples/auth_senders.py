"""
A realm of one's own: after AUTH, ``session.user`` is a ``MailUser`` that knows which
sender addresses its owner may use, and a MAIL FROM handler holds each user to them (RFC
6409 section 8.1 asks submission servers for such a check).

Build the authentication handler with any twisted.cred checkers::

    addresses = {"alice": frozenset({"alice@example.org"})}
    server = SMTPServer([*handlers(addresses, [checker]), delivery], ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from zope.interface import Interface, implementer

from smtpsvc import Address, IMailFromHandler, Session, SMTPError
from smtpsvc.cred import PortalAuthHandler


class IMailUser(Interface):
    """
    The avatar interface: a user who may submit mail.
    """


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    """
    An authenticated user (the log shows its C{name}) and the addresses it may send from.
    """

    name: str
    addresses: frozenset[str]


@implementer(IRealm)
class Directory:
    """
    Makes a L{MailUser} for each user the checkers let in.
    """

    def __init__(self, addresses: Mapping[str, frozenset[str]]) -> None:
        self.addresses = addresses

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, MailUser, Callable[[], None]]:
        if IMailUser not in interfaces or avatarId == ():
            raise NotImplementedError("Directory has named IMailUser avatars only")
        # cred's convention is bytes, but some checkers (its own unix one) give str.
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        user = MailUser(name, self.addresses.get(name, frozenset()))
        return IMailUser, user, lambda: None


@implementer(IMailFromHandler)
class OwnAddressesOnly:
    """
    Refuses senders the authenticated user does not own.
    """

    def onMailFrom(self, address: Address, session: Session) -> None:
        user = session.user
        # AUTH is required, so there is a user here unless authOptional is set.
        if not isinstance(user, MailUser) or address.address.lower() not in user.addresses:
            raise SMTPError(553, "5.7.1 Sender address not yours")


def handlers(
    addresses: Mapping[str, frozenset[str]], checkers: Iterable[ICredentialsChecker]
) -> list[object]:
    """
    The authentication handler (asking for L{IMailUser} avatars) and the sender check.
    """
    portal = Portal(Directory(addresses), list(checkers))
    return [PortalAuthHandler(portal, IMailUser), OwnAddressesOnly()]
