"""
Tests for the options declaration's own checks (L{smtpsvc._options.ServerOptions}), which
the library, the command line and the configuration file all go through.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc import SMTPServer
from smtpsvc._options import ServerOptions, optionSpecs


class ValueTests(SynchronousTestCase):
    """
    Values that no server can use are refused with a sentence naming the option.
    """

    def test_nonFiniteNumbers(self) -> None:
        """
        A number that is not finite (nan, inf, -inf) is refused for every option that
        takes a fraction, however it was made.
        """
        floats = [s.name for s in optionSpecs() if s.kind in ("float", "float | None")]
        self.assertIn("closeTimeout", floats)
        for name in floats:
            for value in (float("nan"), float("inf"), float("-inf")):
                with self.assertRaises(ValueError) as caught:
                    ServerOptions.fromMapping({name: value})
                self.assertIn(f"option {name} must be a finite number", str(caught.exception))
        self.assertEqual(ServerOptions(socketTimeout=1e300).socketTimeout, 1e300)

    def test_internationalName(self) -> None:
        """
        An internationalised name is kept as its A-labels, which the greeting and the
        EHLO reply must use (RFC 6531 section 3.7.1); one that has no A-label form is
        refused.
        """
        self.assertEqual(
            ServerOptions(name="mx.b\u00fccher.example").name, "mx.xn--bcher-kva.example"
        )
        self.assertEqual(ServerOptions(name="mx.example").name, "mx.example")
        with self.assertRaises(ValueError) as caught:
            ServerOptions(name="a" * 64 + "\u00fc.example")
        self.assertIn("option name must be a host name", str(caught.exception))

    def test_nameIsAHostName(self) -> None:
        """
        The name, which the greeting, the EHLO reply and the development certificate
        carry, must be a host name (labels of letters, digits, hyphens and underscores,
        none empty) or an address literal; anything else is refused.
        """
        for name in ("a..b!", "foo_bar!", "", "mx example.org", ".mx.example", "[192.0.2.999]"):
            with self.assertRaises(ValueError, msg=name) as caught:
                ServerOptions(name=name)
            self.assertIn(
                "option name must be a host name or an address literal such as [192.0.2.1], "
                f"and {name!r} is not a host name",
                str(caught.exception),
            )
        for name in (
            "mx.example.org",
            "MX.Example.ORG.",
            "localhost",
            "mail_1.example.com",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
        ):
            self.assertEqual(ServerOptions(name=name).name, name)

    def test_versionsInOrder(self) -> None:
        """
        A minimum TLS version newer than the maximum leaves none, and is refused; the
        same version for both is one version, and is taken.  Rotating to such a pair
        is refused too.
        """
        with self.assertRaises(ValueError) as caught:
            ServerOptions(minVersion="TLSv1.3", maxVersion="TLSv1.2")
        self.assertEqual(
            str(caught.exception),
            "option minVersion TLSv1.3 is newer than option maxVersion TLSv1.2, which "
            "leaves no TLS version to use",
        )
        self.assertEqual(
            ServerOptions(minVersion="TLSv1.3", maxVersion="TLSv1.3").maxVersion, "TLSv1.3"
        )
        server = SMTPServer(reactor=Clock(), minVersion="TLSv1.3")
        with self.assertRaises(ValueError):
            server.updateSecureContext(maxVersion="TLSv1.2")
        self.assertIsNone(server.options.maxVersion)

    def test_disabledCommandsKnown(self) -> None:
        """
        disabledCommands names commands the server knows, in any case, or those RFC 5321
        names that it never carries out (EXPN...); a typo is refused rather than leaving
        the command it meant enabled.
        """
        with self.assertRaises(ValueError) as caught:
            ServerOptions(disabledCommands=("VRFY", "exnp"))
        self.assertIn("option disabledCommands has unknown command 'EXNP'", str(caught.exception))
        self.assertEqual(
            ServerOptions(disabledCommands=("vrfy", "EXPN", "etrn")).disabledCommands,
            ("VRFY", "EXPN", "ETRN"),
        )

    def test_maxLocalPartLength(self) -> None:
        """
        maxLocalPartLength is at least 1 and at most 252, which an address's 254 octets
        leave for a local part (a limit above it would only ever say the address is bad;
        attack QA); unset takes any.
        """
        for value in (0, 253, 300):
            with self.assertRaises(ValueError) as caught:
                ServerOptions.fromMapping({"maxLocalPartLength": value})
            self.assertIn("option maxLocalPartLength must be at ", str(caught.exception))
        self.assertEqual(ServerOptions(maxLocalPartLength=252).maxLocalPartLength, 252)
        self.assertIsNone(ServerOptions(maxLocalPartLength=None).maxLocalPartLength)

    def test_ipv4MappedNetworks(self) -> None:
        """
        IPv4-mapped addresses and networks in a trust list are the IPv4 ones they map,
        which is how a client's address is compared (IPv6 QA: they never matched).
        """
        options = ServerOptions(
            useXClient=("::ffff:127.0.0.1", "::ffff:10.0.0.0/104", "::ffff:0:0/96", "2001:db8::/32")
        )
        self.assertEqual(
            options.useXClient, ("127.0.0.1/32", "10.0.0.0/8", "0.0.0.0/0", "2001:db8::/32")
        )
