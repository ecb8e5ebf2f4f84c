"""
The pure core stays pure: its modules import only the standard library, each other, and
the libraries in L{PURE_LIBRARIES}.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "smtpsvc"

# The core, and the pure modules outside it that the core imports.
PURE = [
    *sorted(PACKAGE.joinpath("_core").glob("*.py")),
    PACKAGE / "_options.py",
    PACKAGE / "_errors.py",
]


# Libraries that compute and do nothing else (no I/O, no event loop): idna, for IDNA 2008
# A-labels, which the standard library's codec (IDNA 2003) gets wrong.
PURE_LIBRARIES = frozenset({"idna"})


def importsOf(path: Path) -> list[tuple[str, int]]:
    """
    Every module C{path} imports, as (absolute name or relative form, level).
    """
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def resolve(path: Path, module: str, level: int) -> Path | None:
    """
    The file a relative import in C{path} names, if it is one of ours.
    """
    base = path.parent
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*module.split(".")) if module else base
    if target.with_suffix(".py").exists():
        return target.with_suffix(".py")
    if (target / "__init__.py").exists():
        return target / "__init__.py"
    return None


class PurityTests(SynchronousTestCase):
    """
    The core has no Twisted, zope or OpenSSL in it.
    """

    def test_onlyStandardLibrary(self) -> None:
        """
        Absolute imports in the pure modules are all standard library, or one of the
        pure libraries.
        """
        offenders = []
        for path in PURE:
            for module, level in importsOf(path):
                top = module.split(".")[0]
                if (
                    level == 0
                    and top != "__future__"
                    and top not in sys.stdlib_module_names
                    and top not in PURE_LIBRARIES
                ):
                    offenders.append(f"{path.name}: {module}")
        self.assertEqual(offenders, [])

    def test_relativeImportsStayPure(self) -> None:
        """
        Relative imports in the pure modules lead only to other pure modules.
        """
        pure = {p.resolve() for p in PURE}
        offenders = []
        for path in PURE:
            for module, level in importsOf(path):
                if level == 0:
                    continue
                target = resolve(path, module, level)
                if target is None or target.resolve() not in pure:
                    offenders.append(f"{path.name}: {'.' * level}{module}")
        self.assertEqual(offenders, [])

    def test_checkerSeesImports(self) -> None:
        """
        The checker itself finds imports, so the tests above cannot pass vacuously.
        """
        names = [m for m, _ in importsOf(PACKAGE / "_protocol.py")]
        self.assertIn("twisted.protocols.basic", names)
