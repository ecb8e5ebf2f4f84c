"""
Run every check of ``make test`` and end with one summary line.

The checks are trial over the C{tests} package, mypy, ruff's linter, ruff's formatter and
the Sphinx build.  Each check's output is shown as it runs.  Trial counts its individual
tests; every other check counts as one.  The very last line printed is
C{N passed, N failed} (followed by C{, N skipped} when trial skipped tests), and the exit
status is non-zero when anything failed.

Run it with the virtual environment's Python, from anywhere: C{.venv/bin/python tests/checks.py}.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Trial's last status line: "PASSED (successes=3, skips=1)", "FAILED (errors=1)" or a bare
# "PASSED" when there is nothing to count.
_TRIAL_SUMMARY = re.compile(r"^(PASSED|FAILED)(?: \((?P<counts>[^)]*)\))?\s*$", re.MULTILINE)
_TRIAL_PASSED = ("successes", "expectedFailures")
_TRIAL_FAILED = ("failures", "errors", "unexpectedSuccesses")
_TRIAL_SKIPPED = ("skips",)


@dataclass
class Tally:
    """
    Counts of passed, failed and skipped results, and one line per check for the recap.
    """

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    recap: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """
        The final line: C{N passed, N failed}, with C{, N skipped} when something was.
        """
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        return line


@dataclass(frozen=True)
class TrialCounts:
    """
    What trial's summary line says.
    """

    passed: int
    failed: int
    skipped: int

    @property
    def total(self) -> int:
        """
        How many tests there were.
        """
        return self.passed + self.failed + self.skipped


def parseTrialSummary(output: str) -> TrialCounts | None:
    """
    Read the counts from trial's last summary line, or L{None} when there is none.
    """
    matches = list(_TRIAL_SUMMARY.finditer(output))
    if not matches:
        return None
    counts: dict[str, int] = {}
    for item in (matches[-1].group("counts") or "").split(","):
        key, sep, value = item.strip().partition("=")
        if sep and value.strip().isdigit():
            counts[key] = int(value)
    return TrialCounts(
        passed=sum(counts.get(k, 0) for k in _TRIAL_PASSED),
        failed=sum(counts.get(k, 0) for k in _TRIAL_FAILED),
        skipped=sum(counts.get(k, 0) for k in _TRIAL_SKIPPED),
    )


def run(name: str, argv: Sequence[str], echo: bool = True) -> tuple[int, str]:
    """
    Run one check from the repository root, echoing its output as it comes unless told not
    to, and return its exit status and output.  A check that cannot be started fails with
    status 127.
    """
    print(f"\n===== {name}: {' '.join(argv)}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as e:
        print(f"cannot run {argv[0]}: {e}", flush=True)
        return 127, ""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()
        lines.append(line)
    return process.wait(), "".join(lines)


def checkTrial(tally: Tally) -> None:
    """
    Run trial over the C{tests} package and count its individual results.
    """
    trial = [sys.executable, "-m", "twisted.trial"]
    # Distributed trial never exits when it finds no test at all, so count them first (a
    # module that fails to import counts as one test, an error) and run serially when there
    # are none.
    dryStatus, dryOutput = run("trial (counting tests)", [*trial, "--dry-run", "tests"], echo=False)
    dryCounts = parseTrialSummary(dryOutput)
    if dryStatus == 0 and dryCounts is not None and dryCounts.total == 0:
        status, output = run("trial", [*trial, "tests"])
    else:
        status, output = run("trial", [*trial, "--jobs", "2", "tests"])
    counts = parseTrialSummary(output)
    if counts is None:
        counts = TrialCounts(passed=0, failed=1 if status else 0, skipped=0)
    elif status and not counts.failed:
        # Trial said it failed without saying what: count it once.
        counts = TrialCounts(counts.passed, 1, counts.skipped)
    tally.passed += counts.passed
    tally.failed += counts.failed
    tally.skipped += counts.skipped
    tally.recap.append(
        f"trial: {counts.passed} passed, {counts.failed} failed, {counts.skipped} skipped"
    )


def checkOne(tally: Tally, name: str, argv: Sequence[str]) -> None:
    """
    Run a check that passes or fails as a whole.
    """
    status, _ = run(name, argv)
    if status == 0:
        tally.passed += 1
        tally.recap.append(f"{name}: passed")
    else:
        tally.failed += 1
        tally.recap.append(f"{name}: FAILED (exit status {status})")


def _commands(python: str) -> dict[str, list[str]]:
    # Every check but trial's, by name, each passing or failing as a whole.
    return {
        "mypy": [python, "-m", "mypy"],
        "ruff check": [python, "-m", "ruff", "check", "."],
        "ruff format": [python, "-m", "ruff", "format", "--check", "."],
        "sphinx": [
            python,
            *("-m", "sphinx", "-E", "-W", "--keep-going", "-b", "html"),
            *("docs", "docs/_build/html"),
        ],
    }


def main(names: Sequence[str] = ()) -> int:
    """
    Run every check (or only those named: C{trial}, C{mypy}, C{ruff check}, C{ruff
    format}, C{sphinx}), print the recap and the summary line, and return the exit status.
    """
    commands = _commands(sys.executable)
    unknown = set(names) - {"trial", *commands}
    if unknown:
        print(f"checks.py: unknown checks {sorted(unknown)}", file=sys.stderr)
        return 2
    tally = Tally()
    if not names or "trial" in names:
        checkTrial(tally)
    for name, argv in commands.items():
        if not names or name in names:
            checkOne(tally, name, argv)
    print("\n===== results", flush=True)
    for line in tally.recap:
        print(line)
    print(tally.summary(), flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
