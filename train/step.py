"""The training state and the jitted, sharded train step for CLIP and MaMMUT.

State is a pytree (``TrainState``); ``TrainStep.step(state, batch, sched)`` is one pure function compiled once
per (model, runtime, batch, mesh, recipe constants) and cached in-process, so a study's many runs of one model
reuse it: learning rate, warm-up, run length and weight decay arrive as data (``optim.schedule_params``).

Gradient accumulation follows open_clip's ``--accum-freq``: the contrastive loss is taken over the accumulated
global batch. Features of every micro-batch are first computed without gradients; then each micro-batch is run
again with gradients, its features substituted into the cached set, and the gradients summed. The sum equals the
gradient of the full-batch loss (each micro-batch's parameters influence the loss only through its own
features), while activations live for one micro-batch at a time. The caption loss is a mean over all real
tokens of the global batch, so each micro-batch contributes its token-loss sum divided by the global count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from vlscale.configs import train as train_config
from vlscale.models import registry
from vlscale.models.config import get_config as get_model_config
from vlscale.models.layers import compute_dtype
from vlscale.train import losses, optim
from vlscale.runtime import sharding

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the learned temperature to [0, ln 100] after each step


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (unused by today's models: no dropout; kept so a resume is exact)
    skipped: jax.Array  # int32: non-finite updates skipped (skip_nonfinite)
    first_nonfinite: jax.Array  # int32: step of the first non-finite update, -1 if none


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything that changes the compiled program (and nothing that does not)."""

    model: str
    dtype: str
    remat: str
    scan_layers: bool
    global_batch_size: int
    grad_accum: int
    beta1: float
    beta2: float
    eps: float
    clip_grad_norm: float
    clip_loss_weight: float
    caption_loss_weight: float
    skip_nonfinite: bool
    param_dtype: str
    attention: str
    sharded_contrastive: bool
    mesh_shape: tuple
    image_dtype: str

    @classmethod
    def from_config(cls, config, mesh, image_dtype: str = "float32") -> "StepSpec":
        if not train_config.is_resolved(config):  # benches pass configs that did not go through resolve_config
            config = config.copy_and_resolve_references()
            train_config.resolve_runtime(config, mesh.devices.flat[0].platform)
        return cls(model=str(config.model), dtype=str(config.dtype), remat=str(config.remat),
                   scan_layers=bool(config.scan_layers), global_batch_size=int(config.global_batch_size),
                   grad_accum=int(config.grad_accum), beta1=float(config.beta1), beta2=float(config.beta2),
                   eps=float(config.eps), clip_grad_norm=float(config.clip_grad_norm),
                   clip_loss_weight=float(config.clip_loss_weight),
                   caption_loss_weight=float(config.caption_loss_weight),
                   skip_nonfinite=bool(config.skip_nonfinite), param_dtype=str(config.get("param_dtype", "float32")),
                   attention=str(config.get("attention", "xla")),
                   sharded_contrastive=bool(config.get("sharded_contrastive", False)),
                   mesh_shape=tuple(sorted(dict(mesh.shape).items())), image_dtype=image_dtype)


def family_of(model_name: str) -> str:
    return get_model_config(model_name).family


def _normalize(images: jax.Array) -> jax.Array:
    if images.dtype == jnp.uint8:
        from vlscale.data.normalize import normalize_images

        return normalize_images(images)
    return images


class TrainStep:
    """Compiled init and step for one ``StepSpec`` on one mesh. Build through ``get_train_step``."""

    def __init__(self, spec: StepSpec, mesh):
        self.spec, self.mesh = spec, mesh
        # Master weights and Adam moments are float32 whatever param_dtype says: the forward reads a cast copy
        # (optim.compute_params), so small updates accumulate in float32 as under open_clip's AMP.
        self.model = registry.build_model(spec.model, dtype=spec.dtype, remat=spec.remat,
                                          scan_layers=spec.scan_layers, param_dtype="float32",
                                          attention=spec.attention)
        self.weight_dtype = compute_dtype(spec.param_dtype)
        self.config = self.model.config
        self.family = self.config.family
        self.adam = optax_adam(spec)
        abstract_params = registry.param_shapes(self.model)
        self.param_shardings = sharding.logical_to_sharding(registry.param_logical_axes(self.model), mesh,
                                                            shapes=abstract_params)
        self.mask = optim.decay_mask(abstract_params)
        replicated = NamedSharding(mesh, PartitionSpec())
        self.replicated = replicated
        abstract_opt = jax.eval_shape(self.adam.init, abstract_params)
        opt_shardings = jax.tree.map(lambda _: replicated, abstract_opt)
        opt_shardings = opt_shardings._replace(mu=self.param_shardings, nu=self.param_shardings)
        self.state_shardings = TrainState(step=replicated, params=self.param_shardings, opt_state=opt_shardings,
                                          rng=replicated, skipped=replicated, first_nonfinite=replicated)
        self.batch_shardings = {"image": sharding.batch_sharding(mesh, 4), "text": sharding.batch_sharding(mesh, 2)}
        with sharding.activation_sharding(mesh):
            self.abstract_state = jax.eval_shape(self._init, jax.random.key_data(jax.random.key(0)))
        self._jit_init = jax.jit(self._init, out_shardings=self.state_shardings,
                                 compiler_options=registry.init_compiler_options(self.model))
        self._jit_step = jax.jit(self._step, in_shardings=(self.state_shardings, self.batch_shardings, None),
                                 out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))

    def init(self, seed: int) -> TrainState:
        """A fresh, sharded state (parameters initialised where they live: no full replica on one device)."""
        with sharding.activation_sharding(self.mesh):
            return self._jit_init(jax.random.key_data(jax.random.key(int(seed))))

    def step(self, state: TrainState, batch: dict, sched: dict) -> tuple[TrainState, dict]:
        with sharding.activation_sharding(self.mesh):
            return self._jit_step(state, batch, sched)

    def lower(self, batch_spec: dict, sched: dict):
        """The lowered step for abstract inputs (dry runs: memory analysis and FLOPs without data)."""
        with sharding.activation_sharding(self.mesh):
            return self._jit_step.lower(self.abstract_state_with_shardings(), batch_spec, sched)

    def abstract_state_with_shardings(self) -> TrainState:
        """ShapeDtypeStructs carrying this mesh's shardings: the restore target for Orbax."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    # --- init -------------------------------------------------------------------------------------------------

    def _init(self, key_data: jax.Array) -> TrainState:
        key = jax.random.wrap_key_data(key_data)
        init_key, state_key = jax.random.split(key)
        images, tokens = registry.dummy_inputs(self.config)
        params = nn.meta.unbox(self.model.init(init_key, images, tokens)["params"])
        return TrainState(step=jnp.int32(0), params=params, opt_state=self.adam.init(params),
                          rng=jax.random.key_data(state_key), skipped=jnp.int32(0), first_nonfinite=jnp.int32(-1))

    # --- loss ---------------------------------------------------------------------------------------------------

    def _features(self, params, images, tokens):
        params = optim.compute_params(params, self.mask, self.weight_dtype)
        apply = lambda method, x: self.model.apply({"params": params}, x, normalize=True, method=method)  # noqa
        return apply(self.model.encode_image, images), apply(self.model.encode_text, tokens)

    def _micro_loss(self, params, images, tokens, cached_img, cached_txt, slot, n_tokens):
        """Loss of the global batch with micro-batch ``slot`` live (the others from the cache)."""
        s = self.spec
        params = optim.compute_params(params, self.mask, self.weight_dtype)
        if self.family == "mammut":
            # Hidden states + LM head: the caption CE applies the head in chunks, so the [B, L-1, vocab] logits
            # and their float32 copies never exist whole (losses.caption_nll_from_hidden); on the mesh, the LM head
            # is gathered once and its gradient reduced once per step.
            out = self.model.apply({"params": params}, images, tokens, caption_head=False)
        else:
            out = self.model.apply({"params": params}, images, tokens)
        parts = {}
        total = jnp.float32(0.0)
        if self.family == "clip" or s.clip_loss_weight:
            img, txt = out["image_features"], out["text_features"]
            if cached_img is not None:
                img = jax.lax.dynamic_update_index_in_dim(cached_img, img.astype(cached_img.dtype), slot, 0)
                txt = jax.lax.dynamic_update_index_in_dim(cached_txt, txt.astype(cached_txt.dtype), slot, 0)
                img, txt = img.reshape(-1, img.shape[-1]), txt.reshape(-1, txt.shape[-1])
            scale = out["logit_scale"]
            if cached_img is not None:
                # The temperature enters every micro-batch's loss directly: let one of them carry its gradient.
                scale = jnp.where(slot == 0, scale, jax.lax.stop_gradient(scale))
            if s.sharded_contrastive:
                parts["contrastive_loss"] = losses.clip_loss_sharded(img, txt, scale, self.mesh)
            else:
                parts["contrastive_loss"] = losses.clip_loss(img, txt, scale)
            weight = 1.0 if self.family == "clip" else s.clip_loss_weight
            total = total + weight * parts["contrastive_loss"]
        if self.family == "mammut":
            token_sum, _ = losses.caption_nll_from_hidden(out["caption_hidden"], out["lm_head"], out["labels"],
                                                          mesh=self.mesh)
            parts["caption_loss"] = token_sum / jnp.maximum(n_tokens, 1.0)
            total = total + s.caption_loss_weight * parts["caption_loss"]
        parts["logit_scale"] = out["logit_scale"]
        return total, parts

    def _loss_and_grads(self, params, batch):
        s = self.spec
        images, tokens = _normalize(batch["image"]), batch["text"]
        if s.grad_accum == 1:
            n_tokens = (tokens[:, 1:] != losses.PAD_ID).sum().astype(jnp.float32)
            grad_fn = jax.value_and_grad(self._micro_loss, has_aux=True)
            (loss, parts), grads = grad_fn(params, images, tokens, None, None, 0, n_tokens)
            return loss, parts, grads
        a = s.grad_accum
        # Micro-batch j takes rows j, j+a, j+2a, ...: every micro-batch stays spread over all devices.
        split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // a, a, *x.shape[1:]), 0, 1)  # noqa: E731
        micro_images, micro_tokens = split(images), split(tokens)
        n_tokens = (tokens[:, 1:] != losses.PAD_ID).sum().astype(jnp.float32)
        need_features = self.family == "clip" or s.clip_loss_weight
        if need_features:
            cached_img, cached_txt = jax.lax.map(
                lambda xt: jax.lax.stop_gradient(self._features(params, *xt)), (micro_images, micro_tokens))
        else:
            cached_img = cached_txt = None
        grad_fn = jax.value_and_grad(self._micro_loss, has_aux=True)

        def body(acc, inputs):
            j, x, t = inputs
            (_, parts), g = grad_fn(params, x, t, cached_img, cached_txt, j, n_tokens)
            return jax.tree.map(jnp.add, acc, g), parts

        zeros = jax.tree.map(jnp.zeros_like, params)
        grads, parts = jax.lax.scan(body, zeros, (jnp.arange(a), micro_images, micro_tokens))
        out = {"logit_scale": parts["logit_scale"][0]}
        loss = jnp.float32(0.0)
        if "contrastive_loss" in parts:
            # Every micro-batch saw the same global contrastive loss (up to recomputation rounding).
            out["contrastive_loss"] = parts["contrastive_loss"][0]
            loss = loss + (1.0 if self.family == "clip" else s.clip_loss_weight) * out["contrastive_loss"]
        if "caption_loss" in parts:
            out["caption_loss"] = parts["caption_loss"].sum()
            loss = loss + s.caption_loss_weight * out["caption_loss"]
        return loss, out, grads

    # --- step ---------------------------------------------------------------------------------------------------

    def _step(self, state: TrainState, batch: dict, sched: dict) -> tuple[TrainState, dict]:
        s = self.spec
        loss, parts, grads = self._loss_and_grads(state.params, batch)
        grads, grad_norm = optim.clip_by_global_norm(grads, s.clip_grad_norm)
        lr = optim.learning_rate(state.step, sched)
        adam_updates, opt_state = self.adam.update(grads, state.opt_state, state.params)
        params = optim.adamw_update(state.params, adam_updates, self.mask, lr, sched["weight_decay"])
        params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite update is never applied: with skip_nonfinite the run goes on, otherwise the loop stops at
        # its next check with the parameters of the last good step (and never checkpoints a poisoned state).
        frozen = (state.first_nonfinite >= 0) & (not s.skip_nonfinite)
        apply = finite & ~frozen
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rng=state.rng,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1, state.first_nonfinite),
        )
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, **parts}
        return new_state, metrics


def optax_adam(spec: StepSpec):
    import ml_collections

    return optim.make_adam(ml_collections.ConfigDict({"beta1": spec.beta1, "beta2": spec.beta2, "eps": spec.eps}))


_CACHE: dict[tuple, TrainStep] = {}


def get_train_step(config, mesh, image_dtype: str = "float32") -> TrainStep:
    """The compiled step for this config on this mesh, reused across runs in the same process."""
    spec = StepSpec.from_config(config, mesh, image_dtype)
    key = (spec, tuple(d.id for d in mesh.devices.flat), mesh.axis_names)
    if key not in _CACHE:
        _CACHE[key] = TrainStep(spec, mesh)
    return _CACHE[key]


def make_train_step(model_config_or_config, mesh, image_dtype: str = "float32") -> TrainStep:
    """Alias of ``get_train_step`` for benches and notebooks."""
    return get_train_step(model_config_or_config, mesh, image_dtype)
