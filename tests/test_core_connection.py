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
    SASL_LINE_LIMIT,
    CheckMail,
    CheckRcpt,
    CheckXClient,
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
from smtpsvc._core._throttle import clientNetwork
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


def transaction(connection: ServerConnection, *recipients: bytes) -> None:
    """
    Say hello and open a transaction with C{recipients}, each accepted.
    """
    hello = b"LHLO x" if connection.session.lmtp else b"EHLO x"
    for line in (hello, b"MAIL FROM:<a@b.example>", *(b"RCPT TO:<%s>" % r for r in recipients)):
        reply = drive(connection, line)
        assert reply.startswith(b"250"), reply


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


class DispatchTests(SynchronousTestCase):
    """
    The command table and the state machine know the same commands.
    """

    def test_everyCommandHasAMethod(self) -> None:
        """
        The connection has a method for every command of the state machine, and for
        nothing else: whether a command is available depends only on the options.
        """
        self.assertEqual(set(ServerConnection._COMMANDS), set(COMMANDS))


class TransactionRuleTests(SynchronousTestCase):
    """
    Rules that more than one step of a transaction applies alike.
    """

    def test_replySlotsSMTP(self) -> None:
        """
        In SMTP a message gets one final reply however many recipients it has.
        """
        connection = newConnection()
        transaction(connection, b"c@d.example", b"e@f.example")
        self.assertEqual(connection.replySlots, 1)

    def test_replySlotsLMTP(self) -> None:
        """
        In LMTP a message gets one final reply per recipient, a repeated one included.
        """
        connection = newConnection(lmtp=True)
        transaction(connection, b"c@d.example", b"e@f.example", b"c@d.example")
        self.assertEqual(connection.replySlots, 3)
        self.assertIsInstance(connection.receiveLine(b"DATA"), StartData)
        connection.dataStarted()
        replies = connection.dataFinished([(None, None, None)]).data
        self.assertEqual(replies.count(b"\r\n"), 3)

    def test_tooBigAlike(self) -> None:
        """
        A message over the size limit gets the same 552 whether MAIL FROM declared its
        size or the data went over it.
        """
        connection = newConnection(size=100, hideENHANCEDSTATUSCODES=False)
        drive(connection, b"EHLO x")
        declared = drive(connection, b"MAIL FROM:<a@b.example> SIZE=101")
        self.assertEqual(
            declared, b"552 5.3.4 Error: message exceeds fixed maximum message size 100\r\n"
        )
        transaction(connection, b"c@d.example")
        connection.receiveLine(b"DATA")
        connection.dataStarted()
        self.assertEqual(connection.dataFinished([(None,)], tooLarge=True).data, declared)


class AuthLineTests(SynchronousTestCase):
    """
    The lines of an AUTH exchange: their length and their count before authentication.
    """

    def test_lineLimit(self) -> None:
        """
        The AUTH command and every line of its exchange may be SASL_LINE_LIMIT long;
        other lines only maxCommandLength.  An over-long line ends the exchange.
        """
        connection = newConnection(maxCommandLength=100)
        drive(connection, b"EHLO x")
        self.assertEqual(connection.lineLimit(b"auth "), SASL_LINE_LIMIT)
        self.assertEqual(connection.lineLimit(b"NOOP"), 100)
        self.assertTrue(drive(connection, b"AUTH PLAIN").startswith(b"334 "))
        self.assertEqual(connection.lineLimit(b"NOOP"), SASL_LINE_LIMIT)
        self.assertTrue(connection.lineTooLong(b"NOOP").data.startswith(b"500 "))
        self.assertEqual(connection.lineLimit(b"NOOP"), 100)
        self.assertEqual(drive(connection, b"NOOP")[:3], b"250")

    def test_minLineLimit(self) -> None:
        """
        minLineLimit is maxCommandLength, and no line's limit is less, whatever the
        options that lengthen MAIL and RCPT lines and whether an AUTH exchange is on.
        """
        for options in ({}, {"size": 1000, "hideDSN": False}, {"authMethods": ()}):
            connection = newConnection(maxCommandLength=100, **options)
            self.assertEqual(connection.minLineLimit, 100)
            drive(connection, b"EHLO x")
            heads = (b"MAIL ", b"rcpt ", b"AUTH ", b"NOOP", b"", b"\xff")
            for head in heads:
                self.assertGreaterEqual(connection.lineLimit(head), 100, (options, head))
            if options.get("authMethods", True):
                drive(connection, b"AUTH PLAIN")
                for head in heads:
                    self.assertGreaterEqual(connection.lineLimit(head), 100, (options, head))

    def test_unauthenticatedCount(self) -> None:
        """
        Before a required authentication, commands other than AUTH and the lines of an
        AUTH exchange count towards one limit; reaching it in an exchange ends that too.
        """
        # EHLO counts, AUTH does not, "*" is a line of the exchange: the last NOOP is
        # the fourth line counted.
        for lines in ([b"NOOP", b"AUTH PLAIN", b"*"], [b"AUTH PLAIN", b"*", b"NOOP"]):
            connection = newConnection(authOptional=False, maxAllowedUnauthenticatedCommands=4)
            replies = [drive(connection, line)[:3] for line in (b"EHLO x", *lines, b"NOOP")]
            self.assertEqual(replies[-1], b"421", (lines, replies))
        connection = newConnection(authOptional=False, maxAllowedUnauthenticatedCommands=3)
        drive(connection, b"EHLO x")
        drive(connection, b"NOOP")
        self.assertEqual(drive(connection, b"AUTH PLAIN")[:3], b"334")
        self.assertEqual(drive(connection, b"dGVzdA==")[:3], b"421")
        # The exchange is over: the next line is a command again, with its usual limit.
        self.assertLess(connection.lineLimit(b"NOOP"), SASL_LINE_LIMIT)


class XClientAttributeTests(SynchronousTestCase):
    """
    The attributes of XCLIENT and XFORWARD, seen through the connection.
    """

    def test_namesAtMost255(self) -> None:
        """
        NAME and HELO may be 255 characters long, and no longer.
        """
        for attribute in ("NAME", "HELO"):
            for length, accepted in ((255, True), (256, False)):
                connection = newConnection(useXClient=True)
                drive(connection, b"EHLO x")
                line = f"XCLIENT {attribute}={'a' * length}".encode()
                action = connection.receiveLine(line)
                if accepted:
                    self.assertIsInstance(action, CheckXClient, (attribute, length))
                else:
                    assert isinstance(action, Send)
                    self.assertTrue(action.data.startswith(b"501 "), (attribute, length))
                connection = newConnection(useXForward=True)
                drive(connection, b"EHLO x")
                reply = drive(connection, b"XFORWARD" + line[len(b"XCLIENT") :])
                self.assertEqual(reply[:3], b"250" if accepted else b"501", reply)


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

    def test_returnedRefusal(self) -> None:
        """
        An SMTPError returned, not raised, refuses as a raised one does: in SMTP, and in
        LMTP for every recipient.
        """
        error = SMTPError(550, "no")
        self.assertEqual(normalizeDataResult(error, 1, lmtp=False), (error,))
        self.assertEqual(normalizeDataResult(error, 2, lmtp=True), (error, error))

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


class ClientNetworkTests(SynchronousTestCase):
    """
    L{clientNetwork}: what counts as one client for maxClientsPerAddress.
    """

    def test_networks(self) -> None:
        """
        An IPv4 address is itself (IPv4-mapped too); an IPv6 address is its /64; what is
        not an IP address stays as it is.
        """
        self.assertEqual(
            [
                clientNetwork(address)
                for address in (
                    "192.0.2.7",
                    "::ffff:192.0.2.7",
                    "2001:db8:1:2:3:4:5:6",
                    "2001:db8:1:2::",
                    "unix",
                )
            ],
            ["192.0.2.7", "192.0.2.7", "2001:db8:1:2::/64", "2001:db8:1:2::/64", "unix"],
        )
