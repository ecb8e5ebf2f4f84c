"""
``twist smtpsvc``: the server as a service.

Every server option has a flag generated from the options declaration
(``maxClients`` becomes ``--max-clients``); ``--config FILE`` reads the same options from
a TOML file, and flags win over it.  ``--listen`` takes Twisted endpoint strings and may
be repeated; ``--deliver`` chooses where accepted mail goes, and ``--maildir-min-free``
how much room its Maildirs keep free.  A configuration that cannot work stops the command
with one line saying why (L{ConfigurationError}).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService
from twisted.cred import strcred
from twisted.logger import LogLevel
from twisted.python import usage

from ._config import (
    DEFAULT_DELIVERY,
    DEFAULT_LISTEN,
    ConfigurationError,
    ServiceConfig,
    certificatesFromBytes,
    checkListeners,
    checkSocketDirectories,
    loadFile,
    readFile,
    resolve,
    sniHost,
    unsetNote,
    withFlags,
)
from ._options import OptionSpec, ServerOptions, optionSpecs
from ._server import SMTPServer
from ._service import AUTH_INTERFACES, SMTPService, WorkerMaster, WorkerPipes, checkersFor
from ._service import buildServer as _buildServer
from ._tls import (
    ServerTLS,
    developmentCertificate,
    settingsFrom,
    warnDevelopment,
    warnTLSProblems,
)
from .handlers.maildir import DEFAULT_MIN_FREE

__all__ = ["ConfigurationError", "Options", "buildServer", "makeService"]


def _help(spec: OptionSpec) -> str:
    # The declaration's docs are reStructuredText; the terminal wants plain text.
    doc = " ".join(filter(None, (spec.doc, unsetNote(spec))))
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")
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
            # The text is checked later, with the file's values, for one clear error.
            parameters.append([spec.flag, None, None, _help(spec)])
        byFlag[spec.flag] = spec
    return parameters, flags, byFlag


_PARAMETERS, _FLAGS, _BY_FLAG = _declare()


class Options(usage.Options, strcred.AuthOptionMixin):
    """
    The command line of C{twist smtpsvc}.

    @ivar config: after parsing, the resolved L{ServiceConfig}.
    @ivar argv: the arguments as given (for worker processes).
    """

    # What --auth checkers may verify (for --help-auth's list of sources).
    supportedInterfaces = AUTH_INTERFACES

    synopsis = "[options]"
    longdesc = (
        f"Run an SMTP or LMTP server.  Without --listen it listens on {DEFAULT_LISTEN}; "
        f"without --deliver it delivers into {DEFAULT_DELIVERY[len('maildir:') :]}.  "
        "Options may also come from a TOML file (--config), named as in the options "
        "table; flags win over the file."
    )
    optParameters = [
        ["config", "c", None, "Read options from this TOML file."],
        [
            "cert",
            None,
            None,
            "The server's certificate (PEM, with its chain; it may also "
            "hold the key).  Without it a self-signed development certificate is made.",
        ],
        ["key", None, None, "The server's private key (PEM)."],
        ["ca", None, None, "CA certificates (PEM) client certificates must chain to."],
        [
            "sni-dir",
            None,
            None,
            "A directory of HOST.pem files (certificate and key), one per SNI name.",
        ],
        [
            "workers",
            None,
            None,
            "Run this many processes sharing the listening sockets [default: 1].",
        ],
        [
            "maildir-min-free",
            None,
            None,
            "The bytes of free space every maildir: delivery keeps in reserve: MAIL FROM "
            "gets 452 4.3.1 when less than the declared SIZE plus this much is free, and a "
            "message whose writing brings the free space under it gets the same (0 "
            f"refuses only a SIZE that does not fit) [default: {DEFAULT_MIN_FREE}].",
        ],
        *_PARAMETERS,
    ]
    optFlags = _FLAGS

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        # The opt_ methods' docstrings keep their line breaks and indentation, which the
        # help would print as runs of spaces: one space between words, as in _help.
        self.docs = {flag: " ".join(doc.split()) if doc else doc for flag, doc in self.docs.items()}
        self.lists: dict[str, Any] = {
            "listen": [],
            "listenTLS": [],
            "port": [],
            "deliver": [],
            "domain": [],
            "auth": [],
            "sni": {},
        }
        self.inherited: list[tuple[int, bool | None]] = []
        self.handedOver: dict[str, Any] | None = None
        self.argv: list[str] = []
        self.config = ServiceConfig()

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            # twist answers a UsageError with the usage text of every flag (hundreds of
            # lines) and status 64; a misspelt flag is a mistake like any other: one line.
            why = str(e).rstrip(".")
            raise ConfigurationError(f"{why} (twist smtpsvc --help lists the options)") from e

    def opt_help(self) -> None:
        """
        Display this help and exit.
        """
        try:
            print(str(self))
            sys.stdout.flush()
        except BrokenPipeError:
            # Its reader stopped early (twist smtpsvc --help | head): no error, and no
            # traceback when Python flushes standard output again as it exits.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable), e.g. tcp:25 or
        tcp:2525:interface=127.0.0.1 [default: tcp:2525:interface=127.0.0.1]
        """
        self.lists["listen"].append(endpoint)

    def opt_listen_tls(self, endpoint: str) -> None:
        """
        Also listen on this endpoint with implicit TLS (repeatable), e.g. tcp:465 beside
        --listen tcp:587
        """
        self.lists["listenTLS"].append(endpoint)

    def opt_port(self, port: str) -> None:
        """
        Listen on this TCP port on every address: short for --listen tcp:PORT (repeatable)
        """
        self.lists["port"].append(port)

    def opt_deliver(self, target: str) -> None:
        """
        Where accepted mail goes (repeatable; every one must succeed before the 250):
        maildir:DIR, smtp:ENDPOINT, lmtp:ENDPOINT, python:MODULE:NAME or discard
        [default: maildir:./maildir]
        """
        self.lists["deliver"].append(target)

    def opt_domain(self, domain: str) -> None:
        """
        A domain this server receives mail for (repeatable; .example.com covers its
        subdomains); with any, mail for other domains needs AUTH: 550 Relay access
        denied [5.7.1]
        """
        self.lists["domain"].append(domain)

    def opt_sni(self, spec: str) -> None:
        """
        HOST=CERT[,KEY]: the certificate for SNI name HOST (repeatable; *.example.com
        covers one label); without KEY the key is in the CERT file
        """
        host, eq, files = spec.partition("=")
        if not eq or not host or not files:
            raise ConfigurationError(f"--sni: expected HOST=CERT[,KEY], not {spec!r}")
        cert, _, key = files.partition(",")
        self.lists["sni"][sniHost(host, "--sni")] = (cert, key or cert)

    def opt_auth(self, description: str) -> None:
        """
        Where passwords come from (repeatable), e.g. scrypt:FILE, file:FILE, unix or
        memory:USER:PASSWORD; --help-auth lists the sources.  With any, AUTH is required
        unless --auth-optional
        """
        # strcred's own opt_auth answers a mistake with the usage text and status 64;
        # the service's is one line and status 1, as from the file.  Checked now, made
        # with the file's (which these replace) when the server is built.
        checkersFor([description])
        self.lists["auth"].append(description)

    def opt_inherit(self, spec: str) -> None:
        """
        Internal to --workers: serve on an inherited listening socket (FD:tls, or
        FD:plain for one where the secure option decides)
        """
        fd, _, kind = spec.partition(":")
        if not fd.isdigit() or kind not in ("tls", "plain"):
            raise ConfigurationError(f"--inherit: expected FD:tls or FD:plain, not {spec!r}")
        try:
            mode = os.fstat(int(fd)).st_mode
        except OSError as e:
            raise ConfigurationError(
                f"--inherit {spec}: file descriptor {fd} is not open ({e.strerror})"
            ) from e
        if not stat.S_ISSOCK(mode):
            raise ConfigurationError(f"--inherit {spec}: file descriptor {fd} is not a socket")
        self.inherited.append((int(fd), True if kind == "tls" else None))

    def opt_inherit_certificates(self, path: str) -> None:
        """
        Internal to --workers: serve, until SIGHUP reads the files again, the
        certificates the master last loaded, which it hands over in this file
        """
        source = f"--inherit-certificates {path}"
        self.handedOver = certificatesFromBytes(readFile(source, path), source)

    def serverOptions(self) -> dict[str, object]:
        """
        The server options as the server gets them, after resolving flags, file and
        certificates.
        """
        return self.config.resolvedServerOptions()

    def postOptions(self) -> None:
        path = self["config"]
        file = loadFile(path) if path is not None else {}
        given: dict[str, Any] = {}
        for flag, spec in _BY_FLAG.items():
            if spec.isFlag:
                if self[flag] and self[f"no-{flag}"]:
                    raise ConfigurationError(f"--{flag} and --no-{flag} contradict each other")
                if self[flag]:
                    given[spec.name] = True
                elif self[f"no-{flag}"]:
                    given[spec.name] = False
            elif self[flag] is not None:
                given[spec.name] = self[flag]
        for name, flag in (("cert", "cert"), ("key", "key"), ("ca", "ca"), ("sniDir", "sni-dir")):
            if self[flag] is not None:
                given[name] = self[flag]
        if self["workers"] is not None:
            given["workers"] = self["workers"]
        if self["maildir-min-free"] is not None:
            given["maildirMinFree"] = self["maildir-min-free"]
        config = resolve(given, self.lists, file, path or "")
        if self.inherited:
            # A worker of --workers: serve on the parent's sockets, start no workers.
            config.inherited = self.inherited
            config.listen, config.listenTLS, config.workers = [], [], 1
            config.tls.handedOver = self.handedOver
        else:
            # (A worker's own --listen strings are its parent's, which checked them: a
            # systemd: one could not even be parsed here, the sockets being the parent's.)
            checkListeners(config)
        self.config = config
        twistLevel: Any = self.parent.get("logLevel") if self.parent is not None else None
        if twistLevel in list(LogLevel.iterconstants()):
            # twist --log-level: the server does not make the events twist would drop.
            config.serverOptions["logLevel"] = twistLevel.name
        if config.tls.needsDevelopment:
            # Made here, once, and given to the server, which would otherwise make (and
            # announce) one of its own each time it builds its contexts.
            serverOptions = ServerOptions.fromMapping(config.serverOptions)
            if _offersTLS(config, serverOptions):
                # Where no client can start TLS (STARTTLS disabled, no implicit TLS: an
                # LMTP socket for the local MTA), it serves nobody: nothing to warn of.
                warnDevelopment(serverOptions.name)
            config.tls.development = developmentCertificate(serverOptions.name)
        # Load every certificate now, so that a bad one stops the command at once.
        try:
            settings = settingsFrom(ServerOptions.fromMapping(self.serverOptions()))
            ServerTLS(settings)
        except (TypeError, ValueError) as e:
            raise ConfigurationError(withFlags(str(e), config.sources)) from e
        if not self.inherited:
            # What MTA-STS senders would refuse is only a warning: everyone else is still
            # served.  A worker of --workers leaves it to its parent, which says it once.
            warnTLSProblems(settings, checkDefault=config.tls.cert is not None)


def _offersTLS(config: ServiceConfig, options: ServerOptions) -> bool:
    # Whether a client of some listener can have TLS: implicit TLS, or STARTTLS.
    if config.listenTLS or options.secure:
        return True
    # (ServerOptions keeps disabledCommands in upper case.)
    return "STARTTLS" not in options.disabledCommands


def buildServer(options: Options, reactor: Any = None) -> SMTPServer:
    """
    The server the command line (and its file) describes.
    """
    return _buildServer(options.config, reactor)


def makeService(options: Options) -> IService:
    """
    The service C{twist smtpsvc} runs.
    """
    config = options.config
    checkSocketDirectories(config)
    if config.workers > 1:
        # The workers serve the certificates loaded here, and after each SIGHUP that
        # loads, the new ones: a worker started again serves them whatever became of the
        # files.  They are read once, so that the server built here checks those bytes.
        config.tls.handedOver = config.tls.load()
        # Check the configuration in this process, where errors can still be told.
        buildServer(options)
        # The workers serve the development certificate made here, if one was: the
        # master hands it over in a file when it starts.
        return WorkerMaster(
            config,
            options.argv,
            development=config.tls.development,
            certificates=config.tls.handedOver,
        )
    # A worker takes its pipes to the master before its handlers are built (see claim).
    pipes = WorkerPipes.claim() if config.inherited else None
    return SMTPService(buildServer(options), config, pipes)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run this with: twist smtpsvc")
