"""
The interfaces applications implement to take part in a conversation.

Register any number of handler objects with L{smtpsvc.SMTPServer}; an object may provide
several of these interfaces.  For each step the server calls, in registration order,
every handler that provides the matching interface; the first one that refuses (by
raising L{smtpsvc.SMTPError}) stops the chain and its error is the reply.

Every method may return its value directly, return a L{twisted.internet.defer.Deferred}
that fires with it, or be a coroutine (C{async def}).  While a handler's answer is
pending the server reads no further command from that client, so pipelined commands are
still answered in order.  An exception other than L{smtpsvc.SMTPError} is a bug in the
handler: the client gets C{451 Requested action aborted: local error in processing} and
the traceback is logged; the connection carries on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from cryptography import x509
    from twisted.internet.interfaces import IProtocol

    from ._core._sasl import AuthRequest
    from ._core._session import Address, Session


class IConnectHandler(Interface):
    """
    Decides whether to talk to a client at all.
    """

    def onConnect(session: Session) -> object:
        """
        A client connected; the greeting has not been sent yet.

        Raise L{smtpsvc.SMTPError} to refuse the client: the error is sent instead of the
        greeting (C{554 Go away}), and the client may then only say QUIT: every other
        command gets C{503} (RFC 5321 section 3.1).  A C{421} (C{421 Busy}, a temporary
        refusal) or a C{521} (RFC 7504) closes the connection at once.
        """


class ISecureHandler(Interface):
    """
    Decides about a client once its connection is encrypted.
    """

    def onSecure(session: Session, peerCertificate: x509.Certificate | None) -> object:
        """
        A TLS handshake completed: implicit TLS before the greeting, or STARTTLS.  It is
        called once per handshake.  C{session.secure}, C{session.tlsOptions} and
        C{session.servername} are set; C{peerCertificate} is the client's certificate (a
        L{cryptography.x509.Certificate}) when C{requestCert} is set and it sent one,
        else L{None}, and C{session.peerCertificateVerified} says whether it chains to
        the server's C{ca}.

        Raise L{smtpsvc.SMTPError} to refuse the client: with implicit TLS the reply
        replaces the greeting; after STARTTLS it answers (encrypted) every command but
        QUIT (RFC 3207 section 4.1).  A C{421} or C{521} closes the connection at once.
        """


class IAuthHandler(Interface):
    """
    Checks the credentials clients present with AUTH.
    """

    def onAuth(auth: AuthRequest, session: Session) -> object:
        """
        A client completed a SASL exchange.  C{auth} says how
        (L{smtpsvc.AuthRequest}: C{method}, C{username}, C{password}, C{authzid},
        C{accessToken}; for CRAM-MD5 C{challenge}, C{challengeResponse} and
        C{validatePassword(password)}).

        Return the user (any object but L{None} that is not false; it becomes
        C{session.user}) to accept; return L{None} to leave the decision to the next
        authentication handler; raise (or return) L{smtpsvc.SMTPError} to refuse
        (C{535 5.7.8} is the usual refusal, C{454 4.7.0} a temporary one that does not
        count as a failed attempt).  C{False}, C{0}, C{""} or any other false value (an
        empty list of rows) refuses too, with C{535 Error: Authentication credentials
        invalid}, as when no handler accepts.
        """


class IMailFromHandler(Interface):
    """
    Decides about the sender of each transaction.
    """

    def onMailFrom(address: Address, session: Session) -> object:
        """
        The client gave C{MAIL FROM}; the address and its parameters passed every
        syntax check and C{session.envelope} already carries the transaction's parameters
        (C{bodyType}, C{smtpUtf8}, C{requireTLS}, C{dsn}).

        Return to accept (C{250 Accepted}); raise L{smtpsvc.SMTPError} to refuse
        (C{SMTPError(550, "Sender blocked")}).
        """


class IRcptToHandler(Interface):
    """
    Decides about each recipient.
    """

    def onRcptTo(address: Address, session: Session) -> object:
        """
        The client gave C{RCPT TO}; C{session.envelope.rcptTo} holds the recipients
        accepted so far.

        Return to accept (C{250 Accepted}); raise L{smtpsvc.SMTPError} to refuse
        (C{SMTPError(550, "No such user")}).
        """


class IMessageStream(Interface):
    """
    The message of one transaction, as it arrives.

    The bytes are the message exactly as the client meant it: dot-stuffing removed, line
    endings CRLF, the terminating dot not included.  Read it one of three ways:

      - C{await}-able iteration: C{async for chunk in stream: ...};
      - Twisted's push style: C{stream.deliverBody(protocol)}, which calls
        C{protocol.dataReceived(chunk)} for each chunk and finally
        C{protocol.connectionLost(reason)} with L{smtpsvc.MessageDone} (success) or the
        error that ended the message; C{protocol.transport} is a push producer whose
        C{pauseProducing}/C{resumeProducing} slow the client down;
      - whole: C{await smtpsvc.readMessage(stream)} (a Deferred of bytes).

    The server stops reading from the client while unread data piles up, so a slow
    handler slows the client down rather than filling memory.

    The message can end in failure instead of L{smtpsvc.MessageDone}:
    L{smtpsvc.MessageAborted} when the client went away (or, between BDAT chunks, reset
    the transaction) or the server shut down,
    L{smtpsvc.MessageTooLarge} when it went over the C{size} limit,
    L{smtpsvc.MessageRefused} when an earlier handler refused it or the bare line ending
    policy did.  A handler that sees a failure must not keep the message.
    """

    byteLength = Attribute("Bytes of message received so far.")
    sizeExceeded = Attribute("Whether the message went over the server's size limit.")

    def deliverBody(protocol: IProtocol) -> None:
        """
        Deliver the message to C{protocol} (an L{twisted.internet.interfaces.IProtocol}).
        """

    def __aiter__() -> AsyncIterator[bytes]:
        """
        Iterate over the message's chunks of bytes with C{async for}.
        """


class IDataCommandHandler(Interface):
    """
    Decides whether a client may send its message, before it is invited to.
    """

    def onDataCommand(session: Session) -> object:
        """
        The client sent DATA (after at least one recipient was accepted), and is not
        yet invited to send its message.  Return L{None} to let it (C{354}); raise
        L{smtpsvc.SMTPError} to answer DATA with that error instead, so that the client
        does not send a message only to have it refused: the transaction stays open
        (the client may say RSET, or DATA again).  A relay uses it to pass DATA on and
        answer with the next server's reply, as Postfix's before-queue proxy filter does.

        Not called for BDAT: a chunk comes with its command, uninvited, and is answered
        after it has come (L{IDataHandler.onData} refuses it then).
        """


class IDataHandler(Interface):
    """
    Receives messages.
    """

    def onData(stream: IMessageStream, session: Session) -> object:
        """
        The client sent DATA.  C{stream} gives the message as it arrives and
        C{session.envelope} says who it is from and for.

        The answer is the final reply, sent once the message has ended: return L{None}
        for C{250 OK: message queued} (C{250 OK: message accepted} per recipient in
        LMTP), a string for C{250 <string>}, or raise L{smtpsvc.SMTPError}.  In LMTP mode
        it may instead return a sequence with one answer per recipient in
        C{session.envelope.rcptTo} (each L{None}, a string or an L{smtpsvc.SMTPError}).

        Return only when the message is safe: once the client sees 250 the message is
        yours.  A handler that answers before the message ended gets no more of it.

        Several data handlers all receive the message at once, but handler N sees it end
        (L{smtpsvc.MessageDone}) only after every handler before it accepted it; if one
        refuses, the later ones see L{smtpsvc.MessageRefused} instead, so a delivery
        handler registered after a filter never keeps a message the filter refused.
        """


class ICloseHandler(Interface):
    """
    Told when a connection ends.
    """

    def onClose(session: Session) -> object:
        """
        The connection closed, for whatever reason.  This is the session's last call:
        when a message was being received, it comes once the message's data handlers
        have answered, and when a handler was deciding about a command, once it has
        answered.  The answer is ignored; an error is logged.
        """


__all__ = [
    "IAuthHandler",
    "ICloseHandler",
    "IConnectHandler",
    "IDataCommandHandler",
    "IDataHandler",
    "IMailFromHandler",
    "IMessageStream",
    "IRcptToHandler",
    "ISecureHandler",
]
