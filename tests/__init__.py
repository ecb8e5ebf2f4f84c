"""
smtpsvc's tests, run by C{trial tests} (C{make test} runs them with the other checks).
"""

from __future__ import annotations

from twisted.trial.unittest import FailTest, SynchronousTestCase


class FailTestWithNotes(FailTest):
    """
    A failed assertion whose message carries its notes (PEP 678).

    Hypothesis names the example that failed in a note on the exception, and trial reports
    a failure by its message and frames alone: without this, a property test that fails in
    CI would not say which example to reproduce.
    """

    def __str__(self) -> str:
        return "\n".join([super().__str__(), *getattr(self, "__notes__", ())])


SynchronousTestCase.failureException = FailTestWithNotes
