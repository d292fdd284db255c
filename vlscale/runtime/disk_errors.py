"""A full, read-only or vanished output, said as what it is: ``no space left on MOUNT while writing FILE``.

Python raises these as ``OSError``; TensorStore (inside Orbax's save threads) and safetensors wrap them in their
own exception types, naming the errno in the text. ``disk_error_message`` recognises all three, following an
exception's causes, so the CLI and the trainer can turn any of them into one line (docs/security.md).
"""

from __future__ import annotations

import errno
import os

from vlscale.runtime.files import is_remote

# TensorStore and safetensors report OS errors inside their own exception types (``[os_error_code='28']``,
# ``(os error 28)``), Python as OSError: all are recognised.
_SPACE_ERRNOS = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on"}
_OTHER_ERRNOS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.ENOENT: "its folder vanished (no such file or directory)"}
_DISK_ERRNOS = {**_SPACE_ERRNOS, **_OTHER_ERRNOS}
_TEXT_ERRNOS = (("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                ("Read-only file system", errno.EROFS))


def _mount_point(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.ismount(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    return p


def _errno_and_path(exc: BaseException) -> tuple[int, str | None] | None:
    import re

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            return exc.errno, exc.filename if isinstance(exc.filename, str) else None
        text = str(exc)
        code = None
        m = re.search(r"os_error_code='(\d+)'", text)  # TensorStore: trust every code it names
        if m and int(m.group(1)) in _DISK_ERRNOS:
            code = int(m.group(1))
        if code is None:
            code = next((c for t, c in _TEXT_ERRNOS if t in text), None)
        if code is not None:
            paths = re.findall(r'"(/[^"]+)"', text) or re.findall(r"'(/[^']+)'", text)
            return code, (paths[-1] if paths else None)
        exc = exc.__cause__ or exc.__context__
    return None


def disk_error_message(exc: BaseException, default_path: str | os.PathLike | None = None) -> str | None:
    """"no space left on MOUNT while writing PATH" (or the quota, read-only, permission or vanished variant) when
    ``exc`` (or its cause) is such an OS error, raised by Python or inside a library's own exception; else None."""
    found = _errno_and_path(exc)
    if found is None:
        return None
    code, path = found
    path = path or (os.fspath(default_path) if default_path is not None else None)
    if code in _SPACE_ERRNOS:
        where = _mount_point(path) if path and not is_remote(path) else (path or "the output's disk")
        return f"{_SPACE_ERRNOS[code]} {where}" + (f" while writing {path}" if path else "")
    return f"cannot write {path or 'the output'}: {_OTHER_ERRNOS[code]}"


def is_disk_error(exc: BaseException) -> bool:
    return _errno_and_path(exc) is not None
