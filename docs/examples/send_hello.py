"""
Send one message with Python's smtplib.

Run it while a server listens on 127.0.0.1:2525 (``make run``, or ``print_messages.py``):
``python docs/examples/send_hello.py [PORT]``.
"""

from __future__ import annotations

import smtplib
import sys
from email.message import EmailMessage


def sendHello(host: str = "127.0.0.1", port: int = 2525) -> None:
    """
    Send a short message from alice@example.org to bob@example.com.
    """
    message = EmailMessage()
    message["From"] = "alice@example.org"
    message["To"] = "bob@example.com"
    message["Subject"] = "Hello"
    message.set_content("Hello from smtplib.\n")
    with smtplib.SMTP(host, port) as client:
        client.send_message(message)


if __name__ == "__main__":
    sendHello(port=int(sys.argv[1]) if len(sys.argv) > 1 else 2525)
