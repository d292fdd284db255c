"""Paper defaults for the named models (issue 19 item 4): which runtime each model gets on each platform, explicit
user values winning, and the resolved values in run.json and the dry run. Nothing here compiles a model."""

import jax
import pytest

from vlscale.configs import train as train_config
from vlscale.train import dryrun, loop, run_info


def _resolved(model, platform, **fields):
    c = train_config.get_config(f"model={model},data=synth")
    for k, v in fields.items():
        node = c
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    filled = train_config.resolve_runtime(c, platform)
    return c, filled


def _row(c):
    return (c.dtype, c.param_dtype, c.remat, c.scan_layers, c.mesh.data, c.mesh.fsdp)


# (model, platform) -> (dtype, param_dtype, remat, scan_layers, mesh.data, mesh.fsdp)
TABLE = [
    ("ViT-S-32", "gpu", ("bfloat16", "bfloat16", "none", True, 1, -1)),
    ("ViT-M-16", "tpu", ("bfloat16", "bfloat16", "none", True, 1, -1)),
    ("ViT-B-32", "gpu", ("bfloat16", "bfloat16", "block", True, 1, -1)),
    ("mammut_ViT-B-32", "tpu", ("bfloat16", "bfloat16", "block", True, 1, -1)),
    ("ViT-L-14", "gpu", ("bfloat16", "bfloat16", "full", True, 1, -1)),
    ("mammut_ViT-H-14", "gpu", ("bfloat16", "bfloat16", "full", True, 1, -1)),
    # On CPU every model computes in float32; the paper's ViTs keep FSDP, scan and remat.
    ("ViT-B-32", "cpu", ("float32", "float32", "block", True, 1, -1)),
    ("mammut_ViT-L-14", "cpu", ("float32", "float32", "full", True, 1, -1)),
    # Tiny and shapes models: today's defaults everywhere.
    ("tiny-clip", "cpu", ("float32", "float32", "none", False, -1, 1)),
    ("tiny-mammut", "gpu", ("float32", "float32", "none", False, -1, 1)),
    ("shapes-clip-s", "cpu", ("float32", "float32", "none", False, -1, 1)),
    ("shapes-mammut-s", "tpu", ("float32", "float32", "none", False, -1, 1)),
]


@pytest.mark.parametrize("model,platform,expected", TABLE)
def test_resolution_table(model, platform, expected):
    c, filled = _resolved(model, platform)
    assert _row(c) == expected
    assert filled == ["dtype", "param_dtype", "remat", "scan_layers", "mesh.fsdp"]


def test_every_paper_vit_gets_bf16_fsdp_scan_on_accelerators():
    from vlscale.models.config import PAPER_MODELS, get_config

    remats = {}
    for name in PAPER_MODELS:
        c, _ = _resolved(name, "gpu")
        assert (c.dtype, c.param_dtype, c.scan_layers, c.mesh.fsdp) == ("bfloat16", "bfloat16", True, -1), name
        remats.setdefault(get_config(name).vision.width, set()).add(c.remat)
    assert remats == {384: {"none"}, 512: {"none"}, 768: {"block"}, 1024: {"full"}, 1280: {"full"}}


def test_explicit_values_win():
    c, filled = _resolved("ViT-B-32", "gpu", dtype="float32", scan_layers=False, remat="none", mesh__fsdp=2)
    assert _row(c) == ("float32", "bfloat16", "none", False, -1, 2)
    assert filled == ["param_dtype"]
    # An explicit data axis with fsdp left to the default: FSDP takes the devices data leaves.
    c, _ = _resolved("ViT-B-32", "gpu", mesh__data=2)
    assert (c.mesh.data, c.mesh.fsdp) == (2, -1)
    # Explicit values on a tiny model are kept too.
    c, filled = _resolved("tiny-clip", "cpu", dtype="bfloat16", scan_layers=True, remat="full")
    assert _row(c) == ("bfloat16", "float32", "full", True, -1, 1)
    assert filled == ["param_dtype", "mesh.fsdp"]


def test_cli_style_overrides_parse_into_the_sentinel_fields():
    # --config.scan_layers=true and --config.mesh.fsdp=8 arrive as bool and int (the fields keep their types).
    c = train_config.get_config("model=ViT-B-32,data=synth")
    c.scan_layers = True
    c.mesh.fsdp = 8
    assert (c.scan_layers, c.mesh.fsdp) == (True, 8)
    with pytest.raises(TypeError):
        c.mesh.fsdp = "eight"


def test_resolve_config_records_the_filled_fields_and_run_json_and_dry_run_show_them():
    c = train_config.get_config("model=ViT-B-32,data=synth")
    c.remat = "full"
    resolved = loop.resolve_config(c)
    platform = jax.default_backend()
    assert resolved.dtype == ("float32" if platform == "cpu" else "bfloat16")
    assert (resolved.remat, resolved.scan_layers, resolved.mesh.fsdp) == ("full", True, -1)
    assert resolved.auto_fields == "dtype,param_dtype,scan_layers,mesh.fsdp"
    assert train_config.is_resolved(resolved) and not train_config.is_resolved(c)
    # Resolving again (the dry run resolves, then the loop does) keeps the record.
    assert loop.resolve_config(resolved).auto_fields == resolved.auto_fields
    run_json = run_info.build_run_json(resolved, total_steps=10, data_fingerprint=None)
    cfg = run_json["config"]
    assert (cfg["dtype"], cfg["param_dtype"], cfg["remat"], cfg["scan_layers"], cfg["mesh"]["fsdp"]) == (
        resolved.dtype, resolved.param_dtype, "full", True, -1)
    assert cfg["auto_fields"] == "dtype,param_dtype,scan_layers,mesh.fsdp"
    line = dryrun.runtime_line(dryrun.runtime_summary(resolved))
    assert f"dtype {resolved.dtype}, param_dtype {resolved.param_dtype}" in line
    assert "remat full, scan_layers True" in line
    assert line.endswith("defaults filled: dtype, param_dtype, scan_layers, mesh.fsdp")


def test_auto_fields_are_not_part_of_a_runs_identity():
    c = loop.resolve_config(train_config.get_config("model=tiny-clip,data=synth"))
    other = c.copy_and_resolve_references()
    other.auto_fields = ""
    assert run_info.identity(c) == run_info.identity(other)
