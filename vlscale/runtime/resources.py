"""How much memory this process may use, so a command can refuse work that would be OOM-killed, up front."""

from __future__ import annotations

import os

from vlscale.errors import UserError

# Leave room for the interpreter, libraries and estimation error.
USABLE_FRACTION = 0.8


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """A container's memory limit minus its usage (cgroup v2, then v1), or None without a limit."""
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            with open(usage_f) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1's "no limit"
            return None
        return max(0, limit - usage)
    return None


def available_memory_bytes() -> int | None:
    """Bytes this process can still allocate (the smaller of the machine's and the container's), or None."""
    vals = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(vals) if vals else None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_memory(need_bytes: float, what: str, hint: str = "") -> None:
    """UserError (before any work) when ``need_bytes`` exceeds what this process can use; ``what`` names the
    request (``--bootstrap 100000000``), ``hint`` says what to do."""
    have = available_memory_bytes()
    if have is None or need_bytes <= USABLE_FRACTION * have:
        return
    raise UserError(f"{what} needs about {format_bytes(need_bytes)} of memory, more than the "
                    f"{format_bytes(have)} available" + (f"; {hint}" if hint else ""))
