"""A model ready for evaluation on a mesh: parameters placed once per checkpoint, compiled functions shared.

The study evaluates many checkpoints of the same model in one process, so every jitted function is built once per
(model config, dtype, mesh) and takes the parameters as an argument; a new checkpoint of the same model reuses the
compiled code. float32 mode runs matmuls at "highest" precision (no TF32/bf16 passes on accelerators), which is
what the open_clip parity needs; bf16 mode computes in bfloat16 with float32 parameters, as training does. "auto"
(the default everywhere a precision is chosen) is bf16 on GPU/TPU backends and float32 on the CPU, where bf16 is
emulated and slower. Features always leave in float32, L2-normalised.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vlscale.errors import UserError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
AUTO = "auto"
# Backends whose matmul units run bfloat16 natively: "auto" computes in bf16 there (jax.default_backend() names).
BF16_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def backend() -> str:
    """The platform evaluation runs on (jax's default backend: "cpu", "gpu", "tpu")."""
    return jax.default_backend()


def resolve_dtype(precision: str) -> str:
    """``"auto"`` -> "bfloat16" on GPU/TPU, "float32" elsewhere; the explicit names -> their canonical dtype."""
    if precision == AUTO:
        return "bfloat16" if backend() in BF16_BACKENDS else "float32"
    if precision not in DTYPES:
        raise UserError(f"precision {precision!r}: use auto, float32 (fp32) or bfloat16 (bf16)")
    return DTYPES[precision]


def _normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.lru_cache(maxsize=None)
def _model(config, dtype: str):
    from vlscale.models.registry import build_model

    return build_model(config, dtype=dtype)


@functools.lru_cache(maxsize=None)
def compiled(config, dtype: str, kind: str):
    """The jitted ``kind`` function of a model ("encode_image", "encode_text", "classify", "image_memory")."""
    model = _model(config, dtype)

    def encode_image(params, images):
        return _normalize(model.apply({"params": params}, images, normalize=False, method="encode_image"))

    def encode_text(params, tokens):
        return _normalize(model.apply({"params": params}, tokens, normalize=False, method="encode_text"))

    def classify(params, images, labels, classifier):
        """Rank of the true class and the top-1 class (vlscale.eval.zeroshot's order), and whether the image's
        features and logits are all finite, per image."""
        from vlscale.eval.zeroshot import all_finite, label_rank, top1

        features = encode_image(params, images)
        logits = 100.0 * features @ classifier
        return {"rank": label_rank(logits, labels), "pred": top1(logits),
                "finite": all_finite(features) & all_finite(logits)}

    fns = {"encode_image": encode_image, "encode_text": encode_text, "classify": classify}
    if kind not in fns:
        raise KeyError(kind)
    return jax.jit(fns[kind])


@dataclass
class EvalModel:
    """A model name, its parameters placed on ``mesh``, and the compiled eval functions for it."""

    model_name: str
    params: Any
    mesh: Any
    dtype: str = "float32"  # what it computes in: "float32" or "bfloat16" ("auto" is resolved by ``create``)

    @classmethod
    def create(cls, model_name: str, params: Any, mesh=None, dtype: str = AUTO) -> "EvalModel":
        from vlscale.models.config import get_config
        from vlscale.models.layer_layout import to_layout
        from vlscale.runtime import sharding

        dtype = resolve_dtype(dtype)
        mesh = mesh if mesh is not None else sharding.make_mesh()
        config = get_config(model_name)
        model = _model(config, dtype)
        params = to_layout(params, config, scan_layers=False)
        axes = _logical_axes(config)
        placement = sharding.logical_to_sharding(axes, mesh, shapes=params)
        params = jax.tree.map(lambda a, s: jax.device_put(np.asarray(a, np.float32), s), params, placement)
        del model
        return cls(model_name, params, mesh, dtype)

    @property
    def config(self):
        from vlscale.models.config import get_config

        return get_config(self.model_name)

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def module(self):
        return _model(self.config, self.dtype)

    def fn(self, kind: str):
        return compiled(self.config, self.dtype, kind)

    @contextlib.contextmanager
    def context(self):
        """Logical-axis rules of the mesh (the models' activation constraints) and the matmul precision."""
        from vlscale.runtime.sharding import activation_sharding

        precision = "highest" if self.dtype == "float32" else "default"
        with activation_sharding(self.mesh), jax.default_matmul_precision(precision):
            yield

    def replicated(self, x) -> jax.Array:
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(np.asarray(x), NamedSharding(self.mesh, PartitionSpec()))


@functools.lru_cache(maxsize=None)
def _logical_axes(config):
    from vlscale.models.registry import param_logical_axes

    return param_logical_axes(_model(config, "float32"))
