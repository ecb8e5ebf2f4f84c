"""
Authentication through twisted.cred.

L{PortalAuthHandler} is an L{IAuthHandler} that turns each SASL exchange into cred
credentials and asks a L{Portal}, so any cred checker works: PLAIN and LOGIN become
L{IUsernamePassword}, CRAM-MD5 L{IUsernameHashedPassword}, XOAUTH2 and OAUTHBEARER
L{IBearerToken}.  L{PasswordFile} is a checker for a file of salted scrypt hashes, made
and changed with the C{smtpsvc-passwd} command, for operators who should not keep
plaintext passwords (cred's own C{file:} checker keeps them in clear).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from ._core._replies import AUTH_TEMPORARY_ERROR
from ._core._sasl import AuthRequest
from ._core._session import Session
from ._errors import SMTPError, fresh
from ._reactor import threadRunner
from .interfaces import IAuthHandler, ICloseHandler, ISecureHandler

_log = Logger(namespace="smtpsvc.cred")
_T = TypeVar("_T")


def _invalid() -> SMTPError:
    # A new one for each refusal (see smtpsvc._errors.fresh).
    return SMTPError(535, "5.7.8 Error: Authentication credentials invalid")


__all__ = [
    "BearerToken",
    "CheckerUnavailable",
    "IBearerToken",
    "IUser",
    "PasswordFile",
    "PortalAuthHandler",
    "UserRealm",
    "hashPassword",
    "verifyPassword",
]


class CheckerUnavailable(Exception):
    """
    A checker cannot check credentials for now: its source (a password file, a
    directory) is missing, unreadable or malformed.  L{PortalAuthHandler} logs the
    message as one error line, without a traceback, and answers C{454 4.7.0}: the
    operator has something to mend, but the code has no bug to show.
    """


class IBearerToken(ICredentials):
    """
    An OAuth 2.0 bearer token presented for a user (XOAUTH2, OAUTHBEARER).
    """

    username = Attribute("The user the client names (str).")
    token = Attribute("The access token (str).")


@implementer(IBearerToken)
@dataclass(frozen=True)
class BearerToken:
    """
    Credentials for L{IBearerToken} checkers.
    """

    username: str
    token: str

    def __repr__(self) -> str:
        return f"BearerToken(username={self.username!r})"


@implementer(IUsernameHashedPassword)
class _ChallengeResponse:
    # CRAM-MD5 as cred sees it: a checker that knows the password calls checkPassword.
    def __init__(self, request: AuthRequest) -> None:
        self.username = request.username.encode("utf-8")
        self._request = request

    def checkPassword(self, password: bytes | str) -> bool:
        if isinstance(password, bytes):
            password = password.decode("utf-8")
        return self._request.validatePassword(password)


class IUser(Interface):
    """
    The avatar interface L{PortalAuthHandler} asks portals for by default.
    """


@implementer(IRealm)
class UserRealm:
    """
    A realm whose avatar is the user name itself, as a string: what C{session.user}
    becomes with L{PortalAuthHandler.fromCheckers}.
    """

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, str, Callable[[], None]]:
        if IUser not in interfaces:
            raise NotImplementedError("UserRealm only provides IUser")
        # Checkers give bytes (though some, such as the unix one, give str); an
        # anonymous login (the empty tuple) has no name.
        raw: object = avatarId
        if isinstance(raw, bytes):
            name = raw.decode("utf-8")
        else:
            name = raw if isinstance(raw, str) else ""
        return IUser, name, lambda: None


@implementer(ICredentialsChecker)
class FirstMatch:
    """
    A checker that asks several checkers in turn: the first that accepts decides; if all
    refuse, the login is refused.  (cred's L{Portal} keeps one checker per kind of
    credentials; this lets several sources share one.)
    """

    def __init__(self, checkers: Sequence[ICredentialsChecker]) -> None:
        self.checkers = list(checkers)
        self.credentialInterfaces = tuple(
            {i for c in self.checkers for i in c.credentialInterfaces}
        )

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        remaining = list(self.checkers)

        def attempt() -> Deferred[bytes | tuple[()]]:
            if not remaining:
                return fail(UnauthorizedLogin())
            checker = remaining.pop(0)
            d: Deferred[bytes | tuple[()]] = maybeDeferred(checker.requestAvatarId, credentials)
            return d.addErrback(refused)

        def refused(failure: Failure) -> Deferred[bytes | tuple[()]]:
            failure.trap(UnauthorizedLogin)
            return attempt()

        return attempt()


# Which SASL mechanisms each kind of credentials can carry, in the order offered.
_MECHANISMS: tuple[tuple[Any, tuple[str, ...]], ...] = (
    (IUsernamePassword, ("PLAIN", "LOGIN")),
    (IUsernameHashedPassword, ("CRAM-MD5",)),
    (IBearerToken, ("XOAUTH2", "OAUTHBEARER")),
)
# The kinds of credentials a user might hold, each with the interfaces of its mechanisms:
# a client with a password picks one of PLAIN, LOGIN and CRAM-MD5, whoever checks it.
_FAMILIES: tuple[tuple[Any, ...], ...] = (
    (IUsernamePassword, IUsernameHashedPassword),
    (IBearerToken,),
)


def _checks(interfaces: Iterable[Any], interface: Any) -> bool:
    # Whether a checker of credentials `interfaces` can check `interface`'s.
    return any(interface.isOrExtends(s) or s.isOrExtends(interface) for s in interfaces)


@implementer(IAuthHandler, ISecureHandler, ICloseHandler)
class PortalAuthHandler:
    """
    Checks AUTH with a twisted.cred L{Portal}.  The avatar the portal returns becomes
    C{session.user}, and the logout the realm returned with it is called once the
    server has forgotten the login: when the connection closes, or at a TLS handshake
    after it (STARTTLS, RFC 3207 section 4.2).

    A refusal by the portal (L{UnauthorizedLogin}, or credentials no checker handles)
    is C{535 5.7.8}; any other failure is logged and the client gets a temporary
    C{454 4.7.0}, so a broken directory does not count as guessing: a
    L{CheckerUnavailable} as one error line, anything else with its traceback.

    Cred has no notion of acting for someone else, so a client that asks to (an
    authorisation identity other than the user name it authenticates as, RFC 4616
    section 2) gets C{535 5.7.8} without the portal being asked.
    """

    def __init__(self, portal: Portal, interface: Any = IUser) -> None:
        """
        @param portal: the portal to log in with.
        @param interface: the avatar interface to ask for.
        """
        self.portal = portal
        self.interface = interface
        # The realm's logout for each session logged in.
        self._logouts: dict[Session, Callable[[], object]] = {}
        # The credential interfaces of each checker, when fromCheckers knows them.
        self._sources: list[tuple[Any, ...]] | None = None

    @classmethod
    def fromCheckers(cls, checkers: Iterable[ICredentialsChecker]) -> PortalAuthHandler:
        """
        A handler over a portal of C{checkers} and a L{UserRealm}.  Several checkers for
        the same kind of credentials (two password files, say) are asked in turn: the
        first that accepts decides.  L{mechanisms} then offers only what every checker of
        passwords (and every checker of bearer tokens) can verify.
        """
        portal = Portal(UserRealm())
        checkers = list(checkers)
        byInterface: dict[Any, list[ICredentialsChecker]] = {}
        for checker in checkers:
            for interface in checker.credentialInterfaces:
                byInterface.setdefault(interface, []).append(checker)
        for interface, sources in byInterface.items():
            checker = sources[0] if len(sources) == 1 else FirstMatch(sources)
            portal.registerChecker(checker, interface)
        handler = cls(portal)
        handler._sources = [tuple(checker.credentialInterfaces) for checker in checkers]
        return handler

    def mechanisms(self) -> tuple[str, ...]:
        """
        The SASL mechanisms the portal's checkers can verify, in a sensible order: the
        value for the C{authMethods} option.

        For a handler made by L{fromCheckers}, a mechanism is left out when one of the
        checkers of its kind of credentials cannot verify it: a password file of hashes
        beside C{memory:} users gives PLAIN and LOGIN, not CRAM-MD5, which the file's users
        could not pass (and a client that tries CRAM-MD5 first would fail with every
        login, and be locked out for it).
        """
        supported = self.portal.listCredentialsInterfaces()
        out: list[str] = []
        for interface, names in _MECHANISMS:
            if not _checks(supported, interface):
                continue
            family = next(f for f in _FAMILIES if interface in f)
            peers = [
                source
                for source in self._sources or ()
                if any(_checks(source, kind) for kind in family)
            ]
            if all(_checks(source, interface) for source in peers):
                out.extend(names)
        return tuple(out)

    def onAuth(self, auth: AuthRequest, session: Session) -> Deferred[object]:
        if auth.authzid is not None and auth.authzid != auth.username:
            return fail(_invalid())
        credentials: object
        if auth.method in ("PLAIN", "LOGIN"):
            from twisted.cred.credentials import UsernamePassword

            credentials = UsernamePassword(
                auth.username.encode("utf-8"), (auth.password or "").encode("utf-8")
            )
        elif auth.method == "CRAM-MD5":
            credentials = _ChallengeResponse(auth)
        else:
            credentials = BearerToken(auth.username, auth.accessToken or "")
        d = maybeDeferred(self.portal.login, credentials, None, self.interface)

        def loggedIn(result: tuple[Any, Any, Callable[[], object]]) -> object:
            _, avatar, logout = result
            if not avatar:
                # A false user is a refusal to the server (IAuthHandler), which the
                # portal did not mean: the realm's to mend, so no failed attempt.
                _log.error(
                    "The realm's avatar for {username} is false ({avatar!r}), and cannot "
                    "be a user: the login is refused with 454",
                    username=auth.username,
                    avatar=avatar,
                    sessionId=session.id,
                )
                self._callLogout(logout, session)
                raise fresh(AUTH_TEMPORARY_ERROR)
            self._logOut(session)
            self._logouts[session] = logout
            return avatar

        def refused(failure: Any) -> Any:
            if failure.check(LoginFailed):
                raise _invalid()
            if failure.check(CheckerUnavailable):
                # The operator's to mend, once per attempt until they do; a traceback
                # would only bury the reason.
                _log.error(
                    "Authentication unavailable: {reason}",
                    reason=failure.getErrorMessage(),
                    sessionId=session.id,
                )
                raise fresh(AUTH_TEMPORARY_ERROR)
            return failure

        return d.addCallbacks(loggedIn, refused)

    def onSecure(self, session: Session, peerCertificate: object) -> None:
        # A handshake makes the server forget a login before it.
        self._logOut(session)

    def onClose(self, session: Session) -> None:
        self._logOut(session)

    def _logOut(self, session: Session) -> None:
        logout = self._logouts.pop(session, None)
        if logout is not None:
            self._callLogout(logout, session)

    def _callLogout(self, logout: Callable[[], object], session: Session) -> None:
        try:
            logout()
        except Exception:
            _log.failure("The realm's logout failed for session {sessionId}", sessionId=session.id)


# -- the password file --------------------------------------------------------------------

_SCHEME = "$scrypt$"


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hashPassword(password: str, *, logN: int = 14, r: int = 8, p: int = 1) -> str:
    """
    A salted scrypt hash of C{password} in the file's format:
    C{$scrypt$ln=14,r=8,p=1$<salt>$<hash>}.
    """
    salt = os.urandom(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=2**logN, r=r, p=p, maxmem=2**26, dklen=32
    )
    return f"{_SCHEME}ln={logN},r={r},p={p}${_encode(salt)}${_encode(key)}"


def verifyPassword(password: str, hashed: str) -> bool:
    """
    Whether C{password} matches C{hashed} (from L{hashPassword}); compared in constant
    time.  A malformed hash matches nothing.
    """
    try:
        if not hashed.startswith(_SCHEME):
            return False
        parameters, salt, key = hashed[len(_SCHEME) :].split("$")
        values = dict(item.split("=", 1) for item in parameters.split(","))
        logN, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        if not (1 <= logN <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        expected = _decode(key)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=_decode(salt),
            n=2**logN,
            r=r,
            p=p,
            maxmem=2**27,
            dklen=len(expected),
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(actual, expected)


# Checked for unknown users, so that they take as long as known ones.
_DUMMY = hashPassword("smtpsvc: no such user", logN=14)


def readPasswordFile(path: str) -> dict[str, str]:
    """
    The entries of a password file: C{user:hash} lines; blank lines and C{#} comments
    are skipped.

    @raise ValueError: for a line that is not C{user:hash}, or a file that is not
        UTF-8; the message starts with the path.
    """
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        try:
            for number, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                user, colon, hashed = line.partition(":")
                if not colon or not user or not hashed.startswith(_SCHEME):
                    raise ValueError(f"{path}:{number}: expected user:{_SCHEME}...")
                entries[user] = hashed
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text") from e
    return entries


@implementer(ICredentialsChecker)
class PasswordFile:
    """
    A cred checker for a file of salted scrypt hashes.  The file is read again when it
    changes, so adding a user needs no restart.  Hashing runs in the reactor's thread
    pool; unknown users cost as much as known ones.  While the file is missing,
    unreadable or malformed every check fails with L{CheckerUnavailable}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        path: str,
        *,
        reactor: Any = None,
        runInThread: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
    ) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, str] = {}
        self._load()
        self._runInThread = runInThread or threadRunner(reactor)

    def _load(self) -> dict[str, str]:
        status = os.stat(self.path)
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp != self._stamp:
            self._entries = readPasswordFile(self.path)
            self._stamp = stamp
        return self._entries

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        try:
            entries = self._load()
        except OSError as e:
            reason = f"cannot read the password file {self.path}: {e.strerror or e}"
            return fail(CheckerUnavailable(reason))
        except ValueError as e:
            return fail(CheckerUnavailable(f"malformed password file {e}"))
        username = credentials.username
        name = username.decode("utf-8", "replace") if isinstance(username, bytes) else username
        password = credentials.password
        secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
        known = name in entries
        hashed = entries.get(name, _DUMMY)

        def checked(ok: bool) -> bytes | tuple[()]:
            if ok and known:
                return name.encode("utf-8")
            raise UnauthorizedLogin()

        return self._runInThread(lambda: verifyPassword(secret, hashed)).addCallback(checked)


def setPassword(path: str, user: str, password: str | None) -> None:
    """
    Add C{user} to the password file at C{path} (made if missing) or change their
    password; with C{password} L{None}, remove them.  The file is replaced atomically
    and readable by its owner only.
    """
    if not user or ":" in user or any(c in user for c in "\r\n\x00"):
        raise ValueError(f"bad user name {user!r}")
    try:
        entries = readPasswordFile(path)
    except FileNotFoundError:
        entries = {}
    if password is None:
        if user not in entries:
            raise KeyError(user)
        del entries[user]
    else:
        entries[user] = hashPassword(password)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".smtpsvc-passwd-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# smtpsvc password file: user:scrypt hash, made by smtpsvc-passwd\n")
            for name, hashed in sorted(entries.items()):
                f.write(f"{name}:{hashed}\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """
    C{smtpsvc-passwd FILE USER}: add a user or change their password (asked twice, or
    read from standard input with C{--stdin}); C{--delete} removes the user.
    """
    parser = argparse.ArgumentParser(
        prog="smtpsvc-passwd",
        description="Add a user to (or change or remove one in) an smtpsvc password file "
        "of salted scrypt hashes, for twist smtpsvc --auth scrypt:FILE.",
    )
    parser.add_argument("file", help="the password file (made if missing)")
    parser.add_argument("user", help="the user name")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stdin", action="store_true", help="read the password from stdin")
    group.add_argument("--delete", action="store_true", help="remove the user")
    arguments = parser.parse_args(argv)
    try:
        return _passwd(arguments.file, arguments.user, arguments.stdin, arguments.delete)
    except KeyboardInterrupt:
        # Ctrl-C, at the prompt or while hashing: the file is as it was.
        print("\nsmtpsvc-passwd: interrupted; nothing changed", file=sys.stderr)
        return 130


def _hasTerminal() -> bool:
    # Whether getpass can ask on a terminal: the process's controlling one, as getpass
    # opens it, or standard input.
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return sys.stdin is not None and sys.stdin.isatty()
    os.close(fd)
    return True


def _passwd(path: str, user: str, stdin: bool, delete: bool) -> int:
    # What main does once its arguments are parsed: its exit status, every mistake said
    # in one line naming the user's file, never a traceback.
    password: str | None = None
    if not delete:
        if stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            if not _hasTerminal():
                # getpass would warn (in three lines) and read standard input instead.
                print(
                    "smtpsvc-passwd: no terminal to ask for the password on; give it on "
                    "standard input with --stdin",
                    file=sys.stderr,
                )
                return 1
            try:
                password = getpass.getpass(f"Password for {user}: ")
                again = getpass.getpass("Again: ")
            except EOFError:
                # Ctrl-D at the prompt, or no terminal and nothing on standard input.
                print(
                    "smtpsvc-passwd: no password given (standard input ended); to read it "
                    "from a pipe, use --stdin",
                    file=sys.stderr,
                )
                return 1
            if again != password:
                print("smtpsvc-passwd: the passwords differ", file=sys.stderr)
                return 1
        if not password:
            print("smtpsvc-passwd: the password is empty", file=sys.stderr)
            return 1
    try:
        setPassword(path, user, password)
    except KeyError:
        print(f"smtpsvc-passwd: no user {user!r} in {path}", file=sys.stderr)
        return 1
    except OSError as e:
        # The error may name the temporary file beside it: name the user's.
        print(f"smtpsvc-passwd: cannot update {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"smtpsvc-passwd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
