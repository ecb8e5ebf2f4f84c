"""
A server for a small mail domain: the policy of C{policy.py}, two content filters, and a
handler that saves each accepted message into a directory.

The three data handlers read the message in the three ways smtpsvc offers: the whole
message at once (L{RequireHeaders}), chunk by chunk with C{async for} (L{RefuseWords}),
and pushed into a Twisted protocol (L{SaveToDirectory}).

``python docs/examples/delivery.py [ENDPOINT]`` (default ``tcp:2525:interface=127.0.0.1``)
saves into ./messages.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import sys
from collections.abc import Iterable
from typing import Any

from policy import Policy
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import react
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpsvc import (
    IDataHandler,
    IMessageStream,
    MessageDone,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)

DEFAULT_ENDPOINT = "tcp:2525:interface=127.0.0.1"
MAILBOXES = ["alice@example.com", "bob@example.com", "postmaster@example.com"]


@implementer(IDataHandler)
class RequireHeaders:
    """
    Refuse messages without the headers RFC 5322 requires (From and Date), reading the
    whole message at once.  The server's C{size} option bounds how much that holds.
    """

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        message = await readMessage(stream)
        headers = email.parser.BytesHeaderParser(policy=email.policy.SMTP).parsebytes(message)
        missing = [name for name in ("From", "Date") if headers[name] is None]
        if missing:
            raise SMTPError(550, f"5.6.0 Message has no {' or '.join(missing)} header")


@implementer(IDataHandler)
class RefuseWords:
    """
    Refuse messages that contain any of C{words}, reading chunk by chunk: it answers as
    soon as it finds one, and takes no more of the message after that.
    """

    def __init__(self, words: Iterable[bytes]) -> None:
        self.words = [word.lower() for word in words]
        # A word may straddle two chunks: keep the end of the last one.
        self._overlap = max((len(word) for word in self.words), default=1) - 1

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        tail = b""
        async for chunk in stream:
            text = tail + chunk.lower()
            if any(word in text for word in self.words):
                raise SMTPError(550, "5.7.1 Message refused by content filter")
            tail = text[len(text) - self._overlap :]


@implementer(IDataHandler)
class SaveToDirectory:
    """
    Save each message into a file of its own in C{directory}, as it arrives, and answer
    with the file's name.  The file appears under its final name only once the message
    ended and every handler before this one accepted it.

    This shows the push style; it does not fsync.  For real delivery use
    L{smtpsvc.handlers.maildir.MaildirDelivery}.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def onData(self, stream: IMessageStream, session: Session) -> Deferred[str]:
        name = f"{session.id}.{session.transaction}.eml"
        path = os.path.join(self.directory, name)
        writer = _FileWriter(path + ".part")
        stream.deliverBody(writer)

        def saved(_: None) -> str:
            os.rename(writer.path, path)
            return f"OK: saved as {name}"

        return writer.done.addCallback(saved)


class _FileWriter(Protocol):
    """
    Writes what it receives into a new file; C{done} fires when the message has ended
    normally and fails (after removing the file) when it has not.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # O_EXCL: a new file, never one that is already there.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = os.fdopen(fd, "wb")
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.file.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.file.close()
        if reason.check(MessageDone):
            self.done.callback(None)
        else:
            # MessageAborted, MessageTooLarge or MessageRefused: keep nothing.
            os.remove(self.path)
            self.done.errback(reason)


def makeServer(reactor: Any, directory: str = "messages") -> SMTPServer:
    """
    The server: the policy first, then the filters, then the handler that saves.
    """
    handlers = [
        Policy(reactor, MAILBOXES, blockedSenders=["spammer@example.net"]),
        RequireHeaders(),
        RefuseWords([b"lottery", b"viagra"]),
        SaveToDirectory(directory),
    ]
    return SMTPServer(handlers, reactor=reactor, authOptional=True, size=10_000_000)


async def main(reactor: Any, *argv: str) -> None:
    """
    Listen on the endpoint given, or on port 2525 of the loopback interface, until stopped.
    """
    endpoint = argv[0] if argv else DEFAULT_ENDPOINT
    server = makeServer(reactor)
    port = await server.listen(endpoint)
    print(f"Listening on {port.getHost()}, saving into ./messages")
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    forever: Deferred[None] = Deferred()
    await forever


if __name__ == "__main__":
    react(main, sys.argv[1:])
