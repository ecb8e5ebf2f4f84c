"""
Tests for the core state machine on its own: the state table, and that no input makes
it raise.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc import SMTPError
from smtpsvc._core._connection import (
    CheckMail,
    CheckRcpt,
    Send,
    ServerConnection,
    StartData,
    normalizeDataResult,
)
from smtpsvc._core._session import Session
from smtpsvc._core._states import (
    COMMANDS,
    SEQUENCE_ERRORS,
    TRANSITIONS,
    State,
    transition,
)
from smtpsvc._options import ServerOptions

COMMAND_LINES = [
    b"EHLO x",
    b"HELO x",
    b"LHLO x",
    b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>",
    b"RCPT TO:<c@d.example>",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY x",
    b"HELP",
    b"STARTTLS",
    b"AUTH PLAIN",
]


def newConnection(**options: object) -> ServerConnection:
    options.setdefault("name", "mx.test")
    options.setdefault("authOptional", True)
    return ServerConnection(
        ServerOptions.fromMapping(options), Session("127.0.0.1", 25, "192.0.2.1", 4000)
    )


def drive(connection: ServerConnection, line: bytes) -> bytes:
    """
    Feed a line and answer any handler question with acceptance; return the reply bytes.
    """
    action = connection.receiveLine(line)
    if isinstance(action, CheckMail):
        return connection.mailChecked(action.address, None).data
    if isinstance(action, CheckRcpt):
        return connection.rcptChecked(action.address, None).data
    if isinstance(action, StartData):
        started = connection.dataStarted().data
        session = connection.session
        outcome = normalizeDataResult(None, len(session.envelope.rcptTo), session.lmtp)
        return started + connection.dataFinished([outcome]).data
    assert isinstance(action, Send)
    return action.data


class StateTableTests(SynchronousTestCase):
    """
    The table of legal commands per state.
    """

    def test_everyPairListedOnce(self) -> None:
        """
        No pair is both legal and a sequence error.
        """
        self.assertEqual(set(TRANSITIONS) & set(SEQUENCE_ERRORS), set())

    def test_tableUsesKnownCommands(self) -> None:
        """
        The tables name only commands the machine knows.
        """
        used = {command for _, command in TRANSITIONS} | {c for _, c in SEQUENCE_ERRORS}
        self.assertLessEqual(used, set(COMMANDS))

    def test_nothingLegalDuringData(self) -> None:
        """
        No command is read while a message is coming in.
        """
        for command in COMMANDS:
            self.assertNotIsInstance(transition(State.DATA, command), State)

    def test_unlistedIs503(self) -> None:
        """
        A pair in neither table is a generic 503.
        """
        reply = transition(State.DATA, "NOOP")
        self.assertEqual(getattr(reply, "code", None), 503)

    def test_mailNeedsHello(self) -> None:
        """
        MAIL before HELO is a sequence error with the reference's text.
        """
        connection = newConnection()
        self.assertEqual(
            drive(connection, b"MAIL FROM:<a@b.example>"), b"503 Error: send HELO/EHLO first\r\n"
        )

    def test_fullTransaction(self) -> None:
        """
        The states follow a transaction from hello to the end of the message.
        """
        connection = newConnection()
        seen = [connection.state]
        for line in (b"EHLO x", b"MAIL FROM:<a@b.example>", b"RCPT TO:<c@d.example>"):
            drive(connection, line)
            seen.append(connection.state)
        self.assertIsInstance(connection.receiveLine(b"DATA"), StartData)
        seen.append(connection.state)
        connection.dataFinished([(None,)])
        seen.append(connection.state)
        self.assertEqual(
            seen,
            [State.GREETED, State.READY, State.MAIL, State.RCPT, State.DATA, State.READY],
        )


class DataResultTests(SynchronousTestCase):
    """
    Turning a data handler's answer into per-recipient outcomes.
    """

    def test_scalarAppliesToEveryone(self) -> None:
        """
        A single answer counts for every recipient in LMTP.
        """
        self.assertEqual(normalizeDataResult("ok", 3, lmtp=True), ("ok", "ok", "ok"))
        self.assertEqual(normalizeDataResult(None, 3, lmtp=False), (None,))

    def test_perRecipient(self) -> None:
        """
        A sequence gives one outcome per recipient.
        """
        error = SMTPError(550, "no")
        self.assertEqual(normalizeDataResult([None, error], 2, lmtp=True), (None, error))

    def test_badAnswers(self) -> None:
        """
        Anything else is refused.
        """
        for result, lmtp in ((["a"], False), (["a"], True), (42, True), ("a\r\nb", False)):
            with self.assertRaises(ValueError):
                normalizeDataResult(result, 2, lmtp=lmtp)


class RobustnessTests(SynchronousTestCase):
    """
    No input makes the core raise.
    """

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(COMMAND_LINES)), max_size=20))
    def test_neverRaises(self, lines: list[bytes]) -> None:
        """
        Any sequence of lines gets replies, never an exception.
        """
        for options in ({}, {"lmtp": True, "hideDSN": False, "size": 100}):
            connection = newConnection(**options)
            for line in lines:
                reply = drive(connection, line)
                self.assertRegex(reply, rb"^[2-5][0-9][0-9][ -]")
                self.assertTrue(reply.endswith(b"\r\n"))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=120))
    def test_mailArgumentsNeverRaise(self, text: str) -> None:
        """
        Any text after MAIL FROM: and RCPT TO: gets a reply.
        """
        connection = newConnection(hideDSN=False, size=1000)
        drive(connection, b"EHLO x")
        drive(connection, ("MAIL FROM:" + text).encode())
        drive(connection, ("RCPT TO:" + text).encode())
