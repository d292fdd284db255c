"""The fast tar reader agrees with python's tarfile on the formats img2dataset and GNU tar write."""

import io
import tarfile

import pytest

from vlscale.data import webdataset


def _tar_bytes(fmt, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG = "x" * 120 + "/deep/" + "y" * 80  # over ustar's 100-char name field
MEMBERS = [("a/000.jpg", b"\xff\xd8jpeg"), ("a/000.txt", b"cap 0"), (f"{LONG}/001.txt", b"cap 1"),
           ("caf\u00e9/002.txt", "café".encode()), ("big/003.bin", bytes(range(256)) * 9)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if LONG not in m[0] and "é" not in m[0]]
    path = tmp_path / "s.tar"
    path.write_bytes(_tar_bytes(fmt, members))
    with open(path, "rb") as f:
        got = list(webdataset.iter_tar_members(f, lambda name: True))
    assert got == members
    with open(path, "rb") as f:
        skipped = list(webdataset.iter_tar_members(f, lambda name: name.endswith(".txt")))
    assert [(n, d) for n, d in skipped] == [(n, d if n.endswith(".txt") else None) for n, d in members]


def test_samples_group_by_key_and_skip_exactly(tmp_path):
    path = tmp_path / "s.tar"
    members = [(f"{i:03d}.{ext}", f"{i}{ext}".encode()) for i in range(5) for ext in ("jpg", "txt")]
    path.write_bytes(_tar_bytes(tarfile.PAX_FORMAT, members))
    samples = list(webdataset.iter_tar_samples(str(path)))
    assert [s["__key__"] for s in samples] == ["000", "001", "002", "003", "004"]
    assert samples[2]["jpg"] == b"2jpg" and samples[2]["txt"] == b"2txt"
    assert list(webdataset.iter_tar_samples(str(path), skip=3)) == samples[3:]


def test_corrupt_header_mid_shard_loses_only_the_rest(tmp_path):
    raw = bytearray(_tar_bytes(tarfile.USTAR_FORMAT, [(f"{i:03d}.txt", b"x" * 10) for i in range(4)]))
    raw[512 + 2 * 1024 + 10] ^= 0xFF  # the name field of the 3rd file header (after a directory entry)
    path = tmp_path / "s.tar"
    path.write_bytes(bytes(raw))
    recs = list(webdataset.iter_tar_samples(str(path)))
    assert [r["__key__"] for r in recs if "__bad__" not in r] == ["000", "001"]
    assert recs[-1]["__bad__"] == "truncated_tar"
