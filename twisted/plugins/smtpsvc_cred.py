"""
A twisted.cred checker plugin: ``--auth scrypt:FILE`` checks passwords against an smtpsvc
password file of salted scrypt hashes (made with ``smtpsvc-passwd``).
"""

from __future__ import annotations

from typing import Any

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class ScryptCheckerFactory:
    """
    Makes L{smtpsvc.cred.PasswordFile} checkers.
    """

    authType = "scrypt"
    authHelp = (
        "Checks user names and passwords against a file of salted scrypt hashes, one "
        "user:hash per line, made and changed with the smtpsvc-passwd command.  The file "
        "is read again whenever it changes."
    )
    argStringFormat = "The path to the password file."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring: str = "") -> Any:
        from smtpsvc.cred import PasswordFile

        return PasswordFile(argstring)


scryptCheckerFactory = ScryptCheckerFactory()
