"""
Tests for delivery into a Maildir: what lands on disk, and that nothing is answered 250
before it is there.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpsvc import IDataHandler, IMailFromHandler, SMTPServer, TLSInfo
from smtpsvc.handlers.maildir import DEFAULT_MIN_FREE, MaildirDelivery
from smtpsvc.testing import MemoryClient

from .maildir_support import maildirClient, runNow, storedMessages
from .protocol_support import codes, lines

#: The directories of a Maildir.
SUBDIRECTORIES = ("tmp", "new", "cur")


class MaildirTests(SynchronousTestCase):
    """
    MaildirDelivery writes each accepted message into new/, durably, before the 250.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()

    def client(
        self, runInThread: Callable[[Callable[[], Any]], Deferred[Any]] = runNow, **options: Any
    ) -> MemoryClient:
        return maildirClient(self.path, runInThread=runInThread, **options)

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
        self.assertEqual(len(storedMessages(self.path)), 1)

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
        [stored] = storedMessages(self.path)
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
        [stored] = storedMessages(self.path)
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
        self.assertEqual(storedMessages(self.path), [])
        work, d = pending.pop()
        d.callback(work())
        self.assertEqual(client.received()[0].code, 250)
        self.assertEqual(len(storedMessages(self.path)), 1)

    def test_tooLargeLeavesNothing(self) -> None:
        """
        A message over size is not stored, and its temporary file is removed.
        """
        client = self.client(size=10)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"0123456789abcdef\r\n")
        self.assertEqual(replies[-1].code, 552)
        self.assertEqual(storedMessages(self.path), [])
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
        self.assertEqual(storedMessages(self.path), [])
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
        self.assertEqual(storedMessages(self.path), [])
        self.assertEqual(self.leftovers(), [])

    def test_commitFails(self) -> None:
        """
        If making the message durable fails, the client gets 451, nothing is left, and
        the error is logged in one line, without a traceback: it is the disk's, not a bug.
        """
        error = OSError(errno.EIO, "I/O error")

        def failing(work: Callable[[], Any]) -> Deferred[Any]:
            return fail(error)

        client = self.client(runInThread=failing)
        with capturedLogs() as events:
            replies = client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(replies[-1].code, 451)
        self.assertEqual(storedMessages(self.path), [])
        self.assertEqual(self.leftovers(), [])
        self.assertOneErrorLine(events, error)

    def assertOneErrorLine(
        self, events: Sequence[LogEvent], error: BaseException | type[BaseException]
    ) -> None:
        """
        The Maildir logged one error line for C{error} (the exception, or one of its
        type), without a traceback, and nothing was logged as a failure.
        """
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"]
        self.assertEqual(event["log_level"], LogLevel.error)
        if isinstance(error, BaseException):
            self.assertIs(event["error"], error)
        else:
            self.assertIsInstance(event["error"], error)
        self.assertNotIn("log_failure", event)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_commitFailsUnexpectedly(self) -> None:
        """
        Anything but an OSError while making the message durable is a bug: the client
        gets 451, nothing is left, and it is logged with its traceback.
        """

        def failing(work: Callable[[], Any]) -> Deferred[Any]:
            return fail(ZeroDivisionError())

        client = self.client(runInThread=failing)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"x\r\n")
        self.assertEqual(replies[-1].code, 451)
        self.assertEqual(storedMessages(self.path), [])
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_newRemoved(self) -> None:
        """
        A message whose new/ was removed before it got there gets 451, its file is
        removed, and the failure is logged in one line, without a traceback; new/ is made
        again, so the next message is delivered.
        """
        client = self.client()
        client.sendmail("a@b.example", ["c@d.example"], b"first\r\n")
        shutil.rmtree(os.path.join(self.path, "new"))
        with capturedLogs() as events:
            replies = client.sendmail("a@b.example", ["c@d.example"], b"second\r\n")
        self.assertEqual(lines(replies[-1:]), ["451 Error: cannot store message"])
        self.assertEqual(self.leftovers(), [])
        self.assertOneErrorLine(events, FileNotFoundError)
        replies = client.sendmail("a@b.example", ["c@d.example"], b"third\r\n")
        self.assertEqual(replies[-1].code, 250)
        [stored] = storedMessages(self.path)
        self.assertTrue(stored.endswith(b"\r\nthird\r\n"))

    def test_maildirRemoved(self) -> None:
        """
        A Maildir removed while the service runs is made again, with its three
        directories as they were made first (0700), by the next message, which is
        delivered.
        """
        client = self.client()
        client.sendmail("a@b.example", ["c@d.example"], b"first\r\n")
        modes = {sub: os.stat(os.path.join(self.path, sub)).st_mode for sub in SUBDIRECTORIES}
        shutil.rmtree(self.path)
        with capturedLogs() as events:
            replies = client.sendmail("a@b.example", ["c@d.example"], b"second\r\n")
        self.assertEqual(replies[-1].code, 250)
        [stored] = storedMessages(self.path)
        self.assertTrue(stored.endswith(b"\r\nsecond\r\n"))
        self.assertEqual(
            {sub: os.stat(os.path.join(self.path, sub)).st_mode for sub in SUBDIRECTORIES},
            modes,
        )
        self.assertEqual(modes["new"] & 0o777, 0o700)
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"][:1]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["path"], os.path.abspath(self.path))

    def test_maildirRemovedAndCannotBeMade(self) -> None:
        """
        A Maildir that went away while the service runs and cannot be made again (a
        symbolic link to a volume that is gone) gets 451, and the error is logged in one
        line.
        """
        client = self.client()
        client.sendmail("a@b.example", ["c@d.example"], b"first\r\n")
        shutil.rmtree(self.path)
        os.symlink(self.mktemp(), self.path)
        with capturedLogs() as events:
            replies = client.sendmail("a@b.example", ["c@d.example"], b"second\r\n")
        self.assertEqual(replies[-1].code, 451)
        logged = [
            (e["log_level"], e["log_format"].split(" {")[0])
            for e in events
            if e.get("log_namespace") == "smtpsvc.maildir"
        ]
        # (The first is the free space that MAIL FROM could not look up.)
        self.assertEqual(
            logged[1:],
            [(LogLevel.warn, "The Maildir"), (LogLevel.error, "Cannot create")],
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_directoriesMadeAgainOncePerMessage(self) -> None:
        """
        A file that still cannot be created once the directories are made again gets
        451: they are made again once for each message, not for ever.
        """
        client = self.client()
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>")
        tmp = os.path.join(os.path.abspath(self.path), "tmp")
        real = os.open
        creates: list[str] = []

        def missing(path: str, flags: int, mode: int = 0o777) -> int:
            if os.path.dirname(path) == tmp:
                creates.append(path)
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
            return real(path, flags, mode)

        self.patch(os, "open", missing)
        replies = client.send("DATA") + client.write(b"x\r\n.\r\n")
        self.assertEqual(codes(replies), [354, 451])
        self.assertEqual(len(creates), 2)
        self.assertEqual(len(set(creates)), 1)

    def test_uniqueNames(self) -> None:
        """
        Many messages get many files.
        """
        client = self.client()
        for i in range(20):
            client.sendmail("a@b.example", ["c@d.example"], f"{i}\r\n".encode())
        self.assertEqual(len(storedMessages(self.path)), 20)

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
        [stored] = storedMessages(self.path)
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
        [stored] = storedMessages(self.path)
        self.assertTrue(stored.endswith(b"\r\n" + body))
        self.assertEqual(stored.count(b"TLS-Required"), 1)


MIB = 1024 * 1024


def withFree(free: int, size: int = 4096 * (1 << 30)) -> os.statvfs_result:
    """
    What C{os.statvfs} says of a file system of C{size} bytes (4 TiB if not given) with
    C{free} bytes left to unprivileged users, and a root reserve on top that they cannot
    use; both multiples of 4096, the fragment size that counts the blocks.  The preferred
    I/O size differs, as it may, so that sizes counted in it would be wrong.
    """
    available = free // 4096
    blocks = size // 4096
    return os.statvfs_result(
        (1 << 20, 4096, blocks, available + 100_000, available, 0, 0, 0, 0, 255)
    )


class MaildirFreeSpaceTests(SynchronousTestCase):
    """
    MaildirDelivery refuses a sender at MAIL FROM when the Maildir's file system has no
    room for the message (RFC 1870 section 6.1): for now with 452 4.3.1, for good with
    552 5.3.4 when it could never hold it.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.free: int | OSError = 100 * MIB
        self.size = 4096 * (1 << 30)
        self.looked: list[str] = []

    def statvfs(self, path: str) -> os.statvfs_result:
        self.looked.append(path)
        if isinstance(self.free, OSError):
            raise self.free
        return withFree(self.free, self.size)

    def client(self, minFree: int = MIB) -> MemoryClient:
        return maildirClient(
            self.path, minFree=minFree, statvfs=self.statvfs, hideENHANCEDSTATUSCODES=False
        )

    def test_interfaces(self) -> None:
        """
        The delivery is both a sender check and a data handler.
        """
        delivery = MaildirDelivery(self.path, runInThread=runNow)
        self.assertTrue(verifyObject(IMailFromHandler, delivery))
        self.assertTrue(verifyObject(IDataHandler, delivery))

    def test_declaredSizeThatFits(self) -> None:
        """
        A declared size that fits in the free space less the reserve is accepted, up to
        the last byte; the free space looked at is the Maildir's.
        """
        self.free = 10 * MIB
        client = self.client(minFree=MIB)
        replies = client.send("MAIL FROM:<a@b.example> SIZE=1000", "RSET")
        replies += client.send(f"MAIL FROM:<a@b.example> SIZE={9 * MIB}")
        self.assertEqual(
            lines(replies), ["250 2.1.0 Accepted", "250 2.0.0 Flushed", "250 2.1.0 Accepted"]
        )
        self.assertEqual(self.looked, [os.path.abspath(self.path)] * 2)

    def test_declaredSizeThatDoesNotFit(self) -> None:
        """
        A declared size beyond the free space less the reserve gets 452 4.3.1, opens
        no transaction, stores nothing and is logged; a smaller one is then accepted.
        """
        self.free = 10 * MIB
        client = self.client(minFree=MIB)
        with capturedLogs() as events:
            replies = client.send(
                f"MAIL FROM:<a@b.example> SIZE={9 * MIB + 1}", "RCPT TO:<c@d.example>", "DATA"
            )
        self.assertEqual(
            lines(replies)[:2],
            ["452 4.3.1 Error: insufficient system storage", "503 5.5.1 Error: need MAIL command"],
        )
        self.assertEqual(replies[2].code, 503)
        self.assertEqual(storedMessages(self.path), [])
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"]
        self.assertEqual((event["free"], event["needed"]), (10 * MIB, 10 * MIB + 1))
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example> SIZE=1000")), [250])

    def test_hugeDeclaredSize(self) -> None:
        """
        Without a size limit on the server, a declared size larger than any disk gets
        552 5.3.4, not an error: trying again later would not help.
        """
        replies = self.client().send("MAIL FROM:<a@b.example> SIZE=99999999999999999999999")
        self.assertEqual(lines(replies), ["552 5.3.4 Error: message too big for system"])

    def test_largerThanTheFileSystem(self) -> None:
        """
        A declared size over what the file system holds, less the reserve, when empty is
        refused for good (552 5.3.4), and logged; up to that size a message that does not
        fit now is refused for now (452 4.3.1), and one that fits is accepted.
        """
        self.size = 100 * MIB
        self.free = 50 * MIB
        client = self.client(minFree=MIB)
        with capturedLogs() as events:
            replies = client.send(f"MAIL FROM:<a@b.example> SIZE={99 * MIB + 1}")
        self.assertEqual(lines(replies), ["552 5.3.4 Error: message too big for system"])
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"]
        self.assertEqual((event["declared"], event["capacity"]), (99 * MIB + 1, 99 * MIB))
        replies = client.send(f"MAIL FROM:<a@b.example> SIZE={99 * MIB}")
        self.assertEqual(lines(replies), ["452 4.3.1 Error: insufficient system storage"])
        self.free = 100 * MIB
        self.assertEqual(codes(client.send(f"MAIL FROM:<a@b.example> SIZE={99 * MIB}")), [250])

    def test_reserveAsLargeAsTheFileSystem(self) -> None:
        """
        A reserve that leaves no room at all is the operator's mistake: senders are
        refused for now (452), so that their mail waits while it is put right.
        """
        self.size = self.free = 100 * MIB
        replies = self.client(minFree=100 * MIB).send("MAIL FROM:<a@b.example> SIZE=1")
        self.assertEqual(lines(replies), ["452 4.3.1 Error: insufficient system storage"])

    def test_sameReplyAtMailAndData(self) -> None:
        """
        No room at MAIL FROM and a write that fails for want of room at DATA say the
        same: 452 4.3.1 insufficient system storage.
        """
        self.free = 0
        client = self.client(minFree=0)
        atMail = client.send("MAIL FROM:<a@b.example> SIZE=1")
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")

        def full(fd: int, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        atData = client.write(b"x\r\n.\r\n")
        self.assertEqual(lines(atMail), ["452 4.3.1 Error: insufficient system storage"])
        self.assertEqual(lines(atData), lines(atMail))

    def test_nearlyFullWithoutSize(self) -> None:
        """
        Without SIZE (or with SIZE=0), a sender is refused when less than the reserve
        itself is free, and accepted when the reserve is.
        """
        self.free = MIB - 4096
        client = self.client(minFree=MIB)
        replies = client.send("MAIL FROM:<a@b.example>", "MAIL FROM:<a@b.example> SIZE=0")
        self.assertEqual(lines(replies), ["452 4.3.1 Error: insufficient system storage"] * 2)
        self.free = MIB
        self.assertEqual(codes(client.send("MAIL FROM:<a@b.example>")), [250])

    def test_noReserve(self) -> None:
        """
        With C{minFree=0} only a declared size that does not fit is refused.
        """
        self.free = 0
        client = self.client(minFree=0)
        replies = client.send("MAIL FROM:<a@b.example>", "RSET", "MAIL FROM:<a@b.example> SIZE=1")
        self.assertEqual(codes(replies), [250, 250, 452])

    def test_defaultReserve(self) -> None:
        """
        By default 16 MiB are kept in reserve.
        """
        self.assertEqual(DEFAULT_MIN_FREE, 16 * MIB)
        delivery = MaildirDelivery(self.path, runInThread=runNow)
        self.assertEqual(delivery.minFree, DEFAULT_MIN_FREE)

    def test_negativeReserve(self) -> None:
        """
        A negative reserve is a mistake, said at once.
        """
        self.assertRaises(ValueError, MaildirDelivery, self.path, minFree=-1)

    def test_cannotCheckLetsMailThrough(self) -> None:
        """
        When the free space cannot be looked up, the failure is logged and the message
        is accepted and stored as usual.
        """
        self.free = OSError(errno.EIO, "I/O error")
        client = self.client()
        with capturedLogs() as events:
            replies = client.send("MAIL FROM:<a@b.example> SIZE=1000")
        self.assertEqual(lines(replies), ["250 2.1.0 Accepted"])
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"]
        self.assertIs(event["error"], self.free)
        replies = client.send("RCPT TO:<c@d.example>", "DATA") + client.write(b"x\r\n.\r\n")
        self.assertEqual(codes(replies), [250, 354, 250])
        self.assertEqual(len(storedMessages(self.path)), 1)

    def test_sizelessFileSystemLetsMailThrough(self) -> None:
        """
        A file system that reports no sizes at all (FUSE's default statfs, some network
        file systems) has unknown free space, not none: mail is accepted.
        """
        self.free, self.size = 0, 0
        client = self.client()
        replies = client.send("MAIL FROM:<a@b.example> SIZE=1000", "RCPT TO:<c@d.example>")
        self.assertEqual(codes(replies), [250, 250])
        self.assertEqual(codes(client.send("RSET", "MAIL FROM:<a@b.example>")), [250, 250])

    def shrinkingWithWrites(self) -> str:
        """
        Make the free space the fake file system reports shrink by what the Maildir's
        C{tmp/} holds, as a real one's would; return that C{tmp/}.
        """
        tmp = os.path.join(self.path, "tmp")

        def statvfs(path: str) -> os.statvfs_result:
            self.looked.append(path)
            assert isinstance(self.free, int)
            held = sum(os.path.getsize(os.path.join(tmp, name)) for name in os.listdir(tmp))
            return withFree(self.free - held, self.size)

        self.statvfs = statvfs  # type: ignore[method-assign]
        return tmp

    def sendMiB(self, client: MemoryClient, count: int) -> None:
        """
        Send C{count} MiB of message lines (of 1 KiB each) in chunks of 64 KiB.
        """
        chunk = (b"x" * 1022 + b"\r\n") * 64
        for _ in range(count * 16):
            self.assertEqual(client.write(chunk), [])

    def test_reserveKeptWhileWriting(self) -> None:
        """
        A message sent without SIZE whose writing brings the free space under the
        reserve is refused: its file leaves C{tmp/} at once, the rest of it is read and
        thrown away, the client gets 452 4.3.1 after its end of data, and the refusal is
        logged; the next message, which fits, is delivered.
        """
        self.free = 4 * MIB
        tmp = self.shrinkingWithWrites()
        client = self.client(minFree=MIB)
        replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        with capturedLogs() as events:
            self.sendMiB(client, 5)
            heldBeforeTheEnd = os.listdir(tmp)
            end = client.write(b".\r\n")
        self.assertEqual(lines(end), ["452 4.3.1 Error: insufficient system storage"])
        self.assertEqual(heldBeforeTheEnd, [])
        [event] = [e for e in events if e.get("log_namespace") == "smtpsvc.maildir"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["minFree"], MIB)
        self.assertLess(event["free"], MIB)
        self.assertEqual(storedMessages(self.path), [])
        replies = client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.assertEqual(codes(replies + client.write(b"small\r\n.\r\n")), [250, 250, 354, 250])
        self.assertEqual(len(storedMessages(self.path)), 1)

    def test_roomWhileWriting(self) -> None:
        """
        A message that leaves the reserve free is delivered; the free space was looked
        at once at MAIL FROM, once per MiB written and once at the end.
        """
        self.free = 100 * MIB
        self.shrinkingWithWrites()
        client = self.client(minFree=MIB)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.sendMiB(client, 3)
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(len(storedMessages(self.path)), 1)
        self.assertEqual(len(self.looked), 1 + 3 + 1)

    def test_reserveKeptByMessagesAtOnce(self) -> None:
        """
        Two messages under a MiB each, written at once, that together take the reserve:
        the one that ends first, finding the free space under the reserve, is refused
        (its file removed), and the other, which then fits, is delivered.
        """
        self.free = MIB + MIB
        self.shrinkingWithWrites()
        delivery = MaildirDelivery(
            self.path,
            serverName="mx.test",
            runInThread=runNow,
            minFree=MIB,
            statvfs=self.statvfs,
        )
        server = SMTPServer([delivery], reactor=Clock(), name="mx.test", authOptional=True)
        clients = [MemoryClient(server) for _ in range(2)]
        part = (b"x" * 1022 + b"\r\n") * 64 * 10  # 640 KiB
        for client in clients:
            replies = client.send("EHLO c.example", "MAIL FROM:<a@b.example>")
            replies += client.send("RCPT TO:<c@d.example>", "DATA")
            self.assertEqual(codes(replies), [250, 250, 250, 354])
        for client in clients:
            self.assertEqual(client.write(part), [])
        ends = [codes(client.write(b".\r\n")) for client in clients]
        self.assertEqual(ends, [[452], [250]])
        self.assertEqual(len(storedMessages(self.path)), 1)
        self.assertEqual(os.listdir(os.path.join(self.path, "tmp")), [])

    def test_noReserveNoCheckWhileWriting(self) -> None:
        """
        With C{minFree=0} the free space is not looked at while a message is written.
        """
        self.free = 0
        self.shrinkingWithWrites()
        client = self.client(minFree=0)
        client.send("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA")
        self.sendMiB(client, 2)
        self.assertEqual(codes(client.write(b".\r\n")), [250])
        self.assertEqual(len(self.looked), 1)

    def test_deliversWhenThereIsRoom(self) -> None:
        """
        A message whose declared size fits is delivered into new/ as usual.
        """
        client = self.client()
        body = b"Subject: hi\r\n\r\nbody\r\n"
        replies = client.send(
            f"MAIL FROM:<a@b.example> SIZE={len(body)}", "RCPT TO:<c@d.example>", "DATA"
        )
        replies += client.write(body + b".\r\n")
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        [stored] = storedMessages(self.path)
        self.assertTrue(stored.endswith(b"\r\n" + body))

    def test_realFileSystem(self) -> None:
        """
        By default the free space is the Maildir's file system's, from C{os.statvfs}: a
        byte fits there, more bytes than any disk holds never do.
        """
        client = maildirClient(self.path, minFree=0)
        replies = client.send(
            "MAIL FROM:<a@b.example> SIZE=1", "RSET", f"MAIL FROM:<a@b.example> SIZE={10**30}"
        )
        self.assertEqual(codes(replies), [250, 250, 552])
