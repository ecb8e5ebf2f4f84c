"""
The server's logger: one that does not make the events below a level.
"""

from __future__ import annotations

from time import time
from typing import cast

from twisted.logger import ILogObserver, Logger, LogLevel


def hostPort(host: object, port: object) -> str:
    """
    C{host:port} for a log line, with an IPv6 address in brackets (RFC 5952 section 6):
    C{2001:db8::6:2222} would itself read as an address.
    """
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class LevelLogger(Logger):
    """
    A L{Logger} that drops the events below C{level} before they are made.

    Observers filter by level too (C{twist --log-level}), but only once an event has
    been made and published; a busy server that is not going to keep its info lines
    should not pay for building them.  Callers that build a costly line ask L{wants}
    first.

    @ivar level: the least severe level of the events made.
    """

    def __init__(self, namespace: str, level: LogLevel) -> None:
        super().__init__(namespace)
        self.level = level
        # A set, not comparisons: a constant's ordering costs a Python call each time.
        self._made = frozenset(other for other in LogLevel.iterconstants() if other >= level)

    def wants(self, level: LogLevel) -> bool:
        """
        Whether an event at C{level} would be made.
        """
        return level in self._made

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        # The event Logger.emit makes, without its check that level is a LogLevel:
        # being one of _made's is that check already, and Logger.emit's sorts LogLevel's
        # constants for each event, a tenth of what a line per message costs in all
        # (JSON log included).  test_sameEvents compares the two events.
        if level not in self._made:
            return
        if "log_trace" in kwargs:
            trace = cast("list[tuple[Logger, ILogObserver]]", kwargs["log_trace"])
            trace.append((self, self.observer))
        self._publish(kwargs, level, format)

    def _publish(self, event: dict[str, object], level: LogLevel, format: str | None) -> None:
        # Complete the event made of a call's keywords (the call's own dictionary, which
        # no one else holds) and publish it.
        event["log_logger"] = self
        event["log_level"] = level
        event["log_namespace"] = self.namespace
        event["log_source"] = self.source
        event["log_format"] = format
        event["log_time"] = time()
        self.observer(event)

    def line(self, text: str, **fields: object) -> None:
        """
        Log, at info level, a line written once per connection or per message: C{text},
        with C{fields} as the event's structured fields and C{text} among them.
        """
        # (Below info, nothing is made; the callers, which build the text, ask wants
        # first.)
        if LogLevel.info not in self._made:
            return
        # The text is the event's format, with its braces doubled so that it names no
        # field: a JSON log observer copies each field a format names into the event
        # once more, and a format naming each value would have doubled the line's cost.
        # The event is the dictionary of this call's keywords: passed on to emit as
        # keywords, it would be copied again (this is the event logged for each message).
        fields["text"] = text
        self._publish(fields, LogLevel.info, text.replace("{", "{{").replace("}", "}}"))
