"""
Misbehaving clients over real sockets, many at once, against a real C{twist smtpsvc}: what
the in-memory fuzz tests (L{tests.test_protocol_fuzz}) cannot reach, the reactor's own
paths (replies sent straight to the socket, writes to a socket the client reset, input
paused and resumed under TCP backpressure, half-closed connections).

Each client picks one misbehaviour from a seeded random generator, so a failure can be
replayed: floods of pipelined commands it never reads the replies to, a message cut off
by a reset, a half-close, garbage, a long line with no end, a BDAT chunk shorter than it
said, a reset before a word, STARTTLS followed by garbage or half a handshake, a message
over TLS cut off by a reset.  Some clients behave.  Afterwards the service must still
serve smtplib, must have logged no traceback, and must stop cleanly on SIGTERM.
Everything runs on 127.0.0.1, every socket has a timeout, and the clients are bounded in
number and time.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.internet.threads import deferToThread

from .e2e_support import (
    CLIENT_NAME,
    EXIT_TIMEOUT,
    LISTEN,
    LOCALHOST,
    E2ETestCase,
    workspace,
)
from .maildir_support import delivered
from .memorytls import issue
from .service_support import QUICK, message, sendOne, startService

#: How many misbehaving clients, how many at once, and the seeds of their choices.
CLIENTS = 160
AT_ONCE = 16
SEED = 20261121
#: Seconds any one client may take, and all of them together.
CLIENT_TIMEOUT = 3.0
ALL_TIMEOUT = 30.0


def _reset(sock: socket.socket) -> None:
    # Close with a RST rather than a FIN: SO_LINGER on, with a zero timeout.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain(sock: socket.socket, within: float) -> bytes:
    # Read what comes for a while, or until the server closes.
    data = b""
    deadline = time.monotonic() + within
    with contextlib.suppress(OSError):
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _hello(sock: socket.socket) -> None:
    sock.recv(4096)
    sock.sendall(f"EHLO {CLIENT_NAME}\r\n".encode())


def flood(sock: socket.socket, rng: random.Random) -> None:
    """
    Pipelined commands by the thousand, no reply read, then a reset or a close.
    """
    _hello(sock)
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRSET\r\n" * rng.randint(100, 3000))
    if rng.random() < 0.5:
        _reset(sock)


def cutOff(sock: socket.socket, rng: random.Random) -> None:
    """
    A message begun and cut off by a reset in the middle of its data.
    """
    _hello(sock)
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
    sock.sendall(b"Subject: cut\r\n\r\n" + b"x" * rng.randint(1, 300_000))
    _reset(sock)


def halfClose(sock: socket.socket, rng: random.Random) -> None:
    """
    Commands and then a half-close, reading what the server says until it closes.
    """
    _hello(sock)
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nhi\r\n")
    if rng.random() < 0.5:
        sock.sendall(b".\r\n")
    sock.shutdown(socket.SHUT_WR)
    _drain(sock, CLIENT_TIMEOUT)


def garbage(sock: socket.socket, rng: random.Random) -> None:
    """
    Random bytes, some replies read, then a close.
    """
    sock.sendall(rng.randbytes(rng.randint(1, 8192)))
    _drain(sock, 0.2)


def longLine(sock: socket.socket, rng: random.Random) -> None:
    """
    A command line that never ends.
    """
    _hello(sock)
    sock.sendall(b"MAIL FROM:<" + b"a" * rng.randint(1000, 200_000))
    _drain(sock, 0.3)


def shortChunk(sock: socket.socket, rng: random.Random) -> None:
    """
    A BDAT chunk shorter than it said, then a close.
    """
    _hello(sock)
    sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\n")
    sock.sendall(b"BDAT 100000 LAST\r\n" + b"y" * rng.randint(0, 99_999))
    if rng.random() < 0.5:
        _reset(sock)


def resetAtOnce(sock: socket.socket, rng: random.Random) -> None:
    """
    Connected, and gone with a reset before a word.
    """
    _reset(sock)


def behaves(sock: socket.socket, rng: random.Random) -> None:
    """
    A whole transaction, reading every reply.
    """
    sock.recv(4096)
    for line in (
        f"EHLO {CLIENT_NAME}",
        "MAIL FROM:<a@example.org>",
        "RCPT TO:<u@example.org>",
        "DATA",
    ):
        sock.sendall(line.encode() + b"\r\n")
        _drain(sock, 0.05)
    sock.sendall(b"Subject: chaos\r\n\r\nbehaved\r\n.\r\nQUIT\r\n")
    _drain(sock, CLIENT_TIMEOUT)


def _clientHello() -> bytes:
    # The first flight of a real TLS handshake, made in memory.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="mx.example.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def startTLSThenGarbage(sock: socket.socket, rng: random.Random) -> None:
    """
    STARTTLS, then bytes that are no handshake (or half of one), then a reset or a close.
    """
    _hello(sock)
    sock.sendall(b"STARTTLS\r\n")
    _drain(sock, 0.05)
    hello = _clientHello()
    sock.sendall(hello[: rng.randint(0, len(hello))] if rng.random() < 0.5 else rng.randbytes(64))
    if rng.random() < 0.5:
        _reset(sock)
    else:
        _drain(sock, 0.3)


def startTLSAndMail(sock: socket.socket, rng: random.Random) -> None:
    """
    A whole transaction after STARTTLS, then QUIT, or a reset in the middle of the data.
    """
    _hello(sock)
    sock.sendall(b"STARTTLS\r\n")
    _drain(sock, 0.05)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(sock, server_hostname="mx.example.test")
    tls.sendall(f"EHLO {CLIENT_NAME}\r\n".encode())
    tls.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")
    tls.sendall(b"Subject: chaos\r\n\r\n" + b"z" * rng.randint(0, 100_000))
    if rng.random() < 0.5:
        _reset(tls)
        return
    tls.sendall(b"\r\nencrypted\r\n.\r\nQUIT\r\n")
    _drain(tls, CLIENT_TIMEOUT)


MISBEHAVIOURS: tuple[Callable[[socket.socket, random.Random], None], ...] = (
    flood,
    cutOff,
    halfClose,
    garbage,
    longLine,
    shortChunk,
    resetAtOnce,
    behaves,
    startTLSThenGarbage,
    startTLSAndMail,
)


def oneClient(port: int, seed: int) -> str:
    """
    Run one client with the misbehaviour C{seed} picks.

    @return: the misbehaviour's name.
    """
    rng = random.Random(seed)
    chosen = rng.choice(MISBEHAVIOURS)
    try:
        sock = socket.create_connection((LOCALHOST, port), timeout=CLIENT_TIMEOUT)
    except OSError:
        return f"{chosen.__name__}: not connected"
    try:
        chosen(sock, rng)
    except OSError:
        # Resets, broken pipes and timeouts are what these clients ask for.
        pass
    finally:
        sock.close()
    return chosen.__name__


def runClients(port: int) -> list[str]:
    """
    Run L{CLIENTS} clients, L{AT_ONCE} at a time, within L{ALL_TIMEOUT} seconds.
    """
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        futures = [pool.submit(oneClient, port, SEED + i) for i in range(CLIENTS)]
        deadline = time.monotonic() + ALL_TIMEOUT
        return [f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures]


class ChaosTests(E2ETestCase):
    """
    A real service under misbehaving clients.
    """

    async def test_misbehavingClients(self) -> None:
        """
        After L{CLIENTS} clients that misbehave in every way L{MISBEHAVIOURS} lists, many
        at once, the service delivers smtplib's message, logged no traceback or
        unhandled error, and stops on SIGTERM with a clean exit.
        """
        tmpdir = workspace(self)
        maildir = os.path.join(tmpdir, "md")
        pair = issue("mx.example.test")
        Path(tmpdir, "mx.pem").write_bytes(pair.cert + pair.key)
        args = [
            *("--listen", LISTEN, "--deliver", f"maildir:{maildir}", *QUICK),
            *("--socket-timeout", "2", "--max-clients", "1000", "--cert", "mx.pem"),
            *("--name", "mx.example.test"),
        ]
        process = await startService(self, args, tmpdir)
        port = process.port
        assert port is not None

        ran = await deferToThread(runClients, port)
        self.assertEqual(len(ran), CLIENTS)
        # Every kind was tried.
        self.assertEqual({name.split(":")[0] for name in ran}, {f.__name__ for f in MISBEHAVIOURS})

        body = message("after the chaos")
        code, _ = await deferToThread(sendOne, port, body)
        self.assertEqual(code, 250, process.text[-3000:])
        stored = list(delivered(maildir).values())
        self.assertEqual(sum(1 for data in stored if data.endswith(body)), 1)
        # The messages the chaos clients ended (the well-behaved ones, and the half-closed
        # ones that sent the final dot) arrived whole; nothing cut off did.
        for data in stored:
            whole = (body, b"\r\nbehaved\r\n", b"\r\nhi\r\n", b"\r\nencrypted\r\n")
            self.assertTrue(data.endswith(whole), data[-200:])

        for bad in ("Traceback", "Unhandled", "#critical]", "#error]"):
            self.assertNotIn(bad, process.text, process.text[-5000:])
        process.sendSignal("TERM")
        await process.waitForExit(EXIT_TIMEOUT)
        # Twist's clean ends: status 0, or the SIGTERM it raises again once stopped.
        self.assertIn((process.exitCode, process.signal), [(0, None), (None, signal.SIGTERM)])
