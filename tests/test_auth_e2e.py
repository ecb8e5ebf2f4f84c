"""
End-to-end AUTH tests: real clients (smtplib, swaks, curl) over real sockets on 127.0.0.1,
against in-process servers, the C{twist smtpsvc} command and the documentation's AUTH
examples (C{docs/examples/auth_*.py}), with STARTTLS and the test certificates.

The in-memory exchanges (every reply of every mechanism) are in L{tests.test_auth} and
L{tests.test_cred}; these tests check that real clients and the real command line agree
with them.  Helpers are in L{tests.auth_support} and L{tests.e2e_support}.
"""

from __future__ import annotations

import base64
import json
import mailbox
import os
import re
import smtplib
import subprocess
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType, SimpleNamespace
from typing import Any, cast

from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest

from smtpsvc import SMTPServer
from smtpsvc.cred import PortalAuthHandler, setPassword
from smtpsvc.tap import Options, buildServer
from smtpsvc.testing import RecordingHandler, ServerReply

from .auth_support import (
    MX_NAME,
    AuthRecorder,
    MXClient,
    b64,
    clientContext,
    connectionsDropped,
    haveCurl,
    listenOn,
    passwdCommand,
    plainResponse,
    runCurl,
    runExampleMain,
    runPasswd,
    serverCertificate,
    swaksSupportsTLS,
    writeCertificates,
)
from .e2e_support import (
    EXIT_TIMEOUT,
    LISTEN,
    E2ETestCase,
    LogCapture,
    RawClient,
    aliceChecker,
    haveSwaks,
    loadExample,
    maildirArgs,
    runSwaks,
    startServer,
    startTwist,
    theReactor,
    workspace,
)
from .service_support import JSON_LOGS, startService

USER = "alice"
PASSWORD = "secret"
SENDER = "a@example.org"
RECIPIENT = "b@example.net"
MESSAGE = (
    f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: auth e2e\r\n\r\nHello from {USER}.\r\n"
).encode()
#: What the in-process servers offer, in this order.
MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
#: Seconds a failed AUTH waits in tests that fail on purpose (the default is 1).
FAILURE_DELAY = 0.05


async def startAuthServer(
    testCase: E2ETestCase, handlers: Sequence[object], **options: Any
) -> tuple[SMTPServer, int]:
    """
    An in-process server with the test certificate that requires AUTH, offers
    L{MECHANISMS} and keeps failed attempts quick, unless C{options} say otherwise.
    """
    options = {
        **serverCertificate(),
        "authOptional": False,
        "authMethods": MECHANISMS,
        "authFailureDelay": FAILURE_DELAY,
        **options,
    }
    return await startServer(testCase, handlers, **options)


def maildirMessages(path: str) -> list[bytes]:
    """
    The messages in the Maildir at C{path}.
    """
    box = mailbox.Maildir(path, factory=None, create=False)
    return [box.get_bytes(key) for key in box.iterkeys()]


def authFeature(client: smtplib.SMTP) -> list[str]:
    """
    The mechanisms the last EHLO reply offered, as smtplib parsed it.
    """
    return client.esmtp_features.get("auth", "").split()


class SmtplibAuthTests(E2ETestCase):
    """
    Python's smtplib authenticates inside STARTTLS, with each mechanism it knows.
    """

    async def test_eachMechanismAfterStarttls(self) -> None:
        """
        smtplib logs in with PLAIN, LOGIN and CRAM-MD5 after STARTTLS, and each message
        it then sends is recorded as alice's.
        """
        recorder = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [checker, recorder])

        def send(mechanism: str) -> tuple[list[str], tuple[int, bytes]]:
            with MXClient(port) as client:
                client.secure()
                offered = authFeature(client)
                reply = client.authenticate(mechanism, USER, PASSWORD)
                self.assertEqual(client.sendmail(SENDER, [RECIPIENT], MESSAGE), {})
                client.quit()
            return offered, reply

        for mechanism in MECHANISMS:
            offered, (code, _) = await deferToThread(send, mechanism)
            self.assertEqual(offered, list(MECHANISMS))
            self.assertEqual(code, 235, mechanism)
        self.assertEqual([m.user for m in recorder.messages], [USER] * len(MECHANISMS))
        self.assertEqual([m.data for m in recorder.messages], [MESSAGE] * len(MECHANISMS))

    async def test_wrongPassword(self) -> None:
        """
        A wrong password is SMTPAuthenticationError 535 with each mechanism, and no
        message can be sent.
        """
        recorder = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [checker, recorder])

        def fail() -> tuple[list[int], int]:
            codes = []
            with MXClient(port) as client:
                client.secure()
                # Three failures on one connection: the most maxAuthFailures allows.
                for mechanism in MECHANISMS:
                    with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                        client.authenticate(mechanism, USER, "not " + PASSWORD)
                    codes.append(caught.exception.smtp_code)
                with self.assertRaises(smtplib.SMTPSenderRefused) as refused:
                    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
                client.quit()
            return codes, refused.exception.smtp_code

        codes, mailCode = await deferToThread(fail)
        self.assertEqual(codes, [535, 535, 535])
        self.assertEqual(mailCode, 530)
        self.assertEqual(recorder.messages, [])

    async def test_4954_01_plaintextPasswordsNeedStarttls(self) -> None:
        """
        smtplib's login() in clear gets 538 (STARTTLS first); after starttls() on the
        same connection it logs in and sends.
        """
        recorder = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [checker, recorder])

        def talk() -> tuple[int, bytes, int]:
            with MXClient(port) as client:
                client.ehlo()
                with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                    client.login(USER, PASSWORD)
                client.starttls(context=clientContext())
                code, _ = client.login(USER, PASSWORD)
                self.assertEqual(client.sendmail(SENDER, [RECIPIENT], MESSAGE), {})
                client.quit()
            return caught.exception.smtp_code, caught.exception.smtp_error, code

        refusedCode, refusedText, code = await deferToThread(talk)
        self.assertEqual(refusedCode, 538)
        self.assertEqual(refusedText, b"Error: Must issue a STARTTLS command first")
        self.assertEqual(code, 235)
        self.assertEqual([m.user for m in recorder.messages], [USER])


class SwaksAuthTests(E2ETestCase):
    """
    swaks authenticates inside STARTTLS, verifying the test certificate.
    """

    def setUp(self) -> None:
        if not haveSwaks():
            raise SkipTest("swaks is not installed (apt-get install swaks)")
        if not swaksSupportsTLS():
            raise SkipTest(
                "this swaks cannot do STARTTLS: it needs Perl's Net::SSLeay "
                "(apt-get install libnet-ssleay-perl)"
            )
        directory = workspace(self)
        self.files = writeCertificates(directory)

    def swaksTLS(self) -> list[str]:
        """
        swaks's flags for STARTTLS verified against the test CA, for L{MX_NAME}.
        """
        return ["-tls", "--tls-verify", "--tls-ca-path", self.files.ca, "--tls-sni", MX_NAME]

    async def test_eachMechanism(self) -> None:
        """
        swaks -tls -a PLAIN, -a LOGIN and -a CRAM-MD5 each deliver a message as alice.
        """
        recorder = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [checker, recorder])
        for mechanism in MECHANISMS:
            result = await runSwaks(
                port,
                *self.swaksTLS(),
                "-a",
                mechanism,
                "-au",
                USER,
                "-ap",
                PASSWORD,
                "--from",
                SENDER,
                "--to",
                RECIPIENT,
            )
            output = result.stdout + result.stderr
            self.assertEqual(result.returncode, 0, output)
            self.assertIn(f"AUTH {mechanism}", output)
            self.assertIn("<~  235 Authentication successful", output)
        self.assertEqual([m.user for m in recorder.messages], [USER] * len(MECHANISMS))

    async def test_wrongPassword(self) -> None:
        """
        swaks with a wrong password exits non-zero after a 535, and nothing is delivered.
        """
        recorder = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [checker, recorder])
        result = await runSwaks(
            port,
            *self.swaksTLS(),
            "-a",
            "PLAIN",
            "-au",
            USER,
            "-ap",
            "not " + PASSWORD,
            "--to",
            RECIPIENT,
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn("<~* 535 ", output)
        self.assertEqual(recorder.messages, [])


def errorChallenge(conversation: str) -> dict[str, str]:
    """
    The JSON of the 334 error challenge in curl's verbose output.
    """
    found = re.search(r"^< 334 (\S+)\s*$", conversation, re.MULTILINE)
    assert found is not None, f"no 334 error challenge in:\n{conversation}"
    detail: dict[str, str] = json.loads(base64.b64decode(found.group(1)))
    return detail


class CurlAuthTests(E2ETestCase):
    """
    curl authenticates inside STARTTLS with OAuth bearer tokens, and with PLAIN in one line.
    """

    TOKEN = "ya29.token-for-alice"

    def setUp(self) -> None:
        if not haveCurl():
            raise SkipTest("curl is not installed (apt-get install curl)")
        directory = workspace(self)
        self.files = writeCertificates(directory)
        self.message = os.path.join(directory, "message.eml")
        with open(self.message, "wb") as f:
            f.write(MESSAGE)

    def curlSend(self, *args: str) -> list[str]:
        """
        curl's flags for STARTTLS verified against the test CA, and for one message.
        """
        return [
            "--ssl-reqd",
            "--cacert",
            self.files.ca,
            *args,
            "--mail-from",
            SENDER,
            "--mail-rcpt",
            RECIPIENT,
            "--upload-file",
            self.message,
        ]

    async def _curlBearer(
        self, mechanism: str, token: str
    ) -> tuple[AuthRecorder, RecordingHandler, LogCapture, subprocess.CompletedProcess[str]]:
        """
        Send one message with curl, authenticating with C{token} and C{mechanism}, to a
        server that offers only C{mechanism} and knows L{TOKEN} as alice's.

        @return: the server's record of AUTH requests and of messages, its log from
            before curl ran, and what curl did.
        """
        recorder = AuthRecorder()
        received = RecordingHandler()
        tokens = loadExample("auth_tokens").TokenAuth({self.TOKEN: USER})
        _, port = await startAuthServer(
            self, [recorder, tokens, received], authMethods=(mechanism,)
        )
        log = LogCapture(self)
        result = await runCurl(port, *self.curlSend("--oauth2-bearer", token, "-u", USER + ":"))
        return recorder, received, log, result

    async def _bearer(self, mechanism: str) -> None:
        recorder, received, log, result = await self._curlBearer(mechanism, self.TOKEN)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(log.mentioning(f"Authenticated as {USER}"), log.events)
        self.assertEqual(log.mentioning(self.TOKEN), [])
        self.assertIn(f"> AUTH {mechanism}", result.stderr)
        self.assertEqual(
            [(r.method, r.username, r.accessToken) for r in recorder.requests],
            [(mechanism, USER, self.TOKEN)],
        )
        self.assertEqual([(m.user, m.data) for m in received.messages], [(USER, MESSAGE)])

    async def _badBearer(self, mechanism: str) -> tuple[dict[str, str], str]:
        """
        Send a bad token with C{mechanism}; check that the handler saw it, that curl
        failed, that nothing was sent and that the token was not logged.

        @return: the JSON error and curl's verbose output.
        """
        token = "expired-token-0c5e"
        recorder, received, log, result = await self._curlBearer(mechanism, token)
        # 67 is CURLE_LOGIN_DENIED.
        self.assertEqual(result.returncode, 67, result.stderr)
        self.assertEqual(
            [(r.method, r.accessToken) for r in recorder.requests], [(mechanism, token)]
        )
        self.assertTrue(log.mentioning("Authentication failed"), log.events)
        self.assertEqual(log.mentioning(token), [])
        self.assertEqual(received.messages, [])
        return errorChallenge(result.stderr), result.stderr

    async def test_oauthBearer(self) -> None:
        """
        curl --oauth2-bearer authenticates with OAUTHBEARER (RFC 7628) and sends.
        """
        await self._bearer("OAUTHBEARER")

    async def test_xoauth2(self) -> None:
        """
        curl --oauth2-bearer authenticates with XOAUTH2 and sends.
        """
        await self._bearer("XOAUTH2")

    async def test_oauthBearerRefused(self) -> None:
        """
        A bad token with OAUTHBEARER: the handler sees it, curl gets the error challenge,
        then 535, and fails.
        """
        error, conversation = await self._badBearer("OAUTHBEARER")
        self.assertEqual(error, {"status": "invalid_token"})
        # RFC 7628 section 3.2.3: the client answers the error with a lone ^A, and the
        # server then ends the exchange with a failure.
        self.assertIn("> AQ==\n", conversation)
        self.assertIn("< 535 Error: Username and Password not accepted", conversation)

    async def test_xoauth2Refused(self) -> None:
        """
        A bad token with XOAUTH2: the handler sees it, curl gets Google's error challenge
        and fails.
        """
        error, conversation = await self._badBearer("XOAUTH2")
        self.assertEqual(
            error, {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        )
        # Google's client would answer the challenge with an empty line and then get 535;
        # curl 7.88 takes the challenge itself as the refusal and closes the connection.
        self.assertIn("curl: (67) Login denied", conversation)

    async def test_tokenCheckerBesidePasswords(self) -> None:
        """
        A PortalAuthHandler over a password checker and the docs' IBearerToken checker
        offers all five mechanisms; curl logs in as alice with her token (OAUTHBEARER,
        curl's first choice) and with her password.
        """
        tokens = loadExample("auth_tokens").TokenChecker({self.TOKEN: USER})
        portal = PortalAuthHandler.fromCheckers([aliceChecker(), tokens])
        recorder = AuthRecorder()
        received = RecordingHandler()
        _, port = await startAuthServer(
            self, [recorder, portal, received], authMethods=portal.mechanisms()
        )
        self.assertEqual(portal.mechanisms(), (*MECHANISMS, "XOAUTH2", "OAUTHBEARER"))
        byToken = await runCurl(
            port, *self.curlSend("--oauth2-bearer", self.TOKEN, "-u", USER + ":")
        )
        self.assertEqual(byToken.returncode, 0, byToken.stderr)
        byPassword = await runCurl(
            port, *self.curlSend("-u", f"{USER}:{PASSWORD}", "--login-options", "AUTH=LOGIN")
        )
        self.assertEqual(byPassword.returncode, 0, byPassword.stderr)
        self.assertEqual([r.method for r in recorder.requests], ["OAUTHBEARER", "LOGIN"])
        self.assertEqual([m.user for m in received.messages], [USER, USER])

    async def test_plainInitialResponse(self) -> None:
        """
        curl --login-options AUTH=PLAIN --sasl-ir sends the credentials on the AUTH line
        itself (no 334 round) and the message is alice's.
        """
        recorder = AuthRecorder()
        received = RecordingHandler()
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        _, port = await startAuthServer(self, [recorder, checker, received])
        result = await runCurl(
            port,
            *self.curlSend(
                "-u", f"{USER}:{PASSWORD}", "--login-options", "AUTH=PLAIN", "--sasl-ir"
            ),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"> AUTH PLAIN {plainResponse(USER, PASSWORD)}\n", result.stderr)
        self.assertNotIn("< 334", result.stderr)
        self.assertEqual([r.method for r in recorder.requests], ["PLAIN"])
        self.assertEqual([m.user for m in received.messages], [USER])


class TwistAuthTests(E2ETestCase):
    """
    C{twist smtpsvc --auth ...}: AUTH from the command line, in a separate process.
    """

    def memoryArgs(self, maildir: str) -> list[str]:
        """
        The command line of a service that knows alice:secret and allows AUTH in clear.
        """
        return [
            "--auth",
            f"memory:{USER}:{PASSWORD}",
            "--allow-insecure-auth",
            *maildirArgs(maildir),
        ]

    async def test_memoryAuth(self) -> None:
        """
        --auth memory:alice:secret offers PLAIN, LOGIN and CRAM-MD5, refuses MAIL before
        AUTH with 530, and delivers into the Maildir after AUTH PLAIN.
        """
        directory = workspace(self)
        maildir = os.path.join(directory, "maildir")
        process = await startTwist(self, self.memoryArgs(maildir), directory)
        assert process.port is not None
        port = process.port

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                replies = [client.readReply(), client.command("EHLO client.example")]
                replies.append(client.command(f"MAIL FROM:<{SENDER}>"))
                replies.append(client.command("AUTH PLAIN " + plainResponse(USER, PASSWORD)))
                replies.append(client.command(f"MAIL FROM:<{SENDER}>"))
                replies.append(client.command(f"RCPT TO:<{RECIPIENT}>"))
                replies.append(client.command("DATA"))
                client.send(MESSAGE + b".\r\n")
                replies.append(client.readReply())
                replies.append(client.command("QUIT"))
            return replies

        _, ehlo, early, auth, *rest = await deferToThread(talk)
        self.assertIn(f"AUTH {' '.join(MECHANISMS)}", ehlo.lines, process.text)
        self.assertEqual((early.code, early.lines), (530, ("Error: authentication Required",)))
        self.assertEqual(auth.code, 235, process.text)
        self.assertEqual([r.code for r in rest], [250, 250, 354, 250, 221])
        stored = maildirMessages(maildir)
        self.assertEqual(len(stored), 1)
        self.assertTrue(stored[0].endswith(MESSAGE), stored[0])

    async def test_scryptPasswordFile(self) -> None:
        """
        With a file from smtpsvc-passwd, --auth scrypt:FILE offers PLAIN and LOGIN only,
        alice logs in after STARTTLS, and bob, added while the service runs, logs in
        without a restart.
        """
        if passwdCommand() is None:
            raise SkipTest("the smtpsvc-passwd command is not installed (pip install -e .)")
        directory = workspace(self)
        files = writeCertificates(directory)
        passwords = os.path.join(directory, "users.passwd")
        made = await runPasswd(passwords, USER, PASSWORD)
        self.assertEqual(made.returncode, 0, made.stderr)
        maildir = os.path.join(directory, "maildir")
        args = [
            "--auth",
            f"scrypt:{passwords}",
            "--cert",
            files.cert,
            "--key",
            files.key,
            "--auth-failure-delay",
            str(FAILURE_DELAY),
            *maildirArgs(maildir),
        ]
        process = await startTwist(self, args, directory)
        assert process.port is not None
        port = process.port

        def login(user: str, password: str) -> tuple[list[str], int]:
            with MXClient(port) as client:
                client.secure()
                offered = authFeature(client)
                try:
                    code, _ = client.login(user, password)
                except smtplib.SMTPAuthenticationError as e:
                    code = e.smtp_code
                else:
                    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
                client.quit()
            return offered, code

        offered, code = await deferToThread(login, USER, PASSWORD)
        self.assertEqual(offered, ["PLAIN", "LOGIN"])
        self.assertEqual(code, 235, process.text)
        # bob is not known yet ...
        _, code = await deferToThread(login, "bob", "bobs-password")
        self.assertEqual(code, 535)
        added = await runPasswd(passwords, "bob", "bobs-password")
        self.assertEqual(added.returncode, 0, added.stderr)
        # ... and now he is, without a restart.
        _, code = await deferToThread(login, "bob", "bobs-password")
        self.assertEqual(code, 235, process.text)
        self.assertEqual(len(maildirMessages(maildir)), 2)

    async def test_passwordsNeverLogged(self) -> None:
        """
        The service's log tells of a failed and a successful AUTH but shows neither
        password, in clear or in base64: not in the messages, and not in any field of
        any event (C{--log-format json} writes them all).
        """
        wrong = "Wr0ng-guess-7d41"
        right = "C0rrect-h0rse-3b9e"
        directory = workspace(self)
        args = self.memoryArgs(os.path.join(directory, "maildir"))
        args[1] = f"memory:{USER}:{right}"
        process = await startService(
            self, [*args, "--auth-failure-delay", "0"], directory, twistOptions=JSON_LOGS
        )
        assert process.port is not None
        port = process.port

        def talk() -> list[int]:
            with RawClient(port) as client:
                replies = [client.readReply(), client.command("EHLO client.example")]
                replies.append(client.command("AUTH PLAIN " + plainResponse(USER, wrong)))
                replies.append(client.command("AUTH LOGIN " + b64(USER)))
                replies.append(client.command(b64(right)))
                replies.append(client.command("QUIT"))
            return [reply.code for reply in replies]

        self.assertEqual(await deferToThread(talk), [220, 250, 535, 334, 235, 221])
        # Once the process has ended, its log is complete.
        process.sendSignal("TERM")
        await process.waitForExit(EXIT_TIMEOUT)
        events = process.events()
        # The messages, as the text log would show them.
        log = "\n".join(formatEvent(event) for event in events)
        self.assertIn("Authentication failed", log)
        self.assertIn(f"Authenticated as {USER}", log)
        # Every field of every event, decoded, and the output as written.
        fields = [text for event in events for text in _strings(event)]
        self.assertIn(USER, fields)
        for secret in (wrong, right, plainResponse(USER, wrong), b64(right)):
            self.assertNotIn(secret, log)
            self.assertEqual([text for text in fields if secret in text], [], secret)
            self.assertNotIn(secret, process.text)


def _strings(value: object) -> list[str]:
    """
    Every string in C{value}, decoded JSON: the keys and values of its objects, the
    items of its arrays, all the way down.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *_strings(item)]]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


class _Accounts:
    """
    A stand-in for the C{pwd} module: the system's account database, holding alice.
    """

    def __init__(self, crypted: str) -> None:
        self.crypted = crypted

    def getpwnam(self, name: str) -> SimpleNamespace:
        if name != USER:
            raise KeyError(name)
        return SimpleNamespace(pw_name=name, pw_passwd=self.crypted)


class CommandLineCheckerTests(E2ETestCase):
    """
    C{--auth} sources that need more than a child process to test: the server is built
    from the C{twist smtpsvc} command line in this process (C{Options}, C{buildServer}),
    so that a fake account database can stand in for the system's.
    """

    async def serve(self, *args: str) -> tuple[RecordingHandler, int]:
        """
        Build the server C{twist smtpsvc ARGS} would run, with the test certificate and a
        recorder of messages, and listen on 127.0.0.1.

        @return: the recorder and the port.
        """
        directory = workspace(self)
        files = writeCertificates(directory)
        options = Options()
        options.parseOptions(
            [
                *args,
                *("--cert", files.cert, "--key", files.key, "--deliver", "discard"),
                *("--early-talker-delay", "0", "--auth-failure-delay", str(FAILURE_DELAY)),
            ]
        )
        server = buildServer(options, reactor=theReactor())
        recorder = RecordingHandler()
        server.addHandler(recorder)
        return recorder, await listenOn(self, server)

    async def test_unixUserIsTheAccountName(self) -> None:
        """
        With --auth unix, alice logs in with her system password and her messages are
        recorded as alice's, as with every other --auth source.
        """
        try:
            with warnings.catch_warnings():
                # Deprecated since Python 3.11 (and gone in 3.13), but what cred's unix
                # checker uses to check passwords.
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
        except ImportError:
            raise SkipTest("no crypt module: cred's unix checker cannot work here") from None
        accounts = _Accounts(crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_SHA512)))
        saved = sys.modules.get("pwd")

        def restore() -> None:
            if saved is None:
                sys.modules.pop("pwd", None)
            else:
                sys.modules["pwd"] = saved

        # cred's unix checker imports pwd each time it checks a password.
        sys.modules["pwd"] = cast(ModuleType, accounts)
        self.addCleanup(restore)
        recorder, port = await self.serve("--auth", "unix")

        def send() -> tuple[list[str], int]:
            with MXClient(port) as client:
                client.secure()
                offered = authFeature(client)
                code, _ = client.login(USER, PASSWORD)
                self.assertEqual(client.sendmail(SENDER, [RECIPIENT], MESSAGE), {})
                client.quit()
            return offered, code

        offered, code = await deferToThread(send)
        self.assertEqual(offered, ["PLAIN", "LOGIN"])
        self.assertEqual(code, 235)
        self.assertEqual([m.user for m in recorder.messages], [USER])

    async def test_twoPasswordSourcesBothCount(self) -> None:
        """
        --auth memory:alice:... --auth scrypt:FILE (bob): no source is silently ignored;
        either the command line is refused or both alice and bob can log in with PLAIN.
        """
        directory = workspace(self)
        passwords = os.path.join(directory, "users.passwd")
        setPassword(passwords, "bob", "bobs-password")
        args = ["--auth", f"memory:{USER}:{PASSWORD}", "--auth", f"scrypt:{passwords}"]
        try:
            _, port = await self.serve(*args)
        except UsageError:
            # Refusing what cannot work is an honest answer too.
            return

        def login(user: str, password: str) -> int:
            with MXClient(port) as client:
                client.secure()
                try:
                    code, _ = client.authenticate("PLAIN", user, password)
                except smtplib.SMTPAuthenticationError as e:
                    code = e.smtp_code
                client.quit()
            return code

        codes = {
            USER: await deferToThread(login, USER, PASSWORD),
            "bob": await deferToThread(login, "bob", "bobs-password"),
        }
        self.assertEqual(codes, {USER: 235, "bob": 235})


class BruteForceTests(E2ETestCase):
    """
    The defences against password guessing, as a real client meets them.
    """

    async def test_fourthFailureClosesThenAddressThrottled(self) -> None:
        """
        Over one connection three wrong passwords get 535 and the fourth 421 and the
        connection closes; the address has then used its budget of 4, so a new
        connection gets 454 even with the right password.
        """
        checker = PortalAuthHandler.fromCheckers([aliceChecker()])
        server, port = await startAuthServer(
            self, [checker], authFailureDelay=0.01, authFailureLimit=4
        )

        def guess() -> tuple[list[tuple[int, bytes]], bool]:
            refusals = []
            with MXClient(port) as client:
                client.secure()
                for attempt in range(4):
                    with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                        client.authenticate("PLAIN", USER, f"guess-{attempt}")
                    refusals.append((caught.exception.smtp_code, caught.exception.smtp_error))
                try:
                    client.noop()
                except smtplib.SMTPServerDisconnected:
                    closed = True
                else:
                    closed = False
            return refusals, closed

        refusals, closed = await deferToThread(guess)
        self.assertEqual([code for code, _ in refusals], [535, 535, 535, 421])
        self.assertEqual(refusals[-1][1], b"Error: too many authentication failures")
        self.assertTrue(closed, "the connection is still open after the 421")
        # The client has closed its end too (smtplib does when it finds the connection
        # gone): the server must not hold on to it.
        dropped = await connectionsDropped(server, 2.0)

        def rightPassword() -> tuple[int, bytes]:
            with MXClient(port) as client:
                client.secure()
                with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                    client.authenticate("PLAIN", USER, PASSWORD)
                client.quit()
            return caught.exception.smtp_code, caught.exception.smtp_error

        code, text = await deferToThread(rightPassword)
        self.assertEqual(code, 454)
        self.assertEqual(text, b"Error: too many authentication failures, try again later")
        self.assertTrue(
            dropped,
            "the server still held the TLS connection 2 s after its 421 and the client's close",
        )


class ExampleServerTests(E2ETestCase):
    """
    The documentation's docs/examples/auth_server.py, run for real.
    """

    async def test_authServer(self) -> None:
        """
        auth_server.py refuses MAIL before AUTH and AUTH before STARTTLS, then takes
        alice's mail after STARTTLS and login into the Maildir, marked ESMTPSA.
        """
        directory = workspace(self)
        files = writeCertificates(directory)
        passwords = os.path.join(directory, "users.passwd")
        setPassword(passwords, USER, PASSWORD)
        maildir = os.path.join(directory, "maildir")
        main = loadExample("auth_server").main
        port = runExampleMain(self, main, passwords, files.cert, files.key, maildir, LISTEN)

        def talk() -> tuple[int, int, int, list[str]]:
            with MXClient(port) as client:
                client.ehlo()
                mailCode, _ = client.mail(SENDER)
                authCode, _ = client.docmd("AUTH", "PLAIN " + plainResponse(USER, PASSWORD))
                client.secure()
                offered = authFeature(client)
                code, _ = client.login(USER, PASSWORD)
                self.assertEqual(client.sendmail(SENDER, [RECIPIENT], MESSAGE), {})
                client.quit()
            return mailCode, authCode, code, offered

        mailCode, authCode, code, offered = await deferToThread(talk)
        self.assertEqual((mailCode, authCode, code), (530, 538, 235))
        self.assertEqual(offered, ["PLAIN", "LOGIN"])
        [stored] = maildirMessages(maildir)
        self.assertIn(b" with ESMTPSA ", stored)
        self.assertTrue(stored.endswith(MESSAGE), stored)

    async def test_ownSenderAddresses(self) -> None:
        """
        auth_senders.py: after AUTH, session.user is alice's MailUser, and she may send
        from her own address but not from bob's.
        """
        example = loadExample("auth_senders")
        recorder = RecordingHandler()
        handlers = example.handlers({USER: frozenset({SENDER})}, [aliceChecker()])
        _, port = await startAuthServer(self, [*handlers, recorder])

        def send() -> tuple[int, bytes]:
            with MXClient(port) as client:
                client.secure()
                client.login(USER, PASSWORD)
                self.assertEqual(client.sendmail(SENDER, [RECIPIENT], MESSAGE), {})
                with self.assertRaises(smtplib.SMTPSenderRefused) as caught:
                    client.sendmail("bob@example.org", [RECIPIENT], MESSAGE)
                client.quit()
            return caught.exception.smtp_code, caught.exception.smtp_error

        self.assertEqual(await deferToThread(send), (553, b"Sender address not yours"))
        [message] = recorder.messages
        self.assertEqual(message.user, example.MailUser(USER, frozenset({SENDER})))
