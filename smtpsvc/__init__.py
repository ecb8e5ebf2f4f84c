"""
smtpsvc: an SMTP and LMTP server library and ``twist`` service for Twisted.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
