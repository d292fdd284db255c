"""Full tracebacks of unexpected errors go to a log file, so the console shows one line and a user can report it.

Folder: ``$VLSCALE_LOG_DIR``, else ``$XDG_STATE_HOME/vlscale/logs`` (``~/.local/state/vlscale/logs``), else the
system temp folder's ``vlscale-logs`` when the first cannot be written.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

LOG_DIR_ENV = "VLSCALE_LOG_DIR"


def log_dirs() -> list[Path]:
    if os.environ.get(LOG_DIR_ENV):
        return [Path(os.environ[LOG_DIR_ENV])]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return [Path(state) / "vlscale" / "logs", Path(tempfile.gettempdir()) / "vlscale-logs"]


def write_crash_log(exc: BaseException, argv: list[str] | None) -> Path | None:
    """Writes the traceback of ``exc`` with the command line and versions; returns the file (None if no folder
    could be written)."""
    from vlscale import __version__

    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = (
        f"vlscale {__version__} crash log {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
        f"command: vlscale {' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"python {sys.version.split()[0]} on {platform.platform()}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    for folder in log_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"crash-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``TypeName: first line of the message`` cut to ``limit`` characters."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
