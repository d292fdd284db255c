"""vlscale's converted-parameter folders: ``DIR/params`` (an Orbax checkpoint of the per-block parameters) with
``DIR/vlscale_model.json`` (format and model name) beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vlscale.errors import UserError
from vlscale.models.layer_layout import to_layout, to_plain_dict, unstack_layers
from vlscale.models.state_dict_files import error_summary

METADATA_FILE = "vlscale_model.json"
PARAMS_SUBDIR = "params"
FORMAT_VERSION = "vlscale-params-v1"


def save_params(directory: str | Path, params: Any, model_name: str) -> Path:
    """Saves parameters as an Orbax checkpoint under ``DIR/params`` with ``DIR/vlscale_model.json`` beside it.

    Parameters are stored unstacked so any runtime layout can restore them. The pair is written into a
    temporary folder and moved into ``DIR`` together (``vlscale.runtime.files.atomic_output_dir``): an interrupted
    save leaves ``DIR`` as it was.
    """
    import orbax.checkpoint as ocp

    from vlscale.runtime.files import atomic_output_dir

    directory = Path(directory).absolute()
    tree = unstack_layers(to_plain_dict(params))
    with atomic_output_dir(directory, owned=(PARAMS_SUBDIR, METADATA_FILE)) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / PARAMS_SUBDIR, tree, force=True)
            ckptr.wait_until_finished()
        meta = {"format": FORMAT_VERSION, "model": model_name}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def load_params(directory: str | Path, scan_layers: bool = False) -> tuple[dict, dict]:
    """(params as numpy, metadata) from ``save_params``'s directory, in the requested layer layout."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise UserError(f"{directory} is not a vlscale checkpoint (no {METADATA_FILE}); "
                        "create one with `vlscale convert --from-open-clip FILE --model NAME --out DIR`")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
            raise ValueError("no model name")
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not valid vlscale checkpoint metadata ({error_summary(e)})") from None
    if not (directory / PARAMS_SUBDIR).is_dir():
        raise UserError(f"{directory} is not a complete vlscale checkpoint (no {PARAMS_SUBDIR}/ folder)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(directory / PARAMS_SUBDIR)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot restore the parameters in {directory / PARAMS_SUBDIR} ({error_summary(e)})") from None
    import jax

    tree = jax.tree.map(np.asarray, to_plain_dict(tree))
    return to_layout(tree, meta["model"], scan_layers), meta
