"""What a run reports: ``metrics.jsonl`` (exact floats), TensorBoard events, a progress line, and MFU.

``metrics.jsonl`` holds one JSON object per logged step. On resume from checkpoint N the lines past step N
(written after that checkpoint, before the interruption) are dropped, and a run that starts from scratch (killed
before its first checkpoint) drops all of the previous attempt's lines, so the file ends with exactly one line
per logged step, as an uninterrupted run's does; the deterministic fields (step, samples_seen, losses, lr,
grad_norm, logit_scale) are then equal bit for bit, the timing fields are whatever this machine measured.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vlscale.runtime import files, paths

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
    """Append-only ``metrics.jsonl`` that can be cut back to a checkpoint's step.

    On a local disk each record is appended to the file. An object store has no append: the log is kept in
    memory and the whole object rewritten per record (one write; a reader sees the previous version or this one).
    """

    def __init__(self, path, enabled: bool = True):
        self.path = paths.resolve(path)
        self.enabled = enabled
        self._remote_text: str | None = None  # the object's content, when the log lives in an object store

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
        self._remote_text = None
        files.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if paths.is_local(self.path):
            with self.path.open("a") as f:
                f.write(dumps(record) + "\n")
            return
        if self._remote_text is None:
            self._remote_text = self.path.read_text() if self.path.exists() else ""
        self._remote_text += dumps(record) + "\n"
        files.atomic_write_text(self.path, self._remote_text)

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
    """Scalars into ``WORKDIR/tb`` through tensorboardX (no TensorFlow runtime); a no-op when unavailable.

    ``purge_after(step)`` before the first write: TensorBoard hides the events a killed attempt wrote past
    ``step`` (tensorboardX's ``purge_step``), so the curves hold one point per logged step, as metrics.jsonl.
    """

    def __init__(self, logdir, enabled: bool = True):
        self._logdir = logdir
        self._enabled = enabled
        self._writer = None
        self._purge_step: int | None = None

    def purge_after(self, step: int) -> None:
        self._purge_step = int(step) + 1

    def _open(self):
        if self._writer is None and self._enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                self._enabled = False
                return None
            kwargs = {}
            if self._purge_step is not None and self._logdir.is_dir() and any(self._logdir.iterdir()):
                kwargs["purge_step"] = self._purge_step
            self._writer = SummaryWriter(str(self._logdir), flush_secs=30, **kwargs)
        return self._writer

    def write(self, step: int, record: dict[str, Any]) -> None:
        writer = self._open()
        if writer is None:
            return
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
