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
- object stores (``gs://``): no ``flock`` exists. By default ``exclusive`` does nothing there (a training
  workdir: one writer per workdir is the launcher's job, and a preempted pod must resume on other hosts without
  a stale lock in its way). With ``object_store=True`` (a study directory) the lock is the object
  ``FOLDER/.vlscale.lock``, created only if absent (GCS's ``ifGenerationMatch=0`` precondition, gcsfs's
  ``mode="create"``): a second writer anywhere gets ``Busy``. The holder deletes it on exit; a holder killed
  (SIGKILL, a lost machine) leaves it behind. Its record is then taken over only on the same host when its pid
  no longer exists (takeovers on one host are serialised by a local ``flock``); a record from another host
  cannot be checked, so ``Busy`` says to remove the object once that holder is known to be gone.
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
from vlscale.runtime import files, paths

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
        return json.loads((paths.resolve(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive(folder, *, flag: str = "--workdir", command: str | None = None, object_store: bool = False):
    """Holds the folder's lock for the block; ``Busy`` (one line naming the holder) if another process holds it.

    Yields the previous holder's record when this process took over a lock whose holder had died (else None).
    ``object_store``: lock an object-store folder too (a lock object, see the module doc); else it is not locked.
    """
    if files.is_remote(folder):
        if not object_store:
            yield None
            return
        with _object_lock(folder, flag=flag, command=command) as previous:
            yield previous
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


# ------------------------------------------------------------------------------------------------ object stores
def _record(command: str | None) -> dict:
    import uuid

    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command, "token": uuid.uuid4().hex}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True  # exists but not ours (EPERM), or unreadable: not provably dead
    return True


def _read_object(fs, key: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(key))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


@contextlib.contextmanager
def _host_mutex(url: str):
    """Serialises this host's takeovers of one lock object (a local flock keyed by the URL)."""
    import fcntl
    import hashlib
    import tempfile

    folder = Path(tempfile.gettempdir()) / "vlscale-object-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cannot_write(flag: str, folder, e: BaseException) -> UserError:
    return UserError(f"{flag} {folder}: cannot write there ({files.remote_error(e)})")


def _busy(flag: str, folder, url: str, holder: dict | None) -> Busy:
    return Busy(f"{flag} {folder} is in use by {_describe(holder)}; wait for it to finish or stop it (one writer at "
                f"a time: {url}; if that process is gone for good, e.g. its machine was preempted, delete {url} "
                "and run again)")


def _acquire(fs, key: str, url: str, data: bytes, folder, flag: str) -> dict | None:
    """Creates the lock object (or takes over a dead holder's on this host); the previous holder's record or None."""
    for _ in range(3):
        try:
            fs.pipe_file(key, data, mode="create")
            return None
        except FileExistsError:
            pass
        holder = _read_object(fs, key)
        if holder is None:
            continue  # released between our create and our read: try again
        if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
            raise _busy(flag, folder, url, holder)
        fs.rm_file(key)  # its holder died on this host; only this host's takers get here, one at a time
        try:
            fs.pipe_file(key, data, mode="create")
        except FileExistsError:
            raise _busy(flag, folder, url, _read_object(fs, key)) from None
        return holder
    raise _busy(flag, folder, url, _read_object(fs, key))


@contextlib.contextmanager
def _object_lock(folder, *, flag: str, command: str | None):
    import fsspec

    url = f"{os.fspath(folder).rstrip('/')}/{LOCK_NAME}"
    record = _record(command)
    try:
        fs, key = fsspec.core.url_to_fs(url)
        with _host_mutex(url):
            previous = _acquire(fs, key, url, (json.dumps(record) + "\n").encode(), folder, flag)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - no bucket, no permission, no network: one line at the start
        raise _cannot_write(flag, folder, e) from None
    try:
        yield previous
    finally:
        try:
            if (_read_object(fs, key) or {}).get("token") == record["token"]:
                fs.rm_file(key)
        except Exception as e:  # noqa: BLE001 - the work is done; a lock left behind is taken over or removed
            print(f"vlscale: warning: could not remove the lock {url} ({type(e).__name__}: {e})", file=sys.stderr)
