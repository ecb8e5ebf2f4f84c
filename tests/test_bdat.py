"""
CHUNKING and BDAT (RFC 3030), in memory: the chunk decoder, and the protocol driven
through L{MemoryClient}.  Tests named C{test_3030_NN} are the standards checklist's
(section 1.11).
"""

from __future__ import annotations

import itertools
import tracemalloc
from functools import partial
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpsvc import (
    IDataHandler,
    IMessageStream,
    MessageAborted,
    SMTPError,
    readMessage,
)
from smtpsvc import Session as SMTPSession
from smtpsvc._core import _connection
from smtpsvc._core._connection import CHUNK_SKIP_LIMIT
from smtpsvc._core._data import ChunkDecoder
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

from . import protocol_support
from .e2e_support import LogCapture
from .protocol_support import RECIPIENT, SENDER, Later, codes, drain

#: A server (see L{protocol_support.makeServer}) that greets at once.
makeServer = partial(protocol_support.makeServer, earlyTalkerDelay=0)
#: A client that said EHLO (LHLO in LMTP) to a new server that greets at once.
connect = partial(protocol_support.connect, clientName="x", earlyTalkerDelay=0)


def transaction(client: MemoryClient, *recipients: str) -> None:
    """
    MAIL FROM and RCPT TO (each of C{recipients}, or L{RECIPIENT}), all accepted.
    """
    lines = [f"MAIL FROM:<{SENDER}>", *(f"RCPT TO:<{r}>" for r in recipients or [RECIPIENT])]
    replies = client.send(*lines)
    assert [r.code for r in replies] == [250] * len(lines), replies


def bdat(data: bytes, last: bool = False) -> bytes:
    """
    A BDAT command and its chunk.
    """
    return b"BDAT %d%s\r\n%s" % (len(data), b" LAST" if last else b"", data)


@implementer(IDataHandler)
class Outcomes:
    """
    Reads each message to its end and records how it ended: its bytes, or the error.
    """

    def __init__(self) -> None:
        self.ended: list[bytes | BaseException] = []

    async def onData(self, stream: IMessageStream, session: SMTPSession) -> None:
        try:
            data = await readMessage(stream)
        except Exception as e:
            self.ended.append(e)
            raise
        self.ended.append(data)


@implementer(IDataHandler)
class LaterAnswer(Later[None]):
    """
    Answers each message when the test says so.
    """

    def onData(self, stream: IMessageStream, session: SMTPSession) -> Deferred[None]:
        return self.later()


class ChunkDecoderTests(SynchronousTestCase):
    """
    L{ChunkDecoder}: the chunks' bytes are the message, under the bare line ending policy.
    """

    def decode(self, parts: list[bytes], **kwargs: Any) -> tuple[bytes, ChunkDecoder]:
        decoder = ChunkDecoder(**kwargs)
        out = b"".join(decoder.feed(part) for part in parts) + decoder.end()
        return out, decoder

    def test_bytesAsSent(self) -> None:
        """
        Dots, the DATA terminator and would-be commands are ordinary bytes.
        """
        message = b"..x\r\n.\r\nQUIT\r\n.\r\n"
        out, decoder = self.decode([message])
        self.assertEqual(
            (out, decoder.byteLength, decoder.bareLineEndings), (message, len(message), False)
        )

    def test_crlfAcrossChunks(self) -> None:
        """
        A CRLF split between two chunks is one line ending, not a bare CR and a bare LF.
        """
        out, decoder = self.decode([b"a\r", b"\nb\r\n"], policy="reject")
        self.assertEqual(
            (out, decoder.bareLineEndings, decoder.rejected), (b"a\r\nb\r\n", False, False)
        )

    def test_3030_12_bareLineEndings(self) -> None:
        """
        A bare LF or CR, also a CR that ends the last chunk, is dealt with as after DATA:
        normalised, refused or kept.
        """
        parts = [b"a\nb\r", b"c\r"]
        normalized, decoder = self.decode(parts)
        self.assertEqual((normalized, decoder.bareLineEndings), (b"a\r\nb\r\nc\r\n", True))
        _, decoder = self.decode(parts, policy="reject")
        self.assertTrue(decoder.rejected)
        kept, decoder = self.decode(parts, policy="pass")
        self.assertEqual((kept, decoder.rejected), (b"a\nb\rc\r", False))

    def test_sizeLimit(self) -> None:
        """
        The limit counts the message's bytes across chunks.
        """
        _, decoder = self.decode([b"12345", b"67890"], limit=10)
        self.assertFalse(decoder.sizeExceeded)
        _, decoder = self.decode([b"12345", b"678901"], limit=10)
        self.assertTrue(decoder.sizeExceeded)

    @given(
        st.binary(max_size=200),
        st.lists(st.integers(min_value=0, max_value=200), max_size=8),
        st.sampled_from(["normalize", "reject", "pass"]),
    )
    def test_anyCut(self, message: bytes, cuts: list[int], policy: str) -> None:
        """
        However the message is cut into chunks, the output and the findings are the same.
        """
        bounds = sorted({0, len(message), *(min(c, len(message)) for c in cuts)})
        parts = [message[a:b] for a, b in itertools.pairwise(bounds)]
        whole, one = self.decode([message], policy=policy)
        cut, many = self.decode(parts, policy=policy)
        self.assertEqual(
            (cut, many.bareLineEndings, many.byteLength),
            (whole, one.bareLineEndings, one.byteLength),
        )


class ChunkingTests(SynchronousTestCase):
    """
    BDAT over the wire, in memory.
    """

    def test_3030_01_advertised(self) -> None:
        """
        EHLO (and LMTP's LHLO) lists CHUNKING, and not BINARYMIME, which smtpsvc does not
        support; disabling BDAT removes CHUNKING, and BDAT gets 502 as not implemented.
        """
        for options in ({}, {"lmtp": True}):
            client = MemoryClient(makeServer([], **options))
            hello = "LHLO x" if options else "EHLO x"
            lines = client.send(hello)[0].lines
            self.assertIn("CHUNKING", lines)
            self.assertNotIn("BINARYMIME", lines)
        client = MemoryClient(makeServer([], disabledCommands=("BDAT",)))
        self.assertNotIn("CHUNKING", client.send("EHLO x")[0].lines)
        self.assertEqual(
            client.send("BDAT 0 LAST"), [ServerReply(502, ("Error: command not implemented",))]
        )

    def test_3030_02_eachChunkAcknowledged(self) -> None:
        """
        Each chunk gets a 250 once read; the message is the chunks one after another.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        self.assertEqual(
            client.write(bdat(b"hello")), [ServerReply(250, ("2.0.0 OK: 5 octets received",))]
        )
        replies = client.write(bdat(b", world\r\n", last=True))
        self.assertEqual(replies, [ServerReply(250, ("2.6.0 OK: message queued",))])
        self.assertEqual([m.data for m in recorder.messages], [b"hello, world\r\n"])
        self.assertEqual(recorder.messages[0].envelope.rcptTo[0].address, RECIPIENT)

    def test_3030_03_emptyLastChunk(self) -> None:
        """
        C{BDAT 0 LAST} ends the message: one 250 in SMTP, one reply per accepted
        recipient in LMTP.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"x\r\n") + b"BDAT 0 LAST\r\n")), [250, 250])
        self.assertEqual([m.data for m in recorder.messages], [b"x\r\n"])
        client = connect(recorder, lmtp=True)
        transaction(client, "c@d.example", "e@f.example")
        replies = client.write(b"BDAT 0 LAST\r\n")
        self.assertEqual(replies, [ServerReply(250, ("2.6.0 OK: message accepted",))] * 2)
        self.assertEqual(recorder.messages[-1].data, b"")

    def test_2033_07_bdatLastPerRecipient(self) -> None:
        """
        In LMTP a data handler's per-recipient answers become the replies to BDAT LAST.
        """

        @implementer(IDataHandler)
        class SecondFull:
            def onData(self, stream: IMessageStream, session: SMTPSession) -> list[object]:
                return [None, SMTPError(452, "Mailbox full")]

        client = connect(SecondFull(), lmtp=True)
        transaction(client, "c@d.example", "e@f.example")
        self.assertEqual(codes(client.write(bdat(b"hi\r\n", last=True))), [250, 452])

    def test_2033_07_failedChunkBeforeLastOneReply(self) -> None:
        """
        In LMTP a BDAT chunk before the last that makes the message fail (here, over the
        size limit) gets one reply, as every BDAT does: the replies per recipient answer
        only the end of the message, and more would be taken for the replies to the
        client's next commands.
        """
        recorder = RecordingHandler()
        client = connect(recorder, lmtp=True, size=10)
        transaction(client, "c@d.example", "e@f.example")
        self.assertEqual(codes(client.write(bdat(b"12345678"))), [250])
        self.assertEqual(codes(client.write(bdat(b"12345678"))), [552])
        self.assertEqual(codes(client.send("RSET")), [250])
        self.assertEqual(recorder.messages, [])

    def test_2033_07_nothingAfterA421(self) -> None:
        """
        In LMTP a recipient's 421 closes the connection right after it: the replies for
        the recipients after it are not sent (RFC 5321 section 3.8).
        """

        @implementer(IDataHandler)
        class GoingDown:
            def onData(self, stream: IMessageStream, session: SMTPSession) -> list[object]:
                return [None, SMTPError(421, "store going down"), None]

        client = connect(GoingDown(), lmtp=True)
        transaction(client, "c@d.example", "e@f.example", "g@h.example")
        self.assertEqual(codes(client.write(bdat(b"hi\r\n", last=True))), [250, 421])
        self.assertTrue(client.closed)

    def test_3030_04_chunkOfARefusedBDATDiscarded(self) -> None:
        """
        A BDAT refused for its place in the conversation still has its chunk read and
        thrown away: the commands in it are not run, and the connection goes on.
        """
        inside = b"QUIT\r\n"
        cases: list[tuple[dict[str, Any], list[str], str]] = [
            ({}, [], "503 Error: send HELO/EHLO first"),
            ({}, ["EHLO x"], "503 Error: need MAIL command"),
            ({}, ["EHLO x", f"MAIL FROM:<{SENDER}>"], "503 Error: need RCPT command"),
            ({"needsUpgrade": True}, ["EHLO x"], "530 Must issue a STARTTLS command first"),
            (
                {"authOptional": False, "authMethods": ("PLAIN",), "allowInsecureAuth": True},
                ["EHLO x"],
                "530 Error: authentication Required",
            ),
        ]
        for options, before, refusal in cases:
            client = MemoryClient(makeServer([], **options))
            client.send(*before)
            replies = client.write(bdat(inside) + b"NOOP\r\n")
            self.assertEqual(
                [f"{r.code} {r.text}" for r in replies][:1], [refusal], (options, before)
            )
            self.assertEqual(codes(replies)[1:], [250], (options, before))
            self.assertFalse(client.closed, (options, before))

    def test_3030_04_tooLarge(self) -> None:
        """
        A chunk that takes the message over the size limit is read to its end and gets
        552; the message fails (its handlers are told) and the transaction is over.
        """
        outcomes = Outcomes()
        client = connect(outcomes, size=10, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"123456"))), [250])
        replies = client.write(bdat(b"QUIT\r\n"))
        self.assertEqual(
            replies,
            [ServerReply(552, ("5.3.4 Error: message exceeds fixed maximum message size 10",))],
        )
        self.assertEqual([type(e).__name__ for e in outcomes.ended], ["MessageTooLarge"])
        self.assertEqual(codes(client.write(bdat(b"more", last=True))), [503])
        self.assertFalse(client.closed)
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"small", last=True))), [250])
        self.assertEqual(outcomes.ended[-1], b"small")

    def test_pipelinedChunksAfterAFailedOneAreNotErrors(self) -> None:
        """
        The 503s to the chunks a client pipelined after one whose message failed (over
        the size limit) are not its errors: with maxErrors=3, forty of them do not close
        the connection, and the next transaction is served.
        """
        client = connect(RecordingHandler(), size=1000, maxErrors=3)
        transaction(client)
        chunks = b"".join(bdat(b"x" * 100) for _ in range(40)) + bdat(b"", last=True)
        client.protocol.dataReceived(chunks)
        replies = drain(client)
        self.assertEqual(codes(replies), [250] * 10 + [552] + [503] * 30)
        self.assertFalse(client.closed)
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"small", last=True))), [250])

    def test_3030_05_dataAfterBDAT(self) -> None:
        """
        DATA in a transaction that BDAT started gets 503 5.5.1; the transaction goes on.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        client.write(bdat(b"part1 "))
        self.assertEqual(
            client.send("DATA"), [ServerReply(503, ("5.5.1 Error: bad sequence of commands",))]
        )
        self.assertEqual(codes(client.write(bdat(b"part2\r\n", last=True))), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"part1 part2\r\n"])

    def test_3030_05_otherCommandsBetweenChunks(self) -> None:
        """
        Between chunks NOOP works; MAIL, RCPT, AUTH, STARTTLS are sequence errors.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        client.write(bdat(b"x"))
        replies = client.send(
            "NOOP", f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{RECIPIENT}>", "AUTH PLAIN", "STARTTLS"
        )
        self.assertEqual(codes(replies), [250, 503, 503, 503, 503])
        self.assertEqual(codes(client.write(bdat(b"y\r\n", last=True))), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"xy\r\n"])

    def test_3030_06_bdatAfterLast(self) -> None:
        """
        A BDAT after the last chunk is outside any transaction: 503, and its chunk is
        discarded.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        client.write(bdat(b"one\r\n", last=True))
        replies = client.write(bdat(b"RSET\r\n") + b"NOOP\r\n")
        self.assertEqual(
            replies,
            [
                ServerReply(503, ("5.5.1 Error: need MAIL command",)),
                ServerReply(250, ("2.0.0 OK",)),
            ],
        )
        self.assertEqual([m.data for m in recorder.messages], [b"one\r\n"])

    def test_3030_07_binaryMimeRefused(self) -> None:
        """
        BODY=BINARYMIME is refused at MAIL FROM with 555: smtpsvc does not offer
        BINARYMIME (see also standards 6152-04).
        """
        client = connect()
        reply = client.send(f"MAIL FROM:<{SENDER}> BODY=BINARYMIME")[0]
        self.assertEqual(reply.code, 555)

    def test_3030_08_syntaxErrorCloses(self) -> None:
        """
        A BDAT line that cannot be read gets 521 5.5.4 and the connection closes: there
        is no telling where its chunk would end.
        """
        # The last has a digit of another script (FULLWIDTH DIGIT FIVE), which int() takes.
        lines = ("BDAT", "BDAT abc", "BDAT 5 FIRST", "BDAT -1", "BDAT 5  LAST", "BDAT \uff15")
        for line in lines:
            client = connect(hideENHANCEDSTATUSCODES=False)
            transaction(client)
            replies = client.write(line.encode() + b"\r\nhelloNOOP\r\n")
            self.assertEqual(
                replies, [ServerReply(521, ("5.5.4 Error: syntax: BDAT chunk-size [LAST]",))], line
            )
            self.assertTrue(client.closed, line)

    def test_3030_08_lastInAnyCase(self) -> None:
        """
        The end marker LAST, like a verb, may be in any case.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        self.assertEqual(codes(client.write(b"bdat 3 last\r\nabc")), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"abc"])

    def test_3030_08_leadingZeros(self) -> None:
        """
        A chunk size may have any number of leading zeros (chunk-size = 1*DIGIT):
        C{BDAT 0000000000000000000005 LAST} is a chunk of five bytes, however many digits
        that is.
        """
        recorder = RecordingHandler()
        client = connect(recorder, size=1000)
        transaction(client)
        self.assertEqual(codes(client.write(b"BDAT " + b"0" * 30 + b"5 LAST\r\nhello")), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"hello"])
        self.assertEqual(codes(client.send("NOOP")), [250])

    def test_3030_09_nullChunk(self) -> None:
        """
        C{BDAT 0} without LAST is refused, and the transaction with it (RFC 3030 section
        2: the client takes a refused chunk for a failed transaction, and would send the
        message again): the chunks pipelined after it get 503 and nothing is delivered,
        and the client's next MAIL starts afresh (soak QA: the message was delivered, and
        a MAIL after the 501 got "nested MAIL").  Before any chunk, the same.
        """
        recorder = RecordingHandler()
        client = connect(recorder, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        refused = ServerReply(501, ("5.5.4 Error: BDAT 0 is only allowed with LAST",))
        self.assertEqual(client.send("BDAT 0"), [refused])
        self.assertEqual(client.session.envelope.rcptTo, ())
        self.assertEqual(codes(client.write(bdat(b"ok", last=True))), [503])
        self.assertEqual(recorder.messages, [])
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"abc"))), [250])
        replies = client.write(b"BDAT 0\r\n" + bdat(b"def") + bdat(b"ghi", last=True))
        self.assertEqual(
            replies, [refused, *[ServerReply(503, ("5.5.1 Error: need MAIL command",))] * 2]
        )
        self.assertEqual(recorder.messages, [])
        self.assertEqual(client.send("MAIL FROM:<a@b.example>")[0].code, 250)
        self.assertEqual(codes(client.send("RCPT TO:<c@d.example>")), [250])
        self.assertEqual(codes(client.write(bdat(b"ok", last=True))), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"ok"])

    def test_3030_10_hugeChunk(self) -> None:
        """
        A chunk larger than both the size limit and CHUNK_SKIP_LIMIT gets 552 and the
        connection closes at once: nothing is read (or held) for it.  Without a limit a
        refused chunk over CHUNK_SKIP_LIMIT closes too.
        """
        client = connect(size=1000, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        replies = client.send("BDAT 99999999999999999999")
        self.assertEqual(
            replies,
            [ServerReply(552, ("5.3.4 Error: message exceeds fixed maximum message size 1000",))],
        )
        self.assertTrue(client.closed)
        client = connect()
        self.assertEqual(codes(client.send(f"BDAT {CHUNK_SKIP_LIMIT + 1}")), [503])
        self.assertTrue(client.closed)
        client = connect()
        self.assertEqual(codes(client.write(b"BDAT 10\r\n" + b"x" * 10)), [503])
        self.assertFalse(client.closed)

    def test_3030_04_chunkOverTheSizeLimitIsRead(self) -> None:
        """
        A chunk over the size limit, but not over CHUNK_SKIP_LIMIT, is read and thrown
        away (RFC 3030 section 2), then gets 552, and the connection stays open, as in
        Postfix (Postfix QA: it got 552 and the connection closed, so that a client still
        sending its chunk met a reset and might never read the 552).  The message fails
        as one that grows over the limit in several chunks does; the next is served.
        """
        tooBig = ServerReply(552, ("5.3.4 Error: message exceeds fixed maximum message size 1000",))
        recorder = RecordingHandler()
        client = connect(recorder, size=1000, hideENHANCEDSTATUSCODES=False)
        transaction(client)
        replies = client.write(bdat(b"x" * 500) + bdat(b"y" * 3000) + bdat(b"z", last=True))
        self.assertEqual(
            replies[1:], [tooBig, ServerReply(503, ("5.5.1 Error: need MAIL command",))]
        )
        self.assertFalse(client.closed)
        transaction(client)
        self.assertEqual(client.write(bdat(b"y" * 3000, last=True)), [tooBig])
        transaction(client)
        self.assertEqual(codes(client.write(bdat(b"ok", last=True))), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"ok"])
        # Over CHUNK_SKIP_LIMIT too, it is not read.
        self.patch(_connection, "CHUNK_SKIP_LIMIT", 2000)
        transaction(client)
        self.assertEqual(client.send("BDAT 3000 LAST"), [tooBig])
        self.assertTrue(client.closed)

    def test_3030_11_manySmallChunks(self) -> None:
        """
        Ten thousand one-byte chunks sent in one go each get their 250, and the message
        is all of them.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        count = 10_000
        # Long pipelined batches are answered a few hundred lines per reactor turn.
        replies = client.write(b"BDAT 1\r\nx" * count) + drain(client)
        self.assertEqual(replies, [ServerReply(250, ("OK: 1 octets received",))] * count)
        self.assertEqual(codes(client.write(b"BDAT 0 LAST\r\n")), [250])
        self.assertEqual([m.data for m in recorder.messages], [b"x" * count])

    def test_3030_11_boundedMemory(self) -> None:
        """
        The server keeps nothing per chunk: after twenty thousand one-byte chunks of a
        message no handler keeps, it holds no more memory than before them.
        """
        client = connect()
        transaction(client)

        def chunks(count: int) -> None:
            for _ in range(count // 1000):
                replies = client.write(b"BDAT 1\r\nx" * 1000)
                # A turn of the reactor between batches, never more than there are lines.
                for _ in range(1000):
                    if len(replies) >= 1000:
                        break
                    client.clock.advance(0)
                    replies += client.received()
                assert len(replies) == 1000, replies[-3:]

        chunks(1000)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        chunks(20_000)
        retained = tracemalloc.get_traced_memory()[0] - before
        # A record of each chunk, even a small int in a list, would be 160 KB or more.
        self.assertLess(retained, 64 * 1024)
        self.assertEqual(codes(client.write(b"BDAT 0 LAST\r\n")), [250])

    def test_3030_12_bareLineEndingRejected(self) -> None:
        """
        Under bareLineEndings=reject a bare LF in a chunk makes BDAT LAST answer 550, as
        the final dot would after DATA.
        """
        client = connect(bareLineEndings="reject")
        transaction(client)
        replies = client.write(bdat(b"a\nb\r\n", last=True))
        self.assertEqual(
            replies, [ServerReply(550, ("Error: bare <CR> or <LF> received in message data",))]
        )

    def test_3030_12_bareLineEndingNormalized(self) -> None:
        """
        Under the default policy, bare line endings become CRLF, a CRLF split between
        chunks stays one.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        client.write(bdat(b"a\nb\r"))
        client.write(bdat(b"\nc", last=True))
        self.assertEqual([m.data for m in recorder.messages], [b"a\r\nb\r\nc"])

    def test_commandsInsideAChunk(self) -> None:
        """
        A chunk that holds a DATA terminator and whole commands (the SMTP smuggling
        pattern) is message text: one message, nothing run.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        inside = b"Subject: a\r\n\r\nA\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
        self.assertEqual(codes(client.write(bdat(inside, last=True))), [250])
        self.assertEqual([m.data for m in recorder.messages], [inside])
        self.assertEqual(recorder.senders, [SENDER])

    def test_pipelinedInOneWrite(self) -> None:
        """
        A whole transaction with several chunks in one write is answered in one write,
        in order.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        data = (
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\n".encode()
            + bdat(b"one ")
            + bdat(b"two\r\n", last=True)
            + b"NOOP\r\n"
        )
        writes: list[bytes] = []
        write = client.transport.write

        def recordingWrite(data: bytes) -> None:
            writes.append(data)
            write(data)

        self.patch(client.transport, "write", recordingWrite)
        client.protocol.dataReceived(data)
        self.assertEqual(codes(client.received()), [250, 250, 250, 250, 250])
        self.assertEqual(len(writes), 1)
        self.assertEqual([m.data for m in recorder.messages], [b"one two\r\n"])

    def test_byteAtATime(self) -> None:
        """
        The chunk's size is counted however the bytes arrive.
        """
        recorder = RecordingHandler()
        client = connect(recorder)
        transaction(client)
        replies = []
        for byte in bdat(b"ab\r\n") + bdat(b"cd\r\n", last=True) + b"NOOP\r\n":
            replies += client.write(bytes([byte]))
        self.assertEqual(codes(replies), [250, 250, 250])
        self.assertEqual([m.data for m in recorder.messages], [b"ab\r\ncd\r\n"])

    def test_resetBetweenChunks(self) -> None:
        """
        RSET (or a new EHLO) between chunks abandons the message: its handlers see it
        fail, the log says so, and a new transaction works.
        """
        for command in ("RSET", "EHLO y"):
            log = LogCapture(self)
            outcomes = Outcomes()
            client = connect(outcomes)
            transaction(client)
            client.write(bdat(b"abandoned"))
            self.assertEqual(codes(client.send(command)), [250])
            self.assertEqual([type(e) for e in outcomes.ended], [MessageAborted])
            self.assertEqual(len(log.matching(f"message from <{SENDER}>")), 1)
            self.assertIn(": reset in ", log.matching(f"message from <{SENDER}>")[0])
            transaction(client)
            self.assertEqual(codes(client.write(bdat(b"kept", last=True))), [250])
            self.assertEqual(outcomes.ended[1:], [b"kept"])

    def test_resetWaitsForTheDataHandlers(self) -> None:
        """
        The reply to RSET (or a new EHLO) that abandons a message waits until the
        message's data handlers have answered: no handler of the next transaction runs
        while one of the abandoned message's still does (a relay has one downstream
        connection per session, busy until its data handler lets go).
        """
        for command in (b"RSET", b"EHLO y"):
            later = LaterAnswer()
            recorder = RecordingHandler()
            client = connect(recorder, later)
            transaction(client)
            self.assertEqual(codes(client.write(bdat(b"abandoned"))), [250])
            recorder.senders.clear()
            held = client.write(command + b"\r\n" + f"MAIL FROM:<{SENDER}>\r\n".encode())
            self.assertEqual(held, [])
            self.assertEqual(recorder.senders, [])
            later.pending[0].errback(MessageAborted("gone"))
            self.assertEqual(codes(client.received()), [250, 250])
            self.assertEqual(recorder.senders, [SENDER])

    def test_resetAfterTheDataHandlersAnswered(self) -> None:
        """
        When the abandoned message's handlers answered already, RSET is answered at once.
        """
        outcomes = Outcomes()
        client = connect(outcomes)
        transaction(client)
        client.write(bdat(b"abandoned"))
        self.assertEqual(codes(client.write(b"RSET\r\n")), [250])

    def test_clientLeavesWhileResetWaits(self) -> None:
        """
        A client that goes away while its RSET waits for the abandoned message's handlers
        gets nothing more, and the handlers' late answer finds the connection closed.
        """
        later = LaterAnswer()
        client = connect(later)
        transaction(client)
        client.write(bdat(b"abandoned"))
        self.assertEqual(client.write(b"RSET\r\n"), [])
        client.disconnect()
        later.pending[0].callback(None)
        self.assertEqual(client.received(), [])

    def test_closeHandlersWaitForTheDataHandlers(self) -> None:
        """
        The close handlers of a connection lost in the middle of a message (sent with
        DATA or in chunks, or abandoned by an RSET that waits for its data handlers) run
        only once the message's data handlers have answered, and the server's close()
        waits for them: a close handler may end what a data handler still uses.
        """
        sendings = {
            "DATA": lambda client: client.write(b"DATA\r\nSubject: partial\r\n"),
            "BDAT": lambda client: client.write(bdat(b"partial")),
            "RSET": lambda client: client.write(bdat(b"partial") + b"RSET\r\n"),
        }
        for name, send in sendings.items():
            later = LaterAnswer()
            closing = RecordingHandler()
            client = connect(later, closing)
            transaction(client)
            send(client)
            client.disconnect()
            closed = client.server.close()
            self.assertEqual(closing.closed, [], name)
            self.assertNoResult(closed)
            later.pending[0].callback(None)
            self.assertEqual(closing.closed, [client.session], name)
            self.assertIsNone(self.successResultOf(closed))
            # Nothing more reaches the client (the RSET's reply was held, then dropped).
            self.assertEqual(client.received(), [], name)

    def test_closeHandlersAtOnceWhenTheDataHandlersAnswered(self) -> None:
        """
        When the data handlers of an aborted message have answered before the connection
        is lost (here a message abandoned by RSET), the close handlers run at once.
        """
        later = LaterAnswer()
        closing = RecordingHandler()
        client = connect(later, closing)
        transaction(client)
        client.write(bdat(b"partial"))
        client.write(b"RSET\r\n")
        later.pending[0].callback(None)
        client.disconnect()
        self.assertEqual(closing.closed, [client.session])

    def test_answerAwaited(self) -> None:
        """
        The reply to BDAT LAST waits for the data handler's answer, and commands sent
        after it wait too.
        """
        later = LaterAnswer()
        client = connect(later)
        transaction(client)
        self.assertEqual(client.write(bdat(b"x", last=True) + b"NOOP\r\n"), [])
        later.pending[0].callback(None)
        self.assertEqual(codes(client.received()), [250, 250])

    def test_disconnectBetweenChunks(self) -> None:
        """
        A client that goes away between chunks fails the message for its handlers.
        """
        outcomes = Outcomes()
        client = connect(outcomes)
        transaction(client)
        client.write(bdat(b"half"))
        client.disconnect()
        self.assertEqual([type(e) for e in outcomes.ended], [MessageAborted])
