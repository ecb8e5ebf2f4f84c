"""
Tests for the twist plugin: discovery, the generated command line, the configuration
file, the relay policy, deliveries chosen by name, and the service.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any, cast

from cryptography import x509
from twisted.application.service import IServiceMaker
from twisted.application.twist._options import TwistOptions
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from smtpsvc import Address, IRcptToHandler, Session, SMTPError, SMTPServer, tap
from smtpsvc._config import ConfigurationError, certificatesAsBytes, withListenBacklog
from smtpsvc._options import optionSpecs
from smtpsvc._service import SignalHandlers, SMTPService, _closing
from smtpsvc.cred import setPassword
from smtpsvc.handlers.forward import ForwardDelivery
from smtpsvc.handlers.maildir import DEFAULT_MIN_FREE, MaildirDelivery
from smtpsvc.handlers.relay import RelayPolicy
from smtpsvc.testing import MemoryClient

from .auth_support import plainResponse
from .e2e_support import LogCapture
from .memorytls import authority, issue


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def buildService(*args: str) -> SMTPService:
    """
    The service C{twist smtpsvc ARGS} runs, not yet started.
    """
    service = tap.makeService(parse(*args))
    assert isinstance(service, SMTPService)
    return service


def minFrees(server: SMTPServer) -> list[int]:
    """
    The C{minFree} of each Maildir delivery of a built server, in order.
    """
    return [h.minFree for h in server.handlers if isinstance(h, MaildirDelivery)]


def chosen(options: tap.Options) -> dict[str, object]:
    """
    The server options given, without the development certificate made when none was.
    """
    given = options.serverOptions()
    assert b"PRIVATE KEY" in given.pop("key")  # type: ignore[operator]
    assert b"CERTIFICATE" in given.pop("cert")  # type: ignore[operator]
    return given


@implementer(IRcptToHandler)
class NoBob:
    """
    A handler for python: deliveries in these tests: refuses bob.
    """

    def onRcptTo(self, address: Address, session: Session) -> None:
        if address.address.startswith("bob@"):
            raise SMTPError(550, "No bob here")


def makeNoBob() -> NoBob:
    return NoBob()


class PluginTests(SynchronousTestCase):
    """
    twist finds the plugin.
    """

    def test_discovered(self) -> None:
        """
        getPlugins(IServiceMaker) finds smtpsvc, pointing at smtpsvc.tap.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("smtpsvc", makers)
        self.assertIs(makers["smtpsvc"].options, tap.Options)


def refusal(testCase: SynchronousTestCase, *args: str) -> str:
    """
    The error that parsing C{args} stops with, checked to be one line naming the command.
    """
    with testCase.assertRaises(ConfigurationError) as caught:
        parse(*args)
    text = str(caught.exception)
    testCase.assertTrue(text.startswith("twist smtpsvc: "), text)
    testCase.assertEqual(text.count("\n"), 0, text)
    return text


class OptionsTests(SynchronousTestCase):
    """
    The command line is generated from the options declaration.
    """

    def test_everyOptionHasAFlag(self) -> None:
        """
        Each option offered on the command line has its kebab-case flag.
        """
        options = tap.Options()
        for spec in optionSpecs():
            if spec.cli:
                self.assertIn(spec.flag, options.keys(), spec.name)
        flag = next(s for s in optionSpecs() if s.name == "maxClients").flag
        self.assertEqual(flag, "max-clients")

    def test_otherFlagsExist(self) -> None:
        """
        The flags the options table names for options set another way (--cert FILE,
        --sni HOST=CERT[,KEY] ...) are flags of the command line: of C{twist smtpsvc},
        or of C{twist} itself for those written C{twist --flag}.
        """
        longOptions = {name.rstrip("=") for name in tap.Options().longOpt}
        twistOptions = {name.rstrip("=") for name in TwistOptions().longOpt}
        forms = [form for s in optionSpecs() if not s.cli for form in s.cliForms]
        self.assertEqual(len(forms), 6)
        for form in forms:
            words = form.split()
            if words[0] == "twist":
                self.assertIn(words[1].removeprefix("--"), twistOptions, form)
            else:
                self.assertIn(words[0].removeprefix("--"), longOptions, form)

    def test_defaults(self) -> None:
        """
        Without --listen or --deliver the service listens on 127.0.0.1:2525 and delivers
        into ./maildir, and passes no server option.
        """
        options = parse()
        self.assertEqual(options.config.listen, ["tcp:2525:interface=127.0.0.1"])
        self.assertEqual(options.config.deliver, ["maildir:./maildir"])
        self.assertEqual(chosen(options), {})

    def test_twistLogLevel(self) -> None:
        """
        C{twist --log-level} sets the server's C{logLevel}, so that it does not make the
        events C{twist} would drop; without the flag, C{twist}'s default, C{info}.  Parsed
        without C{twist} (as C{twistd} does), the option keeps its default.
        """
        for args, expected in ((["--log-level", "warn"], LogLevel.warn), ([], LogLevel.info)):
            twist = TwistOptions()
            # Present, so that parsing installs no reactor.
            twist["reactor"] = Clock()
            twist.parseOptions([*args, "smtpsvc", "--deliver", "discard"])
            sub = twist.subOptions
            assert isinstance(sub, tap.Options)
            self.assertEqual(sub.config.serverOptions["logLevel"], expected.name)
            self.assertEqual(tap.buildServer(sub)._log.level, expected)
        alone = parse("--deliver", "discard")
        self.assertNotIn("logLevel", chosen(alone))
        self.assertEqual(tap.buildServer(alone)._log.level, LogLevel.info)

    def test_values(self) -> None:
        """
        Values are converted to the option's type.
        """
        options = parse(
            "--max-clients",
            "5",
            "--socket-timeout",
            "2.5",
            "--disabled-commands",
            "VRFY, help",
            "--bare-line-endings",
            "reject",
            "--name",
            "mx.example",
            "--use-proxy",
            "10.0.0.0/8,192.0.2.1",
            "--use-xclient",
            "*",
        )
        self.assertEqual(
            chosen(options),
            {
                "maxClients": 5,
                "socketTimeout": 2.5,
                "disabledCommands": ("VRFY", "help"),
                "bareLineEndings": "reject",
                "name": "mx.example",
                "useProxy": ("10.0.0.0/8", "192.0.2.1"),
                "useXClient": True,
            },
        )

    def test_booleans(self) -> None:
        """
        Each boolean option has a flag and a --no- flag.
        """
        self.assertEqual(chosen(parse("--lmtp", "--no-hide-dsn")), {"lmtp": True, "hideDSN": False})
        with self.assertRaises(ConfigurationError):
            parse("--lmtp", "--no-lmtp")

    def test_badValues(self) -> None:
        """
        Bad values stop the command with one line naming the flag (no usage dump).
        """
        for args, words in (
            (
                ("--max-clients", "x"),
                "--max-clients must be a whole number, or none to unset it, not 'x'",
            ),
            (("--max-clients", "0"), "--max-clients must be at least 1"),
            (("--socket-timeout", "soon"), "--socket-timeout must be a number"),
            (("--bare-line-endings", "maybe"), "--bare-line-endings must be one of normalize"),
            (("--deliver", "mbox:/x"), "--deliver: expected maildir:DIR"),
            (("--port", "70000"), "--port must be a port number"),
            (("--workers", "0"), "--workers must be at least 1, not '0'"),
            (("--workers", "1.5"), "--workers must be a whole number, not '1.5'"),
            (("--cert", "no-such.pem"), "--cert: cannot read no-such.pem"),
            (("--use-proxy", "nowhere"), "--use-proxy must list addresses and networks"),
            (
                ("--max-recipients", "99"),
                "--max-recipients must be at least 100 (RFC 5321 section 4.5.3.1.8), not 99",
            ),
            (("--max-received-headers", "0"), "--max-received-headers must be at least 1, not 0"),
            (
                ("--min-version", "TLSv1.3", "--max-version", "TLSv1.2"),
                "--min-version TLSv1.3 is newer than --max-version TLSv1.2, which leaves no "
                "TLS version to use",
            ),
            (
                ("--lmtp", "--hide-pipelining"),
                "--hide-pipelining cannot be set with --lmtp (an LMTP server must offer "
                "PIPELINING, RFC 2033 section 5)",
            ),
            (
                ("--lmtp", "--hide-enhancedstatuscodes"),
                "--hide-enhancedstatuscodes cannot be set with --lmtp (an LMTP server must "
                "offer ENHANCEDSTATUSCODES, RFC 2033 section 5)",
            ),
        ):
            self.assertIn(words, refusal(self, *args))

    def test_nonFiniteNumbers(self) -> None:
        """
        Every option that takes a number of seconds (or any fraction) refuses nan, inf
        and a number too large to be finite, naming the flag: a timer of nan seconds
        would fail on every connection.
        """
        floats = [s for s in optionSpecs() if s.cli and s.kind in ("float", "float | None")]
        self.assertIn("socketTimeout", [s.name for s in floats])
        for spec in floats:
            for text in ("nan", "NaN", "inf", "-inf", "Infinity", "1e400"):
                self.assertIn(
                    f"--{spec.flag} must be a finite number, not ",
                    refusal(self, f"--{spec.flag}", text),
                )

    def test_unsetLimit(self) -> None:
        """
        A limit that unset turns off is unset with the word none or off, in any case;
        a number still sets it.
        """
        for word in ("none", "off", "None", "OFF"):
            options = parse("--max-recipients", word, "--deliver", "discard")
            self.assertEqual(chosen(options), {"maxRecipients": None})
            server = tap.buildServer(options, reactor=Clock())
            self.assertIsNone(server.options.maxRecipients)
        self.assertEqual(chosen(parse("--max-clients", "off")), {"maxClients": None})
        self.assertEqual(chosen(parse("--min-data-rate", "off")), {"minDataRate": None})
        self.assertEqual(chosen(parse("--max-recipients", "200")), {"maxRecipients": 200})

    def test_unsetOnlyWhereItCan(self) -> None:
        """
        An option that cannot be unset refuses none and off with the error it gives any
        other bad value; a limit that can refuses other words with one saying how.
        """
        for args, words in (
            (
                ("--max-recipients", "nonsense"),
                "--max-recipients must be a whole number, or none to unset it, not 'nonsense'",
            ),
            (
                ("--max-command-length", "none"),
                "--max-command-length must be a whole number, not 'none'",
            ),
            (("--socket-timeout", "off"), "--socket-timeout must be a number, not 'off'"),
            (("--bare-line-endings", "none"), "--bare-line-endings must be one of normalize"),
            (("--max-version", "off"), "--max-version must be one of TLSv1"),
        ):
            self.assertIn(words, refusal(self, *args))
        # A string option takes the word as itself.
        self.assertEqual(chosen(parse("--name", "none")), {"name": "none"})

    def test_helpSaysHowToUnset(self) -> None:
        """
        The --help text of each limit that may be unset says how; other options' texts
        do not.
        """
        docs = tap.Options().docs
        for spec in optionSpecs():
            if spec.cli and not spec.isFlag:
                self.assertEqual(
                    "To unset it, give none or off." in docs[spec.flag],
                    spec.kind in ("int | None", "float | None"),
                    spec.name,
                )
        self.assertIn("To unset it, give none or off. [default: 1000]", docs["max-recipients"])

    def test_disabledCommandsHelp(self) -> None:
        """
        --help for --disabled-commands says what happens to a command the server never
        carries out: it may be named (EXPN is taken), only other names are refused.
        """
        doc = tap.Options().docs["disabled-commands"]
        self.assertIn("such as EXPN (always 502), may be named too; any other name", doc)
        self.assertEqual(
            chosen(parse("--disabled-commands", "EXPN"))["disabledCommands"], ("EXPN",)
        )

    def test_usageErrorsAreOneLine(self) -> None:
        """
        A flag twist smtpsvc does not have, one without its value, or an argument it
        does not take is one line pointing at --help, as any other mistake (not twist's
        usage text of every flag).
        """
        for args, words in (
            (("--lisen", "tcp:1"), "option --lisen not recognized"),
            (("--workers",), "option --workers requires argument"),
            (("extra",), "Wrong number of arguments"),
        ):
            self.assertEqual(
                refusal(self, *args),
                f"twist smtpsvc: {words} (twist smtpsvc --help lists the options)",
            )

    def test_helpHasNoRunsOfSpaces(self) -> None:
        """
        No flag's --help text has two spaces in a row (the indentation of a docstring's
        continued lines), nor a line break: twist wraps them itself.
        """
        docs = tap.Options().docs
        self.assertIn("listen", docs)
        for flag, doc in docs.items():
            if doc:
                self.assertNotIn("  ", doc, flag)
                self.assertNotIn("\n", doc, flag)
        # Nor a word too long for twist's column, which it would cut in two, leaving the
        # line before with a trailing space.
        usage = tap.Options().getUsage(width=80)
        self.assertEqual([line for line in usage.splitlines() if line.endswith(" ")], [])

    def test_domainHelpShowsTheReply(self) -> None:
        """
        --help for --domain quotes the reply a client gets for mail to another domain
        as it gets it with the default options (no enhanced status code in the text),
        the code in brackets after it, as the docs write it.
        """
        server = tap.buildServer(
            parse("--domain", "example.org", "--deliver", "discard"), reactor=Clock()
        )
        client = MemoryClient(server)
        client.send("EHLO x", "MAIL FROM:<a@b.example>")
        [reply] = client.send("RCPT TO:<u@elsewhere.example>")
        self.assertIn(f"{reply.code} {reply.lines[0]} [5.7.1]", tap.Options().docs["domain"])

    def test_repeatable(self) -> None:
        """
        --listen, --port and --deliver may be given several times.
        """
        options = parse(
            "--listen",
            "tcp:1",
            "--port",
            "587",
            "--listen-tls",
            "tcp:465",
            "--deliver",
            "maildir:a",
            "--deliver",
            "discard",
        )
        self.assertEqual(options.config.listen, ["tcp:1", "tcp:587"])
        self.assertEqual(options.config.listenTLS, ["tcp:465"])
        self.assertEqual(options.config.deliver, ["maildir:a", "discard"])

    def test_developmentCertificateOnce(self) -> None:
        """
        Without --cert a development certificate is made once, at parse time, and the
        server uses that one.
        """
        options = parse("--deliver", "discard")
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(server.options.cert, options.serverOptions()["cert"])


class EndpointErrorTests(SynchronousTestCase):
    """
    Endpoint strings Twisted cannot use stop the command with one line naming the flag
    and the string, instead of the traceback of whatever Twisted's parser raised.
    """

    def test_listeners(self) -> None:
        """
        Each listener is parsed when the command line is: an ssl: one whose key is
        missing, a systemd: one outside socket activation, an unknown kind, a port that
        is not a number; --listen-tls is named as itself.
        """
        missing = os.path.abspath(self.mktemp())
        for flag, description, words in (
            (
                "--listen",
                f"ssl:0:privateKey={missing}",
                f"cannot read {missing}: No such file or directory",
            ),
            ("--listen", "systemd:domain=INET:index=0", "systemd passed no such socket"),
            ("--listen", "systemd:domain=INET:name=smtp", "systemd passed no such socket"),
            ("--listen-tls", "systemd:domain=INET:index=1", "systemd passed no such socket"),
            ("--listen-tls", "bogus", "Unknown endpoint type: 'bogus'"),
            ("--listen", "tcp:notaport", "'notaport' is not a whole number"),
            ("--listen", "tcp:25:backlog=lots", "'lots' is not a whole number"),
        ):
            text = refusal(self, flag, description)
            self.assertTrue(text.startswith(f"twist smtpsvc: {flag} {description}: {words}"), text)

    def test_socketDirectory(self) -> None:
        """
        A Unix socket listener in a directory that does not exist is refused, naming the
        directory, as the service is made (and before it listens).
        """
        missing = os.path.abspath(self.mktemp())
        for flag in ("--listen", "--listen-tls"):
            description = f"unix:{missing}/smtp.sock:mode=660"
            with self.assertRaises(ConfigurationError) as caught:
                tap.makeService(parse(flag, description, "--deliver", "discard"))
            self.assertEqual(
                str(caught.exception),
                f"twist smtpsvc: {flag} {description}: no directory {missing}",
            )

    def test_forwardingTargets(self) -> None:
        """
        The client endpoint of an smtp: or lmtp: delivery is parsed as the server is
        built: an unknown kind, a missing port and a port that is not a number are one
        line naming the --deliver target.
        """
        for target, words in (
            ("smtp:bogus", "Unknown endpoint type: 'bogus'"),
            ("lmtp:tcp:host=127.0.0.1", "it needs 'port'"),
            ("lmtp:tcp:host=127.0.0.1:port=abc", "'abc' is not a whole number"),
        ):
            with self.assertRaises(ConfigurationError) as caught:
                tap.buildServer(parse("--deliver", target, "--domain", "example.org"))
            self.assertEqual(str(caught.exception), f"twist smtpsvc: --deliver {target}: {words}")


class DevelopmentCertificateTests(SynchronousTestCase):
    """
    Without --cert the service makes one development certificate, and says so once.
    """

    def test_onceWithSNI(self) -> None:
        """
        With --sni (or --sni-dir) but no --cert, the development certificate is made
        once, at parse time, announced once, and is the one the server serves by
        default; the SNI certificates are served for their names.
        """
        b = issue("b.example.test")
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "b.example.test.pem")
        with open(path, "wb") as f:
            f.write(b.cert + b.key)
        for args in (("--sni", f"b.example.test={path}"), ("--sni-dir", directory)):
            logs = LogCapture(self)
            options = parse(*args, "--deliver", "discard")
            server = tap.buildServer(options, reactor=Clock())
            self.assertEqual(len(logs.matching("development certificate")), 1, args)
            self.assertEqual(server.options.cert, options.serverOptions()["cert"])
            self.assertEqual(server.options.sniOptions["b.example.test"]["cert"], b.cert + b.key)


class BuildTests(SynchronousTestCase):
    """
    The server the command line describes.
    """

    def test_buildServer(self) -> None:
        """
        The server gets the options, a Maildir delivery, and AUTH disabled because the
        service has no credential source.
        """
        path = self.mktemp()
        server = tap.buildServer(parse("--size", "1000", "--deliver", f"maildir:{path}"))
        self.assertEqual(server.options.size, 1000)
        self.assertIn("AUTH", server.options.disabledCommands)
        self.assertEqual([type(h) for h in server.handlers], [MaildirDelivery])

    def test_discardHasNoHandler(self) -> None:
        """
        --deliver discard registers no delivery at all.
        """
        self.assertEqual(tap.buildServer(parse("--deliver", "discard")).handlers, ())

    def test_pythonDelivery(self) -> None:
        """
        --deliver python:MODULE:NAME loads a handler object, or calls a factory.
        """
        for name in ("makeNoBob", "NoBob"):
            server = tap.buildServer(
                parse("--deliver", f"python:tests.test_tap:{name}", "--deliver", "discard"),
                reactor=Clock(),
            )
            client = MemoryClient(server)
            client.send("EHLO x", "MAIL FROM:<a@b.example>")
            replies = client.send("RCPT TO:<bob@d.example>", "RCPT TO:<ann@d.example>")
            self.assertEqual([r.code for r in replies], [550, 250])

    def test_badPythonDelivery(self) -> None:
        """
        A python: delivery that cannot be loaded, or is not a handler, is a clear error.
        """
        for target, words in (
            ("python:no.such.module:thing", "cannot import no.such.module"),
            ("python:tests.test_tap:nothing", "has no nothing"),
            ("python:tests.test_tap:parse", "provides none of smtpsvc's interfaces"),
        ):
            with self.assertRaises(ConfigurationError) as caught:
                tap.buildServer(parse("--deliver", target))
            self.assertIn(words, str(caught.exception))

    def test_failingPythonDelivery(self) -> None:
        """
        A python: delivery whose module fails as it is imported (a RuntimeError, a
        SyntaxError), or whose factory fails when called without arguments, stops the
        command with one line naming the target and the error, not a traceback.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for module, text in (
            ("smtpsvc_test_raises", "raise RuntimeError('not today')\n"),
            ("smtpsvc_test_broken", "def (\n"),
        ):
            with open(os.path.join(directory, f"{module}.py"), "w") as f:
                f.write(text)
            self.addCleanup(sys.modules.pop, module, None)
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        for target, words in (
            ("python:json:loads", "calling loads() failed: TypeError: "),
            (
                "python:smtpsvc.handlers:MaildirDelivery",
                "calling MaildirDelivery() failed: TypeError: ",
            ),
            (
                "python:smtpsvc_test_raises:thing",
                "importing smtpsvc_test_raises failed: RuntimeError: not today",
            ),
            (
                "python:smtpsvc_test_broken:thing",
                "importing smtpsvc_test_broken failed: SyntaxError",
            ),
        ):
            self.assertIn(
                f"twist smtpsvc: --deliver {target}: {words}",
                builtRefusal(self, "--deliver", target),
            )
        # From the file too, named by the file and its key.
        path = writeConfig(self, 'deliver = ["python:json:loads"]\n')
        self.assertIn(
            f"{path}: deliver python:json:loads: calling loads() failed: TypeError: ",
            builtRefusal(self, "--config", path),
        )

    def test_nameIsAHostName(self) -> None:
        """
        --name that is not a host name (nor an address literal) stops the command with
        one line, as an empty one does.
        """
        for name in ("a..b!", "foo_bar!", ""):
            self.assertIn(
                f"twist smtpsvc: --name must be a host name or an address literal such as "
                f"[192.0.2.1], and {name!r} is not a host name",
                refusal(self, "--name", name, "--deliver", "discard"),
            )

    def test_internationalName(self) -> None:
        """
        An internationalised --name is served as its A-labels, in the greeting and the
        EHLO reply (RFC 6531 section 3.7.1), and the development certificate is made for
        that form.
        """
        options = parse("--name", "b\u00fccher.example", "--deliver", "discard")
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(server.options.name, "xn--bcher-kva.example")
        client = MemoryClient(server)
        assert client.greeting is not None
        self.assertTrue(client.greeting.lines[0].startswith("xn--bcher-kva.example "))
        [ehlo] = client.send("EHLO x")
        self.assertTrue(ehlo.lines[0].startswith("xn--bcher-kva.example "), ehlo)
        pem = options.serverOptions()["cert"]
        assert isinstance(pem, bytes)
        certificate = x509.load_pem_x509_certificate(pem)
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertIn("xn--bcher-kva.example", san.value.get_values_for_type(x509.DNSName))

    def test_relayPolicy(self) -> None:
        """
        With --domain, recipients elsewhere need AUTH (standards 2.7).
        """
        server = tap.buildServer(
            parse(
                "--domain",
                "example.org",
                "--domain",
                ".example.net",
                "--deliver",
                "discard",
                "--no-hide-enhancedstatuscodes",
            ),
            reactor=Clock(),
        )
        self.assertIsInstance(server.handlers[0], RelayPolicy)
        client = MemoryClient(server)
        client.send("EHLO x", "MAIL FROM:<a@b.example>")
        for recipient, code in (
            ("u@example.org", 250),
            ("u@EXAMPLE.org", 250),
            ("u@mx.example.net", 250),
            ("u@example.net", 550),
            ("u@external.example", 550),
            ("@example.org:u@external.example", 550),
            ("u@[192.0.2.9]", 550),
            # Sender-specified routing counts as foreign (standards 2.7).
            ('"u@external.example"@example.org', 550),
            ("u%external.example@example.org", 550),
            ("u!external.example@example.org", 550),
            # Not a domain for RFC 5321; a trailing dot is foreign to the policy too, for
            # the lenientAddressParsing that lets it through.
            ("u@example.org.", 501),
            ("postmaster", 250),
        ):
            replies = client.send(f"RCPT TO:<{recipient}>")
            self.assertEqual([r.code for r in replies], [code], recipient)
        self.assertIn("5.7.1 Relay access denied", client.send("RCPT TO:<x@y.example>")[0].text)
        self.assertFalse(RelayPolicy(["example.org"]).isLocal("u@example.org."))

    def test_relayNeedsDomainOrAuth(self) -> None:
        """
        Forwarding by SMTP without --domain or required AUTH is refused: it would be an
        open relay.
        """
        with self.assertRaises(ConfigurationError) as caught:
            tap.buildServer(parse("--deliver", "smtp:tcp:host=127.0.0.1:port=2600"))
        self.assertIn("open relay", str(caught.exception))

    def test_forwardTimeoutWithinHandlerTimeout(self) -> None:
        """
        Forwarding waits a minute for each downstream reply, or four fifths of
        handlerTimeout when that is shorter (0, no limit, leaves the minute); it is
        given handlerTimeout, which bounds its whole answer to each step, and its
        endpoint string, which names the downstream in log lines.
        """
        forward = ("--deliver", "smtp:tcp:host=127.0.0.1:port=2600", "--domain", "example.org")
        for handlerTimeout, expected in (("300", 60.0), ("0", 60.0), ("30", 24.0), ("60", 60.0)):
            server = tap.buildServer(
                parse(*forward, "--handler-timeout", handlerTimeout), reactor=Clock()
            )
            [delivery] = [h for h in server._handlers if isinstance(h, ForwardDelivery)]
            self.assertEqual(delivery.timeout, expected, handlerTimeout)
            self.assertEqual(delivery.handlerTimeout, float(handlerTimeout))
            self.assertEqual(delivery.description, "tcp:host=127.0.0.1:port=2600")

    def test_relayNeedsAuthThatIsRequired(self) -> None:
        """
        --auth counts for forwarding only while it is required: with it optional,
        forwarding without --domain is refused as well; with it required, it is allowed.
        (With AUTH switched off, --auth itself is refused: see
        UnusableConfigurationTests.test_authNobodyCanUse.)
        """
        relay = ("--deliver", "smtp:tcp:host=127.0.0.1:port=2600", "--auth", "memory:a:b")
        with self.assertRaises(ConfigurationError) as caught:
            tap.buildServer(parse(*relay, "--auth-optional"))
        self.assertIn("open relay", str(caught.exception))
        server = tap.buildServer(parse(*relay), reactor=Clock())
        self.assertTrue(server.options.authRequired)


def writeConfig(testCase: SynchronousTestCase, text: str) -> str:
    """
    The path of a new configuration file, alone in its directory, holding C{text}.
    """
    directory = testCase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "smtpsvc.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def builtRefusal(testCase: SynchronousTestCase, *args: str) -> str:
    """
    The error that building the server of C{args} (parsed without error) stops with,
    checked to be one line naming the command.
    """
    with testCase.assertRaises(ConfigurationError) as caught:
        tap.buildServer(parse(*args), reactor=Clock())
    text = str(caught.exception)
    testCase.assertTrue(text.startswith("twist smtpsvc: "), text)
    testCase.assertEqual(text.count("\n"), 0, text)
    return text


class UnusableConfigurationTests(SynchronousTestCase):
    """
    Configurations with which the server would start but could serve nobody (or nobody
    on one of its listeners) are mistakes, refused at start with one line saying why.
    """

    def test_disabledCommands(self) -> None:
        """
        An unknown command (a typo) is refused, and so is turning off what every mail
        transaction needs: the greeting (EHLO and HELO; in LMTP, EHLO, which is LHLO),
        MAIL, RCPT, or both DATA and BDAT.  Turning off some of them is fine.
        """
        self.assertIn(
            "--disabled-commands has unknown command 'EXNP'",
            refusal(self, "--disabled-commands", "VRFY,EXNP"),
        )
        for args, words in (
            (("--disabled-commands", "ehlo,HELO"), "turns off EHLO and HELO, without which"),
            (("--lmtp", "--disabled-commands", "EHLO"), "turns off EHLO (which in LMTP is LHLO)"),
            (("--lmtp", "--disabled-commands", "lhlo"), "turns off LHLO, without which"),
            (("--disabled-commands", "MAIL"), "turns off MAIL, without which"),
            (("--disabled-commands", "RCPT"), "turns off RCPT, without which"),
            (("--disabled-commands", "DATA,BDAT"), "turns off DATA and BDAT, without which"),
        ):
            self.assertIn(
                f"--disabled-commands {words}", builtRefusal(self, *args, "--deliver", "discard")
            )
        for disabled in ("HELO", "EHLO", "DATA", "BDAT", "VRFY,EXPN,HELP"):
            tap.buildServer(parse("--disabled-commands", disabled, "--deliver", "discard"))

    def test_commandLength(self) -> None:
        """
        RFC 5321 section 4.5.3.1.4: a server takes command lines of 512 octets with their
        CRLF, so --max-command-length is at least 510 (from the file too).
        """
        self.assertIn(
            "--max-command-length must be at least 510, not 4: RFC 5321 section 4.5.3.1.4",
            builtRefusal(self, "--max-command-length", "4", "--deliver", "discard"),
        )
        tap.buildServer(parse("--max-command-length", "510", "--deliver", "discard"))
        path = writeConfig(self, 'maxCommandLength = 509\ndeliver = "discard"\n')
        self.assertIn(
            f"{path}: maxCommandLength must be at least 510, not 509",
            builtRefusal(self, "--config", path),
        )

    def test_authNobodyCanUse(self) -> None:
        """
        --auth where nobody could log in stops the command, as --auth anonymous does:
        AUTH in --disabled-commands (MAIL would be taken without it), an empty
        --auth-methods, or a mechanism the sources cannot check (XOAUTH2 with passwords
        only, CRAM-MD5 with a file of hashes); from the file, named by its keys.
        """
        auth = ("--auth", "memory:a:b", "--deliver", "discard")
        for extra, words in (
            (("--disabled-commands", "AUTH"), "--auth with AUTH in --disabled-commands"),
            (("--disabled-commands", "vrfy,auth"), "--auth with AUTH in --disabled-commands"),
            (("--disabled-commands", "AUTH", "--auth-optional"), "AUTH is never offered"),
            (("--auth-methods", ""), "--auth with an empty --auth-methods"),
            (
                ("--auth-methods", "XOAUTH2"),
                "--auth-methods offers XOAUTH2, which the --auth sources cannot all check "
                "(they can: PLAIN, LOGIN, CRAM-MD5): a login with it would always fail",
            ),
            (("--auth-methods", "PLAIN,OAUTHBEARER"), "offers OAUTHBEARER, which"),
        ):
            self.assertIn(words, builtRefusal(self, *auth, *extra), extra)
        hashes = self.mktemp()
        setPassword(hashes, "bob", "hunter2")
        self.assertIn(
            "--auth-methods offers CRAM-MD5, which the --auth sources cannot all check "
            "(they can: PLAIN, LOGIN)",
            builtRefusal(self, *auth, "--auth", f"scrypt:{hashes}", "--auth-methods", "CRAM-MD5"),
        )
        path = writeConfig(self, 'auth = ["memory:a:b"]\nauthMethods = []\ndeliver = "discard"\n')
        self.assertIn(
            f"{path}: auth with an empty {path}: authMethods", builtRefusal(self, "--config", path)
        )
        # What the sources can check is fine, a part of it too.
        for methods in ("PLAIN", "CRAM-MD5,LOGIN"):
            tap.buildServer(parse(*auth, "--auth-methods", methods), reactor=Clock())

    def test_unauthenticatedLimit(self) -> None:
        """
        With AUTH required, --max-allowed-unauthenticated-commands must leave a client
        room to authenticate: the command that reaches the limit is refused, and EHLO
        counts, as do STARTTLS and the second EHLO where AUTH waits for TLS, and the
        SASL responses of a mechanism without an initial response.  At the least it
        needs, a client does log in.
        """
        auth = ("--auth", "memory:alice:secret", "--deliver", "discard")
        insecure = (*auth, "--allow-insecure-auth")
        flag = "--max-allowed-unauthenticated-commands"
        for args, least in (
            (insecure, 2),
            (auth, 4),
            ((*auth, "--needs-upgrade"), 4),
            ((*insecure, "--auth-methods", "LOGIN,CRAM-MD5"), 3),
            ((*auth, "--auth-methods", "LOGIN,CRAM-MD5"), 5),
        ):
            self.assertIn(
                f"{flag} must be at least {least} while AUTH is required, not {least - 1}",
                builtRefusal(self, *args, flag, str(least - 1)),
            )
            tap.buildServer(parse(*args, flag, str(least)))
        # Where AUTH is not required, the limit does not count.
        tap.buildServer(parse("--deliver", "discard", flag, "0"))
        tap.buildServer(parse(*auth, "--auth-optional", flag, "1"))
        plain = base64.b64encode(b"\0alice\0secret").decode()
        login = [base64.b64encode(t).decode() for t in (b"alice", b"secret")]
        logins: list[tuple[tuple[str, ...], list[str]]] = [
            ((*insecure, flag, "2"), ["EHLO x", f"AUTH PLAIN {plain}"]),
            (
                (*insecure, "--auth-methods", "LOGIN", flag, "3"),
                ["EHLO x", f"AUTH LOGIN {login[0]}", login[1]],
            ),
        ]
        for loginArgs, steps in logins:
            client = MemoryClient(tap.buildServer(parse(*loginArgs), reactor=Clock()))
            replies = [reply for step in steps for reply in client.send(step)]
            self.assertEqual(replies[-1].code, 235, replies)

    def test_needsUpgradeWithoutStarttls(self) -> None:
        """
        --needs-upgrade with STARTTLS turned off leaves the clients of a listener without
        implicit TLS no way to send anything; with implicit TLS on every listener it
        works.
        """
        args = ("--needs-upgrade", "--disabled-commands", "STARTTLS", "--deliver", "discard")
        self.assertIn(
            "--needs-upgrade with STARTTLS in --disabled-commands: clients of --listen "
            "tcp:2525:interface=127.0.0.1 must start TLS before anything else",
            builtRefusal(self, *args),
        )
        tap.buildServer(parse(*args, "--secure"))
        tap.buildServer(parse(*args, "--listen-tls", "tcp:465"))

    def test_requestCertNeedsCA(self) -> None:
        """
        --request-cert without --ca would fail every handshake, none of the clients'
        certificates verifying; with --ca, or --no-reject-unauthorized, it works.
        """
        self.assertIn(
            "--request-cert needs --ca, the CAs client certificates must chain to",
            builtRefusal(self, "--request-cert", "--deliver", "discard"),
        )
        tap.buildServer(parse("--request-cert", "--no-reject-unauthorized", "--deliver", "discard"))
        ca = self.mktemp()
        with open(ca, "wb") as f:
            f.write(authority().cert)
        tap.buildServer(parse("--request-cert", "--ca", ca, "--deliver", "discard"))

    def test_domains(self) -> None:
        """
        A --domain that no address can have is refused: the --sni wildcard form, a name
        with a space, an address; names, .names and address literals are taken.
        """
        for domain, words in (
            ("*.example.com", "is not a domain: write .example.com for the subdomains of"),
            ("bad domain", "is not a host name (labels of letters, digits, hyphens and"),
            ("@example.com", "is not a host name"),
            ("[example.com]", "is not a domain: not an address literal"),
            ("[2001:db8::2]", "is not a domain: not an address literal"),
            # What ipaddress takes and RFC 5321's grammar does not (IPv6 QA: no
            # recipient could ever have them).
            ("[IPv6:fe80::1%eth0]", "is not a domain: not an address literal"),
            ("[IPv6:1:2:3:4:5:6::8]", "is not a domain: not an address literal"),
        ):
            self.assertIn(
                f"twist smtpsvc: --domain: {domain!r} {words}",
                builtRefusal(self, "--domain", domain, "--deliver", "discard"),
            )
        policy = RelayPolicy(
            [
                "Example.org",
                ".example.net",
                "[192.0.2.1]",
                "b\u00fccher.example",
                "[IPv6:2001:db8:0:0::1]",
            ]
        )
        self.assertEqual(
            (policy.domains, policy.suffixes),
            (
                {"example.org", "[192.0.2.1]", "xn--bcher-kva.example", "[ipv6:2001:db8::1]"},
                (".example.net",),
            ),
        )
        # An address literal is ours however its address is written.
        for address in ("u@[IPv6:2001:DB8::1]", "u@[ipv6:2001:db8:0::1]", "u@[192.0.2.1]"):
            self.assertTrue(policy.isLocal(address), address)
        self.assertFalse(policy.isLocal("u@[IPv6:2001:db8::2]"))
        # An IPv4-mapped literal matches in its dotted or its hexadecimal form.
        mapped = RelayPolicy(["[IPv6:::ffff:192.0.2.1]"])
        self.assertEqual(mapped.domains, {"[ipv6:::ffff:192.0.2.1]"})
        self.assertTrue(mapped.isLocal("u@[IPv6:::ffff:c000:201]"))
        # Underscores are in real host names.
        RelayPolicy(["mail_1.example.com"])
        path = writeConfig(self, 'domain = "*.example.org"\ndeliver = "discard"\n')
        self.assertIn(f"{path}: domain: '*.example.org'", builtRefusal(self, "--config", path))

    def test_sniNames(self) -> None:
        """
        An --sni name that no client could send is refused, from the command line, the
        file and the names of --sni-dir's files.
        """
        for spec, words in (
            ("bad host!=c.pem", "'bad host!' is not a host name"),
            ("*.*.example.com=c.pem", "'*.*.example.com' is not a host name"),
            ("*.com=c.pem", "'*.com' is not a host name pattern"),
        ):
            self.assertIn(f"--sni: {words}", refusal(self, "--sni", spec))
        path = writeConfig(self, '[sni."bad host!"]\ncert = "c.pem"\n')
        self.assertIn(f"{path}: sni: 'bad host!' is not a host name", refusal(self, "-c", path))
        directory = self.mktemp()
        os.makedirs(directory)
        open(os.path.join(directory, "bad host!.pem"), "wb").close()
        self.assertIn(
            f"--sni-dir: {os.path.join(directory, 'bad host!.pem')}: 'bad host!' is not a host",
            refusal(self, "--sni-dir", directory),
        )

    def test_auth(self) -> None:
        """
        An --auth source nobody could log in with (a password file that cannot be read,
        memory without users, a checker of neither passwords nor tokens) is refused, from
        the command line and from the file alike, and so is one cred cannot make; each is one
        line with status 1, as from the file, not usage text.
        """
        missing = os.path.abspath(self.mktemp())
        for description, words in (
            (f"file:{missing}", f"cannot read {missing}: No such file or directory"),
            (f"scrypt:{missing}", f"cannot read {missing}: No such file or directory"),
            ("file:", "expected file:FILE, a password file"),
            (
                "memory",
                "no users, so nobody could log in; expected "
                "memory:USER:PASSWORD[:USER:PASSWORD...]",
            ),
            ("memory:alice", "argstring must be in format U:P:..."),
            ("bogus", "unknown source 'bogus' (twist smtpsvc --help-auth lists them)"),
            ("anonymous", "its checker verifies neither passwords nor bearer tokens"),
        ):
            self.assertEqual(
                refusal(self, "--auth", description),
                f"twist smtpsvc: --auth {description}: {words}",
            )
        for description, words in (("memory", "no users"), ("anonymous", "its checker")):
            path = writeConfig(self, f'auth = "{description}"\ndeliver = "discard"\n')
            self.assertIn(
                f"{path}: auth {description}: {words}", builtRefusal(self, "--config", path)
            )


class MaildirMinFreeTests(SynchronousTestCase):
    """
    --maildir-min-free BYTES: the free space every maildir: delivery keeps in reserve.
    """

    def test_default(self) -> None:
        """
        Without the flag each Maildir delivery keeps the library's default reserve.
        """
        options = parse("--deliver", f"maildir:{self.mktemp()}")
        self.assertEqual(options.config.maildirMinFree, DEFAULT_MIN_FREE)
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(minFrees(server), [DEFAULT_MIN_FREE])

    def test_everyMaildir(self) -> None:
        """
        The reserve given goes to every maildir: delivery the service builds; 0 is
        allowed, and spaces around the number do not matter.
        """
        for text, expected in (("1048576", 1048576), ("0", 0), (" 42 ", 42)):
            options = parse(
                "--maildir-min-free",
                text,
                "--deliver",
                f"maildir:{self.mktemp()}",
                "--deliver",
                f"maildir:{self.mktemp()}",
            )
            server = tap.buildServer(options, reactor=Clock())
            self.assertEqual(minFrees(server), [expected, expected], text)

    def test_badValues(self) -> None:
        """
        Anything but a whole number of bytes, 0 or more, stops the command with one line
        naming the flag.  Like --size, it takes no K, M or G suffix.
        """
        for text, words in (
            ("lots", "--maildir-min-free must be a whole number of bytes, not 'lots'"),
            ("16M", "--maildir-min-free must be a whole number of bytes, not '16M'"),
            ("1.5", "--maildir-min-free must be a whole number of bytes, not '1.5'"),
            ("", "--maildir-min-free must be a whole number of bytes, not ''"),
            ("-1", "--maildir-min-free must be 0 or more bytes, not '-1'"),
        ):
            self.assertEqual(refusal(self, "--maildir-min-free", text), f"twist smtpsvc: {words}")
        with self.assertRaises(ConfigurationError):
            parse("--size", "16M")

    def test_refusesAtMailFrom(self) -> None:
        """
        The built server answers MAIL FROM with 452 4.3.1 when the Maildir's file system
        has less free than the reserve given (no file system has 4 EiB free).
        """
        server = tap.buildServer(
            parse(
                "--maildir-min-free",
                str(2**62),
                "--deliver",
                f"maildir:{self.mktemp()}",
                "--no-hide-enhancedstatuscodes",
            ),
            reactor=Clock(),
        )
        client = MemoryClient(server)
        client.send("EHLO x")
        [reply] = client.send("MAIL FROM:<a@b.example>")
        self.assertEqual(reply.code, 452)
        self.assertIn("4.3.1", reply.text)

    def test_help(self) -> None:
        """
        twist smtpsvc --help lists the flag with what it does and its default.
        """
        usage = str(tap.Options())
        self.assertIn("--maildir-min-free=", usage)
        docs = tap.Options().docs["maildir-min-free"]
        self.assertIn("maildir: delivery keeps in reserve", docs)
        self.assertIn(f"[default: {DEFAULT_MIN_FREE}]", docs)


class ConfigFileTests(SynchronousTestCase):
    """
    --config FILE: the same options in TOML; flags win.
    """

    def write(self, text: str) -> str:
        return writeConfig(self, text)

    def assertFileRefused(self, text: str, words: str, *args: str) -> None:
        """
        A configuration file holding C{text} (with C{args} on the command line) stops
        the command with C{words}, after the file's name.
        """
        path = self.write(text)
        with self.assertRaises(ConfigurationError, msg=text) as caught:
            parse("--config", path, *args)
        self.assertEqual(str(caught.exception), f"twist smtpsvc: {path}: {words}", text)

    def test_options(self) -> None:
        """
        Options are read by their names; flags override them.
        """
        path = self.write(
            'name = "mx.example"\nmaxClients = 100\nhideDSN = false\n'
            'listen = ["tcp:25"]\ndeliver = ["maildir:mail"]\ndomain = ["example.org"]\n'
            'useProxy = ["10.0.0.0/8"]\n'
        )
        options = parse("--config", path, "--max-clients", "7")
        config = options.config
        self.assertEqual(
            (config.serverOptions["name"], config.serverOptions["maxClients"]),
            ("mx.example", 7),
        )
        self.assertFalse(config.serverOptions["hideDSN"])
        self.assertEqual(config.serverOptions["useProxy"], ("10.0.0.0/8",))
        self.assertEqual(config.listen, ["tcp:25"])
        self.assertEqual(config.domains, ["example.org"])
        # Relative paths are relative to the file.
        expected = os.path.join(os.path.dirname(os.path.abspath(path)), "mail")
        self.assertEqual(config.deliver, [f"maildir:{expected}"])

    def test_maildirMinFree(self) -> None:
        """
        maildirMinFree in the file sets the reserve of every maildir: delivery, as a
        number or a string of one; --maildir-min-free wins over it.
        """
        for text in ("maildirMinFree = 1000\n", 'maildirMinFree = "1000"\n'):
            path = self.write(text + 'deliver = ["maildir:a", "maildir:b"]\n')
            options = parse("--config", path)
            self.assertEqual(options.config.maildirMinFree, 1000)
            server = tap.buildServer(options, reactor=Clock())
            self.assertEqual(minFrees(server), [1000, 1000])
            options = parse("--config", path, "--maildir-min-free", "0")
            self.assertEqual(minFrees(tap.buildServer(options, reactor=Clock())), [0, 0])

    def test_badMaildirMinFree(self) -> None:
        """
        A bad maildirMinFree names the file and the key, on one line.
        """
        for value, words in (
            ("-5", "maildirMinFree must be 0 or more bytes, not -5"),
            ("1.5", "maildirMinFree must be a whole number of bytes, not 1.5"),
            ("true", "maildirMinFree must be a whole number of bytes, not True"),
            ('"16M"', "maildirMinFree must be a whole number of bytes, not '16M'"),
        ):
            self.assertFileRefused(f"maildirMinFree = {value}\n", words)

    def test_singleStringsRelative(self) -> None:
        """
        A repeatable key given one string instead of a list is read as a list of it,
        relative paths included: they are relative to the file, as in a list.
        """
        path = self.write('deliver = "maildir:strmd"\nauth = "scrypt:passwd"\n')
        base = os.path.dirname(os.path.abspath(path))
        config = parse("--config", path).config
        self.assertEqual(config.deliver, [f"maildir:{os.path.join(base, 'strmd')}"])
        self.assertEqual(config.auth, [f"scrypt:{os.path.join(base, 'passwd')}"])

    def test_repeatableKeysAreStrings(self) -> None:
        """
        The values of the repeatable keys are strings (for port, whole numbers too): a
        list of numbers for domain is not converted to the domains "1" and "2".
        """
        for text, words in (
            ("domain = [1, 2]\n", "domain must be a string or a list of strings, not [1, 2]"),
            ("listen = [true]\n", "listen must be a string or a list of strings, not [True]"),
            ("deliver = 5\n", "deliver must be a string or a list of strings, not 5"),
            ("auth = [{a = 1}]\n", "auth must be a string or a list of strings, not [{'a': 1}]"),
            ("port = [25.5]\n", "port must be a port number or a list of them, not [25.5]"),
            ("port = true\n", "port must be a port number or a list of them, not True"),
        ):
            self.assertFileRefused(text, words)
        path = self.write('port = [25, "587"]\n')
        self.assertEqual(parse("--config", path).config.listen, ["tcp:25", "tcp:587"])

    def test_pathsAreStrings(self) -> None:
        """
        cert, key, ca and sniDir must be file names: cert = 5 would read file descriptor
        5.
        """
        for key in ("cert", "key", "ca", "sniDir"):
            for value, shown in (("5", "5"), ("true", "True"), ('""', "''"), ('["a"]', "['a']")):
                self.assertFileRefused(
                    f"{key} = {value}\n", f"{key} must be a file name (a string), not {shown}"
                )

    def test_workers(self) -> None:
        """
        workers is a whole number, 1 or more: 2.5 is not cut down to 2, nor true taken
        for 1; --workers wins over it.
        """
        for value, words in (
            ("2.5", "workers must be a whole number, not 2.5"),
            ('"2.5"', "workers must be a whole number, not '2.5'"),
            ("true", "workers must be a whole number, not True"),
            ("0", "workers must be at least 1, not 0"),
        ):
            self.assertFileRefused(f"workers = {value}\n", words)
        path = self.write("workers = 3\n")
        self.assertEqual(parse("--config", path).config.workers, 3)
        self.assertEqual(parse("--config", path, "--workers", "2").config.workers, 2)

    def test_emptyName(self) -> None:
        """
        An empty --config (as from an unset variable) is refused instead of ignored,
        which started a default server.
        """
        self.assertEqual(
            refusal(self, "--config", ""),
            "twist smtpsvc: --config needs a file name, and it was given an empty one",
        )

    def test_listsReplaced(self) -> None:
        """
        A list flag on the command line replaces the file's list.
        """
        path = self.write('listen = ["tcp:25"]\n')
        self.assertEqual(
            parse("--config", path, "--listen", "tcp:2525").config.listen, ["tcp:2525"]
        )

    def test_authReplaced(self) -> None:
        """
        --auth on the command line replaces the file's auth list too: only the command
        line's users can log in.
        """
        path = self.write('auth = ["memory:bob:bobs"]\ndeliver = ["discard"]\n')
        for args, users in (((), {"bob"}), (("--auth", "memory:alice:secret"), {"alice"})):
            options = parse("--config", path, "--allow-insecure-auth", *args)
            self.assertEqual(options.config.auth, list(args[1:]) or ["memory:bob:bobs"], args)
            server = tap.buildServer(options, reactor=Clock())
            for user, password in (("alice", "secret"), ("bob", "bobs")):
                client = MemoryClient(server)
                client.send("EHLO x")
                replies = client.send("AUTH PLAIN " + plainResponse(user, password))
                # A refusal waits for the failure delay.
                server.reactor.advance(10)
                [reply] = replies + client.received()
                self.assertEqual(reply.code == 235, user in users, (args, user))

    def test_sniMerged(self) -> None:
        """
        sni is a table: --sni replaces the file's entry for its host, and leaves the
        others; each certificate served is the one its source named.
        """
        path = self.write('[sni."a.example"]\ncert = "a.pem"\n[sni."b.example"]\ncert = "b.pem"\n')
        pairs = {}
        for name in ("a", "b", "c"):
            pairs[name] = issue(f"{name}.example")
            with open(os.path.join(os.path.dirname(path), f"{name}.pem"), "wb") as f:
                f.write(pairs[name].cert + pairs[name].key)
        cPath = os.path.join(os.path.dirname(path), "c.pem")
        options = parse("--config", path, "--sni", f"b.example={cPath}", "--deliver", "discard")
        sni: Any = options.serverOptions()["sniOptions"]
        self.assertEqual(sorted(sni), ["a.example", "b.example"])
        self.assertEqual(sni["a.example"]["cert"], pairs["a"].cert + pairs["a"].key)
        self.assertEqual(sni["b.example"]["cert"], pairs["c"].cert + pairs["c"].key)

    def test_portReplacesListen(self) -> None:
        """
        --port N is --listen tcp:N: either on the command line replaces the file's listen
        and port lists, and leaves its listenTLS.
        """
        path = self.write('listen = ["tcp:25"]\nport = [587]\nlistenTLS = ["tcp:465"]\n')
        self.assertEqual(parse("--config", path).config.listen, ["tcp:25", "tcp:587"])
        for args, listen in (
            (("--port", "2526"), ["tcp:2526"]),
            (("--listen", "tcp:2527"), ["tcp:2527"]),
            (("--listen", "tcp:2527", "--port", "2526"), ["tcp:2527", "tcp:2526"]),
        ):
            config = parse("--config", path, *args).config
            self.assertEqual((config.listen, config.listenTLS), (listen, ["tcp:465"]), args)
        self.assertFileRefused('port = "smtp"\n', "port must be a port number, not 'smtp'")

    def test_unknownOption(self) -> None:
        """
        An unknown key is one clear error.
        """
        path = self.write("maxclients = 3\n")
        with self.assertRaises(ConfigurationError) as caught:
            parse("--config", path)
        self.assertIn("unknown option 'maxclients'", str(caught.exception))

    def test_badValue(self) -> None:
        """
        A bad value names the file and the option.
        """
        path = self.write('socketTimeout = "soon"\n')
        with self.assertRaises(ConfigurationError) as caught:
            parse("--config", path)
        self.assertIn("socketTimeout must be a number", str(caught.exception))

    def test_nonFiniteNumbers(self) -> None:
        """
        TOML's nan and inf, and strings of them, are refused with the file and the key.
        """
        for text in ("socketTimeout = nan", "closeTimeout = inf", 'proxyTimeout = "-inf"'):
            path = self.write(text + "\n")
            with self.assertRaises(ConfigurationError) as caught:
                parse("--config", path)
            key = text.split()[0]
            self.assertIn(f"{path}: {key} must be a finite number, not ", str(caught.exception))

    def test_wrongTypes(self) -> None:
        """
        A value of the wrong type names the file and the key, and says what it must be
        in words rather than the declaration's Python types.
        """
        for text, words in (
            ("size = 1.5", "size must be a whole number, not 1.5"),
            ("size = true", "size must be a whole number, not True"),
            ("maxClients = 2.5", "maxClients must be a whole number, or none to unset it, not 2.5"),
            ("socketTimeout = true", "socketTimeout must be a number, not True"),
            ('lmtp = "yes"', "lmtp must be true or false, not 'yes'"),
            ("hideENHANCEDSTATUSCODES = 1", "hideENHANCEDSTATUSCODES must be true or false, not 1"),
            ("name = 5", "name must be a string, not 5"),
            ("ciphers = [1]", "ciphers must be a string, not [1]"),
            ("disabledCommands = [1]", "disabledCommands must be a list of strings, not [1]"),
            ("useProxy = 5", "useProxy must be true or false, or a list of strings, not 5"),
            ("bareLineEndings = 5", "bareLineEndings must be a string, not 5"),
        ):
            self.assertFileRefused(text + "\n", words)

    def test_entryErrorsNameTheFile(self) -> None:
        """
        An error about an entry of the file's listen, listenTLS, port or deliver names
        the file, its key and the entry, not the flag that could also have given it;
        the same entry from the command line is named by its flag.
        """
        missing = os.path.abspath(self.mktemp())
        socket = f"unix:{missing}/smtp.sock"

        def build(*args: str) -> None:
            tap.buildServer(parse(*args), reactor=Clock())

        def serve(*args: str) -> None:
            tap.makeService(parse(*args))

        for text, make, entry, words in (
            ('listen = ["tcp:notaport"]', parse, "listen tcp:notaport", "'notaport' is not"),
            ('listenTLS = ["bogus"]', parse, "listenTLS bogus", "Unknown endpoint type"),
            (f'listen = ["{socket}"]', serve, f"listen {socket}", f"no directory {missing}"),
            (
                'deliver = ["python:no.such.module:thing"]',
                build,
                "deliver python:no.such.module:thing",
                "cannot import no.such.module",
            ),
            (
                'deliver = ["smtp:tcp:host=mx.example:port=lots"]\ndomain = ["example.com"]',
                build,
                "deliver smtp:tcp:host=mx.example:port=lots",
                "'lots' is not a whole number",
            ),
            (
                'port = ["2525"]\nneedsUpgrade = true\ndisabledCommands = ["STARTTLS"]',
                build,
                "port tcp:2525",
                "must start TLS",
            ),
            (
                "deliver = ['smtp:tcp:host=127.0.0.1:port=1']",
                build,
                "deliver smtp:tcp:host=127.0.0.1:port=1",
                ": forwards mail onwards: give domain (the domains this server receives "
                "mail for) or require auth, or it would be an open relay",
            ),
        ):
            path = self.write(text + "\n")
            args = ["--config", path] + ([] if "deliver" in text else ["--deliver", "discard"])
            with self.assertRaises(ConfigurationError, msg=text) as caught:
                make(*args)
            message = str(caught.exception)
            self.assertIn(f"{path}: {entry}", message)
            self.assertIn(words, message)
        with self.assertRaises(ConfigurationError) as caught:
            build("--deliver", "python:no.such.module:thing")
        self.assertTrue(
            str(caught.exception).startswith(
                "twist smtpsvc: --deliver python:no.such.module:thing: cannot import"
            )
        )

    def test_overriddenValuesChecked(self) -> None:
        """
        A value of the file that a flag overrides is checked all the same, and its
        error names the file and the key: the file is wrong, whatever wins today.
        """
        for text, args, words in (
            ('port = [2525, "x"]', ("--listen", "tcp:2525"), "port must be a port number, not 'x'"),
            ("port = [70000]", ("--port", "25"), "port must be a port number, not '70000'"),
            (
                'maxClients = "lots"',
                ("--max-clients", "5"),
                "maxClients must be a whole number, or none to unset it, not 'lots'",
            ),
            ("workers = 0", ("--workers", "2"), "workers must be at least 1, not 0"),
            (
                'maildirMinFree = "x"',
                ("--maildir-min-free", "0"),
                "maildirMinFree must be a whole number of bytes, not 'x'",
            ),
            (
                'deliver = ["mbox:x"]',
                ("--deliver", "discard"),
                "deliver: expected maildir:DIR, smtp:ENDPOINT, lmtp:ENDPOINT, "
                "python:MODULE:NAME or discard, not 'mbox:x'",
            ),
        ):
            self.assertFileRefused(text + "\n", words, *args)
        # Values that are fine are overridden as before.
        path = self.write('port = [2526]\nmaxClients = 7\ndeliver = ["discard"]\n')
        options = parse("--config", path, "--listen", "tcp:2525", "--max-clients", "5")
        self.assertEqual(options.config.listen, ["tcp:2525"])
        self.assertEqual(options.config.serverOptions["maxClients"], 5)

    def test_crossOptionErrorsNameTheFile(self) -> None:
        """
        An error about options taken together names the file's keys for those it gave.
        """
        self.assertFileRefused(
            'minVersion = "TLSv1.3"\nlmtp = true\nhidePIPELINING = true\n',
            "minVersion TLSv1.3 is newer than --max-version TLSv1.2, which leaves no TLS "
            "version to use",
            "--max-version",
            "TLSv1.2",
        )

    def test_unsetLimit(self) -> None:
        """
        TOML has no null: a limit is unset with the string "none" or "off", and a flag
        unsets one the file sets.
        """
        path = self.write(
            'maxRecipients = "none"\nmaxClients = "Off"\nmaxAuthFailures = 5\n'
            'maxReceivedHeaders = 50\ndeliver = ["discard"]\n'
        )
        options = parse("--config", path, "--max-received-headers", "none")
        self.assertEqual(
            chosen(options),
            {
                "maxRecipients": None,
                "maxClients": None,
                "maxAuthFailures": 5,
                "maxReceivedHeaders": None,
            },
        )
        server = tap.buildServer(options, reactor=Clock())
        self.assertIsNone(server.options.maxRecipients)
        self.assertEqual(
            chosen(parse("--config", path, "--max-recipients", "200"))["maxRecipients"], 200
        )

    def test_unsetOnlyWhereItCan(self) -> None:
        """
        In the file too, "none" is refused by options that cannot be unset.
        """
        for text, words in (
            ('lmtp = "none"\n', "lmtp must be true or false, not 'none'"),
            ('maxCommandLength = "none"\n', "maxCommandLength must be a whole number, not"),
            ('maxRecipients = "never"\n', "maxRecipients must be a whole number, or none"),
        ):
            with self.assertRaises(ConfigurationError) as caught:
                parse("--config", self.write(text))
            self.assertIn(words, str(caught.exception))

    def test_malformed(self) -> None:
        """
        A file that is not TOML is one clear error.
        """
        path = self.write("this is = = not toml\n")
        with self.assertRaises(ConfigurationError) as caught:
            parse("--config", path)
        self.assertIn(path, str(caught.exception))

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is one clear error naming it.
        """
        path = self.write("")
        with open(path, "wb") as f:
            f.write(b'name = "mx.example"\nbanner = "\xff"\n')
        with self.assertRaises(ConfigurationError) as caught:
            parse("--config", path)
        self.assertEqual(
            str(caught.exception),
            f"twist smtpsvc: {path}: not UTF-8 text, as TOML must be (byte 30 is 0xff)",
        )

    def test_sniOfTheWrongType(self) -> None:
        """
        sni must be a table of host names, each a file name or a table of cert and key.
        """
        for text, words in (
            ('sni = "x"\n', "sni must be a table of host names"),
            ('sni = ["a.example=cert.pem"]\n', "sni must be a table of host names"),
            ('[sni]\n"a.example" = 5\n', "sni.a.example must be"),
            ('[sni."a.example"]\ncert = 5\n', "sni.a.example must be"),
            ('[sni."a.example"]\ncert = "a.pem"\nkey = ["a.key"]\n', "sni.a.example must be"),
            ('[sni."a.example"]\ncert = "a.pem"\nchain = "c.pem"\n', "sni.a.example must be"),
            ('[sni."a.example"]\nkey = "a.key"\n', "sni.a.example needs a cert"),
        ):
            path = self.write(text)
            with self.assertRaises(ConfigurationError, msg=text) as caught:
                parse("--config", path)
            self.assertIn(f"{path}: {words}", str(caught.exception))

    def test_missing(self) -> None:
        """
        A missing file is one clear error.
        """
        with self.assertRaises(ConfigurationError) as caught:
            parse("--config", "no-such.toml")
        self.assertIn("--config: cannot read no-such.toml", str(caught.exception))

    def test_certificatesAndAuth(self) -> None:
        """
        cert, sni and auth come from the file too, relative to it.
        """
        mx = issue("mx.example.test")
        b = issue("b.example.test")
        path = self.write(
            'cert = "mx.pem"\nauth = ["memory:alice:secret"]\ndeliver = ["discard"]\n'
            '[sni."b.example.test"]\ncert = "b.pem"\n'
        )
        directory = os.path.dirname(path)
        with open(os.path.join(directory, "mx.pem"), "wb") as f:
            f.write(mx.cert + mx.key)
        with open(os.path.join(directory, "b.pem"), "wb") as f:
            f.write(b.cert + b.key)
        options = parse("--config", path, "--allow-insecure-auth")
        server = tap.buildServer(options, reactor=Clock())
        self.assertEqual(server.options.cert, mx.cert + mx.key)
        self.assertIn("b.example.test", server.options.sniOptions)
        self.assertIn("AUTH PLAIN LOGIN CRAM-MD5", MemoryClient(server).send("EHLO x")[0].lines)


class CertificateErrorTests(SynchronousTestCase):
    """
    A certificate, key or TLS option that cannot be used is one line naming the flag (or
    the file's key) and the file at fault.
    """

    def pems(self) -> dict[str, str]:
        """
        Files holding a certificate, its key, both, another key, and garbage.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        mx, other = issue("mx.example.test"), issue("other.example.test")
        files = {
            "cert": mx.cert,
            "key": mx.key,
            "both": mx.cert + mx.key,
            "other.key": other.key,
            "garbage": b"garbage\n",
        }
        paths = {}
        for name, data in files.items():
            paths[name] = os.path.join(directory, name + ".pem")
            with open(paths[name], "wb") as f:
                f.write(data)
        return paths

    def test_files(self) -> None:
        """
        Each file is read and checked as it is named: a certificate file that is not one,
        a certificate without its key (and no --key), a key file that is not one, a key
        that is another certificate's, CA certificates that are not, SNI files too.
        """
        p = self.pems()
        for args, words in (
            (("--cert", p["garbage"]), f"--cert: {p['garbage']}: cannot read the certificate"),
            (
                ("--cert", p["cert"]),
                f"--cert: {p['cert']}: cannot read the private key: ",
            ),
            (("--cert", p["cert"], "--key", p["garbage"]), f"--key: {p['garbage']}: cannot read"),
            (
                ("--cert", p["cert"], "--key", p["other.key"]),
                f"--key: {p['other.key']}: the private key does not match the certificate in "
                f"{p['cert']}",
            ),
            (("--ca", p["garbage"]), f"--ca: {p['garbage']}: cannot read the CA certificate"),
            (
                ("--sni", f"b.example.test={p['cert']},{p['other.key']}"),
                f"--sni b.example.test: {p['other.key']}: the private key does not match",
            ),
            (
                ("--sni", f"b.example.test={p['garbage']}"),
                f"--sni b.example.test: {p['garbage']}: cannot read the certificate",
            ),
        ):
            self.assertIn(words, refusal(self, *args), args)
        self.assertIn(
            "(with no key file given, it must be in this one)", refusal(self, "--cert", p["cert"])
        )
        path = writeConfig(self, f'cert = "{p["cert"]}"\nkey = "{p["other.key"]}"\n')
        self.assertIn(f"{path}: key: {p['other.key']}: the private key", refusal(self, "-c", path))
        path = writeConfig(self, f'[sni."b.example.test"]\ncert = "{p["garbage"]}"\n')
        self.assertIn(
            f"{path}: sni.b.example.test: {p['garbage']}: cannot read", refusal(self, "-c", path)
        )
        parse("--cert", p["both"])
        parse("--cert", p["cert"], "--key", p["key"], "--sni", f"b.example.test={p['both']}")

    def test_ciphers(self) -> None:
        """
        A cipher list OpenSSL can use nothing of names the flag (or the file's key).
        """
        self.assertIn(
            "--ciphers 'BOGUS' names no cipher OpenSSL can use", refusal(self, "--ciphers", "BOGUS")
        )
        path = writeConfig(self, 'ciphers = "BOGUS"\n')
        self.assertIn(
            f"{path}: ciphers 'BOGUS' names no cipher OpenSSL can use", refusal(self, "-c", path)
        )

    def test_ciphersUnusableWithTheCertificate(self) -> None:
        """
        So does a cipher list that leaves no suite for the certificate's key (here the
        development certificate's ECDSA key) at the versions allowed: every handshake
        would fail.
        """
        unusable = "twist smtpsvc: --ciphers 'ECDHE-RSA-AES128-GCM-SHA256' leaves no cipher "
        self.assertIn(
            unusable + "suite for the certificate, whose key is ECDSA, at TLSv1.2 (no shared "
            "cipher): every handshake would fail",
            refusal(self, "--max-version", "TLSv1.2", "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"),
        )
        parse("--max-version", "TLSv1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256")


class ListenBacklogTests(SynchronousTestCase):
    """
    L{withListenBacklog} adds a backlog to the endpoint strings that take one.
    """

    def test_added(self) -> None:
        """
        TCP, TLS and Unix socket endpoints without a backlog get one.
        """
        for description in ("tcp:25", "tcp6:25:interface=\\:\\:", "ssl:465", "unix:/run/x"):
            self.assertEqual(withListenBacklog(description), description + ":backlog=511")

    def test_kept(self) -> None:
        """
        A backlog given is kept, and other endpoint types are left alone.
        """
        for description in (
            "tcp:25:backlog=5",
            "tcp:backlog=5:port=25",
            "systemd:domain=INET:index=0",
            "tcp",
            "tcp:",
        ):
            self.assertEqual(withListenBacklog(description), description)


class ServiceTests(TestCase):
    """
    The service listens when started and closes the server when stopped.
    """

    def test_startAndStop(self) -> Deferred[None]:
        """
        Starting listens on each endpoint; stopping closes the server.
        """
        service = buildService(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen-tls",
            "tcp:0:interface=127.0.0.1",
            "--deliver",
            "discard",
            "--disable-reverse-lookup",
        )
        service.startService()
        self.assertEqual(len(service.ports), 2)
        stopped: Deferred[None] = service.stopService()
        return stopped.addCallback(lambda _: self.assertTrue(service.server.closing))

    def test_listenBacklog(self) -> Deferred[None]:
        """
        A TCP listener gets a backlog of 511 unless its endpoint string sets one.
        """
        service = buildService(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            "tcp:0:interface=127.0.0.1:backlog=7",
            "--deliver",
            "discard",
        )
        service.startService()
        self.assertEqual([cast(Any, port).backlog for port in service.ports], [511, 7])
        return service.stopService()

    def test_portInUse(self) -> Deferred[None]:
        """
        A port already in use stops the service with one clear line.
        """
        first = buildService("--listen", "tcp:0:interface=127.0.0.1", "--deliver", "discard")
        first.startService()
        port = first.ports[0].getHost().port  # type: ignore[attr-defined]
        second = tap.makeService(
            parse("--listen", f"tcp:{port}:interface=127.0.0.1", "--deliver", "discard")
        )
        with self.assertRaises(ConfigurationError) as caught:
            second.startService()
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1", str(caught.exception))
        return first.stopService()

    def test_reload(self) -> Deferred[None]:
        """
        reload (SIGHUP) reads the certificate files again; an unreadable one keeps the
        old certificate.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "mx.pem")
        mx, renewed = issue("mx.example.test"), issue("renewed.example.test")
        with open(path, "wb") as f:
            f.write(mx.cert + mx.key)
        service = buildService(
            "--cert", path, "--listen", "tcp:0:interface=127.0.0.1", "--deliver", "discard"
        )
        service.startService()
        with open(path, "wb") as f:
            f.write(renewed.cert + renewed.key)
        service.reload()
        self.assertEqual(service.server.options.cert, renewed.cert + renewed.key)
        os.unlink(path)
        service.reload()
        self.assertEqual(service.server.options.cert, renewed.cert + renewed.key)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        return service.stopService()

    def test_reloadDevelopmentCertificate(self) -> None:
        """
        With only the development certificate, reload reads nothing, and says so rather
        than that certificates were reloaded; with an --sni file beside it, that is read.
        """
        service = buildService("--deliver", "discard")
        before = service.server.options.cert
        logged = LogCapture(self)
        service.reload()
        self.assertEqual(
            logged.messages(),
            [
                "Certificates not reloaded: no certificate files were given (the development "
                "certificate is kept)"
            ],
        )
        self.assertEqual(service.server.options.cert, before)
        path = self.mktemp()
        pair = issue("other.example.test")
        with open(path, "wb") as f:
            f.write(pair.cert + pair.key)
        service = buildService("--deliver", "discard", "--sni", f"other.example.test={path}")
        logged = LogCapture(self)
        service.reload()
        self.assertIn("Certificates reloaded", logged.messages())

    def test_reloadSniDirectory(self) -> Deferred[None]:
        """
        reload reads --sni-dir again: a name whose file was added is served, and one
        whose file was removed is not, even when no file is left.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        b, c = issue("b.example.test"), issue("c.example.test")
        with open(os.path.join(directory, "b.example.test.pem"), "wb") as f:
            f.write(b.cert + b.key)
        service = buildService(
            *("--sni-dir", directory, "--listen", "tcp:0:interface=127.0.0.1"),
            *("--deliver", "discard"),
        )
        service.startService()
        self.assertEqual(list(service.server.options.sniOptions), ["b.example.test"])
        os.unlink(os.path.join(directory, "b.example.test.pem"))
        with open(os.path.join(directory, "c.example.test.pem"), "wb") as f:
            f.write(c.cert + c.key)
        service.reload()
        self.assertEqual(list(service.server.options.sniOptions), ["c.example.test"])
        os.unlink(os.path.join(directory, "c.example.test.pem"))
        service.reload()
        self.assertEqual(dict(service.server.options.sniOptions), {})
        return service.stopService()


def _listening() -> socket.socket:
    # A listening socket such as a --workers master hands its workers.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    return sock


def _greetingOverTLS(port: int) -> bytes:
    # Connect, handshake at once (implicit TLS), and read the greeting.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        return tls.recv(1024)


class FakeSignalReactor:
    """
    The part of a reactor that L{SignalHandlers} uses: what it asked to run once the
    reactor runs, and what it asked to run in the reactor's thread.
    """

    def __init__(self) -> None:
        self.whenRunning: list[Callable[[], object]] = []
        self.fromThread: list[tuple[Callable[..., object], tuple[object, ...]]] = []
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1

    def callWhenRunning(self, f: Callable[[], object]) -> None:
        self.whenRunning.append(f)

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.fromThread.append((f, args))

    def start(self) -> None:
        """
        Run what waits for the reactor to run, as its startup does.
        """
        waiting, self.whenRunning = self.whenRunning, []
        for f in waiting:
            f()


class SignalHandlersTests(SynchronousTestCase):
    """
    The service reloads on SIGHUP, and runs the reactor's SIGTERM and SIGINT handlers
    from its loop: run inside the signal handler, their logging can deadlock on the log
    file's lock under twistd.
    """

    def setUp(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.reactor = FakeSignalReactor()
        self.reloads = 0
        for number, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int")):
            # The reactor's own handlers, as it installs them when it starts.
            self.addCleanup(signal.signal, number, signal.getsignal(number))
            signal.signal(number, self.recorder(name))
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))

    def recorder(self, name: str) -> Callable[[int, Any], None]:
        def handler(number: int, frame: Any) -> None:
            self.seen.append((name, number))

        return handler

    def reload(self) -> None:
        self.reloads += 1

    def _signal(self, number: int) -> None:
        # What the kernel does: call the handler installed for the signal.
        handler = signal.getsignal(number)
        assert callable(handler)
        handler(number, None)

    def _runLoop(self) -> None:
        # What the reactor does with the calls it was asked to make from its loop.
        calls, self.reactor.fromThread = self.reactor.fromThread, []
        for f, args in calls:
            f(*args)

    def test_reactorHandlersRunInItsLoop(self) -> None:
        """
        Once the reactor runs, SIGTERM's and SIGINT's handlers only ask it to run the
        handlers that were there; they run from its loop, with the signal's number.
        """
        for number, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int")):
            self.seen = []
            handlers = SignalHandlers(self.reactor, self.reload)
            handlers.install()
            before = signal.getsignal(number)
            self.reactor.start()
            self._signal(number)
            self.assertEqual(self.seen, [])
            self._runLoop()
            self.assertEqual(self.seen, [(name, number)])
            self.assertIsNot(signal.getsignal(number), before)
            handlers.restore()
            self.assertIs(signal.getsignal(number), before)

    def test_secondStopSignalIgnored(self) -> None:
        """
        A stop signal after the first (SIGINT from the terminal, then SIGTERM from the
        --workers master, both before the loop runs) does not reach the reactor's
        handlers, which would ask it to stop a second time: it is logged as ignored.
        """
        log = LogCapture(self)
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        self.reactor.start()
        self._signal(signal.SIGINT)
        self._signal(signal.SIGTERM)
        self._runLoop()
        self._signal(signal.SIGINT)
        self._runLoop()
        self.assertEqual(self.seen, [("int", signal.SIGINT)])
        self.assertEqual(
            log.matching("already shutting down"),
            [
                "Received SIGTERM, already shutting down.",
                "Received SIGINT, already shutting down.",
            ],
        )
        handlers.restore()

    def test_stopNow(self) -> None:
        """
        A stop of the service's own (a worker whose master has gone) stops the reactor
        once, as a first stop signal would: a stop signal after it is only logged, and
        after a stop signal it asks for no second stop.
        """
        log = LogCapture(self)
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        self.reactor.start()
        handlers.stopNow()
        self._signal(signal.SIGTERM)
        self._runLoop()
        self.assertEqual((self.seen, self.reactor.stops), ([], 1))
        self.assertEqual(log.matching("already"), ["Received SIGTERM, already shutting down."])
        handlers.restore()
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        self.reactor.start()
        self._signal(signal.SIGTERM)
        self._runLoop()
        handlers.stopNow()
        self.assertEqual((self.seen, self.reactor.stops), ([("term", signal.SIGTERM)], 1))
        handlers.restore()

    def test_stopSignalsIgnoredWhileStopping(self) -> None:
        """
        Once the service is stopping (stopped by other means than a signal), SIGTERM,
        SIGINT and SIGHUP are ignored, each with a line in the log: SIGHUP's previous
        handler, the default one, would kill the process while clients finish their
        messages.  restore puts the previous handlers back.
        """
        previousHangup = signal.getsignal(signal.SIGHUP)
        before = signal.getsignal(signal.SIGTERM)
        log = LogCapture(self)
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        self.reactor.start()
        handlers.stopping()
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGINT)
        self._signal(signal.SIGHUP)
        self._runLoop()
        self.assertEqual((self.seen, self.reloads), ([], 0))
        self.assertEqual(
            log.matching("already shutting down"),
            [
                f"Received {name}, already shutting down."
                for name in ("SIGTERM", "SIGINT", "SIGHUP")
            ],
        )
        handlers.restore()
        self.assertIs(signal.getsignal(signal.SIGTERM), before)
        self.assertEqual(signal.getsignal(signal.SIGHUP), previousHangup)

    def test_restoredOnceClosed(self) -> None:
        """
        A service's stopService leaves the stop signals ignored while its close runs, and
        puts the reactor's handlers back once it has closed.
        """
        before = signal.getsignal(signal.SIGTERM)
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        self.reactor.start()
        closing: Deferred[None] = Deferred()
        closed = _closing(handlers, lambda: closing)
        self._signal(signal.SIGTERM)
        self._runLoop()
        self.assertEqual(self.seen, [])
        closing.callback(None)
        self.successResultOf(closed)
        self.assertIs(signal.getsignal(signal.SIGTERM), before)

    def test_hangupReloadsInTheLoop(self) -> None:
        """
        SIGHUP's handler, installed at once, asks the reactor to reload; restoring puts
        the previous handler back.
        """
        previous = signal.getsignal(signal.SIGHUP)
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        hangup = signal.getsignal(signal.SIGHUP)
        assert callable(hangup)
        hangup(signal.SIGHUP, None)
        self.assertEqual(self.reloads, 0)
        [(f, args)] = self.reactor.fromThread
        f(*args)
        self.assertEqual(self.reloads, 1)
        handlers.restore()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)

    def test_restoredBeforeRunning(self) -> None:
        """
        A service stopped before the reactor runs leaves the reactor's handlers alone.
        """
        handlers = SignalHandlers(self.reactor, self.reload)
        handlers.install()
        before = signal.getsignal(signal.SIGTERM)
        handlers.restore()
        self.reactor.start()
        self.assertIs(signal.getsignal(signal.SIGTERM), before)


class InheritedSocketTests(TestCase):
    """
    A worker of --workers serves the sockets its master hands it with --inherit.
    """

    def _worker(self, *args: str) -> tuple[SMTPService, int]:
        # The worker owns the socket it inherits, as from its master: it closes it.
        sock = _listening()
        port = sock.getsockname()[1]
        inherit = ["--inherit", f"{sock.detach()}:plain"]
        quick = ["--disable-reverse-lookup", "--early-talker-delay", "0"]
        return buildService(*args, *inherit, "--deliver", "discard", *quick), port

    async def test_plainFollowsSecure(self) -> None:
        """
        A socket the master hands over as plain serves as --secure says: with it, the
        connection starts with TLS.  (The socket here is a blocking one, which the worker
        makes non-blocking as Twisted needs.)
        """
        service, port = self._worker("--secure")
        service.startService()
        self.addCleanup(service.stopService)
        greeting = await deferToThread(_greetingOverTLS, port)
        self.assertTrue(greeting.startswith(b"220 "), greeting)

    async def test_closedWithTheServer(self) -> None:
        """
        Stopping the service stops listening on the inherited socket, as on the service's
        own listeners, instead of accepting (and refusing) until the server is gone; and
        the socket is closed, so that new connections are refused, not queued on it.
        """
        service, portNumber = self._worker()
        service.startService()
        [port] = service.ports
        self.assertTrue(cast(Any, port).connected)
        await service.stopService()
        self.assertFalse(cast(Any, port).connected)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", portNumber), timeout=10).close()

    def test_handedOverCertificates(self) -> None:
        """
        A worker serves from its start the certificates its master hands it with
        --inherit-certificates, not what the --cert and --key files hold (which may have
        become unusable since the master loaded them: here the key is another's); SIGHUP
        reads the files again, and when they cannot be used keeps the handed-over ones.
        """
        handed = issue("handed.example.test")
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key, certificates = (os.path.join(directory, n) for n in ("c", "k", "handed"))
        with open(cert, "wb") as f:
            f.write(issue("files.example.test").cert)
        with open(key, "wb") as f:
            f.write(issue("other.example.test").key)
        with open(certificates, "wb") as f:
            f.write(certificatesAsBytes({"cert": handed.cert, "key": handed.key}))
        service, _ = self._worker(
            "--cert", cert, "--key", key, "--inherit-certificates", certificates
        )
        self.assertEqual(service.server.tls.settings.cert, handed.cert)
        service.reload()
        self.assertEqual(service.server.tls.settings.cert, handed.cert)
        renewed = issue("files.example.test")
        for path, pem in ((cert, renewed.cert), (key, renewed.key)):
            with open(path, "wb") as f:
                f.write(pem)
        service.reload()
        self.assertEqual(service.server.tls.settings.cert, renewed.cert)

    def test_badHandedOverCertificates(self) -> None:
        """
        --inherit-certificates names a file of certificates as the master writes them;
        anything else is one line naming the flag and the file.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'{"cert": "not base64!"}')
        self.assertIn(
            f"--inherit-certificates {path}: not certificates handed over by a master",
            refusal(self, "--inherit-certificates", path, "--deliver", "discard"),
        )
        self.assertIn(
            f"--inherit-certificates {path}x: cannot read {path}x",
            refusal(self, "--inherit-certificates", f"{path}x", "--deliver", "discard"),
        )

    def test_badInherit(self) -> None:
        """
        --inherit takes FD:tls or FD:plain, the descriptor of an open socket; anything
        else is one line naming the flag, not usage text or a traceback.
        """
        with open(self.mktemp(), "w") as notSocket:
            closed = os.dup(notSocket.fileno())
            os.close(closed)
            for spec, words in (
                ("x:tls", "--inherit: expected FD:tls or FD:plain, not 'x:tls'"),
                ("3:other", "--inherit: expected FD:tls or FD:plain, not '3:other'"),
                ("3", "--inherit: expected FD:tls or FD:plain, not '3'"),
                (f"{closed}:tls", f"--inherit {closed}:tls: file descriptor {closed} is not open"),
                (
                    f"{notSocket.fileno()}:plain",
                    f"--inherit {notSocket.fileno()}:plain: file descriptor "
                    f"{notSocket.fileno()} is not a socket",
                ),
            ):
                self.assertIn(words, refusal(self, "--inherit", spec, "--deliver", "discard"))
