"""
``twist smtpsvc``: the server as a service.

Every server option has a flag generated from the options declaration
(``maxClients`` becomes ``--max-clients``); ``--listen`` takes Twisted endpoint strings and
may be repeated; ``--deliver`` chooses where accepted mail goes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python import usage

from ._options import OptionSpec, ServerOptions, optionSpecs
from ._server import SMTPServer

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"
DEFAULT_DELIVERY = "maildir:./maildir"


def _coerce(spec: OptionSpec) -> Callable[[str], object]:
    kind = spec.kind.replace(" | None", "")

    def coerce(text: str) -> object:
        if kind == "tuple[str, ...]":
            return tuple(part.strip() for part in text.split(",") if part.strip())
        try:
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
        except ValueError:
            what = "a whole number" if kind == "int" else "a number"
            raise ValueError(f"--{spec.flag} must be {what}, not {text!r}") from None
        if spec.choices and text not in spec.choices:
            raise ValueError(f"--{spec.flag} must be one of {', '.join(spec.choices)}")
        return text

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _help(spec: OptionSpec) -> str:
    # The declaration's docs are reStructuredText; the terminal wants plain text.
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", spec.doc).replace("``", "")
    text = " ".join(text.split())
    return f"{text} [default: {spec.shownDefault}]"


def _declare() -> tuple[list[list[Any]], list[list[Any]], dict[str, OptionSpec]]:
    parameters: list[list[Any]] = []
    flags: list[list[Any]] = []
    byFlag: dict[str, OptionSpec] = {}
    for spec in optionSpecs():
        if not spec.cli:
            continue
        if spec.kind in ("bool", "bool | None"):
            flags.append([spec.flag, None, _help(spec)])
            flags.append([f"no-{spec.flag}", None, f"Turn off --{spec.flag}."])
        else:
            parameters.append([spec.flag, None, None, _help(spec), _coerce(spec)])
        byFlag[spec.flag] = spec
    return parameters, flags, byFlag


_PARAMETERS, _FLAGS, _BY_FLAG = _declare()


class Options(usage.Options):
    """
    The command line of C{twist smtpsvc}.
    """

    synopsis = "[options]"
    longdesc = (
        "Run an SMTP or LMTP server.  Without --listen it listens on "
        f"{DEFAULT_LISTEN}; without --deliver it delivers into ./maildir."
    )
    optParameters = _PARAMETERS
    optFlags = _FLAGS

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["deliver"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable), e.g. tcp:25 or
        tcp:2525:interface=127.0.0.1 [default: tcp:2525:interface=127.0.0.1]
        """
        self["listen"].append(endpoint)

    def opt_deliver(self, target: str) -> None:
        """
        Where accepted mail goes (repeatable; every one must succeed before the 250):
        maildir:DIR, or discard [default: maildir:./maildir]
        """
        kind, _, argument = target.partition(":")
        if (kind == "maildir" and argument) or (kind == "discard" and not argument):
            self["deliver"].append(target)
        else:
            raise usage.UsageError(f"--deliver: expected maildir:DIR or discard, not {target!r}")

    def serverOptions(self) -> dict[str, object]:
        """
        The server options given on the command line, by option name.
        """
        chosen: dict[str, object] = {}
        for flag, spec in _BY_FLAG.items():
            if spec.kind in ("bool", "bool | None"):
                if self[flag] and self[f"no-{flag}"]:
                    raise usage.UsageError(f"--{flag} and --no-{flag} contradict each other")
                if self[flag]:
                    chosen[spec.name] = True
                elif self[f"no-{flag}"]:
                    chosen[spec.name] = False
            elif self[flag] is not None:
                chosen[spec.name] = self[flag]
        return chosen

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["deliver"]:
            self["deliver"] = [DEFAULT_DELIVERY]
        # Validate now, for a clear error; the server itself is built in makeService,
        # because twist installs the reactor only after parsing the options.
        try:
            ServerOptions.fromMapping(self.serverOptions())
        except (TypeError, ValueError) as e:
            raise usage.UsageError(_withFlags(str(e))) from e


def _withFlags(message: str) -> str:
    # The library names options as code does; on the command line, name the flag.
    for spec in optionSpecs():
        message = message.replace(f"option {spec.name} ", f"--{spec.flag} ")
    return message


def buildServer(options: Options, reactor: Any = None) -> SMTPServer:
    """
    The server the command line describes.
    """
    from .handlers.maildir import MaildirDelivery

    serverOptions = options.serverOptions()
    # The service has no credential source yet, so it neither offers nor demands AUTH.
    disabled = cast(tuple[str, ...], serverOptions.get("disabledCommands", ()))
    if "AUTH" not in (c.upper() for c in disabled):
        serverOptions["disabledCommands"] = (*disabled, "AUTH")
    server = SMTPServer((), reactor=reactor, **serverOptions)
    for target in options["deliver"]:
        kind, _, argument = target.partition(":")
        if kind == "maildir":
            server.addHandler(
                MaildirDelivery(argument, reactor=server.reactor, serverName=server.options.name)
            )
    return server


class SMTPService(Service):
    """
    Listens on each endpoint and, when stopped, closes the server gracefully.
    """

    def __init__(self, server: SMTPServer, endpoints: Sequence[str]) -> None:
        self.server = server
        self.endpoints = list(endpoints)
        self.ports: list[IListeningPort] = []
        self._listening = False

    def privilegedStartService(self) -> None:
        # twistd calls this before dropping privileges, so port 25 works; twist calls
        # only startService.
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        for description in self.endpoints:
            endpoint = serverFromString(self.server.reactor, description)
            self.server.listen(endpoint).addCallback(self.ports.append)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.server.close()


def makeService(options: Options) -> IService:
    """
    The service C{twist smtpsvc} runs.
    """
    return SMTPService(buildServer(options), options["listen"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run this with: twist smtpsvc")
