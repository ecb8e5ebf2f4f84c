"""
Tests for the forwarding delivery: what the downstream server receives, and that the client
hears what the downstream said.

Most tests run two smtpsvc servers in memory on one fake clock: the front one, with
L{ForwardDelivery}, talked to with L{MemoryClient}; and the downstream one, reached through
an in-memory endpoint (L{MemoryNetwork}) whose transports buffer, pause their writers'
producers when full and respect a reader's pause, as sockets do.  A scripted downstream
(L{ScriptedServer}) sends replies no smtpsvc would: odd characters, garbage, silence; a
property test (L{AnyDownstreamTests}) draws such downstreams and clients at random.  The
last tests use the real reactor over loopback: TLS to the downstream, and the documentation's
example.
"""

from __future__ import annotations

import gc
import hashlib
import io
import smtplib
import sys
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import Any, TypeAlias

from hypothesis import example, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IOpenSSLClientConnectionCreator,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from smtpsvc import (
    Address,
    IDataHandler,
    IMessageStream,
    IRcptToHandler,
    MessageDone,
    Session,
    SMTPError,
    SMTPServer,
    _client,
    readMessage,
)
from smtpsvc._core._data import DataDecoder, DotStuffer, stuff
from smtpsvc._core._relay import (
    MIXED_RESULTS,
    NEEDS_REQUIRETLS,
    DownstreamReply,
    ReplyParser,
    ReplySyntaxError,
    combineReplies,
    encodeXtext,
    mailCommand,
    makeReply,
    parseExtensions,
)
from smtpsvc._core._session import Envelope
from smtpsvc._core._trace import receivedHeader
from smtpsvc._stream import HIGH_WATER
from smtpsvc.handlers import forward
from smtpsvc.handlers.forward import ForwardDelivery
from smtpsvc.interfaces import ICloseHandler, IMailFromHandler
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

from .e2e_support import (
    EXAMPLES,
    LISTEN,
    LOCALHOST,
    LogCapture,
    loadExample,
    startExample,
    startServer,
    theReactor,
)
from .memorytls import ClientTLS, Connection, authority, connectTLS, issue
from .protocol_support import DataGate, malformedReplyLines

FRONT = "relay.example"
DOWNSTREAM = "mx.downstream.example"
#: The forwarder's timeout in the in-memory tests, in seconds of the fake clock.
TIMEOUT = 5.0
MESSAGE = b"From: <alice@example.org>\r\nSubject: Hello\r\n\r\nHello, Bob.\r\n"


def codes(replies: Iterable[ServerReply]) -> list[int]:
    """
    The codes of C{replies}.
    """
    return [reply.code for reply in replies]


# -- an in-memory network ---------------------------------------------------------------------

#: Bytes a memory transport holds before it pauses its writer's producer; below LOW it
#: resumes it.  Like a socket buffer, but small, so that pausing happens in the tests.
PIPE_HIGH = 64 * 1024
PIPE_LOW = 16 * 1024
#: The most one dataReceived call is given.
PIPE_CHUNK = 32 * 1024


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """
    One end of an in-memory connection.  Writes wait in a buffer until the network pumps
    them to the other end, and only while that end reads; a streaming producer registered
    here is paused while the buffer is over L{PIPE_HIGH}.
    """

    def __init__(
        self, network: MemoryNetwork, protocol: IProtocol, host: IAddress, peer: IAddress
    ) -> None:
        self.network = network
        self.protocol = protocol
        self.other: MemoryTransport | None = None
        self.buffer: deque[bytes] = deque()
        self.buffered = 0
        self.producer: IPushProducer | None = None
        self.producerPaused = False
        self.readPaused = False
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        self._host = host
        self._peer = peer

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.disconnected or not data:
            return
        self.buffer.append(data)
        self.buffered += len(data)
        self.network.written += len(data)
        if self.producer is not None and not self.producerPaused and self.buffered > PIPE_HIGH:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.buffer.clear()
        self.buffered = 0
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        assert streaming, "only push producers here"
        self.producer = producer = IPushProducer(producer)
        self.producerPaused = False
        if self.buffered > PIPE_HIGH:
            self.producerPaused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producerPaused = False

    # The protocol pauses and resumes its own reading.

    def pauseProducing(self) -> None:
        self.readPaused = True

    def resumeProducing(self) -> None:
        self.readPaused = False

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- moved by the network -------------------------------------------------------------

    def pumpOnce(self) -> bool:
        """
        Give the other end up to one chunk of what was written here; True if anything moved
        or closed.
        """
        other = self.other
        assert other is not None
        if self.disconnected:
            return False
        if self.buffer and not other.readPaused and not other.disconnected:
            data = b"".join(self.buffer)
            self.buffer.clear()
            piece, rest = data[:PIPE_CHUNK], data[PIPE_CHUNK:]
            if rest:
                self.buffer.append(rest)
            self.buffered = len(rest)
            other.protocol.dataReceived(piece)
            if self.producer is not None and self.producerPaused and self.buffered < PIPE_LOW:
                self.producerPaused = False
                self.producer.resumeProducing()
            return True
        if self.disconnecting and (not self.buffer or self.aborted):
            self.network.closeBoth(self, other)
            return True
        return False

    def lose(self, reason: Failure) -> None:
        self.disconnected = True
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        self.protocol.connectionLost(reason)


class MemoryNetwork:
    """
    Connections in memory, on one fake clock.

    @ivar written: bytes written on all connections, to check that something happened.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ends: list[MemoryTransport] = []
        self.written = 0
        self._ports = iter(range(40000, 50000))

    def connect(
        self,
        client: IProtocol,
        server: IProtocol,
        unixPath: str | None = None,
        host: str = "127.0.0.1",
    ) -> tuple[MemoryTransport, ...]:
        """
        Connect two protocols: the server's end first, as a listening port would.  Over
        TCP to C{host}, or with C{unixPath}, over the Unix socket of that name.
        """
        serverAddress: IAddress
        clientAddress: IAddress
        if unixPath is None:
            serverAddress = IPv4Address("TCP", host, 25)
            clientAddress = IPv4Address("TCP", "127.0.0.1", next(self._ports))
        else:
            # What a connected Unix socket reports: the path on the listening side only.
            serverAddress, clientAddress = UNIXAddress(unixPath), UNIXAddress(None)
        serverEnd = MemoryTransport(self, server, serverAddress, clientAddress)
        clientEnd = MemoryTransport(self, client, clientAddress, serverAddress)
        serverEnd.other, clientEnd.other = clientEnd, serverEnd
        self.ends += [serverEnd, clientEnd]
        server.makeConnection(serverEnd)
        client.makeConnection(clientEnd)
        return clientEnd, serverEnd

    def closeBoth(self, first: MemoryTransport, second: MemoryTransport) -> None:
        abortive = first.aborted or second.aborted
        reason = Failure(ConnectionLost() if abortive else ConnectionDone())
        for end in (first, second):
            end.disconnecting = True
            end.buffer.clear()
            end.buffered = 0
        for end in (first, second):
            if not end.disconnected:
                end.lose(reason)

    def pump(self) -> bool:
        """
        Move one chunk on every connection that has something to move.
        """
        moved = False
        for end in list(self.ends):
            moved = end.pumpOnce() or moved
        self.ends = [end for end in self.ends if not end.disconnected]
        return moved

    def run(self, limit: int = 100_000) -> None:
        """
        Pump and run the clock's due calls until nothing moves.
        """
        for _ in range(limit):
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            if due:
                self.clock.advance(0)
            if not self.pump() and not due:
                return
        raise AssertionError("the network did not settle")


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    A client endpoint that connects in memory to a server factory, or fails; over what
    looks like TCP to C{host}, or like the Unix socket C{unixPath}.

    @ivar attempts: how many times it was asked to connect.
    @ivar clients: the client ends of the connections made.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        server: Callable[[], IProtocolFactory] | None,
        behaviour: str = "connect",
        unixPath: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.network = network
        self.server = server
        self.behaviour = behaviour
        self.unixPath = unixPath
        self.host = host
        self.attempts = 0
        self.clients: list[MemoryTransport] = []
        self.servers: list[MemoryTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.behaviour == "hang":
            return Deferred(lambda d: d.errback(CancelledError()))
        if self.behaviour == "refuse" or self.server is None:
            return fail(ConnectionRefusedError())
        address: IAddress = (
            IPv4Address("TCP", self.host, 25)
            if self.unixPath is None
            else UNIXAddress(self.unixPath)
        )
        client = factory.buildProtocol(address)
        server = self.server().buildProtocol(address)
        assert client is not None and server is not None
        clientEnd, serverEnd = self.network.connect(client, server, self.unixPath, self.host)
        self.clients.append(clientEnd)
        self.servers.append(serverEnd)
        return succeed(client)


#: A scripted downstream's answers: for each verb, the bytes to send, or a list of them
#: used up in order (its last then repeated), where L{None} sends nothing.
Script: TypeAlias = dict[str, bytes | list[bytes | None] | None]


class ScriptedServer(LineReceiver):
    """
    A downstream that answers from a script: each verb to the raw bytes to send (a list is
    used up in order, its last item then repeated; L{None} sends nothing), C{"."} for the
    end of the message.

    @ivar commands: every command line received.
    @ivar messages: every message received, still dot-stuffed.
    """

    DEFAULTS: dict[str, bytes] = {
        "GREETING": b"220 scripted.example ESMTP\r\n",
        "EHLO": b"250-scripted.example\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
        "LHLO": b"250-scripted.example\r\n250 ENHANCEDSTATUSCODES\r\n",
        "HELO": b"250 scripted.example\r\n",
        "MAIL": b"250 2.1.0 Ok\r\n",
        "RCPT": b"250 2.1.5 Ok\r\n",
        "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
        ".": b"250 2.0.0 Ok: queued as ABC123\r\n",
        "RSET": b"250 2.0.0 Ok\r\n",
        "QUIT": b"221 2.0.0 Bye\r\n",
    }

    def __init__(self, script: Script) -> None:
        self.script = dict(script)
        self.commands: list[str] = []
        self.messages: list[bytes] = []
        self._data: list[bytes] | None = None
        self.lost = False

    def _reply(self, verb: str) -> bytes | None:
        entry = self.script.get(verb, self.DEFAULTS.get(verb, b"502 5.5.1 Unknown\r\n"))
        if isinstance(entry, list):
            entry = entry.pop(0) if len(entry) > 1 else entry[0]
        if entry is not None:
            assert self.transport is not None
            self.transport.write(entry)
        return entry

    def connectionMade(self) -> None:
        self._reply("GREETING")

    def lineReceived(self, line: bytes) -> None:
        if self._data is not None:
            if line == b".":
                self.messages.append(b"".join(self._data))
                self._data = None
                self._reply(".")
            else:
                self._data.append(line + b"\r\n")
            return
        text = line.decode("utf-8", "replace")
        self.commands.append(text)
        verb = text.split(" ")[0].split(":")[0].upper()
        sent = self._reply(verb)
        if verb == "DATA" and sent is not None and sent.startswith(b"354"):
            self._data = []
            early = self.script.get("EARLY")
            if isinstance(early, bytes):
                # A refusal before the end of the message, and hang up.
                assert self.transport is not None
                self.transport.write(early)
                self.transport.loseConnection()
        if verb == "QUIT":
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


@implementer(IProtocolFactory)
class ScriptedFactory:
    """
    Makes L{ScriptedServer}s that answer from C{script}, and keeps them.

    @ivar built: every server made, in order.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.built: list[ScriptedServer] = []

    def itself(self) -> ScriptedFactory:
        """
        This factory (what L{ForwardTestCase.front} takes: a callable giving one).
        """
        return self

    def buildProtocol(self, addr: IAddress) -> ScriptedServer:
        protocol = ScriptedServer(self.script)
        self.built.append(protocol)
        return protocol

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


# -- handlers for the downstream --------------------------------------------------------------


@implementer(IRcptToHandler)
class RefuseSome:
    """
    Refuses the recipients it is given, each with its error.
    """

    def __init__(self, refusals: dict[str, SMTPError]) -> None:
        self.refusals = refusals

    def onRcptTo(self, address: Address, session: Session) -> None:
        error = self.refusals.get(address.address)
        if error is not None:
            raise error


@implementer(IDataHandler)
class PerRecipient:
    """
    An LMTP data handler that refuses the message for the recipients it is given.
    """

    def __init__(self, refusals: dict[str, SMTPError]) -> None:
        self.refusals = refusals

    async def onData(self, stream: IMessageStream, session: Session) -> list[SMTPError | None]:
        await readMessage(stream)
        return [self.refusals.get(r.address) for r in session.envelope.rcptTo]


class _Digester(Protocol):
    def __init__(self, done: Deferred[None], handler: DigestHandler) -> None:
        self.done = done
        self.handler = handler
        self.digest = hashlib.sha256()
        self.size = 0
        self.prefix = b""

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)
        if len(self.prefix) < 4096:
            self.prefix += data[: 4096 - len(self.prefix)]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(MessageDone):
            self.handler.messages.append((self.prefix, self.size, self.digest.hexdigest()))
            self.done.callback(None)
        else:
            self.done.errback(reason)


@implementer(IDataHandler)
class DigestHandler:
    """
    Keeps only the start, the size and the SHA-256 of each message.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, int, str]] = []

    def onData(self, stream: IMessageStream, session: Session) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        stream.deliverBody(_Digester(done, self))
        return done


@implementer(IDataHandler)
class RefuseMessages:
    """
    A data handler (a content filter) that refuses every message once it has read it.
    """

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        await readMessage(stream)
        raise SMTPError(554, "5.7.1 Spam")


# -- the harness ------------------------------------------------------------------------------


class ForwardTestCase(SynchronousTestCase):
    """
    A front server with L{ForwardDelivery} and a downstream, in memory on one clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.recorder = RecordingHandler()

    def downstream(
        self, handlers: Sequence[object] = (), *, record: bool = True, **options: Any
    ) -> SMTPServer:
        """
        The downstream server: our own, with C{handlers} and then (if C{record}) the
        recorder.
        """
        options.setdefault("name", DOWNSTREAM)
        options.setdefault("authOptional", True)
        options.setdefault("earlyTalkerDelay", 0)
        options.setdefault("hideENHANCEDSTATUSCODES", False)
        options.setdefault("hideDSN", False)
        recorder = [self.recorder] if record else []
        return SMTPServer([*handlers, *recorder], reactor=self.clock, **options)

    def front(
        self,
        downstream: Callable[[], IProtocolFactory] | None,
        *,
        lmtp: bool = False,
        frontLMTP: bool = False,
        behaviour: str = "connect",
        before: Sequence[object] = (),
        after: Sequence[object] = (),
        description: str | None = None,
        **options: Any,
    ) -> MemoryClient:
        """
        The front server, forwarding to C{downstream}, and a client that said hello to it.
        A C{handlerTimeout} among C{options} is the forwarding's as well as the server's.
        """
        self.endpoint = MemoryEndpoint(self.network, downstream, behaviour)
        shared = {k: v for k, v in options.items() if k == "handlerTimeout"}
        if description is not None:
            shared["description"] = description
        self.forward = ForwardDelivery(
            self.endpoint,
            lmtp=lmtp,
            reactor=self.clock,
            serverName=FRONT,
            timeout=TIMEOUT,
            **shared,
        )
        options.setdefault("name", FRONT)
        options.setdefault("authOptional", True)
        options.setdefault("hideENHANCEDSTATUSCODES", False)
        options.setdefault("hideDSN", False)
        server = SMTPServer(
            [*before, self.forward, *after], reactor=self.clock, lmtp=frontLMTP, **options
        )
        self.client = MemoryClient(server)
        hello = "LHLO" if frontLMTP else "EHLO"
        self.assertEqual(codes(self.send(f"{hello} client.example")), [250])
        return self.client

    def write(self, data: bytes) -> list[ServerReply]:
        """
        Send raw bytes, let both servers work, and return the front's replies.
        """
        self.client.protocol.dataReceived(data)
        self.network.run()
        return self.client.received()

    def send(self, *commands: str) -> list[ServerReply]:
        """
        Send command lines, one at a time, and return every reply.
        """
        replies: list[ServerReply] = []
        for command in commands:
            replies += self.write(command.encode("utf-8") + b"\r\n")
        return replies

    def sendmail(
        self, sender: str, recipients: Sequence[str], message: bytes = MESSAGE
    ) -> list[ServerReply]:
        """
        One transaction; every reply, the final ones last.
        """
        replies = self.send(f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients))
        replies += self.send("DATA")
        if replies[-1].code == 354:
            replies += self.write(stuff(message))
        return replies

    def frontOverTLS(self, endpoint: IStreamClientEndpoint, *, lmtp: bool = False) -> Connection:
        """
        A front server (with REQUIRETLS shown) relaying to C{endpoint} (in LMTP if
        C{lmtp}), and a client connected through real TLS transports that completed
        STARTTLS with it and said EHLO again.
        """
        forward = ForwardDelivery(
            endpoint, lmtp=lmtp, reactor=self.clock, serverName=FRONT, timeout=TIMEOUT
        )
        pair = issue(FRONT)
        server = SMTPServer(
            [forward],
            reactor=self.clock,
            name=FRONT,
            key=pair.key,
            cert=pair.cert,
            authOptional=True,
            earlyTalkerDelay=0,
            hideENHANCEDSTATUSCODES=False,
            hideREQUIRETLS=False,
        )
        connection = connectTLS(server)
        self.assertEqual(codes(connection.client.replies()), [220])
        replies = self.exchange(connection, "EHLO client.example", "STARTTLS")
        self.assertEqual(codes(replies), [250, 220])
        connection.startTLS(ClientTLS())
        self.assertEqual(codes(self.exchange(connection, "EHLO client.example")), [250])
        self.assertTrue(connection.session.secure)
        return connection

    def exchange(self, connection: Connection, *lines: str) -> list[ServerReply]:
        """
        Send C{lines} over a L{frontOverTLS} connection, let the front and the
        downstream work, and return the front's replies.
        """
        connection.clientTransport.write(b"".join(line.encode() + b"\r\n" for line in lines))
        for _ in range(20):
            connection.pump.flush()
            self.network.run()
        return connection.client.replies()

    def assertRelayed(self, data: bytes, message: bytes, frontProtocol: str = "ESMTP") -> None:
        """
        C{data} is C{message} with exactly one C{Received:} header of ours in front.
        """
        self.assertTrue(data.endswith(message), data)
        header = data[: len(data) - len(message)]
        self.assertTrue(header.startswith(b"Received: from client.example ("), header)
        self.assertIn(f"by {FRONT} (smtpsvc) with {frontProtocol} id ".encode(), header)
        lines = header.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertTrue(all(line.startswith(b"\t") for line in lines[1:-1]), header)
        self.assertNotIn(b"Return-Path", data[: len(header) + 200])


# -- relaying -----------------------------------------------------------------------------------


class RelayTests(ForwardTestCase):
    """
    Messages reach the downstream intact, and the client hears the downstream's answers.
    """

    def test_providesInterfaces(self) -> None:
        """
        ForwardDelivery provides the four handler interfaces it implements.
        """
        forward = ForwardDelivery(MemoryEndpoint(self.network, None), reactor=self.clock)
        for interface in (IMailFromHandler, IRcptToHandler, IDataHandler, ICloseHandler):
            self.assertTrue(verifyObject(interface, forward))

    def test_endpointString(self) -> None:
        """
        An endpoint may be given as a string.
        """
        forward = ForwardDelivery("tcp:host=127.0.0.1:port=2600", reactor=self.clock)
        self.assertTrue(IStreamClientEndpoint.providedBy(forward._endpoint))

    def test_messageArrivesWithReceivedHeader(self) -> None:
        """
        The downstream gets the message byte for byte, after one Received header of ours
        (and no Return-Path); the client's 250 carries the downstream's text.
        """
        self.front(self.downstream)
        replies = self.sendmail("alice@example.org", ["bob@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertIn("OK: message queued", replies[-1].text)
        [received] = self.recorder.messages
        self.assertRelayed(received.data, MESSAGE)
        self.assertIn(b"for <bob@example.net>;", received.data)
        self.assertEqual(received.envelope.mailFrom, Address("alice@example.org"))
        self.assertEqual([r.address for r in received.envelope.rcptTo], ["bob@example.net"])

    def test_receivedHeaderIsTheTraceOne(self) -> None:
        """
        The header is what receivedHeader makes for the client's session.
        """
        self.front(self.downstream)
        session = self.client.session
        expected = receivedHeader(
            session,
            serverName=FRONT,
            date="Thu, 01 Jan 1970 00:00:00 +0000",
            recipient="bob@example.net",
        )
        self.sendmail("alice@example.org", ["bob@example.net"])
        self.assertEqual(self.recorder.messages[0].data, expected + MESSAGE)

    def test_dotLinesSurvive(self) -> None:
        """
        Lines that are a dot, start with dots, or are the first line starting with a dot
        arrive as the client meant them: stuffing is undone at our end and redone for the
        downstream.
        """
        self.front(self.downstream)
        message = b".first\r\n.\r\n..\r\n.x\r\nmiddle\r\n...\r\n.\r\nlast\r\n"
        replies = self.sendmail("alice@example.org", ["bob@example.net"], message)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertRelayed(self.recorder.messages[0].data, message)

    def test_messageWithoutFinalLineEnding(self) -> None:
        """
        An empty message reaches the downstream as just our header.
        """
        self.front(self.downstream)
        replies = self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        replies += self.write(b".\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertRelayed(self.recorder.messages[0].data, b"")

    def test_refusalsRelayed(self) -> None:
        """
        The downstream's refusals of recipients reach the client with their codes, enhanced
        codes and text; the message goes to the recipients it accepted.
        """
        refuse = RefuseSome(
            {
                "nobody@example.net": SMTPError(550, "5.1.1 No such user here"),
                "later@example.net": SMTPError(450, "4.2.1 Mailbox busy, try later"),
            }
        )
        self.front(lambda: self.downstream([refuse]))
        replies = self.sendmail(
            "alice@example.org",
            ["nobody@example.net", "bob@example.net", "later@example.net"],
        )
        self.assertEqual(codes(replies), [250, 550, 250, 450, 354, 250])
        self.assertEqual(replies[1].lines, ("5.1.1 No such user here",))
        self.assertEqual(replies[3].lines, ("4.2.1 Mailbox busy, try later",))
        [received] = self.recorder.messages
        self.assertEqual([r.address for r in received.envelope.rcptTo], ["bob@example.net"])

    def test_senderRefusalRelayed(self) -> None:
        """
        A refused sender gets the downstream's refusal, and a next try works.
        """

        @implementer(IMailFromHandler)
        class Blocked:
            def onMailFrom(self, address: Address, session: Session) -> None:
                if address.address == "spam@example.org":
                    raise SMTPError(553, "5.7.1 Sender blocked")

        self.front(lambda: self.downstream([Blocked()]))
        replies = self.send("MAIL FROM:<spam@example.org>")
        self.assertEqual(replies, [ServerReply(553, ("5.7.1 Sender blocked",))])
        replies = self.sendmail("alice@example.org", ["bob@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(len(self.recorder.messages), 1)

    def test_finalRefusalRelayed(self) -> None:
        """
        A downstream that refuses the message after reading it: the client gets that
        refusal, not 250.
        """
        self.front(lambda: self.downstream([RefuseMessages()], record=False))
        replies = self.sendmail("alice@example.org", ["bob@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 554])
        self.assertEqual(replies[-1].lines, ("5.7.1 Spam",))

    def test_3461_08_parametersSurviveRelaying(self) -> None:
        """
        BODY, SMTPUTF8, SIZE, RET and ENVID, NOTIFY and ORCPT reach a downstream that
        supports them.
        """
        self.front(lambda: self.downstream(size=1_000_000))
        replies = self.send(
            "MAIL FROM:<ålice@example.org> BODY=8BITMIME SMTPUTF8 SIZE=1000 RET=HDRS "
            "ENVID=QQ+2B314159",
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+2B1@example.net",
        )
        self.assertEqual(codes(replies), [250, 250])
        replies = self.send("DATA") + self.write(stuff(MESSAGE))
        self.assertEqual(codes(replies), [354, 250])
        envelope = self.recorder.messages[0].envelope
        assert envelope.mailFrom is not None and envelope.dsn is not None
        self.assertEqual(envelope.mailFrom.address, "ålice@example.org")
        self.assertEqual(envelope.mailFrom.args["SIZE"], "1000")
        self.assertEqual(envelope.bodyType, "8bitmime")
        self.assertTrue(envelope.smtpUtf8)
        self.assertEqual((envelope.dsn.ret, envelope.dsn.envid), ("HDRS", "QQ+314159"))
        dsn = envelope.rcptTo[0].dsn
        assert dsn is not None
        self.assertEqual(dsn.notify, ("SUCCESS", "DELAY"))
        self.assertEqual(dsn.orcpt, "rfc822;bob+1@example.net")


class ScriptedTests(ForwardTestCase):
    """
    Against a downstream that says things smtpsvc would not.
    """

    def scripted(self, **script: bytes | list[bytes | None] | None) -> None:
        replies = {key.replace("END", "."): value for key, value in script.items()}
        self.factory = ScriptedFactory(replies)
        self.front(lambda: self.factory)

    @property
    def server(self) -> ScriptedServer:
        return self.factory.built[-1]

    def test_multiLineRefusalWithEnhancedCodes(self) -> None:
        """
        A multi-line refusal keeps its lines and its enhanced code.
        """
        self.scripted(
            RCPT=b"550-5.1.1 The email account that you tried to reach\r\n"
            b"550-5.1.1 does not exist.\r\n"
            b"550 5.1.1 Please check the address.\r\n"
        )
        replies = self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
        self.assertEqual(
            replies[1],
            ServerReply(
                550,
                (
                    "5.1.1 The email account that you tried to reach",
                    "5.1.1 does not exist.",
                    "5.1.1 Please check the address.",
                ),
            ),
        )

    def test_oddCharactersSanitised(self) -> None:
        """
        Control characters, a bare CR and UTF-8 in a downstream's reply become "?": they
        cannot break or forge a reply of ours.
        """
        self.scripted(RCPT=b"550 5.7.1 bad\x00char \x1b[31mred caf\xc3\xa9 \r250 forged\x7f\r\n")
        self.client.protocol.dataReceived(b"MAIL FROM:<a@example.org>\r\n")
        self.network.run()
        self.client.transport.clear()
        self.client.protocol.dataReceived(b"RCPT TO:<b@example.net>\r\n")
        self.network.run()
        raw = self.client.transport.value()
        self.assertEqual(raw, b"550 5.7.1 bad?char ?[31mred caf? ?250 forged?\r\n")

    def test_finalTextRelayed(self) -> None:
        """
        The client's 250 carries the downstream's text (its queue id) and its enhanced
        status code.
        """
        self.scripted()
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(replies[-1], ServerReply(250, ("2.0.0 Ok: queued as ABC123",)))
        self.assertEqual(self.server.messages[0].count(b"Received: "), 1)

    def test_parametersOnlyWhenAdvertised(self) -> None:
        """
        A downstream that advertises nothing gets no parameters; an ASCII sender with
        SMTPUTF8 is still relayed.
        """
        self.scripted(EHLO=b"250 scripted.example\r\n")
        replies = self.send(
            "MAIL FROM:<a@example.org> BODY=8BITMIME SMTPUTF8 SIZE=10 RET=FULL ENVID=x",
            "RCPT TO:<b@example.net> NOTIFY=NEVER",
        )
        self.assertEqual(codes(replies), [250, 250])
        self.assertEqual(
            self.server.commands[1:], ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>"]
        )

    def test_parametersWhenAdvertised(self) -> None:
        """
        The commands carry the parameters the downstream advertised, xtext-encoded.
        """
        self.scripted(
            EHLO=b"250-scripted.example\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
            b"250-SMTPUTF8\r\n250 DSN\r\n"
        )
        replies = self.send(
            "MAIL FROM:<a@example.org> BODY=8BITMIME SMTPUTF8 SIZE=10 RET=FULL ENVID=a+2Bb",
            "RCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=rfc822;b+3Dc@example.net",
        )
        self.assertEqual(codes(replies), [250, 250])
        self.assertEqual(
            self.server.commands[1:],
            [
                "MAIL FROM:<a@example.org> BODY=8BITMIME SMTPUTF8 SIZE=10 RET=FULL ENVID=a+2Bb",
                "RCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=rfc822;b+3Dc@example.net",
            ],
        )
        self.assertEqual(self.server.commands[0], f"EHLO {FRONT}")

    def test_utf8OriginalRecipient(self) -> None:
        """
        An ORCPT of address type utf-8 (RFC 6533) reaches the downstream with its
        non-ASCII characters as \\x{HEX}, which any downstream takes, not as xtext's
        +XX, which that type does not allow.
        """
        self.scripted(EHLO=b"250-scripted.example\r\n250-SMTPUTF8\r\n250 DSN\r\n")
        replies = self.send(
            "MAIL FROM:<a@example.org> SMTPUTF8",
            "RCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=utf-8;\u00fcb@example.net",
        )
        self.assertEqual(codes(replies), [250, 250])
        self.assertEqual(
            self.server.commands[2],
            "RCPT TO:<b@example.net> NOTIFY=FAILURE ORCPT=utf-8;\\x{FC}b@example.net",
        )

    def test_nonASCIIWithoutSMTPUTF8(self) -> None:
        """
        A non-ASCII sender or recipient that the downstream could not take is refused with
        550 5.6.7 at MAIL, 553 5.6.7 at RCPT (RFC 6531 section 3.5, standards 6531-04);
        an ASCII one goes on.
        """
        self.scripted()
        replies = self.send("MAIL FROM:<ålice@example.org> SMTPUTF8")
        self.assertEqual(codes(replies), [550])
        self.assertTrue(replies[0].text.startswith("5.6.7 "))
        replies = self.send(
            "MAIL FROM:<alice@example.org> SMTPUTF8",
            "RCPT TO:<bøb@example.net>",
            "RCPT TO:<bob@example.net>",
        )
        self.assertEqual(codes(replies), [250, 553, 250])
        self.assertTrue(replies[1].text.startswith("5.6.7 "))

    def test_demandForTLSOrAuthIsUnavailable(self) -> None:
        """
        A downstream that demands STARTTLS or AUTH of this server (RFC 3207, RFC 4954),
        at MAIL, RCPT or DATA, has the client told 451 4.4.1, not the permanent 530 or
        538 that would bounce its mail; each time one warning names the downstream and
        its reply, and the connection is dropped.
        """
        capture = LogCapture(self)
        cases: list[tuple[str, bytes, list[str]]] = [
            ("MAIL", b"530 5.7.0 Must issue a STARTTLS command first\r\n", []),
            ("MAIL", b"530 5.7.0 Authentication required\r\n", []),
            ("RCPT", b"530 Authentication required\r\n", ["RCPT TO:<b@example.net>"]),
            (
                "RCPT",
                b"538 5.7.11 Encryption required for requested authentication mechanism\r\n",
                ["RCPT TO:<b@example.net>"],
            ),
            (
                "DATA",
                b"530 5.7.0 Must issue a STARTTLS command first\r\n",
                ["RCPT TO:<b@example.net>", "DATA"],
            ),
            ("MAIL", b"554 5.7.11 TLS required\r\n", []),
        ]
        for verb, refusal, commands in cases:
            self.scripted(**{verb: refusal})
            replies = self.send("MAIL FROM:<a@example.org>", *commands)
            self.assertEqual(replies[-1], UnavailableTests.UNAVAILABLE, refusal)
            self.assertTrue(self.server.lost)
        reply = makeReply(530, ["5.7.0 Must issue a STARTTLS command first"])
        self.assertEqual(
            capture.matching("STARTTLS or AUTH")[0],
            "Downstream 127.0.0.1:25 unavailable at MAIL: it demands STARTTLS or AUTH, "
            f"which this server does not do: {reply}",
        )
        events = [e for e in capture.events if "unavailable at" in e.get("log_format", "")]
        self.assertEqual([e["step"] for e in events], [verb for verb, _, _ in cases])
        self.assertEqual(
            [e["why"].rsplit(": ", 1)[1] for e in events],
            [str(makeReply(int(r[:3]), [r[4:].decode().strip()])) for _, r, _ in cases],
        )

    def test_otherSecurityRefusalsPassed(self) -> None:
        """
        A refusal of the mail itself, even with a 5.7 code (a policy, an unauthorised
        sender), is passed to the client as it is.
        """
        self.scripted(MAIL=b"550 5.7.1 Sender rejected by policy\r\n")
        replies = self.send("MAIL FROM:<a@example.org>")
        self.assertEqual(replies, [ServerReply(550, ("5.7.1 Sender rejected by policy",))])

    def test_heloFallback(self) -> None:
        """
        A downstream that refuses EHLO is greeted with HELO.
        """
        self.scripted(EHLO=b"502 5.5.1 EHLO not implemented\r\n")
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(self.server.commands[:2], [f"EHLO {FRONT}", f"HELO {FRONT}"])

    def test_badGreeting(self) -> None:
        """
        A downstream that does not greet with 220 is unavailable.
        """
        self.scripted(GREETING=b"554 5.3.2 Not now\r\n")
        replies = self.send("MAIL FROM:<a@example.org>")
        self.assertEqual(replies, [ServerReply(451, ("4.4.1 Error: downstream unavailable",))])

    def test_garbage(self) -> None:
        """
        A downstream that answers with something that is not a reply is unavailable, and its
        connection is dropped.
        """
        self.scripted(MAIL=b"HTTP/1.1 400 Bad Request\r\n")
        replies = self.send("MAIL FROM:<a@example.org>")
        self.assertEqual(codes(replies), [451])
        self.assertTrue(self.server.lost)

    def test_silence(self) -> None:
        """
        A downstream that does not answer within the timeout is unavailable; the client's
        next try gets a new connection.
        """
        self.scripted(MAIL=[None, b"250 2.1.0 Ok\r\n"])
        self.client.protocol.dataReceived(b"MAIL FROM:<a@example.org>\r\n")
        self.network.run()
        self.assertEqual(self.client.received(), [])
        self.clock.advance(TIMEOUT)
        self.network.run()
        self.assertEqual(codes(self.client.received()), [451])
        self.assertTrue(self.factory.built[0].lost)
        self.assertEqual(codes(self.send("MAIL FROM:<a@example.org>")), [250])
        self.assertEqual(len(self.factory.built), 2)

    def test_stalledReader(self) -> None:
        """
        A downstream that stops reading the message for longer than the timeout is dropped
        and the client gets 451 after its message.
        """
        self.scripted()
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        server = self.endpoint.servers[0]
        server.pauseProducing()  # the downstream stops reading
        self.write(b"x" * 78 + b"\r\n")
        for _ in range(30):
            if self.client.transport.producerState == "paused":
                break
            self.write((b"y" * 998 + b"\r\n") * 100)
        self.assertEqual(self.client.transport.producerState, "paused")
        self.clock.advance(TIMEOUT)
        self.network.run()
        self.assertTrue(self.endpoint.clients[0].disconnected)
        self.assertEqual(self.client.transport.producerState, "producing")
        replies = self.write(b"end\r\n.\r\n")
        self.assertEqual(codes(replies), [451])
        self.assertEqual(self.server.messages, [])

    def slowDownstream(self, message: bytes) -> MemoryTransport:
        """
        A transaction whose message and final dot the client sends in one piece while the
        downstream reads nothing: the front writes it all towards the downstream, with
        the dot, at once.  Return the downstream's end of the connection (paused).
        """
        self.capture = LogCapture(self)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        downstream = self.endpoint.servers[0]
        downstream.pauseProducing()
        self.assertEqual(self.write(stuff(message)), [])
        return downstream

    def readOneChunk(self, downstream: MemoryTransport, after: float) -> None:
        """
        Let C{after} seconds pass, then let the downstream read one chunk (32 KiB).
        """
        self.clock.advance(after)
        downstream.resumeProducing()
        self.endpoint.clients[0].pumpOnce()
        downstream.pauseProducing()
        self.network.run()

    def test_slowReaderGetsTheReplyTimerAfterTheMessage(self) -> None:
        """
        The reply to the final dot is timed from when the message has gone out of the
        transport's buffer, not from when the dot was written to it: a downstream that
        takes 70 KB at 32 KiB every 2 s (never 5 s without reading) and answers at once
        gets its 250 to the client at 6 s, after the 5 s timeout.
        """
        self.scripted()
        downstream = self.slowDownstream(b"Subject: slow\r\n\r\n" + (b"z" * 998 + b"\r\n") * 70)
        for _ in range(3):
            self.assertEqual(self.client.received(), [])
            self.readOneChunk(downstream, 2)
        downstream.resumeProducing()
        self.network.run()
        self.assertEqual(codes(self.client.received()), [250])
        self.assertEqual(len(self.server.messages), 1)
        self.assertEqual(self.capture.matching("unavailable at"), [])

    def kernelHolds(self, unsent: list[int]) -> None:
        """
        Have the kernel hold C{unsent[0]} bytes of what was written to the downstream (as
        Linux's SIOCOUTQ would tell of a socket's): the test changes it as time goes.
        """
        self.patch(_client, "_unsentBytes", lambda transport: unsent[0])

    def test_replyTimerAfterTheKernelSentAll(self) -> None:
        """
        What the kernel holds of the message counts as not gone out yet: a downstream
        that takes 100 KB a second of the 600 KB the kernel holds after the final dot
        is not timed out for its reply until they are gone (6 s), and its reply 4 s
        later still reaches the client.
        """
        unsent = [600_000]
        self.kernelHolds(unsent)
        self.scripted(END=None)
        self.slowDownstream(MESSAGE)
        for _ in range(6):
            self.clock.advance(1)
            unsent[0] -= 100_000
            self.network.run()
        self.clock.advance(TIMEOUT - 1)
        self.network.run()
        self.assertEqual(self.client.received(), [])
        assert self.server.transport is not None
        self.server.transport.write(b"250 2.0.0 Ok: queued as SLOW\r\n")
        self.network.run()
        self.assertEqual(self.client.received(), [ServerReply(250, ("2.0.0 Ok: queued as SLOW",))])

    def test_kernelQueueStalled(self) -> None:
        """
        A downstream that takes nothing the kernel holds for the timeout is dropped as a
        downstream that stopped reading the message, and the client gets 451.
        """
        self.kernelHolds([600_000])
        self.scripted(END=None)
        self.slowDownstream(MESSAGE)
        self.clock.advance(TIMEOUT - 1)
        self.network.run()
        self.assertEqual(self.client.received(), [])
        self.clock.advance(1)
        self.network.run()
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.assertEqual(
            self.capture.matching("unavailable at"),
            [
                "Downstream 127.0.0.1:25 unavailable at end of data: the server did not read "
                f"the message for {TIMEOUT} s"
            ],
        )

    def test_slowSteadyReaderDuringTheMessage(self) -> None:
        """
        While the downstream connection's buffer is full, any of it the downstream
        takes counts as reading, however little: one whose kernel queue goes down 20 KB
        a second for 12 s (the transport's buffer, over its limit all along, never lets
        the message go on) is not dropped after the 5 s timeout (QA: it was); once it
        takes nothing for 5 s it is, and the client gets 451.
        """
        unsent = [600_000]
        self.kernelHolds(unsent)
        self.scripted()
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        self.endpoint.servers[0].pauseProducing()
        for _ in range(30):
            if self.client.transport.producerState == "paused":
                break
            self.write((b"y" * 998 + b"\r\n") * 100)
        self.assertEqual(self.client.transport.producerState, "paused")
        for _ in range(12):
            self.clock.advance(1)
            unsent[0] -= 20_000
            self.network.run()
        self.assertFalse(self.endpoint.clients[0].disconnected)
        # (The last decrease is seen at the next look, a second later.)
        for _ in range(int(TIMEOUT)):
            self.assertFalse(self.endpoint.clients[0].disconnected)
            self.clock.advance(1)
            self.network.run()
        self.clock.advance(1)
        self.network.run()
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.assertEqual(codes(self.write(b"end\r\n.\r\n")), [451])

    def test_slowSteadyReaderAfterTheFinalDot(self) -> None:
        """
        The same after the final dot, while what is left of the message goes out from
        a transport buffer still over its limit: 12 s of steady taking, and then the
        reply, reach the client as 250.
        """
        unsent = [600_000]
        self.kernelHolds(unsent)
        self.scripted()
        downstream = self.slowDownstream(b"Subject: slow\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
        for _ in range(12):
            self.clock.advance(1)
            unsent[0] -= 20_000
            self.network.run()
        self.assertFalse(self.endpoint.clients[0].disconnected)
        self.assertEqual(self.client.received(), [])
        unsent[0] = 0
        downstream.resumeProducing()
        self.network.run()
        self.assertEqual(codes(self.client.received()), [250])
        self.assertEqual(len(self.server.messages), 1)

    def test_earlyRefusal(self) -> None:
        """
        A downstream that refuses the message before its end and hangs up: the client
        gets that refusal after its message.
        """
        self.scripted(EARLY=b"552 5.3.4 Message too big for me\r\n")
        replies = self.sendmail("a@example.org", ["b@example.net"], b"x" * 5000 + b"\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 552])
        self.assertEqual(replies[-1].lines, ("5.3.4 Message too big for me",))
        self.assertEqual(self.server.messages, [])

    def test_unexpectedDataReply(self) -> None:
        """
        A 250 to DATA (instead of 354) is a broken downstream: the client's DATA gets
        451.
        """
        self.scripted(DATA=b"250 2.0.0 Whatever\r\n")
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 451])

    def test_dataRefused(self) -> None:
        """
        A DATA the downstream refuses is refused to the client with the downstream's
        reply, in place of the 354, so that it does not send the message for nothing;
        after the client's RSET, the downstream transaction is reset before the next one.
        """
        self.scripted(DATA=[b"554 5.5.1 No valid recipients\r\n", b"354 Go ahead\r\n"])
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 554])
        self.assertEqual(replies[-1].lines, ("5.5.1 No valid recipients",))
        self.assertEqual(codes(self.send("RSET")), [250])
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(self.server.commands[4], "RSET")

    def dataRefusedAfterUs(self, refusal: SMTPError) -> tuple[DataGate, ScriptedFactory]:
        """
        A front with a handler after the forwarding that refuses DATA with C{refusal},
        and a transaction whose DATA it refused once the downstream had invited the
        message.

        @return: that handler and the factory of the downstream connections.
        """
        gate = DataGate()
        gate.refusal = refusal
        factory = ScriptedFactory({})
        self.front(lambda: factory, after=[gate])
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, refusal.code])
        self.assertEqual(factory.built[0].commands[-1], "DATA")
        return gate, factory

    def test_dataRefusedByALaterHandler(self) -> None:
        """
        When a handler after the forwarding refuses DATA once the downstream has invited
        the message, the downstream connection, which no RSET could bring out of DATA,
        is dropped: it keeps nothing, and the next transaction goes over a new one.  A
        client that then leaves does not have its QUIT sent as the message either.
        """
        gate, factory = self.dataRefusedAfterUs(SMTPError(452, "4.2.2 Over quota"))
        self.assertEqual(codes(self.send("RSET")), [250])
        gate.refusal = None
        self.assertEqual(
            codes(self.sendmail("a@example.org", ["b@example.net"])), [250, 250, 354, 250]
        )
        first, second = factory.built
        self.assertTrue(first.lost)
        self.assertEqual((first.messages, len(second.messages)), ([], 1))
        gate.refusal = SMTPError(452, "4.2.2 Over quota")
        self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 452)
        self.send("QUIT")
        self.network.run()
        self.assertTrue(second.lost)
        self.assertNotIn("QUIT", second.commands)
        self.assertEqual(len(second.messages), 1)

    def test_goingOnAfterALaterHandlerRefusedDATA(self) -> None:
        """
        When the client goes on with its transaction after a handler after the
        forwarding refused DATA (another RCPT, DATA again), the downstream connection
        that was invited the message is dropped, keeping nothing, and the transaction is
        made again on a new one: nothing the client sends is written into the invited
        message, and the message is delivered once, to every recipient.
        """
        gate, factory = self.dataRefusedAfterUs(SMTPError(451, "4.3.0 Try DATA again"))
        self.assertEqual(codes(self.send("RCPT TO:<c@example.net>", "DATA")), [250, 451])
        gate.refusal = None
        self.assertEqual(codes(self.send("DATA")), [354])
        self.assertEqual(codes(self.write(stuff(MESSAGE))), [250])
        self.network.run()
        first, second, third = factory.built
        self.assertTrue(first.lost and second.lost)
        self.assertEqual((first.messages, second.messages, len(third.messages)), ([], [], 1))
        self.assertEqual(
            third.commands[1:5],
            [
                "RSET",
                "MAIL FROM:<a@example.org>",
                "RCPT TO:<b@example.net>",
                "RCPT TO:<c@example.net>",
            ],
        )
        for downstream in (first, second):
            self.assertEqual(downstream.commands[-1], "DATA")

    def test_unsolicited421(self) -> None:
        """
        A 421 the downstream sends while idle ends that connection; the next transaction
        gets a new one.
        """
        self.scripted()
        self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 250)
        first = self.server
        assert first.transport is not None
        first.transport.write(b"421 4.4.2 Idle too long\r\n")
        self.network.run()
        self.assertTrue(first.lost)
        self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 250)
        self.assertEqual(len(self.factory.built), 2)


class UnavailableTests(ForwardTestCase):
    """
    When the downstream cannot be used the client gets 451 4.4.1, and nothing is lost.
    """

    UNAVAILABLE = ServerReply(451, ("4.4.1 Error: downstream unavailable",))

    def test_refused(self) -> None:
        """
        A downstream that refuses the connection: 451 at MAIL.
        """
        self.front(None, behaviour="refuse")
        self.assertEqual(self.send("MAIL FROM:<a@example.org>"), [self.UNAVAILABLE])

    def test_logNamesDownstreamAndStep(self) -> None:
        """
        Each "Downstream ... unavailable" warning names the downstream (its description,
        else the address connected to, else the endpoint's kind) and the step that failed,
        in its text and as the fields downstream and step.
        """
        capture = LogCapture(self)
        described = "smtp:tcp:host=mx.example:port=25"
        cases: list[tuple[Script, list[str], str]] = [
            ({"GREETING": b"554 5.3.2 Not now\r\n"}, [], "greeting"),
            ({"EHLO": b"554 5.5.1 No\r\n", "HELO": b"554 5.5.1 No\r\n"}, [], "HELO"),
            ({"MAIL": b"HTTP/1.1 400 Bad Request\r\n"}, [], "MAIL"),
            ({"RCPT": b"421 4.3.2 Bye\r\n"}, ["RCPT TO:<b@example.net>"], "RCPT"),
            ({"DATA": b"250 2.0.0 Whatever\r\n"}, ["RCPT TO:<b@example.net>", "DATA"], "DATA"),
        ]
        for script, commands, step in cases:
            self.front(ScriptedFactory(script).itself, description=described)
            replies = self.send("MAIL FROM:<a@example.org>", *commands)
            self.assertEqual(replies[-1], self.UNAVAILABLE, step)
        # Not described: the address connected to, or the endpoint's kind.
        self.front(ScriptedFactory({"MAIL": b"HTTP/1.1 400 Bad Request\r\n"}).itself)
        self.send("MAIL FROM:<a@example.org>")
        self.front(ScriptedFactory({".": None}).itself)
        self.endpoint.unixPath = "/run/dovecot/lmtp"
        self.sendmail("a@example.org", ["b@example.net"])
        self.clock.advance(300 * forward.ANSWER_SHARE)
        self.front(None, behaviour="refuse")
        self.send("MAIL FROM:<a@example.org>")
        events = [e for e in capture.events if "unavailable at" in e.get("log_format", "")]
        self.assertEqual(
            [(e["downstream"], e["step"]) for e in events],
            [(described, step) for _, _, step in cases]
            + [
                ("127.0.0.1:25", "MAIL"),
                ("unix:/run/dovecot/lmtp", "end of data"),
                ("MemoryEndpoint", "connect"),
            ],
        )
        lines = capture.matching("unavailable at")
        self.assertEqual(
            lines[0], f"Downstream {described} unavailable at greeting: greeting 554 5.3.2 Not now"
        )
        self.assertEqual(
            lines[-1],
            "Downstream MemoryEndpoint unavailable at connect: cannot connect: "
            "ConnectionRefusedError: Connection was refused by other side.",
        )

    def test_endpointStringIsTheDescription(self) -> None:
        """
        An endpoint given as a string is how log lines name the downstream, unless a
        description is given; the service gives its --deliver endpoint.
        """
        clock = Clock()
        self.assertEqual(
            ForwardDelivery("tcp:host=127.0.0.1:port=2600", reactor=clock).description,
            "tcp:host=127.0.0.1:port=2600",
        )
        self.assertEqual(
            ForwardDelivery("unix:/run/lmtp", reactor=clock, description="dovecot").description,
            "dovecot",
        )
        self.assertIsNone(ForwardDelivery(self.endpointFor(clock), reactor=clock).description)

    def endpointFor(self, clock: Clock) -> MemoryEndpoint:
        """
        An endpoint object (to nowhere).
        """
        return MemoryEndpoint(MemoryNetwork(clock), None)

    def test_refusalsKeepNoTracebacks(self) -> None:
        """
        Each refusal raises a new error: the module's error constants, raised again
        and again, would keep every traceback (and its frames) for the process's life.
        """
        for _ in range(3):
            self.front(None, behaviour="refuse")
            self.assertEqual(self.send("MAIL FROM:<a@example.org>"), [self.UNAVAILABLE])
        with self.assertRaises(SMTPError):
            mailCommand(Address("a@example.org"), Envelope(requireTLS=True), {})
        for constant in (forward.UNAVAILABLE, NEEDS_REQUIRETLS):
            self.assertIsNone(constant.__traceback__)

    def test_connectTimeout(self) -> None:
        """
        A connection attempt that hangs: 451 at MAIL after the timeout.
        """
        self.front(None, behaviour="hang")
        self.assertEqual(self.send("MAIL FROM:<a@example.org>"), [])
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.client.received(), [self.UNAVAILABLE])

    def test_downstream421MidTransaction(self) -> None:
        """
        A downstream that says 421 to a RCPT (and closes): the client gets 451 for it,
        and a new transaction uses a new connection.
        """
        refuse = RefuseSome({"bye@example.net": SMTPError(421, "4.3.2 Shutting down")})
        self.front(lambda: self.downstream([refuse]))
        replies = self.send(
            "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "RCPT TO:<bye@example.net>"
        )
        self.assertEqual(
            replies[:2],
            [ServerReply(250, ("2.1.0 Accepted",)), ServerReply(250, ("2.1.5 Accepted",))],
        )
        self.assertEqual(replies[2], self.UNAVAILABLE)
        self.assertFalse(self.client.closed)
        self.assertTrue(self.endpoint.clients[0].disconnected)
        # The transaction is gone downstream: the rest of it fails temporarily too.
        self.assertEqual(codes(self.send("RCPT TO:<c@example.net>")), [451])
        self.assertEqual(codes(self.send("RSET")), [250])
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(len(self.recorder.sessions), 2)
        self.assertEqual(len(self.recorder.messages), 1)

    def test_downstreamLostDuringMessage(self) -> None:
        """
        A downstream connection lost in the middle of the message: the client gets 451 at
        the end of it, never 250.
        """
        self.front(self.downstream)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        self.write(b"Subject: part\r\n\r\n")
        self.endpoint.servers[0].abortConnection()
        self.network.run()
        replies = self.write(b"rest\r\n.\r\n")
        self.assertEqual(replies, [self.UNAVAILABLE])
        self.assertEqual(self.recorder.messages, [])


class StreamFailureTests(ForwardTestCase):
    """
    A message that fails on our side never reaches the downstream's store.
    """

    def test_clientDisconnectsMidData(self) -> None:
        """
        The client goes away in the middle of the message: the downstream connection is
        aborted and the downstream keeps nothing.
        """
        self.front(self.downstream)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        self.write(b"Subject: half\r\n\r\nthe first half\r\n")
        self.client.disconnect()
        self.network.run()
        clientEnd = self.endpoint.clients[0]
        self.assertTrue(clientEnd.disconnected)
        self.assertTrue(clientEnd.aborted)
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(len(self.recorder.closed), 1)

    def test_clientGoesAwayWhileTheMessageIsStillGoingOut(self) -> None:
        """
        The client goes away after its final dot, while the forwarding has handed the
        whole message and its dot to the downstream connection but most of it is still
        in the buffers (the downstream reads nothing): the downstream connection is
        dropped at once, with what it holds, so the downstream never gets the final dot
        and keeps nothing of a message its client was not answered for (QA).
        """
        self.front(self.downstream)
        capture = LogCapture(self)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")
        downstream = self.endpoint.servers[0]
        downstream.pauseProducing()
        message = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300
        self.assertEqual(self.write(stuff(message)), [])
        clientEnd = self.endpoint.clients[0]
        self.assertFalse(clientEnd.disconnected)
        self.client.disconnect()
        self.network.run()
        self.assertTrue(clientEnd.aborted)
        self.assertTrue(clientEnd.disconnected)
        downstream.resumeProducing()
        self.network.run()
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(capture.matching("unavailable at"), [])
        self.assertEqual(len(capture.matching("Message not relayed")), 1)

    def test_clientDisconnectsBeforeDownstreamReplied(self) -> None:
        """
        The client goes away while a command waits for the downstream: the downstream
        connection is dropped.
        """
        self.front(self.downstream)
        self.client.protocol.dataReceived(b"MAIL FROM:<a@example.org>\r\n")
        self.client.disconnect()
        self.network.run()
        self.assertTrue(all(end.disconnected for end in self.endpoint.clients))
        self.assertEqual(self.recorder.messages, [])

    def test_resetBetweenChunksBeforeDownstreamAnswersDATA(self) -> None:
        """
        The client abandons a message sent in BDAT chunks (RSET between chunks) while the
        downstream has not answered DATA yet: the downstream connection is dropped at
        once, RSET gets its 250 without waiting for the downstream, and the next
        transaction goes through on a new connection.
        """
        factory = ScriptedFactory({"DATA": [None]})
        self.front(lambda: factory)
        capture = LogCapture(self)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
        self.assertEqual(codes(self.write(b"BDAT 5\r\nhello")), [250])
        self.assertEqual(codes(self.send("RSET")), [250])
        self.assertTrue(self.endpoint.clients[0].aborted)
        # Logged as the message's failure, not as the downstream's.
        self.assertEqual(
            capture.matching("Message not relayed"),
            ["Message not relayed: the client reset the transaction"],
        )
        self.assertEqual(capture.matching("unavailable at"), [])
        factory.script["DATA"] = [ScriptedServer.DEFAULTS["DATA"]]
        self.assertEqual(
            codes(self.sendmail("a@example.org", ["b@example.net"])), [250, 250, 354, 250]
        )
        self.assertEqual(len(factory.built), 2)
        self.assertEqual(len(factory.built[1].messages), 1)
        # No Deferred was left with an unhandled error.
        gc.collect(1)
        self.assertEqual([e for e in capture.events if e.get("log_failure")], [])

    def test_resetBetweenChunksAfterDownstreamAnswersDATA(self) -> None:
        """
        The same once the downstream has the start of the message: it is dropped, and
        keeps nothing.
        """
        factory = ScriptedFactory({})
        self.front(lambda: factory)
        self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
        self.assertEqual(codes(self.write(b"BDAT 7\r\nhello\r\n")), [250])
        self.assertEqual(codes(self.send("RSET")), [250])
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.assertEqual(factory.built[0].messages, [])
        self.assertEqual(
            codes(self.sendmail("a@example.org", ["b@example.net"])), [250, 250, 354, 250]
        )
        self.assertEqual(len(factory.built[1].messages), 1)

    def test_wholeMessageBeforeDownstreamAnswersDATA(self) -> None:
        """
        An empty message sent at once after DATA, without waiting for the 354: the 354
        waits for the downstream's answer to DATA, and the dot for the 354.  When the
        downstream refuses DATA, the client's DATA gets its refusal, the dot is read as
        a command (500), and the downstream gets nothing.
        """
        cases = ((None, [354, 250]), (b"554 5.5.1 no valid recipients\r\n", [554, 500]))
        for answer, expected in cases:
            script: Script = {} if answer is None else {"DATA": [answer]}
            factory = ScriptedFactory(script)
            self.front(lambda: factory)  # noqa: B023
            self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>")
            self.assertEqual(codes(self.write(b"DATA\r\n.\r\n")), expected)
            [downstream] = factory.built
            self.assertNotIn(".", downstream.commands)
            # The empty message, with our Received field.
            self.assertEqual(
                [m.startswith(b"Received: ") for m in downstream.messages],
                [True] if expected[-1] == 250 else [],
            )
            self.send("RSET")
            replies = self.sendmail("a@example.org", ["b@example.net"])
            again = [250, 250, 354, 250] if answer is None else [250, 250, 554]
            self.assertEqual(codes(replies), again)

    def test_tooLarge(self) -> None:
        """
        A message over our size limit: the client gets 552, the downstream nothing, and
        the next message goes through on a new connection.
        """
        self.front(self.downstream, size=1000)
        replies = self.sendmail("a@example.org", ["b@example.net"], b"x" * 2000 + b"\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 552])
        self.assertEqual(self.recorder.messages, [])
        self.assertTrue(self.endpoint.clients[0].aborted)
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(len(self.recorder.messages), 1)

    def test_refusedByEarlierHandler(self) -> None:
        """
        A content filter registered before ForwardDelivery refuses the message: the
        downstream connection is aborted before the end, and the downstream keeps nothing.
        """
        self.front(self.downstream, before=[RefuseMessages()])
        replies = self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 554])
        self.assertEqual(self.recorder.messages, [])
        self.assertTrue(self.endpoint.clients[0].aborted)

    def test_laterHandlerRefusesRecipient(self) -> None:
        """
        A recipient refused by a handler registered after ForwardDelivery (which the
        downstream had accepted) does not get the message.
        """
        refuse = RefuseSome({"no@example.net": SMTPError(550, "5.7.1 Not here")})
        self.front(self.downstream, after=[refuse])
        replies = self.sendmail("a@example.org", ["b@example.net", "no@example.net"])
        self.assertEqual(codes(replies), [250, 250, 550, 354, 250])
        [received] = self.recorder.messages
        self.assertEqual([r.address for r in received.envelope.rcptTo], ["b@example.net"])

    def test_downstreamChangesItsMind(self) -> None:
        """
        When the transaction is made again downstream without a recipient a later handler
        refused, and the downstream now refuses one it had accepted, the client gets 451
        4.3.0 and nothing is relayed; each time a new error.
        """
        refuse = RefuseSome({"no@example.net": SMTPError(550, "5.7.1 Not here")})
        for _ in range(2):
            # The first try accepts both recipients, the second refuses b.
            factory = ScriptedFactory(
                {"RCPT": [b"250 2.1.5 Ok\r\n", b"250 2.1.5 Ok\r\n", b"550 5.1.1 Gone\r\n"]}
            )
            self.front(lambda: factory, after=[refuse])  # noqa: B023
            replies = self.sendmail("a@example.org", ["b@example.net", "no@example.net"])
            self.assertEqual(codes(replies), [250, 250, 550, 451])
            self.assertEqual(
                replies[-1].text, "4.3.0 Error: the downstream changed its mind about a recipient"
            )
            [downstream] = factory.built
            self.assertEqual(
                downstream.commands[1:],
                [
                    "MAIL FROM:<a@example.org>",
                    "RCPT TO:<b@example.net>",
                    "RCPT TO:<no@example.net>",
                    "RSET",
                    "MAIL FROM:<a@example.org>",
                    "RCPT TO:<b@example.net>",
                ],
            )
            self.assertEqual(downstream.messages, [])
        self.assertIsNone(forward.RECIPIENTS_CHANGED.__traceback__)


class SessionTests(ForwardTestCase):
    """
    One downstream connection per client session, across transactions.
    """

    def test_reusesConnection(self) -> None:
        """
        Two transactions on one client session use one downstream connection.
        """
        self.front(self.downstream)
        for _ in range(2):
            self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 250)
        self.assertEqual(len(self.recorder.sessions), 1)
        self.assertEqual(len(self.recorder.messages), 2)
        self.assertEqual(self.endpoint.attempts, 1)

    def test_rsetBetweenTransactions(self) -> None:
        """
        A transaction the client abandons with RSET is reset downstream before the next:
        only the second is delivered, to its own recipients.
        """
        self.front(self.downstream)
        replies = self.send("MAIL FROM:<first@example.org>", "RCPT TO:<one@example.net>", "RSET")
        self.assertEqual(codes(replies), [250, 250, 250])
        replies = self.sendmail("second@example.org", ["two@example.net"])
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        [received] = self.recorder.messages
        self.assertEqual(received.envelope.mailFrom, Address("second@example.org"))
        self.assertEqual([r.address for r in received.envelope.rcptTo], ["two@example.net"])
        self.assertEqual(self.recorder.senders, ["first@example.org", "second@example.org"])
        self.assertEqual(len(self.recorder.sessions), 1)

    def test_quitClosesDownstream(self) -> None:
        """
        When the client leaves, the downstream connection is closed with QUIT.
        """
        self.front(self.downstream)
        self.sendmail("a@example.org", ["b@example.net"])
        self.assertEqual(codes(self.send("QUIT")), [221])
        self.network.run()
        self.assertTrue(self.endpoint.clients[0].disconnected)
        self.assertFalse(self.endpoint.clients[0].aborted)
        self.assertEqual(len(self.recorder.closed), 1)
        self.assertEqual(self.forward._links, {})

    def test_downstreamTimesOutBetweenTransactions(self) -> None:
        """
        A downstream that closes an idle connection (421, its own timeout) is connected to
        again for the next transaction.
        """
        self.front(lambda: self.downstream(socketTimeout=10), socketTimeout=1000)
        self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 250)
        self.clock.advance(11)
        self.network.run()
        self.assertTrue(self.endpoint.clients[0].disconnected)
        self.assertEqual(codes(self.sendmail("a@example.org", ["b@example.net"]))[-1], 250)
        self.assertEqual(len(self.recorder.sessions), 2)


class LMTPTests(ForwardTestCase):
    """
    Per-recipient replies, whichever side speaks LMTP.
    """

    def test_lmtpToLMTP(self) -> None:
        """
        An LMTP client of an LMTP downstream gets one reply per recipient, duplicates
        included, as the downstream gave them.
        """
        perRecipient = PerRecipient({"full@example.net": SMTPError(452, "4.2.2 Mailbox full")})
        self.front(lambda: self.downstream([perRecipient], lmtp=True), lmtp=True, frontLMTP=True)
        recipients = ["a@example.net", "full@example.net", "a@example.net", "b@example.net"]
        replies = self.sendmail("s@example.org", recipients)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 250, 354, 250, 452, 250, 250])
        self.assertEqual(replies[7].lines, ("4.2.2 Mailbox full",))
        [received] = self.recorder.messages
        self.assertEqual(len(received.envelope.rcptTo), 4)
        self.assertRelayed(received.data, MESSAGE, "LMTP")

    def test_smtpToLMTPMixed(self) -> None:
        """
        An SMTP client of an LMTP downstream that delivered to some recipients only gets
        451 4.3.0: a retry may duplicate, but nothing is lost.
        """
        perRecipient = PerRecipient({"full@example.net": SMTPError(452, "4.2.2 Mailbox full")})
        self.front(lambda: self.downstream([perRecipient], lmtp=True), lmtp=True)
        for _ in range(2):
            replies = self.sendmail("s@example.org", ["a@example.net", "full@example.net"])
            self.assertEqual(codes(replies), [250, 250, 250, 354, 451])
            self.assertTrue(replies[-1].text.startswith("4.3.0 "))
        # A new error each time: the constant, raised again, would keep every traceback.
        self.assertIsNone(MIXED_RESULTS.__traceback__)

    def test_smtpToLMTPAllAccepted(self) -> None:
        """
        An SMTP client of an LMTP downstream that accepted for every recipient gets 250.
        """
        self.front(lambda: self.downstream(lmtp=True), lmtp=True)
        replies = self.sendmail("s@example.org", ["a@example.net", "b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250])
        self.assertEqual(self.recorder.sessions[0].openingCommand, "LHLO")

    def test_smtpToLMTPAllRefused(self) -> None:
        """
        When every recipient was refused alike, the client gets that refusal.
        """
        perRecipient = PerRecipient(
            {
                "a@example.net": SMTPError(550, "5.7.1 Refused for a"),
                "b@example.net": SMTPError(550, "5.7.1 Refused for b"),
            }
        )
        self.front(lambda: self.downstream([perRecipient], lmtp=True), lmtp=True)
        replies = self.sendmail("s@example.org", ["a@example.net", "b@example.net"])
        self.assertEqual(replies[-1], ServerReply(550, ("5.7.1 Refused for a",)))

    def test_lmtpToSMTP(self) -> None:
        """
        An LMTP client of an SMTP downstream gets the single reply for every recipient.
        """
        self.front(self.downstream, frontLMTP=True)
        replies = self.sendmail("s@example.org", ["a@example.net", "b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 250, 354, 250, 250])
        self.front(
            lambda: self.downstream([RefuseMessages()], record=False),
            frontLMTP=True,
        )
        replies = self.sendmail("s@example.org", ["a@example.net", "b@example.net"])
        self.assertEqual(codes(replies), [250, 250, 250, 354, 554, 554])


class PartialRepliesTests(ForwardTestCase):
    """
    An LMTP downstream that becomes unusable after the message, having replied for its first
    recipients only: each reply that came is final for its recipient, so an LMTP client
    hears it, and only the recipients whose reply never came get 451 4.4.1.
    """

    RECIPIENTS = ["r0@example.net", "r1@example.net", "r2@example.net"]
    DELIVERED = b"250 2.0.0 <r0@example.net> delivered\r\n"

    def partial(self, then: Callable[[ITransport], None], *, frontLMTP: bool = True) -> None:
        """
        Send a message to three recipients through a scripted LMTP downstream that replies
        C{250} for the first after the message and then calls C{then} with its end of the
        connection; keep the client's final replies in C{self.replies}.
        """
        self.factory = ScriptedFactory({".": None})
        self.front(lambda: self.factory, lmtp=True, frontLMTP=frontLMTP)
        replies = self.sendmail("s@example.org", self.RECIPIENTS)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354])
        server = self.factory.built[0]
        self.assertEqual(len(server.messages), 1)
        transport = server.transport
        assert transport is not None
        transport.write(self.DELIVERED)
        self.network.run()
        self.assertEqual(self.client.received(), [])
        then(transport)
        self.network.run()
        self.replies = self.client.received()

    def assertPartial(self) -> None:
        """
        The client got the downstream's 250 for the first recipient and 451 4.4.1 for the
        others; the downstream connection is gone, and the next transaction opens a new
        one.
        """
        self.assertEqual(
            self.replies,
            [
                ServerReply(250, ("2.0.0 <r0@example.net> delivered",)),
                UnavailableTests.UNAVAILABLE,
                UnavailableTests.UNAVAILABLE,
            ],
        )
        self.assertTrue(self.endpoint.clients[0].disconnected)
        self.assertEqual(self.forward._links[self.client.session.id].client, None)
        self.factory.script["."] = b"250 2.0.0 Ok\r\n" * 3
        replies = self.sendmail("s@example.org", self.RECIPIENTS)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354, 250, 250, 250])
        self.assertEqual(len(self.factory.built), 2)

    def test_connectionLost(self) -> None:
        """
        A downstream that hangs up after its first reply: that recipient keeps its 250.
        """
        self.partial(lambda transport: transport.loseConnection())
        self.assertPartial()

    def test_downstream421(self) -> None:
        """
        A 421 for the second recipient ends the connection: the first keeps its 250, the
        second and third get 451 4.4.1.
        """
        self.partial(lambda transport: transport.write(b"421 4.3.2 Bye\r\n"))
        self.assertPartial()

    def test_garbage(self) -> None:
        """
        Something that is not a reply for the second recipient: the first keeps its 250.
        """
        self.partial(lambda transport: transport.write(b"HTTP/1.1 400 Oops\r\n"))
        self.assertPartial()

    def test_unexpectedReply(self) -> None:
        """
        A reply that is no final reply (a 354) for the second recipient: the first keeps
        its 250.
        """
        self.partial(lambda transport: transport.write(b"354 Again\r\n"))
        self.assertPartial()

    def test_timeout(self) -> None:
        """
        No reply for the second recipient within the timeout: the first keeps its 250.
        """
        self.partial(lambda transport: self.clock.advance(TIMEOUT))
        self.assertPartial()

    def test_smtpFront(self) -> None:
        """
        An SMTP client has one reply for the whole message: it gets 451 4.4.1, as when
        the downstream is lost before any reply.
        """
        self.partial(lambda transport: transport.loseConnection(), frontLMTP=False)
        self.assertEqual(self.replies, [UnavailableTests.UNAVAILABLE])
        self.assertTrue(self.endpoint.clients[0].disconnected)


class AnswerDeadlineTests(ForwardTestCase):
    """
    The downstream's whole answer to each step the client waits for comes within four
    fifths of handlerTimeout, however many replies it takes, each in time: the client
    hears 451 4.4.1 (in LMTP, for the recipients whose reply had not come) and never
    421 Handler timeout while the downstream goes on.
    """

    #: The server's handlerTimeout, and the forwarding's: its answers get 8 s.
    HANDLER_TIMEOUT = 10.0
    RECIPIENTS = PartialRepliesTests.RECIPIENTS

    def scriptedFront(self, script: Script, **options: Any) -> ScriptedServer:
        """
        A front with C{handlerTimeout} relaying to a scripted downstream that says what
        C{script} says, and the downstream, connected by the client's MAIL FROM (which
        gets no reply while the downstream is silent).
        """
        self.factory = ScriptedFactory(script)
        self.capture = LogCapture(self)
        self.front(lambda: self.factory, handlerTimeout=self.HANDLER_TIMEOUT, **options)
        self.client.protocol.dataReceived(b"MAIL FROM:<s@example.org>\r\n")
        self.network.run()
        return self.factory.built[0]

    def later(self, seconds: float, server: ScriptedServer, reply: bytes | None) -> None:
        """
        Let C{seconds} pass, then have C{server} send C{reply} (if any).
        """
        self.clock.advance(seconds)
        if reply is not None and server.transport is not None and not server.lost:
            server.transport.write(reply)
        self.network.run()

    def test_lmtpRepliesTogetherTooSlow(self) -> None:
        """
        An LMTP downstream whose replies after the message come 3 or 4 s apart (each
        within the 5 s timeout) but would take 11 s in all: at 8 s the recipients whose
        reply came have it, the last gets 451 4.4.1, the downstream connection is
        dropped, and the client is never cut off with 421.
        """
        server = self.scriptedFront({".": None}, lmtp=True, frontLMTP=True)
        replies = self.client.received()
        replies += self.send(*(f"RCPT TO:<{r}>" for r in self.RECIPIENTS), "DATA")
        replies += self.write(stuff(MESSAGE))
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354])
        self.assertEqual(len(server.messages), 1)
        self.later(3, server, b"250 2.0.0 <r0@example.net> delivered\r\n")
        self.later(4, server, b"250 2.0.0 <r1@example.net> delivered\r\n")
        self.assertEqual(self.client.received(), [])
        self.later(1, server, None)
        self.assertEqual(
            self.client.received(),
            [
                ServerReply(250, ("2.0.0 <r0@example.net> delivered",)),
                ServerReply(250, ("2.0.0 <r1@example.net> delivered",)),
                UnavailableTests.UNAVAILABLE,
            ],
        )
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.later(3, server, b"250 2.0.0 <r2@example.net> delivered\r\n")
        self.later(self.HANDLER_TIMEOUT, server, None)
        self.assertFalse(self.client.closed)
        self.assertEqual(self.client.received(), [])
        self.assertEqual(
            self.capture.matching("after 2 of 3 replies"),
            [
                "Downstream 127.0.0.1:25 unavailable at end of data after 2 of 3 replies: "
                "no answer within 8 s"
            ],
        )

    def test_mailStepsTogetherTooSlow(self) -> None:
        """
        A downstream whose greeting, EHLO reply and MAIL reply come 3 s apart (each
        within the 5 s timeout): at 8 s the client's MAIL gets 451 4.4.1, not 421, and
        the downstream connection is dropped.
        """
        server = self.scriptedFront({"GREETING": None, "EHLO": None, "MAIL": None})
        self.later(3, server, b"220 slow.example ESMTP\r\n")
        self.later(3, server, b"250 slow.example\r\n")
        self.assertEqual(server.commands, [f"EHLO {FRONT}", "MAIL FROM:<s@example.org>"])
        self.assertEqual(self.client.received(), [])
        self.later(2, server, None)
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.later(self.HANDLER_TIMEOUT, server, b"250 2.1.0 Ok\r\n")
        self.assertFalse(self.client.closed)
        self.assertEqual(self.client.received(), [])
        self.assertEqual(
            self.capture.matching("no answer within"),
            ["Downstream 127.0.0.1:25 unavailable at MAIL: no answer within 8 s"],
        )

    def test_messageTimedFromItsEnd(self) -> None:
        """
        The time for the answer to a message counts from its end, when the client begins
        to wait, though much of it is still to be passed on: a downstream that reads
        32 KiB every 2 s (never stalled for the 5 s timeout) while 300 KiB are still to
        go when the client's final dot comes has the client answered 451 4.4.1 at 8 s,
        not 421 at 10 s; it is dropped, without the final dot.
        """
        server = self.scriptedFront({})
        self.assertEqual(codes(self.send("RCPT TO:<b@example.net>", "DATA")), [250, 250, 354])
        downstream = self.endpoint.servers[0]
        downstream.pauseProducing()
        # 16 KiB reads, until the front's buffers are full: 64 KiB towards the
        # downstream and 256 KiB in the forwarding's stream.  The last read brings the
        # message's end.
        piece = (b"y" * 1022 + b"\r\n") * 16
        for _ in range(20):
            self.client.protocol.dataReceived(piece)
            self.network.run()
        self.assertEqual(self.client.transport.producerState, "producing")
        self.client.protocol.dataReceived(piece + b".\r\n")
        self.network.run()
        self.assertEqual(self.client.transport.producerState, "paused")
        for _ in range(3):
            self.clock.advance(2)
            downstream.resumeProducing()
            self.endpoint.clients[0].pumpOnce()
            downstream.pauseProducing()
            self.network.run()
        self.assertEqual(self.client.received(), [])
        self.assertFalse(self.endpoint.clients[0].disconnected)
        self.later(2, server, None)
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.assertEqual(server.messages, [])
        self.later(self.HANDLER_TIMEOUT, server, None)
        self.assertFalse(self.client.closed)

    def test_twoForwardingsShareTheMessagesDeadline(self) -> None:
        """
        With two forwardings, the second sees the message's end only once the first
        accepted it, but the client waits for both from its final dot: each one's
        answer has four fifths of handlerTimeout from there (QA: the second's counted
        from the first's answer, so the client was cut off with 421 Handler timeout
        while the second downstream went on to answer 250).  The first answers at 5 s,
        the second not by 8 s: the client gets 451 4.4.1 at 8 s, the second downstream
        connection is dropped, and the client is never cut off.
        """
        second = ScriptedFactory({".": None})
        secondEndpoint = MemoryEndpoint(self.network, second.itself)
        after = ForwardDelivery(
            secondEndpoint,
            reactor=self.clock,
            serverName=FRONT,
            timeout=TIMEOUT,
            handlerTimeout=self.HANDLER_TIMEOUT,
        )
        first = self.scriptedFront({".": None}, after=[after])
        replies = self.client.received()
        replies += self.send("RCPT TO:<b@example.net>", "DATA")
        replies += self.write(stuff(MESSAGE))
        self.assertEqual(codes(replies), [250, 250, 354])
        self.later(4, first, None)
        self.later(1, first, b"250 2.0.0 Ok: queued as FIRST\r\n")
        self.assertEqual(len(second.built[0].messages), 1)
        self.later(TIMEOUT / 2, second.built[0], None)
        self.assertEqual(self.client.received(), [])
        self.later(3 - TIMEOUT / 2, second.built[0], None)
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertTrue(secondEndpoint.clients[0].aborted)
        self.later(self.HANDLER_TIMEOUT, second.built[0], b"250 2.0.0 Ok: queued\r\n")
        self.assertFalse(self.client.closed)
        self.assertEqual(self.client.received(), [])

    def test_messageStillGoingOutAtTheDeadline(self) -> None:
        """
        A downstream still taking the message steadily (50 KB a second of the 600 KB the
        kernel holds after the final dot) when the time for the answer runs out: the
        client gets 451 4.4.1 at 8 s, not 421, and the connection is dropped (aborted, so
        that what may not have reached the downstream yet is not sent).
        """
        unsent = [600_000]
        self.patch(_client, "_unsentBytes", lambda transport: unsent[0])
        server = self.scriptedFront({".": None})
        self.assertEqual(codes(self.send("RCPT TO:<b@example.net>", "DATA")), [250, 250, 354])
        self.assertEqual(self.write(stuff(MESSAGE)), [])
        for _ in range(7):
            self.later(1, server, None)
            unsent[0] -= 50_000
        self.assertEqual(self.client.received(), [])
        self.later(1, server, None)
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertTrue(self.endpoint.clients[0].aborted)
        self.later(self.HANDLER_TIMEOUT, server, None)
        self.assertFalse(self.client.closed)
        self.assertEqual(
            self.capture.matching("unavailable at"),
            ["Downstream 127.0.0.1:25 unavailable at end of data: no answer within 8 s"],
        )

    def test_firstReplyAfterTheMessageUntilTheDeadline(self) -> None:
        """
        The first reply after the message, once the message has gone out, has no shorter
        limit than the answer's (the downstream may still be reading the message from
        buffers of its own, which this side cannot see): it may come after the 5 s
        timeout, within the 16 s a handlerTimeout of 20 s gives; a later one (LMTP) has
        the timeout again.
        """
        self.HANDLER_TIMEOUT = 20
        server = self.scriptedFront({".": None}, lmtp=True, frontLMTP=True)
        replies = self.client.received()
        replies += self.send("RCPT TO:<a@example.net>", "RCPT TO:<b@example.net>", "DATA")
        replies += self.write(stuff(MESSAGE))
        self.assertEqual(codes(replies), [250, 250, 250, 354])
        self.later(TIMEOUT + 1, server, b"250 2.0.0 <a@example.net> delivered\r\n")
        self.assertEqual(self.client.received(), [])
        self.assertFalse(self.endpoint.clients[0].disconnected)
        self.later(TIMEOUT - 0.5, server, None)
        self.assertEqual(self.client.received(), [])
        self.later(0.5, server, None)
        self.assertEqual(
            self.client.received(),
            [
                ServerReply(250, ("2.0.0 <a@example.net> delivered",)),
                UnavailableTests.UNAVAILABLE,
            ],
        )
        self.assertEqual(
            self.capture.matching("unavailable at"),
            [
                "Downstream 127.0.0.1:25 unavailable at end of data after 1 of 2 replies: "
                f"no reply within {TIMEOUT} s"
            ],
        )

    def test_replyTimedWithoutHandlerTimeout(self) -> None:
        """
        With handlerTimeout 0 (no limit for the answer), the reply to the final dot has
        the timeout from when the message has gone out.
        """
        self.HANDLER_TIMEOUT = 0
        server = self.scriptedFront({".": None})
        self.assertEqual(codes(self.send("RCPT TO:<b@example.net>", "DATA")), [250, 250, 354])
        self.assertEqual(self.write(stuff(MESSAGE)), [])
        self.later(TIMEOUT - 1, server, None)
        self.assertEqual(self.client.received(), [])
        self.later(1, server, None)
        self.assertEqual(self.client.received(), [UnavailableTests.UNAVAILABLE])
        self.assertEqual(
            self.capture.matching("unavailable at"),
            [f"Downstream 127.0.0.1:25 unavailable at end of data: no reply within {TIMEOUT} s"],
        )

    def test_noLimitWithoutHandlerTimeout(self) -> None:
        """
        With handlerTimeout 0 (none), only each reply's timeout counts: replies 4 s
        apart, 12 s in all, are waited for.
        """
        self.HANDLER_TIMEOUT = 0
        server = self.scriptedFront({"GREETING": None, "EHLO": None, "MAIL": None})
        self.later(TIMEOUT - 1, server, b"220 slow.example ESMTP\r\n")
        self.later(TIMEOUT - 1, server, b"250 slow.example\r\n")
        self.later(TIMEOUT - 1, server, b"250 2.1.0 Ok\r\n")
        self.assertEqual(codes(self.client.received()), [250])


class LargeMessageTests(ForwardTestCase):
    """
    A large message passes through in bounded memory.
    """

    SIZE = 20 * 1024 * 1024
    #: What relaying may allocate at most at once, far below the message's size.
    BOUND = 4 * 1024 * 1024

    def test_twentyMegabytes(self) -> None:
        """
        A 20 MB message arrives intact while the memory in use stays a few buffers' worth,
        and the front's stream never holds more than about its high-water mark.
        """
        digests = DigestHandler()
        self.front(lambda: self.downstream([digests], record=False, size=0))
        line = b"0123456789" * 7 + b".......\r\n"
        block = b"Subject: big\r\n\r\n" + line * (1024 * 1024 // len(line))
        rest = line * (1024 * 1024 // len(line))
        blocks = [block] + [rest] * (self.SIZE // len(rest) - 1)
        total = sum(map(len, blocks))
        self.assertEqual(
            codes(self.send("MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA")),
            [250, 250, 354],
        )
        transaction = self.client.protocol._data
        assert transaction is not None
        [stream] = transaction.fanOut.streams
        backlog = pauses = 0
        tracemalloc.start()
        try:
            for piece in blocks:
                for start in range(0, len(piece), 65536):
                    # The network moves nothing until the front stops reading: then the
                    # downstream pipe, our stream and the front's stream are all full.
                    if self.client.transport.producerState == "paused":
                        pauses += 1
                        self.network.run()
                        self.assertEqual(self.client.transport.producerState, "producing")
                    self.client.protocol.dataReceived(piece[start : start + 65536])
                    backlog = max(backlog, stream.backlog)
            replies = self.write(b".\r\n")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(codes(replies), [250])
        [(prefix, size, digest)] = digests.messages
        header = prefix[: prefix.index(b"Subject: big")]
        self.assertTrue(header.startswith(b"Received: "))
        self.assertEqual(size, len(header) + total)
        expectedDigest = hashlib.sha256(header)
        for piece in blocks:
            expectedDigest.update(piece)
        self.assertEqual(digest, expectedDigest.hexdigest())
        self.assertLess(peak, self.BOUND)
        self.assertGreater(pauses, 20)
        self.assertLessEqual(backlog, HIGH_WATER + 65536)
        self.assertGreater(self.network.written, total)


# -- the pure parts -------------------------------------------------------------------------


class ReplyParserTests(SynchronousTestCase):
    """
    Downstream replies are read strictly and sanitised.
    """

    def feed(self, *lines: bytes) -> list[DownstreamReply]:
        parser = ReplyParser()
        replies = [parser.feed(line) for line in lines]
        return [reply for reply in replies if reply is not None]

    def test_singleLine(self) -> None:
        """
        A one-line reply with an enhanced code.
        """
        self.assertEqual(self.feed(b"250 2.1.0 Ok"), [DownstreamReply(250, ("Ok",), "2.1.0")])

    def test_multiLine(self) -> None:
        """
        Lines with a dash continue a reply; the enhanced code is taken from each.
        """
        self.assertEqual(
            self.feed(b"550-5.1.1 one", b"550-5.1.1 two", b"550 5.1.1 three"),
            [DownstreamReply(550, ("one", "two", "three"), "5.1.1")],
        )

    def test_noText(self) -> None:
        """
        A code alone is a reply with empty text.
        """
        self.assertEqual(self.feed(b"250"), [DownstreamReply(250, ("",), None)])

    def test_enhancedCodeOfOtherClass(self) -> None:
        """
        An enhanced code whose class is not the reply's stays in the text.
        """
        self.assertEqual(self.feed(b"550 4.1.1 odd"), [DownstreamReply(550, ("4.1.1 odd",), None)])

    def test_badLines(self) -> None:
        """
        Lines that are not reply lines, codes out of range, a code changing within a reply.
        """
        for lines in (
            [b"hello"],
            [b"25"],
            [b"250x"],
            [b"150 no"],
            [b"650 no"],
            [b"250-a", b"251 b"],
        ):
            parser = ReplyParser()
            with self.assertRaises(ReplySyntaxError):
                for line in lines:
                    parser.feed(line)

    def test_tooManyLines(self) -> None:
        """
        A reply cannot go on for ever.
        """
        parser = ReplyParser(maxLines=3)
        for _ in range(3):
            parser.feed(b"250-x")
        with self.assertRaises(ReplySyntaxError):
            parser.feed(b"250-x")

    def test_sanitised(self) -> None:
        """
        Only printable ASCII is kept; a tab becomes a space.
        """
        [reply] = self.feed(b"550 5.7.1 a\tb\x00c\xff\xc3\xa9\x7f")
        self.assertEqual(reply.lines, ("a b?c???",))
        self.assertEqual(reply.error().lines, ("a b?c???",))

    def test_extensions(self) -> None:
        """
        EHLO keywords, upper-cased, with their parameters; the greeting line is not one.
        """
        [reply] = self.feed(
            b"250-mx.example Hello",
            b"250-size 1000",
            b"250-8BITMIME",
            b"250-AUTH PLAIN LOGIN",
            b"250-bad_keyword",
            b"250 DSN",
        )
        self.assertEqual(
            parseExtensions(reply),
            {"SIZE": "1000", "8BITMIME": "", "AUTH": "PLAIN LOGIN", "DSN": ""},
        )

    def test_xtext(self) -> None:
        """
        xtext encoding escapes +, =, controls, space and non-ASCII.
        """
        self.assertEqual(encodeXtext("a+b=c d\x01"), "a+2Bb+3Dc+20d+01")
        self.assertEqual(encodeXtext("é€"), "+E9+E2+82+AC")

    def test_combine(self) -> None:
        """
        LMTP replies combine into one SMTP answer only when they agree.
        """
        ok = DownstreamReply(250, ("ok",))
        temp = DownstreamReply(452, ("full",), "4.2.2")
        perm = DownstreamReply(550, ("no",), "5.1.1")
        self.assertIs(combineReplies([ok, ok]), ok)
        self.assertIs(combineReplies([perm, perm]), perm)
        self.assertIs(combineReplies([perm, temp]), temp)
        mixed = combineReplies([ok, temp])
        assert isinstance(mixed, SMTPError)
        self.assertEqual((mixed.code, mixed.enhancedCode), (451, "4.3.0"))

    def test_demandsTLSOrAuth(self) -> None:
        """
        530 and 538 (RFC 3207, RFC 4954), or 5.7.11, demand STARTTLS or AUTH of the
        client; other refusals, 5.7.x among them, do not.
        """
        for code, text, demands in [
            (530, "5.7.0 Must issue a STARTTLS command first", True),
            (530, "Authentication required", True),
            (538, "5.7.11 Encryption required for requested authentication mechanism", True),
            (554, "5.7.11 Encryption required", True),
            (550, "5.7.1 Relay access denied", False),
            (550, "5.7.0 Sender blocked", False),
            (454, "4.7.0 TLS not available due to local problem", False),
            (535, "5.7.8 Authentication credentials invalid", False),
        ]:
            self.assertEqual(makeReply(code, [text]).demandsTLSOrAuth, demands, (code, text))

    def test_sizeOnlyAsANumber(self) -> None:
        """
        SIZE goes downstream, when offered there, only as the ASCII number the client
        declared; other digits, or SIZE without a value, are left out.
        """
        envelope = Envelope()
        cases: list[tuple[dict[str, str | bool], str]] = [
            ({"SIZE": "0100"}, "MAIL FROM:<a@example.org> SIZE=100"),
            ({"SIZE": "\u0661\u0662"}, "MAIL FROM:<a@example.org>"),
            ({"SIZE": True}, "MAIL FROM:<a@example.org>"),
        ]
        for args, expected in cases:
            address = Address("a@example.org", args)
            self.assertEqual(mailCommand(address, envelope, {"SIZE": ""}), expected)
        self.assertEqual(
            mailCommand(Address("a@example.org", {"SIZE": "100"}), envelope, {}),
            "MAIL FROM:<a@example.org>",
        )

    def test_envelopeIsFrozen(self) -> None:
        """
        (Sanity) the envelope type the commands are built from is the session's.
        """
        self.assertEqual(Envelope().bodyType, "7bit")


_LINE = st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_INTERESTING = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"..", b"a", b"\x00"])
).map(b"".join)
_FAST = settings(max_examples=300, deadline=None)


# -- any downstream, any client ------------------------------------------------------------------

#: What a scripted downstream may answer each verb with: what a server should say, a
#: refusal, a temporary failure, a goodbye, something malformed, or nothing at all.
_ANSWERS: dict[str, tuple[bytes | None, ...]] = {
    "GREETING": (
        b"220 scripted.example ESMTP\r\n",
        b"220-scripted.example\r\n220 ESMTP\r\n",
        b"421 4.3.2 busy\r\n",
        b"554 5.7.1 go away\r\n",
        b"hello there\r\n",
        None,
    ),
    "EHLO": (
        ScriptedServer.DEFAULTS["EHLO"],
        b"250 scripted.example\r\n",
        b"250-scripted.example\r\n250-PIPELINING\r\n250-SIZE 10\r\n250-SMTPUTF8\r\n"
        b"250-DSN\r\n250 8BITMIME\r\n",
        b"500 5.5.1 what\r\n",
        b"250\r\n",
        b"2500 wrong\r\n",
        None,
    ),
    "HELO": (b"250 scripted.example\r\n", b"501 5.5.4 no\r\n"),
    "MAIL": (
        b"250 2.1.0 Ok\r\n",
        b"451 4.3.0 later\r\n",
        b"550 5.7.1 no\r\n",
        b"421 4.3.2 closing\r\n",
        b"250-2.1.0 one\r\n250 2.1.0 two\r\n",
        b"2\r\n",
        None,
    ),
    "RCPT": (
        b"250 2.1.5 Ok\r\n",
        b"452 4.5.3 too many\r\n",
        b"550 5.1.1 no such user\r\n",
        b"421 4.3.2 closing\r\n",
        b"250 Ok\r\n250 and more\r\n",
        None,
    ),
    "DATA": (
        b"354 go ahead\r\n",
        b"554 5.5.1 no valid recipients\r\n",
        b"451 4.3.0 later\r\n",
        b"250 2.0.0 not what was asked\r\n",
        None,
    ),
    ".": (
        b"250 2.0.0 Ok: queued as ABC\r\n",
        b"451 4.3.0 later\r\n",
        b"554 5.7.1 spam\r\n",
        b"250 Ok\r\n250 an extra reply\r\n",
        b"queued\r\n",
        None,
    ),
    "RSET": (b"250 2.0.0 Ok\r\n", b"500 5.5.1 what\r\n", None),
}


#: The script of a downstream that answers everything right.
_RIGHT: dict[str, list[bytes | None]] = {verb: [answers[0]] for verb, answers in _ANSWERS.items()}


@st.composite
def _scripts(draw: st.DrawFn) -> dict[str, list[bytes | None]]:
    """
    A downstream's script: for each verb, the answers it gives in turn (its last
    repeated).  One or two verbs, or none, get wrong answers drawn from L{_ANSWERS}; the
    others the right one, so that examples get as far as a message.
    """
    odd = draw(st.lists(st.sampled_from(sorted(_ANSWERS)), max_size=2, unique=True))
    return {
        verb: (
            draw(st.lists(st.sampled_from(answers[1:]), min_size=1, max_size=3))
            if verb in odd
            else [answers[0]]
        )
        for verb, answers in _ANSWERS.items()
    }


#: What the client does: a transaction (its recipients, its message, and whether it ends
#: it), a command, or waiting a while.
_CLIENT_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("mail"),
            st.integers(min_value=1, max_value=3),
            st.one_of(st.just(MESSAGE), st.binary(max_size=200)),
            st.booleans(),
            # The size of its BDAT chunks, or 0 for DATA.
            st.sampled_from((0, 0, 7, 64)),
        ),
        st.tuples(
            st.just("line"), st.sampled_from(("RSET", "NOOP", "MAIL FROM:<>", "DATA", "QUIT"))
        ),
        st.tuples(st.just("wait"), st.sampled_from((0.5, TIMEOUT + 1, 100.0))),
    ),
    max_size=6,
)


class _Counting(ScriptedServer):
    """
    A scripted downstream that counts the messages it answered with a 2xx reply.
    """

    def __init__(self, script: Script, counts: list[int]) -> None:
        super().__init__(script)
        self.counts = counts

    def _reply(self, verb: str) -> bytes | None:
        sent = super()._reply(verb)
        if verb == "." and sent is not None and sent.startswith(b"2"):
            self.counts[0] += 1
        return sent


class AnyDownstreamTests(ForwardTestCase):
    """
    The forwarding delivery against downstreams that say anything, right or wrong, or
    nothing, with a client that sends whole transactions or not: the client only ever
    gets well-formed replies, nothing is logged as a failure, no message gets 250 that
    the downstream did not take, and nothing is left once the client has gone.
    """

    def setUp(self) -> None:
        super().setUp()
        self.capture = LogCapture(self)

    @settings(max_examples=300, deadline=None)
    @given(_scripts(), _CLIENT_STEPS, st.booleans(), st.booleans())
    # Each way of not taking a message, at least once in every run.
    @example(
        {**_RIGHT, ".": [b"451 4.3.0 later\r\n"]}, [("mail", 1, MESSAGE, True, 0)], False, False
    )
    @example({**_RIGHT, ".": [None]}, [("mail", 2, MESSAGE, True, 0)], False, False)
    @example({**_RIGHT, ".": [b"queued\r\n"]}, [("mail", 1, MESSAGE, True, 7)], False, False)
    @example(
        {**_RIGHT, "DATA": [b"250 2.0.0 odd\r\n"]}, [("mail", 1, MESSAGE, True, 0)], False, False
    )
    def test_anyDownstream(
        self,
        script: dict[str, list[bytes | None]],
        steps: list[tuple[Any, ...]],
        downstreamLMTP: bool,
        frontLMTP: bool,
    ) -> None:
        """
        Whatever the downstream answers and whatever the client does: well-formed
        replies, no failure logged, no 250 for a message the downstream did not take
        with a 2xx, no connection or timer left; over SMTP or LMTP to the downstream, from
        an SMTP or LMTP front.
        """
        # A new network and clock for each example (trial ran setUp once for them all).
        ForwardTestCase.setUp(self)
        first = len(self.capture.events)
        taken = [0]
        client = self.front(
            lambda: _CountingFactory(script, taken), lmtp=downstreamLMTP, frontLMTP=frontLMTP
        )
        raw = bytearray()

        def write(data: bytes) -> None:
            if not client.closed:
                client.protocol.dataReceived(data)
            self.network.run()
            raw.extend(client.transport.value())
            client.transport.clear()
            client.received()

        for step in steps:
            if step[0] == "mail":
                _, recipients, message, finished, chunkSize = step
                write(b"MAIL FROM:<a@example.org>\r\n")
                for i in range(recipients):
                    write(b"RCPT TO:<r%d@example.net>\r\n" % i)
                if not chunkSize:
                    write(b"DATA\r\n")
                    data = stuff(message)
                    write(data if finished else data.removesuffix(b".\r\n"))
                    continue
                chunks = [message[i : i + chunkSize] for i in range(0, len(message), chunkSize)]
                for chunk in chunks:
                    write(b"BDAT %d\r\n%s" % (len(chunk), chunk))
                if finished:
                    write(b"BDAT 0 LAST\r\n")
            elif step[0] == "line":
                write(step[1].encode() + b"\r\n")
            else:
                self.clock.advance(step[1])
                write(b"")
        client.disconnect()
        for _ in range(5):
            self.clock.advance(100)
            self.network.run()
        raw.extend(client.transport.value())
        # A Deferred left failed with nobody to handle it logs its failure when collected.
        gc.collect(1)

        self.assertEqual(malformedReplyLines(bytes(raw)), [], bytes(raw))
        events = self.capture.events[first:]
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        queued = [
            e for e in events if e.get("event") == "transaction" and e["result"].startswith("250")
        ]
        self.assertLessEqual(len(queued), taken[0])
        self.assertEqual(self.network.ends, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


@implementer(IProtocolFactory)
class _CountingFactory(ScriptedFactory):
    """
    Makes L{_Counting} downstreams that add to C{counts}.
    """

    def __init__(self, script: dict[str, Any], counts: list[int]) -> None:
        super().__init__(script)
        self.counts = counts

    def buildProtocol(self, addr: IAddress) -> _Counting:
        # Each connection gets its own copy of the script's lists, used up in turn.
        script = {k: list(v) if isinstance(v, list) else v for k, v in self.script.items()}
        protocol = _Counting(script, self.counts)
        self.built.append(protocol)
        return protocol


def _split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in pairwise(points)]


def _stuffed(chunks: Iterable[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(chunk) for chunk in chunks) + stuffer.end()


def _decoded(data: bytes, policy: str) -> tuple[bytes, bytes | None]:
    decoder = DataDecoder(policy=policy)
    return decoder.feed(data)


def _canonical(message: bytes) -> bytes:
    # What the normalize policy makes of a message: every line ending CRLF, and one at the
    # end.
    message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


class DotStufferTests(SynchronousTestCase):
    """
    L{DotStuffer} stuffs across chunk boundaries and emits canonical line endings.
    """

    def test_examples(self) -> None:
        """
        Dots at line starts are doubled, wherever the chunks are cut; the end adds the
        missing CRLF and the dot line.
        """
        stuffer = DotStuffer()
        self.assertEqual(stuffer.feed(b".a\r"), b"..a")
        self.assertEqual(stuffer.feed(b"\n"), b"\r\n")
        self.assertEqual(stuffer.feed(b"."), b"..")
        self.assertEqual(stuffer.feed(b"\r\n"), b"\r\n")
        self.assertEqual(stuffer.feed(b"x"), b"x")
        self.assertEqual(stuffer.end(), b"\r\n.\r\n")
        self.assertEqual(DotStuffer().end(), b".\r\n")

    def test_bareLineEndings(self) -> None:
        """
        A bare LF or CR becomes CRLF, and a dot after it is a line start.
        """
        self.assertEqual(_stuffed([b"a\n.b\r.c\r"]), b"a\r\n..b\r\n..c\r\n.\r\n")
        self.assertEqual(_stuffed([b"a\r", b"\r", b"\n.\n"]), b"a\r\n\r\n..\r\n.\r\n")

    @_FAST
    @given(st.lists(_LINE), st.sampled_from(("normalize", "pass")), st.data())
    def test_roundTrip(self, lines: list[bytes], policy: str, data: st.DataObject) -> None:
        """
        For any chunking of any CRLF-terminated message, the decoder gives back the message
        from the stuffed output, which is what stuff() makes of it.
        """
        message = b"".join(line + b"\r\n" for line in lines)
        cuts = data.draw(st.lists(st.integers(0, len(message))))
        out = _stuffed(_split(message, cuts))
        self.assertEqual(out, stuff(message))
        self.assertEqual(_decoded(out, policy), (message, b""))

    @_FAST
    @given(st.one_of(st.binary(), _INTERESTING), st.data())
    def test_anyBytes(self, message: bytes, data: st.DataObject) -> None:
        """
        For any bytes and any chunking the output has only CRLF line endings, ends at its
        first end-of-data, and decodes to the message with canonical line endings.
        """
        cuts = data.draw(st.lists(st.integers(0, len(message))))
        out = _stuffed(_split(message, cuts))
        self.assertEqual(out.count(b"\r"), out.count(b"\r\n"))
        self.assertEqual(out.count(b"\n"), out.count(b"\r\n"))
        self.assertEqual(_decoded(out, "pass"), (_canonical(message), b""))
        self.assertEqual(out, _stuffed([message]))


# -- on the real reactor ------------------------------------------------------------------------


class RealReactorTests(TestCase):
    """
    Over loopback: TLS to the downstream, and the documentation's example.
    """

    timeout = 30

    async def test_tlsDownstream(self) -> None:
        """
        With a TLS endpoint the downstream connection is encrypted and the downstream's
        certificate is checked; the message arrives.
        """
        recorder = RecordingHandler()
        pair = issue(DOWNSTREAM)
        _, port = await startServer(
            self, [recorder], secure=True, key=pair.key, cert=pair.cert, name=DOWNSTREAM
        )
        reactor = theReactor()
        endpoint = wrapClientTLS(
            optionsForClientTLS(DOWNSTREAM, Certificate.loadPEM(authority().cert)),
            TCP4ClientEndpoint(reactor, LOCALHOST, port),
        )
        forward = ForwardDelivery(endpoint, reactor=reactor, serverName=FRONT, timeout=10)
        _, frontPort = await startServer(self, [forward])

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, frontPort, "client.example", timeout=10) as client:
                return client.sendmail("a@example.org", ["b@example.net"], MESSAGE)

        self.assertEqual(await deferToThread(send), {})
        [received] = recorder.messages
        self.assertTrue(received.data.endswith(MESSAGE))
        self.assertTrue(recorder.sessions[0].secure)

    async def test_example(self) -> None:
        """
        The documentation's example: an LMTP front forwarding over LMTP, per recipient.
        """
        recorder = RecordingHandler()
        perRecipient = PerRecipient({"full@example.net": SMTPError(452, "4.2.2 Mailbox full")})
        _, downstreamPort = await startServer(self, [perRecipient, recorder], lmtp=True)
        example = loadExample("forward_lmtp")
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        reactor, running = startExample(
            self, example, LISTEN, f"tcp:host={LOCALHOST}:port={downstreamPort}"
        )
        self.assertFalse(running.called)
        [port] = reactor.ports

        def talk() -> list[tuple[int, bytes]]:
            client = smtplib.LMTP(LOCALHOST, port.getHost().port, timeout=10)
            try:
                client.ehlo("client.example")
                client.mail("a@example.org")
                client.rcpt("ok@example.net")
                client.rcpt("full@example.net")
                client.putcmd("data")
                replies = [client.getreply()]
                client.send(stuff(MESSAGE))
                replies += [client.getreply(), client.getreply()]
                return replies
            finally:
                client.close()

        replies = await deferToThread(talk)
        self.assertEqual([code for code, _ in replies], [354, 250, 452])
        self.assertIn(b"Mailbox full", replies[2][1])
        [received] = recorder.messages
        self.assertTrue(received.data.endswith(MESSAGE))
        self.assertIn(b" with LMTP id ", received.data)
        self.assertIn("LMTP server listening on", output.getvalue())


class DocumentationTests(SynchronousTestCase):
    """
    The page shows the example these tests run.
    """

    def test_exampleIncluded(self) -> None:
        """
        The forwarding page includes the example verbatim, and is in the table of contents.
        """
        page = (EXAMPLES.parent / "delivery-forward.rst").read_text(encoding="utf-8")
        self.assertIn(".. literalinclude:: examples/forward_lmtp.py\n", page)
        index = (EXAMPLES.parent / "index.rst").read_text(encoding="utf-8")
        self.assertIn("   delivery-forward\n", index)


# -- REQUIRETLS and TLS-Required: No -------------------------------------------------------------

#: What a downstream that offers REQUIRETLS says to EHLO.
_REQUIRETLS_EHLO = b"250-scripted.example\r\n250-ENHANCEDSTATUSCODES\r\n250 REQUIRETLS\r\n"
#: A message that asks to be relayed even where TLS policy would refuse (RFC 8689).
_TLS_OPTIONAL = b"TLS-Required: No\r\nSubject: hello\r\n\r\nHello.\r\n"


#: What the front says to a REQUIRETLS sender it cannot relay for, code and lines.
_NEEDS_REQUIRETLS = [(550, ("5.7.30 Error: REQUIRETLS support required",))]


def _authorityOnly() -> CertificateOptions:
    """
    Client TLS options that check the certificate against the test authority and no host
    name: what the C{ssl:} endpoint string builds from C{caCertsDir} without C{hostname=}.
    """
    return CertificateOptions(
        trustRoot=trustRootFromCertificates([Certificate.loadPEM(authority().cert)])
    )


@implementer(IOpenSSLClientConnectionCreator)
class _NameSentNotChecked:
    """
    The client side of a handshake that checks the certificate against the test
    authority and sends C{servername} as SNI, but never checks the certificate against
    that name: a hand-made creator that forgot to.
    """

    def __init__(self, servername: str) -> None:
        self.servername = servername
        self.context = _authorityOnly().getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_tlsext_host_name(self.servername.encode("ascii"))
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


class RequireTLSTests(ForwardTestCase):
    """
    A REQUIRETLS transaction goes downstream only over TLS with a certificate validated
    for the downstream's name, to a server that offers REQUIRETLS (RFC 8689 section
    4.2.1), or to the LMTP store on this host; a message tagged C{TLS-Required: No} goes
    as any other, its header kept.
    """

    def tlsEndpoint(
        self, creator: Any, certifiedName: str = DOWNSTREAM, ehlo: bytes = _REQUIRETLS_EHLO
    ) -> IStreamClientEndpoint:
        """
        An endpoint to a scripted downstream that answers EHLO with C{ehlo} (offering
        REQUIRETLS unless told otherwise) over TLS (with a certificate for
        C{certifiedName} from the test authority), the client side of the handshake made
        by C{creator}.
        """
        self.factory = ScriptedFactory({"EHLO": ehlo})
        pair = issue(certifiedName)
        serverTLS = PrivateCertificate.loadPEM(pair.cert + pair.key).options()
        server = TLSMemoryBIOFactory(serverTLS, False, self.factory, clock=self.clock)
        plain = MemoryEndpoint(self.network, lambda: server)
        return wrapClientTLS(creator, plain, clock=self.clock)

    def test_8689_06_relayedOverVerifiedTLS(self) -> None:
        """
        Over TLS whose certificate the endpoint checked, to a downstream offering it,
        MAIL FROM goes with REQUIRETLS, and the message follows.
        """
        creator = optionsForClientTLS(DOWNSTREAM, Certificate.loadPEM(authority().cert))
        downstream = self.relayRequireTLS(self.tlsEndpoint(creator))
        self.assertEqual(downstream.commands[1], "MAIL FROM:<a@example.org> REQUIRETLS")

    def test_8689_06_unverifiedTLSRefused(self) -> None:
        """
        TLS whose certificate nobody checked is no better than clear text for REQUIRETLS,
        even with the downstream's name sent: 550 5.7.30, nothing relayed; without
        REQUIRETLS the sender goes on.
        """
        connection = self.assertRefused(self.tlsEndpoint(ClientTLS(DOWNSTREAM)))
        self.assertEqual(codes(self.exchange(connection, "MAIL FROM:<a@example.org>")), [250])

    def test_8689_06_verifiedTLSWithoutRequireTLSRefused(self) -> None:
        """
        Verified TLS is not enough when the downstream does not offer REQUIRETLS: it
        could not keep the promise further on.  550 5.7.30, nothing relayed.
        """
        creator = optionsForClientTLS(DOWNSTREAM, Certificate.loadPEM(authority().cert))
        ehlo = b"250-scripted.example\r\n250 ENHANCEDSTATUSCODES\r\n"
        self.assertRefused(self.tlsEndpoint(creator, ehlo=ehlo))

    def assertRefused(self, endpoint: IStreamClientEndpoint, *, lmtp: bool = False) -> Connection:
        """
        A front relaying to C{endpoint} answers a REQUIRETLS sender 550 5.7.30 and gives
        the downstream nothing after its hello.

        @return: the connection, for the test to go on with.
        """
        connection = self.frontOverTLS(endpoint, lmtp=lmtp)
        replies = self.exchange(connection, "MAIL FROM:<a@example.org> REQUIRETLS")
        self.assertEqual([(r.code, r.lines) for r in replies], _NEEDS_REQUIRETLS)
        [downstream] = self.factory.built
        self.assertEqual(downstream.commands, [f"{'LHLO' if lmtp else 'EHLO'} {FRONT}"])
        return connection

    def test_8689_06_certificateNotCheckedForHostRefused(self) -> None:
        """
        A certificate checked against a trusted authority but for no host name (the
        C{ssl:} endpoint with C{caCertsDir=} and no C{hostname=}) is not enough: any
        certificate the authority signed, one for C{attacker.example} too, would pass.
        550 5.7.30, whatever name the certificate has.
        """
        for certifiedName in ["attacker.example", DOWNSTREAM]:
            self.assertRefused(self.tlsEndpoint(_authorityOnly(), certifiedName))

    def test_8689_06_certificateForAnotherHostRefused(self) -> None:
        """
        The certificate is checked here against the host name the connection was made
        for: one for C{attacker.example}, on a connection made for the downstream whose
        client checked only the authority, gets 550 5.7.30; one for the downstream goes.
        """
        self.assertRefused(self.tlsEndpoint(_NameSentNotChecked(DOWNSTREAM), "attacker.example"))
        connection = self.frontOverTLS(self.tlsEndpoint(_NameSentNotChecked(DOWNSTREAM)))
        replies = self.exchange(connection, "MAIL FROM:<a@example.org> REQUIRETLS")
        self.assertEqual(codes(replies), [250])
        [downstream] = self.factory.built
        self.assertEqual(downstream.commands[1], "MAIL FROM:<a@example.org> REQUIRETLS")

    def test_8689_06_lmtpStoreOnThisHostIsFinalDelivery(self) -> None:
        """
        An LMTP store on a Unix socket (C{lmtp:unix:/run/dovecot/lmtp}) or on loopback
        (C{lmtp:tcp:127.0.0.1:24}) is final delivery on this host, not a relay: a
        REQUIRETLS message is handed to it without TLS and without the REQUIRETLS
        parameter, and delivered.
        """
        for where in ({"unixPath": "/run/dovecot/lmtp"}, {"host": "127.0.0.1"}, {"host": "::1"}):
            self.assertFinalDelivery(MemoryEndpoint(self.network, self.scripted, **where))

    def scripted(self) -> ScriptedFactory:
        self.factory = ScriptedFactory({})
        return self.factory

    def assertFinalDelivery(self, endpoint: MemoryEndpoint) -> None:
        downstream = self.relayRequireTLS(endpoint, lmtp=True)
        self.assertEqual(
            downstream.commands,
            [f"LHLO {FRONT}", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA"],
        )

    def relayRequireTLS(
        self, endpoint: IStreamClientEndpoint, *, lmtp: bool = False
    ) -> ScriptedServer:
        """
        Send a REQUIRETLS message through a front relaying to C{endpoint}; it must be
        accepted and reach the downstream, which is returned.
        """
        connection = self.frontOverTLS(endpoint, lmtp=lmtp)
        replies = self.exchange(
            connection, "MAIL FROM:<a@example.org> REQUIRETLS", "RCPT TO:<b@example.net>", "DATA"
        )
        self.assertEqual(codes(replies), [250, 250, 354])
        connection.clientTransport.write(stuff(MESSAGE))
        self.assertEqual(codes(self.exchange(connection)), [250])
        [downstream] = self.factory.built
        self.assertTrue(downstream.messages[0].endswith(MESSAGE))
        return downstream

    def test_8689_06_lmtpOverTCPAndSMTPOverUnixSocketRefused(self) -> None:
        """
        LMTP to another host may cross a network, and an SMTP server on a Unix socket
        relays further: both are still refused a REQUIRETLS message without verified TLS.
        """
        self.factory = ScriptedFactory({})
        self.assertRefused(
            MemoryEndpoint(self.network, lambda: self.factory, host="192.0.2.24"), lmtp=True
        )
        self.factory = ScriptedFactory({"EHLO": _REQUIRETLS_EHLO})
        self.assertRefused(
            MemoryEndpoint(self.network, lambda: self.factory, unixPath="/run/postfix/smtp")
        )

    def test_8689_05_taggedMessageRelayedAsItIs(self) -> None:
        """
        A message tagged C{TLS-Required: No} is relayed over the link there is, byte for
        byte after our Received header, with no REQUIRETLS; the data handlers after the
        forwarder see the tag.
        """
        seen: list[bool] = []

        @implementer(IDataHandler)
        class Tags:
            async def onData(self, stream: IMessageStream, session: Session) -> None:
                await readMessage(stream)
                seen.append(session.envelope.tlsRequiredNo)

        self.front(self.downstream, after=[Tags()])
        replies = self.sendmail("alice@example.org", ["bob@example.net"], _TLS_OPTIONAL)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(seen, [True])
        [received] = self.recorder.messages
        self.assertRelayed(received.data, _TLS_OPTIONAL)
        self.assertFalse(received.envelope.requireTLS)
