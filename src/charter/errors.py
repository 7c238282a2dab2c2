"""One exception type for every mistake a user can make.

The CLI prints `CharterError` as a single line (no traceback) and exits non-zero;
anything else is a bug in charter and keeps its traceback.
"""


class CharterError(Exception):
    """A user-facing error; the message names the file:line or key at fault."""


def where(path, line=None) -> str:
    """Render a location as `file:line` (line is 1-based) or just `file`."""
    return f"{path}:{line}" if line else str(path)
