"""What a run reports: ``metrics.jsonl`` (exact floats), TensorBoard events, a progress line, and MFU.

``metrics.jsonl`` holds one JSON object per logged step. On resume from checkpoint N the lines past step N
(written after that checkpoint, before the interruption) are dropped, so the file ends with exactly one line
per logged step, as an uninterrupted run's does; the deterministic fields (step, samples_seen, losses, lr,
grad_norm, logit_scale) are then equal bit for bit, the timing fields are whatever this machine measured.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

# Dense bf16 peak FLOP/s per chip (vendor data sheets; no sparsity). MFU = achieved training FLOP/s / peak.
PEAK_BF16_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of a device kind ("NVIDIA H100 80GB HBM3", "TPU v5 lite", ...); None when unknown (CPU)."""
    kind = device_kind.upper()
    for name, peak in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.upper() in kind:
            return peak
    return None


class MetricsLog:
    """Append-only ``metrics.jsonl`` that can be cut back to a checkpoint's step."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keeps only complete lines with ``step <= step`` (drops a torn last line too)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            if int(rec.get("step", 0)) > step:
                break
            keep.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in keep))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def dumps(record: dict[str, Any]) -> str:
    """JSON with floats written exactly (Python's repr round-trips); non-finite floats as strings."""
    out = {}
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = repr(v)
        out[k] = v
    return json.dumps(out)


class TensorBoard:
    """Scalars into ``WORKDIR/tb`` through tensorboardX (no TensorFlow runtime); a no-op when unavailable."""

    def __init__(self, logdir: Path, enabled: bool = True):
        self._writer = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(str(logdir), flush_secs=30)
            except ImportError:
                self._writer = None

    def write(self, step: int, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class Progress:
    """A one-line progress bar on a terminal, plain periodic lines otherwise (logs, CI, notebooks)."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.enabled = total_steps, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0, self.s0 = time.perf_counter(), start_step

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = step - self.s0
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        parts = [f"step {step}/{self.total}", f"samples {record['samples_seen']:,}", f"loss {record['loss']:.4f}"]
        if "samples_per_s" in record:
            parts.append(f"{record['samples_per_s']:,.0f} samples/s")
        if math.isfinite(eta):
            parts.append(f"ETA {_hms(eta)}")
        line = "  ".join(parts)
        if self.tty:
            frac = step / max(self.total, 1)
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            self.stream.write(f"\r[{bar}] {line}\033[K")
            if step >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
