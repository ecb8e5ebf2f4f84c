"""
The message decoders: L{DataDecoder} turns the dot-stuffed bytes after ``354`` into the
message; L{ChunkDecoder} takes BDAT chunks (RFC 3030), which need no unstuffing, under the
same size limit and bare line ending policy.

The model, which is RFC 5321's (sections 4.1.1.4 and 4.5.2) and nothing looser:

1. The data is a sequence of lines ended by CRLF.  A bare CR or a bare LF is an ordinary
   byte inside a line; it never ends one.
2. The line that is exactly ``.`` ends the data.  So the end is ``CRLF . CRLF``, or
   ``. CRLF`` as the very first line.  No other form (``LF . LF``, ``CR . CR``,
   ``LF . CRLF`` ...) ends it, which is what makes SMTP smuggling impossible here.
3. A line that starts with ``.`` loses that first dot.
4. Only then are bare CRs and LFs dealt with, by the chosen policy: ``normalize`` turns
   each into CRLF, ``reject`` marks the message as refused, ``pass`` keeps them.

The DATA decoder works on chunks of any size: it never looks at lines one at a time.  It finds
the end with C{bytes.find} and unstuffs with one C{bytes.replace}, pretending the data
starts after a CRLF so that the first line needs no special case.  Up to four bytes that
could begin the terminator are held back between chunks.  Before searching, it takes the
chunk's CRs, LFs and dots out with one C{bytes.translate}: where they hold no CRLF ``.``,
neither does the chunk, so a chunk of base64 (most of any large message) is never
searched, and the same bytes show whether the chunk's line endings are all CRLF.  Where
they hold exactly one CRLF ``.`` and the chunk ends with the terminator (a small message's
last chunk), that CRLF ``.`` is the terminator's, and the chunk is not searched either.

Both decoders also count the message header's ``Received:`` fields, to stop mail loops
(RFC 5321 section 6.3).  Only the header is read, the same way: the decoded bytes are
searched for C{CRLF CRLF} (the empty line that ends it) and for C{CRLF "Received:"} with
one regular expression, again pretending the message starts after a CRLF.  Between chunks
only the current line's start is kept, and not even that once it is too long to begin a
C{Received} field still to be counted; after the header nothing more is done.

The same reading notices a ``TLS-Required: No`` field (RFC 8689 sections 4.1 and 5), when
asked to: a field whose value, unfolded, is ``No`` with any white space around it.  Such a
field is only known to be complete once the next line is seen not to continue it, so
between chunks the whole field is kept (a few bytes); one longer than a line kept is not
believed, which at worst leaves a message held to the sender's stricter policy.
"""

from __future__ import annotations

import re
from typing import Final

_END: Final = b"\r\n.\r\n"
_STUFFED: Final = b"\r\n."
_CRLF: Final = b"\r\n"
_HEADER_END: Final = b"\r\n\r\n"
# A header field named Received (case-insensitive, RFC 5322 section 1.2.2), at a line's
# start; the obsolete syntax allows white space before the colon (section 4.5).
_RECEIVED: Final = re.compile(rb"\r\nreceived[ \t]*:", re.IGNORECASE)
# A complete TLS-Required field whose value is "No" (RFC 8689 section 5), folded or not:
# the lookahead sees the next line begin with something other than white space.
_TLS_REQUIRED_NO: Final = re.compile(
    rb"\r\ntls-required[ \t]*:(?:[ \t]|\r\n[ \t])*no(?:[ \t]|\r\n[ \t])*(?=\r\n[^ \t])",
    re.IGNORECASE,
)
# A TLS-Required field that may yet turn out to say "No", still open at the end of the
# data read so far.
_TLS_REQUIRED_OPEN: Final = re.compile(
    rb"\r\ntls-required[ \t]*:(?:[ \t]|\r\n[ \t])*(?:no?(?:[ \t]|\r\n[ \t])*)?(?:\r\n)?\Z",
    re.IGNORECASE,
)
# What bytes.translate deletes to leave only a part's CRs and LFs, or only its CRs, LFs and
# dots, in their order.
_NOT_CRLF: Final = bytes(byte for byte in range(256) if byte not in b"\r\n")
_NOT_CRLF_DOT: Final = bytes(byte for byte in range(256) if byte not in b"\r\n.")
# A CR that no LF follows.
_CR_ALONE: Final = re.compile(rb"\r(?!\n)")
# How much of a header line is kept between chunks: plenty for "Received:" and the odd
# space.  A longer line is judged at once and only its last byte kept, for its CRLF.
_LINE_KEPT: Final = 64


class _MessageDecoder:
    """
    What both ways of receiving a message share: the size limit and the policy for bare
    CR and LF, applied to parts of the message that never split a CRLF.

    @ivar byteLength: bytes of message produced so far (after the line-ending policy).
    @ivar sizeExceeded: whether C{byteLength} went over the limit.
    @ivar bareLineEndings: whether a bare CR or LF was seen (under any policy).
    @ivar receivedHeaders: how many C{Received} fields the header had so far (counting
        stops at the limit).
    @ivar loop: whether C{receivedHeaders} reached the limit: the message is a mail loop.
    @ivar tlsRequiredNo: whether the header has a C{TLS-Required: No} field (looked for
        only after L{watchTLSRequired}).
    """

    __slots__ = (
        "_headerTail",
        "_limit",
        "_maxReceived",
        "_policy",
        "_watchTLS",
        "bareLineEndings",
        "byteLength",
        "loop",
        "receivedHeaders",
        "sizeExceeded",
        "tlsRequiredNo",
    )

    def __init__(
        self, limit: int = 0, policy: str = "normalize", maxReceived: int | None = None
    ) -> None:
        """
        @param limit: the size limit in bytes, 0 for none.
        @param policy: C{"normalize"}, C{"reject"} or C{"pass"} for bare CR and LF.
        @param maxReceived: the number of C{Received} header fields that makes the
            message a loop, or L{None} not to count them.
        """
        if policy not in ("normalize", "reject", "pass"):
            raise ValueError(f"unknown bare line ending policy {policy!r}")
        self._limit = limit
        self._policy = policy
        self.byteLength = 0
        self.sizeExceeded = False
        self.bareLineEndings = False
        self._maxReceived = maxReceived or 0
        self.receivedHeaders = 0
        self.loop = False
        # The start of the header line being read, after the CRLF that began it (for the
        # first line, an imagined one); None once the header is over or is not read.
        self._headerTail: bytes | None = _CRLF if maxReceived else None
        self._watchTLS = False
        self.tlsRequiredNo = False

    def _judge(self, part: bytes, endings: bytes | None = None) -> bytes:
        # Apply the policy to part (which neither ends inside a CRLF nor starts with the
        # LF of one) and count it; endings, if given, are its CRs and LFs in order, with
        # or without its dots.
        if part and _hasBareLineEnding(part, endings):
            self.bareLineEndings = True
            if self._policy == "normalize":
                part = part.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        self.byteLength += len(part)
        if self._limit and self.byteLength > self._limit:
            self.sizeExceeded = True
        if self._headerTail is not None and part:
            self._readHeader(part)
        return part

    def _readHeader(self, part: bytes) -> None:
        # Count the Received fields that this part of the header completes.
        tail = self._headerTail
        assert tail is not None
        data = tail + part
        end = data.find(_HEADER_END)
        if end >= 0:
            # The empty line: what follows is the body, which is not read.
            self._headerTail = None
            count = len(_RECEIVED.findall(data, 0, end + 2))
            if self._watchTLS:
                # Up to the CR of the empty line, which shows the last field complete.
                self._findTLSRequired(data, end + 3)
        else:
            # Every line but the last is complete (a match holds no CRLF but its first, so
            # none runs past the last line's start).  The last is kept, or once it is too
            # long to be a field still to count, judged now and replaced by a stand-in
            # that keeps only its last byte, which may be the CR of its CRLF.
            last = data.rfind(_CRLF)
            count = len(_RECEIVED.findall(data, 0, last))
            line = data[last:]
            if len(line) > _LINE_KEPT:
                if _RECEIVED.match(line):
                    count += 1
                line = b"\r\n-" + line[-1:]
            if self._watchTLS:
                # A TLS-Required field still open is kept whole (it is never longer than
                # a line kept, and holds no Received field to count twice).
                line = self._findTLSRequired(data, len(data)) or line
            self._headerTail = line
        if count:
            self.receivedHeaders += count
            if self._maxReceived and self.receivedHeaders >= self._maxReceived:
                self.receivedHeaders = self._maxReceived
                self.loop = True
                self._headerTail = None

    def _findTLSRequired(self, data: bytes, endpos: int) -> bytes | None:
        # Look in data[:endpos] for a complete TLS-Required: No field; return the
        # TLS-Required field still open at the end of data, if any, to keep.  An open
        # field is kept only up to _LINE_KEPT bytes, with its CRLF, so a longer field is
        # never believed, however the message is cut.
        for field in _TLS_REQUIRED_NO.finditer(data, 0, endpos):
            if field.end() - field.start() <= _LINE_KEPT - 2:
                self.tlsRequiredNo = True
                self._watchTLS = False
                return None
        still = _TLS_REQUIRED_OPEN.search(data, max(0, len(data) - _LINE_KEPT))
        return data[still.start() :] if still is not None else None

    def watchTLSRequired(self) -> None:
        """
        Also look in the header for a C{TLS-Required: No} field (RFC 8689 section 4.1),
        and read the header for it even when C{Received} fields are not counted.  Call
        this before the first part of the message.
        """
        if self.byteLength:
            raise RuntimeError("the message has already started")
        self._watchTLS = True
        if self._headerTail is None and not self.loop:
            self._headerTail = _CRLF

    def finishHeader(self) -> None:
        """
        The message has ended: a header without an empty line after it ends here, and
        its last field with it.
        """
        tail, self._headerTail = self._headerTail, None
        if tail is not None and self._watchTLS:
            self._findTLSRequired(tail + _HEADER_END, len(tail) + 3)

    @property
    def rejected(self) -> bool:
        """
        Whether the message must be refused: it had a bare CR or LF and the policy is
        C{reject}.  (Under the other policies a bare line ending is only recorded.)
        """
        return self.bareLineEndings and self._policy == "reject"

    @property
    def failed(self) -> bool:
        """
        Whether the message fails whatever its handlers say: it is too large, has a bare
        line ending that the policy refuses, or is a mail loop.
        """
        return self.sizeExceeded or self.rejected or self.loop


class DataDecoder(_MessageDecoder):
    """
    Decode one message sent after DATA.

    @ivar byteLength: bytes of message produced so far (after unstuffing and the
        line-ending policy; the terminator is not counted).
    @ivar done: whether the terminator was seen.
    """

    __slots__ = ("_pending", "_skip", "done")

    def __init__(
        self, limit: int = 0, policy: str = "normalize", maxReceived: int | None = None
    ) -> None:
        super().__init__(limit, policy, maxReceived)
        # The data starts as if after a CRLF; these two bytes are dropped from the output.
        self._pending = _CRLF
        self._skip = 2
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """
        Decode the next chunk.

        @return: the message bytes this chunk completes, and, once the terminator has been
            seen, the bytes that followed it (the next commands), else L{None}.
        """
        if self.done:
            raise RuntimeError("the message has already ended")
        buf = self._pending + data if self._pending else data
        # The terminator and every line to unstuff start with CRLF "."; most chunks hold
        # neither.  The chunk's CRs, LFs and dots, in order, show that the quickest: where
        # they hold no CRLF ".", neither does the chunk.  (They are read faster than the
        # chunk is searched, and they serve the bare line ending check as well.)
        marks = buf.translate(None, _NOT_CRLF_DOT)
        stuffed = marks.count(_STUFFED)
        if stuffed == 1 and buf.endswith(_END):
            # The commonest chunk: a message's last, whose only CRLF "." is the
            # terminator that ends it.  (Each CRLF "." of the chunk is one of its marks.)
            end = mark = len(buf) - 5
        else:
            mark = buf.find(_STUFFED) if stuffed else -1
            end = buf.find(_END, mark) if mark >= 0 else -1
        endings: bytes | None = None
        if end >= 0:
            # The CRLF before the dot is the message's last line ending.
            part = buf[: end + 2]
            rest: bytes | None = buf[end + 5 :]
            self._pending = b""
            self.done = True
            if not rest:
                # The terminator ends the chunk: the part's marks are all but its last.
                endings = marks[:-3]
        else:
            hold = _heldBack(buf)
            if hold:
                part = buf[:-hold]
                self._pending = buf[-hold:]
                # What is held back is all CRs, LFs and dots.
                endings = marks[:-hold]
            else:
                part = buf
                self._pending = b""
                endings = marks
            rest = None
        if mark >= 0 and mark + 3 <= len(part):
            # A stuffed line lies wholly in this part (not the terminator, nor a CRLF "."
            # held back for the next chunk).
            part = part.replace(_STUFFED, _CRLF)
            endings = None
        if self._skip:
            skipped = min(self._skip, len(part))
            if endings is not None:
                # What is skipped is the imagined CRLF, which starts the marks too.
                endings = endings[skipped:]
            part = part[skipped:]
            self._skip -= skipped
        # A part never ends inside a CRLF (a trailing CR is always held back) and never
        # starts with the LF of one, so bare line endings can be judged part by part.
        return self._judge(part, endings), rest


class ChunkDecoder(_MessageDecoder):
    """
    Decode one message sent in BDAT chunks (RFC 3030): the chunks' bytes are the message
    as they are, with no dot-stuffing and no terminator.  A text message must still have
    CRLF line endings (section 3), so the bare CR and LF policy applies as after DATA,
    across the chunks' boundaries: a CR that ends one chunk waits for the next.
    """

    __slots__ = ("_heldCR",)

    def __init__(
        self, limit: int = 0, policy: str = "normalize", maxReceived: int | None = None
    ) -> None:
        super().__init__(limit, policy, maxReceived)
        self._heldCR = False

    def feed(self, data: bytes) -> bytes:
        """
        The message bytes that the next part of a chunk completes.
        """
        data, self._heldCR = _holdCR(self._heldCR, data)
        return self._judge(data)

    def end(self) -> bytes:
        """
        The message's last bytes once its last chunk is in: a CR held back, which no LF
        followed.
        """
        if self._heldCR:
            self._heldCR = False
            return self._judge(b"\r")
        return b""


def _heldBack(buf: bytes) -> int:
    # The length of the longest end of buf that could be the start of the terminator.
    if buf.endswith(b"\r\n.\r"):
        return 4
    if buf.endswith(b"\r\n."):
        return 3
    if buf.endswith(b"\r\n"):
        return 2
    if buf.endswith(b"\r"):
        return 1
    return 0


def _holdCR(held: bool, data: bytes) -> tuple[bytes, bool]:
    # Put back the CR held from the last chunk, and hold back one that ends this chunk:
    # whether it starts a CRLF is for the next chunk to say.
    if held:
        data = b"\r" + data
    if data.endswith(b"\r"):
        return data[:-1], True
    return data, False


def _hasBareLineEnding(part: bytes, endings: bytes | None = None) -> bool:
    """
    Whether C{part} has a CR that no LF follows or an LF that no CR precedes.

    @param endings: C{part}'s CRs and LFs in order, with or without its dots, if known.
    """
    # Without bare ones, the CRs and LFs alternate, a CR first, and each CR has an LF
    # right after it.  Conversely, when both hold, the LFs are as many as the CRs and
    # each follows one, so none is bare.  (Both are quicker to find out than the CRLFs
    # are to count, which for two bytes is a slow search.)
    if endings is None:
        endings = part.translate(None, _NOT_CRLF)
    elif b"." in endings:
        endings = endings.replace(b".", b"")
    return endings != _CRLF * (len(endings) >> 1) or _CR_ALONE.search(part) is not None


def stuff(message: bytes) -> bytes:
    """
    Dot-stuff a message and add the terminator: the inverse of L{DataDecoder}, for
    clients and tests.  The message should end with CRLF; one is added if it does not.
    """
    if not message:
        return b".\r\n"
    if not message.endswith(_CRLF):
        message += _CRLF
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(_STUFFED, b"\r\n..") + b".\r\n"


class DotStuffer:
    """
    Dot-stuff a message chunk by chunk for sending after DATA: the inverse of
    L{DataDecoder}, for relaying a message as it arrives.

    Each line that starts with C{.} gets a second one (RFC 5321 section 4.5.2), wherever the
    chunks happen to be cut.  The output has canonical line endings only: a bare CR or bare
    LF becomes CRLF, as the C{normalize} policy does, so that a relayed message cannot end
    early at a downstream server that is looser about line endings than we are (SMTP
    smuggling, standards section 2.2).  A CR at the end of a chunk is held back until the
    next chunk says whether a LF follows it.

    Feed the message with L{feed}, then send what L{end} returns: the CRLF the last line
    lacks, if it does, and the terminating C{.} line.
    """

    __slots__ = ("_heldCR", "_tail")

    def __init__(self) -> None:
        # The last two bytes sent, as if the message started after a CRLF: that makes a
        # dot on the first line need no special case.
        self._tail = _CRLF
        self._heldCR = False

    def feed(self, chunk: bytes) -> bytes:
        """
        The stuffed bytes for the next chunk of the message.
        """
        chunk, self._heldCR = _holdCR(self._heldCR, chunk)
        if not chunk:
            return b""
        if _hasBareLineEnding(chunk):
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        tail = self._tail
        self._tail = (tail + chunk[-2:])[-2:]
        # A line start to stuff is either inside the chunk or right at its start, where the
        # CRLF before it may be in the tail.
        if _STUFFED not in chunk and _STUFFED not in tail + chunk[:2]:
            return chunk
        # The dot each match gains goes after the match's three bytes, so always after the
        # two bytes of the tail: dropping them leaves exactly this chunk's output.
        return (tail + chunk).replace(_STUFFED, b"\r\n..")[len(tail) :]

    def end(self) -> bytes:
        """
        The end of the data: a CRLF if the message did not end with one, then C{.} CRLF.
        """
        out = b""
        if self._heldCR:
            self._heldCR = False
            self._tail = _CRLF
            out = _CRLF
        if self._tail != _CRLF:
            out += _CRLF
        self._tail = _CRLF
        return out + b".\r\n"
