"""Where commands write: checked before any work starts, written so that no half-written set is ever left.

Check first (one-line ``UserError`` naming the flag and the path; creates nothing)::

    out = check_output_dir(args.out)           # a folder that can be created or written
    f = check_output_file(args.out, suffixes=(".npz",))

A command that owns its ``--out`` folder (``vlscale fit``, ``compare``, ``convert``, ``data synth``) builds the
whole set in a temporary folder beside it, then moves it into place in one step::

    with atomic_output_dir(args.out, owned=("fit.json", "fit.png")) as tmp:
        rep.save(tmp)                          # write as if tmp were the target
    # here OUT holds the complete new set; on an exception or Ctrl-C, OUT is untouched and tmp is gone

If OUT does not exist yet, the temporary folder is renamed to it (atomic). If it exists, each new entry replaces
its namesake, and the entries matching ``owned`` (names or glob patterns of what this command writes; keep them
narrow, OUT may be a folder full of the user's files) that the new set lacks are removed, so a new fit never
sits beside the previous run's ``fit.png``. Everything else in OUT stays.
The move runs inside ``signals.deferred()``, so Ctrl-C cannot cut it in half.

A command that adds to a folder others also write to (eval's OUT, a study's DIR, a training workdir) writes each
file on its own, atomically, and never removes anything::

    atomic_write_text(path, text)             # temp file in the same folder, then os.replace
    atomic_write_bytes(path, data)            # (an object store: one whole-object write)
    atomic_write_json(path, obj)
    with atomic_path(path) as tmp:            # for writers that want a path: np.savez, torch.save, savefig
        np.savez(tmp, ...)
    append_rows(results_csv, rows)            # CSV rows added under a lock; the header grows if needed
    append_new_rows(results_csv, rows, key)   # the same, skipping rows whose key is already there

Readers therefore see either the old file or the new one, never a prefix of it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping, Sequence

from vlscale.runtime import signals
from vlscale.errors import UserError
from vlscale.runtime import csv_cells

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _nearest_existing(p: Path) -> Path:
    for a in (p, *p.parents):
        if os.path.lexists(a):
            return a
    return Path("/")


def _probe_writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else the reason (creates nothing lasting)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_output_dir(path: str | os.PathLike, *, flag: str = "--out", remote_ok: bool = False) -> Path:
    """``path`` as a Path if it is, or can be created as, a writable folder; else a one-line UserError.

    Rejects an existing file, a path under a file, and a folder (or nearest existing parent) that cannot be
    written. Creates nothing. An object-store URL is refused unless the caller writes through this module
    (``remote_ok``); then it is checked by writing and deleting a probe object, and returned as an epath.
    """
    if is_remote(path):
        return _check_remote(path, flag, remote_ok)
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{flag}: empty path")
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p}: is an existing file, not a folder")
    _check_creatable(p, p, flag)
    return p


def _check_creatable(p: Path, start: Path, flag: str) -> None:
    """The nearest existing folder at or above ``start`` is a folder this process can write in."""
    base = _nearest_existing(start)
    if not base.is_dir():
        raise UserError(f"{flag} {p}: {base} is a file, so no folder can be made under it")
    reason = _probe_writable(base)
    if reason:
        raise UserError(f"{flag} {p}: cannot write in {base} ({reason})")


def check_output_file(path: str | os.PathLike, *, flag: str = "--out", suffixes: Sequence[str] | None = None,
                      remote_ok: bool = False) -> Path:
    """``path`` as a Path if a file can be written there (its folder may not exist yet); else a UserError.

    ``suffixes``: the accepted file name endings (lower case, with the dot), e.g. (".pt", ".safetensors").
    ``remote_ok``: as in ``check_output_dir`` (the probe object goes beside the file).
    """
    if is_remote(path):
        if suffixes and os.path.splitext(os.fspath(path))[1].lower() not in suffixes:
            raise UserError(f"{flag} {os.fspath(path)}: use a file name ending in {' or '.join(suffixes)}")
        _check_remote(os.fspath(path).rstrip("/").rsplit("/", 1)[0], flag, remote_ok, shown=os.fspath(path))
        from etils import epath

        return epath.Path(os.fspath(path))
    p = Path(path)
    if str(path) == "":
        raise UserError(f"{flag}: empty path")
    if p.is_dir():
        raise UserError(f"{flag} {p}: is an existing folder; give a file name")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {p}: use a file name ending in {' or '.join(suffixes)}")
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {p}: {parent} is a file, not a folder")
    _check_creatable(p, parent, flag)
    return p


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, *, owned: Sequence[str] = (), flag: str = "--out"):
    """Yields a temporary folder beside ``path``; on success moves its entries into ``path`` together.

    ``owned``: glob patterns of the names this command writes; entries of an existing ``path`` that match them
    but are not in the new set are removed (a stale file of the previous run). Other entries are never touched.
    On any exception (Ctrl-C included) the temporary folder is deleted and ``path`` is left as it was.
    """
    target = check_output_dir(path, flag=flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like any new folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        signals.raise_if_pending()  # a Ctrl-C whose exception was swallowed: do not publish after it
        with signals.deferred():
            _commit_dir(tmp, target, owned)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _commit_dir(tmp: Path, target: Path, owned: Sequence[str]) -> None:
    if not target.exists():
        try:
            os.rename(tmp, target)
            return
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    new = {p.name for p in tmp.iterdir()}
    for old in target.iterdir():
        if old.name not in new and any(fnmatch.fnmatch(old.name, pat) for pat in owned):
            _remove(old)
    for name in sorted(new):
        src, dst = tmp / name, target / name
        if src.is_dir() or (dst.is_dir() and not dst.is_symlink()):
            # Folders cannot be os.replace'd over non-empty ones: move the old aside, the new in, then delete.
            trash = None
            if os.path.lexists(dst):
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=target))
                os.rename(dst, trash / name)
            os.rename(src, dst)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(src, dst)
    tmp.rmdir()


def is_remote(path: str | os.PathLike) -> bool:
    """An object-store or other URL path (``gs://bucket/x``), read and written through ``etils.epath``."""
    return "://" in os.fspath(path)


def _check_remote(path, flag: str, remote_ok: bool, shown: str | None = None):
    """An object-store folder this process can write in (a probe object written and deleted), as an epath."""
    from etils import epath

    shown = shown or os.fspath(path)
    if not remote_ok:
        raise UserError(f"{flag} {shown}: this command writes to a local or mounted folder only, not object storage")
    folder = epath.Path(os.fspath(path))
    import uuid

    probe = folder / f".vlscale-write-check-{uuid.uuid4().hex}"
    try:
        if folder.is_file():
            raise UserError(f"{flag} {shown}: is an existing object, not a folder")
        probe.write_bytes(b"")
        probe.unlink()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - no bucket, no permission, no network: one line before any work
        raise UserError(f"{flag} {shown}: cannot write there ({remote_error(e)})") from None
    return folder


def remote_error(e: BaseException) -> str:
    """An object-store failure in a few words (gcsfs reports a missing bucket as FileNotFoundError(URL))."""
    if isinstance(e, FileNotFoundError):
        return "no such bucket"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary file path in ``path``'s folder (created if needed); on success it replaces ``path``.

    For writers that take a path (``np.savez``, ``torch.save``, ``savefig``). On an exception the temporary
    file is removed and ``path`` keeps its old content (or stays absent). For an object-store ``path`` the
    temporary file is local and is uploaded in one write (an object is replaced whole: readers never see a
    prefix).
    """
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="vlscale-upload-") as folder:
            tmp = Path(folder) / Path(os.fspath(path)).name
            yield tmp
            signals.raise_if_pending()
            _write_remote(path, tmp.read_bytes())
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        signals.raise_if_pending()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_remote(path: str | os.PathLike, data: bytes) -> None:
    from etils import epath

    p = epath.Path(os.fspath(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str | Path:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a prefix: a temporary
    file in the same folder, fsync, then ``os.replace`` on a local disk; one whole-object write on an object store.
    This is the one atomic write of vlscale: every file a command publishes goes through it (or ``atomic_path``)."""
    if is_remote(path):
        signals.raise_if_pending()
        _write_remote(path, data)
        return os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> str | Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, sort_keys: bool = False) -> str | Path:
    """``obj`` as JSON (numpy scalars and arrays as numbers and lists), written with ``atomic_write_bytes``."""
    import json

    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default) + "\n")


def _json_default(x):
    import numpy as np

    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, set, frozenset)):
        return list(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock for read-modify-write of ``path`` (a hidden ``.NAME.lock`` beside it, left in place:
    removing a lock file others may hold is a race)."""
    import fcntl

    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, object]],
                columns: Sequence[str] | None = None, *, key: Callable[[Mapping], Hashable] | None = None,
                check: Callable[[list[str]], None] | None = None) -> int:
    """Appends ``rows`` (dicts) to the CSV ``path`` atomically and under a lock; returns the rows it now has.

    A new file gets ``columns`` (default: the keys in first-seen order) as its header. An existing file keeps
    its rows and column order; columns only the new rows have are added at the end (old rows get empty cells).
    Concurrent appenders (several eval processes on one results table) each land all their rows.

    ``key(row)``: rows whose key is already in the file (or earlier in ``rows``) are skipped, so re-running an
    append adds nothing; it sees old rows as read back (strings) and new ones as given. ``check(header)`` runs on
    an existing file's header under the lock and raises to refuse the file (e.g. not the expected table).
    """
    return _append(path, rows, columns, key, check)[0]


def append_new_rows(path: str | os.PathLike, rows: Iterable[Mapping[str, object]], key: Callable[[Mapping], Hashable],
                    columns: Sequence[str] | None = None, *, check: Callable[[list[str]], None] | None = None) -> int:
    """``append_rows`` with a key, returning how many rows were added (0: all were there; the file is untouched)."""
    return _append(path, rows, columns, key, check)[1]


def _append(path, rows, columns, key, check) -> tuple[int, int]:
    """(rows in the file afterwards, rows added)."""
    rows = [dict(r) for r in rows]
    if is_remote(path):  # an object store: no lock (one writer per table, see docs/security.md), one whole write
        from etils import epath

        return _merge_and_write(epath.Path(os.fspath(path)), rows, columns, key, check)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        return _merge_and_write(target, rows, columns, key, check)


def _merge_and_write(target, rows, columns, key, check) -> tuple[int, int]:
    """Reads the table at ``target`` (a local ``Path`` or an ``epath``), adds ``rows``, writes it back whole."""
    header: list[str] = []
    old: list[dict] = []
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    if text:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        old = [csv_cells.restore_row(r) for r in reader]
        if check is not None:
            check(header)
    if key is not None:
        seen = {key(r) for r in old}
        new = []
        for r in rows:
            k = key(r)
            if k not in seen:
                seen.add(k)
                new.append(r)
        rows = new
    if not rows:
        return len(old), 0
    for name in list(columns or []) + [k for r in rows for k in r]:
        if name not in header:
            header.append(name)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(csv_cells.neutralise_row(r) for r in old + rows)
    atomic_write_text(target if isinstance(target, Path) else os.fspath(target), buf.getvalue())
    return len(old) + len(rows), len(rows)
