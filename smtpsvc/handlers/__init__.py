"""
Built-in handlers: ready-made deliveries that ``twist smtpsvc --deliver`` and applications
can use.
"""

from .forward import ForwardDelivery
from .maildir import MaildirDelivery
from .relay import RelayPolicy

__all__ = ["ForwardDelivery", "MaildirDelivery", "RelayPolicy"]
