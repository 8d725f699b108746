"""Text for the terminal: names that come from outside (file names, stream names, DICOM-derived
messages) may carry escape codes that would recolour, move the cursor, retitle or clear the
user's terminal. `terminal_safe` shows every control character as a visible escape (`\\x1b`);
`say` prints one line to stderr through it. Every line of the CLI that can hold a name goes through here.
"""

from __future__ import annotations

import os
import re
import sys

# C0 controls except tab and newline, DEL, and the C1 controls (0x80-0x9f; U+009B is a one-byte CSI)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
PIPE_WIDTH = 200    # columns a table may take when the output is not a terminal


def terminal_safe(text: str) -> str:
    """`text` with every terminal control character (ESC, CR, BEL, backspace, CSI, ...) written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def say(text: str, *, file=None) -> None:
    """Print one line to stderr (or `file`), control characters escaped. A stream that cannot be written
    (stderr closed, or on a full disk) loses the line, not the run: the results files are what matters."""
    stream = file or sys.stderr
    if stream is None:
        return
    try:
        print(terminal_safe(text), file=stream, flush=True)
    except (OSError, ValueError):     # ENOSPC on a full log disk, a closed file
        pass


def rich_console(**kwargs):
    """A rich Console whose printed lines are never hard-wrapped: a one-line error or note stays one
    line in logs, pipes and narrow terminals (Rich wraps at 80 columns when it cannot see a terminal).
    Tables fit the width: the terminal's, else PIPE_WIDTH (COLUMNS when set)."""
    from rich.console import Console

    console = Console(soft_wrap=True, **kwargs)
    if not console.is_terminal and "width" not in kwargs and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH      # a table in a log or a pipe is not cut to 80 columns either
    return console


def line_printer(to):
    """A `log` callable for library code: each message printed on `to` (a rich Console) as plain text,
    control characters escaped; never read as Rich markup (a path such as `scans/[old]/x.png` prints
    as it is, instead of losing `[old]` or raising on `[/x]`)."""
    return lambda message: to.print(terminal_safe(message), markup=False, highlight=False)
