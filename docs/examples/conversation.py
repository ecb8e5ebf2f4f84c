"""
Watch the state machine at work: one conversation with a server in memory, printed.

``python docs/examples/conversation.py``
"""

from __future__ import annotations

from twisted.internet.task import Clock

from smtpsvc import SMTPServer
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

#: What the client sends, one write per entry: a tuple of command lines (a pipelined
#: group when there are several), or raw bytes during DATA.
STEPS: list[tuple[str, ...] | bytes] = [
    # GREETED: a transaction needs a hello first.
    ("MAIL FROM:<alice@example.org>",),
    # GREETED -> READY.
    ("EHLO client.example",),
    # READY: DATA needs a recipient, RCPT needs a sender.
    ("DATA",),
    ("RCPT TO:<bob@example.com>",),
    # A pipelined group: READY -> MAIL -> RCPT -> DATA, answered in order.
    ("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.com>", "DATA"),
    # DATA: a bare-LF "end" followed by a smuggled command is only message text.
    b"Subject: hi\r\n\r\nHello\n.\nMAIL FROM:<mallory@example.net>\r\n",
    # Only CRLF.CRLF ends the message: back to READY.
    b".\r\n",
    ("RSET", "QUIT"),
]


def converse(
    steps: list[tuple[str, ...] | bytes] = STEPS,
) -> tuple[list[tuple[str, list[ServerReply]]], RecordingHandler]:
    """
    Run C{steps} against a fresh server; return what was sent with the replies it got,
    and the handler that recorded the message.
    """
    recorder = RecordingHandler()
    server = SMTPServer([recorder], reactor=Clock(), authOptional=True, name="mx.example.com")
    client = MemoryClient(server)
    assert client.greeting is not None
    transcript = [("(connect)", [client.greeting])]
    for step in steps:
        if isinstance(step, bytes):
            transcript.append((repr(step), client.write(step)))
        else:
            transcript.append((" | ".join(step), client.send(*step)))
    return transcript, recorder


def show(transcript: list[tuple[str, list[ServerReply]]], recorder: RecordingHandler) -> None:
    """
    Print a transcript from L{converse}, then the message the server received.
    """
    for sent, replies in transcript:
        print(f"C: {sent}")
        for reply in replies:
            print(f"S: {reply.code} {' / '.join(reply.lines)}")
    print("The message received:", recorder.messages[0].data)


if __name__ == "__main__":
    show(*converse())
