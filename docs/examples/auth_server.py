"""
A submission server (RFC 6409) that requires AUTH: users and their salted scrypt hashes
are in a password file made with ``smtpsvc-passwd``, passwords travel only inside TLS
(STARTTLS with the certificate given), and accepted mail goes into a Maildir.

Make the password file, then run the server with it, the certificate file (the server's
certificate followed by its intermediates, such as certbot's ``fullchain.pem``), its key
and a Maildir::

    smtpsvc-passwd users.passwd alice
    python auth_server.py users.passwd fullchain.pem privkey.pem ./maildir

It listens on 127.0.0.1 port 2587, so that it can be tried without root; give a Twisted
endpoint after the Maildir to listen elsewhere (``tcp:587``).  Users added to or removed
from the file while it runs count from their next login.  Ctrl-C (or SIGTERM) closes the
server gracefully.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver

from smtpsvc import SMTPServer
from smtpsvc.cred import PasswordFile, PortalAuthHandler
from smtpsvc.handlers import MaildirDelivery


def readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def main(
    reactor: Any,
    passwordFile: str,
    certFile: str,
    keyFile: str,
    maildir: str,
    endpoint: str = "tcp:2587:interface=127.0.0.1",
) -> None:
    """
    Serve until the reactor stops, or until the Deferred running this coroutine is
    cancelled; either way close the server gracefully.
    """
    # Any twisted.cred checker would do; this one hashes in the reactor's thread pool,
    # so a slow scrypt never holds up other clients.
    authentication = PortalAuthHandler.fromCheckers([PasswordFile(passwordFile, reactor=reactor)])
    server = SMTPServer(
        [authentication, MaildirDelivery(maildir, reactor=reactor)],
        reactor=reactor,
        cert=readFile(certFile),
        key=readFile(keyFile),
        # What the checker can verify: PLAIN and LOGIN (a hash cannot answer CRAM-MD5).
        authMethods=authentication.mechanisms(),
        # The defaults, spelled out: MAIL, RCPT, DATA and BDAT need AUTH first (530), and
        # AUTH in clear gets "538 5.7.11 Must issue a STARTTLS command first".
        authOptional=False,
        allowInsecureAuth=False,
    )
    await server.listen(endpoint)
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
    if not 5 <= len(sys.argv) <= 6:
        sys.exit(f"usage: {sys.argv[0]} PASSWORD_FILE CERT KEY MAILDIR [ENDPOINT]")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    react(main, sys.argv[1:])
