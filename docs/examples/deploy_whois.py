"""
A server behind HAProxy that knows who is really connecting: it reads the PROXY header
HAProxy puts before each connection, judges clients by their own address (not the
balancer's), logs them, and lets HAProxy's health checks through quietly.

Run it with a Maildir, and optionally an endpoint and the balancers' addresses::

    python deploy_whois.py ./maildir
    python deploy_whois.py /var/mail/inbox tcp:2525:interface=10.0.0.11 10.0.0.2,10.0.0.3

By default it listens on 127.0.0.1 port 2525 and requires the header from 127.0.0.1 (an
HAProxy on the same machine).  Ctrl-C (or SIGTERM) closes it gracefully.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from smtpsvc import IConnectHandler, Session, SMTPError, SMTPServer
from smtpsvc.handlers import MaildirDelivery

log = Logger(namespace="deploy_whois")

DEFAULT_ENDPOINT = "tcp:2525:interface=127.0.0.1"
DEFAULT_BALANCERS = ("127.0.0.1",)


@implementer(IConnectHandler)
class WhoIsConnecting:
    """
    Refuses clients from blocked networks and logs the others, by their real address.

    The connect handlers run once the PROXY header has been read and the client's name
    looked up, so C{session.remoteAddress} is already the client HAProxy saw.
    """

    def __init__(self, blocked: Iterable[str] = ()) -> None:
        self.blocked = [ipaddress.ip_network(network) for network in blocked]

    def onConnect(self, session: Session) -> None:
        proxy = session.proxy
        if proxy is not None and not proxy.relayed:
            # A header that names no client: HAProxy's own health check (v2 LOCAL, or
            # v1 UNKNOWN).  The session has the balancer's address; nothing to judge.
            return
        address = ipaddress.ip_address(session.remoteAddress)
        if any(address in network for network in self.blocked):
            raise SMTPError(554, "Your network is not welcome here")
        log.info(
            "{sessionId}: {name} [{address}]:{port} via {via}",
            sessionId=session.id,
            name=session.clientHostname,
            address=session.remoteAddress,
            port=session.remotePort,
            via=f"PROXY v{proxy.version}" if proxy is not None else "a direct connection",
        )


def makeServer(
    reactor: Any,
    maildir: str,
    balancers: Iterable[str] = DEFAULT_BALANCERS,
    blocked: Iterable[str] = ("198.51.100.0/24",),
    **options: Any,
) -> SMTPServer:
    """
    The server: a PROXY header is required from the C{balancers} (addresses or networks)
    and refused from anyone else.
    """
    return SMTPServer(
        [WhoIsConnecting(blocked), MaildirDelivery(maildir, reactor=reactor)],
        reactor=reactor,
        useProxy=tuple(balancers),
        # A balancer sends its header at once; one that does not is broken.
        proxyTimeout=5,
        # The client's host name is looked up after the header, for the client's own
        # address, and used only if it resolves back to that address.
        confirmReverseLookup=True,
        # This example has no IAuthHandler: it receives mail, as an MX does.
        authOptional=True,
        **options,
    )


USAGE = "usage: deploy_whois.py MAILDIR [ENDPOINT [BALANCER,...]]"


async def main(reactor: Any, *argv: str) -> None:
    """
    Serve until the reactor stops, or until the Deferred running this coroutine is
    cancelled; either way close the server gracefully.
    """
    if not 1 <= len(argv) <= 3:
        raise SystemExit(USAGE)
    endpoint = argv[1] if len(argv) > 1 else DEFAULT_ENDPOINT
    balancers = argv[2].split(",") if len(argv) > 2 else DEFAULT_BALANCERS
    server = makeServer(reactor, argv[0], balancers)
    await server.listen(endpoint)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", server.close)
    try:
        await Deferred()
    except CancelledError:
        reactor.removeSystemEventTrigger(trigger)
        await server.close()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    react(main, sys.argv[1:])
