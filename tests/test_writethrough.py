"""
Replies leave on a plain TCP connection straight to the socket at the end of the
reactor's turn, every connection's together, not through the transport's buffer at the
reactor's next turn.

These tests put a real loopback socket in Twisted's real TCP transport, with a
L{MemoryReactorClock} whose loop runs only when the test says: the end of a turn is the
calls due now (C{advance(0)}), and whatever waits for the next turn is visible as a
writer registered with the reactor.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols import tls
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import ICloseHandler, IMailFromHandler, SMTPServer
from smtpsvc._core._session import Address, Session
from smtpsvc._protocol import SMTPProtocol

from .memorytls import authority, issue
from .protocol_support import Later

#: The server's name, for which its certificate is.
MX = "mx.example.test"


class Connected:
    """
    A client socket and the server's transport and protocol for it.
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        small: bool = False,
        handlers: Sequence[object] = (),
        server: SMTPServer | None = None,
        certified: bool = False,
        **options: Any,
    ) -> None:
        """
        @param small: give both sides small kernel buffers, so that the server's socket
            fills.
        @param server: the server to connect to; by default a new one with C{handlers}
            and C{options}.
        @param certified: give the new server a certificate for L{MX} from the test CA,
            and let TLS gather small writes until this reactor's next turn (not the
            global reactor's).
        """
        if certified:
            certificate = issue(MX)
            options.update(key=certificate.key, cert=certificate.cert)
        if server is None:
            server = SMTPServer(
                handlers,
                reactor=MemoryReactorClock(),
                name=MX,
                earlyTalkerDelay=0,
                disableReverseLookup=True,
                authOptional=True,
                **options,
            )
        self.server = server
        self.reactor = cast(MemoryReactorClock, server.reactor)
        listener = socket.socket()
        testCase.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.client = socket.socket()
        testCase.addCleanup(self.client.close)
        if small:
            # Small kernel buffers on both sides, so that the server's socket fills.
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.client.settimeout(5)
        self.client.connect(listener.getsockname())
        accepted, peer = listener.accept()
        testCase.addCleanup(accepted.close)
        if small:
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        accepted.setblocking(False)
        self.protocol = server.buildProtocol(None)
        port = SimpleNamespace(_realPortNumber=listener.getsockname()[1])
        self.transport = tcp.Server(accepted, self.protocol, peer, cast(Any, port), 1, self.reactor)
        self.protocol.makeConnection(self.transport)
        if certified:
            testCase.patch(tls, "_get_default_clock", lambda: self.reactor)

    def waiting(self) -> bool:
        """
        Whether the transport holds output for the reactor's next turn.
        """
        return self.transport in self.reactor.getWriters()

    def receive(self, size: int = 65536) -> bytes:
        """
        What the server sent by the end of this turn of the reactor.
        """
        self.endTurn()
        return self.client.recv(size)

    def read(self, data: bytes) -> None:
        """
        The client sends C{data}; the server reads it, and the turn goes on.
        """
        self.client.sendall(data)
        self.transport.doRead()

    def endTurn(self) -> None:
        """
        Run the calls due now, as the reactor does once it has read from every ready
        connection (past each batch of pipelined lines the protocol also lets the reactor
        have a turn), until the connection is closing or closed.
        """
        transport = self.transport
        while (
            self.reactor.getDelayedCalls() and transport.connected and not transport.disconnecting
        ):
            due = min(call.getTime() for call in self.reactor.getDelayedCalls())
            if due > self.reactor.seconds():
                break
            self.reactor.advance(0)

    def say(self, data: bytes) -> None:
        """
        The client sends C{data}; the server reads it, as the reactor would.
        """
        self.read(data)
        self.endTurn()

    def flush(self) -> None:
        """
        What the transport holds for the reactor's next turn goes out, as the reactor would
        send it.
        """
        while self.waiting():
            self.transport.doWrite()

    def startTLS(self) -> bytes:
        """
        The client reads the greeting, says EHLO and then STARTTLS.

        @return: the reply to STARTTLS.
        """
        self.receive()
        self.say(b"EHLO client.example\r\n")
        self.receive()
        self.say(b"STARTTLS\r\n")
        return self.receive()

    def handshake(self) -> TLSClient:
        """
        The client's TLS, which trusts the test CA and expects L{MX}, once it has
        completed the handshake.
        """
        context = ssl.create_default_context(cadata=authority().cert.decode("ascii"))
        client = TLSClient(self, context, MX)
        client.handshake()
        return client


class TLSClient:
    """
    The client's end of TLS over a L{Connected} socket, run by Python's C{ssl} through
    memory BIOs, so that the test decides when bytes move.
    """

    def __init__(self, connected: Connected, context: ssl.SSLContext, serverHostname: str) -> None:
        self.connected = connected
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=serverHostname)

    def sent(self) -> bytes:
        """
        What TLS wrote since the last call, for the test to send.
        """
        return self._outgoing.read()

    def toServer(self) -> None:
        """
        What TLS wrote goes to the server, which reads it and sends what it answers.
        """
        data = self.sent()
        if data:
            self.connected.say(data)
        self.connected.flush()

    def handshake(self) -> None:
        """
        Complete the handshake: each flight to the server, its answer back (waited for:
        the server answers every flight but the client's last).
        """
        for _ in range(20):
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.toServer()
                self._incoming.write(self.connected.receive())
            else:
                self.toServer()
                return
        raise AssertionError("the TLS handshake did not complete")

    def readUntil(self, end: bytes, attempts: int = 5) -> bytes:
        """
        The decrypted bytes the server sends, read until they end with C{end}.
        """
        received = b""
        for _ in range(attempts):
            with contextlib.suppress(ssl.SSLWantReadError):
                received += self.tls.read(65536)
            if received.endswith(end):
                return received
            # The reply may have been made outside a read: the TLS layer's write is then
            # for the reactor to send.
            self.connected.endTurn()
            self.connected.flush()
            self._incoming.write(self.connected.client.recv(65536))
        raise AssertionError(f"nothing through TLS ending {end!r}; received {received!r}")

    def closedByServer(self) -> bool:
        """
        Whether the server ends TLS (its close_notify comes) without sending more.
        """
        for _ in range(3):
            try:
                data = self.tls.read(65536)
            except ssl.SSLZeroReturnError:
                return True
            except ssl.SSLWantReadError:
                self.connected.endTurn()
                self.connected.flush()
                ready = select.select([self.connected.client], [], [], 0.2)[0]
                if not ready:
                    return False
                self._incoming.write(self.connected.client.recv(65536))
            else:
                if data:
                    raise AssertionError(f"the server sent {data!r}")
                # (Python's ssl reads the close_notify as the end of the data.)
                return True
        return False

    def command(self, line: bytes) -> bytes:
        """
        Send C{line} (CRLF added) through TLS and return the decrypted reply, read up to
        its last line.
        """
        self.tls.write(line + b"\r\n")
        self.toServer()
        received = b""
        for _ in range(20):
            try:
                received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._incoming.write(self.connected.receive())
                continue
            lastLine = received.rstrip(b"\r\n").rpartition(b"\r\n")[2]
            if received.endswith(b"\r\n") and lastLine[3:4] == b" ":
                return received
        raise AssertionError(f"no complete reply through TLS; received {received!r}")


class WriteThroughTests(SynchronousTestCase):
    """
    L{SMTPProtocol} writes to the socket of a plain TCP transport directly while the
    transport's own buffer is empty (Twisted issue #5303: every write otherwise waits for
    the next reactor turn, two epoll_ctl calls and a wake-up per reply), at the end of
    the turn in which it was written.
    """

    def test_greetingSentAtOnce(self) -> None:
        """
        The greeting, which no reading made, is on the wire when the connection is made;
        nothing waits for the end of the turn or the next one.
        """
        connected = Connected(self)
        self.assertTrue(connected.client.recv(100).startswith(b"220 mx.example.test "))
        self.assertFalse(connected.waiting())

    def test_lateAnswerSentAtOnce(self) -> None:
        """
        The reply a handler makes later (from a timer, say, which a reactor runs after
        its reading) is on the wire when it is made: waiting for the end of the turn
        would let the reactor read first, perhaps the client's half-close.
        """
        sender = LaterSender()
        connected = Connected(self, handlers=[sender])
        connected.receive()
        connected.say(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertTrue(connected.receive().startswith(b"250-mx.example.test"))
        sender.pending[0].callback(None)
        self.assertEqual(connected.client.recv(100), b"250 Accepted\r\n")
        self.assertFalse(connected.waiting())

    def test_connectionsSentTogether(self) -> None:
        """
        The replies to what the server read from several connections in one turn leave
        together when it ends, each in one send.
        """
        first = Connected(self)
        second = Connected(self, server=first.server)
        first.receive()
        second.receive()
        sent: list[bytes] = []

        class Spy:
            # A socket's send method cannot be replaced; the socket the protocol uses can.
            def __init__(self, real: socket.socket) -> None:
                self.real = real

            def send(self, data: bytes) -> int:
                sent.append(data)
                return self.real.send(data)

        for connected in (first, second):
            connected.protocol._socket = cast(socket.socket, Spy(connected.transport.socket))
        first.read(b"NOOP\r\nNOOP\r\n")
        second.read(b"HELP\r\n")
        self.assertEqual(sent, [])
        first.endTurn()
        self.assertEqual(len(sent), 2)
        self.assertEqual(sent[0], b"250 OK\r\n250 OK\r\n")
        self.assertEqual(first.receive(), sent[0])
        self.assertEqual(second.receive(), sent[1])
        self.assertTrue(sent[1].startswith(b"214"), sent[1])
        self.assertFalse(first.waiting() or second.waiting())

    def test_pipelinedRepliesInOneSend(self) -> None:
        """
        The replies to pipelined commands leave together as the input is handled.
        """
        connected = Connected(self)
        connected.receive()
        connected.say(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
        replies = connected.receive()
        self.assertEqual(replies.count(b"\r\n250 "), 3, replies)
        self.assertTrue(replies.endswith(b"250 Accepted\r\n250 OK\r\n"), replies)
        self.assertFalse(connected.waiting())

    def test_queuedRepliesSentWhenTheClientHalfCloses(self) -> None:
        """
        Should the transport report the connection lost (a reactor that reads the
        client's half-close before it runs the end of the turn) while replies wait for
        the end of the turn, they are sent first: the client still reads.
        """
        connected = Connected(self)
        connected.receive()
        connected.read(b"NOOP\r\n")
        connected.client.shutdown(socket.SHUT_WR)
        connected.transport.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(connected.client.recv(100), b"250 OK\r\n")

    def test_oneConnectionsFailureSpared(self) -> None:
        """
        Should sending one connection's replies raise (a bug), it is logged and the other
        connections' replies of the turn still go.
        """
        first = Connected(self)
        second = Connected(self, server=first.server)
        first.receive()
        second.receive()
        real = SMTPProtocol._flush

        def flush(protocol: SMTPProtocol) -> None:
            if protocol is first.protocol:
                raise RuntimeError("a bug")
            real(protocol)

        self.patch(SMTPProtocol, "_flush", flush)
        first.read(b"NOOP\r\n")
        second.read(b"NOOP\r\n")
        first.endTurn()
        self.assertEqual(second.receive(), b"250 OK\r\n")
        [failure] = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(str(failure.value), "a bug")

    def test_orderKeptWhenTheSocketIsFull(self) -> None:
        """
        When the socket takes only part of a reply, the rest waits in the transport, and
        so does every later reply until it has gone: the client gets them all, in order.
        """
        connected = Connected(self, small=True, maxJunkCommands=None)
        connected.receive()
        expected = b"250 OK\r\n" * 2000
        connected.say(b"NOOP\r\n" * 2000)
        self.assertTrue(connected.waiting())
        received = b""
        for _ in range(10000):
            if len(received) >= len(expected):
                break
            received += connected.receive()
            if connected.waiting():
                connected.transport.doWrite()
        self.assertEqual(received, expected)
        self.assertFalse(connected.waiting())

    def test_notThroughTLS(self) -> None:
        """
        After STARTTLS nothing is written to the socket directly: the 220 goes out in
        clear, and what follows is for TLS to send (so, until the client begins its
        handshake, the socket stays silent).  Once the handshake is done the reply to
        EHLO comes encrypted: a reply written to the socket past TLS would reach the
        client in clear and break its TLS.
        """
        connected = Connected(self, certified=True)
        self.assertEqual(connected.startTLS(), b"220 Ready to start TLS\r\n")
        self.assertTrue(connected.transport.TLS)
        connected.client.settimeout(0.2)
        with self.assertRaises(TimeoutError):
            connected.receive()
        connected.client.settimeout(5)

        client = connected.handshake()
        self.assertTrue(connected.protocol.session.secure)
        reply = client.command(b"EHLO client.example")
        self.assertTrue(reply.startswith(b"250-mx.example.test "), reply)
        self.assertNotIn(b"STARTTLS", reply)
        self.assertFalse(connected.waiting())

    def test_closedRightAfterTheLastReply(self) -> None:
        """
        When the server closes the connection (after QUIT, say) and its last reply went
        straight to the socket, the socket is closed at the end of the same turn: the
        client reads the reply and then the end of the stream, with nothing left waiting
        for the reactor to find the socket writable.  The close handlers have run.
        """
        closed: list[Session] = []

        @implementer(ICloseHandler)
        class Closing:
            def onClose(self, session: Session) -> None:
                closed.append(session)

        connected = Connected(self, handlers=[Closing()])
        connected.receive()
        connected.read(b"NOOP\r\nQUIT\r\n")
        self.assertTrue(connected.transport.connected)
        connected.endTurn()
        self.assertFalse(connected.transport.connected)
        self.assertFalse(connected.waiting())
        self.assertNotIn(connected.transport, connected.reactor.getReaders())
        self.assertEqual(connected.client.recv(100), b"250 OK\r\n221 Bye\r\n")
        self.assertEqual(connected.client.recv(100), b"")
        self.assertEqual(closed, [connected.protocol.session])
        self.assertEqual(connected.server.connectionCount, 0)

    def test_closedOnceTheSocketHasTakenEverything(self) -> None:
        """
        When the socket could not take all the replies before the close, the rest waits
        in the transport, which closes the connection once it has sent them: the client
        gets every reply, then the end of the stream.
        """
        connected = Connected(self, small=True, maxJunkCommands=None)
        connected.receive()
        expected = b"250 OK\r\n" * 2000 + b"221 Bye\r\n"
        connected.say(b"NOOP\r\n" * 2000 + b"QUIT\r\n")
        self.assertTrue(connected.waiting())
        self.assertTrue(connected.transport.disconnecting)
        received = b""
        for _ in range(10000):
            if connected.waiting():
                # As the reactor does: write, and close when the transport says so.
                why = connected.transport.doWrite()
                if why is not None:
                    connected.transport.connectionLost(Failure(why))
            data = connected.client.recv(65536)
            if not data:
                break
            received += data
        self.assertEqual(received, expected)
        self.assertFalse(connected.transport.connected)

    def test_otherTransportsUseWrite(self) -> None:
        """
        Any transport but Twisted's plain TCP one gets every byte through C{write}.
        """
        from twisted.internet.testing import StringTransport

        from smtpsvc._protocol import _writableSocket

        self.assertIsNone(_writableSocket(StringTransport()))
        self.assertIsNotNone(_writableSocket(Connected(self).transport))


@implementer(IMailFromHandler)
class LaterSender(Later[None]):
    """
    Answers about the sender when the test says so.
    """

    def onMailFrom(self, address: Address, session: Session) -> Deferred[None]:
        return self.later()


class ReadingTests(SynchronousTestCase):
    """
    Input stops (the transport's C{stopReading}, a system call) only while an answer is
    really awaited, not for each pause that a synchronous answer lifts at once.
    """

    def stops(self, connected: Connected) -> list[None]:
        calls: list[None] = []
        original = connected.transport.stopReading

        def stopReading() -> None:
            calls.append(None)
            original()

        connected.transport.stopReading = stopReading  # type: ignore[method-assign]
        return calls

    def test_synchronousTransaction(self) -> None:
        """
        A whole transaction whose handlers all answer at once never stops the reading.
        """
        connected = Connected(self)
        stops = self.stops(connected)
        connected.receive()
        connected.say(b"EHLO client.example\r\n")
        connected.receive()
        for command in (b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.org>", b"DATA"):
            connected.say(command + b"\r\n")
            connected.receive()
        connected.say(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(connected.receive().startswith(b"250 "))
        self.assertEqual(stops, [])
        self.assertIn(connected.transport, connected.reactor.getReaders())

    def test_awaitedAnswer(self) -> None:
        """
        While a handler's answer is awaited, the transport does not read; once it comes,
        the reply is sent and the reading goes on.
        """
        sender = LaterSender()
        connected = Connected(self, handlers=[sender])
        stops = self.stops(connected)
        connected.receive()
        connected.say(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
        connected.receive()
        self.assertEqual(len(stops), 1)
        self.assertNotIn(connected.transport, connected.reactor.getReaders())
        sender.pending[0].callback(None)
        self.assertEqual(connected.receive(), b"250 Accepted\r\n250 OK\r\n")
        self.assertIn(connected.transport, connected.reactor.getReaders())


class UnsynchronizedTests(SynchronousTestCase):
    """
    Under C{forbidUnauthPipelining}, what a client sent while the reply it had to wait
    for was held back by a handler is found in the kernel's buffer, where it waits while
    the server does not read; over TLS, whose records there cannot be peeked at, the
    server reads on while the reply is held.
    """

    def heldMail(self) -> tuple[LaterSender, Connected]:
        """
        A client that said HELO (so PIPELINING is not offered) and MAIL, whose reply a
        handler holds back.
        """
        sender = LaterSender()
        connected = Connected(self, handlers=[sender], forbidUnauthPipelining=True)
        connected.receive()
        connected.say(b"HELO client.example\r\n")
        connected.receive()
        connected.say(b"MAIL FROM:<a@example.org>\r\n")
        return sender, connected

    def test_2920_07_answerRightAfterTheHeldReply(self) -> None:
        """
        The kernel is looked at before the held reply leaves: a client that reads it and
        answers at once, even before the server has done anything else, is served.
        """
        sender, connected = self.heldMail()
        read: list[bytes] = []

        class Quick:
            # The client reads each reply the moment it is sent and answers the 250.
            def __init__(self, real: socket.socket) -> None:
                self.real = real

            def send(self, data: bytes) -> int:
                sent = self.real.send(data)
                read.append(connected.client.recv(100))
                if read[-1] == b"250 Accepted\r\n":
                    connected.client.sendall(b"RCPT TO:<b@example.org>\r\n")
                    select.select([self.real], [], [], 5)
                return sent

            def recv(self, size: int, flags: int = 0) -> bytes:
                return self.real.recv(size, flags)

        connected.protocol._socket = cast(socket.socket, Quick(connected.transport.socket))
        sender.pending[0].callback(None)
        self.assertEqual(read, [b"250 Accepted\r\n"])
        connected.say(b"")
        self.assertEqual(read, [b"250 Accepted\r\n", b"250 Accepted\r\n"])
        self.assertFalse(connected.transport.disconnecting)

    def test_2920_07_sentWhileReadingPaused(self) -> None:
        """
        A command sent before the held reply to MAIL (after HELO, which offers no
        PIPELINING) gets 554 5.5.0 after that reply; a client that waits is served.
        """
        for early in (True, False):
            sender, connected = self.heldMail()
            self.assertNotIn(connected.transport, connected.reactor.getReaders())
            if early:
                connected.client.sendall(b"RCPT TO:<b@example.org>\r\n")
                # Loopback delivers it to the server's socket a moment later.
                select.select([connected.transport.socket], [], [], 5)
            sender.pending[0].callback(None)
            replies = connected.receive()
            if early and not replies.endswith(b"synchronization\r\n"):
                # The late reply went at once, the 554 in a send of its own.
                replies += connected.receive()
            if early:
                self.assertEqual(
                    replies, b"250 Accepted\r\n554 Error: SMTP protocol synchronization\r\n"
                )
                self.assertFalse(connected.transport.connected)
                self.assertEqual(connected.client.recv(100), b"")
            else:
                self.assertEqual(replies, b"250 Accepted\r\n")
                connected.say(b"RCPT TO:<b@example.org>\r\n")
                self.assertEqual(connected.receive(), b"250 Accepted\r\n")
                self.assertFalse(connected.transport.disconnecting)

    def test_2920_07_sentWhileReplyHeldOverTLS(self) -> None:
        """
        Over TLS, whose records in the kernel cannot be peeked at, the server reads on
        while a reply the client must wait for is held: a command sent before the held
        reply to MAIL (after HELO) gets 554 5.5.0 after that reply, and a client that
        waits is served.
        """
        for early in (True, False):
            sender = LaterSender()
            connected = Connected(
                self, handlers=[sender], certified=True, forbidUnauthPipelining=True
            )
            connected.startTLS()
            client = connected.handshake()
            self.assertTrue(client.command(b"HELO client.example").startswith(b"250 "))
            client.tls.write(b"MAIL FROM:<a@example.org>\r\n")
            client.toServer()
            self.assertEqual(len(sender.pending), 1)
            # Held, and still reading.
            self.assertIn(connected.transport, connected.reactor.getReaders())
            if early:
                client.tls.write(b"RCPT TO:<b@example.org>\r\n")
                connected.client.sendall(client.sent())
                # Loopback delivers it to the server's socket a moment later; the reactor
                # then reads it, if the transport is reading.
                select.select([connected.transport.socket], [], [], 5)
                if connected.transport in connected.reactor.getReaders():
                    connected.transport.doRead()
            sender.pending[0].callback(None)
            if early:
                self.assertEqual(
                    client.readUntil(b"synchronization\r\n"),
                    b"250 Accepted\r\n554 Error: SMTP protocol synchronization\r\n",
                )
                self.assertTrue(client.closedByServer())
            else:
                self.assertEqual(client.readUntil(b"\r\n"), b"250 Accepted\r\n")
                self.assertEqual(client.command(b"RCPT TO:<b@example.org>"), b"250 Accepted\r\n")
                self.assertFalse(client.closedByServer())


class ReadSizeTests(SynchronousTestCase):
    """
    While a message comes in, the transport reads in larger pieces.
    """

    def test_largerDuringData(self) -> None:
        """
        Once a read during DATA has filled Twisted's default 64 KB, the TCP transport
        reads 256 KB at a time; after the final dot it is back to the default.  A small
        message never changes it.
        """
        connected = Connected(self)
        transport = connected.transport
        default = tcp.Server.bufferSize
        self.assertEqual(default, 64 * 1024)
        connected.receive()
        connected.say(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
        connected.receive()
        for size in (10, 300_000):
            connected.say(b"DATA\r\n")
            self.assertTrue(connected.receive().startswith(b"354 "))
            self.assertEqual(transport.bufferSize, default)
            line = b"x" * 998 + b"\r\n"
            connected.say(b"Subject: x\r\n\r\n" + line * (size // len(line)))
            self.assertEqual(transport.bufferSize, 256 * 1024 if size > default else default)
            connected.client.sendall(b".\r\n")
            for _ in range(20):
                # Read on while there is more: the 64 KB reads leave some in the kernel.
                if not select.select([transport.socket], [], [], 0.1)[0]:
                    break
                transport.doRead()
            self.assertTrue(connected.receive().startswith(b"250 "))
            self.assertEqual(transport.bufferSize, default)
            connected.say(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n")
            connected.receive()

    def test_largerOverTLS(self) -> None:
        """
        Over TLS, which hands the protocol a record at a time, a message is large once
        more than 64 KB of it has come: the transport then reads 256 KB at a time too.
        """
        connected = Connected(self, certified=True)
        transport = connected.transport
        connected.startTLS()
        client = connected.handshake()
        client.command(b"EHLO client.example")
        client.command(b"MAIL FROM:<a@example.org>")
        client.command(b"RCPT TO:<b@example.org>")
        self.assertTrue(client.command(b"DATA").startswith(b"354"))
        self.assertEqual(transport.bufferSize, tcp.Server.bufferSize)
        client.tls.write((b"x" * 998 + b"\r\n") * 200)
        connected.client.sendall(client._outgoing.read())
        for _ in range(100):
            if not select.select([transport.socket], [], [], 0.1)[0]:
                break
            transport.doRead()
        self.assertEqual(transport.bufferSize, 256 * 1024)
