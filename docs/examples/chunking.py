"""
A message sent in BDAT chunks (RFC 3030 CHUNKING), to a server in memory, printed.

``python docs/examples/chunking.py`` (it uses ``conversation.py``, beside it, to talk and
print).
"""

from __future__ import annotations

from conversation import converse, show


def bdat(chunk: bytes, last: bool = False) -> bytes:
    """
    A BDAT command and its chunk: the size counts every octet, CRLFs included.
    """
    return b"BDAT %d%s\r\n%s" % (len(chunk), b" LAST" if last else b"", chunk)


#: What the client sends, one write per entry: command lines, or raw bytes.
STEPS: list[tuple[str, ...] | bytes] = [
    ("EHLO client.example",),
    ("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.com>"),
    # The first chunk: no 354, no dot-stuffing; a 250 once its octets are in.
    bdat(b"Subject: hi\r\n\r\nHello\r\n"),
    # DATA cannot finish a message that BDAT started.
    ("DATA",),
    # The last chunk, with what would end a DATA message and start another: text here.
    bdat(b".\r\nMAIL FROM:<mallory@example.net>\r\n", last=True),
    # Outside a transaction BDAT is refused, and its chunk is still read (and dropped).
    bdat(b"QUIT\r\n"),
    ("QUIT",),
]


if __name__ == "__main__":
    show(*converse(STEPS))
