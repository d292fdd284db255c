"""Small, fast training configs shared by the trainer tests (tiny models, in-memory synthetic data)."""

import pytest

from vlscale.configs import train as train_config


def tiny_config(model: str = "tiny-clip", *, batch: int = 16, steps: int = 8, **fields):
    c = train_config.get_config(f"model={model},data=synth")
    c.global_batch_size = batch
    c.total_samples = batch * steps
    c.warmup = 2
    c.log_every = 1
    c.checkpoint_every = 4
    c.data.in_memory = True
    c.data.in_memory_samples = 256
    c.compilation_cache = "none"
    for k, v in fields.items():
        node = c
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.fixture
def make_config():
    return tiny_config
