"""The trainer's ConfigDict: ``configs/train.py:model=tiny-clip,data=synth`` plus ``--config.FIELD=VALUE`` overrides.

Defaults are the paper's recipe (reference-models.md §8): AdamW β=(0.9, 0.95), eps 1e-6, weight decay 0.2 with
open_clip's exclusions, global-norm clipping 1.0, linear warm-up then cosine to 0, logit scale clamped to ln 100,
MaMMUT = 1·InfoNCE + 2·caption CE. The argument picks the model and the data source (``data=synth`` is the
synthetic captioned shapes, generated from the seed, no files needed); everything else is a field.
"""

from __future__ import annotations

import ml_collections

from vlscale.configs import data as data_config
from vlscale.errors import UserError

DEFAULT_MODEL = "tiny-clip"
DEFAULT_DATA = "synth"
SCHEDULES = ("cosine", "const", "const-cooldown")  # the paper's spellings, written unchanged as lr_scheduler
ARG_KEYS = ("model", "data")
AUTO = "auto"
AUTO_AXIS = 0  # mesh.fsdp left to the model's default (an int, so every reader can still int() it)


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"model=tiny-clip,data=synth"`` (or a bare model name) -> {"model": ..., "data": ...}."""
    out: dict[str, str] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
        elif "model" not in out:
            key, value = "model", part
        else:
            raise UserError(f"config argument {arg!r}: use key=value (keys: {', '.join(ARG_KEYS)})")
        if key not in ARG_KEYS:
            raise UserError(f"config argument {arg!r}: unknown key {key!r} (keys: {', '.join(ARG_KEYS)}); "
                            f"set other fields with --config.{key}=VALUE")
        out[key] = value
    out.setdefault("model", DEFAULT_MODEL)
    out.setdefault("data", DEFAULT_DATA)
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parsed = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.model = parsed["model"]
    c.data = data_config.get_config(parsed["data"])
    # Written to the results table; "" = derived from the data source ("synth" for data=synth).
    c.pretrain_dataset = ""
    c.run_name = ""  # "" = the paper-style name from the run's identity (train/run_info.py)

    # Run length and batch.
    c.global_batch_size = 256  # per optimizer update, summed over grad_accum micro-batches and all hosts
    c.total_samples = 1_000_000  # samples seen at the end of the run (the scaling axis)
    c.grad_accum = 1

    # Optimizer (open_clip AdamW, paper run names: b1 0.9, b2 0.95; params.py: eps 1e-6, wd 0.2).
    c.lr = 1e-3
    c.warmup = -1  # steps (optimizer updates) of linear warm-up; -1 = 5 % of the run (at least 1)
    c.schedule = "cosine"  # cosine | const | const-cooldown
    c.cooldown_steps = 0  # const-cooldown: linear decay to 0 over the last N steps ...
    c.cooldown_fraction = 0.0  # ... or over this fraction of the run (when cooldown_steps is 0)
    c.beta1 = 0.9
    c.beta2 = 0.95
    c.eps = 1e-6
    c.weight_decay = 0.2
    c.clip_grad_norm = 1.0  # 0 = no clipping
    c.init_from = ""  # a checkpoint (WORKDIR/checkpoints/N, or a workdir = its latest) to continue, e.g. a cooldown

    # Losses (MaMMUT): open_clip CoCaLoss defaults. caption_loss_weight only: clip_loss_weight = 0.
    c.clip_loss_weight = 1.0
    c.caption_loss_weight = 2.0

    # Runtime (not part of the parameters): compute dtype, rematerialisation, scan over layers. "auto" (None for
    # scan_layers, 0 for mesh.fsdp) is filled by ``resolve_runtime`` from the model and platform (``runtime_defaults``);
    # a value the user sets always wins.
    c.dtype = AUTO  # float32 | bfloat16 compute (the residual stream, norms and losses stay float32)
    c.remat = AUTO  # none | block | full
    c.scan_layers = ml_collections.FieldReference(None, field_type=bool)
    # float32 | bfloat16: the dtype the forward reads the weights in. The trainer keeps float32 master weights and
    # Adam moments either way (logit_scale, norms and biases are never cast).
    c.param_dtype = AUTO
    c.attention = "auto"  # auto: cudnn on GPU, pallas on TPU, else xla | xla (reference) | dot_product | cudnn | pallas
    # Contrastive loss under shard_map that never builds the B x B logits on one device (global batches >~ 32k).
    c.sharded_contrastive = False
    c.seed = 0
    c.skip_nonfinite = False  # True: skip updates whose loss or gradients are not finite (and count them)

    # Mesh: -1 takes the devices the other axes leave; devices = 0 uses all of them (N: the first N, e.g. tests).
    # fsdp 0 = auto, filled by resolve_runtime (the paper's ViTs: every device the other axes leave; others: 1).
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": AUTO_AXIS, "tensor": 1, "devices": 0})

    # Logging and checkpoints.
    c.log_every = 10  # steps
    c.checkpoint_every = 500  # steps
    c.keep_checkpoints = 2  # latest N kept, plus every milestone
    c.checkpoint_at_samples = []  # samples-seen milestones kept forever (the paper evaluates them)
    # Several processes: steps between the hosts' agreements on a stop (SIGTERM/Ctrl-C on any one of them), besides
    # log and checkpoint steps. Each agreement waits for the step in flight; 10 = log_every's default, so by default
    # it costs no extra wait, and a preemption notice (30 s on Google Cloud spot VMs) is acted on within 10 steps.
    c.stop_check_every = 10
    c.eval_every = 0  # steps; 0 = no in-training zero-shot check
    c.eval_suite = "synth-quick"
    c.allow_config_change = False  # resume a workdir even if identity fields changed
    c.compilation_cache = ""  # "" = the user cache dir (XDG_CACHE_HOME/vlscale/jax); "none" disables

    # The data pipeline follows the run: the trainer sets its batch to global_batch_size, its image size and
    # context to the model's, and its seed to ``seed`` unless data.seed is set.
    c.data.seed = ml_collections.FieldReference(None, field_type=int)
    return c


# Fields that do not change what a run computes: resuming with other values is normal.
NON_IDENTITY_FIELDS = frozenset({
    "mesh", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_suite", "allow_config_change",
    "compilation_cache", "data.worker_count", "data.worker_buffer_size", "data.prefetch", "data.read_threads",
    "data.warn_interval_s", "data.process_index", "data.process_count", "remat", "attention", "sharded_contrastive", "checkpoint_at_samples",
    "data.cache_dir", "data.image_dtype", "stop_check_every", "auto_fields",
})


# Defaults of the runtime fields left at "auto"/None/0, by model and platform. The paper's ViTs (models.config
# PAPER_MODELS) train as the paper did on accelerators: bf16 compute with float32 master weights, FSDP over every
# device, scanned layers (one compiled block per tower, short compiles), remat by vision width. Tiny and shapes
# models (tests, CPU studies) keep float32, no remat, unscanned layers and a data-parallel mesh everywhere; on CPU
# every model computes in float32 (XLA's CPU backend has no fast bf16 matmul).
REMAT_BY_WIDTH = ((768, "none"), (1024, "block"))  # vision width below the bound -> policy; wider: "full"


def remat_for(model: str) -> str:
    """The paper models' default remat: none for S/M (width < 768), block for B (768), full for L and H."""
    from vlscale.models.config import get_config

    width = get_config(model).vision.width
    for bound, policy in REMAT_BY_WIDTH:
        if width < bound:
            return policy
    return "full"


def runtime_defaults(model: str, platform: str) -> dict:
    """What "auto" means for this model on this platform ("cpu", "gpu", "tpu"): the resolution table."""
    from vlscale.models.config import PAPER_MODELS

    if model not in PAPER_MODELS:
        return {"dtype": "float32", "param_dtype": "float32", "remat": "none", "scan_layers": False, "fsdp": 1}
    dtype = "float32" if platform == "cpu" else "bfloat16"
    return {"dtype": dtype, "param_dtype": dtype, "remat": remat_for(model), "scan_layers": True, "fsdp": -1}


def resolve_runtime(config, platform: str) -> list[str]:
    """Fills, in place, the runtime fields left at "auto"/None/0; returns the names it filled.

    ``mesh.fsdp`` auto on a paper ViT takes every device the other axes leave: ``mesh.data`` left at -1 becomes 1.
    """
    table = runtime_defaults(str(config.model), platform)
    filled = []
    with config.unlocked():
        for field in ("dtype", "param_dtype", "remat"):
            if str(config[field]) == AUTO:
                config[field] = table[field]
                filled.append(field)
        if config.scan_layers is None:
            config.scan_layers = table["scan_layers"]
            filled.append("scan_layers")
        mesh = config.mesh
        if int(mesh.get("fsdp", 1)) == AUTO_AXIS:
            mesh.fsdp = table["fsdp"]
            if table["fsdp"] == -1 and int(mesh.data) == -1:
                mesh.data = 1
            filled.append("mesh.fsdp")
    return filled


def is_resolved(config) -> bool:
    return not (str(config.dtype) == AUTO or str(config.param_dtype) == AUTO or str(config.remat) == AUTO
                or config.scan_layers is None or int(config.mesh.get("fsdp", 1)) == AUTO_AXIS)
