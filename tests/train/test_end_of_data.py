"""End of data is a decision, not a crash (issue 16, item 5): finite training data that cannot last the run is
refused before anything compiles, in one line; data that still runs out (bad samples skipped) stops the run with a
checkpoint and one line, also on a re-run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import portpicker
import pytest
from PIL import Image

from vlscale.configs import train as train_config
from vlscale.data import synth, synth_scene, synth_shards
from vlscale.errors import UserError
from vlscale.train import loop, validate

ROOT = Path(__file__).resolve().parents[2]
TINY = synth_scene.SynthConfig(image_size=32)


def _folder(tmp_path, good: int, broken: int = 0, broken_rows=()) -> Path:
    """An image folder with ``good`` real PNGs and ``broken`` empty files (last, or at ``broken_rows``), one
    captions.csv row each."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(good):
        s = synth.generate(TINY, 0, "train", i)
        Image.fromarray(s["image"]).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{s['caption']}")
    for i in range(broken):
        (tmp_path / "img" / f"broken{i}.png").write_bytes(b"")
        row = f"img/broken{i}.png,a broken image"
        rows.insert(broken_rows[i], row) if broken_rows else rows.append(row)
    (tmp_path / "captions.csv").write_text("image_path,caption\n" + "\n".join(rows) + "\n")
    return tmp_path / "captions.csv"


def _config(source: str, *, batch: int, samples: int, epochs, **data):
    c = train_config.get_config(f"model=tiny-clip,data={source}")
    c.global_batch_size, c.total_samples, c.warmup, c.log_every, c.checkpoint_every = batch, samples, 1, 1, 100
    c.mesh.devices = 1
    c.compilation_cache = "none"
    c.data.num_epochs = epochs
    c.data.prefetch = 0
    for k, v in data.items():
        node = c.data
        *parents, leaf = k.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_a_folder_too_small_for_the_run_is_refused_before_compiling(tmp_path):
    captions = _folder(tmp_path, good=10)
    config = _config("folder", batch=4, samples=40, epochs=2, folder__captions_file=str(captions))
    with pytest.raises(UserError) as e:
        loop.run(config, tmp_path / "w")
    assert str(e.value) == ("--config.data.num_epochs=2: 10 folder records give 5 full batches of 4, but "
                            "--config.total_samples=40 needs 10; raise data.num_epochs to 4, lower total_samples, "
                            "or set data.num_epochs=None (repeat forever)")
    assert not (tmp_path / "w").exists()
    config.data.num_epochs = 4  # 40 records in 10 batches of 4: enough
    validate.check_config(config, device_count=1, process_count=1)
    # Global sample order: the same count on any host count (every host's share holds the same full global
    # batches), in memory too (its epochs run into each other like the others').
    with pytest.raises(UserError, match=r"10 folder records give 10 full batches of 4, but .* needs 11; raise "
                                        r"data.num_epochs to 5"):
        validate.check_data_supply(_config("folder", batch=4, samples=44, epochs=4,
                                           folder__captions_file=str(captions)), process_count=2)
    in_memory = _config("folder", batch=4, samples=40, epochs=3, in_memory=True, folder__captions_file=str(captions))
    with pytest.raises(UserError, match="give 7 full batches of 4, .* needs 10; raise data.num_epochs to 4"):
        validate.check_data_supply(in_memory, process_count=1)
    with pytest.raises(UserError, match="data.num_epochs=0: must be at least 1"):
        validate.check_data_supply(_config("folder", batch=4, samples=40, epochs=0), process_count=1)
    # The endless synthetic stream and any source repeated forever need no count.
    validate.check_data_supply(_config("synth", batch=4, samples=10**12, epochs=1), process_count=1)
    validate.check_data_supply(_config("folder", batch=4, samples=10**12, epochs=None), process_count=1)


def test_a_finite_webdataset_stream_in_training_is_refused_in_one_line(tmp_path):
    synth_shards.write_synth_shards(tmp_path / "shards", 2, 4, cfg=TINY)
    p = subprocess.run([sys.executable, "-m", "vlscale", "train", "--config",
                        "configs/train.py:model=tiny-clip,data=webdataset", f"--config.data.shards={tmp_path}/shards",
                        "--config.data.num_epochs=1", "--config.total_samples=64", "--config.global_batch_size=8",
                        "--workdir", str(tmp_path / "w"), "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0], p.stderr
    assert "--config.data.num_epochs=1: the length of a webdataset stream is not known before it is read" in lines[0]
    assert "set --config.data.num_epochs=None (repeat forever)" in lines[0] and not (tmp_path / "w").exists()


def test_data_that_runs_out_mid_run_stops_with_a_checkpoint_and_one_line(tmp_path):
    # 12 rows pass the preflight (3 batches of 4 for 3 steps), but 4 images are empty: held in memory, 8 good
    # samples, 2 batches. (Streamed, the global order replaces a bad record by a substitute and does not end.)
    captions = _folder(tmp_path, good=8, broken=4)
    config = _config("folder", batch=4, samples=12, epochs=1, shuffle=False, in_memory=True,
                     folder__captions_file=str(captions))
    work = tmp_path / "w"
    expected = ("training data ended after step 2 of 3 (8 samples; data.num_epochs=1, and samples skipped as bad "
                f"shorten it); checkpoint {work / 'checkpoints' / '2'} saved; set --config.data.num_epochs=None "
                "(repeat forever) or lower --config.total_samples")
    with pytest.raises(UserError) as e:
        loop.run(config, work)
    assert str(e.value) == expected
    assert sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == [2]
    assert not (work / "final.json").exists()
    # The same command again restores step 2, finds the data at its end and says the same (the data state is kept).
    with pytest.raises(UserError) as e:
        loop.run(config, work)
    assert str(e.value) == expected


def test_two_hosts_stop_together_with_a_checkpoint_when_the_data_ends(tmp_path):
    # 32 rows, 4 of them empty images: held in memory, 28 good samples on every host, 3 full global batches of 8
    # for a 4-step run. Every host's share of the global order ends on the same step, so both stop there together,
    # with one checkpoint and the same line, without a per-step agreement (a host that stopped alone would leave
    # the other waiting in the next collective until jax.distributed aborted both).
    captions = _folder(tmp_path, good=28, broken=4, broken_rows=(0, 2, 4, 6))
    port = portpicker.pick_unused_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "VLSCALE_COMPILATION_CACHE": "none"}
    argv = [sys.executable, "-m", "vlscale", "train", "--config", "configs/train.py:model=tiny-clip,data=folder",
            f"--config.data.folder.captions_file={captions}", "--config.data.num_epochs=1",
            "--config.data.in_memory=true", "--config.global_batch_size=8", "--config.total_samples=32",
            "--config.warmup=1", "--config.log_every=1", "--config.mesh.data=2", "--config.mesh.fsdp=4",
            "--workdir", str(tmp_path / "w"), "--no-progress", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2"]
    procs = [subprocess.Popen(argv + ["--process-id", str(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    errors = []
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 2, err[-3000:]
        errors.append([line for line in err.splitlines() if line.startswith("vlscale train: error:")])
    assert errors[0] == errors[1] and len(errors[0]) == 1  # every host says the same one line
    assert "training data ended on all 2 hosts after step 3 of 4 (24 samples;" in errors[0][0], errors[0][0]
    assert f"checkpoint {tmp_path / 'w' / 'checkpoints' / '3'} saved" in errors[0][0]
    assert (tmp_path / "w" / "checkpoints" / "3" / "data" / "process_1-of-2.json").exists()
