"""
Tests for L{SMTPError}: how it reads an RFC 3463 enhanced status code.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from smtpsvc import SMTPError
from smtpsvc._core._replies import fromError

# ARABIC-INDIC DIGIT ONE: a digit to Python's str.isdigit and to \d, but not to RFC 3463.
ARABIC_ONE = "\u0661"


class EnhancedCodeTests(SynchronousTestCase):
    """
    An enhanced code comes from the argument or from the start of the message.
    """

    def test_fromMessage(self) -> None:
        """
        A message that starts with an enhanced code of the reply's class gives it, and
        the text no longer carries it.
        """
        error = SMTPError(550, "5.7.1 Relay denied")
        self.assertEqual((error.enhancedCode, error.lines), ("5.7.1", ("Relay denied",)))

    def test_otherClassStaysText(self) -> None:
        """
        A code of another class than the reply's is text.
        """
        error = SMTPError(550, "4.7.1 Relay denied")
        self.assertEqual((error.enhancedCode, error.lines), (None, ("4.7.1 Relay denied",)))

    def test_nonAsciiDigitsStayText(self) -> None:
        """
        Digits of other scripts do not make an enhanced code: the message is text, and
        the reply gets the code the server picks for 550, not C{5.?.1}.
        """
        message = f"5.{ARABIC_ONE}.1 nope"
        error = SMTPError(550, message)
        self.assertEqual((error.enhancedCode, error.lines), (None, (message,)))
        self.assertEqual(fromError(error).encode(True), b"550 5.1.1 5.?.1 nope\r\n")

    def test_nonAsciiDigitsRefused(self) -> None:
        """
        An enhanced code given with digits of other scripts is refused like any other
        malformed one.
        """
        self.assertRaises(ValueError, SMTPError, 550, "nope", f"5.{ARABIC_ONE}.1")
        self.assertRaises(ValueError, SMTPError, 550, "nope", "5.1.1.1")

    def test_givenCodeKept(self) -> None:
        """
        A well-formed enhanced code of the reply's class is kept as given.
        """
        error = SMTPError(451, "Try later", "4.3.0")
        self.assertEqual((error.enhancedCode, error.lines), ("4.3.0", ("Try later",)))
