"""
Installing and finding the peers: aiosmtpd in its own venv and nodemailer's smtp-server in its
own node_modules, both under ``benchmarks/.peers/`` (ignored by git), and Postfix's
``smtp-sink``/``smtp-source`` from the Debian package ``postfix``.

What cannot be installed is reported with the reason, and its server is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / ".peers"
SCRIPTS = HERE / "peers"

_AIOSMTPD = "aiosmtpd"
_SMTP_SERVER = "smtp-server@3"


@dataclass
class Tools:
    """
    Where each program is, and what is missing (tool -> reason).
    """

    twist: Path
    python: Path
    aiosmtpdPython: Path | None = None
    node: Path | None = None
    nodePath: Path | None = None
    smtpSink: Path | None = None
    smtpSource: Path | None = None
    missing: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("  $", " ".join(argv), flush=True)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, text=True, capture_output=True, timeout=900, check=False, **kwargs
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _aiosmtpd(tools: Tools, install: bool) -> None:
    venv = PEERS / "venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import aiosmtpd; print(aiosmtpd.__version__)"]
    if python.exists():
        found = subprocess.run(probe, capture_output=True, text=True, check=False)
        if found.returncode == 0:
            tools.aiosmtpdPython = python
            tools.versions["aiosmtpd"] = found.stdout.strip()
            return
    if not install:
        tools.missing["aiosmtpd"] = f"not installed in {venv} (and --no-install)"
        return
    print(f"Installing {_AIOSMTPD} into {venv}", flush=True)
    # The base interpreter, not the project's venv: the peer must not see smtpsvc's deps.
    base = getattr(sys, "_base_executable", sys.executable)
    made = _run([base, "-m", "venv", "--clear", str(venv)])
    if made.returncode != 0:
        tools.missing["aiosmtpd"] = f"python -m venv failed: {_tail(made)}"
        return
    pip = _run([str(python), "-m", "pip", "install", "--quiet", _AIOSMTPD])
    if pip.returncode != 0:
        tools.missing["aiosmtpd"] = f"pip install {_AIOSMTPD} failed: {_tail(pip)}"
        return
    found = subprocess.run(probe, capture_output=True, text=True, check=False)
    if found.returncode != 0:
        tools.missing["aiosmtpd"] = f"aiosmtpd does not import: {_tail(found)}"
        return
    tools.aiosmtpdPython = python
    tools.versions["aiosmtpd"] = found.stdout.strip()


def _smtpServer(tools: Tools, install: bool) -> None:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None:
        tools.missing["smtp-server"] = "node is not installed"
        return
    tools.versions["node"] = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    prefix = PEERS / "node"
    modules = prefix / "node_modules"
    package = modules / "smtp-server" / "package.json"
    if not package.exists():
        if not install:
            tools.missing["smtp-server"] = f"not installed in {prefix} (and --no-install)"
            return
        if npm is None:
            tools.missing["smtp-server"] = "npm is not installed"
            return
        print(f"Installing {_SMTP_SERVER} into {prefix}", flush=True)
        prefix.mkdir(parents=True, exist_ok=True)
        # Its own package.json, so that npm never walks up into the repository.
        manifest = prefix / "package.json"
        if not manifest.exists():
            manifest.write_text('{"name": "smtpsvc-bench-peers", "private": true}\n')
        result = _run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), _SMTP_SERVER]
        )
        if result.returncode != 0 or not package.exists():
            tools.missing["smtp-server"] = f"npm install {_SMTP_SERVER} failed: {_tail(result)}"
            return
    tools.node = Path(node)
    tools.nodePath = modules
    tools.versions["smtp-server"] = json.loads(package.read_text())["version"]


def _postfixTool(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    return Path(found) if found else None


def _postfix(tools: Tools, install: bool) -> None:
    if _postfixTool("smtp-sink") is None and install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            tools.missing["smtp-sink"] = (
                "Postfix's smtp-sink/smtp-source are missing; installing them needs root "
                "and apt-get: apt-get install -y --no-install-recommends postfix"
            )
            return
        print("Installing postfix (for smtp-sink and smtp-source)", flush=True)
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # "No configuration": the package's programs, without a mail system set up.
        selections = "postfix postfix/main_mailer_type select No configuration\n"
        _run(["debconf-set-selections"], input=selections, env=environment)
        update = _run(["apt-get", "update"], env=environment)
        result = _run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postfix"], env=environment
        )
        if update.returncode != 0 or result.returncode != 0:
            tools.missing["smtp-sink"] = f"apt-get install postfix failed: {_tail(result)}"
            return
    tools.smtpSink = _postfixTool("smtp-sink")
    tools.smtpSource = _postfixTool("smtp-source")
    if tools.smtpSink is None:
        tools.missing.setdefault("smtp-sink", "Postfix's smtp-sink is not installed")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "postfix"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.returncode == 0:
        tools.versions["postfix"] = version.stdout.strip()


def findTools(install: bool) -> Tools:
    """
    Find (and unless C{install} is false, install) every peer and load generator.
    """
    binary = Path(sys.executable).parent
    tools = Tools(twist=binary / "twist", python=Path(sys.executable))
    if not tools.twist.exists():
        tools.missing["smtpsvc"] = f"{tools.twist} not found: run make install"
    _aiosmtpd(tools, install)
    _smtpServer(tools, install)
    _postfix(tools, install)
    import twisted

    import smtpsvc

    tools.versions["smtpsvc"] = smtpsvc.__version__
    tools.versions["twisted"] = twisted.__version__
    tools.versions["python"] = sys.version.split()[0]
    return tools
