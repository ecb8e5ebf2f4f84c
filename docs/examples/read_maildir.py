"""
Read the messages a Maildir holds, such as the ./maildir that ``make run`` delivers into.

``python docs/examples/read_maildir.py [DIRECTORY]``
"""

from __future__ import annotations

import mailbox
import sys


def readMaildir(path: str = "maildir") -> list[mailbox.MaildirMessage]:
    """
    Every message in the Maildir at C{path}, new and seen alike.
    """
    return list(mailbox.Maildir(path, create=False))


if __name__ == "__main__":
    for message in readMaildir(*sys.argv[1:2]):
        print("Return-Path:", message["Return-Path"])
        print("Received:", message["Received"])
        print("Subject:", message["Subject"])
        print()
