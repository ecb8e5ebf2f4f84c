"""
The least a Twisted SMTP server can do, as a W1 reference row: not a peer anyone would run.

Usage: ``python twisted_floor.py PORT``; ``BENCH_BACKLOG`` in the environment sets the listen
backlog.  It answers each command line by its first four letters, finds the end of a message
with ``bytes.find`` and keeps none of it, writes the replies to what one read brought in one
write, and logs nothing (as smtp-server runs by default).  Like smtpsvc, it writes straight
to the socket while the transport holds nothing (smtpsvc does so at the end of the
reactor's turn, this at once), since Twisted's own ``write`` waits for the reactor's next
turn at the cost of two ``epoll_ctl`` calls per reply.  No grammar, no states, no
handlers, no limits: what is left is Twisted's own cost per message (the reactor, the TCP
transport, a protocol's ``dataReceived``) and the kernel's, which any server built on
Twisted pays, smtpsvc and twisted.mail included.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import protocol, reactor


class FloorProtocol(protocol.Protocol):
    """
    Replies 250 to any command but DATA (354, then 250 after the message's end) and QUIT.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._inData = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"220 bench.example.test ESMTP floor\r\n")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self._buffer + data
        replies = []
        while buffer:
            if self._inData:
                end = buffer.find(b"\r\n.\r\n")
                if end < 0:
                    buffer = buffer[-4:]
                    break
                buffer = buffer[end + 5 :]
                self._inData = False
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = buffer[:4].upper()
            if verb == b"DATA":
                # The message starts after DATA's line end, which stays, so that an empty
                # message's end (".\r\n" at once) is found as any other.
                buffer = buffer[end:]
                self._inData = True
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                continue
            buffer = buffer[end + 2 :]
            if verb == b"EHLO":
                replies.append(b"250-bench.example.test\r\n250 PIPELINING\r\n")
            elif verb == b"QUIT":
                self._send(b"".join(replies) + b"221 2.0.0 Bye\r\n")
                self.transport.loseConnection()
                return
            else:
                replies.append(b"250 2.1.0 Ok\r\n")
        self._buffer = buffer
        if replies:
            self._send(b"".join(replies))

    def _send(self, data: bytes) -> None:
        # Straight to the socket when the transport holds nothing, else (and for what the
        # socket does not take) through the transport, which keeps the order.
        transport: Any = self.transport
        if not (transport.dataBuffer or transport._tempDataBuffer):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # Nothing taken (EAGAIN), or an error the transport then finds and reports.
                sent = 0
            data = data[sent:]
        if data:
            transport.write(data)


def main() -> None:
    port = int(sys.argv[1])
    backlog = int(os.environ.get("BENCH_BACKLOG", "50"))  # 50: listenTCP's default
    factory = protocol.ServerFactory()
    factory.protocol = FloorProtocol
    reactor.listenTCP(port, factory, backlog=backlog, interface="127.0.0.1")
    print(f"twisted floor listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
