"""
smtpsvc: an SMTP and LMTP server library and ``twist`` service for Twisted.

Build an L{SMTPServer} with handler objects that provide the interfaces in
L{smtpsvc.interfaces}, and L{SMTPServer.listen}.  Handlers refuse with L{SMTPError}; data
handlers read the message from an L{IMessageStream} (L{readMessage} gives it whole).
"""

from ._core._sasl import AuthRequest
from ._core._session import (
    Address,
    Envelope,
    EnvelopeDSN,
    RecipientDSN,
    Session,
    TLSInfo,
)
from ._errors import SMTPError
from ._options import ServerOptions
from ._server import SMTPServer
from ._stream import (
    MessageAborted,
    MessageDone,
    MessageRefused,
    MessageStream,
    MessageTooLarge,
    readMessage,
)
from .interfaces import (
    IAuthHandler,
    ICloseHandler,
    IConnectHandler,
    IDataCommandHandler,
    IDataHandler,
    IMailFromHandler,
    IMessageStream,
    IRcptToHandler,
    ISecureHandler,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Address",
    "AuthRequest",
    "Envelope",
    "EnvelopeDSN",
    "IAuthHandler",
    "ICloseHandler",
    "IConnectHandler",
    "IDataCommandHandler",
    "IDataHandler",
    "IMailFromHandler",
    "IMessageStream",
    "IRcptToHandler",
    "ISecureHandler",
    "MessageAborted",
    "MessageDone",
    "MessageRefused",
    "MessageStream",
    "MessageTooLarge",
    "RecipientDSN",
    "SMTPError",
    "SMTPServer",
    "ServerOptions",
    "Session",
    "TLSInfo",
    "__version__",
    "readMessage",
]
