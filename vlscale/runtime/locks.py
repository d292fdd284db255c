"""One writer per folder: an advisory lock on ``FOLDER/.vlscale.lock`` that records who holds it.

    with locks.exclusive(workdir, flag="--workdir", command="vlscale train"):
        ...                     # a second process gets a UserError naming the holder (host, pid, since when)

The lock is ``flock`` on the open lock file, held by the kernel for as long as the holder's file descriptor is
open. It is released when the holder exits in any way (SIGKILL and crashes included), so a lock left by a dead
process is no lock at all: the next writer takes it at once and overwrites the holder record. There is no
stale-lock guessing by pid or age, hence no race in taking over.

What it guarantees (docs/security.md):
- local disks: two processes on one machine never both hold it;
- NFS (v3 with lockd, v4): Linux maps ``flock`` to a whole-file POSIX lock on the server, so processes on
  different machines exclude each other too; a client that dies loses the lock when the server's lease
  expires (NFSv4: about 90 s);
- object stores (``gs://``, ``s3://``): no lock exists; ``exclusive`` does nothing there, and one writer per
  workdir is the launcher's job (the study launcher gives each run its own job and workdir).
A file system without lock support (an NFS mount with ``nolock``) raises ``ENOLCK``: a warning, no lock.
The lock file stays after release (removing a lock file another process may be opening is a race).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from vlscale.errors import UserError
from vlscale.runtime import files

LOCK_NAME = ".vlscale.lock"


class Busy(UserError):
    """The folder is held by another process (the message names it)."""


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process (its record is unreadable)"
    when = holder.get("since")
    since = f", since {when}" if when else ""
    what = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}{what}"


def read_holder(folder) -> dict | None:
    """The record the current (or last) holder wrote, or None."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive(folder, *, flag: str = "--workdir", command: str | None = None):
    """Holds the folder's lock for the block; ``Busy`` (one line naming the holder) if another process holds it.

    Yields the previous holder's record when this process took over a lock whose holder had died (else None).
    """
    if files.is_remote(folder):
        yield None
        return
    path = Path(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not _try_lock(fd, path):
            holder = None
            for _ in range(20):  # the holder writes its record just after taking the lock
                holder = read_holder(folder)
                if holder:
                    break
                time.sleep(0.05)
            raise Busy(f"{flag} {folder} is in use by {_describe(holder)}; wait for it to finish or stop it "
                       f"(one writer at a time: {path})")
        previous = read_holder(folder)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield previous if previous and previous.get("pid") != os.getpid() else None
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int, path: Path) -> bool:
    """True if this process now holds the lock (or the file system has no locks: warned), False if another does."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno != errno.ENOLCK:
            raise
        print(f"vlscale: warning: {path}: the file system does not support locks; nothing stops a second writer",
              file=sys.stderr)
    return True
