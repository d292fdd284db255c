"""The one atomic write: whole files or nothing, JSON with numpy values, nothing left behind on failure."""

import json
import os

import numpy as np
import pytest

from vlscale.runtime import files


def test_atomic_write_json_handles_numpy_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "final.json"
    files.atomic_write_json(target, {"step": np.int64(4), "loss": np.float32(0.5), "a": np.arange(3), "t": (1, 2)})
    assert json.loads(target.read_text()) == {"step": 4, "loss": 0.5, "a": [0, 1, 2], "t": [1, 2]}
    assert sorted(os.listdir(target.parent)) == ["final.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "run.json"
    files.atomic_write_text(target, "old\n")
    with pytest.raises(TypeError):
        files.atomic_write_json(target, {"x": object()})  # not serialisable: fails before anything is written
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["run.json"]


def test_remote_paths_are_recognised():
    assert files.is_remote("gs://bucket/runs/w/final.json")
    assert not files.is_remote("/tmp/x") and not files.is_remote("relative/x")


def test_every_publishing_writer_uses_the_one_helper():
    """No module other than runtime/files.py renames a temporary file into place by hand."""
    import pathlib
    import re

    root = pathlib.Path(files.__file__).resolve().parents[2]
    pattern = re.compile(r"os\.replace\(|\.replace\(self\.path\)|tmp\.replace\(")
    offenders = []
    for folder in ("vlscale", "models", "data", "train", "eval", "scaling", "study", "configs"):
        for p in (root / folder).rglob("*.py"):
            if p.name == "files.py" and p.parent.name == "runtime":
                continue
            if pattern.search(p.read_text()):
                offenders.append(str(p.relative_to(root)))
    # the webdataset shard writer streams a tar into NAME.tmp and renames it when the shard is complete; the eval
    # image cache moves its memory-mapped partial file into files.atomic_path's temporary (the helper publishes it)
    assert sorted(offenders) == ["data/webdataset.py", "eval/image_cache.py"], offenders
