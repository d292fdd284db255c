"""Checks the import contract in ``layers.ini`` with import-linter, on the package as it installs.

The repo keeps ``models/``, ``train/``, ... at its root and pyproject.toml maps them to ``vlscale.models``, ...;
import-linter reads a package from one folder, so this stages that folder (the ``.py`` files at the places the
mapping gives them) in a temporary directory and runs ``lint-imports`` on it. Exit status is lint-imports'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stage(dest: Path) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*package.split("."))
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or (target / rel).exists():
                continue
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target / rel)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vlscale-layers-") as tmp:
        stage(Path(tmp))
        env = dict(os.environ, PYTHONPATH=tmp)
        run = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
        return subprocess.call([sys.executable, "-c", run, "--no-cache", str(ROOT / "layers.ini")], cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
