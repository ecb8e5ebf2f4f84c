"""
The configuration of the ``twist smtpsvc`` service: command-line flags and an optional
TOML file, resolved into one L{ServiceConfig}.

The file uses the options declaration's names (C{maxClients = 100}) plus the service's
own keys, named like the flags in camelCase (C{listen}, C{listenTLS}, C{port},
C{deliver}, C{maildirMinFree}, C{domain}, C{auth}, C{cert}, C{key}, C{ca}, C{sni},
C{sniDir}, C{workers}).
Flags given on the command line win over the file; list-valued flags given on the command
line replace the file's list.  Relative paths in the file are relative to the file.  A
number that may be unset (a limit that unset turns off) is unset with C{none} or C{off},
as a flag's value or a string in the file (L{UNSET_WORDS}).
"""

from __future__ import annotations

import base64
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from twisted.internet.protocol import Factory

from ._options import OptionSpec, ServerOptions, optionSpecs
from ._tls import TLSConfigurationError, checkedHostName, loadCertificates, loadKeyPair
from .handlers.maildir import DEFAULT_MIN_FREE

#: Keys of the service that are not server options, with the flag each corresponds to.
SERVICE_KEYS = {
    "listen": "--listen",
    "listenTLS": "--listen-tls",
    "port": "--port",
    "deliver": "--deliver",
    "maildirMinFree": "--maildir-min-free",
    "domain": "--domain",
    "auth": "--auth",
    "cert": "--cert",
    "key": "--key",
    "ca": "--ca",
    "sni": "--sni",
    "sniDir": "--sni-dir",
    "workers": "--workers",
}

DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"
DEFAULT_DELIVERY = "maildir:./maildir"
DELIVERY_KINDS = ("maildir", "smtp", "lmtp", "python", "discard")


class ConfigurationError(SystemExit):
    """
    The configuration cannot be used.  It is a C{SystemExit}, so C{twist} prints its one
    line (C{twist smtpsvc: ...}) and exits with status 1, without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"twist smtpsvc: {message}")
        self.message = message


@dataclass
class TLSSources:
    """
    Where the certificates come from, so that they can be read again on SIGHUP.
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    sni: dict[str, tuple[str, str]] = field(default_factory=dict)
    sniDir: str | None = None
    #: A development certificate made at start (key, cert), when no --cert was given.
    development: tuple[bytes, bytes] | None = None
    #: In a worker of C{--workers}: the certificates its master last loaded (what L{load}
    #: gives), which it serves from the start in place of what the files hold now, as a
    #: process that was already running would (a renewal caught half-way is kept for the
    #: next reload); in the master, those it hands over at start.  L{load} gives them
    #: until L{reread} drops them (SIGHUP).
    handedOver: dict[str, Any] | None = None
    #: How to name, in an error, where C{cert}, C{key}, C{ca}, C{sniDir} and each SNI
    #: name came from, when not from their flags: the file's key.
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def needsDevelopment(self) -> bool:
        """
        Whether the server needs the development certificate: no default certificate
        (nor key) was named.  SNI certificates do not count: clients that send no name,
        or another, get the default one.
        """
        return self.cert is None and self.key is None

    @property
    def namesFiles(self) -> bool:
        """
        Whether any certificate file or directory was named (L{reread} has something to
        read), rather than only the development certificate being served.
        """
        return any((self.cert, self.key, self.ca, self.sni, self.sniDir))

    def load(self) -> dict[str, Any]:
        """
        Read the files: the C{key}, C{cert}, C{ca} and C{sniOptions} server options (or
        those L{handedOver}, which are not read again).

        @raise ConfigurationError: when a file cannot be read.
        """
        if self.handedOver is not None:
            return dict(self.handedOver)
        options: dict[str, Any] = {}
        origin = self.origins.get
        if self.cert is not None:
            # One PEM file with the certificate and its key is common (certbot's
            # combined files, haproxy's).
            options["cert"], options["key"] = _keyPair(
                (origin("cert", "--cert"), self.cert), (origin("key", "--key"), self.key)
            )
        elif self.key is not None:
            raise ConfigurationError(f"{origin('key', '--key')} needs --cert")
        elif self.development is not None:
            options["key"], options["cert"] = self.development
        if self.ca is not None:
            caFrom = origin("ca", "--ca")
            options["ca"] = readFile(caFrom, self.ca)
            try:
                loadCertificates(options["ca"], "CA certificate")
            except TLSConfigurationError as e:
                raise ConfigurationError(f"{caFrom}: {self.ca}: {e}") from e
        sni: dict[str, dict[str, bytes]] = {}
        if self.sniDir is not None:
            dirFrom = origin("sniDir", "--sni-dir")
            try:
                names = sorted(os.listdir(self.sniDir))
            except OSError as e:
                raise ConfigurationError(
                    f"{dirFrom}: cannot read {self.sniDir}: {e.strerror}"
                ) from e
            for name in names:
                if name.endswith(".pem"):
                    path = os.path.join(self.sniDir, name)
                    host = sniHost(name[: -len(".pem")], f"{dirFrom}: {path}")
                    pem, _ = _keyPair((dirFrom, path), (dirFrom, None))
                    sni[host] = {"cert": pem, "key": pem}
        for host, (cert, key) in self.sni.items():
            sniFrom = origin(f"sni.{host}", "--sni")
            pem, keyPEM = _keyPair((sniFrom, cert), (sniFrom, key if key != cert else None))
            sni[host] = {"cert": pem, "key": keyPEM}
        if sni or self.sniDir is not None:
            # Even empty: a reload after the last file left --sni-dir drops its names.
            options["sniOptions"] = sni
        return options

    def reread(self) -> dict[str, Any]:
        """
        Read the files again (SIGHUP), whatever was L{handedOver}; from now on L{load}
        reads them too.

        @raise ConfigurationError: when a file cannot be read.
        """
        self.handedOver = None
        return self.load()


# The certificate options a --workers master hands its workers, and their PEM values.
_HANDED_OVER: Final = ("cert", "key", "ca")


def certificatesAsBytes(options: Mapping[str, Any]) -> bytes:
    """
    The certificates L{TLSSources.load} gave, as a C{--workers} master hands them to its
    workers (L{certificatesFromBytes} reads them back): JSON, with the PEM texts in base64
    so that any bytes a PEM file holds come back unchanged.
    """

    def encoded(pem: bytes | str) -> str:
        raw = pem.encode("ascii") if isinstance(pem, str) else pem
        return base64.b64encode(raw).decode("ascii")

    data: dict[str, Any] = {
        name: encoded(options[name]) for name in _HANDED_OVER if name in options
    }
    if "sniOptions" in options:
        data["sniOptions"] = {
            host: {part: encoded(pem) for part, pem in entry.items()}
            for host, entry in options["sniOptions"].items()
        }
    return json.dumps(data).encode("ascii")


def certificatesFromBytes(data: bytes, source: str) -> dict[str, Any]:
    """
    The certificates of L{certificatesAsBytes}, as L{TLSSources.load} gave them.

    @param source: how to name them in an error.
    @raise ConfigurationError: when C{data} is not what L{certificatesAsBytes} writes.
    """
    try:
        decoded = json.loads(data)
        options: dict[str, Any] = {
            name: base64.b64decode(decoded[name], validate=True)
            for name in _HANDED_OVER
            if name in decoded
        }
        if "sniOptions" in decoded:
            options["sniOptions"] = {
                str(host): {
                    str(part): base64.b64decode(pem, validate=True) for part, pem in entry.items()
                }
                for host, entry in decoded["sniOptions"].items()
            }
    except (ValueError, TypeError, AttributeError) as e:
        # (A bad base64 text is a ValueError too.)
        raise ConfigurationError(f"{source}: not certificates handed over by a master") from e
    return options


@dataclass
class ServiceConfig:
    """
    Everything the service needs, resolved from flags and file.
    """

    serverOptions: dict[str, Any] = field(default_factory=dict)
    listen: list[str] = field(default_factory=list)
    listenTLS: list[str] = field(default_factory=list)
    deliver: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    tls: TLSSources = field(default_factory=TLSSources)
    workers: int = 1
    #: The bytes of free space every C{maildir:} delivery keeps in reserve (its
    #: C{minFree}).
    maildirMinFree: int = DEFAULT_MIN_FREE
    #: Listening sockets inherited from a --workers parent: (file descriptor, whether
    #: TLS starts at once, or L{None} to follow the C{secure} option).
    inherited: list[tuple[int, bool | None]] = field(default_factory=list)
    #: How to name, in an error, the options and service keys the configuration file
    #: gave (C{{"size": "smtpsvc.toml: size"}}); the others are named by their flags.
    sources: dict[str, str] = field(default_factory=dict)

    def origin(self, name: str) -> str:
        """
        How to name option or service key C{name} in an error: the file and its key when
        the file gave it, else its flag (C{--max-clients}, C{--domain}).
        """
        if name in self.sources:
            return self.sources[name]
        if name in SERVICE_KEYS:
            return SERVICE_KEYS[name]
        return flagOf(next(spec for spec in optionSpecs() if spec.name == name))

    def entry(self, key: str, value: str) -> str:
        """
        How to name C{value}, one entry of the repeatable key C{key}, in an error: the
        flag and the value (C{--deliver smtp:tcp:...}), or the file, its key and the value.
        """
        return f"{self.origin(key)} {value}"

    def listener(self, description: str, secure: bool | None) -> str:
        """
        How to name a listener of L{listeners} in an error, by the flag or file key that
        gave it (C{--listen}, C{--listen-tls}, and C{--port} or C{port}, which give
        C{tcp:PORT} listeners).
        """
        if secure:
            return self.entry("listenTLS", description)
        if "listen" not in self.sources and "port" in self.sources:
            return self.entry("port", description)
        return self.entry("listen", description)

    def listeners(self) -> list[tuple[str, bool | None]]:
        """
        Each endpoint to listen on, and whether TLS starts at once on it: L{True} for
        C{--listen-tls}, L{None} (the C{secure} option decides) for C{--listen}.
        """
        return [(e, None) for e in self.listen] + [(e, True) for e in self.listenTLS]

    def resolvedServerOptions(self) -> dict[str, Any]:
        """
        The server options with the certificates loaded from their files.
        """
        options = dict(self.serverOptions)
        options.update(self.tls.load())
        return options


def _keyPair(cert: tuple[str, str], key: tuple[str, str | None]) -> tuple[bytes, bytes]:
    # The PEM of a certificate file and of its key's (the same file when the key's path
    # is None), each (how to name it, path), checked to be readable and to belong
    # together, or a ConfigurationError naming the file at fault.
    (certFrom, certPath), (keyFrom, keyPath) = cert, key
    certPEM = readFile(certFrom, certPath)
    keyPEM = certPEM if keyPath is None else readFile(keyFrom, keyPath)
    try:
        loadKeyPair(certPEM, keyPEM)
    except TLSConfigurationError as e:
        if e.part == "cert":
            raise ConfigurationError(f"{certFrom}: {certPath}: {e}") from e
        if keyPath is None:
            alone = " (with no key file given, it must be in this one)" if e.part == "key" else ""
            raise ConfigurationError(f"{certFrom}: {certPath}: {e}{alone}") from e
        if e.part == "key":
            raise ConfigurationError(f"{keyFrom}: {keyPath}: {e}") from e
        raise ConfigurationError(
            f"{keyFrom}: {keyPath}: the private key does not match the certificate in {certPath}"
        ) from e
    return certPEM, keyPEM


def sniHost(host: str, source: str) -> str:
    """
    C{host} if it is a host name or a pattern such as C{*.example.com}, which a client's
    SNI name can match (L{checkedHostName}); else a L{ConfigurationError}.

    @param source: how to name where it came from in the error.
    """
    try:
        checkedHostName(host, wildcard=True)
    except ValueError as e:
        raise ConfigurationError(f"{source}: {host!r} is {e}") from e
    return host


def readFile(flag: str, path: str) -> bytes:
    """
    The bytes of C{path}, or a L{ConfigurationError} that names the flag and the file.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigurationError(f"{flag}: cannot read {path}: {e.strerror}") from e


def flagOf(spec: OptionSpec) -> str:
    """
    How the command line sets option C{spec}: C{--max-clients}, C{--cert} for C{cert},
    C{twist --log-level} for C{logLevel}; C{option resolver} for one it cannot set.
    """
    if spec.cli:
        return f"--{spec.flag}"
    if spec.cliForms:
        # "--sni HOST=CERT[,KEY]": the flag, without what it takes.
        words = spec.cliForms[0].split()
        return " ".join(words[:-1] if len(words) > 1 else words)
    return f"option {spec.name}"


def withFlags(message: str, sources: Mapping[str, str] | None = None) -> str:
    """
    Name command-line flags instead of option names in a message from the library.

    @param sources: for options that came from elsewhere, how to name them instead
        (C{{"size": "smtpsvc.toml: size"}}, see L{ServiceConfig.sources}).
    """
    for spec in optionSpecs():
        name = (sources or {}).get(spec.name, flagOf(spec))
        message = message.replace(f"option {spec.name} ", f"{name} ")
    return message


#: The words that unset a numeric option that may be unset (C{--max-recipients none}),
#: in any case: neither the command line nor TOML has another way to say "no value".
UNSET_WORDS = ("none", "off")

# The kinds of the options those words unset: the limits whose documentation says that
# unset turns them off.  A string may mean itself ("none" is a host name) and a yes-or-no
# option has its --no- flag, so they are left alone.
_UNSETTABLE_KINDS = ("int | None", "float | None")


def unsettable(spec: OptionSpec) -> bool:
    """
    Whether option C{spec} can be unset from the command line or the file with one of
    L{UNSET_WORDS}.
    """
    return spec.kind in _UNSETTABLE_KINDS


def unsetNote(spec: OptionSpec) -> str | None:
    """
    The sentence telling how to unset option C{spec} with a flag or in the file, as
    reStructuredText; L{None} for an option that cannot be unset that way.
    """
    if not unsettable(spec):
        return None
    words = " or ".join(f"``{word}``" for word in UNSET_WORDS)
    return f"To unset it, give {words}."


def convert(spec: OptionSpec, value: Any, source: str) -> Any:
    """
    The value of option C{spec} from text (the command line) or TOML, checked as the
    library checks it (L{OptionSpec.check}).

    @param source: how to name the origin in an error (C{"--max-clients"}).
    """
    value = _parsed(spec, value, source)
    try:
        spec.check(value)
    except ValueError as e:
        raise ConfigurationError(withFlags(str(e), {spec.name: source})) from None
    return value


def _parsed(spec: OptionSpec, value: Any, source: str) -> Any:
    # The value of option spec from text (the command line) or TOML (any type), before
    # the library's checks; a value of the wrong type is refused here, in the words the
    # file's author needs rather than the declaration's Python types.
    kind = spec.kind
    # For an option that may be unset, the error says how.
    orUnset = f", or {UNSET_WORDS[0]} to unset it" if unsettable(spec) else ""

    def wrong(what: str) -> ConfigurationError:
        return ConfigurationError(f"{source} must be {what}{orUnset}, not {value!r}")

    if isinstance(value, str) and unsettable(spec) and value.strip().lower() in UNSET_WORDS:
        return None
    if kind in ("int", "int | None"):
        value = wholeNumber(value, source, f"a whole number{orUnset}")
    elif kind in ("float", "float | None"):
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise wrong("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
    elif kind in ("bool", "bool | None"):
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif kind in ("tuple[str, ...]", "bool | tuple[str, ...]"):
        either = kind.startswith("bool")
        if isinstance(value, str):
            if either and value.strip() == "*":
                return True
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        if not (either and isinstance(value, bool)):
            raise wrong("true or false, or a list of strings" if either else "a list of strings")
    elif kind in ("str", "str | None") and not isinstance(value, str):
        raise wrong("a string")
    if spec.choices and value is not None and value not in spec.choices:
        raise ConfigurationError(f"{source} must be one of {', '.join(spec.choices)}")
    return value


def wholeNumber(value: Any, source: str, what: str = "a whole number") -> int:
    """
    A whole number from text (the command line) or TOML, checked.

    @param source: how to name the origin in an error (C{"--workers"}).
    @param what: what the error says it must be.
    """
    try:
        # TOML's true is a Python int, and int() would cut 1.5 down to 1: neither is a
        # whole number.
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(value)
        return int(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise ConfigurationError(f"{source} must be {what}, not {value!r}") from None


def wholeBytes(value: Any, source: str) -> int:
    """
    A number of bytes, 0 or more, from text (the command line) or TOML, checked.

    @param source: how to name the origin in an error (C{"--maildir-min-free"}).
    """
    number = wholeNumber(value, source, "a whole number of bytes")
    if number < 0:
        raise ConfigurationError(f"{source} must be 0 or more bytes, not {value!r}")
    return number


#: The service's keys that name a file or directory.
_PATH_KEYS = ("cert", "key", "ca", "sniDir")
#: The service's repeatable keys: each a list in the file (or a single value).
_REPEATABLE_KEYS = ("listen", "listenTLS", "port", "deliver", "domain", "auth")


def loadFile(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file; relative paths in it are made relative to it.

    @raise ConfigurationError: for an unreadable or malformed file, an unknown key, or
        a service key of the wrong type.
    """
    if not path:
        # An unset variable (--config "$CONFIG") must not start a default server.
        raise ConfigurationError("--config needs a file name, and it was given an empty one")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigurationError(f"--config: cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{path}: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigurationError(
            f"{path}: not UTF-8 text, as TOML must be (byte {e.start} is {e.object[e.start]:#04x})"
        ) from e
    known = {spec.name for spec in optionSpecs() if spec.cli or spec.name in ("key", "cert")}
    known |= set(SERVICE_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(
            f"{path}: unknown option {unknown[0]!r} (options are named as in the options "
            f"table, e.g. maxClients; the service's own are {', '.join(SERVICE_KEYS)})"
        )
    base = os.path.dirname(os.path.abspath(path))

    def relative(value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(base, value)

    for name in _PATH_KEYS:
        if name in data:
            # open(5) would read file descriptor 5.
            if not isinstance(data[name], str) or not data[name]:
                raise ConfigurationError(
                    f"{path}: {name} must be a file name (a string), not {data[name]!r}"
                )
            data[name] = relative(data[name])
    for name in _REPEATABLE_KEYS:
        if name in data:
            data[name] = _strings(data[name], name, path)
    if "sni" in data:
        if not isinstance(data["sni"], Mapping):
            raise ConfigurationError(
                f'{path}: sni must be a table of host names, e.g. sni."mx.example.com" = '
                f'"CERT[,KEY]", not {data["sni"]!r}'
            )
        resolved = {}
        for host, entry in data["sni"].items():
            if isinstance(entry, str):
                cert, _, key = entry.partition(",")
                entry = {"cert": cert, "key": key or cert}
            if (
                not isinstance(entry, Mapping)
                or not set(entry) <= {"cert", "key"}
                or not all(isinstance(name, str) and name for name in entry.values())
            ):
                raise ConfigurationError(
                    f'{path}: sni.{host} must be "CERT[,KEY]" or a table of cert and key, '
                    f"file names, not {entry!r}"
                )
            if "cert" not in entry:
                raise ConfigurationError(f"{path}: sni.{host} needs a cert (and a key)")
            sniHost(host, f"{path}: sni")
            resolved[host] = (relative(entry["cert"]), relative(entry.get("key", entry["cert"])))
        data["sni"] = resolved
    if "auth" in data:
        # scrypt:FILE and file:FILE name files: relative to this file too.
        data["auth"] = [
            f"{a.partition(':')[0]}:{relative(a.partition(':')[2])}"
            if a.partition(":")[0] in ("scrypt", "file")
            else a
            for a in data["auth"]
        ]
    if "deliver" in data:
        data["deliver"] = [_relativeDelivery(d, relative) for d in data["deliver"]]
    return data


def _relativeDelivery(target: str, relative: Callable[[str], str]) -> str:
    if target.startswith("maildir:"):
        return "maildir:" + relative(target[len("maildir:") :])
    return target


def _strings(value: Any, key: str, path: str) -> list[str]:
    # A repeatable key's value: a list, or a single value standing for a list of one;
    # strings, and for port whole numbers too.
    values = value if isinstance(value, list) else [value]
    numbers = key == "port"
    if all(
        isinstance(v, str) or (numbers and isinstance(v, int) and not isinstance(v, bool))
        for v in values
    ):
        return [str(v) for v in values]
    what = "a port number or a list of them" if numbers else "a string or a list of strings"
    raise ConfigurationError(f"{path}: {key} must be {what}, not {value!r}")


def _portNumber(port: str, source: str) -> int:
    # A --port value (or one of the file's port list) as a port number, checked.
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{source} must be a port number, not {port!r}")
    return int(port)


def _workers(value: Any, source: str) -> int:
    # The number of worker processes, checked.
    workers = wholeNumber(value, source)
    if workers < 1:
        raise ConfigurationError(f"{source} must be at least 1, not {value!r}")
    return workers


def _deliveryTarget(target: str, source: str) -> None:
    # Refuse a --deliver target of no kind the service knows.
    kind, _, argument = target.partition(":")
    if kind not in DELIVERY_KINDS or (kind == "discard") != (not argument):
        raise ConfigurationError(
            f"{source}: expected maildir:DIR, smtp:ENDPOINT, lmtp:ENDPOINT, "
            f"python:MODULE:NAME or discard, not {target!r}"
        )


def resolve(
    given: Mapping[str, Any], lists: Mapping[str, list[str]], file: Mapping[str, Any], path: str
) -> ServiceConfig:
    """
    Merge the command line and the file.

    @param given: server options from the command line, by option name, as text or
        booleans; plus C{cert}, C{key}, C{ca}, C{sniDir} paths and C{workers} and
        C{maildirMinFree} text.
    @param lists: the repeatable flags (C{listen}, C{listenTLS}, C{port}, C{deliver},
        C{domain}, C{auth}, C{sni}) from the command line.
    @param file: the configuration file's data (from L{loadFile}), or empty.
    """
    config = ServiceConfig()

    def source(name: str, fromFile: bool) -> str:
        # How to name name in an error, remembered for the checks made later.
        if fromFile:
            config.sources[name] = f"{path}: {name}"
        return config.origin(name)

    for spec in optionSpecs():
        name = spec.name
        if name in ("key", "cert", "ca"):
            continue
        if name in given:
            config.serverOptions[name] = convert(spec, given[name], source(name, False))
            if name in file:
                # Overridden, yet a mistake in the file all the same: say so now, not on
                # the day the flag is dropped.
                convert(spec, file[name], f"{path}: {name}")
        elif name in file:
            config.serverOptions[name] = convert(spec, file[name], source(name, True))
    # --port N is --listen tcp:N, so either on the command line replaces both of the
    # file's lists (and the file's listenTLS stays).
    listening = bool(lists.get("listen") or lists.get("port"))
    for key in _REPEATABLE_KEYS:
        values = list(lists.get(key, []))
        fromFile = not values and key in file and not (key in ("listen", "port") and listening)
        if fromFile:
            values = list(file[key])
        named = source(key, fromFile)
        if key in file and not fromFile:
            # The file's list, replaced by the command line's, is checked all the same.
            for value in file[key]:
                if key == "port":
                    _portNumber(value, f"{path}: {key}")
                elif key == "deliver":
                    _deliveryTarget(value, f"{path}: {key}")
        if key == "port":
            for port in values:
                config.listen.append(f"tcp:{_portNumber(port, named)}")
        else:
            getattr(config, key if key != "domain" else "domains").extend(values)
    tls = config.tls
    for key in _PATH_KEYS:
        source(key, key not in given and key in file)
    tls.cert = given.get("cert", file.get("cert"))
    tls.key = given.get("key", file.get("key"))
    tls.ca = given.get("ca", file.get("ca"))
    tls.sniDir = given.get("sniDir", file.get("sniDir"))
    tls.sni = dict(file.get("sni", {}))
    tls.sni.update(lists.get("sni", {}))  # type: ignore[arg-type]
    tls.origins = {key: config.origin(key) for key in _PATH_KEYS}
    tls.origins.update(
        {f"sni.{host}": f"{path}: sni.{host}" for host in file.get("sni", {})},
    )
    tls.origins.update({f"sni.{host}": f"--sni {host}" for host in lists.get("sni", {})})
    if "workers" in given and "workers" in file:
        _workers(file["workers"], f"{path}: workers")
    workersFrom = source("workers", "workers" not in given and "workers" in file)
    config.workers = _workers(given.get("workers", file.get("workers", 1)), workersFrom)
    if "maildirMinFree" in file:
        fileMinFree = wholeBytes(file["maildirMinFree"], f"{path}: maildirMinFree")
        if "maildirMinFree" not in given:
            source("maildirMinFree", True)  # (the file's, for the errors of later checks)
            config.maildirMinFree = fileMinFree
    if "maildirMinFree" in given:
        config.maildirMinFree = wholeBytes(given["maildirMinFree"], "--maildir-min-free")
    if not config.listen and not config.listenTLS:
        config.listen = [DEFAULT_LISTEN]
    if not config.deliver:
        config.deliver = [DEFAULT_DELIVERY]
    for target in config.deliver:
        _deliveryTarget(target, config.origin("deliver"))
    try:
        options = ServerOptions.fromMapping(config.serverOptions)
    except (TypeError, ValueError) as e:
        raise ConfigurationError(withFlags(str(e), config.sources)) from e
    if options.lmtp and any(listeningPort(d) == 25 for d in config.listen + config.listenTLS):
        # RFC 2033 section 5: LMTP must not be offered on the SMTP port.
        raise ConfigurationError(f"{config.origin('lmtp')} must not listen on port 25 (RFC 2033)")
    return config


#: The shortest longest command line the service takes: RFC 5321 section 4.5.3.1.4 has
#: servers accept command lines of 512 octets, CRLF included (maxCommandLength leaves the
#: CRLF out).
MIN_COMMAND_LENGTH: Final = 510
# SASL mechanisms whose whole exchange can be the AUTH command itself, with an initial
# response (RFC 4954 section 4); the others take at least one more line.
_ONE_LINE_MECHANISMS: Final = frozenset(("PLAIN", "XOAUTH2", "OAUTHBEARER"))


def checkUsable(options: ServerOptions, config: ServiceConfig) -> None:
    """
    Refuse a configuration whose server could start but serve nobody, or whose listeners
    some could never use: each is a mistake, and a server that starts and then refuses
    every client hides it until mail is lost.

    @param options: the options of the server as built (with AUTH switched off when the
        service has no C{--auth}).
    @raise ConfigurationError: saying which options, and why no client could get through.
    """
    name = config.origin
    if options.maxCommandLength < MIN_COMMAND_LENGTH:
        raise ConfigurationError(
            f"{name('maxCommandLength')} must be at least {MIN_COMMAND_LENGTH}, not "
            f"{options.maxCommandLength}: RFC 5321 section 4.5.3.1.4 has servers take command "
            "lines of 512 octets with their CRLF"
        )
    disabled = set(options.disabledCommands)
    # In LMTP, disabling EHLO disables LHLO (as in the reference), as LHLO itself does.
    hellos = [["EHLO"], ["LHLO"]] if options.lmtp else [["EHLO", "HELO"]]
    for needed in (*hellos, ["MAIL"], ["RCPT"]):
        if disabled >= set(needed):
            what = " and ".join(needed) + (
                " (which in LMTP is LHLO)" if needed == ["EHLO"] and options.lmtp else ""
            )
            raise ConfigurationError(
                f"{name('disabledCommands')} turns off {what}, without which no client can "
                "send mail"
            )
    if disabled >= {"DATA", "BDAT"}:
        raise ConfigurationError(
            f"{name('disabledCommands')} turns off DATA and BDAT, without which no client can "
            "send a message"
        )
    listeners = [(config.listener(d, secure), secure) for d, secure in config.listeners()]
    listeners += [(f"--inherit {fd}:plain", secure) for fd, secure in config.inherited]
    clear = [where for where, secure in listeners if not (options.secure or secure)]
    starttls = "STARTTLS" not in disabled
    if options.needsUpgrade and not starttls and clear:
        raise ConfigurationError(
            f"{name('needsUpgrade')} with STARTTLS in {name('disabledCommands')}: clients of "
            f"{clear[0]} must start TLS before anything else, and cannot"
        )
    if options.requestCert and options.rejectUnauthorized and options.ca is None:
        raise ConfigurationError(
            f"{name('requestCert')} needs {name('ca')}, the CAs client certificates must chain "
            "to: without it none verifies, and every handshake fails (with "
            "--no-reject-unauthorized, handlers judge unverified certificates instead)"
        )
    limit = options.maxAllowedUnauthenticatedCommands
    if options.authRequired and limit is not None:
        # What a client must send before it is authenticated, each line counted against
        # the limit (the command that reaches it is refused): EHLO, and STARTTLS and EHLO
        # again where AUTH waits for TLS; AUTH itself is not counted, but the lines of a
        # SASL exchange are.
        tlsFirst = options.needsUpgrade or (
            starttls and not options.hideSTARTTLS and not options.allowInsecureAuth
        )
        before = ["EHLO", "STARTTLS", "EHLO"] if tlsFirst and clear else ["EHLO"]
        sasl = 0 if _ONE_LINE_MECHANISMS & set(options.authMethods) else 1
        least = len(before) + sasl + 1
        if limit < least:
            steps = ", ".join(before) + (" and a SASL response" if sasl else "")
            raise ConfigurationError(
                f"{name('maxAllowedUnauthenticatedCommands')} must be at least {least} while "
                f"AUTH is required, not {limit}: a client's {steps} count before it has "
                "authenticated, and the command that reaches the limit is refused"
            )


#: The listen backlog the service asks for when an endpoint string does not say: Twisted's
#: own default of 50 overflows when a burst of clients connects at once, and each refused
#: SYN costs its client a second before it tries again.  511 is node's and nginx's value.
LISTEN_BACKLOG = 511

# The endpoint types whose strings take a backlog= argument.
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "unix")


def withListenBacklog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """
    C{description} with C{backlog=N} added when it is a TCP, TLS or Unix socket endpoint
    string that does not set a backlog itself; any other string unchanged.
    """
    kind, *arguments = _endpointParts(description)
    if kind not in _BACKLOG_KINDS or not arguments or not arguments[-1]:
        return description
    if any(argument.startswith("backlog=") for argument in arguments):
        return description
    return f"{description}:backlog={backlog}"


def listenEndpoint(reactor: Any, description: str, source: str) -> IStreamServerEndpoint:
    """
    The endpoint the service listens on for C{description} (with the service's
    backlog, see L{withListenBacklog}), or a L{ConfigurationError} naming it.

    @param source: how to name it in an error (L{ServiceConfig.listener}).
    """
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, withListenBacklog(description))
    except Exception as e:
        # Each kind of endpoint has its own parser (a plugin's, perhaps), and what they
        # raise for a bad string ranges from ValueError to IndexError.
        raise ConfigurationError(f"{source}: {endpointProblem(e, description)}") from e
    return endpoint


def clientEndpoint(reactor: Any, description: str, source: str) -> IStreamClientEndpoint:
    """
    The client endpoint for C{description}, or a L{ConfigurationError} naming it.

    @param source: how to name it in an error (C{"--deliver smtp:tcp:host=..."}).
    """
    try:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
    except Exception as e:
        raise ConfigurationError(f"{source}: {endpointProblem(e, description)}") from e
    return endpoint


def endpointProblem(error: Exception, description: str) -> str:
    """
    What is wrong with endpoint string C{description}, in words, from what Twisted's
    parser for it raised (which names Python's internals rather than the string's parts).
    """
    text = str(error)
    if isinstance(error, OSError):
        # ssl: reads its certificate files as it parses.
        return f"cannot read {error.filename}: {error.strerror}" if error.strerror else text
    if _endpointParts(description)[0] == "systemd" and isinstance(error, (IndexError, KeyError)):
        return (
            "systemd passed no such socket (a systemd: listener works only when the "
            "service is started by its socket unit)"
        )
    number = re.search(r"invalid literal for int\(\) with base 10: (.*)", text)
    if number:
        return f"{number.group(1)} is not a whole number"
    missing = re.search(
        r"missing \d+ required (?:positional |keyword-only )?arguments?: (.*)", text
    )
    if missing:
        return f"it needs {missing.group(1)}"
    unexpected = re.search(r"unexpected keyword argument (.*)", text)
    if unexpected:
        return f"unknown argument {unexpected.group(1)}"
    return text or type(error).__name__


def checkListeners(config: ServiceConfig) -> None:
    """
    Parse every listener of C{config} (without listening), so that a bad one stops the
    command with one line naming it, before anything is served.

    @raise ConfigurationError: for an endpoint string Twisted cannot parse.
    """
    for description, secure in config.listeners():
        # Parsing uses no reactor: the endpoint is only made, never listened on.
        listenEndpoint(object(), description, config.listener(description, secure))


def checkSocketDirectories(config: ServiceConfig) -> None:
    """
    Refuse a Unix socket listener whose directory does not exist, when the service is
    about to listen (Twisted would report the failure of its lock file's symlink).
    """
    for description, secure in config.listeners():
        kind, *arguments = _endpointParts(description)
        # The address is the first argument without a name, or address=.
        paths = [a.removeprefix("address=") for a in arguments if a.startswith("address=")]
        paths += [a for a in arguments if "=" not in a]
        if kind == "unix" and paths and paths[0]:
            path = _unescaped(paths[0])
            directory = os.path.dirname(os.path.abspath(path))
            if not path.startswith(("\0", "@")) and not os.path.isdir(directory):
                raise ConfigurationError(
                    f"{config.listener(description, secure)}: no directory {directory}"
                )


def _unescaped(part: str) -> str:
    # An endpoint string's part without the backslashes that escape its characters.
    return re.sub(r"\\(.)", r"\1", part)


def _endpointParts(description: str) -> list[str]:
    # The colon-separated parts of an endpoint string, where a backslash escapes the
    # character after it (tcp6:25:interface=\:\: has three parts).
    parts = [""]
    escaped = False
    for c in description:
        if escaped:
            parts[-1] += "\\" + c
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append("")
        else:
            parts[-1] += c
    return parts


def listeningPort(description: str) -> int | None:
    """
    The TCP port an endpoint description such as C{tcp:25:interface=::} listens on, as
    Twisted reads it; L{None} for endpoints of other kinds.
    """
    kind, *arguments = _endpointParts(description)
    if kind in ("tcp", "tcp6"):
        try:
            where = tcpListening(description)
        except (ValueError, TypeError):
            # Twisted refuses it (listening will fail with its error); the port it names
            # still counts for the checks made before.
            return _portArgument(arguments)
        return where.port if where is not None else None
    # Parsing an ssl: string loads its certificate: read its arguments instead.
    return _portArgument(arguments) if kind == "ssl" else None


def _portArgument(arguments: list[str]) -> int | None:
    # The port among an endpoint's arguments: the first, unnamed, or port=.
    for position, argument in enumerate(arguments):
        value = argument.removeprefix("port=")
        if (value != argument or position == 0) and value.isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class TCPListening:
    """
    Where a C{tcp:} or C{tcp6:} endpoint string listens, as Twisted parses it.
    """

    interface: str
    port: int
    backlog: int


class _ListenTCPRecorder:
    # Stands in for the reactor of a TCP server endpoint: TCP4ServerEndpoint and
    # TCP6ServerEndpoint listen by handing their port, backlog and interface to
    # IReactorTCP.listenTCP, so this learns what Twisted parsed without reading the
    # endpoint's private attributes.
    def __init__(self) -> None:
        self.recorded: list[TCPListening] = []

    def listenTCP(
        self, port: object, factory: object, backlog: object = 50, interface: object = ""
    ) -> None:
        # Anything but a plain port number (a Twisted that passes something richer) is
        # left out, and the caller falls back to one shared socket.
        if isinstance(port, int) and isinstance(backlog, int) and isinstance(interface, str):
            self.recorded.append(TCPListening(interface, port, backlog))


def tcpListening(description: str) -> TCPListening | None:
    """
    The interface, port and backlog of a C{tcp:} or C{tcp6:} endpoint string, as
    C{serverFromString} parses them; L{None} for any other kind of endpoint.

    @raise ValueError: if Twisted cannot parse C{description}.
    """
    if _endpointParts(description)[0] not in ("tcp", "tcp6"):
        # Other parsers may use the reactor (or, for ssl:, read files).
        return None
    recorder = _ListenTCPRecorder()
    endpoint = serverFromString(recorder, description)
    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        return None
    endpoint.listen(Factory())  # type: ignore[no-untyped-call]
    return recorder.recorded[0] if len(recorder.recorded) == 1 else None
