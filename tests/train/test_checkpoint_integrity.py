"""Checkpoint corruption suite: bit flips inside the OCDBT data files, truncation, missing and empty files, symbolic
links, a step directory that is not the step it says, a foreign folder in checkpoints/; and the trainer's answers:
the newest checkpoint that verifies, one line when none does, nothing deleted that vlscale did not write."""

import glob
import json
import os
import shutil
from pathlib import Path

import pytest

from vlscale import cli
from vlscale.errors import UserError
from vlscale.models import checkpoints
from vlscale.runtime import checkpoint
from vlscale.train import loop

from .conftest import tiny_config


def _config(**fields):
    fields = {"checkpoint_every": 4, "keep_checkpoints": 3, "mesh__devices": 1, **fields}
    return tiny_config("tiny-clip", batch=16, steps=8, **fields)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 8-step run with checkpoints 4 and 8 (each test corrupts a copy)."""
    w = tmp_path_factory.mktemp("trained") / "w"
    loop.run(_config(), w)
    return w


@pytest.fixture
def run(trained, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(trained, w, symlinks=True)
    return w


def _data_files(step_dir):
    files = sorted(glob.glob(str(step_dir / "state" / "ocdbt.process_0" / "d" / "*")))
    assert files
    return files


def _flip(step_dir):
    for f in _data_files(step_dir):
        b = bytearray(Path(f).read_bytes())
        for k in range(8):
            b[len(b) // 2 + k] ^= 0xFF
        Path(f).write_bytes(bytes(b))


def _truncate(step_dir):
    for f in _data_files(step_dir):
        os.truncate(f, os.path.getsize(f) // 2)


def _symlink_data(step_dir):
    other = step_dir.parent / "4"
    for f, g in zip(_data_files(step_dir), _data_files(other)):
        os.remove(f)
        os.symlink(g, f)


CORRUPTIONS = {
    "bit flips in data files": (_flip, r"is corrupt: the data read back for params/|cannot be read"),
    "truncated data files": (_truncate, r"is corrupt|cannot be read"),
    "missing manifest.ocdbt": (lambda d: os.remove(d / "state" / "manifest.ocdbt"),
                               r"is incomplete: state/manifest.ocdbt is missing"),
    "empty _METADATA": (lambda d: os.truncate(d / "state" / "_METADATA", 0), r"is incomplete: state/_METADATA is empty"),
    "missing data/": (lambda d: shutil.rmtree(d / "data"), r"is incomplete: the data item \(data/\) is missing"),
    "missing meta/metadata": (lambda d: os.remove(d / "meta" / "metadata"), r"is incomplete: meta/metadata is missing"),
    "data files replaced by symlinks": (_symlink_data, r"state/ocdbt.process_0/d/\w+ is a symbolic link"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_damaged_checkpoint_is_one_error_naming_it(run, name):
    corrupt, message = CORRUPTIONS[name]
    step_dir = run / "checkpoints" / "8"
    corrupt(step_dir)
    for path in (step_dir, run):  # the step itself, or the workdir (eval lists every checkpoint)
        with pytest.raises(checkpoint.CheckpointError, match=message) as e:
            checkpoints.load(path)
        assert f"checkpoint {step_dir}" in str(e.value)
    checkpoints.load(run / "checkpoints" / "4")  # the other one still loads


def test_eval_of_a_corrupt_checkpoint_exits_2_in_one_line(run, capsys):
    _flip(run / "checkpoints" / "8")
    rc = cli.main(["eval", "--checkpoint", str(run), "--task", "zeroshot", "--dataset", "synth:colour",
                   "--num-examples", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"vlscale eval: error: checkpoint {run / 'checkpoints' / '8'} is corrupt")
    assert not (run / "results.csv").exists()


def test_a_step_directory_that_is_another_step_is_refused(run, trained, tmp_path):
    shutil.copytree(run / "checkpoints" / "8", run / "checkpoints" / "12")
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/12 records step 8 \(128 samples\), not 12"):
        checkpoints.load(run / "checkpoints" / "12")
    shutil.rmtree(run / "checkpoints" / "12")
    os.symlink(trained / "checkpoints" / "8", run / "checkpoints" / "12")  # another run's step, linked in
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/12 is a symbolic link \(to .*/trained"):
        checkpoints.load(run / "checkpoints" / "12")
    with pytest.raises(checkpoint.CheckpointError, match="symbolic link"):
        checkpoints.load(run)


def test_training_falls_back_to_the_newest_checkpoint_that_verifies(run, trained, capsys):
    final = json.loads((trained / "final.json").read_text())
    os.remove(run / "final.json")
    _flip(run / "checkpoints" / "8")
    out = loop.run(_config(), run)
    printed = capsys.readouterr().out
    assert f"warning: checkpoint {run / 'checkpoints' / '8'} is corrupt" in printed
    assert f"resuming from {run / 'checkpoints' / '4'}, the newest checkpoint that verifies" in printed
    assert "resumed at step 4/8" in printed
    # Deterministic training: the retrained steps give the uninterrupted run's parameters, bit for bit.
    assert out["params_sha256"] == final["params_sha256"] and out["step"] == 8
    assert (run / "checkpoints" / "8.damaged").is_dir()  # set aside, not deleted
    assert [c.step for c in checkpoint.list_checkpoints(run)] == [4, 8]
    steps = [json.loads(line)["step"] for line in open(run / "metrics.jsonl")]
    assert steps == list(range(1, 9))


def test_no_checkpoint_that_verifies_is_one_line_and_moves_nothing(run):
    os.remove(run / "final.json")
    _flip(run / "checkpoints" / "8")
    _truncate(run / "checkpoints" / "4")
    with pytest.raises(UserError, match=r"no checkpoint in .*checkpoints verifies") as e:
        loop.run(_config(), run)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(run / "checkpoints")) == ["4", "8"]


def test_a_foreign_folder_in_checkpoints_is_left_alone_with_a_warning(tmp_path, capsys):
    w = tmp_path / "w"
    (w / "checkpoints" / "3").mkdir(parents=True)
    (w / "checkpoints" / "3" / "precious.txt").write_text("mine")
    loop.run(_config(keep_checkpoints=1), w)
    printed = capsys.readouterr().out
    assert f"warning: {w / 'checkpoints' / '3'} was not written by vlscale" in printed
    assert (w / "checkpoints" / "3" / "precious.txt").read_text() == "mine"
    assert sorted(os.listdir(w / "checkpoints")) == ["3", "8"]  # 4 was ours and is gone (keep_checkpoints=1)


def test_a_checkpoints_symlink_is_refused_and_its_target_untouched(trained, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(trained / "checkpoints", outside)
    before = sorted(os.listdir(outside))
    w = tmp_path / "w"
    w.mkdir()
    os.symlink(outside, w / "checkpoints")
    with pytest.raises(UserError, match=r"checkpoints is a symbolic link \(to .*outside\); vlscale deletes old"):
        loop.run(_config(keep_checkpoints=1), w)
    assert sorted(os.listdir(outside)) == before == ["4", "8"]


def test_a_restart_from_scratch_drops_the_killed_attempts_lines(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    (w / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (2, 4, 6))
                                     + '{"step": 8, "lo')  # a killed attempt, no checkpoint yet
    loop.run(_config(log_every=2), w)
    recs = [json.loads(line) for line in open(w / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [2, 4, 6, 8] and all(r["loss"] != 9.0 for r in recs)
