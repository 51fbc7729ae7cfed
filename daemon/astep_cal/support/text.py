"""Text from files, made safe for a terminal.

A file name, an error message or a received summary may hold control characters: an escape sequence
printed raw can move the cursor, rewrite the screen or set the terminal's title. What the commands
print from such sources goes through :func:`printable`.
"""

from __future__ import annotations


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` with every control character shown as a Python escape (``\\x1b``), newlines kept
    when asked (a multi-line report)."""
    return "".join(c if c.isprintable() or (keep_newlines and c == "\n") else repr(c)[1:-1] for c in str(text))
