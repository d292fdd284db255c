"""The two layouts of per-layer parameters: scan-stacked (``resblocks`` with a leading layer axis, what a model
built with ``scan_layers=True`` takes) and per-block (``resblocks_{i}`` entries, what checkpoints on disk and
open_clip conversion use), and the conversions between them."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

# Module lists in open_clip whose entries are indexed (``resblocks.3``) and whose Flax entries are ``resblocks_3``.
LIST_NAMES = ("resblocks", "cross_attn")
LIST_ENTRY = re.compile(rf"^({'|'.join(LIST_NAMES)})_(\d+)$")


def flatten_tree(tree: Mapping, prefix: tuple = ()) -> dict[tuple[str, ...], Any]:
    """A nested mapping as ``{path tuple: leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten_tree(flat: Mapping[tuple[str, ...], Any]) -> dict:
    """Inverse of ``flatten_tree``."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def to_plain_dict(tree: Any) -> Any:
    """Nested mappings (e.g. Flax's FrozenDict, Orbax's restored trees) as plain dicts."""
    if isinstance(tree, Mapping):
        return {k: to_plain_dict(v) for k, v in tree.items()}
    return tree


def unstack_layers(params: Mapping) -> dict:
    """Turns every scan-stacked ``resblocks``/``cross_attn`` subtree into ``resblocks_{i}`` entries (and a
    MaMMUT decoder's scanned ``layer_groups`` into its per-block entries)."""
    if "layer_groups" in params:
        from vlscale.models.mammut import unscan_decoder_params

        params = unscan_decoder_params(params)
    out = {}
    for k, v in params.items():
        if isinstance(v, Mapping) and k in LIST_NAMES:
            leaves = flatten_tree(v)
            n = next(iter(leaves.values())).shape[0]
            for i in range(n):
                out[f"{k}_{i}"] = unflatten_tree({p: a[i] for p, a in leaves.items()})
        elif isinstance(v, Mapping):
            out[k] = unstack_layers(v)
        else:
            out[k] = v
    return out


def stack_layers(params: Mapping) -> dict:
    """Inverse of ``unstack_layers``: ``resblocks_{i}`` entries become one ``resblocks`` subtree [L, ...]."""
    out: dict = {}
    groups: dict[str, dict[int, Any]] = {}
    for k, v in params.items():
        m = LIST_ENTRY.match(k)
        if m and isinstance(v, Mapping):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = v
        elif isinstance(v, Mapping):
            out[k] = stack_layers(v)
        else:
            out[k] = v
    for name, entries in groups.items():
        ordered = [flatten_tree(entries[i]) for i in range(len(entries))]
        out[name] = unflatten_tree({p: np.stack([np.asarray(e[p]) for e in ordered]) for p in ordered[0]})
    return out


def is_stacked(params: Mapping) -> bool:
    for k, v in params.items():
        if isinstance(v, Mapping) and (k in LIST_NAMES or is_stacked(v)):
            return True
    return False


def to_layout(params: Mapping, model_name_or_config: Any, scan_layers: bool) -> dict:
    """``params`` (either layout) in the layout a model built with ``scan_layers`` expects."""
    from vlscale.models.config import get_config

    params = unstack_layers(params)
    if not scan_layers:
        return params
    if get_config(model_name_or_config).family == "mammut":
        from vlscale.models.mammut import to_scan_layout

        return to_scan_layout({**params, "visual": stack_layers(params["visual"])})
    return stack_layers(params)
