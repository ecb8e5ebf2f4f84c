"""
Helpers for the end-to-end AUTH tests (L{tests.test_auth_e2e}): the test certificates as
server options and as files, an smtplib client that verifies them, curl and
C{smtpsvc-passwd} run in threads, an authentication handler that records what clients
presented, and the documentation's examples run on trial's reactor.

The rest (in-process servers, C{twist} child processes, swaks, raw clients, the log
capture, loading the examples) comes from L{tests.e2e_support}.  Every wait here is
bounded, and whatever is started is stopped by the test case's cleanups.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from smtpsvc import AuthRequest, IAuthHandler, Session, SMTPError, SMTPServer
from smtpsvc.testing import ServerReply

from .e2e_support import (
    CLIENT_NAME,
    CLOSE_TIMEOUT,
    LISTEN,
    LOCALHOST,
    SOCKET_TIMEOUT,
    TOOL_TIMEOUT,
    ExampleReactor,
    theReactor,
)
from .memorytls import authority, issue


@implementer(IAuthHandler)
class Alice:
    """
    Knows one user, alice, whose password is secret, by any mechanism; it looks at
    nothing else (not the authzid), and keeps every request in C{requests}.
    """

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def onAuth(self, auth: AuthRequest, session: Session) -> str:
        self.requests.append(auth)
        if auth.username == "alice" and auth.validatePassword("secret"):
            return "alice"
        raise SMTPError(535, "5.7.8 Error: Authentication credentials invalid")


#: The name the test certificate is issued for; clients ask for and verify it.
MX_NAME = "mx.example.test"


def serverCertificate() -> dict[str, bytes]:
    """
    The server options C{cert} and C{key}: a certificate for L{MX_NAME} from the test CA.
    """
    pair = issue(MX_NAME)
    return {"cert": pair.cert, "key": pair.key}


@dataclass(frozen=True)
class CertificateFiles:
    """
    The test CA certificate, and the server's certificate and key, as PEM files.
    """

    ca: str
    cert: str
    key: str


def writeCertificates(directory: str) -> CertificateFiles:
    """
    Write C{ca.pem}, C{mx.pem} and C{mx.key} into C{directory}.
    """
    pair = issue(MX_NAME)
    files = CertificateFiles(
        ca=str(Path(directory, "ca.pem")),
        cert=str(Path(directory, "mx.pem")),
        key=str(Path(directory, "mx.key")),
    )
    Path(files.ca).write_bytes(authority().cert)
    Path(files.cert).write_bytes(pair.cert)
    Path(files.key).write_bytes(pair.key)
    return files


def clientContext() -> ssl.SSLContext:
    """
    A client context that trusts only the test CA and checks the server's name.
    """
    return ssl.create_default_context(cadata=authority().cert.decode("ascii"))


class MXClient(smtplib.SMTP):
    """
    An smtplib client of 127.0.0.1:C{port} that believes it talks to L{MX_NAME}, so that
    C{starttls(context=clientContext())} verifies the test certificate, name included.
    """

    def __init__(self, port: int) -> None:
        super().__init__(MX_NAME, port, local_hostname=CLIENT_NAME, timeout=SOCKET_TIMEOUT)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((LOCALHOST, port), timeout, self.source_address)

    def secure(self) -> None:
        """
        EHLO, STARTTLS with the test CA, and EHLO again (RFC 3207 section 4.2: the
        server forgot the first; smtplib's C{auth()} would not say it again by itself).
        """
        self.ehlo()
        self.starttls(context=clientContext())
        self.ehlo()

    def authenticate(self, mechanism: str, user: str, password: str) -> tuple[int, bytes]:
        """
        AUTH with exactly C{mechanism} (C{"PLAIN"}, C{"LOGIN"} or C{"CRAM-MD5"}), which
        C{login()} would not promise: it picks the first the server offers.

        @raise smtplib.SMTPAuthenticationError: when the server refuses.
        """
        self.user, self.password = user, password
        method = getattr(self, "auth_" + mechanism.lower().replace("-", "_"))
        return self.auth(mechanism, method)


@implementer(IAuthHandler)
class AuthRecorder:
    """
    Records every AUTH request and leaves the decision to the handlers after it.
    """

    def __init__(self) -> None:
        self.requests: list[AuthRequest] = []

    def onAuth(self, auth: AuthRequest, session: Session) -> None:
        self.requests.append(auth)


def listenOn(testCase: TestCase, server: SMTPServer) -> Deferred[int]:
    """
    Make C{server}, built elsewhere (by the command line's C{buildServer}), listen on an
    OS-chosen port of 127.0.0.1; cleanups close it and stop the port.

    @return: a Deferred firing with the port number.
    """

    def listening(port: Any) -> int:
        testCase.addCleanup(lambda: maybeDeferred(port.stopListening))
        testCase.addCleanup(lambda: server.close().addTimeout(CLOSE_TIMEOUT, theReactor()))
        return int(port.getHost().port)

    return server.listen(LISTEN).addCallback(listening)


async def connectionsDropped(server: SMTPServer, within: float) -> bool:
    """
    Wait (at most C{within} seconds) until C{server} holds no connection; if it still
    holds some then, abort them, so that closing the server in the cleanup does not have
    to wait for its own timeouts.

    @return: whether the server dropped them by itself.
    """
    deadline = time.monotonic() + within
    while server.connectionCount and time.monotonic() < deadline:
        await deferLater(theReactor(), 0.05, lambda: None)
    if not server.connectionCount:
        return True
    for protocol in server.connections:
        if protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
    return False


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TOOL_TIMEOUT,
    )


def runCurl(port: int, *args: str) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run C{curl -v smtp://MX_NAME:port ARGS} in a thread, with MX_NAME resolved to
    127.0.0.1 (so that curl checks the certificate for that name), bounded by
    L{TOOL_TIMEOUT}.  The conversation is in C{stderr}.
    """
    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed"
    argv = [
        curl,
        "--verbose",
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--resolve",
        f"{MX_NAME}:{port}:{LOCALHOST}",
        f"smtp://{MX_NAME}:{port}/{CLIENT_NAME}",
        *args,
    ]
    return deferToThread(_run, argv)


def haveCurl() -> bool:
    """
    Whether curl can be run.
    """
    return shutil.which("curl") is not None


def passwdCommand() -> str | None:
    """
    Where the C{smtpsvc-passwd} command of this environment is, or L{None}.
    """
    beside = Path(sys.executable).parent / "smtpsvc-passwd"
    if beside.exists():
        return str(beside)
    return shutil.which("smtpsvc-passwd")


def runPasswd(path: str, user: str, password: str) -> Deferred[subprocess.CompletedProcess[str]]:
    """
    Run C{smtpsvc-passwd PATH USER --stdin} with C{password} on its standard input, in a
    thread, bounded by L{TOOL_TIMEOUT}.
    """
    command = passwdCommand()
    assert command is not None, "smtpsvc-passwd is not installed"
    return deferToThread(_run, [command, path, user, "--stdin"], password + "\n")


@cache
def swaksSupportsTLS() -> bool:
    """
    Whether this swaks can do STARTTLS (it needs Perl's Net::SSLeay, Debian's
    libnet-ssleay-perl, which the swaks package only recommends).
    """
    swaks = shutil.which("swaks")
    if swaks is None:
        return False
    result = _run([swaks, "--support"])
    return "=== TLS supported" in result.stdout + result.stderr


def runExampleMain(
    testCase: TestCase, main: Callable[..., Coroutine[Any, Any, None]], *argv: str
) -> int:
    """
    Start C{main(reactor, *argv)}, an example's entry point for C{task.react}, on trial's
    reactor and return the one port it listens on.  A cleanup cancels it (which is how
    the examples are told to close their server), then runs any shutdown trigger left.
    """
    reactor = ExampleReactor()
    running = Deferred.fromCoroutine(main(reactor, *argv))

    async def stop() -> None:
        running.cancel()
        with contextlib.suppress(CancelledError):
            await running
        for trigger in list(reactor.triggers.values()):
            await maybeDeferred(trigger)
        for port in reactor.ports:
            await maybeDeferred(port.stopListening)

    testCase.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    # A TCP endpoint listens at once, so main is serving by now (or it failed).
    if running.called:
        testCase.successResultOf(running)
        testCase.fail("main() returned instead of serving")
    if len(reactor.ports) != 1:
        testCase.fail(f"main() listens on {len(reactor.ports)} ports, not 1")
    return int(reactor.ports[0].getHost().port)


def b64(text: str) -> str:
    """
    The base64 of the UTF-8 of C{text}, as SASL sends it.
    """
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def plainResponse(user: str, password: str, authzid: str = "") -> str:
    """
    The initial response of C{AUTH PLAIN} (RFC 4616): C{authzid NUL user NUL password}, in
    base64.
    """
    return b64(f"{authzid}\0{user}\0{password}")


def cramResponse(challenge: ServerReply, user: str, secret: str) -> str:
    """
    The client's answer to the CRAM-MD5 challenge C{challenge} (RFC 2195): C{user}, a
    space and the HMAC-MD5 of the challenge keyed with C{secret}, in base64.
    """
    text = base64.b64decode(challenge.lines[0])
    digest = hmac.new(secret.encode(), text, hashlib.md5).hexdigest()
    return b64(f"{user} {digest}")


def authPlain(user: str, password: str, authzid: str = "") -> str:
    """
    The command C{AUTH PLAIN} with its initial response (L{plainResponse}).
    """
    return f"AUTH PLAIN {plainResponse(user, password, authzid)}"
