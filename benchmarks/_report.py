"""
From measurements to the report: the median of the runs with their spread, each peer's ratio
to smtpsvc, the printed table, and the issue's targets checked against this run.
"""

from __future__ import annotations

import io
import pstats
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._workloads import MB, Measurement, Sizes, Workload


@dataclass(frozen=True)
class Spread:
    """
    The median of some runs, with their minimum and maximum.
    """

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """
        The spread of C{values}, or L{None} when there are none.
        """
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values))


@dataclass
class Row:
    """
    One server on one workload, summarised over its runs.
    """

    workload: str
    server: str
    runs: int
    failed: list[str]
    throughput: Spread | None = None
    cpuPer1000: Spread | None = None
    peakMiB: Spread | None = None
    growthMiB: Spread | None = None
    cores: Spread | None = None
    clientCpuPer1000: Spread | None = None
    otherCores: Spread | None = None
    #: Under C{--instructions}: the server's instructions per unit (None: not counted).
    instructions: Spread | None = None
    throughputRatio: float | None = None
    cpuRatio: float | None = None
    instructionsRatio: float | None = None
    extra: dict[str, Spread | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def asJSON(self) -> dict[str, Any]:
        """
        The row as JSON data.
        """
        return asdict(self)


def _spread(runs: Sequence[Measurement], value: Callable[[Measurement], float]) -> Spread | None:
    return Spread.of([value(m) for m in runs])


def summarise(workload: Workload, measurements: Sequence[Measurement]) -> list[Row]:
    """
    One row per server of C{workload}, in its order; the ratios are to its first server.
    """
    rows = []
    for spec in workload.servers:
        mine = [m for m in measurements if m.workload == workload.key and m.server == spec.label]
        good = [m for m in mine if m.ok]
        row = Row(workload.key, spec.label, len(mine), [m.error for m in mine if not m.ok])
        if spec.remarks.get(workload.key):
            row.notes.append(spec.remarks[workload.key])
        if row.failed and all(error.startswith("n/a") for error in row.failed):
            row.notes.append(row.failed[0])
            row.failed = []
        row.throughput = _spread(good, lambda m: m.throughput)
        row.cpuPer1000 = _spread(good, lambda m: m.cpuPer1000)
        row.peakMiB = _spread(good, lambda m: m.peakKiB / 1024)
        row.growthMiB = _spread(good, lambda m: m.growthKiB / 1024)
        row.cores = _spread(good, lambda m: m.cores)
        row.clientCpuPer1000 = _spread(
            good, lambda m: 1000 * m.clientCpu / m.units if m.units else 0.0
        )
        row.otherCores = _spread(good, lambda m: m.otherCpu / m.wall if m.wall else 0.0)
        row.instructions = Spread.of([m.instructionsPerUnit for m in good if m.instructions])
        if row.otherCores and row.otherCores.high >= 0.25:
            row.notes.append(f"machine busy elsewhere: up to {row.otherCores.high:.2f} cores")
        overflows = sum(m.listenOverflows for m in mine)
        if overflows:
            row.notes.append(f"{overflows} listen-queue overflows")
        if workload.key == "W4":
            row.extra["rssPerConnectionKiB"] = _spread(
                good, lambda m: float(m.extra.get("rssPerConnectionKiB", 0.0))
            )
            # Greeted counts are worth showing for failed runs too.
            row.extra["greeted"] = _spread(mine, lambda m: float(m.extra.get("greeted", 0)))
        if spec.workers and good:
            # perProcessCpu is sorted, largest first: the workers, then the idle master.
            busy = [m for m in good if m.wall and len(m.perProcessCpu) > spec.workers]
            smaller = [m.perProcessCpu[spec.workers - 1] / m.wall for m in busy]
            row.extra["smallerWorkerCores"] = Spread.of(smaller)
        rows.append(row)
    base = rows[0] if rows else None
    for row in rows[1:]:
        if base is None:
            break
        if row.throughput and base.throughput and base.throughput.median:
            row.throughputRatio = row.throughput.median / base.throughput.median
        if row.cpuPer1000 and base.cpuPer1000 and base.cpuPer1000.median:
            row.cpuRatio = row.cpuPer1000.median / base.cpuPer1000.median
        if row.instructions and base.instructions:
            row.instructionsRatio = row.instructions.median / base.instructions.median
    if base is not None and (base.throughput or base.cpuPer1000):
        base.throughputRatio = 1.0 if base.throughput else None
        base.cpuRatio = 1.0 if base.cpuPer1000 else None
        base.instructionsRatio = 1.0 if base.instructions else None
    return rows


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(spread: Spread | None, runs: int) -> str:
    if spread is None:
        return "-"
    if runs < 2 or spread.low == spread.high:
        return _number(spread.median)
    return f"{_number(spread.median)} ({_number(spread.low)}-{_number(spread.high)})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(workloads: Sequence[Workload], rows: Sequence[Row], sizes: Sizes) -> str:
    """
    The plain-text table: per workload, one line per server, columns aligned.
    """
    lines = [
        "Medians of the runs (min-max in parentheses).  x smtpsvc: the peer's figure divided",
        "by smtpsvc's (throughput above 1: the peer is faster; CPU above 1: the peer costs more).",
        "CPU: the server's CPU seconds per 1000 units; cores: CPU seconds per wall second;",
        "growth: the peak RSS during the workload (VmHWM, reset after start-up and a short",
        "warm-up run) minus the RSS at that point; peak MiB: that peak.",
    ]
    header = (
        "server",
        "throughput",
        "x smtpsvc",
        "CPU/1000",
        "x smtpsvc",
        "cores",
        "peak MiB",
        "growth MiB",
        "notes",
    )
    for workload in workloads:
        mine = [r for r in rows if r.workload == workload.key]
        if not mine:
            continue
        unit = f"{workload.unit}/s"
        lines += ["", f"{workload.key} {workload.title(sizes)}  [throughput in {unit}]"]
        body = [header]
        for row in mine:
            notes = list(row.notes)
            for key, spread in row.extra.items():
                if spread is None:
                    continue
                if key == "rssPerConnectionKiB":
                    notes.insert(0, f"{_number(spread.median)} KiB/connection")
                elif key == "greeted":
                    notes.insert(
                        1,
                        f"greeted {spread.low:.0f}-{spread.high:.0f}"
                        if spread.low != spread.high
                        else f"greeted {spread.median:.0f}",
                    )
                elif key == "smallerWorkerCores":
                    notes.append(f"least busy worker {spread.median:.2f} cores")
            if row.failed:
                notes.append(f"{len(row.failed)}/{row.runs} runs failed: {row.failed[0][:140]}")
            body.append(
                (
                    row.server,
                    _cell(row.throughput, row.runs),
                    _ratio(row.throughputRatio),
                    _cell(row.cpuPer1000, row.runs),
                    _ratio(row.cpuRatio),
                    _cell(row.cores, 1),
                    _cell(row.peakMiB, 1),
                    _cell(row.growthMiB, row.runs),
                    "; ".join(notes),
                )
            )
        widths = [max(len(r[i]) for r in body) for i in range(len(header) - 1)]
        for r in body:
            cells = [r[0].ljust(widths[0])]
            cells += [c.rjust(w) for c, w in zip(r[1:-1], widths[1:], strict=True)]
            lines.append(("  " + "  ".join(cells) + "  " + r[-1]).rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """
    One of the issue's targets, checked: C{met} is L{None} when this run cannot tell.
    """

    name: str
    met: bool | None
    detail: str


def _find(rows: Sequence[Row], workload: str, server: str) -> Row | None:
    for row in rows:
        if row.workload == workload and row.server == server:
            return row
    return None


def _median(spread: Spread | None) -> float | None:
    return None if spread is None else spread.median


def _compare(
    name: str,
    ours: float | None,
    theirs: float | None,
    check: Callable[[float, float], bool],
    describe: Callable[[float, float], str],
) -> Target:
    if ours is None or theirs is None:
        return Target(name, None, "not measured in this run (a server failed or was skipped)")
    return Target(name, check(ours, theirs), describe(ours, theirs))


def targets(rows: Sequence[Row], sizes: Sizes) -> list[Target]:
    """
    The targets of issue 7, each against this run's medians.
    """

    def value(workload: str, server: str, what: str) -> float | None:
        row = _find(rows, workload, server)
        if row is None:
            return None
        if what in row.extra:
            return _median(row.extra[what])
        # (None when no run of the row was measured: a server that did not start.)
        spread: Spread | None = getattr(row, what, None)
        return _median(spread)

    found: list[Target] = []
    found.append(
        _compare(
            "W1: CPU per 1000 messages no more than smtp-server's",
            value("W1", "smtpsvc", "cpuPer1000"),
            value("W1", "smtp-server", "cpuPer1000"),
            lambda a, b: a <= b,
            lambda a, b: f"smtpsvc {a:.3f} s, smtp-server {b:.3f} s (ratio {a / b:.2f})",
        )
    )
    found.append(
        _compare(
            "W1: CPU per 1000 messages at most half of twisted.mail's",
            value("W1", "smtpsvc", "cpuPer1000"),
            value("W1", "twisted.mail", "cpuPer1000"),
            lambda a, b: a <= b / 2,
            lambda a, b: f"smtpsvc {a:.3f} s, twisted.mail {b:.3f} s (ratio {a / b:.2f})",
        )
    )
    found.append(
        _compare(
            "W2: sessions/s at least twisted.mail's (early-talker delay off)",
            value("W2", "smtpsvc", "throughput"),
            value("W2", "twisted.mail", "throughput"),
            lambda a, b: a >= b,
            lambda a, b: f"smtpsvc {a:.0f}/s, twisted.mail {b:.0f}/s (ratio {a / b:.2f})",
        )
    )
    for key in ("W3a", "W3b"):
        found.append(
            _compare(
                f"{key}: MB/s at least smtp-server's",
                value(key, "smtpsvc", "throughput"),
                value(key, "smtp-server", "throughput"),
                lambda a, b: a >= b,
                lambda a, b: f"smtpsvc {a:.1f} MB/s, smtp-server {b:.1f} MB/s (ratio {a / b:.2f})",
            )
        )
    growth = value("W3a", "smtpsvc", "growthMiB")
    found.append(
        Target(
            f"W3a: RSS growth under 8 MiB for the {sizes.w3Large // MB} MB message",
            None if growth is None else growth < 8,
            "not measured" if growth is None else f"smtpsvc grew {growth:.1f} MiB",
        )
    )
    perConnection = value("W4", "smtpsvc", "rssPerConnectionKiB")
    row = _find(rows, "W4", "smtpsvc")
    greeted = row.extra.get("greeted") if row else None
    allGreeted = greeted is not None and greeted.low >= sizes.w4Connections
    found.append(
        Target(
            "W4: under 4 KiB of RSS per idle connection",
            None if perConnection is None else perConnection < 4,
            "not measured"
            if perConnection is None
            else f"smtpsvc {perConnection:.2f} KiB per connection",
        )
    )
    found.append(
        Target(
            f"W4: all {sizes.w4Connections} connections greeted",
            None if greeted is None else allGreeted,
            "not measured"
            if greeted is None
            else f"greeted {greeted.low:.0f} (worst run) of {sizes.w4Connections}",
        )
    )
    found.append(
        _compare(
            "W5: sessions/s at least twisted.mail's",
            value("W5", "smtpsvc", "throughput"),
            value("W5", "twisted.mail", "throughput"),
            lambda a, b: a >= b,
            lambda a, b: f"smtpsvc {a:.0f}/s, twisted.mail {b:.0f}/s (ratio {a / b:.2f})",
        )
    )
    cores = value("W1", "smtpsvc --workers 2", "cores")
    least = value("W1", "smtpsvc --workers 2", "smallerWorkerCores")
    single = value("W1", "smtpsvc", "throughput")
    double = value("W1", "smtpsvc --workers 2", "throughput")
    detail = "not measured"
    met: bool | None = None
    if cores is not None and least is not None:
        # Both cores: each worker kept a core at least half busy, and together well over
        # one core (smtp-source needs some of the machine's two cores too).
        met = cores >= 1.3 and least >= 0.5
        detail = f"{cores:.2f} cores busy, the less busy worker {least:.2f} cores"
        if single and double:
            detail += f"; {double / single:.2f}x the messages/s of one process"
    found.append(Target("W1 with --workers 2 uses both cores", met, detail))
    return found


def targetLines(found: Sequence[Target]) -> str:
    """
    The targets as printed lines.
    """
    lines = ["Targets (issue 7), in this run:"]
    width = max(len(t.name) for t in found)
    for t in found:
        mark = {True: "met    ", False: "NOT met", None: "unknown"}[t.met]
        lines.append(f"  [{mark}] {t.name.ljust(width)}  {t.detail}")
    return "\n".join(lines)


def instructionTable(workloads: Sequence[Workload], rows: Sequence[Row]) -> str:
    """
    Under C{--instructions}: per workload, each server's instructions per unit of load
    (median of the runs, with the spread) and its ratio to smtpsvc's.
    """
    lines = []
    for workload in workloads:
        mine = [row for row in rows if row.workload == workload.key and row.throughput]
        if not any(row.instructions for row in mine):
            continue
        lines.append(f"{workload.key}: instructions per {workload.unit}")
        width = max(len(row.server) for row in mine)
        for row in mine:
            if row.instructions is None:
                text = "not counted (workers, or a change of user, escape valgrind)"
            else:
                cell = _cell(row.instructions, row.runs)
                text = f"{cell:>28}  x smtpsvc {_ratio(row.instructionsRatio)}"
            lines.append(f"  {row.server:<{width}}  {text}")
    if not lines:
        return "No instructions were counted."
    return "\n".join(lines)


def profiles(paths: Sequence[Path], count: int = 15) -> str:
    """
    For each cProfile statistics file, its costliest functions by own time.
    """
    parts = []
    for path in paths:
        stream = io.StringIO()
        try:
            stats = pstats.Stats(str(path), stream=stream)
        except (OSError, EOFError, TypeError, ValueError) as e:
            parts.append(f"{path.name}: unreadable ({e})")
            continue
        stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(count)
        # pstats opens with a blank line and the file name: keep from the totals on.
        text = stream.getvalue().strip()
        parts.append(f"== {path.stem} (cProfile, by own time)\n{text}")
    return "\n\n".join(parts) if parts else "No profile was written."
