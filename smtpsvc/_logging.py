"""
The server's logger: one that does not make the events below a level.
"""

from __future__ import annotations

from time import time
from typing import cast

from twisted.logger import ILogObserver, Logger, LogLevel


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
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time(),
        )
        if "log_trace" in kwargs:
            trace = cast("list[tuple[Logger, ILogObserver]]", kwargs["log_trace"])
            trace.append((self, self.observer))
        self.observer(kwargs)

    def line(self, text: str, **fields: object) -> None:
        """
        Log, at info level, a line written once per connection or per message: C{text},
        with C{fields} as the event's structured fields and C{text} among them.
        """
        # The text is the event's format, with its braces doubled so that it names no
        # field: a JSON log observer copies each field a format names into the event
        # once more, and a format naming each value would have doubled the line's cost.
        # (Below info, emit drops it; the callers, which build the text, ask wants first.)
        self.emit(LogLevel.info, text.replace("{", "{{").replace("}", "}}"), text=text, **fields)
