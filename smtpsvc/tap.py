"""
``twist smtpsvc``: the server as a service.

Every server option has a flag generated from the options declaration
(``maxClients`` becomes ``--max-clients``); ``--listen`` takes Twisted endpoint strings and
may be repeated; ``--deliver`` chooses where accepted mail goes.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.application.service import IService, Service
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python import usage

from ._options import OptionSpec, ServerOptions, optionSpecs
from ._server import SMTPServer
from ._tls import ServerTLS, developmentCertificate, settingsFrom, warnDevelopment
from .cred import IBearerToken, PortalAuthHandler

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
        if spec.isFlag:
            flags.append([spec.flag, None, _help(spec)])
            flags.append([f"no-{spec.flag}", None, f"Turn off --{spec.flag}."])
        else:
            parameters.append([spec.flag, None, None, _help(spec), _coerce(spec)])
        byFlag[spec.flag] = spec
    return parameters, flags, byFlag


_PARAMETERS, _FLAGS, _BY_FLAG = _declare()


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The command line of C{twist smtpsvc}.
    """

    # What --auth checkers may verify: passwords (PLAIN, LOGIN), CRAM-MD5, bearer tokens.
    supportedInterfaces = (IUsernamePassword, IUsernameHashedPassword, IBearerToken)

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
        self["listen-tls"] = []
        self["deliver"] = []
        self["sni"] = {}
        self.tlsFiles: dict[str, bytes] = {}

    def opt_listen_tls(self, endpoint: str) -> None:
        """
        Also listen on this endpoint with implicit TLS (repeatable), e.g. tcp:465 beside
        --listen tcp:587
        """
        self["listen-tls"].append(endpoint)

    def opt_cert(self, path: str) -> None:
        """
        The server's certificate (PEM, with its chain); without --cert and --key a
        self-signed development certificate is made at start
        """
        self.tlsFiles["cert"] = _readFile("--cert", path)

    def opt_key(self, path: str) -> None:
        """
        The server's private key (PEM); it may also be in the --cert file
        """
        self.tlsFiles["key"] = _readFile("--key", path)

    def opt_ca(self, path: str) -> None:
        """
        CA certificates (PEM) that client certificates must chain to (--request-cert)
        """
        self.tlsFiles["ca"] = _readFile("--ca", path)

    def opt_sni(self, spec: str) -> None:
        """
        HOST=CERT[,KEY]: the certificate for SNI name HOST (repeatable; *.example.com
        covers one label); without KEY the key is in the CERT file
        """
        host, eq, files = spec.partition("=")
        if not eq or not host or not files:
            raise usage.UsageError(f"--sni: expected HOST=CERT[,KEY], not {spec!r}")
        cert, _, key = files.partition(",")
        self["sni"][host] = _pemPair("--sni", cert, key or cert)

    def opt_sni_dir(self, directory: str) -> None:
        """
        A directory of HOST.pem files, each a certificate and its key, one per SNI name
        """
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise usage.UsageError(f"--sni-dir: cannot read {directory}: {e.strerror}") from e
        for name in names:
            if name.endswith(".pem"):
                path = os.path.join(directory, name)
                self["sni"][name[: -len(".pem")]] = _pemPair("--sni-dir", path, path)

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
        chosen: dict[str, object] = dict(self.tlsFiles)
        if "cert" in chosen and "key" not in chosen:
            # One PEM file with the certificate and its key is common (certbot's
            # combined files, haproxy's).
            chosen["key"] = chosen["cert"]
        if self["sni"]:
            chosen["sniOptions"] = dict(self["sni"])
        for flag, spec in _BY_FLAG.items():
            if spec.isFlag:
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
        if not self["listen"] and not self["listen-tls"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self["deliver"]:
            self["deliver"] = [DEFAULT_DELIVERY]
        # Validate now, for a clear error; the server itself is built in makeService,
        # because twist installs the reactor only after parsing the options.
        try:
            serverOptions = ServerOptions.fromMapping(self.serverOptions())
            if serverOptions.key is None and serverOptions.cert is None:
                # Made here once, so that the server built later uses the same one.
                warnDevelopment(serverOptions.name)
                key, cert = developmentCertificate(serverOptions.name)
                self.tlsFiles.update(key=key, cert=cert)
                serverOptions = ServerOptions.fromMapping(self.serverOptions())
            # Load every certificate now, so that a bad one is a usage error.
            ServerTLS(settingsFrom(serverOptions))
        except (TypeError, ValueError) as e:
            raise usage.UsageError(_withFlags(str(e))) from e


def _readFile(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise usage.UsageError(f"{flag}: cannot read {path}: {e.strerror}") from e


def _pemPair(flag: str, cert: str, key: str) -> dict[str, bytes]:
    return {"cert": _readFile(flag, cert), "key": _readFile(flag, key)}


def _withFlags(message: str) -> str:
    # The library names options as code does; on the command line, name the flag.
    for spec in optionSpecs():
        message = message.replace(f"option {spec.name} ", f"--{spec.flag} ")
    return message


def _bytesUsers(checker: Any) -> Any:
    # cred compares user names and passwords as bytes, but the checker that strcred's
    # "memory:" makes stores the command line's str: make it bytes like the others.
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (
                v.encode("utf-8") if isinstance(v, str) else v
            )
            for k, v in checker.users.items()
        }
    return checker


def buildServer(options: Options, reactor: Any = None) -> SMTPServer:
    """
    The server the command line describes.
    """
    from .handlers.maildir import MaildirDelivery

    serverOptions = options.serverOptions()
    checkers = [_bytesUsers(checker) for checker in options.get("credCheckers", [])]
    authentication: PortalAuthHandler | None = None
    if checkers:
        # AUTH is offered, and required unless --auth-optional, with the mechanisms
        # the credential sources can check (unless --auth-methods says otherwise).
        authentication = PortalAuthHandler.fromCheckers(checkers)
        serverOptions.setdefault("authMethods", authentication.mechanisms())
    else:
        # Without a credential source the service neither offers nor demands AUTH, so
        # that mail is accepted (the library's own default follows the reference).
        disabled = cast(tuple[str, ...], serverOptions.get("disabledCommands", ()))
        if "AUTH" not in (c.upper() for c in disabled):
            serverOptions["disabledCommands"] = (*disabled, "AUTH")
    server = SMTPServer((), reactor=reactor, **serverOptions)
    if authentication is not None:
        server.addHandler(authentication)
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

    def __init__(
        self, server: SMTPServer, endpoints: Sequence[str], tlsEndpoints: Sequence[str] = ()
    ) -> None:
        self.server = server
        self.endpoints = [(e, None) for e in endpoints] + [(e, True) for e in tlsEndpoints]
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
        for description, secure in self.endpoints:
            endpoint = serverFromString(self.server.reactor, description)
            self.server.listen(endpoint, secure=secure).addCallback(self.ports.append)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return self.server.close()


def makeService(options: Options) -> IService:
    """
    The service C{twist smtpsvc} runs.
    """
    return SMTPService(buildServer(options), options["listen"], options["listen-tls"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run this with: twist smtpsvc")
