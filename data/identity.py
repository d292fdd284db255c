"""What a data config *is*: the fields that decide which samples arrive in which order, and a short hash of them.

A checkpoint's iterator state carries this identity, so a resume on other data (another shard list, seed,
synthetic knob, image size, ...) is refused in one line that names the fields that differ, instead of
silently training on a different stream. Throughput settings (workers, prefetch, read threads), the batch
size, the bad-sample limits and the host simulation are not part of it: changing them does not change the
data. (The host count and worker count are checked separately: the saved state is laid out per host and
per worker.) ``image_dtype`` is not part of it either: uint8 normalised on the device and float32
normalised on the host are the same samples.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

FINGERPRINT_CHARS = 16  # hex digits: 64 bits, plenty to tell data configs apart
_URL_PREFIXES = ("gs://", "s3://", "http://", "https://", "hf://")


def _plain(value: Any) -> Any:
    """JSON-stable form: tuples become lists, ConfigDicts dicts, keys stay sorted at dump time."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _absolute(path: str) -> str:
    """Local paths absolute (a resume from another working directory is the same data); URLs as written."""
    if not path or path.startswith(_URL_PREFIXES):
        return path
    return os.path.abspath(os.path.expanduser(path))


def shard_summary(shards: list[str]) -> dict[str, Any]:
    """A shard list in constant size: count, a hash of the ordered paths, and the first and last path.

    The order is kept (not sorted): host ``i`` reads ``shards[i::n]``, so reordering the list changes which
    samples each host reads.
    """
    paths = [_absolute(s) for s in shards]
    digest = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:FINGERPRINT_CHARS]
    return {"count": len(paths), "sha256": digest, "first": paths[0] if paths else "", "last": paths[-1] if paths else ""}


def synth_knobs(config) -> dict[str, Any]:
    """The generator's full knob set (defaults filled in), so an explicit default equals an omitted one."""
    from vlscale.data import synth_scene

    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in _plain(config.synth.knobs).items()}
    return _plain(synth_scene.SynthConfig(**knobs).to_dict())


def data_identity(config, shards: list[str] | None = None) -> dict[str, Any]:
    """The fields of a ``configs.data`` config that define the sample stream (see the module docstring).

    ``shards``: the resolved webdataset shard list when the caller has it (else it is expanded here).
    Only fields that matter for the chosen source and mode are included, so changing an unused field
    (the tfds split of a synthetic run, say) does not refuse a resume.
    """
    source = str(config.source)
    in_memory = bool(config.get("in_memory", False))
    out: dict[str, Any] = {
        "source": source,
        "seed": config.get("seed", None),
        "shuffle": bool(config.shuffle),
        "image_size": int(config.image_size),
        "context_length": int(config.context_length),
        "in_memory": in_memory,
    }
    if in_memory:  # decoded once with the eval geometry; order is a per-epoch permutation of what is held
        if source == "synth":
            out["in_memory_samples"] = int(config.in_memory_samples)
    else:
        out["train"] = bool(config.train)
        if out["train"]:
            out["train_scale"] = [float(v) for v in config.train_scale]
    if source == "webdataset":
        if shards is None:
            from vlscale.data import shards as shards_lib

            shards = shards_lib.expand_shards(config.shards)
        out["shards"] = shard_summary(list(shards))
        if not in_memory:  # the streaming order: shards open at once and the shuffle buffer
            out["cycle_length"] = int(config.cycle_length)
            if out["shuffle"]:
                out["shuffle_window"] = int(config.shuffle_window)
    elif source == "synth":
        out["synth"] = {"seed": int(config.synth.seed), "split": str(config.synth.split), "knobs": synth_knobs(config)}
    elif source == "tfds":
        t = config.tfds
        out["tfds"] = {k: _plain(t.get(k, None)) for k in ("name", "split", "image_key", "caption_key", "label_key",
                                                            "caption_template")}
    elif source == "folder":
        f = config.folder
        root = f.get("root", None)
        out["folder"] = {"captions_file": _absolute(str(f.captions_file)), "root": _absolute(root) if root else None,
                         "image_column": str(f.image_column), "caption_column": str(f.caption_column)}
    return _plain(out)


def fingerprint(identity: Mapping[str, Any]) -> str:
    """A short hex hash of an identity (stable: canonical JSON, sorted keys)."""
    blob = json.dumps(_plain(identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 4) -> str:
    """``"synth.seed 0 -> 1, image_size 32 -> 64"``: the fields that differ, saved value first."""
    a, b = _flatten(saved), _flatten(current)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    parts = [f"{k} {json.dumps(a.get(k, '<unset>'))} -> {json.dumps(b.get(k, '<unset>'))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts) if parts else "no field differs (the fingerprint format changed)"
