"""Regression tests for issue 11 beyond the bad-input table: which results table is read, crash reports,
trusted pickles, skipped images, atomic and locked writes."""

from __future__ import annotations

import argparse
import json
import threading

import numpy as np
import pytest

from vlscale.runtime import files as outputs
from vlscale.cli import main
from vlscale.errors import UserError
from vlscale.runtime.paths import LAION_RESULTS_FILE, resolve_results_table


# --- which results table ---------------------------------------------------------------------------------------


def test_env_table_with_any_name_is_read_and_named_first(shared_data, tmp_path, monkeypatch, capsys):
    own = tmp_path / "my_runs.csv"
    own.write_bytes((shared_data / LAION_RESULTS_FILE).read_bytes())
    monkeypatch.setenv("VLSCALE_RESULTS", str(own))
    src = resolve_results_table()
    assert (src.path, src.origin) == (own, "$VLSCALE_RESULTS")
    # A selection error after loading: cheap, and the first line has already said which table was read.
    assert main(["fit", "--benchmark", "nosuchbench", "--quiet"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"results table: {own} (from $VLSCALE_RESULTS)"


def test_table_sources_in_order(shared_data, tmp_path, monkeypatch):
    monkeypatch.delenv("VLSCALE_RESULTS", raising=False)
    assert resolve_results_table().origin == "shared data"
    (tmp_path / LAION_RESULTS_FILE).write_text("x")
    monkeypatch.setenv("VLSCALE_RESULTS", str(tmp_path))  # a folder holding the table
    assert resolve_results_table().path == tmp_path / LAION_RESULTS_FILE
    assert resolve_results_table(shared_data).origin == "argument"  # an argument wins over the variable
    monkeypatch.setenv("VLSCALE_RESULTS", str(tmp_path / "typo.csv"))
    with pytest.raises(UserError, match="typo.csv.*VLSCALE_RESULTS.*does not exist"):
        resolve_results_table()  # never the shared table instead


# --- unexpected errors -----------------------------------------------------------------------------------------


def _broken_models(monkeypatch):
    from vlscale.models import flops

    def boom(**_):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(flops, "profile_table", boom)


def test_unexpected_error_is_one_line_with_a_log(tmp_path, monkeypatch, capsys):
    import vlscale.cli

    _broken_models(monkeypatch)
    monkeypatch.setenv("VLSCALE_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(vlscale.cli, "_stderr_is_terminal", lambda: True)  # a user at a terminal, one process
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlscale models: internal error: RuntimeError: simulated bug (")
    (log,) = tmp_path.glob("crash-*.log")
    assert str(log) in err[0]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "second line" in text and "command: vlscale models" in text


def test_a_job_log_gets_the_whole_traceback_and_the_crash_file(tmp_path, monkeypatch, capsys):
    # stderr redirected to a file (a batch job's log; pytest's capture is not a terminal either), one process
    _broken_models(monkeypatch)
    monkeypatch.setenv("VLSCALE_LOG_DIR", str(tmp_path))
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    (log,) = tmp_path.glob("crash-*.log")
    assert err[0] == "[process 0/1] Traceback (most recent call last):"
    assert all(line.startswith("[process 0/1] ") for line in err[:-1])
    assert err[-2] == "[process 0/1] second line" and "[process 0/1] RuntimeError: simulated bug" in err
    assert any("in boom" in line for line in err)
    assert err[-1].startswith("vlscale models: internal error: RuntimeError: simulated bug (") and str(log) in err[-1]


def test_every_process_of_a_pod_prints_its_traceback_with_its_index(tmp_path, monkeypatch, capsys):
    import vlscale.cli
    from vlscale.runtime import distributed

    _broken_models(monkeypatch)
    monkeypatch.setenv("VLSCALE_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(vlscale.cli, "_stderr_is_terminal", lambda: True)  # even at a terminal
    monkeypatch.setattr(distributed, "_STARTED", {"index": 3, "count": 4})  # what initialize() records
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "[process 3/4] Traceback (most recent call last):" and "[process 3/4] second line" in err
    assert err[-1].startswith("vlscale models: internal error [process 3/4]: RuntimeError: simulated bug (")
    (log,) = tmp_path.glob("crash-*.log")
    assert str(log) in err[-1]


def test_debug_prints_the_traceback(tmp_path, monkeypatch, capsys):
    _broken_models(monkeypatch)
    monkeypatch.setenv("VLSCALE_LOG_DIR", str(tmp_path))
    assert main(["--debug", "models"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "simulated bug" in err
    assert not list(tmp_path.glob("crash-*.log"))


# --- checkpoints -----------------------------------------------------------------------------------------------


def test_trust_pickle_loads_a_legacy_file_with_a_warning(tmp_path, capsys):
    """A checkpoint that pickles a Python object (an argparse Namespace, as old training scripts did) is refused
    by default and loads with --trust-pickle."""
    import torch

    from vlscale.models import convert

    state = {k: torch.from_numpy(np.zeros(s, np.float32))
             for k, s in convert.expected_state_dict_shapes("tiny-clip").items()}
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "legacy.pt")
    argv = ["convert", "--from-open-clip", str(tmp_path / "legacy.pt"), "--model", "tiny-clip"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused to unpickle" in err[0] and "argparse.Namespace" in err[0]
    assert main(argv + ["--out", str(tmp_path / "b"), "--trust-pickle"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --trust-pickle:")
    assert (tmp_path / "b" / "vlscale_model.json").is_file() and not (tmp_path / "a").exists()


def test_image_dir_skips_and_counts_bad_files(tmp_path, capsys):
    from PIL import Image

    from vlscale.models import convert, saved_params

    rng = np.random.default_rng(0)
    state = {k: rng.normal(0, 0.02, s).astype(np.float32)
             for k, s in convert.expected_state_dict_shapes("tiny-clip").items()}
    saved_params.save_params(tmp_path / "ckpt", convert.torch_to_flax(state, "tiny-clip"), "tiny-clip")
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(d / "c.jpg")
    (d / "b.png").write_bytes(b"not an image")
    out = tmp_path / "e.npz"
    assert main(["embed", "--checkpoint", str(tmp_path / "ckpt"), "--image-dir", str(d), "--texts", "x",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable image(s) of 3" in captured.err and "b.png" in captured.err
    z = np.load(out)
    assert [p.rsplit("/", 1)[1] for p in z["image_paths"]] == ["a.png", "c.jpg"]
    assert z["image_embeddings"].shape == (2, 64)


# --- data synth ------------------------------------------------------------------------------------------------


def test_synth_eval_per_task_zero_skips_zeroshot_and_replaces_a_previous_run(tmp_path, capsys):
    out = tmp_path / "synth"
    base = ["data", "synth", "--out", str(out), "--samples-per-shard", "3", "--image-size", "16"]
    assert main(base + ["--shards", "3", "--eval-per-task", "2", "--retrieval", "2"]) == 0
    (out / "README.txt").write_text("mine")
    capsys.readouterr()
    assert main(base + ["--shards", "2", "--eval-per-task", "0"]) == 0
    # The new set replaced the old one whole: no third shard or zeroshot/ of the earlier run; the user's file stays.
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "README.txt", "synth.json"]
    assert json.loads((out / "synth.json").read_text())["num_shards"] == 2
    assert "zero-shot" not in capsys.readouterr().out


# --- outputs ---------------------------------------------------------------------------------------------------


def test_check_output_dir_rejects_files_and_unwritable_places(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    for bad, why in ((f, "existing file"), (f / "sub", "is a file"), ("/proc/vlscale-x", "cannot write")):
        with pytest.raises(UserError, match=why):
            outputs.check_output_dir(bad)
    assert outputs.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UserError, match="existing folder"):
        outputs.check_output_file(tmp_path)


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "a" / "x.json"
    outputs.atomic_write_text(p, "one")
    outputs.atomic_write_text(p, "two")
    assert p.read_text() == "two" and sorted(q.name for q in p.parent.iterdir()) == ["x.json"]
    with pytest.raises(RuntimeError):
        with outputs.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert p.read_text() == "two" and sorted(q.name for q in p.parent.iterdir()) == ["x.json"]


def test_append_rows_from_many_writers_keeps_every_row(tmp_path):
    path = tmp_path / "results.csv"
    (tmp_path / "other.csv").write_text("someone else's\n")

    def writer(w):
        for i in range(20):
            outputs.append_rows(path, [{"writer": w, "i": i}])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import csv

    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 80 and {(r["writer"], r["i"]) for r in rows} == {(str(w), str(i)) for w in range(4)
                                                                        for i in range(20)}
    assert outputs.append_rows(path, [{"writer": 9, "i": 0, "note": "new column"}]) == 81
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["note"] == "" and rows[-1]["note"] == "new column"
    assert (tmp_path / "other.csv").read_text() == "someone else's\n"


def test_atomic_output_dir_replaces_a_folder_entry_whole(tmp_path):
    out = tmp_path / "out"
    (out / "zeroshot").mkdir(parents=True)
    (out / "zeroshot" / "old.npz").write_text("old")
    with outputs.atomic_output_dir(out, owned=("zeroshot",)) as tmp:
        (tmp / "zeroshot").mkdir()
        (tmp / "zeroshot" / "new.npz").write_text("new")
    assert [p.name for p in out.iterdir()] == ["zeroshot"]
    assert [p.name for p in (out / "zeroshot").iterdir()] == ["new.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
