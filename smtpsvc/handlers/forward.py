"""
Forwarding delivery: each transaction is relayed, as it happens, to a downstream SMTP or LMTP
server, the way Postfix's before-queue proxy filter (``smtpd_proxy_filter``) does.

Nothing is queued here.  Each command of the client is repeated to the downstream server and
the client hears the downstream's answer: its refusals with their codes, enhanced codes and
text, and after the message its final reply, so the client is told 250 only once the
downstream has said 250.  When the downstream cannot be used (it cannot be reached, does not
answer in time, closes, or says 421) the client gets ``451 4.4.1`` and tries again later:
nothing is lost.

One downstream connection serves one client session, across its transactions.  The message
goes downstream as it arrives, with a ``Received:`` header in front (but no
``Return-Path:``: this is a relay, RFC 5321 section 4.4), dot-stuffed and with canonical CRLF
line endings only; it is read from the client only as fast as the downstream takes it.

A REQUIRETLS transaction (RFC 8689) is relayed only over a TLS connection whose certificate
was validated for the downstream's host name, to a downstream that offers REQUIRETLS;
otherwise its MAIL FROM gets ``550 5.7.30``.  An LMTP downstream on a Unix socket or over
loopback is the message store on this host: handing it the message is final delivery, not
relaying, and a REQUIRETLS transaction goes there without TLS.  The tag of a
``TLS-Required: No`` header asks to relay despite a TLS policy; this relay has none of its
own (it uses the endpoint it is given, encrypted or not), so such a message goes the same
way as any other, with the header field kept.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Final

from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from service_identity.pyopenssl import verify_hostname
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import ISystemHandle
from twisted.logger import Logger
from zope.interface import implementer

from .._client import DownstreamClient, DownstreamError, DownstreamFactory
from .._core._relay import (
    DownstreamReply,
    combineReplies,
    mailCommand,
    parseExtensions,
    rcptCommand,
)
from .._core._session import Address, Envelope, Session
from .._core._trace import receivedHeader
from .._core._xclient import isLoopback
from .._errors import SMTPError, fresh
from .._logging import hostPort
from .._reactor import reactorOr
from .._stream import MessageAborted, MessageRefused, MessageStream, MessageTooLarge
from ..interfaces import (
    ICloseHandler,
    IDataCommandHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint

_log = Logger(namespace="smtpsvc.forward")

#: What the client hears when the downstream cannot be used: temporary, so it retries.
UNAVAILABLE: Final = SMTPError(451, "Error: downstream unavailable", "4.4.1")
#: What the client hears when the downstream refuses, on a second try, a recipient it
#: accepted before (see L{ForwardDelivery._syncRecipients}).
RECIPIENTS_CHANGED: Final = SMTPError(
    451, "Error: the downstream changed its mind about a recipient", "4.3.0"
)
#: The share of the server's handlerTimeout that the downstream's whole answer to one step
#: of the client's may take: its client then hears our 451 before the server would cut it
#: off with 421 Handler timeout.
ANSWER_SHARE: Final = 0.8
# Stream endings the handler passes on as they are: the server knows what they mean.
_MESSAGE_ENDINGS: Final = (MessageAborted, MessageTooLarge, MessageRefused)
# The answer a data handler gives in LMTP for each recipient.
_Outcome = str | SMTPError | None


class _Link:
    """
    One client session's downstream connection and the state of its transaction there.

    @ivar client: the connection, once made.
    @ivar connecting: the connection attempt in progress, if any.
    @ivar extensions: what the downstream's EHLO or LHLO advertised.
    @ivar verifiedTLS: whether the connection is TLS with a certificate validated for the
        downstream's host name.
    @ivar finalDelivery: whether the downstream is an LMTP store on this host (on a Unix
        socket or over loopback), which REQUIRETLS does not apply to.
    @ivar open: whether a downstream transaction is open (MAIL accepted, no final reply).
    @ivar recipients: the recipients the downstream accepted in that transaction.
    @ivar invited: whether the downstream answered DATA with 354 and waits for the
        message (sent when the client said DATA, before its own 354).
    @ivar closed: whether the client session has ended.
    @ivar expired: why the step in progress failed, when the time for its answer ran out
        (see L{_Deadline}).
    """

    def __init__(self) -> None:
        self.client: DownstreamClient | None = None
        self.connecting: Deferred[Any] | None = None
        self.extensions: dict[str, str] = {}
        self.verifiedTLS = False
        self.finalDelivery = False
        self.open = False
        self.recipients: list[Address] = []
        self.invited = False
        self.closed = False
        self.expired: str | None = None

    @property
    def usable(self) -> bool:
        return self.client is not None and self.client.usable and not self.closed

    def mailCommand(self, sender: Address, envelope: Envelope) -> str:
        """
        The MAIL command for C{sender} and the parameters of C{envelope} that this
        downstream can take (see L{smtpsvc._core._relay.mailCommand}).
        """
        return mailCommand(
            sender,
            envelope,
            self.extensions,
            verifiedTLS=self.verifiedTLS,
            finalDelivery=self.finalDelivery,
        )

    def expire(self, why: str) -> None:
        """
        The time for the answer the client waits for has run out: the connection attempt
        is given up, or the connection dropped (a message without its final dot is not
        kept), so that whatever the step awaits fails now, with C{why}.
        """
        self.expired = why
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.client is not None:
            self.client.abort(why)

    def drop(self, why: str) -> None:
        """
        Forget the connection, dropping it if it is still up.
        """
        client, self.client = self.client, None
        self.open = self.invited = False
        self.recipients = []
        self.verifiedTLS = self.finalDelivery = False
        if client is not None:
            client.abort(why)


class _Deadline:
    """
    The time the downstream has for the whole of its answer to one step that the client
    waits for: MAIL FROM (with the connection, the greeting, EHLO and RSET before it),
    RCPT TO, DATA, or the message, from the client's end of it (not the end this
    handler sees, after the handlers before it answered).  The server gives the client's wait
    C{handlerTimeout} at most, counted once for all the downstream's replies; each reply's
    own C{timeout} alone does not keep inside it (LMTP's replies, one per recipient, or a
    greeting, an EHLO and a MAIL, each in time, may together take longer).  When the time
    runs out, L{_Link.expire} ends what the step awaits.

    Used as a context manager around the step; L{start} may come later (the message's
    step begins at its end).
    """

    def __init__(self, reactor: Any, seconds: float, link: _Link) -> None:
        self._reactor = reactor
        self._seconds = seconds
        self._link = link
        self._call: IDelayedCall | None = None
        self._over = False

    def start(self) -> None:
        """
        Start counting (once; not after the step is over).
        """
        if self._over or self._call is not None:
            return
        self._link.expired = None
        if self._seconds:
            self._call = self._reactor.callLater(self._seconds, self._expired)

    def _expired(self) -> None:
        self._call = None
        self._over = True
        self._link.expire(f"no answer within {self._seconds:g} s")

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._over = True
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


@implementer(IMailFromHandler, IRcptToHandler, IDataCommandHandler, IDataHandler, ICloseHandler)
class ForwardDelivery:
    """
    A handler that relays every transaction to a downstream SMTP or LMTP server.

    Register it after the handlers that decide which senders and recipients to accept: a
    recipient is accepted downstream when this handler is asked about it.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint | str,
        *,
        lmtp: bool = False,
        reactor: Any = None,
        serverName: str | None = None,
        timeout: float = 60.0,
        handlerTimeout: float = 300.0,
        description: str | None = None,
    ) -> None:
        """
        @param endpoint: where the downstream server is: a Twisted client endpoint, or an
            endpoint string (C{tcp:host=127.0.0.1:port=2600}, C{tls:mail.example.net:465},
            C{unix:/run/dovecot/lmtp}).
        @param lmtp: whether the downstream speaks LMTP (LHLO, one reply per recipient)
            rather than SMTP.
        @param reactor: the reactor for connections and timers (the global one if not given).
        @param serverName: the name this server gives in EHLO/LHLO and in the C{Received:}
            header (the host name if not given).
        @param timeout: seconds to wait for each downstream reply, for the connection to be
            made, and for a downstream that stopped reading the message.  (The first
            reply after the message, which the downstream may send only once it has read
            the message from buffers this side cannot see, has the whole answer's time
            instead, when C{handlerTimeout} gives it one.)
        @param handlerTimeout: the C{handlerTimeout} of the server this handler is
            registered with (0 for none).  The downstream's whole answer to each step
            the client waits for (MAIL FROM, RCPT TO, DATA, and the message from its end)
            must come within L{ANSWER_SHARE} of it, however many replies it takes; when
            it does not, the client gets C{451 4.4.1} (in LMTP, for the recipients whose
            reply had not come) and the downstream connection is dropped, rather than
            the client being cut off with C{421 Handler timeout} while the downstream
            goes on.
        @param description: how log lines name the downstream: the endpoint string when
            C{endpoint} is one, else (if not given) the address a connection reached.
        """
        self._reactor = reactor = reactorOr(reactor)
        self._endpoint: IStreamClientEndpoint = (
            clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
        )
        self.lmtp = lmtp
        self.serverName = serverName or socket.gethostname()
        self.timeout = timeout
        self.handlerTimeout = handlerTimeout
        self.description = description or (endpoint if isinstance(endpoint, str) else None)
        self._links: dict[str, _Link] = {}

    # -- the handler interfaces ---------------------------------------------------------

    def onMailFrom(self, address: Address, session: Session) -> Deferred[None]:
        """
        Open (or reuse) the downstream connection and give it MAIL FROM.
        """
        return Deferred.fromCoroutine(self._mailFrom(address, session))

    def onRcptTo(self, address: Address, session: Session) -> Deferred[None]:
        """
        Give the downstream RCPT TO.
        """
        return Deferred.fromCoroutine(self._rcptTo(address, session))

    def onDataCommand(self, session: Session) -> Deferred[None]:
        """
        Give the downstream DATA, so that the client is answered with its refusal, if it
        refuses, rather than after sending the message for nothing.
        """
        return Deferred.fromCoroutine(self._dataCommand(session))

    def onData(self, stream: IMessageStream, session: Session) -> Deferred[Any]:
        """
        Give the downstream DATA and the message; answer with its final reply (in LMTP,
        one per recipient).
        """
        return Deferred.fromCoroutine(self._data(stream, session))

    def onClose(self, session: Session) -> Deferred[None] | None:
        """
        Say QUIT downstream and close the connection.
        """
        link = self._links.pop(session.id, None)
        if link is None:
            return None
        link.closed = True
        if link.invited:
            # The downstream waits for a message that will not come: QUIT would be read
            # as its first line.  Dropped, it keeps nothing.
            link.drop("the client went away before its message")
            return None
        if link.connecting is not None:
            link.connecting.cancel()
        client, link.client = link.client, None
        if client is None:
            return None
        return client.quit()

    # -- the steps ------------------------------------------------------------------------

    async def _mailFrom(self, address: Address, session: Session) -> None:
        link = self._links.get(session.id)
        if link is None:
            link = self._links[session.id] = _Link()
        try:
            with self._deadline(link):
                client = await self._ready(link, session)
                reply = await client.command(link.mailCommand(address, session.envelope))
        except DownstreamError as e:
            raise self._unavailable(link, session, e) from None
        self._check(link, session, reply)
        link.open = True
        link.recipients = []

    async def _rcptTo(self, address: Address, session: Session) -> None:
        link, client = self._transaction(session, "RCPT")
        try:
            with self._deadline(link):
                if link.invited:
                    client = await self._leaveData(link, session)
                command = rcptCommand(address, session.envelope, link.extensions)
                reply = await client.command(command)
        except DownstreamError as e:
            raise self._unavailable(link, session, e) from None
        self._check(link, session, reply)
        link.recipients.append(address)

    async def _dataCommand(self, session: Session) -> None:
        link, client = self._transaction(session, "DATA")
        try:
            with self._deadline(link):
                if link.invited:
                    client = await self._leaveData(link, session)
                await self._syncRecipients(link, session)
                reply = await client.command("DATA")
        except DownstreamError as e:
            raise self._unavailable(link, session, e) from None
        if reply.code == 354:
            link.invited = True
            return
        if not reply.refusal:
            raise self._unavailable(
                link, session, DownstreamError(f"unexpected reply to DATA: {reply}")
            )
        # Refused: the downstream transaction stays open, as the client's does, and the
        # client may say DATA again.
        raise self._refusal(link, session, reply)

    async def _data(self, stream: IMessageStream, session: Session) -> _Outcome | list[_Outcome]:
        link, client = self._transaction(session, "DATA")
        # DATA was given downstream at the client's DATA (onDataCommand), unless the
        # message comes in BDAT chunks, which no DATA precedes.
        invited, link.invited = link.invited, False
        envelope = session.envelope
        header = receivedHeader(
            session,
            serverName=self.serverName,
            date=format_datetime(datetime.fromtimestamp(self._reactor.seconds(), UTC)),
            recipient=envelope.rcptTo[0].address if len(envelope.rcptTo) == 1 else None,
        )
        # The client waits for the answer from the end of its message on, which may come
        # well before this handler has passed all of it on, or even sees its end (the
        # handlers before this one answer first): every forwarding's deadline counts
        # from there.  (A stream that is not the server's does not tell its end ahead:
        # its answer has no time limit.)
        deadline = self._deadline(link, start=False)
        bounded = isinstance(stream, MessageStream) and self.handlerTimeout > 0
        # Set once the message failed on this side after it was all handed on (see
        # _abortedAfterItsEnd), and once the answer is known, when that no longer matters.
        aborted: list[BaseException] = []
        answered: list[bool] = []
        if isinstance(stream, MessageStream):
            stream.notifyEnd().addCallback(lambda _: deadline.start())
            stream.notifyAborted().addCallback(
                self._abortedAfterItsEnd, link, client, aborted, answered
            )
        try:
            with deadline:
                if not invited:
                    await self._syncRecipients(link, session)
                # The downstream may still be reading the message from its own buffers
                # (over loopback its receive buffer can hold megabytes) when this side
                # has sent it all: so, when the answer has its time limit, its first
                # reply has no shorter one.
                result = await client.sendData(
                    stream,
                    header,
                    len(link.recipients) if self.lmtp else None,
                    invited,
                    untimedEnd=bounded,
                )
        except DownstreamError as e:
            if aborted:
                _log.info(
                    "Message not relayed: {why}",
                    why=str(aborted[0]) or type(aborted[0]).__name__,
                    sessionId=session.id,
                )
                link.drop(str(e))
                raise aborted[0] from None
            if e.replies and self.lmtp and session.lmtp:
                return self._partialAnswer(link, session, e)
            early = e.reply
            if early is not None and early.refusal and early.code != 421:
                # The downstream refused the message before its end and hung up: that
                # refusal is its answer.
                link.drop(str(e))
                raise early.error() from None
            raise self._unavailable(link, session, e) from None
        except _MESSAGE_ENDINGS as e:
            # The client went away, the message was too large, or an earlier handler
            # refused it: the downstream connection was dropped with half a message.
            _log.info(
                "Message not relayed: {why}", why=str(e) or type(e).__name__, sessionId=session.id
            )
            link.drop("message failed")
            raise
        finally:
            answered.append(True)
        if isinstance(result, DownstreamReply):
            # DATA itself was refused (a 4xx or 5xx); the downstream transaction is still
            # open, and the next MAIL resets it.
            raise self._refusal(link, session, result)
        link.open = False
        link.recipients = []
        return self._finalAnswer(session, result)

    def _abortedAfterItsEnd(
        self,
        reason: BaseException,
        link: _Link,
        client: DownstreamClient,
        aborted: list[BaseException],
        answered: list[bool],
    ) -> None:
        """
        The message failed on this side (the client went away, or the server stopped)
        after it was all handed to the downstream connection, final dot included, and
        before the downstream answered: much of it may still be in Twisted's buffer or
        the kernel's.  The connection is dropped at once (a reset, which sends nothing
        more), so that the downstream does not get the final dot and keep a message
        whose client, never answered, sends it again.
        """
        if answered:
            return
        aborted.append(reason)
        client.abort(f"message failed: {str(reason) or type(reason).__name__}")

    def _finalAnswer(
        self, session: Session, replies: list[DownstreamReply]
    ) -> _Outcome | list[_Outcome]:
        if self.lmtp and session.lmtp:
            # One reply per recipient, in order, both ways.
            return [_outcome(reply) for reply in replies]
        if self.lmtp:
            combined = combineReplies(replies)
            if isinstance(combined, SMTPError):
                _log.warn(
                    "Mixed per-recipient results from the LMTP downstream: {replies}",
                    replies=[str(reply) for reply in replies],
                    sessionId=session.id,
                )
                raise fresh(combined)
            replies = [combined]
        # In SMTP, or for every recipient of our LMTP client, the single reply.
        outcome = _outcome(replies[0])
        if isinstance(outcome, SMTPError):
            raise outcome
        return outcome

    def _partialAnswer(
        self, link: _Link, session: Session, error: DownstreamError
    ) -> list[_Outcome]:
        """
        The per-recipient answer of an LMTP client when the LMTP downstream became unusable
        after the message, having replied for its first recipients only.

        Each of those replies is final for its recipient (RFC 2033 section 4.2): a
        recipient told 250 downstream has the message, and a 451 for it as well would
        have the client send it to that recipient twice.  So those replies are passed on
        as they came, and only the recipients whose reply never came get L{UNAVAILABLE}.
        """
        replies = error.replies
        missing = len(session.envelope.rcptTo) - len(replies)
        _log.warn(
            "Downstream {downstream} unavailable at {step} after {received} of {expected} "
            "replies: {why}",
            downstream=self._name(link),
            step=_step(link),
            received=len(replies),
            expected=len(replies) + missing,
            why=str(error),
            sessionId=session.id,
        )
        link.drop(str(error))
        return [_outcome(reply) for reply in replies] + [fresh(UNAVAILABLE) for _ in range(missing)]

    # -- the downstream connection ---------------------------------------------------------

    def _deadline(self, link: _Link, *, start: bool = True) -> _Deadline:
        """
        The time for the downstream's answer to the step about to begin (see L{_Deadline}).
        """
        deadline = _Deadline(self._reactor, self.handlerTimeout * ANSWER_SHARE, link)
        if start:
            deadline.start()
        return deadline

    def _transaction(self, session: Session, step: str) -> tuple[_Link, DownstreamClient]:
        """
        The session's link and its connection, for a command (C{step}) inside the
        downstream transaction that MAIL FROM opened.

        @raise SMTPError: L{UNAVAILABLE} when there is no such transaction (the connection
            was lost, or MAIL FROM never reached the downstream); the link is dropped.
        """
        link = self._links.get(session.id)
        if link is None or link.client is None or not link.usable or not link.open:
            raise self._unavailable(
                link, session, DownstreamError("no downstream transaction"), step
            )
        return link, link.client

    async def _ready(self, link: _Link, session: Session) -> DownstreamClient:
        """
        The downstream connection, greeted and with no transaction open: the one the session
        has if it is still up, else a new one.
        """
        if link.invited:
            # A handler after this one refused DATA after the downstream had invited the
            # message: no RSET can end that, so the connection is dropped (keeping
            # nothing) and a new one made.
            link.drop("DATA was refused after the downstream invited the message")
        client = link.client
        if client is not None and client.usable:
            if link.open:
                link.open = False
                link.recipients = []
                await _reset(client)
            return client
        link.drop("reconnecting")
        factory = DownstreamFactory(self._reactor, self.timeout)
        connecting: Deferred[Any] = self._endpoint.connect(factory)
        connecting.addTimeout(self.timeout, self._reactor)
        link.connecting = connecting
        try:
            client = await connecting
        except Exception as e:
            if link.expired is not None:
                raise DownstreamError(link.expired) from None
            raise DownstreamError(f"cannot connect: {type(e).__name__}: {e}") from None
        finally:
            link.connecting = None
        assert isinstance(client, DownstreamClient)
        if link.closed:
            client.greeting.addErrback(lambda _: None)
            client.abort("the client went away")
            raise DownstreamError("the client went away")
        link.client = client
        greeting = await client.greeting
        if greeting.code != 220:
            client.abort(f"greeting {greeting}")
            raise DownstreamError(f"greeting {greeting}")
        hello = "LHLO" if self.lmtp else "EHLO"
        reply = await client.command(f"{hello} {self.serverName}")
        if reply.positive:
            link.extensions = parseExtensions(reply)
        elif not self.lmtp and reply.code // 100 == 5:
            # A server without ESMTP (RFC 5321 section 3.2).
            reply = await client.command(f"HELO {self.serverName}")
            link.extensions = {}
        if not reply.positive:
            client.abort(f"{hello} refused: {reply}")
            raise DownstreamError(f"{hello} refused: {reply}")
        link.verifiedTLS = _verifiedTLS(client)
        link.finalDelivery = _finalDelivery(client, self.lmtp)
        return client

    async def _syncRecipients(self, link: _Link, session: Session) -> None:
        """
        Make the downstream's recipients those of the envelope.

        They differ when a handler registered after this one refused a recipient that the
        downstream had accepted: the downstream must not deliver to it.  The transaction is
        then made again downstream, with the envelope's recipients only.
        """
        expected = session.envelope.rcptTo
        if _sameRecipients(link.recipients, expected, lmtp=session.lmtp):
            return
        _log.warn(
            "A handler after ForwardDelivery refused a recipient the downstream had accepted; "
            "the downstream transaction is made again (register ForwardDelivery last)",
            sessionId=session.id,
        )
        client = link.client
        assert client is not None
        await self._remake(link, client, session, list(expected))

    async def _remake(
        self, link: _Link, client: DownstreamClient, session: Session, recipients: list[Address]
    ) -> None:
        """
        Make the transaction again downstream, over C{client}: RSET, the session's MAIL
        and a RCPT for each of C{recipients}.

        @raise SMTPError: L{RECIPIENTS_CHANGED} when the downstream refuses one now.
        """
        sender = session.envelope.mailFrom
        assert sender is not None
        link.open = False
        await _reset(client)
        link.recipients = []
        for command in [
            link.mailCommand(sender, session.envelope),
            *(rcptCommand(r, session.envelope, link.extensions) for r in recipients),
        ]:
            reply = await client.command(command)
            link.open = True
            if not reply.positive:
                _log.warn(
                    "The downstream refused on a second try: {command}: {reply}",
                    command=command,
                    reply=str(reply),
                    sessionId=session.id,
                )
                raise fresh(RECIPIENTS_CHANGED)
        link.recipients = recipients

    async def _leaveData(self, link: _Link, session: Session) -> DownstreamClient:
        """
        The downstream was invited a message that will not come (a handler after this one
        refused DATA) and the client goes on with its transaction (RCPT, DATA again): no
        RSET can end a downstream DATA, so the connection is dropped, keeping nothing,
        and the transaction made again on a new one.

        @return: the new connection.
        """
        recipients = list(link.recipients)
        link.drop("DATA was refused after the downstream invited the message")
        client = await self._ready(link, session)
        await self._remake(link, client, session, recipients)
        return client

    def _check(self, link: _Link, session: Session, reply: DownstreamReply) -> None:
        """
        Accept a 2xx; raise a 4xx or 5xx as the downstream gave it; anything else is not an
        answer to the command and makes the downstream unusable.
        """
        if reply.positive:
            return
        if reply.refusal:
            raise self._refusal(link, session, reply)
        raise self._unavailable(link, session, DownstreamError(f"unexpected reply {reply}"))

    def _refusal(self, link: _Link, session: Session, reply: DownstreamReply) -> SMTPError:
        """
        What the client hears for the downstream's refusal C{reply}: the same refusal; but
        a demand that this server use STARTTLS or AUTH, which it does not do towards the
        downstream, is no verdict on the client's mail: its client is not to bounce the
        message for it, nor is the operator, who can mend it, to be left unaware.  So the
        downstream is unavailable: L{UNAVAILABLE}, and a warning with the reply.
        """
        if reply.demandsTLSOrAuth:
            return self._unavailable(
                link,
                session,
                DownstreamError(
                    f"it demands STARTTLS or AUTH, which this server does not do: {reply}"
                ),
            )
        return reply.error()

    def _unavailable(
        self, link: _Link | None, session: Session, error: Exception, step: str | None = None
    ) -> SMTPError:
        """
        Drop the downstream connection and give the temporary error the client hears; a
        warning names the downstream and the step (C{step}, or the connection's) that
        failed.
        """
        if link is not None:
            if not link.closed:
                _log.warn(
                    "Downstream {downstream} unavailable at {step}: {why}",
                    downstream=self._name(link),
                    step=step or _step(link),
                    why=str(error),
                    sessionId=session.id,
                )
            link.drop(str(error))
        return fresh(UNAVAILABLE)

    def _name(self, link: _Link) -> str:
        """
        The downstream as log lines name it (see C{description}).
        """
        if self.description is not None:
            return self.description
        client = link.client
        transport = client.transport if client is not None else None
        if transport is not None:
            peer = transport.getPeer()
            if isinstance(peer, UNIXAddress):
                path: bytes | str | None = peer.name
                if isinstance(path, bytes):
                    path = path.decode("utf-8", "replace")
                return f"unix:{path}" if path else "unix"
            host = getattr(peer, "host", None)
            if host is not None:
                return hostPort(host, getattr(peer, "port", ""))
        return type(self._endpoint).__name__


async def _reset(client: DownstreamClient) -> None:
    # End the downstream transaction.  RSET must get 250 (RFC 5321 section 4.1.1.5), so a
    # server that refuses it is broken, and its connection is not used again.
    reply = await client.command("RSET")
    if not reply.positive:
        client.abort(f"RSET refused: {reply}")
        raise DownstreamError(f"RSET refused: {reply}")


def _verifiedTLS(client: DownstreamClient) -> bool:
    # RFC 8689 section 4.2.1: REQUIRETLS needs TLS to the next hop with a certificate
    # that chains to a trusted authority *and* is valid for that host (RFC 6125).  The
    # connection is under TLS when its transport is Twisted's TLS layer, whose handle is
    # the OpenSSL connection.  With VERIFY_PEER a chain that does not verify ends the
    # handshake; but CertificateOptions(verify=True), which the ssl: endpoint builds
    # without hostname=, checks no name at all, so any certificate from the authority
    # (attacker.example's too) gets this far.  The host name the client options were
    # made for is the SNI name they sent (optionsForClientTLS, the tls: endpoint, ssl:
    # with hostname=); the certificate is checked against it here, whatever checked it
    # before.  No name, no verified link: an IP address is sent no SNI, and is not the
    # MX host name RFC 8689 wants matched anyway.
    transport = client.transport
    if not ISystemHandle.providedBy(transport):
        return False
    handle = transport.getHandle()
    if not isinstance(handle, SSL.Connection) or handle.get_peer_certificate() is None:
        return False
    if not handle.get_verify_mode() & SSL.VERIFY_PEER:
        return False
    name = handle.get_servername()
    if not name:
        return False
    try:
        verify_hostname(handle, name.decode("ascii"))
    except (UnicodeDecodeError, ValueError, VerificationError, CertificateError):
        # ValueError: a server name that is no DNS name (an IP address, say).
        return False
    return True


def _step(link: _Link) -> str:
    # What the connection was doing (see DownstreamClient.step); no connection yet, its
    # making.
    client = link.client
    return client.step if client is not None else "connect"


def _finalDelivery(client: DownstreamClient, lmtp: bool) -> bool:
    # LMTP to a Unix socket or over loopback is handing the message to the store on this
    # host (RFC 2033: LMTP is for final delivery).  REQUIRETLS governs relaying (RFC 8689
    # section 4.2.1), and neither crosses a network: whoever could read it could read
    # the mailbox too.  LMTP to another host may cross a network, so there it still
    # needs verified TLS, like any SMTP relay; and an SMTP server relays further.
    transport = client.transport
    if not lmtp or transport is None:
        return False
    peer = transport.getPeer()
    if isinstance(peer, UNIXAddress):
        return True
    host = getattr(peer, "host", None)
    return isinstance(host, str) and isLoopback(host)


def _outcome(reply: DownstreamReply) -> _Outcome:
    # A downstream's final reply as a data handler's answer: its text for a success (the
    # server adds the code; the downstream's enhanced code, if it gave one, in front of
    # the text takes the place of the server's own), or the refusal.
    if reply.positive:
        if not reply.text:
            return None
        return f"{reply.enhanced} {reply.text}" if reply.enhanced else reply.text
    return reply.error()


def _sameRecipients(have: list[Address], expected: tuple[Address, ...], *, lmtp: bool) -> bool:
    # The server keeps the very Address objects the handlers were given.  In LMTP every
    # accepted RCPT is in the envelope, in order; in SMTP a repeated recipient replaces the
    # earlier one, which the downstream may keep: the same mailbox, so no harm.
    if lmtp:
        if len(have) != len(expected):
            return False
        return all(a is b for a, b in zip(have, expected, strict=True))
    kept = {id(r) for r in expected}
    mailboxes = {r.address.casefold() for r in expected}
    return all(id(r) in kept or r.address.casefold() in mailboxes for r in have)
