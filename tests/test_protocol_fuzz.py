"""
The whole protocol under random conversations, in memory: the pure core's robustness
tests (L{tests.test_core_connection.RobustnessTests}) with the driver around it.

Each example is a server (with one of several sets of options) and a client that writes
command lines, pipelined groups, message bytes and garbage, split anywhere; handlers
that accept, refuse, fail, or answer later (when the example fires their L{Deferred}s)
and data handlers that read at once, late, or pause the stream; the clock moves through
the timeouts; the client may go away at any point.  A second test does the same over real
TLS in memory (STARTTLS, implicit TLS, client certificates, bytes under the TLS layer).
After every step everything the server sent must be well-formed replies, and nothing may
be logged as a failure but the errors the handlers raised on purpose.  At the end, with
every late answer given and the clock moved far ahead, the connection must be gone with
no timer left, the server must close at once, and no message may have got 250 that the
data handler did not accept.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    Address,
    AuthRequest,
    IAuthHandler,
    ICloseHandler,
    IConnectHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)
from smtpsvc.testing import MemoryClient, stuff

from .auth_support import authPlain, b64
from .e2e_support import LogCapture
from .memorytls import ClientTLS, authority, connectTLS, issue
from .protocol_support import SENDER, makeServer, malformedReplyLines

#: The ways a handler answers, drawn by the example (accepting more often than not, so
#: that conversations get as far as a message).
ANSWERS = ("accept",) * 8 + ("refuse", "temporary", "close", "fail", "later", "later", "coroutine")
#: How a data handler reads its message (on top of the answer it gives).
READINGS = ("whole", "none", "paused", "late")

#: The option sets the server is built with.
OPTION_SETS: tuple[dict[str, Any], ...] = (
    {},
    {"lmtp": True},
    {"forbidUnauthPipelining": True, "hideENHANCEDSTATUSCODES": False},
    {"authOptional": False, "allowInsecureAuth": True, "authMethods": ("PLAIN", "LOGIN")},
    {"size": 60, "hideDSN": False, "bareLineEndings": "reject", "maxRecipients": 100},
    {"useXClient": True, "useXForward": True, "hidePIPELINING": True},
    {"useProxy": True, "proxyTimeout": 2.0},
    {"socketTimeout": 5.0, "minDataRate": 100, "earlyTalkerDelay": 0.5},
    {"handlerTimeout": 2.0, "lmtp": True, "socketTimeout": 0},
    {"maxUnrecognizedCommands": 3, "maxAllowedUnauthenticatedCommands": 3},
    {"bareLineEndings": "pass", "lenientAddressParsing": True, "authFailureDelay": 1.0},
)

#: Command lines, and pieces of conversations, that the client draws from.
VOCABULARY: tuple[bytes, ...] = tuple(
    line.encode("utf-8")
    for line in (
        "EHLO client.example\r\n",
        "HELO client.example\r\n",
        "LHLO client.example\r\n",
        "EHLO\r\n",
        f"MAIL FROM:<{SENDER}>\r\n",
        "MAIL FROM:<>\r\n",
        f"MAIL FROM:<{SENDER}> SIZE=100 BODY=8BITMIME\r\n",
        f"MAIL FROM:<{SENDER}> SMTPUTF8 RET=HDRS ENVID=abc\r\n",
        f"MAIL FROM:<{SENDER}> AUTH=<>\r\n",
        "MAIL FROM:<ü@b.example> SMTPUTF8\r\n",
        f"MAIL FROM:<{SENDER}> BODY=BINARYMIME\r\n",
        f"MAIL FROM:{SENDER}\r\n",
        "RCPT TO:<c@d.example>\r\n",
        "RCPT TO:<e@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;e@d.example\r\n",
        "RCPT TO:<postmaster>\r\n",
        "RCPT TO:<\r\n",
        "DATA\r\n",
        "Subject: x\r\n\r\nbody\r\n.\r\n",
        ".\r\n",
        "..dotted\r\n",
        "line with bare LF\n",
        "bare CR\r",
        "\r\n.\r\n",
        "BDAT 5\r\nhello",
        "BDAT 5 LAST\r\nhello",
        "BDAT 0 LAST\r\n",
        "BDAT 9999999999999999999999\r\n",
        "BDAT x\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        "QUIT\r\n",
        "VRFY someone\r\n",
        "HELP\r\n",
        "WIZ x\r\n",
        authPlain("alice", "secret") + "\r\n",
        authPlain("alice", "wrong") + "\r\n",
        "AUTH PLAIN\r\n",
        "AUTH LOGIN\r\n",
        b64("alice") + "\r\n",
        b64("secret") + "\r\n",
        "*\r\n",
        "=\r\n",
        "AUTH CRAM-MD5\r\n",
        "AUTH XOAUTH2 " + b64("user=alice\x01auth=Bearer t\x01\x01") + "\r\n",
        "XCLIENT ADDR=192.0.2.9 NAME=spike.example HELO=x\r\n",
        "XCLIENT ADDR=[UNAVAILABLE]\r\n",
        "XFORWARD ADDR=198.51.100.7 PORT=25 IDENT=q1\r\n",
        "PROXY TCP4 192.0.2.5 192.0.2.6 4000 25\r\n",
        "PROXY UNKNOWN\r\n",
        "GET / HTTP/1.1\r\n",
        "\x00\xff\r\n",
        "\r\n",
        "EHLO " + "x" * 600 + "\r\n",
        "MAIL FROM:<" + "a" * 70 + "@b.example>\r\n",
    )
)
#: PROXY v2: its signature, and a whole header (PROXY, TCP over IPv4, 12 address bytes).
_PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_V2 = (
    _PROXY_V2_SIGNATURE
    + bytes((0x21, 0x11, 0, 12, 192, 0, 2, 5, 192, 0, 2, 6))
    + (4000).to_bytes(2, "big")
    + (25).to_bytes(2, "big")
)


class Deliberate(Exception):
    """
    The error a handler raises on purpose: logged as an unexpected failure, and the only
    one that may be.
    """


@implementer(IProtocol)
class _PausingReader:
    """
    Reads a message with C{deliverBody}, pausing its producer after the first chunk until
    the example resumes it.
    """

    def __init__(self, resumers: list[Callable[[], None]]) -> None:
        self.resumers = resumers
        self.done: Deferred[None] = Deferred()
        self.transport: Any = None
        self._paused = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
            self.resumers.append(self.transport.resumeProducing)

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.callback(None)


@implementer(
    IConnectHandler,
    IAuthHandler,
    IMailFromHandler,
    IRcptToHandler,
    IDataHandler,
    ICloseHandler,
)
class Chaos:
    """
    A handler of every hook whose answers, and ways of reading messages, are drawn from
    the example's lists in turn (once its answers are used up, it accepts).
    """

    def __init__(self, answers: list[str], readings: list[str]) -> None:
        self.answers = answers
        self.readings = readings
        self._answer = 0
        self._reading = 0
        #: Late answers not given yet, with the outcome each will get when the example
        #: gives it.
        self.pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []
        #: What resumes the streams paused by data handlers.
        self.resumers: list[Callable[[], None]] = []
        #: Deferreds that let late readers read.
        self.gates: list[Deferred[None]] = []
        #: The late answers of close handlers.
        self.closeAnswers: list[Deferred[Any]] = []
        #: How many messages the data handler accepted.
        self.acceptedMessages = 0

    def _next(self) -> str:
        # The drawn answers first, then acceptance: later transactions get through.
        answer = self.answers[self._answer] if self._answer < len(self.answers) else "accept"
        self._answer += 1
        return answer

    def _decide(self, value: Callable[[], Any]) -> Any:
        how = self._next()
        if how == "accept":
            return value()
        if how == "refuse":
            raise SMTPError(550, "refused by the example")
        if how == "temporary":
            raise SMTPError(451, "later, says the example")
        if how == "close":
            raise SMTPError(421, "closing, says the example")
        if how == "fail":
            raise Deliberate(how)
        if how == "later":
            answer: Deferred[Any] = Deferred()
            self.pending.append((answer, value))
            return answer

        async def soon() -> Any:
            return value()

        return soon()

    def onConnect(self, session: Session) -> object:
        return self._decide(lambda: None)

    def onAuth(self, auth: AuthRequest, session: Session) -> object:
        return self._decide(lambda: auth.username if auth.password != "wrong" else None)

    def onMailFrom(self, address: Address, session: Session) -> object:
        return self._decide(lambda: None)

    def onRcptTo(self, address: Address, session: Session) -> object:
        return self._decide(lambda: None)

    def onData(self, stream: IMessageStream, session: Session) -> object:
        reading = self.readings[self._reading % len(self.readings)]
        self._reading += 1
        lmtp = session.lmtp
        recipients = len(session.envelope.rcptTo)

        def verdict() -> Any:
            self.acceptedMessages += 1
            if lmtp and recipients > 1:
                return [None] + [SMTPError(550, "not this one")] * (recipients - 1)
            return None

        if reading == "none":
            # Answer without reading: the handler gets no more of the message.
            return self._decide(verdict)

        async def read() -> Any:
            if reading == "whole":
                await readMessage(stream)
            elif reading == "late":
                gate: Deferred[None] = Deferred()
                self.gates.append(gate)
                await gate
                await readMessage(stream)
            else:
                reader = _PausingReader(self.resumers)
                stream.deliverBody(reader)
                await reader.done
            return await _settled(self._decide(verdict))

        return read()

    def onClose(self, session: Session) -> object:
        how = self._next()
        if how == "fail":
            raise Deliberate(how)
        if how == "later":
            # Its answer is ignored, an error logged: a late refusal is an error too.
            answer: Deferred[Any] = Deferred()
            self.pending.append((answer, lambda: None))
            self.closeAnswers.append(answer)
            return answer
        return None

    def giveOne(self, outcome: str) -> None:
        """
        Give the oldest late answer: as decided, or as an error.
        """
        if not self.pending:
            return
        answer, value = self.pending.pop(0)
        if outcome == "refuse" and answer not in self.closeAnswers:
            answer.errback(SMTPError(554, "refused late"))
        elif outcome != "accept":
            answer.errback(Deliberate("late"))
        else:
            answer.callback(value())

    def settleAll(self) -> None:
        """
        Give every late answer, open every gate, resume every stream.
        """
        for _ in range(1000):
            if self.pending:
                self.giveOne("accept")
            elif self.gates:
                self.gates.pop(0).callback(None)
            elif self.resumers:
                self.resumers.pop(0)()
            else:
                return
        raise AssertionError("the handlers kept asking for more")


async def _settled(result: Any) -> Any:
    # A handler's answer, once it is there.
    return await result if inspect.isawaitable(result) else result


#: A transaction as a client that follows the protocol sends it: hello, perhaps AUTH,
#: MAIL, recipients, then the message after DATA or in BDAT chunks of a given size, to
#: its end or not (the client stops before the end of the data, or the last chunk).
TRANSACTIONS = st.tuples(
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=3),
    st.one_of(st.binary(max_size=300), st.sampled_from(VOCABULARY)),
    st.integers(min_value=1, max_value=120),
    st.booleans(),
)


def transaction(
    lmtp: bool,
    chunked: bool,
    auth: bool,
    recipients: int,
    body: bytes,
    chunkSize: int,
    finished: bool,
) -> list[bytes]:
    """
    The writes of one transaction (see L{TRANSACTIONS}), one command or chunk each.
    """
    writes = [b"LHLO client.example\r\n" if lmtp else b"EHLO client.example\r\n"]
    if auth:
        writes.append(authPlain("alice", "secret").encode() + b"\r\n")
    writes.append(f"MAIL FROM:<{SENDER}>\r\n".encode())
    writes += [f"RCPT TO:<r{i}@d.example>\r\n".encode() for i in range(recipients)]
    if not chunked:
        data = stuff(body)
        return [*writes, b"DATA\r\n", data if finished else data.removesuffix(b".\r\n")]
    chunks = [body[i : i + chunkSize] for i in range(0, len(body), chunkSize)] or [b""]
    for i, chunk in enumerate(chunks):
        last = b" LAST" if i == len(chunks) - 1 else b""
        writes.append(b"BDAT %d%s\r\n%s" % (len(chunk), last, chunk))
    return writes if finished else writes[:-1]


#: One step of the client, or of the world around the connection.
STEPS = st.one_of(
    # (Three times: a third of the steps are whole transactions.)
    *[st.tuples(st.just("transaction"), TRANSACTIONS)] * 3,
    st.tuples(st.just("write"), st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=4)),
    st.tuples(st.just("bytes"), st.binary(max_size=40)),
    st.tuples(st.just("advance"), st.sampled_from((0.0, 0.3, 1.0, 2.5, 6.0, 61.0))),
    st.tuples(st.just("answer"), st.sampled_from(("accept", "refuse", "fail"))),
    st.tuples(st.just("gate"), st.just(None)),
    st.tuples(st.just("resume"), st.just(None)),
    st.tuples(st.just("proxy"), st.sampled_from((_PROXY_V2, _PROXY_V2_SIGNATURE))),
)

#: The option sets of the TLS examples (C{implicit}: TLS from the first byte).
TLS_OPTION_SETS: tuple[dict[str, Any], ...] = (
    {},
    {"implicit": True},
    {"lmtp": True},
    {"requestCert": True, "rejectUnauthorized": False},
    {"requestCert": True, "rejectUnauthorized": True, "implicit": True},
    {"needsUpgrade": True, "forbidUnauthPipelining": True},
    {"authOptional": False, "authMethods": ("PLAIN", "LOGIN", "CRAM-MD5")},
)
#: The steps of the TLS examples: those of L{STEPS}, an upgrade (EHLO, STARTTLS, the
#: handshake, EHLO), STARTTLS and the handshake whatever the reply (perhaps with more
#: after STARTTLS in the same write), and bytes written under the TLS layer.
TLS_STEPS = st.one_of(
    STEPS,
    # (Twice: an upgrade as a client that follows the protocol makes it.)
    *[st.tuples(st.just("upgrade"), st.just(None))] * 2,
    st.tuples(st.just("starttls"), st.sampled_from((b"", *VOCABULARY[:8]))),
    st.tuples(st.just("starttls"), st.just(b"")),
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=40)),
)
#: The server's certificate, and the client's (both from the test authority).
_SERVER = issue("mx.test")
_CLIENT = issue("client.example", client=True)


@dataclass(frozen=True)
class Script:
    """
    What an example draws besides its options: the handlers' answers and ways of reading,
    the steps, each with where to split its writes, and whether the client goes away at
    the end (else the timeouts end the connection).
    """

    answers: list[str]
    readings: list[str]
    steps: list[tuple[tuple[str, Any], int]]
    goesAway: bool


def scripts(steps: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[Script]:
    """
    Scripts whose steps are drawn from C{steps}.
    """
    return st.builds(
        Script,
        st.lists(st.sampled_from(ANSWERS), max_size=8),
        st.lists(st.sampled_from(READINGS), min_size=1, max_size=3),
        st.lists(st.tuples(steps, st.integers(min_value=0, max_value=200)), max_size=14),
        st.booleans(),
    )


class WholeProtocolFuzzTests(SynchronousTestCase):
    """
    Random conversations with the whole protocol: no traceback, no malformed reply, no
    connection or timer left behind.
    """

    def setUp(self) -> None:
        self.log = LogCapture(self)
        self.looked = 0

    def unexpectedFailures(self) -> list[LogEvent]:
        """
        The failures logged since the last call but the handlers' deliberate ones.
        """
        events, self.looked = self.log.events[self.looked :], len(self.log.events)
        return [
            event
            for event in events
            if event.get("log_failure") is not None and not event["log_failure"].check(Deliberate)
        ]

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(OPTION_SETS), scripts(STEPS))
    def test_anyConversation(self, options: dict[str, Any], script: Script) -> None:
        """
        Whatever the client sends, however it is split, whatever the handlers answer and
        whenever: only well-formed replies, no failure logged but the handlers' own, no
        250 for a message the data handler did not accept, and at the end no connection,
        no timer, and a server that closes at once.
        """
        handler = Chaos(script.answers, script.readings)
        server = makeServer([handler], **options)
        self.converse(_Plain(server), handler, script)

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(TLS_OPTION_SETS), scripts(TLS_STEPS))
    def test_anyConversationWithTLS(self, options: dict[str, Any], script: Script) -> None:
        """
        The same with real TLS in memory: STARTTLS (the handshake begun whatever the
        server answered, or with commands sent along with STARTTLS), implicit TLS, client
        certificates, and bytes written under the TLS layer at any point.
        """
        handler = Chaos(script.answers, script.readings)
        options = dict(options)
        implicit = bool(options.pop("implicit", False))
        server = makeServer(
            [handler], cert=_SERVER.cert, key=_SERVER.key, ca=authority().cert, **options
        )
        self.converse(_Encrypted(server, implicit), handler, script)

    def converse(self, client: _Plain | _Encrypted, handler: Chaos, script: Script) -> None:
        """
        Take the steps of C{script} with C{client}, checking after each what the server
        sent and logged, then end the connection every way there is and check that
        nothing is left of it.
        """
        server = client.server
        clock = client.clock
        firstEvent = len(self.log.events)
        sent = bytearray()
        seen = 0

        def check() -> None:
            nonlocal seen
            sent.extend(client.output())
            # Whole reply lines, and at most an incomplete one at the end.
            end = sent.rfind(b"\r\n") + 2 if b"\r\n" in sent else 0
            self.assertEqual(malformedReplyLines(bytes(sent[seen:end])), [], bytes(sent))
            seen = end
            self.assertEqual(self.unexpectedFailures(), [])

        def write(data: bytes, split: int) -> None:
            cut = split % (len(data) + 1)
            for piece in (data[:cut], data[cut:]):
                if piece:
                    client.write(piece)
                check()

        def timersLeft() -> list[Any]:
            # The connection's timers still to run once it is gone.
            if not client.lost:
                return []
            return [
                c
                for c in clock.getDelayedCalls()
                if getattr(getattr(c, "func", None), "__self__", None) is client.protocol
            ]

        check()
        lmtp = server.options.lmtp
        for (kind, value), split in script.steps:
            if kind == "transaction":
                for data in transaction(lmtp, *value):
                    write(data, split)
            elif kind == "write":
                write(b"".join(value), split)
            elif kind in ("bytes", "proxy"):
                write(value, split)
            elif kind == "raw":
                client.raw(value)
            elif kind == "upgrade":
                write(b"EHLO client.example\r\n", split)
                write(b"STARTTLS\r\n", split)
                client.startTLS()
                write(b"EHLO client.example\r\n", split)
            elif kind == "starttls":
                write(b"STARTTLS\r\n" + value, split)
                client.startTLS()
            elif kind == "advance":
                clock.advance(value)
            elif kind == "answer":
                handler.giveOne(value)
            elif kind == "gate" and handler.gates:
                handler.gates.pop(0).callback(None)
            elif kind == "resume" and handler.resumers:
                handler.resumers.pop(0)()
            check()
            self.assertEqual(timersLeft(), [])

        if script.goesAway:
            client.disconnect()
            check()
            self.assertEqual(timersLeft(), [])
        handler.settleAll()
        check()
        # Whatever is left: the timeouts close it.
        for _ in range(20):
            clock.advance(120)
            handler.settleAll()
            check()
            self.assertEqual(timersLeft(), [])
        client.disconnect()
        handler.settleAll()
        check()
        self.assertTrue(client.lost)
        self.assertEqual(timersLeft(), [])
        clock.advance(1000)
        check()
        self.assertEqual(server.connectionCount, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        closed = server.close()
        self.assertTrue(closed.called)
        self.assertEqual(clock.getDelayedCalls(), [])
        # A Deferred left failed with nobody to handle it logs its failure when collected:
        # in the example that left it.
        gc.collect(1)
        check()
        # Never a 250 for a message the data handler did not accept.
        queued = [
            event
            for event in self.log.events[firstEvent:]
            if event.get("event") == "transaction" and event["result"].startswith("250")
        ]
        self.assertLessEqual(len(queued), handler.acceptedMessages)
        self.flushLoggedErrors(Deliberate)


class _Plain:
    """
    A client whose bytes go straight into the protocol (L{MemoryClient}'s way): no TLS.
    """

    def __init__(self, server: SMTPServer) -> None:
        self.server = server
        self._client = MemoryClient(server)
        self.clock = self._client.clock
        self.protocol = self._client.protocol

    @property
    def lost(self) -> bool:
        """
        Whether the connection is gone (and the server told).
        """
        return self._client.closed

    def write(self, data: bytes) -> None:
        if not self._client.closed:
            self.protocol.dataReceived(data)

    raw = write

    def startTLS(self) -> None:
        """
        Nothing: this client cannot.
        """

    def output(self) -> bytes:
        """
        What the server sent since the last call; once it closed the connection, the
        connection is reported lost, as a real transport would.
        """
        transport = self._client.transport
        data: bytes = transport.value()
        transport.clear()
        self._client.received()
        return data

    def disconnect(self) -> None:
        if not self._client.closed:
            self._client.disconnect()


class _Encrypted:
    """
    A client joined to the server through iosim, with real TLS (L{connectTLS}): it
    starts TLS when told, whatever the server said.
    """

    def __init__(self, server: SMTPServer, implicit: bool) -> None:
        self.server = server
        self._connection = connectTLS(server, implicit=implicit, creator=ClientTLS("mx.test"))
        self.clock = cast(Clock, server.reactor)
        self.protocol = self._connection.protocol

    @property
    def lost(self) -> bool:
        """
        Whether the connection is gone, and both ends told.
        """
        return bool(self._connection.client.lost and self._connection.serverTransport.disconnected)

    def write(self, data: bytes) -> None:
        if not self._connection.clientTransport.disconnecting:
            self._connection.clientTransport.write(data)
        self._connection.pump.flush()

    def raw(self, data: bytes) -> None:
        """
        Write C{data} under the TLS layer, if there is one: records that are not.
        """
        if not self._connection.clientTransport.disconnecting:
            FakeTransport.write(self._connection.clientTransport, data)
        self._connection.pump.flush()

    def startTLS(self) -> None:
        transport = self._connection.clientTransport
        if transport.tlsProtocol is None and not transport.disconnecting:
            self._connection.startTLS(ClientTLS("mx.test", _CLIENT))

    def output(self) -> bytes:
        self._connection.pump.flush()
        client = self._connection.client
        data: bytes = client.data
        client.data = b""
        return data

    def disconnect(self) -> None:
        self._connection.clientTransport.loseConnection()
        self._connection.pump.flush()
