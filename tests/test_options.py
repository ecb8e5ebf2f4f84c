"""
Tests for the options declaration's own checks (L{smtpsvc._options.ServerOptions}), which
the library, the command line and the configuration file all go through.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

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
