"""
The load generators: Postfix's ``smtp-source`` for W1, and this process's own clients for the
rest (asyncio for many small sessions, threads with blocking sockets for large messages).

Every client is bounded twice: by a count of units, and by a deadline after which what is
still running is abandoned and the run is marked as timed out.  Each calls the meter's
C{begin} just before the load starts and C{end} just after the last unit is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._meter import Meter
from benchmarks._servers import NAME

HOST = "127.0.0.1"
EHLO = b"EHLO client.example.test\r\n"
MAIL = b"MAIL FROM:<bench@example.org>\r\n"
RCPT = b"RCPT TO:<sink@example.net>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"
STARTTLS = b"STARTTLS\r\n"
END = b".\r\n"

#: A body line as base64 attachments have them: 76 characters, never a leading dot.
_LINE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n"


def message(size: int) -> bytes:
    """
    A message of exactly C{size} bytes (headers, body, the last CRLF; not the final dot).
    """
    header = (
        b"From: <bench@example.org>\r\nTo: <sink@example.net>\r\n"
        b"Subject: benchmark\r\nMessage-ID: <bench@example.org>\r\n\r\n"
    )
    lines, rest = divmod(max(size - len(header), 0), len(_LINE))
    tail = b"" if rest < 3 else _LINE[: rest - 2] + b"\r\n"
    return header + _LINE * lines + tail


@dataclass
class ClientResult:
    """
    What a client got done: units (messages, sessions, bytes, connections), the errors it
    saw, whether the deadline cut it short, and figures particular to the workload.
    """

    units: float = 0.0
    errors: int = 0
    firstError: str = ""
    timedOut: bool = False
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def fail(self, error: BaseException | str) -> None:
        """
        Count one failed unit, keeping the first reason.
        """
        self.errors += 1
        if not self.firstError:
            self.firstError = error if isinstance(error, str) else f"{error!r}"


class UnexpectedReply(Exception):
    """
    The server answered with another code than the one the session needs.
    """


class _Replies(asyncio.Protocol):
    # The reply codes of a connection, one per complete (possibly multiline) reply.

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self._buffer = bytearray()
        self._codes: deque[int] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\r\n", start)) >= 0:
            if buffer[start + 3 : start + 4] != b"-":
                code = buffer[start : start + 3]
                self._codes.append(int(code) if code.isdigit() else 0)
            start = end + 2
        if start:
            del buffer[:start]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("connection closed by the server")
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(data)

    async def command(self, data: bytes, code: int, after: str) -> None:
        """
        Send C{data} and wait for its reply, which must have C{code}.
        """
        self.write(data)
        await self.expect(code, after)

    async def expect(self, code: int, after: str) -> None:
        while not self._codes:
            if self._lost is not None:
                raise ConnectionError(f"{after}: {self._lost}")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        got = self._codes.popleft()
        if got != code:
            raise UnexpectedReply(f"{got} after {after} (expected {code})")


async def _connect(port: int) -> tuple[asyncio.Transport, _Replies]:
    return await asyncio.get_running_loop().create_connection(_Replies, HOST, port)


async def _pool(
    total: int,
    concurrency: int,
    session: Callable[[], Awaitable[float]],
    result: ClientResult,
    timeout: float,
) -> None:
    # `concurrency` tasks take sessions from one counter until `total` have been started;
    # each session returns the units it completed.
    counter = itertools.count()

    async def worker(number: int) -> None:
        # A ramp of a millisecond per task: a burst of `concurrency` SYNs at once would
        # overflow a listen queue of 50 (Twisted's default backlog), and the kernel would
        # drop the excess for a retransmission a second later, measuring the backlog, not
        # the server.  Overflows that still happen are counted in the report.
        await asyncio.sleep(number * 0.001)
        while next(counter) < total:
            try:
                # Not `units += await ...`: that reads units before the await.
                done = await session()
                result.units += done
            except (OSError, UnexpectedReply) as e:  # ConnectionError, SSLError: OSErrors
                result.fail(e)

    tasks = [asyncio.create_task(worker(n)) for n in range(min(concurrency, total))]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        result.timedOut = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def _runLoop(main: Coroutine[Any, Any, None]) -> None:
    asyncio.run(main)


def _measuredPool(
    meter: Meter,
    total: int,
    concurrency: int,
    session: Callable[[], Awaitable[float]],
    timeout: float,
) -> ClientResult:
    # Run `total` sessions `concurrency` at a time, with the meter running around them.
    result = ClientResult()

    async def main() -> None:
        meter.begin()
        await _pool(total, concurrency, session, result, timeout)
        meter.end()

    _runLoop(main())
    return result


# -- W1 ----------------------------------------------------------------------------------


def smtpSource(
    smtpSourcePath: Path,
    port: int,
    meter: Meter,
    messages: int,
    sessions: int,
    size: int,
    timeout: float,
) -> ClientResult:
    """
    W1 with Postfix's C{smtp-source}: C{messages} messages of C{size} bytes over
    C{sessions} connections, each sending one message after another (C{-d}).
    """
    result = ClientResult()
    argv = [
        str(smtpSourcePath),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bench@example.org",
        "-t",
        "sink@example.net",
        f"{HOST}:{port}",
    ]
    with tempfile.TemporaryFile() as output:
        meter.begin()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        killer = threading.Timer(timeout, process.kill)
        killer.start()
        try:
            # wait4, not wait: it also gives the load generator's own CPU time.
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        meter.end()
        process.returncode = os.waitstatus_to_exitcode(status)
        meter.setClientCpu(usage.ru_utime + usage.ru_stime)
        output.seek(0)
        text = output.read().decode(errors="replace").strip()
    if process.returncode == 0:
        result.units = messages
    elif meter.wall >= timeout:
        result.timedOut = True
        result.fail(f"smtp-source did not finish within {timeout:.0f} s")
    else:
        result.fail(f"smtp-source exited with {process.returncode}: {text[-300:]}")
    result.extra["loadGenerator"] = "smtp-source"
    return result


def pythonSource(
    port: int, meter: Meter, messages: int, sessions: int, size: int, timeout: float
) -> ClientResult:
    """
    W1 without smtp-source: the same load from asyncio clients (one command at a time, as
    smtp-source sends them).
    """
    body = message(size) + END
    counter = itertools.count()

    async def connection() -> float:
        transport, replies = await _connect(port)
        sent = 0
        try:
            await replies.expect(220, "connect")
            await replies.command(EHLO, 250, "EHLO")
            while next(counter) < messages:
                await replies.command(MAIL, 250, "MAIL")
                await replies.command(RCPT, 250, "RCPT")
                await replies.command(DATA, 354, "DATA")
                await replies.command(body, 250, "the final dot")
                sent += 1
            await replies.command(QUIT, 221, "QUIT")
        finally:
            transport.close()
        return sent

    result = _measuredPool(meter, sessions, sessions, connection, timeout)
    result.extra["loadGenerator"] = "python"
    return result


# -- W2 ----------------------------------------------------------------------------------


def ehloQuit(
    port: int, meter: Meter, sessions: int, concurrency: int, timeout: float
) -> ClientResult:
    """
    W2: C{sessions} sessions of connect, EHLO, QUIT, C{concurrency} at a time.
    """

    async def session() -> float:
        transport, replies = await _connect(port)
        try:
            await replies.expect(220, "connect")
            await replies.command(EHLO, 250, "EHLO")
            await replies.command(QUIT, 221, "QUIT")
        finally:
            transport.close()
        return 1

    return _measuredPool(meter, sessions, concurrency, session, timeout)


# -- W3 ----------------------------------------------------------------------------------


class _BlockingReplies:
    # Reply codes from a blocking socket.

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def expect(self, code: int, after: str) -> None:
        while True:
            end = self.buffer.find(b"\r\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"{after}: connection closed by the server")
                self.buffer += chunk
                end = self.buffer.find(b"\r\n")
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if line[3:4] != b"-":
                break
        got = int(line[:3]) if line[:3].isdigit() else 0
        if got != code:
            raise UnexpectedReply(f"{got} after {after} (expected {code})")


def largeMessages(
    port: int,
    meter: Meter,
    body: bytes,
    count: int,
    rounds: int,
    timeout: float,
    chunk: int = 1 << 20,
) -> ClientResult:
    """
    W3: C{count} connections at once, each sending one message C{body} (built once by the
    caller, before the clock starts) in chunks of C{chunk} bytes; C{rounds} times in a row,
    so that the measurement lasts long enough to be read on a busy machine.
    """
    result = ClientResult()
    sockets: list[socket.socket] = []
    lock = threading.Lock()
    view = memoryview(body)

    def send() -> None:
        try:
            with socket.create_connection((HOST, port), timeout=timeout) as sock:
                with lock:
                    sockets.append(sock)
                replies = _BlockingReplies(sock)
                replies.expect(220, "connect")
                sock.sendall(EHLO)
                replies.expect(250, "EHLO")
                sock.sendall(MAIL)
                replies.expect(250, "MAIL")
                sock.sendall(RCPT)
                replies.expect(250, "RCPT")
                sock.sendall(DATA)
                replies.expect(354, "DATA")
                for offset in range(0, len(view), chunk):
                    sock.sendall(view[offset : offset + chunk])
                sock.sendall(END)
                replies.expect(250, "the final dot")
                with lock:
                    result.units += len(body)
                sock.sendall(QUIT)
                replies.expect(221, "QUIT")
        except (OSError, UnexpectedReply) as e:
            with lock:
                result.fail(e)

    deadline = time.monotonic() + timeout
    meter.begin()
    for _ in range(rounds):
        threads = [threading.Thread(target=send, daemon=True) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        if result.errors or time.monotonic() >= deadline:
            break
    meter.end()
    if any(thread.is_alive() for thread in threads):
        result.timedOut = True
        with lock:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
    return result


# -- W4 ----------------------------------------------------------------------------------


def idleConnections(
    port: int,
    meter: Meter,
    total: int,
    concurrency: int,
    settle: float,
    timeout: float,
) -> ClientResult:
    """
    W4: open C{total} connections (C{concurrency} connecting at a time), wait for every
    greeting, let the server settle, read its memory with all of them open, close them.

    The meter's interval covers opening and greeting; C{extra} holds C{greeted},
    C{openRssKiB} (the server's VmRSS with every connection open) and C{openPeakKiB}.
    """
    result = ClientResult()
    transports: list[asyncio.BaseTransport] = []

    async def connection() -> float:
        transport, replies = await _connect(port)
        transports.append(transport)
        await replies.expect(220, "connect")
        return 1

    async def main() -> None:
        meter.begin()
        await _pool(total, concurrency, connection, result, timeout)
        meter.end()
        await asyncio.sleep(settle)
        memory = meter.memory()
        result.extra["openRssKiB"] = memory.rssKiB
        result.extra["openPeakKiB"] = memory.peakKiB
        result.extra["open"] = sum(1 for t in transports if not t.is_closing())
        for transport in transports:
            transport.close()
        await asyncio.sleep(0.2)

    _runLoop(main())
    result.extra["greeted"] = int(result.units)
    return result


# -- W5 ----------------------------------------------------------------------------------


def clientContext() -> ssl.SSLContext:
    """
    The client's TLS context: no verification (the certificate is self-signed), no session
    reuse, so every session pays for a full handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def starttlsSessions(
    port: int, meter: Meter, sessions: int, concurrency: int, size: int, timeout: float
) -> ClientResult:
    """
    W5: C{sessions} sessions of EHLO, STARTTLS, EHLO, one message of C{size} bytes, QUIT,
    C{concurrency} at a time.
    """
    context = clientContext()
    body = message(size) + END

    async def session() -> float:
        loop = asyncio.get_running_loop()
        transport, replies = await _connect(port)
        try:
            await replies.expect(220, "connect")
            await replies.command(EHLO, 250, "EHLO")
            await replies.command(STARTTLS, 220, "STARTTLS")
            secure = await loop.start_tls(transport, replies, context, server_hostname=NAME)
            if secure is None:
                raise ConnectionError("STARTTLS: the connection closed during the handshake")
            transport = replies.transport = secure
            await replies.command(EHLO, 250, "EHLO after STARTTLS")
            await replies.command(MAIL, 250, "MAIL")
            await replies.command(RCPT, 250, "RCPT")
            await replies.command(DATA, 354, "DATA")
            await replies.command(body, 250, "the final dot")
            await replies.command(QUIT, 221, "QUIT")
        finally:
            transport.close()
        return 1

    return _measuredPool(meter, sessions, concurrency, session, timeout)
