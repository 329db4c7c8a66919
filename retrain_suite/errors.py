"""The one family of errors a user can cause, and how any error reads on one line.

Every error a user can cause (a flag, a path, an image folder, a module, a
damaged file, a full disk, an accuracy below what was asked) is a SuiteError;
each subclass lives in the room it comes from and its `area` names that room.
Each command catches SuiteError once, at its edge, and prints one `error:`
line. Anything else is a programming error and keeps its traceback.
"""

import re

MAX_LINE = 300  # characters of one_line's result; a longer reason is cut with "..."


class SuiteError(Exception):
    """An error the user can cause and fix; its message says how, in one line."""

    area = "run"


def one_line(error):
    """An exception as one short line, without TensorFlow's op context.

    A Session's op error reads "Graph execution error:", then where the op
    was defined, then the reason, then the node: the reason is the last line
    that is not that context. A line past MAX_LINE characters is cut.
    """
    text = str(getattr(error, "message", None) or error)
    text = re.sub(r"\{\{.*?\}\}\s*", "", text).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() not in ("", "[[]]")]
    if lines and lines[0] == "Graph execution error:":
        reasons = [line for line in lines[1:] if not line.startswith(
            ("Detected at node", "File ", "Node:"))]
        lines = reasons[-1:] or lines
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."
