"""
End-to-end tests of the C{twist smtpsvc} service as an operator runs it: a configuration
file with flags over it, the transaction log in text and JSON, the flags against abusive
clients, certificates (and C{--sni-dir}) reloaded on SIGHUP, no mail lost to C{kill -9},
graceful SIGTERM, C{--workers}, one-line errors, C{python:} deliveries, C{twistd}, and
the documentation's example files (the TOML file, the systemd units run with a socket
handed over as systemd does, the handler module).

Every process runs on 127.0.0.1 with ports the OS picks, every wait is bounded, and every
process is stopped by its PID in the cleanups.  Helpers are in L{tests.service_support}
and L{tests.e2e_support}.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography import x509
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from smtpsvc import tap
from smtpsvc._server import ABORT_DELAY, HANDLER_GRACE
from smtpsvc._service import canSpreadConnections, inMemory
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.handlers.relay import RelayPolicy
from smtpsvc.testing import MemoryClient, ServerReply, stuff

from .e2e_support import (
    CLIENT_NAME,
    EXAMPLES,
    LISTEN,
    LOCALHOST,
    SOCKET_TIMEOUT,
    TOOL_TIMEOUT,
    E2ETestCase,
    LogCapture,
    RawClient,
    assertTwistRefuses,
    clientContext,
    connectionRefused,
    freePort,
    haveOpenSSL,
    twistCommand,
    twistEnvironment,
    withoutTraceHeaders,
    workspace,
)
from .maildir_support import delivered
from .memorytls import KeyPair, authority, commonName, issue
from .service_support import (
    JSON_LOGS,
    QUICK,
    SYSTEMD_WRAPPER,
    Burst,
    ServiceProcess,
    alive,
    childProcesses,
    isServiceProcess,
    killWorkers,
    leftInTmp,
    listeningSocket,
    maildirPIDs,
    message,
    occurrences,
    queuedPID,
    relocate,
    sendOne,
    servedCommonName,
    serviceCommand,
    servingProcesses,
    socketActivation,
    startService,
    traceHeaders,
    unitCommand,
    unitSetting,
    unitTwistOptions,
    until,
)

SENDER = "a@example.org"
#: closeTimeout for the shutdown tests, and the margin a process gets beyond it to exit.
CLOSE_TIMEOUT = 2.0
EXIT_MARGIN = 3.0
#: Seconds a service may take for anything it logs in answer to a signal.
SIGNAL_TIMEOUT = 10.0
#: Twist's clean ends: status 0, or the SIGTERM it re-raises once the reactor has stopped.
CLEAN_EXITS = [(0, None), (None, signal.SIGTERM)]
NO_OPENSSL = "openssl is not installed (apt-get install openssl; `make test` installs it)"

#: The configuration file of the first test; --name on the command line overrides its name.
CONFIG = """\
name = "from-the-file.example.test"
listen = ["tcp:0:interface=127.0.0.1"]
deliver = ["maildir:md"]
domain = ["example.org"]
maxClients = 5
earlyTalkerDelay = 0
disableReverseLookup = true
"""
#: The example files of the service page, each exercised by L{ExampleFileTests}.
SERVICE_EXAMPLES = {
    "service_example.toml",
    "service_handler.py",
    "service_smtpsvc.service",
    "service_smtpsvc-activated.service",
    "service_smtpsvc.socket",
}


def codes(replies: Sequence[ServerReply]) -> list[int]:
    """
    The codes of C{replies}.
    """
    return [reply.code for reply in replies]


def finishAndQuit(
    client: RawClient, body: bytes, within: float
) -> tuple[ServerReply, list[ServerReply]]:
    """
    Send the rest of C{body}, of which C{client} sent the first half after DATA, then
    QUIT: the reply to the message, and what came after it until the server closed (in
    C{within} seconds).
    """
    client.send(stuff(body)[len(body) // 2 :])
    done = client.readReply()
    client.send(b"QUIT\r\n")
    return done, client.readUntilClosed(within)


class ConfigurationFileTests(E2ETestCase):
    """
    C{twist smtpsvc --config FILE}: the file's options with flags over them, delivery into
    a Maildir, the relay policy and the transaction log.
    """

    async def test_fileWithAFlagOverIt(self) -> None:
        """
        With a TOML file (its Maildir relative to it) and --name over the file's name,
        smtplib's message arrives byte for byte after the trace headers, a recipient
        elsewhere gets 550 5.7.1 Relay access denied, the file's maxClients holds, and the
        log has one transaction line with the sender, recipient and size.
        """
        tmpdir = workspace(self)
        Path(tmpdir, "conf").mkdir()
        Path(tmpdir, "conf", "smtpsvc.toml").write_text(CONFIG)
        args = [
            *("--config", "conf/smtpsvc.toml"),
            *("--name", "mx.example.test", "--no-hide-enhancedstatuscodes"),
        ]
        process = await startService(self, args, tmpdir)
        port = process.port
        assert port is not None
        body = message("configured")

        def talk() -> tuple[tuple[int, bytes], ...]:
            with smtplib.SMTP(timeout=SOCKET_TIMEOUT, local_hostname=CLIENT_NAME) as c:
                greeting = c.connect(LOCALHOST, port)
                c.ehlo()
                mail = c.mail(SENDER)
                relay = c.rcpt("u@elsewhere.example")
                local = c.rcpt("u@example.org")
                data = c.data(body)
                c.quit()
            return greeting, mail, relay, local, data

        greeting, mail, relay, local, data = await deferToThread(talk)
        self.assertEqual(greeting[0], 220)
        self.assertTrue(greeting[1].startswith(b"mx.example.test "), greeting)
        self.assertEqual(mail[0], 250)
        self.assertEqual(relay, (550, b"5.7.1 Relay access denied"))
        self.assertEqual(local[0], 250)
        self.assertEqual(data[0], 250, data)

        # The Maildir is where the file says, relative to the file.
        self.assertFalse(os.path.exists(os.path.join(tmpdir, "md")))
        stored = list(delivered(os.path.join(tmpdir, "conf", "md")).values())
        self.assertEqual(len(stored), 1, process.text)
        self.assertEqual(withoutTraceHeaders(stored[0]), body)
        trace = traceHeaders(stored[0])
        self.assertTrue(
            trace.startswith(
                b"Return-Path: <a@example.org>\r\n"
                b"Received: from client.e2e.test ([127.0.0.1])\r\n"
                b"\tby mx.example.test (smtpsvc) with ESMTP id "
            ),
            trace,
        )
        self.assertIn(b"\tfor <u@example.org>; ", trace)

        # Wait for the end of the connection so that every line about it is there.
        await process.waitForOutput(re.compile(rb"Connection closed"))
        transactions = process.lines(" message from <")
        self.assertEqual(len(transactions), 1, process.text)
        self.assertIn(
            f"message from <{SENDER}> to ['u@example.org'] ({len(body)} bytes) "
            "for [127.0.0.1] [127.0.0.1]: 250 2.6.0 OK: message queued as ",
            transactions[0],
        )

        def crowd() -> list[ServerReply]:
            clients = [RawClient(port) for _ in range(6)]
            try:
                return [client.readReply() for client in clients]
            finally:
                for client in clients:
                    client.close()

        # maxClients = 5 from the file: the sixth client at once is turned away.
        self.assertEqual(codes(await deferToThread(crowd)), [220] * 5 + [421])

    async def test_jsonTransactionLog(self) -> None:
        """
        Under twist --log-format json the transaction is one JSON event whose fields are
        values a program can use: the session id, the sender, the list of recipients, the
        size as a number, the result.
        """
        tmpdir = workspace(self)
        args = ["--listen", LISTEN, "--deliver", "discard", *QUICK]
        process = await startService(self, args, tmpdir, twistOptions=JSON_LOGS)
        assert process.port is not None
        body = message("json", size=2000)
        code, _ = await deferToThread(sendOne, process.port, body)
        self.assertEqual(code, 250)
        await process.waitForOutput(re.compile(rb'"event": "transaction"'))
        events = [e for e in process.events() if e.get("event") == "transaction"]
        self.assertEqual(len(events), 1, process.text)
        event = events[0]
        self.assertIsInstance(event["sessionId"], str)
        self.assertTrue(event["sessionId"])
        self.assertEqual(event["mailFrom"], SENDER)
        self.assertEqual(event["rcptTo"], ["u@example.org"])
        self.assertEqual(event["size"], len(body))
        self.assertTrue(event["result"].startswith("250 "), event["result"])
        self.assertEqual(event["remoteAddress"], LOCALHOST)
        self.assertEqual((event["tls"], event["user"]), (None, None))
        self.assertIsInstance(event["seconds"], float)
        self.assertIn(f" message from <{SENDER}> to ['u@example.org'] (", event["text"])
        # The connection's own line comes when it closes, with what became of its mail;
        # none is written at info level when it opens.
        await process.waitForOutput(re.compile(rb'"event": "disconnect"'))
        (closed,) = [e for e in process.events() if e.get("event") == "disconnect"]
        self.assertEqual(
            (closed["sessionId"], closed["remoteAddress"], closed["accepted"], closed["refused"]),
            (event["sessionId"], LOCALHOST, 1, 0),
        )
        self.assertTrue(closed["text"].startswith(f"Connection closed: {LOCALHOST}:"), closed)
        self.assertEqual(process.lines("Connection from"), [])
        # The log is an RFC 7464 JSON text sequence: each line a record separator and an
        # object (what `jq --seq` reads).
        # (str.splitlines would split at the record separator too.)
        for line in process.text.split("\n")[:-1]:
            self.assertTrue(line.startswith("\x1e"), line)
            self.assertIsInstance(json.loads(line[1:]), dict)

    async def test_logLevelWarn(self) -> None:
        """
        Under C{twist --log-level warn}, a message and its connection write no line (nor
        does the start), while a warning still does: the plaintext a client pipelined
        after STARTTLS.
        """
        tmpdir = workspace(self)
        port = freePort()
        args = ["--listen", f"tcp:{port}:interface={LOCALHOST}", "--deliver", "discard", *QUICK]
        process = await startService(
            self,
            args,
            tmpdir,
            twistOptions=("--log-format", "text", "--log-level", "warn"),
            waitForPort=False,
        )

        def talk() -> tuple[int, int]:
            deadline = time.monotonic() + 30
            while connectionRefused(port):
                self.assertFalse(process.ended, process.text)
                self.assertLess(time.monotonic(), deadline, "the service never listened")
                time.sleep(0.1)
            code, _ = sendOne(port, message("quiet"))
            with RawClient(port) as client:
                client.readReply()
                client.command("EHLO t")
                client.send(b"STARTTLS\r\nNOOP\r\n")
                ready = client.readReply().code
            return code, ready

        self.assertEqual(await deferToThread(talk), (250, 220))
        await process.waitForOutput(re.compile(rb"Discarded 6 bytes sent in clear after STARTTLS"))
        await process.stop()
        for info in (" message from <", "Connection closed", "listening on", "Server closed"):
            self.assertEqual(process.lines(info), [], process.text)


class ProtectionFlagTests(E2ETestCase):
    """
    The flags against abusive clients, as C{twist smtpsvc} parses them, over real sockets:
    C{--forbid-unauth-pipelining} and C{--min-data-rate}.
    """

    async def test_2920_07_forbidUnauthPipeliningFlag(self) -> None:
        """
        With --forbid-unauth-pipelining, a client that sends MAIL in the same write as
        EHLO gets its EHLO reply, then 554 and the end of the connection; smtplib, which
        waits for each reply, still delivers.  Without the flag the same bytes get 250.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK]
        lenient = await startService(self, args, tmpdir)
        strict = await startService(self, [*args, "--forbid-unauth-pipelining"], tmpdir)
        assert lenient.port is not None and strict.port is not None

        replies = await deferToThread(mailWithEhlo, lenient.port, 2)
        self.assertEqual(codes(replies), [250, 250])

        replies = await deferToThread(mailWithEhlo, strict.port, None)
        self.assertEqual(codes(replies), [250, 554], replies)
        self.assertEqual(replies[-1].text, "Error: SMTP protocol synchronization")
        code, _ = await deferToThread(sendOne, strict.port, message("waits"))
        self.assertEqual(code, 250)
        self.assertEqual(len(delivered(maildir)), 1, strict.text)

    async def test_5321_40_minDataRateFlag(self) -> None:
        """
        --min-data-rate sets the rate a message must keep up after --socket-timeout's head
        start: at 20 bytes/s a message sent at about 100 bytes/s for two seconds is
        accepted (the default, 500, would cut it off after about 1.25 s), and at 1000
        bytes/s one sent at about 600 bytes/s is cut off with 421 after about 2.5 s (the
        default would never cut it off).
        """
        tmpdir = workspace(self)
        common = ["--listen", LISTEN, "--deliver", "discard", *QUICK, "--socket-timeout", "1"]
        lenient = await startService(self, [*common, "--min-data-rate", "20"], tmpdir)
        strict = await startService(self, [*common, "--min-data-rate", "1000"], tmpdir)
        assert lenient.port is not None and strict.port is not None

        accepted, _ = await deferToThread(trickle, lenient.port, 100, 2.0)
        self.assertEqual(accepted[-1].code, 250, lenient.text)

        replies, seconds = await deferToThread(trickle, strict.port, 600, 6.0)
        self.assertEqual(
            [(r.code, r.text) for r in replies], [(421, "Timeout - closing connection")]
        )
        # 1 s + 0.6 s per second at 1000 bytes/s: 2.5 s, give or take the client's steps.
        self.assertTrue(1.5 <= seconds < 5.0, seconds)
        await strict.waitForOutput(re.compile(rb"Message not received in time"))


def mailWithEhlo(port: int, count: int | None) -> list[ServerReply]:
    """
    Send EHLO and MAIL FROM to C{port} in one write, after the greeting, and read
    C{count} replies, or (L{None}) all until the server closes the connection.
    """
    with RawClient(port) as client:
        assert client.readReply().code == 220
        client.send(f"EHLO {CLIENT_NAME}\r\nMAIL FROM:<{SENDER}>\r\n".encode())
        if count is not None:
            return client.readReplies(count)
        return client.readUntilClosed()


def trickle(port: int, rate: int, within: float) -> tuple[list[ServerReply], float]:
    """
    Send a message to C{port} at about C{rate} bytes per second (a line every 0.1 s) for
    C{within} seconds, or until the server says something.

    @return: the replies after the 354 (to the end of data, if the server let it be
        sent; else all it said before it closed the connection) and the seconds the body
        was sent for.
    @raise FailTest: the server spoke and did not close the connection.
    """
    line = b"x" * (rate // 10 - 2) + b"\r\n"
    with RawClient(port) as client:
        assert client.readReply().code == 220
        for command, code in (
            (f"EHLO {CLIENT_NAME}", 250),
            (f"MAIL FROM:<{SENDER}>", 250),
            ("RCPT TO:<u@example.org>", 250),
            ("DATA", 354),
        ):
            reply = client.command(command)
            assert reply.code == code, (command, reply)
        started = time.monotonic()
        answered = False
        while not answered and time.monotonic() - started < within:
            try:
                client.send(line)
            except OSError:
                break
            answered = bool(select.select([client.sock], [], [], 0.1)[0])
        seconds = time.monotonic() - started
        if not answered:
            client.send(b".\r\n")
            return [client.readReply()], seconds
        return client.readUntilClosed(), seconds


class ReloadTests(E2ETestCase):
    """
    SIGHUP reads the certificate files again, without dropping connections.
    """

    def setUp(self) -> None:
        if not haveOpenSSL():
            raise SkipTest(NO_OPENSSL)

    async def startWithCertificate(self, fileName: str, host: str) -> tuple[ServiceProcess, Path]:
        """
        Write a certificate for C{host} (and its key) from the test CA into C{fileName} in
        a new directory, and start there a service named C{mx.example.test} that serves it
        on an implicit TLS port and discards what it accepts.

        @return: the service and the certificate file.
        """
        tmpdir = workspace(self)
        pem = Path(tmpdir, fileName)
        pair = issue(host)
        pem.write_bytes(pair.cert + pair.key)
        args = [
            *("--cert", str(pem), "--name", "mx.example.test"),
            *("--listen-tls", LISTEN, "--deliver", "discard", *QUICK),
        ]
        return await startService(self, args, tmpdir), pem

    async def test_DANE_04_sighupReloadsCertificates(self) -> None:
        """
        After the --cert file is replaced and SIGHUP sent, openssl s_client is served the
        new certificate while a TLS connection opened before still works, and the log
        warns that the new one does not cover the server's name; a broken file and
        another SIGHUP are logged and the certificate in use stays.
        """
        process, pem = await self.startWithCertificate("mx.pem", "mx.example.test")
        port = process.port
        assert port is not None
        self.assertEqual(await servedCommonName(port, "x"), "mx.example.test")
        # A certificate that covers the name draws no warning (see tls.rst).
        self.assertEqual(process.lines("does not cover"), [], process.text)

        client = await deferToThread(RawClient, port)
        self.addCleanup(client.close)

        def openTLS() -> tuple[ServerReply, ServerReply]:
            client.startTLS(clientContext(authority().cert), "mx.example.test")
            return client.readReply(), client.command(f"EHLO {CLIENT_NAME}")

        self.assertEqual(codes(await deferToThread(openTLS)), [220, 250])

        renewed = issue("renewed.example.test")
        pem.write_bytes(renewed.cert + renewed.key)
        process.sendSignal("HUP")
        await process.waitForOutput(re.compile(rb"Certificates reloaded"), SIGNAL_TIMEOUT)
        self.assertEqual(await servedCommonName(port, "x"), "renewed.example.test")
        # The renewed one is for another name: MTA-STS senders would refuse it, and the
        # reload says so.
        await process.waitForOutput(
            re.compile(rb"The certificate does not cover mx\.example\.test"), SIGNAL_TIMEOUT
        )

        def stillThere() -> tuple[ServerReply, str | None]:
            noop = client.command("NOOP")
            sock = client.sock
            assert isinstance(sock, ssl.SSLSocket)
            der = sock.getpeercert(binary_form=True)
            assert der is not None
            return noop, commonName(x509.load_der_x509_certificate(der))

        noop, served = await deferToThread(stillThere)
        self.assertEqual((noop.code, served), (250, "mx.example.test"))

        pem.write_bytes(b"this is not a certificate\n")
        process.sendSignal("HUP")
        await process.waitForOutput(re.compile(rb"Certificates not reloaded: .+"), SIGNAL_TIMEOUT)
        self.assertEqual(len(process.lines("Certificates reloaded")), 1, process.text)
        self.assertEqual(await servedCommonName(port, "x"), "renewed.example.test")
        self.assertEqual((await deferToThread(client.command, "QUIT")).code, 221)

    async def test_sighupReloadsSniDirectory(self) -> None:
        """
        SIGHUP reads --sni-dir again: openssl s_client asking for a name whose file was
        added is served that file's certificate, and one asking for a name whose file was
        removed gets the --cert certificate, down to an empty directory.
        """
        tmpdir = workspace(self)
        sniDir = Path(tmpdir, "sni")
        sniDir.mkdir()
        mx, b, c = issue("mx.example.test"), issue("b.example.test"), issue("c.example.test")
        Path(tmpdir, "mx.pem").write_bytes(mx.cert + mx.key)
        sniDir.joinpath("b.example.test.pem").write_bytes(b.cert + b.key)
        args = [
            *("--cert", "mx.pem", "--name", "mx.example.test", "--sni-dir", "sni"),
            *("--listen-tls", LISTEN, "--deliver", "discard", *QUICK),
        ]
        process = await startService(self, args, tmpdir)
        port = process.port
        assert port is not None

        async def served() -> list[str | None]:
            return [
                await servedCommonName(port, name) for name in ("b.example.test", "c.example.test")
            ]

        self.assertEqual(await served(), ["b.example.test", "mx.example.test"])
        sniDir.joinpath("b.example.test.pem").unlink()
        sniDir.joinpath("c.example.test.pem").write_bytes(c.cert + c.key)
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"Certificates reloaded", 1), SIGNAL_TIMEOUT)
        self.assertEqual(await served(), ["mx.example.test", "c.example.test"])
        sniDir.joinpath("c.example.test.pem").unlink()
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"Certificates reloaded", 2), SIGNAL_TIMEOUT)
        self.assertEqual(await served(), ["mx.example.test", "mx.example.test"])
        self.assertEqual(process.lines("Certificates not reloaded"), [], process.text)

    async def test_startupWarnsOfUncoveredName(self) -> None:
        """
        A certificate that does not cover C{--name} is served all the same, and the log
        says at start that MTA-STS senders would refuse it.
        """
        process, _ = await self.startWithCertificate("other.pem", "other.example.test")
        assert process.port is not None
        self.assertEqual(await servedCommonName(process.port, "x"), "other.example.test")
        [warning] = process.lines("The certificate does not cover mx.example.test")
        self.assertIn("MTA-STS", warning)


class DurabilityTests(E2ETestCase):
    """
    A message answered 250 is on disk: killing the service with SIGKILL loses nothing.
    """

    async def test_killAfter250LosesNothing(self) -> None:
        """
        Five times, a fresh service gets one message and is SIGKILLed the moment its 250
        arrives (the last time with a second message half sent): every message answered
        250 is in new/, complete, and tmp/ holds only the half message, never a complete
        one missing from new/.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK]
        sent: list[bytes] = []
        half: bytes | None = None
        for attempt in range(5):
            process = await startService(self, args, tmpdir)
            assert process.port is not None
            body = message(f"attempt {attempt}", size=random.randrange(1000, 300_000))
            interrupted = message(f"attempt {attempt}, interrupted", size=100_000)

            def sendThenKill(
                port: int, pid: int, body: bytes, interrupted: bytes | None
            ) -> ServerReply:
                with RawClient(port) as client:
                    self.assertEqual(client.readReply().code, 220)
                    client.command(f"EHLO {CLIENT_NAME}")
                    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
                    self.assertEqual(codes(client.readReplies(3)), [250, 250, 354])
                    client.send(stuff(body))
                    reply = client.readReply()
                    if interrupted is None:
                        os.kill(pid, signal.SIGKILL)
                        return reply
                    client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
                    self.assertEqual(codes(client.readReplies(3)), [250, 250, 354])
                    client.send(stuff(interrupted)[: len(interrupted) // 2])
                    deadline = time.monotonic() + SOCKET_TIMEOUT
                    while not any(b"interrupted" in f for f in leftInTmp(maildir).values()):
                        self.assertLess(time.monotonic(), deadline, "nothing written to tmp/")
                        time.sleep(0.02)
                    os.kill(pid, signal.SIGKILL)
                    return reply

            last = attempt == 4
            reply = await deferToThread(
                sendThenKill, process.port, process.pid, body, interrupted if last else None
            )
            self.assertEqual(reply.code, 250, process.text)
            sent.append(body)
            if last:
                half = interrupted
            await process.waitForExit(SIGNAL_TIMEOUT)
            self.assertEqual(process.signal, signal.SIGKILL)

        stored = sorted(withoutTraceHeaders(m) for m in delivered(maildir).values())
        self.assertEqual(stored, sorted(sent))
        assert half is not None
        leftovers = list(leftInTmp(maildir).values())
        for leftover in leftovers:
            self.assertNotIn(withoutTraceHeaders(leftover), sent)
            self.assertNotEqual(withoutTraceHeaders(leftover), half)
        # The one leftover is the start of the interrupted message, nothing else.
        self.assertEqual(len(leftovers), 1)
        self.assertTrue(half.startswith(withoutTraceHeaders(leftovers[0])))


class ShutdownTests(E2ETestCase):
    """
    SIGTERM closes the service gracefully, within closeTimeout.
    """

    async def _start(self) -> tuple[ServiceProcess, str]:
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = [
            *("--listen", LISTEN, "--deliver", f"maildir:{maildir}"),
            *("--close-timeout", str(CLOSE_TIMEOUT), *QUICK),
        ]
        return await startService(self, args, tmpdir), maildir

    async def _inData(self, port: int, body: bytes) -> RawClient:
        # A client that has sent half of body after DATA.
        def start() -> RawClient:
            client = RawClient(port)
            try:
                self.assertEqual(client.readReply().code, 220)
                client.command(f"EHLO {CLIENT_NAME}")
                client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
                self.assertEqual(codes(client.readReplies(3)), [250, 250, 354])
                client.send(stuff(body)[: len(body) // 2])
            except BaseException:
                client.close()
                raise
            return client

        client = await deferToThread(start)
        self.addCleanup(client.close)
        return client

    async def test_idleClientToldAndInDataClientFinishes(self) -> None:
        """
        On SIGTERM an idle client gets 421 Server shutting down at once; a client in the
        middle of DATA may finish its message and gets its 250; then the process exits,
        well within closeTimeout.
        """
        process, maildir = await self._start()
        port = process.port
        assert port is not None

        def idleClient() -> RawClient:
            client = RawClient(port)
            self.assertEqual(client.readReply().code, 220)
            self.assertEqual(client.command(f"EHLO {CLIENT_NAME}").code, 250)
            return client

        idle = await deferToThread(idleClient)
        self.addCleanup(idle.close)
        body = message("finished after SIGTERM", size=50_000)
        busy = await self._inData(port, body)

        started = time.monotonic()
        process.sendSignal("TERM")
        told = await deferToThread(idle.readUntilClosed, CLOSE_TIMEOUT)
        self.assertEqual([(r.code, r.lines[0]) for r in told], [(421, "Server shutting down")])
        self.assertLess(time.monotonic() - started, CLOSE_TIMEOUT)
        await process.waitForOutput(re.compile(rb"Server closing with 2 connection\(s\)"))
        self.assertFalse(process.ended)

        done, after = await deferToThread(finishAndQuit, busy, body, CLOSE_TIMEOUT)
        self.assertEqual(done.code, 250)
        self.assertIn(codes(after), [[221], [421]])
        await process.waitForExit(CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertLess(time.monotonic() - started, CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        self.assertIn("Server closed", process.text)
        stored = [withoutTraceHeaders(m) for m in delivered(maildir).values()]
        self.assertEqual(stored, [body])

    async def test_stuckClientCutOffAfterCloseTimeout(self) -> None:
        """
        A client that does not finish its message within closeTimeout after SIGTERM gets
        421 then, not before; the process exits, and the half message is gone from tmp/.
        """
        process, maildir = await self._start()
        assert process.port is not None
        busy = await self._inData(process.port, message("never finished", size=50_000))
        started = time.monotonic()
        process.sendSignal("TERM")
        told = await deferToThread(busy.readUntilClosed, CLOSE_TIMEOUT + EXIT_MARGIN)
        waited = time.monotonic() - started
        self.assertEqual([(r.code, r.lines[0]) for r in told], [(421, "Server shutting down")])
        self.assertGreater(waited, CLOSE_TIMEOUT - 0.5)
        await process.waitForExit(CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertLess(time.monotonic() - started, CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        self.assertEqual(delivered(maildir), {})
        self.assertEqual(leftInTmp(maildir), {})

    async def test_secondStopSignalWhileClosing(self) -> None:
        """
        A SIGTERM or SIGINT that comes while the server is closing changes nothing and
        logs one line each, not Twisted's critical ReactorNotRunning traceback; nor does a
        SIGHUP, which would otherwise meet the default handler and kill the process: the
        client in DATA still finishes its message, and the process exits cleanly.
        """
        process, maildir = await self._start()
        assert process.port is not None
        body = message("finished after three signals", size=50_000)
        busy = await self._inData(process.port, body)
        process.sendSignal("TERM")
        await process.waitForOutput(re.compile(rb"Server closing with 1 connection\(s\)"))
        process.sendSignal("TERM")
        process.sendSignal("INT")
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"already shutting down.", 3), SIGNAL_TIMEOUT)

        def finish() -> ServerReply:
            busy.send(stuff(body)[len(body) // 2 :])
            return busy.readReply()

        self.assertEqual((await deferToThread(finish)).code, 250)
        await process.waitForExit(CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        self.assertEqual(len(process.lines("Received SIGTERM, already shutting down.")), 1)
        self.assertEqual(len(process.lines("Received SIGINT, already shutting down.")), 1)
        self.assertEqual(len(process.lines("Received SIGHUP, already shutting down.")), 1)
        self.assertNotIn("Traceback", process.text)
        self.assertNotIn("ReactorNotRunning", process.text)
        self.assertEqual(len(delivered(maildir)), 1)

    async def test_handlerThatNeverAnswers(self) -> None:
        """
        A close handler that never answers does not keep the process from exiting on
        SIGTERM: the server waits for it until closeTimeout, ABORT_DELAY and HANDLER_GRACE
        have passed, says so, and exits cleanly.
        """
        tmpdir = workspace(self)
        args = [
            *("--listen", LISTEN, "--deliver", "discard"),
            *("--deliver", "python:tests.service_support:makeNeverClosing"),
            *("--close-timeout", str(CLOSE_TIMEOUT), *QUICK),
        ]
        process = await startService(self, args, tmpdir)
        assert process.port is not None
        code, _ = await deferToThread(sendOne, process.port, message("then QUIT"))
        self.assertEqual(code, 250)
        started = time.monotonic()
        process.sendSignal("TERM")
        limit = CLOSE_TIMEOUT + ABORT_DELAY + HANDLER_GRACE
        await process.waitForExit(limit + EXIT_MARGIN)
        self.assertGreater(time.monotonic() - started, limit - 0.5)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        self.assertIn(
            "Closing the server without waiting any longer for the handlers of 1 connection(s)",
            process.text,
        )


def sendInParallel(port: int, count: int) -> list[tuple[int, bytes]]:
    """
    Send C{count} messages at once, each on its own connection (blocking: run it in a
    thread); the replies to their data.
    """
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(sendOne, port, message(f"parallel {i}")) for i in range(count)]
        return [future.result(timeout=TOOL_TIMEOUT) for future in futures]


def resume(pid: int) -> None:
    """
    Let a process stopped with SIGSTOP run again, if it is still there.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def clientInData(port: int, start: bytes) -> RawClient:
    """
    A client that has sent C{start} after DATA (blocking: run it in a thread).
    """
    client = RawClient(port)
    try:
        assert client.readReply().code == 220
        client.command(f"EHLO {CLIENT_NAME}")
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
        assert codes(client.readReplies(3)) == [250, 250, 354]
        client.send(start)
    except BaseException:
        client.close()
        raise
    return client


def refused(port: int) -> bool:
    """
    Whether a connection to C{port} is refused.
    """
    try:
        socket.create_connection((LOCALHOST, port), timeout=SOCKET_TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        # Queued on the socket as it was being closed, then reset: not refused yet.
        return False
    return False


def clientInDataForEach(port: int, workers: Sequence[int]) -> list[RawClient]:
    """
    For each of the processes C{workers}, a client it serves that has sent half a
    message after DATA (blocking: run it in a thread).  Connections go to the worker the
    kernel picks: open them until each worker has one, and close the others.
    """
    chosen: dict[int, RawClient] = {}
    try:
        for _ in range(50):
            if len(chosen) == len(workers):
                break
            client = RawClient(port)
            assert client.readReply().code == 220
            pid = servingProcesses(workers, port).get(client.sock.getsockname()[1])
            if pid is None or pid in chosen:
                client.close()
                continue
            chosen[pid] = client
            client.command(f"EHLO {CLIENT_NAME}")
            client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
            assert codes(client.readReplies(3)) == [250, 250, 354]
            client.send(b"Subject: half\r\n\r\n")
    except BaseException:
        for client in chosen.values():
            client.close()
        raise
    assert len(chosen) == len(workers), f"no connection reached some of {workers}"
    return list(chosen.values())


class WorkerTests(E2ETestCase):
    """
    C{--workers N}: N processes serve the listening sockets of one master.
    """

    async def _servedBy(self, port: int, wanted: set[int], rounds: int = 10) -> set[int]:
        # Send messages in parallel until the workers wanted have all answered (or the
        # rounds are spent): which process serves a connection is the kernel's choice.
        seen: set[int] = set()
        for _ in range(rounds):
            replies = await deferToThread(sendInParallel, port, 20)
            self.assertEqual({code for code, _ in replies}, {250}, replies)
            seen |= {pid for _, text in replies if (pid := queuedPID(text)) is not None}
            if wanted <= seen:
                break
        return seen

    async def test_workers(self) -> None:
        """
        With --workers 2 the master logs one listening line and two workers serve the
        connections (their PIDs are in the Maildir's file names); SIGHUP reaches both; a
        worker killed with SIGKILL is replaced and the new one serves; SIGTERM stops the
        workers and the master.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = ["--listen", LISTEN, "--workers", "2", "--deliver", f"maildir:{maildir}", *QUICK]
        # The development certificate handed to the workers goes into this test's directory.
        process = await startService(self, args, tmpdir, environment={"TMPDIR": tmpdir})
        port = process.port
        assert port is not None
        listening = process.lines("listening on")
        self.assertEqual(len(listening), 1, process.text)
        self.assertTrue(
            listening[0].endswith(f" SMTP server listening on 127.0.0.1:{port} with 2 workers"),
            listening[0],
        )
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        workers = process.workerPIDs
        self.assertEqual(len(set(workers)), 2)
        self.assertNotIn(process.pid, workers)

        self.assertEqual(await self._servedBy(port, set(workers)), set(workers))
        self.assertEqual(maildirPIDs(maildir), set(workers))

        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"Certificates reloaded", 2), SIGNAL_TIMEOUT)

        os.kill(workers[0], signal.SIGKILL)
        await process.waitForOutput(
            re.compile(rb"Worker \d ended \(.*\); starting another"), SIGNAL_TIMEOUT
        )
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 3), SIGNAL_TIMEOUT)
        replacement = process.workerPIDs[2]
        self.assertNotIn(replacement, workers)
        self.assertIn(replacement, await self._servedBy(port, {replacement}))

        process.sendSignal("TERM")
        await process.waitForExit(SIGNAL_TIMEOUT)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        for pid in (workers[1], replacement):
            self.assertFalse(alive(pid), f"worker {pid} still runs")
        self.assertEqual(len(process.lines("Server closed")), 2, process.text)

    async def test_workersOnAUnixSocket(self) -> None:
        """
        With --workers on a unix: listener, the socket keeps the mode= it was given (LMTP
        QA: each worker, adopting it, set it to 0666, so any local user could hand mail
        to the store), each worker's serving line names its path (it named nothing),
        they serve, one stopping leaves the others serving, and the master removes the
        file when it stops.
        """
        tmpdir = workspace(self)
        # Short: a socket's path has at most 107 bytes, which _trial_temp may not leave.
        socketDirectory = tempfile.mkdtemp(prefix="smtpsvc-")
        self.addCleanup(shutil.rmtree, socketDirectory, ignore_errors=True)
        path = os.path.join(socketDirectory, "lmtp.sock")
        args = [
            *("--lmtp", "--listen", f"unix:{path}:mode=600", "--workers", "2"),
            *("--deliver", "discard", *QUICK),
        ]
        process = await startService(self, args, tmpdir, waitForPort=False)
        await process.waitForOutput(occurrences(f" serving {path}".encode(), 2))
        self.assertEqual(len(set(process.workerPIDs)), 2, process.text)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

        def greeting() -> bytes:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(path)
                return client.recv(100)

        self.assertTrue((await deferToThread(greeting)).startswith(b"220 "))
        # A worker that stops gracefully (SIGTERM to it alone) closes its descriptor
        # only: the socket the others share still accepts (attack QA: its shutdown()
        # left every process's socket refusing, the replacement worker's too).
        os.kill(process.workerPIDs[0], signal.SIGTERM)
        await process.waitForOutput(occurrences(f" serving {path}".encode(), 3), SIGNAL_TIMEOUT)
        for _ in range(6):
            self.assertTrue((await deferToThread(greeting)).startswith(b"220 "))
        process.sendSignal("TERM")
        await process.waitForExit(SIGNAL_TIMEOUT)
        self.assertIn((process.exitCode, process.signal), CLEAN_EXITS, process.text)
        self.assertFalse(os.path.exists(path))

    async def _twoWorkersWithCertificateFiles(
        self,
    ) -> tuple[ServiceProcess, int, Path, Path, KeyPair]:
        # Two workers serving implicit TLS with first.example.test's certificate from
        # files, once both serve: the process, its port, the two files, and the pair
        # written to them.
        if not haveOpenSSL():
            raise SkipTest(NO_OPENSSL)
        tmpdir = workspace(self)
        cert, key = Path(tmpdir, "cert.pem"), Path(tmpdir, "key.pem")
        first = issue("first.example.test")
        cert.write_bytes(first.cert)
        key.write_bytes(first.key)
        args = [
            *("--cert", str(cert), "--key", str(key), "--name", "mx.example.test"),
            *("--listen-tls", LISTEN, "--workers", "2", "--deliver", "discard", *QUICK),
        ]
        process = await startService(self, args, tmpdir)
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        assert process.port is not None
        return process, process.port, cert, key, first

    async def test_restartedWorkerServesCertificatesInUse(self) -> None:
        """
        A worker that dies after its certificate files have become unusable (SIGHUP kept
        the certificates in use) is replaced by one that serves the certificates in use,
        the last ones loaded, instead of failing on the files again and again while its
        share of new connections waits on a socket nobody accepts on: every new client
        is served, with the certificate in use.
        """
        process, port, cert, key, first = await self._twoWorkersWithCertificateFiles()
        workers = process.workerPIDs

        renewed = issue("renewed.example.test")
        cert.write_bytes(renewed.cert)
        key.write_bytes(renewed.key)
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"Certificates reloaded", 2), SIGNAL_TIMEOUT)
        # A renewal caught half-way: the key is not the certificate's.
        key.write_bytes(first.key)
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b"Certificates not reloaded", 2), SIGNAL_TIMEOUT)

        os.kill(workers[0], signal.SIGKILL)
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 3), SIGNAL_TIMEOUT)
        # Clients are spread over the workers by their port: a dozen reach both (or
        # the replacement is not alone to fail them).
        served = [await servedCommonName(port, "mx.example.test") for _ in range(12)]
        self.assertEqual(served, ["renewed.example.test"] * 12, process.text)
        self.assertEqual(len(process.lines("starting another")), 1, process.text)
        self.assertEqual(process.lines("could not start"), [], process.text)

    async def test_hangupWhileAWorkerStarts(self) -> None:
        """
        A SIGHUP (a certificate renewal) that comes while a worker is being started again
        does not kill it: the master keeps it from the worker until its handler is in
        place, and then the worker, which was handed the certificates loaded before,
        reads the renewed files as the other did.  (Before, the default handler killed
        it, and the master took it for a worker that could not start: one critical line,
        its socket shut, a retry 2 s later.)
        """
        process, port, cert, key, _ = await self._twoWorkersWithCertificateFiles()
        workers = process.workerPIDs
        renewed = issue("renewed.example.test")
        cert.write_bytes(renewed.cert)
        key.write_bytes(renewed.key)

        os.kill(workers[0], signal.SIGKILL)
        # The moment its replacement exists, long before it has started.
        await until(
            lambda: set(childProcesses(process.pid)) - set(workers), SIGNAL_TIMEOUT, "a new worker"
        )
        process.sendSignal("HUP")
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 3), SIGNAL_TIMEOUT)
        await process.waitForOutput(occurrences(b"Certificates reloaded", 2), SIGNAL_TIMEOUT)
        served = [await servedCommonName(port, "mx.example.test") for _ in range(12)]
        self.assertEqual(served, ["renewed.example.test"] * 12, process.text)
        self.assertEqual(process.lines("could not start"), [], process.text)
        self.assertEqual(len(process.lines("starting another")), 1, process.text)

    async def test_workerThatCannotStart(self) -> None:
        """
        A worker that cannot start again (here its configuration file was broken after
        the master started) draws one critical line that says why, and is tried again
        later rather than every second; meanwhile its socket does not listen, so that
        every new client is served by the other worker instead of waiting for nobody.
        """
        if not canSpreadConnections():
            raise SkipTest("a worker has a socket of its own through SO_REUSEPORT on Linux")
        tmpdir = workspace(self)
        config = Path(tmpdir, "smtpsvc.toml")
        config.write_text(f'listen = ["{LISTEN}"]\ndeliver = ["discard"]\n')
        args = ["--config", str(config), "--workers", "2", *QUICK]
        process = await startService(self, args, tmpdir, environment={"TMPDIR": tmpdir})
        port = process.port
        assert port is not None
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        workers = process.workerPIDs

        config.write_text("this is not TOML\n")
        os.kill(workers[0], signal.SIGKILL)
        await process.waitForOutput(
            re.compile(rb"Worker \d could not start: twist smtpsvc: .*smtpsvc\.toml"),
            SIGNAL_TIMEOUT,
        )

        def sendSome() -> list[int]:
            return [sendOne(port, message(f"{n}"))[0] for n in range(12)]

        self.assertEqual(await deferToThread(sendSome), [250] * 12)
        self.assertEqual(len(process.lines("could not start")), 1, process.text)
        self.assertEqual(len(process.lines("starting another")), 1, process.text)

    async def test_ctrlC(self) -> None:
        """
        Ctrl-C in a terminal sends SIGINT to the master and its workers alike, and the
        master then sends each worker SIGTERM: a worker that gets both while it closes
        logs the second as ignored, not Twisted's critical ReactorNotRunning traceback;
        new clients are refused at once, and all exit.  (A client in DATA on each worker
        keeps it closing for closeTimeout, so that the master's SIGTERM finds it there.)
        """
        if not canSpreadConnections():
            raise SkipTest("a client for each worker is found through SO_REUSEPORT on Linux")
        tmpdir = workspace(self)
        args = [
            *("--listen", LISTEN, "--workers", "2", "--deliver", "discard", *QUICK),
            *("--close-timeout", str(CLOSE_TIMEOUT)),
        ]
        process = await startService(self, args, tmpdir, environment={"TMPDIR": tmpdir})
        port = process.port
        assert port is not None
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        workers = process.workerPIDs
        clients = await deferToThread(clientInDataForEach, port, workers)
        for client in clients:
            self.addCleanup(client.close)

        # What the terminal does, one process of the group after the other.
        for pid in [process.pid, *workers]:
            os.kill(pid, signal.SIGINT)
        # While the workers close, new clients are refused, as by a single process.
        await until(lambda: refused(port), CLOSE_TIMEOUT, "new connections refused")
        self.assertTrue(
            all(alive(pid) for pid in workers), "new connections refused only once all ended"
        )
        await process.waitForExit(CLOSE_TIMEOUT + EXIT_MARGIN)
        self.assertEqual((process.exitCode, process.signal), (None, signal.SIGINT), process.text)
        # Whichever of its two signals reaches a worker first stops it.
        stops = re.findall(r"Received SIG(?:INT|TERM), shutting down\.", process.text)
        ignored = re.findall(r"Received SIG(?:INT|TERM), already shutting down\.", process.text)
        self.assertEqual((len(stops), len(ignored)), (3, 2), process.text)
        self.assertNotIn("Traceback", process.text)
        self.assertNotIn("ReactorNotRunning", process.text)
        for pid in workers:
            self.assertFalse(alive(pid), f"worker {pid} still runs")

    async def test_burstSpreadOverWorkers(self) -> None:
        """
        With --workers 2, 40 connections opened at once are served by both workers (the
        master gives each its own listening socket and the kernel spreads connections over
        them); and while one worker cannot accept, the other does not take the connections
        waiting for it: they are served by their own worker once it can.
        """
        if not canSpreadConnections():
            raise SkipTest("connections are spread over workers by SO_REUSEPORT on Linux only")
        tmpdir = workspace(self)
        args = ["--listen", LISTEN, "--workers", "2", "--deliver", "discard", *QUICK]
        process = await startService(self, args, tmpdir, environment={"TMPDIR": tmpdir})
        port = process.port
        assert port is not None
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        workers = process.workerPIDs
        self.assertEqual(len(set(workers)), 2)

        async def burst() -> Burst:
            connections = Burst(port, 40)
            self.addCleanup(connections.close)
            await deferToThread(connections.open)
            return connections

        # All at once: both workers get some.
        connections = await burst()
        self.assertEqual(await deferToThread(connections.awaitGreetings, SOCKET_TIMEOUT), 40)
        served = connections.servedBy(workers)
        self.assertEqual(sum(served.values()), 40, served)
        self.assertTrue(all(served.values()), f"one worker took every connection: {served}")
        replies = await deferToThread(connections.quit)
        self.assertEqual({reply[:4] for reply in replies}, {b"221 "}, replies)

        # One worker stopped (as if busy): the other serves only its own share, and the
        # stopped one serves the rest when it resumes.  With one socket for both, the
        # running worker would take all 40.
        stopped, running = workers
        os.kill(stopped, signal.SIGSTOP)
        self.addCleanup(resume, stopped)
        connections = await burst()
        # Its greetings come at once; a second without another means it took its share.
        await deferToThread(connections.awaitGreetings, 1.0)
        served = connections.servedBy(workers)
        self.assertEqual(served[stopped], 0, served)
        self.assertLess(served[running], 40, "the running worker took every connection")
        os.kill(stopped, signal.SIGCONT)
        self.assertEqual(await deferToThread(connections.awaitGreetings, SOCKET_TIMEOUT), 40)
        served = connections.servedBy(workers)
        self.assertEqual(sum(served.values()), 40, served)
        self.assertGreater(served[stopped], 0, served)
        replies = await deferToThread(connections.quit)
        self.assertEqual({reply[:4] for reply in replies}, {b"221 "}, replies)

    async def test_masterKilled(self) -> None:
        """
        When the master is killed (SIGKILL, as the OOM killer does), its workers close as
        on SIGTERM instead of serving on: they stop accepting at once, a client in DATA
        still finishes its message and gets its 250, then they exit, and the port is free
        for a new master; where files in memory hold the development key, nothing is left
        in the temporary directory.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = [
            *("--listen", LISTEN, "--workers", "2", "--deliver", f"maildir:{maildir}"),
            *("--close-timeout", "10", *QUICK),
        ]
        private = Path(tmpdir, "tmp")
        private.mkdir()
        process = await startService(self, args, tmpdir, environment={"TMPDIR": str(private)})
        port = process.port
        assert port is not None
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        workers = process.workerPIDs
        # Should they outlive their master, they go before the master's own cleanup, which
        # waits for the end of the output they share.
        self.addCleanup(killWorkers, process)
        body = message("finished after the master died", size=50_000)
        busy = await deferToThread(clientInData, port, stuff(body)[: len(body) // 2])
        self.addCleanup(busy.close)

        master = process.pid
        started = time.monotonic()
        os.kill(master, signal.SIGKILL)
        for pid in workers:
            await process.waitForOutput(
                re.compile(
                    rb"The --workers master \(PID %d\) has gone; worker %d is closing"
                    % (master, pid)
                ),
                SIGNAL_TIMEOUT,
            )
        await until(lambda: refused(port), SIGNAL_TIMEOUT, "new connections refused")

        done, after = await deferToThread(finishAndQuit, busy, body, SOCKET_TIMEOUT)
        self.assertEqual(done.code, 250)
        self.assertIn(codes(after), [[221], [421]])
        await until(
            lambda: not any(alive(pid) for pid in workers), SIGNAL_TIMEOUT, "the workers exit"
        )
        self.assertLess(time.monotonic() - started, SIGNAL_TIMEOUT)
        self.assertEqual(len(process.lines("Server closed")), 2, process.text)
        self.assertNotIn("Traceback", process.text)
        self.assertEqual([withoutTraceHeaders(m) for m in delivered(maildir).values()], [body])
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind((LOCALHOST, port))
            again.listen(1)
        if inMemory(b"probe") is not None:
            # Nor is the development key left behind: it never had a file name.
            self.assertEqual(list(private.iterdir()), [])

    async def test_workersLeaveNoKeyBehind(self) -> None:
        """
        The development certificate and key the master hands its workers never touch the
        temporary directory where the system has files in memory (Linux); elsewhere the
        temporary file is removed when the service stops.
        """
        tmpdir = workspace(self)
        private = Path(tmpdir, "tmp")
        private.mkdir()
        args = ["--listen", LISTEN, "--workers", "2", "--deliver", "discard", *QUICK]
        process = await startService(self, args, tmpdir, environment={"TMPDIR": str(private)})
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2))
        inTmp = 0 if inMemory(b"probe") is not None else 1
        self.assertEqual(len(list(private.glob("smtpsvc-development-*.pem"))), inTmp)
        process.sendSignal("TERM")
        await process.waitForExit(SIGNAL_TIMEOUT)
        self.assertEqual(
            [p.name for p in private.iterdir()],
            [],
            "the development key handed to the workers is left behind in $TMPDIR",
        )


class CommandLineErrorTests(E2ETestCase):
    """
    A configuration that cannot work stops twist smtpsvc with one line and a non-zero
    status: no traceback, no usage text.
    """

    async def test_portInUse(self) -> None:
        """
        A port something else listens on: "cannot listen on ...: Address already in use",
        with one process or with --workers.
        """
        sock = listeningSocket()
        self.addCleanup(sock.close)
        endpoint = f"tcp:{sock.getsockname()[1]}:interface={LOCALHOST}"
        expected = (f"cannot listen on {endpoint}: ", "Address already in use")
        args = ["--listen", endpoint, "--deliver", "discard"]
        await gatherResults(
            [
                Deferred.fromCoroutine(assertTwistRefuses(self, args, *expected)),
                Deferred.fromCoroutine(
                    assertTwistRefuses(self, [*args, "--workers", "2"], *expected)
                ),
            ]
        )

    async def test_unknownKeyInConfigFile(self) -> None:
        """
        A misspelt key in the configuration file is named.
        """
        tmpdir = workspace(self)
        Path(tmpdir, "smtpsvc.toml").write_text('maxClient = 5\ndeliver = ["discard"]\n')
        await assertTwistRefuses(
            self,
            ["--config", "smtpsvc.toml"],
            "smtpsvc.toml: unknown option 'maxClient'",
            cwd=tmpdir,
        )

    async def test_misspeltFlag(self) -> None:
        """
        A flag twist smtpsvc does not have is one line and status 1, not twist's usage
        text and status 64.
        """
        await assertTwistRefuses(
            self,
            ["--lisen", "tcp:1"],
            "option --lisen not recognized (twist smtpsvc --help lists the options)",
        )

    async def test_helpToAReaderThatStopped(self) -> None:
        """
        C{twist smtpsvc --help} to a pipe whose reader has gone (as C{| head} leaves it)
        exits with status 0 and says nothing on standard error: no BrokenPipeError
        traceback.
        """

        def run() -> tuple[int, bytes]:
            process = subprocess.Popen(
                twistCommand(["--help"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=twistEnvironment(),
            )
            # Closed before the interpreter has started: its first write fails.
            assert process.stdout is not None and process.stderr is not None
            process.stdout.close()
            errors = process.stderr.read()
            return process.wait(timeout=TOOL_TIMEOUT), errors

        self.assertEqual(await deferToThread(run), (0, b""))

    async def test_pythonDeliveryNotFound(self) -> None:
        """
        --deliver python: naming a module that does not exist.
        """
        await assertTwistRefuses(
            self,
            ["--deliver", "python:no.such:thing"],
            "--deliver python:no.such:thing: cannot import no.such",
        )

    async def test_noTraceback(self) -> None:
        """
        Mistakes that used to end in a Python traceback are one line naming the flag
        with status 1: a systemd: listener outside socket activation, a forwarding target
        without a port, a timeout of nan.
        """
        await gatherResults(
            [
                Deferred.fromCoroutine(assertTwistRefuses(self, args, *expected))
                for args, expected in (
                    (
                        ["--listen-tls", "systemd:domain=INET:index=0"],
                        ["--listen-tls systemd:domain=INET:index=0: systemd passed no such"],
                    ),
                    (
                        ["--deliver", "lmtp:tcp:host=127.0.0.1"],
                        ["--deliver lmtp:tcp:host=127.0.0.1: it needs 'port'"],
                    ),
                    (
                        ["--socket-timeout", "nan", "--deliver", "discard"],
                        ["--socket-timeout must be a finite number, not nan"],
                    ),
                )
            ]
        )

    async def test_unusableRefused(self) -> None:
        """
        Configurations that would start a server nobody could use are one line with
        status 1: an --auth source cred cannot make (which cred's own flag answered with
        usage text and status 64), a typo in --disabled-commands, a command length below
        RFC 5321's.
        """
        await gatherResults(
            [
                Deferred.fromCoroutine(assertTwistRefuses(self, [*args, *QUICK], *expected))
                for args, expected in (
                    (["--auth", "memory:alice"], ["--auth memory:alice: argstring must be"]),
                    (
                        ["--disabled-commands", "VRFY,EXNP"],
                        ["--disabled-commands has unknown command 'EXNP'"],
                    ),
                    (
                        ["--max-command-length", "4", "--deliver", "discard"],
                        ["--max-command-length must be at least 510, not 4"],
                    ),
                )
            ]
        )

    async def test_openRelayRefused(self) -> None:
        """
        Forwarding with smtp: without --domain or required AUTH would be an open relay.
        """
        await assertTwistRefuses(
            self, ["--deliver", "smtp:tcp:host=127.0.0.1:port=1"], "--deliver smtp:", "open relay"
        )


class PythonDeliveryTests(E2ETestCase):
    """
    --deliver python:MODULE:NAME runs a handler of the user's beside the others.
    """

    async def test_handlerFromModule(self) -> None:
        """
        The handler tests.service_support:makeHandler makes refuses bob; alice's copy is
        delivered by the Maildir delivery given after it.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        args = [
            *("--listen", LISTEN, "--deliver", "python:tests.service_support:makeHandler"),
            *("--deliver", f"maildir:{maildir}", "--no-hide-enhancedstatuscodes", *QUICK),
        ]
        process = await startService(self, args, tmpdir)
        port = process.port
        assert port is not None
        body = message("python delivery")

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, CLIENT_NAME, SOCKET_TIMEOUT) as c:
                refused = c.sendmail(SENDER, ["bob@example.org", "alice@example.org"], body)
                c.quit()
            return refused

        refused = await deferToThread(send)
        self.assertEqual(
            refused,
            {"bob@example.org": (550, b"5.1.1 <bob@example.org>: no bobs here (makeHandler)")},
        )
        stored = list(delivered(maildir).values())
        self.assertEqual([withoutTraceHeaders(m) for m in stored], [body])
        self.assertIn(b"\tfor <alice@example.org>; ", traceHeaders(stored[0]))


class TwistdTests(E2ETestCase):
    """
    C{twistd smtpsvc}: the same service, daemonized or with privileges dropped.
    """

    async def test_twistdDaemon(self) -> None:
        """
        twistd smtpsvc daemonizes: the command returns at once, the daemon writes its PID
        file and log, delivers, and stops on SIGTERM.
        """
        tmpdir = workspace(self)
        pidfile = os.path.join(tmpdir, "smtpsvc.pid")
        logfile = os.path.join(tmpdir, "smtpsvc.log")
        maildir = os.path.join(tmpdir, "md")

        def daemonPID() -> int | None:
            try:
                return int(Path(pidfile).read_text().strip())
            except (OSError, ValueError):
                return None

        def kill() -> None:
            pid = daemonPID()
            if pid is not None and isServiceProcess(pid):
                os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill)
        argv = serviceCommand(
            ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK],
            ("--pidfile", pidfile, "--logfile", logfile),
            program="twistd",
        )
        result = await deferToThread(
            subprocess.run,
            argv,
            cwd=tmpdir,
            env=twistEnvironment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TOOL_TIMEOUT,
        )
        self.assertEqual(result.returncode, 0, result)

        def log() -> str:
            try:
                return Path(logfile).read_text()
            except OSError:
                return ""

        listening = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        await until(lambda: listening.search(log()), TOOL_TIMEOUT, f"twistd's log:\n{log()}")
        match = listening.search(log())
        assert match is not None
        pid = daemonPID()
        assert pid is not None
        self.assertTrue(alive(pid))
        body = message("from the daemon")
        self.assertEqual((await deferToThread(sendOne, int(match.group(1)), body))[0], 250)
        self.assertEqual([withoutTraceHeaders(m) for m in delivered(maildir).values()], [body])
        os.kill(pid, signal.SIGTERM)
        await until(lambda: not alive(pid), SIGNAL_TIMEOUT, "the daemon stopping")
        self.assertIn("Server closed", log())

    async def test_droppedPrivilegesCanDeliver(self) -> None:
        """
        Under twistd --uid/--gid the Maildir the service makes at start is one the user
        it runs as can deliver into.
        """
        if os.getuid() != 0:
            raise SkipTest("switching to another user needs root")
        tmpdir = workspace(self)
        # The trial workspace may sit under a directory only root can enter; the mail goes
        # under the system's temporary directory, which every user can reach.
        outside = tempfile.mkdtemp(prefix="smtpsvc-uid-")
        self.addCleanup(shutil.rmtree, outside, ignore_errors=True)
        os.chmod(outside, 0o755)
        # As an operator does: the service's user owns the directory its mail goes in;
        # the Maildir inside it is made by the service, as that user.
        mail = os.path.join(outside, "mail")
        os.makedirs(mail)
        os.chown(mail, 65534, 65534)
        maildir = os.path.join(mail, "md")
        args = ["--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK]
        options = ("--nodaemon", "--pidfile=", "--logfile=-", "--uid", "65534", "--gid", "65534")
        process = await startService(self, args, tmpdir, twistOptions=options, program="twistd")
        assert process.port is not None
        body = message("as nobody")
        try:
            code, text = await deferToThread(sendOne, process.port, body)
        except OSError as e:
            self.fail(f"{e!r}; the service's log:\n{process.text}")
        self.assertEqual(code, 250, f"{text!r}; the service's log:\n{process.text}")
        self.assertEqual([withoutTraceHeaders(m) for m in delivered(maildir).values()], [body])

    async def test_workersUnderTwistd(self) -> None:
        """
        twistd smtpsvc --workers: both workers start, which needs the development
        certificate the master hands them, deliver, and log through the master, into
        twistd's log.
        """
        await self._workersUnderTwistd(asNobody=False)

    async def test_workersUnderTwistdAsNobody(self) -> None:
        """
        The same with --uid and --gid: the certificate the master hands over after the
        privilege drop (in memory, or in a file) belongs to the workers' user, who can
        read it.
        """
        if not await deferToThread(nobodyCanRunPython):
            raise SkipTest(
                "needs root, and user 65534 able to run this interpreter (the master, once "
                "it is that user, starts the workers with it)"
            )
        await self._workersUnderTwistd(asNobody=True)

    async def _workersUnderTwistd(self, asNobody: bool) -> None:
        tmpdir = workspace(self)
        outside = tempfile.mkdtemp(prefix="smtpsvc-workers-")
        self.addCleanup(shutil.rmtree, outside, ignore_errors=True)
        os.chmod(outside, 0o755)
        mail, private = os.path.join(outside, "mail"), os.path.join(outside, "tmp")
        os.makedirs(mail)
        os.makedirs(private)
        options: tuple[str, ...] = ("--nodaemon", "--pidfile=", "--logfile=-")
        if asNobody:
            for directory in (mail, private):
                os.chown(directory, 65534, 65534)
            options += ("--uid", "65534", "--gid", "65534")
        maildir = os.path.join(mail, "md")
        args = ["--listen", LISTEN, "--workers", "2", "--deliver", f"maildir:{maildir}", *QUICK]
        process = await startService(
            self,
            args,
            tmpdir,
            twistOptions=options,
            program="twistd",
            environment={"TMPDIR": private},
        )
        await process.waitForOutput(occurrences(b" serving 127.0.0.1:", 2), SIGNAL_TIMEOUT)
        assert process.port is not None
        body = message("twistd workers")
        code, text = await deferToThread(sendOne, process.port, body)
        self.assertEqual(code, 250, f"{text!r}; the service's log:\n{process.text}")
        self.assertEqual([withoutTraceHeaders(m) for m in delivered(maildir).values()], [body])
        # The worker's transaction line, written by the master in twistd's text format.
        await process.waitForOutput(re.compile(rb"\[smtpsvc#info\] \w+ message from <"))
        self.assertEqual(process.lines("Worker "), [], process.text)
        handedOver = list(Path(private).glob("smtpsvc-development-*"))
        if inMemory(b"probe") is not None:
            # In a file in memory, which has no name: the workers serve, so they read it.
            self.assertEqual(handedOver, [])
        else:
            owners = {os.stat(p).st_uid for p in handedOver}
            self.assertEqual(owners, {65534 if asNobody else os.getuid()})


def nobodyCanRunPython() -> bool:
    """
    Whether the test runs as root and user 65534 can run this interpreter (and so the
    service's workers) from the repository's virtual environment.
    """
    if os.getuid() != 0:
        return False
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import twisted, smtpsvc"],
            user=65534,
            group=65534,
            extra_groups=[],
            capture_output=True,
            timeout=TOOL_TIMEOUT,
            cwd="/",
        )
    except OSError:
        return False
    return result.returncode == 0


class ExampleFileTests(E2ETestCase):
    """
    The files under docs/examples that the service page includes: the TOML file, the
    systemd units and the handler module.
    """

    def test_everyExampleTestedAndIncluded(self) -> None:
        """
        The service_* files under docs/examples are the ones these tests exercise, and the
        service page includes each of them.
        """
        self.assertEqual({p.name for p in EXAMPLES.glob("service_*")}, SERVICE_EXAMPLES)
        page = (EXAMPLES.parent / "service.rst").read_text(encoding="utf-8")
        for name in sorted(SERVICE_EXAMPLES):
            self.assertIn(f".. literalinclude:: examples/{name}\n", page, name)

    def test_unitsLogText(self) -> None:
        """
        Each systemd unit of the docs runs twist with --log-format text: its output is
        not a terminal there, so twist would write JSON to the journal instead of the
        lines the docs show.
        """
        for name in (
            "service_smtpsvc.service",
            "service_smtpsvc-activated.service",
            "deploy_smtpsvc@.service",
        ):
            self.assertEqual(unitTwistOptions(EXAMPLES / name), ["--log-format", "text"], name)

    def _etc(self) -> tuple[str, dict[str, str]]:
        # A stand-in for /etc/smtpsvc with the example file and its certificate, and the
        # moves from the real paths to the stand-ins.
        tmpdir = workspace(self)
        etc = os.path.join(tmpdir, "etc")
        os.makedirs(etc)
        moves = {"/etc/smtpsvc": etc, "/var/mail": os.path.join(tmpdir, "mail")}
        text = (EXAMPLES / "service_example.toml").read_text()
        Path(etc, "smtpsvc.toml").write_text("".join(relocate([text], moves)))
        pair = issue("mx.example.org")
        Path(etc, "mx.example.org.pem").write_bytes(pair.cert + pair.key)
        return tmpdir, moves

    def test_exampleConfiguration(self) -> None:
        """
        The example TOML file parses: an MX on port 25 for example.org and its subdomains,
        delivering into a Maildir, with the certificate next to the file.
        """
        tmpdir, _ = self._etc()
        options = tap.Options()
        options.parseOptions(["--config", os.path.join(tmpdir, "etc", "smtpsvc.toml")])
        config = options.config
        self.assertEqual(config.listen, ["tcp:25"])
        self.assertEqual(config.domains, ["example.org", ".example.org"])
        self.assertEqual(config.deliver, [f"maildir:{tmpdir}/mail/example.org"])
        self.assertEqual(config.tls.cert, os.path.join(tmpdir, "etc", "mx.example.org.pem"))
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual([type(h) for h in server.handlers], [RelayPolicy, MaildirDelivery])
        self.assertEqual(server.options.name, "mx.example.org")
        self.assertEqual(server.options.closeTimeout, 20)
        self.assertEqual(server.options.handlerTimeout, 120)
        client = MemoryClient(server)
        client.send("EHLO client.example")
        replies = client.send("MAIL FROM:<a@remote.example>", "RCPT TO:<u@elsewhere.example>")
        self.assertEqual(codes(replies), [250, 550])

    def test_unitFile(self) -> None:
        """
        The plain unit's command line parses (every flag exists) with the example file;
        reload is SIGHUP and stop is SIGTERM to the main process.
        """
        _, moves = self._etc()
        unit = EXAMPLES / "service_smtpsvc.service"
        words = unitCommand(unit)
        self.assertEqual(words, ["--config", "/etc/smtpsvc/smtpsvc.toml"])
        options = tap.Options()
        options.parseOptions(relocate(words, moves))
        self.assertEqual(options.config.listen, ["tcp:25"])
        self.assertEqual(unitSetting(unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(unitSetting(unit, "KillMode"), ["mixed"])
        self.assertEqual(unitSetting(unit, "KillSignal"), ["SIGTERM"])
        # Port 25 as an unprivileged user.
        self.assertEqual(unitSetting(unit, "AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"])
        self.assertEqual(unitSetting(unit, "ReadWritePaths"), ["/var/mail/example.org"])

    async def test_socketActivatedUnit(self) -> None:
        """
        The socket-activated unit's command line, given listening sockets the way systemd
        gives them (descriptors 3 and 4, LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), serves
        on the first: mail for example.org is delivered, other mail is refused; with
        --listen-tls systemd:domain=INET:index=1 added, the second serves implicit TLS.
        """
        tmpdir, moves = self._etc()
        unit = EXAMPLES / "service_smtpsvc-activated.service"
        socketUnit = EXAMPLES / "service_smtpsvc.socket"
        self.assertEqual(unitSetting(socketUnit, "ListenStream"), ["0.0.0.0:25"])
        self.assertEqual(unitSetting(unit, "Requires"), ["smtpsvc.socket"])
        words = unitCommand(unit)
        self.assertIn("systemd:domain=INET:index=0", words)
        plain, secure = listeningSocket(), listeningSocket()
        self.addCleanup(plain.close)
        self.addCleanup(secure.close)
        environment, fds = socketActivation([plain, secure], "smtpsvc.socket")
        args = [*relocate(words, moves), "--listen-tls", "systemd:domain=INET:index=1", *QUICK]
        process = await startService(
            self, args, tmpdir, environment=environment, childFDs=fds, wrapper=SYSTEMD_WRAPPER
        )
        ports = await process.listeningPorts()
        self.assertEqual(ports, (plain.getsockname()[1], secure.getsockname()[1]))
        body = message("socket activated")
        self.assertEqual((await deferToThread(sendOne, ports[0], body))[0], 250)
        refused = await deferToThread(sendOne, ports[0], body, "u@elsewhere.example")
        self.assertEqual(refused, (550, b"5.7.1 Relay access denied"))
        stored = delivered(os.path.join(tmpdir, "mail", "example.org"))
        self.assertEqual([withoutTraceHeaders(m) for m in stored.values()], [body])

        def handshake() -> ServerReply:
            with RawClient(ports[1]) as client:
                client.startTLS(clientContext(authority().cert), "mx.example.org")
                greeting = client.readReply()
                client.command("QUIT")
            return greeting

        greeting = await deferToThread(handshake)
        self.assertEqual(greeting.code, 220)
        self.assertTrue(greeting.lines[0].startswith("mx.example.org "), greeting)

    def test_exampleHandler(self) -> None:
        """
        docs/examples/service_handler.py, loaded as --deliver python:service_handler:
        makeHandler loads it, accepts the recipients its file lists and refuses others.
        """
        tmpdir = workspace(self)
        recipients = Path(tmpdir, "recipients")
        recipients.write_text("# our users\nalice@example.org\nBob@Example.org\n")
        self.patch(os, "environ", dict(os.environ, SMTPSVC_RECIPIENTS=str(recipients)))
        self.patch(sys, "path", [str(EXAMPLES), *sys.path])
        self.addCleanup(sys.modules.pop, "service_handler", None)
        options = tap.Options()
        options.parseOptions(
            ["--deliver", "python:service_handler:makeHandler", "--deliver", "discard"]
        )
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(type(server.handlers[0]).__name__, "KnownRecipients")
        client = MemoryClient(server)
        client.send("EHLO client.example", "MAIL FROM:<a@remote.example>")
        replies = [
            client.send(f"RCPT TO:<{r}>")[0]
            for r in ("alice@example.org", "bob@example.org", "carol@example.org")
        ]
        self.assertEqual(codes(replies), [250, 250, 550])
        self.assertEqual(replies[2].lines, ("No such user here",))
        # While the file cannot be read: a 451 of its own, and one line in the log
        # saying why, not the crash of a handler.
        recipients.unlink()
        logged = LogCapture(self)
        [reply] = client.send("RCPT TO:<alice@example.org>")
        self.assertEqual(
            (reply.code, reply.lines), (451, ("Recipients unavailable, try again later",))
        )
        self.assertEqual(
            logged.messages(),
            [f"Cannot read the recipients file {recipients}: No such file or directory"],
        )
        self.assertEqual([e for e in logged.events if e.get("log_failure")], [])
