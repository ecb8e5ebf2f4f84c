"""
One server for both ways mail clients encrypt: STARTTLS on a submission port (587 style)
and implicit TLS from the first byte (465 style, RFC 8314), with the same certificate,
delivering into a Maildir.

Run it with the certificate file (the server's certificate followed by its intermediates,
such as certbot's ``fullchain.pem``), its key, and a Maildir::

    python tls_server.py fullchain.pem privkey.pem ./maildir

It listens on 127.0.0.1 ports 2587 (STARTTLS) and 2465 (implicit TLS), so that it can be
tried without root; give two Twisted endpoints after the Maildir to listen elsewhere::

    python tls_server.py fullchain.pem privkey.pem /var/mail/inbox tcp:587 tcp:465

Ctrl-C (or SIGTERM) closes the server gracefully: clients in a transaction may finish it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from zope.interface import implementer

from smtpsvc import ISecureHandler, Session, SMTPServer
from smtpsvc.handlers import MaildirDelivery

log = Logger(namespace="tls_server")


@implementer(ISecureHandler)
class TLSLog:
    """
    Logs what each TLS handshake settled, once per connection.
    """

    def onSecure(self, session: Session, peerCertificate: object) -> None:
        tls = session.tlsOptions
        assert tls is not None
        log.info(
            "{sessionId}: {version} with {cipher}, server name {servername}",
            sessionId=session.id,
            version=tls.version,
            cipher=tls.standardName,
            servername=session.servername or "(none)",
        )


USAGE = "usage: tls_server.py CERT KEY MAILDIR [SUBMISSION_ENDPOINT [SMTPS_ENDPOINT]]"


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def makeServer(reactor: Any, cert: bytes, key: bytes, maildir: str) -> SMTPServer:
    """
    The server: STARTTLS wherever it listens, unless told otherwise by listen().
    """
    return SMTPServer(
        [TLSLog(), MaildirDelivery(maildir, reactor=reactor)],
        reactor=reactor,
        # PEM bytes; the certificate may be followed by its chain.
        cert=cert,
        key=key,
        # Nothing is accepted in clear: every command but EHLO, HELO, LHLO, STARTTLS,
        # NOOP, RSET and QUIT before STARTTLS gets "530 Must issue a STARTTLS command
        # first" (implicit TLS meets it at once).
        needsUpgrade=True,
        # This example has no IAuthHandler, so it lets clients send without AUTH.  A real
        # submission server (RFC 6409) authenticates them: add one and drop this line.
        authOptional=True,
    )


async def main(reactor: Any, *argv: str) -> None:
    """
    Serve until the reactor stops, or until the Deferred running this coroutine is
    cancelled; either way close the server gracefully.
    """
    if not 3 <= len(argv) <= 5:
        raise SystemExit(USAGE)
    certFile, keyFile, maildir = argv[:3]
    submission = argv[3] if len(argv) > 3 else "tcp:2587:interface=127.0.0.1"
    smtps = argv[4] if len(argv) > 4 else "tcp:2465:interface=127.0.0.1"
    server = makeServer(reactor, readFile(certFile), readFile(keyFile), maildir)
    # The server's "secure" option is False: this listener offers STARTTLS ...
    await server.listen(submission)
    # ... and this one starts TLS with the first byte.
    await server.listen(smtps, secure=True)
    # When the reactor stops, close the server first; the reactor waits for it.
    trigger = reactor.addSystemEventTrigger("before", "shutdown", server.close)
    try:
        # Nothing fires this: serve until the reactor stops ...
        await Deferred()
    except CancelledError:
        # ... or until whoever runs main (a test, a larger program) cancels it.
        reactor.removeSystemEventTrigger(trigger)
        await server.close()


if __name__ == "__main__":
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    react(main, sys.argv[1:])
