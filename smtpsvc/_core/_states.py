"""
The one place that decides which command is legal when.

The model (RFC 5321 section 4.1.4, RFC 2033 for LMTP, RFC 3207 for STARTTLS):

- ``GREETED``: the greeting has been sent; the client has not said HELO, EHLO or LHLO.
  Only session commands work; MAIL, RCPT, DATA, BDAT and AUTH need a HELO first.
- ``READY``: the client has said hello; no mail transaction is open.
- ``MAIL``: MAIL FROM was accepted; no recipient yet.
- ``RCPT``: at least one RCPT TO was accepted; DATA may follow.
- ``DATA``: the message is being received.  No command is read in this state: the bytes
  go to the DATA decoder until the final dot, which leads back to ``READY``.
- ``CHUNKS``: the message is arriving in BDAT chunks (RFC 3030).  A chunk's bytes are
  read without looking at them as commands; between chunks only another BDAT moves the
  transaction on, ``BDAT ... LAST`` ends it, and RSET (or a hello) abandons it.  DATA is
  a sequence error here (RFC 3030 section 2).

``TRANSITIONS`` lists every legal ``(state, command)`` pair and the state after the
command succeeds (a command refused by a handler or by its own syntax leaves the state
alone).  A pair that is not listed is a sequence error: ``SEQUENCE_ERRORS`` holds its 503
text, and any pair missing from both gets the generic one.  Commands that never reach this
table (unknown or disabled ones, or ones whose extension is off) are answered 500 or 502
before.

HELO, EHLO and LHLO act as RSET (section 4.1.4); STARTTLS and XCLIENT go back to
``GREETED`` because the client must say hello again (RFC 3207 section 4.2, Postfix's
XCLIENT_README); AUTH and STARTTLS are refused inside a transaction (RFC 4954 section 4,
and STARTTLS would otherwise carry a half-built envelope into the encrypted session).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from . import _replies
from ._replies import Reply


class State(enum.Enum):
    """
    Where a connection is in the SMTP conversation.
    """

    GREETED = "greeted"
    READY = "ready"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    CHUNKS = "chunks"

    # The members are singletons compared by identity: hashing them by identity too
    # spares the transition table's every lookup a call to Enum.__hash__.
    __hash__ = object.__hash__


GREETED, READY, MAIL, RCPT, DATA, CHUNKS = State

#: Every command the state machine knows.  ``LHLO`` exists only in LMTP, ``HELO`` and
#: ``EHLO`` only in SMTP; the extension commands only when their extension is on.
COMMANDS: Final = frozenset(
    {
        "HELO",
        "EHLO",
        "LHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "HELP",
        "VRFY",
        "QUIT",
        "STARTTLS",
        "AUTH",
        "XCLIENT",
        "XFORWARD",
        "WIZ",
        "SHELL",
        "KILL",
    }
)

#: Commands of RFC 5321 (and RFC 821, RFC 1985's ETRN) that are known but never carried
#: out: 502, as for a command switched off, where an unknown one gets 500 (section 4.2.4).
NOT_IMPLEMENTED: Final = frozenset(("EXPN", "TURN", "SEND", "SOML", "SAML", "ETRN"))

# The states in which commands are read.
_IDLE: Final = (GREETED, READY, MAIL, RCPT, CHUNKS)

TRANSITIONS: Final[Mapping[tuple[State, str], State]] = {
    # Saying hello: from anywhere outside DATA, and it resets any transaction.
    (GREETED, "HELO"): READY,
    (READY, "HELO"): READY,
    (MAIL, "HELO"): READY,
    (RCPT, "HELO"): READY,
    (CHUNKS, "HELO"): READY,
    (GREETED, "EHLO"): READY,
    (READY, "EHLO"): READY,
    (MAIL, "EHLO"): READY,
    (RCPT, "EHLO"): READY,
    (CHUNKS, "EHLO"): READY,
    (GREETED, "LHLO"): READY,
    (READY, "LHLO"): READY,
    (MAIL, "LHLO"): READY,
    (RCPT, "LHLO"): READY,
    (CHUNKS, "LHLO"): READY,
    # The mail transaction.
    (READY, "MAIL"): MAIL,
    (MAIL, "RCPT"): RCPT,
    (RCPT, "RCPT"): RCPT,
    (RCPT, "DATA"): DATA,
    (RCPT, "BDAT"): CHUNKS,
    (CHUNKS, "BDAT"): CHUNKS,
    # RSET ends a transaction but keeps the hello.
    (GREETED, "RSET"): GREETED,
    (READY, "RSET"): READY,
    (MAIL, "RSET"): READY,
    (RCPT, "RSET"): READY,
    (CHUNKS, "RSET"): READY,
    # Session commands change nothing.
    **{(state, command): state for state in _IDLE for command in ("NOOP", "HELP", "VRFY")},
    **{(state, command): state for state in _IDLE for command in ("QUIT", "WIZ", "SHELL")},
    **{(state, "KILL"): state for state in _IDLE},
    # Security and proxy commands outside a transaction.
    (GREETED, "STARTTLS"): GREETED,
    (READY, "STARTTLS"): GREETED,
    (READY, "AUTH"): READY,
    (GREETED, "XCLIENT"): GREETED,
    (READY, "XCLIENT"): GREETED,
    (GREETED, "XFORWARD"): GREETED,
    (READY, "XFORWARD"): READY,
}

SEQUENCE_ERRORS: Final[Mapping[tuple[State, str], Reply]] = {
    (GREETED, "MAIL"): _replies.SEND_HELO_FIRST,
    (GREETED, "RCPT"): _replies.SEND_HELO_FIRST,
    (GREETED, "DATA"): _replies.SEND_HELO_FIRST,
    (GREETED, "BDAT"): _replies.SEND_HELO_FIRST,
    (GREETED, "AUTH"): _replies.SEND_HELO_FIRST,
    (MAIL, "MAIL"): _replies.NESTED_MAIL,
    (RCPT, "MAIL"): _replies.NESTED_MAIL,
    (CHUNKS, "MAIL"): _replies.NESTED_MAIL,
    (READY, "RCPT"): _replies.NEED_MAIL,
    (READY, "DATA"): _replies.NEED_RCPT,
    (MAIL, "DATA"): _replies.NEED_RCPT,
    (READY, "BDAT"): _replies.NEED_MAIL,
    (MAIL, "BDAT"): _replies.NEED_RCPT,
    (MAIL, "AUTH"): _replies.TRANSACTION_IN_PROGRESS,
    (RCPT, "AUTH"): _replies.TRANSACTION_IN_PROGRESS,
    (CHUNKS, "AUTH"): _replies.TRANSACTION_IN_PROGRESS,
    (MAIL, "STARTTLS"): _replies.TRANSACTION_IN_PROGRESS,
    (RCPT, "STARTTLS"): _replies.TRANSACTION_IN_PROGRESS,
    (CHUNKS, "STARTTLS"): _replies.TRANSACTION_IN_PROGRESS,
    (MAIL, "XCLIENT"): _replies.TRANSACTION_IN_PROGRESS,
    (RCPT, "XCLIENT"): _replies.TRANSACTION_IN_PROGRESS,
    (CHUNKS, "XCLIENT"): _replies.TRANSACTION_IN_PROGRESS,
    (MAIL, "XFORWARD"): _replies.TRANSACTION_IN_PROGRESS,
    (RCPT, "XFORWARD"): _replies.TRANSACTION_IN_PROGRESS,
    (CHUNKS, "XFORWARD"): _replies.TRANSACTION_IN_PROGRESS,
}

_BAD_SEQUENCE: Final = _replies.reply(503, "Error: bad sequence of commands", "5.5.1")


def transition(state: State, command: str) -> State | Reply:
    """
    The state after C{command} succeeds in C{state}, or the 503 reply if it may not be
    given there.
    """
    after = TRANSITIONS.get((state, command))
    if after is not None:
        return after
    return SEQUENCE_ERRORS.get((state, command), _BAD_SEQUENCE)


def needsHello(command: str) -> bool:
    """
    Whether C{command} is refused before HELO/EHLO/LHLO.  The reference checks this
    before authentication and before the command's own syntax, so it is asked first.
    """
    return (GREETED, command) in SEQUENCE_ERRORS and SEQUENCE_ERRORS[
        (GREETED, command)
    ] is _replies.SEND_HELO_FIRST
