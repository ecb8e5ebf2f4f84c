"""
A secure handler that lets in only relays with a verified client certificate for one of
a set of host names (docs/tls.rst).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from zope.interface import implementer

from smtpsvc import ISecureHandler, Session, SMTPError


@implementer(ISecureHandler)
class KnownRelays:
    """
    Lets in only relays with a verified certificate for one of our hosts.
    """

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def onSecure(self, session: Session, peerCertificate: x509.Certificate | None) -> None:
        if peerCertificate is None or not session.peerCertificateVerified:
            raise SMTPError(554, "5.7.1 Client certificate required")
        cn = peerCertificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not cn or cn[0].value not in self.names:
            raise SMTPError(554, "5.7.1 Unknown relay")
        session.data["relay"] = cn[0].value
