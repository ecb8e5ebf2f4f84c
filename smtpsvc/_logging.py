"""
The server's logger: one that does not make the events below a level.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel


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
        if level in self._made:
            super().emit(level, format, **kwargs)

    def line(self, text: str, **fields: object) -> None:
        """
        Log, at info level, a line written once per connection or per message: C{text},
        with C{fields} as the event's structured fields and C{text} among them.
        """
        # The text is the event's format, with its braces doubled so that it names no
        # field: a JSON log observer copies each field a format names into the event
        # once more, and a format naming each value would have doubled the line's cost.
        if LogLevel.info in self._made:
            self.emit(
                LogLevel.info, text.replace("{", "{{").replace("}", "}}"), text=text, **fields
            )
