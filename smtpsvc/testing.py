"""
Test doubles for people who write handlers: test them without sockets.

L{RecordingHandler} accepts everything and keeps each message; L{MemoryClient} talks to
an L{SMTPServer} in memory, on a fake clock, and gives back the server's replies::

    from twisted.internet.task import Clock
    from smtpsvc import SMTPServer
    from smtpsvc.testing import MemoryClient, RecordingHandler

    recorder = RecordingHandler()
    server = SMTPServer([MyPolicy(), recorder], reactor=Clock(), authOptional=True)
    client = MemoryClient(server)
    assert client.send("EHLO client.example")[0].code == 250
    message = b"Subject: hi\\r\\n\\r\\nhello\\r\\n"
    replies = client.sendmail("a@example.org", ["b@example.net"], message)
    assert recorder.messages[0].data == message
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from ._core._data import stuff
from ._core._session import Envelope, Session
from ._server import SMTPServer
from ._stream import readMessage
from .interfaces import (
    ICloseHandler,
    IConnectHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
)

__all__ = ["MemoryClient", "ReceivedMessage", "RecordingHandler", "ServerReply", "stuff"]


@dataclass(frozen=True)
class ReceivedMessage:
    """
    A message as L{RecordingHandler} kept it.

    @ivar envelope: the transaction's envelope once the whole message had arrived.
    @ivar data: the message bytes.
    @ivar sessionId: the id of the session it came in on.
    @ivar remoteAddress: the client's address.
    @ivar user: the authenticated user, if any.
    """

    envelope: Envelope
    data: bytes
    sessionId: str
    remoteAddress: str
    user: Any = None


@implementer(IConnectHandler, IMailFromHandler, IRcptToHandler, IDataHandler, ICloseHandler)
class RecordingHandler:
    """
    Accepts every client, sender, recipient and message, and records them.

    @ivar sessions: every session that connected, in order.
    @ivar senders: every sender address accepted.
    @ivar recipients: every recipient address accepted.
    @ivar messages: every message received, as L{ReceivedMessage}.
    @ivar closed: every session that ended.
    """

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.senders: list[str] = []
        self.recipients: list[str] = []
        self.messages: list[ReceivedMessage] = []
        self.closed: list[Session] = []

    def onConnect(self, session: Session) -> None:
        self.sessions.append(session)

    def onMailFrom(self, address: Any, session: Session) -> None:
        self.senders.append(address.address)

    def onRcptTo(self, address: Any, session: Session) -> None:
        self.recipients.append(address.address)

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        data = await readMessage(stream)
        # The envelope as the whole message leaves it: its header may tag it
        # (tlsRequiredNo), which a copy taken before reading would miss.
        self.messages.append(
            ReceivedMessage(session.envelope, data, session.id, session.remoteAddress, session.user)
        )

    def onClose(self, session: Session) -> None:
        self.closed.append(session)


@dataclass(frozen=True)
class ServerReply:
    """
    One reply as the client saw it.

    @ivar code: the reply code.
    @ivar lines: the text of each line, without the code and separator.
    """

    code: int
    lines: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        """
        The text of all lines, joined by newlines.
        """
        return "\n".join(self.lines)


def parseReplies(data: bytes) -> list[ServerReply]:
    """
    Split the bytes a server sent into replies (a multi-line reply is one reply); empty
    lines are skipped, and an incomplete last line (no CRLF yet) is ignored.
    """
    replies: list[ServerReply] = []
    lines: list[str] = []
    for raw in data.split(b"\r\n")[:-1]:
        if not raw:
            continue
        line = raw.decode("utf-8", "replace")
        lines.append(line[4:])
        if line[3:4] != "-":
            replies.append(ServerReply(int(line[:3]), tuple(lines)))
            lines = []
    return replies


class MemoryClient:
    """
    A client connected to C{server} through memory.

    The server must have been built with a L{Clock} as its reactor; the client advances
    it past the early-talker delay so that the greeting is there when it is made.

    The server offers STARTTLS as on a TCP listener and answers it, but this client
    cannot do the TLS handshake that follows a C{220}: writing after that raises
    L{RuntimeError}.

    @ivar greeting: the greeting, or the refusal sent instead of it.
    @ivar transport: the server side's L{StringTransport}.
    """

    def __init__(self, server: SMTPServer, peer: tuple[str, int] = ("192.0.2.1", 40000)) -> None:
        clock = server.reactor
        if not isinstance(clock, Clock):
            raise TypeError("MemoryClient needs a server built with reactor=Clock()")
        self.clock = clock
        self.server = server
        # An IPv6 client (a host with a colon) talks to the server's IPv6 address.
        address = IPv6Address if ":" in peer[0] else IPv4Address
        self.transport = StringTransport(
            hostAddress=address("TCP", "::1" if address is IPv6Address else "127.0.0.1", 25),
            peerAddress=address("TCP", peer[0], peer[1]),
        )
        # Like a TCP connection, the transport can start TLS, so that the server offers
        # STARTTLS as it would to a real client; no handshake follows (see write).
        alsoProvides(self.transport, ITLSTransport)
        self.transport.startTLS = self._startTLS  # type: ignore[attr-defined]
        self._tlsStarted = False
        self.protocol = server.buildProtocol(self.transport.getPeer())
        self._lost = False
        self.protocol.makeConnection(self.transport)  # type: ignore[no-untyped-call]
        self.clock.advance(server.options.earlyTalkerDelay)
        received = self.received()
        self.greeting = received[0] if received else None

    @property
    def session(self) -> Session:
        """
        The server's session for this client.
        """
        return self.protocol.session

    @property
    def closed(self) -> bool:
        """
        Whether the server closed the connection.
        """
        return bool(self.transport.disconnecting)

    def received(self) -> list[ServerReply]:
        """
        The replies the server sent since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        # An incomplete last line, which parseReplies leaves out, waits for the next call.
        self.transport.io.write(data.rpartition(b"\r\n")[2])
        if self.transport.disconnecting:
            # A real transport would now report the connection lost; do it here.
            self._loseConnection()
        return parseReplies(data)

    def write(self, data: bytes) -> list[ServerReply]:
        """
        Send raw bytes and return the replies they caused.
        """
        if self._tlsStarted:
            raise RuntimeError("MemoryClient cannot do the TLS handshake STARTTLS began")
        self.protocol.dataReceived(data)
        return self.received()

    def send(self, *commands: str) -> list[ServerReply]:
        """
        Send command lines (CRLF is added) in one write and return the replies.
        """
        return self.write(b"".join(c.encode("utf-8") + b"\r\n" for c in commands))

    def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> list[ServerReply]:
        """
        Run one transaction: MAIL, each RCPT, DATA, the dot-stuffed message.

        @return: every reply to the transaction, the final one last (unless a data
            handler answers later: its reply is then in L{received} after the clock has
            moved on).
        @raise RuntimeError: when a handler answers MAIL, a RCPT or DATA later, on the
            clock: without the reply to DATA, the message cannot be sent.
        """
        replies = self.send(f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients))
        replies += self.send("DATA")
        if len(replies) < len(recipients) + 2 and not self.closed:
            raise RuntimeError(
                f"sendmail: {len(replies)} of the {len(recipients) + 2} replies to MAIL, "
                "RCPT and DATA came, as a handler answers later: move the clock on and go "
                "on with received() and write(stuff(message))"
            )
        if replies and replies[-1].code == 354:
            replies += self.write(stuff(message))
        return replies

    def disconnect(self) -> None:
        """
        The client goes away.
        """
        self.transport.loseConnection()
        self._loseConnection()

    def _startTLS(self, contextFactory: object, normal: bool = True) -> None:
        self._tlsStarted = True

    def _loseConnection(self) -> None:
        if not self._lost:
            self._lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
