"""
Tests that every ready-made configuration in tap-configs/ loads and builds the server it
says it does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc import tap
from smtpsvc._config import ConfigurationError, listeningPort
from smtpsvc.cred import setPassword
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.handlers.relay import RelayPolicy
from smtpsvc.testing import MemoryClient

from .e2e_support import LogCapture
from .service_support import writeCertificate

CONFIGS = Path(__file__).resolve().parent.parent / "tap-configs"


class TapConfigTests(SynchronousTestCase):
    """
    The files in tap-configs/ are what an operator copies: each must work as it is.
    """

    def load(self, name: str, *extra: str) -> tap.Options:
        """
        Copy the file beside the certificates and password file it names, and parse it.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        for host in ("mx.example.org", "mail.example.org"):
            writeCertificate(str(directory), host)
        setPassword(str(directory / "passwd"), "alice", "secret")
        shutil.copy(CONFIGS / name, directory / name)
        options = tap.Options()
        options.parseOptions(["--config", str(directory / name), *extra])
        return options

    def test_everyFileTested(self) -> None:
        """
        Each file in tap-configs/ has a test here.
        """
        tested = {"development.toml", "submission.toml", "mx.toml", "lmtp-front.toml"}
        tested.add("haproxy-node.toml")
        self.assertEqual({p.name for p in CONFIGS.glob("*.toml")}, tested)

    def test_development(self) -> None:
        """
        The development sink listens on 127.0.0.1:2525 and files mail in a Maildir.
        """
        options = self.load("development.toml")
        self.assertEqual(options.config.listen, ["tcp:2525:interface=127.0.0.1"])
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual([type(h) for h in server.handlers], [MaildirDelivery])
        client = MemoryClient(server)
        client.send("EHLO x")
        self.assertEqual(
            client.sendmail("a@b.example", ["c@d.example"], b"hello\r\n")[-1].code, 250
        )

    def test_submission(self) -> None:
        """
        Submission: 587 and 465, AUTH required (PLAIN, LOGIN) over TLS only, relaying
        through the local MTA.
        """
        options = self.load("submission.toml")
        self.assertEqual(
            (options.config.listen, options.config.listenTLS), (["tcp:587"], ["tcp:465"])
        )
        server = tap.buildServer(options, reactor=Clock())
        self.assertTrue(server.options.needsUpgrade)
        self.assertEqual(server.options.authMethods, ("PLAIN", "LOGIN"))
        client = MemoryClient(server)
        client.send("EHLO x")
        self.assertEqual([r.code for r in client.send("MAIL FROM:<a@example.org>")], [530])

    def test_mx(self) -> None:
        """
        The MX accepts mail for its domains, refuses to relay, and disconnects clients
        that do not wait for its replies; it takes return paths longer than RFC 5321's
        64-octet local parts (forwarders' SRS).
        """
        options = self.load("mx.toml")
        self.assertEqual(listeningPort(options.config.listen[0]), 25)
        server = tap.buildServer(options, reactor=Clock())
        self.assertIsInstance(server.handlers[0], RelayPolicy)
        self.assertEqual(type(server.handlers[1]).__name__, "ForwardDelivery")
        self.assertIn("AUTH", server.options.disabledCommands)
        self.assertEqual(server.options.maxClientsPerAddress, 20)
        self.assertIsNone(server.options.maxLocalPartLength)
        # Without the Dovecot of the example, the relay policy is checked on its own.
        client = MemoryClient(
            tap.buildServer(self.load("mx.toml", "--deliver", "discard"), reactor=Clock())
        )
        client.send("EHLO x")
        client.send("MAIL FROM:<a@remote.example>")
        self.assertEqual([r.code for r in client.send("RCPT TO:<u@elsewhere.example>")], [550])
        self.assertTrue(server.options.forbidUnauthPipelining)
        self.assertEqual([r.code for r in client.send("NOOP", "RSET")], [250, 554])

    def test_lmtpFront(self) -> None:
        """
        The LMTP front speaks LMTP and files mail in its Maildir.  On its local socket it
        offers no STARTTLS, so it needs no certificate and warns of none; its comments
        say that the socket's directory must exist.
        """
        log = LogCapture(self)
        options = self.load("lmtp-front.toml")
        server = tap.buildServer(options, reactor=Clock())
        self.assertTrue(server.options.lmtp)
        self.assertEqual(log.matching("certificate"), [])
        client = MemoryClient(server)
        [lhlo] = client.send("LHLO x")
        self.assertNotIn("STARTTLS", lhlo.lines)
        self.assertEqual([r.code for r in client.send("STARTTLS")], [502])
        replies = client.sendmail("a@b.example", ["c@d.example", "e@f.example"], b"x\r\n")
        self.assertEqual([r.code for r in replies[-2:]], [250, 250])
        comments = (CONFIGS / "lmtp-front.toml").read_text()
        self.assertIn("RuntimeDirectory=smtpsvc", comments)

    def test_developmentCertificateWarnedOfOnlyWhereTLSIsOffered(self) -> None:
        """
        Without a certificate the service warns that it serves a development one, unless
        no client could start TLS; implicit TLS, or STARTTLS on, draws the warning.
        """
        for extra, warned in (
            ((), 0),
            (("--listen-tls", "tcp:0:interface=127.0.0.1"), 1),
            (("--secure",), 1),
            (("--disabled-commands", "VRFY"), 1),
        ):
            log = LogCapture(self)
            self.load("lmtp-front.toml", *extra)
            self.assertEqual(len(log.matching("development certificate")), warned, extra)

    def test_haproxyNode(self) -> None:
        """
        The node behind HAProxy requires PROXY headers from the balancer and runs two
        workers.
        """
        options = self.load("haproxy-node.toml")
        self.assertEqual(options.config.workers, 2)
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(server.options.useProxy, ("10.0.0.0/24", "127.0.0.1/32"))

    def test_2033_06_lmtpNeverOnPort25(self) -> None:
        """
        LMTP on port 25 is refused (RFC 2033).
        """
        with self.assertRaises(ConfigurationError) as caught:
            self.load("lmtp-front.toml", "--listen", "tcp:25")
        self.assertIn("RFC 2033", str(caught.exception))
        with self.assertRaises(ConfigurationError) as caught:
            self.load("lmtp-front.toml", "--listen", "tcp:interface=127.0.0.1:25")
        self.assertIn("RFC 2033", str(caught.exception))

    def test_listeningPort(self) -> None:
        """
        The port of an endpoint description, in its various spellings.
        """
        for description, port in (
            ("tcp:25", 25),
            ("tcp:port=25:interface=::", 25),
            ("tcp6:interface=\\:\\:1:port=587", 587),
            ("unix:/run/x.sock", None),
            ("tcp:2525:interface=127.0.0.1", 2525),
            # Twisted takes the port wherever it stands among the arguments.
            ("tcp:interface=127.0.0.1:25", 25),
            ("tcp6:interface=\\:\\:1:587", 587),
            ("ssl:465:privateKey=key.pem", 465),
        ):
            self.assertEqual(listeningPort(description), port, description)
