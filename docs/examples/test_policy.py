"""
Tests for the L{Policy} of C{policy.py}, with smtpsvc.testing: no sockets, no real time.

Run them from this directory with ``python -m twisted.trial test_policy``.
"""

from __future__ import annotations

from policy import Policy
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from smtpsvc import ICloseHandler, IConnectHandler, IMailFromHandler, IRcptToHandler, SMTPServer
from smtpsvc.testing import MemoryClient, RecordingHandler, ServerReply

MESSAGE = b"From: <alice@example.org>\r\nSubject: Hello\r\n\r\nHello, Bob.\r\n"


def codes(replies: list[ServerReply]) -> list[int]:
    """
    The reply codes of C{replies}, for short assertions.
    """
    return [reply.code for reply in replies]


class PolicyTests(SynchronousTestCase):
    """
    The policy lets known mailboxes receive mail and keeps blocked clients and senders out.
    """

    def setUp(self) -> None:
        # The clock is the server's reactor: the test decides when time passes.
        self.clock = Clock()
        self.policy = Policy(
            self.clock,
            mailboxes=["bob@example.com"],
            blockedClients=["203.0.113.9"],
            blockedSenders=["spammer@example.net"],
        )
        # The policy decides; the recorder stands in for delivery and keeps every message.
        self.recorder = RecordingHandler()
        self.server = SMTPServer(
            [self.policy, self.recorder],
            reactor=self.clock,
            authOptional=True,
            name="mx.example.com",
        )

    def connect(self, address: str = "192.0.2.1") -> MemoryClient:
        """
        Connect a client from C{address} and say EHLO.
        """
        client = MemoryClient(self.server, peer=(address, 40000))
        self.assertEqual(codes(client.send("EHLO client.example")), [250])
        return client

    def test_interfaces(self) -> None:
        """
        The policy provides the four interfaces it declares, with the right methods.
        """
        for interface in (IConnectHandler, IMailFromHandler, IRcptToHandler, ICloseHandler):
            self.assertTrue(verifyObject(interface, self.policy))

    def test_knownMailbox(self) -> None:
        """
        A message for a known mailbox is accepted and reaches the handlers after the policy.
        """
        client = self.connect()
        replies = client.sendmail("alice@example.org", ["BOB@example.com"], MESSAGE)
        self.assertEqual(codes(replies), [250, 250, 354, 250])
        self.assertEqual(replies[-1].text, "OK: message queued")
        [received] = self.recorder.messages
        self.assertEqual(received.data, MESSAGE)
        self.assertEqual([r.address for r in received.envelope.rcptTo], ["BOB@example.com"])

    def test_unknownMailboxRefusedLater(self) -> None:
        """
        An unknown recipient is refused after a second, and the commands pipelined after
        it wait for that answer.
        """
        client = self.connect()
        replies = client.send(
            "MAIL FROM:<alice@example.org>", "RCPT TO:<carol@example.com>", "NOOP"
        )
        self.assertEqual(codes(replies), [250])
        self.clock.advance(1)
        replies = client.received()
        self.assertEqual(codes(replies), [550, 250])
        self.assertEqual(replies[0].text, "<carol@example.com>: no such mailbox here")
        self.assertEqual(client.session.data["refusedRecipients"], 1)

    def test_blockedSender(self) -> None:
        """
        A blocked sender is refused at MAIL FROM, and the client may try another.
        """
        client = self.connect()
        self.assertEqual(
            client.send("MAIL FROM:<Spammer@example.net>"),
            [ServerReply(550, ("Sender blocked",))],
        )
        self.assertEqual(codes(client.send("MAIL FROM:<alice@example.org>")), [250])

    def test_blockedClient(self) -> None:
        """
        A blocked client gets 554 instead of the greeting, then 503 to anything but
        QUIT.
        """
        client = MemoryClient(self.server, peer=("203.0.113.9", 40000))
        self.assertEqual(client.greeting, ServerReply(554, ("Go away",)))
        self.assertEqual(codes(client.send("EHLO mail.example.net")), [503])
        self.assertEqual(codes(client.send("QUIT")), [221])
        self.assertTrue(client.closed)
        self.assertEqual(self.recorder.sessions, [])

    def test_clientGoesAway(self) -> None:
        """
        A client that disconnects in the middle of a message leaves nothing behind.
        """
        client = self.connect()
        replies = client.send("MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.com>", "DATA")
        self.assertEqual(codes(replies), [250, 250, 354])
        client.write(b"Subject: half a message\r\n")
        client.disconnect()
        self.assertEqual(self.recorder.messages, [])
        self.assertEqual(self.recorder.closed, [client.session])
