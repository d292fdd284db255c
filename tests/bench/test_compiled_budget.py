"""bench/compiled_budget.py's HLO collective parser on programs whose collectives are known."""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlscale.runtime.sharding import make_mesh
from vlscale.train import losses

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "compiled_budget.py"
_spec = importlib.util.spec_from_file_location("compiled_budget", _PATH)
budget = sys.modules.setdefault("compiled_budget", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(budget)


def _by_kind(collectives):
    return {k: [c for c in collectives if c.kind == k] for k in budget.COLLECTIVES}


def test_shape_bytes_of_arrays_and_tuples():
    assert budget.shape_bytes("f32[4,8]{1,0}") == 128
    assert budget.shape_bytes("(bf16[2,3], s32[], pred[5])") == 12 + 4 + 5
    assert budget.shape_bytes("token[]") == 0


# Two nested loops (3 x 4 iterations) around an all-reduce, a loop of unknown trip count around an all-gather, a
# conditional holding a collective-permute, an async all-gather pair at the top level.
_NESTED = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%inner_body (p: (s32[], f32[16])) -> (s32[], f32[16]) {
  %p = (s32[], f32[16]{0}) parameter(0)
  %v = f32[16]{0} get-tuple-element(%p), index=1
  %ar = f32[16]{0} all-reduce(%v), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], f32[16]{0}) tuple(%i, %ar)
}

%inner_cond (p: (s32[], f32[16])) -> pred[] {
  %p = (s32[], f32[16]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%outer_body (q: (s32[], f32[16])) -> (s32[], f32[16]) {
  %q = (s32[], f32[16]{0}) parameter(0)
  ROOT %w = (s32[], f32[16]{0}) while(%q), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"4"}}
}

%outer_cond (q: (s32[], f32[16])) -> pred[] {
  %q = (s32[], f32[16]{0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%free_body (r: f32[2]) -> f32[2] {
  %r = f32[2]{0} parameter(0)
  %ag = f32[4]{0} all-gather(%r), channel_id=2, replica_groups={{0,1}}, dimensions={0}
  ROOT %sl = f32[2]{0} slice(%ag), slice={[0:2]}
}

%free_cond (r: f32[2]) -> pred[] {
  %r = f32[2]{0} parameter(0)
  ROOT %c = pred[] constant(true)
}

%branch (x: bf16[8]) -> bf16[8] {
  %x = bf16[8]{0} parameter(0)
  ROOT %cp = bf16[8]{0} collective-permute(%x), channel_id=3, source_target_pairs={{0,1},{1,0}}
}

ENTRY %main (init: (s32[], f32[16]), r0: f32[2], x0: bf16[8], k: s32[], g: f32[3]) -> f32[2] {
  %init = (s32[], f32[16]{0}) parameter(0)
  %loop = (s32[], f32[16]{0}) while(%init), condition=%outer_cond, body=%outer_body, metadata={op_name="x"}, backend_config={"known_induction_variable":{"tuple_index":"0"},"known_trip_count":{"n":"3"}}
  %r0 = f32[2]{0} parameter(1)
  %free = f32[2]{0} while(%r0), condition=%free_cond, body=%free_body
  %x0 = bf16[8]{0} parameter(2)
  %k = s32[] parameter(3)
  %cond = bf16[8]{0} conditional(%k, %x0), branch_computations={%branch, %branch}
  %g = f32[3]{0} parameter(4)
  %ags = (f32[3]{0}, f32[6]{0}) all-gather-start(%g), channel_id=4, replica_groups={{0,1}}, dimensions={0}
  %agd = f32[6]{0} all-gather-done(%ags)
  %rs = f32[8]{0} reduce-scatter(f32[16]{0} %v2), channel_id=5, replica_groups={{0,1}}, dimensions={0}, to_apply=%add
  ROOT %out = f32[2]{0} slice(%agd), slice={[0:2]}
}
"""


def test_loops_multiply_and_unknown_trip_counts_are_flagged():
    text = _NESTED.replace("%rs = f32[8]{0} reduce-scatter(f32[16]{0} %v2)",
                           "%v2 = f32[16]{0} parameter(5)\n  %rs = f32[8]{0} reduce-scatter(f32[16]{0} %v2)")
    found = _by_kind(budget.parse_collectives(text))
    (ar,) = found["all-reduce"]
    assert (ar.times, ar.bytes, ar.bytes_per_step, ar.trip_known) == (12, 64, 768, True)
    (free,) = found["all-gather"][:1]
    assert (free.times, free.bytes, free.trip_known) == (1, 16, False)
    (start,) = found["all-gather"][1:]
    assert (start.times, start.bytes) == (1, 24)  # the gathered half of (operand, result)
    assert [(c.times, c.bytes) for c in found["collective-permute"]] == [(2, 16)]  # both branches, upper bound
    (rs,) = found["reduce-scatter"]
    assert (rs.times, rs.bytes) == (1, 64)  # the operand, not the scattered result
    table = budget.summarize(budget.parse_collectives(text))
    assert table["all-reduce"] == {"sites": 1, "executions": 12, "bytes": 768}
    assert table["all-to-all"] == {"sites": 0, "executions": 0, "bytes": 0}


def test_a_jitted_shard_map_with_known_collectives():
    """One all-gather of a [64, 32] weight, a psum of a [5] carry in each of 7 scan steps, one ppermute, one
    psum_scatter of a [16, 32] block: the parser finds them with their counts and unsharded bytes."""
    mesh = make_mesh(data=8, devices=jax.devices()[:8])

    def local(w, x):
        full = jax.lax.all_gather(w, "data", axis=0, tiled=True)  # [64, 32] from [8, 32]

        def body(c, _):
            return jax.lax.psum(jnp.tanh(c + x[:5, 0]), "data"), None

        c, _ = jax.lax.scan(body, jnp.zeros(5), None, length=7)
        shifted = jax.lax.ppermute(x, "data", [(i, (i + 1) % 8) for i in range(8)])
        y = jax.lax.psum_scatter(x @ full.T @ full + shifted, "data", scatter_dimension=0, tiled=True)
        return y + c.sum()

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data")))
    w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    x = jax.ShapeDtypeStruct((128, 32), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    found = _by_kind(budget.parse_collectives(fn.lower(w, x).compile().as_text()))
    assert [(c.times, c.bytes) for c in found["all-gather"]] == [(1, 64 * 32 * 4)]
    assert [(c.times, c.bytes) for c in found["all-reduce"]] == [(7, 5 * 4)]
    assert [(c.times, c.bytes) for c in found["collective-permute"]] == [(1, 16 * 32 * 4)]
    assert [(c.times, c.bytes) for c in found["reduce-scatter"]] == [(1, 16 * 32 * 4)]
    assert all(c.trip_known for cs in found.values() for c in cs)


@pytest.mark.parametrize("mesh_shape", [dict(fsdp=8), dict(data=8)])
def test_caption_head_collectives_are_outside_the_chunk_loop(mesh_shape):
    """The caption loss's value and gradients on a mesh (issue 19 item 1): the LM head is gathered at most once
    and its gradient reduced once, nothing runs per chunk."""
    mesh = make_mesh(**{"data": 1, **mesh_shape}, devices=jax.devices()[:8])
    rows, split = NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P("fsdp", "tensor"))
    hidden = jax.ShapeDtypeStruct((16, 31, 64), jnp.float32, sharding=rows)
    head = jax.ShapeDtypeStruct((64, 1000), jnp.float32, sharding=split)
    labels = jax.ShapeDtypeStruct((16, 31), jnp.int32, sharding=rows)
    grad = jax.jit(jax.value_and_grad(
        lambda h, w, y: losses.caption_loss_from_hidden(h, w, y, chunk=8, mesh=mesh), argnums=(0, 1)))
    found = _by_kind(budget.parse_collectives(grad.lower(hidden, head, labels).compile().as_text()))
    head_bytes = 64 * 1000 * 4
    assert max(c.times for cs in found.values() for c in cs) == 1
    # Sites moving at least the head's bytes, by kind (a combined collective may add the loss's scalar to it).
    big = {k: len([c for c in cs if c.bytes >= head_bytes]) for k, cs in found.items()}
    assert all(c.bytes <= head_bytes + 16 for cs in found.values() for c in cs)
    if "fsdp" in mesh_shape:
        assert big == {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 0, "all-to-all": 0, "collective-permute": 0}
    else:
        assert big == {"all-gather": 0, "reduce-scatter": 0, "all-reduce": 1, "all-to-all": 0, "collective-permute": 0}


def test_matmul_flops_count_loop_bodies_per_iteration():
    """[8, 16] x [16, 32] in a 5-step scan and once after it, then [8, 32] x [32, 4]: 6·2·8·16·32 + 2·8·32·4."""
    def f(x, w, v):
        def body(c, _):
            return jnp.tanh(c @ w)[:, :16], None

        c, _ = jax.lax.scan(body, x, None, length=5)
        return jnp.tanh(c @ w) @ v

    args = (jnp.ones((8, 16)), jnp.ones((16, 32)), jnp.ones((32, 4)))
    _, flops = budget.parse_program(jax.jit(f).lower(*args).compile().as_text())
    assert flops == 6 * 2 * 8 * 16 * 32 + 2 * 8 * 32 * 4
