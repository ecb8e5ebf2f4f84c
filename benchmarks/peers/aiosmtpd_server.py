"""
aiosmtpd as a benchmark peer: receives on 127.0.0.1 and discards.

Usage: ``python aiosmtpd_server.py PORT [CERT KEY]``, with the Python of the venv the suite
installed aiosmtpd into.  With a certificate it offers STARTTLS.  ``BENCH_BACKLOG`` in the
environment sets the listen backlog.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from typing import Any

from aiosmtpd.smtp import SMTP  # type: ignore[import-not-found, unused-ignore]


class Discard:
    """
    A handler that accepts every message and keeps nothing.
    """

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def serve(port: int, cert: str | None, key: str | None) -> None:
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    handler = Discard()
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        # data_size_limit=None: no 32 MB cap (W3 sends 100 MB); an explicit hostname, or
        # each connection calls socket.getfqdn().
        return SMTP(
            handler, data_size_limit=None, hostname="bench.example.test", tls_context=context
        )

    backlog = int(os.environ.get("BENCH_BACKLOG", "100"))  # 100: create_server's default
    server = await loop.create_server(factory, "127.0.0.1", port, backlog=backlog)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"aiosmtpd listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    port = int(sys.argv[1])
    cert, key = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else (None, None)
    asyncio.run(serve(port, cert, key))


if __name__ == "__main__":
    main()
