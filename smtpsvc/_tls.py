"""
TLS for the server: certificates, SNI, client certificates, rotation.

L{ServerTLS} is an L{IOpenSSLServerConnectionCreator}: Twisted asks it for a new
L{OpenSSL.SSL.Connection} for each handshake, implicit or after STARTTLS alike.  It holds
an immutable L{_ContextMap}, a default context plus one context per SNI name, each built
completely before it is ever used (OpenSSL does not allow changing a context once a
connection uses it).  The default context's servername callback picks the context for the
name the client asked for.  L{ServerTLS.update} builds a whole new map and swaps it in one
assignment, so a handshake sees either the old certificates or the new ones, never a mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from ._core._grammar import aLabels
from ._core._session import TLSInfo
from ._options import HOST_LABEL

_log = Logger(namespace="smtpsvc.tls")

PEM = bytes | str

_VERSIONS: Final = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}


class TLSConfigurationError(ValueError):
    """
    A certificate, key or TLS option cannot be used; the message says which and why.

    @ivar part: what of a certificate and its key is wrong, for those who name the files
        they came from: C{"cert"}, C{"key"}, C{"pair"} (they do not belong together), or
        L{None} for anything else.
    """

    def __init__(self, message: str, part: str | None = None) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class TLSSettings:
    """
    Everything that shapes the TLS contexts, taken from the server's options.
    """

    key: PEM | None
    cert: PEM | None
    ca: PEM | None
    requestCert: bool
    rejectUnauthorized: bool
    minVersion: str
    maxVersion: str | None
    ciphers: str | None
    honorCipherOrder: bool
    sniOptions: Mapping[str, Mapping[str, PEM]]
    SNICallback: Callable[[str], Mapping[str, PEM] | None] | None
    name: str


class _ConnectionRecord:
    """
    What we learn about one TLS connection during its handshake.
    """

    def __init__(self) -> None:
        self.verifyErrors: list[int] = []


# Twisted keeps the connection's app data for itself, so what we learn during a
# handshake is kept here, for as long as the connection lives.
_records: weakref.WeakKeyDictionary[SSL.Connection, _ConnectionRecord] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _ContextMap:
    default: SSL.Context
    byName: Mapping[str, SSL.Context]
    wildcards: Mapping[str, SSL.Context]

    def lookup(self, name: str) -> SSL.Context | None:
        found = self.byName.get(name)
        if found is None and "." in name:
            # "*.example.com" covers one label: a.example.com, not a.b.example.com.
            found = self.wildcards.get(name.split(".", 1)[1])
        return found


def _asBytes(pem: PEM) -> bytes:
    # (Text around the PEM blocks, such as "Subject: CN=Müller" lines, may be anything.)
    return pem.encode("utf-8") if isinstance(pem, str) else pem


#: How many contexts made from what SNICallback returned are kept (the least recently
#: made are dropped first), so that a callback that returns new PEM data for each
#: handshake does not fill memory.
_CALLBACK_CONTEXTS: Final = 1000


def _callbackPair(entry: object) -> tuple[bytes, bytes]:
    # The key and certificate SNICallback returned (other than None), as PEM bytes.
    if not isinstance(entry, Mapping) or "key" not in entry or "cert" not in entry:
        raise TLSConfigurationError(
            f"SNICallback must return None or a mapping with a key and a cert, not {entry!r:.80}"
        )
    key, cert = entry["key"], entry["cert"]
    if not isinstance(key, (bytes, str)) or not isinstance(cert, (bytes, str)):
        raise TLSConfigurationError("SNICallback's key and cert must be PEM data (bytes or str)")
    return _asBytes(key), _asBytes(cert)


def loadCertificates(pem: PEM, what: str = "certificate") -> list[x509.Certificate]:
    """
    Every certificate in a PEM text (a certificate followed by its chain).

    @raise TLSConfigurationError: if there is none or one is malformed.
    """
    try:
        certificates = x509.load_pem_x509_certificates(_asBytes(pem))
    except ValueError as e:
        raise TLSConfigurationError(f"cannot read the {what}: {e}", "cert") from e
    if not certificates:
        raise TLSConfigurationError(f"no {what} found in the PEM data", "cert")
    return certificates


def loadPrivateKey(pem: PEM) -> Any:
    """
    The private key in a PEM text.

    @raise TLSConfigurationError: if it cannot be read (or is encrypted).
    """
    try:
        return serialization.load_pem_private_key(_asBytes(pem), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigurationError(f"cannot read the private key: {e}", "key") from e


def loadKeyPair(cert: PEM, key: PEM) -> tuple[list[x509.Certificate], Any]:
    """
    The certificates of a PEM text (a certificate followed by its chain) and the private
    key of another (or the same), checked to belong together.

    @raise TLSConfigurationError: if either cannot be read, or the key is not the
        certificate's (its C{part} says which).
    """
    certificates = loadCertificates(cert)
    privateKey = loadPrivateKey(key)
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificates[0].public_key().public_bytes(der, spki) != privateKey.public_key().public_bytes(
        der, spki
    ):
        raise TLSConfigurationError("the private key does not match the certificate", "pair")
    return certificates, privateKey


def developmentCertificate(name: str) -> tuple[bytes, bytes]:
    """
    A fresh self-signed certificate and key for C{name}, valid for a year, for
    development: made at start-up, never shipped.

    @return: (key PEM, certificate PEM).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    if name != "localhost":
        names.append(x509.DNSName("localhost"))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        certificate.public_bytes(serialization.Encoding.PEM),
    )


def warnDevelopment(name: str) -> None:
    """
    Log that a development certificate is in use.
    """
    _log.warn(
        "No certificate given: using a self-signed development certificate for {name}; "
        "clients will not trust it",
        name=name,
    )


def normalizeServerName(name: str) -> str:
    """
    A host name as SNI sends it: lower case, A-labels, no trailing dot.
    """
    return aLabels(name.strip().rstrip(".").lower())


# A label of a host name (the rule the name option is checked with too).
_LABEL: Final = HOST_LABEL


def checkedHostName(name: str, *, wildcard: bool = False) -> str:
    """
    C{name} as SNI sends it (L{normalizeServerName}), checked to be a host name: labels
    of letters, digits, hyphens and underscores, 253 characters at most.  A name that is not one can
    never match a name a client sends, or a domain in an address.

    @param wildcard: whether C{*.example.com} is allowed too: a C{*} that is the whole
        first label, before at least two others (it covers one label, see
        L{certificateProblems}).
    @raise ValueError: saying what is wrong, as a predicate: C{"not a host name (...)"}.
    """
    try:
        normalized = normalizeServerName(name)
    except UnicodeError:
        raise ValueError("not a host name: it has no A-label form (IDNA)") from None
    labels = normalized.split(".")
    if wildcard and labels[0] == "*":
        if len(labels) < 3:
            raise ValueError(
                "not a host name pattern: a * stands for one label before at least two "
                "others, as in *.example.com"
            )
        labels = labels[1:]
    if len(normalized) > 253 or not all(_LABEL.match(label) for label in labels):
        star = "; a * may only be the whole first label" if wildcard else ""
        raise ValueError(
            f"not a host name (labels of letters, digits, hyphens and underscores, joined by "
            f"dots{star})"
        )
    return normalized


# -- what MTA-STS and DANE senders will refuse --------------------------------------------
#
# A sender with an MTA-STS policy (RFC 8461) checks that the MX certificate is unexpired
# and has a subjectAltName DNS-ID matching the MX host name, where "*" may only be the
# whole leftmost label; the subject's CN does not count.  Senders with a DANE-TA TLSA
# record (RFC 7672) check the name too.  Whether the chain leads to a trusted root is not
# checked here: that depends on each sender's trust store, not on this file.

#: Why a problem matters, said once for every warning.
_CONSEQUENCE: Final = (
    "senders with an MTA-STS policy (or a DANE-TA TLSA record) for this host will not "
    "deliver to it: they keep the mail queued, and in the end bounce it"
)


@dataclass(frozen=True)
class TLSProblem:
    """
    Something in the TLS configuration that MTA-STS or DANE senders will refuse.

    @ivar problem: what kind of problem: C{"name"} (the certificate does not cover the
        host name), C{"expired"}, C{"notYetValid"}, C{"minVersion"} or C{"maxVersion"}.
    @ivar name: the host name concerned.
    @ivar text: a sentence saying what is wrong and why it matters.
    """

    problem: str
    name: str
    text: str


def _dnsPatternCovers(pattern: str, name: str) -> bool:
    """
    Whether the subjectAltName DNS-ID C{pattern} covers C{name} (both normalised).
    """
    if pattern == name:
        return True
    # "*" must be the whole leftmost label, over at least two labels, and covers one
    # label: *.example.com covers mx.example.com, not a.mx.example.com, not example.com.
    if not pattern.startswith("*.") or "*" in pattern[2:] or "." not in pattern[2:]:
        return False
    first, dot, rest = name.partition(".")
    return bool(first and dot) and first != "*" and rest == pattern[2:]


def _covered(san: x509.SubjectAlternativeName | None, name: str) -> bool:
    if san is None:
        return False
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return address in san.get_values_for_type(x509.IPAddress)
    for pattern in san.get_values_for_type(x509.DNSName):
        try:
            if _dnsPatternCovers(normalizeServerName(pattern), name):
                return True
        except UnicodeError:
            continue
    return False


def certificateProblems(
    certificate: x509.Certificate | PEM, name: str, now: datetime.datetime | None = None
) -> list[TLSProblem]:
    """
    What MTA-STS and DANE senders will refuse in the certificate a server serves for
    C{name}: a C{name} that no subjectAltName DNS-ID covers, expiry, or a start of
    validity still to come.  Only the leaf certificate (the first of a chain) is checked.

    @param certificate: the certificate, or PEM text whose first certificate is the leaf.
    @param name: the host name clients connect to (an SNI wildcard such as
        C{*.example.com} must be in the subjectAltName as it is).
    @param now: the time to check validity at; the current time by default.
    @raise TLSConfigurationError: when PEM text holds no readable certificate.
    """
    if not isinstance(certificate, x509.Certificate):
        certificate = loadCertificates(certificate)[0]
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    problems = []
    try:
        normalized = normalizeServerName(name)
    except UnicodeError:
        normalized = name
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if not _covered(san, normalized):
        names = ", ".join(san.get_values_for_type(x509.DNSName)) if san is not None else ""
        has = (
            f"its subjectAltName DNS names are {names}"
            if names
            else "it has no subjectAltName DNS names"
        )
        problems.append(
            TLSProblem(
                "name",
                name,
                f"The certificate does not cover {name}: {has} (the subject's CN does not "
                f"count, and a *. name covers one leftmost label only); {_CONSEQUENCE}",
            )
        )
    notAfter, notBefore = certificate.not_valid_after_utc, certificate.not_valid_before_utc
    if now > notAfter:
        problems.append(
            TLSProblem(
                "expired",
                name,
                f"The certificate for {name} expired on {notAfter:%Y-%m-%d %H:%M} UTC; "
                f"{_CONSEQUENCE}",
            )
        )
    if now < notBefore:
        problems.append(
            TLSProblem(
                "notYetValid",
                name,
                f"The certificate for {name} is not valid yet (not before "
                f"{notBefore:%Y-%m-%d %H:%M} UTC); {_CONSEQUENCE}",
            )
        )
    return problems


def versionProblems(name: str, minVersion: str, maxVersion: str | None) -> list[TLSProblem]:
    """
    The protocol versions MTA-STS does not want: a minimum below TLS 1.2 (RFC 8461 asks
    for TLS 1.2 or later, and RFC 8996 retired 1.0 and 1.1), or a maximum below it, which
    leaves such senders no version at all.

    @param name: the server's host name, to say which server the problem is about.
    """
    floor = _VERSIONS["TLSv1.2"]
    problems = []
    if _VERSIONS.get(minVersion, floor) < floor:
        problems.append(
            TLSProblem(
                "minVersion",
                name,
                f"The minimum TLS version (minVersion) {minVersion} allows versions below "
                "TLSv1.2: MTA-STS (RFC 8461) asks for TLS 1.2 or later, and RFC 8996 "
                "retired TLS 1.0 and 1.1; set minVersion to TLSv1.2",
            )
        )
    if maxVersion is not None and _VERSIONS.get(maxVersion, floor) < floor:
        problems.append(
            TLSProblem(
                "maxVersion",
                name,
                f"The maximum TLS version (maxVersion) {maxVersion} is below TLSv1.2, the "
                f"least MTA-STS senders accept; {_CONSEQUENCE}",
            )
        )
    return problems


def settingsProblems(
    settings: TLSSettings, *, checkDefault: bool = True, now: datetime.datetime | None = None
) -> list[TLSProblem]:
    """
    Every L{TLSProblem} of a TLS configuration: its versions, its default certificate
    for its C{name}, and each SNI certificate for its host name.

    @param checkDefault: whether to check the default certificate (not the development
        certificate, which has its own warning).
    @raise TLSConfigurationError: when a certificate cannot be read.
    """
    problems = versionProblems(settings.name, settings.minVersion, settings.maxVersion)
    if checkDefault and settings.cert is not None:
        problems += certificateProblems(settings.cert, settings.name, now)
    for host, entry in settings.sniOptions.items():
        if "cert" in entry:
            problems += certificateProblems(entry["cert"], host, now)
    return problems


def warnTLSProblems(settings: TLSSettings, *, checkDefault: bool = True) -> list[TLSProblem]:
    """
    Log a warning for each of L{settingsProblems}: MTA-STS and DANE senders would not
    deliver, but the server still serves everyone else.

    @return: the problems.
    """
    problems = settingsProblems(settings, checkDefault=checkDefault)
    _warnProblems(problems)
    return problems


def _warnProblems(problems: list[TLSProblem]) -> None:
    for problem in problems:
        _log.warn(
            "{text}",
            name=problem.name,
            problem=problem.problem,
            text=problem.text,
        )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Makes the server side of every TLS connection, choosing the certificate by SNI.
    """

    def __init__(self, settings: TLSSettings) -> None:
        self._settings = settings
        self._callbackContexts: dict[object, SSL.Context | None] = {}
        # The (certificate, name) pairs whose name SNICallback's certificate was checked
        # for (the last _CALLBACK_CONTEXTS of them).
        self._callbackNames: dict[tuple[object, str], None] = {}
        self._development: tuple[str, bytes, bytes] | None = None
        self._map = self._build(settings)

    @property
    def settings(self) -> TLSSettings:
        """
        The settings the current contexts were built from.
        """
        return self._settings

    def update(self, settings: TLSSettings) -> None:
        """
        Build contexts from new settings and use them for every later handshake.
        Connections already established keep what they negotiated.

        @raise TLSConfigurationError: when the new settings are unusable; the old
            contexts then stay in use.
        """
        new = self._build(settings)
        self._settings = settings
        self._callbackContexts = {}
        self._callbackNames = {}
        self._map = new

    # -- building contexts -----------------------------------------------------------------

    def _build(self, settings: TLSSettings) -> _ContextMap:
        key, cert = settings.key, settings.cert
        if (key is None) != (cert is None):
            raise TLSConfigurationError("a certificate needs its key, and a key its certificate")
        if key is None or cert is None:
            # Made once per server: rotating other options keeps the same certificate.
            if self._development is None or self._development[0] != settings.name:
                warnDevelopment(settings.name)
                self._development = (settings.name, *developmentCertificate(settings.name))
            _, key, cert = self._development
        default = self._context(settings, key, cert, default=True)
        _checkHandshake(settings, key, cert)
        byName: dict[str, SSL.Context] = {}
        wildcards: dict[str, SSL.Context] = {}
        for host, entry in settings.sniOptions.items():
            if "key" not in entry or "cert" not in entry:
                raise TLSConfigurationError(f"the SNI entry for {host!r} needs a key and a cert")
            try:
                context = self._context(settings, entry["key"], entry["cert"], default=False)
                _checkHandshake(settings, entry["key"], entry["cert"])
            except TLSConfigurationError as e:
                raise TLSConfigurationError(f"SNI certificate for {host}: {e}") from e
            try:
                name = checkedHostName(host, wildcard=True)
            except ValueError as e:
                raise TLSConfigurationError(f"option sniOptions: {host!r} is {e}") from e
            if name.startswith("*."):
                wildcards[name[2:]] = context
            else:
                byName[name] = context
        return _ContextMap(default, byName, wildcards)

    def _context(self, settings: TLSSettings, key: PEM, cert: PEM, default: bool) -> SSL.Context:
        context = _serverContext(settings, key, cert)
        # Sessions resumed across contexts must belong to this server.
        context.set_session_id(b"smtpsvc")
        if settings.requestCert:
            # A resumed session skips certificate verification, so whether the client's
            # certificate verified would not be known: no resumption with client
            # certificates.
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            context.set_options(SSL.OP_NO_TICKET)
            mode = SSL.VERIFY_PEER
            if settings.rejectUnauthorized:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, self._verify)
            if settings.ca is not None:
                store = context.get_cert_store()
                assert store is not None
                for authority in loadCertificates(settings.ca, "CA certificate"):
                    store.add_cert(crypto.X509.from_cryptography(authority))
                    context.add_client_ca(authority)
        if default:
            context.set_tlsext_servername_callback(self._selectContext)
        return context

    # -- handshakes ------------------------------------------------------------------------

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._map.default, None)
        _records[connection] = _ConnectionRecord()
        return connection

    def _verify(
        self, connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            record = _records.get(connection)
            if record is not None:
                record.verifyErrors.append(error)
            return not self._settings.rejectUnauthorized
        return True

    def _selectContext(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        try:
            name = normalizeServerName(raw.decode("ascii"))
        except (UnicodeError, ValueError):
            # Not a host name as RFC 6066 section 3 has them (A-labels): it names nothing
            # of ours, and the default certificate serves.
            return
        try:
            context = self._lookup(name)
        except Exception:
            # An exception must not escape into OpenSSL; the default certificate serves.
            _log.failure("SNI selection failed for {servername}", servername=name)
            return
        if context is not None:
            connection.set_context(context)

    def _lookup(self, name: str) -> SSL.Context | None:
        callback = self._settings.SNICallback
        if callback is not None:
            entry = callback(name)
            if entry is None:
                return None
            try:
                key, cert = _callbackPair(entry)
            except TLSConfigurationError as e:
                self._unusable(name, repr(entry), e)
                return None
            cacheKey = (key, cert)
            if cacheKey in self._callbackContexts:
                context = self._callbackContexts[cacheKey]
                if context is not None and (cacheKey, name) not in self._callbackNames:
                    # Built for another name: whether it covers this one is still to be
                    # said, once.
                    self._checkedFor(cacheKey, name)
                    _warnProblems(
                        [p for p in certificateProblems(cert, name) if p.problem == "name"]
                    )
                return context
            try:
                context = self._context(self._settings, key, cert, default=False)
                # The checks every sniOptions certificate meets at start: one the cipher
                # list leaves no suite for would fail the handshake it was chosen for.
                _checkHandshake(self._settings, key, cert)
            except TLSConfigurationError as e:
                self._unusable(name, cacheKey, e)
                return None
            # And the warnings an sniOptions certificate gets at start (expired, not for
            # this name...), when first returned: it serves all the same, as those do.
            _warnProblems(certificateProblems(cert, name))
            self._checkedFor(cacheKey, name)
            self._remember(cacheKey, context)
            return context
        return self._map.lookup(name)

    def _unusable(self, name: str, cacheKey: object, error: TLSConfigurationError) -> None:
        # What SNICallback returned cannot serve: said once (until it returns something
        # else), and the default certificate serves meanwhile.
        if cacheKey not in self._callbackContexts:
            _log.warn(
                "SNICallback's certificate for {servername} is unusable, the default "
                "certificate serves: {why}",
                servername=name,
                why=str(error),
            )
            self._remember(cacheKey, None)

    def _checkedFor(self, cacheKey: object, name: str) -> None:
        names = self._callbackNames
        if len(names) >= _CALLBACK_CONTEXTS:
            del names[next(iter(names))]
        names[cacheKey, name] = None

    def _remember(self, cacheKey: object, context: SSL.Context | None) -> None:
        contexts = self._callbackContexts
        if len(contexts) >= _CALLBACK_CONTEXTS:
            del contexts[next(iter(contexts))]
        contexts[cacheKey] = context


def _serverContext(settings: TLSSettings, key: PEM, cert: PEM) -> SSL.Context:
    # A server context with a certificate and its key, and the versions and ciphers of
    # the settings: what every handshake needs, before client certificates and SNI.
    certificates, privateKey = loadKeyPair(cert, key)
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_min_proto_version(_VERSIONS[settings.minVersion])
        if settings.maxVersion is not None:
            context.set_max_proto_version(_VERSIONS[settings.maxVersion])
    except KeyError as e:
        raise TLSConfigurationError(f"unknown TLS version {e.args[0]!r}") from e
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if settings.honorCipherOrder:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    context.set_options(options)
    if settings.ciphers:
        try:
            context.set_cipher_list(settings.ciphers.encode("ascii"))
        except SSL.Error as e:
            raise TLSConfigurationError(
                f"option ciphers {settings.ciphers!r} names no cipher OpenSSL can use"
            ) from e
    try:
        context.use_certificate(certificates[0])
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(privateKey)
        context.check_privatekey()
    except SSL.Error as e:
        raise TLSConfigurationError("the private key does not match the certificate", "pair") from e
    return context


#: How many times the two ends of the handshake of L{_checkHandshake} take turns at most
#: (a full TLS 1.2 handshake takes three or four).
_HANDSHAKE_TURNS: Final = 10


def _checkHandshake(settings: TLSSettings, key: PEM, cert: PEM) -> None:
    """
    Check, in memory, that a client that would take anything (any version, any cipher,
    no certificate checks) can complete a handshake with the server's certificate C{cert}
    and the versions and ciphers of C{settings}.  The cipher list applies to TLS 1.2 and
    older only and OpenSSL accepts it as long as it names some cipher, whatever the
    certificate: one that names only suites of another kind of key (ECDSA suites for an
    RSA certificate) with C{maxVersion} below TLS 1.3, or a version OpenSSL's security
    level refuses, would leave a server that starts and fails every handshake.

    Only lists of ciphers and versions that could leave nothing are checked (a handshake
    per certificate, at start and on reload): the defaults always leave TLS 1.3.

    @raise TLSConfigurationError: saying why no handshake can complete.
    """
    if not settings.ciphers and settings.maxVersion in (None, "TLSv1.3"):
        return
    server = SSL.Connection(_serverContext(settings, key, cert), None)
    server.set_accept_state()
    anything = SSL.Context(SSL.TLS_METHOD)
    anything.set_cipher_list(b"ALL:@SECLEVEL=0")
    client = SSL.Connection(anything, None)
    client.set_connect_state()
    done = {client: False, server: False}
    try:
        for _ in range(_HANDSHAKE_TURNS):
            for end, other in ((client, server), (server, client)):
                if not done[end]:
                    try:
                        end.do_handshake()
                        done[end] = True
                    except SSL.WantReadError:
                        pass
                with contextlib.suppress(SSL.WantReadError):
                    other.bio_write(end.bio_read(1 << 16))
            if all(done.values()):
                return
    except SSL.Error as e:
        errors = e.args[0] if e.args and isinstance(e.args[0], list) else []
        reason = ", ".join(str(error[-1]) for error in errors if error and error[-1])
        why = f" ({reason})" if reason else ""
        low, high = settings.minVersion, settings.maxVersion or "TLSv1.3"
        versions = low if low == high else f"{low} to {high}"
        kind = _keyKind(loadPrivateKey(key))
        if settings.ciphers:
            raise TLSConfigurationError(
                f"option ciphers {settings.ciphers!r} leaves no cipher suite for the "
                f"certificate, whose key is {kind}, at {versions}{why}: every "
                "handshake would fail"
            ) from e
        raise TLSConfigurationError(
            f"no cipher suite for the certificate, whose key is {kind}, is allowed "
            f"at {versions}{why}: every handshake would fail"
        ) from e
    raise TLSConfigurationError("no handshake with the certificate completes in memory")


def _keyKind(privateKey: Any) -> str:
    # What kind of key a certificate has, as cipher suite names say it.
    if isinstance(privateKey, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(privateKey, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    return type(privateKey).__name__.removesuffix("PrivateKey").removeprefix("_")


def connectionInfo(connection: SSL.Connection) -> tuple[TLSInfo, str | None, Any, bool]:
    """
    What a finished handshake settled: the cipher and version, the SNI name, the client's
    certificate (a L{cryptography.x509.Certificate}, or L{None}) and whether it verified.
    """
    name = connection.get_cipher_name() or ""
    version = connection.get_protocol_version_name()
    info = TLSInfo(name=name, standardName=standardCipherName(name), version=version)
    raw = connection.get_servername()
    servername = raw.decode("ascii", "replace").lower() if raw else None
    peer = connection.get_peer_certificate(as_cryptography=True)
    record = _records.get(connection)
    verified = peer is not None and record is not None and not record.verifyErrors
    return info, servername, peer, verified


_KEX: Final = {"ECDHE-RSA": "ECDHE_RSA", "ECDHE-ECDSA": "ECDHE_ECDSA", "DHE-RSA": "DHE_RSA"}
_SUITE: Final = re.compile(
    r"(?:(ECDHE-RSA|ECDHE-ECDSA|DHE-RSA)-)?(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)\Z"
)


def standardCipherName(name: str) -> str:
    """
    The IANA name of an OpenSSL cipher suite name where it can be derived (TLS 1.3 suites
    are already named so), else the OpenSSL name.
    """
    if name.startswith("TLS_"):
        return name
    match = _SUITE.match(name)
    if match is None:
        return name
    kex = _KEX.get(match.group(1) or "", "RSA")
    if match.group(2) == "CHACHA20-POLY1305":
        return f"TLS_{kex}_WITH_CHACHA20_POLY1305_SHA256"
    return f"TLS_{kex}_WITH_AES_{match.group(3)}_GCM_SHA{match.group(4)}"


def settingsFrom(options: Any) -> TLSSettings:
    """
    The TLS settings in a server's options: its options of the same names.
    """
    return TLSSettings(**{name: getattr(options, name) for name in TLS_SETTING_NAMES})


#: The server options that shape the TLS contexts.
TLS_SETTING_NAMES: Final = tuple(f.name for f in dataclasses.fields(TLSSettings))
