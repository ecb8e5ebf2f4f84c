"""
The ``smtpsvc-options`` directive: the options table, generated from the one declaration of
the options in L{smtpsvc._options}; and the ``smtpsvc-service-flags`` directive: the table
of the flags ``twist smtpsvc`` has besides them, generated from its command line
(L{smtpsvc.tap.Options}) with the texts ``--help`` shows.

The directives write reStructuredText (for the options, a rubric and a ``list-table`` per
option group, groups in the order they are first declared) and parse it in place, so the
options' documentation strings keep their inline markup and roles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from smtpsvc import _options, tap
from smtpsvc._config import unsetNote
from smtpsvc._options import OptionSpec

_HEADERS = ("Option", "Command-line flag", "Default", "Description")
# Group headings that are not just the group's name capitalised.
_GROUP_NAMES = {"tls": "TLS", "auth": "Authentication"}


def _literal(text: str) -> str:
    """
    Inline RST showing C{text} verbatim.
    """
    if text and text == text.strip() and "`" not in text and "\\" not in text:
        return f"``{text}``"
    escaped = text.replace("\\", "\\\\").replace("`", "\\`")
    return f":literal:`{escaped}`"


def _plain(text: str) -> str:
    """
    Inline RST showing C{text} as ordinary text, with any markup characters escaped.
    """
    return re.sub(r"([\\`*_|<>\[\]:])", r"\\\1", text)


def _flags(spec: OptionSpec) -> str:
    if not spec.cli:
        return ", ".join(_literal(form) for form in spec.cliForms) or "(none)"
    if spec.isFlag:
        return f"{_literal('--' + spec.flag)} / {_literal('--no-' + spec.flag)}"
    return _literal("--" + spec.flag)


def _default(spec: OptionSpec) -> str:
    # A described default ("the machine's host name") and the words shown for no value
    # ("unset", "empty", "none") are prose; everything else is a value to show verbatim.
    if spec.defaultText is not None or spec.default in (None, "", ()):
        return _plain(spec.shownDefault)
    return _literal(spec.shownDefault)


def _description(spec: OptionSpec) -> list[str]:
    lines = spec.doc.strip().splitlines() or [""]
    if spec.choices:
        lines += ["", "One of " + ", ".join(_literal(c) for c in spec.choices) + "."]
    note = unsetNote(spec)
    if note is not None:
        lines += ["", note]
    return lines


def _cell(first: bool, lines: Iterable[str]) -> list[str]:
    """
    One cell of a list-table row, the first of its row or not.
    """
    out = []
    for i, line in enumerate(lines):
        if i == 0:
            out.append(("   * - " if first else "     - ") + line)
        else:
            out.append(("       " + line) if line.strip() else "")
    return out


def _groups(specs: Iterable[OptionSpec]) -> dict[str, list[OptionSpec]]:
    """
    The options by group, groups in first-seen order.
    """
    groups: dict[str, list[OptionSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append(spec)
    return groups


def optionsTableSource(specs: Iterable[OptionSpec]) -> list[str]:
    """
    The reStructuredText of the options tables.
    """
    lines: list[str] = []
    for group, members in _groups(specs).items():
        heading = _GROUP_NAMES.get(group, group.capitalize())
        lines += [f".. rubric:: {_plain(heading)}", ""]
        lines += [".. list-table::", "   :header-rows: 1", "   :widths: 20 20 15 45", ""]
        lines += _cell(True, [_HEADERS[0]])
        for header in _HEADERS[1:]:
            lines += _cell(False, [header])
        for spec in members:
            lines += _cell(True, [_literal(spec.name)])
            lines += _cell(False, [_flags(spec)])
            lines += _cell(False, [_default(spec)])
            lines += _cell(False, _description(spec))
        lines.append("")
    return lines


#: For each flag of ``twist smtpsvc`` that is not an option's: what it takes (or None), and
#: the page that describes it (None for Twisted's own --help and --version).  A flag
#: missing here stops the documentation's build, so a new one cannot go undocumented.
SERVICE_FLAGS: dict[str, tuple[str | None, str | None]] = {
    "config": ("FILE", "service"),
    "listen": ("ENDPOINT", "service"),
    "listen-tls": ("ENDPOINT", "tls"),
    "port": ("PORT", "service"),
    "deliver": ("TARGET", "service"),
    "maildir-min-free": ("BYTES", "delivery-maildir"),
    "domain": ("DOMAIN", "service"),
    "auth": ("SOURCE", "auth"),
    "help-auth": (None, "auth"),
    "help-auth-type": ("SOURCE", "auth"),
    "cert": ("FILE", "tls"),
    "key": ("FILE", "tls"),
    "ca": ("FILE", "tls"),
    "sni": ("HOST=CERT[,KEY]", "tls"),
    "sni-dir": ("DIR", "tls"),
    "workers": ("N", "service"),
    "inherit": ("FD:KIND", "service"),
    "inherit-certificates": ("FILE", "service"),
    "help": (None, None),
    "version": (None, None),
}


def serviceFlags(options: tap.Options) -> list[tuple[str, str]]:
    """
    The flags of C{options} that no server option generated, each with its C{--help}
    text as one line, in the order C{--help} lists them.
    """
    generated = set()
    for spec in _options.optionSpecs():
        if spec.cli:
            generated |= {spec.flag, f"no-{spec.flag}"}
    flags = []
    for name in options.longOpt:
        flag = name.rstrip("=")
        if flag not in generated:
            flags.append((flag, " ".join((options.docs.get(flag) or "").split())))
    return flags


def _withFlags(text: str) -> str:
    """
    Inline RST showing plain C{text} with the flags it names (C{--auth-optional}) as
    literals, which typography would otherwise turn into dashes.
    """
    parts = re.split(r"(--[a-z0-9][a-z0-9-]*)", text)
    return "".join(_literal(part) if i % 2 else _plain(part) for i, part in enumerate(parts))


def serviceFlagsSource(flags: Iterable[tuple[str, str]]) -> list[str]:
    """
    The reStructuredText of the table of the service's own flags.

    @raise ValueError: for a flag L{SERVICE_FLAGS} does not know.
    """
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 25 55 20", ""]
    lines += _cell(True, ["Flag"]) + _cell(False, ["Description (as --help says)"])
    lines += _cell(False, ["Described in"])
    for flag, text in flags:
        if flag not in SERVICE_FLAGS:
            raise ValueError(f"--{flag} is not in SERVICE_FLAGS (docs/_ext/smtpsvc_options.py)")
        argument, page = SERVICE_FLAGS[flag]
        lines += _cell(True, [_literal(f"--{flag}" + (f" {argument}" if argument else ""))])
        lines += _cell(False, [_withFlags(text)])
        lines += _cell(False, [f":doc:`{page}`" if page else "this list"])
    lines.append("")
    return lines


class SMTPServiceFlagsDirective(SphinxDirective):
    """
    C{.. smtpsvc-service-flags::}: takes no arguments and renders the flags of C{twist
    smtpsvc} that are not options'.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        if tap.__file__:
            self.env.note_dependency(tap.__file__)
        source, line = self.get_source_info()
        try:
            rst = serviceFlagsSource(serviceFlags(tap.Options()))
        except ValueError as e:
            raise self.error(str(e)) from e
        content = StringList()
        for text in rst:
            content.append(text, source, line)
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


class SMTPServiceOptionsDirective(SphinxDirective):
    """
    C{.. smtpsvc-options::}: takes no arguments and renders every option.
    """

    has_content = False

    def run(self) -> list[nodes.Node]:
        if _options.__file__:
            self.env.note_dependency(_options.__file__)
        source, line = self.get_source_info()
        content = StringList()
        for text in optionsTableSource(_options.optionSpecs()):
            content.append(text, source, line)
        container = nodes.container()
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, object]:
    """
    Register the directive.
    """
    app.add_directive("smtpsvc-options", SMTPServiceOptionsDirective)
    app.add_directive("smtpsvc-service-flags", SMTPServiceFlagsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
