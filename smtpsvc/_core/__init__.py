"""
The pure protocol core: grammar, state table, replies, the DATA decoder and the
connection state machine.

Nothing in this package imports Twisted, zope or OpenSSL, or does any I/O; a test walks
its imports to keep it so.  The Twisted glue (L{smtpsvc._protocol}) feeds it bytes and
carries out what it returns.
"""
