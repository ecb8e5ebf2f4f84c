"""
Tests for authentication through twisted.cred: the portal handler, the scrypt password
file, its command, the --auth plugin and the service's AUTH.
"""

from __future__ import annotations

import getpass
import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import SMTPServer, cred, tap
from smtpsvc.cred import (
    CheckerUnavailable,
    IBearerToken,
    PasswordFile,
    PortalAuthHandler,
    hashPassword,
    main,
    readPasswordFile,
    setPassword,
    verifyPassword,
)
from smtpsvc.testing import MemoryClient

from .auth_support import authPlain, b64, cramResponse
from .e2e_support import LogCapture
from .maildir_support import runNow
from .memorytls import ClientTLS, issue, saidHello
from .protocol_support import codes


def connect(handler: PortalAuthHandler, **options: Any) -> MemoryClient:
    server = SMTPServer(
        [handler],
        reactor=Clock(),
        allowInsecureAuth=True,
        authFailureDelay=0,
        authMethods=options.pop("authMethods", handler.mechanisms()),
        **options,
    )
    client = MemoryClient(server)
    client.send("EHLO x")
    return client


class PortalTests(SynchronousTestCase):
    """
    Any cred checker can check AUTH.
    """

    def handler(self) -> PortalAuthHandler:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        return PortalAuthHandler.fromCheckers([checker])

    def test_mechanisms(self) -> None:
        """
        A checker of passwords in clear can do PLAIN, LOGIN and CRAM-MD5.
        """
        self.assertEqual(self.handler().mechanisms(), ("PLAIN", "LOGIN", "CRAM-MD5"))

    def test_plain(self) -> None:
        """
        PLAIN logs in through the portal; the avatar is the user name.
        """
        client = connect(self.handler())
        self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(client.session.user, "alice")

    def test_login(self) -> None:
        """
        LOGIN logs in through the portal.
        """
        client = connect(self.handler())
        client.send("AUTH LOGIN", b64("alice"))
        self.assertEqual(codes(client.send(b64("secret"))), [235])

    def test_cramMd5(self) -> None:
        """
        CRAM-MD5 becomes IUsernameHashedPassword credentials.
        """
        client = connect(self.handler())
        [challenge] = client.send("AUTH CRAM-MD5")
        self.assertEqual(codes(client.send(cramResponse(challenge, "alice", "secret"))), [235])

    def test_wrongPassword(self) -> None:
        """
        A refusal by the portal is 535 5.7.8.
        """
        client = connect(self.handler(), hideENHANCEDSTATUSCODES=False)
        replies = client.send(authPlain("alice", "nope"))
        self.assertEqual(replies[0].lines, ("5.7.8 Error: Authentication credentials invalid",))

    def test_unknownUser(self) -> None:
        """
        An unknown user gets the same reply as a wrong password.
        """
        client = connect(self.handler(), hideENHANCEDSTATUSCODES=False)
        replies = client.send(authPlain("mallory", "nope"))
        self.assertEqual(replies[0].lines, ("5.7.8 Error: Authentication credentials invalid",))

    def test_unhandledCredentials(self) -> None:
        """
        A mechanism no checker can verify is refused with 535, not a crash.
        """
        client = connect(self.handler(), authMethods=("XOAUTH2",))
        token = b64("user=alice\x01auth=Bearer t\x01\x01")
        self.assertEqual(codes(client.send(f"AUTH XOAUTH2 {token}")), [334])
        self.assertEqual(codes(client.send("")), [535])

    def test_bearerToken(self) -> None:
        """
        A checker of IBearerToken credentials enables XOAUTH2 and OAUTHBEARER.
        """

        @implementer(ICredentialsChecker)
        class Tokens:
            credentialInterfaces = (IBearerToken,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
                if credentials.token == "good":
                    return succeed(credentials.username.encode())
                return fail(UnauthorizedLogin())

        handler = PortalAuthHandler.fromCheckers([Tokens()])
        self.assertEqual(handler.mechanisms(), ("XOAUTH2", "OAUTHBEARER"))
        client = connect(handler)
        token = b64("n,a=bob,\x01auth=Bearer good\x01\x01")
        self.assertEqual(codes(client.send(f"AUTH OAUTHBEARER {token}")), [235])
        self.assertEqual(client.session.user, "bob")

    def test_mechanismsEverySourceCanCheck(self) -> None:
        """
        With several checkers of passwords, only the mechanisms every one of them can
        verify are offered: beside a file of scrypt hashes, clear passwords give PLAIN and
        LOGIN but not CRAM-MD5, which the file's users could not pass.  The users of
        either log in; a checker of bearer tokens beside them adds its own mechanisms.
        """
        hashes = self.mktemp()
        setPassword(hashes, "bob", "hunter2")
        handler = PortalAuthHandler.fromCheckers(
            [
                InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret"),
                PasswordFile(hashes, reactor=Clock()),
            ]
        )
        self.assertEqual(handler.mechanisms(), ("PLAIN", "LOGIN"))
        for user, password in (("alice", "secret"), ("bob", "hunter2")):
            client = connect(handler)
            self.assertNotIn("CRAM-MD5", " ".join(client.send("EHLO x")[0].lines))
            self.assertEqual(codes(client.send(authPlain(user, password))), [235], user)

        @implementer(ICredentialsChecker)
        class Tokens:
            credentialInterfaces = (IBearerToken,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
                return fail(UnauthorizedLogin())

        clear = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        handler = PortalAuthHandler.fromCheckers([clear, Tokens()])
        self.assertEqual(
            handler.mechanisms(), ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER")
        )

    def test_brokenChecker(self) -> None:
        """
        A checker that fails unexpectedly gives a temporary 454, and is logged.
        """

        @implementer(ICredentialsChecker)
        class Broken:
            from twisted.cred.credentials import IUsernamePassword

            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
                return fail(ConnectionError("LDAP is down"))

        client = connect(PortalAuthHandler.fromCheckers([Broken()]))
        self.assertEqual(codes(client.send(authPlain("a", "b"))), [454])
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_uncheckableChecker(self) -> None:
        """
        A checker whose source cannot be used says so with CheckerUnavailable: the client
        gets 454 4.7.0 and the log one error line with the reason, and no traceback.
        """

        @implementer(ICredentialsChecker)
        class Unavailable:
            from twisted.cred.credentials import IUsernamePassword

            credentialInterfaces = (IUsernamePassword,)

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
                return fail(CheckerUnavailable("the directory is down"))

        log = LogCapture(self)
        handler = PortalAuthHandler.fromCheckers([Unavailable()])
        client = connect(handler, hideENHANCEDSTATUSCODES=False)
        [reply] = client.send(authPlain("a", "b"))
        self.assertEqual((reply.code, reply.text), (454, "4.7.0 Temporary authentication failure"))
        errors = [e for e in log.events if e["log_level"] >= LogLevel.error]
        self.assertEqual(
            [(formatEvent(e), e["log_level"], e["sessionId"]) for e in errors],
            [
                (
                    "Authentication unavailable: the directory is down",
                    LogLevel.error,
                    client.session.id,
                )
            ],
        )


class LogoutTests(SynchronousTestCase):
    """
    The logout the realm returns with an avatar is called once the server has forgotten
    the login (API QA: it never was, so a realm holding something per login leaked it).
    """

    def realmAndHandler(
        self, logout: Callable[[list[str], str], None] | None = None
    ) -> tuple[list[str], PortalAuthHandler]:
        """
        A handler over a realm that notes each login and logout in the list returned;
        C{logout}, given, is called (with the list and the name) instead of noting one.
        """
        events: list[str] = []

        @implementer(IRealm)
        class Realm:
            def requestAvatar(
                self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
            ) -> tuple[Any, str, Callable[[], None]]:
                assert isinstance(avatarId, bytes)
                name = avatarId.decode()
                events.append(f"in {name}")
                if logout is not None:
                    return interfaces[0], name, lambda: logout(events, name)
                return interfaces[0], name, lambda: events.append(f"out {name}")

        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", bob=b"pass")
        return events, PortalAuthHandler(Portal(Realm(), [checker]))

    def test_atClose(self) -> None:
        """
        When the connection closes, however it ends; once per login.
        """
        events, handler = self.realmAndHandler()
        for ending in ("QUIT", "disconnect"):
            client = connect(handler)
            self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
            self.assertEqual(events[-1], "in alice")
            if ending == "QUIT":
                client.send("QUIT")
            else:
                client.disconnect()
            self.assertEqual(events[-1], "out alice", ending)
        self.assertEqual(events, ["in alice", "out alice"] * 2)

    def test_atHandshake(self) -> None:
        """
        At a TLS handshake after the login, which makes the server forget it (RFC 3207
        section 4.2); a login after the handshake is another, logged out at the close.
        """
        events, handler = self.realmAndHandler()
        pair = issue("mx.example.test")
        server = SMTPServer(
            [handler],
            reactor=Clock(),
            allowInsecureAuth=True,
            earlyTalkerDelay=0,
            key=pair.key,
            cert=pair.cert,
        )
        connection, _ = saidHello(server)
        self.assertEqual(codes(connection.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(connection.send("STARTTLS")), [220])
        connection.startTLS(ClientTLS())
        self.assertEqual(events, ["in alice", "out alice"])
        connection.send("EHLO client.example")
        self.assertEqual(codes(connection.send(authPlain("bob", "pass"))), [235])
        connection.send("QUIT")
        self.assertEqual(events, ["in alice", "out alice", "in bob", "out bob"])

    def test_falseAvatar(self) -> None:
        """
        An avatar that is false cannot be a user (a false answer refuses): the login gets
        454 (no failed attempt), an error names the user, and the logout comes at once.
        """
        events: list[str] = []

        @implementer(IRealm)
        class Realm:
            def requestAvatar(
                self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
            ) -> tuple[Any, dict[str, str], Callable[[], None]]:
                return interfaces[0], {}, lambda: events.append("out")

        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        capture = LogCapture(self)
        client = connect(PortalAuthHandler(Portal(Realm(), [checker])))
        replies = client.send(authPlain("alice", "secret"))
        self.assertEqual(codes(replies), [454])
        self.assertIsNone(client.session.user)
        self.assertEqual(events, ["out"])
        self.assertEqual(len(capture.matching("The realm's avatar for alice is false")), 1)
        client.send("QUIT")
        self.assertEqual(events, ["out"])

    def test_logoutFails(self) -> None:
        """
        A logout that raises is logged; the close goes on.
        """

        def failing(events: list[str], name: str) -> None:
            raise ZeroDivisionError()

        _, handler = self.realmAndHandler(failing)
        client = connect(handler)
        client.send(authPlain("alice", "secret"))
        client.send("QUIT")
        self.assertTrue(client.closed)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class PasswordFileTests(SynchronousTestCase):
    """
    The file of salted scrypt hashes.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def test_hashes(self) -> None:
        """
        A hash verifies its password and no other, and is salted.
        """
        hashed = hashPassword("secret", logN=10)
        self.assertTrue(hashed.startswith("$scrypt$ln=10,r=8,p=1$"))
        self.assertTrue(verifyPassword("secret", hashed))
        self.assertFalse(verifyPassword("Secret", hashed))
        self.assertNotEqual(hashed, hashPassword("secret", logN=10))

    def test_malformedHashMatchesNothing(self) -> None:
        """
        A broken or absurd hash never verifies, and never raises.
        """
        for bad in ("", "plain", "$scrypt$", "$scrypt$ln=99,r=8,p=1$AA$AA", "$scrypt$x$y$z"):
            self.assertFalse(verifyPassword("x", bad), bad)

    def checker(self) -> PasswordFile:
        return PasswordFile(self.path, runInThread=runNow)

    def login(self, checker: PasswordFile, user: str, password: str) -> Deferred[bytes | tuple[()]]:
        from twisted.cred.credentials import UsernamePassword

        return checker.requestAvatarId(UsernamePassword(user.encode(), password.encode()))

    def test_checks(self) -> None:
        """
        The checker accepts the right password and refuses others and unknown users.
        """
        setPassword(self.path, "alice", "secret")
        checker = self.checker()
        self.assertEqual(self.successResultOf(self.login(checker, "alice", "secret")), b"alice")
        self.failureResultOf(self.login(checker, "alice", "nope"), UnauthorizedLogin)
        self.failureResultOf(self.login(checker, "mallory", "secret"), UnauthorizedLogin)

    def test_reactorWithoutThreads(self) -> None:
        """
        Given a reactor without a thread pool (a test clock), the checker hashes at once.
        """
        setPassword(self.path, "alice", "secret")
        checker = PasswordFile(self.path, reactor=Clock())
        self.assertEqual(self.successResultOf(self.login(checker, "alice", "secret")), b"alice")

    def test_rereadsWhenChanged(self) -> None:
        """
        A user added after start can log in without a restart.
        """
        setPassword(self.path, "alice", "secret")
        checker = self.checker()
        setPassword(self.path, "bob", "hunter2")
        self.assertEqual(self.successResultOf(self.login(checker, "bob", "hunter2")), b"bob")

    def test_fileIsPrivateAndCommented(self) -> None:
        """
        The file is readable by its owner only, one user:hash per line.
        """
        setPassword(self.path, "alice", "secret")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(list(readPasswordFile(self.path)), ["alice"])

    def test_delete(self) -> None:
        """
        A user can be removed; removing an unknown user is an error.
        """
        setPassword(self.path, "alice", "secret")
        setPassword(self.path, "bob", "x")
        setPassword(self.path, "alice", None)
        self.assertEqual(list(readPasswordFile(self.path)), ["bob"])
        self.assertRaises(KeyError, setPassword, self.path, "alice", None)

    def test_badUserName(self) -> None:
        """
        A user name with a colon or a line break is refused.
        """
        self.assertRaises(ValueError, setPassword, self.path, "a:b", "x")
        self.assertRaises(ValueError, setPassword, self.path, "a\nb", "x")

    def test_malformedFile(self) -> None:
        """
        A file with a line that is not user:hash is refused with its line number.
        """
        with open(self.path, "w") as f:
            f.write("alice:secret\n")
        with self.assertRaises(ValueError) as caught:
            readPasswordFile(self.path)
        self.assertIn(":1:", str(caught.exception))

    def test_brokenAtRunTime(self) -> None:
        """
        A file that becomes malformed, or goes away, while the server runs gets every AUTH
        a 454 and one error line naming the file and what is wrong with it, without a
        traceback; once it is mended, AUTH works again.
        """
        setPassword(self.path, "alice", "secret")
        handler = PortalAuthHandler.fromCheckers([self.checker()])
        log = LogCapture(self)

        def attempt() -> tuple[int, list[str]]:
            del log.events[:]
            [reply] = connect(handler).send(authPlain("alice", "secret"))
            errors = [e for e in log.events if e["log_level"] >= LogLevel.error]
            return reply.code, [formatEvent(e) for e in errors]

        self.assertEqual(attempt(), (235, []))
        with open(self.path) as f:
            good = f.read()
        with open(self.path, "a") as f:
            f.write("garbage\n")
        malformed = (
            f"Authentication unavailable: malformed password file {self.path}:3: "
            "expected user:$scrypt$..."
        )
        self.assertEqual(attempt(), (454, [malformed]))
        self.assertEqual(attempt(), (454, [malformed]))
        os.unlink(self.path)
        missing = (
            f"Authentication unavailable: cannot read the password file {self.path}: "
            "No such file or directory"
        )
        self.assertEqual(attempt(), (454, [missing]))
        with open(self.path, "w") as f:
            f.write(good)
        self.assertEqual(attempt(), (235, []))

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is refused, naming the file.
        """
        with open(self.path, "wb") as f:
            f.write(b"alice:$scrypt$\xff\n")
        with self.assertRaises(ValueError) as caught:
            readPasswordFile(self.path)
        self.assertEqual(str(caught.exception), f"{self.path}: not UTF-8 text")

    def test_command(self) -> None:
        """
        smtpsvc-passwd --stdin adds a user with the password read from stdin.
        """
        self.patch(sys, "stdin", io.StringIO("secret\n"))
        self.assertEqual(main([self.path, "alice", "--stdin"]), 0)
        self.assertTrue(verifyPassword("secret", readPasswordFile(self.path)["alice"]))
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main([self.path, "nobody", "--delete"]), 1)

    def commandError(self, *args: str, status: int = 1) -> str:
        """
        What smtpsvc-passwd ARGS says on standard error, checked to be one line (after
        the prompt's line end) and to end with exit status C{status}.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(main(list(args)), status)
        text = stderr.getvalue().lstrip("\n")
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("smtpsvc-passwd: "), text)
        return text

    def test_commandPromptEnds(self) -> None:
        """
        Ctrl-D at the password prompt is one line and status 1; Ctrl-C there is one
        line and status 130; the file is left as it was.
        """
        setPassword(self.path, "alice", "secret")
        before = readPasswordFile(self.path)
        self.patch(cred, "_hasTerminal", lambda: True)
        for error, status, words in (
            (EOFError, 1, "no password given (standard input ended)"),
            (KeyboardInterrupt, 130, "interrupted; nothing changed"),
        ):

            def prompt(text: str = "", stream: object = None, error: type = error) -> str:
                raise error()

            self.patch(getpass, "getpass", prompt)
            self.assertIn(words, self.commandError(self.path, "alice", status=status))
            self.assertEqual(readPasswordFile(self.path), before)

    def test_commandWithoutTerminal(self) -> None:
        """
        Without --stdin and without a terminal (a script, cron), smtpsvc-passwd says
        in one line to use --stdin, with status 1, and no traceback.
        """
        result = subprocess.run(
            [sys.executable, "-m", "smtpsvc.cred", self.path, "alice"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(
            result.stderr,
            "smtpsvc-passwd: no terminal to ask for the password on; give it on standard "
            "input with --stdin\n",
        )
        self.assertFalse(os.path.exists(self.path))

    def test_commandCannotWrite(self) -> None:
        """
        A file in a directory that does not exist is one line naming that file, not
        the temporary file it would have been written to first.
        """
        self.patch(sys, "stdin", io.StringIO("secret\n"))
        missing = os.path.join(self.mktemp(), "passwd")
        self.assertEqual(
            self.commandError(missing, "alice", "--stdin"),
            f"smtpsvc-passwd: cannot update {missing}: No such file or directory\n",
        )

    def test_strcredPlugin(self) -> None:
        """
        --auth scrypt:FILE makes a PasswordFile checker (through the plugin).
        """
        setPassword(self.path, "alice", "secret")
        checker = strcred.makeChecker(f"scrypt:{self.path}")
        self.assertIsInstance(checker, PasswordFile)


class ServiceAuthTests(SynchronousTestCase):
    """
    twist smtpsvc offers and requires AUTH only with a credential source.
    """

    def test_withoutAuth(self) -> None:
        """
        Without --auth, AUTH is neither offered nor required.
        """
        server = tap.buildServer(tap_parse("--deliver", "discard"), reactor=Clock())
        client = MemoryClient(server)
        self.assertFalse(any(line.startswith("AUTH") for line in client.send("EHLO x")[0].lines))
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])

    def test_withMemoryAuth(self) -> None:
        """
        --auth memory:alice:secret offers PLAIN LOGIN CRAM-MD5 and requires AUTH.
        """
        options = tap_parse(
            "--auth", "memory:alice:secret", "--deliver", "discard", "--allow-insecure-auth"
        )
        client = MemoryClient(tap.buildServer(options, reactor=Clock()))
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5", client.send("EHLO x")[0].lines)
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [530])
        self.assertEqual(codes(client.send(authPlain("alice", "secret"))), [235])
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])

    def test_twoSources(self) -> None:
        """
        --auth memory:... beside --auth scrypt:FILE offers PLAIN and LOGIN only: not
        CRAM-MD5, which the file's users could not pass.
        """
        hashes = self.mktemp()
        setPassword(hashes, "bob", "hunter2")
        options = tap_parse(
            *("--auth", "memory:alice:secret", "--auth", f"scrypt:{hashes}"),
            *("--deliver", "discard", "--allow-insecure-auth"),
        )
        client = MemoryClient(tap.buildServer(options, reactor=Clock()))
        self.assertIn("AUTH PLAIN LOGIN", client.send("EHLO x")[0].lines)

    def test_authMethodsOverride(self) -> None:
        """
        --auth-methods chooses among the mechanisms.
        """
        options = tap_parse(
            "--auth", "memory:alice:secret", "--auth-methods", "PLAIN", "--deliver", "discard"
        )
        client = MemoryClient(tap.buildServer(options, reactor=Clock()))
        self.assertIn("AUTH PLAIN", client.send("EHLO x")[0].lines)


def tap_parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class AuthorisationIdentityTests(SynchronousTestCase):
    """
    A PLAIN authorisation identity (RFC 4616 section 2) through the portal handler.
    """

    def handler(self) -> PortalAuthHandler:
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret", bob=b"hunter2")
        return PortalAuthHandler.fromCheckers([checker])

    def test_actingForAnotherUserRefused(self) -> None:
        """
        Alice's right password with Bob's name as the authorisation identity does not log
        in at all (not as Alice, not as Bob): 535 5.7.8, counted as a failed attempt.
        """
        client = connect(self.handler(), hideENHANCEDSTATUSCODES=False, maxAuthFailures=1)
        attempt = authPlain("alice", "secret", "bob")
        [reply] = client.send(attempt)
        self.assertEqual(
            (reply.code, reply.lines), (535, ("5.7.8 Error: Authentication credentials invalid",))
        )
        self.assertIsNone(client.session.user)
        self.assertEqual(codes(client.send(attempt)), [421])

    def test_portalNotAsked(self) -> None:
        """
        The refusal comes before the checkers are asked.
        """
        asked: list[object] = []

        @implementer(ICredentialsChecker)
        class Recording:
            credentialInterfaces = InMemoryUsernamePasswordDatabaseDontUse.credentialInterfaces

            def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
                asked.append(credentials)
                return succeed(credentials.username)

        client = connect(PortalAuthHandler.fromCheckers([Recording()]))
        self.assertEqual(
            codes(client.send(authPlain("alice", "x", "bob"))),
            [535],
        )
        self.assertEqual(asked, [])

    def test_ownIdentityAccepted(self) -> None:
        """
        An authorisation identity equal to the user name, or given instead of it (the
        user name left empty), logs in as that user.
        """
        for user in ("alice", ""):
            client = connect(self.handler())
            command = authPlain(user, "secret", "alice")
            self.assertEqual(codes(client.send(command)), [235], command)
            self.assertEqual(client.session.user, "alice")
