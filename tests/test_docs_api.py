"""
docs/api.rst names every public name of smtpsvc's public modules.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.rst"
PUBLIC_MODULES = (
    "smtpsvc",
    "smtpsvc.interfaces",
    "smtpsvc.handlers",
    "smtpsvc.cred",
    "smtpsvc.testing",
)


class APIPageTests(SynchronousTestCase):
    """
    The API page keeps up with the modules' C{__all__}.
    """

    def test_everyPublicNameListed(self) -> None:
        """
        Each name in the C{__all__} of a public module appears in that module's section.
        """
        page = API_PAGE.read_text(encoding="utf-8")
        sections = dict(
            re.findall(r"^``([\w.]+)``\n-+\n(.*?)(?=^``[\w.]+``\n-+\n|\Z)", page, re.M | re.S)
        )
        self.assertEqual(set(sections), set(PUBLIC_MODULES))
        for name in PUBLIC_MODULES:
            module = importlib.import_module(name)
            for public in module.__all__:
                self.assertIn(f"``{public}``", sections[name], f"{name}.{public}")
