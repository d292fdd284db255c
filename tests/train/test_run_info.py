"""One run-name scheme for `vlscale train` and the study."""

from vlscale.study import plan
from vlscale.train import loop, run_info


def test_train_and_study_name_runs_the_same_way(make_config):
    cfg = loop.resolve_config(make_config("tiny-clip", steps=8, mesh__devices=1))
    name = run_info.run_name(cfg)
    want = plan.run_name(str(cfg.model), run_info.pretrain_dataset(cfg), int(cfg.total_samples),
                         int(cfg.global_batch_size), float(cfg.lr), int(cfg.warmup), str(cfg.schedule), int(cfg.seed))
    assert name == want
    assert name.startswith(f"tiny-clip_s{int(cfg.total_samples)}_") and f"_bs{int(cfg.global_batch_size)}_" in name
    assert run_info.name_of("ViT-B-32", "datacomp_1b", 1_280_000_000, 90624, 1e-3, 3000, "const", 0,
                            from_samples=640_000_000) == "ViT-B-32_s1280000000_datacomp_1b_bs90624_lr0.001_w3000_const_from640000000"
    assert run_info.name_of("m", "d", 1024, 64, 1e-3, 4, "cosine", 2) == "m_s1024_d_bs64_lr0.001_w4_cosine_seed2"


def test_in_training_evaluation_needs_an_evaluator(tmp_path, make_config):
    import pytest

    from vlscale.errors import UserError

    with pytest.raises(UserError, match="eval_every=4: in-training evaluation needs an evaluator"):
        loop.run(make_config("tiny-clip", steps=8, eval_every=4, mesh__devices=1), tmp_path / "w")
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_run_json_names_the_attention_kernel(make_config, monkeypatch):
    """run.json says which kernel "auto" resolved to: xla on this CPU; cudnn on a GPU under bf16 for towers whose
    head widths cuDNN takes; pallas on a TPU."""
    import jax

    cfg = loop.resolve_config(make_config("tiny-clip", steps=8, mesh__devices=1))
    assert cfg.attention == "auto"
    assert run_info.build_run_json(cfg, total_steps=8, data_fingerprint=None)["attention_kernel"] == "xla"
    cfg.dtype = "bfloat16"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert run_info.attention_kernel(cfg) == "cudnn"
    cfg.model = "ViT-H-14"  # head widths 80 (vision) and 64 (text): both multiples of 8, at most 128
    assert run_info.attention_kernel(cfg) == "cudnn"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert run_info.attention_kernel(cfg) == "pallas"
    cfg.attention = "xla"
    assert run_info.attention_kernel(cfg) == "xla"
