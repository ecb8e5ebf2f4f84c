"""
The ``twist smtpsvc`` plugin: a lazy pointer to L{smtpsvc.tap}, imported only when used.
"""

from twisted.application.service import ServiceMaker

smtpsvc = ServiceMaker("smtpsvc", "smtpsvc.tap", "An SMTP and LMTP server.", "smtpsvc")
