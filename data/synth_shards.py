"""The synthetic stream written as webdataset tar shards (so the real tar reader is exercised end to end)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

from vlscale.data.synth import generate
from vlscale.data.synth_scene import SynthConfig
from vlscale.data.webdataset import ShardWriter


def encode_image(image: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    pil_fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    kwargs = {"quality": quality} if pil_fmt in ("JPEG", "WEBP") else {}
    if pil_fmt == "JPEG":
        kwargs["subsampling"] = 0  # 4:4:4: at 32-64 px, halving chroma resolution would blur small shapes' colours
    Image.fromarray(image).save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()



def write_synth_shards(out_dir: str | os.PathLike, num_shards: int, samples_per_shard: int, *,
                       cfg: SynthConfig | None = None, seed: int = 0, split: str = "train",
                       image_format: str = "jpg", quality: int = 95) -> list[str]:
    """Writes ``num_shards`` webdataset tars ``out_dir/{00000..}.tar`` (KEY.jpg + KEY.txt + KEY.json).

    Sample ``k`` of shard ``s`` is stream index ``s * samples_per_shard + k``, so shards are
    reproducible one by one. Also writes ``out_dir/synth.json`` with the config and seed.
    """
    cfg = cfg or SynthConfig()
    os.makedirs(out_dir, exist_ok=True)
    with ShardWriter(os.path.join(str(out_dir), "%05d.tar"), samples_per_shard) as writer:
        for i in range(num_shards * samples_per_shard):
            s = generate(cfg, seed, split, i)
            writer.write(s["key"], {
                image_format: encode_image(s["image"], image_format, quality),
                "txt": s["caption"],
                "json": json.dumps({"key": s["key"], "caption": s["caption"], "labels": s["labels"]}),
            })
    with open(os.path.join(str(out_dir), "synth.json"), "w") as f:
        json.dump({"seed": seed, "split": split, "num_shards": num_shards, "samples_per_shard": samples_per_shard,
                   "image_format": image_format, "config": cfg.to_dict()}, f, indent=2)
    return writer.paths


# ---- zero-shot tasks -------------------------------------------------------------------------------
