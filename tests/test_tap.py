"""
Tests for the twist plugin: discovery, the generated command line, and the service.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpsvc import tap
from smtpsvc._options import optionSpecs
from smtpsvc.handlers.maildir import MaildirDelivery


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def chosen(options: tap.Options) -> dict[str, object]:
    """
    The server options given, without the development certificate made when none was.
    """
    given = options.serverOptions()
    assert b"PRIVATE KEY" in given.pop("key")  # type: ignore[operator]
    assert b"CERTIFICATE" in given.pop("cert")  # type: ignore[operator]
    return given


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
        self.assertEqual(
            next(s for s in optionSpecs() if s.name == "maxClients").flag, "max-clients"
        )

    def test_defaults(self) -> None:
        """
        Without --listen or --deliver the service listens on 127.0.0.1:2525 and delivers
        into ./maildir, and passes no server option.
        """
        options = parse()
        self.assertEqual(options["listen"], ["tcp:2525:interface=127.0.0.1"])
        self.assertEqual(options["deliver"], ["maildir:./maildir"])
        self.assertEqual(chosen(options), {})

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
        )
        self.assertEqual(
            chosen(options),
            {
                "maxClients": 5,
                "socketTimeout": 2.5,
                "disabledCommands": ("VRFY", "help"),
                "bareLineEndings": "reject",
                "name": "mx.example",
            },
        )

    def test_booleans(self) -> None:
        """
        Each boolean option has a flag and a --no- flag.
        """
        self.assertEqual(chosen(parse("--lmtp", "--no-hide-dsn")), {"lmtp": True, "hideDSN": False})
        with self.assertRaises(UsageError):
            parse("--lmtp", "--no-lmtp")

    def test_badValues(self) -> None:
        """
        Bad values are usage errors that name the option.
        """
        for args, word in (
            (("--max-clients", "x"), "--max-clients must be a whole number, not 'x'"),
            (("--max-clients", "0"), "--max-clients must be at least 1"),
            (("--socket-timeout", "soon"), "--socket-timeout must be a number"),
            (("--bare-line-endings", "maybe"), "--bare-line-endings must be one of normalize"),
            (("--deliver", "mbox:/x"), "--deliver"),
        ):
            with self.assertRaises(UsageError) as caught:
                parse(*args)
            self.assertIn(word, str(caught.exception))

    def test_repeatable(self) -> None:
        """
        --listen and --deliver may be given several times.
        """
        options = parse(
            "--listen",
            "tcp:1",
            "--listen",
            "tcp:2",
            "--deliver",
            "maildir:a",
            "--deliver",
            "discard",
        )
        self.assertEqual(options["listen"], ["tcp:1", "tcp:2"])
        self.assertEqual(options["deliver"], ["maildir:a", "discard"])

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


class ServiceTests(TestCase):
    """
    The service listens when started and closes the server when stopped.
    """

    def test_startAndStop(self) -> Deferred[None]:
        """
        Starting listens on each endpoint; stopping closes the server.
        """
        options = parse("--listen", "tcp:0:interface=127.0.0.1", "--deliver", "discard")
        service = tap.makeService(options)
        assert isinstance(service, tap.SMTPService)
        service.startService()
        self.assertEqual(len(service.ports), 1)
        self.assertTrue(service.ports[0].getHost().port > 0)  # type: ignore[attr-defined]
        stopped: Deferred[None] = service.stopService()
        return stopped.addCallback(lambda _: self.assertTrue(service.server.closing))
