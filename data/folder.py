"""Image folder + captions file (CSV or JSONL with ``image_path`` and ``caption``) as a grain source.

Records carry the image *path*; the decode stage reads and validates it, so a missing or corrupt file
is a counted skip rather than a crash. Image paths are relative to ``root`` (default: the folder that
holds the captions file) unless absolute.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from vlscale.errors import UserError


def read_caption_rows(captions_file: str, image_column: str = "image_path",
                      caption_column: str = "caption") -> list[tuple[str, Any]]:
    """(image path, caption or None) per row, in file order. A JSONL line that does not parse keeps its
    slot with no caption, so it is counted as a bad sample instead of silently shifting the indices."""
    if not os.path.isfile(captions_file):
        raise UserError(f"captions file {captions_file} does not exist; pass a CSV or JSONL with "
                        f"{image_column!r} and {caption_column!r} columns")
    rows: list[tuple[str, Any]] = []
    if captions_file.endswith((".jsonl", ".json")):
        with open(captions_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    rows.append(("", None))
                    continue
                rows.append((str(row.get(image_column) or ""), row.get(caption_column)))
    else:
        with open(captions_file, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or image_column not in reader.fieldnames:
                raise UserError(f"captions file {captions_file} has no {image_column!r} column "
                                f"(columns: {reader.fieldnames}); set data.folder.image_column")
            rows = [(r.get(image_column) or "", r.get(caption_column)) for r in reader]
    if not rows:
        raise UserError(f"captions file {captions_file} has no rows")
    return rows


class FolderCaptionSource:
    """Random-access source: record ``i`` is ``{"image": path, "caption": str|None, "__key__", "__url__"}``."""

    def __init__(self, captions_file: str, root: str | None = None, image_column: str = "image_path",
                 caption_column: str = "caption"):
        self.captions_file = str(captions_file)
        self.root = str(root) if root else os.path.dirname(os.path.abspath(self.captions_file))
        self._rows = read_caption_rows(self.captions_file, image_column, caption_column)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, caption = self._rows[int(index)]
        full = path if os.path.isabs(path) else os.path.join(self.root, path)
        return {"image": full if path else None, "caption": caption, "__key__": str(index), "__url__": self.captions_file}

    def __repr__(self) -> str:
        return f"FolderCaptionSource({self.captions_file!r}, rows={len(self._rows)})"
