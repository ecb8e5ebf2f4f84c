"""
Delivery into a Maildir, the way a mail operator can trust: the message is on disk before
the client hears 250.

Each message is written to ``tmp/`` as it arrives, with ``Return-Path`` and ``Received``
headers in front (RFC 5321 section 4.4), then the file is fsynced, renamed into ``new/``,
and ``new/`` itself is fsynced; only then does the handler answer.  A message that fails
on the way (the client goes away, it is too large, the disk is full) leaves nothing in
``new/`` and its ``tmp/`` file is removed.  A Maildir whose directories were removed while
the service runs has them made again by the next message.

Before that, at ``MAIL FROM``, a sender is refused with ``452 4.3.1`` when the Maildir's
file system has no room for the size it declared (RFC 1870 section 6.1) or is nearly full,
so that a client finds out before it sends the message rather than after; and with ``552
5.3.4`` when the size it declared is more than the whole file system could ever hold, so
that it does not try again for days.  A message that, as it is written, brings the free
space under the reserve is refused with ``452 4.3.1`` too, and its file removed at once.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._core._session import Address, Session
from .._core._trace import receivedHeader, returnPath
from .._errors import SMTPError
from .._reactor import threadRunner
from .._stream import MessageDone
from ..interfaces import IDataHandler, IMailFromHandler, IMessageStream

_log = Logger(namespace="smtpsvc.maildir")
_counter = itertools.count(1)

# The replies when there is no room for the message.  Each refusal is a new SMTPError: one
# instance raised again and again would gather every traceback (and its frames) for good.
# No room now (RFC 3463 4.3.1, mail system full), at MAIL FROM and when a write fails:
_NO_ROOM: Final = "4.3.1 Error: insufficient system storage"
# Never room: the declared size is over what the file system holds when empty (RFC 1870
# section 6.1; RFC 3463 5.3.4, message too big for system).
_NEVER_ROOM: Final = "5.3.4 Error: message too big for system"

# How many bytes of a message are written between two looks at the free space left.
_CHECK_EVERY: Final = 1024 * 1024

DEFAULT_MIN_FREE = 16 * 1024 * 1024
"""
The free space, in bytes, that L{MaildirDelivery} keeps in reserve by default: room for
the headers it adds and for whatever else shares the file system.
"""


@implementer(IMailFromHandler, IDataHandler)
class MaildirDelivery:
    """
    An L{IDataHandler} that delivers every message into the Maildir at C{path}, and an
    L{IMailFromHandler} that refuses a sender, for now, when there is no room for the
    message.

    @ivar path: the Maildir; C{cur}, C{new} and C{tmp} are made if missing.
    @ivar minFree: the bytes of free space kept in reserve.
    """

    def __init__(
        self,
        path: str,
        *,
        reactor: Any = None,
        serverName: str | None = None,
        runInThread: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
        minFree: int = DEFAULT_MIN_FREE,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        """
        @param path: the Maildir directory.
        @param reactor: whose thread pool does the fsyncs (the global reactor if not given).
        @param serverName: the name in the C{Received} header (the host name if not given).
        @param runInThread: how blocking disk work is run; the default is the reactor's
            thread pool.  Tests pass a function that runs it at once.
        @param minFree: the bytes of free space to keep in reserve (L{DEFAULT_MIN_FREE},
            16 MiB, if not given): C{MAIL FROM} gets C{452 4.3.1} when less than the
            declared C{SIZE} plus this much is free, or without C{SIZE} when less than this
            much is.  A message whose writing brings the free space under it (looked
            at after each MiB written and at its end) is refused with the same reply,
            and its file removed at once.  C{0} refuses only a declared size that does not fit.  A
            declared C{SIZE} over the file system's whole size less this much gets C{552
            5.3.4}.
        @param statvfs: how the free space is looked up; tests pass a fake.

        @raise ValueError: when C{minFree} is negative.
        """
        if minFree < 0:
            raise ValueError(f"minFree must be 0 or more bytes, not {minFree!r}")
        self.path = os.path.abspath(path)
        self.minFree = minFree
        self._statvfs = statvfs
        self._prepared = False
        self._serverName = serverName or socket.gethostname()
        # Maildir names carry the host name; "/" and ":" would break them.
        self._host = self._serverName.replace("/", r"\057").replace(":", r"\072")
        self._runInThread = runInThread or threadRunner(reactor)

    def prepare(self) -> None:
        """
        Make the Maildir's C{cur}, C{new} and C{tmp} if missing, readable by this user
        only.  The service calls this when it starts (after twistd has dropped its
        privileges, so that the directories belong to the user that writes them); the
        first C{MAIL FROM} or delivery calls it otherwise.

        @raise OSError: when they cannot be made.
        """
        if not self._prepared:
            self._makeDirectories()
            self._prepared = True

    def _makeDirectories(self) -> None:
        """
        Make the Maildir and its C{tmp}, C{new} and C{cur} where missing, C{0700}.
        """
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, sub), mode=0o700, exist_ok=True)

    def _create(self, path: str, session: Session) -> int:
        """
        Create the message's file in C{tmp/}.  A missing directory (the Maildir, or its
        C{tmp/}, was removed while the service runs) is made again, and the file created
        once more: else every message would fail until the service was restarted.

        @raise SMTPError: C{451} when it cannot be created.
        """
        try:
            try:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                _log.warn(
                    "The Maildir {path} or its tmp/ is missing; making its directories again",
                    path=self.path,
                    sessionId=session.id,
                )
                self._makeDirectories()
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            _log.error("Cannot create {path}: {error}", path=path, error=e, sessionId=session.id)
            raise SMTPError(451, "4.3.0 Error: cannot store message") from e

    def onMailFrom(self, address: Address, session: Session) -> None:
        """
        Refuse the sender with C{452 4.3.1} when the Maildir's file system has less free
        space than the size it declared plus L{minFree} (RFC 1870 section 6.1), or, with
        no size declared, less than L{minFree} alone; with C{552 5.3.4} when the size it
        declared is more than the file system holds, less L{minFree}, even empty.
        """
        # The core has already refused a SIZE that is not an ASCII number (501).
        size = address.declaredSize or 0
        try:
            self.prepare()
        except OSError:
            # onData logs it and answers 451; nothing to measure here.
            return
        try:
            # One quick system call on the reactor thread, like the os.open and os.write
            # of onData: a file system slow enough to block it would block those too.
            stats = self._statvfs(self.path)
        except OSError as e:
            # A failed check is no reason to refuse: the message goes on to DATA, whose
            # write errors have their own answers.
            _log.warn(
                "Cannot check the free space of {path}: {error}",
                path=self.path,
                error=e,
                sessionId=session.id,
            )
            return
        if stats.f_blocks == 0:
            # A file system that reports no sizes (FUSE's default, some network ones):
            # its free space is unknown, not nil.
            return
        # RFC 1870 section 6.1: a size over the fixed maximum is refused for good (552),
        # one over the space free for now is refused for now (452).  The fixed maximum
        # here is the whole file system, root's blocks too, so that a permanent refusal
        # is certain.  A reserve as large as the file system is the operator's mistake:
        # left temporary, so that mail waits while it is put right.
        capacity = stats.f_blocks * stats.f_frsize - self.minFree
        if 0 < capacity < size:
            _log.info(
                "Refused a sender: declared {declared} bytes, {path} holds {capacity}",
                path=self.path,
                declared=size,
                capacity=capacity,
                sessionId=session.id,
            )
            raise SMTPError(552, _NEVER_ROOM)
        free = stats.f_bavail * stats.f_frsize
        needed = size + self.minFree
        if free < needed:
            _log.warn(
                "Refused a sender: {free} bytes free in {path}, {needed} needed",
                path=self.path,
                free=free,
                needed=needed,
                declared=size,
                sessionId=session.id,
            )
            raise SMTPError(452, _NO_ROOM)

    def _underReserve(self, session: Session) -> bool:
        # Whether a message being written has brought the free space under the reserve
        # (logged if so).  Without this, a message that declared no size (or a false
        # one) could fill the file system: MAIL FROM saw only the space free then.
        if self.minFree == 0:
            return False
        try:
            stats = self._statvfs(self.path)
        except OSError:
            # As at MAIL FROM, a failed check refuses nothing; writes have their answers.
            return False
        free = stats.f_bavail * stats.f_frsize
        if stats.f_blocks == 0 or free >= self.minFree:
            return False
        _log.warn(
            "Refused a message while writing it: {free} bytes free in {path}, under the "
            "reserve of {minFree}",
            path=self.path,
            free=free,
            minFree=self.minFree,
            sessionId=session.id,
        )
        return True

    def _uniqueName(self) -> str:
        now = time.time()
        seconds = int(now)
        micro = int((now - seconds) * 1_000_000)
        return (
            f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(4)}.{self._host}"
        )

    def onData(self, stream: IMessageStream, session: Session) -> Deferred[str]:
        """
        Write the message into C{tmp/}, then make it durable in C{new/}.
        """
        try:
            self.prepare()
        except OSError as e:
            _log.error("Cannot make the Maildir {path}: {error}", path=self.path, error=e)
            raise SMTPError(451, "4.3.0 Error: cannot store message") from e
        name = self._uniqueName()
        tmpPath = os.path.join(self.path, "tmp", name)
        newPath = os.path.join(self.path, "new", name)
        envelope = session.envelope
        recipient = envelope.rcptTo[0].address if len(envelope.rcptTo) == 1 else None
        header = returnPath(session) + receivedHeader(
            session,
            serverName=self._serverName,
            date=format_datetime(datetime.now(UTC)),
            recipient=recipient,
        )
        fd = self._create(tmpPath, session)
        writer = _FileWriter(fd, tmpPath, lambda: self._underReserve(session))
        writer.write(header)
        done: Deferred[None] = Deferred()
        writer.done = done
        stream.deliverBody(writer)

        def durable(_: None) -> Deferred[None]:
            return self._runInThread(lambda: _commit(fd, tmpPath, newPath)).addErrback(notStored)

        def notStored(failure: Failure) -> None:
            _discard(None, tmpPath)
            # An OSError is the disk or the directories, said in one line like a failed
            # create; anything else is a bug, and goes on to be logged with its traceback.
            failure.trap(OSError)
            error = failure.value
            _log.error(
                "Cannot store {path}: {error}", path=newPath, error=error, sessionId=session.id
            )
            if isinstance(error, FileNotFoundError):
                # new/ or tmp/ (and the message's file with it) was removed: this message
                # gets 451 and comes again, and the directories are there for it then.
                with contextlib.suppress(OSError):
                    self._makeDirectories()
            raise SMTPError(451, "4.3.0 Error: cannot store message")

        def failed(failure: Failure) -> Failure:
            _discard(fd, tmpPath)
            return failure

        def delivered(_: object) -> str:
            _log.info("Delivered {path}", path=newPath, sessionId=session.id)
            return f"OK: message queued as {name.split('.')[1]}"

        return done.addErrback(failed).addCallback(durable).addCallback(delivered)


class _FileWriter(Protocol):
    def __init__(self, fd: int, path: str, underReserve: Callable[[], bool]) -> None:
        self.fd = fd
        self.path = path
        self.error: OSError | None = None
        self.done: Deferred[None] | None = None
        self._underReserve = underReserve
        self._unchecked = 0

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except OSError as e:
            self.error = e

    def dataReceived(self, data: bytes) -> None:
        self.write(data)
        self._unchecked += len(data)
        if self._unchecked >= _CHECK_EVERY and self.error is None:
            self._unchecked -= _CHECK_EVERY
            if self._underReserve():
                self._refuse()

    def _refuse(self) -> None:
        # No room left for the rest: the handler answers now (the client hears it after
        # the end of its message), takes no more of the message, and its file goes at
        # once, giving its space back.
        done, self.done = self.done, None
        assert done is not None
        self.error = OSError(errno.ENOSPC, "the reserve of free space is reached")
        # The transport is the message stream, a push producer.
        IPushProducer(self.transport).stopProducing()
        done.errback(SMTPError(452, _NO_ROOM))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        done, self.done = self.done, None
        if done is None:
            # Refused already (_refuse).
            return
        if not reason.check(MessageDone):
            done.errback(reason)
        elif self.error is not None:
            _log.error("Cannot write {path}: {error}", path=self.path, error=self.error)
            done.errback(SMTPError(452, _NO_ROOM))
        elif self._underReserve():
            # Looked at once more at the end: messages under a MiB (or their last part),
            # many at once, could otherwise take the reserve between them.
            done.errback(SMTPError(452, _NO_ROOM))
        else:
            done.callback(None)


def _commit(fd: int, tmpPath: str, newPath: str) -> None:
    # Runs in a thread: the three steps that make the message survive a crash.
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmpPath, newPath)
    directory = os.open(os.path.dirname(newPath), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard(fd: int | None, path: str) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)
