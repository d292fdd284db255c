"""data.worker_count=-1 (the default) sizes the data worker pool from the host."""

import pytest

from tests.data.conftest import make_config
from vlscale.configs import data as data_config
from vlscale.data.config_fields import MAX_AUTO_WORKERS, worker_count
from vlscale.errors import UserError


def test_the_default_config_sizes_workers_from_the_host():
    config = data_config.get_config()
    assert config.worker_count == -1
    # This 2-core CI box: none (a worker would only take time from the step).
    assert worker_count(config, cores=2, local_devices=1, platform="cpu") == 0
    # An 8-GPU node with 96 cores: all but two cores, capped at 32.
    assert worker_count(config, cores=96, local_devices=8, platform="gpu") == MAX_AUTO_WORKERS == 32
    # A 1-GPU workstation with 16 cores: 14; a 4-chip TPU host with 208 vCPUs: 32.
    assert worker_count(config, cores=16, local_devices=1, platform="gpu") == 8
    assert worker_count(config, cores=16, local_devices=2, platform="gpu") == 14
    assert worker_count(config, cores=208, local_devices=4, platform="tpu") == 32
    # CPU training: XLA computes on half the cores, the workers get the other half.
    assert worker_count(config, cores=16, local_devices=8, platform="cpu") == 8


def test_an_explicit_count_is_kept_and_nonsense_is_refused():
    assert worker_count(make_config("synth", worker_count=3), cores=2, local_devices=1, platform="cpu") == 3
    assert worker_count(make_config("synth", worker_count=0), cores=64, local_devices=8, platform="gpu") == 0
    with pytest.raises(UserError, match="-1 for automatic"):
        worker_count(make_config("synth", worker_count=-2))
