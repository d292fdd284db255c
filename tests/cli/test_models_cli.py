"""`vlscale models`, `vlscale convert` and `vlscale embed` end to end on a tiny open_clip checkpoint."""

import io

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from vlscale.cli import main
from vlscale.models.config import get_config

TEXTS = ["a red square on grey", "a blue circle"]


def test_models_csv_lists_the_paper_table(capsys, shared_data):
    assert main(["models", "--csv"]) == 0
    ours = pd.read_csv(io.StringIO(capsys.readouterr().out)).set_index("model")
    ref = pd.read_csv(shared_data / "model_profile.csv")
    ref = ref[ref.namespace.isin(["clip", "mammut"])].set_index("model")
    assert list(ours.columns) == ["image_size", "mparams", "image_mparams", "text_mparams", "gflops", "train_gflops"]
    cols = ["image_size", "mparams", "image_mparams", "text_mparams", "gflops"]
    pd.testing.assert_frame_equal(ours[cols], ref[cols], check_dtype=False)
    clip = ref.namespace == "clip"
    assert (ours.train_gflops[clip] > 3 * ours.gflops[clip]).all()  # fwd+bwd with attention products
    assert ours.train_gflops["ViT-B-32"] == pytest.approx(3 * 14.78, abs=0.01)
    assert main(["models", "--all"]) == 0
    assert "tiny-mammut" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny open_clip CLIP with random weights saved the way open_clip training saves (module. prefix)."""
    cfg = get_config("tiny-clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        cfg.embed_dim,
        dict(image_size=cfg.image_size, layers=cfg.vision.layers, width=cfg.vision.width,
             head_width=cfg.vision.head_width, patch_size=cfg.vision.patch_size),
        dict(context_length=cfg.context_length, vocab_size=cfg.text.vocab_size, width=cfg.text.width,
             heads=cfg.text.heads, layers=cfg.text.layers),
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape))
    root = tmp_path_factory.mktemp("cli")
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state}, root / "epoch_1.pt")
    # Two generated photos of odd sizes (the eval transform resizes the short side, then centre-crops).
    yy, xx = np.mgrid[0:45, 0:60]
    red = np.stack([200 + 0 * xx, 40 + yy, 40 + xx // 2], -1).astype(np.uint8)
    blue = np.stack([xx * 2, yy * 3, 220 + 0 * yy], -1).astype(np.uint8)
    Image.fromarray(red).save(root / "red.png")
    Image.fromarray(blue.transpose(1, 0, 2).copy()).save(root / "blue.png")
    return model, root


def test_convert_embed_and_export(tiny_checkpoint, capsys):
    model, root = tiny_checkpoint
    ckpt = root / "ckpt"
    assert main(["convert", "--from-open-clip", str(root / "epoch_1.pt"), "--model", "tiny-clip",
                 "--out", str(ckpt)]) == 0
    assert "tiny-clip" in capsys.readouterr().out

    images = [str(root / "blue.png"), str(root / "red.png")]  # not alphabetical: order must be kept
    out = root / "emb.npz"
    assert main(["embed", "--checkpoint", str(ckpt), "--model", "tiny-clip", "--images", *images,
                 "--texts", *TEXTS, "--out", str(out)]) == 0
    z = np.load(out)
    img, txt = z["image_embeddings"], z["text_embeddings"]
    assert img.dtype == txt.dtype == np.float32 and img.shape == (2, 64) and txt.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-6)
    assert list(z["texts"]) == TEXTS and list(z["image_paths"]) == images

    # The same embeddings from open_clip itself, with its own preprocessing and tokenizer.
    preprocess = open_clip.transform.image_transform(32, is_train=False)
    pixels = torch.stack([preprocess(Image.open(p)) for p in images])
    tokens = open_clip.tokenizer.tokenize(TEXTS, context_length=16)
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy()
        ref_txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)

    # Without --out: the printed similarity matrix (rows images in order, columns texts).
    assert main(["embed", "--checkpoint", str(ckpt), "--images", *images, "--texts", *TEXTS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines if line.startswith(("blue.png", "red.png"))]
    assert [r[0] for r in rows] == ["blue.png", "red.png"]
    printed = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(printed, ref_img @ ref_txt.T, atol=1e-4)

    # Export back to open_clip: loads strict=True, bit-exact.
    assert main(["convert", "--to-open-clip", str(ckpt), "--out", str(root / "back.pt")]) == 0
    back = torch.load(root / "back.pt")
    assert model.load_state_dict(back, strict=True) is not None
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k
    # It says which open_clip config loads the file, and that config does (tiny-clip: written beside it).
    said = capsys.readouterr().out.strip().splitlines()[-1]
    js = root / "tiny-clip.json"
    assert said == (f"open_clip has no config named tiny-clip; its model config is written to {js}: load it with "
                    f"open_clip.add_model_config({str(js)!r}); open_clip.create_model('tiny-clip', "
                    f"pretrained={str(root / 'back.pt')!r})")
    open_clip.add_model_config(str(js))
    loaded = open_clip.create_model("tiny-clip", pretrained=str(root / "back.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_mammut_safetensors_convert_and_embed(tiny_checkpoint, tmp_path, capsys):
    """A MaMMUT checkpoint (fork key layout, .safetensors: no torch needed) converts and embeds with MaMMUT's
    pooling: the vlscale embeddings equal the model's own normalised encode_image / encode_text."""
    import jax

    from vlscale.models import convert, registry, state_dict_files
    from vlscale.models.tokenizer import Tokenizer

    _, root = tiny_checkpoint
    rng = np.random.default_rng(0)
    state = {k: rng.normal(0, 0.1, s).astype(np.float32)
             for k, s in convert.expected_state_dict_shapes("tiny-mammut").items()}
    state_dict_files.save_state_dict_file(state, tmp_path / "mammut.safetensors")
    assert main(["convert", "--from-open-clip", str(tmp_path / "mammut.safetensors"), "--model", "tiny-mammut",
                 "--out", str(tmp_path / "ckpt")]) == 0
    out = tmp_path / "m.npz"
    images = [str(root / "red.png")]
    assert main(["embed", "--checkpoint", str(tmp_path / "ckpt"), "--images", *images, "--texts", *TEXTS,
                 "--out", str(out)]) == 0
    z = np.load(out)
    model = registry.build_model("tiny-mammut")
    params = convert.torch_to_flax(state, "tiny-mammut")
    from vlscale.models.transforms import eval_transform, load_image

    pixels = eval_transform(load_image(images[0]), size=32)[None]
    with jax.default_matmul_precision("highest"):
        img = model.apply({"params": params}, pixels, method="encode_image")  # MaMMUT: normalised by default
        txt = model.apply({"params": params}, Tokenizer()(TEXTS, context_length=16), method="encode_text")
    np.testing.assert_allclose(z["image_embeddings"], img, atol=1e-6)
    np.testing.assert_allclose(z["text_embeddings"], txt, atol=1e-6)
    capsys.readouterr()


def test_user_errors_are_one_line(tiny_checkpoint, capsys):
    _, root = tiny_checkpoint
    assert main(["convert", "--from-open-clip", str(root / "epoch_1.pt"), "--model", "ViT-B-32",
                 "--out", str(root / "wrong")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit model 'ViT-B-32'" in err
    assert main(["convert", "--from-open-clip", str(root / "epoch_1.pt"), "--model", "ViT-B32",
                 "--out", str(root / "wrong")]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(root), "--texts", "x", "--out", str(root / "e.npz")]) == 2
    assert "not a vlscale checkpoint" in capsys.readouterr().err


def test_export_names_the_open_clip_config_or_the_mammut_fork(tmp_path):
    from vlscale.commands.models import open_clip_loader
    from vlscale.models.config import get_config

    out = str(tmp_path / "m.safetensors")
    assert open_clip_loader(get_config("ViT-B-32"), out) == (
        f"load it with open_clip: open_clip.create_model('ViT-B-32', pretrained={out!r})")
    assert open_clip_loader(get_config("mammut_ViT-B-32"), out) == (
        "load it with the MaMMUT fork of open_clip (open_clip_mammut): "
        f"open_clip.create_model('mammut_ViT-B-32', pretrained={out!r})")
    said = open_clip_loader(get_config("shapes-mammut-XS"), out)
    assert said.startswith("the MaMMUT fork (open_clip_mammut) has no config named shapes-mammut-XS: build its "
                           "MaMMUT with embed_dim ") and not (tmp_path / "shapes-mammut-XS.json").exists()
