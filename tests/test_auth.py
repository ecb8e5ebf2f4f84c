"""
Tests for AUTH over an in-memory transport: each SASL mechanism, the reference's replies,
and the defences against password guessing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer, provider

from smtpsvc import AuthRequest, IAuthHandler, Session, SMTPError, SMTPServer
from smtpsvc._core._saslprep import saslPrep
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

from .auth_support import authPlain, b64, cramResponse, plainResponse
from .e2e_support import LogCapture
from .memorytls import ClientTLS, connectTLS
from .protocol_support import wires

USERS = {"alice": "secret", "tim": "tanstaaftanstaaf"}


@implementer(IAuthHandler)
class Users:
    """
    Accepts the users in USERS, with any mechanism; bearer tokens are "token-<user>".
    """

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def onAuth(self, auth: AuthRequest, session: Session) -> str:
        self.requests.append(auth)
        expected = USERS.get(auth.username)
        if expected is None:
            raise SMTPError(535, "5.7.8 Error: Authentication credentials invalid")
        if auth.accessToken is not None:
            ok = auth.accessToken == f"token-{auth.username}"
        else:
            ok = auth.validatePassword(expected)
        if not ok:
            raise SMTPError(535, "5.7.8 Error: Authentication credentials invalid")
        return auth.username


def makeServer(handlers: list[object] | None = None, **options: Any) -> SMTPServer:
    options.setdefault("name", "mx.test")
    options.setdefault("allowInsecureAuth", True)
    options.setdefault("authFailureDelay", 0)
    options.setdefault("authMethods", ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"))
    return SMTPServer([Users()] if handlers is None else handlers, reactor=Clock(), **options)


def connect(handlers: list[object] | None = None, **options: Any) -> MemoryClient:
    client = MemoryClient(makeServer(handlers, **options))
    client.send("EHLO client.example")
    return client


class MechanismTests(SynchronousTestCase):
    """
    Each mechanism, the way clients use it (standards section 1.3).
    """

    def test_plainInitialResponse(self) -> None:
        """
        AUTH PLAIN with the credentials on the line gets 235 (standards 4954-05).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        response = plainResponse("alice", "secret")
        self.assertEqual(
            wires(client.send(f"AUTH PLAIN {response}")), ["235 2.7.0 Authentication successful"]
        )
        self.assertEqual(client.session.user, "alice")

    def test_plainRfcExample(self) -> None:
        """
        RFC 4954's example, test/test/1234, decodes as authzid, authcid and password.
        """
        handler = Users()
        client = connect([handler])
        client.send("AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=")
        request = handler.requests[0]
        self.assertEqual(
            (request.method, request.username, request.authzid, request.password),
            ("PLAIN", "test", "test", "1234"),
        )

    def test_plainWithoutInitialResponse(self) -> None:
        """
        AUTH PLAIN alone gets exactly "334 " and the credentials on the next line
        (standards 4954-06).
        """
        client = connect()
        self.assertEqual(client.write(b"AUTH PLAIN\r\n"), [ServerReply(334, ("",))])
        self.assertEqual(client.transport.value(), b"")
        self.assertEqual(
            wires(client.send(plainResponse("alice", "secret"))), ["235 Authentication successful"]
        )

    def test_plainEmptyResponse(self) -> None:
        """
        "=" is the empty response; an empty PLAIN message is invalid (standards 4954-07).
        """
        client = connect()
        self.assertEqual(wires(client.send("AUTH PLAIN =")), ["500 Error: invalid userdata"])

    def test_plainUserInAuthzid(self) -> None:
        """
        A client that puts the user in the authzid and leaves the authcid empty is
        understood, as by the reference.
        """
        client = connect()
        self.assertEqual(
            wires(client.send(authPlain("", "secret", "alice"))),
            ["235 Authentication successful"],
        )

    def test_plainSyntax(self) -> None:
        """
        Two responses on the line get 501.
        """
        client = connect()
        self.assertEqual(
            wires(client.send("AUTH PLAIN a b")), ["501 Error: syntax: AUTH PLAIN [response]"]
        )

    def test_login(self) -> None:
        """
        LOGIN asks for the user name, then the password, in base64.
        """
        client = connect()
        self.assertEqual(wires(client.send("AUTH LOGIN")), ["334 VXNlcm5hbWU6"])
        self.assertEqual(wires(client.send(b64("alice"))), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(wires(client.send(b64("secret"))), ["235 Authentication successful"])

    def test_loginInitialUser(self) -> None:
        """
        AUTH LOGIN with the user name on the line skips the first prompt.
        """
        client = connect()
        self.assertEqual(wires(client.send(f"AUTH LOGIN {b64('alice')}")), ["334 UGFzc3dvcmQ6"])
        self.assertEqual(wires(client.send(b64("secret"))), ["235 Authentication successful"])

    def test_loginEmptyUser(self) -> None:
        """
        An empty user name gets the reference's 500.
        """
        client = connect()
        client.send("AUTH LOGIN")
        self.assertEqual(wires(client.send("=")), ["500 Error: missing username"])

    def test_cramMd5(self) -> None:
        """
        CRAM-MD5: a base64 challenge in message-id form, answered with the user and the
        HMAC-MD5 of the challenge (RFC 2195).
        """
        client = connect()
        [challengeReply] = client.send("AUTH CRAM-MD5")
        self.assertEqual(challengeReply.code, 334)
        challenge = base64.b64decode(challengeReply.lines[0]).decode()
        self.assertRegex(challenge, r"^<[0-9a-f]{32}\.\d+@mx\.test>$")
        self.assertEqual(
            wires(client.send(cramResponse(challengeReply, "tim", "tanstaaftanstaaf"))),
            ["235 Authentication successful"],
        )

    def test_cramMd5RfcVector(self) -> None:
        """
        validatePassword checks RFC 2195's test vector.
        """
        request = AuthRequest(
            method="CRAM-MD5",
            username="tim",
            challenge="<1896.697170952@postoffice.reston.mci.net>",
            challengeResponse="b913a602c7eda7a495b4e6e7334d3890",
        )
        self.assertTrue(request.validatePassword("tanstaaftanstaaf"))
        self.assertFalse(request.validatePassword("wrong"))

    def test_cramMd5Unique(self) -> None:
        """
        Each challenge is new.
        """
        client = connect()
        one = client.send("AUTH CRAM-MD5")[0].lines[0]
        client.send("*")
        two = client.send("AUTH CRAM-MD5")[0].lines[0]
        self.assertNotEqual(one, two)

    def test_cramMd5InitialResponse(self) -> None:
        """
        An initial response to CRAM-MD5 gets 501 (standards 4954-10).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send("AUTH CRAM-MD5 Zm9v")), ["501 5.7.0 Error: syntax: AUTH CRAM-MD5"]
        )

    def test_xoauth2(self) -> None:
        """
        XOAUTH2 with a good token gets 235.
        """
        client = connect()
        response = b64("user=alice\x01auth=Bearer token-alice\x01\x01")
        self.assertEqual(
            wires(client.send(f"AUTH XOAUTH2 {response}")), ["235 Authentication successful"]
        )

    def test_xoauth2GoogleVector(self) -> None:
        """
        Google's documented XOAUTH2 string decodes to its user and token.
        """
        handler = Users()
        client = connect([handler])
        client.send(
            "AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRj"
            "Mk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        )
        request = handler.requests[0]
        self.assertEqual(request.username, "someuser@example.com")
        self.assertEqual(request.accessToken, "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")

    def test_xoauth2ErrorRound(self) -> None:
        """
        A refused XOAUTH2 token gets the reference's 334 error JSON, then 535 after the
        client's empty line.
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        response = b64("user=alice\x01auth=Bearer wrong\x01\x01")
        [challenge] = client.send(f"AUTH XOAUTH2 {response}")
        self.assertEqual(challenge.code, 334)
        self.assertEqual(
            json.loads(base64.b64decode(challenge.lines[0])),
            {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"},
        )
        self.assertEqual(
            wires(client.send("")), ["535 5.7.8 Error: Username and Password not accepted"]
        )
        self.assertIsNone(client.session.user)

    def test_xoauth2WithoutInitialResponse(self) -> None:
        """
        AUTH XOAUTH2 alone gets "334 " and the token on the next line.
        """
        client = connect()
        self.assertEqual(client.send("AUTH XOAUTH2"), [ServerReply(334, ("",))])
        self.assertEqual(
            wires(client.send(b64("user=alice\x01auth=Bearer token-alice\x01\x01"))),
            ["235 Authentication successful"],
        )

    def test_oauthBearer(self) -> None:
        """
        OAUTHBEARER (RFC 7628) with the GS2 header and kvpairs gets 235.
        """
        handler = Users()
        client = connect([handler])
        response = b64("n,a=alice,\x01host=mx.test\x01port=587\x01auth=Bearer token-alice\x01\x01")
        self.assertEqual(
            wires(client.send(f"AUTH OAUTHBEARER {response}")), ["235 Authentication successful"]
        )
        self.assertEqual(handler.requests[0].authzid, "alice")

    def test_oauthBearerErrorRound(self) -> None:
        """
        A refused OAUTHBEARER token gets RFC 7628's error JSON; the client answers AQ==
        and gets 535.
        """
        client = connect()
        response = b64("n,a=alice,\x01auth=Bearer wrong\x01\x01")
        [challenge] = client.send(f"AUTH OAUTHBEARER {response}")
        self.assertEqual(
            json.loads(base64.b64decode(challenge.lines[0]))["status"], "invalid_token"
        )
        self.assertEqual([r.code for r in client.send("AQ==")], [535])

    def test_oauthBearerChannelBindingRefused(self) -> None:
        """
        A GS2 header asking for channel binding is refused.
        """
        client = connect()
        response = b64("p=tls-unique,a=alice,\x01auth=Bearer token-alice\x01\x01")
        self.assertEqual([r.code for r in client.send(f"AUTH OAUTHBEARER {response}")], [500])


class ExchangeTests(SynchronousTestCase):
    """
    Cancelling, bad input, and what AUTH changes (spec section 5.3).
    """

    def test_cancel(self) -> None:
        """
        "*" cancels an exchange with 501 (standards 4954-08).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        client.send("AUTH LOGIN")
        self.assertEqual(wires(client.send("*")), ["501 5.7.0 Authentication aborted"])
        self.assertEqual([r.code for r in client.send("NOOP")], [250])

    def test_spacesAroundAResponse(self) -> None:
        """
        Spaces and tabs around a response, or around its "*", are taken as they are around
        the AUTH command's own initial response: left out (differential QA: a continuation
        line with a trailing space got 501 invalid base64, the same response on the AUTH
        line 235).
        """
        response = b64("\x00alice\x00secret")
        for line in (
            f"{response} ",
            f" {response}",
            f"{response}  ",
            f"{response}\t",
            f"\t{response}",
        ):
            client = connect()
            client.send("AUTH PLAIN")
            self.assertEqual([r.code for r in client.send(line)], [235], repr(line))
        client = connect()
        self.assertEqual([r.code for r in client.send(f"AUTH PLAIN {response} ")], [235])
        client = connect(hideENHANCEDSTATUSCODES=False)
        client.send("AUTH LOGIN")
        self.assertEqual(wires(client.send("* ")), ["501 5.7.0 Authentication aborted"])
        client.send("AUTH LOGIN")
        self.assertEqual(wires(client.send("*\t")), ["501 5.7.0 Authentication aborted"])

    def test_badBase64(self) -> None:
        """
        A response that is not base64 gets 501 5.5.2 (standards 4954-09).
        """
        for bad in ("!!!", "=AAA", "AAA=BBB", "QUJD?"):
            client = connect(hideENHANCEDSTATUSCODES=False)
            client.send("AUTH PLAIN")
            self.assertEqual(wires(client.send(bad)), ["501 5.5.2 Error: invalid base64 data"], bad)

    def test_base64OfNotUTF8(self) -> None:
        """
        A response that is base64, of bytes that are not UTF-8, is data of the wrong
        shape: 500 invalid userdata, not 501 invalid base64, in every mechanism.
        """
        notUTF8 = base64.b64encode(b"\x00alice\x00\xffsecret").decode("ascii")
        for command in (f"AUTH PLAIN {notUTF8}", f"AUTH LOGIN {notUTF8}"):
            client = connect(hideENHANCEDSTATUSCODES=False)
            self.assertEqual(
                wires(client.send(command)), ["500 5.5.2 Error: invalid userdata"], command
            )

    def test_controlCharactersInUser(self) -> None:
        """
        Control characters in a user name are refused before any handler sees them.
        """
        handler = Users()
        client = connect([handler])
        response = plainResponse("u\r\nX-Injected: 1", "secret")
        self.assertEqual(
            wires(client.send(f"AUTH PLAIN {response}")), ["500 Error: invalid userdata"]
        )
        self.assertEqual(handler.requests, [])

    def test_wrongPassword(self) -> None:
        """
        A wrong password gets 535 5.7.8 (standards 4954-05).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send(authPlain("alice", "nope"))),
            ["535 5.7.8 Error: Authentication credentials invalid"],
        )

    def test_unknownMechanism(self) -> None:
        """
        A mechanism that is unknown, missing, or not offered gets 504 (standards 4954-04).
        """
        client = connect(authMethods=("PLAIN",))
        for command in ("AUTH NOSUCH", "AUTH", "AUTH LOGIN"):
            self.assertEqual(
                wires(client.send(command)), ["504 Error: Unrecognized authentication type"]
            )

    def test_advertisedInOrder(self) -> None:
        """
        EHLO lists the mechanisms in the configured order.
        """
        client = MemoryClient(makeServer(authMethods=("cram-md5", "PLAIN")))
        self.assertIn("AUTH CRAM-MD5 PLAIN", client.send("EHLO x")[0].lines)

    def test_beforeHello(self) -> None:
        """
        AUTH before EHLO gets 503 (standards 4954-03).
        """
        client = MemoryClient(makeServer())
        self.assertEqual([r.code for r in client.send(f"AUTH PLAIN {b64('a')}")], [503])

    def test_inTransaction(self) -> None:
        """
        AUTH after MAIL gets 503 (standards 4954-13).
        """
        client = connect(authOptional=True)
        client.send("MAIL FROM:<a@b.example>")
        self.assertEqual([r.code for r in client.send("AUTH PLAIN")], [503])

    def test_afterSuccess(self) -> None:
        """
        After 235, AUTH is no longer advertised and a second AUTH gets 503
        (standards 4954-12).
        """
        client = connect()
        client.send(authPlain("alice", "secret"))
        self.assertNotIn("AUTH", " ".join(client.send("EHLO x")[0].lines))
        self.assertEqual(
            wires(client.send("AUTH PLAIN")), ["503 Error: No identity changes permitted"]
        )
        self.assertEqual(client.session.transmissionType, "ESMTPA")

    def test_failedMechanismLeavesNoState(self) -> None:
        """
        An aborted exchange leaves nothing behind: the next one starts clean
        (CVE-2011-1720).
        """
        client = connect()
        client.send("AUTH CRAM-MD5")
        client.send("*")
        client.send("AUTH LOGIN")
        client.send("*")
        self.assertEqual(
            wires(client.send(authPlain("alice", "secret"))),
            ["235 Authentication successful"],
        )

    def test_noHandler(self) -> None:
        """
        Without an authentication handler, AUTH gets the reference's 535.
        """
        client = connect([RecordingHandler()])
        self.assertEqual(
            wires(client.send(authPlain("a", "b"))),
            ["535 Authentication not implemented"],
        )

    def test_handlerChain(self) -> None:
        """
        Handlers are asked in order; None passes to the next; the first user wins.
        """
        asked: list[str] = []

        @implementer(IAuthHandler)
        class Abstain:
            def onAuth(self, auth: AuthRequest, session: Session) -> None:
                asked.append("abstain")

        @implementer(IAuthHandler)
        class Later:
            def onAuth(self, auth: AuthRequest, session: Session) -> Deferred[str]:
                asked.append("later")
                d: Deferred[str] = Deferred()
                self.d = d
                return d

        later = Later()
        client = connect([Abstain(), later, Users()])
        self.assertEqual(client.send(authPlain("x", "y")), [])
        later.d.callback("someone")
        self.assertEqual(wires(client.received()), ["235 Authentication successful"])
        self.assertEqual((asked, client.session.user), (["abstain", "later"], "someone"))

    def test_falseAnswerRefuses(self) -> None:
        """
        A handler that answers False, 0 or "" (say, a password check's result), or any
        other false value (an empty list: a database query that found no one, API QA),
        refuses with 535, as in the reference, and the chain stops there: no later
        handler accepts.  So does a value that cannot say whether it is false.  True,
        and any other value but None, is the user.  An SMTPError returned instead of
        raised refuses with that reply.  At once or later.
        """

        class NoRows:
            def __bool__(self) -> bool:
                return False

        class Ambiguous:
            def __bool__(self) -> bool:
                raise ValueError("ambiguous")

        answers: list[object] = [
            False,
            0,
            "",
            b"",
            [],
            {},
            (),
            0.0,
            NoRows(),
            Ambiguous(),
            True,
            "alice",
            ["alice"],
            SMTPError(454, "Busy"),
        ]
        for answer in answers:
            for later in (False, True):

                @implementer(IAuthHandler)
                class Check:
                    def __init__(self, answer: object, later: bool) -> None:
                        self.answer, self.later = answer, later

                    def onAuth(self, auth: AuthRequest, session: Session) -> object:
                        return succeed(self.answer) if self.later else self.answer

                client = connect([Check(answer, later), Users()])
                replies = wires(client.send(authPlain("alice", "secret")))
                case = (answer, later)
                if isinstance(answer, SMTPError):
                    self.assertEqual(replies, ["454 Busy"], case)
                elif answer is True or answer == "alice" or answer == ["alice"]:
                    self.assertEqual(replies, ["235 Authentication successful"], case)
                    self.assertEqual(client.session.user, answer, case)
                else:
                    self.assertEqual(
                        replies, ["535 Error: Authentication credentials invalid"], case
                    )
                    self.assertIsNone(client.session.user, case)

    def test_answerAfterTheClientLeft(self) -> None:
        """
        A handler's answer that comes after the client has gone is dropped: the session
        is not authenticated and no login is logged.
        """
        log = LogCapture(self)
        later: Deferred[str] = Deferred()

        @implementer(IAuthHandler)
        class Later:
            def onAuth(self, auth: AuthRequest, session: Session) -> Deferred[str]:
                return later

        client = connect([Later()])
        self.assertEqual(client.send(authPlain("alice", "secret")), [])
        client.disconnect()
        later.callback("alice")
        self.assertIsNone(client.session.user)
        self.assertEqual(log.matching("Authenticat"), [])

    def test_4954_16_backendDownIsTemporary(self) -> None:
        """
        A handler that fails unexpectedly gives a temporary 454 and a logged traceback.
        """

        @implementer(IAuthHandler)
        class Broken:
            def onAuth(self, auth: AuthRequest, session: Session) -> None:
                raise ConnectionError("directory unreachable")

        client = connect([Broken()], hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send(authPlain("a", "b"))),
            ["454 4.7.0 Temporary authentication failure"],
        )
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_authLineLimit(self) -> None:
        """
        AUTH lines may be 12288 bytes long; a longer one gets 500 5.5.6
        (standards 4954-11).
        """
        client = connect(hideENHANCEDSTATUSCODES=False, maxCommandLength=512)
        client.send("AUTH PLAIN")
        self.assertEqual(wires(client.send("A" * 12288)), ["500 5.5.2 Error: invalid userdata"])
        client.send("AUTH PLAIN")
        self.assertEqual(
            wires(client.send("A" * 12300)), ["500 5.5.6 Error: SASL response too long"]
        )
        self.assertEqual(
            wires(client.send("AUTH PLAIN " + "A" * 12300)),
            ["500 5.5.6 Error: SASL response too long"],
        )
        self.assertEqual(
            wires(client.send("NOOP " + "x" * 600)), ["500 5.5.2 Error: line too long"]
        )

    def test_passwordsNeverLogged(self) -> None:
        """
        Nothing logged during AUTH contains the password or the token.
        """
        seen: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            seen.append(repr(event) + (formatEvent(event) or ""))

        globalLogPublisher.addObserver(observe)
        try:
            client = connect()
            client.send(authPlain("alice", "hunter2-wrong"))
            client.send(authPlain("alice", "secret"))
            other = connect()
            token = b64("user=alice\x01auth=Bearer sesame-token\x01\x01")
            other.send(f"AUTH XOAUTH2 {token}")
        finally:
            globalLogPublisher.removeObserver(observe)
        logged = "\n".join(seen)
        self.assertIn("Authenticated as alice", logged)
        for secret in ("hunter2-wrong", "secret", "sesame-token"):
            self.assertNotIn(secret, logged)


class RequirementTests(SynchronousTestCase):
    """
    When AUTH is required, and when it may not be used.
    """

    def test_mailNeedsAuth(self) -> None:
        """
        MAIL, RCPT and DATA before AUTH get 530 (standards 4954-15).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send("MAIL FROM:<a@b.example>")),
            ["530 5.7.0 Error: authentication Required"],
        )
        client.send(authPlain("alice", "secret"))
        self.assertEqual([r.code for r in client.send("MAIL FROM:<a@b.example>")], [250])

    def test_customMessage(self) -> None:
        """
        authRequiredMessage words the 530.
        """
        client = connect(authRequiredMessage="Log in first, please")
        self.assertEqual(
            wires(client.send("MAIL FROM:<a@b.example>")), ["530 Log in first, please"]
        )

    def test_authOptional(self) -> None:
        """
        With authOptional, mail goes through without AUTH, which is still offered.
        """
        client = MemoryClient(makeServer(authOptional=True))
        self.assertIn(
            "AUTH PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER", client.send("EHLO x")[0].lines
        )
        self.assertEqual([r.code for r in client.send("MAIL FROM:<a@b.example>")], [250])

    def test_disabled(self) -> None:
        """
        Disabling AUTH turns off the advertisement, the command and the requirement.
        """
        client = MemoryClient(makeServer(disabledCommands=("AUTH",)))
        self.assertFalse(any(line.startswith("AUTH") for line in client.send("EHLO x")[0].lines))
        self.assertEqual(
            [r.code for r in client.send("AUTH PLAIN", "MAIL FROM:<a@b.example>")], [502, 250]
        )

    def test_unauthenticatedLimit(self) -> None:
        """
        The tenth command of an unauthenticated client gets 421 and the connection
        closes; AUTH itself does not count.
        """
        client = MemoryClient(makeServer())
        replies = client.send("EHLO x", *["NOOP"] * 7)
        self.assertEqual([r.code for r in replies], [250] * 8)
        # AUTH does not count; its continuation lines do, as in the reference.
        self.assertEqual([r.code for r in client.send("AUTH LOGIN", "*")], [334, 501])
        self.assertEqual(
            wires(client.send("NOOP")), ["421 Error: too many unauthenticated commands"]
        )
        self.assertTrue(client.closed)

    def test_unauthenticatedLimitOff(self) -> None:
        """
        maxAllowedUnauthenticatedCommands=None turns the limit off (spec section 14 #3).
        """
        client = MemoryClient(makeServer(maxAllowedUnauthenticatedCommands=None))
        self.assertEqual([r.code for r in client.send(*["NOOP"] * 30)], [250] * 30)

    def test_unauthenticatedLimitEndsWithAuth(self) -> None:
        """
        Once authenticated, commands no longer count.
        """
        client = connect(maxAllowedUnauthenticatedCommands=3)
        client.send(authPlain("alice", "secret"))
        self.assertEqual([r.code for r in client.send(*["NOOP"] * 5)], [250] * 5)

    def test_plaintextRefused(self) -> None:
        """
        Without allowInsecureAuth, AUTH on a plaintext connection that offers STARTTLS
        gets the reference's 538 (standards 4954-02).
        """
        client = connect(allowInsecureAuth=False, hideENHANCEDSTATUSCODES=False)
        self.assertEqual(
            wires(client.send("AUTH PLAIN")),
            ["538 5.7.11 Error: Must issue a STARTTLS command first"],
        )

    def test_plaintextAllowedWhenStarttlsHidden(self) -> None:
        """
        As in the reference, hiding STARTTLS lifts the rule.
        """
        client = connect(allowInsecureAuth=False, hideSTARTTLS=True)
        self.assertEqual([r.code for r in client.send("AUTH PLAIN")], [334])

    def test_afterStarttls(self) -> None:
        """
        After STARTTLS, AUTH works; STARTTLS forgets an earlier login (RFC 3207).
        """
        from .memorytls import issue

        mx = issue("mx.example.test")
        server = makeServer(allowInsecureAuth=False, earlyTalkerDelay=0, key=mx.key, cert=mx.cert)
        connection = connectTLS(server)
        connection.client.replies()
        connection.send("EHLO x", "STARTTLS")
        connection.startTLS(ClientTLS())
        connection.send("EHLO x")
        self.assertEqual(
            wires(connection.send(authPlain("alice", "secret"))),
            ["235 Authentication successful"],
        )

    def test_starttlsForgetsLogin(self) -> None:
        """
        A login made in clear (when allowed) does not survive STARTTLS
        (standards 2.1's state test).
        """
        from .memorytls import issue

        mx = issue("mx.example.test")
        server = makeServer(earlyTalkerDelay=0, key=mx.key, cert=mx.cert)
        connection = connectTLS(server)
        connection.client.replies()
        connection.send("EHLO a", authPlain("alice", "secret"))
        connection.send("STARTTLS")
        connection.startTLS(ClientTLS())
        self.assertEqual([r.code for r in connection.send("MAIL FROM:<a@b.example>")], [503])
        self.assertEqual(
            [r.code for r in connection.send("EHLO b", "MAIL FROM:<a@b.example>")], [250, 530]
        )


class BruteForceTests(SynchronousTestCase):
    """
    Password guessing is slowed, then stopped (standards 2.6).
    """

    def test_failureDelay(self) -> None:
        """
        Each failure's reply waits longer: the delay times the failures so far.
        """
        client = connect(authFailureDelay=2.0)
        wrong = authPlain("alice", "nope")
        self.assertEqual(client.send(wrong, "NOOP"), [])
        client.clock.advance(1.9)
        self.assertEqual(client.received(), [])
        client.clock.advance(0.1)
        self.assertEqual([r.code for r in client.received()], [535, 250])
        self.assertEqual(client.send(wrong), [])
        client.clock.advance(3.9)
        self.assertEqual(client.received(), [])
        client.clock.advance(0.1)
        self.assertEqual([r.code for r in client.received()], [535])

    def test_closeAfterFailures(self) -> None:
        """
        Three failures keep the connection; the fourth gets 421 and closes
        (RFC 4954 section 9, standards 4954-20).
        """
        client = connect(hideENHANCEDSTATUSCODES=False)
        wrong = authPlain("alice", "nope")
        for _ in range(3):
            self.assertEqual([r.code for r in client.send(wrong)], [535])
        self.assertFalse(client.closed)
        self.assertEqual(
            wires(client.send(wrong)), ["421 4.7.0 Error: too many authentication failures"]
        )
        self.assertTrue(client.closed)

    def test_addressBudget(self) -> None:
        """
        After authFailureLimit failures from one address within the window, its AUTH
        gets 454 4.7.0 on every connection until the failures age out.
        """
        server = makeServer(authFailureLimit=4, authFailureWindow=30, hideENHANCEDSTATUSCODES=False)
        wrong = authPlain("alice", "nope")
        right = authPlain("alice", "secret")
        for _ in range(2):
            client = MemoryClient(server)
            client.send("EHLO x")
            self.assertEqual([r.code for r in client.send(wrong, wrong)], [535, 535])
        fresh = MemoryClient(server)
        fresh.send("EHLO x")
        self.assertEqual(
            wires(fresh.send(right)),
            ["454 4.7.0 Error: too many authentication failures, try again later"],
        )
        other = MemoryClient(server, peer=("198.51.100.7", 5000))
        other.send("EHLO x")
        self.assertEqual([r.code for r in other.send(right)], [235])
        server.reactor.advance(31)
        self.assertEqual([r.code for r in fresh.send(right)], [235])

    def test_addressBudgetPerIPv6Network(self) -> None:
        """
        The addresses of one IPv6 /64 share a budget, as they share maxClientsPerAddress's
        count (IPv6 QA: each address of a client's /64 had a budget of its own); another
        /64 has its own.
        """
        server = makeServer(authFailureLimit=2, authFailureWindow=30)
        wrong = authPlain("alice", "nope")
        right = authPlain("alice", "secret")

        def attempts(host: str, *lines: str) -> list[int]:
            client = MemoryClient(server, peer=(host, 5000))
            client.send("EHLO x")
            return [r.code for r in client.send(*lines)]

        self.assertEqual(attempts("2001:db8::1", wrong, wrong), [535, 535])
        self.assertEqual(attempts("2001:db8::2", right), [454])
        self.assertEqual(attempts("2001:db8:0:1::1", right), [235])

    def test_temporaryFailuresDoNotCount(self) -> None:
        """
        A 454 from the backend is not held against the client.
        """

        @implementer(IAuthHandler)
        class Down:
            def onAuth(self, auth: AuthRequest, session: Session) -> None:
                raise SMTPError(454, "4.7.0 Temporary authentication failure")

        client = connect([Down()])
        attempt = authPlain("alice", "secret")
        self.assertEqual([r.code for r in client.send(*[attempt] * 6)], [454] * 6)
        self.assertFalse(client.closed)


class SASLprepTests(SynchronousTestCase):
    """
    SASLprep (RFC 4013) of authorisation identities (standards 4954-22), and the user
    names and passwords it leaves alone.
    """

    def test_rfcExamples(self) -> None:
        """
        The examples of RFC 4013 section 3: soft hyphen mapped to nothing, case kept,
        compatibility characters normalised (NFKC), a control character prohibited, and
        a right-to-left string that does not end right-to-left refused.
        """
        self.assertEqual(saslPrep("I\u00adX"), "IX")
        self.assertEqual(saslPrep("user"), "user")
        self.assertEqual(saslPrep("USER"), "USER")
        self.assertEqual(saslPrep("\u00aa"), "a")
        self.assertEqual(saslPrep("\u2168"), "IX")
        self.assertIsNone(saslPrep("\u0007"))
        self.assertIsNone(saslPrep("\u0627\u0031"))

    def test_mappingAndProhibition(self) -> None:
        """
        Non-ASCII spaces become spaces; each prohibited table refuses; a string of
        characters mapped to nothing prepares to the empty string.
        """
        self.assertEqual(saslPrep("a\u00a0b\u3000c"), "a b c")
        self.assertEqual(saslPrep("\u00ad\u200b\ufe0f"), "")
        self.assertEqual(saslPrep(""), "")
        for prohibited in (
            "\u2028",  # C.2.2 non-ASCII control
            "\ue000",  # C.3 private use
            "\ufdd0",  # C.4 non-character
            "\ufff9",  # C.6 inappropriate for plain text
            "\u2ff0",  # C.7 inappropriate for canonical representation
            "\u200e",  # C.8 change of display direction
            "\U000e0041",  # C.9 tagging
        ):
            self.assertIsNone(saslPrep(f"alice{prohibited}"), repr(prohibited))

    def test_bidi(self) -> None:
        """
        Right-to-left text is accepted when it starts and ends right-to-left and holds
        no left-to-right letter (RFC 3454 section 6).
        """
        self.assertEqual(saslPrep("\u05d0\u0031\u05d1"), "\u05d0\u0031\u05d1")
        self.assertIsNone(saslPrep("\u05d0a\u05d1"))
        self.assertIsNone(saslPrep("1\u05d0"))

    def test_unassigned(self) -> None:
        """
        Code points unassigned in Unicode 3.2 are refused in stored strings, kept in
        query strings.
        """
        self.assertIsNone(saslPrep("alice\U0001f600"))
        self.assertEqual(saslPrep("alice\U0001f600", allowUnassigned=True), "alice\U0001f600")

    def test_plainAuthzidAsSent(self) -> None:
        """
        A PLAIN authorisation identity that prepares well reaches the handlers as the
        client sent it, not in its prepared form.  It is a query string (RFC 3454 section
        7): code points Unicode 3.2 left unassigned, such as an emoji, are allowed.
        """
        for authzid in ("alice\u00ad", "\U0001f98afox"):
            handler = Users()
            client = connect([handler])
            response = plainResponse("alice", "secret", authzid)
            self.assertEqual([r.code for r in client.send(f"AUTH PLAIN {response}")], [235])
            self.assertEqual(handler.requests[0].authzid, authzid)

    def test_credentialsNotPrepared(self) -> None:
        """
        User names and passwords are given to the handlers as sent, even when SASLprep
        would refuse them: the handlers' stores were not made with it.
        """
        handler = Users()
        client = connect([handler])
        response = plainResponse("alice\ue000", "\u05d0secret")
        self.assertEqual([r.code for r in client.send(f"AUTH PLAIN {response}")], [535])
        request = handler.requests[0]
        self.assertEqual((request.username, request.password), ("alice\ue000", "\u05d0secret"))

    def test_oauthBearerUnpreparableAuthzid(self) -> None:
        """
        An OAUTHBEARER C{a=} identity that SASLprep prohibits, or maps to nothing, is
        refused like other malformed responses, without asking the handlers.
        """
        handler = Users()
        client = connect([handler])
        for authzid in ("alice\u2028", "\u00ad"):
            response = b64(f"n,a={authzid},\x01auth=Bearer token-alice\x01\x01")
            self.assertEqual(
                wires(client.send(f"AUTH OAUTHBEARER {response}")),
                ["500 Error: invalid userdata"],
            )
        self.assertEqual(handler.requests, [])
        self.assertIsNone(client.session.user)
