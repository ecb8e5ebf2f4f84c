"""
An LMTP front that relays every message to another LMTP server (Dovecot's, say), recipient
by recipient: the client gets, after the message, the downstream's own reply for each
recipient.

``python docs/examples/forward_lmtp.py [LISTEN [DOWNSTREAM]]`` (defaults
``tcp:2424:interface=127.0.0.1`` and ``unix:/run/dovecot/lmtp``).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from smtpsvc import SMTPServer
from smtpsvc.handlers.forward import ForwardDelivery

DEFAULT_ENDPOINT = "tcp:2424:interface=127.0.0.1"
DEFAULT_DOWNSTREAM = "unix:/run/dovecot/lmtp"


def makeServer(reactor: Any, downstream: str = DEFAULT_DOWNSTREAM) -> SMTPServer:
    """
    An LMTP server whose messages go to the LMTP server at C{downstream}.
    """
    forward = ForwardDelivery(downstream, lmtp=True, reactor=reactor, timeout=30)
    # LMTP clients are trusted mail systems on the same host or network (RFC 2033): no
    # AUTH, and no relay policy here.  Never offer this on a public port.
    return SMTPServer([forward], reactor=reactor, lmtp=True, authOptional=True)


async def main(reactor: Any, *argv: str) -> None:
    """
    Listen on the first endpoint given and relay to the second, until stopped.
    """
    endpoint = argv[0] if argv else DEFAULT_ENDPOINT
    downstream = argv[1] if len(argv) > 1 else DEFAULT_DOWNSTREAM
    server = makeServer(reactor, downstream)
    port = await server.listen(endpoint)
    print(f"LMTP server listening on {port.getHost()}, relaying to {downstream}")
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    forever: Deferred[None] = Deferred()
    await forever


if __name__ == "__main__":
    react(main, sys.argv[1:])
