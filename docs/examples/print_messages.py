"""
The smallest smtpsvc program: a server that prints every message it receives.

``python docs/examples/print_messages.py [ENDPOINT]``, where ENDPOINT is a Twisted endpoint
string (default ``tcp:2525:interface=127.0.0.1``).  Stop it with Ctrl-C.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from zope.interface import implementer

from smtpsvc import IDataHandler, IMessageStream, Session, SMTPServer, readMessage

DEFAULT_ENDPOINT = "tcp:2525:interface=127.0.0.1"


@implementer(IDataHandler)
class PrintMessages:
    """
    Print each message and its envelope, then accept the message.
    """

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        message = await readMessage(stream)
        envelope = session.envelope
        sender = envelope.mailFrom.address if envelope.mailFrom else ""
        recipients = ", ".join(f"<{r.address}>" for r in envelope.rcptTo)
        print(f"Message from <{sender}> to {recipients}, {len(message)} bytes:")
        print(message.decode("utf-8", "replace"))


def makeServer(reactor: Any) -> SMTPServer:
    """
    The server: one handler, mail without authentication, messages up to 10 MB.
    """
    return SMTPServer([PrintMessages()], reactor=reactor, authOptional=True, size=10_000_000)


async def main(reactor: Any, *argv: str) -> None:
    """
    Listen on the endpoint given, or on port 2525 of the loopback interface, until stopped.
    """
    endpoint = argv[0] if argv else DEFAULT_ENDPOINT
    server = makeServer(reactor)
    port = await server.listen(endpoint)
    print(f"Listening on {port.getHost()}")
    # On Ctrl-C, let clients finish the message they are sending before the reactor stops.
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    forever: Deferred[None] = Deferred()
    await forever


if __name__ == "__main__":
    react(main, sys.argv[1:])
