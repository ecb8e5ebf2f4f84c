"""
Errors that carry an SMTP reply.

L{SMTPError} is what a handler raises to refuse something; its code and text become the
reply.  It is pure: the core imports it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._core._grammar import ENHANCED_STATUS


class SMTPError(Exception):
    """
    A refusal with the reply to send.

    Raise it from any handler: C{raise SMTPError(550, "No such user")}.  A code of 421
    also closes the connection, as RFC 5321 section 3.8 requires.

    @ivar code: the reply code, 400 to 599.
    @ivar lines: the reply text, one string per reply line (most replies have one).
    @ivar enhancedCode: the RFC 3463 status code (C{"5.1.1"}) sent when the server
        advertises ENHANCEDSTATUSCODES, or L{None} to let the server pick one from the
        reply code.  A message that starts with such a code (C{"5.7.1 Relay denied"})
        provides it too, and the code is then not repeated in the text.
    """

    def __init__(
        self,
        code: int,
        message: str | Sequence[str] = "",
        enhancedCode: str | None = None,
    ) -> None:
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
            raise ValueError(f"an SMTPError code must be an integer from 400 to 599, not {code!r}")
        if isinstance(message, (bytes, bytearray)):
            raise TypeError(f"SMTPError text must be str, not {type(message).__name__}")
        lines = [message] if isinstance(message, str) else list(message)
        if not lines:
            lines = [""]
        for line in lines:
            if not isinstance(line, str):
                raise TypeError(f"SMTPError text must be str, not {type(line).__name__}")
            # A CR or LF in reply text would let the text forge further reply lines.
            if "\r" in line or "\n" in line:
                raise ValueError("SMTPError text must not contain CR or LF")
        if enhancedCode is None:
            match = ENHANCED_STATUS.match(lines[0])
            if match is not None and match.group(1) == str(code)[0]:
                enhancedCode = match.group(0).strip()
                lines[0] = lines[0][match.end() :]
        elif not ENHANCED_STATUS.fullmatch(enhancedCode) or enhancedCode[0] != str(code)[0]:
            raise ValueError(
                f"enhanced status code {enhancedCode!r} does not match reply code {code}"
            )
        if enhancedCode is not None:
            # The code is sent on every line (RFC 2034 section 4): one written at the
            # start of a line of the message is not repeated in its text.
            lines = [line.removeprefix(f"{enhancedCode} ") for line in lines]
        super().__init__(code, *lines)
        self.code = code
        self.lines: tuple[str, ...] = tuple(lines)
        self.enhancedCode = enhancedCode

    @property
    def message(self) -> str:
        """
        The reply text, its lines joined with spaces.
        """
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.message}"

    def __repr__(self) -> str:
        return f"SMTPError({self.code!r}, {self.message!r})"


def fresh(error: SMTPError) -> SMTPError:
    """
    A new L{SMTPError} like C{error}, to raise where C{error} is a module-level constant:
    an exception instance raised again keeps every traceback it was raised with, and
    their frames, for as long as it lives.
    """
    return SMTPError(error.code, error.lines, error.enhancedCode)
