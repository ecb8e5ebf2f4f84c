"""
Helpers for the tests that drive the conversation over the wire in memory, through
L{MemoryClient}: a server on a fake clock, a client of it, and the replies as the tests
look at them; handlers whose answers the test gives, a data handler that reads late, a
DNS resolver answering from tables; PROXY headers.

A module whose servers differ (one that greets at once, say) binds its own defaults with
L{functools.partial}: the options a test passes still win.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from zope.interface import implementer

from smtpsvc import (
    IDataCommandHandler,
    IDataHandler,
    IMessageStream,
    Session,
    SMTPError,
    SMTPServer,
    readMessage,
)
from smtpsvc._core._proxy import ProxyHeader
from smtpsvc.testing import MemoryClient, ServerReply

_T = TypeVar("_T")

#: The server's name.
NAME = "mx.test"
#: The sender of the tests' transactions.
SENDER = "a@b.example"
#: The recipient of the tests' transactions.
RECIPIENT = "c@d.example"


def makeServer(handlers: Iterable[object] = (), **options: Any) -> SMTPServer:
    """
    A server named L{NAME} on a fake clock, with AUTH out of the way, unless C{options}
    say otherwise.
    """
    options.setdefault("name", NAME)
    options.setdefault("authOptional", True)
    return SMTPServer(handlers, reactor=Clock(), **options)


def hello(client: MemoryClient, verb: str = "EHLO", name: str = "client.example") -> None:
    """
    Say C{verb} (EHLO, HELO or LHLO) with C{name}, which must get one 250.
    """
    replies = client.send(f"{verb} {name}")
    assert codes(replies) == [250], replies


def clientOf(server: SMTPServer, clientName: str | None = None) -> MemoryClient:
    """
    A client of C{server}: it has seen the greeting and, given a C{clientName}, said
    EHLO (LHLO to an LMTP server) with it.
    """
    client = MemoryClient(server)
    if clientName is not None:
        hello(client, "LHLO" if server.options.lmtp else "EHLO", clientName)
    return client


def connect(*handlers: object, clientName: str | None = None, **options: Any) -> MemoryClient:
    """
    A client of a new server (L{makeServer}) with C{handlers} and C{options}, as
    L{clientOf} leaves it.
    """
    return clientOf(makeServer(handlers, **options), clientName)


#: One line of a reply as it is sent: a code from 200 to 599, a space or a hyphen, text.
_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\r\n")


def malformedReplyLines(sent: bytes) -> list[bytes]:
    """
    The complete lines of what a server C{sent} that are not reply lines (an incomplete
    last line is left out).
    """
    return [line for line in re.findall(rb"[^\n]*\n", sent) if _REPLY_LINE.fullmatch(line) is None]


def codes(replies: Iterable[ServerReply]) -> list[int]:
    """
    The codes of C{replies}.
    """
    return [r.code for r in replies]


def wire(reply: ServerReply) -> str:
    """
    The first line of C{reply} as it was sent: code, a space, the text.
    """
    return f"{reply.code} {reply.lines[0]}" if reply.lines else str(reply.code)


def wires(replies: Iterable[ServerReply]) -> list[str]:
    """
    The first line of each of C{replies}, as L{wire} gives it.
    """
    return [wire(r) for r in replies]


def lines(replies: Iterable[ServerReply]) -> list[str]:
    """
    Every line of C{replies} as the client reads it, code first (continuation marks left
    out).
    """
    return [f"{r.code} {line}" for r in replies for line in r.lines]


def first(replies: Sequence[ServerReply]) -> str:
    """
    The first line of the first of C{replies}, as L{wire} gives it.
    """
    return wire(replies[0])


def drain(client: MemoryClient) -> list[ServerReply]:
    """
    The replies sent so far and those still to come as the reactor takes the turns the
    server leaves it between long batches of pipelined commands.
    """
    replies = client.received()
    clock = client.clock
    while any(call.getTime() <= clock.seconds() for call in clock.getDelayedCalls()):
        clock.advance(0)
        replies += client.received()
    return replies


class Later(Generic[_T]):
    """
    The base of a handler that answers when the test says so: each answer it is asked
    for is a L{Deferred} left in C{pending}, which the test fires.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred[_T]] = []

    def later(self) -> Deferred[_T]:
        """
        A new answer, left in C{pending}.
        """
        answer: Deferred[_T] = Deferred()
        self.pending.append(answer)
        return answer


@implementer(IDataHandler)
class LateReader:
    """
    A data handler that reads each message only once C{gate} has fired (a handler that
    awaits something first, and lets the message fill its stream meanwhile).
    """

    def __init__(self) -> None:
        self.gate: Deferred[None] = Deferred()
        self.messages: list[bytes] = []

    async def onData(self, stream: IMessageStream, session: Session) -> None:
        await self.gate
        self.messages.append(await readMessage(stream))


class FakeResolver:
    """
    Answers PTR, A and AAAA questions from tables, at once or never.
    """

    def __init__(
        self, pointers: dict[str, str], addresses: dict[str, str], silent: bool = False
    ) -> None:
        self.pointers = pointers
        self.addresses = addresses
        self.silent = silent
        self.asked: list[str] = []

    def _answer(self, name: str, record: Any, kind: int) -> Deferred[Any]:
        self.asked.append(name)
        if self.silent:
            return Deferred()
        return succeed(([dns.RRHeader(name=name, type=kind, payload=record)], [], []))

    def lookupPointer(self, name: str, timeout: Any = None) -> Deferred[Any]:
        target = self.pointers.get(name)
        if target is None and not self.silent:
            self.asked.append(name)
            return succeed(([], [], []))
        return self._answer(name, dns.Record_PTR(target or "nowhere.invalid"), dns.PTR)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._answer(name, dns.Record_A(self.addresses.get(name, "0.0.0.0")), dns.A)


def proxied(
    version: int,
    family: str,
    source: tuple[str, int],
    destination: tuple[str, int],
    tlvs: dict[int, bytes] | None = None,
) -> ProxyHeader:
    """
    The PROXY header of a relayed connection (a PROXY command) from C{source} to
    C{destination}, each an address and a port, with C{tlvs} (none by default).
    """
    return ProxyHeader(
        version=version,
        command="PROXY",
        family=family,
        sourceAddress=source[0],
        sourcePort=source[1],
        destinationAddress=destination[0],
        destinationPort=destination[1],
        tlvs={} if tlvs is None else tlvs,
    )


@implementer(IDataCommandHandler)
class DataGate:
    """
    Decides on DATA: refuses while C{refusal} is set, answers later while C{later} is
    set (with the Deferreds in C{pending}), and counts its calls.
    """

    def __init__(self) -> None:
        self.refusal: SMTPError | None = None
        self.later = False
        self.pending: list[Deferred[None]] = []
        self.calls = 0

    def onDataCommand(self, session: Session) -> Deferred[None] | None:
        self.calls += 1
        if self.refusal is not None:
            raise self.refusal
        if self.later:
            self.pending.append(Deferred())
            return self.pending[-1]
        return None
