"""
The runner behind ``make bench``: install the peers, run every workload on every server (a
fresh process each time, several runs interleaved), print the table and the targets, and
write everything to ``benchmarks/results/<timestamp>.json``.

``--quick`` is a smoke run (one run, smaller counts, a minute or two); the full mode (three
runs) stays well under twenty minutes on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import _report
from benchmarks._certs import makeCertificate
from benchmarks._peers import HERE, ROOT, Tools, findTools
from benchmarks._servers import Launch, ServerSpec
from benchmarks._workloads import FULL, QUICK, WORKLOADS, Context, Measurement, Sizes, measure

RESULTS = HERE / "results"


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark smtpsvc against twisted.mail, aiosmtpd, smtp-server and "
        "smtp-sink (issue 7).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: one run of smaller workloads"
    )
    parser.add_argument("--runs", type=int, help="runs per workload and server [3; 1 quick]")
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in WORKLOADS),
        help="comma-separated workloads to run [%(default)s]",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated servers to run besides smtpsvc, by peer or row name, e.g. "
        "twisted.mail,aiosmtpd,'smtpsvc --workers 2' [all that are installed]",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=VALUE",
        help="override one of the sizes, e.g. --set w1Messages=50000 (repeatable; the "
        "names are those of the results file's sizes)",
    )
    parser.add_argument(
        "--backlog",
        type=int,
        help="give every server this listen backlog [each server's default: 511 for smtpsvc "
        "(the service's), Twisted's 50 for twisted.mail, asyncio's 100, node's 511, 511 for "
        "smtp-sink]",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run smtpsvc (not its --workers row) under cProfile, write one statistics file "
        "per measurement into DIR and print the costliest functions (the figures are then "
        "inflated by the profiler)",
    )
    parser.add_argument(
        "--instructions",
        type=Path,
        metavar="DIR",
        help="run every server that is one process under valgrind's callgrind (output in "
        "DIR) and report the instructions it executes per unit of load: a count that other "
        "load on the machine does not move, unlike CPU time (which valgrind inflates 20 to "
        "50 times); the quick sizes and one run unless told otherwise",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="measure cold servers: skip the short unmeasured run of each workload first",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="skip peers that are not installed already"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="where the JSON goes [%(default)s]"
    )
    parser.add_argument(
        "--keep-logs", type=Path, help="copy the servers' output into this directory"
    )
    return parser.parse_args(argv)


def _override(sizes: Sizes, settings: Sequence[str]) -> Sizes:
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        current = getattr(sizes, name, None)
        if current is None or not text:
            raise ValueError(f"expected SIZE=VALUE with a size of {sorted(sizes.__dict__)}")
        changes[name] = type(current)(text)
    return dataclasses.replace(sizes, **changes)


def _raiseFileLimit(wanted: int = 65536) -> int:
    # W4 holds 5000 connections in this process and 5000 in the server, which inherits
    # the limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def _gitDescription() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+modified" if dirty else "")


def _available(spec: ServerSpec, tools: Tools, chosen: set[str]) -> str:
    # Why the server is skipped, or "".
    # smtpsvc itself always runs: the ratios are to it.
    if chosen and spec.label != "smtpsvc" and not {spec.label, spec.peer} & chosen:
        return "not chosen with --servers"
    return tools.missing.get(spec.peer, "")


def _progress(m: Measurement, unit: str) -> str:
    if not m.ok:
        return m.error
    text = (
        f"{m.throughput:.1f} {unit}/s, CPU {m.cpuPer1000:.3f} s/1000, {m.cores:.2f} cores, "
        f"client {m.clientCpu:.2f} s, peak {m.peakKiB / 1024:.1f} MiB, "
        f"growth {m.growthKiB / 1024:.1f} MiB"
    )
    if "rssPerConnectionKiB" in m.extra:
        text += f", {m.extra['rssPerConnectionKiB']:.2f} KiB/conn, greeted {m.extra['greeted']}"
    if m.listenOverflows:
        text += f", {m.listenOverflows} listen overflows"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the suite; the exit status is 1 when a measurement of smtpsvc failed.
    """
    options = _arguments(argv)
    if options.instructions:
        missing = [t for t in ("valgrind", "callgrind_control") if shutil.which(t) is None]
        if missing:
            print(f"--instructions needs {missing[0]} (apt-get install valgrind)", file=sys.stderr)
            return 2
        if options.profile:
            print("--instructions and --profile do not go together", file=sys.stderr)
            return 2
    sizes: Sizes = QUICK if options.quick or options.instructions else FULL
    try:
        sizes = _override(sizes, options.set)
    except ValueError as e:
        print(f"--set: {e}", file=sys.stderr)
        return 2
    if options.instructions:
        # Valgrind slows the servers 20 to 50 times; the counts still bound each workload.
        sizes = dataclasses.replace(
            sizes, timeout=sizes.timeout * 10, warmUpTimeout=sizes.warmUpTimeout * 10
        )
    runs = options.runs or (1 if options.quick or options.instructions else 3)
    keys = [k.strip() for k in options.workloads.split(",") if k.strip()]
    unknown = sorted(set(keys) - {w.key for w in WORKLOADS})
    if unknown:
        print(f"unknown workload {unknown[0]}", file=sys.stderr)
        return 2
    workloads = [w for w in WORKLOADS if w.key in keys]
    chosen = {s.strip() for s in options.servers.split(",") if s.strip()}
    files = _raiseFileLimit()
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()

    print("Peers:", flush=True)
    tools = findTools(install=not options.no_install)
    for name, version in sorted(tools.versions.items()):
        print(f"  {name} {version}")
    for name, why in sorted(tools.missing.items()):
        print(f"  {name}: skipped: {why}")
    if tools.smtpSource is None:
        print("  W1 uses this suite's own Python client (smtp-source is missing)")
    mode = "quick" if options.quick else "full"
    if options.instructions:
        mode = "instructions"
    print(
        f"Mode {mode}: {runs} run(s); {os.cpu_count()} CPUs; file limit {files}; "
        f"smtpsvc at {_gitDescription()}",
        flush=True,
    )

    measurements: list[Measurement] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="smtpsvc-bench-") as temporary:
        workdir = Path(temporary)
        logs = workdir / "logs"
        logs.mkdir()
        cert, key = makeCertificate(workdir)
        if options.profile:
            options.profile = options.profile.resolve()
            options.profile.mkdir(parents=True, exist_ok=True)
        if options.instructions:
            options.instructions = options.instructions.resolve()
            options.instructions.mkdir(parents=True, exist_ok=True)
        launch = Launch(
            tools, cert, key, workdir, options.backlog, options.profile, options.instructions
        )
        context = Context(sizes, tools, warmUp=not options.no_warm_up)
        for run in range(1, runs + 1):
            for workload in workloads:
                for spec in workload.servers:
                    why = _available(spec, tools, chosen)
                    if why:
                        skipped[spec.label] = why
                        continue
                    print(f"run {run}/{runs} {workload.key} {spec.label}: ", end="", flush=True)
                    m = measure(workload, spec, run, launch, context, logs)
                    measurements.append(m)
                    print(_progress(m, workload.unit), flush=True)
        if options.keep_logs:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in logs.iterdir():
                (options.keep_logs / log.name).write_bytes(log.read_bytes())

    rows = [row for w in workloads for row in _report.summarise(w, measurements)]
    rows = [row for row in rows if row.runs]
    found = [] if options.instructions else _report.targets(rows, sizes)
    print()
    print(_report.table(workloads, rows, sizes))
    print()
    if options.instructions:
        print("Targets not checked: they are timings, which valgrind inflates 20 to 50 times.")
        print()
        print(_report.instructionTable(workloads, rows))
    else:
        print(_report.targetLines(found))

    if options.profile:
        print()
        print(_report.profiles(sorted(options.profile.glob("*.prof"))))

    finished = datetime.datetime.now(datetime.UTC)
    document: dict[str, Any] = {
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": round(time.monotonic() - clock, 1),
        "mode": mode,
        "runs": runs,
        "sizes": sizes.__dict__,
        "backlog": options.backlog,
        "profiled": bool(options.profile),
        "instructions": bool(options.instructions),
        "warmUp": not options.no_warm_up,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "smtpsvc": _gitDescription(),
        "versions": tools.versions,
        "skipped": skipped,
        "measurements": [m.asJSON() for m in measurements],
        "summary": [row.asJSON() for row in rows],
        "targets": [t.__dict__ for t in found],
    }
    options.output.mkdir(parents=True, exist_ok=True)
    path = options.output / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nResults: {path}  ({document['seconds']:.0f} s)")
    failedOurs = [m for m in measurements if m.server.startswith("smtpsvc") and not m.ok]
    return 1 if failedOurs else 0
