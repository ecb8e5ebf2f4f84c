"""
Tests for delivery into a Maildir: what lands on disk, and that nothing is answered 250
before it is there.
"""

from __future__ import annotations

import errno
import mailbox
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc import SMTPServer, TLSInfo
from smtpsvc.handlers.maildir import MaildirDelivery
from smtpsvc.testing import MemoryClient


def runNow(work: Callable[[], Any]) -> Deferred[Any]:
    return succeed(work())


class MaildirTests(SynchronousTestCase):
    """
    MaildirDelivery writes each accepted message into new/, durably, before the 250.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def client(
        self, runInThread: Callable[[Callable[[], Any]], Deferred[Any]] = runNow, **options: Any
    ) -> MemoryClient:
        delivery = MaildirDelivery(self.path, serverName="mx.test", runInThread=runInThread)
        server = SMTPServer(
            [delivery], reactor=Clock(), name="mx.test", authOptional=True, **options
        )
        client = MemoryClient(server)
        client.send("EHLO client.example")
        return client

    def stored(self) -> list[bytes]:
        box = mailbox.Maildir(self.path, factory=None, create=False)
        return [box.get_bytes(key) for key in sorted(box.keys())]

    def leftovers(self) -> list[str]:
        return os.listdir(os.path.join(self.path, "tmp"))

    def test_makesDirectories(self) -> None:
        """
        The Maildir's three directories are made when it is prepared (by the service
        as it starts, or by the first delivery), not before.
        """
        delivery = MaildirDelivery(self.path, runInThread=runNow)
        self.assertFalse(os.path.exists(self.path))
        delivery.prepare()
        self.assertEqual(sorted(os.listdir(self.path)), ["cur", "new", "tmp"])

    def test_madeByFirstDelivery(self) -> None:
        """
        Without prepare, the first message makes the directories.
        """
        self.client().sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(len(self.stored()), 1)

    def test_cannotMakeDirectories(self) -> None:
        """
        A Maildir that cannot be made gets a temporary 451, not a crash.
        """
        with open(self.path, "w") as f:
            f.write("a file where the Maildir should be")
        replies = self.client().sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(replies[-1].code, 451)

    def test_delivers(self) -> None:
        """
        An accepted message is in new/, with Return-Path and Received in front and its
        bytes unchanged after them.
        """
        client = self.client()
        body = b"Subject: hi\r\n\r\n.leading dot\r\n\xe9 8-bit\r\n"
        replies = client.sendmail("a@b.example", ["c@d.example"], body)
        self.assertEqual(replies[-1].code, 250)
        self.assertTrue(replies[-1].lines[0].startswith("OK: message queued as "))
        [stored] = self.stored()
        lines = stored.split(b"\r\n")
        self.assertEqual(lines[0], b"Return-Path: <a@b.example>")
        self.assertTrue(lines[1].startswith(b"Received: from client.example ([192.0.2.1])"))
        self.assertIn(b"by mx.test (smtpsvc) with ESMTP id ", stored)
        self.assertIn(b"for <c@d.example>; ", stored)
        self.assertTrue(stored.endswith(b"\r\n" + body))
        self.assertEqual(self.leftovers(), [])

    def test_severalRecipients(self) -> None:
        """
        With several recipients the Received header has no for clause.
        """
        client = self.client()
        client.sendmail("a@b.example", ["c@d.example", "e@f.example"], b"x\r\n")
        [stored] = self.stored()
        self.assertNotIn(b" for <", stored)

    def test_notAnsweredBeforeDurable(self) -> None:
        """
        The 250 waits for the fsync and the rename into new/.
        """
        pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

        def later(work: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((work, d))
            return d

        client = self.client(runInThread=later)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(replies[-1].code, 354)
        self.assertEqual(self.stored(), [])
        work, d = pending.pop()
        d.callback(work())
        self.assertEqual(client.received()[0].code, 250)
        self.assertEqual(len(self.stored()), 1)

    def test_tooLargeLeavesNothing(self) -> None:
        """
        A message over size is not stored, and its temporary file is removed.
        """
        client = self.client(size=10)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"0123456789abcdef\r\n")
        self.assertEqual(replies[-1].code, 552)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.leftovers(), [])

    def test_disconnectLeavesNothing(self) -> None:
        """
        A client that goes away mid-message leaves nothing behind.
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        client.write(b"partial\r\n")
        self.assertEqual(len(self.leftovers()), 1)
        client.disconnect()
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.leftovers(), [])

    def test_diskFull(self) -> None:
        """
        A write that fails (disk full) gets a temporary 452 and leaves nothing behind.
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        real = os.write

        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        replies = client.write(b"x\r\n.\r\n")
        self.patch(os, "write", real)
        self.assertEqual(
            [f"{r.code} {r.lines[0]}" for r in replies], ["452 Error: insufficient system storage"]
        )
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.leftovers(), [])

    def test_commitFails(self) -> None:
        """
        If making the message durable fails, the client gets 451 and nothing is left.
        """

        def failing(work: Callable[[], Any]) -> Deferred[Any]:
            return fail(OSError(errno.EIO, "I/O error"))

        client = self.client(runInThread=failing)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(replies[-1].code, 451)
        self.assertEqual(self.stored(), [])
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_uniqueNames(self) -> None:
        """
        Many messages get many files.
        """
        client = self.client()
        for i in range(20):
            client.sendmail("a@b.example", ["c@d.example"], f"{i}\r\n".encode())
        self.assertEqual(len(self.stored()), 20)

    def test_receivedNamesTheRegisteredCipher(self) -> None:
        """
        Over TLS the Received header names the cipher suite by its registered (IANA)
        name, not OpenSSL's (RFC 8314 section 4.3), inside the comment before C{by}.
        """
        client = self.client()
        client.session.secure = True
        client.session.tlsOptions = TLSInfo(
            name="ECDHE-RSA-AES128-GCM-SHA256",
            standardName="TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            version="TLSv1.2",
        )
        client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        [stored] = self.stored()
        lines = stored.split(b"\r\n")
        self.assertEqual(
            lines[2], b"\t(using TLSv1.2 with cipher TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
        )
        self.assertTrue(lines[3].startswith(b"\tby mx.test (smtpsvc) with ESMTPS id "))
        self.assertNotIn(b"ECDHE-RSA", stored)

    def test_tlsOptionalMessageStoredAsItIs(self) -> None:
        """
        A message with C{TLS-Required: No} is stored byte for byte; its tag changes
        nothing in it.
        """
        body = b"TLS-Required: No\r\nSubject: hi\r\n\r\nbody\r\n"
        replies = self.client().sendmail("a@b.example", ["c@d.example"], body)
        self.assertEqual(replies[-1].code, 250)
        [stored] = self.stored()
        self.assertTrue(stored.endswith(b"\r\n" + body))
        self.assertEqual(stored.count(b"TLS-Required"), 1)
