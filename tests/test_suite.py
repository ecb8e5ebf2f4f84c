"""
The test suite's own machinery (see C{tests/__init__.py}).
"""

from __future__ import annotations

from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from . import FailTestWithNotes


class FailureReportTests(SynchronousTestCase):
    """
    A failed assertion's report says what Hypothesis found.
    """

    def test_falsifyingExampleInTheMessage(self) -> None:
        """
        The message trial reports for a failing property test names the example that
        failed, which Hypothesis gives in a note.
        """

        class Inner(SynchronousTestCase):
            @settings(database=None, max_examples=200, deadline=None)
            @given(st.integers(min_value=0))
            def test_small(self, n: int) -> None:
                self.assertLess(n, 10)

        result = TestResult()
        Inner("test_small").run(result)
        # trial's results hold Failures where the standard library's hold strings.
        [(_, failure)] = cast("list[tuple[object, Failure]]", result.failures)
        message = failure.getErrorMessage()
        self.assertTrue(message.startswith("10 not less than 10\n"), message)
        self.assertIn("test_small(", message)
        self.assertIn("n=10,", message)

    def test_withoutNotes(self) -> None:
        """
        A failure without notes reads as trial's own.
        """
        self.assertEqual(str(FailTestWithNotes("a != b")), "a != b")
