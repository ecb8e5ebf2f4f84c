"""
Tests for L{smtpsvc._core._data}: the DATA decoder and its inverse, L{stuff}.

The smuggling tests follow section 2.2 of the standards checklist (SMUG): only
C{CRLF . CRLF} ends the data, whatever bare CRs and LFs surround a dot.
"""

# twisted.trial's assertion methods carry no annotations; setup.cfg could say
# untyped_calls_exclude = twisted.trial instead (that option cannot be set inline).
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smtpsvc._core._data import (
    _NOT_CRLF,
    _NOT_CRLF_DOT,
    ChunkDecoder,
    DataDecoder,
    _hasBareLineEnding,
    stuff,
)

from . import smuggling

_FAST = settings(max_examples=300, deadline=None)
_POLICIES = ("normalize", "reject", "pass")

# A CR not followed by LF, or a LF not preceded by CR: what "bare" means, spelled out.
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

# Bytes rich in what matters to the decoder, so random data often holds dots at line
# starts, terminators split across chunks and bare line endings.
_INTERESTING = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"a", b"\x00", b"\xff"])
).map(b"".join)
_BYTES = st.one_of(st.binary(), _INTERESTING)


def _decode(
    chunks: Sequence[bytes], policy: str = "normalize", limit: int = 0
) -> tuple[DataDecoder, bytes, bytes | None]:
    """
    Feed C{chunks} until the end of the data; return the decoder, the message and the
    bytes after the terminator (everything fed after it, joined), or None if not ended.
    """
    decoder = DataDecoder(limit, policy)
    message = []
    rest: bytes | None = None
    for chunk in chunks:
        if decoder.done:
            assert rest is not None
            rest += chunk
            continue
        part, rest = decoder.feed(chunk)
        message.append(part)
    return decoder, b"".join(message), rest


def _split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """
    Split C{data} at the positions C{cuts}, in any order, with repeats.
    """
    points = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in pairwise(points)]


def _chunkings(data: bytes) -> list[list[bytes]]:
    """
    One chunk, every split into two, and byte by byte.
    """
    result = [[data]]
    result.extend([data[:i], data[i:]] for i in range(len(data) + 1))
    result.append([data[i : i + 1] for i in range(len(data))])
    return result


class DataFramingTests(SynchronousTestCase):
    """
    Tests for where L{DataDecoder} finds the end of the data.
    """

    def test_5321_26_simpleMessage(self) -> None:
        """
        The message is everything before the final dot line, its last CRLF included.
        """
        decoder, message, rest = _decode([b"Subject: x\r\n\r\nbody\r\n.\r\n"])
        self.assertEqual(message, b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(rest, b"")
        self.assertTrue(decoder.done)

    def test_5321_27_emptyMessage(self) -> None:
        """
        A dot line as the very first bytes ends an empty message.
        """
        decoder, message, rest = _decode([b".\r\nQUIT\r\n"])
        self.assertEqual(message, b"")
        self.assertEqual(rest, b"QUIT\r\n")
        self.assertTrue(decoder.done)
        self.assertEqual(decoder.byteLength, 0)

    def test_emptyMessageSplit(self) -> None:
        """
        The empty message is recognised however its three bytes arrive.
        """
        for chunks in _chunkings(b".\r\nNOOP\r\n"):
            _decoder, message, rest = _decode(chunks)
            self.assertEqual((message, rest), (b"", b"NOOP\r\n"), chunks)

    def test_emptyLineIsNotTheEnd(self) -> None:
        """
        An empty first line does not end the data.
        """
        _decoder, message, rest = _decode([b"\r\n.\r\n"])
        self.assertEqual((message, rest), (b"\r\n", b""))

    def test_notEndedWithoutTerminator(self) -> None:
        """
        Without the dot line the decoder keeps waiting and gives no rest; it holds back
        only the final CRLF, which could start the terminator.
        """
        decoder, message, rest = _decode([b"a\r\nb\r\n"])
        self.assertIsNone(rest)
        self.assertFalse(decoder.done)
        self.assertEqual(message, b"a\r\nb")

    def test_heldBackBytesCompleteLater(self) -> None:
        """
        Bytes held back as a possible terminator come out once it turns out not to be one.
        """
        decoder = DataDecoder(policy="pass")
        self.assertEqual(decoder.feed(b"a\r\n.\r"), (b"a", None))
        self.assertEqual(decoder.feed(b"x\r\n.\r\n"), (b"\r\n\rx\r\n", b""))

    def test_pipelinedCommandsAreRest(self) -> None:
        """
        The commands after the terminator come back untouched as the rest.
        """
        tail = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n\n\r.\r\n\x00"
        _decoder, message, rest = _decode([b"hi\r\n.\r\n" + tail])
        self.assertEqual((message, rest), (b"hi\r\n", tail))

    def test_restAcrossChunkBoundaries(self) -> None:
        """
        Message and rest are the same wherever the chunks are cut.
        """
        data = b"x\r\n..y\r\n.\r\nNOOP\r\n.\r\nQUIT\r\n"
        for chunks in _chunkings(data):
            _decoder, message, rest = _decode(chunks)
            self.assertEqual(message, b"x\r\n.y\r\n", chunks)
            self.assertEqual(rest, b"NOOP\r\n.\r\nQUIT\r\n", chunks)

    def test_onlyFirstTerminatorCounts(self) -> None:
        """
        A second dot line in the same chunk belongs to the rest.
        """
        _decoder, message, rest = _decode([b"a\r\n.\r\nb\r\n.\r\n"])
        self.assertEqual((message, rest), (b"a\r\n", b"b\r\n.\r\n"))

    def test_feedAfterEndRaises(self) -> None:
        """
        Feeding a decoder that has finished is a programming error.
        """
        decoder = DataDecoder()
        decoder.feed(b".\r\n")
        self.assertRaises(RuntimeError, decoder.feed, b"x")
        self.assertRaises(RuntimeError, decoder.feed, b"")

    def test_emptyChunks(self) -> None:
        """
        Empty chunks change nothing.
        """
        _decoder, message, rest = _decode([b"", b"a\r", b"", b"\n", b"", b".\r\n", b""])
        self.assertEqual((message, rest), (b"a\r\n", b""))

    def test_unknownPolicy(self) -> None:
        """
        A policy other than normalize, reject or pass is refused at once.
        """
        self.assertRaises(ValueError, DataDecoder, 0, "allow")


class DotStuffingTests(SynchronousTestCase):
    """
    Tests for the removal of the leading dot of a line (RFC 5321 section 4.5.2).
    """

    def test_5321_27_doubleDotLosesOne(self) -> None:
        """
        A line C{..x} is stored as C{.x}, also as the first line.
        """
        self.assertEqual(_decode([b"..x\r\n.\r\n"])[1], b".x\r\n")
        self.assertEqual(_decode([b"a\r\n..x\r\n.\r\n"])[1], b"a\r\n.x\r\n")

    def test_singleDotLost(self) -> None:
        """
        A line C{.x} is stored as C{x}: the first dot always goes.
        """
        self.assertEqual(_decode([b".x\r\n.\r\n"])[1], b"x\r\n")
        self.assertEqual(_decode([b"a\r\n.x\r\n.\r\n"])[1], b"a\r\nx\r\n")

    def test_dotLineStuffed(self) -> None:
        """
        A stuffed dot line C{..} is a line with one dot, not the end.
        """
        self.assertEqual(_decode([b"..\r\n.\r\n"])[1:], (b".\r\n", b""))
        _decoder, message, rest = _decode([b"a\r\n..\r\nb\r\n.\r\n"])
        self.assertEqual((message, rest), (b"a\r\n.\r\nb\r\n", b""))

    def test_onlyOneDotRemoved(self) -> None:
        """
        C{...x} keeps two dots.
        """
        self.assertEqual(_decode([b"...x\r\n.\r\n"])[1], b"..x\r\n")

    def test_dotsInsideLinesKept(self) -> None:
        """
        Dots that do not start a line are kept.
        """
        self.assertEqual(_decode([b"a.b..c.\r\n.\r\n"])[1], b"a.b..c.\r\n")

    def test_dotAfterBareLineEndingKept(self) -> None:
        """
        A dot after a bare LF or CR does not start a line and is kept.
        """
        self.assertEqual(_decode([b"a\n.x\r\n.\r\n"], "pass")[1], b"a\n.x\r\n")
        self.assertEqual(_decode([b"a\r.x\r\n.\r\n"], "pass")[1], b"a\r.x\r\n")

    def test_unstuffingAcrossChunks(self) -> None:
        """
        A dot at a line start is removed however the line is cut.
        """
        data = b"a\r\n..b\r\n.c\r\n.\r\n"
        for chunks in _chunkings(data):
            self.assertEqual(_decode(chunks)[1], b"a\r\n.b\r\nc\r\n", chunks)


class BareLineEndingTests(SynchronousTestCase):
    """
    Tests for the bare CR and LF policies.
    """

    def test_crlfOnlyMessageIsClean(self) -> None:
        """
        A message with only CRLF line endings is not flagged under any policy.
        """
        for policy in _POLICIES:
            decoder, message, _rest = _decode([b"a\r\nb\r\n.\r\n"], policy)
            self.assertFalse(decoder.bareLineEndings, policy)
            self.assertEqual(message, b"a\r\nb\r\n")

    def test_normalizeBareLf(self) -> None:
        """
        Under normalize a bare LF becomes CRLF and is noted.
        """
        decoder, message, _rest = _decode([b"a\nb\r\n.\r\n"], "normalize")
        self.assertEqual(message, b"a\r\nb\r\n")
        self.assertTrue(decoder.bareLineEndings)

    def test_normalizeBareCr(self) -> None:
        """
        Under normalize a bare CR becomes CRLF and is noted.
        """
        decoder, message, _rest = _decode([b"a\rb\r\n.\r\n"], "normalize")
        self.assertEqual(message, b"a\r\nb\r\n")
        self.assertTrue(decoder.bareLineEndings)

    def test_normalizeKeepsCrlfPairs(self) -> None:
        """
        Under normalize each bare CR and LF gets its own CRLF; real CRLF pairs stay one.
        """
        _decoder, message, _rest = _decode([b"\r\r\n\n\r\n\r\r\n\n\r\n.\r\n"], "normalize")
        self.assertEqual(message, b"\r\n" * 8)

    def test_normalizeOnFirstByte(self) -> None:
        """
        A bare LF as the very first byte is normalised too.
        """
        self.assertEqual(_decode([b"\nx\r\n.\r\n"], "normalize")[1], b"\r\nx\r\n")
        self.assertEqual(_decode([b"\n", b"x\r\n.\r\n"], "normalize")[1], b"\r\nx\r\n")

    def test_rejectKeepsBytes(self) -> None:
        """
        Under reject the bytes are left alone and the message is flagged.
        """
        for body in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n"):
            decoder, message, _rest = _decode([body + b".\r\n"], "reject")
            self.assertEqual(message, body)
            self.assertTrue(decoder.bareLineEndings, body)

    def test_passKeepsBytes(self) -> None:
        """
        Under pass the bytes are left alone, and the flag is still set for the logs.
        """
        for body in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n"):
            decoder, message, _rest = _decode([body + b".\r\n"], "pass")
            self.assertEqual(message, body)
            self.assertTrue(decoder.bareLineEndings, body)

    def test_crAtChunkEndFollowedByLf(self) -> None:
        """
        A CRLF cut between its two bytes is not a bare CR and a bare LF.
        """
        for policy in _POLICIES:
            decoder, message, _rest = _decode([b"a\r", b"\nb\r", b"\n.\r\n"], policy)
            self.assertEqual(message, b"a\r\nb\r\n")
            self.assertFalse(decoder.bareLineEndings, policy)

    def test_2_12_nulPassesThrough(self) -> None:
        """
        NUL and 8-bit bytes pass through byte-exact; the policy reply is the caller's (2.12).
        """
        body = b"a\x00b\xff\x80\r\n"
        for policy in _POLICIES:
            decoder, message, _rest = _decode([body + b".\r\n"], policy)
            self.assertEqual(message, body)
            self.assertEqual(decoder.byteLength, len(body))


class SizeTests(SynchronousTestCase):
    """
    Tests for C{byteLength} and C{sizeExceeded}.
    """

    def test_byteLengthCountsDecodedBytes(self) -> None:
        """
        The length counts the message after unstuffing, without the terminator.
        """
        decoder, message, _rest = _decode([b"..ab\r\n.\r\nNOOP\r\n"])
        self.assertEqual(message, b".ab\r\n")
        self.assertEqual(decoder.byteLength, 5)

    def test_byteLengthAfterNormalizing(self) -> None:
        """
        Under normalize the length counts the CRLFs that replaced bare line endings.
        """
        decoder, message, _rest = _decode([b"a\nb\r\n.\r\n"], "normalize")
        self.assertEqual(decoder.byteLength, len(message))
        self.assertEqual(decoder.byteLength, 6)

    def test_byteLengthGrowsAsItGoes(self) -> None:
        """
        The length is up to date after each chunk.
        """
        decoder = DataDecoder()
        decoder.feed(b"abc")
        self.assertEqual(decoder.byteLength, 3)
        decoder.feed(b"de\r\n")
        self.assertEqual(decoder.byteLength, 5)
        decoder.feed(b".\r\n")
        self.assertEqual(decoder.byteLength, 7)

    def test_noLimit(self) -> None:
        """
        With limit 0 the size is never exceeded.
        """
        decoder, _message, _rest = _decode([b"x" * 100000 + b"\r\n.\r\n"], limit=0)
        self.assertFalse(decoder.sizeExceeded)
        self.assertEqual(decoder.byteLength, 100002)

    def test_exactlyAtLimit(self) -> None:
        """
        A message exactly as long as the limit is within it.
        """
        decoder, _message, _rest = _decode([b"abc\r\n.\r\n"], limit=5)
        self.assertEqual(decoder.byteLength, 5)
        self.assertFalse(decoder.sizeExceeded)

    def test_overLimit(self) -> None:
        """
        One byte over the limit sets C{sizeExceeded}, and decoding still reaches the end.
        """
        decoder, _message, rest = _decode([b"abcd\r\n.\r\nQUIT\r\n"], limit=5)
        self.assertTrue(decoder.sizeExceeded)
        self.assertEqual(rest, b"QUIT\r\n")

    def test_sizeExceededAsSoonAsOver(self) -> None:
        """
        C{sizeExceeded} turns on with the chunk that goes over, and stays on.
        """
        decoder = DataDecoder(limit=4)
        decoder.feed(b"abc")
        self.assertFalse(decoder.sizeExceeded)
        decoder.feed(b"de")
        self.assertTrue(decoder.sizeExceeded)
        decoder.feed(b"\r\n.\r\n")
        self.assertTrue(decoder.sizeExceeded)

    def test_terminatorNotCounted(self) -> None:
        """
        The empty message has length 0 and never exceeds a limit of 1.
        """
        decoder, _message, _rest = _decode([b".\r\n"], limit=1)
        self.assertEqual(decoder.byteLength, 0)
        self.assertFalse(decoder.sizeExceeded)


class SmugglingTests(SynchronousTestCase):
    """
    SMUG (standards 2.2): a dot between bare line endings never ends the data, so the
    commands after it stay inside the one message.
    """

    def _assertNotSmuggled(self, separator: bytes) -> None:
        data = smuggling.payload(separator)
        for policy in _POLICIES:
            for chunks in _chunkings(data):
                decoder = DataDecoder(policy=policy)
                message = b""
                rest: bytes | None = None
                for chunk in chunks:
                    # The one message ends with the final byte and not before.
                    if decoder.done:
                        self.assertEqual(chunk, b"", (policy, chunks))
                        continue
                    part, rest = decoder.feed(chunk)
                    message += part
                self.assertTrue(decoder.done, (policy, chunks))
                self.assertEqual(rest, b"", (policy, chunks))
                self.assertEqual(message, smuggling.received(separator, policy), (policy, chunks))
                self.assertIn(b"MAIL FROM:<evil@x>", message)
                self.assertTrue(message.endswith(smuggling.SMUGGLED_END))
                self.assertEqual(decoder.byteLength, len(message))
                self.assertTrue(decoder.bareLineEndings, (policy, chunks))
                if policy == "normalize":
                    self.assertIsNone(_BARE.search(message))

    def test_smuggling_lfDotLf(self) -> None:
        """
        SMUG/2.2: C{LF . LF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.LF_DOT_LF)

    def test_smuggling_lfDotCrlf(self) -> None:
        """
        SMUG/2.2: C{LF . CRLF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.LF_DOT_CRLF)

    def test_smuggling_crlfDotLf(self) -> None:
        """
        SMUG/2.2: C{CRLF . LF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.CRLF_DOT_LF)

    def test_smuggling_crDotCr(self) -> None:
        """
        SMUG/2.2: C{CR . CR} does not end the data.
        """
        self._assertNotSmuggled(smuggling.CR_DOT_CR)

    def test_smuggling_crDotCrlf(self) -> None:
        """
        SMUG/2.2: C{CR . CRLF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.CR_DOT_CRLF)

    def test_smuggling_crlfDotCr(self) -> None:
        """
        SMUG/2.2: C{CRLF . CR} does not end the data.
        """
        self._assertNotSmuggled(smuggling.CRLF_DOT_CR)

    def test_smuggling_crCrlfDotCrCrlf(self) -> None:
        """
        SMUG/2.2: C{CR CRLF . CR CRLF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.CR_CRLF_DOT_CR_CRLF)

    def test_smuggling_lfDotDotLf(self) -> None:
        """
        SMUG/2.2: C{LF . . LF} does not end the data.
        """
        self._assertNotSmuggled(smuggling.LF_DOT_DOT_LF)

    def test_smuggling_separatorsAllHaveBareLineEndings(self) -> None:
        """
        SMUG/2.2: every separator of the matrix has a bare CR or LF, so reject mode refuses
        every smuggling attempt.
        """
        self.assertEqual(len(set(smuggling.SEPARATORS)), 8)
        for separator in smuggling.SEPARATORS:
            self.assertIsNotNone(_BARE.search(separator), separator)
            decoder, _message, _rest = _decode([smuggling.payload(separator)], "reject")
            self.assertTrue(decoder.bareLineEndings, separator)

    def test_smuggling_realTerminatorEndsEarly(self) -> None:
        """
        SMUG/2.2 control case: with a real C{CRLF . CRLF} the commands after it are the rest.
        """
        data = smuggling.payload(b"\r\n.\r\n")
        for chunks in _chunkings(data):
            decoder, message, rest = _decode(chunks)
            self.assertEqual(message, smuggling.HEAD + b"\r\n", chunks)
            self.assertEqual(rest, smuggling.TAIL, chunks)
            self.assertFalse(decoder.bareLineEndings)


class StuffTests(SynchronousTestCase):
    """
    Tests for L{stuff}.
    """

    def test_emptyMessage(self) -> None:
        """
        The empty message is just the dot line.
        """
        self.assertEqual(stuff(b""), b".\r\n")

    def test_addsTerminator(self) -> None:
        """
        The dot line is added after the last CRLF.
        """
        self.assertEqual(stuff(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n")

    def test_addsMissingFinalCrlf(self) -> None:
        """
        A message without a final CRLF gets one.
        """
        self.assertEqual(stuff(b"a"), b"a\r\n.\r\n")
        self.assertEqual(stuff(b"a\r\nb"), b"a\r\nb\r\n.\r\n")
        self.assertEqual(stuff(b"a\n"), b"a\n\r\n.\r\n")

    def test_stuffsLeadingDots(self) -> None:
        """
        Every line that starts with a dot, the first one included, gets another.
        """
        self.assertEqual(stuff(b".a\r\n"), b"..a\r\n.\r\n")
        self.assertEqual(stuff(b"a\r\n.\r\n..b\r\n"), b"a\r\n..\r\n...b\r\n.\r\n")
        self.assertEqual(stuff(b"."), b"..\r\n.\r\n")

    def test_dotsAfterBareLineEndingsLeftAlone(self) -> None:
        """
        Dots after a bare LF or CR do not start a line and are not stuffed.
        """
        self.assertEqual(stuff(b"a\n.b\r\n"), b"a\n.b\r\n.\r\n")
        self.assertEqual(stuff(b"a\r.b\r\n"), b"a\r.b\r\n.\r\n")


def _crlfMessages() -> st.SearchStrategy[bytes]:
    """
    Messages made of CRLF-terminated lines without bare CR or LF.
    """
    line = st.one_of(
        st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\x00", b"\xff"]),
    )
    return st.lists(line).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


class DataPropertyTests(SynchronousTestCase):
    """
    Properties of L{DataDecoder} and L{stuff} on generated data.
    """

    @_FAST
    @given(_BYTES, _BYTES, st.sampled_from(_POLICIES), st.data())
    def test_chunkingDoesNotMatter(
        self, message: bytes, tail: bytes, policy: str, data: st.DataObject
    ) -> None:
        """
        However the same bytes are cut into chunks, the message, the rest, the bare line
        ending flag and the length come out the same.
        """
        stream = stuff(message) + tail
        cuts = data.draw(st.lists(st.integers(0, len(stream))))
        whole, wholeMessage, wholeRest = _decode([stream], policy)
        cut, cutMessage, cutRest = _decode(_split(stream, cuts), policy)
        self.assertEqual(cutMessage, wholeMessage)
        self.assertEqual(cutRest, wholeRest)
        self.assertEqual(cutRest, tail)
        self.assertEqual(cut.bareLineEndings, whole.bareLineEndings)
        self.assertEqual(cut.byteLength, whole.byteLength)
        self.assertEqual(cut.byteLength, len(cutMessage))

    @_FAST
    @given(_BYTES, st.sampled_from(("reject", "pass")), st.data())
    def test_stuffInvertedExactlyWhenBytesKept(
        self, message: bytes, policy: str, data: st.DataObject
    ) -> None:
        """
        When bare line endings are kept, any message ending in CRLF comes back byte for
        byte, whatever else it holds.
        """
        if message and not message.endswith(b"\r\n"):
            message += b"\r\n"
        stream = stuff(message)
        cuts = data.draw(st.lists(st.integers(0, len(stream))))
        decoder, decoded, rest = _decode(_split(stream, cuts), policy)
        self.assertEqual((decoded, rest), (message, b""))
        self.assertEqual(decoder.bareLineEndings, _BARE.search(message) is not None)

    @_FAST
    @given(_crlfMessages(), st.sampled_from(_POLICIES), st.data())
    def test_stuffThenDecodeIsIdentity(
        self, message: bytes, policy: str, data: st.DataObject
    ) -> None:
        """
        A message of CRLF lines survives stuffing and decoding unchanged under every
        policy, and is not flagged.
        """
        stream = stuff(message)
        cuts = data.draw(st.lists(st.integers(0, len(stream))))
        decoder, decoded, rest = _decode(_split(stream, cuts), policy)
        self.assertEqual((decoded, rest), (message, b""))
        self.assertFalse(decoder.bareLineEndings)
        self.assertEqual(decoder.byteLength, len(message))

    @_FAST
    @given(st.lists(_BYTES), st.sampled_from(_POLICIES))
    def test_neverRaisesAndRestFollowsFirstTerminator(
        self, chunks: list[bytes], policy: str
    ) -> None:
        """
        Arbitrary bytes never make the decoder fail; it ends exactly at the first
        C{CRLF . CRLF} (counting the data as starting after a CRLF), and refuses more
        input after that.
        """
        stream = b"".join(chunks)
        decoder, _message, rest = _decode(chunks, policy)
        end = (b"\r\n" + stream).find(b"\r\n.\r\n")
        if end < 0:
            self.assertFalse(decoder.done)
            self.assertIsNone(rest)
        else:
            self.assertTrue(decoder.done)
            self.assertEqual(rest, (b"\r\n" + stream)[end + 5 :])
            self.assertRaises(RuntimeError, decoder.feed, b"")

    @_FAST
    @given(st.lists(_BYTES))
    def test_normalizeLeavesNoBareLineEnding(self, chunks: list[bytes]) -> None:
        """
        Under normalize the decoded message never holds a bare CR or LF, ended or not.
        """
        _decoder, message, _rest = _decode(chunks, "normalize")
        self.assertIsNone(_BARE.search(message))

    @_FAST
    @given(st.lists(_BYTES), st.integers(0, 50))
    def test_sizeExceededMatchesLength(self, chunks: list[bytes], limit: int) -> None:
        """
        C{sizeExceeded} is set exactly when there is a limit and the length went over it.
        """
        decoder, message, _rest = _decode(chunks, "normalize", limit)
        self.assertEqual(decoder.byteLength, len(message))
        self.assertEqual(decoder.sizeExceeded, bool(limit) and decoder.byteLength > limit)


class BareLineEndingCheckTests(SynchronousTestCase):
    """
    The quick test for bare CR and LF, which looks at the order of the CRs and LFs and
    then only for a CR alone, agrees with the definition.
    """

    @_FAST
    @given(st.one_of(_BYTES, st.text(alphabet="ab.\r\n").map(str.encode)))
    def test_matchesDefinition(self, data: bytes) -> None:
        """
        For any bytes, L{_hasBareLineEnding} is whether a bare CR or LF occurs.
        """
        self.assertEqual(_hasBareLineEnding(data), _BARE.search(data) is not None, data)

    @_FAST
    @given(st.one_of(_BYTES, st.text(alphabet="ab.\r\n").map(str.encode)))
    def test_endingsGiven(self, data: bytes) -> None:
        """
        Given the CRs and LFs of the bytes in order, with or without their dots, the test
        agrees with the definition still.
        """
        expected = _BARE.search(data) is not None
        for endings in (data.translate(None, _NOT_CRLF), data.translate(None, _NOT_CRLF_DOT)):
            self.assertEqual(_hasBareLineEnding(data, endings), expected, (data, endings))

    def test_separatedPair(self) -> None:
        """
        A CR and a LF with something between them are both bare.
        """
        self.assertTrue(_hasBareLineEnding(b"a\rbb\nc"))
        self.assertTrue(_hasBareLineEnding(b"a\r.\nb\r\n", b"\r.\n\r\n"))
        self.assertFalse(_hasBareLineEnding(b"a\r\nbb\r\n"))
        self.assertFalse(_hasBareLineEnding(b".a\r\n.b\r\n", b".\r\n.\r\n"))


# A header with four Received fields, in every case and with the obsolete space before the
# colon, among look-alikes that are not (other names, a folded line, a field's value), and
# a body whose Received lines are not header fields at all.
_TRACED_HEADER = (
    b"Received: from a.example by b.example\r\n"
    b"X-Received: not a trace field\r\n"
    b"Received-SPF: pass\r\n"
    b"received: from c.example\r\n"
    b"\tReceived: the folded rest of the field above\r\n"
    b"RECEIVED : from d.example\r\n"
    b"Subject: Received: in a value\r\n"
    b"ReCeIvEd:x\r\n"
)
_TRACED_BODY = b"\r\nReceived: in the body\r\nReceived: again\r\n"


def _traced(count: int) -> bytes:
    return b"".join(b"Received: from hop%d.example\r\n" % i for i in range(count))


def _feedBoth(
    chunks: Sequence[bytes],
    maxReceived: int | None = 100,
    policy: str = "normalize",
    *,
    watchTLSRequired: bool = False,
) -> list[DataDecoder | ChunkDecoder]:
    """
    Give C{chunks} (a message without dots at line starts, ended by CRLF) to both
    decoders, and end the message as the server does: after DATA, then the terminator;
    in BDAT chunks, then the end.

    @param watchTLSRequired: have the decoders watch for C{TLS-Required: No} too.
    """
    data = DataDecoder(policy=policy, maxReceived=maxReceived)
    chunk = ChunkDecoder(policy=policy, maxReceived=maxReceived)
    if watchTLSRequired:
        for decoder in (data, chunk):
            decoder.watchTLSRequired()
    for part in chunks:
        data.feed(part)
        chunk.feed(part)
    data.feed(b".\r\n")
    chunk.end()
    assert data.done
    for decoder in (data, chunk):
        decoder.finishHeader()
    return [data, chunk]


class ReceivedCountTests(SynchronousTestCase):
    """
    Both decoders count the header's C{Received} fields, for mail loop detection (RFC 5321
    section 6.3, standards row 5321-31).
    """

    def test_5321_31_headerFieldsCountedAnyChunking(self) -> None:
        """
        Only header lines that start with the field name C{Received} (any case, with or
        without space before the colon) count, however the message is cut, including
        inside C{CRLF Received:} and byte by byte.
        """
        message = _TRACED_HEADER + _TRACED_BODY
        for chunks in _chunkings(message):
            for decoder in _feedBoth(chunks):
                self.assertEqual((decoder.receivedHeaders, decoder.loop), (4, False), chunks)

    def test_onlyHeaderCounts(self) -> None:
        """
        Counting stops at the first empty line: a message that starts with one has no
        header, and one without any is all header.
        """
        cases = [
            (_traced(3) + b"\r\n" + _traced(5), 3),
            (b"\r\n" + _traced(5), 0),
            (_traced(5), 5),
            (b"Subject: x\r\n\r\n\r\n" + _traced(5), 0),
        ]
        for message, expected in cases:
            for chunks in _chunkings(message):
                for decoder in _feedBoth(chunks):
                    self.assertEqual(decoder.receivedHeaders, expected, chunks)

    def test_bareLineEndingsNormalizedFirst(self) -> None:
        """
        Under C{normalize} a bare LF ends a header line as the CRLF it becomes does.
        """
        message = b"Received: a\nReceived: b\r\n\nReceived: body\r\n"
        for chunks in _chunkings(message):
            for decoder in _feedBoth(chunks):
                self.assertEqual(decoder.receivedHeaders, 2, chunks)

    def test_limitExactly(self) -> None:
        """
        C{loop} is set when the count reaches the limit, not before; the count stops
        there.
        """
        for count, loop in [(2, False), (3, True), (7, True)]:
            for chunks in _chunkings(_traced(count) + b"\r\nbody\r\n"):
                for decoder in _feedBoth(chunks, maxReceived=3):
                    self.assertEqual(
                        (decoder.receivedHeaders, decoder.loop), (min(count, 3), loop), chunks
                    )

    def test_loopKnownOnceTheFieldEnds(self) -> None:
        """
        The flag is up as soon as the line of the last field allowed is complete, before
        the rest of the message arrives.
        """
        decoder = DataDecoder(maxReceived=2)
        decoder.feed(_traced(1) + b"Received: from")
        self.assertFalse(decoder.loop)
        decoder.feed(b" b.example\r\nSub")
        self.assertTrue(decoder.loop)
        self.assertFalse(decoder.done)

    def test_offWhenNone(self) -> None:
        """
        With no limit nothing is counted, however many fields there are.
        """
        for decoder in _feedBoth([_traced(500)], maxReceived=None):
            self.assertEqual((decoder.receivedHeaders, decoder.loop), (0, False))

    def test_longLinesKeepLittle(self) -> None:
        """
        Between chunks only a few bytes of a header line are kept, however long it is,
        and a long C{Received} field still counts once.
        """
        message = (
            b"Received: " + b"x" * 100_000 + b"\r\n"
            b"X-Long: " + b"y" * 100_000 + b"\r\n" + _traced(1) + b"\r\n"
        )
        for size in (1000, 4099):
            data = DataDecoder(maxReceived=100)
            chunk = ChunkDecoder(maxReceived=100)
            for start in range(0, len(message), size):
                part = message[start : start + size]
                for decoder in (data, chunk):
                    decoder.feed(part)
                    tail = decoder._headerTail
                    self.assertLessEqual(len(tail or b""), 64)
            self.assertEqual((data.receivedHeaders, chunk.receivedHeaders), (2, 2))

    @_FAST
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"Received: x",
                    b"received:",
                    b"RECEIVED \t: y",
                    b" Received: folded",
                    b"X-Received: z",
                    b"Receivedx: no",
                    b"Subject: Received:",
                    b"",
                    b"a",
                ]
            )
        ),
        st.data(),
    )
    def test_countMatchesLines(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        The count is that of the lines before the first empty one that start with the
        field name and a colon, however the message is cut.
        """
        message = b"".join(line + b"\r\n" for line in lines)
        expected = 0
        for line in lines:
            if not line:
                break
            expected += re.match(rb"received[ \t]*:", line, re.IGNORECASE) is not None
        cuts = data.draw(st.lists(st.integers(0, len(message))))
        for decoder in _feedBoth(_split(message, cuts), maxReceived=1000):
            self.assertEqual(decoder.receivedHeaders, expected)


# Headers with a TLS-Required: No field (RFC 8689 section 5), in the forms a header may
# give it: any case, white space before the colon, around the value, and folded.
_TLS_OPTIONAL_HEADERS = (
    b"TLS-Required: No\r\n",
    b"tls-required:no\r\n",
    b"TLS-REQUIRED :  NO \t\r\n",
    b"TLS-Required:\r\n No\r\n",
    b"TLS-Required:\r\n\t\r\n  no\r\n \r\n",
    b"Subject: x\r\nTLS-Required: No\r\nFrom: <a@b.example>\r\n",
)
# Look-alikes that are not: other values, other names, a value of another field, a
# continuation line, the body, a message with no header, a comment the grammar lacks.
_NOT_TLS_OPTIONAL = (
    b"TLS-Required: Yes\r\n\r\n",
    b"TLS-Required: No more\r\n\r\n",
    b"TLS-Required: Nope\r\n\r\n",
    b"TLS-Required: No\r\n thanks\r\n\r\n",
    b"TLS-Required: N o\r\n\r\n",
    b"X-TLS-Required: No\r\n\r\n",
    b"TLS-Requirements: No\r\n\r\n",
    b"Subject: TLS-Required: No\r\n\r\n",
    b"Subject: x\r\n TLS-Required: No\r\n\r\n",
    b"Subject: x\r\n\r\nTLS-Required: No\r\n",
    b"\r\nTLS-Required: No\r\n",
    b"TLS-Required: No (please)\r\n\r\n",
    b"TLS-Required:" + b" " * 60 + b"No\r\n\r\n",
)


def _tlsOptionalByModel(message: bytes) -> bool:
    """
    Whether C{message}'s header has a field named TLS-Required whose unfolded value is
    C{No} with white space around it, and which is short (62 bytes with the CRLF before
    it): the rule the decoders follow, by the book, on the whole message.
    """
    lines = (b"\r\n" + message).split(b"\r\n")[1:]
    fields: list[list[bytes]] = []
    for line in lines:
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1].append(line)
            continue
        fields.append([line])
    for field in fields:
        raw = b"\r\n".join(field)
        match = re.fullmatch(rb"tls-required[ \t]*:(.*)", b"".join(field), re.I | re.S)
        if match and match.group(1).strip(b" \t").lower() == b"no" and len(raw) + 2 <= 62:
            return True
    return False


class TLSRequiredTests(SynchronousTestCase):
    """
    Both decoders notice a C{TLS-Required: No} header field when asked to (RFC 8689
    section 4.1, standards row 8689-05), reading the header as they do for C{Received}.
    """

    def test_8689_05_fieldFoundAnyChunking(self) -> None:
        """
        The field is found in any of its forms, with a body after the header or none,
        however the message is cut, byte by byte included.
        """
        for header in _TLS_OPTIONAL_HEADERS:
            for message in (header + b"\r\nbody\r\n", header):
                for chunks in _chunkings(message):
                    for decoder in _feedBoth(chunks, watchTLSRequired=True):
                        self.assertTrue(decoder.tlsRequiredNo, chunks)

    def test_lookAlikesIgnored(self) -> None:
        """
        Other values, other fields, the body and long-winded forms do not count.
        """
        for message in _NOT_TLS_OPTIONAL:
            for chunks in _chunkings(message):
                for decoder in _feedBoth(chunks, watchTLSRequired=True):
                    self.assertFalse(decoder.tlsRequiredNo, chunks)

    def test_knownOnceTheFieldEnds(self) -> None:
        """
        The flag is up once the next line shows the field is not continued, before the
        header ends; not while a continuation may still change the value.
        """
        decoder = DataDecoder(maxReceived=100)
        decoder.watchTLSRequired()
        decoder.feed(b"TLS-Required: No\r\n")
        self.assertFalse(decoder.tlsRequiredNo)
        decoder.feed(b"S")
        self.assertTrue(decoder.tlsRequiredNo)

    def test_onlyWhenWatched(self) -> None:
        """
        A decoder not asked to watch never sets the flag; one asked to watches even when
        it does not count C{Received} fields, and never calls the message a loop then.
        """
        unwatched = DataDecoder(maxReceived=100)
        unwatched.feed(b"TLS-Required: No\r\n\r\n.\r\n")
        unwatched.finishHeader()
        self.assertFalse(unwatched.tlsRequiredNo)
        message = _traced(300) + b"TLS-Required: No\r\n\r\n"
        for decoder in _feedBoth([message], maxReceived=None, watchTLSRequired=True):
            self.assertEqual((decoder.tlsRequiredNo, decoder.loop), (True, False))

    def test_receivedCountUnchanged(self) -> None:
        """
        Keeping an open C{TLS-Required} field between chunks counts no C{Received} field
        twice or not at all, however the message is cut.
        """
        message = _traced(2) + b"TLS-Required:\r\n No\r\n" + _traced(3) + b"\r\n" + _traced(4)
        for chunks in _chunkings(message):
            for decoder in _feedBoth(chunks, watchTLSRequired=True):
                self.assertEqual((decoder.receivedHeaders, decoder.tlsRequiredNo), (5, True))

    def test_keepsLittle(self) -> None:
        """
        Between chunks no more than a line's worth of the header is kept, however long
        the white space of a C{TLS-Required} field.
        """
        message = b"TLS-Required:" + b" \r\n" * 10_000 + b" No\r\n\r\n"
        for size in (1, 7, 1000):
            decoder = DataDecoder(maxReceived=100)
            decoder.watchTLSRequired()
            for start in range(0, len(message), size):
                decoder.feed(message[start : start + size])
                self.assertLessEqual(len(decoder._headerTail or b""), 64)
            self.assertFalse(decoder.tlsRequiredNo)

    def test_watchBeforeTheMessage(self) -> None:
        """
        Asking to watch once the message has started is a mistake.
        """
        decoder = DataDecoder()
        decoder.feed(b"Subject: x\r\n")
        self.assertRaises(RuntimeError, decoder.watchTLSRequired)

    def test_chunkWithoutFinalLineEnding(self) -> None:
        """
        A BDAT message that is all header and ends without CRLF ends its last field.
        """
        decoder = ChunkDecoder()
        decoder.watchTLSRequired()
        decoder.feed(b"Subject: x\r\nTLS-Required: No")
        decoder.end()
        self.assertFalse(decoder.tlsRequiredNo)
        decoder.finishHeader()
        self.assertTrue(decoder.tlsRequiredNo)

    @_FAST
    @given(
        st.lists(
            st.sampled_from(
                [
                    b"TLS-Required: No",
                    b"tls-required :no ",
                    b"TLS-Required:",
                    b" No",
                    b"\tno",
                    b" ",
                    b" more",
                    b"TLS-Required: Nope",
                    b"Received: x",
                    b"Subject: TLS-Required: No",
                    b"",
                    b"a",
                ]
            )
        ),
        st.data(),
    )
    def test_agreesWithTheModel(self, lines: list[bytes], data: st.DataObject) -> None:
        """
        However the message is cut, the flag is what reading the whole header by the
        book says.
        """
        message = b"".join(line + b"\r\n" for line in lines)
        cuts = data.draw(st.lists(st.integers(0, len(message))))
        expected = _tlsOptionalByModel(message)
        for decoder in _feedBoth(_split(message, cuts), watchTLSRequired=True):
            self.assertEqual(decoder.tlsRequiredNo, expected, message)
