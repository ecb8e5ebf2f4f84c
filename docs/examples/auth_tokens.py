"""
Two ways to accept OAuth 2.0 bearer tokens (XOAUTH2 and OAUTHBEARER).

``TokenAuth`` is an authentication handler written straight against ``IAuthHandler``: it
judges tokens and leaves every other mechanism to the handlers after it.
``TokenChecker`` is a twisted.cred checker of ``IBearerToken`` credentials, for a
``PortalAuthHandler``, beside any password checker.

The tokens here are a table of token to user; a real server would ask the authorization
server (token introspection, RFC 7662), and could do so asynchronously: ``onAuth`` may
return a Deferred or be a coroutine, and ``requestAvatarId`` returns a Deferred.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from smtpsvc import AuthRequest, IAuthHandler, Session, SMTPError
from smtpsvc.cred import IBearerToken


@implementer(IAuthHandler)
class TokenAuth:
    """
    Accepts the bearer tokens in C{tokens}, a mapping of token to the user it was issued to.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = tokens

    def onAuth(self, auth: AuthRequest, session: Session) -> str | None:
        if auth.accessToken is None:
            # PLAIN, LOGIN, CRAM-MD5: not ours to judge; the next handler decides (and if
            # none accepts, the client gets 535).
            return None
        owner = self.tokens.get(auth.accessToken)
        # OAUTHBEARER may leave the user out (it is in the token); XOAUTH2 always names it.
        if owner is None or auth.username not in ("", owner):
            # A refusal.  For these two mechanisms the client first gets the error as a
            # 334 JSON challenge, answers it, and then gets 535 (RFC 7628 section 3.2.2).
            raise SMTPError(535, "5.7.8 Error: Authentication credentials invalid")
        # The user: it becomes session.user.
        return owner


@implementer(ICredentialsChecker)
class TokenChecker:
    """
    A cred checker for the bearer tokens in C{tokens}, a mapping of token to user.
    """

    credentialInterfaces = (IBearerToken,)

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self.tokens = tokens

    def requestAvatarId(self, credentials: IBearerToken) -> Deferred[bytes | tuple[()]]:
        owner = self.tokens.get(credentials.token)
        if owner is None or credentials.username not in ("", owner):
            # PortalAuthHandler turns UnauthorizedLogin into 535.
            return fail(UnauthorizedLogin())
        # The avatar ID, bytes as cred has it; UserRealm makes it session.user, a str.
        return succeed(owner.encode("utf-8"))
