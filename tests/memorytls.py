"""
Real TLS over iosim's in-memory transports, for tests: certificates made at test time,
a transport whose startTLS runs OpenSSL through memory BIOs, a small SMTP client, and
connections of it that said EHLO or completed STARTTLS.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import alsoProvides, implementer

from smtpsvc import SMTPServer
from smtpsvc.testing import ServerReply, parseReplies

from .protocol_support import codes


@dataclass(frozen=True)
class KeyPair:
    """
    A certificate and its key, both PEM.
    """

    cert: bytes
    key: bytes

    @property
    def certificate(self) -> x509.Certificate:
        """
        The certificate, loaded.
        """
        return x509.load_pem_x509_certificate(self.cert)

    @property
    def privateKey(self) -> ec.EllipticCurvePrivateKey:
        """
        The private key, loaded.
        """
        key = serialization.load_pem_private_key(self.key, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    @property
    def spkiSha256(self) -> str:
        """
        The SHA-256 of the public key (what a TLSA C{3 1 1} record publishes), in hex.
        """
        spki = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


#: What may stand in a subjectAltName: a DNS name, or an IP address.
SubjectName = str | ipaddress.IPv4Address | ipaddress.IPv6Address


def certify(
    cn: str,
    issuer: KeyPair | None = None,
    *,
    names: Sequence[SubjectName] | None = None,
    authority: bool = False,
    client: bool = False,
    validDays: tuple[int, int] = (-1, 30),
) -> KeyPair:
    """
    A new certificate for C{cn} with a new key, signed by C{issuer} (self-signed without
    one).  Every test certificate is made here; L{authority} and L{issue} keep the ones
    tests share.

    @param names: its subjectAltName, DNS names and IP addresses; C{[cn]} by default for
        a server certificate, none for an authority or a client certificate; an empty
        sequence leaves the extension out.
    @param authority: make it a CA that may sign certificates.
    @param client: make it a client certificate (for TLS client authentication) rather
        than a server certificate; neither is said of an authority.
    @param validDays: when it becomes valid and when it expires, in days from now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(cn)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=validDays[0]))
        .not_valid_after(now + datetime.timedelta(days=validDays[1]))
        .add_extension(x509.BasicConstraints(ca=authority, path_length=None), critical=True)
    )
    if authority:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names is None:
        names = () if authority or client else (cn,)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) if isinstance(n, str) else x509.IPAddress(n) for n in names]
            ),
            critical=False,
        )
    signer = issuer.privateKey if issuer is not None else key
    certificate = builder.sign(signer, hashes.SHA256())
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _pem(key))


def authority(cn: str = "smtpsvc test CA") -> KeyPair:
    """
    A self-signed certificate authority, the same one for each name.
    """
    # Through a cached function of a required argument: authority() and
    # authority("smtpsvc test CA") must be the same.
    return _authority(cn)


@cache
def _authority(cn: str) -> KeyPair:
    return certify(cn, authority=True)


@cache
def issue(cn: str, *, client: bool = False, ca: str = "smtpsvc test CA") -> KeyPair:
    """
    A certificate for C{cn} signed by the test authority C{ca}, the same one for each
    name and kind.
    """
    return certify(cn, authority(ca), client=client)


def commonName(certificate: x509.Certificate | None) -> str | None:
    """
    The CN of a certificate.
    """
    if certificate is None:
        return None
    value = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    The client side of a test handshake: sends C{servername} as SNI (bytes as they are),
    verifies nothing (so a test can look at whatever certificate it was served), and may
    present a client certificate.
    """

    def __init__(
        self,
        servername: str | bytes | None = None,
        certificate: KeyPair | None = None,
        maxVersion: int | None = None,
    ) -> None:
        self.servername = servername
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        if maxVersion is not None:
            context.set_min_proto_version(0)
            context.set_max_proto_version(maxVersion)
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        if certificate is not None:
            context.use_certificate(certificate.certificate)
            context.use_privatekey(certificate.privateKey)
        self.context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        name = self.servername
        if name is not None:
            connection.set_tlsext_host_name(
                name if isinstance(name, bytes) else name.encode("idna")
            )
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


class _Raw:
    """
    The transport under the TLS layer: writes go out as they are.
    """

    def __init__(self, transport: TLSMemoryTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        FakeTransport.write(self._transport, data)

    def writeSequence(self, data: list[bytes]) -> None:
        FakeTransport.write(self._transport, b"".join(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        FakeTransport.registerProducer(self._transport, producer, streaming)

    def unregisterProducer(self) -> None:
        FakeTransport.unregisterProducer(self._transport)

    def loseConnection(self) -> None:
        FakeTransport.loseConnection(self._transport)

    def abortConnection(self) -> None:
        FakeTransport.abortConnection(self._transport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TLSMemoryTransport(FakeTransport):
    """
    An iosim transport whose startTLS runs real TLS (as Twisted's TCP transports do): a
    L{TLSMemoryBIOProtocol} is put between the transport and the protocol.
    """

    tlsProtocol: TLSMemoryBIOProtocol | None = None
    clock: Clock | None = None

    def startTLS(self, contextFactory: Any, beNormal: bool = True) -> None:
        isClient = (not self.isServer) if beNormal else self.isServer
        producer, streaming = self.producer, self.streamingProducer
        if producer is not None:
            self.unregisterProducer()
        # Small TLS writes are gathered until the next turn of this clock.
        factory = TLSMemoryBIOFactory(
            contextFactory,
            isClient,
            None,  # type: ignore[arg-type]
            clock=self.clock,
        )
        tls = factory.protocol(factory, self.protocol, False)
        self.tlsProtocol = tls
        self.protocol = tls
        alsoProvides(self, ISSLTransport)
        tls.makeConnection(_Raw(self))
        if producer is not None:
            self.registerProducer(producer, bool(streaming))

    def write(self, data: bytes) -> None:
        if self.tlsProtocol is not None:
            self.tlsProtocol.write(data)
        else:
            FakeTransport.write(self, data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.tlsProtocol is not None:
            self.tlsProtocol.registerProducer(producer, streaming)
        else:
            FakeTransport.registerProducer(self, producer, streaming)

    def unregisterProducer(self) -> None:
        if self.tlsProtocol is not None:
            self.tlsProtocol.unregisterProducer()
        else:
            FakeTransport.unregisterProducer(self)

    def loseConnection(self) -> None:
        if self.tlsProtocol is not None:
            self.tlsProtocol.loseConnection()
        else:
            FakeTransport.loseConnection(self)

    def abortConnection(self) -> None:
        if self.tlsProtocol is not None:
            self.tlsProtocol.abortConnection()
        else:
            FakeTransport.abortConnection(self)

    def getHandle(self) -> SSL.Connection:
        assert self.tlsProtocol is not None
        return self.tlsProtocol.getHandle()  # type: ignore[no-any-return]

    def getPeerCertificate(self) -> Any:
        assert self.tlsProtocol is not None
        return self.tlsProtocol.getPeerCertificate()

    def servedCertificate(self) -> x509.Certificate | None:
        """
        On the client side: the certificate the server presented.
        """
        return self.getHandle().get_peer_certificate(as_cryptography=True)


class SMTPClient(Protocol):
    """
    A client that writes what it is told and keeps what it receives.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True

    def replies(self) -> list[ServerReply]:
        data, self.data = self.data, b""
        return parseReplies(data)


@dataclass
class Connection:
    """
    A server and a client joined in memory.
    """

    server: SMTPServer
    protocol: Any
    client: SMTPClient
    serverTransport: TLSMemoryTransport
    clientTransport: TLSMemoryTransport
    pump: IOPump

    @property
    def session(self) -> Any:
        return self.protocol.session

    def send(self, *lines: str) -> list[ServerReply]:
        self.client.transport.write(b"".join(line.encode() + b"\r\n" for line in lines))  # type: ignore[union-attr]
        self.pump.flush()
        return self.client.replies()

    def write(self, data: bytes) -> list[ServerReply]:
        self.client.transport.write(data)  # type: ignore[union-attr]
        self.pump.flush()
        return self.client.replies()

    def startTLS(self, creator: ClientTLS) -> None:
        self.clientTransport.startTLS(creator)
        self.pump.flush()

    @property
    def closed(self) -> bool:
        return bool(self.serverTransport.disconnecting or self.client.lost)


def connectTLS(
    server: SMTPServer, implicit: bool = False, creator: ClientTLS | None = None
) -> Connection:
    """
    Connect a client to C{server} in memory; with C{implicit}, the client starts TLS at
    once with C{creator}.  The server's reactor must be a L{Clock}.
    """
    clock = server.reactor
    assert isinstance(clock, Clock)
    serverProtocol = server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    serverProtocol.implicitTLS = implicit or server.options.secure
    client = SMTPClient()
    serverTransport = TLSMemoryTransport(
        serverProtocol,
        isServer=True,
        hostAddress=IPv4Address("TCP", "127.0.0.1", 465 if implicit else 25),
        peerAddress=IPv4Address("TCP", "192.0.2.1", 40000),
    )
    clientTransport = TLSMemoryTransport(client, isServer=False)
    serverTransport.clock = clientTransport.clock = clock
    pump = connect(
        serverProtocol, serverTransport, client, clientTransport, greet=False, clock=clock
    )
    if implicit or server.options.secure:
        clientTransport.startTLS(creator or ClientTLS())
    pump.flush()
    clock.advance(server.options.earlyTalkerDelay)
    pump.flush()
    return Connection(server, serverProtocol, client, serverTransport, clientTransport, pump)


def saidHello(
    server: SMTPServer,
    hello: str = "EHLO client.example",
    creator: ClientTLS | None = None,
) -> tuple[Connection, ServerReply]:
    """
    A connection (see L{connectTLS}: in clear until STARTTLS, or encrypted from the first
    byte when C{server} is secure, the client being C{creator}) that was greeted with 220
    and said C{hello}, which got 250.

    @return: the connection and the reply to C{hello}.
    """
    connection = connectTLS(server, creator=creator)
    greeting = connection.client.replies()
    assert codes(greeting) == [220], greeting
    replies = connection.send(hello)
    assert codes(replies) == [250], replies
    return connection, replies[0]


def upgraded(
    server: SMTPServer, servername: str | bytes | None = None, certificate: KeyPair | None = None
) -> Connection:
    """
    A connection that said C{EHLO client.example}, was offered STARTTLS and completed it
    (and has not said EHLO again), the client sending C{servername} as SNI and presenting
    C{certificate}.
    """
    connection, ehlo = saidHello(server)
    assert "STARTTLS" in ehlo.lines, ehlo
    replies = connection.send("STARTTLS")
    assert codes(replies) == [220], replies
    connection.startTLS(ClientTLS(servername, certificate))
    return connection


def connectInClear(server: SMTPServer) -> tuple[SMTPClient, TLSMemoryTransport, IOPump]:
    """
    Join a client to C{server} (one that starts TLS at once) as a client that does not:
    nothing has moved yet, and the pump leaves the server's clock alone.

    @return: the client, the server's transport and the pump.
    """
    protocol = server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1))
    client = SMTPClient()
    serverTransport = TLSMemoryTransport(protocol, isServer=True)
    clientTransport = TLSMemoryTransport(client, isServer=False)
    serverTransport.clock = clientTransport.clock = server.reactor
    pump = connect(protocol, serverTransport, client, clientTransport, greet=False)
    return client, serverTransport, pump
