"""A study is checked when it is planned: sweep values, every run's training config, every eval task and every fit
benchmark fail `vlscale study plan` (exit 2, one line naming the field) instead of every run at run time."""

from __future__ import annotations

import pytest

from vlscale.cli import main
from vlscale.errors import UserError
from vlscale.eval import runner as eval_runner
from vlscale.study import config as study_config
from vlscale.study import preflight
from vlscale.study.plan import make_plan


def micro(**changes):
    cfg = study_config.load("micro_shapes")
    for path, value in changes.items():
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def plan_error(cfg) -> str:
    with pytest.raises(UserError) as e:
        preflight.check_study(cfg, make_plan(cfg))
    return str(e.value)


@pytest.mark.parametrize("where,values,names", [
    ("sweep.global_batch_size", [0], "sweep.global_batch_size has 0"),
    ("sweep.global_batch_size", [32.5], "sweep.global_batch_size has 32.5"),
    ("sweep.lr", [float("nan")], "sweep.lr has nan"),
    ("sweep.warmup", [-1], "sweep.warmup has -1"),
])
def test_absurd_sweep_values_are_named_when_planned(where, values, names):
    cfg = micro(**{where: values})
    with pytest.raises(UserError, match="study config: " + names.replace(".", r"\.")):
        make_plan(cfg)


def test_per_model_sweep_values_name_their_own_field():
    cfg = micro()
    cfg.sweep_per_model = {"shapes-clip-XS": {"global_batch_size": [0]}}
    with pytest.raises(UserError, match=r"sweep_per_model\['shapes-clip-XS'\]\.global_batch_size has 0"):
        make_plan(cfg)


def test_the_built_in_studies_pass():
    for name in study_config.builtin_names():
        cfg = study_config.load(name)
        preflight.check_study(cfg, make_plan(cfg))


def test_unknown_train_field_and_bad_train_value_fail_at_plan_time():
    cfg = micro()
    cfg.train.nosuch = 1
    assert plan_error(cfg) == "study config: train.nosuch is not a training config field (configs/train.py)"
    cfg = micro()
    cfg.train.grad_accum = 3
    msg = plan_error(cfg)
    assert msg.startswith("study config, run shapes-clip-XS_") and "train.grad_accum=3" in msg


def test_generator_knobs_in_overrides_are_checked_not_refused():
    cfg = micro()
    cfg.datasets.synth.overrides = {"data": {"synth": {"knobs": {"p_mention_colour": 0.5}}}}
    preflight.check_study(cfg, make_plan(cfg))  # a real knob: accepted (it was "not a training config field")
    cfg.datasets.synth.overrides = {"data": {"synth": {"knobs": {"distractor_prob": 2.0}}}}
    assert "distractor_prob must be a probability in [0, 1]" in plan_error(cfg)
    cfg.datasets.synth.overrides = {"data": {"synth": {"knobs": {"colour": "red"}}}}
    msg = plan_error(cfg)
    assert "knobs.colour is not a training config field" in msg and msg.endswith("did you mean "
                                                                                  "datasets.synth.overrides.data.synth.knobs.colours?")


@pytest.mark.parametrize("task,names", [
    ({"task": "zeroshot", "dataset": "synth:nosuch"}, "unknown synthetic dataset synth:nosuch"),
    ({"task": "zeroshot", "dataset": "imagenet"}, "dataset spec 'imagenet'"),
    ({"task": "retrieval", "dataset": "synth:colour"}, "retrieval on synth:colour"),
    ({"task": "zeroshot", "dataset": "synth:colour", "num_examples": 0}, "num_examples 0"),
    ({"task": "zeroshot", "dataset": "synth:colour", "bogus": 1}, "bogus"),
    ({"task": "classify", "dataset": "synth:colour"}, "'classify'"),
])
def test_unknown_eval_tasks_fail_at_plan_time(task, names):
    cfg = micro()
    cfg.eval.tasks = [task]
    cfg.fit.benchmarks = []
    msg = plan_error(cfg)
    assert msg.startswith("study config eval.tasks: ") and names in msg


def test_unknown_suite_is_named():
    cfg = micro()
    cfg.eval.tasks = []
    cfg.eval.suite = "nosuch"
    assert plan_error(cfg) == "study config eval.suite: 'nosuch': choose one of synth, paper"


def test_a_benchmark_no_task_writes_fails_at_plan_time():
    cfg = micro()
    cfg.fit.benchmarks = ["synth_colour/acc1", "imagenet1k/acc1", "synth_retrieval/image_retrieval_recall@3"]
    msg = plan_error(cfg)
    assert msg.startswith("study config fit.benchmarks: imagenet1k/acc1, synth_retrieval/image_retrieval_recall@3 "
                          "is not written by any evaluation task; the tasks write synth_colour/acc1, ")


def test_task_metrics_are_what_an_evaluation_writes():
    import numpy as np

    from vlscale.eval import retrieval, zeroshot

    assert eval_runner.TASK_METRICS["zeroshot"] == tuple(zeroshot.classification_metrics([0, 1], [0, 1], [0, 1]))
    feats = np.eye(3, dtype=np.float32)
    assert set(eval_runner.TASK_METRICS["retrieval"]) == set(retrieval.recall_metrics(feats, feats, np.arange(3)))


def test_study_plan_cli_exits_2_in_one_line(tmp_path, capsys):
    f = tmp_path / "study.py"
    f.write_text("from vlscale.configs.study.micro_shapes import get_config as base\n"
                 "def get_config():\n    c = base()\n    c.sweep.global_batch_size = [0]\n    return c\n")
    assert main(["study", "plan", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vlscale study: error: study config: sweep.global_batch_size has 0; each value must be a whole " \
                  "number >= 1"
    f.write_text("from vlscale.configs.study.micro_shapes import get_config as base\n"
                 "def get_config():\n    c = base()\n    c.fit.benchmarks = ['imagenet1k/acc1']\n    return c\n")
    assert main(["study", "run", "--config", str(f), "--dir", str(tmp_path / "s")]) == 2
    assert "fit.benchmarks: imagenet1k/acc1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
