"""
The benchmark suite: smtpsvc side by side with the servers users would pick instead.

Run it with ``make bench`` (or ``.venv/bin/python -m benchmarks``; ``--help`` lists the
options).  It installs its peers itself under ``benchmarks/.peers/``, starts each server as
its own process on 127.0.0.1, drives it with the workloads W1-W5 of issue 7, and writes
``benchmarks/results/<timestamp>.json`` beside a printed table.  ``make test`` never runs it.
"""
