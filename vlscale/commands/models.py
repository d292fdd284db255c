"""`vlscale models`, `vlscale convert` and `vlscale embed`.

Only argparse-level code at import time (the CLI imports every package's cli module for `vlscale --help`);
jax, torch, pandas and the models load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from vlscale.commands import argtypes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EMBED_BATCH = 64

MODELS_EXAMPLES = """examples:
  vlscale models                # the paper's 35 CLIP/MaMMUT models: parameters and GFLOPs per sample
  vlscale models --csv --all    # as CSV, including the tiny test/CPU configurations
"""
CONVERT_EXAMPLES = """examples:
  vlscale convert --from-open-clip open_clip_model.safetensors --model ViT-B-32 --out ckpt/b32
  vlscale convert --from-open-clip epoch_32.pt --model mammut_ViT-B-32 --out ckpt/mammut_b32
  vlscale convert --to-open-clip ckpt/b32 --out b32_open_clip.safetensors

.pt files are read with torch's weights-only unpickler, which never runs code from the file; a legacy file
it refuses loads with --trust-pickle, only if you trust its source (docs/security.md). Prefer .safetensors.
"""
EMBED_EXAMPLES = """examples:
  vlscale embed --checkpoint ckpt/b32 --images cat.jpg dog.jpg --texts "a cat" "a dog"
  vlscale embed --checkpoint ckpt/b32 --image-dir photos/ --texts-file captions.txt --out emb.npz
"""


def register(registry) -> None:
    registry.add("models", "List the model configurations with parameter counts and GFLOPs.", _configure_models,
                 _run_models, description="List the model configurations: parameters (millions) and forward "
                 "GFLOPs per sample in the paper's convention, plus full training GFLOPs (fwd+bwd, attention "
                 "included) per sample.\n\n" + MODELS_EXAMPLES)
    registry.add("convert", "Convert open_clip / MaMMUT checkpoints to vlscale parameters and back.",
                 _configure_convert, _run_convert,
                 description="Convert an open_clip or open_clip_mammut checkpoint (.pt with {'state_dict': ...} "
                 "or a bare state dict, or .safetensors) into a vlscale (Orbax) checkpoint, or export a vlscale "
                 "checkpoint as an open_clip state dict.\n\n" + CONVERT_EXAMPLES)
    registry.add("embed", "Embed images and texts with a checkpoint; print their similarity matrix.",
                 _configure_embed, _run_embed,
                 description="Embed images (open_clip eval preprocessing) and texts (open_clip tokenizer) with a "
                 "vlscale checkpoint. Writes L2-normalised float32 image_embeddings and text_embeddings in input "
                 "order to --out, or prints the image-text cosine similarity matrix.\n\n" + EMBED_EXAMPLES)


# --- models --------------------------------------------------------------------------------------------------------


def _configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", action="store_true", help="print CSV instead of an aligned table")
    p.add_argument("--all", action="store_true", help="include the tiny test/CPU configurations")


def _run_models(args) -> int:
    from vlscale.models.flops import profile_table

    table = profile_table(include_tiny=args.all)
    cols = ["model", "image_size", "mparams", "image_mparams", "text_mparams", "gflops", "train_gflops"]
    table = table[cols]
    if args.csv:
        table.to_csv(sys.stdout, index=False)
    else:
        print(table.to_string(index=False))
    return 0


# --- convert -------------------------------------------------------------------------------------------------------


def _configure_convert(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-open-clip", metavar="FILE", help="open_clip / MaMMUT checkpoint (.pt, .safetensors)")
    src.add_argument("--to-open-clip", metavar="DIR",
                     help="vlscale checkpoint to export (convert folder, training workdir or WORKDIR/checkpoints/N)")
    p.add_argument("--model", help="model name (see `vlscale models`); required with --from-open-clip")
    p.add_argument("--out", required=True,
                   help="output directory (--from-open-clip) or .safetensors (preferred) / .pt file")
    p.add_argument("--text-prefix", action="store_true",
                   help="export a CLIP text tower under 'text.' (open_clip CustomTextCLIP layout)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a .pt with full pickle, which can run code stored in the file: only for files from "
                        "a source you trust (default: weights-only loading, which refuses such files)")


def _run_convert(args) -> int:
    from vlscale.errors import UserError
    from vlscale.models import convert, saved_params, state_dict_files
    from vlscale.models.config import get_config
    from vlscale.models.registry import count_params

    from vlscale.runtime.files import check_output_dir, check_output_file

    if args.from_open_clip:
        if not args.model:
            raise UserError("--from-open-clip needs --model NAME (run `vlscale models` for the names)")
        cfg = get_config(args.model)
        check_output_dir(args.out)
        if args.trust_pickle:
            print(f"warning: --trust-pickle: {args.from_open_clip} is unpickled in full and can run code it holds",
                  file=sys.stderr)
        params = convert.from_open_clip(args.from_open_clip, cfg.name, trust_pickle=args.trust_pickle)
        out = saved_params.save_params(args.out, params, cfg.name)
        print(f"converted {args.from_open_clip} -> {out} ({cfg.name}, {count_params(params):,} parameters)")
        return 0
    out = check_output_file(args.out, suffixes=(".safetensors", ".pt", ".pth", ".bin"))
    params, meta = load_checkpoint_params(args.to_open_clip)
    if args.model and args.model != meta["model"]:
        raise UserError(f"--model {args.model} does not match the checkpoint's model {meta['model']}")
    state = convert.flax_to_torch(params, meta["model"], text_prefix=args.text_prefix)
    state_dict_files.save_state_dict_file(state, out)
    print(f"exported {args.to_open_clip} ({meta['model']}) -> {out} ({len(state)} tensors)")
    print(open_clip_loader(get_config(meta["model"]), out))
    return 0


def open_clip_config(cfg) -> dict:
    """open_clip's model-config JSON for a CLIP config (the fields of its model_configs/*.json)."""
    v, t = cfg.vision, cfg.text
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width, head_width=v.head_width,
                  patch_size=v.patch_size, mlp_ratio=v.mlp_ratio)
    if v.ls_init_value is not None:
        vision["ls_init_value"] = v.ls_init_value
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                layers=t.layers, mlp_ratio=t.mlp_ratio)
    return {"embed_dim": cfg.embed_dim, "vision_cfg": vision, "text_cfg": text}


def open_clip_loader(cfg, out) -> str:
    """Which open_clip model config loads an exported file, as the lines to run. A named paper model has its
    JSON in open_clip (CLIP) or the MaMMUT fork, open_clip_mammut; a tiny CLIP gets its JSON written beside the
    file; a tiny MaMMUT has no fork config, so the dimensions are printed."""
    import json
    from pathlib import Path

    from vlscale.models.config import PAPER_MODELS

    if cfg.name in PAPER_MODELS:
        where = "open_clip" if cfg.family == "clip" else "the MaMMUT fork of open_clip (open_clip_mammut)"
        return f"load it with {where}: open_clip.create_model({cfg.name!r}, pretrained={str(out)!r})"
    if cfg.family == "clip":
        path = Path(out).with_name(f"{cfg.name}.json")
        path.write_text(json.dumps(open_clip_config(cfg), indent=1) + "\n")
        return (f"open_clip has no config named {cfg.name}; its model config is written to {path}: load it with "
                f"open_clip.add_model_config({str(path)!r}); open_clip.create_model({cfg.name!r}, "
                f"pretrained={str(out)!r})")
    v, t = cfg.vision, cfg.text
    return (f"the MaMMUT fork (open_clip_mammut) has no config named {cfg.name}: build its MaMMUT with embed_dim "
            f"{cfg.embed_dim}, vision width {v.width} layers {v.layers} patch {v.patch_size} image {v.image_size}, "
            f"text width {t.width} heads {t.heads} layers {t.layers} context {t.context_length} has_mlp "
            f"{t.has_mlp}, then load_state_dict from {out}")


def load_checkpoint_params(path) -> tuple[dict, dict]:
    """(params, {"model": name}) from a ``vlscale convert`` folder or a trainer workdir / step directory."""
    from vlscale.models import checkpoints

    loaded = checkpoints.load(path)
    return loaded.params, {"model": loaded.model_name, "step": loaded.step}


# --- embed ---------------------------------------------------------------------------------------------------------


def _configure_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="vlscale checkpoint: a `vlscale convert` folder, a training workdir or WORKDIR/checkpoints/N")
    p.add_argument("--model", help="model name; defaults to the one recorded in the checkpoint")
    imgs = p.add_mutually_exclusive_group()
    imgs.add_argument("--images", nargs="+", metavar="FILE", help="image files")
    imgs.add_argument("--image-dir", metavar="DIR", help="every image in DIR (sorted by name)")
    txts = p.add_mutually_exclusive_group()
    txts.add_argument("--texts", nargs="+", metavar="TEXT", help="texts to embed")
    txts.add_argument("--texts-file", metavar="FILE", help="texts, one per line")
    p.add_argument("--out", metavar="FILE.npz", help="write image_embeddings / text_embeddings here")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32: float32 with highest matmul precision (default); bf16: bfloat16 compute")
    p.add_argument("--batch-size", type=argtypes.positive_int, default=EMBED_BATCH,
                   help="images or texts per compiled call (default: %(default)s)")


def _image_paths(args) -> list[Path]:
    from vlscale.errors import UserError

    if args.images:
        return [Path(p) for p in args.images]
    if args.image_dir:
        d = Path(args.image_dir)
        if not d.is_dir():
            raise UserError(f"--image-dir {d} is not a directory")
        paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise UserError(f"--image-dir {d} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return paths
    return []


def _texts(args) -> list[str]:
    from vlscale.errors import UserError

    if args.texts:
        return list(args.texts)
    if args.texts_file:
        f = Path(args.texts_file)
        if not f.is_file():
            raise UserError(f"--texts-file {f} does not exist")
        try:
            lines = [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise UserError(f"--texts-file {f} is not UTF-8 text") from None
        if not lines:
            raise UserError(f"--texts-file {f} holds no texts (one per line)")
        return lines
    return []


def _batched(fn, arrays, batch_size):
    import numpy as np

    outs = [np.asarray(fn(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def _read_pixels(path: Path, size: int):
    """The eval-preprocessed image, or the reason it cannot be read (not an image, empty, truncated)."""
    from vlscale.models import transforms

    return transforms.read_eval_image(path, size)


@dataclass
class Embeddings:
    image_embeddings: "np.ndarray"  # [N, E] float32, L2-normalised, for image_paths in order
    text_embeddings: "np.ndarray"  # [M, E]
    image_paths: list  # the images embedded (unreadable ones left out when skipping)
    skipped: list  # (path, reason) of images that could not be read (only when skipping)


def embed_all(checkpoint: str | Path, image_paths=(), texts=(), model_name: str | None = None,
              precision: str = "fp32", batch_size: int = EMBED_BATCH, skip_unreadable: bool = False) -> Embeddings:
    """Embeds images and texts. An unreadable image (not an image, empty, truncated) is a ``UserError`` naming
    it, or with ``skip_unreadable`` left out and listed in ``skipped`` (an error if none is readable)."""
    import jax
    import numpy as np

    from vlscale.errors import UserError
    from vlscale.models import registry
    from vlscale.models.tokenizer import get_tokenizer

    if batch_size < 1:
        raise UserError(f"batch size {batch_size} must be at least 1")
    params, meta = load_checkpoint_params(checkpoint)
    name = model_name or meta["model"]
    if model_name and model_name != meta["model"]:
        raise UserError(f"--model {model_name} does not match the checkpoint's model {meta['model']}")
    model = registry.build_model(name, dtype="float32" if precision == "fp32" else "bfloat16")
    cfg = model.config
    matmul = "highest" if precision == "fp32" else "default"

    image_paths = [Path(p) for p in image_paths]
    folders = [str(p) for p in image_paths if p.is_dir()]
    if folders:
        raise UserError(f"{folders[0]} is a folder; pass it with --image-dir, or name image files")
    missing = [str(p) for p in image_paths if not p.is_file()]
    if missing:
        raise UserError(f"image file(s) not found: {', '.join(missing[:3])}")
    kept, pixels, skipped = [], [], []
    for p in image_paths:
        px, reason = _read_pixels(p, cfg.image_size)
        if px is None:
            if not skip_unreadable:
                raise UserError(f"cannot read image {p}: {reason}")
            skipped.append((p, reason))
            continue
        kept.append(p)
        pixels.append(px)
    if image_paths and not kept:
        raise UserError(f"none of the {len(image_paths)} images could be read (first: {skipped[0][0]}: "
                        f"{skipped[0][1]})")

    # Parameters are jit arguments (not closed-over constants) so large models compile quickly.
    encode_images_p = jax.jit(lambda p, x: model.apply({"params": p}, x, normalize=True, method="encode_image"))
    encode_texts_p = jax.jit(lambda p, t: model.apply({"params": p}, t, normalize=True, method="encode_text"))
    params = jax.device_put(params)

    width = cfg.embed_dim
    image_emb = np.zeros((0, width), np.float32)
    text_emb = np.zeros((0, width), np.float32)
    with jax.default_matmul_precision(matmul):
        if pixels:
            image_emb = _batched(lambda x: encode_images_p(params, x), np.stack(pixels), batch_size)
        if texts:
            tokens = get_tokenizer(cfg.context_length)(list(texts))
            text_emb = _batched(lambda t: encode_texts_p(params, t), tokens, batch_size)
    return Embeddings(image_emb, text_emb, kept, skipped)


def embed(checkpoint: str | Path, image_paths=(), texts=(), model_name: str | None = None,
          precision: str = "fp32", batch_size: int = EMBED_BATCH):
    """(image_embeddings [N, E], text_embeddings [M, E]): L2-normalised float32, in input order."""
    e = embed_all(checkpoint, image_paths, texts, model_name=model_name, precision=precision, batch_size=batch_size)
    return e.image_embeddings, e.text_embeddings


def format_similarity(image_names, texts, sims) -> str:
    """The image x text cosine-similarity matrix as an aligned table (rows: images, columns: texts)."""
    col_names = [f"t{j}" for j in range(len(texts))]
    row_w = max(len(n) for n in image_names)
    lines = ["texts: " + "; ".join(f"t{j}={t!r}" for j, t in enumerate(texts))]
    lines.append(" " * row_w + "".join(f"{c:>9}" for c in col_names))
    for name, row in zip(image_names, sims):
        lines.append(f"{name:<{row_w}}" + "".join(f"{v:9.4f}" for v in row))
    return "\n".join(lines)


def _run_embed(args) -> int:
    import numpy as np

    from vlscale.errors import UserError
    from vlscale.runtime.files import atomic_path, check_output_file

    out = check_output_file(args.out, suffixes=(".npz",)) if args.out else None
    paths, texts = _image_paths(args), _texts(args)
    if not paths and not texts:
        raise UserError("nothing to embed: give --images/--image-dir and/or --texts/--texts-file")
    if out is None and not (paths and texts):
        raise UserError("without --out, embed prints the image-text similarity matrix: give images and texts")
    # One bad file in a folder is skipped and counted (as the data layer does); a file named on its own is not.
    e = embed_all(args.checkpoint, paths, texts, model_name=args.model, precision=args.precision,
                  batch_size=args.batch_size, skip_unreadable=bool(args.image_dir))
    if e.skipped:
        first, why = e.skipped[0]
        print(f"skipped {len(e.skipped)} unreadable image(s) of {len(paths)} in {args.image_dir} "
              f"(first: {first.name}: {why})", file=sys.stderr)
    if out is not None:
        with atomic_path(out) as tmp:
            np.savez(tmp, image_embeddings=e.image_embeddings, text_embeddings=e.text_embeddings,
                     image_paths=np.array([str(p) for p in e.image_paths]), texts=np.array(texts))
        print(f"wrote {out}: image_embeddings {e.image_embeddings.shape}, text_embeddings {e.text_embeddings.shape}"
              + (f" ({len(e.skipped)} unreadable image(s) skipped)" if e.skipped else ""))
    else:
        print(format_similarity([p.name for p in e.image_paths], texts, e.image_embeddings @ e.text_embeddings.T))
    return 0
