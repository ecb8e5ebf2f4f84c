"""
The SMTP smuggling payload of the standards checklist (section 2.2, SMUG), shared by the
tests that send it: to the decoder (L{tests.test_core_data}), to the protocol in memory
(L{tests.test_protocol}) and to a real server (L{tests.test_e2e}).

A message begins with L{HEAD}, then comes a separator, a non-standard end of data, then
L{TAIL}: would-be commands and a second message, up to the real end of data.  A server
that took the separator for the end of data would run the commands.
"""

from __future__ import annotations

import re

#: What comes before the separator: the start of the one real message.
HEAD = b"Subject: a\r\n\r\nA"
#: What comes after it: the commands a vulnerable server would run, the smuggled
#: message, and the real end of data.
TAIL = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nSubject: smuggled\r\n\r\nB\r\n.\r\n"

# The separators of the checklist, each named as the tests that send it are.
LF_DOT_LF = b"\n.\n"
LF_DOT_CRLF = b"\n.\r\n"
CRLF_DOT_LF = b"\r\n.\n"
CR_DOT_CR = b"\r.\r"
CR_DOT_CRLF = b"\r.\r\n"
CRLF_DOT_CR = b"\r\n.\r"
CR_CRLF_DOT_CR_CRLF = b"\r\r\n.\r\r\n"
LF_DOT_DOT_LF = b"\n..\n"

#: Every separator of the checklist.
SEPARATORS = (
    LF_DOT_LF,
    LF_DOT_CRLF,
    CRLF_DOT_LF,
    CR_DOT_CR,
    CR_DOT_CRLF,
    CRLF_DOT_CR,
    CR_CRLF_DOT_CR_CRLF,
    LF_DOT_DOT_LF,
)

#: How every message of the payload ends, whatever the policy: the smuggled message's
#: text, now part of the one real message.
SMUGGLED_END = b"\r\nSubject: smuggled\r\n\r\nB\r\n"

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def payload(separator: bytes) -> bytes:
    """
    The bytes a client sends after the 354: L{HEAD}, C{separator}, L{TAIL}.
    """
    return HEAD + separator + TAIL


def received(separator: bytes, policy: str) -> bytes:
    """
    The one message a server gets from L{payload}C{(separator)} under the bare line
    ending policy C{policy} (C{"pass"}, C{"reject"} or C{"normalize"}): everything up to
    the real end of data, dot-unstuffed, with every line ending made CRLF under
    C{"normalize"}.  (Under C{"reject"} the decoder still reads it all; the server then
    refuses it.)
    """
    passed = HEAD + separator.replace(b"\r\n.", b"\r\n") + TAIL[: -len(b".\r\n")]
    if policy == "normalize":
        return _LINE_ENDING.sub(b"\r\n", passed)
    return passed
