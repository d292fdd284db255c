"""Config files and command-line overrides, ml_collections style, without absl.

``--config configs/train.py:model=tiny-mammut,data=synth`` loads the file (or, outside a checkout, the installed
``vlscale.configs.train`` module) and calls its ``get_config(arg)``; ``--config.lr=1e-3`` and
``--config.data.shards=...`` then set fields, each value parsed as the type the field already has.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from vlscale.errors import UserError

PREFIX = "--config."


def load_config(spec: str, *, builtin: str | None = None, what: str = "config file") -> ml_collections.ConfigDict:
    """``path/to/file.py[:arg]`` -> that file's ``get_config(arg)`` (``get_config()`` when it takes no argument).

    The one loader of training configs, eval suites (``builtin="eval"``) and study configs (``builtin="study"``):
    with ``builtin``, a bare name (``tiny_shapes``) is the shipped ``configs/<builtin>/<name>.py``. A file that does
    not load (syntax error, an exception in ``get_config``) is a one-line error naming the file and line.
    """
    path, _, arg = spec.partition(":")
    module = _load_module(path, builtin, what)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise UserError(f"{what} {path!r} has no get_config(arg) function")
    try:
        takes_arg = bool(inspect.signature(get_config).parameters)
    except (TypeError, ValueError):
        takes_arg = True
    if arg and not takes_arg:
        raise UserError(f"{what} {path!r}: get_config() takes no argument, got {arg!r}")
    try:
        cfg = get_config(arg or None) if takes_arg else get_config()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: name where it failed, not a vlscale bug
        raise UserError(f"{what} {path!r}: get_config raised {type(e).__name__}: {_first_line(e)}"
                        f"{_where(e, module)}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise UserError(f"{what} {path!r}: get_config returned {type(cfg).__name__}, not a ConfigDict")
    return cfg


def builtin_names(builtin: str) -> list[str]:
    """The shipped configs of a kind (``configs/<builtin>/*.py``), by name."""
    folder = Path(__file__).resolve().parent / builtin
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _where(e: BaseException, module) -> str:
    """`` (file.py, line N)`` of the deepest frame of the config's own file in ``e``'s traceback."""
    file = getattr(module, "__file__", None)
    line = None
    tb = e.__traceback__
    while tb is not None:
        if file and tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line else ""


def _exec_file(file: Path, what: str):
    name = "vlscale_config_" + file.stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise UserError(f"{what} {str(file)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{what} {str(file)!r}: syntax error at line {e.lineno}: {e.msg}") from None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: name where it failed, not a vlscale bug
        raise UserError(f"{what} {str(file)!r}: loading it raised {type(e).__name__}: {_first_line(e)}"
                        f"{_where(e, module)}") from None
    return module


def _load_module(path: str, builtin: str | None, what: str):
    file = Path(path)
    if file.is_file():
        return _exec_file(file, what)
    if file.suffix == ".py" or file.exists():
        hint = f" (built-in: {', '.join(builtin_names(builtin))})" if builtin else ""
        raise UserError(f"{what} {path} does not exist{hint}")
    # Installed package (no checkout): configs/x.py -> vlscale.configs.x, configs/study/y.py -> vlscale.configs.study.y.
    parts = file.with_suffix("").parts
    if parts and parts[0] == "configs" and len(parts) > 1:
        try:
            return importlib.import_module(".".join(("vlscale", *parts)))
        except ModuleNotFoundError:
            pass
    if builtin and path in builtin_names(builtin):
        return importlib.import_module(f"vlscale.configs.{builtin}.{path}")
    if builtin:
        raise UserError(f"unknown {what} {path!r}; pass a .py path or one of: {', '.join(builtin_names(builtin))}")
    raise UserError(f"{what} {path!r} not found")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.a.b=v`` / ``--config.a.b v`` pairs from the other arguments."""
    rest, pairs = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        if a.startswith(PREFIX):
            key, eq, value = a[len(PREFIX):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{a}: missing value (use {a}=VALUE)")
                value = argv[i + 1]
                i += 1
            if not key:
                raise UserError(f"{a}: missing field name")
            pairs.append((key, value))
        else:
            rest.append(a)
        i += 1
    return rest, pairs


def parse_value(text: str, current: Any, field: str) -> Any:
    """``text`` parsed as the type of ``current`` (the field's default)."""
    low = text.strip().lower()
    try:
        if isinstance(current, bool):
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            value = float(text) if any(ch in low for ch in ".e") else int(text)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            return value
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (list, tuple)):
            if low in ("", "[]", "()", "none"):
                return type(current)()
            if text.strip()[0] in "[(":
                value = ast.literal_eval(text)
            else:
                value = [_list_item(v.strip()) for v in text.split(",")]
            if any(isinstance(v, str) and not v for v in value):
                raise ValueError
            return type(current)(value)
        if current is None:
            if low in ("none", "null"):
                return None
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        return text
    except (ValueError, SyntaxError, TypeError):
        kind = type(current).__name__
        raise UserError(f"--config.{field}={text!r}: not a valid {kind}") from None


def _list_item(text: str):
    """One comma-separated item of a list field: a Python literal, or a bare word (``shapes=circle,square``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg: ml_collections.ConfigDict, pairs: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Sets each ``field=value``; an unknown field is an error naming the closest ones."""
    for field, text in pairs:
        node = cfg
        parts = field.split(".")
        for p in parts[:-1]:
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise UserError(f"--config.{field}: unknown field {p!r}")
            node = node[p]
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            import difflib

            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            close = difflib.get_close_matches(leaf, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"--config.{field}: unknown field{hint}")
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise UserError(f"--config.{field}: is a group of fields; set one of {', '.join(current.keys())}")
        proto = current
        if current is None and text.strip().lower() not in ("none", "null"):
            # An unset typed field (a FieldReference(None, field_type=bool) "auto" sentinel): parse as its type.
            try:
                declared = node.get_ref(leaf).get_type()
            except (AttributeError, KeyError, ValueError):
                declared = None
            if declared in (bool, int, float):
                proto = declared()
        value = parse_value(text, proto, field)
        try:
            node[leaf] = value
        except TypeError as e:
            raise UserError(f"--config.{field}={text!r}: {e}") from None
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a (resolved) ConfigDict or dict."""
    out: dict[str, Any] = {}
    items = cfg.items() if hasattr(cfg, "items") else []
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out
