"""
Tests for the examples of the quickstart, handlers, states and testing pages: each file
under C{docs/examples} that they include is imported and run, so the code the pages show
(they include these files verbatim) is code that works.

Server examples are driven in memory with L{smtpsvc.testing}, through the C{makeServer}
each of them exports, and their C{main} is run once on the real reactor with a blocking
client in a thread.  The quickstart's client scripts talk to a real C{twist smtpsvc}
child process.  The testing page's example test case is run by trial's own loader.
"""

from __future__ import annotations

import io
import mailbox
import os
import runpy
import smtplib
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.reporter import TestResult
from twisted.trial.runner import TestLoader
from twisted.trial.unittest import TestCase

from smtpsvc import SMTPServer
from smtpsvc.testing import MemoryClient, ServerReply

from .e2e_support import (
    EXAMPLES,
    LISTEN,
    LOCALHOST,
    RawClient,
    loadExample,
    startExample,
    startTwist,
)

#: The documentation pages that include the examples.
DOCS = EXAMPLES.parent
#: The examples this module runs, by module name.
TESTED = (
    "send_hello",
    "read_maildir",
    "print_messages",
    "policy",
    "delivery",
    "lmtp_store",
    "conversation",
    "chunking",
    "test_policy",
    "known_relays",
)
#: What every server example listens on without an argument.
DEFAULT_ENDPOINT = "tcp:2525:interface=127.0.0.1"

#: A message the delivery example accepts: it has the From and Date headers it requires.
DATED = (
    b"From: <alice@example.org>\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    b"Subject: Hello\r\n"
    b"\r\n"
    b"Hello, Bob.\r\n"
)


def codes(replies: Iterable[ServerReply]) -> list[int]:
    """
    The codes of C{replies}.
    """
    return [reply.code for reply in replies]


class ExampleTestCase(TestCase):
    """
    Helpers for running examples: captured output, temporary directories, C{main}.
    """

    timeout = 60

    def captureOutput(self) -> io.StringIO:
        """
        Capture what the example prints, for the rest of the test.
        """
        output = io.StringIO()
        self.patch(sys, "stdout", output)
        return output

    def runScript(self, name: str, *argv: str) -> str:
        """
        Run C{docs/examples/NAME.py} as a script, as Python would: with C{argv} as its
        arguments and its directory first on C{sys.path}.

        @return: what it printed.
        """
        output = self.captureOutput()
        self.patch(sys, "argv", [f"{name}.py", *argv])
        self.patch(sys, "path", [str(EXAMPLES), *sys.path])
        runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="__main__")
        return output.getvalue()

    def makeDirectory(self) -> str:
        """
        A new empty directory for this test.
        """
        path = os.path.abspath(str(self.mktemp()))
        os.makedirs(path)
        return path

    def runMain(self, module: ModuleType, *argv: str) -> int:
        """
        Start C{module.main(reactor, *argv)} on the real reactor and return the port it
        listens on.  A cleanup does what Ctrl-C would (the shutdown triggers, which close
        the server) and then cancels C{main}, which otherwise serves for ever.
        """
        reactor, running = startExample(self, module, *argv)
        # A TCP endpoint listens at once, so main is serving by now (or it failed).
        if running.called:
            self.successResultOf(running)
            self.fail("main() returned instead of serving")
        self.assertEqual(len(reactor.ports), 1)
        self.assertEqual(len(reactor.triggers), 1)
        return int(reactor.ports[0].getHost().port)


class DefaultEndpointTests(TestCase):
    """
    Every server example listens where the documentation says when given no argument.
    """

    def test_defaultEndpoint(self) -> None:
        """
        Each server example's default endpoint is port 2525 on the loopback interface.
        """
        for name in ("print_messages", "delivery", "lmtp_store"):
            self.assertEqual(loadExample(name).DEFAULT_ENDPOINT, DEFAULT_ENDPOINT, name)


class IncludedTests(TestCase):
    """
    The pages show the tested files: every example tested here is included by a page.
    """

    def test_everyExampleIncluded(self) -> None:
        """
        Each example this module runs is the subject of a literalinclude in a page.
        """
        pages = "".join(page.read_text(encoding="utf-8") for page in DOCS.glob("*.rst"))
        for name in TESTED:
            self.assertTrue((EXAMPLES / f"{name}.py").is_file(), name)
            self.assertIn(f".. literalinclude:: examples/{name}.py", pages, name)


class QuickstartTests(ExampleTestCase):
    """
    The quickstart: C{twist smtpsvc} delivering into ./maildir, and the smallest program.
    """

    async def test_twistDeliversIntoMaildir(self) -> None:
        """
        A message sent with send_hello.py to twist smtpsvc is read back by read_maildir.py.
        """
        sendHello = loadExample("send_hello").sendHello
        readMaildir = loadExample("read_maildir").readMaildir
        directory = self.makeDirectory()
        process = await startTwist(self, ["--listen", LISTEN], directory)
        await deferToThread(sendHello, LOCALHOST, process.port)
        messages = await deferToThread(readMaildir, os.path.join(directory, "maildir"))
        self.assertEqual(len(messages), 1, process.text)
        [message] = messages
        self.assertEqual(message["Return-Path"], "<alice@example.org>")
        self.assertIn("for <bob@example.com>", message["Received"])
        self.assertEqual(message["Subject"], "Hello")
        self.assertEqual(message.get_payload(), "Hello from smtplib.\n")

    def test_readMaildirScript(self) -> None:
        """
        Run as a script, read_maildir.py prints the trace headers and subject of each message.
        """
        directory = os.path.abspath(str(self.mktemp()))
        box = mailbox.Maildir(directory, create=True)
        box.add(b"Return-Path: <a@example.org>\r\nReceived: from x\r\nSubject: Hi\r\n\r\nBody\r\n")
        self.assertEqual(
            self.runScript("read_maildir", directory),
            "Return-Path: <a@example.org>\nReceived: from x\nSubject: Hi\n\n",
        )

    def test_printMessagesInMemory(self) -> None:
        """
        The smallest program prints each message with its envelope and accepts it.
        """
        example = loadExample("print_messages")
        output = self.captureOutput()
        server: SMTPServer = example.makeServer(Clock())
        self.assertTrue(server.options.authOptional)
        client = MemoryClient(server)
        self.assertEqual(codes(client.send("EHLO client.example")), [250])
        message = b"Subject: Hi\r\n\r\nHello.\r\n"
        replies = client.sendmail("alice@example.org", ["bob@example.com"], message)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(
            output.getvalue(),
            "Message from <alice@example.org> to <bob@example.com>, 23 bytes:\n"
            "Subject: Hi\r\n\r\nHello.\r\n\n",
        )

    async def test_printMessagesMain(self) -> None:
        """
        The smallest program's main() serves on the endpoint it is given; smtplib sends to it.
        """
        example = loadExample("print_messages")
        sendHello = loadExample("send_hello").sendHello
        output = self.captureOutput()
        port = self.runMain(example, LISTEN)
        self.assertIn(f"port={port}", output.getvalue())
        await deferToThread(sendHello, LOCALHOST, port)
        printed = output.getvalue()
        self.assertIn("Message from <alice@example.org> to <bob@example.com>", printed)
        self.assertIn("Subject: Hello\r\n", printed)
        self.assertIn("Hello from smtplib.", printed)


class DeliveryTests(ExampleTestCase):
    """
    The handlers page: a policy, two filters and a handler that saves to a directory.
    """

    def setUp(self) -> None:
        self.example = loadExample("delivery")
        self.clock = Clock()
        self.directory = self.makeDirectory()
        self.server: SMTPServer = self.example.makeServer(self.clock, self.directory)
        self.assertTrue(self.server.options.authOptional)

    def connect(self, address: str = "192.0.2.1") -> MemoryClient:
        """
        A client from C{address} that has said EHLO.
        """
        client = MemoryClient(self.server, peer=(address, 40000))
        self.assertEqual(codes(client.send("EHLO client.example")), [250])
        return client

    def saved(self) -> list[str]:
        """
        The files in the directory, in order.
        """
        return sorted(os.listdir(self.directory))

    def test_savesAcceptedMessage(self) -> None:
        """
        A message that passes the policy and the filters is saved and named in the reply.
        """
        client = self.connect()
        replies = client.sendmail("alice@example.org", ["bob@example.com"], DATED)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        name = f"{client.session.id}.1.eml"
        self.assertEqual(replies[-1].text, f"OK: saved as {name}")
        self.assertEqual(self.saved(), [name])
        self.assertEqual((Path(self.directory) / name).read_bytes(), DATED)

    def test_unknownRecipientRefusedAfterDelay(self) -> None:
        """
        The policy refuses an unknown recipient after a second; a known one still works.
        """
        client = self.connect()
        replies = client.send(
            "MAIL FROM:<alice@example.org>", "RCPT TO:<carol@example.com>", "RCPT TO:<postmaster>"
        )
        self.assertEqual(codes(replies), [250])
        self.clock.advance(0.5)
        self.assertEqual(client.received(), [])
        self.clock.advance(0.5)
        self.assertEqual(
            client.received(), [ServerReply(550, ("<carol@example.com>: no such mailbox here",))]
        )
        # The next RCPT was read only then: <postmaster> without a domain is legal in RCPT
        # (RFC 5321 section 4.5.1), but it is not one of the example's mailboxes.
        self.assertEqual(client.received(), [])
        self.clock.advance(1)
        self.assertEqual(codes(client.received()), [550])

    def test_blockedSender(self) -> None:
        """
        The blocked sender is refused at MAIL FROM.
        """
        client = self.connect()
        self.assertEqual(
            client.send("MAIL FROM:<spammer@example.net>"),
            [ServerReply(550, ("Sender blocked",))],
        )

    def test_missingHeaders(self) -> None:
        """
        A message without a Date header is refused after the final dot and not saved.
        """
        client = self.connect()
        message = b"From: <alice@example.org>\r\nSubject: undated\r\n\r\nHi\r\n"
        replies = client.sendmail("alice@example.org", ["bob@example.com"], message)
        self.assertEqual(replies[-1], ServerReply(550, ("Message has no Date header",)))
        self.assertEqual(self.saved(), [])

    def test_refusedWordAcrossChunks(self) -> None:
        """
        A refused word split between two writes is found, and the message is not saved.
        """
        client = self.connect()
        replies = client.send("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.com>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        self.assertEqual(client.write(DATED + b"You won the LOT"), [])
        self.assertEqual(client.write(b"TERY!\r\n"), [])
        replies = client.write(b".\r\n")
        self.assertEqual(replies, [ServerReply(550, ("Message refused by content filter",))])
        self.assertEqual(self.saved(), [])

    def test_clientGoesAway(self) -> None:
        """
        When the client disconnects in the middle of a message, its partial file is removed.
        """
        client = self.connect()
        client.send("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.com>", "DATA")
        client.write(DATED)
        self.assertEqual(len(self.saved()), 1)
        self.assertTrue(self.saved()[0].endswith(".eml.part"))
        client.disconnect()
        self.assertEqual(self.saved(), [])

    def test_tooLarge(self) -> None:
        """
        A message over the server's size limit gets 552 and is not saved.
        """
        client = self.connect()
        message = DATED + b"x" * 10_000_000 + b"\r\n"
        replies = client.sendmail("alice@example.org", ["bob@example.com"], message)
        self.assertEqual(replies[-1].code, 552)
        self.assertEqual(self.saved(), [])

    async def test_main(self) -> None:
        """
        The delivery example's main() serves on the endpoint given and saves into ./messages.
        """
        directory = self.makeDirectory()
        cwd = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, cwd)
        self.captureOutput()
        port = self.runMain(self.example, LISTEN)

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(LOCALHOST, port, local_hostname="client.example") as client:
                return client.sendmail("alice@example.org", ["bob@example.com"], DATED)

        self.assertEqual(await deferToThread(send), {})
        [saved] = os.listdir(os.path.join(directory, "messages"))
        self.assertEqual((Path(directory) / "messages" / saved).read_bytes(), DATED)


class LMTPStoreTests(ExampleTestCase):
    """
    The handlers page's LMTP example: one reply per recipient after the message.
    """

    def setUp(self) -> None:
        self.example = loadExample("lmtp_store")
        self.server: SMTPServer = self.example.makeServer(Clock())
        self.store = self.server.handlers[0]
        self.client = MemoryClient(self.server)
        self.assertEqual(codes(self.client.send("LHLO client.example")), [250])

    def test_perRecipientReplies(self) -> None:
        """
        A full mailbox gets 452 while the others accept; a repeated recipient gets its own
        reply but one copy.
        """
        message = b"Subject: big\r\n\r\n" + b"x" * 600 + b"\r\n"
        recipients = ["alice@example.com", "bob@example.com", "ALICE@example.com"]
        replies = self.client.sendmail("carol@example.org", recipients, message)
        self.assertEqual(codes(replies), [250, 250, 250, 250, 354, 250, 250, 250])
        replies = self.client.sendmail("carol@example.org", recipients, message)
        self.assertEqual(codes(replies[-3:]), [250, 452, 250])
        self.assertEqual(replies[-2], ServerReply(452, ("4.2.2 Mailbox full",)))
        self.assertEqual(len(self.store.mailboxes["alice@example.com"]), 2)
        self.assertEqual(len(self.store.mailboxes["bob@example.com"]), 1)

    def test_unknownMailbox(self) -> None:
        """
        An unknown recipient is refused at RCPT and gets no reply after the message.
        """
        replies = self.client.sendmail(
            "carol@example.org", ["dave@example.com", "alice@example.com"], b"Hi\r\n"
        )
        self.assertEqual(codes(replies), [250, 550, 250, 354, 250])
        self.assertEqual(replies[1].text, "5.1.1 No such mailbox")

    async def test_main(self) -> None:
        """
        The LMTP example's main() serves LMTP on the endpoint given.
        """
        self.captureOutput()
        port = self.runMain(self.example, LISTEN)

        def talk() -> list[ServerReply]:
            with RawClient(port) as client:
                replies = [client.readReply(), client.command("LHLO client.example")]
                client.send(
                    b"MAIL FROM:<carol@example.org>\r\n"
                    b"RCPT TO:<alice@example.com>\r\n"
                    b"RCPT TO:<bob@example.com>\r\n"
                    b"DATA\r\n"
                )
                replies += client.readReplies(4)
                client.send(b"Subject: hi\r\n\r\nHi\r\n.\r\n")
                replies += client.readReplies(2)
                replies.append(client.command("QUIT"))
            return replies

        replies = await deferToThread(talk)
        self.assertEqual(codes(replies), [220, 250, 250, 250, 250, 354, 250, 250, 221])
        self.assertIn("LMTP", replies[0].text)


class ConversationTests(ExampleTestCase):
    """
    The states page's conversation: sequence errors, pipelining, DATA framing.
    """

    def test_transcript(self) -> None:
        """
        Each step gets the replies the states page describes.
        """
        transcript, recorder = loadExample("conversation").converse()
        self.assertEqual(
            [codes(replies) for _, replies in transcript],
            [[220], [503], [250], [503], [503], [250, 250, 354], [], [250], [250, 221]],
        )
        self.assertEqual(transcript[1][1][0].text, "Error: send HELO/EHLO first")
        self.assertEqual(transcript[3][1][0].text, "Error: need RCPT command")
        self.assertEqual(transcript[4][1][0].text, "Error: need MAIL command")
        [message] = recorder.messages
        # The bare-LF "end" is message text, its line endings normalised to CRLF.
        self.assertEqual(
            message.data,
            b"Subject: hi\r\n\r\nHello\r\n.\r\nMAIL FROM:<mallory@example.net>\r\n",
        )
        self.assertEqual(len(recorder.senders), 1)

    def test_script(self) -> None:
        """
        Run as a script, conversation.py prints the transcript.
        """
        printed = self.runScript("conversation")
        self.assertIn("C: EHLO client.example\nS: 250 mx.example.com Nice to meet you", printed)
        self.assertIn("S: 503 Error: send HELO/EHLO first\n", printed)
        self.assertIn("S: 221 Bye\n", printed)


class ChunkingExampleTests(ExampleTestCase):
    """
    The state machine page's BDAT example does what the page shows.
    """

    def test_transcript(self) -> None:
        """
        Each chunk but the last gets its 250, DATA and the BDAT after the last chunk get
        503, and the message is the two chunks, the would-be commands inside as text.
        """
        example = loadExample("chunking")
        transcript, recorder = example.converse(example.STEPS)
        codes = [[reply.code for reply in replies] for _, replies in transcript]
        self.assertEqual(codes, [[220], [250], [250, 250], [250], [503], [250], [503], [221]])
        self.assertIn("CHUNKING", transcript[1][1][0].lines)
        self.assertEqual(transcript[3][1][0].text, "OK: 22 octets received")
        self.assertEqual(
            [m.data for m in recorder.messages],
            [b"Subject: hi\r\n\r\nHello\r\n.\r\nMAIL FROM:<mallory@example.net>\r\n"],
        )
        self.assertEqual(recorder.senders, ["alice@example.org"])

    def test_script(self) -> None:
        """
        Run as a script (whose directory Python puts first on the path), chunking.py
        prints the transcript.
        """
        printed = self.runScript("chunking")
        self.assertIn("C: b'BDAT 22\\r\\nSubject: hi", printed)
        self.assertIn("S: 250 OK: 22 octets received\n", printed)
        self.assertIn("S: 221 Bye\n", printed)


class TestingPageTests(TestCase):
    """
    The testing page's example test case passes.
    """

    def test_examplePasses(self) -> None:
        """
        Every test of test_policy.py passes when trial runs it.
        """
        cases = loadExample("test_policy").PolicyTests
        suite = TestLoader().loadClass(cases)
        result = TestResult()
        suite.run(result)
        problems = [str(failure) for _, failure in result.errors + result.failures]
        self.assertEqual(problems, [])
        self.assertEqual(result.testsRun, 6)
        self.assertTrue(result.wasSuccessful())
