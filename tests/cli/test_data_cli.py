"""`vlscale data synth` end to end: shards written, read back through the real pipeline."""

import json


from vlscale.cli import main
from vlscale.data import iterator, synth, synth_eval_sets, synth_scene, webdataset
from vlscale.configs import data as data_config


def test_synth_writes_shards_eval_sets_and_stats(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["data", "synth", "--out", str(out), "--shards", "3", "--samples-per-shard", "10", "--image-size", "32",
               "--eval-per-task", "8", "--retrieval", "4", "--stats", "--seed", "5", "--set", "max_count=3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wrote 3 shards, 30 samples" in printed
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    meta = json.loads((out / "synth.json").read_text())
    assert meta["config"]["max_count"] == 3 and meta["seed"] == 5
    cfg = synth_scene.SynthConfig.from_dict(meta["config"])
    rec = next(webdataset.iter_tar_samples(str(out / "00001.tar")))
    assert rec["txt"].decode() == synth.generate(cfg, 5, "train", 10)["caption"]
    tasks, (images, captions) = synth_eval_sets.load_eval_sets(out / "zeroshot")
    assert tasks["count"].classnames == ["a single shape", "two shapes", "three shapes"]
    assert images.shape == (4, 32, 32, 3) and len(captions[3]) == 5
    assert json.loads((out / "stats.json").read_text())["samples"] == 30

    config = data_config.get_config("webdataset")
    config.shards = str(out / "{00000..00002}.tar")
    config.update(image_size=32, context_length=16, batch_size=5, num_epochs=1, train=False)
    with iterator.make_iterator(config) as it:
        n = sum(len(b["text"]) for b in it)
        assert n == 30 and it.counter.bad_samples == 0


def test_synth_rejects_bad_input_in_one_line(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--set", "colours=red"]) == 2
    err = capsys.readouterr().err
    assert "bad generator knob" in err and len(err.strip().splitlines()) == 1
    assert main(["data", "synth", "--out", str(tmp_path), "--shards", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
