"""Logical-axis sharding, MaxText-style: one ordered rules table maps the models' logical axis names to mesh axes.

Models name every parameter and main activation axis (``batch``, ``length``, ``embed``, ``mlp``, ``heads``,
``kv``, ``vocab``, ``proj``, ``layers``, ``norm``; see ``vlscale.models.layers``). Changing the parallelism is an
edit of ``LOGICAL_RULES`` or of the mesh shape, never of model code. Rules are tried in order and a mesh axis is
used at most once per array, so activations [batch, length, embed] put ``fsdp`` on the batch while the
parameters' ``embed`` axis takes it (ZeRO-3 style); ``tensor`` splits heads, MLP hidden and vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axes): ordered by priority.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("proj", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv", None),
    ("layers", None),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; ``-1`` takes the devices the other axes leave."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    # Auto axes: XLA's partitioner propagates shardings from the parameters, inputs and logical constraints.
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names)


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None], rules=LOGICAL_RULES,
                         shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """Mesh PartitionSpec for one array's logical axis names; with ``shape`` and ``mesh``, axes that do not
    divide their dimension are left unsharded (small test models, odd head counts)."""
    spec = list(nn.logical_to_mesh_axes(tuple(logical), rules))
    if shape is not None and mesh is not None:
        spec = [a if dim % _axis_size(mesh, a) == 0 else None for a, dim in zip(spec, shape)]
    return PartitionSpec(*spec)


def logical_to_sharding(axes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES, shapes: Any = None) -> Any:
    """Tree of logical PartitionSpecs (``registry.param_logical_axes``) -> tree of ``NamedSharding``.

    ``shapes`` (a matching tree of arrays or ShapeDtypeStructs) enables the divisibility fallback.
    """
    if shapes is None:
        return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_mesh_spec(s, rules)), axes_tree,
                            is_leaf=_is_spec)
    return jax.tree.map(lambda s, x: NamedSharding(mesh, logical_to_mesh_spec(s, rules, x.shape, mesh)),
                        axes_tree, shapes, is_leaf=_is_spec)


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_RULES) -> NamedSharding:
    """Sharding of a batch-major input (images [B,H,W,C], tokens [B,L]): batch split, the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1), rules))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=LOGICAL_RULES) -> Iterator[None]:
    """Makes the models' ``with_logical_constraint`` calls active: the mesh and the rules, for tracing/jit."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
