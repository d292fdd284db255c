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


# Mesh axes that may move to another dimension of a parameter when the one the rules name does not divide it (a
# ZeRO-3 split is valid along any dimension: the array is gathered whole before use). big_vision's FSDP rule.
FALLBACK_AXES = ("fsdp",)
# Logical axes a fallback never takes: a scanned stack is sliced one layer per iteration, so splitting it over
# devices would make each layer's step wait on the one device that holds it.
NO_FALLBACK = ("layers",)


def _names(axes: Any) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None], rules=LOGICAL_RULES,
                         shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                         fallback: Sequence[str] = FALLBACK_AXES, unplaced: list | None = None) -> PartitionSpec:
    """Mesh PartitionSpec for one array's logical axis names.

    With ``shape`` and ``mesh`` (parameters), a mesh axis that does not divide its dimension moves, when it is one of
    ``fallback``, to the largest other dimension it divides (after the axes already there; never ``layers``); else the
    array is
    left whole along it, and ``(axis, dimension)`` is appended to ``unplaced`` so the caller can report it.
    """
    logical = tuple(logical)
    spec = [_names(a) for a in nn.logical_to_mesh_axes(logical, rules)]
    if shape is None or mesh is None:
        return PartitionSpec(*[a[0] if len(a) == 1 else (a or None) for a in spec])
    dropped = []
    for d, (axes, dim) in enumerate(zip(spec, shape)):
        kept = []
        for a in axes:  # in order: an axis stays if the product so far still divides the dimension
            if dim % (_axis_size(mesh, tuple(kept)) * mesh.shape[a]) == 0:
                kept.append(a)
            elif mesh.shape[a] > 1:
                dropped.append((a, d))
        spec[d] = tuple(kept)
    for a, d in dropped:
        order = sorted(range(len(shape)), key=lambda i: (-shape[i], i))
        target = next((i for i in order if a in fallback and i != d and logical[i] not in NO_FALLBACK
                       and shape[i] % (_axis_size(mesh, spec[i]) * mesh.shape[a]) == 0), None)
        if target is None:
            if unplaced is not None:
                unplaced.append((a, d))
        else:
            spec[target] = spec[target] + (a,)
    return PartitionSpec(*[a[0] if len(a) == 1 else (a or None) for a in spec])


def logical_to_sharding(axes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES, shapes: Any = None) -> Any:
    """Tree of logical PartitionSpecs (``registry.param_logical_axes``) -> tree of ``NamedSharding``.

    ``shapes`` (a matching tree of arrays or ShapeDtypeStructs) enables the divisibility fallback (parameters).
    """
    if shapes is None:
        return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_mesh_spec(s, rules)), axes_tree,
                            is_leaf=_is_spec)
    return jax.tree.map(lambda s, x: NamedSharding(mesh, logical_to_mesh_spec(s, rules, x.shape, mesh)),
                        axes_tree, shapes, is_leaf=_is_spec)


def replication(axes_tree: Any, shapes: Any, mesh: Mesh, rules=LOGICAL_RULES) -> dict:
    """How whole the parameters stay on ``mesh``: each array's split over the model-parallel axes (every mesh
    axis but ``data``, whose replicas are data parallelism by design).

    Returns ``{"bytes", "replicated_bytes", "replicated_share", "arrays": [(path, shape, ways, unplaced axes)]}``
    where an array counts as replicated when it is split fewer ways than those axes' device product, and
    ``arrays`` lists those, largest first.
    """
    model_ways = math.prod(n for a, n in mesh.shape.items() if a != "data")
    total = replicated = 0
    arrays = []
    leaves = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_spec)[0]
    for (path, logical), x in zip(leaves, jax.tree.leaves(shapes)):
        unplaced: list = []
        spec = logical_to_mesh_spec(logical, rules, x.shape, mesh, unplaced=unplaced)
        ways = math.prod(_axis_size(mesh, a) for a in spec if a is not None)
        nbytes = math.prod(x.shape) * jax.numpy.dtype(x.dtype).itemsize
        total += nbytes
        if ways < model_ways:
            replicated += nbytes
            arrays.append((jax.tree_util.keystr(path), tuple(x.shape), ways, sorted({a for a, _ in unplaced}),
                           nbytes))
    arrays.sort(key=lambda r: -r[-1])
    return {"bytes": total, "replicated_bytes": replicated,
            "replicated_share": replicated / total if total else 0.0, "model_parallel_devices": model_ways,
            "arrays": [r[:4] for r in arrays]}


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_RULES) -> NamedSharding:
    """Sharding of a batch-major input (images [B,H,W,C], tokens [B,L]): batch split, the rest replicated."""
    return NamedSharding(mesh, logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1), rules))


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=LOGICAL_RULES) -> Iterator[None]:
    """Makes the models' ``with_logical_constraint`` calls active: the mesh and the rules, for tracing/jit."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
