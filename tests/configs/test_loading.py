"""The one config loader (train configs, eval suites, study configs) and the one --config.X parser."""

import pytest

from vlscale.configs import loading
from vlscale.errors import UserError


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import ml_collections\n\ndef get_config(arg=None):\n    return ml_collections.ConfigDict(\n")
    with pytest.raises(UserError, match=r"bad\.py.*syntax error at line \d"):
        loading.load_config(str(bad))


def test_get_config_raising_names_the_exception_and_line(tmp_path):
    bad = tmp_path / "raises.py"
    bad.write_text("def get_config(arg=None):\n    x = 1\n    return {'a': 1}['b']\n")
    with pytest.raises(UserError, match=r"raises\.py.*get_config raised KeyError: 'b' \(line 3\)"):
        loading.load_config(str(bad))
    at_import = tmp_path / "import_fails.py"
    at_import.write_text("import no_such_module_here\n")
    with pytest.raises(UserError, match=r"loading it raised ModuleNotFoundError.*\(line 1\)"):
        loading.load_config(str(at_import))


def test_study_configs_and_eval_suites_load_through_the_same_loader(tmp_path):
    from vlscale.eval.suites import get_suite
    from vlscale.study import config as study_config

    assert study_config.load("micro_shapes").name == loading.load_config("micro_shapes", builtin="study").name
    assert "tiny_shapes" in loading.builtin_names("study")
    with pytest.raises(UserError, match="unknown study config 'nope'"):
        study_config.load("nope")
    assert len(get_suite("synth").tasks) == len(loading.load_config("synth", builtin="eval").tasks)
    noarg = tmp_path / "noarg.py"
    noarg.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'a': 1})\n")
    assert loading.load_config(str(noarg)).a == 1
    with pytest.raises(UserError, match="takes no argument"):
        loading.load_config(f"{noarg}:x=1")


def test_overrides_stop_at_a_double_dash_and_need_values():
    rest, pairs = loading.split_overrides(["--config.lr=1e-3", "--workdir", "w", "--config.seed", "2", "--",
                                          "--config.x=1"])
    assert pairs == [("lr", "1e-3"), ("seed", "2")] and rest == ["--workdir", "w", "--", "--config.x=1"]
    with pytest.raises(UserError, match="missing value"):
        loading.split_overrides(["--config.lr"])
