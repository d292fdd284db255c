"""Model configs as ConfigDicts: ``configs/model.py:ViT-B-32`` or ``configs/model.py:model=ViT-B-32,dtype=bfloat16``.

The architecture comes from ``vlscale.models.config`` (one source of truth); the ConfigDict records it in the
experiment's config together with the runtime options (dtype, remat, scan_layers) a trainer passes to
``vlscale.models.registry.build_model(config.model, **config.runtime)``.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from vlscale.errors import UserError
from vlscale.models.config import RuntimeOptions
from vlscale.models.config import get_config as get_model_config

DEFAULT_MODEL = "ViT-B-32"
_RUNTIME_KEYS = {f.name for f in dataclasses.fields(RuntimeOptions)}


def _parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    return text


def parse_arg(arg: str | None) -> dict:
    """``"ViT-B-32"`` or ``"model=ViT-B-32,dtype=bfloat16,scan_layers=true"`` -> dict of overrides."""
    if not arg:
        return {"model": DEFAULT_MODEL}
    out = {}
    for part in arg.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = _parse_value(v.strip())
        elif "model" not in out:
            out["model"] = part.strip()
        else:
            raise UserError(f"config argument {arg!r}: only one bare model name allowed, use key=value for the rest")
    out.setdefault("model", DEFAULT_MODEL)
    unknown = set(out) - _RUNTIME_KEYS - {"model"}
    if unknown:
        raise UserError(f"config argument {arg!r}: unknown keys {sorted(unknown)}; "
                        f"use model and {sorted(_RUNTIME_KEYS)}")
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict for a model name (plus optional runtime overrides)."""
    parsed = parse_arg(arg)
    cfg = get_model_config(parsed["model"])
    runtime = RuntimeOptions(**{k: v for k, v in parsed.items() if k in _RUNTIME_KEYS})
    d = ml_collections.ConfigDict()
    d.model = cfg.name
    d.family = cfg.family
    d.embed_dim = cfg.embed_dim
    d.image_size = cfg.image_size
    d.context_length = cfg.context_length
    d.vision = dataclasses.asdict(cfg.vision)
    d.text = dataclasses.asdict(cfg.text)
    d.runtime = dataclasses.asdict(runtime)
    return d
